"""Loggers of a training run: CSV always, W&B with ``logger=wandb`` (offline unless ``WANDB_MODE=online``),
TensorBoard with ``logger=tensorboard`` (needs the ``tensorboard`` or ``tensorboardX`` package).

W&B rules: one W&B run per job, rank zero only, named, grouped and tagged by ``run_identity`` (the table, row
and seed of a reproduction; otherwise the run's override set, grouped by its Optuna study or Hydra sweep),
the resolved config attached, ``metrics.json`` in the summary and as a file, and ``wandb.finish()`` at the
end of every job so the next job of a multirun does not log into a finished run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger

from focalbench.checks import one_of, require

LOGGERS = ("csv", "wandb", "tensorboard")
LOGGER = one_of(LOGGERS, "logger")       # logger.name (the config check reads this rule)
# Overrides that say where and how a run is recorded (or where its data lies), not what it computes: left out
# of its W&B name. ``profile=...`` is a W&B tag instead (every run of a sweep or table shares it).
UNNAMED_OVERRIDES = ("hydra.", "tags.", "logger", "optuna.", "save_weights", "checkpoint", "ckpt_path",
                     "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.enable_checkpointing",
                     "data.root", "profile")
WANDB_ID_FILE = "wandb_run_id"  # in the run directory: a resumed run logs into the same W&B run


class LoggerUnavailable(RuntimeError):
    """``logger=...`` needs a package this environment lacks; the message (one line) says which."""


def check_logger(logger_cfg: Mapping[str, Any]) -> None:
    """Fail in one line, before any data or model is built, when the chosen logger cannot be made here."""
    name = logger_cfg.get("name", "csv")
    require(LOGGER, name, "logger.name")
    if name == "tensorboard" and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise LoggerUnavailable("logger=tensorboard needs the tensorboard package: pip install tensorboard "
                                "(or tensorboardX), or use logger=csv / logger=wandb")
    if name == "wandb" and importlib.util.find_spec("wandb") is None:
        raise LoggerUnavailable("logger=wandb needs the wandb package: pip install wandb")


# -------------------------------------------------------------------------------------- W&B run identity
def _override_key(o: str) -> str:
    return o.split("=", 1)[0].lstrip("+~")


def naming_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that say what a run computes (``UNNAMED_OVERRIDES`` left out), in command-line order."""
    return [str(o) for o in overrides if not _override_key(str(o)).startswith(UNNAMED_OVERRIDES)]


def run_identity(overrides: Sequence[str], tags: Mapping[str, Any], seed: int, *, study: str | None = None,
                 sweep_dir: str | None = None, profile: str | None = None, loss: str | None = None) -> dict:
    """The W&B ``name``, ``group``, ``job_type`` and ``tags`` of one run.

    * name: ``tags.name`` when given; for a reproduction run (``tags.job_type=reproduce`` or ``tags.row``)
      ``<table>/<row>/seed=<seed>``, the row being ``tags.row`` or else the row's overrides; otherwise the
      override set, e.g. ``loss=focal,loss.gamma=2.0,seed=1`` (``defaults`` when there is none).
    * group: ``tags.group`` (the reproduction: ``table1a``), else the Optuna study (``optuna.study_name``), else
      the Hydra multirun's sweep directory (its last two path parts: ``2024-05-01/18-34-02``), else none.
    * job_type: ``tags.job_type``, else ``study`` / ``sweep`` / ``train``.
    * tags: ``profile=...``, ``loss=...``, ``seed=...`` and the group.
    """
    named = naming_overrides(overrides)
    group = tags.get("group") or study or (_sweep_group(sweep_dir) if sweep_dir else None)
    job_type = tags.get("job_type") or ("study" if study else "sweep" if sweep_dir else "train")
    if tags.get("name"):
        name = str(tags["name"])
    elif tags.get("row") or job_type == "reproduce":
        row = tags.get("row") or ",".join(o for o in named if _override_key(o) != "seed") or "defaults"
        name = "/".join(str(p) for p in (tags.get("group"), row, f"seed={seed}") if p)
    else:
        name = ",".join(named) or "defaults"
    wandb_tags = [t for t in (profile and f"profile={profile}", loss and f"loss={loss}", f"seed={seed}", group)
                  if t]
    return {"name": name, "group": None if group is None else str(group), "job_type": str(job_type),
            "tags": [str(t)[:64] for t in wandb_tags]}  # W&B rejects tags over 64 characters


def _sweep_group(sweep_dir: str) -> str:
    return "/".join(Path(str(sweep_dir)).parts[-2:])


def wandb_run_id(run_dir: str | Path, resume: bool) -> str:
    """A new W&B run id, kept in ``<run dir>/wandb_run_id``; a resumed run reuses the one kept there."""
    path = Path(run_dir) / WANDB_ID_FILE
    if resume and path.exists() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:8]
    path.write_text(run_id + "\n")
    return run_id


# ----------------------------------------------------------------------------------------------- loggers
def make_loggers(logger_cfg: Mapping[str, Any], run_dir: str | Path, config: dict, tags: Mapping[str, Any],
                 run_name: str | None = None, identity: Mapping[str, Any] | None = None,
                 run_id: str | None = None) -> list[Logger]:
    """``[CSVLogger]`` plus the logger of ``logger_cfg`` (its ``_target_``: ``wandb_logger``,
    ``tensorboard_logger`` or a user's Lightning logger class, which gets ``save_dir=<run dir>`` when it takes
    one and the run's config as hyperparameters). ``config`` is the resolved config (a plain dict);
    ``identity`` the W&B name/group/job_type/tags (``run_identity``; default: ``run_name`` and the group and job
    type of ``tags``); ``run_id`` the W&B run id (default: a new one)."""
    from focalbench.parts import build_part, is_external

    loggers: list[Logger] = [CSVLogger(str(run_dir), name="csv", version=0)]
    cfg = dict(logger_cfg)
    if is_external(cfg):
        extra = build_part(cfg, "logger", save_dir=str(run_dir))
        extra.log_hyperparams(config)
        return loggers + [extra]
    check_logger(cfg)
    if not cfg.get("_target_"):
        cfg["_target_"] = {"tensorboard": TENSORBOARD, "wandb": WANDB}.get(cfg.get("name", "csv"))
    if cfg["_target_"] is None:  # csv only
        return loggers
    ident = dict(identity or {"name": run_name, "group": tags.get("group"), "job_type": tags.get("job_type")})
    return loggers + [build_part(cfg, "logger", save_dir=str(run_dir), config=config, identity=ident,
                                 run_id=run_id)]


TENSORBOARD = "focalbench.tracking.tensorboard_logger"
WANDB = "focalbench.tracking.wandb_logger"


def tensorboard_logger(save_dir: str, config: dict) -> Logger:
    """``logger=tensorboard``: event files in ``<run dir>/tensorboard/`` (``tensorboard --logdir outputs``
    lists every run by its directory), the run's config as hyperparameters."""
    from lightning.pytorch.loggers import TensorBoardLogger

    tb = TensorBoardLogger(save_dir, name="tensorboard", version="", default_hp_metric=False)
    tb.log_hyperparams(config)
    return tb


def wandb_logger(save_dir: str, config: dict, identity: Mapping[str, Any], run_id: str | None = None,
                 project: str = "focalbench", entity: str | None = None,
                 mode: str | None = "offline") -> Logger:
    """``logger=wandb``: offline unless ``mode=online``; a fixed ``run_id`` lets the launching process reopen
    the same run after spawned DDP children trained (``finish_wandb``)."""
    from lightning.pytorch.loggers import WandbLogger

    mode = mode or "offline"
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.mode must be offline, online or disabled, got {mode!r}")
    wl = WandbLogger(project=project, entity=entity, save_dir=save_dir, mode=mode, group=identity.get("group"),
                     job_type=identity.get("job_type"), name=identity.get("name"), tags=identity.get("tags") or None,
                     id=run_id or uuid.uuid4().hex[:8], config=config, resume="allow")
    wl._wandb_init.pop("anonymous", None)  # Lightning passes anonymous=None: W&B warns on every run
    return wl


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
                           job_type=wl._wandb_init.get("job_type"), name=wl._wandb_init.get("name"),
                           tags=wl._wandb_init.get("tags"))
            wandb.run.summary.update({f"final/{k}": v for k, v in metrics.items()
                                      if isinstance(v, (int, float, str, bool)) or v is None})
            if metrics_path is not None and Path(metrics_path).exists() and getattr(wandb.run, "dir", None):
                # a copy in the run's files/ (synced at finish); wandb.save would symlink it and warn about that
                shutil.copy2(metrics_path, Path(wandb.run.dir) / Path(metrics_path).name)
    finally:
        wandb.finish()


class WandbValImages(Callback):
    """Logs the first validation batch's first ``n`` images with predicted and true boxes to W&B
    (``val/predictions``, ``logger.log_images``), on rank zero, after every evaluation."""

    def __init__(self, n: int = 4):
        self.n = int(n)
        self._items: list = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or not trainer.is_global_zero or not outputs:
            return
        images, targets = batch
        self._items = [(images[i].detach().cpu(), {k: v.detach().cpu() for k, v in outputs[i].items()},
                        {k: targets[i][k].detach().cpu() for k in ("boxes", "labels")})
                       for i in range(min(self.n, len(targets)))]

    def on_validation_epoch_end(self, trainer, pl_module):
        from lightning.pytorch.loggers import WandbLogger

        items, self._items = self._items, []
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or not loggers or not items or not trainer.is_global_zero:
            return
        names = getattr(trainer.datamodule, "class_names", None)
        loggers[0].experiment.log({"val/predictions": wandb_detection_images(items, names),
                                   "trainer/global_step": trainer.global_step})


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
