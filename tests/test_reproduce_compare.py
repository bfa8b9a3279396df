"""compare.py on hand-made run stores (no training): matching by hash / overrides + seed, the paired and the
pooled rule, and the one-line answer per table."""

import math

import pytest

from focalbench.reproduce.compare import NOISE_FLOOR, compare, pooled_sd, render, write_comparison
from focalbench.reproduce.runner import RunSpec
from focalbench.reproduce.sweeps import Row, Table
from focalbench.runstore import RunStore

PAPER = {"AP": 30.0, "AP50": 50.0, "AP75": 30.0}
TABLE = Table("1a", "test table", "a claim", tuple(Row(n, (f"loss.alpha={a}",), PAPER)
                                                  for n, a in (("a1", 0.1), ("a2", 0.2), ("a3", 0.3))))
BASE_AP = {"a1": 10.0, "a2": 12.0, "a3": 14.0}
SPREAD = {0: 0.0, 1: 0.6, 2: -0.6}


def _overrides(row, seed):
    return ["profile=smoke", *TABLE.row(row).overrides, f"seed={seed}"]


def _specs(seeds, tag=""):
    return [RunSpec("1a", r.name, s, _overrides(r.name, s), f"{tag}{r.name}s{s}") for r in TABLE.rows for s in seeds]


def _store(root, seeds, shift=None, tag=""):
    store = RunStore(root / "runs")
    for spec in _specs(seeds, tag):
        ap = BASE_AP[spec.row] + SPREAD[spec.seed] + (shift or {}).get(spec.row, 0.0)
        store.put(spec.config_hash, {"status": "ok", "AP": ap, "seed": spec.seed, "config_hash": spec.config_hash,
                                     # what a stored run records: the thread count and tags do not change a result
                                     "overrides": [*spec.overrides, "trainer.num_threads=1", "tags.group=table1a"]})
    return root


def test_copies_are_within_noise_and_plus_five_is_flagged(tmp_path):
    ref = _store(tmp_path / "ref", [0, 1, 2])
    same = _store(tmp_path / "same", [0, 1, 2])
    (t,) = compare([TABLE], _specs([0, 1, 2]), same, ref)
    assert all(r.within and r.method == "paired" and r.diff == 0 for r in t.rows)
    assert t.verdict.startswith("reproduces the reference within noise")

    off = _store(tmp_path / "off", [0, 1, 2], shift={"a2": 5.0})
    (t,) = compare([TABLE], _specs([0, 1, 2]), off, ref)
    bad = [r for r in t.rows if not r.within]
    assert [r.row for r in bad] == ["a2"] and bad[0].diff == pytest.approx(5.0)
    assert bad[0].paired == pytest.approx({0: 5.0, 1: 5.0, 2: 5.0})
    assert t.verdict.startswith("differs from the reference beyond noise in 1 of 3 rows: a2 (+5.0 AP")
    md = render([t], off, ref)
    assert "Rule:" in md and "| a2 |" in md and "**no**" in md


def test_one_seed_uses_the_references_pooled_sd(tmp_path):
    ref = _store(tmp_path / "ref", [0, 1, 2])
    ours = _store(tmp_path / "ours", [0], shift={"a1": 1.2, "a3": 3.0})
    (t,) = compare([TABLE], _specs([0]), ours, ref)
    s = pooled_sd([[BASE_AP[r] + d for d in SPREAD.values()] for r in BASE_AP])
    assert s == pytest.approx(0.6)
    tol = max(2 * s * math.sqrt(1 / 1 + 1 / 3), NOISE_FLOOR)
    by = {r.row: r for r in t.rows}
    assert all(r.method == "pooled" and r.tolerance == pytest.approx(tol) for r in t.rows)
    assert len(by["a1"].ref) == 3                       # the reference's seeds 1 and 2 count in its mean
    assert tol == pytest.approx(1.386, abs=1e-3)
    assert by["a1"].within and not by["a3"].within and by["a2"].within   # +1.2 inside, +3 outside
    assert by["a1"].diff == pytest.approx(1.2)


def test_matched_by_overrides_when_the_config_hash_changed(tmp_path):
    ref = _store(tmp_path / "ref", [0, 1], tag="old-")  # the same rows, run by older code (other hashes)
    ours = _store(tmp_path / "ours", [0, 1])
    (t,) = compare([TABLE], _specs([0, 1]), ours, ref)
    assert all(r.within and r.by_overrides and sorted(r.ref) == [0, 1] for r in t.rows)
    assert "overrides + seed (config hash differs)" in render([t], ours, ref)


def test_extra_overrides_do_not_match_other_configs(tmp_path):
    ref = _store(tmp_path / "ref", [0], tag="old-")
    specs = [RunSpec(s.table, s.row, s.seed, [*s.overrides, "trainer.max_steps=5"], s.config_hash)
             for s in _specs([0])]
    ours = _store(tmp_path / "ours", [0])
    (t,) = compare([TABLE], specs, ours, ref)
    assert all(r.within is None and not r.ref for r in t.rows)
    assert t.verdict.startswith("not compared")


def test_no_reference_runs_is_one_line(tmp_path):
    ours = _store(tmp_path / "ours" / "smoke", [0])
    lines = write_comparison([TABLE], _specs([0]), ours, tmp_path / "results" / "smoke")
    assert len(lines) == 1 and "no finished runs for profile smoke" in lines[0]
    assert (ours / "comparison.md").read_text().strip() == lines[0]
