"""The reproduction's memory: finished runs' metrics keyed by a hash of their resolved config.

Pure I/O helpers shared by every study driver (paper tables, imbalance study): a stable config hash,
atomic JSON writes (a reader never sees a half-written file, even after ``kill -9``), a directory
of ``<hash>.json`` files, and the repair of files that were damaged anyway (a full disk, a file system
that lost its last writes, a hand edit): a damaged file is moved aside (never deleted) with one warning
line, and what it held is treated as not there, so the run is redone instead of the job failing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping


def config_hash(config: Mapping[str, Any], length: int = 16) -> str:
    """sha256 of the canonical JSON of ``config`` (keys sorted), first ``length`` hex digits."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def hashed_view(config: Mapping[str, Any], not_hashed: tuple[str, ...] = (),
                not_hashed_in: Mapping[str, tuple[str, ...]] | None = None) -> dict:
    """What a run's identity is taken over (``config_hash(hashed_view(...))``), for every app: the resolved
    config minus the top-level sections ``not_hashed`` and the keys ``not_hashed_in[section]`` (where and how
    a run is recorded, not what it computes), and minus the ``_target_`` keys that name focalbench's own
    builders (implied by the sections' names, focalbench.parts)."""
    from omegaconf import DictConfig, OmegaConf

    from focalbench.parts import strip_builtin_targets

    if isinstance(config, DictConfig):  # drop first: the hydra node holds interpolations only a job resolves
        config = OmegaConf.to_container(OmegaConf.masked_copy(config, [k for k in config if k not in not_hashed]),
                                        resolve=True)
    c = {k: v for k, v in dict(config).items() if k not in not_hashed}
    for section, keys in (not_hashed_in or {}).items():
        if isinstance(c.get(section), dict):
            c[section] = {k: v for k, v in c[section].items() if k not in keys}
    return strip_builtin_targets(c)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600: keep what open() would give (shared results)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def warn(message: str) -> None:
    """One warning line on stderr (the project's style: the file, what happened, what follows)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


class DamagedFileError(ValueError):
    """A damaged record that cannot be dropped safely (records that count follow it): one line, the fix."""

    def __init__(self, path: str | os.PathLike, line: int, detail: str, hint: str = ""):
        self.path, self.line, self.detail = Path(path), line, detail
        super().__init__(f"{path}: line {line} is damaged ({detail}) and complete records follow it; "
                         f"refusing to drop them{'; ' + hint if hint else ''}")


def damaged_name(path: str | os.PathLike, stamp: bool = False) -> Path:
    """Where a damaged ``path`` is kept: ``<name>.damaged`` (``-<UTC time>`` added with ``stamp`` or when that
    name is taken, so an earlier copy is never overwritten)."""
    path = Path(path)
    plain = path.with_name(path.name + ".damaged")
    if not stamp and not plain.exists():
        return plain
    base = path.with_name(path.name + ".damaged-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    out, n = base, 1
    while out.exists():
        out, n = base.with_name(f"{base.name}.{n}"), n + 1
    return out


def move_aside(path: str | os.PathLike, why: str, then: str, inode: int | None = None) -> Path | None:
    """Rename a damaged file to :func:`damaged_name` and say so in one warning line; None when another process
    already moved (or replaced) it: ``inode`` is the file that was read, and a file rewritten since is kept."""
    path = Path(path)
    try:
        if inode is not None and os.stat(path).st_ino != inode:
            return None  # rewritten since it was read (another worker redid it): not ours to move
        dest = damaged_name(path)
        os.replace(path, dest)
    except FileNotFoundError:
        return None
    warn(f"{path} is damaged ({why}); moved to {dest.name}; {then}")
    return dest


def _json_line_ok(line: bytes, validate) -> str | None:
    """None when ``line`` is one whole JSON record (``validate(obj)`` true), else what is wrong with it."""
    if not line.endswith(b"\n"):
        return "no end of line: cut short"
    try:
        obj = json.loads(line)
    except ValueError as e:
        return f"not JSON: {getattr(e, 'msg', e)}"
    if validate is not None and not validate(obj):
        return "not a record of this file"
    return None


def repair_jsonl_tail(path: str | os.PathLike, validate=None, hint: str = "") -> str | None:
    """Drop a damaged LAST line of a JSON-lines file (a write cut short by a full disk or a crash); the dropped
    bytes are kept in ``<name>.damaged-<time>``. Returns the warning line it printed, None when the file is whole
    (or absent). A damaged line with whole records after it raises :class:`DamagedFileError` (``hint``: how
    to recover): those records may count, so they are never dropped here. The caller holds the file's lock."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return None
    bad = [(n, why) for n, line in enumerate(lines, 1) if (why := _json_line_ok(line, validate)) is not None]
    if not bad:
        return None
    n, why = bad[0]
    if n != len(lines):
        raise DamagedFileError(path, n, why, hint)
    keep = sum(len(line) for line in lines[:-1])
    copy = damaged_name(path, stamp=True)
    atomic_write_text(copy, lines[-1].decode("utf-8", errors="replace"))
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    message = (f"{path}: dropped its damaged last record (line {n}, {len(lines[-1])} bytes, {why}; a write cut "
               f"short by a full disk or a crash); the dropped bytes are in {copy.name}")
    warn(message)
    return message


def drop_damaged_lines(path: str | os.PathLike, then: str) -> int:
    """For JSON-lines files whose lines stand alone (a log, not a journal): move every damaged line to
    ``<name>.damaged-<time>`` and keep the others; one warning line; returns how many lines were moved."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return 0
    bad = []
    for n, line in enumerate(lines):
        try:
            if line.strip():
                json.loads(line)
        except ValueError:
            bad.append(n)
    if not bad:
        if lines and not lines[-1].endswith(b"\n"):  # whole, but the next append would join it
            with open(path, "ab") as f:
                f.write(b"\n")
        return 0
    copy = damaged_name(path, stamp=True)
    atomic_write_text(copy, b"".join(lines[n] for n in bad).decode("utf-8", errors="replace"))
    atomic_write_text(path, b"".join(line for n, line in enumerate(lines) if n not in bad).decode())
    warn(f"{path}: moved {len(bad)} damaged line(s) (line {', '.join(str(n + 1) for n in bad)}) to {copy.name}; "
         f"{then}")
    return len(bad)


class RunStore:
    """A directory of ``<config_hash>.json`` metrics files.

    A file that does not parse (cut short by a full disk, a file system that lost its last write, a hand
    edit; never by a crash of ours: writes are atomic) is moved to ``<hash>.json.damaged`` by :meth:`get`,
    with one warning line, and its run counts as not run: the reproduction runs it again."""

    def __init__(self, root: str | os.PathLike, then: str = "its run is treated as not run and is run again"):
        self.root = Path(root)
        self.then = then
        self.moved: set[str] = set()  # keys whose damaged file this object moved aside (and warned about)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        try:
            with open(p, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            metrics = json.loads(data)
        except ValueError as e:
            why = f"not JSON: {getattr(e, 'msg', e)}" if data.strip() else "empty"
        else:
            if isinstance(metrics, dict):
                return metrics
            why = f"a JSON {type(metrics).__name__}, not an object"
        if move_aside(p, why, self.then, inode) is not None:
            self.moved.add(key)
        return None

    def put(self, key: str, metrics: Mapping[str, Any]) -> Path:
        p = self.path(key)
        atomic_write_json(p, dict(metrics))
        return p

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json"))


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it: recorded beside every result."""
    repo = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) if sha else None
