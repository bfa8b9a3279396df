"""--workers N: N processes claim runs from one study storage; every row is trained exactly once, the report is
written once, by the main worker, after all of them finished; Ctrl-C stops them all."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"1a": 7, "1b": 7, "1c": 7}


def _cmd(base: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "focalbench.reproduce", "--profile", "smoke", "--tables", *ROWS, "--no-progress",
            "--results", str(base / "results"), "--work-dir", str(base / "work"), "--workers", "2", *extra]


def _env():
    return {**os.environ, "WANDB_MODE": "offline"}


@pytest.mark.slow
def test_two_workers_train_every_row_exactly_once(tmp_path):
    proc = subprocess.run(_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "results" / "smoke"
    manifest = json.loads((out / "manifest.json").read_text())
    hashes = {m["config_hash"] for m in manifest}
    assert len(manifest) == 21 and len(hashes) == 19      # 1b's gamma=0 row is 1a's; 1c's 3x3 is 1b's gamma=2
    assert {p.stem for p in (out / "runs").glob("*.json")} == hashes

    done = re.findall(r"^\[(w\d)\] done  (\S+) \| (.+?) \| seed (\d+):", proc.stdout, flags=re.M)
    assert len(done) == 19                                  # one training per unique config: no duplicate run
    assert {w for w, *_ in done} == {"w1", "w2"}            # both workers trained
    assert proc.stdout.count("wrote ") == 2                 # report.md + comparison.md, by the main worker only
    assert len((out / "invocations.jsonl").read_text().splitlines()) == 1

    storage = JournalStorage(JournalFileBackend(str(out / "studies.journal")))
    workers = set()
    for table, n in ROWS.items():
        study = optuna.load_study(study_name=f"focalbench-smoke-table{table}", storage=storage)
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(complete) == n and len({t.params["row"] for t in complete}) == n
        assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))
        workers |= {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_interrupting_the_main_worker_stops_the_others(tmp_path):
    # SIGINT to the main process only (not its group, as a terminal's Ctrl-C would): it must stop the others
    proc = subprocess.Popen(_cmd(tmp_path, "--tables", "1a", "1b", "1c", "1d"), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        runs = tmp_path / "results" / "smoke" / "runs"
        deadline = time.time() + 300
        while time.time() < deadline and len(list(runs.glob("*.json"))) < 2 and proc.poll() is None:
            time.sleep(0.1)
        children = _children(proc.pid)
        assert children and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "interrupted" in err
        time.sleep(0.5)
        assert not [c for c in children if _alive(c)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the same command resumes, with nothing run twice
    r = subprocess.run(_cmd(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
