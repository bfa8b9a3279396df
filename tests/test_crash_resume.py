"""kill -9 in the middle of a real (smoke) reproduction, then the same command again: the job finishes,
reuses every finished run, and ends with the same runs, metrics and studies as an uninterrupted job."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
# What a run computes; timings, paths and the commit differ between two executions of the same config.
COMPARED = ("status", "AP", "AP50", "AP75", "APs", "APm", "APl", "steps", "epochs", "seed", "config_hash")


def _cmd(base: Path) -> list[str]:
    return [sys.executable, "-m", "focalbench.reproduce", "--profile", "smoke", "--tables", "1a", "--no-progress",
            "--results", str(base / "results"), "--work-dir", str(base / "work")]


def _runs(base: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (base / "results" / "smoke" / "runs").glob("*.json")}


def test_sigkill_midway_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_cmd(clean), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs_dir = killed / "results" / "smoke" / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(runs_dir.glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    partial = _runs(killed)  # every file there parses: atomic writes leave no half-written JSON
    assert 3 <= len(partial) < 7, f"kill landed outside the middle of the job ({len(partial)} of 7 runs)"
    assert not (killed / "results" / "smoke" / "report.md").exists()

    t0 = time.time()
    r = subprocess.run(_cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"resume failed ({len(partial)} runs were done at the kill): {r.stderr[-3000:]}"
    resumed = _runs(killed)
    assert {h: resumed[h] for h in partial} == partial  # finished runs were reused, not re-run or rewritten
    reference = _runs(clean)
    assert resumed.keys() == reference.keys()
    for h in reference:
        assert {k: resumed[h].get(k) for k in COMPARED} == {k: reference[h].get(k) for k in COMPARED}, h
    assert (killed / "results" / "smoke" / "table1a.csv").read_text().count("\n") == 8
    assert time.time() - t0 < 120  # no stale-heartbeat wait: the dead local worker is detected at once

    storage = JournalStorage(JournalFileBackend(str(killed / "results" / "smoke" / "studies.journal")))
    study = optuna.load_study(study_name="focalbench-smoke-table1a", storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 7 and len({t.params["row"] for t in complete}) == 7  # each row once
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
