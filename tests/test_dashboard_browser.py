"""dashboard.html renders in headless Chromium from file:// with no network: every table's plot is drawn by
the inlined plotly.js and the page logs no console error. (.ci/system_deps.sh installs Debian's chromium.)"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from focalbench.reproduce.analysis import RowResult, choose_noise_sd, table_verdict, tau_stats
from focalbench.reproduce.dashboard import build_dashboard
from focalbench.reproduce.figures import figure1
from focalbench.reproduce.sweeps import load_tables

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def _page(tmp_path: Path) -> Path:
    tables = load_tables(["1a", "1d"])
    (tmp_path / "figures").mkdir(exist_ok=True)
    figure1(tmp_path / "figures" / "figure1_loss_vs_pt.png")
    results = {t.id: {r.name: RowResult(r.name, r.paper, [{"AP": 10.0 + i + s * (1 + 0.1 * i), "AP50": 20.0,
                                                          "AP75": 9.0, "APl": -1.0, "seed": s, "status": "ok",
                                                          "config_hash": f"{t.id}{i:02d}{s}abc"}
                                                         for s in range(3)], r.extra)
                      for i, r in enumerate(t.rows)} for t in tables}
    results["1d"]["OHEM 128 nms.7"].diverged.append({"seed": 3, "status": "diverged"})
    noise = choose_noise_sd(results, None)
    run_set = {t.id: (t, results[t.id]) for t in tables}
    summary = {t.id: (tau_stats(list(results[t.id].values())), table_verdict(t, results[t.id], run_set, noise.sd))
               for t in tables}
    return build_dashboard(tmp_path / "dashboard.html", "test", tables, results, summary, noise)


def test_page_is_self_contained(tmp_path):
    html = _page(tmp_path).read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html)  # nothing fetched, not even from disk
    assert html.count("<tr>") >= 2 + 7 + 10 and "OHEM 1:3 512 nms.5" in html
    assert "permutation p" in html and "<h2>Noise</h2>" in html and "diverged: s3" in html and "n/a" in html
    assert "<a href='runs/1a001abc.json' title='config hash 1a001abc'>s1: 11.0</a>" in html  # row -> run file
    assert "data:image/png;base64," in html and "Figure 1 of the paper" in html  # the figures, inlined
    assert "Not in this results folder: search/optimization_history.png" in html  # no search was run there
    assert "figures/figure4_loss_cdf.png" not in html.split("Not in this results folder")[1]
    assert "optuna-dashboard --storage-class JournalFileStorage" in html
    text = html.split("<h2>Claims checklist</h2>")[1].split("<script>")[0]
    assert not re.search(r"\['|\[\d+, \d+\]", text)  # no Python list repr (intervals are [+a, +b])


def test_renders_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (.ci/system_deps.sh installs Debian's package)")
    page = _page(tmp_path)
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for tid in ("1a", "1d"):  # plotly replaced each empty div by its SVG, with both axis titles
        start = dom.index(f'id="plot{tid}"')
        end = dom.find('class="plot"', start + 20)
        plot = dom[start:end if end > 0 else None]
        assert 'class="main-svg"' in plot, f"plot {tid} not drawn"
        assert 'class="g-ytitle"' in plot and "AP − AP of" in plot, f"plot {tid}: no y-axis title"
        assert 'class="g-xtitle"' in plot, f"plot {tid}: no x-axis title"
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
