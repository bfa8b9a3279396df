"""How imbalanced a dataset is for a given anchor set: foreground vs background anchors (paper section 4).

An anchor is foreground if its best IoU with a ground-truth box is >= 0.5, background if < 0.4, ignored in
between (RetinaNet's rule). We also count ground-truth boxes that no anchor reaches at IoU >= 0.5: the
paper's rule leaves them unmatched, while torchvision's ``Matcher(allow_low_quality_matches=True)`` would
force their best anchor(s) to foreground; both foreground counts are reported.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from focalbench.model.anchors import grid_anchors

# The cpu profile's anchors: P3-P7, 3 scales x 3 ratios, base sizes 16..256 px (size_multiplier 2, conf/profile/cpu.yaml).
CPU_ANCHORS = {"num_scales": 3, "num_ratios": 3, "size_multiplier": 2.0}


def anchor_stats(boxes_per_image: Iterable[np.ndarray], height: int, width: int, num_scales: int = 3,
                 num_ratios: int = 3, size_multiplier: float = 1.0, fg_iou: float = 0.5,
                 bg_iou: float = 0.4) -> dict:
    """Counts over images; ``boxes_per_image`` yields ``(M, 4)`` xyxy boxes in input pixels."""
    anchors = grid_anchors(height, width, num_scales, num_ratios, size_multiplier)
    strict = Matcher(fg_iou, bg_iou, allow_low_quality_matches=False)
    forced = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
    n_images = n_gt = fg = fg_forced = bg = unmatched = 0
    for boxes in boxes_per_image:
        n_images += 1
        boxes = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
        if len(boxes) == 0:
            bg += len(anchors)
            continue
        iou = box_iou(boxes, anchors)  # (M, A_total)
        m = strict(iou)
        fg += int((m >= 0).sum())
        bg += int((m == Matcher.BELOW_LOW_THRESHOLD).sum())
        fg_forced += int((forced(iou) >= 0).sum())
        n_gt += len(boxes)
        unmatched += int((iou.max(dim=1).values < fg_iou).sum())
    total = n_images * len(anchors)
    return {
        "images": n_images,
        "anchors_per_image": len(anchors),
        "gt_boxes": n_gt,
        "fg_anchors": fg,
        "bg_anchors": bg,
        "ignored_anchors": total - fg - bg,
        "fg_fraction": fg / total if total else 0.0,
        "bg_per_fg": bg / fg if fg else None,
        "fg_anchors_per_image": fg / n_images if n_images else 0.0,
        "gt_without_anchor": unmatched,
        "gt_without_anchor_fraction": unmatched / n_gt if n_gt else 0.0,
        "fg_anchors_low_quality_matches": fg_forced,
    }


def describe(stats: dict) -> str:
    """One line for logs and the build's output."""
    ratio = "no fg" if stats["bg_per_fg"] is None else f"1:{stats['bg_per_fg']:.0f}"
    return (f"{stats['images']} images x {stats['anchors_per_image']} anchors: "
            f"fg:bg = {ratio} (fg {100 * stats['fg_fraction']:.3f}% of anchors, "
            f"{stats['fg_anchors_per_image']:.1f} per image; {stats['ignored_anchors']} ignored at IoU 0.4-0.5); "
            f"{stats['gt_without_anchor']} of {stats['gt_boxes']} GT boxes "
            f"({100 * stats['gt_without_anchor_fraction']:.1f}%) have no anchor at IoU >= 0.5 "
            f"(allow_low_quality_matches would force them: {stats['fg_anchors_low_quality_matches']} fg anchors)")
