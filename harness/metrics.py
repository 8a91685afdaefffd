"""Classification metrics on raw logits: top-k, per-class accuracy, difficulty levels, confusion.

Pure numpy, so evaluation, ensembles and reports can use it without torch.

Conventions (shared by every function here):

* ``logits`` is (N, C) raw scores (softmax is monotone, so probabilities give the same numbers);
  ``labels`` is (N,) integer class ids in ``[0, C)``.
* **Ranking and ties.** Classes are ranked by ``np.argsort(-logits, kind="stable")``: higher logit
  first and, among exactly equal logits, the *lower class id* first. A sample is a top-k hit only
  if its label sits at one of the first k positions of that order. So top-1 equals
  ``np.argmax(logits, 1) == labels`` (argmax also returns the first maximum), which is what the
  official ensembles use for top-1. The official top-5 (``r.argsort()[-5:]``, ascending,
  unstable quicksort) may resolve *exact* ties differently; with float logits that is rare.
* Fractions in ``[0, 1]`` from the array functions; :func:`classification_metrics` reports
  percent (0-100) at full float precision, for JSON.
* Bad input (shape mismatch, labels out of range or not integers, NaN/inf logits, no samples)
  raises ``ValueError`` saying what is wrong.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

__all__ = ["classification_metrics", "confusion_matrix", "difficulty_levels", "mean_std", "per_class_accuracy",
           "topk_accuracy"]


# --------------------------------------------------------------------------- validation

def _check(logits: Any, labels: Any, num_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(logits (N, C) float, labels (N,) int64)`` after checking them; raise ValueError."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, num_class), got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.number) or np.iscomplexobj(logits):
        raise ValueError(f"logits must be real numbers, got dtype {logits.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be 1-D with one entry per logits row: labels {labels.shape}, "
                         f"logits {logits.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        # Float labels usually mean one-hot or probability arrays were passed by mistake.
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("no samples: logits has 0 rows")
    if c == 0:
        raise ValueError("logits has 0 classes")
    if num_class is not None and c != num_class:
        raise ValueError(f"logits have {c} classes but num_class is {num_class}")
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(axis=1).sum())
        raise ValueError(f"logits contain NaN or inf ({bad} of {n} rows)")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= c:
        raise ValueError(f"labels must lie in [0, {c}), got range [{lo}, {hi}]")
    return logits, labels.astype(np.int64)


# --------------------------------------------------------------------------- ranks and accuracies

def _label_rank(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) 0-based position of each label in the stable descending order of its row.

    Equal to ``np.argsort(-row, kind="stable").tolist().index(label)``, without sorting: the
    classes ahead of the label are those with a larger logit, plus those with an equal logit
    and a lower class id (the stable tie rule). O(N·C) instead of O(N·C log C).
    """
    n, c = logits.shape
    own = logits[np.arange(n), labels][:, None]  # (N, 1) the label's logit
    lower_id = np.arange(c)[None, :] < labels[:, None]  # (N, C) class id below the label's
    ahead = (logits > own) | ((logits == own) & lower_id)  # (N, C)
    return ahead.sum(axis=1)


def _predictions(logits: np.ndarray) -> np.ndarray:
    """(N,) top-1 class per row; argmax takes the first maximum, matching the stable tie rule."""
    return np.argmax(logits, axis=1)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the top ``k`` classes (ties: lower class id first).

    ``k`` larger than the number of classes is clamped to it (every sample is then a hit).
    """
    logits, labels = _check(logits, labels)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = min(int(k), logits.shape[1])
    return float((_label_rank(logits, labels) < k).mean())


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_class: int) -> np.ndarray:
    """(num_class,) float64 top-1 accuracy of each true class; NaN for classes absent from labels."""
    logits, labels = _check(logits, labels, num_class)
    hits = (_predictions(logits) == labels).astype(np.float64)  # (N,)
    correct = np.bincount(labels, weights=hits, minlength=num_class)  # (num_class,)
    total = np.bincount(labels, minlength=num_class).astype(np.float64)  # (num_class,)
    acc = np.full(num_class, np.nan)
    present = total > 0
    acc[present] = correct[present] / total[present]
    return acc


def confusion_matrix(logits: np.ndarray, labels: np.ndarray, num_class: int) -> np.ndarray:
    """(num_class, num_class) int64 counts; row = true label, column = top-1 prediction."""
    logits, labels = _check(logits, labels, num_class)
    flat = labels * num_class + _predictions(logits)  # (N,) row-major cell index
    return np.bincount(flat, minlength=num_class * num_class).reshape(num_class, num_class).astype(np.int64)


# --------------------------------------------------------------------------- difficulty levels

def difficulty_levels(per_class: np.ndarray, hard: float = 0.8, easy: float = 0.9) -> dict:
    """Split classes by accuracy as in the paper's Table 7: hard < ``hard`` <= medium < ``easy`` <= easy.

    ``per_class`` is (num_class,) accuracy as a *fraction* (what :func:`per_class_accuracy`
    returns); NaN entries (classes without test samples) belong to no level. A class at exactly
    80% is medium, at exactly 90% easy. Returns ``{"hard": [ids], "medium": [ids], "easy": [ids],
    "counts": {"hard": n, "medium": n, "easy": n}, "thresholds": {"hard": .., "easy": ..}}`` with
    plain Python ints and floats (JSON-ready).
    """
    acc = np.asarray(per_class, dtype=np.float64)
    if acc.ndim != 1:
        raise ValueError(f"per_class must be 1-D (num_class,), got shape {acc.shape}")
    if not 0.0 <= hard <= easy <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= hard <= easy <= 1, got hard={hard}, easy={easy}")
    known = ~np.isnan(acc)
    if np.isinf(acc).any() or (acc[known] < 0).any() or (acc[known] > 1).any():
        # Percent passed where fractions are expected would put every class in "easy".
        raise ValueError("per_class accuracies must be fractions in [0, 1] (or NaN for absent classes)")
    ids = np.arange(acc.shape[0])
    levels = {
        "hard": ids[known & (acc < hard)].tolist(),
        "medium": ids[known & (acc >= hard) & (acc < easy)].tolist(),
        "easy": ids[known & (acc >= easy)].tolist(),
    }
    return {**levels, "counts": {name: len(v) for name, v in levels.items()},
            "thresholds": {"hard": float(hard), "easy": float(easy)}}


# --------------------------------------------------------------------------- summary

def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_class: int) -> dict:
    """Everything a run reports about one score set, JSON-serialisable, accuracies in percent.

    ``{"top1": %, "top5": %, "n": N, "per_class": [% or None for absent classes],
    "levels": difficulty_levels(per-class fractions)}``. No rounding: reports round when printing.
    """
    logits, labels = _check(logits, labels, num_class)
    per_class = per_class_accuracy(logits, labels, num_class)  # (num_class,) fractions, NaN = absent
    return {
        "top1": 100.0 * topk_accuracy(logits, labels, 1),
        "top5": 100.0 * topk_accuracy(logits, labels, 5),
        "n": int(labels.shape[0]),
        "per_class": [None if np.isnan(a) else 100.0 * float(a) for a in per_class],
        "levels": difficulty_levels(per_class),
    }


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof 1 or None when n < 2, n) of the non-None values (over seeds)."""
    v = np.array([float(x) for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return None, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None), int(v.size)
