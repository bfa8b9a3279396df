"""A fresh clone's reproduction trains into the user's location (not the committed reference), ends with
comparison.md against the reference, and --update-reference is the only way to write the reference.
Smoke profile, in-process, a temporary reference tree."""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from focalbench.reproduce.__main__ import DEFAULT_RESULTS, UsageError, resolve_locations

ROOT = Path(__file__).resolve().parents[1]


def _reproduce(*args, timeout=600):
    cmd = [sys.executable, "-m", "focalbench.reproduce", "--profile", "smoke", "--no-progress", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline"})


def _tree(path: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(path.rglob("*")) if p.is_file()}


def _ns(**kw):
    return argparse.Namespace(**{"profile": "cpu", "results": None, "reference": "results",
                                 "update_reference": False, **kw})


def test_locations():
    assert resolve_locations(_ns()) == (Path(DEFAULT_RESULTS) / "cpu", Path("results/cpu"))
    assert resolve_locations(_ns(results="/tmp/x")) == (Path("/tmp/x/cpu"), Path("results/cpu"))
    assert resolve_locations(_ns(update_reference=True)) == (Path("results/cpu"), Path("results/cpu"))
    with pytest.raises(UsageError, match="only with --update-reference"):
        resolve_locations(_ns(results="results"))
    with pytest.raises(UsageError, match="another location"):
        resolve_locations(_ns(results="/tmp/x", update_reference=True))
    # git-ignored: a reproduction never shows up as a change to the committed tree
    if (ROOT / ".git").exists():
        assert subprocess.run(["git", "check-ignore", "-q", f"{DEFAULT_RESULTS}/cpu/runs/x.json"],
                              cwd=ROOT).returncode == 0


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("fresh")
    ref, work = base / "ref", base / "work"
    sel = ["--tables", "1a", "--seeds", "1", "--work-dir", str(work), "--reference", str(ref)]
    up = _reproduce(*sel, "--update-reference")
    assert up.returncode == 0, up.stderr[-3000:]
    before = _tree(ref / "smoke")
    fresh = _reproduce(*sel, "--results", str(base / "mine"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    return base, sel, up, fresh, before


def test_update_reference_writes_the_reference(trees):
    base, _, up, _, _ = trees
    out = base / "ref" / "smoke"
    assert len(list((out / "runs").glob("*.json"))) == 7
    assert (out / "report.md").exists() and (out / "table1a.csv").exists() and (out / "studies.journal").exists()
    assert not (out / "comparison.md").exists() and "is the reference: no comparison" in up.stdout
    assert up.stdout.count("done  1a |") == 7


def test_fresh_location_trains_and_leaves_the_reference_alone(trees):
    base, _, _, fresh, before = trees
    mine = base / "mine" / "smoke"
    assert len(list((mine / "runs").glob("*.json"))) == 7           # trained, not found in the reference
    assert fresh.stdout.count("done  1a |") == 7 and "start 1a | CE a=.10 | seed 0: in this process" in fresh.stdout
    assert "7/7 runs" in fresh.stdout and "ETA" in fresh.stdout
    calls = [json.loads(x) for x in (mine / "invocations.jsonl").read_text().splitlines()]
    assert [c["runs_finished_meanwhile"] for c in calls] == [7]
    assert _tree(base / "ref" / "smoke") == before                    # not one byte or mtime changed
    # the same seeds, deterministic training: every row equals the reference's
    cmp = (mine / "comparison.md").read_text()
    assert "Rule:" in cmp and "reproduces the reference within noise (7 of 7 rows)" in cmp
    assert "table 1a vs reference: reproduces the reference within noise" in fresh.stdout


def test_comparison_flags_a_row_altered_by_five_ap(trees):
    base, sel, _, _, before = trees
    copy = base / "copy" / "smoke"
    shutil.copytree(base / "ref" / "smoke" / "runs", copy / "runs")
    proc = _reproduce(*sel, "--results", str(base / "copy"), "--report-only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reproduces the reference within noise (7 of 7 rows)" in (copy / "comparison.md").read_text()

    manifest = json.loads((copy / "manifest.json").read_text())
    for e in manifest:
        if e["row"] == "CE a=.25":
            p = copy / "runs" / f"{e['config_hash']}.json"
            m = json.loads(p.read_text())
            p.write_text(json.dumps({**m, "AP": m["AP"] + 5.0}))
    proc = _reproduce(*sel, "--results", str(base / "copy"), "--report-only")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmp = (copy / "comparison.md").read_text()
    assert "differs from the reference beyond noise in 1 of 7 rows: CE a=.25 (+5.0 AP" in cmp
    assert "table 1a vs reference: differs from the reference beyond noise" in proc.stdout
    assert _tree(base / "ref" / "smoke") == before


def test_the_reference_is_not_written_without_the_flag(tmp_path):
    proc = _reproduce("--tables", "1a", "--results", str(tmp_path), "--reference", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "only with --update-reference" in proc.stderr
    assert not (tmp_path / "smoke").exists()
