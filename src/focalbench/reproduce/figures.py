"""Figures of results/<profile>/figures/: the paper's curve beside ours for each table, and Figure 1."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from focalbench.reproduce.analysis import RowResult  # noqa: E402

PAPER_STYLE = dict(color="0.35", marker="s", linestyle="--", label="paper (COCO, R-50)")
OURS_STYLE = dict(color="C0", marker="o", capsize=3, label="ours (mean ± sd over seeds)")
SEED_STYLE = dict(color="C0", alpha=0.5, s=16, linewidths=0, label="ours, each seed")


def _seed_dots(ax, xs, rows: list[RowResult]) -> None:
    """Every seed's AP as a faint dot beside the mean (3 seeds say more than a ± does)."""
    px = [x for x, r in zip(xs, rows) for _ in r.values()]
    py = [v for r in rows for v in r.values()]
    if any(len(r.values()) > 1 for r in rows):
        ax.scatter(px, py, **SEED_STYLE)


def _twin(ax, xs, paper, means, sds, xlabel, rows=()):
    ax.plot(xs, paper, **PAPER_STYLE)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("paper AP", color="0.35")
    ax2 = ax.twinx()
    ax2.errorbar(xs, means, yerr=sds, **OURS_STYLE)
    _seed_dots(ax2, xs, list(rows))
    ax2.set_ylabel("our AP", color="C0")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="lower right", fontsize=8)
    return ax2


def _series(rows: list[RowResult], key: str = "x"):
    rows = [r for r in rows if r.complete]
    return ([r.extra.get(key) for r in rows], [r.paper["AP"] for r in rows],
            [r.mean() for r in rows], [r.std() for r in rows], rows)


def line_figure(rows: list[RowResult], title: str, xlabel: str, path: Path, logit_x: bool = False) -> Path | None:
    xs, paper, means, sds, done = _series(rows)
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if logit_x:  # alpha from .10 to .999: equal spacing per row reads better than a linear axis
        ticks = list(range(len(xs)))
        _twin(ax, ticks, paper, means, sds, xlabel, done)
        ax.set_xticks(ticks, [f"{x:g}" for x in xs])
    else:
        _twin(ax, xs, paper, means, sds, xlabel, done)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_figure(rows: list[RowResult], title: str, path: Path) -> Path | None:
    done = [r for r in rows if r.complete]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(done)), 4))
    x = np.arange(len(done))
    ax.bar(x - 0.2, [r.paper["AP"] for r in done], 0.4, color="0.6", label="paper AP (left axis)")
    ax.set_ylabel("paper AP")
    ax2 = ax.twinx()
    ax2.bar(x + 0.2, [r.mean() for r in done], 0.4, yerr=[r.std() for r in done], color="C0", capsize=3,
            label="our AP (right axis)")
    _seed_dots(ax2, list(x + 0.2), done)
    ax2.set_ylabel("our AP", color="C0")
    ax.set_xticks(x, [r.name for r in done], rotation=30, ha="right", fontsize=8)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def anchors_figure(rows: list[RowResult], path: Path) -> Path | None:
    """Table 1c as two heat maps (#sc x #ar): paper AP and our AP."""
    done = [r for r in rows if r.complete]
    if not done:
        return None
    scs = sorted({r.extra["sc"] for r in rows})
    ars = sorted({r.extra["ar"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, (label, get) in zip(axes, [("paper AP", lambda r: r.paper["AP"]), ("our AP", lambda r: r.mean())]):
        grid = np.full((len(ars), len(scs)), np.nan)
        for r in done:
            grid[ars.index(r.extra["ar"]), scs.index(r.extra["sc"])] = get(r)
        im = ax.imshow(grid, cmap="viridis", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_xticks(range(len(scs)), [str(s) for s in scs])
        ax.set_yticks(range(len(ars)), [str(a) for a in ars])
        ax.set_xlabel("#scales")
        ax.set_ylabel("#aspect ratios")
        ax.set_title(label, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Table 1c: anchors", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure1(path: Path, gammas=(0.0, 0.5, 1.0, 2.0, 5.0)) -> Path:
    """The paper's Figure 1: loss vs probability of the ground-truth class, computed by our loss."""
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
