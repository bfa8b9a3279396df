"""RetinaNet (paper section 4): backbone + FPN, shared heads, batched assignment, loss and post-processing.

Shapes: N images, A anchors over all levels (A = sum_l H_l * W_l * anchors per location), K classes,
M the largest number of boxes in an image of the batch (boxes are padded to M).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms

from focalbench.checks import num_at_least, require
from focalbench.model.anchors import grid_anchors, num_anchors_per_location
from focalbench.model.backbone import BackboneFPN
from focalbench.model.head import RetinaNetHead
from focalbench.model.matcher import BatchedMatcher


SMOOTH_L1_BETA = num_at_least(0)   # the box loss's beta (0: L1); the config check reads this rule

class HeadOutputs(NamedTuple):
    cls_logits: torch.Tensor   # (N, A, K) or (N, A, K+1) for softmax losses
    bbox_deltas: torch.Tensor  # (N, A, 4), R-CNN parameterisation relative to the anchors
    level_sizes: list[int]     # anchors per level, P3..P7 (sums to A)


def pad_targets(targets: Sequence[dict[str, torch.Tensor]], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """List of per-image ``boxes`` (M_i, 4) / ``labels`` (M_i,) -> boxes (N, M, 4), labels (N, M), valid (N, M)."""
    n = len(targets)
    m = max((len(t["boxes"]) for t in targets), default=0)
    boxes = torch.zeros((n, m, 4), dtype=torch.float32, device=device)
    labels = torch.full((n, m), -1, dtype=torch.long, device=device)
    valid = torch.zeros((n, m), dtype=torch.bool, device=device)
    for i, t in enumerate(targets):  # a copy per image; everything after this is batched
        k = len(t["boxes"])
        boxes[i, :k] = t["boxes"].to(device, torch.float32)
        labels[i, :k] = t["labels"].to(device)
        valid[i, :k] = True
    return boxes, labels, valid


class RetinaNet(nn.Module):
    def __init__(self, backbone: BackboneFPN, head: RetinaNetHead, criterion: nn.Module, num_classes: int,
                 num_scales: int = 3, num_ratios: int = 3, size_multiplier: float = 4.0,
                 matcher: BatchedMatcher | None = None, smooth_l1_beta: float = 0.11,
                 score_thresh: float = 0.05, topk_candidates: int = 1000, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, channels_last: bool = False):
        super().__init__()
        require(SMOOTH_L1_BETA, smooth_l1_beta, "model.smooth_l1_beta")
        self.backbone, self.head, self.criterion = backbone, head, criterion
        self.num_classes = num_classes
        self.num_scales, self.num_ratios, self.size_multiplier = num_scales, num_ratios, size_multiplier
        self.anchors_per_location = num_anchors_per_location(num_scales, num_ratios)
        self.softmax = head.num_logits == num_classes + 1  # index 0 = background (softmax focal loss)
        self.matcher = matcher or BatchedMatcher(0.5, 0.4, allow_low_quality_matches=False)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh, self.topk_candidates = score_thresh, topk_candidates
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img
        self.channels_last = channels_last

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor) -> HeadOutputs:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        cls_logits, bbox_deltas = self.head(features)
        sizes = [f.shape[-2] * f.shape[-1] * self.anchors_per_location for f in features]
        return HeadOutputs(cls_logits, bbox_deltas, sizes)

    def anchors(self, images: torch.Tensor) -> torch.Tensor:
        """(A, 4) xyxy anchors of the padded batch, cached by size in ``grid_anchors``."""
        h, w = images.shape[-2:]
        return grid_anchors(h, w, self.num_scales, self.num_ratios, self.size_multiplier, device=images.device)

    # -------------------------------------------------------------------------------------------------- loss
    def assign(self, anchors: torch.Tensor, targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Labels (N, A): class 0..K-1 (fg), -1 (bg), -2 (ignored); the matched box of each anchor (N, A, 4)."""
        gt_boxes, gt_labels, gt_valid = pad_targets(targets, anchors.device)
        matches, best_iou = self.matcher.match(gt_boxes, gt_valid, anchors)
        idx = matches.clamp(min=0)
        labels = torch.gather(gt_labels, 1, idx)
        labels = torch.where(matches >= 0, labels, matches)  # -1 bg / -2 ignore pass through
        matched_boxes = torch.gather(gt_boxes, 1, idx[..., None].expand(-1, -1, 4))
        # Boxes that no anchor covers at IoU >= fg threshold: they never get a positive (unless low-quality
        # matches are allowed), so they cap recall.
        no_anchor = ((best_iou < self.matcher.high_threshold) & gt_valid).sum()
        return {"labels": labels, "matched_boxes": matched_boxes, "num_gt": gt_valid.sum(), "gt_no_anchor": no_anchor}

    def compute_loss(self, outputs: HeadOutputs, anchors: torch.Tensor,
                     targets: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One criterion call for the whole batch; box loss smooth-L1 over foreground anchors / #fg."""
        if outputs.cls_logits.shape[1] != anchors.shape[0]:
            raise RuntimeError(f"head produced {outputs.cls_logits.shape[1]} anchors per image, the anchor grid "
                               f"{anchors.shape[0]}: image size not divisible by the strides?")
        a = self.assign(anchors, targets)
        labels = a["labels"]
        loss_cls = self.criterion(outputs.cls_logits, labels, self._selection_boxes(outputs, anchors))
        fg = labels >= 0
        num_fg = fg.sum()
        n_idx, a_idx = fg.nonzero(as_tuple=True)
        box_targets = self.box_coder.encode_single(a["matched_boxes"][n_idx, a_idx], anchors[a_idx])
        loss_box = F.smooth_l1_loss(outputs.bbox_deltas[n_idx, a_idx], box_targets,
                                    beta=self.smooth_l1_beta, reduction="sum") / num_fg.clamp(min=1)
        return {"loss": loss_cls + loss_box, "loss_cls": loss_cls, "loss_box": loss_box, "num_fg": num_fg,
                "num_gt": a["num_gt"], "gt_no_anchor": a["gt_no_anchor"]}

    @torch.no_grad()
    def _selection_boxes(self, outputs: HeadOutputs, anchors: torch.Tensor) -> torch.Tensor:
        """What OHEM's NMS runs over: the anchors (A, 4), or with ``nms_boxes="predicted"`` each anchor's
        regressed box (N, A, 4), detached."""
        if getattr(self.criterion, "nms_boxes", "anchors") != "predicted":
            return anchors
        n, a, _ = outputs.bbox_deltas.shape
        deltas = outputs.bbox_deltas.detach().float().reshape(n * a, 4)
        return self.box_coder.decode_single(deltas, anchors.repeat(n, 1)).view(n, a, 4)

    # --------------------------------------------------------------------------------------------- inference
    def scores(self, cls_logits: torch.Tensor) -> torch.Tensor:
        """(N, A, K) class probabilities: sigmoid, or softmax over K+1 without the background column."""
        if self.softmax:
            return cls_logits.softmax(dim=-1)[..., 1:]
        return cls_logits.sigmoid()

    @torch.no_grad()
    def postprocess(self, outputs: HeadOutputs, anchors: torch.Tensor, image_sizes: torch.Tensor
                    ) -> list[dict[str, torch.Tensor]]:
        """Per level the top ``topk_candidates`` scores above ``score_thresh``, all levels merged, class-wise NMS
        (one ``batched_nms`` over the whole batch: ids = image * K + class), top ``detections_per_img``.

        image_sizes (N, 2) = (height, width) in input pixels, for clipping. Returns per image boxes (D, 4) xyxy
        input pixels, scores (D,), labels (D,) 0..K-1.
        """
        scores = self.scores(outputs.cls_logits)
        n, _, k = scores.shape
        device = scores.device
        cand_scores, cand_anchor, cand_label = [], [], []
        start = 0
        for size in outputs.level_sizes:  # 5 levels: a loop over levels, not over images or classes
            s = scores[:, start:start + size].reshape(n, -1)
            top = min(self.topk_candidates, s.shape[1])
            v, i = s.topk(top, dim=1)
            cand_scores.append(v)
            cand_anchor.append(start + torch.div(i, k, rounding_mode="floor"))
            cand_label.append(i % k)
            start += size
        v, anchor_idx, label = (torch.cat(x, dim=1) for x in (cand_scores, cand_anchor, cand_label))
        img_idx = torch.arange(n, device=device)[:, None].expand_as(v)
        keep = v > self.score_thresh
        v, anchor_idx, label, img_idx = v[keep], anchor_idx[keep], label[keep], img_idx[keep]

        boxes = self.box_coder.decode_single(outputs.bbox_deltas[img_idx, anchor_idx], anchors[anchor_idx])
        hw = image_sizes.to(device=device, dtype=boxes.dtype)[img_idx]
        boxes = torch.stack([boxes[:, 0].clamp(min=0).minimum(hw[:, 1]), boxes[:, 1].clamp(min=0).minimum(hw[:, 0]),
                             boxes[:, 2].clamp(min=0).minimum(hw[:, 1]), boxes[:, 3].clamp(min=0).minimum(hw[:, 0])],
                            dim=1)
        kept = batched_nms(boxes, v, img_idx * k + label, self.nms_thresh)  # sorted by decreasing score

        # top detections_per_img per image, still without a loop: stable sort by image, rank inside image
        img_sorted, order = torch.sort(img_idx[kept], stable=True)
        kept = kept[order]
        first = torch.searchsorted(img_sorted, img_sorted)
        rank = torch.arange(len(kept), device=device) - first
        kept = kept[rank < self.detections_per_img]
        counts = torch.bincount(img_idx[kept], minlength=n).tolist()
        out = []
        for b, s, l in zip(boxes[kept].split(counts), v[kept].split(counts), label[kept].split(counts)):
            out.append({"boxes": b, "scores": s, "labels": l})
        return out
