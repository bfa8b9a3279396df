"""The search report: pruning savings from the trials' per-epoch reports, table and plots written."""

import optuna
from optuna.trial import TrialState, create_trial
from optuna.distributions import FloatDistribution

from focalbench.sweeps.report import pruning_savings, write_report

DIST = {"loss.gamma": FloatDistribution(0, 5), "loss.alpha": FloatDistribution(0.05, 0.999)}


def _trial(g, a, values, state):
    return create_trial(params={"loss.gamma": g, "loss.alpha": a}, distributions=DIST, state=state,
                        value=values[-1] if state == TrialState.COMPLETE else None,
                        intermediate_values=dict(enumerate(values)))


def test_savings_count_epochs_of_pruned_trials():
    trials = [_trial(2, .25, [5, 9, 12, 14], TrialState.COMPLETE), _trial(0, .9, [2], TrialState.PRUNED),
              _trial(4, .5, [3, 4], TrialState.PRUNED)]
    s = pruning_savings(trials)
    assert s["epochs_per_full_trial"] == 4 and s["trial_epochs_run"] == 4 + 1 + 2
    assert s["trial_epochs_without_pruning"] == 12 and abs(s["saved_fraction"] - 5 / 12) < 1e-9


def test_report_files(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for g, a, v in [(2, .25, [5, 9, 12]), (1, .5, [4, 8, 10]), (3, .75, [3, 6, 9]), (0.5, .3, [6, 8, 11])]:
        study.add_trial(_trial(g, a, v, TrialState.COMPLETE))
    study.add_trial(_trial(4.5, .95, [1], TrialState.PRUNED))
    r = write_report(url, "s", tmp_path / "out", command="make search")
    assert r["best"] == {"loss.gamma": 2, "loss.alpha": .25}
    text = (tmp_path / "out" / "README.md").read_text()
    assert "13 trial-epochs run vs 15 without pruning" in text and "make search" in text
    for f in ("trials.csv", "best.yaml", "optimization_history.png", "trials_gamma_alpha.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert (tmp_path / "out" / "trials.csv").read_text().count("\n") == 6
    # 4 complete trials: no contour and no importances (they would interpolate 4 points), and the README says so
    assert not (tmp_path / "out" / "contour_gamma_alpha.png").exists()
    assert not (tmp_path / "out" / "param_importances.png").exists()
    assert "Not drawn: gamma x alpha contour: only 4 complete trials" in text
    assert "Not drawn: parameter importances: only 4 complete trials" in text


def test_contour_and_importances_from_enough_complete_trials(tmp_path):
    from focalbench.sweeps.report import MIN_COMPLETE_CONTOUR, MIN_COMPLETE_IMPORTANCES

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    n = max(MIN_COMPLETE_CONTOUR, MIN_COMPLETE_IMPORTANCES)
    for i in range(n):
        g, a = 0.4 * i, 0.05 + 0.09 * i
        study.add_trial(_trial(g, a, [1.0, 10 - (g - 2) ** 2 + a], TrialState.COMPLETE))
    r = write_report(url, "s", tmp_path / "out")
    assert {"contour_gamma_alpha.png", "param_importances.png"} <= set(r["plots"])
    assert "Not drawn" not in (tmp_path / "out" / "README.md").read_text()


def test_history_shows_pruned_trials(tmp_path):
    """The pruned trials appear in the history at their last reported value (Optuna's own plot drops them)."""
    import matplotlib

    matplotlib.use("Agg")
    from focalbench.sweeps import report

    trials = [_trial(2, .25, [5, 9, 12], TrialState.COMPLETE), _trial(0, .9, [2], TrialState.PRUNED),
              _trial(4, .5, [3, 4], TrialState.PRUNED)]
    for i, t in enumerate(trials):
        t.number = i
    import matplotlib.axes

    seen = {}

    orig = matplotlib.axes.Axes.scatter

    def spy(self, x, y, *a, **k):
        seen[k.get("label", "").split(" ")[0]] = (list(x), list(y))
        return orig(self, x, y, *a, **k)

    matplotlib.axes.Axes.scatter = spy
    try:
        report.history_plot(trials, tmp_path / "h.png")
    finally:
        matplotlib.axes.Axes.scatter = orig
    assert (tmp_path / "h.png").stat().st_size > 0
    assert seen["complete"] == ([0], [12]) and seen["pruned"] == ([1, 2], [2, 4])


def test_paper_optimum_is_placed_on_the_right_axes():
    # Optuna's contour puts loss.alpha on x (sorted names): the star once landed at x=gamma=2, off the plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from focalbench.sweeps.report import mark_paper_optimum

    for xlabel, ylabel, want in (("loss.alpha", "loss.gamma", (0.25, 2.0)), ("loss.gamma", "loss.alpha", (2.0, 0.25))):
        fig, ax = plt.subplots()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.4, 0.6)   # a contour spanning only the complete trials: the limits grow to show the star
        ax.set_ylim(0.7, 1.5)
        x, y = mark_paper_optimum(ax)
        assert (x, y) == want
        assert ax.get_xlim()[0] < x < ax.get_xlim()[1] and ax.get_ylim()[0] < y < ax.get_ylim()[1]
        plt.close(fig)
