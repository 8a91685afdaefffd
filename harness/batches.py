"""Which samples a run trains and validates on, and in which order: pure functions of the seed.

* :func:`stratified_holdout` carves the validation split out of the training part (seeded,
  stratified per class), so ensemble weights and checkpoints can be chosen without the test set.
* :func:`per_class_subset` takes the first ``k`` samples of every class, for tiny real CI subsets.
* :class:`EpochBatches` is the batch order of one epoch: a permutation drawn from
  ``(seed, epoch)`` only, so a run resumed in the middle of an epoch continues with exactly the
  batches the uninterrupted run would have seen, and every DDP rank agrees on the global batch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["EpochBatches", "epoch_generator", "per_class_subset", "stratified_holdout"]


def stratified_holdout(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into (train, val), sorted, ``fraction`` of each class in val.

    Each class with ``n_c >= 2`` samples gives ``max(1, round(fraction * n_c))`` samples (at most
    ``n_c - 1``, so every class keeps a training sample); ``fraction = 0`` gives an empty val split.
    The draw depends only on ``seed`` and the labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or labels.size == 0:
        return np.arange(labels.size), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x5A1])  # own stream: independent of training draws
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if members.size < 2:
            continue
        k = min(members.size - 1, max(1, int(round(fraction * members.size))))
        val.append(rng.choice(members, size=k, replace=False))
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(labels.size), val, assume_unique=True)
    return train, val


def per_class_subset(labels: Sequence[int] | np.ndarray, k: int, positions: np.ndarray | None = None) -> np.ndarray:
    """The first ``k`` positions of every class (in dataset order), sorted; within ``positions`` if given."""
    labels = np.asarray(labels, dtype=np.int64)
    positions = np.arange(labels.size) if positions is None else np.asarray(positions, dtype=np.int64)
    if k < 1:
        raise ValueError(f"per-class subset size must be >= 1, got {k}")
    keep = [positions[labels[positions] == c][:k] for c in np.unique(labels[positions])]
    return np.sort(np.concatenate(keep)) if keep else positions[:0]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for (seed, epoch): the epoch's permutation and the DataLoader's worker seeds."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 12345) % (2**63))
    return g


class EpochBatches(Sampler[list[int]]):
    """Batches of dataset indices for one epoch (a ``batch_sampler``), starting at ``start``.

    The global batch of ``batch_size`` indices is cut from ``randperm(n)`` of
    :func:`epoch_generator` ``(seed, epoch)``; with ``world > 1`` rank ``r`` gets its contiguous
    ``batch_size // world`` slice of every global batch. ``drop_last`` (the official training
    loaders) drops the final partial global batch. ``shuffle=False`` keeps dataset order.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, epoch: int = 0, start: int = 0,
                 shuffle: bool = True, drop_last: bool = True, rank: int = 0, world: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad rank {rank} of world {world}")
        if batch_size % world:
            raise ValueError(f"the global batch size {batch_size} must be divisible by the number of "
                             f"processes ({world})")
        self.n, self.batch_size, self.seed, self.epoch = int(n), int(batch_size), int(seed), int(epoch)
        self.shuffle, self.drop_last, self.rank, self.world = shuffle, drop_last, rank, world
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start batch {start} outside the epoch's {self.num_batches} batches")
        self.start = int(start)

    @property
    def num_batches(self) -> int:
        """Global batches in the whole epoch (independent of ``start``)."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        local = self.batch_size // self.world
        for b in range(self.start, self.num_batches):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.world > 1:
                if batch.numel() < self.batch_size:  # partial last batch (drop_last=False): pad by wrapping
                    batch = torch.cat([batch, order[:self.batch_size - batch.numel()]])
                batch = batch[self.rank * local:(self.rank + 1) * local]
            yield batch.tolist()

    def __len__(self) -> int:
        return self.num_batches - self.start
