"""The imbalance study end to end on a tiny grid: Optuna journal study, run cache, resume, report."""

from __future__ import annotations

import yaml

from focalbench.classify import run as run_module
from focalbench.classify import study
from focalbench.classify.report import beats


def _tiny_sweep(tmp_path):
    sweep = yaml.safe_load(study.SWEEP.read_text())
    sweep["profiles"]["smoke"] = {"ratios": [1, 20], "seeds": 1, "search_trials": 2}
    path = tmp_path / "imbalance.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_smoke_study_end_to_end_and_resume(tmp_path, monkeypatch):
    sweep, res = _tiny_sweep(tmp_path), tmp_path / "results"
    args = ["--profile", "smoke", "--results", str(res), "--sweep", str(sweep), "--workers", "1", "--no-progress"]
    assert study.main(args) == 0
    out = res / "smoke" / "imbalance"
    for name in ("table.md", "table.csv", "ap_vs_ratio.png", "ece_vs_ratio.png", "report.md", "study.journal"):
        assert (out / name).is_file(), name
    runs = set((out / "runs").glob("*.json"))
    # 2 ratios x (ce, alpha_ce, focal + 1 new inner run + the tuned summary): focal is the first inner trial
    assert len(runs) == 2 * 5
    csv_rows = (out / "table.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 2 * 4 and "1:20" in (out / "table.md").read_text()
    report = (out / "report.md").read_text()
    assert "Verdict" in report and "not tested" in report  # no ratio >= 1000 in this grid

    # Re-running trains nothing: every trial is complete and cached.
    def no_training(*a, **k):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(run_module, "run", no_training)
    assert study.main(args) == 0
    assert set((out / "runs").glob("*.json")) == runs
    monkeypatch.undo()

    # A second seed: only the missing trials run (5 new files), the first seed's are reused.
    assert study.main(args + ["--seeds", "2"]) == 0
    assert len(set((out / "runs").glob("*.json")) - runs) == 2 * 5
    trials = study.prepare(study.load_sweep(sweep, "smoke") | {"seeds": 2}, "tabular", out)
    assert trials[1] == 0  # nothing left to do
    assert len(trials[0].get_trials()) == 2 * 4 * 2


def test_verdict_rule_is_the_paired_t_interval_of_the_paper_tables():
    import numpy as np

    from focalbench.stats import paired_diff

    win, diff, spread, _ = beats(np.array([0.8, 0.82, 0.81]), np.array([0.5, 0.52, 0.49]))
    assert win and diff > spread
    win, *_ = beats(np.array([0.8, 0.5, 0.9]), np.array([0.6, 0.7, 0.65]))
    assert not win  # a mean gain inside the spread of the paired differences is noise
    # paired: a consistent gain on tasks of very different difficulty counts
    win, diff, spread, _ = beats(np.array([0.86, 0.15, 0.07]), np.array([0.80, 0.10, 0.02]))
    assert win and spread < diff
    # d = .02, .10, .05: mean above the sd (the old rule's win) but the 95% t interval (t = 4.30 at 2 df)
    # reaches below 0: not a win, as in the paper tables' verdicts
    a, b = np.array([0.86, 0.15, 0.07]), np.array([0.84, 0.05, 0.02])
    win, diff, spread, p = beats(a, b)
    assert diff > spread and not win
    ref = paired_diff(dict(enumerate(a)), dict(enumerate(b)))
    assert ref.low < 0 < ref.high and p == ref.p


def test_the_imbalance_study_shares_the_engines_stale_rule(tmp_path):
    """One claim, heartbeat and stale rule for every study of cached runs: a trial whose worker lives is left
    RUNNING (the old rule failed every RUNNING trial, so a second driver killed the first one's work); a trial
    whose local worker is dead is failed and its point queued again."""
    import socket

    from optuna.trial import TrialState

    from focalbench.classify.plan import storage_for, storage_url
    from focalbench.sweeps.engine import claim

    sweep = study.load_sweep(_tiny_sweep(tmp_path), "smoke")
    out = tmp_path / "imb"
    s, todo = study.prepare(sweep, "tabular", out)
    assert todo == len(s.get_trials()) == 2 * 4
    storage, url = storage_for(out), storage_url(out)
    alive = claim(url, s, storage)  # this process: alive
    dead = claim(url, s, storage)
    storage.set_trial_user_attr(dead._trial_id, "worker", f"{socket.gethostname()}:999999999")
    s, todo = study.prepare(sweep, "tabular", out)
    states = {t.number: t.state for t in s.get_trials()}
    assert states[alive.number] == TrialState.RUNNING and states[dead.number] == TrialState.FAIL
    assert todo == 2 * 4 and len(s.get_trials()) == 2 * 4 + 1  # the dead one's point is waiting again
