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


def _plots(study: optuna.Study, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    made = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_optimization_history(study)
        ax.figure.set_size_inches(7, 4)
        ax.figure.tight_layout()
        ax.figure.savefig(out / "optimization_history.png", dpi=120)
        made.append("optimization_history.png")
        plt.close("all")
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        if len(complete) >= 2:
            try:
                ax = ovm.plot_param_importances(study)
                ax.figure.set_size_inches(6, 3)
                ax.figure.tight_layout()
                ax.figure.savefig(out / "param_importances.png", dpi=120)
                made.append("param_importances.png")
            except (RuntimeError, ValueError) as e:  # e.g. every trial has the same value
                print(f"param importances skipped: {e}", file=sys.stderr)
            plt.close("all")
        params = sorted({p for t in complete for p in t.params})
        if {"loss.gamma", "loss.alpha"} <= set(params) and len(complete) >= 3:
            ax = ovm.plot_contour(study, params=["loss.gamma", "loss.alpha"])
            ax.scatter([PAPER_OPTIMUM["loss.gamma"]], [PAPER_OPTIMUM["loss.alpha"]], marker="*", s=250,
                       color="red", edgecolor="k", zorder=10, label="paper optimum (γ=2, α=.25)")
            ax.legend(loc="upper right", fontsize=8)
            ax.figure.set_size_inches(6, 5)
            ax.figure.tight_layout()
            ax.figure.savefig(out / "contour_gamma_alpha.png", dpi=120)
            made.append("contour_gamma_alpha.png")
            plt.close("all")
    return made


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
    plots = _plots(study, out)
    lines = [f"# Search `{study_name}`", "",
             f"Storage: `{storage_url}`. Trials: {len(trials)} ({len(complete)} complete, {savings['pruned']} pruned, "
             f"{sum(t.state == TrialState.FAIL for t in trials)} failed).", ""]
    if best is not None:
        lines += [f"Best validation AP **{best.value:.2f}** at " +
                  ", ".join(f"`{k}={v:.3g}`" for k, v in best.params.items()) +
                  f" (trial {best.number}). The paper's optimum: gamma=2, alpha=.25 (red star on the contour).", ""]
    lines += ["## Compute saved by pruning", "",
              f"{savings['trial_epochs_run']} trial-epochs run vs {savings['trial_epochs_without_pruning']} without "
              f"pruning ({savings['epochs_per_full_trial']} epochs per full trial x {savings['trials']} trials): "
              f"**{savings['saved_fraction']:.0%} saved**.", ""]
    if command:
        lines += ["## Command", "", f"```\n{command}\n```", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + ["", "Trial table: [trials.csv](trials.csv)."]
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
