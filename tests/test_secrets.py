"""Secrets never reach files: a W&B API key and a database password given to a sweep (through the
environment, the documented way) appear in no log, config, metrics.json, W&B run or result file.

Each test runs a real Optuna sweep on a real PostgreSQL server (tests/test_postgres.py's fixture, password
auth) with ``WANDB_API_KEY`` set, then reads every file the run wrote, byte for byte, and its console output.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from focalbench.sweeps import storage as storage_module
from test_postgres import load, postgres, sweep_cmd  # noqa: F401  (postgres: the server fixture)

TIMEOUT = 180

# The sweeper hands jobs a URL without its password (they inherit it as $FOCALBENCH_OPTUNA_PASSWORD) and
# refuses a password written into hydra.sweeper.storage (the patch in helper F's report adds PASSWORD_ENV).
# Until then these tests are expected to fail; after, they must pass.
needs_redaction = pytest.mark.xfail(not hasattr(storage_module, "PASSWORD_ENV"), strict=False,
                                    reason="the sweeper still writes a URL's password into job configs (patch pending)")


def files_holding(root: Path, *needles: str) -> list:
    """``(relative path, needle)`` for every file under ``root`` that contains a needle (binary files too)."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        hits += [(str(path.relative_to(root)), n) for n in needles if n.encode() in data]
    return hits


def run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def wandb_key() -> str:
    return "sekrit-" + secrets.token_hex(20)


def base_env(tmp_path: Path, wandb_key: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "WANDB_", "OPTUNA_STORAGE"))}
    # W&B's own files (settings, cache) would go under $HOME and $XDG dirs: keep them in tmp_path too.
    return {**env, "HYDRA_FULL_ERROR": "1", "WANDB_API_KEY": wandb_key, "WANDB_MODE": "offline",
            "HOME": str(tmp_path / "home"), "WANDB_DIR": str(tmp_path / "wandb"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}


def test_scanner_finds_a_secret(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.bin").write_bytes(b"\x00\x01sekrit-1\x02")
    assert files_holding(tmp_path, "sekrit-1", "other") == [("a/b/x.bin", "sekrit-1")]


def test_password_in_pgpassword_and_wandb_key_are_never_written(postgres, tmp_path, wandb_key):
    """The documented way: the URL names no password, libpq reads PGPASSWORD."""
    db = postgres.create_database()
    env = {**base_env(tmp_path, wandb_key), "PGPASSWORD": postgres.password}
    p = run(sweep_cmd(tmp_path, postgres.url(db, password=False), "hydra.sweeper.sampler=grid", "x=choice(0, 1)",
                      f"log_dir={tmp_path / 'logs'}"), tmp_path, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(load(postgres.url(db)).trials) == 2  # the sweep really used the password-protected server
    assert files_holding(tmp_path, postgres.password, wandb_key) == []
    assert postgres.password not in p.stdout + p.stderr and wandb_key not in p.stdout + p.stderr


@needs_redaction
def test_password_from_an_env_interpolation_is_never_written(postgres, tmp_path, wandb_key):
    """``hydra.sweeper.storage='${oc.env:OPTUNA_STORAGE}'`` with the whole URL (password too) in the variable;
    jobs run through submitit_local, whose pickled jobs (``.submitit/``) must not hold it either."""
    db = postgres.create_database()
    env = {**base_env(tmp_path, wandb_key), "OPTUNA_STORAGE": postgres.url(db)}
    p = run(sweep_cmd(tmp_path, "${oc.env:OPTUNA_STORAGE}", "hydra.sweeper.sampler=grid", "x=choice(0, 1)",
                      "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=2", "hydra.sweeper.n_jobs=2",
                      "report_steps=2", f"log_dir={tmp_path / 'logs'}"), tmp_path, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list(tmp_path.rglob(".submitit/*/*_submitted.pkl"))) == 2
    study = load(postgres.url(db))
    assert [len(t.intermediate_values) for t in study.trials] == [2, 2]  # the jobs reached the study too
    assert files_holding(tmp_path, postgres.password, wandb_key) == []
    assert postgres.password not in p.stdout + p.stderr


@needs_redaction
def test_password_written_into_the_storage_url_is_refused(postgres, tmp_path, wandb_key):
    """Hydra saves ``hydra.sweeper.storage=...`` as typed: the sweeper refuses it before any file exists."""
    db = postgres.create_database()
    p = run(sweep_cmd(tmp_path, postgres.url(db), "hydra.sweeper.sampler=grid", "x=choice(0, 1)"), tmp_path,
            base_env(tmp_path, wandb_key))
    assert p.returncode != 0
    assert "hydra.sweeper.storage=" in p.stderr and "PGPASSWORD" in p.stderr
    assert files_holding(tmp_path, postgres.password) == []
    assert postgres.password not in p.stdout + p.stderr


def test_training_sweep_with_wandb_writes_no_secret(postgres, tmp_path, wandb_key):
    """``focalbench.train profile=smoke logger=wandb`` as a trial on the server: metrics.json, the offline
    W&B run, CSV logs, Hydra's .hydra/ and the sweep's results hold neither secret."""
    pytest.importorskip("focalbench.train")
    db = postgres.create_database()
    env = {**base_env(tmp_path, wandb_key), "PGPASSWORD": postgres.password}
    cmd = [sys.executable, "-m", "focalbench.train", "-m", "hydra/sweeper=optuna",
           f"hydra.sweeper.storage={postgres.url(db, password=False)}", "hydra.sweeper.study_name=smoke",
           "hydra.sweeper.sampler=grid", f"hydra.sweep.dir={tmp_path / 'multirun'}",
           "profile=smoke", "logger=wandb", "loss.gamma=choice(2.0)"]
    p = run(cmd, tmp_path, env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "multirun" / "0" / "metrics.json").exists()
    assert list((tmp_path / "multirun" / "0").rglob("*.wandb")), "no offline W&B run was written"
    assert [t.state.name for t in load(postgres.url(db), "smoke").trials] == ["COMPLETE"]
    assert files_holding(tmp_path, postgres.password, wandb_key) == []
    assert postgres.password not in p.stdout + p.stderr and wandb_key not in p.stdout + p.stderr


@needs_redaction
def test_storage_urls_hide_and_restore_the_password(postgres, monkeypatch):
    import optuna
    import sqlalchemy

    from focalbench.sweeps.storage import PASSWORD_ENV, make_storage, redact_url, split_password

    db = postgres.create_database()
    url, bare = postgres.url(db), postgres.url(db, password=False)
    assert redact_url(url) == url.replace(postgres.password, "***")
    assert split_password(url) == (bare, postgres.password)
    assert split_password("journal:///a/s.log") == ("journal:///a/s.log", None)
    assert redact_url("sqlite:///results/optuna.db") == "sqlite:///results/optuna.db"
    for name in ("PGPASSWORD", "PGPASSFILE", PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password"):  # the server does ask for it
        make_storage(bare)
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)  # what the sweeper sets for its jobs
    optuna.create_study(storage=make_storage(bare), study_name="env")
    assert optuna.study.get_all_study_names(storage=make_storage(url)) == ["env"]
