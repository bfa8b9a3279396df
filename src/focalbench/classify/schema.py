"""Which values a classification run accepts (``python -m focalbench.classify``, the imbalance study).

The same table-of-rules as the training app (``focalbench.config_schema``): a bad value raises
``ConfigError`` with one line ``key=value: what is allowed``; the loss's parameters are checked by the
training app's table of losses (``focalbench.losses.criteria.LOSSES``).
"""

from __future__ import annotations

from focalbench.checks import int_at_least, is_num, num_above, num_at_least, num_in, one_of, or_null, owned, show
from focalbench.config_schema import Rule, _get, _rule

DATA_KINDS = ("tabular", "digits")  # classify.data.build_splits
ARCHS = ("mlp", "cnn")              # classify.run._build_net


def _ratio(v, cfg) -> bool:
    top = _get(cfg, "data.max_ratio")
    return is_num(v) and v >= 1 and (not is_num(top) or v <= top)


CLASSIFY_RULES: tuple[Rule, ...] = (
    _rule("seed", int_at_least(0)),
    _rule("data.kind", one_of(DATA_KINDS, "data kind")),
    _rule("data.max_ratio", int_at_least(1)),
    Rule("data.ratio", _ratio, lambda c: f"must be a number in [1, data.max_ratio={show(_get(c, 'data.max_ratio'))}]"
                                         " (n_neg : n_pos = ratio : 1)", needs_cfg=True),
    _rule("data.positives.train", int_at_least(1)),
    _rule("data.positives.val", int_at_least(1)),
    _rule("data.positives.test", int_at_least(1)),
    _rule("data.flip_y", num_in(0, 1, open_hi=True), optional=True),
    _rule("model.arch", one_of(ARCHS, "model")),
    _rule("model.dropout", num_in(0, 1, open_hi=True), optional=True),
    _rule("optim.lr", num_above(0)),
    _rule("optim.weight_decay", num_at_least(0), optional=True),
    _rule("trainer.max_steps", int_at_least(1)),
    _rule("trainer.warmup_steps", int_at_least(0), optional=True),
    _rule("trainer.batch_size", int_at_least(1)),
    _rule("trainer.eval_batch_size", int_at_least(1), optional=True),
    _rule("trainer.threads", or_null(int_at_least(1)), optional=True),
    _rule("metrics.fpr", num_in(0, 1, open_lo=True, open_hi=True), optional=True),
    _rule("metrics.ece_bins", int_at_least(1), optional=True),
    Rule("loss.name", *owned("focalbench.classify.criterion:LOSS_NAME")),  # its parameters: losses.criteria.LOSSES
)
