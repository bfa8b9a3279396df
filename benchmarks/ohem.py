"""Benchmark 2: exact OHEM selection (paper section 5.1) at the paper's 116,712 anchors per image.

Ours: ``focalbench.losses.select_hard_examples`` (one image, per-image selection; NMS stops as soon as the
batch is filled). Reference: torchvision ``nms`` over every non-ignored anchor, then the first ``batch_size``
survivors (plain OHEM) or SSD's 1:3 rule on them (``ohem_1to3``). Both must select the same anchor indices
in the same order.

Inputs: the anchors of a 608 x 1024 input (``grid_anchors``, the paper's 32..512 px anchors) and a
trained-like per-anchor loss: low for most background, high near a few objects and distractors (hard
negatives cluster spatially, as in a detector's loss map), with labels from IoU with the objects (fg >= .5,
ignored [.4, .5), bg < .4). Greedy NMS depends only on the order of the scores, so the scores are replaced
by their ranks (distinct float32 values): torchvision's sort is not stable, and ties would let it order
equal scores differently from our documented tie rule (lower index first).

The reference NMS does not depend on ``batch_size``: it runs once per repetition and IoU threshold and
serves every batch size (its top-k / 1:3 rule costs microseconds). At IoU .7 it takes ~90 s per call on
a loaded 2-core CPU, so it gets fewer repetitions than ours (recorded as ``reps_theirs``; ratio of medians).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torchvision.ops import box_iou, nms

from benchmarks.common import Timing, loadavg, result
from focalbench.losses import select_hard_examples
from focalbench.model.anchors import grid_anchors

TARGET_SPEEDUP = 50.0
BATCH_SIZES = (128, 256, 512)
NMS_IOUS = (0.5, 0.7)
NEG_POS_RATIO = 3.0


def random_boxes(n: int, height: int, width: int, g: torch.Generator, min_size: float = 24.0,
                 max_size: float = 400.0) -> torch.Tensor:
    """``n`` boxes (xyxy) of log-uniform size and aspect ratio 1:2..2:1 inside the image."""
    size = torch.exp(torch.empty(n).uniform_(torch.tensor(min_size).log().item(),
                                             torch.tensor(max_size).log().item(), generator=g))
    aspect = torch.exp(torch.empty(n).uniform_(-0.69, 0.69, generator=g))
    w = (size * aspect.sqrt()).clamp(max=width - 1)
    h = (size / aspect.sqrt()).clamp(max=height - 1)
    x0 = torch.rand(n, generator=g) * (width - w)
    y0 = torch.rand(n, generator=g) * (height - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def trained_like(anchors: torch.Tensor, height: int, width: int, num_objects: int = 12,
                 num_distractors: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor ranking scores (distinct float32 ranks of a loss-like field) and labels (N,)=(-1 bg,
    -2 ignored, class >= 0 fg)."""
    g = torch.Generator().manual_seed(seed)
    objects = random_boxes(num_objects, height, width, g)
    distractors = random_boxes(num_distractors, height, width, g)
    iou_obj = box_iou(objects, anchors).max(dim=0).values
    iou_dis = box_iou(distractors, anchors).max(dim=0).values
    noise = torch.exp(0.5 * torch.randn(anchors.shape[0], generator=g))
    # background CE ~0.8 (80 classes at p ~ .01), hard negatives near objects/distractors, positives high
    loss = 0.8 * noise + 4.0 * torch.maximum(iou_obj, iou_dis) * noise
    labels = torch.full((anchors.shape[0],), -1, dtype=torch.long)
    labels[(iou_obj >= 0.4) & (iou_obj < 0.5)] = -2
    fg = iou_obj >= 0.5
    labels[fg] = torch.randint(80, (int(fg.sum()),), generator=g)
    loss[fg] *= 2.0
    return distinct_ranks(loss), labels


def distinct_ranks(scores: torch.Tensor) -> torch.Tensor:
    """float32 ranks 0..n-1 in the order of ``scores`` (stable: lower index lower among equals)."""
    ranks = torch.empty(scores.numel(), dtype=torch.float32)
    ranks[torch.sort(scores, stable=True).indices] = torch.arange(scores.numel(), dtype=torch.float32)
    return ranks


def reference_nms(anchors: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float) -> torch.Tensor:
    """Whole-set greedy NMS over the non-ignored anchors: survivors as anchor indices, score order."""
    valid = (labels != -2).nonzero().flatten()
    return valid[nms(anchors[valid], scores[valid], iou)]


def reference_select(survivors: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     neg_pos_ratio: float | None = None) -> torch.Tensor:
    """Plain OHEM: the first ``batch_size`` survivors. 1:3: the first P = min(#pos, B // 4) positive
    survivors, then the first min(floor(ratio P), B - P) negative ones."""
    if neg_pos_ratio is None:
        return survivors[:batch_size]
    is_pos = labels[survivors] >= 0
    pos = survivors[is_pos][: batch_size // 4]
    p = pos.numel()
    neg = survivors[~is_pos][: min(int(neg_pos_ratio * p), batch_size - p)]
    return torch.cat([pos, neg])


def ours_select(anchors, scores, labels, batch_size, iou, neg_pos_ratio=None) -> torch.Tensor:
    _, idx = select_hard_examples(anchors, scores[None], labels[None], batch_size, iou, per_image=True,
                                  neg_pos_ratio=neg_pos_ratio)
    return idx


def run(reps: int = 7, quick: bool = False, theirs_reps: dict[float, int] | None = None) -> list[dict[str, Any]]:
    height, width = (256, 384) if quick else (608, 1024)
    anchors = grid_anchors(height, width)
    scores, labels = trained_like(anchors, height, width)
    theirs_reps = theirs_reps or ({0.5: 3, 0.7: 1} if not quick else {0.5: 2, 0.7: 2})
    variants = [(b, None) for b in BATCH_SIZES] + [(128, NEG_POS_RATIO)]
    rows = []
    for iou in NMS_IOUS:
        for b, r in variants:  # warm-up (ours only: the reference has no warm-up effect worth 90 s)
            ours_select(anchors, scores, labels, b, iou, r)
        before = loadavg()
        t_ours: dict = {v: [] for v in variants}
        t_ref: list[float] = []
        same: dict = {v: True for v in variants}
        survivors = None
        for i in range(reps):
            do_ref = i < theirs_reps[iou]
            if do_ref and i % 2 == 0:
                t0 = time.perf_counter()
                survivors = reference_nms(anchors, scores, labels, iou)
                reference_select(survivors, labels, max(BATCH_SIZES))
                t_ref.append(time.perf_counter() - t0)
            for v in variants:
                t0 = time.perf_counter()
                got = ours_select(anchors, scores, labels, v[0], iou, v[1])
                t_ours[v].append(time.perf_counter() - t0)
                if survivors is not None:
                    same[v] &= torch.equal(got, reference_select(survivors, labels, v[0], v[1]))
            if do_ref and i % 2 == 1:
                t0 = time.perf_counter()
                survivors = reference_nms(anchors, scores, labels, iou)
                reference_select(survivors, labels, max(BATCH_SIZES))
                t_ref.append(time.perf_counter() - t0)
        after = loadavg()
        for v in variants:
            b, r = v
            got = ours_select(anchors, scores, labels, b, iou, r)
            same[v] &= torch.equal(got, reference_select(survivors, labels, b, r))
            timing = Timing(t_ours[v], list(t_ref), paired=len(t_ref) >= reps, loadavg_before=before,
                            loadavg_after=after)
            rule = "OHEM" if r is None else "OHEM 1:3"
            rows.append(result(
                f"ohem_b{b}_iou{iou}" + ("_1to3" if r else ""),
                f"{rule} selection, B={b}, NMS {iou}, {anchors.shape[0]:,} anchors",
                timing, TARGET_SPEEDUP, batch_size=b, nms_iou=iou, neg_pos_ratio=r,
                num_anchors=int(anchors.shape[0]), num_ignored=int((labels == -2).sum()),
                num_positive=int((labels >= 0).sum()), reference_survivors=int(survivors.numel()),
                selected=int(got.numel()), same_indices=bool(same[v]),
                note="reference = one whole-set NMS per repetition, shared by all batch sizes"))
    return rows
