"""What the imbalance study runs and where its trials live: study names, the trial grid, the storage.

Shared by ``study`` (which runs the trials) and ``report`` (which reads them back).
"""

from __future__ import annotations

from pathlib import Path


def storage_url(out_dir: Path) -> str:
    return f"journal://{out_dir / 'study.journal'}"


def storage_for(out_dir: Path):
    """The study's journal file (text, committable), opened as every study of cached runs opens it."""
    from focalbench.sweeps.storage import make_storage

    out_dir.mkdir(parents=True, exist_ok=True)
    return make_storage(storage_url(out_dir))


def study_name(table: str) -> str:
    return f"imbalance-{table}"


def grid(sweep: dict) -> list[dict]:
    """Fixed params of every trial, seed-major (a worker reuses one seed's data pool for many trials)."""
    return [{"ratio": r, "row": row["key"], "seed": s}
            for s in range(sweep["seeds"]) for r in sweep["ratios"] for row in sweep["rows"]]
