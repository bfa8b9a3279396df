"""Validation of a composed training config, before any data is built or any step is trained.

Hydra composes ``conf/train.yaml``; this module says which values a run accepts. Every rule is one row of a
table (key, check, what is allowed), read top to bottom below; a bad value raises ``ConfigError`` with one
line that names the key, the value as an override would write it, and what is allowed::

    loss.gamma=-1: must be a number >= 0
    loss.name=focl: unknown loss; allowed: ce, alpha_ce, focal, focal_star, softmax_focal, ohem, ohem_1to3
    anchors.scales=0: must be an integer >= 1
    data.size_divisible=100: must be a multiple of 128 (the P7 stride), or a power of two >= data.max_size (128)
    profile=laptop: unknown profile; allowed: cpu, gpu, paper, smoke

Decisions (the paper and the libraries leave them open):

* ``loss.alpha``: [0, 1], or exactly -1 for "no alpha weighting". The tensor API
  (``focalbench.losses.sigmoid_focal_loss``) keeps torchvision's convention that any alpha < 0 disables the
  weighting, but in a config a value like -0.25 is much more likely a sign typo than a request, and one
  sentinel keeps the config hash canonical (alpha=-1 and alpha=-0.5 would be two hashes of one run).
* Image sizes: the padded input must be divisible by the largest stride, 128 (P7), so every level's feature
  map is exactly H/stride and its anchors line up with it (Detectron's SIZE_DIVISIBILITY for RetinaNet). That
  is ``data.size_divisible`` (the batch is padded to a multiple of it), not ``data.image_size`` (a resize
  target: the paper's 600 px is padded to 640). One exception, for images smaller than one P7 cell (the smoke
  profile's 64 px): a power of two >= ``data.max_size`` pads every image to one square that each stride
  halves exactly down to a 1x1 map.
* Missing mandatory values (``???``, e.g. ``data.root`` of ``data=coco``) are allowed while composing and
  rejected by ``validate_config(cfg, complete=True)``, which ``train.run`` calls.
* Unknown group options (``profile=laptop``, ``loss=focl``) fail inside Hydra's composition with a long
  message; ``check_group_choices`` checks the overrides first and says it in one line.

The allowed sets repeat the code's own constants (``losses.criteria._LOSSES``, ``model.backbone.BODIES``...)
so that checking a config imports neither torchvision nor Lightning; tests/test_config_validation.py asserts
that both stay equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["ConfigError", "validate_config", "check_group_choices", "group_options", "check_command_line",
           "exit_config_error", "LOSS_PARAMS", "LOSS_RULES", "Rule"]

P7_STRIDE = 128
# loss name -> its parameters (conf/loss/<name>.yaml, focalbench.losses.build_classification_loss)
LOSS_PARAMS = {
    "ce": (),
    "alpha_ce": ("alpha",),
    "focal": ("gamma", "alpha"),
    "focal_star": ("gamma", "beta", "alpha"),
    "softmax_focal": ("gamma", "alpha"),
    "ohem": ("batch_size", "nms_iou", "per_image", "alpha", "nms_boxes"),
    "ohem_1to3": ("batch_size", "nms_iou", "per_image", "neg_pos_ratio", "alpha", "nms_boxes"),
}
ANCHOR_RATIOS = (1, 3, 5)                                              # model.anchors.ASPECT_RATIOS
BACKBONES = ("small", "resnet18", "resnet34", "resnet50", "resnet101")  # model.backbone.BODIES
NORMS = ("bn", "frozen_bn", "gn", "none")                               # model.backbone.NORMS
OPTIMIZERS = ("sgd", "adamw")                                           # model.lit.OPTIMIZERS
SCHEDULES = ("cosine", "step", "constant")                              # model.lit.SCHEDULES
LOGGERS = ("csv", "wandb")                                              # tracking.LOGGERS
EVAL_BACKENDS = ("faster", "pycocotools")                               # evaluation.coco.BACKENDS


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


def _show(v: Any) -> str:
    """A value as a Hydra override would write it: ``null``, ``true``, ``[1,2]``, ``focl``, ``'a b'``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, ListConfig)):
        return "[" + ",".join(_show(x) for x in v) + "]"
    if isinstance(v, str):
        plain = v and all(ch.isalnum() or ch in "_-./:" for ch in v)
        return v if plain else repr(v)
    return str(v)


# --------------------------------------------------------------------------------------------- value checks
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= lo), f"must be an integer >= {lo}"


def num_at_least(lo: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_num(v) and v >= lo), f"must be a number >= {lo:g}"


def num_above(lo: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_num(v) and v > lo), f"must be a number > {lo:g}"


def num_in(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False):
    def ok(v):
        return _is_num(v) and (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)
    return ok, f"must be in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"


def one_of(allowed: Sequence, what: str = "") -> tuple[Callable[[Any], bool], str]:
    text = ", ".join(_show(a) for a in allowed)
    return (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) and v in allowed), (
        f"unknown {what}; allowed: {text}" if what else f"must be one of {text}")


def or_null(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"{text}, or null"


BOOL = ((lambda v: isinstance(v, bool)), "must be true or false")


def _alpha(v: Any) -> bool:
    return _is_num(v) and (0.0 <= v <= 1.0 or v == -1)


def _steps(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(_is_int(s) and s >= 1 for s in v) and list(v) == sorted(v)


def _devices(v: Any) -> bool:
    if isinstance(v, str):
        return v == "auto" or v.isdigit() and int(v) >= 1 or v == "-1"
    if isinstance(v, (list, tuple)):
        return len(v) > 0 and all(_is_int(d) and d >= 0 for d in v)
    return _is_int(v) and (v >= 1 or v == -1)


def _max_size(v: Any, cfg: dict) -> bool:
    image_size = _get(cfg, "data.image_size")
    return _is_int(v) and _is_int(image_size) and v >= image_size


def _fg_iou(v: Any, cfg: dict) -> bool:
    bg_iou = _get(cfg, "model.bg_iou")
    return _is_num(v) and 0 < v <= 1 and _is_num(bg_iou) and v >= bg_iou


def _size_divisible(v: Any, cfg: dict) -> bool:
    if not _is_int(v) or v < 1:
        return False
    max_size = _get(cfg, "data.max_size")
    small_square = v & (v - 1) == 0 and _is_int(max_size) and v >= max_size
    return v % P7_STRIDE == 0 or small_square


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


RULES: tuple[Rule, ...] = (
    _rule("seed", int_at_least(0)),
    # data (focalbench.data.CocoDataModule)
    _rule("data.image_size", int_at_least(1)),
    Rule("data.max_size", _max_size,
         lambda c: f"must be an integer >= data.image_size ({_show(_get(c, 'data.image_size'))})", needs_cfg=True),
    Rule("data.size_divisible", _size_divisible,
         lambda c: f"must be a multiple of {P7_STRIDE} (the P7 stride), or a power of two >= data.max_size "
                   f"({_show(_get(c, 'data.max_size'))})", needs_cfg=True),
    _rule("data.batch_size", int_at_least(1)),
    _rule("data.val_batch_size", or_null(int_at_least(1)), optional=True),
    _rule("data.num_workers", int_at_least(0), optional=True),
    _rule("data.flip_prob", num_in(0, 1), optional=True),
    # model (focalbench.model.build_retinanet)
    _rule("model.backbone.name", one_of(BACKBONES, "backbone")),
    _rule("model.backbone.norm", one_of(NORMS, "norm"), optional=True),
    _rule("model.backbone.freeze_at", int_at_least(0), optional=True),
    _rule("model.fpn_channels", int_at_least(1)),
    _rule("model.head.num_convs", int_at_least(0), optional=True),
    _rule("model.head.width", or_null(int_at_least(1)), optional=True),
    _rule("model.head.norm", one_of(NORMS, "norm"), optional=True),
    _rule("model.prior_prob", or_null(num_in(0, 1, open_lo=True, open_hi=True))),
    _rule("model.bg_iou", num_in(0, 1)),
    Rule("model.fg_iou", _fg_iou,
         lambda c: f"must be in (0, 1] and >= model.bg_iou ({_show(_get(c, 'model.bg_iou'))})", needs_cfg=True),
    _rule("model.smooth_l1_beta", num_at_least(0), optional=True),
    _rule("model.score_thresh", num_in(0, 1), optional=True),
    _rule("model.nms_thresh", num_in(0, 1), optional=True),
    _rule("model.topk_candidates", int_at_least(1), optional=True),
    _rule("model.detections_per_img", int_at_least(1), optional=True),
    # anchors (focalbench.model.anchors)
    _rule("anchors.scales", int_at_least(1)),
    _rule("anchors.ratios", one_of(ANCHOR_RATIOS)),
    _rule("anchors.size_multiplier", num_above(0)),
    # loss: name first; its parameters are checked against LOSS_PARAMS in _check_loss
    _rule("loss.name", one_of(tuple(LOSS_PARAMS), "loss")),
    _rule("loss.gamma", num_at_least(0), optional=True),
    _rule("loss.alpha", (_alpha, "must be in [0, 1], or -1 to disable the alpha weighting"), optional=True),
    _rule("loss.beta", ((lambda v: _is_num(v)), "must be a finite number"), optional=True),
    _rule("loss.batch_size", int_at_least(1), optional=True),
    _rule("loss.nms_iou", num_in(0, 1, open_lo=True), optional=True),
    _rule("loss.per_image", BOOL, optional=True),
    _rule("loss.nms_boxes", one_of(("anchors", "predicted"), "OHEM box set"), optional=True),
    _rule("loss.neg_pos_ratio", num_at_least(0), optional=True),
    # optim (focalbench.model.lit)
    _rule("optim.name", one_of(OPTIMIZERS, "optimizer")),
    _rule("optim.lr", num_above(0)),
    _rule("optim.weight_decay", num_at_least(0), optional=True),
    _rule("optim.momentum", num_in(0, 1), optional=True),
    _rule("optim.schedule", one_of(SCHEDULES, "schedule"), optional=True),
    _rule("optim.steps", (_steps, "must be an ascending list of integers >= 1"), optional=True),
    _rule("optim.gamma", num_in(0, 1, open_lo=True), optional=True),   # lr factor at each of optim.steps
    _rule("optim.min_factor", num_in(0, 1), optional=True),
    _rule("optim.warmup_iters", int_at_least(0), optional=True),
    _rule("optim.warmup_factor", num_in(0, 1, open_lo=True), optional=True),
    _rule("optim.scale_with_batch", BOOL, optional=True),
    _rule("optim.base_batch", int_at_least(1), optional=True),
    _rule("optim.ema_decay", ((lambda v: v is None or (_is_num(v) and 0 < v < 1)), "must be null (off) or in (0, 1)"),
          optional=True),
    # trainer (Lightning)
    _rule("trainer.max_steps", int_at_least(1)),
    _rule("trainer.devices", (_devices, "must be auto, -1, an integer >= 1 or a list of device indices")),
    _rule("trainer.num_nodes", int_at_least(1)),
    _rule("trainer.val_every_n_epochs", or_null(int_at_least(0)), optional=True),
    _rule("trainer.num_threads", or_null(int_at_least(1)), optional=True),
    _rule("logger.name", one_of(LOGGERS, "logger")),
    _rule("eval_backend", one_of(EVAL_BACKENDS, "evaluation backend"), optional=True),
)


# --------------------------------------------------------------------------------------------- entry points
LOSS_RULES: tuple[Rule, ...] = tuple(r for r in RULES if r.key.startswith("loss."))  # shared by other apps


def validate_config(cfg: DictConfig | dict, complete: bool = False,
                    rules: Sequence[Rule] = RULES) -> DictConfig | dict:
    """Check a composed config against ``rules`` (default: the training app's ``RULES``); return it unchanged
    or raise ``ConfigError``. A ``loss`` group, when present, is also checked against ``LOSS_PARAMS``.

    ``complete``: also reject mandatory values still missing (``???``): a run needs them, composing does not.
    """
    if complete and isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])))
        if missing:
            raise ConfigError(f"{missing[0]}=???: a value is required (set it on the command line, "
                              f"e.g. {missing[0]}=...)")
    c = _plain(cfg)
    for rule in rules:
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
    if "loss" in c:
        _check_loss(c["loss"])
    return cfg


def _check_loss(loss: dict) -> None:
    name = loss["name"]
    allowed = LOSS_PARAMS[name]
    for key in loss:
        if key != "name" and key not in allowed:
            raise ConfigError(f"loss.{key}={_show(loss[key])}: not a parameter of loss {name}; its parameters: "
                              f"{', '.join(allowed) or 'none'}")
    if name == "focal_star" and loss.get("gamma") == 0:
        raise ConfigError("loss.gamma=0: must be > 0 for focal_star (FL* divides by gamma)")


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


def check_command_line(argv: Sequence[str], conf_dirs: Sequence[str | Path], compose: Callable[[list], Any],
                       rules: Sequence[Rule] = RULES, complete: bool = False,
                       extra_groups: Mapping[str, Sequence[str]] | None = None) -> None:
    """A Hydra app's command line checked before Hydra makes a run directory; a config error exits with its
    one line (``exit_config_error``). Unknown group options (also inside ``-m`` sweeps) are checked first, over
    ``conf_dirs`` (+ ``--config-dir``) and ``extra_groups``; a single run of the app's primary config is then
    composed with ``compose(overrides)`` and validated whole against ``rules``. Everything else (``-m`` jobs,
    ``--config-dir``/``--config-name``) is left to the app, per job; other composition errors to Hydra."""
    from hydra._internal.utils import get_args_parser  # Hydra's own command line, so its flags parse as in main

    args, _ = get_args_parser().parse_known_args(list(argv))
    groups = group_options([*conf_dirs, *([args.config_dir] if args.config_dir else [])])
    groups.update(extra_groups or {})
    plain_run = not (args.multirun or args.cfg or args.info or args.help or args.hydra_help
                     or args.shell_completion or args.config_dir or args.config_name or args.config_path
                     or args.experimental_rerun)
    try:
        check_group_choices(args.overrides, groups)
        if plain_run:
            validate_config(compose(args.overrides), complete=complete, rules=rules)
    except ConfigError as e:
        exit_config_error(e)
    except Exception:  # noqa: BLE001 - any other composition error: the app reports it as Hydra does
        pass
