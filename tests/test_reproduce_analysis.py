"""Verdicts, Kendall's tau and sweep-file loading of the paper-table reproduction (no training)."""

import math

import pytest

from focalbench.reproduce.analysis import RowResult, compare, kendall_tau, table_verdict
from focalbench.reproduce.sweeps import DEFAULT_TABLES, TABLE_FILES, SweepFileError, load_table


def row(name, paper_ap, aps, **extra):
    return RowResult(name, {"AP": paper_ap, "AP50": 0, "AP75": 0},
                     [{"AP": a, "status": "ok"} for a in aps], extra)


@pytest.mark.parametrize("tid", list(TABLE_FILES))
def test_sweep_files_load_and_carry_paper_numbers(tid):
    t = load_table(tid)
    assert t.rows and all(set(r.paper) >= {"AP", "AP50", "AP75"} for r in t.rows)
    assert all(any(o.startswith("loss=") for o in r.overrides) for r in t.rows)


def test_paper_numbers_match_reference_cells():
    # spot checks against shared/paper_tables.md (Table 1a .75, 1b g=5, 1c 2/3, 1d last OHEM 1:3 AP75 = 25.8)
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


def test_compare_uses_seed_spread_and_floor():
    a, b = row("a", 0, [10.0, 10.2]), row("b", 0, [9.5, 9.7])
    assert compare(a, b, floor=1.0) == 0          # 0.5 apart, inside the 1.0 floor
    assert compare(a, b, floor=0.1) == 1          # beyond a small floor and the (tiny) spread
    noisy = row("n", 0, [5.0, 15.0])              # sd 7.1 dominates the floor
    assert compare(noisy, b, floor=0.1) == 0


def test_kendall_tau_perfect_and_reversed():
    rows = [row(str(i), p, [o]) for i, (p, o) in enumerate([(1, 1), (2, 2), (3, 3)])]
    assert kendall_tau(rows) == pytest.approx(1.0)
    rows = [row(str(i), p, [o]) for i, (p, o) in enumerate([(1, 3), (2, 2), (3, 1)])]
    assert kendall_tau(rows) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([row("x", 1, [1])]))


def _table1a(aps):
    t = load_table("1a")
    return t, {r.name: row(r.name, r.paper["AP"], [aps[i]], x=r.extra["x"]) for i, r in enumerate(t.rows)}


def test_verdict_1a_supported_when_low_alpha_collapses_and_best_near_075():
    t, rows = _table1a([0.5, 6.0, 9.0, 10.0, 9.5, 8.0, 7.0])
    assert table_verdict(t, rows).verdict == "supported"


def test_verdict_1a_contradicted_when_alpha_010_does_fine():
    t, rows = _table1a([9.0, 9.2, 9.5, 10.0, 9.5, 8.0, 7.0])
    assert table_verdict(t, rows).verdict == "contradicted"


def test_verdict_1b_and_1d_follow_the_margin():
    t = load_table("1b")
    rows = {r.name: row(r.name, r.paper["AP"], [8.0]) for r in t.rows}
    rows["g=2 a=.25"] = row("g=2 a=.25", 34.0, [12.0])
    assert table_verdict(t, rows).verdict == "supported"
    rows["g=2 a=.25"] = row("g=2 a=.25", 34.0, [8.5])
    assert table_verdict(t, rows).verdict == "inconclusive"
    t = load_table("1d")
    rows = {r.name: row(r.name, r.paper["AP"], [10.0]) for r in t.rows}
    rows["FL"] = row("FL", 36.0, [7.0])
    assert table_verdict(t, rows).verdict == "contradicted"


def test_verdict_not_run_when_rows_missing():
    t = load_table("1c")
    rows = {r.name: RowResult(r.name, r.paper, [], r.extra) for r in t.rows}
    assert table_verdict(t, rows).verdict == "not run"
