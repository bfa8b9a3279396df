"""Resource and data errors: one clear line, a non-zero exit where the job cannot go on, nothing lost; a run
that fails inside a reproduction is recorded with its reason and the others still run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline"}


def _run(args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def _one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("[") and "Warning" not in ln
             and "warn(" not in ln and ln.strip()]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert lines and lines[-1].startswith("error: "), stderr[-2000:]
    return lines[-1]


def test_missing_dataset_root_is_one_line(tmp_path):
    proc = _run(["focalbench.train", "profile=smoke", "data=coco", f"data.root={tmp_path / 'nowhere'}",
                 f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "nowhere/annotations/instances_val2017.json" in line and "not found" in line
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and "not found" in m["reason"]


def test_unwritable_results_dir_stops_before_any_run(tmp_path):
    proc = _run(["focalbench.reproduce", "--profile", "smoke", "--tables", "3", "--no-progress",
                 "--results", "/proc/focalbench-results", "--work-dir", str(tmp_path / "work")])
    assert proc.returncode == 1
    assert "/proc/focalbench-results" in _one_line_error(proc.stderr)
    assert not (tmp_path / "work").exists()  # nothing trained


def test_failing_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    # every run of the table fails inside the model (a value only the model checks): all four are attempted
    proc = _run(["focalbench.reproduce", "--profile", "smoke", "--tables", "3", "--no-progress",
                 "--results", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work"),
                 "model.backbone.widths=[8,16]"])
    assert proc.returncode == 1 and "4 of 4 runs did not finish" in proc.stderr
    out = tmp_path / "results" / "smoke"
    failed = [json.loads(p.read_text()) for p in (out / "runs" / "failed").glob("*.json")]
    assert len(failed) == 4 and all(f["status"] == "failed" and "widths" in f["reason"] for f in failed)
    assert not list((out / "runs").glob("*.json"))  # a failed run is never reused as finished
    table = (out / "table3.md").read_text()
    assert table.count("failed s0: ") == 4 and (out / "report.md").exists()
