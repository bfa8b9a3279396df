"""Bad input is refused before any work, in one line: ``error: <key or file>: <what is allowed>`` on stderr,
exit code 2, and no run folder or half-written file left behind.

Most cases run in process (the apps' own ``cli()`` with Hydra's ``main`` replaced by a tripwire, or the
compose/validation API: ~50 ms each); a handful run the real command lines end to end.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from focalbench.config_schema import ConfigError, check_output_dir, os_error_line, validate_config
from focalbench.data import CocoDataModule, DataError, build_dataset
from focalbench.runstore import config_hash
from focalbench.train import compose, run_config_for_hash

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


@pytest.fixture(autouse=True)
def _keep_signal_handlers():
    """``focalbench.train.cli`` installs SIGINT/SIGTERM handlers: put pytest's back after each test."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _cli(monkeypatch, capsys, module, argv):
    """Run ``module.cli()`` with ``argv``; Hydra's ``main`` must not be reached. Returns (exit code, stderr)."""
    def tripwire():
        raise AssertionError(f"{module.__name__}.main reached: {argv} was not refused before Hydra")

    monkeypatch.setattr(module, "main", tripwire)
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    with pytest.raises(SystemExit) as info:
        module.cli()
    return info.value.code, capsys.readouterr().err


def _run(args, cwd=ROOT, timeout=180, env=None):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env or ENV)


def _only_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def _last_line(stderr: str) -> str:
    """A run that got as far as Lightning logs a few lines first; the error is still the one last line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-3000:]
    return lines[-1]


# ------------------------------------------------------------------------- the committed results' hashes
def test_config_hash_of_committed_configs_is_unchanged():
    """Computed with the code before this change (results/cpu holds runs under this hash): validation work
    must never add or rename a hashed key."""
    assert config_hash(run_config_for_hash(compose(["profile=cpu"]))) == "3082f79e8abb8d2d"
    paper_defaults = ["profile=cpu", "loss=focal", "loss.gamma=2.0", "loss.alpha=0.25"]
    assert config_hash(run_config_for_hash(compose(paper_defaults))) == "3082f79e8abb8d2d"


# ------------------------------------------------------------------------------ 1. empty / unusable splits
def _coco_set(root: Path, val_images: list, train_anns: list | None = None) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    cats = [{"id": 1, "name": "thing"}]
    for split, ids in (("train", [1, 2]), ("val", val_images)):
        imgs = [{"id": i, "file_name": f"{split}_{i}.png", "width": 64, "height": 64} for i in ids]
        for im in imgs:
            Image.new("RGB", (64, 64), (im["id"] * 40 % 255, 90, 120)).save(root / "images" / im["file_name"])
        anns = ([{"id": n + 1, "image_id": i, "category_id": 1, "bbox": [8, 8, 20, 20], "area": 400, "iscrowd": 0}
                 for n, i in enumerate(ids)] if split == "val" or train_anns is None else train_anns)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return root


def _dm(root: Path) -> CocoDataModule:
    return CocoDataModule(root=str(root), image_size=64, max_size=64, size_divisible=64, batch_size=2,
                          flip_prob=0.0)


def test_empty_validation_split_is_refused_at_setup(tmp_path):
    root = _coco_set(tmp_path / "set", val_images=[])
    with pytest.raises(DataError) as e:
        _dm(root).setup("fit")  # before: accepted, and train.py failed after training ('NoneType' ... subscriptable)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"annotation file {root}/annotations/instances_val.json: ")
    assert "no validation images" in msg


def test_training_split_without_boxes_is_refused_at_setup(tmp_path):
    root = _coco_set(tmp_path / "set", val_images=[1], train_anns=[])
    with pytest.raises(DataError) as e:
        _dm(root).setup("fit")  # keep_empty=True: two pure negatives, nothing a detector could learn
    msg = str(e.value)
    assert "\n" not in msg and "instances_train.json" in msg and "no boxes to train on" in msg


def test_empty_validation_split_end_to_end_stops_before_training(tmp_path):
    root = _coco_set(tmp_path / "set", val_images=[])
    run_dir = tmp_path / "run"
    p = _run(["focalbench.train", "profile=smoke", f"data.root={root}", "data.build=null",
              f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    line = _last_line(p.stderr)
    assert "instances_val.json" in line and "no validation images" in line
    m = json.loads((run_dir / "metrics.json").read_text())  # data errors are recorded, as every failed run
    assert m["status"] == "failed" and "no validation images" in m["reason"] and m["steps"] == 0


# ------------------------------------------------------------------------------------ 2. +key overrides
@pytest.mark.parametrize("overrides, needle", [
    (["+foo=1"], "+foo=1: unknown key; the config has: anchors, checkpoint, "),
    (["+trainer.max_step=5"], "+trainer.max_step=5: unknown key (did you mean trainer.max_steps?); trainer has: "),
    (["++trainer.max_step=5"], "++trainer.max_step=5: unknown key (did you mean trainer.max_steps?)"),
    (["+model.head.widht=64"], "+model.head.widht=64: unknown key (did you mean model.head.width?); model.head has:"),
    (["+seeds=3"], "+seeds=3: unknown key (did you mean seed?)"),
    (["+trainer.lr=0.1"], "+trainer.lr=0.1: unknown key (did you mean optim.lr?)"),
    (["profile=smoke", "+data.root=/x"], "+data.root=/x: data.root is already in the config; allowed: "
                                         "data.root=/x (no +) or ++data.root=/x"),
])
def test_unknown_added_key_is_refused_naming_the_closest(overrides, needle):
    with pytest.raises(ConfigError) as e:
        compose(overrides)  # before: +foo=1 and +trainer.max_step=5 composed, trained, and changed the hash
    assert "\n" not in str(e.value) and str(e.value).startswith(needle), str(e.value)


@pytest.mark.parametrize("overrides", [
    ["loss=ce", "+loss.gamma=0"],            # a key another loss defines: the loss check has the last word
    ["+data.verify_images=all"],             # CocoDataModule arguments that no config file sets
    ["+data.drop_last=false"],
    ["++optuna.storage=sqlite:///x.db", "++optuna.trial_number=3"],   # what the sweeper adds to each job
    ["++loss.gamma=1.5"],                    # ++ on a key that exists: a plain override
    ["+hydra.launcher.additional_parameters.mail-type=END"],          # README: any #SBATCH option
])
def test_legitimate_added_keys_still_compose(overrides):
    try:
        cfg = compose(overrides)
    except ConfigError as e:
        assert overrides[0] == "loss=ce" and str(e).startswith("loss.gamma=0: not a parameter of loss ce"), e
        return
    assert cfg is not None


def test_added_key_in_a_multirun_sweep_is_refused(monkeypatch, capsys, tmp_path):
    import focalbench.train as train

    code, err = _cli(monkeypatch, capsys, train, ["-m", "+trainer.max_step=5,10",
                                                  f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert code == 2 and err.startswith("error: +trainer.max_step=5,10: unknown key (did you mean trainer.max_steps?)")
    assert err.count("\n") == 1 and not (tmp_path / "sweep").exists()


# ------------------------------------------------------------------------------------------ 3. data.root
@pytest.mark.parametrize("overrides", [["data=coco", "profile=smoke"], ["data=coco", "profile=gpu"]])
def test_coco_without_root_names_data_root_not_a_builtin_folder(overrides):
    with pytest.raises(ConfigError) as e:
        compose(overrides)  # before: "annotation file data/shapes_smoke/annotations/instances_val2017.json: not found"
    assert str(e.value).startswith("data.root is required (the COCO folder holding annotations/ and the images)")


def test_coco_root_is_required_and_a_given_one_is_kept():
    with pytest.raises(ConfigError, match=r"^data\.root is required \(the COCO folder holding annotations/ and "
                                          r"the images\): add data\.root=/path/to/coco$"):
        validate_config(compose(["data=coco"]), complete=True)
    cfg = compose(["data=coco", "profile=smoke", "data.root=/data/coco"])
    assert validate_config(cfg, complete=True).data.root == "/data/coco"
    assert compose(["profile=smoke"]).data.root == "data/shapes_smoke"  # built-in sets keep their folders


@pytest.mark.parametrize("profile, root", [("smoke", "data/digits_smoke"), ("gpu", "data/digits_256")])
def test_a_profile_gives_each_builtin_set_its_own_folder(profile, root):
    """profile=smoke data=digits used data/shapes_smoke, then failed with advice to delete it (which would break
    every shapes run); each built-in set now has a folder of its own under a profile."""
    assert compose([f"profile={profile}", "data=digits"]).data.root == root


def test_a_built_set_asked_with_other_arguments_names_a_folder_of_its_own(tmp_path):
    from focalbench.data import CocoDataModule
    from focalbench.data.build import build_dataset

    build_dataset("shapes", tmp_path / "s", train=4, val=2, size=64, progress=False)
    dm = CocoDataModule(root=str(tmp_path / "s"), build="shapes", build_args={"train": 4, "val": 3, "size": 64})
    with pytest.raises(DataError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert "give this set its own folder, e.g. data.root=" in msg and "shapes_s64_t4_v3" in msg
    assert "delete" not in msg and (tmp_path / "s" / "build.json").exists()


# ------------------------------------------------------------------------------- 4. one line, not a trace
def test_classify_detection_only_loss_lists_the_supported_ones(monkeypatch, capsys, tmp_path):
    import focalbench.classify.__main__ as app

    code, err = _cli(monkeypatch, capsys, app, ["loss=ohem", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: loss.name=ohem: not a loss of the classification app")
    assert err.rstrip().endswith("allowed: ce, alpha_ce, focal, focal_star, softmax_focal")
    assert not (tmp_path / "run").exists()


def test_classify_losses_are_the_detection_losses_without_ohem():
    from focalbench.classify.criterion import CLASSIFICATION_LOSSES
    from focalbench.losses.criteria import LOSSES

    assert set(CLASSIFICATION_LOSSES) == set(LOSSES) - {"ohem", "ohem_1to3"}


@pytest.mark.parametrize("override, start", [
    ("data.ratoi=3", "error: data.ratoi=3: unknown key (did you mean data.ratio?); data has: class_sep, flip_y, kind, "),
    ("+data.ratoi=3", "error: +data.ratoi=3: unknown key (did you mean data.ratio?)"),
    ("+foo=1", "error: +foo=1: unknown key; the config has: csv_log, data, "),
    ("trainer.max_step=5", "error: trainer.max_step=5: unknown key (did you mean trainer.max_steps?)"),
])
def test_classify_typo_key_is_one_line_with_the_closest(monkeypatch, capsys, tmp_path, override, start):
    import focalbench.classify.__main__ as app

    code, err = _cli(monkeypatch, capsys, app, ["profile=smoke", override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2 and err.count("\n") == 1 and err.startswith(start), err
    assert not (tmp_path / "run").exists()


def _full_disk(monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


@pytest.mark.parametrize("app", ["focalbench.train", "focalbench.classify.__main__"])
@pytest.mark.parametrize("case", ["full", "file", "proc"])
def test_unusable_run_dir_is_one_line_naming_the_folder(monkeypatch, capsys, tmp_path, app, case):
    import importlib

    module = importlib.import_module(app)
    (tmp_path / "afile").write_text("x")
    run_dir = {"full": tmp_path / "runs" / "a", "file": tmp_path / "afile" / "run",
               "proc": Path("/proc/focalbench-no-such/run")}[case]
    if case == "full":
        (tmp_path / "runs").mkdir()
        _full_disk(monkeypatch)
    code, err = _cli(monkeypatch, capsys, module, ["profile=smoke", f"hydra.run.dir={run_dir}"])
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: hydra.run.dir={run_dir}: "), err
    folder = {"full": tmp_path / "runs", "file": tmp_path / "afile", "proc": Path("/proc")}[case]
    assert str(folder) in err and ".tmp" not in err
    if case == "full":
        assert "No space left on device" in err
        assert list((tmp_path / "runs").iterdir()) == []  # no run folder, no .hydra/config.yaml, no probe file


def test_unwritable_run_dir_end_to_end_leaves_nothing(tmp_path):
    p = _run(["focalbench.train", "profile=smoke", "hydra.run.dir=/proc/focalbench-no-such/run"], cwd=tmp_path)
    assert p.returncode == 2
    assert _only_line(p.stderr).startswith("error: hydra.run.dir=/proc/focalbench-no-such/run: cannot write in "
                                           "folder /proc")
    assert list(tmp_path.iterdir()) == []


def test_check_output_dir_leaves_no_probe(tmp_path):
    check_output_dir(tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []


def test_data_build_into_unwritable_root_is_one_line(monkeypatch, capsys, tmp_path):
    import tempfile

    from focalbench.data.__main__ import main

    def denied(*a, dir=None, **k):
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(dir, ".focalbench-probe.x.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # a read-only folder (the tests may run as root)
    ro = tmp_path / "ro"
    ro.mkdir()
    assert main(["build", "shapes", "--root", str(ro), "--train", "2", "--val", "1", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --root={ro}: cannot write in folder {ro} (Permission denied)\n"
    assert list(ro.iterdir()) == []


def test_data_build_end_to_end_unwritable_root(tmp_path):
    p = _run(["focalbench.data", "build", "shapes", "--root", "/proc/focalbench-data"], cwd=tmp_path)
    assert p.returncode == 2
    assert _only_line(p.stderr).startswith("error: --root=/proc/focalbench-data: cannot write in folder /proc")


def test_data_build_full_disk_names_the_folder_and_leaves_nothing(monkeypatch, capsys, tmp_path):
    from focalbench.data import build as build_module
    from focalbench.data.__main__ import main

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path).parent / f".{Path(path).name}.k2.tmp"))

    monkeypatch.setattr(build_module, "_write_json", full)
    assert main(["build", "shapes", "--root", str(tmp_path), "--train", "2", "--val", "1", "--size", "64",
                 "--workers", "1"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err == f"error: folder {tmp_path}: cannot write there (No space left on device)"
    assert list(tmp_path.iterdir()) == []  # the .shapes.building-<pid> folder is gone (it used to stay)


def test_os_errors_name_the_folder_not_a_temporary_file():
    e = PermissionError(errno.EACCES, "Permission denied", "/r/cpu/.write-test.u81x2k.tmp")
    assert os_error_line(e) == "folder /r/cpu: cannot write there (Permission denied)"
    e = OSError(errno.ENOSPC, "No space left on device", "/runs/a/.metrics.json.abc123.tmp")
    assert os_error_line(e) == "folder /runs/a: cannot write there (No space left on device)"
    e = OSError(errno.ENOSPC, "No space left on device", "/data/.shapes.building-77/images/train_000001.png")
    assert os_error_line(e) == "folder /data: cannot write there (No space left on device)"
    assert os_error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "/a/b.json")) == \
        "/a/b.json: No such file or directory"


def test_password_in_storage_url_is_one_line_exit_2(tmp_path):
    secret = "pw-" + os.urandom(6).hex()
    p = _run(["focalbench.train", "-m", "hydra/sweeper=optuna", "profile=smoke",
              f"hydra.sweeper.storage=postgresql://bench:{secret}@127.0.0.1:9/optuna",
              f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    line = _only_line(p.stderr)  # before: an 18-line traceback, exit 1
    assert line.startswith("error: hydra.sweeper.storage='postgresql://bench:***@127.0.0.1:9/optuna' holds a password")
    assert "PGPASSWORD" in line and secret not in p.stdout + p.stderr
    assert not (tmp_path / "sweep").exists()


# ----------------------------------------------------------------------------------------- 5. signals
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_signal_during_training_exits_128_plus_signal_and_is_recorded(tmp_path, sig, code):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "focalbench.train", "profile=smoke", "trainer.max_steps=100000",
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "csv").exists():  # the loggers exist: the run is inside train.run
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err[-3000:]  # before: 1 (Lightning's exit(1) on KeyboardInterrupt)
    name = signal.Signals(sig).name
    assert err.strip().splitlines()[-1] == f"error: interrupted ({name})"
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "failed" and m["reason"] == f"interrupted ({name})"  # before: "SystemExit: 1"


# ------------------------------------------------------------------------ 6. the list of invalid configs
# (command line, the key its one line must name). Each one through focalbench.train's own cli(), in process.
INVALID = [
    (["profile=laptop"], "profile=laptop"),
    (["loss=focl"], "loss=focl"),
    (["data=cocoo"], "data=cocoo"),
    (["optim=adam"], "optim=adam"),
    (["model=fcos"], "model=fcos"),
    (["anchors=big"], "anchors=big"),
    (["loss=focal,focl"], "loss=focl"),                       # inside a sweep list (a plain run of 2 values)
    (["loss.gamma=abc"], "loss.gamma=abc"),
    (["loss.gamma=-1"], "loss.gamma=-1"),
    (["loss.gamma=inf"], "loss.gamma=inf"),
    (["loss.alpha=1.5"], "loss.alpha=1.5"),
    (["loss.alpha=-0.25"], "loss.alpha=-0.25"),
    (["loss.alpha=nan"], "loss.alpha=nan"),
    (["loss=focal_star", "loss.gamma=0"], "loss.gamma=0"),
    (["loss=focal_star", "loss.gamma=-0.5"], "loss.gamma=-0.5"),
    (["loss=ohem", "loss.batch_size=0"], "loss.batch_size=0"),
    (["loss=ohem", "loss.nms_boxes=boxes"], "loss.nms_boxes=boxes"),
    (["loss=ce", "+loss.gamma=2"], "loss.gamma=2"),
    (["optim.lr=-0.01"], "optim.lr=-0.01"),
    (["optim.lr=0"], "optim.lr=0"),
    (["optim.lr=fast"], "optim.lr=fast"),
    (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5"),
    (["optim.steps=[800,600]"], "optim.steps=[800,600]"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0"),
    (["trainer.max_steps=1.5"], "trainer.max_steps=1.5"),
    (["trainer.devices=0"], "trainer.devices=0"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.image_size=abc"], "data.image_size=abc"),
    (["data.size_divisible=100"], "data.size_divisible=100"),
    (["data.flip_prob=2"], "data.flip_prob=2"),
    (["anchors.scales=0"], "anchors.scales=0"),
    (["anchors.scales=2.5"], "anchors.scales=2.5"),
    (["anchors.ratios=2"], "anchors.ratios=2"),
    (["anchors.size_multiplier=-1"], "anchors.size_multiplier=-1"),
    (["model.backbone.name=resnet152"], "model.backbone.name=resnet152"),
    (["model.fg_iou=0.3"], "model.fg_iou=0.3"),
    (["model.prior_prob=1"], "model.prior_prob=1"),
    (["seed=-1"], "seed=-1"),
    (["eval_backend=coco"], "eval_backend=coco"),
    (["logger.name=mlflow"], "logger.name=mlflow"),
    (["+foo=1"], "+foo=1"),
    (["+trainer.max_step=5"], "+trainer.max_step=5"),
    (["++model.heads=2"], "++model.heads=2"),
    (["trainer.max_step=5"], "trainer.max_step=5"),
    (["loss.gama=2"], "loss.gama=2"),
    (["data.build_args.train=0"], "data.build_args.train=0"),
    (["data.build_args.size=16"], "data.build_args.size=16"),
    (["data.build=imagenet"], "data.build=imagenet"),
    (["data.bad_boxes=drop"], "data.bad_boxes=drop"),
    (["data=coco", "profile=smoke"], "data.root"),
    (["profile=paper"], "data.root"),
    (["hydra.run.dir=/proc/focalbench-no-such/run"], "hydra.run.dir=/proc/focalbench-no-such/run"),
]


@pytest.mark.parametrize("argv, key", INVALID, ids=[" ".join(a) for a, _ in INVALID])
def test_invalid_command_line_is_refused_in_one_line(monkeypatch, capsys, tmp_path, argv, key):
    import focalbench.train as train

    if not any(a.startswith("hydra.run.dir=") for a in argv):
        argv = [*argv, f"hydra.run.dir={tmp_path / 'run'}"]
    code, err = _cli(monkeypatch, capsys, train, argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert key in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, key", [
    (["+trainer.max_step=5"], "+trainer.max_step=5: unknown key (did you mean trainer.max_steps?)"),
    (["data=coco", "profile=smoke"], "data.root is required (the COCO folder holding annotations/ and the images)"),
])
def test_invalid_command_line_end_to_end(tmp_path, argv, key):
    p = _run(["focalbench.train", *argv], cwd=tmp_path)
    assert p.returncode == 2
    assert _only_line(p.stderr).startswith(f"error: {key}")
    assert list(tmp_path.iterdir()) == []  # no outputs/ run folder


@pytest.mark.parametrize("argv, needle", [
    (["build", "shapes", "--train", "0"], "build shapes: train=0 must be an integer >= 1"),
    (["build", "shapes", "--size", "16"], "build shapes: size=16 must be an integer >= 32"),
    (["build", "shapes", "--seed", "-1"], "build shapes: seed=-1 must be an integer >= 0"),
])
def test_bad_data_build_args_are_one_line(capsys, tmp_path, argv, needle):
    from focalbench.data.__main__ import main

    assert main([*argv, "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {needle}\n"
    assert list(tmp_path.iterdir()) == []
