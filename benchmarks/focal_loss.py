"""Benchmark 1: sigmoid focal loss, forward + backward, at the paper's scale.

``focalbench.losses.sigmoid_focal_loss`` vs ``torchvision.ops.sigmoid_focal_loss`` on one 600x1000-class
image's worth of logits: 116,712 anchors (608 x 1024 padded input, 3 scales x 3 ratios on P3-P7) x 80 classes,
reduction ``sum`` (what the detector uses), float32 and bfloat16. Four alternatives are timed round-robin in
one process (medians of the same repetitions):

- ``floor``: ``torch.add(logits, targets)``: one read of logits + targets and one logits-sized write, the
  memory traffic any fused forward + backward needs at least;
- ``compiled``: ours through the inductor-compiled kernel (``focalbench.losses.compiled``; the default at
  this size when a compiler works);
- ``eager``: ours through the eager fused ``autograd.Function`` (``FOCALBENCH_COMPILE=0``);
- ``torchvision``.

The row's ``ours`` is what a user gets by default (compiled when available), ``theirs`` torchvision. Also
the bytes autograd saves for backward (unique storages, inputs included), the value/gradient agreement with
a float64 reference, the element-wise gradient accuracy on logits in [-30, 30], and the compile cost of the
first call in a fresh process with a cold and a warm inductor cache.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from benchmarks.common import REPO, Timing, interleaved, loadavg, result, saved_tensor_bytes
from focalbench.losses import compiled, sigmoid_focal_loss
from focalbench.model.anchors import num_anchors

PAPER_ANCHORS = num_anchors(608, 1024)   # 116,712
NUM_CLASSES = 80
TARGET_SPEEDUP = 8.0


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


def _with_path(path: str):
    """``sigmoid_focal_loss`` forced onto the compiled or the eager path (the module-level switch)."""
    def fn(*args, **kw):
        before = compiled.ENABLED
        compiled.ENABLED = path == "compiled"
        try:
            return sigmoid_focal_loss(*args, **kw)
        finally:
            compiled.ENABLED = before
    return fn


def agreement(x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype, paths=("ours",)) -> dict[str, float]:
    """Relative error of the summed loss and max abs gradient error against float64 math, for ``ours``
    (the default path) and torchvision, plus any of ``compiled`` / ``eager`` named in ``paths``."""
    loss64, grad64 = loss_and_grad(tv_focal, x.double(), t.double(), reduction="sum")
    out = {}
    fns = {"ours": sigmoid_focal_loss, "torchvision": tv_focal}
    fns.update({p: _with_path(p) for p in paths if p in ("compiled", "eager")})
    for name, fn in fns.items():
        loss, grad = loss_and_grad(fn, x.to(dtype), t.to(dtype), reduction="sum")
        out[f"{name}_loss_rel_err"] = float(abs(loss.double() - loss64) / loss64)
        out[f"{name}_grad_max_abs_err"] = float((grad.double() - grad64).abs().max())
    out["grad_max_abs"] = float(grad64.abs().max())
    return out


def elementwise_grad_error(path: str = "compiled", n: int = 60001) -> float:
    """Max relative error of d FL / dx (alpha .25, gamma 2, float32) against the float64 eager Function on
    float32 logits spaced evenly over [-30, 30] (plus +-9, +-20), for both target values, where the true
    gradient is a normal float32 number."""
    x = torch.cat([torch.linspace(-30.0, 30.0, n), torch.tensor([-20.0, -9.0, 9.0, 20.0])]).double()
    worst = 0.0
    for tv in (0.0, 1.0):
        t = torch.full_like(x, tv)
        _, g64 = loss_and_grad(sigmoid_focal_loss, x, t, reduction="sum")
        _, g32 = loss_and_grad(_with_path(path), x.float(), t.float(), reduction="sum")
        nz = g64.abs() >= torch.finfo(torch.float32).tiny     # below: float32 subnormals (|x| > ~29)
        worst = max(worst, float(((g32.double() - g64).abs()[nz] / g64.abs()[nz]).max()))
    return worst


_FIRST_CALL = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from focalbench.losses import compiled, sigmoid_focal_loss
torch.set_num_threads({threads})
compiled.ENABLED = True
x = torch.randn({anchors}, {classes}).to({dtype}).requires_grad_()
t = (torch.rand({anchors}, {classes}) < 0.001).to({dtype})
t1 = time.perf_counter()
sigmoid_focal_loss(x, t, reduction="sum").backward()
t2 = time.perf_counter()
x.grad = None
sigmoid_focal_loss(x, t, reduction="sum").backward()
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_call_s": t2 - t1, "second_call_s": t3 - t2,
                  "compiled_used": compiled.unavailable_reason() is None}}))
"""


def first_call_seconds(cache_dir: str, dtype: str = "torch.float32", anchors: int = PAPER_ANCHORS,
                       threads: int | None = None) -> dict[str, Any]:
    """First (and second) fwd+bwd call of the compiled path in a fresh Python process using the inductor
    cache folder ``cache_dir`` (empty: cold; used before: warm)."""
    code = _FIRST_CALL.format(threads=threads or torch.get_num_threads(), anchors=anchors,
                              classes=NUM_CLASSES, dtype=dtype)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "PYTHONPATH": str(REPO / "src")}
    env.pop("FOCALBENCH_COMPILE", None)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:300], "process_s": wall}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": wall}


def compile_cost() -> dict[str, Any]:
    """Cold (empty cache folder) then warm (the same folder, new process) first-call times."""
    with tempfile.TemporaryDirectory(prefix="focalbench_inductor_") as d:
        cold = first_call_seconds(d)
        warm = first_call_seconds(d)
    return {"compile_cold": cold, "compile_warm": warm,
            "fx_graph_cache": bool(torch._inductor.config.fx_graph_cache)}


def run(reps: int = 7, quick: bool = False) -> list[dict[str, Any]]:
    anchors = 4096 if quick else PAPER_ANCHORS
    reps = max(reps, 7)
    x32, t32 = make_inputs(anchors)
    rows = []
    have_compiler = compiled.unavailable_reason() is None
    default_path = "compiled" if have_compiler and x32.numel() >= compiled.MIN_NUMEL else "eager"
    extra_once: dict[str, Any] = {}
    if not quick and have_compiler:
        extra_once = compile_cost()
    for dtype in (torch.float32, torch.bfloat16):
        x, t = x32.to(dtype), t32.to(dtype)
        logits_bytes = x.numel() * x.element_size()
        budget = 2 * logits_bytes + t.numel() * t.element_size()    # inputs (logits, targets) + one logits-sized

        def fwd_bwd(fn):
            def call(leaf):
                fn(leaf, t, reduction="sum").backward()
            return call

        def floor(leaf):
            torch.add(leaf.detach(), t)

        def saved(fn):
            leaf = x.detach().clone().requires_grad_()
            return saved_tensor_bytes(lambda: fn(leaf, t, reduction="sum"))

        fns = {"floor": floor, "eager": fwd_bwd(_with_path("eager")), "torchvision": fwd_bwd(tv_focal)}
        first_call = None
        if have_compiler:
            fns["compiled"] = fwd_bwd(_with_path("compiled"))
            leaf = x.detach().clone().requires_grad_()
            t0 = time.perf_counter()
            fns["compiled"](leaf)                       # in this process: compile (or cache load) + run
            first_call = time.perf_counter() - t0
        before = loadavg()
        times = interleaved(fns, reps=reps, warmup=1, setup=lambda: x.detach().clone().requires_grad_())
        ours_times = times[default_path]
        timing = Timing(ours_times, times["torchvision"], paired=True, loadavg_before=before,
                        loadavg_after=loadavg())
        med = {k: statistics.median(v) for k, v in times.items()}
        ours_b, ours_n = saved(sigmoid_focal_loss)
        tv_b, tv_n = saved(tv_focal)
        name = str(dtype).replace("torch.", "")
        paths = ("compiled", "eager") if have_compiler else ("eager",)
        extra = {f"{k}_median_s": v for k, v in med.items()}
        extra.update({f"{k}_times_s": v for k, v in times.items()})
        extra.update({f"speedup_{k}_vs_torchvision": med["torchvision"] / med[k] for k in med if k != "floor"})
        extra.update({f"{k}_over_floor": med[k] / med["floor"] for k in med if k != "floor"})
        if have_compiler:
            extra["first_call_in_process_s"] = first_call
            extra["compiled_grad_max_rel_err_elementwise"] = elementwise_grad_error("compiled") \
                if dtype == torch.float32 else None
        rows.append(result(
            f"focal_loss_{name}", f"sigmoid focal loss fwd+bwd, {anchors:,} x {NUM_CLASSES}, {name}, sum",
            timing, TARGET_SPEEDUP,
            shape=[anchors, NUM_CLASSES], dtype=name, path=default_path,
            saved_bytes_ours=ours_b, saved_tensors_ours=ours_n,
            saved_bytes_theirs=tv_b, saved_tensors_theirs=tv_n,
            saved_logits_sized_ours=ours_b / logits_bytes, saved_logits_sized_theirs=tv_b / logits_bytes,
            saved_budget_bytes=budget, saved_met=bool(ours_b <= budget),
            compile_unavailable=compiled.unavailable_reason(),
            **extra, **(extra_once if dtype == torch.float32 else {}),
            **agreement(x32, t32, dtype, paths)))
    return rows
