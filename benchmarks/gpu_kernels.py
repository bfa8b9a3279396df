"""Focal loss kernels on a GPU: ours (eager and compiled) against torchvision and the memory-bandwidth floor.

    PYTHONPATH=src python benchmarks/gpu_kernels.py --out results/bench/gpu     # on a CUDA machine
    PYTHONPATH=src python benchmarks/gpu_kernels.py --device cpu --quick --out /tmp/k   # harness check

Needs only torch and torchvision (no Hydra, Lightning or COCO tools), so it runs on a bare GPU image.
Every variant computes the loss (sum) and its gradient for the same logits and binary targets; they are
timed alternating, with CUDA events, and each figure is the median of ``--reps`` repetitions after warm-up.
The floor is one read of the logits and the targets and one write of a gradient of the logits' size (an
``add`` into a preallocated tensor): no fwd+bwd can move fewer bytes. Writes ``kernels.json`` and
``kernels.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ANCHORS, CLASSES = 116_712, 80   # a 600 px COCO image's anchors x COCO's classes (the paper's setting)


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def variants(x: torch.Tensor, t: torch.Tensor) -> dict:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    from focalbench.losses import compiled
    from focalbench.losses import sigmoid_focal_loss as ours

    grad = torch.empty(x.shape, dtype=torch.float32, device=x.device)

    def floor():
        torch.add(x, t, out=grad)

    def fwd_bwd(fn, enabled=None):
        def go():
            compiled.ENABLED = enabled
            xx = x.detach().requires_grad_(True)
            fn(xx, t, alpha=0.25, gamma=2.0, reduction="sum").backward()
        return go

    return {"floor (read x, t; write grad)": floor, "torchvision": fwd_bwd(tv_focal),
            "ours, eager": fwd_bwd(ours, False), "ours, compiled": fwd_bwd(ours, True)}


def measure(device: torch.device, dtype: torch.dtype, anchors: int, reps: int) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(anchors, CLASSES, generator=g) * 4).to(device=device, dtype=dtype)
    t = (torch.rand(anchors, CLASSES, generator=g) < 0.01).to(device=device, dtype=dtype)
    fns = variants(x, t)
    timer = _timer(device)
    first = {}
    for name, fn in fns.items():                      # warm-up; the first call holds any compile
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        first[name] = time.perf_counter() - t0
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):                             # alternate, so drifts hit every variant alike
        for name, fn in fns.items():
            times[name].append(timer(fn))
    floor_bytes = x.numel() * (x.element_size() + t.element_size() + 4)
    med = {k: statistics.median(v) for k, v in times.items()}
    tv, fl = med["torchvision"], med["floor (read x, t; write grad)"]
    rows = []
    for name, ms in med.items():
        rows.append({"dtype": str(dtype).replace("torch.", ""), "shape": [anchors, CLASSES], "variant": name,
                     "median_ms": round(ms, 4), "first_call_s": round(first[name], 2),
                     "speedup_vs_torchvision": round(tv / ms, 2), "x_floor": round(ms / fl, 2),
                     "floor_GBps": round(floor_bytes / (fl * 1e-3) / 1e9, 1) if name.startswith("floor") else None})
    return rows


def render(info: dict, rows: list[dict]) -> str:
    lines = [f"# Focal loss kernels on {info['device_name']}", "",
             f"`{info['command']}`; torch {info['torch']}, {info['reps']} alternating repetitions, medians; "
             f"fwd+bwd of the summed loss at {rows[0]['shape'][0]:,} x {rows[0]['shape'][1]} (gamma 2, alpha .25).", "",
             "| dtype | variant | median ms | vs torchvision | x floor | first call s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['variant']} | {r['median_ms']:.3f} | {r['speedup_vs_torchvision']:.2f}x "
                     f"| {r['x_floor']:.2f} | {r['first_call_s']:.2f} |")
    bw = [r for r in rows if r["floor_GBps"]]
    if bw:
        lines += ["", "Floor bandwidth (bytes of the floor row / its time): "
                  + ", ".join(f"{r['dtype']} {r['floor_GBps']} GB/s" for r in bw) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="4,096 anchors and 5 repetitions: checks the harness")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_kernels: no CUDA device visible (torch.cuda.is_available() is False); use --device cpu",
              file=sys.stderr)
        return 2
    anchors, reps = (4_096, 5) if args.quick else (ANCHORS, args.reps)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        rows += measure(device, dtype, anchors, reps)
    info = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(), "torch": torch.__version__, "reps": reps,
            "command": "python benchmarks/gpu_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "compile_env": os.environ.get("FOCALBENCH_COMPILE")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    (args.out / "kernels.md").write_text(render(info, rows))
    print(render(info, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
