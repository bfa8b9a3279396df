"""results/<profile>/dashboard.html: one self-contained page (plotly.js inlined, no network, works from
file://) with the claims checklist, the noise estimates, every table, and an interactive plot per table of
each row minus the table's baseline row: the paper's difference, our per-seed differences
``d_s = AP_s(row) - AP_s(baseline)`` and their mean with its 95% interval (:func:`stats.paired_diff`)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from focalbench.reproduce.analysis import NoiseChoice, RowResult, Verdict, baseline_differences, describe_rule
from focalbench.stats import TauStats
from focalbench.reproduce.sweeps import Table
from focalbench.runstore import atomic_write_text

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}.supported{color:#176b1e;font-weight:600}.contradicted{color:#a31515;font-weight:600}
.inconclusive{color:#8a6d00;font-weight:600}.plot{height:400px}code{font-size:12px}.rule{color:#555;font-size:13px}"""


def _fmt(v: float | None) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.1f}"


def _mean_sd(r: RowResult, key: str = "AP") -> str:
    v = r.values(key)
    if not v:
        return "n/a" if r.complete else "—"
    return _fmt(r.mean(key)) + (f" ± {_fmt(r.std(key))}" if len(v) > 1 else "")


def _tau(ts: TauStats | float) -> str:
    """Kendall's tau with its permutation p (a bare float is shown alone)."""
    if not isinstance(ts, TauStats):
        return "n/a" if ts is None or math.isnan(ts) else f"{ts:+.2f}"
    if math.isnan(ts.tau):
        return "n/a"
    ci = f", CI [{ts.ci_low:+.2f}, {ts.ci_high:+.2f}]" if not math.isnan(ts.ci_low) else ""
    return f"{ts.tau:+.2f} (p = {ts.p:.2g}{ci})"


def _tau_details(ts: TauStats | float) -> str:
    if not isinstance(ts, TauStats) or math.isnan(ts.tau):
        return _tau(ts)
    gap = (f"{ts.tau_gap1:+.2f} over the {ts.gap_pairs} pairs the paper separates by ≥ 1 AP" if ts.gap_pairs
           else "no pair the paper separates by ≥ 1 AP")
    ci = (f"{ts.level:.0%} bootstrap CI over seeds [{ts.ci_low:+.2f}, {ts.ci_high:+.2f}]"
          if not math.isnan(ts.ci_low) else "no bootstrap CI (1 seed)")
    return f"{ts.tau:+.2f} (permutation p = {ts.p:.3g}, {ts.p_method}; {ci}; {gap})"


def _status(r: RowResult) -> str:
    bits = [f"ok × {len(r.runs)}"] if r.runs else []
    if r.diverged:
        bits.append("diverged: " + ", ".join(f"s{s}" for s in r.diverged_seeds))
    bits += [f"failed s{f.get('seed', '?')}" for f in r.failures]
    return "; ".join(bits) or "not run"


def _seed_link(r: RowResult, seed: int, value: float) -> str:
    """``s0: 6.3`` linked to that run's metrics file (``runs/<config_hash>.json`` beside the page)."""
    h = next((run.get("config_hash") for run in r.runs if int(run.get("seed", -1)) == seed), None)
    text = f"s{seed}: {value:.1f}"
    if not h:
        return text
    h = html.escape(str(h))
    return f"<a href='runs/{h}.json' title='config hash {h}'>{text}</a>"


def _table_html(table: Table, rows: dict[str, RowResult], ts, verdict: Verdict) -> str:
    head = ("<tr><th>row</th><th>overrides</th><th>paper AP</th><th>our AP</th><th>AP per seed</th><th>our AP50</th>"
            "<th>our AP75</th><th>APs / APm / APl</th><th>seeds</th><th>status</th></tr>")
    body = []
    for row in table.rows:
        r = rows[row.name]
        seeds = ", ".join(_seed_link(r, s, v) for s, v in sorted(r.by_seed().items())) or "—"
        sizes = " / ".join(_mean_sd(r, k) for k in ("APs", "APm", "APl")) if r.complete else "—"
        cells = [html.escape(row.name), f"<code>{html.escape(' '.join(row.overrides))}</code>", _fmt(row.paper["AP"]),
                 _mean_sd(r), seeds, _mean_sd(r, "AP50"), _mean_sd(r, "AP75"), sizes, str(len(r.runs)),
                 html.escape(_status(r))]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    deciding = "".join(f"<li>{html.escape((c.role + ': ' if c.role else '') + c.text())}</li>"
                       for c in verdict.deciding)
    return (f"<h2 id='t{table.id}'>Table {html.escape(table.id)}: {html.escape(table.title)}</h2>"
            f"<table class='results'>{head}{''.join(body)}</table>"
            f"<p>Kendall's tau: <b>{html.escape(_tau_details(ts))}</b>.</p>"
            f"<p>Claim: <i>{html.escape(table.claim)}</i> → "
            f"<span class='{verdict.verdict.replace(' ', '-')}'>{verdict.verdict}</span>. "
            f"{html.escape(verdict.detail)}.</p>"
            + (f"<p>Deciding paired difference(s):</p><ul>{deciding}</ul>" if deciding else "")
            + f"<p class='rule'>Rule: {html.escape(describe_rule(table))}</p>"
            f"<div class='plot' id='plot{table.id}'></div>")


def _plot_spec(table: Table, rows: dict[str, RowResult], noise_sd: float | None = None) -> dict:
    """Plotly traces: paper difference, our per-seed differences, our mean with its 95% CI (asymmetric bars
    are not needed: the t and normal intervals are symmetric about the mean)."""
    items = baseline_differences(table, rows, noise_sd) if rows[table.baseline_row].complete else []
    have = [it for it in items if it.diff is not None]
    seeds_x = [it.name for it in have for _ in it.diff.diffs]
    seeds_y = [v for it in have for v in it.diff.diffs]
    seeds_t = [f"seed {s}" for it in have for s in it.diff.seeds]
    half = [(it.diff.high - it.diff.mean) if it.diff.known else 0.0 for it in have]
    diverged = [it.name for it in items if not it.row.complete]
    data = [
        {"type": "scatter", "mode": "lines+markers" if table.figure == "line" else "markers", "name": "paper",
         "x": [it.name for it in items],
         "y": [it.paper for it in items], "line": {"dash": "dash", "color": "#777"},
         "marker": {"symbol": "square-open", "size": 9}},
        {"type": "scatter", "mode": "markers", "name": "ours: each seed", "x": seeds_x, "y": seeds_y, "text": seeds_t,
         "marker": {"color": "rgba(31,119,180,0.5)", "size": 6}},
        {"type": "scatter", "mode": "markers", "name": "ours: mean, 95% CI", "x": [it.name for it in have],
         "y": [it.diff.mean for it in have], "marker": {"color": "#1f77b4", "size": 10},
         "error_y": {"type": "data", "array": half, "visible": True}},
    ]
    if diverged:
        data.append({"type": "scatter", "mode": "markers", "name": "diverged at every seed", "x": diverged,
                     "y": [0.0] * len(diverged), "marker": {"symbol": "x", "color": "#d62728", "size": 11}})
    return {
        "data": data,
        "layout": {"margin": {"t": 30, "b": 100, "r": 200}, "legend": {"x": 1.02, "y": 1, "xanchor": "left"},
                   "yaxis": {"title": {"text": f"AP − AP of '{table.baseline_row}'"}, "zeroline": True},
                   "xaxis": {"title": {"text": table.x_label or "row"}, "tickangle": -30, "type": "category"},
                   "title": {"text": f"each row minus '{table.baseline_row}' (ours paired by seed)",
                             "font": {"size": 13}}},
    }


def _noise_html(noise: NoiseChoice | None) -> str:
    if noise is None:
        return ""
    def pooled(p) -> str:
        return f"{p.sd:.2f} AP ({p.groups} groups, {p.df} df)" if p.df else "n/a"
    used = (f"{noise.sd:.2f} AP, " if noise.sd is not None else "") + noise.source
    return (f"<h2>Noise</h2><ul><li>pooled sd of the paired differences (row pairs within a table): "
            f"{pooled(noise.estimate.paired)}</li><li>pooled within-row sd (seed to seed): "
            f"{pooled(noise.estimate.within)}</li><li>noise sd for single-seed comparisons: {html.escape(used)}"
            f"</li></ul>")


# The other figures of a results folder, shown below the tables when present: (file, caption, details link)
GALLERY = (
    ("figures/figure1_loss_vs_pt.png", "Figure 1 of the paper: the loss against p_t for each gamma "
     "(drawn from focalbench.losses)", None),
    ("figures/figure4_loss_cdf.png", "Figure 4: cumulative distribution of the normalised loss over positive and "
     "negative samples, from our FL model", "figures/figure4_loss_cdf.md"),
    ("search/optimization_history.png", "gamma x alpha search: optimisation history (pruned trials included)",
     "search/README.md"),
    ("search/trials_gamma_alpha.png", "gamma x alpha search: every trial", "search/README.md"),
    ("search/contour_gamma_alpha.png", "gamma x alpha search: contour of the completed trials", "search/README.md"),
    ("search/param_importances.png", "gamma x alpha search: parameter importances", "search/README.md"),
    ("imbalance/ap_vs_ratio.png", "Beyond detection: AP against the imbalance ratio", "imbalance/report.md"),
    ("imbalance/ece_vs_ratio.png", "Beyond detection: calibration error against the imbalance ratio",
     "imbalance/report.md"),
)


def _gallery_html(root: Path) -> str:
    """The figures of ``GALLERY`` found under ``root``, inlined (the page stays one self-contained file)."""
    found, missing = [], []
    for rel, caption, link in GALLERY:
        f = root / rel
        if not f.is_file():
            if not f.parent.is_dir():  # the study never ran here (a search may leave a plot out on purpose)
                missing.append(rel)
            continue
        data = base64.b64encode(f.read_bytes()).decode("ascii")
        more = f" (<a href='{html.escape(link)}'>details</a>)" if link and (root / link).is_file() else ""
        found.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}' "
                     f"style='max-width:100%'><figcaption>{html.escape(caption)}{more}</figcaption></figure>")
    note = (f"<p class='rule'>Not in this results folder: {html.escape(', '.join(missing))} (`make search`, "
            "`make reproduce-imbalance` and a reproduction with Table 1b write them).</p>") if missing else ""
    return "<h2 id='figures'>Figures, the search and the imbalance study</h2>" + "".join(found) + note


def _live_html(root: Path) -> str:
    journal = root / "studies.journal"
    return ("<p>Live view of the table studies (trials = rows x seeds, their state and parameters): "
            f"<code>optuna-dashboard --storage-class JournalFileStorage {html.escape(str(journal))}</code>, or "
            "<code>make dashboard</code>, which serves it on <a href='http://127.0.0.1:8080'>127.0.0.1:8080</a>.</p>")


def build_dashboard(path: Path, profile: str, tables: list[Table], results: dict[str, dict[str, RowResult]],
                    summary: dict[str, tuple[TauStats, Verdict]], noise: NoiseChoice | None = None) -> Path:
    from plotly.offline import get_plotlyjs  # the whole library, inlined: the page needs no network

    checklist = "".join(
        f"<tr><td><a href='#t{t.id}'>{t.id}</a></td><td>{html.escape(t.claim)}</td>"
        f"<td>{html.escape(_tau(summary[t.id][0]))}</td>"
        f"<td class='{summary[t.id][1].verdict.replace(' ', '-')}'>{summary[t.id][1].verdict}</td>"
        f"<td>{html.escape(summary[t.id][1].deciding[0].text()) if summary[t.id][1].deciding else '—'}</td></tr>"
        for t in tables)
    sections = "".join(_table_html(t, results[t.id], *summary[t.id]) for t in tables)
    noise_sd = noise.sd if noise is not None else None
    specs = {t.id: _plot_spec(t, results[t.id], noise_sd) for t in tables}
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>focalbench — {html.escape(profile)}</title>
<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>
<h1>focalbench: the paper's ablations beside ours (profile <code>{html.escape(profile)}</code>)</h1>
<p>Paper: Lin et al., Focal Loss for Dense Object Detection, arXiv:1708.02002, Tables 1 and 3. Ours: see
report.md beside this page for the profile, hardware, the exact command and how the verdicts are decided.</p>
<h2>Claims checklist</h2><table id="claims"><tr><th>table</th><th>claim</th><th>Kendall's tau (permutation p)</th>
<th>verdict</th><th>deciding paired difference</th></tr>
{checklist}</table>{_live_html(path.parent)}{_noise_html(noise)}{sections}{_gallery_html(path.parent)}
<script>const SPECS = {json.dumps(specs)};
for (const [id, s] of Object.entries(SPECS)) {{ Plotly.newPlot('plot' + id, s.data, s.layout, {{responsive: true}}); }}
</script></body></html>
"""
    atomic_write_text(path, page)
    return path
