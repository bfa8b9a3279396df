"""How a run is recorded: W&B run names, groups, job types and tags (offline); the TensorBoard option; each
log line printed once; the console scripts."""

import importlib.metadata
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from focalbench.tracking import naming_overrides, run_identity

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    from focalbench.data import build_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    build_dataset("shapes", root, train=16, val=8, size=64, progress=False)
    return root


def wandb_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}


def offline_run_record(run_dir: Path):
    """The run record (name, group, job type, tags) of the one offline W&B run under ``run_dir``: the
    ``.wandb`` file is a LevelDB-style log of protobuf records (7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first, then middle / last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "run":
                return record.run
    raise AssertionError(f"no run record in {path}")


# ------------------------------------------------------------------------------------------ W&B identity
def test_run_identity_rules():
    # the reproduction today: tags.group / tags.job_type, the row's overrides and the seed
    repro = ["profile=cpu", "loss=focal", "loss.gamma=2.0", "loss.alpha=0.25", "seed=1"]
    i = run_identity(repro, {"group": "table1b", "job_type": "reproduce"}, 1, profile="cpu", loss="focal")
    assert i == {"name": "table1b/loss=focal,loss.gamma=2.0,loss.alpha=0.25/seed=1", "group": "table1b",
                 "job_type": "reproduce", "tags": ["profile=cpu", "loss=focal", "seed=1", "table1b"]}
    # ... and with the row's name passed as tags.row
    i = run_identity(repro, {"group": "table1b", "job_type": "reproduce", "row": "g=2 a=.25"}, 1)
    assert i["name"] == "table1b/g=2 a=.25/seed=1"
    # a plain run: the override set, recording keys and the data folder left out; no group
    plain = ["profile=smoke", "data.root=/data/x", "loss=focal", "loss.gamma=2.0", "seed=1", "logger=wandb",
             "hydra.run.dir=/tmp/r", "trainer.enable_checkpointing=true", "ckpt_path=last"]
    assert naming_overrides(plain) == ["loss=focal", "loss.gamma=2.0", "seed=1"]
    assert run_identity(plain, {}, 1) == {"name": "loss=focal,loss.gamma=2.0,seed=1", "group": None,
                                          "job_type": "train", "tags": ["seed=1"]}
    assert run_identity([], {}, 0)["name"] == "defaults"
    # grouped by the Optuna study, else by the Hydra sweep directory
    assert run_identity(plain, {}, 1, study="search_gamma_alpha")["group"] == "search_gamma_alpha"
    swept = run_identity(plain, {}, 1, sweep_dir="/home/u/multirun/2024-05-01/18-34-02")
    assert (swept["group"], swept["job_type"]) == ("2024-05-01/18-34-02", "sweep")
    assert run_identity(plain, {"name": "mine", "group": "g", "job_type": "debug"}, 1)["name"] == "mine"


def test_wandb_multirun_names_groups_offline(smoke_root, tmp_path):
    pytest.importorskip("wandb")
    sweep = tmp_path / "multirun" / "gamma-sweep"
    p = subprocess.run([sys.executable, "-m", "focalbench.train", "-m", "profile=smoke", f"data.root={smoke_root}",
                        "logger=wandb", "logger.log_images=0", "trainer.max_steps=1", "loss=focal",
                        "loss.gamma=1.0,2.0", "seed=1", f"hydra.sweep.dir={sweep}"],
                       cwd=REPO, env=wandb_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    for job, gamma in (("0", "1.0"), ("1", "2.0")):
        r = offline_run_record(sweep / job)
        # the job's override set, in the order Hydra lists it
        assert sorted(r.display_name.split(",")) == [f"loss.gamma={gamma}", "loss=focal", "seed=1",
                                                     "trainer.max_steps=1"]
        assert (r.run_group, r.job_type) == ("multirun/gamma-sweep", "sweep")
        assert list(r.tags) == ["profile=smoke", "loss=focal", "seed=1", "multirun/gamma-sweep"]
    assert "wandb: WARNING" not in p.stdout + p.stderr  # none of ours (anonymous=..., symlinked files)
    assert not (tmp_path / "wandb-dir").exists() or not list((tmp_path / "wandb-dir").rglob("*.wandb"))


def test_wandb_reproduction_run_name_offline(smoke_root, tmp_path, monkeypatch):
    """What reproduce/runner.py passes (+ tags.row, the row's name): ``<table>/<row>/seed=<seed>``."""
    pytest.importorskip("wandb")
    from focalbench.train import compose, run

    for k, v in wandb_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    m = run(compose(["profile=smoke", f"data.root={smoke_root}", "loss=focal", "loss.gamma=2.0", "seed=1",
                     "trainer.max_steps=1", "logger=wandb", "logger.log_images=0", "tags.group=table1b",
                     "tags.job_type=reproduce", "tags.row='g=2 a=.25'"]), tmp_path / "run")
    assert m["status"] == "ok"
    r = offline_run_record(tmp_path / "run")
    assert (r.display_name, r.run_group, r.job_type) == ("table1b/g=2 a=.25/seed=1", "table1b", "reproduce")
    assert (tmp_path / "run" / "wandb_run_id").read_text().strip() == r.run_id


# ------------------------------------------------------------------------------------------- TensorBoard
def tensorboard_installed() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))


@pytest.mark.skipif(tensorboard_installed(), reason="tensorboard is installed here")
def test_tensorboard_missing_is_one_line(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", "logger=tensorboard",
                        f"hydra.run.dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["error: logger.name=tensorboard: needs the tensorboard package: "
                                             "pip install tensorboard (or tensorboardX)"]
    assert not out.exists()  # refused before Hydra made a run directory
    from focalbench.tracking import LoggerUnavailable, make_loggers

    with pytest.raises(LoggerUnavailable, match="pip install tensorboard"):
        make_loggers({"name": "tensorboard"}, tmp_path, {}, {})


@pytest.mark.skipif(not tensorboard_installed(), reason="needs tensorboard or tensorboardX")
def test_tensorboard_run_writes_events(smoke_root, tmp_path):
    from focalbench.train import compose, run

    m = run(compose(["profile=smoke", f"data.root={smoke_root}", "logger=tensorboard", "trainer.max_steps=2"]),
            tmp_path)
    assert m["status"] == "ok"
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").exists()  # CSV stays on


def test_logger_choice_is_not_hashed():
    from focalbench.train import compose, run_config_for_hash

    base = run_config_for_hash(compose(["profile=smoke"]))
    assert base == run_config_for_hash(compose(["profile=smoke", "logger=wandb", "tags.row=x", "tags.name=y"]))


# ----------------------------------------------------------------------------------------------- logging
def test_each_log_line_printed_once(smoke_root, tmp_path):
    """``import lightning`` adds its own stderr handler to the ``lightning`` logger, which also propagates to
    Hydra's console handler: every Lightning line used to print twice (``INFO: ...`` and ``[...][INFO] - ...``)."""
    p = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", f"data.root={smoke_root}",
                        "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    messages = [re.sub(r"^(\[[^\]]*\]){3} - |^(INFO|WARNING|ERROR): ", "", line)
                for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    assert any("`Trainer.fit` stopped" in m for m in messages)
    repeated = sorted({m for m in messages if messages.count(m) > 1})
    assert repeated == [], repeated
    assert not any(line.startswith("INFO: ") for line in p.stderr.splitlines())
    assert "`Trainer.fit` stopped" in (tmp_path / "run" / "train.log").read_text()  # the job's log file has it


# ----------------------------------------------------------------------------------------- console scripts
SCRIPTS = {"focalbench-train": "focalbench.train:cli", "focalbench-reproduce": "focalbench.reproduce.__main__:main",
           "focalbench-classify": "focalbench.classify.__main__:cli", "focalbench-eval": "focalbench.eval:main",
           "focalbench-predict": "focalbench.predict:main"}


def test_console_scripts_resolve_to_callables():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="console_scripts")
           if ep.name.startswith("focalbench-")}
    if set(eps) != set(SCRIPTS):
        pytest.fail(f"console scripts {sorted(eps)}: reinstall (make install, or pip install -e . --no-deps)")
    for name, target in SCRIPTS.items():
        assert eps[name].value == target
        assert callable(eps[name].load())


def test_focalbench_train_script_help_and_completion(tmp_path):
    exe = shutil.which("focalbench-train", path=str(BIN)) or shutil.which("focalbench-train")
    assert exe, "focalbench-train is not on PATH: reinstall (make install)"
    for args in (["--help"], ["--hydra-help"], ["-sc", "install=bash"]):
        p = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode == 0, (args, p.stderr[-2000:])
    assert "complete -o nospace -o default -F hydra_bash_completion focalbench-train" in p.stdout
    env = {**os.environ, "COMP_LINE": "focalbench-train los", "COMP_POINT": "20"}
    p = subprocess.run([exe, "-sc", "query=bash"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0 and "loss=" in p.stdout.split()
    assert not (tmp_path / "outputs").exists()  # --help makes no run directory
