"""Classification data with a controlled imbalance ratio (n_neg : n_pos = ``ratio`` : 1), no network.

Both sources keep the *positives fixed* and size the majority class to hit the ratio: every split holds
``positives.<split>`` positives per positive class and ``ratio`` times as many negatives. The negatives
of a smaller ratio are the first ones of a larger ratio (nested draws), so, for one seed, moving from 1:10
to 1:10,000 only adds negatives: the task itself (clusters, digits, positives) does not change.

- ``tabular``: scikit-learn's ``make_classification``. One pool of ``max_ratio * sum(positives)``
  negatives is drawn per seed (the generator's clusters depend on the number of samples, so the pool
  size must not depend on ``ratio``); splits take their positives and the first negatives they need.
- ``digits``: scikit-learn's real handwritten digits (1,797 8x8 images). The images are first split
  (stratified by digit) into train/val/test *source* images, so no image or augmented copy of it crosses
  splits. A split needing more images than it has sources takes augmented copies (shift by up to
  ``shift`` pixels, Gaussian pixel noise ``noise``), generated lazily in a fixed order: nested as above.

The splits are stratified by construction (exact counts per class and split) and fixed by ``seed``;
``Splits.ratio_reached`` is what metrics.json records.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

SPLITS = ("train", "val", "test")
KINDS = ("tabular", "digits")


@dataclass
class Splits:
    """Float32 features and labels per split. ``y`` is ``(N,)`` int64: class index ``0..K-1`` or -1."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    num_classes: int
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def counts(self, split: str) -> dict[str, int]:
        y = self.y[split]
        return {"pos": int((y >= 0).sum()), "neg": int((y < 0).sum())}

    @property
    def ratio_reached(self) -> dict[str, float]:
        """n_neg / n_pos per split, per positive class (every class has the same count)."""
        out = {}
        for s in SPLITS:
            c = self.counts(s)
            out[s] = c["neg"] / (c["pos"] / self.num_classes)
        return out

    def class_frequency(self, split: str = "train") -> float:
        """Fraction of samples that are positive for one class (same for every class)."""
        c = self.counts(split)
        return c["pos"] / self.num_classes / (c["pos"] + c["neg"])


def _check(cfg: dict, num_classes: int) -> None:
    """Validate ``cfg`` and resolve ``cfg["positives"]`` (positives per class and split) in place."""
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ValueError(f"data.kind={kind!r}: allowed {', '.join(KINDS)}")
    ratio = cfg["ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
        raise ValueError(f"data.ratio={ratio!r}: must be a number >= 1 (n_neg : n_pos = ratio : 1)")
    if ratio > cfg["max_ratio"]:
        raise ValueError(f"data.ratio={ratio}: must be <= data.max_ratio={cfg['max_ratio']}")
    rows = dict(cfg.get("rows") or {})
    for s in SPLITS:
        if rows.get(s) is not None:
            # Fixed split size instead of fixed positives: the positives are what the ratio leaves.
            n = int(rows[s]) // int(round(num_classes + ratio))
            if n < 1:
                what = "validation" if s == "val" else s
                raise ValueError(f"data.ratio={ratio}: leaves no {what} positive in data.rows.{s}="
                                 f"{rows[s]} (needs >= {int(round(num_classes + ratio))} rows)")
            cfg["positives"][s] = n
        n = cfg["positives"][s]
        if not isinstance(n, int) or n < 1:
            what = "validation positive" if s == "val" else f"{s} positive"
            raise ValueError(f"data.positives.{s}={n!r}: leaves no {what}; must be an int >= 1")
        if round(ratio * n) < 1:
            raise ValueError(f"data.ratio={ratio}: leaves no {s} negative with data.positives.{s}={n}")


def build_splits(cfg: Mapping[str, Any]) -> Splits:
    """The train/val/test splits described by ``cfg`` (the ``data`` config node, plain dict or DictConfig)."""
    cfg = dict(cfg)
    cfg["positives"] = dict(cfg["positives"])
    num_classes = len(_digit_list(cfg["positive"])) if cfg.get("kind") == "digits" else 1
    _check(cfg, num_classes)
    if cfg["kind"] == "tabular":
        return _tabular(cfg)
    return _digits(cfg)


# --- tabular ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tabular_pool(n_pos: int, n_neg: int, n_features: int, n_informative: int, n_redundant: int,
                  n_clusters_per_class: int, class_sep: float, seed: int):
    from sklearn.datasets import make_classification

    # Ask for a little more of each class than needed, then keep exact counts (make_classification
    # rounds per-cluster counts). flip_y=0 here: label noise is applied below so the ratio stays exact.
    n = int((n_pos + n_neg) * 1.01) + 64
    w_pos = min(0.5, max(n_pos * 1.005 + 16, 64) / n)
    x, y = make_classification(
        n_samples=n, n_features=n_features, n_informative=n_informative, n_redundant=n_redundant,
        n_clusters_per_class=n_clusters_per_class, class_sep=class_sep, weights=[1.0 - w_pos],
        flip_y=0.0, shuffle=True, random_state=seed,
    )
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) < n_pos or len(neg) < n_neg:  # cannot happen with the margins above; say so if it does
        raise RuntimeError(f"make_classification gave {len(pos)}/{len(neg)} pos/neg, need {n_pos}/{n_neg}")
    return x[pos[:n_pos]].astype(np.float32), x[neg[:n_neg]].astype(np.float32)


def _tabular(cfg: dict) -> Splits:
    pos_per = cfg["positives"]
    n_pos_total = sum(pos_per.values())
    ratio = cfg["ratio"]
    # Fixed positives: one pool for every ratio (nested). Fixed rows: positives vary, no pool to share.
    pool_ratio = ratio if any((cfg.get("rows") or {}).values()) else cfg["max_ratio"]
    xp, xn = _tabular_pool(n_pos_total, int(round(pool_ratio * n_pos_total)), cfg["n_features"],
                           cfg["n_informative"], cfg["n_redundant"], cfg["n_clusters_per_class"],
                           float(cfg["class_sep"]), int(cfg["seed"]))
    n_neg_max = len(xn) // n_pos_total  # negatives available per positive, per split block
    x, y, p0, n0 = {}, {}, 0, 0
    for s in SPLITS:
        npos, nneg = pos_per[s], int(round(ratio * pos_per[s]))
        block = n_neg_max * pos_per[s]  # each split owns a disjoint block of the negative pool
        xs = np.concatenate([xp[p0:p0 + npos], xn[n0:n0 + nneg]])
        ys = np.concatenate([np.zeros(npos, np.int64), np.full(nneg, -1, np.int64)])
        p0, n0 = p0 + npos, n0 + block
        x[s], y[s] = xs, ys
    rng = np.random.default_rng([int(cfg["seed"]), 1])
    flip_y = float(cfg.get("flip_y", 0.0))
    if not 0.0 <= flip_y <= 0.5:
        raise ValueError(f"data.flip_y={flip_y}: must be in [0, 0.5]")
    if flip_y > 0:
        # Label noise that keeps the ratio: swap the labels of round(flip_y * n_pos) positives with as
        # many random negatives. (sklearn's flip_y re-draws labels at random, which at 1:10,000 would
        # turn ~50x more negatives into positives than there are positives.)
        for s in SPLITS:
            k = int(round(flip_y * pos_per[s]))
            pi = rng.choice(np.flatnonzero(y[s] >= 0), k, replace=False)
            ni = rng.choice(np.flatnonzero(y[s] < 0), k, replace=False)
            y[s][pi], y[s][ni] = -1, 0
    # Standardise with train statistics (make_classification scales features by 1..101).
    mu, sd = x["train"].mean(0), x["train"].std(0) + 1e-6
    for s in SPLITS:
        x[s] = (x[s] - mu) / sd
        perm = rng.permutation(len(y[s]))
        x[s], y[s] = np.ascontiguousarray(x[s][perm]), y[s][perm]
    return Splits(x, y, 1, ["positive"], {"kind": "tabular", "n_features": cfg["n_features"]})


# --- digits -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _digits_sources(seed: int, fractions: tuple[float, float, float]):
    """Digit images (N, 8, 8) in [0, 1] split stratified by digit into train/val/test sources."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images, target = (d.images / 16.0).astype(np.float32), d.target
    rng = np.random.default_rng([seed, 2])
    idx = {s: [] for s in SPLITS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(target == digit))
        a = int(round(fractions[0] * len(members)))
        b = a + int(round(fractions[1] * len(members)))
        for s, part in zip(SPLITS, (members[:a], members[a:b], members[b:])):
            idx[s].extend(part.tolist())
    return {s: (images[np.array(i)], target[np.array(i)]) for s, i in idx.items()}


def _augmented(images: np.ndarray, n: int, shift: int, noise: float, rng: np.random.Generator):
    """The first ``n`` images of the sequence: each source once (shuffled), then augmented copies."""
    order = rng.permutation(len(images))
    if n <= len(images):
        return images[order[:n]]
    src = np.resize(order, n)  # cycles through the shuffled sources
    out = images[src].copy()
    k = n - len(images)  # copies beyond the originals are augmented
    dx, dy = rng.integers(-shift, shift + 1, size=(2, k))
    padded = np.pad(out[len(images):], ((0, 0), (shift, shift), (shift, shift)))
    rows = np.arange(8)[None, :, None] + shift - dy[:, None, None]
    cols = np.arange(8)[None, None, :] + shift - dx[:, None, None]
    out[len(images):] = padded[np.arange(k)[:, None, None], rows, cols]
    out[len(images):] += rng.normal(0.0, noise, size=(k, 8, 8)).astype(np.float32)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _digit_list(positive) -> list[int]:
    """``data.positive``: one digit (binary task) or a list (one-vs-rest multi-label, one output each)."""
    items = [positive] if isinstance(positive, int) else list(positive) if hasattr(positive, "__iter__") \
        else None
    if not items or not all(isinstance(p, int) and 0 <= p <= 9 for p in items) \
            or len(set(items)) != len(items) or len(items) > 9:
        raise ValueError(f"data.positive={positive!r}: one digit 0-9 or a list of 1-9 distinct digits")
    return items


def _digits(cfg: dict) -> Splits:
    positives = _digit_list(cfg["positive"])
    fr = tuple(float(cfg["source_split"][s]) for s in SPLITS)
    src = _digits_sources(int(cfg["seed"]), fr)
    ratio, seed = cfg["ratio"], int(cfg["seed"])
    x, y = {}, {}
    for si, s in enumerate(SPLITS):
        images, target = src[s]
        npos = cfg["positives"][s]
        parts, labels = [], []
        for k, digit in enumerate(positives):
            rng = np.random.default_rng([seed, 3, si, digit])
            parts.append(_augmented(images[target == digit], npos, cfg["shift"], cfg["noise"], rng))
            labels.append(np.full(npos, k, np.int64))
        neg_src = images[~np.isin(target, positives)]
        nneg = int(round(ratio * npos))
        rng = np.random.default_rng([seed, 4, si])
        parts.append(_augmented(neg_src, nneg, cfg["shift"], cfg["noise"], rng))
        labels.append(np.full(nneg, -1, np.int64))
        xs, ys = np.concatenate(parts), np.concatenate(labels)
        perm = np.random.default_rng([seed, 5, si]).permutation(len(ys))
        x[s] = np.ascontiguousarray(xs[perm][:, None])  # (N, 1, 8, 8)
        y[s] = ys[perm]
    return Splits(x, y, len(positives), [str(p) for p in positives],
                  {"kind": "digits", "positive": positives})
