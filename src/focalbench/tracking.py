"""Loggers of a training run: CSV always, W&B with ``logger=wandb`` (offline unless ``WANDB_MODE=online``).

W&B rules: one W&B run per job, rank zero only, grouped by ``tags.group``, the resolved config
attached, ``metrics.json`` in the summary and as a file, and ``wandb.finish()`` at the end of every job so
the next job of a multirun does not log into a finished run.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from lightning.pytorch.loggers import CSVLogger, Logger

LOGGERS = ("csv", "wandb")


def make_loggers(logger_cfg: Mapping[str, Any], run_dir: str | Path, config: dict, tags: Mapping[str, Any],
                 run_name: str | None = None) -> list[Logger]:
    """``[CSVLogger]`` (+ ``WandbLogger``). ``config`` is the resolved config (a plain dict)."""
    name = logger_cfg.get("name", "csv")
    if name not in LOGGERS:
        raise ValueError(f"logger.name must be one of {LOGGERS}, got {name!r}")
    loggers: list[Logger] = [CSVLogger(str(run_dir), name="csv", version=0)]
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        mode = logger_cfg.get("mode") or "offline"
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got {mode!r}")
        # a fixed id lets the launching process reopen the same run after spawned DDP children trained
        loggers.append(WandbLogger(project=logger_cfg.get("project", "focalbench"), entity=logger_cfg.get("entity"),
                                   save_dir=str(run_dir), mode=mode, group=tags.get("group"),
                                   job_type=tags.get("job_type"), name=run_name, id=uuid.uuid4().hex[:8],
                                   config=config, resume="allow"))
    return loggers


def finish_wandb(loggers: Sequence[Logger], metrics: Mapping[str, Any] | None, metrics_path: Path | None) -> None:
    """Put ``metrics`` in the run summary, attach ``metrics.json``, and ``wandb.finish()``; no-op without W&B."""
    from lightning.pytorch.loggers import WandbLogger

    wl = next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
    if wl is None:
        return
    import wandb

    try:
        if metrics is not None:
            if wandb.run is None:  # training ran in spawned children: reopen the same run
                wandb.init(id=wl.version, resume="allow", project=wl.name, dir=wl.save_dir,
                           mode=wl._wandb_init.get("mode", "offline"), group=wl._wandb_init.get("group"),
                           job_type=wl._wandb_init.get("job_type"))
            wandb.run.summary.update({f"final/{k}": v for k, v in metrics.items()
                                      if isinstance(v, (int, float, str, bool)) or v is None})
            if metrics_path is not None and Path(metrics_path).exists():
                wandb.save(str(metrics_path), base_path=str(Path(metrics_path).parent), policy="now")
    finally:
        wandb.finish()


def wandb_detection_images(items: Sequence[tuple[torch.Tensor, dict, dict]],
                           class_names: Sequence[str] | None = None, min_score: float = 0.3) -> list:
    """(image (3,H,W) normalised, prediction, target) triples -> ``wandb.Image``s with predicted and true boxes."""
    import wandb

    out = []
    for image, pred, target in items:
        img = image.float()
        img = (img - img.amin()) / (img.amax() - img.amin()).clamp(min=1e-6)  # undo any normalisation for display
        arr = (img.permute(1, 2, 0).numpy() * 255).astype("uint8")
        k = max([int(l) for l in target["labels"].tolist()] + [int(l) for l in pred["labels"].tolist()] + [0]) + 1
        labels = {i: (class_names[i] if class_names and i < len(class_names) else str(i)) for i in range(k)}

        def boxes(b, l, s=None):
            rows = []
            for j, (x0, y0, x1, y1) in enumerate(b.tolist()):
                row = {"position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1}, "domain": "pixel",
                       "class_id": int(l[j])}
                if s is not None:
                    row["scores"] = {"score": float(s[j])}
                rows.append(row)
            return {"box_data": rows, "class_labels": labels}

        keep = pred["scores"] >= min_score
        out.append(wandb.Image(arr, boxes={
            "predictions": boxes(pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep]),
            "ground_truth": boxes(target["boxes"], target["labels"])}))
    return out


def read_json(path: str | Path) -> dict | None:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None
