"""Metrics: hand-computed top-k (ties included), per-class accuracy, Table 7 levels, confusion, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.metrics import (classification_metrics, confusion_matrix, difficulty_levels, per_class_accuracy,
                             topk_accuracy)


def slow_topk(logits, labels, k):
    """Readable reference: per sample, is the label among the first k of the stable descending order?"""
    hits = 0
    for row, label in zip(logits, labels):
        order = np.argsort(-row, kind="stable")  # ties: lower class id first
        hits += int(label in order[:k].tolist())
    return hits / len(labels)


# 4 samples x 4 classes; predictions (argmax) are 0, 2, 1, 3.
LOGITS = np.array([
    [5.0, 1.0, 0.0, 2.0],  # label 0: rank 0
    [0.0, 3.0, 4.0, 1.0],  # label 1: rank 1
    [1.0, 9.0, 0.0, 2.0],  # label 3: rank 1
    [0.0, 1.0, 2.0, 3.0],  # label 0: rank 3
])
LABELS = np.array([0, 1, 3, 0])


def test_topk_hand_computed():
    assert topk_accuracy(LOGITS, LABELS, 1) == 0.25
    assert topk_accuracy(LOGITS, LABELS, 2) == 0.75
    assert topk_accuracy(LOGITS, LABELS, 3) == 0.75
    assert topk_accuracy(LOGITS, LABELS, 4) == 1.0
    assert topk_accuracy(LOGITS, LABELS, 50) == 1.0  # k > C clamps to C


def test_topk_ties_lower_class_id_first():
    logits = np.array([[1.0, 1.0, 0.0],
                       [1.0, 1.0, 0.0],
                       [0.0, 0.0, 0.0]])
    # Row 0, label 0: first in the stable order -> top-1 hit. Row 1, label 1: second -> top-1 miss,
    # top-2 hit. Row 2, label 2: all tied, last -> top-2 miss, top-3 hit.
    labels = np.array([0, 1, 2])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 3) == 1.0
    # top-1 agrees with argmax, which returns the first maximum
    assert topk_accuracy(logits, labels, 1) == np.mean(np.argmax(logits, 1) == labels)


@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_topk_matches_slow_reference_with_many_ties(k):
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, size=(200, 7)).astype(np.float32)  # small integers: ties everywhere
    labels = rng.integers(0, 7, size=200)
    assert topk_accuracy(logits, labels, k) == pytest.approx(slow_topk(logits, labels, k), abs=0)


def test_per_class_with_absent_class():
    # classes 0..4; class 2 and 4 have no samples
    logits = np.eye(5)[[0, 0, 1, 3, 3, 3]]  # predictions 0, 0, 1, 3, 3, 3
    labels = np.array([0, 1, 1, 3, 3, 0])
    acc = per_class_accuracy(logits, labels, 5)
    assert acc.dtype == np.float64 and acc.shape == (5,)
    np.testing.assert_array_equal(acc[[0, 1, 3]], [0.5, 0.5, 1.0])
    assert np.isnan(acc[2]) and np.isnan(acc[4])


def test_levels_at_exact_boundaries():
    acc = np.array([0.79, 0.8, 0.89, 0.9, 1.0, np.nan, 0.0])
    lv = difficulty_levels(acc)
    assert lv["hard"] == [0, 6]
    assert lv["medium"] == [1, 2]  # exactly 80% is medium
    assert lv["easy"] == [3, 4]  # exactly 90% is easy; NaN (class 5) is nowhere
    assert lv["counts"] == {"hard": 2, "medium": 2, "easy": 2}
    assert lv["thresholds"] == {"hard": 0.8, "easy": 0.9}
    json.dumps(lv)


def test_levels_boundaries_from_computed_accuracies():
    # class 0: 4 of 5 right (80%), class 1: 9 of 10 right (90%), class 2: 7 of 9 right (77.8%)
    labels = np.array([0] * 5 + [1] * 10 + [2] * 9)
    preds = labels.copy()
    preds[0] = 1
    preds[5] = 0
    preds[[15, 16]] = 0
    logits = np.eye(3)[preds]
    lv = difficulty_levels(per_class_accuracy(logits, labels, 3))
    assert (lv["hard"], lv["medium"], lv["easy"]) == ([2], [0], [1])


def test_confusion_matrix_rows_are_true_labels():
    cm = confusion_matrix(LOGITS, LABELS, 4)
    expected = np.zeros((4, 4), dtype=np.int64)
    for true, pred in [(0, 0), (1, 2), (3, 1), (0, 3)]:
        expected[true, pred] += 1
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(LABELS)


def test_classification_metrics_is_json_and_percent():
    m = classification_metrics(LOGITS, LABELS, 4)
    assert m["top1"] == 25.0 and m["top5"] == 100.0 and m["n"] == 4
    # class 0: 1 of 2 right, 1: 0 of 1, 2: absent, 3: 0 of 1
    assert m["per_class"] == [50.0, 0.0, None, 0.0]
    assert m["levels"]["hard"] == [0, 1, 3] and m["levels"]["easy"] == []
    json.dumps(m, allow_nan=False)


def test_percent_keeps_full_precision():
    logits = np.eye(3)[[0, 1, 2]]
    m = classification_metrics(logits, np.array([0, 1, 1]), 3)
    assert m["top1"] == 100.0 * (2 / 3)


@pytest.mark.parametrize("logits, labels, match", [
    (np.zeros((3, 4)), np.zeros(2, dtype=int), "one entry per logits row"),
    (np.zeros(4), np.zeros(4, dtype=int), "2-D"),
    (np.zeros((2, 4)), np.array([0, 4]), r"labels must lie in \[0, 4\)"),
    (np.zeros((2, 4)), np.array([-1, 0]), "labels must lie"),
    (np.array([[0.0, np.nan], [0.0, 1.0]]), np.array([0, 1]), "NaN"),
    (np.array([[0.0, np.inf], [0.0, 1.0]]), np.array([0, 1]), "NaN or inf"),
    (np.zeros((2, 4)), np.array([0.0, 1.0]), "integer class ids"),
    (np.zeros((0, 4)), np.zeros(0, dtype=int), "no samples"),
])
def test_bad_input_raises(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        topk_accuracy(logits, labels, 1)
    with pytest.raises(ValueError, match=match):
        classification_metrics(logits, labels, 4 if logits.ndim == 2 and logits.shape[1] == 4 else 2)


def test_num_class_mismatch_and_bad_k():
    with pytest.raises(ValueError, match="num_class is 5"):
        per_class_accuracy(LOGITS, LABELS, 5)
    with pytest.raises(ValueError, match="num_class is 3"):
        confusion_matrix(LOGITS, LABELS, 3)
    with pytest.raises(ValueError, match="positive integer"):
        topk_accuracy(LOGITS, LABELS, 0)


def test_levels_reject_percent_and_bad_thresholds():
    with pytest.raises(ValueError, match="fractions"):
        difficulty_levels(np.array([85.0, 95.0]))
    with pytest.raises(ValueError, match="hard <= easy"):
        difficulty_levels(np.array([0.5]), hard=0.9, easy=0.8)
