"""Config parts that instantiate: a section with ``_target_`` names the callable that builds it.

The sections ``loss``, ``model.backbone``, ``optim``, ``data`` and ``logger`` each carry a ``_target_`` (the
packaged files name focalbench's own builders). A user's own class plugs in from a config file outside the
package (docs/configs.md, "Your own parts"): ``_target_: my_losses.MyLoss`` plus its parameters.

``instantiate_part(section, key, **runtime)`` calls the target with the section's keys, as
``hydra.utils.instantiate`` does, with two rules of this project:

* ``name`` labels the part in reports, W&B and run names; it is passed only to a target with a ``name``
  parameter (focalbench's builders dispatch on it; a user's class usually has none).
* ``runtime`` values that only exist at run time (the parameters to optimise, the run directory, the seed)
  are passed where the target's signature takes them and the section does not set them.

The config hash leaves out a ``_target_`` inside focalbench (``is_builtin``): a built-in part is identified by
its ``name`` and parameters, so runs made before targets existed keep their identity. Any other target is
hashed. Modules are imported from ``sys.path`` and, failing that, from the working directory.
"""

from __future__ import annotations

import importlib
import inspect
import os
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

TARGET = "_target_"
BUILTIN_PREFIX = "focalbench."
RESERVED = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


@dataclass(frozen=True)
class Part:
    """A config section that instantiates (focalbench.parts): its key, the packaged target, the keys the
    section holds for focalbench rather than for the target (``drop``), the arguments the builder passes at
    run time (``runtime``), and the rules that still apply when a user's own target replaces ours (``keep``)."""
    key: str
    builtin: str | tuple[str, ...]
    drop: tuple[str, ...] = ()
    runtime: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()


# the learning-rate schedule and the linear scaling rule are focalbench's, whatever optimiser a target makes,
# unless optim.scheduler names a scheduler class of its own
SCHEDULE_KEYS = ("schedule", "steps", "gamma", "min_factor", "warmup_iters", "warmup_factor", "scale_with_batch",
                 "base_batch", "ema_decay", "scheduler")
# what a user's scheduler (optim.scheduler._target_) is given when its signature names it and the section
# does not: the optimiser, and the run's length in optimiser steps under each name torch's schedulers use
SCHEDULER_RUNTIME = ("optimizer", "total_steps", "T_max", "total_iters")
PARTS: tuple[Part, ...] = (
    Part("loss", "focalbench.losses.build_classification_loss"),
    Part("model.backbone", "focalbench.model.backbone.build_body"),
    Part("optim", "focalbench.model.lit.build_optimizer", drop=SCHEDULE_KEYS, runtime=("params",),
         keep=tuple(f"optim.{k}" for k in ("lr",) + SCHEDULE_KEYS)),
    Part("optim.scheduler", (), runtime=SCHEDULER_RUNTIME),  # none packaged: focalbench's schedule when absent
    Part("data", "focalbench.data.CocoDataModule", runtime=("seed",), keep=("data.batch_size",)),
    Part("logger", ("focalbench.tracking.tensorboard_logger", "focalbench.tracking.wandb_logger"),
         drop=("log_images",), runtime=("save_dir", "config", "identity", "run_id")),
)
PART = {p.key: p for p in PARTS}


class TargetError(ValueError):
    """A ``_target_`` that cannot be imported or called with its section's keys (one line)."""


def target_of(section: Mapping[str, Any] | None) -> str | None:
    t = (section or {}).get(TARGET)
    return str(t) if t else None


def is_builtin(target: str | None) -> bool:
    """No target (the packaged behaviour) or one inside the focalbench package."""
    return target is None or str(target).startswith(BUILTIN_PREFIX)


def is_external(section: Mapping[str, Any] | None) -> bool:
    return not is_builtin(target_of(section))


def locate(path: str, key: str) -> Callable:
    """The callable ``path`` (``package.module.Name``); ``TargetError`` naming ``key`` if it cannot be found."""
    if not isinstance(path, str) or "." not in path.strip("."):
        raise TargetError(f"{key}={path!r}: must be a dotted path, module.Name (e.g. my_losses.MyLoss)")
    module_name, _, attr = path.rpartition(".")
    try:
        module = _import(module_name)
    except ImportError as e:
        raise TargetError(f"{key}={path}: cannot import {module_name} ({e}); put it on PYTHONPATH or in the "
                          f"working directory") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TargetError(f"{key}={path}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TargetError(f"{key}={path}: not a class or function")
    return obj


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        # console scripts (focalbench-train) do not put the working directory on sys.path as `python -m` does
        if cwd in sys.path or not (e.name and module_name.startswith(e.name)):
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none
        return None


def kwargs_of(section: Mapping[str, Any], fn: Callable, drop: tuple[str, ...] = (),
              inherited: tuple[str, ...] = ()) -> dict:
    """The keyword arguments ``section`` gives ``fn``: its keys minus Hydra's reserved ones and ``drop``;
    ``name`` only where ``fn`` takes it; ``inherited`` keys (the packaged part's parameters, which profiles and
    sweeps set) only where ``fn`` takes them."""
    kw = {k: v for k, v in section.items() if k not in RESERVED and k not in drop}
    for k in ("name", *inherited):
        if k in kw and not _has_param(fn, k):
            kw.pop(k)
    return kw


def params_of(targets: str | tuple[str, ...]) -> tuple[str, ...]:
    """The named parameters of the packaged target(s) of a part (what a user's target may leave out)."""
    out: list[str] = []
    for t in (targets,) if isinstance(targets, str) else targets:
        sig = _signature(locate(t, TARGET))
        out += [p.name for p in (sig.parameters.values() if sig else ()) if p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in out]
    return tuple(out)


def _has_param(fn: Callable, param: str) -> bool:
    sig = _signature(fn)
    return sig is not None and param in sig.parameters


def check_part(section: Mapping[str, Any], key: str, drop: tuple[str, ...] = (), runtime: tuple[str, ...] = (),
               inherited: tuple[str, ...] = ()) -> Callable:
    """Import ``section``'s target and check its keys against the target's signature; return the target.

    ``runtime``: the arguments the caller passes itself (the parameters to optimise, the run directory)."""
    fn = locate(section[TARGET], f"{key}.{TARGET}")
    _check_signature(fn, section, key, drop, runtime, inherited)
    return fn


def _check_signature(fn: Callable, section: Mapping[str, Any], key: str, drop: tuple[str, ...],
                     runtime: tuple[str, ...], inherited: tuple[str, ...] = ()) -> None:
    sig = _signature(fn)
    if sig is None:
        return
    ps = sig.parameters
    kw = kwargs_of(section, fn, drop, inherited)
    if not any(p.kind is p.VAR_KEYWORD for p in ps.values()):
        for k in kw:
            if k not in ps:
                params = [p for p in ps if p != "self" and p not in runtime
                          and ps[p].kind not in (ps[p].VAR_POSITIONAL, ps[p].VAR_KEYWORD)]
                raise TargetError(f"{key}.{k}={kw[k]!r}: not a parameter of {section[TARGET]}; its parameters: "
                                  f"{', '.join(params) or 'none'}")
    for p in ps.values():  # a required parameter that neither the section nor the caller gives
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) \
                and p.name not in kw and p.name not in runtime and p.name != "self":
            raise TargetError(f"{key}.{p.name}: {section[TARGET]} requires it; add {key}.{p.name}=... to the config")


def instantiate_part(section: Mapping[str, Any], key: str, *args: Any, drop: tuple[str, ...] = (),
                     inherited: tuple[str, ...] = (), **runtime: Any) -> Any:
    """Call ``section``'s target with ``args`` (positional), its keys, and the ``runtime`` values its
    signature takes (those the section does not set)."""
    fn = locate(section[TARGET], f"{key}.{TARGET}")
    sig = _signature(fn)
    positional = [p.name for p in (sig.parameters.values() if sig else ())
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"][:len(args)]
    _check_signature(fn, section, key, drop, tuple(runtime) + tuple(positional), inherited)
    kw = kwargs_of(section, fn, drop, inherited)
    left = [k for k in section if k in inherited and k not in kw and k not in drop and k != "name"]
    if left:
        log.info("%s: %s not passed to %s (parameters of the packaged part it does not take)", key,
                 ", ".join(left), section[TARGET])
    for k, v in runtime.items():
        if k not in kw and _has_param(fn, k):  # named in the signature (not merely **kwargs)
            kw[k] = v
    return fn(*args, **kw)


def strip_builtin_targets(node: Any) -> Any:
    """A plain config without the ``_target_`` keys that name focalbench's own builders (the hash's view)."""
    if isinstance(node, dict):
        return {k: strip_builtin_targets(v) for k, v in node.items()
                if not (k == TARGET and is_builtin(v if isinstance(v, str) else None))}
    if isinstance(node, list):
        return [strip_builtin_targets(v) for v in node]
    return node


def section(cfg, key: str) -> dict:
    """A resolved config section as a plain dict (``{}`` when absent)."""
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def build_part(cfg, key: str, *args: Any, **runtime: Any) -> Any:
    """``key``'s section (of a composed config, or the section itself as a dict) instantiated by its
    ``_target_``, the packaged one (``PART[key].builtin``) when the section names none."""
    from omegaconf import DictConfig

    sec = section(cfg, key) if isinstance(cfg, DictConfig) else dict(cfg)
    part = PART[key]
    if not sec.get(TARGET):
        if not isinstance(part.builtin, str):
            raise ValueError(f"{key}: no _target_ and more than one built-in builder")
        sec[TARGET] = part.builtin
    inherited = params_of(part.builtin) if is_external(sec) else ()
    return instantiate_part(sec, key, *args, drop=part.drop, inherited=inherited, **runtime)
