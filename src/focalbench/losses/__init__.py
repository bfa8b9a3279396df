"""Classification losses of the paper: FL, FL*, softmax FL, CE / alpha-CE, OHEM. Pure tensor code."""

from .criteria import (ClassificationLoss, FocalStarLoss, OHEMLoss, SigmoidFocalLoss, SoftmaxFocalLoss,
                       build_classification_loss, one_hot_targets)
from .focal import sigmoid_focal_loss, sigmoid_focal_loss_star, softmax_focal_loss
from .ohem import nms_topk, nms_topk_1to3, rank_order, select_hard_examples

__all__ = [
    "ClassificationLoss", "FocalStarLoss", "OHEMLoss", "SigmoidFocalLoss", "SoftmaxFocalLoss",
    "build_classification_loss", "one_hot_targets", "sigmoid_focal_loss", "sigmoid_focal_loss_star",
    "softmax_focal_loss", "nms_topk", "nms_topk_1to3", "rank_order", "select_hard_examples",
]
