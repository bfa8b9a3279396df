"""The paper's Figure 4: cumulative distribution of the normalised loss over positive and over negative
samples, for gamma in {0, .5, 1, 2}, computed on the outputs of our trained FL (gamma=2) model.

As in the paper, one converged model (trained with gamma=2) is fixed and the focal loss of its predictions
is evaluated at several gammas; a sample is one (anchor, class) binary classifier output on the validation
images (positives: the ground-truth class of a foreground anchor; negatives: every other output of
non-ignored anchors). Within each group the losses are normalised to sum to one and sorted ascending.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from focalbench.losses.terms import IGNORE

GAMMAS = (0.0, 0.5, 1.0, 2.0)
WEIGHTS_FILE = "model.pt"


@torch.no_grad()
def collect_probabilities(run_dir: Path, overrides: list[str], max_images: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """p_t of every positive and every negative output of the model saved in ``run_dir`` (val split)."""
    from focalbench.builders import build_datamodule, build_module, derive_schedule
    from focalbench.train import compose

    cfg = compose(overrides)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("validate")
    module = build_module(cfg, dm.num_classes, derive_schedule(cfg), None)
    module.model.load_state_dict(torch.load(run_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    model = module.model.eval()
    pos, neg, seen = [], [], 0
    for images, targets in dm.val_dataloader():
        out = model(images)
        labels = model.assign(model.anchors(images), targets)["labels"]      # (N, A): class, -1 bg, -2 ignore
        p = model.scores(out.cls_logits)                                       # (N, A, K)
        keep = labels != IGNORE
        onehot = torch.zeros_like(p, dtype=torch.bool)
        fg = labels >= 0
        onehot[fg] = torch.nn.functional.one_hot(labels[fg], p.shape[-1]).bool()
        pos.append(p[onehot & keep[..., None]])
        neg.append(1.0 - p[~onehot & keep[..., None]])                        # p_t of a negative is 1 - p
        seen += len(images)
        if seen >= max_images:
            break
    return torch.cat(pos).double().numpy(), torch.cat(neg).double().numpy()


def normalised_cdf(p_t: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of samples, cumulative normalised loss), samples sorted by loss ascending (paper Fig. 4)."""
    loss = -((1.0 - p_t) ** gamma) * np.log(np.clip(p_t, 1e-300, None))
    loss = np.sort(loss)
    total = loss.sum()
    cum = np.cumsum(loss) / total if total > 0 else np.zeros_like(loss)
    return np.arange(1, len(loss) + 1) / len(loss), cum


def figure4(pos: np.ndarray, neg: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, (name, p_t) in zip(axes, [("positive samples", pos), ("negative samples", neg)]):
        for g in GAMMAS:
            x, y = normalised_cdf(p_t, g)
            step = max(1, len(x) // 2000)  # plot ~2k points per curve, whatever the sample count
            ax.plot(x[::step], y[::step], label=f"γ = {g:g}")
        ax.set_title(f"{name} ({len(p_t):,})", fontsize=10)
        ax.set_xlabel("fraction of samples")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cumulative normalised loss")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Figure 4: loss CDFs of our trained FL (γ=2) model on the validation split", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def hardest_share(p_t: np.ndarray, gamma: float, fraction: float = 0.2) -> float:
    """Share of the total loss carried by the hardest ``fraction`` of samples (the paper: ~half for positives)."""
    x, y = normalised_cdf(p_t, gamma)
    i = np.searchsorted(x, 1.0 - fraction)
    return float(1.0 - (y[i - 1] if i > 0 else 0.0))
