"""Validation of a composed training config, before any data is built or any step is trained.

Hydra composes ``conf/train.yaml``; this module says which values a run accepts. Every rule is one row of a
table (key, check, what is allowed), read top to bottom below; a bad value raises ``ConfigError`` with one
line that names the key, the value as an override would write it, and what is allowed::

    loss.gamma=-1: must be a number >= 0
    loss.name=focl: unknown loss; allowed: ce, alpha_ce, focal, focal_star, softmax_focal, ohem, ohem_1to3
    anchors.scales=0: must be an integer >= 1
    data.size_divisible=100: must be a multiple of 128 (the P7 stride), or a power of two >= data.max_size (128)
    profile=laptop: unknown profile; allowed: cpu, gpu, paper, smoke

One source per rule: a value the code reads is checked by a rule declared once, next to that code
(``focalbench.checks`` is the vocabulary), e.g. ``focalbench.losses.focal.GAMMA``,
``focalbench.model.anchors.SCALES``. Its constructor applies the rule; this table names it with
``owned("module:NAME")``, imported when a config is checked (so importing this module imports neither torch
nor torchvision). The losses and their parameters are one table, ``focalbench.losses.criteria.LOSSES``. The
rules written here are those no constructor owns: the trainer's, the checkpoints', the seed's, and the
cross-section ones (``data.size_divisible`` against the model's P7 stride: ``model.anchors.padding_ok``).

Decisions (the paper and the libraries leave them open):

* ``loss.alpha``: [0, 1], or exactly -1 for "no alpha weighting" (``focalbench.losses.criteria.ALPHA`` says
  why; the tensor functions accept any alpha < 0, as torchvision's do).
* Image sizes: the padded input must be divisible by the largest stride, 128 (P7): that is
  ``data.size_divisible`` (the batch is padded to a multiple of it), not ``data.image_size`` (a resize
  target: the paper's 600 px is padded to 640); ``focalbench.model.anchors.padding_ok`` has the rule and
  its one exception (images smaller than one P7 cell).
* Missing mandatory values (``???``, e.g. ``data.root`` of ``data=coco``) are allowed while composing and
  rejected by ``validate_config(cfg, complete=True)``, which ``train.run`` calls.
* Unknown group options (``profile=laptop``, ``loss=focl``) fail inside Hydra's composition with a long
  message; ``check_group_choices`` checks the overrides first and says it in one line.
* ``+key=value`` / ``++key=value`` may add only keys that some file of the app's config defines (any group
  option: ``+loss.gamma=2`` with ``loss=ce`` then meets the loss check) or that the code reads without a
  default in a file (``EXTRA_KEYS``); anything else (``+foo=1``, ``+trainer.max_step=5``) would be ignored by
  the run yet change its config hash, so ``check_added_keys`` refuses it, naming the closest known key.
  ``hydra.*`` is Hydra's (``+hydra.launcher.additional_parameters.mail-type=END`` is a documented use).
* ``data=coco`` needs ``data.root`` from the command line: a profile made for a built-in set
  (``profile=smoke``: ``data/shapes_smoke``) would otherwise hand its own folder to COCO (``check_data_root``).

"""

from __future__ import annotations

import difflib
import importlib
import errno
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from focalbench import parts
from focalbench.checks import BOOL, int_at_least, num_above, num_at_least, num_in, one_of, or_null, owned
from focalbench.checks import is_int as _is_int, is_num as _is_num, show as _show

__all__ = ["ConfigError", "validate_config", "check_group_choices", "group_options", "check_command_line",
           "exit_config_error", "Rule", "config_entries", "check_added_keys",
           "check_data_root", "composition_error_line", "check_output_dir", "os_error_line", "PARTS", "PART",
           "SCHEDULE_KEYS", "TRAINER_KEYS", "trainer_arguments"]

# Keys the training code reads that no config file sets (so only ``+key=`` gives them): CocoDataModule's
# keyword arguments beyond conf/data/, and build_dataset's seed of a built-in set.
EXTRA_KEYS = ("data.verify_images", "data.box_tolerance", "data.cache_limit_mb", "data.drop_last",
              "data.build_args.seed", "data.build_args.stretch")

from focalbench.parts import PART, PARTS, SCHEDULE_KEYS, Part  # noqa: E402,F401 - the table of parts (parts.py)
# trainer.* keys focalbench maps onto lightning.Trainer itself (conf/trainer/default.yaml); any other trainer.* key
# is passed to the Trainer as it is and must be one of its arguments (trainer_arguments: its own signature)
TRAINER_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "max_steps", "val_every_n_epochs",
                "log_every_n_steps", "gradient_clip_val", "deterministic", "sync_batchnorm", "benchmark",
                "enable_progress_bar", "enable_checkpointing", "num_threads")
# Trainer arguments a run sets from other sections (logger=..., the run directory): not settable as trainer.*
TRAINER_OWNED = ("logger", "default_root_dir", "enable_model_summary")


def trainer_arguments() -> tuple[str, ...]:
    """The keyword arguments of ``lightning.Trainer`` (read from its signature; imports Lightning)."""
    import inspect

    from lightning import Trainer

    return tuple(p for p in inspect.signature(Trainer.__init__).parameters if p != "self"
                 and p not in TRAINER_OWNED)


COCO_ROOT_HELP = "data.root is required (the COCO folder holding annotations/ and the images)"


def _tensorboard_installed() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


class ConfigError(ValueError):
    """A config value no run accepts; the message is one line: ``key=value: what is allowed``."""


# ------------------------------------------------------------------------------------------------- helpers
def _plain(cfg: DictConfig | dict) -> dict:
    if isinstance(cfg, DictConfig):
        run_keys = [k for k in cfg.keys() if k != "hydra"]
        return OmegaConf.to_container(OmegaConf.masked_copy(cfg, run_keys), resolve=True,
                                      throw_on_missing=False)
    return dict(cfg)


def _lookup(c: dict, key: str) -> tuple[bool, Any]:
    node: Any = c
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _get(c: dict, key: str) -> Any:
    return _lookup(c, key)[1]


def _allowed(rule: Rule, c: dict) -> str:
    return rule.allowed(c) if callable(rule.allowed) else rule.allowed


# --------------------------------------------------------------------------------------------- value checks
def _steps(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_int(s) and s >= 1 for s in v) and list(v) == sorted(v)


def _devices(v: Any) -> bool:
    if isinstance(v, str):
        return v == "auto" or v.isdigit() and int(v) >= 1 or v == "-1"
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(_is_int(d) and d >= 0 for d in v)
    return _is_int(v) and (v >= 1 or v == -1)


# ------------------------------------------------------------------------------------------------- the rules
@dataclass(frozen=True)
class Rule:
    key: str                              # dotted path in the composed config
    check: Callable[..., bool]            # check(value) or, with needs_cfg, check(value, cfg)
    allowed: str | Callable[[dict], str]  # what is allowed (a function of the config when it names another key)
    needs_cfg: bool = False
    optional: bool = False                # the key may be absent (a group that does not define it)


def _rule(key: str, rule: tuple[Callable, str], optional: bool = False) -> Rule:
    return Rule(key, rule[0], rule[1], optional=optional)


def _owned(key: str, source: str, optional: bool = False) -> Rule:
    """The rule of ``key`` declared by the code that reads it (``module:NAME``, see ``focalbench.checks``)."""
    check, allowed = owned(source)
    return Rule(key, check, allowed, optional=optional)


def _owned_pair(key: str, other: str, source: str, text: str) -> Rule:
    """A rule relating ``key`` to ``other``: ``module:function(value, other's value) -> bool`` and the text
    ``module:TEXT`` (a format string of ``other``), both owned by the code, imported on first use."""
    def load(ref: str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)

    return Rule(key, lambda v, c: load(source)(v, _get(c, other)),
                lambda c: load(text).format(other=_show(_get(c, other))), needs_cfg=True)


_D, _M, _L = "focalbench.data.datamodule", "focalbench.model", "focalbench.losses"
RULES: tuple[Rule, ...] = (
    _rule("seed", int_at_least(0)),
    # data (focalbench.data.CocoDataModule, focalbench.data.build_dataset)
    _owned("data.image_size", f"{_D}:POSITIVE"),
    _owned_pair("data.max_size", "data.image_size", f"{_D}:max_size_ok", f"{_D}:MAX_SIZE_TEXT"),
    _owned_pair("data.size_divisible", "data.max_size", f"{_M}.anchors:padding_ok", f"{_M}.anchors:PADDING_TEXT"),
    _owned("data.batch_size", f"{_D}:POSITIVE"),
    _owned("data.val_batch_size", f"{_D}:VAL_BATCH_SIZE", optional=True),
    _owned("data.num_workers", f"{_D}:NUM_WORKERS", optional=True),
    _owned("data.flip_prob", f"{_D}:FLIP_PROB", optional=True),
    _rule("data.keep_empty", BOOL, optional=True),
    _rule("data.cache_images", BOOL, optional=True),
    _owned("data.bad_boxes", "focalbench.data.coco:BAD_BOXES_RULE", optional=True),
    _owned("data.verify_images", "focalbench.data.coco:VERIFY_RULE", optional=True),
    _owned("data.build", f"{_D}:BUILD", optional=True),
    _owned("data.build_args.train", "focalbench.data.build:SPLIT_SIZE", optional=True),
    _owned("data.build_args.val", "focalbench.data.build:SPLIT_SIZE", optional=True),
    _owned("data.build_args.size", "focalbench.data.build:IMAGE_SIDE", optional=True),
    _owned("data.build_args.seed", "focalbench.data.build:SEED", optional=True),
    _owned("data.build_args.stretch", "focalbench.data.build:OPTION", optional=True),  # digits only
    # model (focalbench.model.build_retinanet)
    _owned("model.backbone.name", f"{_M}.backbone:BODY"),
    _owned("model.backbone.norm", f"{_M}.backbone:NORM", optional=True),
    _owned("model.backbone.freeze_at", f"{_M}.backbone:FREEZE_AT", optional=True),
    _rule("model.fpn_channels", int_at_least(1)),
    _rule("model.head.num_convs", int_at_least(0), optional=True),
    _rule("model.head.width", or_null(int_at_least(1)), optional=True),
    _owned("model.head.norm", f"{_M}.backbone:NORM", optional=True),
    _owned("model.prior_prob", f"{_L}.terms:PRIOR_PROB"),
    _rule("model.bg_iou", num_in(0, 1)),
    _owned_pair("model.fg_iou", "model.bg_iou", f"{_M}.matcher:fg_iou_ok", f"{_M}.matcher:FG_IOU_TEXT"),
    _owned("model.smooth_l1_beta", f"{_M}.retinanet:SMOOTH_L1_BETA", optional=True),
    _rule("model.score_thresh", num_in(0, 1), optional=True),
    _rule("model.nms_thresh", num_in(0, 1), optional=True),
    _rule("model.topk_candidates", int_at_least(1), optional=True),
    _rule("model.detections_per_img", int_at_least(1), optional=True),
    # anchors (focalbench.model.anchors)
    _owned("anchors.scales", f"{_M}.anchors:SCALES"),
    _owned("anchors.ratios", f"{_M}.anchors:RATIOS"),
    _owned("anchors.size_multiplier", f"{_M}.anchors:SIZE_MULTIPLIER"),
    # loss: its name here; its parameters by the table of losses (focalbench.losses.criteria.LOSSES)
    _owned("loss.name", f"{_L}.criteria:LOSS_NAME"),
    # optim (focalbench.model.lit, focalbench.model.ema)
    _owned("optim.name", f"{_M}.lit:OPTIMIZER"),
    _rule("optim.lr", num_above(0)),
    _rule("optim.weight_decay", num_at_least(0), optional=True),
    _rule("optim.momentum", num_in(0, 1), optional=True),
    _owned("optim.schedule", f"{_M}.lit:SCHEDULE", optional=True),
    _rule("optim.steps", (_steps, "must be an ascending list of integers >= 1"), optional=True),
    _rule("optim.gamma", num_in(0, 1, open_lo=True), optional=True),   # lr factor at each of optim.steps
    _rule("optim.min_factor", num_in(0, 1), optional=True),
    _rule("optim.warmup_iters", int_at_least(0), optional=True),
    _rule("optim.warmup_factor", num_in(0, 1, open_lo=True), optional=True),
    _rule("optim.scale_with_batch", BOOL, optional=True),
    _rule("optim.base_batch", int_at_least(1), optional=True),
    _owned("optim.ema_decay", f"{_M}.ema:DECAY", optional=True),
    # trainer (Lightning)
    _rule("trainer.max_steps", int_at_least(1)),
    _rule("trainer.devices", (_devices, "must be auto, -1, an integer >= 1 or a list of device indices")),
    _rule("trainer.num_nodes", int_at_least(1)),
    _rule("trainer.val_every_n_epochs", or_null(int_at_least(0)), optional=True),
    _rule("trainer.num_threads", or_null(int_at_least(1)), optional=True),
    _owned("logger.name", "focalbench.tracking:LOGGER"),
    Rule("logger.name", lambda v: v != "tensorboard" or _tensorboard_installed(),
         "needs the tensorboard package: pip install tensorboard (or tensorboardX)"),
    # checkpoints and resuming (focalbench.train; not hashed)
    _rule("checkpoint.dir", ((lambda v: isinstance(v, str) and v != ""), "must be a directory name or path"),
          optional=True),
    _rule("checkpoint.save_last", BOOL, optional=True),
    _rule("checkpoint.every_n_train_steps", or_null(int_at_least(1)), optional=True),
    _rule("checkpoint.save_top_k", one_of((-1, 0, 1)), optional=True),  # Lightning: more needs a monitor
    _rule("ckpt_path", ((lambda v: v is None or isinstance(v, str) and v != ""),
                        "must be null (resume from the run directory's last.ckpt if any), last, or a .ckpt path"),
          optional=True),
    _owned("eval_backend", "focalbench.evaluation.coco:BACKEND", optional=True),
)


def validate_config(cfg: DictConfig | dict, complete: bool = False,
                    rules: Sequence[Rule] = RULES) -> DictConfig | dict:
    """Check a composed config against ``rules`` (default: the training app's ``RULES``); return it unchanged
    or raise ``ConfigError``. A ``loss`` group, when present, is also checked against its row of
    ``focalbench.losses.criteria.LOSSES``.

    ``complete``: also reject mandatory values still missing (``???``): a run needs them, composing does not.
    """
    if complete and isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])))
        if missing:
            if missing[0] == "data.root":
                raise ConfigError(f"{COCO_ROOT_HELP}: add data.root=/path/to/coco")
            raise ConfigError(f"{missing[0]}=???: a value is required (set it on the command line, "
                              f"e.g. {missing[0]}=...)")
    c = _plain(cfg)
    external = _check_parts(c)
    for rule in rules:
        part = next((p for p in external if rule.key.startswith(p.key + ".")), None)
        if part is not None and rule.key not in part.keep:
            continue  # a user's own target: its signature says what it takes (_check_parts)
        found, value = _lookup(c, rule.key)
        if not found:
            if rule.optional:
                continue
            raise ConfigError(f"{rule.key}: missing from the config; {_allowed(rule, c)}")
        if value == "???":
            continue  # mandatory, not yet given (see ``complete``)
        ok = rule.check(value, c) if rule.needs_cfg else rule.check(value)
        if not ok:
            raise ConfigError(f"{rule.key}={_show(value)}: {_allowed(rule, c)}")
    if "loss" in c and PART["loss"] not in external:
        _check_loss(c["loss"])
    if isinstance(c.get("trainer"), dict) and rules is RULES:
        _check_trainer(c["trainer"])
    return cfg


def _check_trainer(trainer: dict) -> None:
    extra = [k for k in trainer if k not in TRAINER_KEYS]
    if not extra:
        return
    allowed = trainer_arguments()
    for k in extra:
        if k in TRAINER_OWNED:
            raise ConfigError(f"trainer.{k}: set by focalbench (logger=..., hydra.run.dir=...), not a trainer key")
        if k not in allowed:
            raise unknown_key_error(f"trainer.{k}", _show(trainer[k]), [f"trainer.{a}" for a in
                                                                      (*TRAINER_KEYS, *allowed)])
    callbacks = trainer.get("callbacks")
    if callbacks is not None:
        if not isinstance(callbacks, list) or not all(isinstance(cb, dict) and cb.get("_target_") for cb in callbacks):
            raise ConfigError(f"trainer.callbacks={_show(callbacks)}: must be a list of {{_target_: ..., <arguments>}}"
                              f" (Lightning callbacks, added to focalbench's own)")
        for i, cb in enumerate(callbacks):
            _check_target(cb, f"trainer.callbacks[{i}]")


def _check_parts(c: dict) -> list[Part]:
    """The sections whose ``_target_`` is a user's own (their keys checked against its signature); a
    ``_target_`` inside focalbench must be the section's packaged one (the config hash leaves it out)."""
    external = []
    for part in PARTS:
        found, section = _lookup(c, part.key)
        if not found or not isinstance(section, dict):
            continue
        target = parts.target_of(section)
        builtin = (part.builtin,) if isinstance(part.builtin, str) else part.builtin
        if target is None:
            continue
        if parts.is_builtin(target):
            if not builtin:
                raise ConfigError(f"{part.key}._target_={target}: focalbench builds no {part.key} of its own "
                                  f"(leave {part.key} out for focalbench's; a target names your own class)")
            if target not in builtin:
                raise ConfigError(f"{part.key}._target_={target}: focalbench's own {part.key} is built by "
                                  f"{' or '.join(builtin)} (choose a built-in one by its name)")
            continue
        _check_target(section, part.key, drop=part.drop, runtime=part.runtime, inherited=parts.params_of(part.builtin))
        external.append(part)
    return external


def _check_target(section: dict, key: str, **kw) -> None:
    """``parts.check_part`` with its error as the one-line ``ConfigError`` of every other config check."""
    try:
        parts.check_part(section, key, **kw)
    except parts.TargetError as e:
        raise ConfigError(str(e)) from None


def _check_loss(loss: dict) -> None:
    """The loss's parameters against its row of ``focalbench.losses.criteria.LOSSES`` (names and rules)."""
    from focalbench.losses.criteria import check_loss_params

    try:
        check_loss_params(loss["name"], {k: v for k, v in loss.items() if k not in ("name", "_target_")})
    except ValueError as e:
        raise ConfigError(str(e)) from None


def searchpath_dirs(overrides: Sequence[str]) -> list[str]:
    """The local folders a ``hydra.searchpath=[file://dir,...]`` override adds (a user's own config files)."""
    dirs = []
    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        if key == "hydra.searchpath":
            dirs += [v.strip().strip("'\"")[len("file://"):] for v in value.strip("[]").split(",")
                     if v.strip().strip("'\"").startswith("file://")]
    return dirs


def group_options(conf_dirs: Iterable[str | Path]) -> dict[str, list[str]]:
    """Config group -> its options (``<conf>/<group>/<option>.yaml``), over the given config directories."""
    groups: dict[str, set[str]] = {}
    for d in conf_dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for sub in d.iterdir():
            if sub.is_dir():
                groups.setdefault(sub.name, set()).update(p.stem for p in sub.glob("*.yaml"))
    return {g: sorted(o) for g, o in groups.items()}


def check_group_choices(overrides: Sequence[str], groups: Mapping[str, Sequence[str]]) -> None:
    """Reject ``group=option`` overrides (sweeps ``a,b`` / ``choice(a,b)`` included) naming an option that
    ``groups`` (group -> options, e.g. ``group_options([conf_dir])``) lacks, before Hydra composes: its own
    error spans a dozen lines. Other overrides are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # a syntax error: Hydra reports it where it parses
    for o in parsed:
        group = o.key_or_group
        if group not in groups or o.is_delete() or o.package is not None:
            continue
        value = o.value()
        if isinstance(value, ChoiceSweep):
            choices = list(value.list)
        elif o.is_sweep_override():
            continue  # glob(...) and friends: Hydra expands them from the same files
        else:
            choices = [value]
        for choice in choices:
            if choice is not None and str(choice) not in groups[group]:
                raise ConfigError(f"{group}={_show(choice)}: unknown {group}; allowed: {', '.join(groups[group])}")


def exit_config_error(e: ConfigError) -> None:
    """Hydra would print a trimmed traceback; a bad value needs only its one line (exit code 2, as argparse)."""
    import sys

    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


# ------------------------------------------------------------------------------------------- known keys
def _yaml_package(text: str, default: str) -> str:
    m = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
    if not m:
        return default
    pkg = m.group(1)
    return "" if pkg == "_global_" else pkg.removeprefix("_global_.")


def _walk(node: Any, prefix: str, out: dict[str, list]) -> None:
    if isinstance(node, dict):
        if prefix:
            out.setdefault(prefix, [])
        for k, v in node.items():
            _walk(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif prefix:
        out.setdefault(prefix, []).append(node)


def config_entries(primary: str | Path, group_dirs: Mapping[str, str | Path] | None = None) -> dict[str, list]:
    """Every key that a config file of an app can set (dotted, in file order) -> the values the files give it.

    ``primary`` is the app's config file (its ``defaults`` and ``hydra`` nodes left out); ``group_dirs``
    maps a config group to its folder (default: the sub-folders next to ``primary``), whose option files
    land under the group's name unless their ``# @package`` header says otherwise (``_global_``: the root).
    """
    import yaml

    primary = Path(primary)
    if group_dirs is None:
        group_dirs = {d.name: d for d in sorted(primary.parent.iterdir()) if d.is_dir()}
    out: dict[str, list] = {}
    files = [(primary, "")] + [(f, str(g)) for g, d in group_dirs.items() for f in sorted(Path(d).glob("*.yaml"))]
    for f, group in files:
        text = f.read_text()
        node = yaml.safe_load(text) or {}
        if not isinstance(node, dict):
            continue
        node = {k: v for k, v in node.items() if k != "defaults" and not (f == primary and k == "hydra")}
        pkg = _yaml_package(text, group)
        for part in reversed(pkg.split(".") if pkg else []):
            node = {part: node}
        _walk(node, "", out)
    return out


def _closest(key: str, known: Sequence[str]) -> str | None:
    """The known key a typo most likely meant: a near leaf under the same parent, the same leaf under
    another parent, or a near dotted key."""
    parent, _, leaf = key.rpartition(".")
    siblings = [k for k in known if k.rpartition(".")[0] == parent]
    near = difflib.get_close_matches(leaf, [k.rpartition(".")[2] for k in siblings], n=1, cutoff=0.6)
    if near:
        return f"{parent}.{near[0]}" if parent else near[0]
    same_leaf = [k for k in known if k.rpartition(".")[2] == leaf]
    if same_leaf:
        return same_leaf[0]
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.8)
    return near[0] if near else None


def unknown_key_error(shown: str, value: str, known: Iterable[str]) -> ConfigError:
    """``shown=value: unknown key (did you mean x.y?); x has: a, b, c``, over the dotted ``known`` keys."""
    known = list(dict.fromkeys(known))
    key = shown.lstrip("+~")
    parent = key.rpartition(".")[0]
    while parent and parent not in known:
        parent = parent.rpartition(".")[0]
    depth = parent.count(".") + 1 if parent else 0
    children = [k.split(".")[depth] for k in known if k.count(".") == depth and (not parent or k.startswith(parent + "."))]
    closest = _closest(key, known)
    hint = f" (did you mean {closest}?)" if closest and closest != key else ""
    return ConfigError(f"{shown}={value}: unknown key{hint}; {parent or 'the config'} has: "
                       f"{', '.join(sorted(set(children)))}")  # sorted: the same whatever order the files are read


def _parse(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return []  # a syntax error: Hydra reports it where it parses


def check_added_keys(overrides: Sequence[str], known: Iterable[str] | Callable[[], Iterable[str]],
                     groups: Iterable[str] = ()) -> None:
    """Refuse ``+key=...`` / ``++key=...`` whose key no config file of the app defines (``known``, dotted):
    the run would ignore it, yet it would change the config hash. ``+group=option`` (a config group in
    ``groups``) and Hydra's own ``hydra.*`` node are left to Hydra. ``known`` may be a function (called only
    when an override adds a key)."""
    parsed = [o for o in _parse(overrides) if (o.is_add() or o.is_force_add()) and o.package is None]
    if not parsed:
        return
    known = list(known() if callable(known) else known)
    known_set, groups = set(known), set(groups)
    for o in parsed:
        key = o.key_or_group
        if key in groups or "/" in key or key.split(".")[0] == "hydra" or key in known_set:
            continue
        written = o.input_line or f"+{key}="
        raise unknown_key_error(written.split("=", 1)[0], written.split("=", 1)[1] if "=" in written else "...",
                                known)


def dotted_keys(cfg: DictConfig | dict) -> list[str]:
    """The dotted keys of a config (dict nodes included), in order; ``???`` values count as keys."""
    c = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, list] = {}
    _walk({k: v for k, v in c.items() if k != "hydra"}, "", out)
    return list(out)


def composition_error_line(overrides: Sequence[str], e: BaseException,
                           compose_base: Callable[[list], Any]) -> ConfigError | None:
    """Hydra's multi-line composition errors about one key as one line: an unknown key ("Could not override
    'loss.gama' ... not in struct": the keys that are there, and the closest), or ``+key`` on a key that
    exists. None for any other error. ``compose_base(overrides)`` composes without validating."""
    text = f"{e} {e.__cause__}"
    m = re.search(r"An item is already at '([^']+)'", text)
    if m:
        key = m.group(1)
        mine = [o for o in overrides if o.startswith("+") and o.split("=", 1)[0].lstrip("+") == key]
        value = mine[0].split("=", 1)[1] if mine and "=" in mine[0] else "..."
        return ConfigError(f"+{key}={value}: {key} is already in the config; allowed: {key}={value} (no +) "
                           f"or ++{key}={value}")
    m = re.search(r"Could not override '([^']+)'", text)
    if not m or "not in struct" not in text:
        return None
    key = m.group(1)
    mine = [o for o in overrides if o.split("=", 1)[0].lstrip("~+") == key]
    value = mine[0].split("=", 1)[1] if mine and "=" in mine[0] else "..."
    try:
        base = compose_base([o for o in overrides if o not in mine])
    except Exception:  # noqa: BLE001 - another error too: Hydra's own message then
        return None
    return unknown_key_error(key, value, dotted_keys(base))


# ---------------------------------------------------------------------------------------------- data.root
def check_data_root(cfg: DictConfig | dict, data_choice: str | None, overrides: Sequence[str],
                    builtin_roots: Callable[[], Iterable[str]]) -> None:
    """``data=coco`` with a ``data.root`` that a profile set for a built-in set (``profile=smoke``:
    ``data/shapes_smoke``) and that the command line did not give: COCO would read a folder that is not
    it. ``builtin_roots()``: the ``data.root`` values the config files give."""
    if data_choice != "coco":
        return
    root = _get(_plain(cfg), "data.root")
    if not isinstance(root, str) or root == "???":
        return  # missing: validate_config(complete=True) says it
    if any(o.split("=", 1)[0].lstrip("+~") == "data.root" for o in overrides):
        return
    if root in set(builtin_roots()):
        raise ConfigError(f"{COCO_ROOT_HELP}: add data.root=/path/to/coco (data=coco got {root}, the folder "
                          f"of a built-in set, from a profile)")


# ----------------------------------------------------------------------------------------- output folders
def _temp_name(name: str) -> bool:
    """``.metrics.json.x1y2.tmp`` (runstore's atomic writes), ``.shapes.building-123`` (a dataset build)."""
    return bool(re.fullmatch(r"\..+\.(tmp|building-\d+)", name))


def os_error_line(e: OSError) -> str:
    """An OSError as one line naming the file, or the folder when the file is a temporary one that only
    existed to be renamed (``.metrics.json.x1y2.tmp``): ``folder /runs/a: cannot write there (No space ...)``."""
    name = e.filename
    reason = e.strerror or str(e)
    if name is None:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    path = Path(os.fsdecode(name))
    for p in reversed((path, *path.parents)):  # the outermost temporary one: .x.building-1/.a.json.k2.tmp
        if _temp_name(p.name):
            return f"folder {p.parent}: cannot write there ({reason})"
    return f"{path}: {reason}"


def check_output_dir(path: str | os.PathLike, key: str = "hydra.run.dir") -> None:
    """Before anything is made under ``path``: its nearest existing folder must take a new file (a probe,
    written, synced and removed); nothing is created when it cannot. ConfigError naming the folder."""
    import tempfile

    p = Path(path)
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{key}={path}: {anc} is a file, not a folder")
    fd, probe = None, None
    try:
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".focalbench-probe.", suffix=".tmp")
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno == errno.ENOENT:  # e.g. /proc: the folder takes no new entries
            reason = "no new files can be made there"
        raise ConfigError(f"{key}={path}: cannot write in folder {anc} ({reason})") from None
    finally:
        if fd is not None:
            os.close(fd)
        if probe is not None:
            Path(probe).unlink(missing_ok=True)


def check_command_line(argv: Sequence[str], conf_dirs: Sequence[str | Path], compose: Callable[[list], Any],
                       rules: Sequence[Rule] = RULES, complete: bool = False,
                       extra_groups: Mapping[str, Sequence[str]] | None = None,
                       known_keys: Callable[[], Iterable[str]] | None = None,
                       compose_base: Callable[[list], Any] | None = None) -> None:
    """A Hydra app's command line checked before Hydra makes a run directory; a config error exits with its
    one line (``exit_config_error``). Unknown group options (also inside ``-m`` sweeps) are checked first, over
    ``conf_dirs`` (+ ``--config-dir``) and ``extra_groups``, then ``+key`` overrides against ``known_keys()``
    (``check_added_keys``); a single run of the app's primary config is then composed with
    ``compose(overrides)`` and validated whole against ``rules``, and its ``hydra.run.dir`` (when ``compose``
    returns the hydra node) must be writable (``check_output_dir``). Unknown keys that fail the composition
    become one line (``composition_error_line``, composing with ``compose_base``, default ``compose``).
    Everything else (``-m`` jobs, ``--config-dir``/``--config-name``) is left to the app, per job; other
    composition errors to Hydra."""
    from hydra._internal.utils import get_args_parser  # Hydra's own command line, so its flags parse as in main

    args, _ = get_args_parser().parse_known_args(list(argv))
    groups = group_options([*conf_dirs, *([args.config_dir] if args.config_dir else []),
                            *searchpath_dirs(args.overrides)])
    groups.update(extra_groups or {})
    own_config = not (args.config_dir or args.config_name or args.config_path or args.experimental_rerun)
    plain_run = own_config and not (args.multirun or args.cfg or args.info or args.help or args.hydra_help
                                    or args.shell_completion)
    try:
        check_group_choices(args.overrides, groups)
        if own_config and known_keys is not None:
            check_added_keys(args.overrides, known_keys, groups)
        if plain_run:
            try:
                cfg = compose(args.overrides)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001
                line = composition_error_line(args.overrides, e, compose_base or compose)
                if line is None:
                    return  # any other composition error: the app reports it as Hydra does
                raise line from None
            validate_config(cfg, complete=complete, rules=rules)
            run_dir = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=False) \
                if isinstance(cfg, DictConfig) else None
            if isinstance(run_dir, str) and run_dir:
                check_output_dir(run_dir, "hydra.run.dir")
    except ConfigError as e:
        exit_config_error(e)
    except Exception:  # noqa: BLE001 - any other error: the app reports it as Hydra does
        pass
