"""Classification criteria the detector calls: ``build_classification_loss(**cfg.loss)``.

Every criterion is called as ``loss_fn(logits, labels, anchors)``:
    logits  ``(N, A, K)`` (sigmoid losses) or ``(N, A, K + 1)`` (``softmax_focal``, index 0 = background);
            ``loss_fn.logits_per_anchor(K)`` says which.
    labels  ``(N, A)`` long: ``0..K-1`` foreground class, ``-1`` background, ``-2`` ignored.
    anchors ``(A, 4)`` xyxy, shared by the images of the batch (OHEM only).
and returns a normalised scalar:
    dense losses (ce, alpha_ce, focal, focal_star, softmax_focal): sum over all non-ignored anchors and
        classes, divided by max(1, number of foreground anchors in the batch) (paper section 4);
    OHEM (ohem, ohem_1to3): CE (alpha-weighted when alpha >= 0) summed over the selected anchors and
        divided by their number (the mean of a sampled minibatch, as in OHEM / Fast R-CNN).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from focalbench.checks import BOOL, Check, is_num, one_of, require, require_number, show

from . import compiled as _compiled
from .focal import (BETA, GAMMA, STAR_GAMMA, _compute_dtype, _sigmoid_focal, check_alpha, check_gamma,
                    sigmoid_ce_from_labels, sigmoid_focal_loss_star, softmax_focal_loss)
from .ohem import BATCH_SIZE, NEG_POS_RATIO, NMS_IOU, check_batch_size, check_neg_pos_ratio, check_nms_iou, \
    select_hard_examples
from .terms import IGNORE, prior_logit

# A config's alpha: [0, 1], or exactly -1 for "no alpha weighting". The tensor functions keep torchvision's
# convention that any alpha < 0 disables it (focal.ALPHA), but in a config a value like -0.25 is much more
# likely a sign typo than a request, and one sentinel keeps the config hash canonical (alpha=-1 and
# alpha=-0.5 would be two hashes of one run).
ALPHA = ((lambda v: is_num(v) and (0 <= v <= 1 or v == -1)), "must be in [0, 1], or -1 to disable the alpha weighting")
NMS_BOXES = one_of(("anchors", "predicted"), "OHEM box set")



def _check_inputs(logits: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (N, A, C) and labels (N, A), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    k = logits.shape[-1] if num_classes is None else num_classes
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < IGNORE or hi >= k:
            raise ValueError(f"labels must be in [-2, {k - 1}] (-2 ignored, -1 background), "
                             f"got values in [{lo}, {hi}]")


def one_hot_targets(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """``(N, A)`` labels -> ``(N, A, K)`` 0/1 targets, batched (background and ignored rows all zero)."""
    t = torch.zeros(*labels.shape, num_classes, dtype=dtype, device=labels.device)
    fg = labels >= 0
    t[fg, labels[fg]] = 1.0
    return t


class ClassificationLoss(nn.Module):
    """Base criterion. Subclasses implement ``per_element`` or override ``forward``."""

    softmax = False

    def logits_per_anchor(self, num_classes: int) -> int:
        """Outputs per anchor the classifier needs: K (sigmoid) or K + 1 (softmax, background first)."""
        return num_classes + 1 if self.softmax else num_classes

    def prior_bias(self, prior_prob: float, num_classes: int) -> float | torch.Tensor:
        """Classifier bias init so that every anchor starts with foreground confidence ``prior_prob``
        (paper section 4.1): ``-log((1 - pi) / pi)`` for each sigmoid output."""
        return prior_logit(prior_prob)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor,
                anchors: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def per_anchor(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Un-normalised per-anchor losses ``(N, A)`` (summed over classes; ignored anchors 0)."""
        raise NotImplementedError

    def normalizer(self, labels: torch.Tensor) -> torch.Tensor:
        """max(1, number of foreground anchors in the batch) (paper section 4)."""
        return (labels >= 0).sum().clamp_min(1)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict:
        return {}


def _check_prior(prior_prob: float) -> float:
    prior_logit(prior_prob)  # the one check of pi
    return float(prior_prob)


class SigmoidFocalLoss(ClassificationLoss):
    """FL (eq. 5) on K sigmoid outputs; ``gamma=0`` gives CE (``alpha < 0``) or alpha-balanced CE (eq. 3)."""

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__()
        self.gamma, self.alpha = check_gamma(gamma, "loss.gamma"), check_alpha(alpha, "loss.alpha", ALPHA)

    def hparams(self) -> dict:
        return {"gamma": self.gamma, "alpha": self.alpha}

    def _valid_weight(self, labels):
        if bool((labels == IGNORE).any()):
            return (labels != IGNORE).unsqueeze(-1).float()
        return None

    def _fused(self, logits, labels, reduction):
        """The fused compiled kernel straight from the labels (no one-hot targets); None: not used."""
        if not _compiled.use_compiled(logits):
            return None
        return _compiled.sigmoid_focal_from_labels(logits, labels, self.alpha, self.gamma, reduction)

    def forward(self, logits, labels, anchors=None):
        _check_inputs(logits, labels)
        loss = self._fused(logits, labels, "sum")
        if loss is not None:
            return loss / self.normalizer(labels)
        t = one_hot_targets(labels, logits.shape[-1])
        loss = _sigmoid_focal(logits, t, self.alpha, self.gamma, "sum", weight=self._valid_weight(labels),
                              out_float32=True, hard=True)
        return loss / self.normalizer(labels)

    def per_anchor(self, logits, labels):
        """Un-normalised per-anchor loss ``(N, A)`` (summed over classes; ignored anchors 0)."""
        _check_inputs(logits, labels)
        loss = self._fused(logits, labels, "rows")
        if loss is not None:
            return loss
        t = one_hot_targets(labels, logits.shape[-1])
        loss = _sigmoid_focal(logits, t, self.alpha, self.gamma, "none", weight=self._valid_weight(labels),
                              out_float32=True, hard=True)
        return loss.sum(-1)


class FocalStarLoss(ClassificationLoss):
    """FL* (Appendix A): ``-alpha_t log(sigmoid(gamma x_t + beta)) / gamma`` on K sigmoid outputs."""

    def __init__(self, gamma: float = 2.0, beta: float = 1.0, alpha: float = 0.25):
        super().__init__()
        self.gamma, self.alpha = check_gamma(gamma, "loss.gamma", STAR_GAMMA), check_alpha(alpha, "loss.alpha", ALPHA)
        self.beta = float(require_number(BETA, beta, "loss.beta"))

    def hparams(self) -> dict:
        return {"gamma": self.gamma, "beta": self.beta, "alpha": self.alpha}

    def per_anchor(self, logits, labels):
        _check_inputs(logits, labels)
        t = one_hot_targets(labels, logits.shape[-1])
        x = logits.to(_compute_dtype(logits))
        loss = sigmoid_focal_loss_star(x, t.to(x.dtype), self.alpha, self.gamma, self.beta).sum(-1)
        return loss * (labels != IGNORE)

    def forward(self, logits, labels, anchors=None):
        return self.per_anchor(logits, labels).sum() / self.normalizer(labels)


class SoftmaxFocalLoss(ClassificationLoss):
    """Multi-class FL over K + 1 softmax outputs (index 0 = background; alpha_t = 1 - alpha there)."""

    softmax = True

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25):
        super().__init__()
        self.gamma, self.alpha = check_gamma(gamma, "loss.gamma"), check_alpha(alpha, "loss.alpha", ALPHA)

    def hparams(self) -> dict:
        return {"gamma": self.gamma, "alpha": self.alpha}

    def prior_bias(self, prior_prob: float, num_classes: int) -> torch.Tensor:
        """Bias ``(K + 1,)``: 0 for the K foreground logits and ``log(K (1 - pi) / pi)`` for background, so
        that p(background) = 1 - pi and each foreground class starts at pi / K."""
        pi = _check_prior(prior_prob)
        bias = torch.zeros(num_classes + 1)
        bias[0] = math.log(num_classes * (1.0 - pi) / pi)
        return bias

    def per_anchor(self, logits, labels):
        _check_inputs(logits, labels, num_classes=logits.shape[-1] - 1)
        n, a, c = logits.shape
        target = torch.where(labels == IGNORE, -100, labels + 1).reshape(-1)  # background -1 -> 0
        x = logits.to(_compute_dtype(logits))
        loss = softmax_focal_loss(x.reshape(-1, c), target, self.alpha, self.gamma, "none",
                                  ignore_index=-100, background_index=0)
        return loss.reshape(n, a)

    def forward(self, logits, labels, anchors=None):
        return self.per_anchor(logits, labels).sum() / self.normalizer(labels)


class OHEMLoss(ClassificationLoss):
    """OHEM (paper section 5.1) or, with ``neg_pos_ratio``, OHEM 1:3 (SSD's rule). Anchors are scored by
    CE summed over the K classes (no grad), selected by ``select_hard_examples``, and the loss is the
    (alpha-weighted when alpha >= 0) CE of the selected anchors, averaged over them."""

    def __init__(self, batch_size: int = 128, nms_iou: float = 0.7, per_image: bool = True,
                 alpha: float = -1.0, neg_pos_ratio: float | None = None, nms_boxes: str = "anchors"):
        super().__init__()
        require(NMS_BOXES, nms_boxes, "loss.nms_boxes")
        # "anchors": NMS over the anchor boxes; "predicted": over each anchor's regressed box (the model
        # passes them, detached, in place of the anchors). Counts of what NMS examined and kept:
        self.nms_boxes = nms_boxes
        self.nms_stats = {"scanned": 0, "kept": 0}
        self.batch_size = check_batch_size(batch_size, "loss.batch_size")
        self.nms_iou = check_nms_iou(nms_iou, "loss.nms_iou")
        self.per_image = require(BOOL, per_image, "loss.per_image")
        self.alpha = check_alpha(alpha, "loss.alpha", ALPHA)
        self.neg_pos_ratio = None if neg_pos_ratio is None else check_neg_pos_ratio(neg_pos_ratio,
                                                                                     "loss.neg_pos_ratio")

    def hparams(self) -> dict:
        h = {"batch_size": self.batch_size, "nms_iou": self.nms_iou, "per_image": self.per_image,
             "alpha": self.alpha, "nms_boxes": self.nms_boxes}
        if self.neg_pos_ratio is not None:
            h["neg_pos_ratio"] = self.neg_pos_ratio
        return h

    @torch.no_grad()
    def scores(self, logits, labels):
        """Per-anchor CE ``(N, A)`` summed over classes: the OHEM ranking score."""
        if _compiled.use_compiled(logits):
            s = _compiled.sigmoid_ce_from_labels(logits, labels)
            if s is not None:
                return s
        return sigmoid_ce_from_labels(logits, one_hot_targets(labels, logits.shape[-1])).sum(-1)

    def select(self, logits, labels, anchors):
        """``(image_idx, anchor_idx)`` of the anchors this minibatch trains on."""
        _check_inputs(logits, labels)
        n, a = logits.shape[:2]
        if anchors is None or tuple(anchors.shape) not in ((a, 4), (n, a, 4)):
            got = None if anchors is None else tuple(anchors.shape)
            raise ValueError(f"OHEM needs anchors (or boxes) of shape ({a}, 4) or ({n}, {a}, 4), got {got}")
        return select_hard_examples(anchors, self.scores(logits, labels), labels, self.batch_size,
                                    self.nms_iou, self.per_image, self.neg_pos_ratio,
                                    stats=self.nms_stats if self.training else None)

    def nms_removed_fraction(self) -> float | None:
        """Fraction of the anchors NMS examined during training that it removed (None before any step)."""
        st = self.nms_stats
        return round(1.0 - st["kept"] / st["scanned"], 4) if st["scanned"] else None

    def forward(self, logits, labels, anchors=None):
        img, anc = self.select(logits, labels, anchors)
        if img.numel() == 0:
            return logits.sum() * 0.0
        x = logits[img, anc]                                           # (S, K)
        t = one_hot_targets(labels[img, anc], logits.shape[-1])
        loss = _sigmoid_focal(x, t, self.alpha, 0.0, "sum", out_float32=True, hard=True)
        return loss / img.numel()

    def per_anchor(self, logits, labels):
        """Per-anchor CE (alpha-weighted when alpha >= 0), ignored anchors 0: ``(N, A)``."""
        _check_inputs(logits, labels)
        t = one_hot_targets(labels, logits.shape[-1])
        weight = (labels != IGNORE).unsqueeze(-1).float()
        return _sigmoid_focal(logits, t, self.alpha, 0.0, "none", weight=weight, out_float32=True,
                              hard=True).sum(-1)


class LossSpec(NamedTuple):
    cls: type                  # the criterion class
    fixed: dict                # parameters the name fixes (ce: gamma 0, no alpha)
    params: dict               # the parameters a config may set -> their rule (focalbench.checks)


_OHEM = {"batch_size": BATCH_SIZE, "nms_iou": NMS_IOU, "per_image": BOOL, "alpha": ALPHA, "nms_boxes": NMS_BOXES}
# The losses a config names (conf/loss/<name>.yaml): the one table of names, parameters and their rules. The
# constructors apply the same rules, and the config check (focalbench.config_schema) reads them from here.
LOSSES: dict[str, LossSpec] = {
    "ce": LossSpec(SigmoidFocalLoss, {"gamma": 0.0, "alpha": -1.0}, {}),
    "alpha_ce": LossSpec(SigmoidFocalLoss, {"gamma": 0.0}, {"alpha": ALPHA}),
    "focal": LossSpec(SigmoidFocalLoss, {}, {"gamma": GAMMA, "alpha": ALPHA}),
    "focal_star": LossSpec(FocalStarLoss, {}, {"gamma": STAR_GAMMA, "beta": BETA, "alpha": ALPHA}),
    "softmax_focal": LossSpec(SoftmaxFocalLoss, {}, {"gamma": GAMMA, "alpha": ALPHA}),
    "ohem": LossSpec(OHEMLoss, {}, _OHEM),
    "ohem_1to3": LossSpec(OHEMLoss, {"neg_pos_ratio": 3.0}, {**_OHEM, "neg_pos_ratio": NEG_POS_RATIO}),
}
LOSS_NAME: Check = one_of(tuple(LOSSES), "loss")


def check_loss_params(name: str, params: dict, prefix: str = "loss.") -> None:
    """Every key of ``params`` is a parameter of loss ``name`` that its rule accepts; else one ValueError."""
    require(LOSS_NAME, name, prefix + "name")
    spec = LOSSES[name]
    for key, value in params.items():
        if key not in spec.params:
            raise ValueError(f"{prefix}{key}={show(value)}: not a parameter of loss {name}; its parameters: "
                             f"{', '.join(spec.params) or 'none'}")
        require(spec.params[key], value, prefix + key)


def build_classification_loss(name: str, **params) -> ClassificationLoss:
    """Criterion from a ``conf/loss/*.yaml`` entry: ``build_classification_loss(**cfg.loss)``."""
    check_loss_params(name, params)
    spec = LOSSES[name]
    return spec.cls(**{**spec.fixed, **params})
