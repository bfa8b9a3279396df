"""The reproduction's memory: finished runs' metrics keyed by a hash of their resolved config.

Pure I/O helpers shared by every study driver (paper tables, imbalance study): a stable config hash,
atomic JSON writes (a reader never sees a half-written file, even after ``kill -9``), and a directory
of ``<hash>.json`` files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping


def config_hash(config: Mapping[str, Any], length: int = 16) -> str:
    """sha256 of the canonical JSON of ``config`` (keys sorted), first ``length`` hex digits."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


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


class RunStore:
    """A directory of ``<config_hash>.json`` metrics files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self.path(key)
        if not p.exists():
            return None
        with open(p) as f:
            return json.load(f)

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
