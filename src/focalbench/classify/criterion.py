"""The classification loss: the detection criterion of ``focalbench.losses``, one "anchor" per sample.

``loss=`` picks a file of the shared ``conf/loss/`` group and ``build_criterion(**cfg.loss)`` builds it
exactly as a detection run does (``build_classification_loss``). A classifier's ``(N, C)`` logits are fed
as ``(N, 1, C)``: one anchor per sample, labels ``0..K-1`` (positive class) or -1 (negative).

Normalisation differs from detection on purpose: the per-sample losses are averaged over the minibatch.
The paper divides by the number of foreground anchors, which suits images holding ~100k anchors and
some hundred positives; a 2,048-sample minibatch at 1:10,000 usually holds no positive at all, so that
normaliser would rescale the loss by up to 2,000x from one step to the next.
"""

from __future__ import annotations

from typing import Any

import torch


from focalbench.losses.criteria import LOSSES

DETECTION_ONLY = ("ohem", "ohem_1to3")          # they select anchors by box NMS
CLASSIFICATION_LOSSES = tuple(name for name in LOSSES if name not in DETECTION_ONLY)
# the rule of loss.name in this app (the config check, classify.schema, reads it from here)
LOSS_NAME = ((lambda v: v in CLASSIFICATION_LOSSES),
             "not a loss of the classification app (the OHEM variants select anchors by box NMS: detection "
             f"only); allowed: {', '.join(CLASSIFICATION_LOSSES)}")


def build_criterion(name: str | None = None, **params: Any):
    """The criterion of ``loss`` (its ``_target_``, by default ``focalbench.losses`` by ``loss.name``); OHEM
    variants are refused here."""
    from focalbench.parts import build_part
    from focalbench.parts import is_external

    if name in DETECTION_ONLY and not is_external(params):
        raise ValueError(f"loss={name}: detection-only (it selects anchors by box NMS); allowed here: "
                         f"{', '.join(CLASSIFICATION_LOSSES)}")
    return build_part({"name": name, **params}, "loss")


def sample_losses(criterion, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample losses ``(N,)`` from logits ``(N, C)`` and labels ``(N,)`` (class index or -1)."""
    return criterion.per_anchor(logits[:, None, :], labels[:, None])[:, 0]
