"""The vocabulary of value rules, shared by the config check and the constructors (no torch import).

A rule is a pair ``(check, text)``: ``check(value) -> bool`` and what is allowed, in words. Each rule is
declared once, next to the code that uses the value (``focalbench.losses.focal.GAMMA``,
``focalbench.model.anchors.SCALES``...). The constructor applies it with ``require``; the config check
(``focalbench.config_schema``) reads the same object through ``owned("module:NAME")``, so a value is refused
with the same one line whether it comes from a config file or from Python::

    loss.gamma=-1: must be a number >= 0
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

try:  # omegaconf's list type, when installed (configs hand lists over as ListConfig)
    from omegaconf import ListConfig as _ListConfig
except ImportError:  # pragma: no cover - omegaconf is a dependency
    _ListConfig = list

Check = tuple[Callable[[Any], bool], str]


def show(v: Any) -> str:
    """A value as a Hydra override would write it: ``null``, ``true``, ``[1,2]``, ``focl``, ``'a b'``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, _ListConfig)):
        return "[" + ",".join(show(x) for x in v) + "]"
    if isinstance(v, str):
        plain = v and all(ch.isalnum() or ch in "_-./:" for ch in v)
        return v if plain else repr(v)
    return str(v)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> Check:
    return (lambda v: is_int(v) and v >= lo), f"must be an integer >= {lo}"


def num_at_least(lo: float) -> Check:
    return (lambda v: is_num(v) and v >= lo), f"must be a number >= {lo:g}"


def num_above(lo: float, why: str = "") -> Check:
    return (lambda v: is_num(v) and v > lo), f"must be a number > {lo:g}" + (f" ({why})" if why else "")


def num_in(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False) -> Check:
    def ok(v):
        return is_num(v) and (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)
    return ok, f"must be in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"


def one_of(allowed: Sequence, what: str = "") -> Check:
    text = ", ".join(show(a) for a in allowed)
    return (lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) and v in allowed), (
        f"unknown {what}; allowed: {text}" if what else f"must be one of {text}")


def or_null(rule: Check) -> Check:
    check, text = rule
    return (lambda v: v is None or check(v)), f"{text}, or null"


BOOL: Check = ((lambda v: isinstance(v, bool)), "must be true or false")
FINITE: Check = (is_num, "must be a finite number")


def require(rule: Check, value: Any, key: str) -> Any:
    """``value`` if ``rule`` accepts it, else ``ValueError("key=value: what is allowed")`` (one line)."""
    check, text = rule
    if not check(value):
        raise ValueError(f"{key}={show(value)}: {text}")
    return value


def require_number(rule: Check, value: Any, key: str) -> float:
    """``require`` for a float parameter given as any real number (a 0-d tensor's ``float()``, numpy...)."""
    if not isinstance(value, (bool, int, float, str)) and value is not None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            pass
    return require(rule, value, key)


def owned(source: str) -> tuple[Callable[[Any], bool], Callable[[Any], str]]:
    """The rule ``module:NAME`` declared by the code that owns the value, imported on first use (so that
    importing the config schema imports neither torch nor torchvision); for ``config_schema.Rule``."""
    cache: list[Check] = []

    def rule() -> Check:
        if not cache:
            module, _, name = source.partition(":")
            cache.append(getattr(importlib.import_module(module), name))
        return cache[0]

    return (lambda v: rule()[0](v)), (lambda _cfg=None: rule()[1])
