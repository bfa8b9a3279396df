"""A run's checkpoints: where they are, which one a rerun resumes from, and the CSV log a resumed run continues.

``ckpt_path`` null resumes from ``<run dir>/<checkpoint.dir>/last.ckpt`` when it exists (rerun the killed
command with the same ``hydra.run.dir``); ``last`` requires it; a path names the file. Each checkpoint carries
the config hash of the run that saved it: a run directory reused by another config is refused.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from focalbench.data.errors import DataError

log = logging.getLogger(__name__)


class CheckpointError(DataError):
    """A checkpoint to resume from that is missing or belongs to another config (one line)."""


def checkpoint_dir(cfg: DictConfig, out: Path) -> Path:
    """``checkpoint.dir``, relative to the run directory ``out`` (default ``<run dir>/checkpoints``)."""
    d = Path(str(OmegaConf.select(cfg, "checkpoint.dir", default=None) or "checkpoints"))
    return d if d.is_absolute() else out / d


def checkpoints_newest_first(ckpt_dir: Path) -> list[Path]:
    last = ckpt_dir / "last.ckpt"
    others = sorted((p for p in ckpt_dir.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    return ([last] if last.exists() else []) + others


def _read_checkpoint_info(path: Path) -> dict | None:
    """``global_step`` and our ``focalbench`` entry of a Lightning checkpoint; None if it cannot be read."""
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # not a zip file (an old format): read it whole
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - a truncated or foreign file: the caller tries the next one
        return None
    return {"global_step": int(ckpt.get("global_step", 0)), **(ckpt.get("focalbench") or {})}


def resolve_ckpt_path(cfg: DictConfig, out: Path, run_hash: str) -> tuple[Path | None, dict]:
    """The checkpoint ``trainer.fit`` resumes from, and its info (``global_step``, ``config_hash``).

    ``ckpt_path`` null: the newest readable checkpoint of ``checkpoint_dir`` (``last.ckpt`` first), if any, so
    that rerunning a killed command in the same run directory continues it; ``last``: the same, required; a
    path: that file. A checkpoint found in the run directory that another config saved is refused (a reused
    run directory must not continue someone else's run); a path given explicitly only logs a warning.
    """
    spec = cfg.get("ckpt_path")
    ckpt_dir = checkpoint_dir(cfg, out)
    if spec is None or str(spec) == "last":
        for path in checkpoints_newest_first(ckpt_dir) if ckpt_dir.is_dir() else []:
            info = _read_checkpoint_info(path)
            if info is None:
                log.warning("checkpoint %s cannot be read; trying an older one", path)
                continue
            if info.get("config_hash") not in (None, run_hash):
                raise CheckpointError(
                    f"{path}: saved by another config (hash {info['config_hash']}, this run {run_hash}); use another "
                    f"run directory (hydra.run.dir=...), or ckpt_path={path} to load it anyway")
            return path, info
        if spec is not None:
            raise CheckpointError(f"ckpt_path=last: no readable checkpoint in {ckpt_dir}; give the killed run's "
                                  f"directory (hydra.run.dir=...) or ckpt_path=/path/to/file.ckpt")
        return None, {}
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={spec}: no such file")
    info = _read_checkpoint_info(path)
    if info is None:
        raise CheckpointError(f"ckpt_path={spec}: not a readable checkpoint")
    if info.get("config_hash") not in (None, run_hash):
        log.warning("%s was saved by another config (hash %s, this run %s)", path, info["config_hash"], run_hash)
    return path, info


def continue_csv_log(csv_logger, from_step: int) -> None:
    """A resumed run continues the killed run's ``metrics.csv``: Lightning's CSV writer deletes the file when
    it starts, so its rows before ``from_step`` (the steps after it are trained again) are written back first."""
    import csv

    path = Path(csv_logger.log_dir) / "metrics.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as f:
            rows = [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
        rows = [r for r in rows if not str(r.get("step", "")).isdigit() or int(r["step"]) < from_step]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        writer = csv_logger.experiment  # removes the old file
    if rows:
        writer.metrics = rows + writer.metrics
        writer.save()
