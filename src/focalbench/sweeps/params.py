"""``hydra.sweeper.params`` syntax -> Optuna distributions, and trial values -> Hydra overrides.

The syntax is the one of Hydra's (old) ``hydra-optuna-sweeper``, parsed by Hydra's own override
grammar:

=================================  ===============================================================
``key=interval(a, b)``             ``FloatDistribution(a, b)``
``key=int(interval(a, b))``        ``IntDistribution(a, b)`` (both ends included)
``key=tag(log, interval(a, b))``   ``FloatDistribution(a, b, log=True)`` (``int(...)``: int, log)
``key=choice(x, y, z)``, ``x,y,z`` ``CategoricalDistribution((x, y, z))``
``key=range(a, b, step)``          Hydra's range (``b`` excluded, as in Python): ``IntDistribution``
                                   or ``FloatDistribution`` with ``step`` from ``a`` to the last value
``key=value``                      fixed: passed to every job unchanged
=================================  ===============================================================
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

_CHOICE_TYPES = (str, int, float, bool)


def distribution_from_override(override: Override) -> BaseDistribution | None:
    """The Optuna distribution of one sweep override, None for a plain value."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return None
    value = override.value()
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        value.shuffle = False  # order is meaningless to Optuna, but must be stable across runs
    if override.is_choice_sweep():
        choices = list(override.sweep_iterator(transformer=Transformer.identity))
        for c in choices:
            if not isinstance(c, _CHOICE_TYPES):
                raise ValueError(f"hydra.sweeper.params {key}: choice value {c!r} is a {type(c).__name__}; allowed: str, int, float, bool")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator(transformer=Transformer.identity))
        if not values:
            raise ValueError(f"hydra.sweeper.params {key}=range({value.start}, {value.stop}, {value.step}) is empty; allowed: a range with at least one value")
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            return IntDistribution(values[0], values[-1], step=value.step)
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"hydra.sweeper.params {key}: sweep {override.input_line!r} is not supported; allowed: interval, int(interval), tag(log, interval), choice, range, a,b,c")


def parse_params(arguments: Sequence[str]) -> Tuple[Dict[str, BaseDistribution], Dict[str, str]]:
    """Split override strings into a search space ``{key: distribution}`` and fixed overrides.

    Fixed overrides keep their full text (``+key=value``, ``~key`` ...), keyed by their key; a key
    given twice keeps the last value, as on Hydra's command line.
    """
    parser = OverridesParser.create()
    space: Dict[str, BaseDistribution] = {}
    fixed: Dict[str, str] = {}
    for override in parser.parse_overrides(list(arguments)):
        key = override.get_key_element()
        dist = distribution_from_override(override)
        space.pop(key, None)
        fixed.pop(key, None)
        if dist is None:
            fixed[key] = override.input_line if override.input_line is not None else f"{key}={override.get_value_element_as_str()}"
        else:
            space[key] = dist
    return space, fixed


def grid_values(key: str, dist: BaseDistribution) -> List[Any]:
    """Every value of a discrete distribution (for the grid sampler)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, IntDistribution):  # int log interval: every integer, on a grid
        return list(range(dist.low, dist.high + 1))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = int(math.floor((dist.high - dist.low) / dist.step + 1e-9)) + 1
        return [round(dist.low + i * dist.step, 12) for i in range(n)]
    raise ValueError(f"hydra.sweeper.params {key}: {dist} is continuous; the grid sampler allows choice(), range() or int(interval())")


def grid_points(space: Mapping[str, BaseDistribution]) -> List[Dict[str, Any]]:
    """The cartesian product of the search space, in the order the keys were given."""
    keys = list(space)
    values = [grid_values(k, space[k]) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def format_value(value: Any) -> str:
    """A Python value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    try:
        parsed = OverridesParser.create().parse_override(f"k={text}")
        if not parsed.is_sweep_override() and parsed.value() == text:
            return text
    except Exception:
        pass
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(fixed: Mapping[str, str], params: Mapping[str, Any]) -> List[str]:
    """One job's overrides: the fixed ones, then the trial's parameter values."""
    return list(fixed.values()) + [f"{k}={format_value(v)}" for k, v in params.items()]
