"""Statistics of paired comparisons over seeds, for the paper tables and the imbalance study alike: paired
differences, pooled noise, equivalence tests and rank agreement with the paper (pure numpy/scipy).

Rows of a table that share a seed share the initialisation and the batch order, so two rows are compared
on their *paired* differences ``d_s = a_s - b_s`` over the seeds ``s`` both have: the seed's shared offset
cancels, and only the noise that differs between the two configurations is left.

Notation: ``n`` seeds in common, ``dbar = mean(d)``, ``sd = sqrt(sum (d_s - dbar)^2 / (n - 1))``,
``se = sd / sqrt(n)``, ``t_q(df)`` and ``z_q`` the q-quantiles of Student's t and of the standard normal.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as _st

LEVEL = 0.95          # two-sided confidence level of a paired difference
ALPHA_TOST = 0.05     # each one-sided test of the TOST: the (1 - 2 * 0.05) = 90% interval
N_PERMUTATIONS = 10_000
EXACT_PERMUTATIONS_MAX_ROWS = 8   # 8! = 40,320 orderings: enumerated exactly up to here
N_BOOTSTRAP = 2_000
SEED = 0              # every random draw here is seeded: the report is reproducible to the digit


# ------------------------------------------------------------------------------------------ paired differences

@dataclass(frozen=True)
class PairedDiff:
    """``a - b`` over the common seeds, with its two-sided ``level`` confidence interval [low, high].

    ``method``: "t" (n >= 2), "normal, noise sd" (n == 1 with a supplied noise sd) or "unknown" (no interval:
    n == 0, or n == 1 without a noise sd; then low = -inf, high = +inf)."""

    mean: float
    sd: float             # sd of the paired differences (ddof=1); nan for n < 2
    n: int
    low: float
    high: float
    level: float
    se: float             # standard error used for the interval (sd / sqrt(n), or the noise sd for n == 1)
    df: float             # degrees of freedom of the t interval (n - 1); inf for the normal one
    p: float              # two-sided p-value of "mean difference = 0"; nan when unknown
    method: str
    seeds: tuple = ()
    diffs: tuple = ()

    @property
    def known(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def effect(self) -> int:
        """+1 when the interval lies above 0 (a beats b), -1 below 0, 0 when it contains 0 or is unknown."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def text(self, unit: str = " AP") -> str:
        if self.n == 0:
            return "no seed in common"
        ci = (f"{self.level:.0%} CI [{self.low:+.2f}, {self.high:+.2f}]" if self.known
              else f"{self.level:.0%} CI unknown (1 seed, no noise sd)")
        how = f"n={self.n}, " + ("t" if self.method == "t" else "noise sd %.2f" % self.se if self.known else "—")
        return f"{self.mean:+.2f}{unit}, {ci} ({how})"


def paired_differences(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[list, np.ndarray]:
    """Seeds present in both ``a`` and ``b`` (seed -> value), sorted, and ``a_s - b_s`` at each."""
    seeds = sorted(set(a) & set(b))
    return seeds, np.array([float(a[s]) - float(b[s]) for s in seeds], dtype=float)


def paired_diff(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL,
                noise_sd: float | None = None) -> PairedDiff:
    """Paired difference ``a - b`` over the seeds both have.

    n >= 2:  ``dbar ± t_{(1+level)/2}(n-1) * sd / sqrt(n)``; p = 2 * (1 - T_{n-1}(|dbar| / se)).
    n == 1:  ``d ± z_{(1+level)/2} * noise_sd`` (the noise sd of a paired difference measured elsewhere, e.g.
             the pooled sd of :func:`pooled_paired_sd`, treated as known); p from the normal.
    Otherwise (n == 0, or n == 1 without ``noise_sd``) the interval is unknown: (-inf, +inf).
    """
    seeds, d = paired_differences(a, b)
    n = len(d)
    q = (1 + level) / 2
    if n == 0:
        return PairedDiff(math.nan, math.nan, 0, -math.inf, math.inf, level, math.nan, math.nan, math.nan, "unknown")
    mean = float(d.mean())
    if n >= 2:
        sd = float(d.std(ddof=1))
        se = sd / math.sqrt(n)
        half = float(_st.t.ppf(q, n - 1)) * se
        p = float(2 * _st.t.sf(abs(mean) / se, n - 1)) if se > 0 else (1.0 if mean == 0 else 0.0)
        return PairedDiff(mean, sd, n, mean - half, mean + half, level, se, n - 1, p, "t", tuple(seeds), tuple(map(float, d)))
    if noise_sd is not None and math.isfinite(noise_sd) and noise_sd >= 0:
        half = float(_st.norm.ppf(q)) * noise_sd
        p = float(2 * _st.norm.sf(abs(mean) / noise_sd)) if noise_sd > 0 else (1.0 if mean == 0 else 0.0)
        return PairedDiff(mean, math.nan, 1, mean - half, mean + half, level, float(noise_sd), math.inf, p,
                          "normal, noise sd", tuple(seeds), tuple(map(float, d)))
    return PairedDiff(mean, math.nan, 1, -math.inf, math.inf, level, math.nan, math.nan, math.nan, "unknown",
                      tuple(seeds), tuple(map(float, d)))


# ------------------------------------------------------------------------------------------------ pooled noise

@dataclass(frozen=True)
class Pooled:
    """A pooled standard deviation ``sd`` with ``df`` degrees of freedom from ``groups`` groups of >= 2 values."""

    sd: float
    df: int
    groups: int


def pooled_sd(groups: Iterable[Sequence[float]]) -> Pooled:
    """``sqrt( sum_i (n_i - 1) s_i^2 / sum_i (n_i - 1) )`` with ``s_i`` the sd (ddof=1) of group i: the mean of
    the per-group variances weighted by their degrees of freedom. Groups of fewer than 2 values carry none."""
    num, df, k = 0.0, 0, 0
    for g in groups:
        g = np.asarray(list(g), dtype=float)
        if len(g) >= 2:
            num += float(g.var(ddof=1)) * (len(g) - 1)
            df += len(g) - 1
            k += 1
    return Pooled(math.sqrt(num / df) if df else math.nan, df, k)


def pooled_paired_sd(tables: Iterable[Sequence[Mapping[int, float]]], skip_identical: bool = True) -> Pooled:
    """Pooled sd of the paired differences of every pair of rows within each table of a table set:
    :func:`pooled_sd` over the groups ``{a_s - b_s}`` (one group per row pair, seeds in common).

    ``tables``: for each table, its rows as seed -> value. With ``skip_identical`` a pair whose difference is
    exactly 0 at every seed is left out: that is one computation under two names (e.g. an override that does
    not change the run), not a measurement of noise."""
    groups = []
    for rows in tables:
        for a, b in itertools.combinations(list(rows), 2):
            _, d = paired_differences(a, b)
            if skip_identical and len(d) and not np.any(d):
                continue
            groups.append(d)
    return pooled_sd(groups)


def pooled_within_sd(rows: Iterable[Mapping[int, float]]) -> Pooled:
    """Pooled seed-to-seed sd within a row: :func:`pooled_sd` over each row's values across seeds. It holds
    the seeds' shared offset too, so it is larger than the paired sd when the seed dominates."""
    return pooled_sd(list(r.values()) for r in rows)


# --------------------------------------------------------------------------------------------- equivalence

@dataclass(frozen=True)
class Equivalence:
    """TOST of ``|a - b| < margin``: ``diff`` carries the (1 - 2 alpha) interval.

    equivalent:   -margin < low and high < +margin (both one-sided tests reject at alpha)
    non_inferior: low > -margin (a is not worse than b by the margin or more)
    worse / better: the whole interval lies below -margin / above +margin (a differs by more than the margin)."""

    diff: PairedDiff
    margin: float
    alpha: float
    p: float              # TOST p-value: the larger of the two one-sided p-values; nan when unknown

    @property
    def equivalent(self) -> bool:
        return self.diff.low > -self.margin and self.diff.high < self.margin

    @property
    def non_inferior(self) -> bool:
        return self.diff.low > -self.margin

    @property
    def worse(self) -> bool:
        return self.diff.high < -self.margin

    @property
    def better(self) -> bool:
        return self.diff.low > self.margin

    def text(self, unit: str = " AP") -> str:
        word = ("equivalent" if self.equivalent else "non-inferior" if self.non_inferior else
                "worse beyond the margin" if self.worse else "not shown equivalent")
        return f"{self.diff.text(unit)}; margin ±{self.margin:g}{unit}: {word}"


def tost(a: Mapping[int, float], b: Mapping[int, float], margin: float, alpha: float = ALPHA_TOST,
         noise_sd: float | None = None) -> Equivalence:
    """Two one-sided tests (Schuirmann) of ``-margin < mean(a - b) < margin`` on the paired differences.

    Interval: the ``1 - 2 alpha`` paired interval of :func:`paired_diff` (t for n >= 2, normal with
    ``noise_sd`` for n == 1). ``p = max(p_lower, p_upper)`` with ``p_lower = 1 - F((dbar + margin) / se)``
    (H0: a - b <= -margin) and ``p_upper = F((dbar - margin) / se)`` (H0: a - b >= +margin), F the t cdf
    (df = n - 1) or the normal cdf; equivalent iff p < alpha, the same as the interval inside the margins."""
    if margin <= 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    d = paired_diff(a, b, level=1 - 2 * alpha, noise_sd=noise_sd)
    if not d.known:
        p = math.nan
    elif d.se == 0:
        p = 0.0 if abs(d.mean) < margin else 1.0
    else:
        dist = _st.t(d.df) if d.method == "t" else _st.norm()
        p = float(max(dist.sf((d.mean + margin) / d.se), dist.cdf((d.mean - margin) / d.se)))
    return Equivalence(d, float(margin), alpha, p)


# ------------------------------------------------------------------------------------------ rank agreement

def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(k, 1)
    return i, j


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: ``S / sqrt((n0 - n1)(n0 - n2))`` with ``S = sum_{i<j} sign(x_i - x_j) sign(y_i - y_j)``,
    ``n0 = k(k-1)/2`` pairs, ``n1``/``n2`` the pairs tied in x / in y. nan when either side is all ties."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = _pairs(len(x))
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = len(i)
    den = math.sqrt((n0 - np.sum(sx == 0)) * (n0 - np.sum(sy == 0)))
    return float(np.sum(sx * sy) / den) if den > 0 else math.nan


def tau_permutation_p(x: Sequence[float], y: Sequence[float], n_perm: int = N_PERMUTATIONS, seed: int = SEED,
                      exact_max: int = EXACT_PERMUTATIONS_MAX_ROWS) -> tuple[float, str]:
    """Two-sided permutation p-value of Kendall's tau-b under "no association": ``P(|tau(x, pi(y))| >= |tau|)``
    over orderings ``pi`` of y. The tie counts do not change under a permutation, so it is the same test on S.

    k <= ``exact_max`` rows: every one of the k! orderings (p = count / k!). More: ``n_perm`` random orderings
    from ``numpy.random.default_rng(seed)``, p = (1 + count) / (1 + n_perm). Returns (p, "exact" | "random")."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    k = len(x)
    if k < 2 or math.isnan(kendall_tau_b(x, y)):
        return math.nan, "none"
    i, j = _pairs(k)
    sx = np.sign(x[i] - x[j])
    s_obs = abs(float(np.sum(sx * np.sign(y[i] - y[j]))))
    if k <= exact_max:
        perms = np.array(list(itertools.permutations(range(k))), dtype=np.int64)
        how = "exact"
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((n_perm, k)), axis=1)
        how = "random"
    yp = y[perms]
    s = np.abs(np.sign(yp[:, i] - yp[:, j]) @ sx)
    count = int(np.sum(s >= s_obs - 1e-9))
    return (count / len(perms), how) if how == "exact" else ((1 + count) / (1 + n_perm), how)


def tau_bootstrap_ci(paper: Sequence[float], by_seed: Sequence[Mapping[int, float]], level: float = LEVEL,
                     n_boot: int = N_BOOTSTRAP, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of tau-b(paper, our mean per row), resampling *seeds*, jointly for all rows.

    Each resample draws m seeds with replacement from the m seeds seen in any row (the same draw for every
    row: the pairing by seed is kept) and recomputes every row's mean over the drawn seeds it has (with their
    multiplicity); a row that has none of the drawn seeds keeps its observed mean. Interval: the
    (1 - level)/2 and (1 + level)/2 quantiles of the resampled taus. (nan, nan) with fewer than 2 seeds."""
    paper = np.asarray(paper, float)
    seeds = sorted(set().union(*[set(r) for r in by_seed])) if by_seed else []
    if len(seeds) < 2 or len(paper) < 2:
        return math.nan, math.nan
    col = {s: c for c, s in enumerate(seeds)}
    vals = np.zeros((len(by_seed), len(seeds)))
    mask = np.zeros_like(vals)
    for r, row in enumerate(by_seed):
        for s, v in row.items():
            vals[r, col[s]], mask[r, col[s]] = float(v), 1.0
    observed = (vals * mask).sum(1) / np.maximum(mask.sum(1), 1)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    counts = np.stack([np.bincount(d, minlength=len(seeds)) for d in draws]).astype(float)   # (B, m)
    num, den = counts @ (vals * mask).T, counts @ mask.T                                       # (B, rows)
    means = np.where(den > 0, num / np.where(den > 0, den, 1), observed[None, :])
    taus = np.array([kendall_tau_b(paper, m) for m in means])
    taus = taus[~np.isnan(taus)]
    if not len(taus):
        return math.nan, math.nan
    lo, hi = np.quantile(taus, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def tau_gap(x: Sequence[float], y: Sequence[float], gap: float = 1.0) -> tuple[float, int]:
    """Kendall's tau over the pairs whose x (the paper's AP) differ by at least ``gap``:
    ``sum sign(x_i - x_j) sign(y_i - y_j) / (number of such pairs)`` (a tie in y counts 0). The paper's
    sub-1-AP differences are within its own noise; this asks only about the orderings it is clear about.
    Returns (tau, number of pairs); nan when no pair qualifies."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = _pairs(len(x))
    keep = np.abs(x[i] - x[j]) >= gap - 1e-9
    if not keep.any():
        return math.nan, 0
    s = np.sign(x[i] - x[j])[keep] * np.sign(y[i] - y[j])[keep]
    return float(s.mean()), int(keep.sum())


@dataclass(frozen=True)
class TauStats:
    """Rank agreement of our mean AP with the paper's over the rows that ran."""

    tau: float
    p: float              # two-sided permutation p-value
    p_method: str         # exact | random | none
    ci_low: float
    ci_high: float        # bootstrap over seeds, ``level``; nan with one seed
    level: float
    tau_gap1: float
    gap_pairs: int
    rows: int
    seeds: int

    def text(self) -> str:
        if math.isnan(self.tau):
            return "n/a"
        ci = (f"{self.level:.0%} CI [{self.ci_low:+.2f}, {self.ci_high:+.2f}]" if not math.isnan(self.ci_low)
              else "CI n/a (1 seed)")
        return f"{self.tau:+.2f} (p = {self.p:.3g}, {ci})"


def kendall_summary(paper: Sequence[float], by_seed: Sequence[Mapping[int, float]], level: float = LEVEL,
                    gap: float = 1.0, n_perm: int = N_PERMUTATIONS, n_boot: int = N_BOOTSTRAP,
                    seed: int = SEED) -> TauStats:
    """tau-b of ``paper`` vs each row's mean over its seeds, with :func:`tau_permutation_p`,
    :func:`tau_bootstrap_ci` and :func:`tau_gap` (``gap`` AP)."""
    ours = [float(np.mean(list(r.values()))) if r else math.nan for r in by_seed]
    keep = [k for k, v in enumerate(ours) if not math.isnan(v)]
    px, oy, rows = [paper[k] for k in keep], [ours[k] for k in keep], [by_seed[k] for k in keep]
    n_seeds = len(set().union(*[set(r) for r in rows])) if rows else 0
    if len(keep) < 2:
        return TauStats(math.nan, math.nan, "none", math.nan, math.nan, level, math.nan, 0, len(keep), n_seeds)
    tau = kendall_tau_b(px, oy)
    p, how = tau_permutation_p(px, oy, n_perm=n_perm, seed=seed)
    lo, hi = tau_bootstrap_ci(px, rows, level=level, n_boot=n_boot, seed=seed)
    g, npairs = tau_gap(px, oy, gap)
    return TauStats(tau, p, how, lo, hi, level, g, npairs, len(keep), n_seeds)
