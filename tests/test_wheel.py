"""A wheel installed without the source tree runs from any working directory: its configs and sweep files
ship inside the package (focalbench/conf, focalbench/sweep_files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_trains_smoke_from_any_directory(tmp_path):
    wheels, site, cwd = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("focalbench-*.whl")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    assert not (site / "focalbench" / "conf").is_symlink() and (site / "focalbench" / "conf" / "train.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    env.pop("FOCALBENCH_CONF", None)
    probe = subprocess.run([sys.executable, "-c", "import focalbench.train as t, focalbench.reproduce.sweeps as s;"
                            "print(t.__file__); print(sorted(s.TABLE_FILES))"],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.splitlines()[0].startswith(str(site))  # the wheel's copy, not the source tree's
    assert probe.stdout.splitlines()[1] == "['1a', '1b', '1c', '1d', '1e', '3']"
    run = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", "hydra.run.dir=run"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((cwd / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["steps"] > 0
    assert (cwd / "data" / "shapes_smoke").is_dir()  # relative data roots are the working directory's
