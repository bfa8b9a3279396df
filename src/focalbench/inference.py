"""A trained run, loaded back for evaluation or prediction: its config, its data's categories, its weights.

A run directory (what ``python -m focalbench.train`` wrote) holds ``.hydra/overrides.yaml`` (the overrides it
was composed from) and its weights: ``model.pt`` (``save_weights=true``: a ``state_dict`` of the network) or
Lightning checkpoints under ``checkpoints/`` (``last.ckpt``). A checkpoint of a run that evaluated an EMA of its
weights (``optim.ema_decay``) also holds that average, and the EMA weights are the ones loaded, so that an
evaluation reproduces the run's own AP; ``model.pt`` holds the last iterate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import yaml
from omegaconf import DictConfig

from focalbench.config_schema import ConfigError



class RunError(ConfigError):
    """A run directory or weights file that cannot be used (one line, exit 2)."""


@dataclass
class LoadedRun:
    cfg: DictConfig
    datamodule: object
    module: object          # focalbench.model.lit.RetinaNetModule with the weights loaded
    weights: Path
    weights_kind: str       # "state_dict", "checkpoint" or "checkpoint (EMA)"


def run_overrides(run_dir: Path) -> list[str]:
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: no such run directory (give the folder a training run wrote)")
    if not path.is_file():
        raise RunError(f"{path}: missing; {run_dir} is not a run directory of python -m focalbench.train")
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as e:
        raise RunError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(overrides, list):
        raise RunError(f"{path}: expected a list of overrides, got {type(overrides).__name__}")
    return [str(o) for o in overrides]


def find_weights(run_dir: Path, ckpt_dir: Path, weights: str | None = None) -> Path:
    """``weights`` if given, else the run's ``model.pt``, else its ``last.ckpt``, else its newest checkpoint
    (``ckpt_dir``: the run's ``checkpoint.dir``, found as training finds it)."""
    from focalbench.checkpoints import checkpoints_newest_first

    if weights:
        p = Path(weights)
        if not p.is_file():
            raise RunError(f"--weights {weights}: no such file")
        return p
    if (Path(run_dir) / "model.pt").is_file():
        return Path(run_dir) / "model.pt"
    ckpts = checkpoints_newest_first(ckpt_dir) if ckpt_dir.is_dir() else []
    if ckpts:
        return ckpts[0]
    raise RunError(f"{run_dir}: no weights (model.pt or {ckpt_dir}/*.ckpt); train with "
                   "save_weights=true or trainer.enable_checkpointing=true, or give --weights FILE")


def _ema_shadow(ckpt: dict) -> dict | None:
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "WeightEMA" in str(key) and isinstance(state, dict) and state.get("shadow"):
            return state["shadow"]
    return None


def read_weights(path: Path, use_ema: bool) -> tuple[dict, str]:
    """The network's ``state_dict`` from a ``model.pt`` or a Lightning checkpoint (its ``model.`` prefix
    removed), and which it was."""
    try:
        if path.suffix == ".ckpt":  # Lightning's own file: callback states need full unpickling
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise RunError(f"{path}: not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    if not isinstance(ckpt, dict):
        raise RunError(f"{path}: expected a state_dict or a Lightning checkpoint, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt:
        return ckpt, "state_dict"
    shadow = _ema_shadow(ckpt) if use_ema else None
    state, kind = (shadow, "checkpoint (EMA)") if shadow is not None else (ckpt["state_dict"], "checkpoint")
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}, kind


def load_run(run_dir: str | Path, overrides: Sequence[str] = (), weights: str | None = None,
             stage: str = "validate") -> LoadedRun:
    """Compose the run's config (its own overrides, then ``overrides``), set up its data and load its weights."""
    from focalbench.builders import build_datamodule, build_module, derive_schedule
    from focalbench.checkpoints import checkpoint_dir
    from focalbench.train import compose

    run_dir = Path(run_dir)
    cfg = compose([*run_overrides(run_dir), *overrides])
    path = find_weights(run_dir, checkpoint_dir(cfg, run_dir), weights)
    state, kind = read_weights(path, use_ema=cfg.optim.get("ema_decay") is not None)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup(stage)
    module = build_module(cfg, dm.num_classes, derive_schedule(cfg), None)
    try:
        module.model.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(f"{path}: weights do not fit the run's network ({str(e).splitlines()[0][:200]}); "
                       "were model/anchors/loss overridden?") from None
    module.model.eval()
    return LoadedRun(cfg, dm, module, path, kind)
