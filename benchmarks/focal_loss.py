"""Benchmark 1: sigmoid focal loss, forward + backward, at the paper's scale.

``focalbench.losses.sigmoid_focal_loss`` vs ``torchvision.ops.sigmoid_focal_loss`` on one 600x1000-class
image's worth of logits: 116,712 anchors (608 x 1024 padded input, 3 scales x 3 ratios on P3-P7) x 80 classes,
reduction ``sum`` (what the detector uses), float32 and bfloat16. Also the bytes autograd saves for backward
(unique storages, inputs included), and the value/gradient agreement with a float64 reference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from benchmarks.common import paired, result, saved_tensor_bytes
from focalbench.losses import sigmoid_focal_loss
from focalbench.model.anchors import num_anchors

PAPER_ANCHORS = num_anchors(608, 1024)   # 116,712
NUM_CLASSES = 80
TARGET_SPEEDUP = 3.0


def make_inputs(num_anchors: int = PAPER_ANCHORS, num_classes: int = NUM_CLASSES, num_pos: int = 200,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained-like logits (most anchors confident background: the prior's -log(99) plus noise, a few
    foreground anchors scored high) and one-hot float targets with ``num_pos`` positive anchors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_anchors, num_classes, generator=g) * 2.0 - math.log(99.0)
    t = torch.zeros(num_anchors, num_classes)
    pos = torch.randperm(num_anchors, generator=g)[:num_pos]
    cls = torch.randint(num_classes, (num_pos,), generator=g)
    t[pos, cls] = 1.0
    x[pos, cls] += 5.0 * torch.rand(num_pos, generator=g)
    return x, t


def loss_and_grad(fn, x: torch.Tensor, t: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    xx = x.detach().clone().requires_grad_()
    loss = fn(xx, t, **kw)
    loss.backward()
    return loss.detach(), xx.grad


def agreement(x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype) -> dict[str, float]:
    """Relative error of the summed loss and max abs gradient error of both sides, against float64 math."""
    loss64, grad64 = loss_and_grad(tv_focal, x.double(), t.double(), reduction="sum")
    out = {}
    for name, fn in (("ours", sigmoid_focal_loss), ("torchvision", tv_focal)):
        loss, grad = loss_and_grad(fn, x.to(dtype), t.to(dtype), reduction="sum")
        out[f"{name}_loss_rel_err"] = float(abs(loss.double() - loss64) / loss64)
        out[f"{name}_grad_max_abs_err"] = float((grad.double() - grad64).abs().max())
    out["grad_max_abs"] = float(grad64.abs().max())
    return out


def run(reps: int = 7, quick: bool = False) -> list[dict[str, Any]]:
    anchors = 4096 if quick else PAPER_ANCHORS
    x32, t32 = make_inputs(anchors)
    rows = []
    dtypes = [torch.float32, torch.bfloat16]
    for dtype in dtypes:
        x, t = x32.to(dtype), t32.to(dtype)
        logits_bytes = x.numel() * x.element_size()
        budget = 2 * logits_bytes + t.numel() * t.element_size()    # inputs (logits, targets) + one logits-sized

        def fwd_bwd(fn):
            def call(leaf):
                fn(leaf, t, reduction="sum").backward()
            return call

        def saved(fn):
            leaf = x.detach().clone().requires_grad_()
            return saved_tensor_bytes(lambda: fn(leaf, t, reduction="sum"))

        timing = paired(fwd_bwd(sigmoid_focal_loss), fwd_bwd(tv_focal), reps=reps, warmup=1,
                        setup=lambda: x.detach().clone().requires_grad_())
        ours_b, ours_n = saved(sigmoid_focal_loss)
        tv_b, tv_n = saved(tv_focal)
        name = str(dtype).replace("torch.", "")
        rows.append(result(
            f"focal_loss_{name}", f"sigmoid focal loss fwd+bwd, {anchors:,} x {NUM_CLASSES}, {name}, sum",
            timing, TARGET_SPEEDUP,
            shape=[anchors, NUM_CLASSES], dtype=name,
            saved_bytes_ours=ours_b, saved_tensors_ours=ours_n,
            saved_bytes_theirs=tv_b, saved_tensors_theirs=tv_n,
            saved_logits_sized_ours=ours_b / logits_bytes, saved_logits_sized_theirs=tv_b / logits_bytes,
            saved_budget_bytes=budget, saved_met=bool(ours_b <= budget),
            **agreement(x32, t32, dtype)))
    return rows
