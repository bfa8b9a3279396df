"""Configs that instantiate: each part's ``_target_`` (focalbench.parts), with the user's own classes from
examples/plugins/ (the README's example), plugged in from a config folder outside the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focalbench.builders import build_criterion, build_datamodule, build_model, build_module, derive_schedule
from focalbench.config_schema import ConfigError, validate_config
from focalbench.runstore import config_hash
from focalbench.train import compose, run_config_for_hash

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins"
SEARCH = f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"
USER = [SEARCH, "profile=smoke", "loss=scaled_focal", "model=tiny_body", "optim=radam"]


@pytest.fixture()
def plugins(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import my_parts

    return my_parts


def test_user_parts_are_built_from_their_targets(plugins):
    cfg = compose(USER)
    crit = build_criterion(cfg)
    assert isinstance(crit, plugins.ScaledFocalLoss) and crit.scale == 0.5
    logits, labels = torch.randn(2, 50, 3), torch.randint(-2, 3, (2, 50))
    ref = build_criterion(compose(["profile=smoke", "loss=focal"]))(logits, labels)
    torch.testing.assert_close(crit(logits, labels), 0.5 * ref)  # the user's loss is what is called

    model = build_model(cfg, num_classes=3, criterion=crit)
    assert isinstance(model.backbone.body, plugins.TinyBody) and model.criterion is crit
    out = model(torch.zeros(1, 3, 64, 64))
    assert out.cls_logits.shape[0] == 1 and out.cls_logits.shape[-1] == 3

    module = build_module(cfg, 3, derive_schedule(cfg), None)
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.RAdam) and opt.defaults["lr"] == pytest.approx(0.002)  # profile's lr


def test_user_scheduler_replaces_focalbench_schedule(plugins):
    """optim.scheduler._target_: any scheduler class, given the optimiser and the run's length it asks for."""
    cfg = compose([SEARCH, "profile=smoke", "optim=adamw_onecycle", "trainer.max_steps=20"])
    module = build_module(cfg, 3, derive_schedule(cfg), None)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and sched.total_steps == 20
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(19):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.004, rel=0.05) and lrs[-1] < 1e-4  # one cycle up to max_lr and down
    plain = compose(["profile=smoke", "trainer.max_steps=20"])
    assert isinstance(build_module(plain, 3, derive_schedule(plain), None).configure_optimizers()[
        "lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LambdaLR)  # without it: focalbench's schedule
    cos = compose([SEARCH, "profile=smoke", "optim=adamw_onecycle", "trainer.max_steps=20",
                   "optim.scheduler._target_=torch.optim.lr_scheduler.CosineAnnealingLR", "~optim.scheduler.max_lr",
                   "~optim.scheduler.pct_start"])
    sched = build_module(cos, 3, derive_schedule(cos), None).configure_optimizers()["lr_scheduler"]["scheduler"]
    assert sched.T_max == 20                                                      # T_max from the run's length
    assert config_hash(run_config_for_hash(cos)) != config_hash(run_config_for_hash(cfg))
    with pytest.raises(ConfigError, match=r"^optim.scheduler.max_lr: torch.optim.lr_scheduler.OneCycleLR requires"):
        compose([SEARCH, "profile=smoke", "optim=adamw_onecycle", "~optim.scheduler.max_lr"])


def test_packaged_targets_build_what_the_names_say():
    cfg = compose(["profile=smoke", "loss=ce"])
    assert cfg.loss._target_ == "focalbench.losses.build_classification_loss"
    crit = build_criterion(cfg)
    assert (crit.gamma, crit.alpha) == (0.0, -1.0)  # ce's fixed parameters, by name
    module = build_module(cfg, 3, derive_schedule(cfg), None)
    assert isinstance(module.configure_optimizers()["optimizer"], torch.optim.AdamW)
    dm = build_datamodule(cfg)
    assert type(dm).__name__ == "CocoDataModule" and dm.batch_size == 4


def test_hash_names_user_targets_but_not_focalbench_ones(plugins):
    # focalbench's own targets are implied by the names: the committed runs keep their identity
    assert config_hash(run_config_for_hash(compose(["profile=cpu"]))) == "3082f79e8abb8d2d"
    plain = run_config_for_hash(compose(["profile=smoke"]))
    assert "_target_" not in json.dumps(plain)
    user = run_config_for_hash(compose(USER))
    assert user["loss"]["_target_"] == "my_parts.ScaledFocalLoss"
    other = run_config_for_hash(compose(USER + ["loss._target_=my_parts.ScaledFocalLoss", "loss.scale=0.25"]))
    assert config_hash(user) != config_hash(other)


@pytest.mark.parametrize("override, message", [
    ("loss._target_=my_parts.Nope", "loss._target_=my_parts.Nope: my_parts has no attribute Nope"),
    ("loss._target_=no_such_module.Loss", "cannot import no_such_module"),
    ("loss._target_=focalbench.losses.SigmoidFocalLoss",
     "focalbench's own loss is built by focalbench.losses.build_classification_loss"),
    ("model.backbone._target_=focalbench.model.backbone.SmallResNet",
     "focalbench's own model.backbone is built by focalbench.model.backbone.build_body"),
    ("loss._target_=torch.nn.ReLU", "loss.gamma=2.0: not a parameter of torch.nn.ReLU; its parameters: inplace"),
])
def test_bad_targets_are_one_line(plugins, override, message):
    with pytest.raises(ConfigError) as e:
        compose(USER + [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_user_part_keys_are_checked_against_its_signature(plugins):
    cfg = {"loss": {"_target_": "my_parts.ScaledFocalLoss", "name": "mine", "scal": 2.0}}
    with pytest.raises(ConfigError, match=r"loss.scal=2.0: not a parameter of my_parts.ScaledFocalLoss; "
                                          r"its parameters: gamma, alpha, scale"):
        validate_config(cfg, rules=())
    with pytest.raises(ConfigError, match=r"^loss.out_features: torch.nn.Linear requires it"):
        validate_config({"loss": {"_target_": "torch.nn.Linear", "in_features": 3}}, rules=())


def test_readme_example_trains_from_its_own_folder(tmp_path):
    """The README's command, from a copy of examples/plugins/ (not on sys.path), via the console script."""
    work = tmp_path / "plugins"
    shutil.copytree(EXAMPLE, work)
    exe = Path(sys.executable).with_name("focalbench-train")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "focalbench.train"]),
           "--config-dir", "conf", "profile=smoke", "loss=scaled_focal", "model=tiny_body", "optim=radam",
           "logger=csv_copy", f"hydra.run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "ok" and m["steps"] == 4
    assert (tmp_path / "run" / "csv_copy" / "version_0" / "metrics.csv").exists()  # the user's logger logged
    assert (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").exists()       # and ours stayed on
