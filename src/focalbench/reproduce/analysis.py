"""Our numbers beside the paper's: per-row mean/std over seeds, Kendall's tau, and claim verdicts.

Verdict rule (one for every table): a difference between two rows counts as an effect only when it
exceeds the noise margin ``max(noise_floor, sqrt(sd_a^2 + sd_b^2))``, where sd is the standard deviation
over seeds and ``noise_floor`` (default 1.0 AP, the largest seed-to-seed spread measured on this profile
in shared/CALIBRATION.md) stands in when there is a single seed. Verdicts: "supported", "contradicted",
or "inconclusive" (the deciding difference is inside the noise margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import kendalltau

from focalbench.reproduce.sweeps import Table

METRICS = ("AP", "AP50", "AP75")
NOISE_FLOOR = 1.0


@dataclass
class RowResult:
    name: str
    paper: dict
    runs: list[dict]            # metrics.json of each seed that finished
    extra: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # metrics.json of seeds whose last attempt failed

    def values(self, key: str = "AP") -> list[float]:
        return [float(r.get(key, 0.0)) for r in self.runs]

    def mean(self, key: str = "AP") -> float:
        v = self.values(key)
        return float(np.mean(v)) if v else math.nan

    def std(self, key: str = "AP") -> float:
        v = self.values(key)
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    @property
    def statuses(self) -> list[str]:
        return [r.get("status", "?") for r in self.runs]

    @property
    def complete(self) -> bool:
        return bool(self.runs)


@dataclass
class Verdict:
    verdict: str                # supported | contradicted | inconclusive | not run
    detail: str


def margin(a: RowResult, b: RowResult, floor: float = NOISE_FLOOR) -> float:
    return max(floor, math.hypot(a.std(), b.std()))


def compare(a: RowResult, b: RowResult, floor: float = NOISE_FLOOR) -> int:
    """+1 if a beats b beyond the noise margin, -1 if b beats a, 0 if inside the noise."""
    d = a.mean() - b.mean()
    m = margin(a, b, floor)
    return 1 if d > m else -1 if d < -m else 0


def kendall_tau(rows: list[RowResult]) -> float:
    done = [r for r in rows if r.complete]
    if len(done) < 2:
        return math.nan
    tau = kendalltau([r.paper["AP"] for r in done], [r.mean() for r in done]).statistic
    return float(tau) if tau is not None else math.nan


def _fmt(r: RowResult) -> str:
    return f"{r.name} {r.mean():.1f}±{r.std():.1f}"


def _all_run(rows: list[RowResult]) -> bool:
    return all(r.complete for r in rows)


def verdict_1a(rows: dict[str, RowResult], floor: float = NOISE_FLOOR) -> Verdict:
    """'CE with alpha=.10 collapses; the best alpha is around .75'."""
    if not _all_run(list(rows.values())):
        return Verdict("not run", "some rows have no finished run")
    low = rows["CE a=.10"]
    best = max(rows.values(), key=lambda r: r.mean())
    others = [r for r in rows.values() if r is not low]
    collapsed = all(compare(r, low, floor) > 0 for r in others) and low.mean() <= 0.25 * best.mean()
    near = [r for n, r in rows.items() if n in ("CE a=.50", "CE a=.75", "CE a=.90")]
    best_near = best in near or compare(best, rows["CE a=.75"], floor) == 0
    best_far = not best_near
    detail = (f"alpha=.10: {low.mean():.1f} AP vs best {_fmt(best)} ({'collapsed' if collapsed else 'not collapsed'}: "
              f"rule = below a quarter of the best and beaten by every other alpha beyond noise); "
              f"best alpha {'is' if best_near else 'is not'} around .75 (best in {{.5,.75,.9}} or .75 within noise)")
    if collapsed and best_near:
        return Verdict("supported", detail)
    if not collapsed and low.mean() > 0.5 * best.mean() or best_far and compare(best, rows["CE a=.75"], floor) > 0:
        return Verdict("contradicted", detail)
    return Verdict("inconclusive", detail)


def _beats_best(winner: RowResult | None, others: list[RowResult], what: str, floor: float) -> Verdict:
    """'``winner`` beats every row of ``others``': decided against the best of them, beyond the noise margin."""
    others = [r for r in others if r.complete]
    if winner is None or not winner.complete or not others:
        return Verdict("not run", f"{what} have no finished run")
    best = max(others, key=lambda r: r.mean())
    c = compare(winner, best, floor)
    detail = f"{_fmt(winner)} vs best {_fmt(best)} (margin {margin(winner, best, floor):.1f})"
    return Verdict({1: "supported", 0: "inconclusive", -1: "contradicted"}[c], detail)


def verdict_1b(rows: dict[str, RowResult], ce_rows: list[RowResult], floor: float = NOISE_FLOOR) -> Verdict:
    """'FL with gamma around 2 beats every alpha-CE' (alpha-CE rows: 1b's gamma=0 row plus 1a when run)."""
    return _beats_best(rows.get("g=2 a=.25"), ce_rows, "FL gamma=2 or the alpha-CE rows", floor)


def verdict_1c(rows: dict[str, RowResult], floor: float = NOISE_FLOOR) -> Verdict:
    """'more aspect ratios help; 2-3 scales are best'."""
    if not _all_run(list(rows.values())):
        return Verdict("not run", "some rows have no finished run")
    pairs = [(rows[f"{sc} sc / 3 ar"], rows[f"{sc} sc / 1 ar"]) for sc in (1, 2, 3)]
    votes = [compare(a, b, floor) for a, b in pairs]
    ar_help = sum(v > 0 for v in votes) >= 2
    ar_hurt = sum(v < 0 for v in votes) >= 2
    three = [rows[f"{sc} sc / 3 ar"] for sc in (1, 2, 3, 4)]
    best = max(three, key=lambda r: r.mean())
    best23 = max(three[1:3], key=lambda r: r.mean())
    scales_ok = best in three[1:3] or compare(best, best23, floor) == 0
    detail = (f"3 vs 1 aspect ratio at 1/2/3 scales: {['+' if v > 0 else '-' if v < 0 else '=' for v in votes]} "
              f"(+ = 3 ratios better beyond noise); best of the 3-ratio rows: {_fmt(best)}; "
              f"2-3 scales {'are' if scales_ok else 'are not'} best (or within noise of the best)")
    if ar_help and scales_ok:
        return Verdict("supported", detail)
    if ar_hurt or (not scales_ok):
        return Verdict("contradicted", detail)
    return Verdict("inconclusive", detail)


def verdict_1d(rows: dict[str, RowResult], floor: float = NOISE_FLOOR) -> Verdict:
    """'FL beats every OHEM variant'."""
    ohem = [r for n, r in rows.items() if n.startswith("OHEM")]
    return _beats_best(rows.get("FL"), ohem, "FL or the OHEM rows", floor)


def verdict_3(rows: dict[str, RowResult], floor: float = NOISE_FLOOR) -> Verdict:
    """'FL* performs about as well as FL': every FL* row within the noise margin of FL, or better."""
    if not _all_run(list(rows.values())):
        return Verdict("not run", "some rows have no finished run")
    fl = rows["FL g=2"]
    stars = [r for n, r in rows.items() if n.startswith("FL*")]
    cmp = [compare(s, fl, floor) for s in stars]
    detail = "; ".join(f"{_fmt(s)} vs {_fmt(fl)}" for s in stars)
    if all(c >= 0 for c in cmp):
        return Verdict("supported", detail)
    if all(c < 0 for c in cmp):
        return Verdict("contradicted", detail)
    return Verdict("inconclusive", detail)


def table_verdict(table: Table, rows: dict[str, RowResult], ce_rows: list[RowResult] | None = None,
                  floor: float = NOISE_FLOOR) -> Verdict:
    if table.id == "1a":
        return verdict_1a(rows, floor)
    if table.id == "1b":
        return verdict_1b(rows, ce_rows if ce_rows is not None else [rows["g=0 a=.75"]], floor)
    if table.id == "1c":
        return verdict_1c(rows, floor)
    if table.id == "1d":
        return verdict_1d(rows, floor)
    if table.id == "3":
        return verdict_3(rows, floor)
    return Verdict("not run", f"no verdict rule for table {table.id}")
