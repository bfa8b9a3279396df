"""Figures of results/<profile>/figures/: each table's rows as differences from its baseline row, ours beside
the paper's, and the paper's Figure 1.

A table figure plots, for every row r and the table's baseline row b (``baseline:`` in the YAML, default the
first row), on one AP axis:

- the paper's difference ``AP_paper(r) - AP_paper(b)`` (grey squares);
- our per-seed differences ``d_s = AP_s(r) - AP_s(b)`` (small dots: the same seed shares the initialisation
  and the batch order, so its offset cancels);
- their mean ``dbar`` with its 95% interval ``dbar ± t_{.975}(n-1) sd(d) / sqrt(n)`` (a single seed: the
  noise sd of the report with a normal quantile; without one, no bar) — :func:`stats.paired_diff`.

A row that diverged at every seed has no AP: it is marked "diverged" on the zero line, never drawn as 0 AP.
Which figure a table gets is its YAML's ``figure:`` (:data:`FIGURES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from focalbench.reproduce.analysis import BaselineDiff, RowResult, baseline_differences  # noqa: E402
from focalbench.reproduce.sweeps import Table  # noqa: E402

PAPER_STYLE = dict(color="0.45", marker="s", markerfacecolor="none", markersize=7, linestyle="--", linewidth=1)
SEED_STYLE = dict(alpha=0.55, s=14, linewidths=0, zorder=3)
DPI = 130


def _jitter(k: int, width: float = 0.08) -> np.ndarray:
    return np.linspace(-width, width, k) if k > 1 else np.zeros(k)


def _ours(ax, xs, items: list[BaselineDiff], color: str, label: str, line: bool) -> None:
    """Our per-seed dots, mean and 95% CI bar at ``xs`` (one per item); diverged rows as a marker on 0."""
    mx, my, lo, hi = [], [], [], []
    sx, sy = [], []
    for x, it in zip(xs, items):
        if it.diff is None:
            continue
        d = it.diff
        sx += list(x + _jitter(len(d.diffs)))
        sy += list(d.diffs)
        mx.append(x)
        my.append(d.mean)
        lo.append(d.mean - d.low if d.known else 0.0)
        hi.append(d.high - d.mean if d.known else 0.0)
    if mx:
        ax.errorbar(mx, my, yerr=[lo, hi], color=color, marker="o", markersize=6, capsize=4, linewidth=1.5 if line else 0,
                    elinewidth=1.5, label=label, zorder=4)
    if sx:
        ax.scatter(sx, sy, color=color, **SEED_STYLE, label=f"{label.split(':')[0]}: each seed")
    div = [x for x, it in zip(xs, items) if it.diff is None and not it.row.complete]
    if div:
        ax.scatter(div, [0.0] * len(div), marker="x", color="C3", s=60, zorder=5, label="diverged at every seed (no AP)")


def _finish(fig, ax, table: Table, path: Path, xlabel: str, n_seeds: int) -> Path:
    ax.axhline(0.0, color="0.2", linewidth=0.8, zorder=1)
    ax.use_sticky_edges = False          # bars stick to 0: keep a margin so the baseline's marker shows
    ax.margins(x=0.04, y=0.06)
    ax.autoscale_view()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"AP − AP of '{table.baseline_row}'")
    ax.set_title(f"Table {table.id}: {table.title}\neach row minus '{table.baseline_row}' "
                 f"(ours paired by seed, {n_seeds} seed{'s' if n_seeds != 1 else ''})", fontsize=10)
    ax.grid(axis="y", color="0.9", zorder=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _n_seeds(items: list[BaselineDiff]) -> int:
    return max((it.diff.n for it in items if it.diff is not None), default=0)


def _ours_label(items: list[BaselineDiff]) -> str:
    methods = {it.diff.method for it in items if it.diff is not None and it.diff.n > 0}
    how = "t" if methods <= {"t"} else "noise sd" if "normal, noise sd" in methods else "no interval (1 seed)"
    return f"ours: mean, 95% CI ({how})"


def _usable(table: Table, rows: Mapping[str, RowResult], noise_sd) -> list[BaselineDiff] | None:
    if not rows[table.baseline_row].complete:
        return None
    items = baseline_differences(table, rows, noise_sd)
    return items if any(it.diff is not None for it in items) else None


def line_figure(table: Table, rows: Mapping[str, RowResult], path: Path, noise_sd: float | None = None) -> Path | None:
    """Rows along the YAML's ``x`` (alpha, gamma), one tick per row, equally spaced (alpha .10 … .999)."""
    items = _usable(table, rows, noise_sd)
    if items is None:
        return None
    xs = np.arange(len(items), dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.plot(xs, [it.paper for it in items], **PAPER_STYLE, label="paper (COCO, one run)")
    _ours(ax, xs, items, "C0", _ours_label(items), line=True)
    ax.set_xticks(xs, [f"{it.row.extra.get('x', it.name):g}" if isinstance(it.row.extra.get("x"), (int, float))
                       else it.name for it in items])
    return _finish(fig, ax, table, path, f"{table.x_label or 'row'} (rows equally spaced)", _n_seeds(items))


def bar_figure(table: Table, rows: Mapping[str, RowResult], path: Path, noise_sd: float | None = None) -> Path | None:
    """One category per row: the paper's difference as a grey bar, ours as a blue bar with its CI and seeds."""
    items = _usable(table, rows, noise_sd)
    if items is None:
        return None
    xs = np.arange(len(items), dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.75 * len(items) + 2), 4.2))
    ax.bar(xs - 0.2, [it.paper for it in items], 0.38, color="0.78", edgecolor="0.45", label="paper (COCO, one run)",
           zorder=2)
    ours = [it.diff.mean if it.diff is not None else 0.0 for it in items]
    ax.bar(xs + 0.2, ours, 0.38, color="C0", alpha=0.35, zorder=2)
    _ours(ax, xs + 0.2, items, "C0", _ours_label(items), line=False)
    ax.set_xticks(xs, [it.name for it in items], rotation=30, ha="right", fontsize=8)
    return _finish(fig, ax, table, path, "row", _n_seeds(items))


def anchors_figure(table: Table, rows: Mapping[str, RowResult], path: Path, noise_sd: float | None = None,
                   scale_key: str = "sc", ratio_key: str = "ar") -> Path | None:
    """Table 1c: #scales as categories on x, one colour per #aspect ratios; paper dashed, ours solid."""
    items = _usable(table, rows, noise_sd)
    if items is None:
        return None
    scs = sorted({it.row.extra.get(scale_key) for it in items})
    ars = sorted({it.row.extra.get(ratio_key) for it in items})
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for k, ar in enumerate(ars):
        sub = sorted((it for it in items if it.row.extra.get(ratio_key) == ar),
                     key=lambda it: scs.index(it.row.extra.get(scale_key)))
        off = (k - (len(ars) - 1) / 2) * 0.18
        xs = np.array([scs.index(it.row.extra.get(scale_key)) + off for it in sub], dtype=float)
        color = f"C{k}"
        ax.plot(xs, [it.paper for it in sub], **{**PAPER_STYLE, "color": color}, alpha=0.7,
                label=f"paper, {ar} ratio{'s' if ar != 1 else ''}")
        _ours(ax, xs, sub, color, f"ours, {ar} ratio{'s' if ar != 1 else ''}: mean, 95% CI", line=True)
    ax.set_xticks(range(len(scs)), [str(s) for s in scs])
    return _finish(fig, ax, table, path, "#scales per octave", _n_seeds(items))


def speed_figure(table: Table, rows: Mapping[str, RowResult], path: Path, noise_sd: float | None = None,
                 time_key: str = "inference_ms_per_image") -> Path | None:
    """Table 1e / the paper's Figure 2: AP against inference time per image, the paper's points (ms on an M40
    GPU) beside ours (ms on this machine's CPU threads), one panel each: the units differ, the shape is what
    compares. Ours: every seed (small dots) and the row's mean with its AP sd and the seeds' time range."""
    have = [r for r in (rows[row.name] for row in table.rows) if r.complete and r.by_seed(time_key)]
    if not have:
        return None
    fig, (ax_p, ax_o) = plt.subplots(1, 2, figsize=(10, 4))
    paper = [(row.paper.get("ms"), row.paper["AP"], row.name) for row in table.rows if row.paper.get("ms")]
    if paper:
        ax_p.plot([p[0] for p in paper], [p[1] for p in paper], **PAPER_STYLE, label="paper: RetinaNet-50")
        for ms, ap, name in paper:
            sc = table.row(name).paper.get("scale")
            ax_p.annotate(f"{sc} px" if sc else name, (ms, ap), textcoords="offset points", xytext=(5, -10), fontsize=8)
    ax_p.set_xlabel("inference time per image (ms, Nvidia M40)")
    ax_p.set_ylabel("COCO AP (test-dev)")
    ax_p.set_title("paper (Table 1e, Figure 2)", fontsize=10)
    xs, ys, ex, ey = [], [], [], []
    for r in have:
        t, a = r.by_seed(time_key), r.by_seed()
        shared = sorted(set(t) & set(a))
        ax_o.scatter([t[s] for s in shared], [a[s] for s in shared], color="C0", **SEED_STYLE)
        tm = float(np.median([t[s] for s in shared]))
        xs.append(tm)
        ys.append(r.mean())
        ex.append([tm - min(t[s] for s in shared), max(t[s] for s in shared) - tm])
        ey.append(r.std() if len(shared) > 1 else 0.0)
        ax_o.annotate(r.name, (tm, r.mean()), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax_o.errorbar(xs, ys, xerr=np.array(ex).T, yerr=ey, color="C0", marker="o", capsize=3, linewidth=1.2,
                  label="ours: mean AP ± sd, time range over seeds")
    runs = [run for r in have for run in r.runs if run.get("inference")]
    how = runs[0]["inference"] if runs else {}
    ax_o.set_xlabel(f"inference time per image (ms, median; batch {how.get('batch_size', '?')}, "
                    f"{how.get('torch_threads', '?')} CPU thread(s))")
    ax_o.set_ylabel("our AP (built-in data)")
    ax_o.set_title(f"ours ({max(len(r.values()) for r in have)} seeds)", fontsize=10)
    for ax in (ax_p, ax_o):
        ax.grid(color="0.9", zorder=0)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Table {table.id}: {table.title}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


FIGURES: dict[str, Callable[..., Path | None]] = {"line": line_figure, "bars": bar_figure, "anchors": anchors_figure,
                                                  "speed": speed_figure}


def table_figure(table: Table, rows: Mapping[str, RowResult], fig_dir: Path, noise_sd: float | None = None) -> Path | None:
    """The figure the table's YAML names (``figure:``), written to ``fig_dir/<table.figure_file>.png``."""
    return FIGURES[table.figure](table, rows, Path(fig_dir) / f"{table.figure_file}.png", noise_sd)


def figure1(path: Path, gammas=(0.0, 0.5, 1.0, 2.0, 5.0)) -> Path:
    """The paper's Figure 1: ``FL(p_t) = -(1 - p_t)^gamma log(p_t)`` vs p_t, computed by our loss."""
    from focalbench.losses import sigmoid_focal_loss

    p = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)
    logits = torch.log(p) - torch.log1p(-p)
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in gammas:
        loss = sigmoid_focal_loss(logits, torch.ones_like(p), alpha=-1, gamma=g)
        ax.plot(p.numpy(), loss.numpy(), label=f"γ = {g:g}" + (" (CE)" if g == 0 else ""))
    ax.axvspan(0.6, 1.0, color="0.9", zorder=0)
    ax.text(0.62, 4.0, "well-classified\nexamples", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 5)
    ax.set_xlabel("probability of ground truth class $p_t$")
    ax.set_ylabel("loss")
    ax.set_title("Figure 1: FL(p_t) = -(1 - p_t)^γ log(p_t)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
