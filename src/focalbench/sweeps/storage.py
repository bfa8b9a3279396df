"""Optuna storages from one URL: SQLite/any SQLAlchemy URL, or a journal file for several workers.

A storage URL is what the user writes in ``hydra.sweeper.storage`` (and what each job receives as
``optuna.storage``):

- ``sqlite:///results/optuna.db``: SQLite, path relative to the *original* working directory (not
  Hydra's run dir); ``sqlite:////abs/path.db`` is absolute. Any other SQLAlchemy URL
  (``postgresql://...``, ``mysql+pymysql://...``) is used as is.
- ``journal://results/optuna.log`` (relative) or ``journal:///abs/optuna.log`` (absolute), or a plain
  path ending in ``.log`` / ``.journal``: ``JournalStorage(JournalFileBackend(path))``, the storage
  Optuna recommends for several local processes (or machines on one shared file system).
- a plain path ending in ``.db`` / ``.sqlite`` / ``.sqlite3``: SQLite.

:func:`resolve_storage_url` turns a relative URL into an absolute one once, in the sweeper, so jobs
that run in another directory (or on another machine with the same mount) open the same file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from focalbench.runstore import DamagedFileError, repair_jsonl_tail  # noqa: F401 (DamagedFileError: re-exported)

JOURNAL_SCHEME = "journal://"
# The password of a server URL, kept out of every URL that is written down: the sweeper moves it here
# (jobs inherit the environment: local, submitit and SLURM's default --export=ALL) and make_storage
# puts it back. Users may set it themselves for servers without a password file of their own.
PASSWORD_ENV = "FOCALBENCH_OPTUNA_PASSWORD"
# pg_advisory_lock key of focalbench's study creation: any 64-bit integer other tools do not use.
PG_LOCK_KEY = 0x666F63616C62656E  # b"focalben"
JOURNAL_SUFFIXES = (".log", ".journal")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
SQLITE_PREFIX = "sqlite:///"


def is_journal_url(url: str) -> bool:
    return url.startswith(JOURNAL_SCHEME) or ("://" not in url and url.endswith(JOURNAL_SUFFIXES))


def journal_path(url: str) -> str:
    """The file of a journal URL (``journal:///abs.log`` -> ``/abs.log``, ``x.log`` -> ``x.log``)."""
    return url[len(JOURNAL_SCHEME):] if url.startswith(JOURNAL_SCHEME) else url


def sqlite_path(url: str) -> str | None:
    """The database file of a SQLite URL, None for other URLs and in-memory SQLite."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    path = url[len(SQLITE_PREFIX):].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def url_password(url: str | None) -> str | None:
    """The password in a server URL (``postgresql://user:pw@host/db``), None when it has none."""
    if url is None or "://" not in url or url.startswith((SQLITE_PREFIX, JOURNAL_SCHEME)):
        return None
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # not a SQLAlchemy URL: Optuna says so when it opens it
        return None


def redact_url(url: str | None) -> str | None:
    """``url`` with its password shown as ``***``: what logs and result files may show."""
    if url_password(url) is None:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def split_password(url: str | None) -> tuple[str | None, str | None]:
    """``(url without its password, password)``; ``(url, None)`` when it has none."""
    password = url_password(url)
    if password is None:
        return url, None
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return u._replace(password=None).render_as_string(hide_password=False), password


def resolve_storage_url(url: str | None, base_dir: str | os.PathLike) -> str | None:
    """Make file paths in ``url`` absolute against ``base_dir``; check the form of ``url``.

    ``None`` stays ``None`` (in-memory study: no resume, no pruning from jobs).
    """
    if url is None:
        return None
    url = str(url).strip()
    base = Path(base_dir)
    if is_journal_url(url):
        path = Path(journal_path(url)).expanduser()
        if not str(path) or str(path) == ".":
            raise ValueError(f"hydra.sweeper.storage={url!r}: a journal URL needs a file, e.g. journal:///abs/optuna.log")
        return JOURNAL_SCHEME + str(path if path.is_absolute() else (base / path).resolve())
    if "://" not in url and url.endswith(SQLITE_SUFFIXES):
        url = SQLITE_PREFIX + url
    if url.startswith(SQLITE_PREFIX):
        path = sqlite_path(url)
        if path is None:
            return url
        query = url[len(SQLITE_PREFIX) + len(path):]
        p = Path(path).expanduser()
        return SQLITE_PREFIX + str(p if p.is_absolute() else (base / p).resolve()) + query
    if "://" in url:
        return url  # any other SQLAlchemy URL (server databases): nothing to resolve
    raise ValueError(
        f"hydra.sweeper.storage={url!r}: expected a SQLAlchemy URL (sqlite:///results/optuna.db), "
        f"journal:///path/file.log, a path ending in {', '.join(JOURNAL_SUFFIXES + SQLITE_SUFFIXES)}, or null"
    )


def storage_file(url: str | None) -> str | None:
    """The local file behind ``url`` (SQLite database or journal), None for servers / memory."""
    if url is None:
        return None
    if is_journal_url(url):
        return journal_path(url)
    return sqlite_path(url)


def make_storage(
    url: str | None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
) -> BaseStorage | None:
    """Open the storage behind ``url`` (None -> None, i.e. Optuna's in-memory storage).

    For RDB storages ``heartbeat_interval`` turns on Optuna's heartbeats, and trials whose
    heartbeat is older than ``grace_period`` are failed and re-queued (at most ``max_retry`` times)
    by ``RetryHeartbeatStaleTrialCallback``. Journal storages have no native heartbeat: see
    :mod:`focalbench.sweeps.study` for ours.
    """
    if url is None:
        return None
    file = storage_file(url)
    if file is not None:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
    url = _with_env_password(url)
    if is_journal_url(url):
        repair_journal(file)
        return JournalStorage(JournalFileBackend(file))
    kwargs = {}
    if url.startswith("sqlite"):
        # Several workers write one SQLite file: wait for the lock instead of failing after 5 s.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval is not None:
            kwargs.update(
                heartbeat_interval=int(heartbeat_interval),
                grace_period=None if grace_period is None else int(grace_period),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
            )
        return RDBStorage(url, **kwargs)


def _journal_record(obj) -> bool:
    return isinstance(obj, dict) and "op_code" in obj


def repair_journal(path: str | os.PathLike, hint: str | None = None) -> str | None:
    """Before Optuna reads a journal file: drop a damaged last record (a write cut short by a full disk or a
    crash), keeping its bytes in ``<journal>.damaged-<time>``, with one warning line (returned; None when the
    file is whole). Optuna never applies a line without its end of line, so dropping it loses nothing that
    was committed; later appends would otherwise be glued to it and every reader would fail on the join.

    Runs under Optuna's own journal lock (the one every append takes), so no write is in flight: a partial
    last line is damage, not a record being written. Callers also hold :func:`storage_lock` where they can
    (this lock is taken inside it, never the other way round). A damaged line in the middle (whole records
    after it) raises :class:`focalbench.runstore.DamagedFileError` (a ``ValueError``; ``hint``: how to
    recover): those records may be committed results, so nothing is dropped."""
    path = str(path)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    if hint is None:
        hint = (f"restore {path} from a backup, or move it aside (its studies start afresh; the damaged "
                f"file stays for inspection): mv {path} {path}.damaged")
    lock = JournalFileSymlinkLock(path)
    lock.acquire()
    try:
        return repair_jsonl_tail(path, _journal_record, hint)
    finally:
        lock.release()


@contextlib.contextmanager
def storage_lock(url: str | None) -> Iterator[None]:
    """Hold an exclusive lock on ``<storage file>.study.lock``, or PostgreSQL's ``pg_advisory_lock``.

    Creating the schema and the study, and enqueuing fixed points, happen under this lock, so
    workers started together neither race on ``CREATE TABLE`` / ``CREATE TYPE`` (SQLite's ``table
    studies already exists``, PostgreSQL's duplicate ``pg_type`` key) nor enqueue a grid point twice.
    ``fcntl`` locks work on local disks and on most network file systems; PostgreSQL's advisory lock
    is held by a connection of its own and freed by the server if the worker dies. Other server
    databases (MySQL) are not locked: start one worker first there.
    """
    if url is not None and url.startswith("postgresql"):
        with _pg_advisory_lock(url):
            yield
        return
    file = storage_file(url)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; start one worker first there.
        fcntl = None
    if file is None or fcntl is None:
        yield
        return
    lock_path = Path(file + ".study.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _with_env_password(url: str) -> str:
    """A server URL without a password gets ``$FOCALBENCH_OPTUNA_PASSWORD`` when that is set."""
    password = os.environ.get(PASSWORD_ENV)
    if not password or "://" not in url or url.startswith((SQLITE_PREFIX, JOURNAL_SCHEME)):
        return url
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.password is not None or u.username is None:
        return url
    return u.set(password=password).render_as_string(hide_password=False)


@contextlib.contextmanager
def _pg_advisory_lock(url: str) -> Iterator[None]:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    # NullPool + AUTOCOMMIT: the lock lives on one real connection, outside any transaction, and
    # closing that connection (here, or the server noticing a dead worker) releases it.
    engine = sa.create_engine(_with_env_password(url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
    finally:
        engine.dispose()
