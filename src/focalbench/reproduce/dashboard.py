"""results/<profile>/dashboard.html: one self-contained page (plotly.js inlined, no network, works from
file://) with the claims checklist, every table, and an interactive paper-vs-ours plot per table."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from focalbench.reproduce.analysis import RowResult, Verdict
from focalbench.reproduce.sweeps import Table
from focalbench.runstore import atomic_write_text

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}.supported{color:#176b1e;font-weight:600}.contradicted{color:#a31515;font-weight:600}
.inconclusive{color:#8a6d00;font-weight:600}.plot{height:380px}code{font-size:12px}"""


def _fmt(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.1f}"


def _table_html(table: Table, rows: dict[str, RowResult], tau: float, verdict: Verdict) -> str:
    head = "<tr><th>row</th><th>overrides</th><th>paper AP</th><th>our AP</th><th>our AP50</th><th>our AP75</th>" \
           "<th>seeds</th><th>status</th></tr>"
    body = []
    for row in table.rows:
        r = rows[row.name]
        cells = [html.escape(row.name), f"<code>{html.escape(' '.join(row.overrides))}</code>", _fmt(row.paper["AP"])]
        cells += [f"{_fmt(r.mean(k))} ± {_fmt(r.std(k))}" if r.complete else "—" for k in ("AP", "AP50", "AP75")]
        cells += [str(len(r.runs)), html.escape(", ".join(sorted(set(r.statuses))) or "not run")]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<h2 id='t{table.id}'>Table {html.escape(table.id)}: {html.escape(table.title)}</h2>"
            f"<table class='results'>{head}{''.join(body)}</table>"
            f"<p>Kendall's tau: <b>{'n/a' if math.isnan(tau) else f'{tau:.2f}'}</b>. Claim: <i>{html.escape(table.claim)}"
            f"</i> → <span class='{verdict.verdict.replace(' ', '-')}'>{verdict.verdict}</span>. "
            f"{html.escape(verdict.detail)}.</p><div class='plot' id='plot{table.id}'></div>")


def _plot_spec(table: Table, rows: dict[str, RowResult]) -> dict:
    done = [rows[r.name] for r in table.rows if rows[r.name].complete]
    names = [r.name for r in done]
    return {
        "data": [
            {"type": "scatter", "mode": "lines+markers", "name": "paper AP (left axis)", "x": names,
             "y": [r.paper["AP"] for r in done], "line": {"dash": "dash", "color": "#666"}},
            {"type": "scatter", "mode": "lines+markers", "name": "our AP, mean ± sd (right axis)", "x": names,
             "y": [r.mean() for r in done], "yaxis": "y2",
             "error_y": {"type": "data", "array": [r.std() for r in done], "visible": True}},
        ],
        "layout": {"margin": {"t": 30, "b": 90}, "legend": {"orientation": "h", "y": 1.12},
                   "yaxis": {"title": "paper AP"}, "yaxis2": {"title": "our AP", "overlaying": "y", "side": "right"},
                   "xaxis": {"tickangle": -30}},
    }


def build_dashboard(path: Path, profile: str, tables: list[Table], results: dict[str, dict[str, RowResult]],
                    summary: dict[str, tuple[float, Verdict]]) -> Path:
    from plotly.offline import get_plotlyjs  # the whole library, inlined: the page needs no network

    checklist = "".join(
        f"<tr><td><a href='#t{t.id}'>{t.id}</a></td><td>{html.escape(t.claim)}</td>"
        f"<td>{'n/a' if math.isnan(summary[t.id][0]) else f'{summary[t.id][0]:.2f}'}</td>"
        f"<td class='{summary[t.id][1].verdict.replace(' ', '-')}'>{summary[t.id][1].verdict}</td></tr>"
        for t in tables)
    sections = "".join(_table_html(t, results[t.id], *summary[t.id]) for t in tables)
    specs = {t.id: _plot_spec(t, results[t.id]) for t in tables}
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>focalbench — {html.escape(profile)}</title>
<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>
<h1>focalbench: the paper's ablations beside ours (profile <code>{html.escape(profile)}</code>)</h1>
<p>Paper: Lin et al., Focal Loss for Dense Object Detection, arXiv:1708.02002, Tables 1 and 3. Ours: see
report.md beside this page for the profile, hardware and the exact command.</p>
<h2>Claims checklist</h2><table id="claims"><tr><th>table</th><th>claim</th><th>Kendall's tau</th><th>verdict</th></tr>
{checklist}</table>{sections}
<script>const SPECS = {json.dumps(specs)};
for (const [id, s] of Object.entries(SPECS)) {{ Plotly.newPlot('plot' + id, s.data, s.layout, {{responsive: true}}); }}
</script></body></html>
"""
    atomic_write_text(path, page)
    return path
