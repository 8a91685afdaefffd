"""SkeletonGCL: graph contrastive learning on the learned topology of the last GCN block.

Follows the official code (``OliverHxh/SkeletonGCL``: ``model/ctrgcn.py``, ``model/agcn.py``,
``model/loss.py::InfoNCEGraph``, ``main.py``; see ``shared/spec/reference-behaviour.md`` §3.1):

1. **The graph of l10.** CTR-GCN: for each of the 3 subsets, the refined channel-wise topology
   *before* ``alpha``, i.e. the output of ``CTRGC.conv4`` (N·M, C, V, V) (the official
   ``CTRGC.forward`` returns it beside the features); stacked per subset, averaged over the M
   persons and then over the C channels -> (N, 3, V, V). 2s-AGCN: the raw attention product
   ``A1·A2 = θ(x)ᵀφ(x)`` of each subset (N·M, V, V) (before the scaling and softmax), averaged over
   the persons -> (N, 3, V, V). Flattened subset-major (``k·V² + u·V + v``) -> (N, 3·V·V); 1875 for
   NTU, 1200 for NW-UCLA. Read with forward hooks on ``l10.gcn1.convs[i].conv4`` (CTR-GCN) and
   ``l10.gcn1.attention_tap`` (2s-AGCN, a stateless ``nn.Identity``), registered only during a
   training forward: the encoder's state_dict and its eval forward are untouched.
2. **Projection** ``trans = Linear(3·V², dim)``, weight N(0, sqrt(2 / num_class)), zero bias.
3. **Bank InfoNCE** exactly as CSRE's (CSRE's loss *is* SkeletonGCL's ``InfoNCEGraph`` minus the
   projection): L2 normalisation, write-before-compare into a label-indexed bank, the
   ``K_pos``/``K_hard``/``K_rand`` gate, hardest positives, hardest + random negatives, CE at
   temperature ``tau``. The banks, the vectorised loss, the seeded generator of the random
   negatives (its state in the state_dict), the small-class policies, FIFO banks and the DDP
   all-gather are CSRE's own: :class:`SkeletonGCL` and :class:`models.csre.CSRE` share
   :class:`models.csre.BankContrast`.
4. **Loss** = CE + ``weight``·L_graph with ``weight = 1`` (official ``main.py``: ``loss + contrast``
   when ``contrast > 0``; an exact zero is added here instead, which is equivalent).
   ``tau``: the official scripts' value for the cell (``script/*/single_modality/*.sh`` set one per
   encoder, benchmark and stream: :data:`OFFICIAL_TAU`); main.py's default 0.8 where none is set.

Supported encoders: CTR-GCN (:class:`models.ctrgcn.CTRGCN`) and 2s-AGCN (:class:`models.agcn.AGCN`),
the two the official code implements. The method needs a *learned, sample-dependent* topology in
the last block, which the other encoders do not expose in this form (HCN has no graph; Hyperformer,
BlockGCN and InfoGCN learn other structures); they raise a ``ValueError`` at construction.

Departures from the official code:

* **The projection is frozen by default, as in the official run.** ``InfoNCEGraph`` lives in the
  loss module, outside the model, and the official optimiser gets only ``model.parameters()``: the
  projection keeps its random initialisation for the whole run (a fixed random projection).
  ``train_projection=False`` (default) reproduces that (``trans`` parameters with
  ``requires_grad=False``, kept in the state_dict so a checkpoint restores the same projection);
  ``train_projection=True`` trains it with the encoder.
* Everything :mod:`models.csre` lists for the shared loss: vectorised, sync-free, a seeded
  ``torch.Generator`` instead of Python's ``random``, float32 loss under autocast, banks and
  generator state in the state_dict (the official bank is lost on resume), explicit small-class
  policy (NW-UCLA passes the gate only with the official ``repeat = 5``), DDP all-gather (the
  official README says to use one GPU).
* The graph is averaged per subset before stacking (the official stacks (N·M, 3, C, V, V) first):
  the same means in the same order, without the 3·C·V² copy per sample.
* The hooks read the graph of every forward in train mode; the encoder is not modified to return
  it (state_dict keys and outputs unchanged).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from models.agcn import AGCN
from models.csre import BankContrast, CSREOutput
from models.ctrgcn import CTRGCN
from models.encoder import Encoder

__all__ = ["DEFAULT_TAU", "OFFICIAL_TAU", "SkeletonGCL", "graph_source", "official_tau", "GRAPH_BLOCK"]

#: the block whose topology is contrasted (the official: the last one)
GRAPH_BLOCK = "l10"
SUPPORTED = "CTR-GCN (models.ctrgcn.CTRGCN) and 2s-AGCN (models.agcn.AGCN)"


#: main.py's ``--temperature`` default, which the NW-UCLA scripts (and any cell without a script) get
DEFAULT_TAU = 0.8
_STREAM_ORDER = ("joint", "bone", "joint_motion", "bone_motion")
#: the official scripts' ``--temperature`` per (encoder, benchmark), in the order of
#: :data:`_STREAM_ORDER` (OliverHxh/SkeletonGCL at cbd78de, ``script/{ctr,agcn}/single_modality/
#: {ntu,ntu120}_{ctr,agcn}_{xsub,xview,xset}.sh``: one command per stream)
OFFICIAL_TAU: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("ctrgcn", "ntu60_xsub"): (0.8, 0.5, 0.5, 0.5),
    ("ctrgcn", "ntu60_xview"): (0.8, 0.5, 1.0, 0.8),
    ("ctrgcn", "ntu120_xsub"): (0.8, 0.5, 0.8, 1.0),
    ("ctrgcn", "ntu120_xset"): (0.5, 0.5, 0.5, 0.5),
    ("agcn", "ntu60_xsub"): (0.5, 1.0, 0.5, 1.0),
    ("agcn", "ntu60_xview"): (0.8, 0.8, 1.0, 0.5),
    ("agcn", "ntu120_xsub"): (1.0, 1.0, 0.5, 0.5),
    ("agcn", "ntu120_xset"): (0.8, 0.5, 1.0, 0.5),
}


def official_tau(encoder: str, benchmark: str | None, stream: str) -> float:
    """The temperature the official scripts train the cell (``encoder``: 'ctrgcn' or 'agcn',
    ``benchmark``, ``stream``) with; :data:`DEFAULT_TAU` where no script passes one (NW-UCLA, or a
    benchmark of your own)."""
    if stream not in _STREAM_ORDER:
        raise ValueError(f"unknown stream {stream!r}; known: {', '.join(_STREAM_ORDER)}")
    taus = OFFICIAL_TAU.get((encoder, benchmark))
    return DEFAULT_TAU if taus is None else taus[_STREAM_ORDER.index(stream)]


def graph_source(encoder: Encoder) -> str:
    """``'ctrgcn'`` or ``'agcn'``: which learned topology ``encoder`` exposes; ValueError otherwise."""
    if isinstance(encoder, CTRGCN):
        return "ctrgcn"
    if isinstance(encoder, AGCN):
        return "agcn"
    raise ValueError(
        f"SkeletonGCL supports {SUPPORTED} only, got {type(encoder).__name__}: it contrasts the learned, "
        "sample-dependent topology of the last GCN block (CTR-GCN's refined channel-wise topology, 2s-AGCN's "
        "attention product), as the official code does; other encoders have no such graph (use CSRE or FR-Head)")


class SkeletonGCL(BankContrast):
    """An encoder (CTR-GCN or 2s-AGCN) with the SkeletonGCL head (training only).

    See the module docstring for the semantics. Train mode: ``model(x, labels, index)`` ->
    :class:`~models.csre.CSREOutput` with ``terms = {"graph": L}``, ``valid = {"graph": (N,) bool}``
    and ``contrastive = weight · L``. Eval mode: ``model(x) == encoder(x)``.

    Args:
        encoder: a :class:`~models.ctrgcn.CTRGCN` or :class:`~models.agcn.AGCN`.
        num_samples: training-set length = bank size (NW-UCLA with ``repeat=5``: the repeated length).
        labels: (num_samples,) labels aligned with the feeder's dataset index.
        input_shape: accepted for the trainer's uniform call (CSRE needs it); unused here, the
            graph size comes from the encoder's adjacency (3·V·V).
        dim: projection / bank dimension (256). K_pos, K_hard, K_rand: 128 / 512 / 512.
        tau: temperature; None (default) = the official scripts' value for the cell
            (:func:`official_tau`: per encoder, benchmark and stream; 0.8 where no script sets one).
        stream, benchmark: the run's stream and benchmark (the trainer passes them), for ``tau=None``.
        weight: weight of the graph term (official 1).
        pos_strategy, neg_strategy: as :class:`~models.csre.BankContrast` (official "H" / "R+H").
        seed: seed of the random-negative generator (use the run seed).
        capacity, small_classes: as :class:`~models.csre.BankContrast`.
        train_projection: False (official: the projection is never optimised) or True.
    """

    def __init__(self, encoder: Encoder, num_samples: int, labels: Tensor | Sequence[int], *,
                 input_shape: Sequence[int] | None = None, dim: int = 256, K_pos: int = 128, K_hard: int = 512,
                 K_rand: int = 512, tau: float | None = None, stream: str = "joint", benchmark: str | None = None,
                 weight: float = 1.0,
                 pos_strategy: str = "H",
                 neg_strategy: str = "R+H", seed: int = 0, capacity: int | None = None,
                 small_classes: str = "error", train_projection: bool = False) -> None:
        source = graph_source(encoder)
        if input_shape is not None and len(tuple(input_shape)) != 4:
            raise ValueError(f"input_shape must be (C, T, V, M), got {tuple(input_shape)!r}")
        if tau is None:
            tau = official_tau(source, benchmark, stream)
        # the bank machinery draws no random numbers, so ``trans`` below takes the same ones as the
        # official InfoNCEGraph built right after the model
        super().__init__(encoder, num_samples, labels, ("graph",), dim=dim, K_pos=K_pos, K_hard=K_hard,
                         K_rand=K_rand, tau=tau, pos_strategy=pos_strategy, neg_strategy=neg_strategy, seed=seed,
                         capacity=capacity, small_classes=small_classes)
        self.variant = "skeletongcl"
        self.weights = {"graph": float(weight)}

        gcn = getattr(encoder, GRAPH_BLOCK).gcn1
        adjacency = gcn.PA if getattr(gcn, "adaptive", False) else gcn.A  # (K, V, V)
        self.source = source
        self.num_subset, self.num_point = int(adjacency.shape[0]), int(adjacency.shape[-1])
        self.graph_dim = self.num_subset * self.num_point * self.num_point
        self.train_projection = bool(train_projection)
        self.trans = nn.Linear(self.graph_dim, dim)
        nn.init.normal_(self.trans.weight, 0, math.sqrt(2.0 / encoder.num_class))
        nn.init.zeros_(self.trans.bias)
        self.trans.requires_grad_(self.train_projection)

    # -- the graph -------------------------------------------------------------------------

    def _taps(self) -> list[nn.Module]:
        gcn = getattr(self.encoder, GRAPH_BLOCK).gcn1
        if self.source == "ctrgcn":
            return [conv.conv4 for conv in gcn.convs]  # one call each per forward, subset order
        return [gcn.attention_tap]  # called once per subset, in order

    @contextlib.contextmanager
    def _capture(self) -> Iterator[list[Tensor]]:
        """Collect the per-subset graphs of ``GRAPH_BLOCK`` produced inside the ``with`` body."""
        per_tap: list[list[Tensor]] = []
        handles = []
        for tap in self._taps():
            store: list[Tensor] = []
            per_tap.append(store)
            handles.append(tap.register_forward_hook(lambda _m, _i, out, store=store: store.append(out)))
        graphs: list[Tensor] = []
        try:
            yield graphs
        finally:
            for h in handles:
                h.remove()
        graphs.extend(t for store in per_tap for t in store)

    def graph_feature(self, subsets: Sequence[Tensor], num_person: int) -> Tensor:
        """Per-subset graphs of l10 -> (N, 3·V·V), averaged as the official code.

        CTR-GCN: each (N·M, C, V, V) -> mean over persons, then channels; 2s-AGCN: each (N·M, V, V) ->
        mean over persons. Then stacked subset-major and flattened. Computed in float32 at least
        (a half-precision graph under autocast is promoted first).
        """
        if len(subsets) != self.num_subset:
            raise RuntimeError(f"expected {self.num_subset} graphs from {GRAPH_BLOCK} in one forward, got "
                               f"{len(subsets)} (the encoder's forward must call each tapped module once per subset)")
        per_subset = []
        for g in subsets:
            g = g.to(torch.promote_types(g.dtype, torch.float32))  # means in (at least) float32 under autocast
            NM = g.shape[0]
            g = g.view(NM // num_person, num_person, *g.shape[1:]).mean(1)  # (N, [C,] V, V)
            if self.source == "ctrgcn":
                g = g.mean(1)  # channels -> (N, V, V)
            per_subset.append(g)
        return torch.stack(per_subset, 1).reshape(per_subset[0].shape[0], -1)  # (N, K·V·V)

    def features_and_graph(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(final feature map (N·M, C', T', V), graph feature (N, 3·V·V)) of one encoder pass."""
        with self._capture() as subsets:
            fmap = self.encoder.features(x)
        return fmap, self.graph_feature(subsets, self.encoder.persons_in(x))

    # -- forward ---------------------------------------------------------------------------

    def forward(self, x: Tensor, labels: Tensor | None = None, index: Tensor | None = None) -> Tensor | CSREOutput:
        """Eval mode: ``encoder(x)`` exactly. Train mode: :class:`CSREOutput` (needs labels and index)."""
        if not self.training:
            return self.encoder(x)
        if labels is None or (index is None and self.capacity is None):
            raise ValueError("in train mode SkeletonGCL needs the batch labels and dataset indices: "
                             "model(x, labels, index)")
        fmap, graph = self.features_and_graph(x)
        logits = self.encoder.head(fmap, self.encoder.persons_in(x))
        terms, valid = self.contrast({"graph": self.trans(graph)}, labels, index)
        return CSREOutput(logits, self.weights["graph"] * terms["graph"], terms, valid)

    # -- checkpoints -----------------------------------------------------------------------

    def load_official_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load an official SkeletonGCL checkpoint: the bare model state (the official projection and
        bank live in the loss module and are not saved); ``module.`` prefixes are stripped."""
        enc = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state_dict.items())
        self.encoder.load_state_dict(enc, strict=strict)

    def extra_repr(self) -> str:
        return (f"source={self.source!r}, graph_dim={self.graph_dim}, K_pos={self.K_pos}, K_hard={self.K_hard}, "
                f"K_rand={self.K_rand}, tau={self.tau}, weight={self.weights['graph']}, "
                f"pos={self.pos_strategy!r}, neg={self.neg_strategy!r}, seed={self.seed}, capacity={self.capacity}, "
                f"small_classes={self.small_classes!r}, train_projection={self.train_projection}")
