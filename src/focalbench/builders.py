"""What one training run is made of, built from its composed config (the training app: focalbench.train).

Each section that instantiates (``loss``, ``model.backbone``, ``optim``, ``data``, ``logger``: see
focalbench.parts and its table ``PARTS``) is built from its ``_target_``; the packaged config files name
focalbench's own builders, a user's config file may name their own class. The rest (the detector around the
backbone, the Lightning loop, the trainer, the callbacks) is focalbench's.

    derive_schedule(cfg)                  lr / iterations / steps / warm-up for the actual total batch
    build_datamodule(cfg)                 data._target_ (CocoDataModule)
    build_criterion(cfg)                  loss._target_ (build_classification_loss)
    build_module(cfg, num_classes, ...)   RetinaNet (model.backbone._target_) in RetinaNetModule (optim._target_)
    build_callbacks(cfg, ckpt_dir)        EMA, Optuna pruning, checkpoints
    build_trainer(cfg, out, ...)          lightning.Trainer
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from focalbench.parts import build_part, instantiate_part, section


# ---------------------------------------------------------------------------------------------- schedule
def _num_devices(devices: Any) -> int:
    if isinstance(devices, int):
        return devices if devices > 0 else max(1, torch.cuda.device_count())
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    return max(1, torch.cuda.device_count()) if devices in ("auto", "-1") else 1


def derive_schedule(cfg: DictConfig) -> dict:
    """lr / iterations / lr steps / warm-up for the actual total batch (linear scaling rule, Goyal et al.)."""
    total = int(cfg.data.batch_size) * _num_devices(cfg.trainer.devices) * int(cfg.trainer.num_nodes)
    o = cfg.optim
    k = total / float(o.base_batch) if o.get("scale_with_batch", False) else 1.0
    if k <= 0:
        raise ValueError(f"optim.base_batch must be positive, got {o.base_batch!r}")
    return {"effective_batch": total, "lr": float(o.lr) * k,
            "max_steps": max(1, round(int(cfg.trainer.max_steps) / k)),
            "steps": [max(1, round(int(s) / k)) for s in (o.get("steps") or [])],
            "warmup_iters": round(int(o.get("warmup_iters", 0)) / k)}


# ------------------------------------------------------------------------------------------------- parts
def paths_root(cfg: DictConfig) -> Path:
    """``paths.root`` as an absolute folder: relative to the directory the command started in (Hydra's
    original working directory, also under ``hydra.job.chdir=true``)."""
    from hydra.core.hydra_config import HydraConfig

    root = Path(str(OmegaConf.select(cfg, "paths.root", default=".") or "."))
    if root.is_absolute():
        return root
    start = Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path(os.getcwd())
    return (start / root).resolve()


def resolve_path(cfg: DictConfig, path: str | os.PathLike) -> str:
    """A config path as the run reads it: absolute paths as they are, relative ones under ``paths.root``."""
    p = Path(str(path)).expanduser()
    return str(p if p.is_absolute() else paths_root(cfg) / p)


def build_datamodule(cfg: DictConfig):
    """The LightningDataModule of ``data`` (it must expose ``num_classes`` after ``setup``); a relative
    ``data.root`` is read under ``paths.root``."""
    data = section(cfg, "data")
    if isinstance(data.get("root"), str):
        data["root"] = resolve_path(cfg, data["root"])
    return build_part(data, "data", seed=int(cfg.seed))


def build_criterion(cfg: DictConfig):
    """The classification loss of ``loss`` (a ``focalbench.losses.ClassificationLoss``)."""
    return build_part(cfg, "loss")


def build_model(cfg: DictConfig, num_classes: int, criterion=None):
    """RetinaNet around the backbone body of ``model.backbone``."""
    from focalbench.model import build_retinanet

    m = section(cfg, "model")
    body = build_part(m["backbone"], "model.backbone")  # the packaged build_body when the section names none
    return build_retinanet(num_classes, criterion if criterion is not None else build_criterion(cfg),
                           anchors=section(cfg, "anchors"), body=body, **m)


def build_module(cfg: DictConfig, num_classes: int, schedule: dict, summary_path: str | None):
    """The LightningModule: the model, the optimiser of ``optim`` (lr and steps from ``schedule``)."""
    from focalbench.model.lit import RetinaNetModule

    model = build_model(cfg, num_classes)
    optim = dict(section(cfg, "optim"), lr=schedule["lr"], steps=schedule["steps"],
                 warmup_iters=schedule["warmup_iters"])
    return RetinaNetModule(model, optim, schedule["max_steps"], batch_size=int(cfg.data.batch_size),
                           summary_path=summary_path, eval_backend=cfg.get("eval_backend", "faster"))


# --------------------------------------------------------------------------------------------- callbacks
def build_callbacks(cfg: DictConfig, ckpt_dir: Path) -> list:
    """focalbench's callbacks: the EMA weights, Optuna pruning, checkpoints, W&B validation images."""
    return _ema_callbacks(cfg) + _pruning_callbacks(cfg) + _checkpoint_callbacks(cfg, ckpt_dir) + _media_callbacks(cfg)


def _media_callbacks(cfg: DictConfig) -> list:
    n = int(cfg.logger.get("log_images", 0) or 0) if cfg.logger.get("name") == "wandb" else 0
    if n <= 0:
        return []
    from focalbench.tracking import WandbValImages

    return [WandbValImages(n)]


def _ema_callbacks(cfg: DictConfig) -> list:
    decay = cfg.optim.get("ema_decay")
    if not decay:
        return []
    from focalbench.model.ema import WeightEMA

    return [WeightEMA(float(decay))]


def _pruning_callbacks(cfg: DictConfig) -> list:
    # Pruning needs intermediate evaluations; with val_every_n_epochs=0 the only one is the final one.
    if cfg.optuna.get("trial_number") is None or not int(cfg.trainer.val_every_n_epochs or 0):
        return []
    try:
        from focalbench.sweeps.pruning import OptunaPruningCallback
    except ImportError:
        return []
    return [OptunaPruningCallback(cfg.optuna, monitor="val/AP")]


def _checkpoint_callbacks(cfg: DictConfig, ckpt_dir: Path) -> list:
    if not cfg.trainer.enable_checkpointing:
        return []
    from lightning.pytorch.callbacks import ModelCheckpoint

    c = cfg.get("checkpoint") or {}
    every = c.get("every_n_train_steps")
    # step-N.ckpt (no "=": a path given back as ckpt_path=... must parse as a Hydra override) and last.ckpt, one
    # name each (no last-v1.ckpt when a moved run directory resumes); saved at the end of every
    # training epoch (never inside a validation pass, where the EMA weights are swapped in) or every N steps
    return [ModelCheckpoint(dirpath=str(ckpt_dir), filename="step-{step}", auto_insert_metric_name=False,
                            save_last=bool(c.get("save_last", True)),
                            save_top_k=int(c.get("save_top_k", 1)), every_n_train_steps=int(every) if every else None,
                            save_on_train_epoch_end=True, enable_version_counter=False)]


# ----------------------------------------------------------------------------------------------- trainer
def build_trainer(cfg: DictConfig, out: Path, max_steps: int, loggers: list, callbacks: list):
    """``lightning.Trainer`` from ``trainer.*``: focalbench's keys (``config_schema.TRAINER_KEYS``) mapped as
    below, every other key passed as it is (any Trainer argument, checked against its signature by the config
    check; ``trainer.callbacks``: a list of ``_target_`` entries, added after focalbench's own callbacks)."""
    import lightning as L

    from focalbench.config_schema import TRAINER_KEYS

    t = cfg.trainer
    extra = {k: v for k, v in section(cfg, "trainer").items() if k not in TRAINER_KEYS}
    user_callbacks = [instantiate_part(cb, f"trainer.callbacks[{i}]") for i, cb in enumerate(extra.pop("callbacks", None) or [])]
    accelerator = t.accelerator
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    every = int(t.val_every_n_epochs or 0)
    if every < 0:
        raise ValueError(f"trainer.val_every_n_epochs must be >= 0 (0: final evaluation only), got {every}")
    strategy = t.strategy
    if on_cpu and strategy in ("ddp", "ddp_spawn"):
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(start_method="spawn" if strategy == "ddp_spawn" else "popen",
                               process_group_backend="gloo")
    kwargs = dict(
        accelerator=accelerator, devices=t.devices, strategy=strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_steps=max_steps, max_epochs=-1,
        # every == 0: one validation exactly at the last step, inside fit (no second spawn under ddp_spawn)
        check_val_every_n_epoch=every if every > 0 else None, val_check_interval=None if every > 0 else max_steps,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic, benchmark=t.benchmark, sync_batchnorm=bool(t.sync_batchnorm) and not on_cpu,
        enable_progress_bar=t.enable_progress_bar, enable_checkpointing=t.enable_checkpointing,
        enable_model_summary=False, logger=loggers, callbacks=list(callbacks) + user_callbacks,
        default_root_dir=str(out))
    kwargs.update(extra)  # e.g. trainer.accumulate_grad_batches, limit_val_batches, fast_dev_run, max_epochs
    return L.Trainer(**kwargs)
