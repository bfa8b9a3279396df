"""Shared pieces of the benchmarks: paired timing, saved-for-backward bytes, machine facts.

Every figure is a ratio measured in one process and one run: ours and the reference are called alternately
(the order swaps every repetition, so a slow drift of the shared machine's load hits both sides alike), after
warm-up calls, and the reported ratio is the median over the paired repetitions of ``theirs / ours``.
Where the reference is too slow for as many repetitions as ours (whole-set NMS), it gets fewer and the ratio
is the ratio of medians; the result says so (``paired: false``).
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from focalbench.runstore import git_sha

REPO = Path(__file__).resolve().parents[1]


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@dataclass
class Timing:
    """Per-call seconds of both sides and their ratio (``speedup = theirs / ours``, > 1: ours faster)."""

    ours: list[float]
    theirs: list[float]
    paired: bool
    loadavg_before: list[float]
    loadavg_after: list[float]
    speedup: float = field(init=False)

    def __post_init__(self):
        n = min(len(self.ours), len(self.theirs))
        if self.paired and n:
            self.speedup = statistics.median(t / o for o, t in zip(self.ours[:n], self.theirs[:n]))
        else:
            self.speedup = statistics.median(self.theirs) / statistics.median(self.ours)

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def theirs_median(self) -> float:
        return statistics.median(self.theirs)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ours_median_s=self.ours_median, theirs_median_s=self.theirs_median, speedup=self.speedup,
                 reps_ours=len(self.ours), reps_theirs=len(self.theirs))
        return d


def _timed(fn: Callable[[Any], Any], setup: Callable[[], Any] | None) -> float:
    arg = setup() if setup is not None else None
    gc.collect()
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def paired(ours: Callable[[Any], Any], theirs: Callable[[Any], Any], reps: int = 5, warmup: int = 1,
           theirs_reps: int | None = None, theirs_warmup: int | None = None,
           setup: Callable[[], Any] | None = None) -> Timing:
    """Time ``ours(arg)`` and ``theirs(arg)`` alternately (``arg = setup()``, untimed, fresh per call).

    ``reps`` repetitions of ours; the reference runs in the first ``theirs_reps`` of them (default all:
    paired). Warm-up calls (``warmup``, ``theirs_warmup``) are not timed.
    """
    theirs_reps = reps if theirs_reps is None else theirs_reps
    theirs_warmup = warmup if theirs_warmup is None else theirs_warmup
    for _ in range(warmup):
        _timed(ours, setup)
    for _ in range(theirs_warmup):
        _timed(theirs, setup)
    before = loadavg()
    t_ours, t_theirs = [], []
    for i in range(reps):
        both = i < theirs_reps
        if both and i % 2 == 1:  # swap the order every other repetition
            t_theirs.append(_timed(theirs, setup))
            t_ours.append(_timed(ours, setup))
        else:
            t_ours.append(_timed(ours, setup))
            if both:
                t_theirs.append(_timed(theirs, setup))
    return Timing(t_ours, t_theirs, paired=theirs_reps >= reps, loadavg_before=before, loadavg_after=loadavg())


def interleaved(fns: dict[str, Callable[[Any], Any]], reps: int = 7, warmup: int = 1,
                setup: Callable[[], Any] | None = None) -> dict[str, list[float]]:
    """Per-call seconds of several alternatives timed round-robin in one process (``arg = setup()``, untimed,
    fresh per call): every repetition calls each once, the order rotating every repetition, so that a drift
    of the shared machine's load hits all alike. Warm-up calls are not timed."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            _timed(fns[name], setup)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(reps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(_timed(fns[name], setup))
    return out


def saved_tensor_bytes(fn: Callable[[], Any]) -> tuple[int, int]:
    """Bytes and count of the unique storages autograd saves for backward while ``fn()`` builds its graph
    (``torch.autograd.graph.saved_tensors_hooks``; views of one storage count once, inputs count too)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values()), len(storages)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads, load, versions, GPU (if any), date and git commit."""
    cuda = torch.cuda.is_available()
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "torchvision", "lightning", "numpy", "pycocotools",
                                              "faster-coco-eval", "focalbench")},
        "loadavg": loadavg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "argv": [Path(sys.executable).name, *sys.argv],
    }


def result(name: str, what: str, timing: Timing | None, target: float | None, **extra: Any) -> dict[str, Any]:
    """One row of the results: what was measured, the timing, the target speed-up and whether it is met."""
    r: dict[str, Any] = {"name": name, "what": what, "target_speedup": target}
    if timing is not None:
        r.update(timing.record())
        r["met"] = None if target is None else bool(timing.speedup >= target)
    r.update(extra)
    return r
