"""Tables (CSV + Markdown), figures and report.md of results/<profile>/, rebuilt from runs/ alone."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path


from focalbench.reproduce import figures
from focalbench.reproduce.dashboard import build_dashboard
from focalbench.reproduce.analysis import (SIZE_METRICS, NoiseChoice, RowResult, Verdict, choose_noise_sd,
                                           describe_rule, table_verdict, tau_stats)
from focalbench.stats import TauStats
from focalbench.reproduce.runner import RunSpec
from focalbench.reproduce.sweeps import Table
from focalbench.runstore import RunStore, atomic_write_text
# the invocation log and the machine line are shared with the imbalance study
from focalbench.provenance import (INVOCATIONS, elapsed_seconds, hardware, read_invocations,  # noqa: F401
                                   record_invocation)


def _wall_time_lines(results_dir: Path, wall_seconds: float | None) -> list[str]:
    invocations = read_invocations(results_dir)
    this = "%.1f min" % (wall_seconds / 60) if wall_seconds else "n/a (tables rebuilt from runs/)"
    if not invocations:
        return [f"- wall time of the command that wrote this report: {this}"]
    lines = [f"- wall time: {elapsed_seconds(invocations) / 60:.1f} min elapsed over {len(invocations)} "
             f"invocations (concurrent workers counted once; every invocation in `{INVOCATIONS}` and below); "
             f"the command that wrote this report: {this}", "", "| start (UTC) | wall | runs finished meanwhile "
             "(all workers) | worker | command |", "|---|---|---|---|---|"]
    for i in invocations:
        lines.append(f"| {i['start']} | {i['wall_seconds'] / 60:.1f} min | {i['runs_finished_meanwhile']} | "
                     f"{i['worker']} | `{i['command']}` |")
    return lines + [""]


def collect(tables: list[Table], specs: list[RunSpec], store: RunStore) -> dict[str, dict[str, RowResult]]:
    """Every table's rows with their runs from ``store`` (``status: diverged`` runs are kept apart by
    :class:`RowResult`) and the failed attempts from ``store/failed``; size APs the evaluator wrote as 0.0 for
    COCO's -1 are restored to -1 (:func:`restore_missing_sizes`)."""
    out: dict[str, dict[str, RowResult]] = {}
    failed = RunStore(store.root / "failed")
    for table in tables:
        rows = {}
        for row in table.rows:
            runs, fails = [], []
            for s in specs:
                if s.table == table.id and s.row == row.name:
                    m = store.get(s.config_hash)
                    if m is not None:
                        runs.append({"seed": s.seed, **m, "config_hash": s.config_hash})
                    elif (f := failed.get(s.config_hash)) is not None:
                        fails.append({"seed": s.seed, **f})
            rows[row.name] = RowResult(row.name, row.paper, runs, row.extra, failures=fails)
        out[table.id] = rows
    restore_missing_sizes(out)
    return out


def restore_missing_sizes(results: dict[str, dict[str, RowResult]]) -> list[str]:
    """COCO returns -1 for an area range without ground truth; the evaluator stores it as 0.0. A size AP
    (APs, APm, APl) that is exactly 0 in every trained run of the run set while AP is > 0 in some run is read
    as that -1 and set to -1 in memory, so the tables show it as n/a rather than as a measured 0 (a model
    that found objects of every other size but never one of this size, in every run, has none to find).
    Returns the keys restored."""
    runs = [r for rows in results.values() for row in rows.values() for r in row.runs]
    if not runs or not any(float(r.get("AP") or 0) > 0 for r in runs):
        return []
    keys = [k for k in SIZE_METRICS if all(k in r and float(r[k]) == 0.0 for r in runs)]
    for r in runs:
        for k in keys:
            r[k] = -1.0
    return keys


def _num(v: float, nd: int = 1) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def _mean_sd(r: RowResult, key: str = "AP") -> str:
    """``mean ± sd`` over the ok seeds (sd with ddof=1; a single seed shows its value alone); n/a without one
    (e.g. APl where COCO returns -1: no ground truth of that size)."""
    v = r.values(key)
    if not v:
        return "n/a" if r.complete else "—"
    return f"{r.mean(key):.1f}" + (f" ± {r.std(key):.1f}" if len(v) > 1 else "")


def _per_seed(r: RowResult, key: str = "AP") -> str:
    return ", ".join(f"s{s}: {v:.1f}" for s, v in sorted(r.by_seed(key).items())) or "—"


def _status(r: RowResult) -> str:
    bits = []
    if r.runs:
        bits.append(f"ok × {len(r.runs)}")
    if r.diverged:
        bits.append("diverged: " + ", ".join(f"s{s}" for s in r.diverged_seeds))
    bits += [f"failed s{f.get('seed', '?')}: {f.get('reason', '?')}" for f in r.failures]
    return "; ".join(bits) or "not run"


def table_csv(table: Table, rows: dict[str, RowResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "overrides", "paper_AP", "paper_AP50", "paper_AP75", "AP_mean", "AP_sd", "AP50_mean",
                "AP50_sd", "AP75_mean", "AP75_sd", "APs_mean", "APm_mean", "APl_mean", "seeds", "AP_per_seed",
                "diverged_seeds", "status", "config_hashes"])
    for row in table.rows:
        r = rows[row.name]
        w.writerow([row.name, " ".join(row.overrides), row.paper["AP"], row.paper["AP50"], row.paper["AP75"],
                    _num(r.mean("AP"), 2), _num(r.std("AP"), 2), _num(r.mean("AP50"), 2), _num(r.std("AP50"), 2),
                    _num(r.mean("AP75"), 2), _num(r.std("AP75"), 2), *(_num(r.mean(k), 2) for k in SIZE_METRICS),
                    len(r.runs), " ".join(f"{s}:{v:.2f}" for s, v in sorted(r.by_seed().items())),
                    " ".join(map(str, r.diverged_seeds)), "/".join(r.statuses) or "not run",
                    " ".join(x.get("config_hash", "") for x in r.runs + r.diverged)])
    return buf.getvalue()


def tau_text(ts: TauStats) -> str:
    """Kendall's tau-b with its permutation p, the seed-bootstrap CI and tau over the paper's >= 1 AP gaps."""
    if math.isnan(ts.tau):
        return f"n/a ({ts.rows} row{'s' if ts.rows != 1 else ''} with an AP)"
    gap = (f"{ts.tau_gap1:+.2f} over the {ts.gap_pairs} row pairs the paper separates by >= 1 AP"
           if ts.gap_pairs else "no row pair the paper separates by >= 1 AP")
    return (f"tau-b = **{ts.tau:+.2f}** (two-sided permutation p = {ts.p:.3g}, {ts.p_method}; "
            + (f"{ts.level:.0%} bootstrap CI over seeds [{ts.ci_low:+.2f}, {ts.ci_high:+.2f}]"
               if not math.isnan(ts.ci_low) else "no bootstrap CI: 1 seed")
            + f"; {gap}; {ts.rows} rows, {ts.seeds} seed{'s' if ts.seeds != 1 else ''})")


def table_markdown(table: Table, rows: dict[str, RowResult], ts: TauStats, verdict: Verdict) -> str:
    lines = [f"### Table {table.id}: {table.title}", "",
             "| row | overrides | paper AP | paper AP50 | paper AP75 | our AP | AP per seed | our AP50 | our AP75 | "
             "our APs / APm / APl | seeds | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.rows:
        r = rows[row.name]
        sizes = " / ".join(_mean_sd(r, k) for k in SIZE_METRICS) if r.complete else "—"
        lines.append(f"| {row.name} | `{' '.join(row.overrides)}` | {row.paper['AP']} | {row.paper['AP50']} | "
                     f"{row.paper['AP75']} | {_mean_sd(r)} | {_per_seed(r)} | {_mean_sd(r, 'AP50')} | "
                     f"{_mean_sd(r, 'AP75')} | {sizes} | {len(r.runs)} | {_status(r)} |")
    div = [f"{r.name} (seed{'s' if len(r.diverged) > 1 else ''} {', '.join(map(str, r.diverged_seeds))})"
           for r in rows.values() if r.diverged]
    removed = [(row.name, rows[row.name].values("ohem_nms_removed")) for row in table.rows]
    removed = [(name, v) for name, v in removed if v]
    lines += ["", "Our AP: mean ± sd over the seeds that trained (sd with n − 1); APl is n/a where COCO returns -1 "
              "(no ground truth of that size). "
              + ("Diverged runs (loss not finite; kept out of every mean, never counted as AP 0): " + "; ".join(div) + "."
                 if div else "No run diverged."), "",
              *([("OHEM's NMS: fraction of the anchors it examined during training that it removed (`ohem_nms_removed` "
                  "of metrics.json; mean over seeds, min-max): "
                  + ", ".join(f"{name} {sum(v) / len(v):.2f}" + (f" ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else "")
                              for name, v in removed) + "."), ""] if removed else []),
              f"Kendall's tau (paper AP vs our mean AP, rows with an AP): {tau_text(ts)}", "",
              f"Claim: *\"{table.claim}\"* → **{verdict.verdict}**. {verdict.detail}.", ""]
    if verdict.parts:
        lines += ["Parts: " + "; ".join(f"{k}: {v}" for k, v in verdict.parts.items()) + ".", ""]
    if verdict.deciding:
        lines += ["Deciding paired difference(s) (a − b over the seeds both have):", ""]
        lines += [f"- {c.role + ': ' if c.role else ''}{c.text()}" for c in verdict.deciding] + [""]
    lines += [f"Rule (`{table.verdict['rule'] if table.verdict else 'none'}`): {describe_rule(table)}", ""]
    return "\n".join(lines)


def noise_markdown(choice: NoiseChoice) -> list[str]:
    """The "Noise" section: pooled paired sd, pooled within-row sd, and the sd used for single seeds."""
    est = choice.estimate

    def pooled(p) -> str:
        return (f"**{p.sd:.2f} AP** ({p.groups} groups, {p.df} degrees of freedom)" if p.df
                else "n/a (no group with >= 2 seeds)")

    return ["## Noise", "",
            f"- pooled sd of the paired differences, sqrt(Σ (n_i − 1) s_i² / Σ (n_i − 1)) over every pair of rows "
            f"within a table (d_s = a_s − b_s at the seeds both have; a pair of runs in two tables counts once, a "
            f"pair identical at every seed is left out): {pooled(est.paired)}",
            f"- pooled within-row sd (seed to seed, the seed's shared offset included): {pooled(est.within)}",
            f"- noise sd for a comparison resting on a single seed: "
            + (f"**{choice.sd:.2f} AP**, " if choice.sd is not None else "") + choice.source, ""]


def _run_set(tables: list[Table], results: dict[str, dict[str, RowResult]]) -> dict:
    return {t.id: (t, results[t.id]) for t in tables}


def write_results(tables: list[Table], specs: list[RunSpec], results_dir: Path, command: str,
                  profile_summary: str, wall_seconds: float | None, noise_sd: float | None = None,
                  work_dir: Path | None = None) -> dict[str, tuple[TauStats, Verdict]]:
    """Write table*.csv/.md, figures/, dashboard.html and report.md; return {table: (TauStats, verdict)}.

    ``noise_sd``: the profile's noise sd of a paired difference (AP), used only when this run set has a single
    seed (:func:`analysis.choose_noise_sd`); with >= 2 seeds the pooled paired sd measured here is used."""
    store = RunStore(results_dir / "runs")
    results = collect(tables, specs, store)
    fig_dir = results_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    choice = choose_noise_sd(results, noise_sd)
    run_set = _run_set(tables, results)
    summary, sections = {}, []
    for table in tables:
        rows = results[table.id]
        ts = tau_stats([rows[r.name] for r in table.rows])
        verdict = table_verdict(table, rows, run_set=run_set, noise_sd=choice.sd)
        summary[table.id] = (ts, verdict)
        md = table_markdown(table, rows, ts, verdict)
        sections.append(md)
        atomic_write_text(results_dir / f"table{table.id}.csv", table_csv(table, rows))
        atomic_write_text(results_dir / f"table{table.id}.md", md)
        figures.table_figure(table, rows, fig_dir, choice.sd)
    figures.figure1(fig_dir / "figure1_loss_vs_pt.png")
    fig4_note = _figure4(specs, work_dir, fig_dir) if work_dir is not None else None
    build_dashboard(results_dir / "dashboard.html", results_dir.name, tables, results, summary, choice)
    atomic_write_text(results_dir / "report.md",
                      _report(tables, summary, sections, command, profile_summary, wall_seconds, specs, store,
                              fig4_note, choice))
    return summary


FIG4_ROWS = (("1b", "g=2 a=.25"), ("1c", "3 sc / 3 ar"), ("3", "FL g=2"))  # the default FL gamma=2 model


def _figure4(specs: list[RunSpec], work_dir: Path, fig_dir: Path) -> str | None:
    """Figure 4 from the saved weights of the default FL run (seed 0), when its run directory is here."""
    from focalbench.reproduce import figure4

    for s in specs:
        if (s.table, s.row) in FIG4_ROWS and s.seed == 0 and (work_dir / s.config_hash / figure4.WEIGHTS_FILE).exists():
            pos, neg = figure4.collect_probabilities(work_dir / s.config_hash, s.overrides)
            figure4.figure4(pos, neg, fig_dir / "figure4_loss_cdf.png")
            shares = ", ".join(f"γ={g:g}: positives {figure4.hardest_share(pos, g):.0%}, negatives "
                               f"{figure4.hardest_share(neg, g):.0%}" for g in figure4.GAMMAS)
            note = (f"Figure 4 from run `{s.config_hash}` ({len(pos):,} positive and {len(neg):,} negative outputs "
                    f"on the validation split). Share of the loss carried by the hardest 20% of samples: {shares}. "
                    "The paper: ~half for positives at every gamma; for negatives at gamma=2 nearly all of it.")
            atomic_write_text(fig_dir / "figure4_loss_cdf.md", note + "\n")
            return note
    kept = fig_dir / "figure4_loss_cdf.md"  # rebuilt elsewhere (weights are not committed): keep its note
    return kept.read_text().strip() if kept.exists() else None


def _run_threads(runs: list[dict]) -> str:
    """The runs' torch threads: recorded by the run (``step_options``), else given by its overrides, else the
    profile's ``trainer.num_threads`` shown above (the report's own process may differ)."""
    found = {str((r.get("step_options") or {}).get("torch_threads")) for r in runs if r.get("step_options")}
    found |= {o.split("=", 1)[1] for r in runs for o in r.get("overrides", []) if str(o).startswith("trainer.num_threads=")}
    recorded = sum(1 for r in runs if r.get("step_options"))
    if not found:
        return "the profile's trainer.num_threads (above)"
    return ", ".join(sorted(found)) + (f" (recorded by {recorded} of {len(runs)} runs; the others: the profile's "
                                       "trainer.num_threads above)" if 0 < recorded < len(runs) else "")


VERDICT_RULES = (
    "How the verdicts are decided: every comparison of two rows is paired by seed (rows that share a seed share "
    "the initialisation and the batch order, so the seed's offset cancels). An effect is a paired difference "
    "d_s = a_s − b_s whose 95% interval dbar ± t_.975(n − 1) · sd(d) / sqrt(n) excludes 0; with a single seed "
    "the interval is d ± 1.96 · σ, σ the noise sd of the Noise section, and without one a single seed decides "
    "nothing. \"About as good\" is a TOST: both one-sided tests at 5%, i.e. the 90% interval inside ±margin. "
    "Each table's YAML names its rule (`verdict:`), stated in words under the table. Runs that diverged never "
    "enter a mean. Kendall's tau-b compares the paper's AP column with our mean AP: its p is a permutation test, "
    "its interval a bootstrap over seeds (all rows resampled with the same seeds).")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _report(tables, summary, sections, command, profile_summary, wall_seconds, specs, store, fig4_note=None,
            noise: NoiseChoice | None = None) -> str:
    runs = [store.get(s.config_hash) for s in {s.config_hash: s for s in specs}.values()]
    runs = [r for r in runs if r]
    train_s = sum(float(r.get("train_seconds", 0)) for r in runs)
    lines = ["# focalbench: the paper's ablations beside ours", "",
             "Paper numbers: Lin et al., *Focal Loss for Dense Object Detection*, arXiv:1708.02002 v2, Table 1 and "
             "Table 3 (COCO minival, ResNet-50/101-FPN, 600 px). Ours: the built-in data and the profile below. "
             "Absolute APs are not comparable (different data, model and budget); the orderings and the claims are "
             "what we test.", "",
             "## Claims checklist", "",
             "| table | claim | Kendall's tau (permutation p) | verdict | deciding paired difference (95% CI) |",
             "|---|---|---|---|---|"]
    for t in tables:
        ts, v = summary[t.id]
        tau = "n/a" if math.isnan(ts.tau) else f"{ts.tau:+.2f} (p = {ts.p:.2g})"
        deciding = v.deciding[0].text() if v.deciding else "—"
        lines.append(f"| {t.id} | {_cell(t.claim)} | {tau} | **{v.verdict}** | {_cell(deciding)} |")
    lines += ["", VERDICT_RULES, ""]
    if noise is not None:
        lines += noise_markdown(noise)
    lines += ["## Profile", "", profile_summary, "",
              f"- finished runs: {len(runs)} unique configurations "
              f"({sum(r.get('status') == 'diverged' for r in runs)} diverged); training time {train_s / 60:.1f} min",
              *_wall_time_lines(store.root.parent, wall_seconds),
              f"- hardware (where this report was written): {hardware()}; torch threads per run: {_run_threads(runs)}",
              "", "## Command", "", f"```\n{command}\n```", "", "## Tables", ""]
    lines += sections
    lines += ["## Figures", "",
              "Each table's figure: every row minus the table's baseline row, ours paired by seed (dots: each seed; "
              "marker and bar: mean and 95% CI) beside the paper's difference, on one AP axis.", ""]
    lines += ([fig4_note, ""] if fig4_note else []) + [
        f"![{p.stem}](figures/{p.name})" for p in sorted((store.root.parent / "figures").glob("*.png"))]
    return "\n".join(lines) + "\n"
