"""Anchor-to-box assignment for a whole minibatch at once (paper section 4: IoU >= 0.5 fg, < 0.4 bg, else ignore).

torchvision's ``Matcher`` takes one (M, A) IoU matrix per image, so its callers loop over images in Python.
``BatchedMatcher`` keeps its thresholds, constants and low-quality rule but works on padded (N, M, A) IoUs
from a single ``box_iou`` call.
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from focalbench.checks import is_num, show


FG_IOU_TEXT = "must be in (0, 1] and >= model.bg_iou ({other})"


def fg_iou_ok(fg_iou, bg_iou) -> bool:
    """The rule of model.fg_iou / model.bg_iou: 0 <= bg_iou <= fg_iou <= 1 and fg_iou > 0 (the config check
    reads it from here)."""
    return is_num(bg_iou) and is_num(fg_iou) and 0.0 <= bg_iou <= fg_iou <= 1.0 and fg_iou > 0.0


class BatchedMatcher(Matcher):
    """``BatchedMatcher(0.5, 0.4)`` is the paper's rule. Returns per anchor the index of its box in the image's
    padded box list, ``BELOW_LOW_THRESHOLD`` (-1, background) or ``BETWEEN_THRESHOLDS`` (-2, ignored)."""

    def __init__(self, high_threshold: float = 0.5, low_threshold: float = 0.4,
                 allow_low_quality_matches: bool = False):
        if not fg_iou_ok(high_threshold, low_threshold):
            raise ValueError(f"model.fg_iou={show(high_threshold)}: {FG_IOU_TEXT.format(other=show(low_threshold))}")
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches)

    def match(self, gt_boxes: torch.Tensor, gt_valid: torch.Tensor, anchors: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """gt_boxes (N, M, 4) xyxy padded, gt_valid (N, M) bool, anchors (A, 4)
        -> matches (N, A) long, best IoU of each box over all anchors (N, M) (-1 for padding)."""
        n, m, _ = gt_boxes.shape
        a = anchors.shape[0]
        if m == 0:
            return (torch.full((n, a), self.BELOW_LOW_THRESHOLD, dtype=torch.long, device=anchors.device),
                    gt_boxes.new_zeros((n, 0)))
        iou = box_iou(gt_boxes.reshape(-1, 4), anchors).view(n, m, a)
        iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
        return self(iou), iou.max(dim=2).values

    def __call__(self, iou: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """iou (N, M, A) with -1 for padded boxes -> matches (N, A)."""
        matched_vals, all_matches = iou.max(dim=1)
        matches = all_matches.clone()
        matches[matched_vals < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            # torchvision's rule: every anchor tied for a box's best IoU keeps its own best box, but only for
            # boxes that overlap some anchor at all (torchvision would also "match" zero-IoU boxes).
            best_per_gt = iou.max(dim=2, keepdim=True).values  # (N, M, 1)
            tied = (iou == best_per_gt) & (best_per_gt > 0)
            update = tied.any(dim=1)  # (N, A)
            matches[update] = all_matches[update]
        return matches
