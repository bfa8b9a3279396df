"""Report of a finished (or running) search study: best parameters, trial table, plots, pruning savings.

    python -m focalbench.sweeps.report --storage sqlite:///results/cpu/optuna.db \\
        --study search_gamma_alpha --out results/cpu/search

Writes ``best.yaml``, ``trials.csv``, ``README.md`` and ``optimization_history.png``,
``param_importances.png``, ``contour_gamma_alpha.png`` (the paper's optimum gamma=2, alpha=.25 marked).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from focalbench.runstore import atomic_write_text
from focalbench.sweeps.storage import make_storage, resolve_storage_url

PAPER_OPTIMUM = {"loss.gamma": 2.0, "loss.alpha": 0.25}


def epochs_run(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs a trial trained: one intermediate value is reported per epoch (steps are epochs)."""
    return (max(trial.intermediate_values) + 1) if trial.intermediate_values else 0


def pruning_savings(trials: list[optuna.trial.FrozenTrial]) -> dict:
    """Trial-epochs run vs without pruning (every finished or pruned trial run to the full schedule)."""
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    full = max((epochs_run(t) for t in done if t.state == TrialState.COMPLETE), default=0)
    run = sum(epochs_run(t) if t.state == TrialState.PRUNED else full for t in done)
    without = full * len(done)
    return {"trials": len(done), "pruned": sum(t.state == TrialState.PRUNED for t in done),
            "epochs_per_full_trial": full, "trial_epochs_run": run, "trial_epochs_without_pruning": without,
            "saved_fraction": (1 - run / without) if without else 0.0}


def trials_csv(trials: list[optuna.trial.FrozenTrial]) -> str:
    params = sorted({p for t in trials for p in t.params})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", *params, "epochs_run", "seconds", "fail_reason"])
    for t in trials:
        secs = t.duration.total_seconds() if t.duration else ""
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value, *(t.params.get(p, "") for p in params),
                    epochs_run(t), secs, t.user_attrs.get("fail_reason", "")])
    return buf.getvalue()


# Below these counts of complete trials a contour or an importance ranking shows the interpolation of a handful
# of points (bullseyes around each trial, importances of noise), so they are not drawn and the README says why.
MIN_COMPLETE_CONTOUR = 10
MIN_COMPLETE_IMPORTANCES = 10
PLOT_FILES = ("optimization_history.png", "param_importances.png", "contour_gamma_alpha.png", "trials_gamma_alpha.png")


def history_plot(trials: list[optuna.trial.FrozenTrial], path: Path, maximize: bool = True) -> Path:
    """Objective per trial: complete trials filled, pruned trials hollow at their last reported value (the
    epochs they ran beside them), and the best complete value so far as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in complete], [t.value for t in complete], color="#1f77b4", zorder=3,
               label=f"complete ({len(complete)})")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, facecolors="none", edgecolors="#ff7f0e", zorder=3,
                   label=f"pruned ({len(pruned)}): last reported value")
        for t, v in zip(pruned, last):
            ax.annotate(f"{epochs_run(t)} ep", (t.number, v), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color="#ff7f0e")
    if complete:
        best, xs, ys = None, [], []
        for t in sorted(complete, key=lambda t: t.number):
            if best is None or (t.value > best if maximize else t.value < best):
                best = t.value
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="#d62728", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (validation AP)")
    ax.set_title("Optimisation history (pruned trials: their last value, epochs run beside it)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plots(study: optuna.Study, out: Path) -> tuple[list[str], list[str]]:
    """(files drawn, one line per plot left out and why). A plot left out is also removed from ``out``,
    so a README never shows the picture of an earlier, smaller study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    made, skipped = [], []
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    history_plot(study.trials, out / "optimization_history.png", maximize)
    made.append("optimization_history.png")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if len(complete) >= MIN_COMPLETE_IMPORTANCES:
            try:
                ax = ovm.plot_param_importances(study)
                ax.figure.set_size_inches(6, 3)
                ax.figure.tight_layout()
                ax.figure.savefig(out / "param_importances.png", dpi=120)
                made.append("param_importances.png")
            except (RuntimeError, ValueError) as e:  # e.g. every trial has the same value
                skipped.append(f"parameter importances: {e}")
            plt.close("all")
        else:
            skipped.append(f"parameter importances: only {len(complete)} complete trials "
                           f"(they need >= {MIN_COMPLETE_IMPORTANCES}; pruned trials have no final value)")
        params = sorted({p for t in complete for p in t.params})
        if {"loss.gamma", "loss.alpha"} <= set(params) and len(complete) >= MIN_COMPLETE_CONTOUR:
            ax = ovm.plot_contour(study, params=["loss.gamma", "loss.alpha"])
            mark_paper_optimum(ax)
            ax.figure.set_size_inches(6, 5)
            ax.figure.tight_layout()
            ax.figure.savefig(out / "contour_gamma_alpha.png", dpi=120)
            made.append("contour_gamma_alpha.png")
            plt.close("all")
        elif {"loss.gamma", "loss.alpha"} <= {p for t in study.trials for p in t.params}:
            skipped.append(f"gamma x alpha contour: only {len(complete)} complete trials (a contour interpolates "
                           f"between them and needs >= {MIN_COMPLETE_CONTOUR}); the map of all trials shows them")
    if {"loss.gamma", "loss.alpha"} <= {p for t in study.trials for p in t.params}:
        trials_map(study.trials, out / "trials_gamma_alpha.png")
        made.append("trials_gamma_alpha.png")
    for name in PLOT_FILES:
        if name not in made and (out / name).exists():
            (out / name).unlink()
    return made, skipped


def mark_paper_optimum(ax) -> tuple[float, float]:
    """The paper's (gamma, alpha) as a star on a plot whose axes are loss.gamma and loss.alpha in either order
    (Optuna's contour sorts them: alpha on x); the limits grow to show it. Returns the star's (x, y)."""
    g, a = PAPER_OPTIMUM["loss.gamma"], PAPER_OPTIMUM["loss.alpha"]
    x, y = (g, a) if ax.get_xlabel() == "loss.gamma" else (a, g)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    ax.set_xlim(min(x0, x - 0.03 * abs(x1 - x0)), max(x1, x + 0.03 * abs(x1 - x0)))
    ax.set_ylim(min(y0, y - 0.03 * abs(y1 - y0)), max(y1, y + 0.03 * abs(y1 - y0)))
    ax.scatter([x], [y], marker="*", s=250, color="red", edgecolor="k", zorder=10,
               label="paper optimum (γ=2, α=.25)")
    ax.legend(loc="upper right", fontsize=8)
    return x, y


def trials_map(trials: list[optuna.trial.FrozenTrial], path: Path) -> Path:
    """Every trial at its (alpha, gamma): complete ones coloured by final AP, pruned ones as crosses labelled
    with the epoch they stopped at and their last AP (a contour only sees the complete ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if done:
        sc = ax.scatter([t.params["loss.alpha"] for t in done], [t.params["loss.gamma"] for t in done],
                        c=[t.value for t in done], cmap="viridis", s=70, edgecolor="k", zorder=3,
                        label="complete (colour: val AP)")
        fig.colorbar(sc, ax=ax, label="val AP (complete trials)")
    if pruned:
        ax.scatter([t.params["loss.alpha"] for t in pruned], [t.params["loss.gamma"] for t in pruned],
                   marker="x", color="0.4", s=40, zorder=2, label="pruned (epoch: last val AP)")
        for t in pruned:
            iv = t.intermediate_values
            if iv:
                step = max(iv)
                ax.annotate(f"{step + 1}: {iv[step]:.1f}", (t.params["loss.alpha"], t.params["loss.gamma"]),
                            fontsize=6, color="0.3", xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("loss.alpha")
    ax.set_ylabel("loss.gamma")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.1, 5.1)
    ax.set_title(f"All {len(trials)} trials", fontsize=10)
    mark_paper_optimum(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(storage_url: str, study_name: str, out: Path, command: str | None = None) -> dict:
    storage = make_storage(resolve_storage_url(storage_url, Path.cwd()))
    study = optuna.load_study(study_name=study_name, storage=storage)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.trials
    atomic_write_text(out / "trials.csv", trials_csv(trials))
    savings = pruning_savings(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    best_text = ("no complete trial yet\n" if best is None else
                 "".join(f"{k}: {v}\n" for k, v in best.params.items()) + f"value: {best.value}\ntrial: {best.number}\n")
    atomic_write_text(out / "best.yaml", best_text)
    plots, skipped = _plots(study, out)
    lines = [f"# Search `{study_name}`", "",
             f"Storage: `{storage_url}`. Trials: {len(trials)} ({len(complete)} complete, {savings['pruned']} pruned, "
             f"{sum(t.state == TrialState.FAIL for t in trials)} failed).", ""]
    if best is not None:
        lines += [f"Best validation AP **{best.value:.2f}** at " +
                  ", ".join(f"`{k}={v:.3g}`" for k, v in best.params.items()) +
                  f" (trial {best.number}). The paper's optimum: gamma=2, alpha=.25 (red star on the map of all trials, and on the contour when there is one).", ""]
    lines += ["## Compute saved by pruning", "",
              f"{savings['trial_epochs_run']} trial-epochs run vs {savings['trial_epochs_without_pruning']} without "
              f"pruning ({savings['epochs_per_full_trial']} epochs per full trial x {savings['trials']} trials): "
              f"**{savings['saved_fraction']:.0%} saved**.", ""]
    if command:
        lines += ["## Command", "", f"```\n{command}\n```", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += [f"Not drawn: {why}." for why in skipped] + ([""] if skipped else [])
    lines += ["Trial table: [trials.csv](trials.csv)."]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    return {"best": None if best is None else best.params, "savings": savings, "plots": plots}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m focalbench.sweeps.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--command", default=None, help="the command that ran the study (written in README.md)")
    args = ap.parse_args(argv)
    try:
        r = write_report(args.storage, args.study, args.out, args.command)
    except KeyError:
        print(f"error: no study {args.study!r} in {args.storage}", file=sys.stderr)
        return 2
    print(f"best: {r['best']}; pruning saved {r['savings']['saved_fraction']:.0%}; wrote {args.out}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
