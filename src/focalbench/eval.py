"""``python -m focalbench.eval RUN_DIR [--weights FILE] [--out FILE] [override ...]``: evaluate a trained run.

Evaluates the run's weights (see ``focalbench.inference``) on a COCO-format set with the evaluator training
uses (the same ``RetinaNetModule.validation_step`` and COCO API), and writes ``metrics.json``: by default the
run's own validation split; overrides pick another, e.g. ``data=coco data.root=/data/coco`` or
``data.val_ann=annotations/other.json``. Examples::

    python -m focalbench.eval outputs/2026-12-03/10-00-00-000000
    python -m focalbench.eval outputs/.../run --weights outputs/.../run/checkpoints/last.ckpt data.root=data/mine
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from focalbench.config_schema import ConfigError, exit_config_error
from focalbench.data.errors import DataError


def evaluate(run_dir: str | Path, overrides=(), weights: str | None = None) -> dict:
    import lightning as L

    from focalbench.evaluation import STAT_NAMES
    from focalbench.inference import load_run
    from focalbench.runstore import config_hash
    from focalbench.train import run_config_for_hash

    t0 = time.perf_counter()
    run = load_run(run_dir, overrides, weights)
    accelerator = "cuda" if str(run.cfg.trainer.accelerator) in ("auto", "gpu", "cuda") and _cuda() else "cpu"
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    stats = run.module.summary["val"]
    return {"status": "ok", **{k: float(stats[k]) for k in STAT_NAMES}, "val_images": stats.get("num_images"),
            "run_dir": str(run_dir), "weights": str(run.weights), "weights_kind": run.weights_kind,
            "overrides": list(overrides), "val_ann": str(Path(run.cfg.data.root) / run.cfg.data.val_ann),
            "config_hash": config_hash(run_config_for_hash(run.cfg)), "wall_seconds": round(time.perf_counter() - t0, 3)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m focalbench.eval", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run_dir", help="the folder a training run wrote (holds .hydra/ and its weights)")
    p.add_argument("overrides", nargs="*", help="config overrides on top of the run's own (e.g. data.root=...)")
    p.add_argument("--weights", help="model.pt or a Lightning .ckpt (default: the run's model.pt, else "
                                     "checkpoints/last.ckpt)")
    p.add_argument("--out", help="metrics file (default: RUN_DIR/eval/metrics.json)")
    args = p.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        print(f"error: {bad[0]!r} is not an override (key=value)", file=sys.stderr)
        return 2
    try:
        metrics = evaluate(args.run_dir, args.overrides, args.weights)
    except ConfigError as e:
        exit_config_error(e)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"AP {metrics['AP']:.2f} AP50 {metrics['AP50']:.2f} AP75 {metrics['AP75']:.2f} on {metrics['val_images']} "
          f"images of {metrics['val_ann']} ({metrics['weights_kind']} {metrics['weights']}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
