"""Checkpoints and resuming a run: a run killed (SIGKILL) after a checkpoint continues from it when the same
command is run again in the same run directory; ``ckpt_path=last`` / a path resume explicitly; checkpoint
settings never change a config hash."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from focalbench.runstore import config_hash
from focalbench.train import CheckpointError, compose, run, run_config_for_hash

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
MAX_STEPS = 200  # 4 steps per epoch on the smoke set: the kill lands long before the end
# compose(["profile=cpu"]) before checkpoint settings existed: the committed results/cpu runs are keyed by it
CPU_PROFILE_HASH = "3082f79e8abb8d2d"


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    from focalbench.data import build_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    build_dataset("shapes", root, train=16, val=8, size=64, progress=False)
    return root


def train_cmd(smoke_root, run_dir, *extra):
    return [sys.executable, "-m", "focalbench.train", "profile=smoke", f"data.root={smoke_root}",
            f"trainer.max_steps={MAX_STEPS}", "trainer.enable_checkpointing=true",
            "checkpoint.every_n_train_steps=5", f"hydra.run.dir={run_dir}", *extra]


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def train_steps_logged(run_dir: Path) -> list[int]:
    rows = list(csv.DictReader(open(run_dir / "csv" / "version_0" / "metrics.csv")))
    return [int(r["step"]) for r in rows if r.get("train/loss_cls")]


@pytest.fixture(scope="module")
def killed_and_resumed(smoke_root, tmp_path_factory):
    """A smoke run SIGKILLed once its first checkpoint is on disk, then the same command again."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    cmd = train_cmd(smoke_root, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    with open(run_dir.parent / "first.log", "w") as log:
        first = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while not last.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert last.exists(), (run_dir.parent / "first.log").read_text()[-2000:]
    assert not (run_dir / "metrics.json").exists()  # really killed mid-run
    killed_at = ckpt_step(last)
    assert 0 < killed_at < MAX_STEPS
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert second.returncode == 0, second.stderr[-3000:]
    return run_dir, killed_at, second


def test_config_hash_of_existing_runs_is_unchanged():
    assert config_hash(run_config_for_hash(compose(["profile=cpu"]))) == CPU_PROFILE_HASH
    base = run_config_for_hash(compose(["profile=smoke"]))
    assert "checkpoint" not in base and "ckpt_path" not in base
    assert base == run_config_for_hash(compose([
        "profile=smoke", "trainer.enable_checkpointing=true", "checkpoint.every_n_train_steps=100",
        "checkpoint.save_last=false", "checkpoint.save_top_k=-1", "checkpoint.dir=/tmp/ckpts", "ckpt_path=last"]))


def test_killed_run_resumes_from_its_checkpoint(killed_and_resumed):
    run_dir, killed_at, second = killed_and_resumed
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "ok", m.get("reason")
    assert m["steps"] == MAX_STEPS and m["resumed_from_step"] == killed_at
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'} (step {killed_at})" in second.stdout
    # every step logged exactly once: the killed run's steps before its checkpoint, then the rerun's from there
    assert train_steps_logged(run_dir) == list(range(MAX_STEPS))
    assert m["train_seconds"] > 0 and m["images_per_second"] > 0
    # the finished, evaluated state is the last checkpoint; the step-named one is kept besides it
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == MAX_STEPS
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", f"step-{MAX_STEPS}.ckpt"]
    assert not (run_dir / "csv" / "version_0" / "checkpoints").exists()


def test_rerun_of_a_finished_run_trains_nothing(killed_and_resumed, smoke_root):
    run_dir, _, _ = killed_and_resumed
    before = json.loads((run_dir / "metrics.json").read_text())
    m = run(compose(["profile=smoke", f"data.root={smoke_root}", f"trainer.max_steps={MAX_STEPS}",
                     "trainer.enable_checkpointing=true", "checkpoint.every_n_train_steps=5", "ckpt_path=last"]),
            run_dir)
    assert m["resumed_from_step"] == MAX_STEPS and m["steps"] == MAX_STEPS
    assert m["AP"] == before["AP"] and m["train_seconds"] == before["train_seconds"]
    assert train_steps_logged(run_dir) == list(range(MAX_STEPS))


def test_explicit_ckpt_path_and_a_checkpoint_of_another_config(killed_and_resumed, smoke_root, tmp_path):
    run_dir, _, _ = killed_and_resumed
    ckpt = run_dir / "checkpoints" / f"step-{MAX_STEPS}.ckpt"
    base = ["profile=smoke", f"data.root={smoke_root}", f"trainer.max_steps={MAX_STEPS}"]
    m = run(compose([*base, f"ckpt_path={ckpt}"]), tmp_path / "elsewhere")
    assert m["status"] == "ok" and m["resumed_from_step"] == MAX_STEPS
    with pytest.raises(CheckpointError, match="saved by another config"):  # a reused run dir, another seed
        run(compose([*base, "seed=7"]), run_dir)
    with pytest.raises(CheckpointError, match="ckpt_path=last: no readable checkpoint"):
        run(compose([*base, "ckpt_path=last"]), tmp_path / "fresh")


def test_ckpt_path_last_without_checkpoint_is_one_line(smoke_root, tmp_path):
    p = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", f"data.root={smoke_root}",
                        "ckpt_path=last", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: ckpt_path=last: no readable checkpoint in ")
    assert "Traceback" not in p.stderr
