"""Tables, figures and the verdict of the imbalance study, rebuilt from the run cache (no training here).

Verdict rule (stated in report.md): at one ratio, "A beats B" on the test AP when the paired
differences d_s = A_s - B_s over seeds (a seed fixes the data, so both rows saw the same data) have a 95%
t interval above 0 (``focalbench.stats.paired_diff``, the paper tables' rule). Not the unpaired combined spread
sqrt(sd_A^2 + sd_B^2): each seed draws a different make_classification task, and the difficulty of the
tasks varies far more than the effect of the loss, which pairing removes. The claim "FL beats CE and alpha-CE from 1:1000 on, and gives no
gain at 1:1" holds for an FL row when it beats both CE and alpha-CE at every ratio >= 1000 of the grid,
and beats neither at 1:1. The paired t-test's p is printed beside, for information.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import optuna

from focalbench.classify.plan import grid, storage_for, study_name
from focalbench.runstore import RunStore, atomic_write_text
from focalbench.stats import paired_diff

COLUMNS = [("AP", "AP", True), ("ROC_AUC", "ROC AUC", True), ("recall_at_fpr", "recall@FPR", True),
           ("best_F1", "best F1", True), ("ECE", "ECE", False), ("Brier", "Brier", False)]
FL_ROWS = ("focal", "focal_tuned")
BASELINES = ("ce", "alpha_ce")


def collect(sweep: dict, table: str, out_dir: Path) -> dict:
    """{(ratio, row, seed): metrics} of the finished trials of one sub-table."""
    store = RunStore(out_dir / "runs")
    try:
        study = optuna.load_study(study_name=study_name(table), storage=storage_for(out_dir))
    except KeyError:
        return {}
    wanted = {(p["ratio"], p["row"], p["seed"]) for p in grid(sweep)}
    out = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        if t.state == optuna.trial.TrialState.PRUNED and t.user_attrs.get("status") != "diverged":
            continue  # a diverged run is data (its trial is PRUNED with status=diverged, as in every study)
        k = (t.params.get("ratio"), t.params.get("row"), t.params.get("seed"))
        if k in wanted and k not in out:
            m = store.get(t.user_attrs.get("config_hash", ""))
            if m is not None:
                out[k] = m
    return out


def _values(results: dict, ratio, row: str, metric: str, seeds: int) -> np.ndarray:
    v = []
    for s in range(seeds):
        m = results.get((ratio, row, s))
        if m is not None:
            v.append(m["test"][metric] if m["status"] == "ok" else (0.0 if metric == "AP" else math.nan))
    return np.asarray(v, dtype=float)


def _ms(v: np.ndarray) -> tuple[float, float]:
    if len(v) == 0:
        return math.nan, math.nan
    return float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0


def beats(a: np.ndarray, b: np.ndarray) -> tuple[bool, float, float, float]:
    """(A beats B, mean paired difference, sd of the paired differences, paired t-test p) over seeds: A
    beats B when the 95% t interval of the paired differences lies above 0 (``focalbench.stats``)."""
    if len(a) != len(b) or len(a) == 0:
        return False, math.nan, math.nan, math.nan
    d = paired_diff(dict(enumerate(map(float, a))), dict(enumerate(map(float, b))))
    return d.effect > 0, d.mean, d.sd if d.n > 1 else math.inf, d.p


def verdict(sweep: dict, results: dict) -> dict:
    seeds, ratios, metric = sweep["seeds"], sweep["ratios"], sweep.get("metric", "AP")
    high = [r for r in ratios if r >= 1000]
    lines, per_fl = [], {}
    labels = {r["key"]: r["label"] for r in sweep["rows"]}
    for fl in FL_ROWS:
        if fl not in labels:
            continue
        wins_high, gain_at_1, n_high, pos_high = True, False, 0, 0
        for r in ratios:
            for b in BASELINES:
                a_v, b_v = _values(results, r, fl, metric, seeds), _values(results, r, b, metric, seeds)
                if len(a_v) == 0 or len(b_v) == 0:
                    continue
                win, d, spread, p = beats(a_v, b_v)
                (_, sa), (_, sb) = _ms(a_v), _ms(b_v)
                per_seed = ", ".join(f"{x:+.3f}" for x in a_v - b_v) if len(a_v) == len(b_v) else "-"
                lines.append(f"| 1:{r} | {labels[fl]} vs {labels[b]} | {per_seed} | {d:+.4f} | {spread:.4f} | "
                             f"{'yes' if win else 'no'} | {p:.3f} | {math.sqrt(sa ** 2 + sb ** 2):.4f} |")
                if r in high:
                    n_high += len(a_v)
                    pos_high += int(np.sum(a_v - b_v > 0)) if len(a_v) == len(b_v) else 0
                    if not win:
                        wins_high = False
                if r == 1 and win:
                    gain_at_1 = True
        if not high:
            wins_high = False
        holds = wins_high and not gain_at_1 and 1 in ratios
        part = ("supported" if holds else "partly supported" if (wins_high or (1 in ratios and not gain_at_1))
                else "not supported")
        if not high or 1 not in ratios:
            part = "not tested (the grid needs ratio 1 and a ratio >= 1000)"

        per_fl[fl] = {"verdict": part, "beats_both_from_1000": wins_high, "gain_at_1": gain_at_1,
                      "ahead_from_1000": f"{pos_high}/{n_high}"}
    head = "; ".join(f"{labels[k]}: {v['verdict']} (beats CE and alpha-CE at every ratio >= 1000: "
                     f"{'yes' if v['beats_both_from_1000'] else 'no'}, ahead in "
                     f"{v['ahead_from_1000']} paired seed comparisons there; gain at 1:1: "
                     f"{'yes' if v['gain_at_1'] else 'no'})" for k, v in per_fl.items())
    return {"headline": f"claim \"{sweep['claim']}\" -> {head}", "per_fl": per_fl, "lines": lines}


def table_rows(sweep: dict, table: str, results: dict) -> list[dict]:
    rows = []
    for r in sweep["ratios"]:
        for row in sweep["rows"]:
            d = {"table": table, "ratio": f"1:{r}", "loss": row["label"], "key": row["key"]}
            n = 0
            for key, _, _ in COLUMNS + [("accuracy", "", True), ("accuracy_all_negative", "", True)]:
                v = _values(results, r, row["key"], key, sweep["seeds"])
                n = max(n, len(v))
                d[key + "_mean"], d[key + "_std"] = _ms(v)
            d["seeds"] = n
            statuses = [results[(r, row["key"], s)]["status"] for s in range(sweep["seeds"])
                        if (r, row["key"], s) in results]
            d["status"] = ",".join(sorted(set(statuses))) or "missing"
            if row["key"] == "focal_tuned":
                ch = [results[(r, row["key"], s)].get("search", {}).get("chosen") for s in range(sweep["seeds"])
                      if (r, row["key"], s) in results]
                d["chosen"] = "; ".join(f"g={c['gamma']:.2f} a={c['alpha']:.2f}" for c in ch if c)
            rows.append(d)
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = "| ratio | loss | " + " | ".join(h for _, h, _ in COLUMNS) + " | accuracy (all-negative) | seeds |"
    out = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for d in rows:
        cells = [f"{d[k + '_mean']:.3f} ± {d[k + '_std']:.3f}" if not math.isnan(d[k + "_mean"]) else "-"
                 for k, _, _ in COLUMNS]
        acc = (f"{d['accuracy_mean']:.4f} ({d['accuracy_all_negative_mean']:.4f})"
               if not math.isnan(d["accuracy_mean"]) else "-")
        out.append(f"| {d['ratio']} | {d['loss']} | " + " | ".join(cells) + f" | {acc} | {d['seeds']} |")
    return "\n".join(out)


def figure(sweep: dict, per_table: dict, metric: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(per_table)
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.2), squeeze=False)
    for ax, table in zip(axes[0], tables):
        results = per_table[table]
        for i, row in enumerate(sweep["rows"]):
            xs, ms, ss = [], [], []
            for r in sweep["ratios"]:
                v = _values(results, r, row["key"], metric, sweep["seeds"])
                if len(v):
                    m, s = _ms(v)
                    xs.append(r * (1.0 + 0.04 * (i - 1.5))), ms.append(m), ss.append(s)  # dodge
            ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=row["label"])
        ax.set_xscale("log")
        ax.set_xticks(sweep["ratios"], [f"1:{r}" for r in sweep["ratios"]])
        ax.set_xlabel("imbalance n_pos : n_neg")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{table}: test {metric} (mean ± sd over {sweep['seeds']} seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _setup_text(results: dict) -> str:
    any_run = next((m for m in results.values() if m.get("status") == "ok"), None)
    if any_run is None:
        return ""
    c = any_run["data"]["counts"]
    return (f"positives per split train/val/test = {c['train']['pos']}/{c['val']['pos']}/{c['test']['pos']} "
            f"(the same positives at every ratio; negatives = ratio x positives)")


def write_report(sweep: dict, tables: list[str], out_dir: Path, command: str, wall_seconds: float,
                 timings: dict, hardware: str, workers: int) -> dict:
    out_dir = Path(out_dir)
    per_table = {t: collect(sweep, t, out_dir) for t in tables}
    verdicts, all_rows, md = {}, [], []
    for table, results in per_table.items():
        rows = table_rows(sweep, table, results)
        all_rows += rows
        v = verdict(sweep, results)
        verdicts[table] = v
        md.append(f"## {table}\n\n{_setup_text(results)}\n\n{markdown_table(rows)}\n")
        tuned = [d for d in rows if d["key"] == "focal_tuned" and d.get("chosen")]
        if tuned:
            md.append("Tuned FL, (gamma, alpha) chosen on the validation split per seed:\n\n" +
                      "\n".join(f"- {d['ratio']}: {d['chosen']}" for d in tuned) + "\n")
    table_md = "# Imbalance study: test split, mean ± sd over seeds\n\n" + "\n".join(md)
    atomic_write_text(out_dir / "table.md", table_md)
    buf = io.StringIO()
    fields = ["table", "ratio", "loss", "key", "seeds", "status", "chosen"] + [
        f"{k}_{s}" for k, _, _ in COLUMNS + [("accuracy", "", 1), ("accuracy_all_negative", "", 1)]
        for s in ("mean", "std")]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for d in all_rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in d.items()})
    atomic_write_text(out_dir / "table.csv", buf.getvalue())
    figure(sweep, per_table, "AP", "average precision (test)", out_dir / "ap_vs_ratio.png")
    figure(sweep, per_table, "ECE", "expected calibration error (test)", out_dir / "ece_vs_ratio.png")
    store = RunStore(out_dir / "runs")  # every run, inner-search runs included (not the tuned summaries)
    runs = [store.get(k) for k in store.keys()]
    compute = sum(m.get("train_seconds", 0) + m.get("val_eval_seconds", 0) + m.get("test_eval_seconds", 0)
                  for m in runs if m and "search" not in m)
    rep = [f"# Focal loss beyond detection: the 1:1000 imbalance study ({sweep['profile']} profile)\n",
           f"Claim tested: **{sweep['claim']}**.\n"]
    for table, v in verdicts.items():
        rep.append(f"**Verdict ({table}, test AP):** {v['headline']}\n")
    rep += [
        "## How it was produced\n",
        f"- Command: `{command}` (equivalently `make reproduce-imbalance PROFILE={sweep['profile']}`)",
        f"- Wall time: {_invocations_text(out_dir)}; training + evaluation time summed over all "
        f"{len(runs)} cached runs: {compute:.0f} s (1 torch thread per worker process).",
        f"- Hardware: {hardware}",
        f"- Grid: ratios {', '.join('1:' + str(r) for r in sweep['ratios'])} x rows "
        f"{', '.join(r['label'] for r in sweep['rows'])} x {sweep['seeds']} seeds "
        f"(seed = data draw + initialisation + batch order; the losses share each seed's data, so "
        f"comparisons are paired).",
        "- alpha-CE: alpha = n_neg / (n_pos + n_neg) of the train split = ratio / (1 + ratio).",
        "- Tuned FL: inner Optuna TPE search of gamma in [{0}, {1}] and alpha in [{2}, {3}], {4} trials per "
        "ratio and seed (the first is gamma=2, alpha=.25), chosen by validation AP, reported on the test "
        "split.".format(*_search_bounds(sweep)),
        "- Classifier bias initialised to the paper's prior pi = 0.01 for every loss (section 4.1): the same "
        "start for all rows, as in the paper's ablations (`model.prior_prob=freq` uses the class frequency).",
        "- Loss: the `focalbench.losses` criterion chosen by `loss=` (conf/loss/), averaged over the minibatch.",
        "- Verdict rule: at a ratio, A beats B when the paired differences over seeds, d_s = AP(A, seed s) - "
        "AP(B, seed s), have a 95% t interval above 0 (mean ± t_.975(n - 1) sd / sqrt(n): the paper tables' "
        "rule, `focalbench.stats.paired_diff`). The claim holds for an FL row when it beats both CE and "
        "alpha-CE at every ratio >= 1000 and beats neither at 1:1. Paired, because a seed draws the data "
        "(a different make_classification task per seed) and every row of that seed trains on the same "
        "data: the tasks' difficulty varies much more than the loss effect, so the unpaired combined sd "
        "(last column below, for information) would call every difference noise. The paired t-test's p is "
        "shown for information.\n",
        "## Tables\n", table_md.split("\n", 2)[2],
        "![AP vs ratio](ap_vs_ratio.png)\n", "![ECE vs ratio](ece_vs_ratio.png)\n",
        "## Comparisons behind the verdict (test AP)\n"]
    for table, v in verdicts.items():
        rep += [f"### {table}\n", "| ratio | comparison | per-seed diff | mean diff | sd of diffs | counts | "
                "paired t p | unpaired combined sd |", "|---|---|---|---|---|---|---|---|", *v["lines"], ""]
    atomic_write_text(out_dir / "report.md", "\n".join(rep) + "\n")
    return verdicts


def _invocations_text(out_dir: Path) -> str:
    from focalbench.provenance import INVOCATIONS, read_invocations

    trained = [e for e in read_invocations(out_dir) if e.get("runs_finished_meanwhile", 0) > 0]
    if not trained:
        return f"no invocation recorded ({INVOCATIONS})"
    parts = [f"{e['wall_seconds']:.0f} s for {e['runs_finished_meanwhile']} new runs ({e.get('workers', '?')} "
             f"workers, started {e['start']}{', ' + e['note'] if e.get('note') else ''})" for e in trained]
    total = sum(e["wall_seconds"] for e in trained)
    return f"{total:.0f} s in all ({len(trained)} invocation(s) that trained: " + "; ".join(parts) + ")"


def _search_bounds(sweep: dict):
    for row in sweep["rows"]:
        if "search" in row:
            s = row["search"]
            return s["gamma"][0], s["gamma"][1], s["alpha"][0], s["alpha"][1], s["n_trials"]
    return ("-",) * 5
