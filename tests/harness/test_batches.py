"""harness/batches.py: the validation carve-out, per-class subsets and the epoch batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from harness.batches import EpochBatches, per_class_subset, stratified_holdout


def test_stratified_holdout_is_per_class_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    tr, va = stratified_holdout(labels, 0.2, seed=3)
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).tolist() == list(range(18))
    assert np.bincount(labels[va], minlength=4).tolist() == [2, 1, 1, 0]  # max(1, round(.2 n)), one kept
    again, other = stratified_holdout(labels, 0.2, seed=3), stratified_holdout(labels, 0.2, seed=4)
    assert np.array_equal(again[1], va) and not np.array_equal(other[1], va)
    assert stratified_holdout(labels, 0.0, seed=3)[1].size == 0
    with pytest.raises(ValueError, match="validation fraction must be in"):
        stratified_holdout(labels, 1.0, seed=3)


def test_per_class_subset_takes_the_first_k_of_each_class():
    labels = np.array([1, 0, 1, 1, 0, 2])
    assert per_class_subset(labels, 2).tolist() == [0, 1, 2, 4, 5]
    assert per_class_subset(labels, 1, positions=np.array([2, 3, 4])).tolist() == [2, 4]
    with pytest.raises(ValueError, match="per-class subset size must be >= 1"):
        per_class_subset(labels, 0)


def test_epoch_batches_cover_the_epoch_once_and_resume_at_start():
    full = list(EpochBatches(10, 4, seed=1, epoch=2))
    assert len(full) == 2 and all(len(b) == 4 for b in full) and len(set(sum(full, []))) == 8  # drop_last
    assert list(EpochBatches(10, 4, seed=1, epoch=2, start=1)) == full[1:]
    assert list(EpochBatches(10, 4, seed=1, epoch=3)) != full
    assert list(EpochBatches(5, 2, shuffle=False, drop_last=False)) == [[0, 1], [2, 3], [4]]


def test_ranks_split_every_global_batch_and_pad_the_last_one_by_wrapping():
    whole = list(EpochBatches(10, 4, seed=0, drop_last=False))  # 3 global batches, the last of 2
    ranks = [list(EpochBatches(10, 4, seed=0, drop_last=False, rank=r, world=2)) for r in (0, 1)]
    for b, (a, c) in enumerate(zip(*ranks)):
        assert len(a) == len(c) == 2
        if b < 2:
            assert a + c == whole[b]
    order = sum(whole, [])
    assert ranks[0][2] + ranks[1][2] == order[8:10] + order[:2]  # padded with the epoch's first indices


@pytest.mark.parametrize("kw, message", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"rank": 2, "world": 2}, "bad rank 2 of world 2"),
    ({"batch_size": 5, "world": 2}, "must be divisible by the number of processes"),
    ({"start": 3}, "start batch 3 outside the epoch's 2 batches"),
])
def test_epoch_batches_reject_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        EpochBatches(10, **{"batch_size": 4, **kw})
