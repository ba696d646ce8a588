"""Scores of evaluations: average precision (Pascal VOC protocol), mAP, accuracy (design §7).

Multi-label targets use 1 = present, 0 = absent, -1 = difficult (ignored: neither a positive
nor a negative, as in the VOC devkit, where such images are skipped when counting).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_numpy(x: Any) -> np.ndarray:
    """A NumPy view of an array-like (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def average_precision(scores: Any, targets: Any, eleven_point: bool = False) -> float:
    """AP of one class over a whole test set, VOC protocol.

    scores (N,) real; targets (N,) in {1, 0, -1}; -1 (difficult) entries are ignored. Entries
    are ranked by score, descending (ties keep their input order: a stable sort); precision and
    recall are taken after each ranked entry.

    Default: the VOC2010+ "all points" AP, the area under the interpolated precision-recall
    curve: precision is made non-increasing from the right (p_interp(r) = max precision at
    recall >= r) and summed over the recall steps, sum_k (r_k - r_{k-1}) * p_interp(r_k).
    eleven_point=True: the VOC2007 devkit's official measure, the mean of p_interp(r) over
    r = 0, 0.1, ..., 1 (p_interp = 0 beyond the largest recall reached). The two differ by
    up to a few points; say which one a table uses.

    No positive entry -> nan (AP is undefined; mean_average_precision skips such classes).
    Raises ValueError on mismatched shapes, non-finite scores or targets outside {1, 0, -1}.
    """
    s = _as_numpy(scores).astype(np.float64).reshape(-1)
    t = _as_numpy(targets).astype(np.float64).reshape(-1)
    if s.shape != t.shape:
        raise ValueError(f"{s.size} scores but {t.size} targets")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if not np.isin(t, (1.0, 0.0, -1.0)).all():
        raise ValueError("targets must be 1 (present), 0 (absent) or -1 (difficult, ignored)")
    keep = t != -1
    s, positive = s[keep], t[keep] == 1
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(positive[order])
    recall = tp / n_pos
    precision = tp / np.arange(1, len(tp) + 1)
    if eleven_point:
        total = 0.0
        for r in np.linspace(0.0, 1.0, 11):
            reached = precision[recall >= r - 1e-12]
            total += float(reached.max()) if reached.size else 0.0
        return total / 11.0
    # Interpolate: the best precision at this recall or any larger one.
    interp = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(steps * interp))


def mean_average_precision(scores: Any, targets: Any, eleven_point: bool = False) -> dict:
    """Per-class AP of scores (N, C) against targets (N, C) in {1, 0, -1}, and their mean.

    Returns {"ap": [C floats, nan for a class without positives], "map": nanmean of "ap" (nan
    if no class has a positive), "classes": C, "counted": classes with an AP}.
    """
    s, t = _as_numpy(scores), _as_numpy(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} must be the same (N, C)")
    aps = [average_precision(s[:, c], t[:, c], eleven_point) for c in range(s.shape[1])]
    finite = [a for a in aps if not np.isnan(a)]
    return {
        "ap": aps,
        "map": float(np.mean(finite)) if finite else float("nan"),
        "classes": len(aps),
        "counted": len(finite),
    }


def accuracy(logits_or_pred: Any, labels: Any) -> float:
    """Share of correct predictions: logits (N, C) (argmax taken) or predicted classes (N,)
    against labels (N,); nan when N = 0."""
    pred = _as_numpy(logits_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    pred, truth = pred.reshape(-1), _as_numpy(labels).reshape(-1)
    if pred.shape != truth.shape:
        raise ValueError(f"{pred.size} predictions but {truth.size} labels")
    if pred.size == 0:
        return float("nan")
    return float(np.mean(pred == truth))
