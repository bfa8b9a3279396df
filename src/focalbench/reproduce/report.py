"""Tables (CSV + Markdown), figures and report.md of results/<profile>/, rebuilt from runs/ alone."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
from datetime import datetime, timezone
import platform
from pathlib import Path

import torch

from focalbench.reproduce import figures
from focalbench.reproduce.dashboard import build_dashboard
from focalbench.reproduce.analysis import NOISE_FLOOR, RowResult, Verdict, kendall_tau, table_verdict
from focalbench.reproduce.runner import RunSpec
from focalbench.reproduce.sweeps import Table
from focalbench.runstore import RunStore, atomic_write_text


INVOCATIONS = "invocations.jsonl"


def record_invocation(results_dir: Path, command: str, start: float, end: float, runs_before: int,
                      runs_after: int) -> None:
    """Append one line per reproduction invocation (workers may run concurrently; O_APPEND keeps lines whole)."""
    entry = {"start": _iso(start), "end": _iso(end), "wall_seconds": round(end - start, 1),
             "runs_finished_meanwhile": runs_after - runs_before, "worker": f"{socket.gethostname()}:{os.getpid()}",
             "command": command}
    with open(results_dir / INVOCATIONS, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def read_invocations(results_dir: Path) -> list[dict]:
    path = results_dir / INVOCATIONS
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e.msg})") from None
    return out


def elapsed_seconds(invocations: list[dict]) -> float:
    """Wall time covered by the invocations' [start, end] intervals: concurrent workers count once."""
    spans = sorted((datetime.fromisoformat(i["start"]).timestamp(), datetime.fromisoformat(i["end"]).timestamp())
                   for i in invocations)
    total, cur_start, cur_end = 0.0, None, None
    for a, b in spans:
        if cur_end is None or a > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = a, b
        else:
            cur_end = max(cur_end, b)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


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
    out: dict[str, dict[str, RowResult]] = {}
    failed = RunStore(store.root / "failed")
    for table in tables:
        rows = {}
        for row in table.rows:
            runs = []
            for s in specs:
                if s.table == table.id and s.row == row.name:
                    m = store.get(s.config_hash)
                    if m is not None:
                        runs.append({**m, "config_hash": s.config_hash})
            r = rows[row.name] = RowResult(row.name, row.paper, runs, row.extra)
            r.failures = [f for s in specs if s.table == table.id and s.row == row.name
                          if store.get(s.config_hash) is None and (f := failed.get(s.config_hash)) is not None]
        out[table.id] = rows
    return out


def _num(v: float, nd: int = 1) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def table_csv(table: Table, rows: dict[str, RowResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "overrides", "paper_AP", "paper_AP50", "paper_AP75", "AP_mean", "AP_sd", "AP50_mean",
                "AP50_sd", "AP75_mean", "AP75_sd", "seeds", "status", "config_hashes"])
    for row in table.rows:
        r = rows[row.name]
        w.writerow([row.name, " ".join(row.overrides), row.paper["AP"], row.paper["AP50"], row.paper["AP75"],
                    _num(r.mean("AP"), 2), _num(r.std("AP"), 2), _num(r.mean("AP50"), 2), _num(r.std("AP50"), 2),
                    _num(r.mean("AP75"), 2), _num(r.std("AP75"), 2), len(r.runs), "/".join(r.statuses) or "not run",
                    " ".join(x["config_hash"] for x in r.runs)])
    return buf.getvalue()


def table_markdown(table: Table, rows: dict[str, RowResult], tau: float, verdict: Verdict) -> str:
    lines = [f"### Table {table.id}: {table.title}", "",
             "| row | overrides | paper AP | paper AP50 | paper AP75 | our AP | our AP50 | our AP75 | seeds | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.rows:
        r = rows[row.name]
        ours = [f"{_num(r.mean(k))} ± {_num(r.std(k))}" if r.complete else "—" for k in ("AP", "AP50", "AP75")]
        status = ", ".join(sorted(set(r.statuses)) + [f"failed: {f.get('reason', '?')}" for f in r.failures]) or "not run"
        lines.append(f"| {row.name} | `{' '.join(row.overrides)}` | {row.paper['AP']} | {row.paper['AP50']} | "
                     f"{row.paper['AP75']} | {' | '.join(ours)} | {len(r.runs)} | {status} |")
    lines += ["", f"Kendall's tau (paper AP vs our mean AP, finished rows): **{_num(tau, 2) or 'n/a'}**", "",
              f"Claim: *\"{table.claim}\"* → **{verdict.verdict}**. {verdict.detail}.", ""]
    return "\n".join(lines)


def write_results(tables: list[Table], specs: list[RunSpec], results_dir: Path, command: str,
                  profile_summary: str, wall_seconds: float | None, noise_floor: float = NOISE_FLOOR,
                  work_dir: Path | None = None) -> dict:
    """Write table*.csv/.md, figures/ and report.md; return {table: (tau, verdict)}."""
    store = RunStore(results_dir / "runs")
    results = collect(tables, specs, store)
    fig_dir = results_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary, sections = {}, []
    for table in tables:
        rows = results[table.id]
        ce_rows = None
        if table.id == "1b":  # every alpha-CE that was run: 1b's gamma=0 row plus Table 1a's rows
            ce_rows = [rows["g=0 a=.75"], *results.get("1a", {}).values()]
        tau = kendall_tau(list(rows.values()))
        verdict = table_verdict(table, rows, ce_rows, noise_floor)
        summary[table.id] = (tau, verdict)
        md = table_markdown(table, rows, tau, verdict)
        sections.append(md)
        atomic_write_text(results_dir / f"table{table.id}.csv", table_csv(table, rows))
        atomic_write_text(results_dir / f"table{table.id}.md", md)
        _table_figure(table, rows, fig_dir)
    figures.figure1(fig_dir / "figure1_loss_vs_pt.png")
    fig4_note = _figure4(specs, work_dir, fig_dir) if work_dir is not None else None
    build_dashboard(results_dir / "dashboard.html", results_dir.name, tables, results, summary)
    atomic_write_text(results_dir / "report.md",
                      _report(tables, summary, sections, command, profile_summary, wall_seconds, specs, store,
                              fig4_note))
    return summary


def _table_figure(table: Table, rows: dict[str, RowResult], fig_dir: Path) -> None:
    rs = list(rows.values())
    if table.id == "1a":
        figures.line_figure(rs, "Table 1a: AP vs alpha (CE, gamma=0)", "alpha", fig_dir / "table1a_ap_vs_alpha.png",
                            logit_x=True)
    elif table.id == "1b":
        figures.line_figure(rs, "Table 1b: AP vs gamma (FL, best alpha per gamma)", "gamma",
                            fig_dir / "table1b_ap_vs_gamma.png", logit_x=True)
    elif table.id == "1c":
        figures.anchors_figure(rs, fig_dir / "table1c_anchors.png")
    else:
        figures.bar_figure(rs, f"Table {table.id}: {table.title}", fig_dir / f"table{table.id}.png")


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
    """The runs' ``trainer.num_threads`` as their overrides give it (the report's own process may differ)."""
    found = sorted({o.split("=", 1)[1] for r in runs for o in r.get("overrides", [])
                    if str(o).startswith("trainer.num_threads=")})
    return ", ".join(found) if found else f"torch's default ({torch.get_num_threads()} here)"


def _report(tables, summary, sections, command, profile_summary, wall_seconds, specs, store, fig4_note=None) -> str:
    runs = [store.get(s.config_hash) for s in {s.config_hash: s for s in specs}.values()]
    runs = [r for r in runs if r]
    train_s = sum(float(r.get("train_seconds", 0)) for r in runs)
    lines = ["# focalbench: the paper's ablations beside ours", "",
             "Paper numbers: Lin et al., *Focal Loss for Dense Object Detection*, arXiv:1708.02002 v2, Table 1 and "
             "Table 3 (COCO minival, ResNet-50/101-FPN, 600 px). Ours: the built-in data and the profile below. "
             "Absolute APs are not comparable (different data, model and budget); the orderings and the claims are "
             "what we test.", "",
             "## Claims checklist", "", "| table | claim | Kendall's tau | verdict |", "|---|---|---|---|"]
    for t in tables:
        tau, v = summary[t.id]
        lines.append(f"| {t.id} | {t.claim} | {_num(tau, 2) or 'n/a'} | {v.verdict} |")
    lines += ["", f"Verdict rule: a difference counts only beyond max({NOISE_FLOOR} AP, sqrt(sd_a² + sd_b²)) with sd "
              "over seeds (focalbench/reproduce/analysis.py).", "", "## Profile", "", profile_summary, "",
              f"- finished runs: {len(runs)} unique configurations "
              f"({sum(r.get('status') == 'diverged' for r in runs)} diverged); training time {train_s / 60:.1f} min",
              *_wall_time_lines(store.root.parent, wall_seconds),
              f"- hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; torch threads "
              f"per run: {_run_threads(runs)}; torch {torch.__version__}, Python {platform.python_version()}",
              "", "## Command", "", f"```\n{command}\n```", "", "## Tables", ""]
    lines += sections
    lines += ["## Figures", ""] + ([fig4_note, ""] if fig4_note else []) + [
        f"![{p.stem}](figures/{p.name})" for p in sorted((store.root.parent / "figures").glob("*.png"))]
    return "\n".join(lines) + "\n"
