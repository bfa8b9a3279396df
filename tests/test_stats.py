"""focalbench.stats against scipy and against hand / brute-force computations."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from focalbench import stats

A = {0: 12.1, 1: 15.3, 2: 13.9, 3: 16.4, 4: 11.0}
B = {0: 10.0, 1: 14.1, 2: 13.5, 3: 13.2, 4: 10.4}


def test_paired_diff_matches_scipy_ttest_rel():
    d = stats.paired_diff(A, B)
    a, b = [A[s] for s in sorted(A)], [B[s] for s in sorted(B)]
    ref = st.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert d.n == 5 and d.df == 4 and d.method == "t"
    assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert d.sd == pytest.approx(np.std(np.subtract(a, b), ddof=1))
    assert d.p == pytest.approx(ref.pvalue)
    assert (d.low, d.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert d.effect == (1 if ci.low > 0 else -1 if ci.high < 0 else 0)
    ci90 = ref.confidence_interval(0.90)
    d90 = stats.paired_diff(A, B, level=0.90)
    assert (d90.low, d90.high) == (pytest.approx(ci90.low), pytest.approx(ci90.high))


def test_paired_diff_uses_only_common_seeds_in_seed_order():
    a = {2: 5.0, 0: 1.0, 7: 100.0}
    b = {0: 0.0, 2: 3.0, 9: -100.0}
    d = stats.paired_diff(a, b)
    assert d.seeds == (0, 2) and d.diffs == (1.0, 2.0) and d.mean == pytest.approx(1.5)
    none = stats.paired_diff({0: 1.0}, {1: 1.0})
    assert none.n == 0 and not none.known and none.effect == 0 and none.text() == "no seed in common"


def test_single_seed_uses_the_noise_sd_with_a_normal_quantile():
    d = stats.paired_diff({0: 13.0}, {0: 10.0}, noise_sd=1.0)
    z = st.norm.ppf(0.975)
    assert d.method == "normal, noise sd" and d.known and d.df == math.inf
    assert (d.low, d.high) == (pytest.approx(3 - z), pytest.approx(3 + z))
    assert d.p == pytest.approx(2 * st.norm.sf(3.0)) and d.effect == 1
    assert stats.paired_diff({0: 13.0}, {0: 10.0}, noise_sd=2.0).effect == 0      # 3 < 1.96 * 2
    unknown = stats.paired_diff({0: 13.0}, {0: 10.0})                              # no noise sd: decides nothing
    assert not unknown.known and unknown.effect == 0 and math.isnan(unknown.p) and "unknown" in unknown.text()


def test_tost_p_is_the_larger_one_sided_ttest_p():
    d = np.array([A[s] - B[s] for s in sorted(A)])
    for margin in (0.5, 1.0, 2.0, 3.0):
        e = stats.tost(A, B, margin)
        lower = st.ttest_1samp(d, -margin, alternative="greater").pvalue   # H0: mean <= -margin
        upper = st.ttest_1samp(d, margin, alternative="less").pvalue       # H0: mean >= +margin
        assert e.p == pytest.approx(max(lower, upper))
        assert e.diff.level == pytest.approx(0.90)
        assert e.equivalent == (e.p < 0.05)                                 # interval inside <=> p < alpha
    assert stats.tost(A, B, 3.0).equivalent and not stats.tost(A, B, 0.5).equivalent
    with pytest.raises(ValueError):
        stats.tost(A, B, 0.0)


def test_tost_single_seed_needs_noise_sd_and_uses_the_normal():
    e = stats.tost({0: 10.2}, {0: 10.0}, 1.0, noise_sd=0.3)
    z = (0.2 + 1.0) / 0.3, (0.2 - 1.0) / 0.3
    assert e.p == pytest.approx(max(st.norm.sf(z[0]), st.norm.cdf(z[1]))) and e.equivalent
    assert math.isnan(stats.tost({0: 10.2}, {0: 10.0}, 1.0).p)
    assert not stats.tost({0: 10.2}, {0: 10.0}, 1.0).equivalent


def test_equivalence_flags():
    worse = stats.tost({s: 0.0 for s in range(4)}, {s: 5.0 + 0.1 * s for s in range(4)}, 1.0)
    assert worse.worse and not worse.non_inferior and not worse.equivalent
    better = stats.tost({s: 5.0 + 0.1 * s for s in range(4)}, {s: 0.0 for s in range(4)}, 1.0)
    assert better.better and better.non_inferior and not better.equivalent


def test_pooled_sd_by_hand():
    # var([1,2,3]) = 1 (df 2), var([2,4]) = 2 (df 1), [5] has no df: sqrt((2*1 + 1*2) / 3)
    p = stats.pooled_sd([[1, 2, 3], [2, 4], [5]])
    assert p.sd == pytest.approx(math.sqrt(4 / 3)) and p.df == 3 and p.groups == 2
    empty = stats.pooled_sd([[1.0], []])
    assert math.isnan(empty.sd) and empty.df == 0


def test_pooled_paired_sd_skips_identical_pairs_and_pools_paired_differences():
    a = {0: 10.0, 1: 12.0, 2: 11.0}
    b = {0: 9.0, 1: 12.0, 2: 9.5}        # a - b = [1, 0, 1.5]
    c = dict(a)                           # the same computation under another name
    p = stats.pooled_paired_sd([[a, b, c]])
    # pairs: a-b [1, 0, 1.5], a-c identical (skipped), b-c [-1, 0, -1.5]: both variances = var([1, 0, 1.5])
    assert p.groups == 2 and p.df == 4
    assert p.sd == pytest.approx(np.std([1, 0, 1.5], ddof=1))
    assert stats.pooled_paired_sd([[a, b, c]], skip_identical=False).groups == 3
    within = stats.pooled_within_sd([a, b])
    assert within.sd == pytest.approx(math.sqrt((np.var(list(a.values()), ddof=1) + np.var(list(b.values()), ddof=1)) / 2))


@pytest.mark.parametrize("x,y", [
    ([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]),
    ([1, 2, 2, 3, 4, 4], [3, 1, 2, 2, 5, 4]),          # ties on both sides
    ([31.1, 31.4, 31.9, 32.9, 33.7, 34.0, 32.2], [15.4, 15.6, 16.5, 17.3, 17.6, 15.8, 8.9]),
    ([0.0, 10.8, 30.2, 31.1, 30.8, 28.7, 25.1], [9.5, 15.8, 16.0, 15.4, 15.2, 11.5, 9.5]),
])
def test_kendall_tau_b_matches_scipy(x, y):
    assert stats.kendall_tau_b(x, y) == pytest.approx(st.kendalltau(x, y, variant="b").statistic)


def test_kendall_tau_b_all_ties_is_nan():
    assert math.isnan(stats.kendall_tau_b([1, 1, 1], [1, 2, 3]))


def _brute_force_p(x, y):
    obs = abs(st.kendalltau(x, y).statistic)
    taus = [abs(st.kendalltau(x, [y[i] for i in perm]).statistic) for perm in itertools.permutations(range(len(y)))]
    return sum(t >= obs - 1e-12 for t in taus) / len(taus)


@pytest.mark.parametrize("x,y", [([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]), ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
                                 ([3, 1, 2, 2, 5], [1, 1, 4, 2, 3]), ([1, 2, 3, 4], [4, 3, 1, 2])])
def test_exact_permutation_p_equals_brute_force(x, y):
    p, how = stats.tau_permutation_p(x, y)
    assert how == "exact" and p == pytest.approx(_brute_force_p(x, y))


def test_random_permutation_p_is_seeded_and_close_to_exact():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=7), rng.normal(size=7)
    exact, how = stats.tau_permutation_p(x, y)
    assert how == "exact"
    p1, how1 = stats.tau_permutation_p(x, y, exact_max=6, n_perm=20_000, seed=1)
    p2, _ = stats.tau_permutation_p(x, y, exact_max=6, n_perm=20_000, seed=1)
    assert how1 == "random" and p1 == p2 and abs(p1 - exact) < 0.02 and 0 < p1 <= 1


def test_tau_gap_excludes_pairs_the_paper_does_not_separate():
    x, y = [10.0, 10.5, 20.0], [2.0, 1.0, 3.0]
    # full tau-b: pairs (0,1) discordant, (0,2), (1,2) concordant -> 1/3; the 0.5 AP pair is dropped at gap 1
    assert stats.kendall_tau_b(x, y) == pytest.approx(1 / 3)
    assert stats.tau_gap(x, y, 1.0) == (pytest.approx(1.0), 2)
    assert stats.tau_gap(x, y, 0.4) == (pytest.approx(1 / 3), 3)
    t, n = stats.tau_gap(x, y, 50.0)
    assert math.isnan(t) and n == 0
    assert stats.tau_gap([1.0, 3.0], [5.0, 5.0], 1.0) == (0.0, 1)         # a tie in ours counts 0


def _rows(seeds=3, rows=6, offsets=(0.0, 3.0, -2.0), noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    paper = np.arange(rows, dtype=float) * 2
    by_seed = [{s: paper[r] + offsets[s % len(offsets)] + rng.normal(0, noise) for s in range(seeds)} for r in range(rows)]
    return list(paper), by_seed


def test_bootstrap_ci_contains_observed_tau_and_is_reproducible():
    paper, by_seed = _rows()
    ours = [np.mean(list(r.values())) for r in by_seed]
    tau = stats.kendall_tau_b(paper, ours)
    lo, hi = stats.tau_bootstrap_ci(paper, by_seed, seed=5)
    assert lo <= tau <= hi and -1 <= lo <= hi <= 1
    assert stats.tau_bootstrap_ci(paper, by_seed, seed=5) == (lo, hi)
    one = [{0: r[0]} for r in by_seed]
    assert all(math.isnan(v) for v in stats.tau_bootstrap_ci(paper, one))


def test_bootstrap_keeps_the_seed_pairing():
    # every row moves by the same large seed offset: resampling seeds jointly never reorders the rows
    paper = [1.0, 2.0, 3.0, 4.0]
    by_seed = [{0: r + 0.0, 1: r + 50.0, 2: r - 30.0} for r in (10.0, 11.0, 12.0, 13.0)]
    assert stats.tau_bootstrap_ci(paper, by_seed) == (pytest.approx(1.0), pytest.approx(1.0))


def test_kendall_summary():
    paper, by_seed = _rows()
    ts = stats.kendall_summary(paper, by_seed)
    ours = [np.mean(list(r.values())) for r in by_seed]
    assert ts.tau == pytest.approx(st.kendalltau(paper, ours).statistic)
    assert ts.p_method == "exact" and ts.rows == 6 and ts.seeds == 3 and ts.ci_low <= ts.tau <= ts.ci_high
    assert (ts.tau_gap1, ts.gap_pairs) == stats.tau_gap(paper, ours, 1.0)
    assert "p = " in ts.text()
    short = stats.kendall_summary([1.0], [{0: 1.0}])
    assert math.isnan(short.tau) and short.text() == "n/a"
