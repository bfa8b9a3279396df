"""`make reproduce-ablations PROFILE=smoke` end to end: the whole results/smoke tree, then a resume that
trains nothing (every run comes from runs/), with the Optuna studies in the journal file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]


def _reproduce(results, work, *extra, timeout=600):
    cmd = [sys.executable, "-m", "focalbench.reproduce", "--profile", "smoke", "--results", str(results),
           "--work-dir", str(work), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline"})


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    base = tmp_path_factory.mktemp("repro")
    proc = _reproduce(base / "results", base / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base, proc


def test_whole_results_tree(smoke_results):
    base, proc = smoke_results
    out = base / "results" / "smoke"
    for t in ("1a", "1b", "1c", "1d"):
        assert (out / f"table{t}.csv").exists() and (out / f"table{t}.md").exists()
        assert f"table {t}: tau=" in proc.stdout
    for fig in ("table1a_ap_vs_alpha", "table1b_ap_vs_gamma", "table1c_anchors", "table1d", "figure1_loss_vs_pt"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "## Claims checklist" in report and "python -m focalbench.reproduce --profile smoke" in report
    page = (out / "dashboard.html").read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # self-contained
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest) == 7 + 7 + 7 + 10
    hashes = {m["config_hash"] for m in manifest}
    # 1b's gamma=0 row is 1a's alpha=.75 run; 1c's 3x3 row is 1b's gamma=2 row: each runs once
    assert len(hashes) == len(manifest) - 2
    runs = sorted((out / "runs").glob("*.json"))
    assert {p.stem for p in runs} == hashes
    for p in runs:
        m = json.loads(p.read_text())
        assert m["status"] in ("ok", "diverged") and {"AP", "AP50", "AP75", "seed", "config_hash"} <= set(m)


def test_tables_are_studies_with_one_trial_per_row(smoke_results):
    base, _ = smoke_results
    storage = JournalStorage(JournalFileBackend(str(base / "results" / "smoke" / "studies.journal")))
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {f"focalbench-smoke-table{t}" for t in ("1a", "1b", "1c", "1d")}
    study = optuna.load_study(study_name="focalbench-smoke-table1d", storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 10 and len({t.params["row"] for t in done}) == 10


def test_rerun_reuses_every_run(smoke_results):
    base, _ = smoke_results
    out = base / "results" / "smoke"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    proc = _reproduce(base / "results", base / "work", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert after == before                      # nothing re-trained, nothing rewritten
    assert "Trainer.fit" not in proc.stderr + proc.stdout
    # every invocation's wall time is kept (the report used to show only the last command's)
    calls = [json.loads(line) for line in (out / "invocations.jsonl").read_text().splitlines()]
    assert [c["runs_finished_meanwhile"] for c in calls] == [len(before), 0]
    assert all(c["wall_seconds"] > 0 and "--profile smoke" in c["command"] for c in calls)
    assert "elapsed over 2 invocations" in (out / "report.md").read_text()


def test_bad_table_and_profile_are_one_line_errors(tmp_path):
    proc = _reproduce(tmp_path, tmp_path, "--tables", "1z", timeout=120)
    assert proc.returncode == 2 and "unknown table '1z'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "focalbench.reproduce", "--profile", "laptop"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "PROFILE='laptop'" in proc.stderr
