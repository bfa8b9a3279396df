"""`python -m focalbench.eval` reproduces a run's own AP from its saved weights (same evaluator as training),
and `python -m focalbench.predict` draws a run's detections on given images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ENV = {**os.environ, "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A smoke run long enough to have detections (AP > 0), with model.pt and Lightning checkpoints."""
    root = tmp_path_factory.mktemp("evalrun")
    proc = subprocess.run([sys.executable, "-m", "focalbench.train", "profile=smoke", "save_weights=true",
                           "trainer.max_steps=300", "trainer.enable_checkpointing=true", "trainer.num_threads=1",
                           "hydra.run.dir=run"], cwd=root, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def test_eval_reproduces_the_runs_ap(run_dir, monkeypatch):
    from focalbench.eval import evaluate

    monkeypatch.chdir(run_dir.parent)  # the run's data.root is relative to where it trained
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert trained["AP"] > 0  # otherwise equality below proves nothing
    got = evaluate(run_dir)
    assert got["weights"].endswith("model.pt") and got["weights_kind"] == "state_dict"
    assert got["config_hash"] == trained["config_hash"]
    for k in ("AP", "AP50", "AP75"):
        assert got[k] == pytest.approx(trained[k], abs=1e-9), k
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    from_ckpt = evaluate(run_dir, weights=str(ckpt))
    assert from_ckpt["weights_kind"] == "checkpoint" and from_ckpt["AP"] == pytest.approx(trained["AP"], abs=1e-9)


def test_predict_draws_detections(run_dir, tmp_path, monkeypatch):
    from focalbench.predict import predict

    monkeypatch.chdir(run_dir.parent)
    images = sorted((run_dir.parent / "data" / "shapes_smoke" / "images").glob("*.png"))[:2]
    dets = predict(run_dir, images, tmp_path / "pred", score_thresh=0.05)
    for im in images:
        out = tmp_path / "pred" / f"{im.stem}.png"
        assert Image.open(out).size == Image.open(im).size
    assert dets and {d["file"] for d in dets} <= {str(i) for i in images}
    assert json.loads((tmp_path / "pred" / "detections.json").read_text()) == dets
    assert all(d["score"] >= 0.05 and len(d["bbox"]) == 4 and d["category"] for d in dets)
    drawn = Image.open(tmp_path / "pred" / f"{Path(dets[0]['file']).stem}.png").tobytes()
    assert drawn != Image.open(dets[0]["file"]).convert("RGB").tobytes()  # boxes were drawn


@pytest.mark.parametrize("args, message", [
    (["eval", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["predict", "{run}", "/nonexistent.png"], "/nonexistent.png: no such image file"),
    (["eval", "{run}", "--weights", "/nonexistent.ckpt"], "--weights /nonexistent.ckpt: no such file"),
])
def test_bad_input_is_one_line(run_dir, args, message):
    args = [a.replace("{run}", str(run_dir)) for a in args]
    proc = subprocess.run([sys.executable, "-m", f"focalbench.{args[0]}", *args[1:]], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")
