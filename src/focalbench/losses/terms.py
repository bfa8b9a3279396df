"""The paper's shared terms, written once: label values, alpha_t (eq. 3) and the classifier prior (section 4.1).

Pure Python (no torch import), so every module of the package, the config checks included, can use them.
"""

from __future__ import annotations

import math

from focalbench.checks import num_in, or_null, require_number

BACKGROUND = -1   # label of an anchor assigned to no box (IoU < .4)
IGNORE = -2       # label of an anchor with IoU in [.4, .5): no classification loss


def alpha_coefs(alpha: float) -> tuple[float, float]:
    """``(a0, a1)`` with ``alpha_t = a0 + a1 y`` for a binary target ``y`` (eq. 3: ``alpha`` if ``y = 1``, else
    ``1 - alpha``); any ``alpha < 0`` disables the weighting (``alpha_t = 1``, torchvision's convention)."""
    alpha = float(alpha)
    return (1.0, 0.0) if alpha < 0 else (1.0 - alpha, 2.0 * alpha - 1.0)


PRIOR = num_in(0, 1, open_lo=True, open_hi=True)
PRIOR_PROB = or_null(PRIOR)        # model.prior_prob: null leaves the classifier bias at 0


def prior_logit(prior_prob: float, name: str = "prior_prob") -> float:
    """``b = -log((1 - pi) / pi)``: the classifier bias with which every output starts at ``p = pi``
    (section 4.1, "Initialization"; pi = .01 in the paper)."""
    pi = require_number(PRIOR, prior_prob, name)
    return -math.log((1.0 - pi) / pi)
