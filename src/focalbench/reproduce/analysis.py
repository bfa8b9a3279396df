"""Our numbers beside the paper's: per-row results over seeds, rank agreement, and claim verdicts.

Every comparison of two rows is *paired by seed* (rows that share a seed share the initialisation and the
batch order): a difference is an effect when the 95% interval of the paired differences excludes 0
(:func:`focalbench.stats.paired_diff`: t with n - 1 df; a single seed uses the noise sd of the
table set, or a per-profile value, with a normal quantile; without either a single seed decides nothing).
"About as good" claims use the TOST with a margin stated in the table's YAML (:func:`stats.tost`).

Each table's YAML names its verdict rule (``verdict: {rule: <name>, ...parameters}``); the rules are the
functions registered in :data:`RULES`. A new table of an existing kind of claim needs only a YAML file.
Verdicts: supported | contradicted | inconclusive | not run. Runs that diverged are kept apart: they never
enter a mean (they are not AP 0) and are listed separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from focalbench import stats
from focalbench.stats import Equivalence, PairedDiff, Pooled, TauStats
from focalbench.reproduce.table import Table

METRICS = ("AP", "AP50", "AP75")
SIZE_METRICS = ("APs", "APm", "APl")
LEVEL = stats.LEVEL
ALPHA_TOST = stats.ALPHA_TOST
DEFAULT_MARGIN = 1.0     # AP: equivalence margin when a rule's YAML does not state one


# ------------------------------------------------------------------------------------------------- rows

@dataclass
class RowResult:
    """One row of a table: its finished runs (one per seed). ``runs`` keeps the ``status: ok`` runs only;
    runs given with ``status: diverged`` move to ``diverged`` and any other status to ``failures``. A run
    without a ``seed`` gets its position in the list as seed (pairs rows by order)."""

    name: str
    paper: dict
    runs: list[dict]
    extra: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)  # seeds whose last attempt failed (no metrics)
    diverged: list[dict] = field(default_factory=list)  # seeds whose training diverged (loss not finite)

    def __post_init__(self):
        given = [r if "seed" in r else {**r, "seed": i} for i, r in enumerate(self.runs)]
        status = [r.get("status") or "ok" for r in given]
        self.runs = [r for r, s in zip(given, status) if s == "ok"]
        self.diverged = [*self.diverged, *(r for r, s in zip(given, status) if s == "diverged")]
        self.failures = [*self.failures, *(r for r, s in zip(given, status) if s not in ("ok", "diverged"))]

    def by_seed(self, key: str = "AP") -> dict[int, float]:
        """seed -> value of the ok runs (a missing value or a negative one, COCO's -1 "no ground truth of that
        size", is left out)."""
        out = {}
        for r in self.runs:
            v = r.get(key)
            if v is not None and math.isfinite(float(v)) and float(v) >= 0:
                out[int(r["seed"])] = float(v)
        return out

    def values(self, key: str = "AP") -> list[float]:
        return list(self.by_seed(key).values())

    def mean(self, key: str = "AP") -> float:
        v = self.values(key)
        return float(np.mean(v)) if v else math.nan

    def std(self, key: str = "AP") -> float:
        """sd over seeds (ddof=1); nan with fewer than 2 seeds."""
        v = self.values(key)
        return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan

    @property
    def statuses(self) -> list[str]:
        return [r.get("status", "ok") for r in self.runs] + ["diverged"] * len(self.diverged)

    @property
    def diverged_seeds(self) -> list[int]:
        return sorted(int(r.get("seed", -1)) for r in self.diverged)

    @property
    def complete(self) -> bool:
        """At least one seed trained without diverging: the row has an AP."""
        return bool(self.runs)

    @property
    def ran(self) -> bool:
        """At least one seed finished (ok or diverged)."""
        return bool(self.runs or self.diverged)

    def run_key(self) -> tuple:
        """Identity of the computation (its config hashes): one run shared by two tables' rows counts once."""
        hashes = [r.get("config_hash") for r in self.runs + self.diverged]
        return tuple(sorted(hashes)) if hashes and all(hashes) else ("row", id(self))


# ------------------------------------------------------------------------------------- comparisons, verdicts

@dataclass(frozen=True)
class Comparison:
    """The paired difference ``a - b`` (row names) a verdict rests on; ``equivalence`` is set for a TOST."""

    a: str
    b: str
    diff: PairedDiff
    role: str = ""
    equivalence: Equivalence | None = None

    def text(self) -> str:
        body = self.equivalence.text() if self.equivalence is not None else self.diff.text()
        return f"{self.a} − {self.b}: {body}"


@dataclass
class Verdict:
    verdict: str                # supported | contradicted | inconclusive | not run
    detail: str
    rule: str = ""
    deciding: tuple[Comparison, ...] = ()
    parts: dict = field(default_factory=dict)   # sub-claim -> holds | fails | unknown


@dataclass
class Context:
    """What a rule sees: its table's rows, every table of this report, and the noise sd for single seeds."""

    table: Table
    rows: dict[str, RowResult]
    run_set: dict[str, tuple[Table, dict[str, RowResult]]]
    noise_sd: float | None = None
    level: float = LEVEL
    alpha: float = ALPHA_TOST

    def diff(self, a: RowResult, b: RowResult, role: str = "", level: float | None = None) -> Comparison:
        d = stats.paired_diff(a.by_seed(), b.by_seed(), level=self.level if level is None else level,
                              noise_sd=self.noise_sd)
        return Comparison(a.name, b.name, d, role)

    def tost(self, a: RowResult, b: RowResult, margin: float, role: str = "",
             alpha: float | None = None) -> Comparison:
        e = stats.tost(a.by_seed(), b.by_seed(), margin, alpha=self.alpha if alpha is None else alpha,
                       noise_sd=self.noise_sd)
        return Comparison(a.name, b.name, e.diff, role, e)


def compare(a: RowResult, b: RowResult, noise_sd: float | None = None, level: float = LEVEL) -> int:
    """+1 if a beats b (paired interval above 0), -1 if b beats a, 0 if the interval holds 0 or is unknown."""
    return stats.paired_diff(a.by_seed(), b.by_seed(), level=level, noise_sd=noise_sd).effect


def _family(level: float, k: int) -> float:
    """Bonferroni: the per-comparison level that keeps "at least one of k" at 1 - level overall."""
    return 1 - (1 - level) / max(k, 1)


def _combine(parts: dict[str, str]) -> str:
    if all(v == "holds" for v in parts.values()):
        return "supported"
    return "contradicted" if any(v == "fails" for v in parts.values()) else "inconclusive"


def _missing(rows: list[RowResult]) -> str | None:
    gone = [r.name for r in rows if not r.ran]
    return ", ".join(gone) if gone else None


def _mean_txt(r: RowResult) -> str:
    return f"{r.name} {r.mean():.1f}" if r.complete else f"{r.name} (diverged)"


# ------------------------------------------------------------------------------------------- the rule registry

@dataclass(frozen=True)
class Rule:
    name: str
    decide: Callable[[Context, dict], Verdict]
    describe: Callable[[dict], str]           # the rule in words, for report.md
    required: tuple[str, ...] = ()
    row_params: tuple[str, ...] = ()          # parameters that name rows of the table (checked at load)
    selector_params: tuple[str, ...] = ()     # parameters that select rows ({rows, prefix, override, tables})


RULES: dict[str, Rule] = {}


def register(name: str, describe, required=(), row_params=(), selector_params=()):
    def deco(fn):
        RULES[name] = Rule(name, fn, describe, tuple(required), tuple(row_params), tuple(selector_params))
        return fn
    return deco


SELECTOR_KEYS = ("rows", "prefix", "override", "tables")


def validate_rule(spec: Mapping, row_names: list[str]) -> None:
    """Check a ``verdict:`` mapping against its rule (called by ``sweeps.load_table``); ValueError if wrong."""
    name = spec.get("rule")
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; known: {', '.join(sorted(RULES))}")
    r = RULES[name]
    missing = [k for k in r.required if k not in spec]
    if missing:
        raise ValueError(f"rule {name} needs {', '.join(missing)}")
    for k in r.row_params:
        for v in ([spec[k]] if isinstance(spec.get(k), str) else spec.get(k) or []):
            if v not in row_names:
                raise ValueError(f"{k}: {v!r} is not a row of the table")
    for k in r.selector_params:
        sel = spec.get(k)
        if not isinstance(sel, dict) or not sel or set(sel) - set(SELECTOR_KEYS):
            raise ValueError(f"{k} must be a mapping of {', '.join(SELECTOR_KEYS)}")
        for v in sel.get("rows", []) if "tables" not in sel else []:
            if v not in row_names:
                raise ValueError(f"{k}.rows: {v!r} is not a row of the table")
    if "margin" in spec and not float(spec["margin"]) > 0:
        raise ValueError(f"margin must be > 0 AP, got {spec['margin']}")


def _select(ctx: Context, sel: dict) -> tuple[list[RowResult], list[RowResult]]:
    """Rows matching ``sel`` (every given criterion: ``rows`` names, name ``prefix``, an ``override`` among the
    row's overrides) in this table, and in the tables named by ``tables`` that this report has; one run shared
    by two rows counts once. Returns (rows of this table, rows of the other tables)."""
    def match(table: Table, name: str) -> bool:
        return (("rows" not in sel or name in sel["rows"]) and ("prefix" not in sel or name.startswith(sel["prefix"]))
                and ("override" not in sel or sel["override"] in table.row(name).overrides))

    own = [r for n, r in ctx.rows.items() if match(ctx.table, n)]
    seen = {r.run_key() for r in own}
    extra = []
    for tid in sel.get("tables", []):
        if str(tid) == ctx.table.id or str(tid) not in ctx.run_set:
            continue
        table, rows = ctx.run_set[str(tid)]
        for n, r in rows.items():
            if match(table, n) and r.ran and r.run_key() not in seen:
                seen.add(r.run_key())
                extra.append(r)
    return own, extra


def _sel_words(sel: dict) -> str:
    bits = []
    if "rows" in sel:
        bits.append("the rows " + ", ".join(f"'{n}'" for n in sel["rows"]))
    if "prefix" in sel:
        bits.append(f"the rows named '{sel['prefix']}…'")
    if "override" in sel:
        bits.append(f"the rows with `{sel['override']}`")
    where = " of this table" + (f" and of table(s) {', '.join(map(str, sel['tables']))} when run" if sel.get("tables") else "")
    return " and ".join(bits) + where


# ---- beats_best: "W beats every row of a group"

def _describe_beats_best(p: dict) -> str:
    return (f"'{p['winner']}' must beat each of {_sel_words(p['others'])}: **supported** when every paired "
            f"difference '{p['winner']}' − other has its 95% CI above 0 (then it beats the best of them; no "
            "multiplicity correction is needed for an all-of claim), **contradicted** when some other row beats "
            "it with a Bonferroni-corrected CI (95% for the family) below 0, else **inconclusive**. The deciding "
            "difference is the one closest to failing.")


@register("beats_best", _describe_beats_best, required=("winner", "others"), row_params=("winner",),
          selector_params=("others",))
def rule_beats_best(ctx: Context, p: dict) -> Verdict:
    winner = ctx.rows[p["winner"]]
    own, extra = _select(ctx, p["others"])
    others = [r for r in own + extra if r is not winner and r.run_key() != winner.run_key()]
    gone = _missing([winner, *[r for r in own if r is not winner]])
    if gone:
        return Verdict("not run", f"no finished run: {gone}", "beats_best")
    if not winner.complete:
        return Verdict("inconclusive", f"{winner.name} diverged at every seed: no AP to compare", "beats_best")
    cands = [r for r in others if r.complete]
    div = [r.name for r in others if not r.complete]
    note = f"; diverged at every seed, not compared: {', '.join(div)}" if div else ""
    if not cands:
        return Verdict("inconclusive", "no other row has an AP" + note, "beats_best")
    comps = [ctx.diff(winner, o, "beats") for o in cands]
    fam = [ctx.diff(winner, o, "beaten by", level=_family(ctx.level, len(cands))) for o in cands]
    if all(c.diff.effect > 0 for c in comps):
        verdict, deciding = "supported", [min(comps, key=lambda c: c.diff.low)]
    elif any(c.diff.effect < 0 for c in fam):
        verdict, deciding = "contradicted", sorted([c for c in fam if c.diff.effect < 0], key=lambda c: c.diff.high)
    else:
        verdict, deciding = "inconclusive", sorted([c for c in comps if c.diff.effect <= 0], key=lambda c: c.diff.low)
    best = max(cands, key=lambda r: r.mean())
    wins = sum(c.diff.effect > 0 for c in comps)
    detail = (f"{_mean_txt(winner)} vs best other {_mean_txt(best)}; {winner.name} beats {wins} of {len(cands)} "
              f"beyond the 95% CI; deciding: {deciding[0].text()}" + note)
    return Verdict(verdict, detail, "beats_best", tuple(deciding), {"beats every": {"supported": "holds",
                   "contradicted": "fails"}.get(verdict, "unknown")})


# ---- collapse_and_peak: "row L collapses; the best row is among P (around R)"

def _describe_collapse_and_peak(p: dict) -> str:
    m = float(p.get("margin", DEFAULT_MARGIN))
    return (f"Two parts. *Collapse*: '{p['low']}' is the worst row and the paired difference second-worst − "
            f"'{p['low']}' has its 95% CI above 0 (or '{p['low']}' diverged at every seed); it fails when "
            f"'{p['low']}' beats some other row (Bonferroni-corrected 95% CI above 0). *Peak*: the row with the "
            f"best mean is one of {', '.join(repr(n) for n in p['peak_rows'])}, or '{p['ref']}' is equivalent to "
            f"the best row (TOST, 90% CI of '{p['ref']}' − best inside ±{m:g} AP); it fails when the best row is "
            f"outside them and beats '{p['ref']}' (95% CI above 0). **Supported** when both parts hold, "
            "**contradicted** when either fails, else **inconclusive**.")


@register("collapse_and_peak", _describe_collapse_and_peak, required=("low", "peak_rows", "ref"),
          row_params=("low", "peak_rows", "ref"))
def rule_collapse_and_peak(ctx: Context, p: dict) -> Verdict:
    rows = list(ctx.rows.values())
    gone = _missing(rows)
    if gone:
        return Verdict("not run", f"no finished run: {gone}", "collapse_and_peak")
    low, ref, margin = ctx.rows[p["low"]], ctx.rows[p["ref"]], float(p.get("margin", DEFAULT_MARGIN))
    trained = [r for r in rows if r.complete]
    others = [r for r in trained if r is not low]
    deciding, notes = [], []
    if not low.complete:
        collapse = "holds"
        notes.append(f"{low.name} diverged at every seed")
    elif not others:
        collapse = "unknown"
    else:
        second = min(others, key=lambda r: r.mean())
        if low.mean() < second.mean():
            c = ctx.diff(second, low, "collapse")
            collapse = "holds" if c.diff.effect > 0 else "unknown"
            deciding.append(c)
        else:
            fam = [ctx.diff(low, o, "collapse", level=_family(ctx.level, len(others))) for o in others]
            beaten = [c for c in fam if c.diff.effect > 0]
            collapse = "fails" if beaten else "unknown"
            deciding.append(max(beaten, key=lambda c: c.diff.low) if beaten else ctx.diff(low, second, "collapse"))
            notes.append(f"{low.name} is not the worst row ({second.name} {second.mean():.1f} is below it)")
    if not trained:
        peak = "unknown"
    else:
        best = max(trained, key=lambda r: r.mean())
        if best.name in p["peak_rows"]:
            peak = "holds"
            notes.append(f"best row {_mean_txt(best)} is one of the peak rows")
            if best is not ref and ref.complete:
                deciding.append(ctx.tost(ref, best, margin, "peak"))
        elif not ref.complete:
            peak = "unknown"
        else:
            e = ctx.tost(ref, best, margin, "peak")
            d = ctx.diff(best, ref, "peak")
            peak = "holds" if e.equivalence.equivalent else "fails" if d.diff.effect > 0 else "unknown"
            deciding.append(e if peak == "holds" else d)
            notes.append(f"best row {_mean_txt(best)} is outside the peak rows")
    parts = {"collapse": collapse, "peak": peak}
    detail = f"collapse {collapse}, peak {peak} ({'; '.join(notes)})" + (
        "; deciding: " + "; ".join(c.text() for c in deciding) if deciding else "")
    return Verdict(_combine(parts), detail, "collapse_and_peak", tuple(deciding), parts)


# ---- ratios_and_scales: "more of factor F helps (at >= k levels of G); G values V are best"

def _describe_ratios_and_scales(p: dict) -> str:
    rk, sk, m = p.get("ratio_key", "ar"), p.get("scale_key", "sc"), float(p.get("margin", DEFAULT_MARGIN))
    return (f"Two parts. *More ratios help*: at each #{sk} that has both, the paired difference ({rk}="
            f"{p['more']}) − ({rk}={p['fewer']}) is an effect (95% CI above 0) at >= {p.get('min_wins', 2)} of "
            f"them; it fails when that count can no longer be reached because the others are decided against "
            f"(CI below 0, or equivalent to 0 within ±{m:g} AP by TOST). *Best scales*: among the {rk}="
            f"{p['more']} rows the best mean has #{sk} in {{{', '.join(str(v) for v in p['best_scales'])}}}, or the best of those is equivalent "
            f"to the overall best (TOST, ±{m:g} AP); it fails when the best row is outside and beats each of "
            "them (95% CI above 0). **Supported** when both hold, **contradicted** when either fails, else "
            "**inconclusive**.")


@register("ratios_and_scales", _describe_ratios_and_scales, required=("more", "fewer", "best_scales"))
def rule_ratios_and_scales(ctx: Context, p: dict) -> Verdict:
    rows = list(ctx.rows.values())
    gone = _missing(rows)
    if gone:
        return Verdict("not run", f"no finished run: {gone}", "ratios_and_scales")
    rk, sk = p.get("ratio_key", "ar"), p.get("scale_key", "sc")
    margin, need = float(p.get("margin", DEFAULT_MARGIN)), int(p.get("min_wins", 2))
    at = {(r.extra.get(sk), r.extra.get(rk)): r for r in rows}
    scales = sorted(s for (s, a) in at if a == p["more"] and (s, p["fewer"]) in at)
    wins = against = 0
    deciding, votes = [], []
    for s in scales:
        a, b = at[(s, p["more"])], at[(s, p["fewer"])]
        if not (a.complete and b.complete):
            votes.append("?")
            continue
        c, e = ctx.diff(a, b, "ratios"), ctx.tost(a, b, margin, "ratios")
        if c.diff.effect > 0:
            wins += 1
            votes.append("+")
        elif c.diff.effect < 0 or e.equivalence.equivalent:
            against += 1
            votes.append("-" if c.diff.effect < 0 else "0")
        else:
            votes.append("=")
        deciding.append(c)
    undecided = len(scales) - wins - against
    ratios = "holds" if wins >= need else "fails" if wins + undecided < need else "unknown"
    # the deciding differences first: the wins when the part holds (strongest first), else the ones against it
    deciding.sort(key=lambda c: (-c.diff.low if c.diff.effect > 0 else math.inf) if ratios == "holds"
                  else (c.diff.high if c.diff.effect <= 0 else math.inf))
    many = [r for r in rows if r.extra.get(rk) == p["more"] and r.complete]
    inrange = [r for r in many if r.extra.get(sk) in p["best_scales"]]
    if not many:
        scal = "unknown"
    else:
        best = max(many, key=lambda r: r.mean())
        if best in inrange:
            scal = "holds"
        elif not inrange:
            scal = "unknown"
        else:
            top = max(inrange, key=lambda r: r.mean())
            e = ctx.tost(top, best, margin, "scales")
            beats = [ctx.diff(best, r, "scales") for r in inrange]
            scal = "holds" if e.equivalence.equivalent else "fails" if all(c.diff.effect > 0 for c in beats) else "unknown"
            deciding.append(e if scal != "fails" else min(beats, key=lambda c: c.diff.low))
    parts = {"more ratios help": ratios, "best scales": scal}
    best_txt = _mean_txt(max(many, key=lambda r: r.mean())) if many else "none"
    at = ", ".join(f"{v} at {x}" for x, v in zip(scales, votes))
    detail = (f"{rk}={p['more']} − {rk}={p['fewer']} by #{sk}: {at} (+ effect, - worse, 0 equivalent, "
              f"= undecided); best {rk}={p['more']} row: {best_txt}; more ratios help {ratios}, best scales {scal}; "
              "deciding: " + "; ".join(c.text() for c in deciding))
    return Verdict(_combine(parts), detail, "ratios_and_scales", tuple(deciding), parts)


# ---- equivalent: "rows S perform about as well as R"

def _describe_equivalent(p: dict) -> str:
    m = float(p["margin"])
    better = p.get("accept_better", False)
    return (f"Each of {_sel_words(p['rows'])} is compared with '{p['ref']}' by a TOST with margin ±{m:g} AP: "
            f"**supported** when every 90% CI of row − '{p['ref']}' lies inside (−{m:g}, +{m:g})"
            + (" or above −%g (non-inferior)" % m if better else "")
            + f"; **contradicted** when some row is worse by more than the margin{'' if better else ' or better by more than it'} "
            "(its Bonferroni-corrected interval entirely beyond it); else **inconclusive**.")


@register("equivalent", _describe_equivalent, required=("ref", "rows", "margin"), row_params=("ref",),
          selector_params=("rows",))
def rule_equivalent(ctx: Context, p: dict) -> Verdict:
    ref, margin, better = ctx.rows[p["ref"]], float(p["margin"]), bool(p.get("accept_better", False))
    own, extra = _select(ctx, p["rows"])
    comp = [r for r in own + extra if r is not ref and r.run_key() != ref.run_key()]
    gone = _missing([ref, *own])
    if gone:
        return Verdict("not run", f"no finished run: {gone}", "equivalent")
    if not ref.complete or not comp:
        return Verdict("inconclusive", f"{ref.name} diverged at every seed" if not ref.complete else "no row to compare",
                       "equivalent")
    cands = [r for r in comp if r.complete]
    div = [r.name for r in comp if not r.complete]
    tests = [ctx.tost(r, ref, margin, "equivalent") for r in cands]
    fam = [ctx.tost(r, ref, margin, "equivalent", alpha=ctx.alpha / len(comp)) for r in cands]
    ok = [t.equivalence.equivalent or (better and t.equivalence.non_inferior) for t in tests]
    bad = [f for f in fam if f.equivalence.worse or (not better and f.equivalence.better)]
    if all(ok) and not div:
        verdict = "supported"
    elif bad:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    deciding = bad if verdict == "contradicted" else [t for t, o in zip(tests, ok) if not o] or tests
    detail = (f"margin ±{margin:g} AP; {sum(ok)} of {len(comp)} rows equivalent to {_mean_txt(ref)}"
              + (f"; diverged at every seed: {', '.join(div)}" if div else "")
              + "; " + "; ".join(c.text() for c in deciding))
    return Verdict(verdict, detail, "equivalent", tuple(deciding),
                   {"about as good": {"supported": "holds", "contradicted": "fails"}.get(verdict, "unknown")})


# ---- larger_is_better_and_slower: Table 1e, "larger input scales are more accurate and slower"

TIME_KEY = "inference_ms_per_image"


def _describe_larger_is_better_and_slower(p: dict) -> str:
    order = ", ".join(f"'{n}'" for n in p["order"])
    return (f"Two parts along the scales {order}. *More accurate*: each larger scale beats the next smaller one "
            "(paired AP difference, 95% CI above 0); it fails when a smaller scale beats a larger one "
            "(Bonferroni-corrected 95% CI below 0). *Slower*: each larger scale's median inference time per image "
            "(`inference_ms_per_image`, timed in the run's final evaluation) is above the next smaller one's at "
            "every seed. **Supported** when both parts hold, **contradicted** when either fails, else "
            "**inconclusive**.")


@register("larger_is_better_and_slower", _describe_larger_is_better_and_slower, required=("order",),
          row_params=("order",))
def rule_larger_is_better_and_slower(ctx: Context, p: dict) -> Verdict:
    rows = [ctx.rows[n] for n in p["order"]]
    gone = _missing(rows)
    if gone:
        return Verdict("not run", f"no finished run: {gone}", "larger_is_better_and_slower")
    if not all(r.complete for r in rows):
        return Verdict("inconclusive", "a scale diverged at every seed: "
                       + ", ".join(r.name for r in rows if not r.complete), "larger_is_better_and_slower")
    steps = list(zip(rows, rows[1:]))
    comps = [ctx.diff(big, small, "more accurate") for small, big in steps]
    fam = [ctx.diff(big, small, "less accurate", level=_family(ctx.level, len(steps))) for small, big in steps]
    accurate = "holds" if all(c.diff.effect > 0 for c in comps) else \
        "fails" if any(c.diff.effect < 0 for c in fam) else "unknown"
    times = [r.by_seed(TIME_KEY) for r in rows]
    if not all(times):
        slower, time_txt = "unknown", "no inference time recorded (runs made before it was timed)"
    else:
        shared = sorted(set.intersection(*(set(t) for t in times)))
        faster = [(small.name, big.name) for (small, big), (ts, tb) in zip(steps, zip(times, times[1:]))
                  if any(tb[s] <= ts[s] for s in shared)]
        slower = "fails" if faster else "holds" if shared else "unknown"
        time_txt = "median ms per image: " + ", ".join(
            f"{r.name} {np.median(list(t.values())):.2f}" for r, t in zip(rows, times)) + (
            f"; not slower at some seed: {', '.join(f'{b} vs {a}' for a, b in faster)}" if faster else "")
    parts = {"more accurate": accurate, "slower": slower}
    verdict = _combine(parts)
    deciding = sorted(comps, key=lambda c: c.diff.low)
    detail = ("AP " + ", ".join(_mean_txt(r) for r in rows) + f"; {time_txt}; deciding: {deciding[0].text()}")
    return Verdict(verdict, detail, "larger_is_better_and_slower", tuple(deciding), parts)


def describe_rule(table: Table) -> str:
    """The table's verdict rule in words (report.md)."""
    if not table.verdict:
        return "no verdict rule in the table's YAML"
    return RULES[table.verdict["rule"]].describe(table.verdict)


def table_verdict(table: Table, rows: dict[str, RowResult],
                  run_set: Mapping[str, tuple[Table, dict[str, RowResult]]] | None = None,
                  noise_sd: float | None = None, level: float = LEVEL) -> Verdict:
    """The verdict on ``table``'s claim by the rule its YAML names. ``run_set``: every table of this report
    (rules may draw rows from other tables, e.g. 1b's alpha-CE rows from 1a); ``noise_sd``: the noise sd of a
    paired difference, used for comparisons resting on a single seed (None: such comparisons decide nothing)."""
    if not table.verdict:
        return Verdict("not run", f"no verdict rule for table {table.id}")
    spec = dict(table.verdict)
    rule = RULES[spec.pop("rule")]
    ctx = Context(table, rows, dict(run_set or {}) | {table.id: (table, rows)}, noise_sd, level)
    return rule.decide(ctx, spec)


# ------------------------------------------------------------------------------------------ noise, tau

@dataclass(frozen=True)
class NoiseEstimate:
    paired: Pooled      # pooled sd of paired differences over the row pairs of every table
    within: Pooled      # pooled seed-to-seed sd within a row


def noise_estimate(results: Mapping[str, Mapping[str, RowResult]], key: str = "AP") -> NoiseEstimate:
    """:func:`stats.pooled_sd` of the paired differences of every pair of rows within each table of the set
    (a pair of runs that appears in two tables counts once; a pair identical at every seed, i.e. one
    computation under two names, is left out) and of every distinct row's values across seeds."""
    pairs, seen_pairs, rows_seen, within = [], set(), set(), []
    for rows in results.values():
        rs = [r for r in rows.values() if r.complete]
        for r in rs:
            if r.run_key() not in rows_seen:
                rows_seen.add(r.run_key())
                within.append(r.values(key))
        for i, a in enumerate(rs):
            for b in rs[i + 1:]:
                k = frozenset((a.run_key(), b.run_key()))
                if len(k) < 2 or k in seen_pairs:
                    continue
                seen_pairs.add(k)
                _, d = stats.paired_differences(a.by_seed(key), b.by_seed(key))
                if len(d) and np.any(d):
                    pairs.append(d)
    return NoiseEstimate(stats.pooled_sd(pairs), stats.pooled_sd(within))


@dataclass(frozen=True)
class NoiseChoice:
    sd: float | None
    source: str
    estimate: NoiseEstimate


def choose_noise_sd(results: Mapping[str, Mapping[str, RowResult]], profile_noise_sd: float | None) -> NoiseChoice:
    """The noise sd for single-seed comparisons: measured on this table set when it has >= 2 seeds of some
    row pair, else the caller's per-profile value, else none (single-seed comparisons are then inconclusive)."""
    est = noise_estimate(results)
    if est.paired.df > 0:
        return NoiseChoice(est.paired.sd, f"measured on this table set: pooled sd of the paired differences over "
                           f"{est.paired.groups} row pairs ({est.paired.df} df)", est)
    if profile_noise_sd is not None:
        return NoiseChoice(float(profile_noise_sd), "the profile's value (measured on its multi-seed reference run), "
                           "passed by the caller: this table set has a single seed", est)
    return NoiseChoice(None, "none: a single seed and no per-profile value, so single-seed differences are "
                       "inconclusive", est)


def tau_stats(rows: list[RowResult], level: float = LEVEL) -> TauStats:
    """Kendall's tau-b of the paper's AP vs our mean AP over the rows with an AP, with its permutation p, the
    bootstrap interval over seeds and tau over the pairs the paper separates by >= 1 AP."""
    done = [r for r in rows if r.complete]
    return stats.kendall_summary([r.paper["AP"] for r in done], [r.by_seed() for r in done], level=level)


def kendall_tau(rows: list[RowResult]) -> float:
    done = [r for r in rows if r.complete]
    if len(done) < 2:
        return math.nan
    return stats.kendall_tau_b([r.paper["AP"] for r in done], [r.mean() for r in done])


# ------------------------------------------------------------------------------- differences from a baseline

@dataclass(frozen=True)
class BaselineDiff:
    """One row against its table's baseline row (what the figures plot).

    ``paper = paper_AP(row) - paper_AP(baseline)``; ``diff``: ours, ``row - baseline`` paired by seed
    (:func:`stats.paired_diff`: per-seed differences, their mean and its interval); None when the row or the
    baseline has no AP (not run, or diverged at every seed)."""

    row: RowResult
    paper: float
    diff: PairedDiff | None

    @property
    def name(self) -> str:
        return self.row.name


def baseline_differences(table: Table, rows: Mapping[str, RowResult], noise_sd: float | None = None,
                         key: str = "AP", level: float = LEVEL) -> list[BaselineDiff]:
    """Every row of ``table`` that ran (ok or diverged), in the table's order, against ``table.baseline_row``."""
    base = rows[table.baseline_row]
    out = []
    for spec in table.rows:
        r = rows[spec.name]
        if not r.ran:
            continue
        d = (stats.paired_diff(r.by_seed(key), base.by_seed(key), level=level, noise_sd=noise_sd)
             if r.complete and base.complete else None)
        out.append(BaselineDiff(r, float(r.paper[key]) - float(base.paper[key]), d))
    return out
