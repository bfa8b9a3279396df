"""Optuna on a real PostgreSQL server: two sweeper workers on one study, grid points handed out once.

The ``postgres`` fixture runs Debian's PostgreSQL (``.ci/system_deps.sh`` installs it) from a fresh
``initdb`` in a temporary directory, on 127.0.0.1 and a free port, with password (SCRAM) auth over TCP,
and stops it in teardown. As root it runs the server as the ``postgres`` user (the server refuses
root). The server is a direct child of the test process and gets SIGINT (fast shutdown) if that process
dies without teardown (a hard timeout), so no server outlives its tests. Tests skip, saying why, only
when the server binaries are absent.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from focalbench.sweeps.params import grid_points, parse_params
from focalbench.sweeps import storage as storage_module
from focalbench.sweeps.storage import make_storage, storage_lock
from focalbench.sweeps.study import build_pruner, build_sampler, enqueue_points, open_study

APPS = Path(__file__).parent / "apps"
TIMEOUT = 120  # seconds, every subprocess and server command
PG_USER = "postgres"  # the cluster's superuser (initdb -U); also the OS user the server runs as under root

# Workers started together on a fresh server database race on CREATE TYPE/TABLE and on enqueuing the
# grid unless storage_lock also locks server databases (pg_advisory_lock; the patch in helper F's
# report adds it, with PG_LOCK_KEY). Until then these tests are expected to fail; after, they must pass.
needs_pg_lock = pytest.mark.xfail(not hasattr(storage_module, "PG_LOCK_KEY"), strict=False,
                                  reason="storage_lock does not lock PostgreSQL yet (pg_advisory_lock patch)")


def pg_bindir() -> str | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with a server, else wherever ``pg_ctl`` is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: [int(v) for v in p.split("/")[4].split(".") if v.isdigit()])
    if found:
        return os.path.dirname(found[-1])
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(pg_ctl)), "postgres")):
        return os.path.dirname(os.path.realpath(pg_ctl))
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throw-away PostgreSQL cluster on 127.0.0.1:<free port>; ``url(db)`` / ``url(db, password=False)``."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.password = "pgpw-" + secrets.token_hex(8)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="focalbench-pg-"))  # not tmp_path: the postgres user must reach it
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        self.proc: subprocess.Popen | None = None
        if self.as_root:
            try:
                self.pw = pwd.getpwnam(PG_USER)
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                pytest.skip(f"running as root and there is no '{PG_USER}' OS user to run the PostgreSQL server")
            os.chown(self.root, self.pw.pw_uid, self.pw.pw_gid)

    def _become_server_user(self) -> None:
        """preexec_fn of the server: drop root, then ask for SIGINT when the test process dies."""
        if self.as_root:
            os.setgroups([])
            os.setgid(self.pw.pw_gid)
            os.setuid(self.pw.pw_uid)  # before prctl: a change of user clears the death signal
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
        except OSError:  # not Linux/glibc: teardown still stops the server
            pass

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=self.root)
        if p.returncode != 0:
            log = self.root / "server.log"
            raise RuntimeError(f"{' '.join(args[:2])} failed: {p.stderr[-2000:]}"
                               f"{log.read_text()[-2000:] if log.exists() else ''}")
        return p

    def start(self) -> "PostgresServer":
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            os.chown(pwfile, self.pw.pw_uid, -1)
        try:
            self._run("initdb", "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}", "-E", "UTF8",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions")
        finally:
            pwfile.unlink()
        # Test-only settings: durability off (fast), TCP on 127.0.0.1 only, the socket in our directory.
        log = open(self.root / "server.log", "w")
        self.proc = subprocess.Popen(
            [os.path.join(self.bindir, "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._become_server_user)
        log.close()
        deadline = time.monotonic() + TIMEOUT
        ready = [os.path.join(self.bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        while subprocess.run(ready, timeout=TIMEOUT).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, stop
                try:
                    self.proc.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(TIMEOUT)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, db: str = "postgres", password: bool = True) -> str:
        auth = f"{PG_USER}:{self.password}" if password else PG_USER
        return f"postgresql+psycopg2://{auth}@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        """A new empty database (one per test: every test starts from no schema)."""
        import psycopg2

        name = "t_" + secrets.token_hex(6)
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=self.password,
                                dbname="postgres", connect_timeout=30)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return name


@pytest.fixture(scope="module")
def postgres():
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin); run .ci/system_deps.sh")
    server = PostgresServer(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


def sweep_cmd(tmp_path: Path, storage: str, *args: str, run: str = "run", name: str = "grid") -> list:
    return [
        sys.executable, str(APPS / "quadratic.py"), "-m", "hydra/sweeper=optuna",
        f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={name}",
        f"hydra.sweep.dir={tmp_path / 'multirun' / run}", "hydra.job.chdir=false", *args,
    ]


def load(url: str, name: str = "grid"):
    import optuna

    return optuna.load_study(study_name=name, storage=make_storage(url))


# --- tests ---------------------------------------------------------------------------------------


@needs_pg_lock
def test_two_workers_share_a_grid_on_postgres(postgres, tmp_path):
    """Two workers started together: every grid point runs exactly once, none is lost or left waiting."""
    from optuna.trial import TrialState

    db = postgres.create_database()
    url = postgres.url(db)
    logs = tmp_path / "logs"
    args = ("hydra.sweeper.sampler=grid", "hydra.sweeper.direction=minimize", "x=choice(0, 1, 2)", "y=range(0, 2)",
            "sleep=0.5", f"log_dir={logs}")
    # The documented form: no password in the URL (Hydra would save it), libpq reads PGPASSWORD.
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PGPASSWORD": postgres.password}
    workers = [subprocess.Popen(sweep_cmd(tmp_path, postgres.url(db, password=False), *args, run=f"w{i}"),
                                cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = []
    for w in workers:
        try:
            _, err = w.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for v in workers:
                v.kill()
            raise
        errors.append(err)
    assert [w.returncode for w in workers] == [0, 0], "\n".join(e[-3000:] for e in errors)

    study = load(url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6  # no duplicate, none waiting or lost
    assert sorted((t.params["x"], t.params["y"]) for t in study.trials) == [(x, y) for x in (0, 1, 2) for y in (0, 1)]
    assert sorted(t.value for t in study.trials) == sorted((x - 2) ** 2 + y for x in (0, 1, 2) for y in (0, 1))
    jobs = [line for f in logs.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(jobs) == 6  # each point ran once, in one worker or the other


@needs_pg_lock
def test_concurrent_study_creation_enqueues_each_point_once(postgres):
    """Workers that create the schema, the study and the grid at the same moment (the sweeper's start).

    Needs ``storage_lock`` to serialise server databases too (pg_advisory_lock): without it, both read an
    empty study and enqueue the grid twice, or race on ``CREATE TABLE`` in a fresh database.
    """
    from optuna.trial import TrialState

    url = postgres.url(postgres.create_database())
    space, _ = parse_params(["x=choice(0, 1, 2, 3)", "y=range(0, 3)"])
    points = grid_points(space)
    n_workers = 4
    barrier = threading.Barrier(n_workers, timeout=TIMEOUT)
    added, errors = [], []

    def worker() -> None:
        try:
            barrier.wait()
            with storage_lock(url):
                storage = make_storage(url, heartbeat_interval=60)
                study = open_study(storage, "grid", "minimize", build_sampler("grid", 0), build_pruner("none"))
                added.append(enqueue_points(study, points))
        except Exception as e:  # reported below, with the test's assertion
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors
    assert sorted(added) == [0] * (n_workers - 1) + [len(points)]
    study = load(url)
    assert len(study.trials) == len(points) and all(t.state == TrialState.WAITING for t in study.trials)


@needs_pg_lock
def test_storage_lock_is_exclusive_on_postgres(postgres):
    """While one process holds ``storage_lock`` on a server database, another waits for it."""
    url = postgres.url(postgres.create_database())
    entered = threading.Event()

    def second_holder() -> None:
        with storage_lock(url):
            entered.set()

    with storage_lock(url):
        t = threading.Thread(target=second_holder, daemon=True)
        t.start()
        assert not entered.wait(1.5), "a second holder entered storage_lock while the first held it"
    assert entered.wait(30), "the waiter never got storage_lock after it was released"
    t.join(30)
