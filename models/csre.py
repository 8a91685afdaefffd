"""CSRE: contrastive spatiotemporal representation enhancement, a training-only head.

The head taps an encoder's final feature map (see :mod:`models.encoder`), decomposes it into a
spatial and a temporal feature (:class:`STFD`), writes them into two label-indexed memory banks
(:class:`MemoryBank`) and contrasts each anchor with positives and negatives sampled from the bank
(:func:`csre_infonce`, a pure, vectorised function). :class:`CSRE` wraps an encoder: in ``train()``
mode its forward returns the logits and the contrastive loss terms (:class:`CSREOutput`); in
``eval()`` mode it returns exactly the encoder's logits; :meth:`CSRE.export` gives the encoder-only
state_dict.

Semantics follow the official code (``zhshj0110/CSRE``: ``model/Hyperformer.py::STD_unit`` and
``model/loss.py::ContrastLoss``), described in ``shared/reference/csre/README.md``:

1. ``z = f / ||f||`` per anchor;
2. the batch is written into the bank (``Bank[index] = z.detach()``, flag set) **before**
   similarities are computed, so an anchor is one of its own positives and in-batch anchors see
   each other;
3. cosine similarities against every bank row; positives = filled slots with the anchor's label,
   negatives = filled slots with another label;
4. gate: an anchor contributes only with ``>= K_pos`` positives and ``>= K_neg`` negatives;
5. ``K_pos`` hardest positives (lowest similarity), ``K_hard`` hardest negatives (highest
   similarity) and ``K_rand`` uniform random negatives (without replacement);
6. per positive ``p_j`` one row ``[p_j, hard negatives]`` and one row ``[p_j, random negatives]``,
   cross-entropy against index 0 at temperature ``tau``, mean over all rows of all valid anchors;
7. total = CE + w_s·L_s + w_t·L_t with **w = 0.5** in the official ``main.py``; the paper's
   equation (10) weights both terms by 1. The default follows the code; ``weights=(1.0, 1.0)``
   (``gin/csre/paper_weights.gin``) gives the paper's.

Where this module departs from, or goes beyond, the official code:

* **No host synchronisation** (except a one-off seed check under DDP), **no per-anchor loop, no
  full sort**: masks, ``topk`` on masked similarities, gathers and a row weight replace the Python
  loop with its ``continue`` (the only sorts are of the random draws and of a class's slots, never
  along the bank). A batch with no valid anchor yields a 0-dim zero that is still part
  of the graph (zero gradient), instead of the official ``torch.zeros(1)`` without a graph that
  the official trainer skips with ``if loss > 0`` (adding an exact zero is equivalent and needs no
  sync).
* **Random draws** come from a ``torch.Generator`` owned by :class:`CSRE` and seeded with ``seed``
  (its state is in the state_dict, so a resumed run draws the same negatives), instead of Python's
  global ``random``. A draw picks k distinct uniformly random *ranks* in the anchor's set
  (:func:`random_ranks`, whose cost does not grow with the bank) and maps them to bank rows through
  running counts (:class:`SampleSpace`): a uniform draw without replacement, like the official
  ``random.sample``, without keys for all S slots. Recorded draws can be injected (:meth:`CSRE.inject_draws`, or
  the ``draw`` argument of :func:`csre_infonce`).
* The loss runs in **float32** even under autocast (the official matmul runs in fp16 under AMP),
  in float64 when the model does;
  features are normalised with ``F.normalize`` (eps 1e-12 instead of a bare division).
* **T' and V come from the encoder's real feature map** (the official code hard-codes T' = 16,
  which cannot build NW-UCLA's T' = 13).
* **Small classes**: ``small_classes`` makes the case explicit (see :class:`CSRE`).
* **DDP**: features, labels and indices are all-gathered before the bank write, and the ranks'
  seeds are checked once; see :class:`CSRE`.
* **FIFO banks** (``capacity``, not in the official code) judge small classes by their expected
  share of the queue; see :class:`CSRE`.
* The banks and the generator state are persistent buffers / extra state (the official banks are
  ``nn.Parameter(requires_grad=False)`` of the loss modules and are lost on resume).

Notation in shape comments: n = anchors (batch), S = bank slots, d = feature dim (256),
k = number of sampled entries, N·M = samples x persons.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Callable, Mapping, NamedTuple, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from models.encoder import Encoder, at_least_float32, encoder_state, mean_pool

__all__ = [
    "STFD", "MemoryBank", "InfoNCE", "CSREOutput", "BankContrast", "CSRE", "SampleSpace", "csre_infonce", "class_slot_table",
    "column_of_rank", "complement_space", "draw_ranks", "draw_widths", "fifo_share", "fixed_draws", "mask_space",
    "random_ranks", "random_rows", "VARIANTS", "STRATEGIES",
]

#: variant -> contrasted branches: s = STFD spatial, t = STFD temporal, g = global pooled feature.
VARIANTS: dict[str, tuple[str, ...]] = {
    "csre": ("s", "t"), "sc": ("s",), "tc": ("t",), "gc": ("g",), "csre+gc": ("s", "t", "g"),
}
#: sampling strategy -> sets drawn: H = hardest (hard mining), R = uniform random.
STRATEGIES: dict[str, tuple[str, ...]] = {"H": ("H",), "R": ("R",), "R+H": ("H", "R")}
SMALL_CLASS_POLICIES = ("error", "skip", "clamp")



class SampleSpace(NamedTuple):
    """One set per anchor that a selection draws from (see :func:`csre_infonce`).

    Hard selection: ``width`` key columns per anchor (the bank's S, or the anchor's candidate
    positives); ``restrict(keys)`` sets the keys (n, width) of the columns outside the set to
    -inf, **in place**, and returns them; ``to_rows(columns)`` maps chosen columns (n, k) to bank
    rows. Random draws: ``count`` (n,) members of each anchor's set; ``rank_rows(ranks)`` maps
    ranks (n, k) in ``[0, count)`` to bank rows, the r-th member of a fixed enumeration of the set
    (a bijection per anchor, so uniformly random distinct ranks are uniformly random distinct
    members).
    """

    width: int
    restrict: Callable[[Tensor], Tensor]
    to_rows: Callable[[Tensor], Tensor]
    count: Tensor
    rank_rows: Callable[[Tensor], Tensor]


#: ``draw(kind, k, space) -> (n, k)`` bank rows; kind is "pos" or "neg". Rows must come in random
#: order when prefixes are used (``available`` given to :func:`csre_infonce`).
DrawFn = Callable[[str, int, SampleSpace], Tensor]


# ---------------------------------------------------------------------------------------------
# STFD


class STFD(nn.Module):
    """Spatial-temporal feature decomposition (the official ``STD_unit``; parameter names kept).

    Per person, on the encoder's final map x of shape (N·M, C, T', V):

    * spatial: mean over T' -> (N·M, C, V) -> ``conv1`` (1x1 Conv1d C -> C/r, bias, no BN, no
      activation) -> flatten channel-major (index ``k*V + v``) -> ``convs`` Linear(C/r·V, dim);
    * temporal: mean over V -> (N·M, C, T') -> ``conv2`` -> flatten (``k*T' + t``) ->
      ``convt`` Linear(C/r·T', dim);
    * both outputs are averaged over the M persons afterwards -> (N, dim).

    ``branches`` builds only the branches a variant uses ("s", "t"), so that every parameter of
    the head receives a gradient (the SC and TC ablations, and DDP without
    ``find_unused_parameters``). Init as official: Linear weights Kaiming-normal (fan_out), zero
    bias; the Conv1d keep PyTorch's default init (the official init loop only visits Conv2d).

    Args:
        in_channels: C of the feature map.
        num_point: V, the size of axis 3 of the map (for HCN: the co-occurrence channel axis).
        num_frame: T', the size of axis 2 of the map (taken from the encoder, never assumed 16).
        dim: output dimension (256).
        r: channel reduction (8).
    """

    def __init__(self, in_channels: int, num_point: int, num_frame: int, dim: int = 256, r: int = 8,
                 branches: Sequence[str] = ("s", "t")) -> None:
        super().__init__()
        if in_channels // r < 1:
            raise ValueError(f"in_channels={in_channels} is smaller than the reduction r={r}")
        if not branches or set(branches) - {"s", "t"}:
            raise ValueError(f"branches must be a non-empty subset of ('s', 't'), got {tuple(branches)}")
        self.in_channels, self.num_point, self.num_frame, self.dim, self.r = in_channels, num_point, num_frame, dim, r
        self.branches = tuple(b for b in ("s", "t") if b in branches)
        hidden = in_channels // r
        if "s" in self.branches:
            self.conv1 = nn.Conv1d(in_channels, hidden, 1)
            self.convs = nn.Linear(hidden * num_point, dim)
        if "t" in self.branches:
            self.conv2 = nn.Conv1d(in_channels, hidden, 1)
            self.convt = nn.Linear(hidden * num_frame, dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, num_person: int) -> tuple[Tensor | None, Tensor | None]:
        """(N·M, C, T', V), M -> (x_s (N, dim) or None, x_t (N, dim) or None)."""
        NM, C, T, V = x.shape
        if (C, T, V) != (self.in_channels, self.num_frame, self.num_point):
            raise ValueError(f"STFD built for (C, T', V) = {(self.in_channels, self.num_frame, self.num_point)}, "
                             f"got a feature map of shape {tuple(x.shape)}")
        N = NM // num_person
        x_s = x_t = None
        if "s" in self.branches:
            a = self.conv1(x.mean(2))  # (N·M, C/r, V)
            x_s = self.convs(a.flatten(1)).view(N, num_person, self.dim).mean(1)  # (N, dim)
        if "t" in self.branches:
            a = self.conv2(x.mean(3))  # (N·M, C/r, T')
            x_t = self.convt(a.flatten(1)).view(N, num_person, self.dim).mean(1)  # (N, dim)
        return x_s, x_t


# ---------------------------------------------------------------------------------------------
# Memory bank


class MemoryBank(nn.Module):
    """Label-indexed feature bank; the buffers ``features``, ``labels`` and ``filled`` are persistent.

    * **Full** (default, official): one slot per dataset index, ``labels`` fixed to the dataset's
      labels (aligned with the index the feeder returns; a dataset repeated r times within an epoch
      has ``r·n`` slots, one per index). :meth:`update` writes ``features[index] = z`` and sets
      ``filled[index]``; a slot already filled is overwritten (no momentum).
    * **FIFO** (``capacity`` given; the queue the paper suggests for large datasets, as MoCo):
      ``capacity`` slots used as a ring; :meth:`update` writes the batch and its labels at the
      pointer ``ptr`` (a buffer) and advances it. Dataset indices are not used.

    Updates run under ``torch.no_grad()`` and without host synchronisation. Duplicated indices in
    one full-mode write keep one of the rows (the last on CPU, unspecified on GPU), as the official
    indexed assignment; samplers give unique indices within a batch.

    Args:
        dim: feature dimension.
        labels: (num_samples,) int labels of the dataset indices (full mode), or None with
            ``capacity`` (FIFO mode).
        capacity: FIFO size, or None for one slot per dataset index.
    """

    features: Tensor
    labels: Tensor
    filled: Tensor

    def __init__(self, dim: int, labels: Tensor | Sequence[int] | None = None, capacity: int | None = None) -> None:
        super().__init__()
        if capacity is None:
            if labels is None:
                raise ValueError("a full memory bank needs the dataset labels (one per slot)")
            labels = torch.as_tensor(labels, dtype=torch.long).flatten().clone()
            slots = labels.numel()
            if slots == 0:
                raise ValueError("a memory bank needs at least one slot")
        else:
            if capacity < 1:
                raise ValueError(f"capacity must be positive, got {capacity}")
            slots = int(capacity)
            labels = torch.full((slots,), -1, dtype=torch.long)
        self.dim, self.capacity = int(dim), capacity
        self.register_buffer("features", torch.zeros(slots, dim))  # (S, d), filled rows unit-norm
        self.register_buffer("labels", labels)  # (S,) long; -1 = never written (FIFO)
        self.register_buffer("filled", torch.zeros(slots, dtype=torch.bool))  # (S,)
        if capacity is not None:
            self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next FIFO slot

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def update(self, z: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        """Write normalised features z (B, d) of samples with ``labels`` (B,) and dataset ``index`` (B,)."""
        z = z.detach().to(self.features.dtype)
        if self.capacity is None:
            if index is None:
                raise ValueError("a full memory bank is written at the dataset indices: pass index")
            index = index.to(self.features.device, torch.long)
            self.features[index] = z
            self.filled[index] = True
        else:
            B = z.shape[0]
            if B > self.size:
                raise ValueError(f"a batch of {B} does not fit in a FIFO bank of capacity {self.size}")
            slots = (self.ptr + torch.arange(B, device=self.ptr.device)) % self.size  # (B,)
            self.features[slots] = z
            self.labels[slots] = labels.to(self.labels.device, torch.long)
            self.filled[slots] = True
            self.ptr.copy_((self.ptr + B) % self.size)

    def extra_repr(self) -> str:
        mode = f"capacity={self.capacity} (FIFO)" if self.capacity is not None else "one slot per dataset index"
        return f"slots={self.size}, dim={self.dim}, {mode}"


# ---------------------------------------------------------------------------------------------
# The loss (pure function)


class InfoNCE(NamedTuple):
    """Result of :func:`csre_infonce` for one bank. All fields are tensors (no host sync)."""

    loss: Tensor  #: 0-dim: mean over all rows of all valid anchors (0 when none is valid)
    row_sum: Tensor  #: 0-dim: sum of the row losses (for cross-process normalisation)
    row_count: Tensor  #: 0-dim float: number of rows summed
    valid: Tensor  #: (n,) bool: anchor passed the gate
    pos_count: Tensor  #: (n,) filled positives seen by each anchor (after the write)
    neg_count: Tensor  #: (n,) filled negatives
    per_anchor: Tensor  #: (n,) mean over the anchor's rows, NaN for skipped anchors


def draw_widths(k: int) -> tuple[int, int]:
    """(L, m) of :func:`random_ranks` for sets of size k: key width and number of with-replacement draws."""
    return 4 * k, 2 * k + 64


def random_ranks(count: Tensor, k: int, generator: torch.Generator | None = None, *,
                 total_rows: int | None = None, row_offset: int = 0) -> Tensor:
    """k distinct uniformly random ranks in ``[0, count[i])`` per row, in random order: (n,) -> (n, k).

    The cost does not depend on the set sizes (a bank of 63k slots costs what a bank of 1k does):

    * ``count <= L = 4k``: uniform keys over L columns, columns ``>= count`` set to -inf, ``topk``:
      a uniform draw without replacement, in random order (the keys' order);
    * ``count > L``: ``m = 2k + 64`` independent uniform draws from ``[0, count)`` (with
      replacement); the first k *distinct* values in draw order are the set. Rejecting repeats
      one by one is sequential sampling without replacement, so the set is uniform and its order
      random. It needs at least k distinct values among the m draws; for ``count > 4k`` the
      probability that they are fewer is below 1e-40 per row (union bound
      ``C(c, k-1)·((k-1)/c)^m``, checked in the tests for k up to 4096). In that event, never
      observed, the set would repeat a member.

    Keys and draws are float64 (53 random bits: ties and the rounding of ``floor(u·count)``
    are negligible). Rows with fewer than k members get arbitrary ranks clamped to
    ``[0, count - 1]`` (:func:`csre_infonce` gates those anchors out).

    ``total_rows`` / ``row_offset``: draw for a larger batch and keep rows ``[row_offset,
    row_offset + n)``. Under DDP every rank draws the global batch with the same generator and
    keeps its own part, so the draws equal a single-process run and the generators stay identical
    across ranks. Every call consumes the same amount of the generator, whatever the counts.
    """
    n, device = count.shape[0], count.device
    total = n if total_rows is None else total_rows
    L, m = draw_widths(k)
    rows = slice(row_offset, row_offset + n)
    keys = torch.rand(total, L, generator=generator, device=device, dtype=torch.float64)[rows]  # (n, L)
    u = torch.rand(total, m, generator=generator, device=device, dtype=torch.float64)[rows]  # (n, m)
    count = count.long()[:, None]  # (n, 1)

    # small sets: topk over keys of the first `count` columns
    small = keys.masked_fill_(torch.arange(L, device=device) >= count, -math.inf).topk(k, dim=1).indices  # (n, k)
    # large sets: first k distinct values of m draws with replacement
    draws = (u * count).floor_().long()  # (n, m) i.i.d. uniform on [0, count)
    ordered, where = draws.sort(dim=1, stable=True)  # stable: the first occurrence leads its group
    repeat = torch.zeros_like(draws, dtype=torch.bool).scatter_(1, where[:, 1:], ordered[:, 1:] == ordered[:, :-1])
    position = torch.arange(m, device=device).expand(n, m).masked_fill(repeat, m)  # repeats sort last
    first = position.topk(k, dim=1, largest=False).indices  # (n, k) draw positions, in draw order
    large = draws.gather(1, first)
    ranks = torch.where(count <= L, small, large)
    return torch.minimum(ranks, (count - 1).clamp_min(0))


def draw_ranks(space: SampleSpace, k: int, generator: torch.Generator | None = None, **rows) -> Tensor:
    """k distinct uniformly random members of each anchor's set, in random order: bank rows (n, k).

    ``rows``: ``total_rows`` / ``row_offset`` of :func:`random_ranks` (DDP)."""
    return space.rank_rows(random_ranks(space.count, k, generator, **rows))


def mask_space(allowed: Tensor, count: Tensor | None = None) -> SampleSpace:
    """The sample space "columns where ``allowed`` (n, S) is True" over all bank rows.

    Members are enumerated in column order: rank r is the column where the running count of
    allowed columns reaches r + 1 (a cumulative sum and a binary search per row, no sort).
    ``count``: ``allowed.sum(1)`` if already known.
    """
    return SampleSpace(allowed.shape[1], lambda keys: keys.masked_fill_(~allowed, -math.inf), lambda cols: cols,
                       allowed.sum(1) if count is None else count, lambda ranks: column_of_rank(allowed, ranks))


def column_of_rank(allowed: Tensor, ranks: Tensor) -> Tensor:
    """The column of the r-th allowed entry (column order) of each row: (n, W) bool, (n, k) -> (n, k).

    Ranks at or beyond a row's count give the last column."""
    running = allowed.cumsum(1, dtype=torch.int32)  # (n, W)
    return torch.searchsorted(running, (ranks + 1).to(torch.int32)).clamp_max_(allowed.shape[1] - 1)


def complement_space(filled: Tensor, cand: Tensor, cand_ok: Tensor, count: Tensor,
                     restrict: Callable[[Tensor], Tensor]) -> SampleSpace:
    """The sample space "filled slots outside the anchor's candidates" over all S bank rows.

    ``cand`` (n, W) holds each anchor's class slots, ``cand_ok`` (n, W) which of them are filled
    members of the class (any order, padding excluded). Members are enumerated in slot order
    without an (n, S) pass: with ``F`` the running count of filled slots (S,) and ``g_0 < g_1 <
    ...`` the filled-ranks ``F - 1`` of the anchor's own filled slots, the r-th filled slot outside
    the class has filled-rank ``q = r + #{j : g_j - j <= r}`` (skip the class members at or before
    it), and is the slot where ``F`` reaches ``q + 1``.
    """
    S, W = filled.shape[0], cand.shape[1]

    def rank_rows(ranks: Tensor) -> Tensor:
        running = filled.long().cumsum(0)  # (S,)
        big = S + W + 1  # above every rank: padding and unfilled members sort last
        g = torch.where(cand_ok, running[cand] - 1, big).sort(dim=1).values  # (n, W) ascending filled-ranks
        g = torch.where(g < big, g - torch.arange(W, device=g.device), big)  # non-decreasing
        ranks = ranks.contiguous()
        q = ranks + torch.searchsorted(g, ranks, right=True)  # (n, k) filled-ranks
        # the slot of each filled-rank: unfilled slots write to a spare last entry
        slot_of = torch.full((S + 1,), S - 1, dtype=torch.long, device=filled.device)
        slot_of.scatter_(0, torch.where(filled, running - 1, S), torch.arange(S, device=filled.device))
        return slot_of[q.clamp_max(S)]

    return SampleSpace(S, restrict, lambda cols: cols, count, rank_rows)


def random_rows(allowed: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k distinct uniformly random columns among the ``allowed`` ones of each row, in random order: (n, S) -> (n, k)."""
    return draw_ranks(mask_space(allowed), k, generator)


def fixed_draws(pos: Tensor | None = None, neg: Tensor | None = None) -> DrawFn:
    """A ``draw`` for :func:`csre_infonce` that returns recorded bank rows (n, k).

    Rows of skipped anchors may hold anything (the fixtures use -1); they are clamped to a valid
    row and weighted out.
    """
    table = {"pos": pos, "neg": neg}

    def draw(kind: str, k: int, space: SampleSpace) -> Tensor:
        rows = table[kind]
        if rows is None:
            raise ValueError(f"no recorded {kind} draws were given")
        expected = (space.count.shape[0], k)
        if tuple(rows.shape) != expected:
            raise ValueError(f"recorded {kind} draws have shape {tuple(rows.shape)}, expected {expected} "
                             "(one row per anchor; rows of skipped anchors are ignored)")
        return rows.long().clamp_min(0)

    return draw


def class_slot_table(labels: Tensor) -> Tensor:
    """(C, W) bank slots of every class, ascending, padded with -1 (W = the largest class).

    Row ``labels[i]`` is the ``candidates`` argument of :func:`csre_infonce` for an anchor of that
    class when the bank has one slot per dataset index with fixed ``labels``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    counts = torch.bincount(labels)
    order = torch.argsort(labels, stable=True)  # slots grouped by class, ascending within a class
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(labels.numel()) - starts[labels[order]]
    table = torch.full((counts.numel(), max(int(counts.max()), 1)), -1, dtype=torch.long)
    table[labels[order], col] = order
    return table


BLOCK = 2048  #: bank rows per block of :func:`bank_similarity` on CPU: a (2048, n) block stays in L2


@torch.no_grad()
def bank_similarity(z: Tensor, bank: Tensor) -> Tensor:
    """``z @ bank^T``: similarities (n, S) of anchors (n, d) to every bank row (S, d), contiguous, no grad.

    On CPU the product is formed as ``bank @ z^T`` (MKL is faster with the long operand first) in
    blocks of :data:`BLOCK` rows, each transposed into the output while it is still in cache: an
    (S, n) product transposed afterwards costs a fifth more. On a GPU one product.
    """
    if z.device.type != "cpu":
        return torch.mm(z, bank.t())
    S = bank.shape[0]
    out = z.new_empty(z.shape[0], S)  # (n, S)
    z_t = z.t().contiguous()  # (d, n)
    for start in range(0, S, BLOCK):
        out[:, start:start + BLOCK] = torch.mm(bank[start:start + BLOCK], z_t).t()
    return out


class _BankLogits(torch.autograd.Function):
    """Similarities of the anchors to chosen bank rows, as an autograd node for z only.

    The values (n, k) are given (read off :func:`bank_similarity`); the gradient is
    ``d values[i, j] / d z_i = bank[idx[i, j]]``, formed as one dense (n, S) x (S, d) product, which
    is what autograd through a full similarity matrix and its gathers would compute, with one
    scatter instead of one (n, S) buffer per gather.
    """

    @staticmethod
    def forward(ctx, z: Tensor, bank: Tensor, idx: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(bank, idx)
        return values.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        bank, idx = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        dense = grad.new_zeros(grad.shape[0], bank.shape[0]).scatter_add_(1, idx, grad)  # (n, S)
        return dense @ bank, None, None, None


def bank_logits(z: Tensor, bank: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """``values`` (n, k) = ``z_i . bank[idx[i, j]]`` (already computed), differentiable in z (n, d) only."""
    return _BankLogits.apply(z, bank.detach(), idx, values.detach())


def _check_strategy(name: str, value: str) -> tuple[str, ...]:
    if value not in STRATEGIES:
        raise ValueError(f"{name} must be one of {sorted(STRATEGIES)}, got {value!r}")
    return STRATEGIES[value]


def csre_infonce(z: Tensor, bank: Tensor, bank_labels: Tensor, bank_filled: Tensor, labels: Tensor, *,
                 K_pos: int = 128, K_hard: int = 512, K_rand: int = 512, tau: float = 0.8,
                 pos_strategy: str = "H", neg_strategy: str = "R+H",
                 available: tuple[Tensor, Tensor] | None = None, candidates: Tensor | None = None,
                 draw: DrawFn | None = None, generator: torch.Generator | None = None) -> InfoNCE:
    """The CSRE / SkeletonGCL bank InfoNCE for one bank, vectorised (no loop, no host sync, no sort along the bank).

    ``bank`` must already contain the batch (official write-before-compare; see
    :meth:`MemoryBank.update`); it is treated as a constant, so the gradient flows only through
    ``z``. Each valid anchor contributes, for every positive set P (hardest ``H`` and/or random
    ``R``, ``K_pos`` each) and every negative set Q (hardest ``H``: ``K_hard``; random ``R``:
    ``K_rand``), ``K_pos`` rows ``[p_j, q_1..q_k] / tau`` with target 0, i.e.
    ``softplus(logsumexp(q / tau) - p_j / tau)``. Official CSRE = ``pos_strategy='H',
    neg_strategy='R+H'``: 2·K_pos rows per anchor. For ``R+H`` positives (not in the official code)
    each positive set is paired with every negative set, just as the official code pairs its
    positives with both negative sets. The loss is the mean over all rows of all valid anchors.

    Args:
        z: (n, d) L2-normalised anchors (with grad).
        bank: (S, d) bank after the write (no grad needed; detached here).
        bank_labels: (S,) labels of the slots; bank_filled: (S,) bool (or 0/1) filled flags.
        labels: (n,) anchor labels.
        K_pos, K_hard, K_rand: sizes of the positive, hard-negative and random-negative sets.
        tau: temperature dividing every logit.
        pos_strategy, neg_strategy: "H", "R" or "R+H" (the paper's Table 6).
        available: optional per-anchor (positives, negatives) counts the dataset can ever provide;
            when given, each set size becomes ``min(K, available)`` (at least 1) for that anchor and
            the gate and rows follow (the ``small_classes='clamp'`` policy of :class:`CSRE`).
        candidates: optional (n, W) bank rows holding each anchor's label, all of them, padded with
            -1 (a full-mode bank's fixed labels: :class:`CSRE` passes its per-class slot table).
            Positives are then found among these W columns instead of by scanning and comparing
            all S labels; the result is the same (up to the order of ties) and cheaper.
        draw: ``draw(kind, k, space) -> (n, k)`` bank rows for the random sets (e.g.
            :func:`fixed_draws` for recorded draws); default: :func:`draw_ranks` with ``generator``.
        generator: torch.Generator for the default draw.

    Gate: an anchor is valid with at least ``K_pos`` filled positives and at least the largest
    negative set size of filled negatives, counted after the write (itself included).
    """
    pos_sets, neg_sets = _check_strategy("pos_strategy", pos_strategy), _check_strategy("neg_strategy", neg_strategy)
    n, S = z.shape[0], bank.shape[0]
    neg_k = {"H": K_hard, "R": K_rand}
    for name, k in (("K_pos", K_pos), *((f"K_{'hard' if s == 'H' else 'rand'}", neg_k[s]) for s in neg_sets)):
        if not 1 <= k <= S:
            raise ValueError(f"{name}={k} must be between 1 and the bank size {S}")
    ordered = available is not None  # only the clamp policy uses prefixes of the sets
    if draw is None:
        def draw(kind: str, k: int, space: SampleSpace) -> Tensor:
            return draw_ranks(space, k, generator)

    with torch.autocast(z.device.type, enabled=False):
        z = at_least_float32(z)
        bank = at_least_float32(bank.detach())
        # cosine similarities, without grad: the selections read them, the logits of the chosen
        # rows are read off them (their gradient comes from bank_logits below), and they become
        # the hard-negative keys in place at the end (no copy: a fresh (n, S) buffer costs page faults)
        s_ = bank_similarity(z.detach(), bank)  # (n, S)
        filled = bank_filled.bool()  # (S,)
        unfilled = torch.zeros(S, device=z.device).masked_fill_(~filled, -math.inf)  # (S,) 0 / -inf
        if candidates is None:  # positives: compare all S labels
            same = bank_labels[None, :] == labels[:, None]  # (n, S)
            pos_mask = same & filled[None, :]  # (n, S) filled positives
            pos_count = pos_mask.sum(1)  # (n,)
            pos_space = mask_space(pos_mask, pos_count)
            pos_sim = s_  # (n, S)
            neg_count = filled.sum() - pos_count  # (n,) filled negatives

            def neg_restrict(keys: Tensor) -> Tensor:  # not unfilled, not the anchor's class
                return keys.add_(unfilled).masked_fill_(same, -math.inf)

            neg_space = SampleSpace(S, neg_restrict, lambda cols: cols, neg_count,
                                    lambda ranks: column_of_rank(~same & filled[None, :], ranks))
        else:  # positives: the W candidate slots of the anchor's class
            if candidates.shape[1] < K_pos:
                candidates = F.pad(candidates, (0, K_pos - candidates.shape[1]), value=-1)
            candidates = candidates.to(z.device, torch.long)
            cand = torch.where(candidates >= 0, candidates, candidates[:, :1])  # (n, W) padding: a repeat
            cand_ok = (candidates >= 0) & filled[cand]  # (n, W) filled positives
            pos_count = cand_ok.sum(1)
            pos_space = SampleSpace(cand.shape[1], lambda keys: keys.masked_fill_(~cand_ok, -math.inf),
                                    lambda cols: cand.gather(1, cols), pos_count,
                                    lambda ranks: cand.gather(1, column_of_rank(cand_ok, ranks)))
            pos_sim = s_.gather(1, cand)  # (n, W)
            neg_count = filled.sum() - pos_count  # (n,) filled negatives

            def neg_restrict(keys: Tensor) -> Tensor:  # not unfilled, not the anchor's class
                return keys.add_(unfilled).scatter_(1, cand, -math.inf)

            neg_space = complement_space(filled, cand, cand_ok, neg_count, neg_restrict)

        # per-anchor set sizes: K, or min(K, available) under the clamp policy
        def size(K: int, avail: Tensor | None) -> Tensor:
            k = torch.full((n,), K, device=z.device, dtype=torch.long)
            return k if avail is None else torch.minimum(k, avail.to(z.device, torch.long)).clamp_min(1)

        avail_pos, avail_neg = (None, None) if available is None else available
        k_pos = size(K_pos, avail_pos)  # (n,)
        k_neg = {s: size(neg_k[s], avail_neg) for s in neg_sets}
        need_neg = torch.stack(list(k_neg.values())).amax(0)  # (n,)
        valid = (pos_count >= k_pos) & (neg_count >= need_neg)  # (n,)

        pos_idx = []  # (n, K_pos) bank rows; with ``ordered`` the first k_pos[i] are the set
        for s in pos_sets:
            if s == "H":  # lowest similarity among positives
                cols = pos_space.restrict(-pos_sim).topk(K_pos, dim=1, sorted=ordered).indices
                pos_idx.append(pos_space.to_rows(cols))
            else:
                pos_idx.append(draw("pos", K_pos, pos_space).to(z.device))
        pos_val = [s_.gather(1, idx) for idx in pos_idx]  # before the restriction below
        neg_idx, neg_val = {}, {}
        for s in neg_sets:
            if s == "R":
                neg_idx[s] = draw("neg", K_rand, neg_space).to(z.device)
                neg_val[s] = s_.gather(1, neg_idx[s])
        if "H" in neg_sets:  # highest similarity among negatives; s_ becomes the keys (last use)
            top = neg_restrict(s_).topk(K_hard, dim=1, sorted=ordered)  # values: the restriction adds 0
            neg_idx, neg_val = {"H": top.indices, **neg_idx}, {"H": top.values, **neg_val}

        # one autograd node for every chosen similarity. Skipped anchors may have picked restricted
        # (-inf) keys: zeroed, so that their zero gradient does not become NaN
        chosen = [*pos_idx, *neg_idx.values()]
        values = torch.where(valid[:, None], torch.cat([*pos_val, *neg_val.values()], 1), 0.0)  # (n, sum k)
        logits = bank_logits(z, bank, torch.cat(chosen, 1), values).div(tau).split([c.shape[1] for c in chosen], 1)
        pos_logits, neg_logits = logits[:len(pos_idx)], dict(zip(neg_idx, logits[len(pos_idx):]))

        lse = []  # per negative set: (n,) logsumexp of its logits
        for s, q in neg_logits.items():  # (n, k)
            if ordered:
                keep = torch.arange(q.shape[1], device=z.device)[None, :] < k_neg[s][:, None]
                q = torch.where(keep, q, -math.inf)
            lse.append(q.logsumexp(1))
        row_ok = valid[:, None] & (torch.arange(K_pos, device=z.device)[None, :] < k_pos[:, None])  # (n, K_pos)

        anchor_sum = z.new_zeros(n)
        for p in pos_logits:  # (n, K_pos)
            for q in lse:
                rows = F.softplus(q[:, None] - p)  # (n, K_pos) = CE of [p_j, negatives] at target 0
                anchor_sum = anchor_sum + torch.where(row_ok, rows, 0.0).sum(1)
        anchor_rows = row_ok.sum(1).float() * (len(pos_idx) * len(lse))  # (n,)
        row_sum, row_count = anchor_sum.sum(), anchor_rows.sum()
        loss = row_sum / row_count.clamp_min(1)
        per_anchor = torch.where(valid, anchor_sum / anchor_rows.clamp_min(1), math.nan)
    return InfoNCE(loss, row_sum, row_count, valid, pos_count, neg_count, per_anchor)


# ---------------------------------------------------------------------------------------------
# The wrapper


class CSREOutput(NamedTuple):
    """What :class:`CSRE` returns in train mode. Training loss = CE(logits) + ``contrastive``."""

    logits: Tensor  #: (N, num_class), identical to the encoder's
    contrastive: Tensor  #: 0-dim, weighted sum of the branch losses (0 while no anchor is valid)
    terms: dict[str, Tensor]  #: unweighted InfoNCE per branch ("s", "t", "g"), 0-dim each
    valid: dict[str, Tensor]  #: (N,) bool per branch: anchors that passed the gate


def fifo_share(counts: Tensor, num_samples: int, capacity: int) -> tuple[Tensor, Tensor]:
    """Expected (positives, negatives) per class in a full FIFO queue: floor(p_c·C), floor(C - p_c·C).

    ``p_c = counts[c] / num_samples``; computed in integers (exact, no float rounding).
    """
    counts = counts.long()
    pos = counts * capacity // num_samples
    return pos, (num_samples - counts) * capacity // num_samples


def _check_fifo_share(counts: Tensor, num_samples: int, capacity: int, K_pos: int, need_neg: int) -> None:
    """``small_classes='error'`` for a FIFO bank: every present class must expect enough queue slots."""
    counts = counts.long()
    present = counts > 0
    # p_c·C < K  <=>  count_c·C < K·num_samples (integers, exact)
    short_pos = present & (counts * capacity < K_pos * num_samples)
    short_neg = present & ((num_samples - counts) * capacity < need_neg * num_samples)
    bad = [int(c) for c in (short_pos | short_neg).nonzero().flatten()]
    if not bad:
        return
    exp_pos = [round(int(counts[c]) * capacity / num_samples, 1) for c in bad[:10]]
    exp_neg = [round((num_samples - int(counts[c])) * capacity / num_samples, 1) for c in bad[:10]]
    # smallest C with count_c·C >= K_pos·N and (N - count_c)·C >= need_neg·N for every present class
    need = [-(-K_pos * num_samples // int(c)) for c in counts[present]]
    others = [num_samples - int(c) for c in counts[present]]
    if need_neg > 0 and min(others) == 0:
        suggestion = "a single class has no negatives at any capacity"
    else:
        need += [-(-need_neg * num_samples // o) for o in others if o > 0]
        suggestion = f"use capacity >= {max(need)}"
    more = "..." if len(bad) > 10 else ""
    raise ValueError(
        f"FIFO bank of capacity {capacity}: classes {bad[:10]}{more} would rarely or never pass the gate. "
        f"A class with dataset share p_c = count_c / {num_samples} holds about p_c*C slots of the queue: "
        f"expected positives {exp_pos}{more} (K_pos={K_pos} needed), expected negatives {exp_neg}{more} "
        f"({need_neg} needed). The count over the whole dataset does not matter for a queue: {suggestion}, "
        "lower K_pos / K_hard / K_rand, or pass small_classes='skip' (those anchors contribute only in "
        "steps where the queue happens to hold enough) or 'clamp' (sets of min(K, expected share)).")


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of ``torch.distributed``, (1, 0) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@torch.no_grad()
def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0 (rank order). **No gradient** flows back.

    Every rank must pass the same shape (use ``drop_last`` or DistributedSampler's padding).
    """
    world, _ = world_and_rank()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class BankContrast(nn.Module):
    """An encoder with label-indexed memory banks, one per named branch, and :func:`csre_infonce` on each.

    The machinery :class:`CSRE` and :class:`models.heads.skeletongcl.SkeletonGCL` share: argument
    checks, the dataset's class statistics and the small-class policy, the banks, the bank write and
    loss per branch (:meth:`contrast`), the seeded generator of the random draws (its state in the
    state_dict), injected draws, DDP and :meth:`export`. A subclass builds its projections after
    ``super().__init__`` and calls :meth:`contrast` with one feature per branch in its ``forward``.

    Args:
        encoder: an :class:`~models.encoder.Encoder` (``features`` / ``head`` contract).
        num_samples: training-set length = bank size in full mode (``len(dataset)``; for a dataset
            repeated within an epoch, e.g. NW-UCLA ``repeat=5``, the repeated length 5·1020).
        labels: (num_samples,) labels aligned with the dataset index the feeder returns
            (``SkeletonFeeder.labels``); see :meth:`from_dataset`.
        branches: names of the contrasted features, one bank each (contrasted in this order).
        dim: feature dimension of the banks (256).
        K_pos, K_hard, K_rand: positives, hard negatives, random negatives per anchor (128/512/512).
        tau: temperature (0.8; the paper's grid 0.5/0.8/1.0).
        pos_strategy, neg_strategy: "H", "R" or "R+H" (Table 6; official: H and R+H).
        seed: seed of the generator of the random draws (use the run seed).
        capacity: None = one slot per dataset index (official); an int C = FIFO queue of C slots
            (see "FIFO banks" below).
        small_classes: what to do about classes that can never pass the gate because the dataset
            has fewer than ``K_pos`` samples of the class (or fewer than K negatives):
            ``"error"`` (default) raises at construction, naming the classes; ``"skip"`` keeps the
            official behaviour (those anchors never contribute); ``"clamp"`` uses
            ``min(K, available)`` positives / negatives for such classes (at least 1). The count is
            over the bank's labels, so a repeated dataset counts each repetition (NW-UCLA: about
            102 samples per class, 510 slots with ``repeat=5``: the official recipe passes the gate
            only thanks to the repeat, and an anchor's positives then include stale copies of
            itself). For a FIFO bank "available" is the class's expected share of the queue (below).

    FIFO banks (``capacity`` = C): the queue holds the last C written samples, so a class with
    dataset share ``p_c = count_c / num_samples`` holds about ``p_c·C`` slots (its expectation
    over random batches; the actual number fluctuates around it), not ``count_c``. The gate is
    therefore judged on the queue: ``small_classes="error"`` raises when ``p_c·C < K_pos`` or
    ``C - p_c·C`` is below the largest negative set size for some class, naming the classes and
    their expected counts and the smallest capacity that would do (a class short only in
    expectation would pass the gate in some steps and not in others, which "skip" allows
    explicitly). ``"clamp"`` clamps to the expected share ``floor(p_c·C)`` (negatives
    ``floor(C - p_c·C)``), not to ``min(count_c, C)``: the queue never holds ``count_c`` samples
    of a class whose share of C is smaller, so clamping to the dataset count would gate such
    anchors out nearly always. The expectation is a static, sync-free choice; in steps where the
    queue holds fewer than the share the anchor is still gated out (the gate counts the queue).

    DDP: when ``torch.distributed`` is initialised, the normalised features, labels and indices
    of all ranks are all-gathered (rank order, no gradient) and written to every rank's bank, so
    all banks stay identical. Random draws are made for the global batch by every rank from
    identically seeded generators and each rank keeps its rows, so the draws (and generator
    states) equal a single-process run. Each rank's ``contrastive`` is its row-loss sum times the
    world size divided by the global row count (one all_reduce): DDP's gradient averaging then
    gives exactly the gradient of the global-batch loss, and the mean of the ranks' values equals
    the single-process loss. Local batches must have equal sizes. The draws are only identical if
    every rank uses the same ``seed`` (and generator state): on the first step with random draws
    under ``torch.distributed`` (and again after a ``load_state_dict``) the ranks all-gather
    ``(seed, generator-state checksum)`` once (one host sync) and raise a ``RuntimeError`` on every
    rank if they differ.
    """

    def __init__(self, encoder: Encoder, num_samples: int, labels: Tensor | Sequence[int], branches: Sequence[str], *,
                 dim: int = 256, K_pos: int = 128, K_hard: int = 512, K_rand: int = 512, tau: float = 0.8,
                 pos_strategy: str = "H", neg_strategy: str = "R+H", seed: int = 0, capacity: int | None = None,
                 small_classes: str = "error") -> None:
        super().__init__()
        _check_strategy("pos_strategy", pos_strategy)
        neg_sets = _check_strategy("neg_strategy", neg_strategy)
        if small_classes not in SMALL_CLASS_POLICIES:
            raise ValueError(f"small_classes must be one of {SMALL_CLASS_POLICIES}, got {small_classes!r}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if labels.numel() != num_samples:
            raise ValueError(f"labels has {labels.numel()} entries but num_samples={num_samples}; they must be "
                             "aligned with the dataset index (a repeated dataset: the repeated length)")
        if labels.numel() and labels.min() < 0:
            raise ValueError("labels must be non-negative")
        if not branches or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct names, got {tuple(branches)!r}")
        self.encoder = encoder
        self.num_samples, self.branches = int(num_samples), tuple(branches)
        self.K_pos, self.K_hard, self.K_rand, self.tau = int(K_pos), int(K_hard), int(K_rand), float(tau)
        self.pos_strategy, self.neg_strategy = pos_strategy, neg_strategy
        self.seed, self.capacity, self.small_classes = int(seed), capacity, small_classes

        slots = num_samples if capacity is None else int(capacity)
        sizes = {"K_pos": self.K_pos, **{("K_hard" if s == "H" else "K_rand"): (self.K_hard if s == "H" else self.K_rand)
                                         for s in neg_sets}}
        for name, k in sizes.items():
            if not 1 <= k <= slots:
                raise ValueError(f"{name}={k} must be between 1 and the number of bank slots ({slots})")

        # class statistics of the dataset: what an anchor of each class can ever see
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1 if labels.numel() else 1)
        self.register_buffer("class_counts", counts, persistent=False)
        # full mode: the slots of each class (labels never change), so positives need no scan
        table = class_slot_table(labels) if capacity is None else None
        self.class_slots: Tensor | None
        self.register_buffer("class_slots", table, persistent=False)  # (C, W), -1 padded; None for FIFO
        need_neg = max(self.K_hard if "H" in neg_sets else 0, self.K_rand if "R" in neg_sets else 0)
        self.uses_random = "R" in STRATEGIES[pos_strategy] or "R" in neg_sets
        present = counts > 0
        short_pos = present & (counts < self.K_pos)
        short_neg = present & (num_samples - counts < need_neg)
        if small_classes == "error" and capacity is not None:  # a queue: the expected share of C counts
            _check_fifo_share(counts, num_samples, int(capacity), self.K_pos, need_neg)
        elif small_classes == "error" and bool((short_pos | short_neg).any()):
            bad = [int(c) for c in (short_pos | short_neg).nonzero().flatten()]
            raise ValueError(
                f"classes {bad[:10]}{'...' if len(bad) > 10 else ''} can never pass the gate: they have "
                f"fewer than K_pos={self.K_pos} samples ({[int(counts[c]) for c in bad[:10]]}) or fewer than "
                f"{need_neg} negatives among the {num_samples} dataset indices. Repeat the dataset within the "
                "epoch (the official NW-UCLA recipe: repeat=5), lower K_pos / K_hard / K_rand, or pass "
                "small_classes='skip' (official behaviour: those anchors never contribute) or 'clamp' "
                "(use min(K, available) samples for them).")

        self.banks = nn.ModuleDict({b: MemoryBank(dim, labels if capacity is None else None, capacity)
                                    for b in self.branches})
        self._generator: torch.Generator | None = None
        self._pending_state: tuple[str, Tensor] | None = None
        self._injected: dict[str, dict[str, Tensor]] = {}
        self._seed_checked = False  # DDP: ranks' seeds compared on the first random draw

    @classmethod
    def from_dataset(cls, encoder: Encoder, dataset, **kwargs) -> "BankContrast":
        """Bank size and labels from a dataset exposing ``labels`` aligned with its index (SkeletonFeeder)."""
        return cls(encoder, len(dataset), torch.as_tensor(dataset.labels), **kwargs)

    def contrast(self, feats: Mapping[str, Tensor], labels: Tensor, index: Tensor | None
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Bank write and InfoNCE for each branch, in the order of ``branches`` (CSRE: s, t, g; official: spatial first).

        Returns the unweighted losses and the valid-anchor masks per branch. Under DDP the loss is
        this rank's share (see the class docstring).
        """
        world, rank = world_and_rank()
        labels = labels.to(next(iter(feats.values())).device, torch.long)
        if world > 1 and self.uses_random and not self._seed_checked:
            self._check_seed_across_ranks(labels.device)
        labels_all = all_gather_cat(labels)
        index_all = None if index is None else all_gather_cat(index.to(labels.device, torch.long))
        n = labels.shape[0]
        terms, valid = {}, {}
        for b in self.branches:
            z = F.normalize(at_least_float32(feats[b]), dim=1)  # (n, d)
            bank = self.banks[b]
            bank.update(all_gather_cat(z.detach()), labels_all, index_all)  # write before compare
            res = csre_infonce(z, bank.features, bank.labels, bank.filled, labels,
                               K_pos=self.K_pos, K_hard=self.K_hard, K_rand=self.K_rand, tau=self.tau,
                               pos_strategy=self.pos_strategy, neg_strategy=self.neg_strategy,
                               available=self._available(labels), candidates=self._candidates(labels),
                               draw=self._drawer(b, z.device, n * world, n * rank))
            if world > 1:
                count = res.row_count.detach().clone()
                dist.all_reduce(count)
                terms[b] = res.row_sum * world / count.clamp_min(1)
            else:
                terms[b] = res.loss
            valid[b] = res.valid
        self._injected.clear()
        return terms, valid

    def _candidates(self, labels: Tensor) -> Tensor | None:
        """(n, W) bank slots of each anchor's class (-1 padded); None for FIFO banks (labels change)."""
        if self.class_slots is None:
            return None
        return self.class_slots.to(labels.device)[labels]

    def _available(self, labels: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.small_classes != "clamp":
            return None
        counts = self.class_counts.to(labels.device)[labels.clamp_max(self.class_counts.numel() - 1)]  # (n,)
        counts = torch.where(labels < self.class_counts.numel(), counts, 0)
        if self.capacity is not None:  # a queue: the expected share of C (see the class docstring)
            return fifo_share(counts, self.num_samples, int(self.capacity))
        return counts, self.num_samples - counts

    # -- random draws ----------------------------------------------------------------------

    def inject_draws(self, branch: str, *, pos: Tensor | None = None, neg: Tensor | None = None) -> None:
        """Use these bank rows as the random draws of ``branch`` in the next training step only.

        ``pos`` / ``neg``: (n, k) bank rows per anchor, as the reference fixtures' ``rand_rows_*``
        (rows of skipped anchors are ignored; -1 allowed). The generator is not advanced for an
        injected draw. For tests and replays of recorded runs.
        """
        if branch not in self.branches:
            raise ValueError(f"branch {branch!r} is not contrasted by this head (branches: {self.branches})")
        self._injected[branch] = {k: v for k, v in (("pos", pos), ("neg", neg)) if v is not None}

    def _drawer(self, branch: str, device: torch.device, total_rows: int, row_offset: int) -> DrawFn:
        injected = self._injected.get(branch, {})
        recorded = fixed_draws(**injected)

        def draw(kind: str, k: int, space: SampleSpace) -> Tensor:
            if kind in injected:
                return recorded(kind, k, space)
            return draw_ranks(space, k, self.generator(device), total_rows=total_rows, row_offset=row_offset)

        return draw

    def _check_seed_across_ranks(self, device: torch.device) -> None:
        """DDP: all-gather (seed, generator-state checksum) once; raise on every rank if they differ.

        Every rank raises at the same point (after the same collective), so no rank hangs. One host
        synchronisation, on the first step only (and again after ``load_state_dict``).
        """
        state = self.generator(device).get_state().long()  # CPU uint8 bytes
        checksum = int((state * torch.arange(1, state.numel() + 1)).sum())
        mine = torch.tensor([self.seed, checksum], dtype=torch.long, device=device)
        seeds, checksums = all_gather_cat(mine[None]).t().tolist()
        if len(set(seeds)) > 1:
            raise RuntimeError(f"CSRE seeds differ across DDP ranks (rank -> seed: {dict(enumerate(seeds))}): "
                               "every rank must draw the same random positives / negatives; pass the same "
                               "seed (the run seed, not a per-rank seed) to CSRE on every rank")
        if len(set(checksums)) > 1:
            raise RuntimeError("CSRE generator states differ across DDP ranks although the seeds agree "
                               f"(seed {seeds[0]}): load the same checkpoint on every rank (or none)")
        self._seed_checked = True

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The generator of the random draws on ``device`` (created lazily, seeded with ``seed``)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        g = self._generator
        if g is not None and g.device == device:
            return g
        g = torch.Generator(device=device)
        g.manual_seed(self.seed)
        if self._pending_state is not None:
            saved_type, state = self._pending_state
            if saved_type == device.type:
                g.set_state(state)
                self._pending_state = None
            else:
                warnings.warn(f"the saved CSRE generator state is for {saved_type}, the model runs on "
                              f"{device.type}: random draws restart from seed {self.seed}", stacklevel=2)
        elif self._generator is not None:
            warnings.warn(f"CSRE moved from {self._generator.device} to {device}: random draws restart "
                          f"from seed {self.seed}", stacklevel=2)
        self._generator = g
        return g

    def get_extra_state(self) -> dict:
        if self._generator is not None:
            return {"seed": self.seed, "device_type": self._generator.device.type,
                    "generator": self._generator.get_state()}
        if self._pending_state is not None:
            return {"seed": self.seed, "device_type": self._pending_state[0], "generator": self._pending_state[1]}
        return {"seed": self.seed, "device_type": None, "generator": None}

    def set_extra_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        self._seed_checked = False
        self._pending_state = None if state["generator"] is None else (state["device_type"], state["generator"].clone())

    # -- removal ---------------------------------------------------------------------------

    def export(self) -> OrderedDict[str, Tensor]:
        """Encoder-only state_dict (no head, banks or generator): loads strictly into the bare encoder."""
        return encoder_state(self.encoder)


class CSRE(BankContrast):
    """An encoder with the CSRE head (training only). See the module docstring for the semantics.

    Args (the others are :class:`BankContrast`'s: num_samples, labels, dim, K_pos, K_hard, K_rand,
    tau, pos_strategy, neg_strategy, seed, capacity, small_classes):
        encoder: an :class:`~models.encoder.Encoder` (``features`` / ``head`` contract).
        input_shape: (C, T, V, M) of the encoder's input; T' and V of the feature map are read
            from one dry run of ``encoder.features``. Or give ``feature_size``.
        feature_size: (T', V) of the feature map, if known.
        r: STFD channel reduction (8).
        weights: (w_s, w_t): the official code uses 0.5 each (``(L_s + L_t) / 2``); the paper's
            eq. (10) uses 1 each. Default: the code.
        gc_weight: weight of the global-feature term (variants "gc" and "csre+gc"; not in the
            released code; 0.5 like each official term).
        variant: "csre" (spatial + temporal), "sc" (spatial only), "tc" (temporal only), "gc"
            (global pooled feature only), "csre+gc" (the paper's Table 5).

    Global feature (GC): the encoder's pooled feature (mean over T', V and persons, as the
    classification head pools) projected by ``global_proj`` = Linear(C', dim).
    """

    def __init__(self, encoder: Encoder, num_samples: int, labels: Tensor | Sequence[int], *,
                 input_shape: Sequence[int] | None = None, feature_size: Sequence[int] | None = None,
                 dim: int = 256, r: int = 8, K_pos: int = 128, K_hard: int = 512, K_rand: int = 512,
                 tau: float = 0.8, weights: Sequence[float] = (0.5, 0.5), gc_weight: float = 0.5,
                 variant: str = "csre", pos_strategy: str = "H", neg_strategy: str = "R+H",
                 seed: int = 0, capacity: int | None = None, small_classes: str = "error") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if len(weights) != 2:
            raise ValueError(f"weights must be (w_s, w_t), got {weights!r}")
        super().__init__(encoder, num_samples, labels, VARIANTS[variant], dim=dim, K_pos=K_pos, K_hard=K_hard,
                         K_rand=K_rand, tau=tau, pos_strategy=pos_strategy, neg_strategy=neg_strategy, seed=seed,
                         capacity=capacity, small_classes=small_classes)
        self.variant = variant
        self.weights = {"s": float(weights[0]), "t": float(weights[1]), "g": float(gc_weight)}
        if input_shape is None and feature_size is None:
            raise ValueError("give input_shape=(C, T, V, M) (T' and V are read from a dry run of the encoder) "
                             "or feature_size=(T', V)")
        if feature_size is None:
            feature_size = self._probe(encoder, input_shape)
        T_, V_ = (int(v) for v in feature_size)
        C_ = int(encoder.out_channels)
        self.feature_size = (T_, V_)
        stfd_branches = [b for b in self.branches if b in ("s", "t")]
        if stfd_branches:
            self.std = STFD(C_, V_, T_, dim=dim, r=r, branches=stfd_branches)
        if "g" in self.branches:
            self.global_proj = nn.Linear(C_, dim)

    @staticmethod
    def _probe(encoder: Encoder, input_shape: Sequence[int]) -> tuple[int, int]:
        C, T, V, M = (int(v) for v in input_shape)
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = encoder.training
        encoder.eval()  # no BatchNorm statistics update
        try:
            with torch.no_grad():
                fmap = encoder.features(torch.zeros(1, C, T, V, M, device=device))
        finally:
            encoder.train(was_training)
        return int(fmap.shape[2]), int(fmap.shape[3])

    # -- forward ---------------------------------------------------------------------------

    def forward(self, x: Tensor, labels: Tensor | None = None, index: Tensor | None = None) -> Tensor | CSREOutput:
        """Eval mode: ``encoder(x)`` exactly. Train mode: :class:`CSREOutput` (needs labels and index)."""
        if not self.training:
            return self.encoder(x)
        if labels is None or (index is None and self.capacity is None):
            raise ValueError("in train mode CSRE needs the batch labels and dataset indices: model(x, labels, index)")
        M = self.encoder.persons_in(x)
        fmap = self.encoder.features(x)  # (N·M, C', T', V)
        logits = self.encoder.head(fmap, M)  # (N, num_class)
        feats = self.branch_features(fmap, M)
        terms, valid = self.contrast(feats, labels, index)
        contrastive = sum(self.weights[b] * terms[b] for b in self.branches)
        return CSREOutput(logits, contrastive, terms, valid)

    def branch_features(self, fmap: Tensor, num_person: int) -> dict[str, Tensor]:
        """Unnormalised features per branch from the final map: {"s": (N, dim), "t": ..., "g": ...}."""
        out: dict[str, Tensor] = {}
        if hasattr(self, "std"):
            x_s, x_t = self.std(fmap, num_person)
            if x_s is not None:
                out["s"] = x_s
            if x_t is not None:
                out["t"] = x_t
        if "g" in self.branches:
            out["g"] = self.global_proj(mean_pool(fmap, num_person))
        return out

    # -- official checkpoints ----------------------------------------------------------------

    def load_official_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load an official CSRE checkpoint: encoder keys unprefixed, STFD keys ``std.*``.

        The official checkpoints carry no banks (they are lost on resume there); ours stay as they are.
        """
        std = {k[len("std."):]: v for k, v in state_dict.items() if k.startswith("std.")}
        enc = {k: v for k, v in state_dict.items() if not k.startswith("std.")}
        self.encoder.load_state_dict(enc, strict=strict)
        if hasattr(self, "std"):
            self.std.load_state_dict(std, strict=strict)
        elif std and strict:
            raise ValueError(f"variant {self.variant!r} has no STFD but the checkpoint has std.* keys")

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, K_pos={self.K_pos}, K_hard={self.K_hard}, K_rand={self.K_rand}, "
                f"tau={self.tau}, weights={self.weights}, pos={self.pos_strategy!r}, neg={self.neg_strategy!r}, "
                f"seed={self.seed}, capacity={self.capacity}, small_classes={self.small_classes!r}")
