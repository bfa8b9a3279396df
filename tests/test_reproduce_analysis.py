"""Verdict rules, noise estimates, Kendall's tau, sweep-file loading, figures and report sections of the
paper-table reproduction (no training)."""

import math

import numpy as np
import pytest

from focalbench.reproduce import figures
from focalbench.reproduce.analysis import (RULES, RowResult, baseline_differences, choose_noise_sd, compare,
                                           describe_rule, kendall_tau, noise_estimate, table_verdict, tau_stats)
from focalbench.reproduce.report import restore_missing_sizes, table_csv, table_markdown
from focalbench.reproduce.sweeps import DEFAULT_TABLES, FIGURE_KINDS, TABLE_FILES, SweepFileError, load_table

OFFSETS = (0.0, 20.0, 8.0)     # a large per-seed offset shared by every row (same init, same batches)


def row(name, paper_ap, aps, status=None, **extra):
    """A row with one run per seed 0..n-1; ``status``: per-seed statuses (default all ok)."""
    status = status or ["ok"] * len(aps)
    return RowResult(name, {"AP": paper_ap, "AP50": 0, "AP75": 0},
                     [{"AP": a, "AP50": a, "AP75": a, "seed": s, "status": st}
                      for s, (a, st) in enumerate(zip(aps, status))], extra)


def seeded(base, offsets=OFFSETS, noise=0.05, rng=None):
    """Per-seed APs: ``base + offset_s + small noise``."""
    rng = rng or np.random.default_rng(0)
    return [base + o + rng.normal(0, noise) for o in offsets]


def rows_for(tid, base_aps, **kw):
    """Every row of table ``tid``, row i at ``base_aps[i]`` per seed (3 seeds, shared offsets)."""
    t = load_table(tid)
    rng = np.random.default_rng(1)
    return t, {r.name: row(r.name, r.paper["AP"], seeded(b, rng=rng, **kw), **r.extra)
               for r, b in zip(t.rows, base_aps)}


# ---------------------------------------------------------------------------------------- sweep files

@pytest.mark.parametrize("tid", list(TABLE_FILES))
def test_sweep_files_load_with_paper_numbers_rule_and_figure(tid):
    t = load_table(tid)
    assert t.rows and all(set(r.paper) >= {"AP", "AP50", "AP75"} for r in t.rows)
    assert all(any(o.startswith("loss=") for o in r.overrides) for r in t.rows)
    assert t.verdict and t.verdict["rule"] in RULES and t.figure in FIGURE_KINDS
    assert t.baseline_row in [r.name for r in t.rows]
    assert describe_rule(t)


def test_tables_name_the_rules_of_their_claims():
    kinds = {tid: (load_table(tid).verdict["rule"], load_table(tid).figure) for tid in TABLE_FILES}
    assert kinds == {"1a": ("collapse_and_peak", "line"), "1b": ("beats_best", "line"),
                     "1c": ("ratios_and_scales", "anchors"), "1d": ("beats_best", "bars"), "3": ("equivalent", "bars"),
                     "1e": ("larger_is_better_and_slower", "speed")}
    assert load_table("1a").figure_file == "table1a_ap_vs_alpha" and load_table("1c").figure_file == "table1c_anchors"
    assert load_table("1b").verdict["others"] == {"override": "loss=alpha_ce", "tables": ["1a"]}


def test_paper_numbers_match_reference_cells():
    # spot checks against the paper (Table 1a .75, 1b g=5, 1c 2/3, 1d last OHEM 1:3 AP75 = 25.8)
    assert load_table("1a").row("CE a=.75").paper == {"AP": 31.1, "AP50": 49.4, "AP75": 33.0}
    assert load_table("1b").row("g=5 a=.25").paper["AP"] == 32.2
    assert load_table("1c").row("2 sc / 3 ar").paper["AP"] == 34.2
    assert load_table("1d").row("OHEM 1:3 512 nms.5").paper["AP75"] == 25.8
    assert load_table("1d").deep and not load_table("1a").deep
    assert len(load_table("1d").rows) == 10 and DEFAULT_TABLES == ("1a", "1b", "1c", "1d")


def test_unknown_table_is_one_line_error():
    with pytest.raises(SweepFileError, match="unknown table '9z'"):
        load_table("9z")


def test_bad_sweep_file_names_file_and_key(tmp_path):
    (tmp_path / "table1a_alpha.yaml").write_text("table: 1a\ntitle: t\nclaim: c\nrows:\n  - {name: a, overrides: []}\n")
    with pytest.raises(SweepFileError, match=r"table1a_alpha.yaml: rows\[0\] misses key 'paper'"):
        load_table("1a", tmp_path)


@pytest.mark.parametrize("verdict,msg", [
    ("{rule: nope}", "unknown rule 'nope'"),
    ("{rule: beats_best, winner: a}", "needs others"),
    ("{rule: beats_best, winner: zz, others: {prefix: a}}", "winner: 'zz' is not a row"),
    ("{rule: equivalent, ref: a, rows: {prefix: b}, margin: 0}", "margin must be > 0"),
    ("{rule: beats_best, winner: a, others: {colour: red}}", "others must be a mapping of"),
])
def test_bad_verdict_rule_is_a_sweep_file_error(tmp_path, verdict, msg):
    (tmp_path / "table1d_ohem.yaml").write_text(
        f"table: 1d\ntitle: t\nclaim: c\nverdict: {verdict}\nrows:\n"
        "  - {name: a, overrides: [loss=focal], paper: {AP: 1, AP50: 1, AP75: 1}}\n"
        "  - {name: b, overrides: [loss=ohem], paper: {AP: 1, AP50: 1, AP75: 1}}\n")
    with pytest.raises(SweepFileError, match=msg):
        load_table("1d", tmp_path)


# -------------------------------------------------------------------------------------------- rows

def test_diverged_runs_are_kept_apart_never_ap_zero():
    r = row("x", 30, [10.0, 0.0, 12.0], status=["ok", "diverged", "ok"])
    assert r.by_seed() == {0: 10.0, 2: 12.0} and r.mean() == pytest.approx(11.0)
    assert r.diverged_seeds == [1] and r.complete and r.ran
    gone = row("y", 30, [0.0, 0.0], status=["diverged", "diverged"])
    assert not gone.complete and gone.ran and math.isnan(gone.mean())
    assert math.isnan(row("z", 1, [5.0]).std())


def test_size_ap_minus_one_is_left_out():
    r = RowResult("x", {"AP": 1, "AP50": 1, "AP75": 1}, [{"AP": 5.0, "APl": -1.0, "APs": 2.0, "seed": 0}])
    assert r.by_seed("APl") == {} and math.isnan(r.mean("APl")) and r.mean("APs") == 2.0


def test_restore_missing_sizes_turns_an_all_zero_size_into_na():
    rs = {"t": {"a": RowResult("a", {"AP": 1}, [{"AP": 5.0, "APs": 1.0, "APm": 0.0, "APl": 0.0, "seed": 0}]),
                "b": RowResult("b", {"AP": 1}, [{"AP": 6.0, "APs": 0.0, "APm": 2.0, "APl": 0.0, "seed": 0}])}}
    assert restore_missing_sizes(rs) == ["APl"]              # APs, APm are 0 in one run only: measured
    assert math.isnan(rs["t"]["a"].mean("APl")) and rs["t"]["a"].mean("APm") == 0.0
    zero = {"t": {"a": RowResult("a", {"AP": 1}, [{"AP": 0.0, "APl": 0.0, "seed": 0}])}}
    assert restore_missing_sizes(zero) == []                 # nothing detected at all: no evidence either way


# ------------------------------------------------------------------------------------------- verdicts

def test_compare_is_paired_by_seed():
    a = row("a", 0, seeded(10.0))
    b = row("b", 0, seeded(9.0))
    assert compare(a, b) == 1 and compare(b, a) == -1        # 1 AP apart, offsets of 35 AP cancel
    c = row("c", 0, [10.0, 30.0, 5.0])
    d = row("d", 0, [12.0, 26.0, 7.0])                      # differences -2, +4, -2: interval holds 0
    assert compare(c, d) == 0


def test_beats_best_supported_when_fl_beats_every_ohem_by_2ap_at_3_seeds():
    t = load_table("1d")
    base = [10.0] * 9 + [12.0]                               # FL last, 2 AP above every OHEM
    t, rows = rows_for("1d", base)
    v = table_verdict(t, rows)
    assert v.verdict == "supported", v.detail
    assert v.deciding and v.deciding[0].a == "FL" and v.deciding[0].diff.low > 0


def test_large_shared_seed_offset_does_not_break_a_paired_verdict():
    t, rows = rows_for("1d", [10.0] * 9 + [12.0], offsets=(0.0, 40.0, 75.0))
    # unpaired, the seed spread (sd ~35 AP) would swamp a 2 AP difference; paired, it cancels
    assert np.std(rows["FL"].values(), ddof=1) > 30
    assert table_verdict(t, rows).verdict == "supported"


def test_beats_best_contradicted_and_inconclusive():
    t, rows = rows_for("1d", [10.0] * 8 + [14.0, 12.0])       # the last OHEM row beats FL by 2 AP
    v = table_verdict(t, rows)
    assert v.verdict == "contradicted" and v.deciding[0].b == "OHEM 1:3 512 nms.5" and v.deciding[0].diff.high < 0
    rows["OHEM 1:3 512 nms.5"] = row("OHEM 1:3 512 nms.5", 24.0, [12.0, 30.0, 9.0])  # FL - it: +1, +2, -1
    rows["FL"] = row("FL", 36.0, [13.0, 32.0, 8.0])
    assert table_verdict(t, rows).verdict == "inconclusive"


def test_diverged_row_is_not_counted_as_ap_zero():
    t, rows = rows_for("1d", [10.0] * 9 + [12.0])
    rows["OHEM 128 nms.7"] = row("OHEM 128 nms.7", 31.1, [0.0] * 3, status=["diverged"] * 3)
    v = table_verdict(t, rows)
    assert v.verdict == "supported" and "diverged at every seed, not compared: OHEM 128 nms.7" in v.detail
    assert all(c.b != "OHEM 128 nms.7" for c in v.deciding)
    # the winner diverged: no AP, so no win either (not "FL = 0 AP loses")
    rows["FL"] = row("FL", 36.0, [0.0] * 3, status=["diverged"] * 3)
    assert table_verdict(t, rows).verdict == "inconclusive"


def test_beats_best_draws_the_alpha_ce_rows_of_table_1a():
    t1b, rows1b = rows_for("1b", [10.0, 10.5, 11.0, 11.5, 11.8, 12.0, 9.0])   # g=2 best of 1b, +2 over g=0
    assert table_verdict(t1b, rows1b).verdict == "supported"
    t1a, rows1a = rows_for("1a", [2.0, 8.0, 14.0, 10.0, 9.5, 9.0, 8.0])       # alpha=.50 beats FL by 2 AP
    v = table_verdict(t1b, rows1b, run_set={"1a": (t1a, rows1a)})
    assert v.verdict == "contradicted" and v.deciding[0].b == "CE a=.50"


def test_single_seed_needs_a_noise_sd():
    t = load_table("1d")
    rows = {r.name: row(r.name, r.paper["AP"], [8.0]) for r in t.rows}
    rows["FL"] = row("FL", 36.0, [12.0])
    assert table_verdict(t, rows).verdict == "inconclusive"              # one seed, no noise sd
    assert table_verdict(t, rows, noise_sd=1.0).verdict == "supported"   # 4 AP > 1.96 * 1
    assert table_verdict(t, rows, noise_sd=3.0).verdict == "inconclusive"


def test_collapse_and_peak():
    t, rows = rows_for("1a", [0.5, 6.0, 9.0, 10.0, 9.5, 8.0, 7.0])
    v = table_verdict(t, rows)
    assert v.verdict == "supported" and v.parts == {"collapse": "holds", "peak": "holds"}
    t, rows = rows_for("1a", [9.0, 3.0, 9.5, 10.0, 9.5, 8.0, 7.0])        # alpha=.10 beats .25 beyond noise
    v = table_verdict(t, rows)
    assert v.verdict == "contradicted" and v.parts["collapse"] == "fails"
    t, rows = rows_for("1a", [0.5, 6.0, 9.0, 10.0, 9.5, 8.0, 14.0])       # best alpha .999, 4 AP over .75
    v = table_verdict(t, rows)
    assert v.verdict == "contradicted" and v.parts == {"collapse": "holds", "peak": "fails"}
    rows["CE a=.10"] = row("CE a=.10", 0.0, [0.0] * 3, status=["diverged"] * 3)
    assert table_verdict(t, rows).parts["collapse"] == "holds"            # diverged at every seed: collapsed


def test_ratios_and_scales():
    # rows: 1/1, 2/1, 3/1, 1/3, 2/3, 3/3, 4/3 (#sc / #ar)
    t, rows = rows_for("1c", [5.0, 8.0, 8.0, 7.0, 11.0, 11.0, 10.0])
    v = table_verdict(t, rows)
    assert v.verdict == "supported" and v.parts == {"more ratios help": "holds", "best scales": "holds"}
    t, rows = rows_for("1c", [5.0, 8.0, 8.0, 5.0, 11.0, 11.0, 10.0])     # no gain at 1 scale, +3 at 2 and 3
    v = table_verdict(t, rows)
    assert v.verdict == "supported" and v.deciding[0].diff.low > 0       # a win leads, not the non-effect
    t, rows = rows_for("1c", [7.0, 11.0, 11.0, 5.0, 8.0, 8.0, 7.5])       # 3 ratios worse at every scale
    assert table_verdict(t, rows).parts["more ratios help"] == "fails"
    t, rows = rows_for("1c", [5.0, 8.0, 8.0, 7.0, 10.0, 10.0, 13.0])      # 4 scales clearly best
    v = table_verdict(t, rows)
    assert v.parts["best scales"] == "fails" and v.verdict == "contradicted"


def test_equivalent_supported_inconclusive_contradicted():
    t, rows = rows_for("3", [10.0, 13.0, 13.1, 12.9])                     # FL* within 0.1 AP of FL, tiny noise
    assert table_verdict(t, rows).verdict == "supported"
    wide = {"FL g=2": [13.0, 16.0, 10.0], "FL* g=2 b=1": [10.0, 19.0, 12.0], "FL* g=4 b=0": [16.0, 14.0, 8.0]}
    for name, aps in wide.items():                                        # same means, paired sd ~3 AP
        rows[name] = row(name, 34.0, aps)
    v = table_verdict(t, rows)
    assert v.verdict == "inconclusive" and all(not c.equivalence.equivalent for c in v.deciding)
    t, rows = rows_for("3", [10.0, 13.0, 13.0, 9.0])                      # FL* g=4 is 4 AP worse
    v = table_verdict(t, rows)
    assert v.verdict == "contradicted" and v.deciding[0].a == "FL* g=4 b=0"


def test_not_run_when_rows_missing():
    t = load_table("1c")
    rows = {r.name: RowResult(r.name, r.paper, [], r.extra) for r in t.rows}
    assert table_verdict(t, rows).verdict == "not run"


# ---------------------------------------------------------------------------------------- noise, tau

def test_noise_estimate_and_choice():
    t, rows = rows_for("3", [10.0, 13.0, 13.0, 9.0], noise=0.5)
    t1a, rows1a = rows_for("1a", [2.0, 8.0, 14.0, 10.0, 9.5, 9.0, 8.0], noise=0.5)
    results = {"3": rows, "1a": rows1a}
    est = noise_estimate(results)
    assert est.paired.groups == 6 + 21 and est.paired.df == 2 * (6 + 21)
    assert 0.3 < est.paired.sd < 1.2 < est.within.sd                     # within-row sd carries the offsets
    choice = choose_noise_sd(results, profile_noise_sd=9.9)
    assert choice.sd == pytest.approx(est.paired.sd) and "measured" in choice.source
    single = {"3": {n: row(n, 1, [v]) for n, v in zip("abc", (1.0, 2.0, 4.0))}}
    assert choose_noise_sd(single, 0.7).sd == 0.7
    assert choose_noise_sd(single, None).sd is None


def test_noise_estimate_counts_a_shared_run_once():
    a = RowResult("a", {"AP": 1}, [{"AP": v, "seed": s, "config_hash": f"a{s}"} for s, v in enumerate([1.0, 2.0, 4.0])])
    b = RowResult("b", {"AP": 1}, [{"AP": v, "seed": s, "config_hash": f"b{s}"} for s, v in enumerate([0.0, 2.0, 1.0])])
    a2 = RowResult("a again", {"AP": 1}, [dict(r) for r in a.runs])
    est = noise_estimate({"x": {"a": a, "b": b}, "y": {"a": a2, "b": b}})
    assert est.paired.groups == 1 and est.within.groups == 2


def test_kendall_tau_perfect_and_reversed():
    rows = [row(str(i), p, [o]) for i, (p, o) in enumerate([(1, 1), (2, 2), (3, 3)])]
    assert kendall_tau(rows) == pytest.approx(1.0)
    rows = [row(str(i), p, [o]) for i, (p, o) in enumerate([(1, 3), (2, 2), (3, 1)])]
    assert kendall_tau(rows) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([row("x", 1, [1])]))


def test_tau_stats_leaves_diverged_rows_out():
    rows = [row(str(i), p, seeded(o)) for i, (p, o) in enumerate([(1, 1), (2, 2), (3, 3), (4, 4)])]
    rows.append(row("gone", 5, [0.0] * 3, status=["diverged"] * 3))
    ts = tau_stats(rows)
    assert ts.rows == 4 and ts.tau == pytest.approx(1.0) and ts.seeds == 3 and ts.p == pytest.approx(2 / 24)


# -------------------------------------------------------------------------------------- figures, report

def test_baseline_differences_are_paired():
    t, rows = rows_for("3", [10.0, 13.0, 13.5, 12.0])
    by = {d.name: d for d in baseline_differences(t, rows)}
    assert set(by) == {r.name for r in t.rows} and t.baseline_row == "FL g=2"
    assert by["FL g=2"].diff.mean == 0 and by["CE"].paper == pytest.approx(31.1 - 34.0)
    assert by["FL* g=2 b=1"].diff.mean == pytest.approx(0.5, abs=0.2) and by["FL* g=2 b=1"].diff.n == 3


@pytest.mark.parametrize("tid", list(TABLE_FILES))
def test_every_table_figure_is_drawn_by_its_kind(tmp_path, tid):
    t = load_table(tid)
    _, rows = rows_for(tid, list(np.linspace(5, 12, len(t.rows))))
    first = t.rows[0].name if t.rows[0].name != t.baseline_row else t.rows[1].name
    rows[first] = row(first, 1.0, [0.0] * 3, status=["diverged"] * 3, **t.rows[0].extra)
    if t.figure == "speed":  # AP against inference time: untimed runs draw nothing
        assert figures.table_figure(t, rows, tmp_path / "untimed") is None
        for i, r in enumerate(rows.values()):
            for run in r.runs:
                run["inference_ms_per_image"] = 2.0 * (i + 1)
    path = figures.table_figure(t, rows, tmp_path, noise_sd=1.0)
    assert path == tmp_path / f"{t.figure_file}.png" and path.stat().st_size > 10_000
    if t.figure == "speed":
        return
    rows[t.baseline_row] = row(t.baseline_row, 1.0, [0.0] * 3, status=["diverged"] * 3)
    assert figures.table_figure(t, rows, tmp_path / "none") is None       # no baseline AP: nothing to plot


def test_table_markdown_lists_seeds_diverged_runs_and_the_deciding_difference():
    t, rows = rows_for("1d", [10.0] * 9 + [12.0])
    rows["OHEM 128 nms.7"] = row("OHEM 128 nms.7", 31.1, [5.0, 0.0, 6.0], status=["ok", "diverged", "ok"])
    for r in rows.values():
        for run in r.runs:
            run["APl"] = -1.0
    v = table_verdict(t, rows)
    md = table_markdown(t, rows, tau_stats(list(rows.values())), v)
    assert "Diverged runs" in md and "OHEM 128 nms.7 (seed 1)" in md and "diverged: s1" in md
    assert "s0: 5.0, s2: 6.0" in md and "/ n/a |" in md
    assert f"→ **{v.verdict}**" in md and v.deciding[0].text() in md and "Rule (`beats_best`)" in md
    assert "permutation p" in md and "bootstrap CI over seeds" in md
    csv = table_csv(t, rows)
    assert csv.count("\n") == 11 and ",1," in csv.splitlines()[1]        # diverged seed 1 listed apart
    assert "OHEM's NMS" not in md                                          # no run recorded it
    for i, r in enumerate(rows["OHEM 128 nms.5"].runs):
        r["ohem_nms_removed"] = 0.6 + 0.02 * i
    md = table_markdown(t, rows, tau_stats(list(rows.values())), v)
    assert "that it removed" in md and "OHEM 128 nms.5 0.62 (0.60-0.64)" in md and "OHEM 256" not in md.split(
        "that it removed")[1].split("\n")[0]


def test_new_table_is_one_yaml_file(tmp_path):
    """A table of an existing kind needs only its YAML: ids are read from the files, not from the code."""
    import shutil

    from focalbench.reproduce.sweeps import SWEEPS_DIR, table_files

    for f in SWEEPS_DIR.glob("table*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    text = (SWEEPS_DIR / "table3_flstar.yaml").read_text().replace("table: \"3\"", "table: \"9\"", 1)
    assert "table: \"9\"" in text
    (tmp_path / "table9_mine.yaml").write_text(text)
    assert table_files(tmp_path)["9"] == "table9_mine.yaml"
    t = load_table("9", tmp_path)
    assert t.id == "9" and [r.name for r in t.rows] == [r.name for r in load_table("3").rows]
    # two files claiming one id: one line naming both
    (tmp_path / "table9b_dup.yaml").write_text(text)
    with pytest.raises(SweepFileError, match="table9b_dup.yaml: table '9' is also defined in table9_mine.yaml"):
        table_files(tmp_path)


# ---------------------------------------------------------------------------------------- Table 1e (speed)
def _speed_rows(aps, ms):
    t = load_table("1e")
    out = {}
    for r, base, m in zip(t.rows, aps, ms):
        rr = row(r.name, r.paper["AP"], seeded(base), **r.extra)
        for s, run in enumerate(rr.runs):
            run["inference_ms_per_image"] = m[s] if isinstance(m, (list, tuple)) else m
            run["inference"] = {"ms_per_image": run["inference_ms_per_image"], "batch_size": 1, "torch_threads": 1}
        out[r.name] = rr
    return t, out


def test_speed_rule_needs_more_accurate_and_slower(tmp_path):
    from focalbench.reproduce.figures import table_figure

    t, rows = _speed_rows([5.0, 8.0, 10.0], [2.0, 6.0, 20.0])
    v = table_verdict(t, rows)
    assert v.verdict == "supported" and v.parts == {"more accurate": "holds", "slower": "holds"}
    assert "median ms per image: 64 px 2.00, 128 px 6.00, 256 px 20.00" in v.detail
    assert table_figure(t, rows, tmp_path).name == "table1e.png"
    # a larger scale that is less accurate: contradicted
    t, rows = _speed_rows([5.0, 8.0, 6.0], [2.0, 6.0, 20.0])
    assert table_verdict(t, rows).parts["more accurate"] == "fails"
    # a larger scale timed faster at one seed: the "slower" part fails
    t, rows = _speed_rows([5.0, 8.0, 10.0], [2.0, [6.0, 6.0, 6.0], [20.0, 5.0, 20.0]])
    v = table_verdict(t, rows)
    assert v.verdict == "contradicted" and v.parts["slower"] == "fails" and "256 px vs 128 px" in v.detail
    # runs made before inference was timed: the time part is unknown, never guessed
    t, rows = _speed_rows([5.0, 8.0, 10.0], [None, None, None])
    for r in rows.values():
        for run in r.runs:
            run.pop("inference_ms_per_image")
    v = table_verdict(t, rows)
    assert v.verdict == "inconclusive" and v.parts["slower"] == "unknown"
