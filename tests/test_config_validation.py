"""Config validation before any work (focalbench.config_schema): every rule case by case, in process
(compose + validator, ~50 ms each), and the command line's one-line error via subprocess (2 cases)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import focalbench
from focalbench.config_schema import RULES, ConfigError, check_group_choices, group_options, validate_config
from focalbench.losses.criteria import LOSSES
from focalbench.train import CONF_DIR, compose, run

PROFILES = ("smoke", "cpu", "gpu", "paper")


def error_of(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------ valid configs
@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_validates(profile):
    cfg = compose([f"profile={profile}"])
    assert validate_config(cfg) is cfg


@pytest.mark.parametrize("overrides", [
    ["loss=focal", "loss.gamma=2", "loss.alpha=0.25"], ["loss=ce"], ["loss=alpha_ce", "loss.alpha=0.75"],
    ["loss=ohem", "loss.batch_size=128", "loss.nms_iou=0.5"], ["loss=ohem_1to3"], ["loss=focal_star"],
    ["loss=softmax_focal"], ["anchors.scales=2", "anchors.ratios=3"], ["anchors.ratios=5", "anchors.scales=4"],
    ["trainer.devices=2", "trainer.strategy=ddp"], ["logger=wandb"], ["data=digits"], ["optim=sgd"],
    # boundaries that are allowed
    ["loss.gamma=0"], ["loss.alpha=0"], ["loss.alpha=1"], ["loss.alpha=-1"], ["loss.alpha=-1.0"],
    ["model.prior_prob=null"], ["model.fg_iou=0.4", "model.bg_iou=0.4"], ["data.size_divisible=256"],
    ["profile=smoke"],  # size_divisible 64 = max_size 64: one padded 64 px square (power of two)
])
def test_documented_examples_validate(overrides):
    compose(overrides)


def test_every_loss_file_is_in_the_schema_and_validates():
    names = sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml"))
    assert names == sorted(LOSSES)
    for name in names:
        assert compose([f"loss={name}"]).loss.name == name


def test_every_rule_the_code_owns_resolves():
    """The schema names most rules by their owner (focalbench.checks.owned): each one imports and works."""
    for rule in RULES:
        text = rule.allowed({}) if callable(rule.allowed) and not rule.needs_cfg else None
        if text is not None:
            assert isinstance(text, str) and text, rule.key
    for name, spec in LOSSES.items():  # each settable parameter is one the constructor takes
        import inspect

        accepted = set(inspect.signature(spec.cls.__init__).parameters) - {"self"}
        assert set(spec.params) | set(spec.fixed) <= accepted, name


@pytest.mark.parametrize("overrides, build", [
    (["loss.gamma=-1"], lambda: __import__("focalbench.losses", fromlist=["x"]).SigmoidFocalLoss(gamma=-1)),
    (["loss=focal_star", "loss.gamma=0"], lambda: __import__("focalbench.losses", fromlist=["x"]).FocalStarLoss(gamma=0)),
    (["loss=ohem", "loss.nms_iou=0"], lambda: __import__("focalbench.losses", fromlist=["x"]).OHEMLoss(nms_iou=0)),
    (["loss.alpha=-0.5"], lambda: __import__("focalbench.losses", fromlist=["x"]).SigmoidFocalLoss(alpha=-0.5)),
    (["anchors.ratios=2"], lambda: __import__("focalbench.model.anchors", fromlist=["x"]).aspect_ratios(2)),
    (["anchors.scales=0"], lambda: __import__("focalbench.model.anchors", fromlist=["x"]).anchor_scales(0)),
    (["model.backbone.norm=batch"], lambda: __import__("focalbench.model.backbone", fromlist=["x"]).norm_layer("batch")),
    (["optim.ema_decay=1"], lambda: __import__("focalbench.model.ema", fromlist=["x"]).WeightEMA(1)),
    (["model.fg_iou=0.3"], lambda: __import__("focalbench.model.matcher", fromlist=["x"]).BatchedMatcher(0.3, 0.4)),
])
def test_config_check_and_constructor_say_the_same_line(overrides, build):
    """One rule, two callers: the config check and the constructor refuse a value with one identical line
    (a config may also say null where the code then builds nothing: ``optim.ema_decay=null``, no EMA)."""
    line = error_of(overrides)
    with pytest.raises(ValueError) as info:
        build()
    assert line in (str(info.value), str(info.value) + ", or null")


# ------------------------------------------------------------------------- the list, case by case
ALL_LOSSES = "ce, alpha_ce, focal, focal_star, softmax_focal, ohem, ohem_1to3"


@pytest.mark.parametrize("overrides, message", [
    # unknown loss names: as a value and as a config group option
    (["loss.name=focl"], f"loss.name=focl: unknown loss; allowed: {ALL_LOSSES}"),
    (["loss=focl"], "loss=focl: unknown loss; allowed: alpha_ce, ce, focal, focal_star, ohem, ohem_1to3, "
                    "softmax_focal"),
    # gamma < 0 (and not a number)
    (["loss.gamma=-1"], "loss.gamma=-1: must be a number >= 0"),
    (["loss.gamma=-0.5"], "loss.gamma=-0.5: must be a number >= 0"),
    (["loss.gamma=abc"], "loss.gamma=abc: must be a number >= 0"),
    (["loss.gamma=inf"], "loss.gamma=inf: must be a number >= 0"),
    (["loss=focal_star", "loss.gamma=0"], "loss.gamma=0: must be a number > 0 (FL* divides by gamma)"),
    # alpha outside [0, 1]; only -1 disables the weighting (a -0.25 is a typo, and one sentinel = one hash)
    (["loss.alpha=1.5"], "loss.alpha=1.5: must be in [0, 1], or -1 to disable the alpha weighting"),
    (["loss.alpha=-0.5"], "loss.alpha=-0.5: must be in [0, 1], or -1 to disable the alpha weighting"),
    (["loss.alpha=-2"], "loss.alpha=-2: must be in [0, 1], or -1 to disable the alpha weighting"),
    (["loss.alpha=nan"], "loss.alpha=nan: must be in [0, 1], or -1 to disable the alpha weighting"),
    (["loss=ohem", "loss.alpha=-0.25"], "loss.alpha=-0.25: must be in [0, 1], or -1 to disable the alpha weighting"),
    # zero scales / ratios
    (["anchors.scales=0"], "anchors.scales=0: must be an integer >= 1"),
    (["anchors.scales=2.5"], "anchors.scales=2.5: must be an integer >= 1"),
    (["anchors.ratios=0"], "anchors.ratios=0: must be one of 1, 3, 5"),
    (["anchors.ratios=2"], "anchors.ratios=2: must be one of 1, 3, 5"),
    (["anchors.size_multiplier=0"], "anchors.size_multiplier=0: must be a number > 0"),
    # image sizes vs the largest stride (P7 = 128)
    (["data.size_divisible=100"], "data.size_divisible=100: must be a multiple of 128 (the P7 stride), or a "
                                  "power of two >= data.max_size (128)"),
    (["data.size_divisible=64"], "data.size_divisible=64: must be a multiple of 128 (the P7 stride), or a "
                                 "power of two >= data.max_size (128)"),
    (["profile=smoke", "data.size_divisible=32"], "data.size_divisible=32: must be a multiple of 128 (the P7 "
                                                  "stride), or a power of two >= data.max_size (64)"),
    (["profile=smoke", "data.size_divisible=96"], "data.size_divisible=96: must be a multiple of 128 (the P7 "
                                                  "stride), or a power of two >= data.max_size (64)"),
    (["data.size_divisible=0"], "data.size_divisible=0: must be a multiple of 128 (the P7 stride), or a power "
                                "of two >= data.max_size (128)"),
    (["data.image_size=200"], "data.max_size=128: must be an integer >= data.image_size (200)"),
    # unknown profiles
    (["profile=laptop"], "profile=laptop: unknown profile; allowed: cpu, gpu, paper, smoke"),
    (["data=cocoo"], "data=cocoo: unknown data; allowed: coco, digits, shapes"),
    # the rest of the list
    (["optim.lr=0"], "optim.lr=0: must be a number > 0"),
    (["optim.lr=-0.01"], "optim.lr=-0.01: must be a number > 0"),
    (["trainer.max_steps=0"], "trainer.max_steps=0: must be an integer >= 1"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["model.prior_prob=0"], "model.prior_prob=0: must be in (0, 1), or null"),
    (["model.prior_prob=1"], "model.prior_prob=1: must be in (0, 1), or null"),
    (["model.backbone.name=resnet152"], "model.backbone.name=resnet152: unknown backbone; allowed: small, "
                                        "resnet18, resnet34, resnet50, resnet101"),
    (["model.fg_iou=0.3"], "model.fg_iou=0.3: must be in (0, 1] and >= model.bg_iou (0.4)"),
    # beyond the list: parameters and keys that do not exist
    (["loss=ce", "+loss.gamma=2"], "loss.gamma=2: not a parameter of loss ce; its parameters: none"),
    (["loss=alpha_ce", "+loss.gamma=1"], "loss.gamma=1: not a parameter of loss alpha_ce; its parameters: alpha"),
    (["loss.gama=2"], "loss.gama=2: unknown key (did you mean loss.gamma?); loss has: _target_, alpha, gamma, name"),
    (["+loss.gama=2"], "+loss.gama=2: unknown key (did you mean loss.gamma?); loss has: _target_, alpha, batch_size, "
                       "beta, gamma, name, neg_pos_ratio, nms_boxes, nms_iou, per_image"),
    (["data.build_args.train=0"], "data.build_args.train=0: must be an integer >= 1"),
    (["data.build=coco"], "data.build=coco: unknown built-in dataset; allowed: shapes, digits, or null"),
    (["optim.name=adam"], "optim.name=adam: unknown optimizer; allowed: sgd, adamw"),
    (["optim.steps=[800,600]"], "optim.steps=[800,600]: must be an ascending list of integers >= 1"),
    (["trainer.devices=0"], "trainer.devices=0: must be auto, -1, an integer >= 1 or a list of device indices"),
    (["logger.name=mlflow"], "logger.name=mlflow: unknown logger; allowed: csv, wandb, tensorboard"),
])
def test_bad_value_is_one_line_naming_key_value_allowed(overrides, message):
    assert error_of(overrides) == message


def test_trainer_keys_are_lightning_trainer_arguments():
    """Any ``lightning.Trainer`` argument is reachable as ``trainer.*`` (checked against its signature)."""
    import inspect

    from lightning import Trainer

    from focalbench.builders import build_trainer

    msg = error_of(["+trainer.max_step=5"])
    assert msg.startswith("+trainer.max_step=5: unknown key (did you mean trainer.max_steps?); trainer has: ")
    listed = set(msg.split("trainer has: ")[1].split(", "))
    signature = set(inspect.signature(Trainer.__init__).parameters) - {"self", "logger", "default_root_dir",
                                                                       "enable_model_summary"}
    assert signature <= listed and {"num_threads", "val_every_n_epochs"} <= listed
    assert error_of(["+trainer.logger=false"]).startswith("+trainer.logger=false: unknown key")
    cfg = compose(["profile=smoke", "+trainer.accumulate_grad_batches=2", "+trainer.limit_val_batches=1",
                   "+trainer.callbacks=[{_target_: lightning.pytorch.callbacks.LearningRateMonitor}]"])
    t = build_trainer(cfg, Path("unused"), 4, [], [])
    assert t.accumulate_grad_batches == 2 and t.limit_val_batches == 1
    assert any(type(cb).__name__ == "LearningRateMonitor" for cb in t.callbacks)
    with pytest.raises(ConfigError, match=r"^trainer.callbacks\[0\]._target_=nope.X: cannot import nope"):
        compose(["profile=smoke", "+trainer.callbacks=[{_target_: nope.X}]"])


def test_sweep_choices_of_a_group_are_checked():
    groups = group_options([CONF_DIR])
    check_group_choices(["loss=focal,ce", "profile=choice(smoke,cpu)", "hydra/sweeper=optuna", "~logger"], groups)
    with pytest.raises(ConfigError, match=r"^loss=focl: unknown loss; allowed: alpha_ce, ce, "):
        check_group_choices(["loss=focal,focl"], groups)
    with pytest.raises(ConfigError, match=r"^profile=laptop: unknown profile"):
        check_group_choices(["profile=choice(smoke,laptop)"], groups)


def test_missing_mandatory_value_is_rejected_only_for_a_run():
    cfg = compose(["profile=paper"])  # data=coco: data.root=??? until the user gives it
    with pytest.raises(ConfigError, match=r"^data\.root is required \(the COCO folder holding annotations/ "):
        validate_config(cfg, complete=True)
    validate_config(compose(["profile=paper", "data.root=/data/coco"]), complete=True)


def test_run_validates_before_making_anything(tmp_path):
    cfg = compose(["profile=smoke", "loss.gamma=-1"], validate=False)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"^loss\.gamma=-1: "):
        run(cfg, out)
    assert not out.exists()


def test_plan_runs_validates_every_planned_config():
    from focalbench.reproduce.runner import plan_runs
    from focalbench.reproduce.sweeps import Row, Table, load_tables

    tables = load_tables(["1a", "1b", "1c", "1d"])
    specs = plan_runs(tables, "smoke", [0])
    assert len(specs) == sum(len(t.rows) for t in tables)
    bad = Table("1x", "t", "c", (Row("ok", ("loss=focal",), {}), Row("typo", ("loss=alpha_ce", "loss.alpha=7.5"), {})))
    with pytest.raises(ConfigError, match=r"^table 1x, row 'typo': loss\.alpha=7\.5: must be in \[0, 1\]"):
        plan_runs([bad], "smoke", [0])


def test_a_table_runs_at_least_its_min_seeds(tmp_path):
    """Table 3's equivalence claim needs power: its YAML's min_seeds (10) in any study of several seeds."""
    from focalbench.reproduce.runner import plan_runs
    from focalbench.reproduce.sweeps import SweepFileError, load_table, load_tables

    t3, t1a = load_tables(["3", "1a"])
    assert (t3.min_seeds, t1a.min_seeds) == (10, 1)
    specs = plan_runs([t3, t1a], "smoke", [0, 1, 2])
    assert sorted({s.seed for s in specs if s.table == "3"}) == list(range(10))
    assert sorted({s.seed for s in specs if s.table == "1a"}) == [0, 1, 2]
    assert t3.seeds_for(list(range(12))) == list(range(12))
    assert t3.seeds_for([0]) == [0]                          # a single-seed look stays one seed
    (tmp_path / "table9_x.yaml").write_text("table: '9'\ntitle: t\nclaim: c\nmin_seeds: 0\nrows:\n"
                                            "  - {name: a, overrides: [loss=ce], paper: {AP: 1, AP50: 1, AP75: 1}}\n")
    with pytest.raises(SweepFileError, match="min_seeds=0 must be an integer >= 1"):
        load_table("9", tmp_path)


# ------------------------------------------------------------------------------ the command line (2 cases)
@pytest.mark.parametrize("override, message", [
    ("loss.gamma=-1", "error: loss.gamma=-1: must be a number >= 0"),
    ("profile=laptop", "error: profile=laptop: unknown profile; allowed: cpu, gpu, paper, smoke"),
])
def test_cli_prints_one_line_and_exits_nonzero(tmp_path, override, message):
    src = str(Path(focalbench.__file__).resolve().parents[1])  # this checkout's package, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "FOCALBENCH_CONF": str(CONF_DIR)}
    env.pop("HYDRA_FULL_ERROR", None)
    p = subprocess.run([sys.executable, "-m", "focalbench.train", override], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [message]
    assert not (tmp_path / "outputs").exists()  # rejected before Hydra made a run directory


def test_the_detection_apps_groups_are_its_own():
    """The classification app's groups (data, model, profile of conf_classify/) once showed in the detection
    app's --help as classify/data, classify/model, classify/profile."""
    from focalbench.paths import CLASSIFY_CONF_DIR

    groups = group_options([CONF_DIR])
    assert sorted(groups) == ["anchors", "data", "logger", "loss", "model", "optim", "profile", "trainer"]
    assert (CLASSIFY_CONF_DIR / "config.yaml").is_file() and not (CONF_DIR / "classify").exists()
