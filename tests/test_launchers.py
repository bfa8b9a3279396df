"""Hydra's submitit launchers with our sweeps: ``hydra/launcher=submitit_local`` runs jobs for real in
processes of their own; ``hydra/launcher=submitit_slurm`` turns the documented settings into the sbatch
request (checked with stub ``sbatch``/``srun`` commands: no cluster here). Every run has a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

APPS = Path(__file__).parent / "apps"
TIMEOUT = 120
pytestmark = pytest.mark.timeout(3 * TIMEOUT)


def run(cmd: list, cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd``; returns its result and its process id (jobs must not run in that process)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "HYDRA_FULL_ERROR": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), proc.pid


def job_records(log_dir: Path) -> list:
    return [json.loads(line) for f in sorted(log_dir.glob("*.jsonl")) for line in f.read_text().splitlines()]


def test_optuna_sweep_fans_out_over_submitit_local(tmp_path):
    """Two trials launched together (n_jobs=2), each a submitit job in its own process."""
    logs, sweep_dir = tmp_path / "logs", tmp_path / "multirun"
    storage = f"journal://{tmp_path / 'study.log'}"
    p, pid = run([sys.executable, str(APPS / "quadratic.py"), "-m", "hydra/sweeper=optuna",
                  "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=2",
                  f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=local",
                  "hydra.sweeper.sampler=grid", "hydra.sweeper.direction=minimize", "hydra.sweeper.n_jobs=2",
                  f"hydra.sweep.dir={sweep_dir}", "x=choice(0, 3)", "sleep=0.5", f"log_dir={logs}"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    study = optuna.load_study(study_name="local", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.log"))))
    assert sorted((t.params["x"], t.value, t.state.name) for t in study.trials) == [(0, 4.0, "COMPLETE"),
                                                                                   (3, 1.0, "COMPLETE")]
    jobs = job_records(logs)
    assert sorted(j["trial"] for j in jobs) == [0, 1]
    assert len({j["pid"] for j in jobs}) == 2 and pid not in {j["pid"] for j in jobs}
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # both went through submitit
    assert (sweep_dir / "0" / ".hydra" / "config.yaml").exists() and (sweep_dir / "1" / ".hydra").is_dir()


def test_basic_sweep_over_submitit_local(tmp_path):
    logs, sweep_dir = tmp_path / "logs", tmp_path / "multirun"
    p, pid = run([sys.executable, str(APPS / "quadratic.py"), "-m", "hydra/launcher=submitit_local",
                  "hydra.launcher.timeout_min=2", f"hydra.sweep.dir={sweep_dir}", "x=1,4", f"log_dir={logs}"],
                 tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = job_records(logs)
    assert sorted(j["x"] for j in jobs) == [1, 4] and pid not in {j["pid"] for j in jobs}
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2


def test_submitit_slurm_requests_the_documented_resources(tmp_path):
    """The command of the README's "Running at scale" section (2 nodes x 8 GPUs, one task per GPU) -> its #SBATCH lines."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    # sbatch: keep the submission script, then refuse it (nothing would ever run the job here)
    (stubs / "sbatch").write_text('#!/bin/sh\nfor f in "$@"; do :; done\ncp "$f" "$SBATCH_CAPTURE"\n'
                                  'echo "sbatch: stub, no cluster" >&2\nexit 1\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    captured = tmp_path / "sbatch.sh"
    p, _ = run([sys.executable, str(APPS / "quadratic.py"), "-m", "hydra/sweeper=optuna",
                "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
                "hydra.launcher.gpus_per_node=8", "hydra.launcher.tasks_per_node=8",
                "hydra.launcher.cpus_per_task=10", "hydra.launcher.mem_gb=400", "hydra.launcher.timeout_min=720",
                f"hydra.sweeper.storage=journal://{tmp_path / 'study.log'}", "hydra.sweeper.study_name=slurm",
                "hydra.sweeper.sampler=grid", f"hydra.sweep.dir={tmp_path / 'multirun'}", "x=choice(0, 1)"],
               tmp_path, env={"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "SBATCH_CAPTURE": str(captured)})
    assert p.returncode != 0 and "sbatch: stub, no cluster" in p.stderr  # the stub refused it, as meant
    script = captured.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --ntasks-per-node=8", "#SBATCH --cpus-per-task=10", "#SBATCH --mem=400GB",
                 "#SBATCH --time=720"):
        assert line in script.splitlines(), f"{line!r} not in the sbatch script:\n{script}"
    assert "srun --unbuffered" in script and f"{sys.executable} -u -m submitit.core._submit" in script
