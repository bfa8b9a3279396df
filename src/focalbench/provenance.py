"""Where results came from: the machine (``hardware``) and each invocation that wrote a results folder
(``record_invocation``, one JSON line per invocation in ``<results>/invocations.jsonl``, read back by
``read_invocations``; ``elapsed_seconds`` counts concurrent workers' wall time once). Shared by the paper
tables (focalbench.reproduce) and the imbalance study (focalbench.classify.study)."""

from __future__ import annotations

import json
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path

INVOCATIONS = "invocations.jsonl"


def hardware() -> str:
    """``<CPU model>, <n> cores visible, <OS>, Python x, torch y``: one line for a report."""
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def record_invocation(results_dir: Path, command: str, start: float, end: float, runs_before: int,
                      runs_after: int, status: str | None = None, **extra) -> None:
    """Append one line per invocation (workers may run concurrently; O_APPEND keeps lines whole); ``status``
    (e.g. ``interrupted``) only when the invocation did not end normally; ``extra``: more keys (workers...)."""
    entry = {"start": iso(start), "end": iso(end), "wall_seconds": round(end - start, 1),
             "runs_finished_meanwhile": runs_after - runs_before, "worker": f"{socket.gethostname()}:{os.getpid()}",
             "command": command, **extra}
    if status is not None:
        entry["status"] = status
    with open(Path(results_dir) / INVOCATIONS, "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_invocations(results_dir: Path) -> list[dict]:
    path = Path(results_dir) / INVOCATIONS
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
    return out


def elapsed_seconds(invocations: list[dict]) -> float:
    """Wall time covered by the invocations' [start, end] intervals: concurrent workers count once."""
    spans = sorted((datetime.fromisoformat(i["start"]).timestamp(), datetime.fromisoformat(i["end"]).timestamp())
                   for i in invocations)
    total, cur_start, cur_end = 0.0, None, None
    for a, b in spans:
        if cur_end is None or a > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = a, b
        else:
            cur_end = max(cur_end, b)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)
