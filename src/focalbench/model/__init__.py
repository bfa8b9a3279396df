"""RetinaNet from torchvision parts: backbone + FPN (P3-P7), shared heads, batched matching, loss, inference."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from focalbench.model.anchors import grid_anchors, num_anchors, num_anchors_per_location
from focalbench.model.backbone import BackboneFPN, SmallResNet, build_backbone, build_body
from focalbench.model.head import RetinaNetHead, prior_bias
from focalbench.model.matcher import BatchedMatcher
from focalbench.model.retinanet import HeadOutputs, RetinaNet


def build_retinanet(num_classes: int, criterion: nn.Module, backbone: Mapping[str, Any], anchors: Mapping[str, Any],
                    fpn_channels: int = 256, head: Mapping[str, Any] | None = None, prior_prob: float | None = 0.01,
                    fg_iou: float = 0.5, bg_iou: float = 0.4, allow_low_quality_matches: bool = False,
                    smooth_l1_beta: float = 0.11, score_thresh: float = 0.05, topk_candidates: int = 1000,
                    nms_thresh: float = 0.5, detections_per_img: int = 100, channels_last: bool = False,
                    body: nn.Module | None = None, **unused: Any) -> RetinaNet:
    """A ``RetinaNet`` from the ``model`` and ``anchors`` config groups (plain values, no Hydra needed).

    ``body``: a backbone body already built (``model.backbone._target_``, focalbench.builders); else the
    ``backbone`` section builds one (``build_body``)."""
    if unused:
        raise ValueError(f"model: unknown keys {sorted(unused)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    head = dict(head or {})
    a = dict(anchors)
    num_scales, num_ratios = a.get("scales", 3), a.get("ratios", 3)
    per_loc = num_anchors_per_location(num_scales, num_ratios)  # validates both
    num_logits = criterion.logits_per_anchor(num_classes) if hasattr(criterion, "logits_per_anchor") else num_classes
    cls_bias = None
    if prior_prob is not None:
        prior_bias(prior_prob)  # validates
        cls_bias = (criterion.prior_bias(prior_prob, num_classes) if hasattr(criterion, "prior_bias")
                    else prior_bias(prior_prob))
    if body is not None:
        bb = build_backbone(fpn_channels=fpn_channels, body=body)
    else:
        bb = build_backbone(fpn_channels=fpn_channels, **{k: v for k, v in dict(backbone).items() if k != "_target_"})
    h = RetinaNetHead(fpn_channels, per_loc, num_logits, num_convs=head.get("num_convs", 4),
                      width=head.get("width") or fpn_channels, norm=head.get("norm", "none"), cls_bias=cls_bias)
    model = RetinaNet(bb, h, criterion, num_classes, num_scales, num_ratios, a.get("size_multiplier", 4.0),
                      BatchedMatcher(fg_iou, bg_iou, allow_low_quality_matches), smooth_l1_beta, score_thresh,
                      topk_candidates, nms_thresh, detections_per_img, channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


__all__ = ["BackboneFPN", "BatchedMatcher", "HeadOutputs", "RetinaNet", "RetinaNetHead", "SmallResNet",
           "build_backbone", "build_body", "build_retinanet", "grid_anchors", "num_anchors", "num_anchors_per_location",
           "prior_bias"]
