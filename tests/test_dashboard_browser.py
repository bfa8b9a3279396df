"""dashboard.html renders in headless Chromium from file:// with no network: every table's plot is drawn by
the inlined plotly.js and the page logs no console error. (.ci/system_deps.sh installs Debian's chromium.)"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from focalbench.reproduce.analysis import RowResult, Verdict
from focalbench.reproduce.dashboard import build_dashboard
from focalbench.reproduce.sweeps import load_tables

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def _page(tmp_path: Path) -> Path:
    tables = load_tables(["1a", "1d"])
    results = {t.id: {r.name: RowResult(r.name, r.paper, [{"AP": 10.0 + i, "AP50": 20.0, "AP75": 9.0, "status": "ok"}],
                                        r.extra) for i, r in enumerate(t.rows)} for t in tables}
    summary = {"1a": (0.5, Verdict("supported", "x")), "1d": (float("nan"), Verdict("inconclusive", "y"))}
    return build_dashboard(tmp_path / "dashboard.html", "test", tables, results, summary)


def test_page_is_self_contained(tmp_path):
    html = _page(tmp_path).read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html)  # nothing fetched, not even from disk
    assert html.count("<tr>") >= 2 + 7 + 10 and "OHEM 1:3 512 nms.5" in html


def test_renders_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (.ci/system_deps.sh installs Debian's package)")
    page = _page(tmp_path)
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    for tid in ("1a", "1d"):  # plotly replaced each empty div by its SVG
        start = dom.index(f'id="plot{tid}"')
        assert 'class="main-svg"' in dom[start:start + 5000], f"plot {tid} not drawn"
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
