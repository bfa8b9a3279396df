"""This reproduction beside the committed reference (``results/<profile>/``): ``comparison.md``.

For every table and row: our mean AP, the reference's mean AP, their difference, and the paired difference
seed by seed where both have run the same seeds. A reference run is matched to a row by its config hash, by
the reference's manifest.json (table, row, seed), or else by the row's overrides + seed (the overrides that do not change a result, such as thread counts and W&B
tags, are ignored; a row matched this way is marked: its config hash differs, so code or defaults changed).

Rule (``RULE`` below, printed in the file): a row is within noise when
- both have >= 2 common seeds: |mean paired difference| <= max(half-width of its 95% t confidence interval,
  ``NOISE_FLOOR`` AP);
- otherwise: |our mean - the reference's mean| <= max(2 x s x sqrt(1/n_ours + 1/n_ref), ``NOISE_FLOOR`` AP),
  where s is the reference's pooled seed sd (over every compared row with >= 2 reference seeds).
A table reproduces the reference within noise when every row that both sides have is within noise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from focalbench.reproduce.runner import RunSpec
from focalbench.reproduce.sweeps import Table
from focalbench.runstore import RunStore, atomic_write_text

NOISE_FLOOR = 1.0  # AP; the tolerance floor of comparison.md (the table verdicts use paired intervals instead)
CACHED_STATUSES = ("ok", "diverged")
# Overrides that do not change what a run computes (and are not part of its config hash).
_IGNORED_PREFIXES = ("tags.", "save_weights=", "trainer.num_threads=", "trainer.enable_progress_bar=",
                     "trainer.log_every_n_steps=", "hydra.", "logger")
RULE = (f"a row is within noise when, with >= 2 seeds in common, |mean paired difference (ours - reference, "
        f"same seed)| <= max(95% t-interval half-width, {NOISE_FLOOR:g} AP); with fewer, when |our mean - "
        f"reference mean| <= max(2 x s x sqrt(1/n_ours + 1/n_ref), {NOISE_FLOOR:g} AP), s = the reference's "
        f"pooled seed sd over the compared rows with >= 2 seeds. A table reproduces the reference within noise "
        f"when every row both sides have is within noise.")


@dataclass
class RowComparison:
    table: str
    row: str
    ours: dict[int, float]                  # seed -> AP
    ref: dict[int, float]
    by_overrides: bool = False              # some reference run matched by overrides + seed, not by hash
    method: str = ""                        # "paired" | "pooled" | "" (not compared)
    diff: float = math.nan
    tolerance: float = math.nan
    ci: tuple[float, float] | None = None
    within: bool | None = None              # None: not compared (a side has no run)
    paired: dict[int, float] = field(default_factory=dict)

    @property
    def common(self) -> list[int]:
        return sorted(set(self.ours) & set(self.ref))


@dataclass
class TableComparison:
    table: Table
    rows: list[RowComparison]

    @property
    def verdict(self) -> str:
        compared = [r for r in self.rows if r.within is not None]
        missing = [r for r in self.rows if r.within is None]
        off = [r for r in compared if not r.within]
        if not compared:
            return "not compared: no row has runs on both sides"
        if off:
            names = ", ".join(f"{r.row} ({r.diff:+.1f} AP, tolerance {r.tolerance:.1f})" for r in off)
            return f"differs from the reference beyond noise in {len(off)} of {len(compared)} rows: {names}"
        if missing:
            return (f"reproduces the reference within noise on the {len(compared)} of {len(self.rows)} rows both "
                    f"have (not compared: {', '.join(r.row for r in missing)})")
        return f"reproduces the reference within noise ({len(compared)} of {len(self.rows)} rows)"


def _key_overrides(overrides, drop_seed: bool) -> frozenset[str]:
    keep = [str(o) for o in overrides if not str(o).startswith(_IGNORED_PREFIXES)]
    if drop_seed:
        keep = [o for o in keep if not o.startswith("seed=")]
    return frozenset(keep)


def _load_runs(runs_dir: Path) -> list[dict]:
    out = []
    for p in sorted(runs_dir.glob("*.json")):
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("status") in CACHED_STATUSES:
            out.append({**m, "config_hash": m.get("config_hash", p.stem)})
    return out


def _load_manifest(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    keys = ("table", "row", "seed", "config_hash")
    return [r for r in rows if isinstance(r, dict) and all(k in r for k in keys)] if isinstance(rows, list) else []


def _seed_of(m: dict) -> int | None:
    if "seed" in m:
        return int(m["seed"])
    for o in m.get("overrides", []):
        if str(o).startswith("seed="):
            return int(str(o).split("=", 1)[1])
    return None


def compare(tables: list[Table], specs: list[RunSpec], results_dir: Path, reference_dir: Path,
            noise_floor: float = NOISE_FLOOR) -> list[TableComparison] | None:
    """Row-by-row comparison of ``results_dir/runs`` with ``reference_dir/runs``; None when the reference
    has no finished run at all."""
    ref_runs = _load_runs(Path(reference_dir) / "runs")
    if not ref_runs:
        return None
    ours_store = RunStore(Path(results_dir) / "runs")
    ref_by_hash = {m["config_hash"]: m for m in ref_runs}
    ref_by_row: dict[frozenset, dict[int, dict]] = {}
    for m in ref_runs:
        seed = _seed_of(m)
        if seed is not None and m.get("overrides"):
            ref_by_row.setdefault(_key_overrides(m["overrides"], True), {}).setdefault(seed, m)
    ref_manifest: dict[tuple[str, str, frozenset], dict[int, str]] = {}
    for e in _load_manifest(Path(reference_dir) / "manifest.json"):
        key = (str(e["table"]), str(e["row"]), _key_overrides(e.get("overrides") or [], True))
        ref_manifest.setdefault(key, {})[int(e["seed"])] = str(e["config_hash"])

    out = []
    for table in tables:
        rows = []
        for row in table.rows:
            row_specs = [s for s in specs if s.table == table.id and s.row == row.name]
            ours, ref, by_overrides = {}, {}, False
            for s in row_specs:
                m = ours_store.get(s.config_hash)
                if m is not None and m.get("status") in CACHED_STATUSES:
                    ours[s.seed] = float(m.get("AP", 0.0))
                if s.config_hash in ref_by_hash:
                    ref[s.seed] = float(ref_by_hash[s.config_hash].get("AP", 0.0))
            spec_hash = {s.seed: s.config_hash for s in row_specs}
            # the reference's other seeds of this row (same overrides): from its manifest (what its tables
            # show), then from the runs' own overrides (also finds a seed whose config hash changed since)
            row_key = _key_overrides(row_specs[0].overrides, True) if row_specs else None
            for seed, h in ref_manifest.get((table.id, row.name, row_key), {}).items():
                if seed not in ref and h in ref_by_hash:
                    ref[seed] = float(ref_by_hash[h].get("AP", 0.0))
                    by_overrides |= seed in spec_hash and spec_hash[seed] != h
            if row_specs:
                for seed, m in ref_by_row.get(row_key, {}).items():
                    if seed not in ref:
                        ref[seed] = float(m.get("AP", 0.0))
                        by_overrides |= seed in spec_hash and spec_hash[seed] != m["config_hash"]
            rows.append(RowComparison(table.id, row.name, dict(sorted(ours.items())), dict(sorted(ref.items())),
                                      by_overrides))
        out.append(TableComparison(table, rows))

    pooled = pooled_sd([list(r.ref.values()) for t in out for r in t.rows])
    for t in out:
        for r in t.rows:
            _decide(r, pooled, noise_floor)
    return out


def pooled_sd(groups: list[list[float]]) -> float | None:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over the groups with >= 2 values; None if there are none."""
    num = dof = 0.0
    for g in groups:
        if len(g) >= 2:
            num += (len(g) - 1) * float(np.var(g, ddof=1))
            dof += len(g) - 1
    return math.sqrt(num / dof) if dof else None


def _decide(r: RowComparison, pooled: float | None, floor: float) -> None:
    if not r.ours or not r.ref:
        return
    common = r.common
    if len(common) >= 2:
        d = np.array([r.ours[s] - r.ref[s] for s in common])
        r.paired = {s: float(r.ours[s] - r.ref[s]) for s in common}
        half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        r.method, r.diff = "paired", float(d.mean())
        r.ci = (r.diff - half, r.diff + half)
        r.tolerance = max(half, floor)
    else:
        r.paired = {s: float(r.ours[s] - r.ref[s]) for s in common}
        r.method = "pooled"
        r.diff = float(np.mean(list(r.ours.values())) - np.mean(list(r.ref.values())))
        se = pooled * math.sqrt(1 / len(r.ours) + 1 / len(r.ref)) if pooled is not None else 0.0
        r.tolerance = max(2 * se, floor)
    r.within = abs(r.diff) <= r.tolerance + 1e-9


def _fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _mean_sd(values: dict[int, float]) -> str:
    if not values:
        return "—"
    v = list(values.values())
    sd = f" ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else ""
    return f"{np.mean(v):.1f}{sd}"


def render(comparisons: list[TableComparison] | None, results_dir: Path, reference_dir: Path) -> str:
    if comparisons is None:
        return no_reference_line(results_dir, reference_dir) + "\n"
    lines = [f"# `{results_dir}` vs the reference `{reference_dir}`", "",
             f"Rule: {RULE}", "",
             "AP is the COCO AP (0-100), mean ± sd over seeds; difference = ours - reference.", ""]
    for t in comparisons:
        lines += [f"## Table {t.table.id}: {t.table.title}", "", f"**{t.verdict}.**", "",
                  "| row | our AP (seeds) | reference AP (seeds) | difference | paired by seed (ours - ref) | "
                  "test | tolerance | within noise | matched by |", "|---|---|---|---|---|---|---|---|---|"]
        for r in t.rows:
            paired = ", ".join(f"s{s}: {d:+.2f}" for s, d in r.paired.items()) or "—"
            test = {"paired": f"paired, 95% CI [{r.ci[0]:+.2f}, {r.ci[1]:+.2f}]" if r.ci else "paired",
                    "pooled": "pooled reference sd", "": "—"}[r.method]
            within = {True: "yes", False: "**no**", None: "not compared"}[r.within]
            match = "overrides + seed (config hash differs)" if r.by_overrides else "config hash"
            lines.append(f"| {r.row} | {_mean_sd(r.ours)} ({len(r.ours)}) | {_mean_sd(r.ref)} ({len(r.ref)}) | "
                         f"{_fmt(r.diff, 2) if r.within is not None else '—'} | {paired} | {test} | "
                         f"{_fmt(r.tolerance, 2) if r.within is not None else '—'} | {within} | "
                         f"{match if r.ref else '—'} |")
        lines.append("")
    return "\n".join(lines)


def no_reference_line(results_dir: Path, reference_dir: Path) -> str:
    return (f"no comparison: the reference {reference_dir}/runs has no finished runs for profile "
            f"{Path(reference_dir).name}")


def write_comparison(tables: list[Table], specs: list[RunSpec], results_dir: Path, reference_dir: Path,
                     noise_floor: float = NOISE_FLOOR) -> list[str]:
    """Write ``results_dir/comparison.md``; return the short terminal summary (one line per table)."""
    comparisons = compare(tables, specs, results_dir, reference_dir, noise_floor)
    atomic_write_text(Path(results_dir) / "comparison.md", render(comparisons, results_dir, reference_dir))
    if comparisons is None:
        return [no_reference_line(results_dir, reference_dir)]
    return [f"table {t.table.id} vs reference: {t.verdict}" for t in comparisons]
