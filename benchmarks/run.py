"""``make bench``: run the performance benchmarks and write ``results/bench/`` (README.md + results.json).

    python benchmarks/run.py                 # everything (under 10 minutes on 2 cores)
    python -m benchmarks --only focal_loss ohem
    python -m benchmarks --quick --out /tmp/bench   # small shapes, a smoke check of the harness only

Benchmarks (one module each): ``focal_loss`` (1), ``ohem`` (2), ``train_step`` (3), ``coco_eval`` (4).
Every figure is a ratio of ours vs the reference measured in the same run, alternating, median of paired
repetitions after warm-up (see ``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, loadavg, machine  # noqa: E402
from benchmarks.report import render_readme  # noqa: E402

BENCHMARKS = ("focal_loss", "ohem", "train_step", "coco_eval")
DEFAULT_OUT = REPO / "results" / "bench"


def choose_threads(requested: str | int | None) -> tuple[int, str]:
    """torch threads for every benchmark: ``auto`` = all CPUs on an idle machine, 1 when the 1-minute load
    already fills them (OpenMP's barriers with more threads than free cores time the scheduler: a 4,096 x
    80 focal loss took 2.5 ms on 1 thread and 115 ms on 2 at load 5 here)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested not in (None, "auto"):
        return int(requested), "set by --threads"
    load = os.getloadavg()[0]
    if load >= cpus - 0.5 and cpus > 1:
        return 1, f"auto: 1-minute load {load:.1f} on {cpus} CPUs leaves no core free for a second thread"
    return cpus, f"auto: 1-minute load {load:.1f} on {cpus} CPUs"


def run_all(names=BENCHMARKS, quick: bool = False, threads: str | int | None = "auto") -> dict:
    import torch

    n_threads, why = choose_threads(threads)
    torch.set_num_threads(n_threads)
    info = machine()
    info["threads_reason"] = why
    t_start = time.perf_counter()
    rows, errors, seconds = [], {}, {}
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        print(f"[bench] {name} ... (load {loadavg()})", flush=True)
        try:
            got = mod.run(quick=quick)
        except Exception as e:  # one broken benchmark must not lose the others' results
            traceback.print_exc()
            errors[name] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
            got = []
        seconds[name] = round(time.perf_counter() - t0, 1)
        for r in got:
            r["benchmark"] = name
            print(f"[bench]   {r['name']}: speedup {r.get('speedup', float('nan')):.3g}"
                  f" (target {r.get('target_speedup')}) met={r.get('met')}", flush=True)
        rows += got
    info["loadavg_end"] = loadavg()
    return {"machine": info, "quick": quick, "benchmarks": list(names), "seconds": seconds,
            "total_seconds": round(time.perf_counter() - t_start, 1), "rows": rows, "errors": errors}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="focalbench performance benchmarks -> results/bench/")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME",
                   help=f"run only these ({', '.join(BENCHMARKS)})")
    p.add_argument("--quick", action="store_true", help="tiny inputs: checks the harness, figures meaningless")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--threads", default="auto",
                   help="torch threads for all benchmarks, or 'auto' (default): all CPUs, or 1 when the "
                        "machine's load already fills them")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite README.md from the folder's results.json without running anything")
    args = p.parse_args(argv)
    out = args.out or DEFAULT_OUT
    if args.render_only:
        res = json.loads((out / "results.json").read_text())
        (out / "README.md").write_text(render_readme(res))
        print(f"[bench] rewrote {out / 'README.md'} from {out / 'results.json'}")
        return 0
    if args.quick and args.out is None:
        p.error("--quick writes throw-away figures: give --out explicitly")
    os.environ.setdefault("WANDB_MODE", "offline")
    res = run_all(args.only, quick=args.quick, threads=args.threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "README.md").write_text(render_readme(res))
    print(f"[bench] {res['total_seconds']:.0f} s in all; wrote {out / 'README.md'} and {out / 'results.json'}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
