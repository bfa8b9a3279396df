"""Two-process DDP on CPU (ddp_spawn, gloo) of the smoke profile through the CLI.

ddp_spawn, not ddp: Lightning's ddp re-launches the command line, which under pytest re-runs pytest (an
orphan child once hung for 88 minutes here). A hard timeout keeps a hang from blocking CI.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_ddp_spawn_two_processes_cpu(tmp_path):
    from focalbench.data import build_dataset

    root = tmp_path / "shapes"
    build_dataset("shapes", root, train=16, val=7, size=64, progress=False)  # 7: the sampler must pad
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", f"data.root={root}",
                           "trainer.devices=2", "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu",
                           "trainer.max_steps=3", "data.build_args.val=7", f"hydra.run.dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "ok", m.get("reason")
    assert m["world_size"] == 2 and m["effective_batch"] == 8 and m["steps"] == 3
    assert m["val_images"] == 7  # evaluated once over the whole split, padded duplicates removed
    assert sorted(p.name for p in out.glob("metrics*.json")) == ["metrics.json"]
