"""The training app: smoke runs per loss family, divergence handling, config composition and hashing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from focalbench.evaluation import STAT_NAMES
from focalbench.runstore import config_hash
from focalbench.train import compose, derive_schedule, run, run_config_for_hash

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"status", *STAT_NAMES, "epochs", "train_seconds", "images_per_second", "peak_memory_mb", "seed",
            "config_hash", "git_sha", "overrides", "anchors_per_image", "steps"}


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
    """16 train / 8 val generated 64 px scenes (what `python -m focalbench.data build shapes ...` writes)."""
    from focalbench.data import build_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    build_dataset("shapes", root, train=16, val=8, size=64, progress=False)
    return root


def smoke(smoke_root, out, *overrides):
    cfg = compose(["profile=smoke", f"data.root={smoke_root}", *overrides])
    metrics = run(cfg, out)
    on_disk = json.loads((Path(out) / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    return metrics


@pytest.mark.parametrize("loss", [
    ["loss=focal", "loss.gamma=2", "loss.alpha=0.25"],
    ["loss=ce"],
    ["loss=alpha_ce", "loss.alpha=0.75"],
    ["loss=ohem", "loss.batch_size=128", "loss.nms_iou=0.5"],
    ["loss=ohem_1to3"],
    ["loss=softmax_focal"],
    ["loss=focal_star"],
], ids=lambda o: o[0])
def test_smoke_run_per_loss_family(smoke_root, tmp_path, loss):
    m = smoke(smoke_root, tmp_path, *loss)
    assert REQUIRED <= set(m)
    assert m["status"] == "ok", m.get("reason")
    assert m["steps"] == 4 and m["train_seconds"] > 0 and m["images_per_second"] > 0
    assert m["anchors_per_image"] == 774  # 64 px, 3 scales x 3 ratios: (64 + 16 + 4 + 1 + 1) * 9
    assert m["overrides"][-len(loss):] == loss
    assert m["val_images"] == 8 and all(0.0 <= m[k] <= 100.0 for k in STAT_NAMES)
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").exists()
    opts = m["step_options"]  # what the training steps used, recorded per run
    assert opts["precision"] == "32-true" and opts["channels_last"] is False and opts["torch_threads"] == 1
    assert opts["loss_kernel"] == "eager"  # the smoke profile's ~1e4 logits stay below the compile threshold


def test_anchor_config_changes_anchor_count(smoke_root, tmp_path):
    m = smoke(smoke_root, tmp_path, "anchors.scales=2", "anchors.ratios=3", "trainer.max_steps=1")
    assert m["status"] == "ok" and m["anchors_per_image"] == 86 * 6


def test_cli_divergence_writes_metrics_and_exits_zero(smoke_root, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", f"data.root={smoke_root}",
                           "loss=ce", "optim.lr=1e30", "optim.warmup_iters=0", "trainer.max_steps=20",
                           f"hydra.run.dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "diverged" and "non-finite" in m["reason"]
    assert all(m[k] == 0.0 for k in STAT_NAMES)
    assert m["steps"] < 20  # stopped early
    assert (out / ".hydra" / "config.yaml").exists()


def test_wandb_offline_run(smoke_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    m = smoke(smoke_root, tmp_path, "logger=wandb", "tags.group=table1a", "trainer.max_steps=2")
    assert m["status"] == "ok"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert json.loads((runs[0] / "files" / "metrics.json").read_text())["config_hash"] == m["config_hash"]
    assert list((runs[0] / "files" / "media").rglob("*.png"))  # validation images with boxes
    assert list((runs[0] / "files" / "media" / "metadata" / "boxes2D").iterdir())
    import wandb

    assert wandb.run is None  # finished


def test_profile_overrides_defaults_and_command_line_wins():
    assert compose(["profile=smoke"]).trainer.max_steps == 4
    assert compose(["profile=smoke", "trainer.max_steps=7"]).trainer.max_steps == 7
    paper = compose(["profile=paper"])
    assert paper.optim.name == "sgd" and paper.data.image_size == 600 and paper.model.backbone.name == "resnet50"
    assert compose(["profile=paper", "optim=adamw"]).optim.name == "adamw"
    cpu = compose([])
    assert cpu.loss.name == "focal" and cpu.loss.gamma == 2 and cpu.anchors.scales == 3
    assert cpu.optuna.trial_number is None and cpu.tags.group is None


def test_linear_scaling_rule_of_paper_profile():
    eight = derive_schedule(compose(["profile=paper"]))  # 2 images x 8 GPUs = the paper's 16
    assert eight == {"effective_batch": 16, "lr": 0.01, "max_steps": 90000, "steps": [60000, 80000],
                     "warmup_iters": 500}
    one = derive_schedule(compose(["profile=paper", "trainer.devices=1", "data.batch_size=4"]))
    assert one["effective_batch"] == 4 and one["lr"] == pytest.approx(0.0025)
    assert one["max_steps"] == 360000 and one["steps"] == [240000, 320000] and one["warmup_iters"] == 2000


def test_config_hash_ignores_logging_but_not_the_loss():
    base = run_config_for_hash(compose(["profile=smoke"]))
    assert "hydra" not in base and "logger" not in base and "optuna" not in base
    assert base == run_config_for_hash(compose(["profile=smoke", "logger=wandb", "optuna.trial_number=3",
                                                "tags.group=x", "trainer.enable_progress_bar=true"]))
    assert base != run_config_for_hash(compose(["profile=smoke", "loss.gamma=1"]))
    assert base != run_config_for_hash(compose(["profile=smoke", "seed=1"]))


def test_bad_value_fails_with_metrics(smoke_root, tmp_path):
    from focalbench.config_schema import ConfigError

    with pytest.raises(ConfigError, match="model.backbone.norm=batch"):  # the schema: before any work
        compose(["profile=smoke", "model.backbone.norm=batch"])
    assert not (tmp_path / "metrics.json").exists()
    with pytest.raises(ValueError, match="model.backbone.widths"):  # only the model checks it: a failed run
        smoke(smoke_root, tmp_path, "model.backbone.widths=[8,16]")
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["status"] == "failed" and "model.backbone.widths" in m["reason"]


def test_validation_each_epoch_and_final_evaluation(smoke_root, tmp_path):
    m = smoke(smoke_root, tmp_path, "trainer.val_every_n_epochs=1", "trainer.max_steps=6")  # 4 steps per epoch
    assert m["status"] == "ok" and m["steps"] == 6 and m["val_images"] == 8
    import csv

    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert sorted(int(r["step"]) for r in rows if r.get("val/AP")) == [3, 6]  # epoch 1 (in fit), final validate


@pytest.mark.parametrize("env, zero", [
    ({}, True), ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True), ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, True),
    ({"LOCAL_RANK": "1"}, False), ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False), ({"RANK": "3"}, False),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, False),  # srun's second task: no LOCAL_RANK set by anyone
])
def test_rank_zero_from_launcher_variables(env, zero):
    from focalbench.train import env_rank_zero

    assert env_rank_zero(env) is zero


# ------------------------------------------------------------------------------------------- paths.root
def test_relative_data_root_is_read_from_the_start_directory_under_chdir(tmp_path):
    """hydra.job.chdir=true once built the data set again inside every run directory."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", "hydra.job.chdir=true",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={k: v for k, v in os.environ.items() if k != "FOCALBENCH_ROOT"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "data" / "shapes_smoke" / "build.json").exists()
    assert not (tmp_path / "run" / "data").exists()


def test_focalbench_root_pins_data_and_outputs(tmp_path, monkeypatch):
    from focalbench.builders import build_datamodule

    monkeypatch.setenv("FOCALBENCH_ROOT", str(tmp_path / "project"))
    cfg = compose(["profile=smoke"])
    assert cfg.paths.root == str(tmp_path / "project")
    assert str(cfg.hydra.run.dir).startswith(str(tmp_path / "project" / "outputs"))
    assert build_datamodule(cfg).root == str(tmp_path / "project" / "data" / "shapes_smoke")
    # where the data lies is not what a run computes: the hash is the same as without the root
    monkeypatch.delenv("FOCALBENCH_ROOT")
    assert config_hash(run_config_for_hash(cfg)) == config_hash(run_config_for_hash(compose(["profile=smoke"])))
