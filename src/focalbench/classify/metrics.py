"""Metrics for rare positives, computed from scores in numpy (checked against scikit-learn in the tests).

Written by hand (not sklearn.metrics) so every metric comes from one sort of the scores, which matters
at 1:10,000 with a million validation rows; the definitions are scikit-learn's:

- ``AP``: average precision, sum_n (R_n - R_{n-1}) P_n over distinct score thresholds (no interpolation);
  ``sklearn.metrics.average_precision_score``.
- ``ROC_AUC``: trapezoidal area under the ROC curve (ties give diagonal segments); ``roc_auc_score``.
- ``recall_at_fpr``: the highest true-positive rate over ROC points with false-positive rate <= ``fpr``.
- ``best_F1``: the highest F1 over the precision-recall curve's thresholds.
- ``ECE``: expected calibration error, sum_b |B_b|/N |mean(y in B_b) - mean(p in B_b)| over ``n_bins``
  equal-width bins of p (bin of p: ``searchsorted(edges[1:-1], p)``, as ``calibration_curve``).
- ``Brier``: mean (p - y)^2; ``brier_score_loss``.
- ``accuracy`` at p >= 0.5 is reported only beside ``accuracy_all_negative``, the accuracy of predicting
  "negative" for every sample (n_neg / N): at 1:10,000 that trivial baseline scores 0.9999.
"""

from __future__ import annotations

import numpy as np

METRICS = ("AP", "ROC_AUC", "recall_at_fpr", "best_F1", "ECE", "Brier", "accuracy", "accuracy_all_negative")


def _curve(scores: np.ndarray, labels: np.ndarray):
    """Cumulative (tp, fp) at each distinct threshold, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return tp.astype(np.float64), fp.astype(np.float64)


def binary_metrics(probs, labels, fpr: float = 0.01, n_bins: int = 15) -> dict[str, float]:
    """All metrics for one positive class. ``probs`` in [0, 1], ``labels`` 0/1 (or bool), both ``(N,)``."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(np.int64)
    if p.shape != y.shape:
        raise ValueError(f"probs {p.shape} and labels {y.shape}: must have the same length")
    n, n_pos = len(y), int(y.sum())
    n_neg = n - n_pos
    out = {"n_pos": n_pos, "n_neg": n_neg}
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"labels: {n_pos} positives and {n_neg} negatives; both classes are needed")
    tp, fp = _curve(p, y)
    recall, precision = tp / n_pos, tp / (tp + fp)
    out["AP"] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    tpr, fpr_curve = np.r_[0.0, recall], np.r_[0.0, fp / n_neg]
    out["ROC_AUC"] = float(np.trapezoid(tpr, fpr_curve))
    out["recall_at_fpr"] = float(tpr[fpr_curve <= fpr].max())
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp > 0, 2 * precision * recall / (precision + recall), 0.0)
    out["best_F1"] = float(f1.max())
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.searchsorted(edges[1:-1], p)
    count = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, weights=y, minlength=n_bins) - np.bincount(b, weights=p, minlength=n_bins))
    out["ECE"] = float(gap.sum() / n)  # sum_b |B_b|/N * |mean y - mean p| = sum_b |sum y - sum p| / N
    out["Brier"] = float(np.mean((p - y) ** 2))
    out["accuracy"] = float(np.mean((p >= 0.5) == (y == 1)))
    out["accuracy_all_negative"] = n_neg / n
    out["ECE_bins_used"] = int((count > 0).sum())
    return out


def classification_metrics(probs, labels, class_names, fpr: float = 0.01, n_bins: int = 15) -> dict:
    """One-vs-rest metrics. ``probs`` ``(N, K)``; ``labels`` ``(N,)`` class index or -1 (negative).

    K = 1: the binary metrics. K > 1: the macro mean of each metric over the K classes, plus
    ``per_class``.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    per_class = {name: binary_metrics(probs[:, k], labels == k, fpr, n_bins)
                 for k, name in enumerate(class_names)}
    if len(class_names) == 1:
        return next(iter(per_class.values()))
    out = {m: float(np.mean([pc[m] for pc in per_class.values()])) for m in METRICS}
    out["per_class"] = per_class
    return out
