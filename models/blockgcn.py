"""BlockGCN (Zhou et al., CVPR 2024), state_dict-compatible with ``ZhouYuxuanYX/BlockGCN`` ``model/BlockGCN.py``.

Structure (official ``Model``): every joint's coordinates are embedded by ``Linear(in_channels, 128)``
plus a learned per-joint position embedding, normalised by ``data_bn`` (``BatchNorm1d(M·V·128)``),
then ten :class:`~models.units.GCNTCNBlock` blocks (128 ×4, 256 ×6; stride 2 at l5 and l8). The
spatial unit is :class:`BlockGC`: the channels are split into 8 head groups, each with its own
learned (V, V) topology per subset (``fc1``, identity at init, column-normalised) plus a static
k-hop encoding (``rpe`` indexed by the hop distance between joints), followed by a grouped 1x1
conv (``fc2``). The temporal unit is the shared :class:`~models.units.MultiScaleTemporalConv`
(kernel 5, dilations 1 and 2). Before every block a persistent-homology encoding of the skeleton
(:class:`TopologyEncoding`, official ``Topo``) is projected to the block's width
(:class:`TopologyProjection`, official ``TopoTrans``) and added to the feature map.

Inputs: the raw joints
    The official forward is ``(x, y_onehot, joint)``: ``y_onehot`` is only returned, ``joint`` (the
    skeleton after crop/resize/rotation, before the modality transform: spine-relative joints,
    bones, motion) feeds only the topology branch. To keep the encoder contract (one input ``x``),
    :meth:`BlockGCN.features` accepts ``x`` with ``in_channels + 3`` channels, the last 3 being
    those raw joints (``SkeletonFeeder(with_joints=True)`` stacks them). With only
    ``in_channels`` channels, ``x`` itself is used as ``joint``: an approximation for the plain
    (non-centred) joint stream, where ``joint`` and ``x`` coincide; for other modalities the
    topology then describes the modality, not the skeleton.

Persistent homology: an own implementation, not ``torch_topological``
    The official ``Topo`` calls ``torch_topological`` ``VietorisRipsComplex(dim=0)`` on each
    sample's (V, V) matrix seen as V points in R^V, then ``make_tensor`` and
    ``StructureElementLayer(64)``. The finite 0-dimensional persistence of a Vietoris-Rips
    filtration is the set of minimum-spanning-tree edge lengths of the point cloud (every point
    is born at 0; a component dies when an edge first joins it to another), so this module
    computes it directly (:func:`rips_h0_deaths`, a batched Prim's algorithm on ``torch.cdist``,
    the library's own distance call) and re-implements the 30-line structure-element layer. Why:

    * equal results: the multiset of MST edge weights is unique, the deaths are read from the same
      differentiable distance matrix as the library does (so gradients flow the same way), and the
      library's layout is reproduced (zero-length bars dropped by ``ripser`` and ``make_tensor``'s
      front padding up to the batch's longest diagram, each pad row contributing exactly 1);
      ``tests/models/test_blockgcn.py`` checks this against the library whenever it is installed;
    * no heavy dependencies: the library pulls ``gudhi``, ``giotto-ph`` (C++ wheels), POT,
      scikit-learn and matplotlib for what is a 25-point MST;
    * it runs batched on the model's device; the library copies every sample to the CPU
      (``.cpu().numpy()``) and runs ``ripser`` in a Python loop, a device sync per forward;
    * finite gradients: with padding rows the library's ``StructureElementLayer`` returns NaN
      gradients for its ``centres``/``sharpness`` (``nansum`` backward multiplies 0 by NaN); here the
      pad rows are a masked constant 1, so the forward is identical and the backward finite.

    Where the library differs (documented, degenerate inputs only): if no sample of a batch has a
    non-zero bar the library crashes (``torch.cat`` of an empty list); here the encoding is 0.

Deviations from the official code, all documented here and none affecting NTU-shaped output:

* Persons. ``TopoTrans`` hard-codes two persons (``x.repeat(2, 1)``). Here the (N, 64) topology
  is tiled ``M`` times (``repeat(M, 1)``): identical for M = 2, and it makes M = 1 (NW-UCLA, for
  which the official has no configuration: issue #25) and any M work. The tiling is reproduced as
  written: feature-map rows are ordered (n, m) but the tiled rows are (m, n), so row ``r`` gets
  the topology of sample ``r mod N`` (not ``r // M``); for M = 1 the two agree.
* Batch-level normalisation, reproduced as written: the (N, V, V) distance matrix is min-max
  normalised over the **whole batch**, so a sample's output depends on the others in its batch
  (and on the batch size). The only change: a batch whose range is 0 (e.g. all-zero joints)
  gives 0 instead of 0/0 = NaN.
* ``graph``: a layout name. ``'ntu'`` means the BlockGCN repository's ``graph/ntu_rgb_d.py``,
  which is the Hyperformer edge list (hand tip / thumb attached to the hand), i.e. this project's
  ``'ntu_hyperformer'`` layout; the graph only determines ``hops``. ``'ucla'`` is the shared
  NW-UCLA graph (BlockGCN's ``graph/ucla.py`` equals CTR-GCN's).
* ``hops`` (a plain tensor attribute in the official unit) is a non-persistent buffer: it moves
  with ``.to(device)`` and stays out of the state_dict, as in the official.
* The forward returns logits only (the official returns ``(logits, y_onehot)``).
* Unused official arguments are accepted and ignored as in the official: ``adaptive``,
  ``num_set``, ``window_size``, ``joint_label``. ``alpha=True`` creates the official
  ``gcn1.alpha`` parameters, which the official forward never uses (they get no gradient).

Submodules are built in the official order so that a model built right after
``torch.manual_seed(s)`` has the official initial state bit for bit (the official ``unit_gcn``
re-initialises its convolutions three times and resets its ``bn`` weight from 1e-6 back to 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.adjacency import build_graph, hop_distance
from models.encoder import Encoder, mean_pool
from models.units import (GCNTCNBlock, MultiScaleTemporalConv, bn_init, conv_init, data_bn_fold,
                          residual_branch)

EMBED_CHANNELS = 128
TOPO_ELEMENTS = 64
# BlockGCN's 'ntu' graph is the Hyperformer edge list (see the module docstring).
GRAPH_ALIASES = {"ntu": "ntu_hyperformer"}


# ---------------------------------------------------------------------------------------------
# Persistent-homology encoding (official ``Topo`` / ``TopoTrans``)


def rips_h0_deaths(points: Tensor) -> tuple[Tensor, Tensor]:
    """Finite 0-dim Vietoris-Rips persistence of B point clouds (B, P, D), as ``torch_topological``.

    Returns ``deaths`` (B, P-1), ascending per row, and ``kept`` (B, P-1) bool. Every bar is born
    at 0; the deaths are the edge lengths of a minimum spanning tree of the Euclidean distances
    (``torch.cdist``, the library's call), gathered from the differentiable distance matrix like
    the library's ``dist[gens[:, 1], gens[:, 2]]``. ``ripser`` drops zero-length bars
    (coincident points): ``kept`` is False there, and since deaths are >= 0 those entries come
    first in each row.

    The tree is found by Prim's algorithm on detached distances, batched over B (P-1 steps).
    Any minimum spanning tree has the same multiset of edge lengths, so ties only decide which
    equal-length edge carries the gradient.
    """
    B, P, _ = points.shape
    dist = torch.cdist(points, points, p=2)  # (B, P, P)
    if P < 2:
        empty = dist.new_zeros(B, 0)
        return empty, empty.bool()
    d = dist.detach()
    rows = torch.arange(B, device=points.device)
    in_tree = torch.zeros(B, P, dtype=torch.bool, device=points.device)
    in_tree[:, 0] = True
    best = d[:, 0].masked_fill(in_tree, math.inf)  # (B, P) distance of each point to the tree
    parent = torch.zeros(B, P, dtype=torch.long, device=points.device)
    ends = []
    for _ in range(P - 1):
        v = best.argmin(1)  # (B,) nearest point outside the tree
        ends.append(torch.stack((parent[rows, v], v), 1))
        in_tree[rows, v] = True
        row = d[rows, v]  # (B, P)
        closer = row < best
        best = torch.where(closer, row, best).masked_fill(in_tree, math.inf)
        parent = torch.where(closer, v[:, None], parent)
    edges = torch.stack(ends, 1)  # (B, P-1, 2)
    deaths = dist[rows[:, None], edges[..., 0], edges[..., 1]]  # (B, P-1), differentiable
    deaths = deaths.sort(dim=1).values
    return deaths, deaths != 0


class StructureElementLayer(nn.Module):
    """``torch_topological.nn.layers.StructureElementLayer`` on 0-dim diagrams given as deaths.

    ``n_elements`` learnable Gaussian structure elements in the (birth, death) plane:
    ``out[b, e] = Σ_k exp(-Σ_i sharpness[e, i]² (centres[e, i] - point_k[i])²)`` over the points
    (0, death) of sample ``b``'s diagram. Padding rows (the library's NaN rows) contribute
    exactly 1 (the library's ``nansum`` gives 0 there). Parameters and their initialisation
    (``centres`` ~ U[0, 1), ``sharpness`` = 3) are the library's.
    """

    def __init__(self, n_elements: int) -> None:
        super().__init__()
        self.n_elements = n_elements
        self.dim = 2
        self.centres = nn.Parameter(torch.rand(n_elements, self.dim))
        self.sharpness = nn.Parameter(torch.ones(n_elements, self.dim) * 3)

    def forward(self, deaths: Tensor, valid: Tensor, rows: Tensor | None = None) -> Tensor:
        """Deaths (B, K) with ``valid`` (B, K) -> (B, n_elements).

        Entries with ``valid`` False are the library's pad rows (contribute 1); ``rows`` (K,) bool,
        if given, marks the columns that exist at all (others contribute 0).
        """
        d = torch.where(valid, deaths, torch.zeros_like(deaths))  # finite placeholder on pad rows
        points = torch.stack((torch.zeros_like(d), d), -1)  # (B, K, 2): (birth, death)
        diff = self.centres[None, :, None, :] - points[:, None, :, :]  # (B, E, K, 2)
        q = (diff.pow(2) * torch.pow(self.sharpness, 2)[None, :, None, :]).sum(-1)  # (B, E, K)
        # (the library's third coordinate, the homology dimension, is 0 here and adds an exact 0)
        pad = torch.ones_like(q) if rows is None else rows.to(q.dtype).expand_as(q)
        contrib = torch.where(valid[:, None, :], torch.exp(-q), pad)
        return contrib.sum(2)


class TopologyEncoding(nn.Module):
    """Official ``Topo``: joints (N, C, T, V, M) -> persistence-diagram features (N, 64).

    Persons averaged, time-mean of the pairwise joint differences, L2 norm over the coordinates
    -> (N, V, V); min-max normalised over the whole batch; each row set read as V points in R^V;
    finite 0-dim Vietoris-Rips persistence (:func:`rips_h0_deaths`); :class:`StructureElementLayer`.
    Only ``pl`` has parameters (keys ``pl.centres``, ``pl.sharpness``).
    """

    def __init__(self, n_elements: int = TOPO_ELEMENTS) -> None:
        super().__init__()
        self.pl = StructureElementLayer(n_elements)

    @staticmethod
    def joint_distances(joint: Tensor) -> Tensor:
        """(N, C, T, V, M) -> (N, V, V): ``‖mean_t (x_i - x_j)‖`` of the person-averaged skeleton."""
        x = joint.permute(0, 4, 1, 2, 3).contiguous().mean(1)  # (N, C, T, V), as official (n m c t v)
        x = (x.unsqueeze(-1) - x.unsqueeze(-2)).mean(-3)  # (N, C, V, V): [.., i, j] = time-mean of x_i - x_j
        return torch.linalg.vector_norm(x, 2, dim=1)  # (N, V, V)

    @staticmethod
    def batch_min_max(x: Tensor) -> Tensor:
        """Min-max over the whole batch tensor (official); a zero range gives 0 instead of NaN."""
        lo, hi = torch.min(x), torch.max(x)
        scale = hi - lo
        return (x - lo) / torch.where(scale > 0, scale, torch.ones_like(scale))

    def forward(self, joint: Tensor) -> Tensor:  # (N, C, T, V, M) -> (N, n_elements)
        points = self.batch_min_max(self.joint_distances(joint))  # (N, V, V)
        deaths, kept = rips_h0_deaths(points)  # (N, V-1) each, zero-length bars first
        # make_tensor pads every diagram at the front to the batch's longest one: those columns
        # exist (pad rows count 1); leading columns of zero-length bars in every sample do not
        # (count 0). Computed without a device sync.
        K = deaths.shape[1]
        longest = kept.sum(1).max() if K else torch.zeros((), dtype=torch.long, device=joint.device)
        rows = torch.arange(K, device=joint.device) >= K - longest  # (K,)
        return self.pl(deaths, kept, rows)


class TopologyProjection(nn.Module):
    """Official ``TopoTrans``: (N, 64) -> ReLU(BN(Linear(tile_M(x)))) as (M·N, out_dim, 1, 1).

    The official tiles with ``x.repeat(2, 1)`` (two persons); here ``repeat(num_person, 1)``, so
    row ``r`` is sample ``r mod N`` (see the module docstring). Tiling before the BatchNorm keeps
    the official train-mode statistics (M·N rows).
    """

    def __init__(self, out_dim: int, in_dim: int = TOPO_ELEMENTS) -> None:
        super().__init__()
        self.mlp = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, topo: Tensor, num_person: int) -> Tensor:
        x = topo.repeat(num_person, 1)  # (M·N, 64), rows (m, n)
        x = torch.relu(self.bn(self.mlp(x)))
        return x.unsqueeze(2).unsqueeze(3)  # (M·N, out_dim, 1, 1)


# ---------------------------------------------------------------------------------------------
# Spatial unit and model


class BlockGC(nn.Module):
    """Official ``unit_gcn`` of BlockGCN: block-diagonal (per head group) graph convolution.

    For each of 3 subsets ``i``: the input channels are split into ``num_heads`` groups (8, or 1
    for inputs of at most 8 channels); group ``h`` is mixed over joints by
    ``fc1[i, h] / ‖fc1[i, h]‖_col + E_i[h] / ‖E_i[h]‖_col`` where ``E_i[h, v, w] = rpe[i, h,
    hops[v, w]]`` is the learned k-hop encoding and ``‖·‖_col`` the column L2 norm plus 1e-4; then
    the grouped 1x1 conv ``fc2[i]``. The three results are summed -> BN -> + ``down(x)`` -> ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, hops: Tensor, alpha: bool = False) -> None:
        super().__init__()
        V = hops.shape[-1]
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 8 if in_channels > 8 else 1
        eye = torch.eye(V)
        self.fc1 = nn.Parameter(torch.stack([torch.stack([eye] * self.num_heads)] * 3).clone())  # (3, H, V, V)
        self.fc2 = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1, groups=self.num_heads) for _ in range(3))
        if in_channels != out_channels:
            self.down: nn.Module = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
        else:
            self.down = nn.Identity()
        self.bn = nn.BatchNorm2d(out_channels)
        self._init_weights()
        bn_init(self.bn, 1e-6)  # undone by the re-initialisations below, as in the official
        self.register_buffer("hops", hops.clone().long(), persistent=False)  # (V, V)
        self.rpe = nn.Parameter(torch.zeros(3, self.num_heads, int(hops.max()) + 1))
        if alpha:  # official: created, never used by the forward
            self.alpha = nn.Parameter(torch.ones(1, self.num_heads, 1, 1, 1))
        self._init_weights()
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                bn_init(m, 1)

    @staticmethod
    def col_norm(w: Tensor) -> Tensor:
        """Official ``L2_norm``: L2 norm over the second-to-last axis (columns), plus 1e-4."""
        return torch.norm(w, 2, dim=-2, keepdim=True) + 1e-4

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C_in, T, V) -> (N·M, C_out, T, V)
        N, C, T, V = x.shape
        pos_emb = self.rpe[:, :, self.hops]  # (3, H, V, V)
        x_in = x.view(N, self.num_heads, C // self.num_heads, T, V)
        y = None
        for i in range(3):
            w1 = self.fc1[i] / self.col_norm(self.fc1[i])
            w1 = w1 + pos_emb[i] / self.col_norm(pos_emb[i])  # (H, V, V)
            z = torch.einsum("nhctv, hvw->nhctw", (x_in, w1)).contiguous().view(N, -1, T, V)
            z = self.fc2[i](z)
            y = z + y if y is not None else z
        y = self.bn(y)
        y = y + self.down(x)
        return torch.relu(y)


class BlockGCN(Encoder):
    """BlockGCN encoder. Final map (N·M, 256, T/4, V); head = person/space-time mean, dropout, ``fc``.

    Constructor arguments are the official ``Model``'s (``graph`` a layout name, see the module
    docstring). ``features`` takes (N, C, T, V, M) with C = ``in_channels`` (joints taken from ``x``)
    or ``in_channels + 3`` (raw joints for the topology branch in the last 3 channels).
    """

    #: the trainer asks the feeder for the raw joints (``SkeletonFeeder(with_joints=True)``)
    wants_joints = True

    def __init__(self, num_class: int = 60, num_point: int = 25, num_person: int = 2, graph: str | None = None,
                 graph_args: Mapping[str, Any] | None = None, in_channels: int = 3, drop_out: float = 0,
                 adaptive: bool = True, num_set: int = 3, alpha: bool = False, window_size: int = 64,
                 joint_label: Sequence[int] | None = None) -> None:
        super().__init__()
        g = build_graph(GRAPH_ALIASES.get(graph, graph) if graph is not None else None, graph_args, num_point)
        hops = hop_distance(g.A)  # (V, V) int64
        self.num_class = num_class
        self.num_point = num_point
        self.num_person = num_person
        self.in_channels = in_channels
        C = EMBED_CHANNELS
        self.data_bn = nn.BatchNorm1d(num_person * C * num_point)
        self.to_joint_embedding = nn.Linear(in_channels, C)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_point, C))

        plan = [(C, C, 1)] * 4 + [(C, 2 * C, 2), (2 * C, 2 * C, 1), (2 * C, 2 * C, 1), (2 * C, 2 * C, 2),
                                  (2 * C, 2 * C, 1), (2 * C, 2 * C, 1)]
        for i, (c_in, c_out, stride) in enumerate(plan, start=1):
            setattr(self, f"l{i}", self._block(c_in, c_out, hops, stride, alpha))
        for i, (c_in, _, _) in enumerate(plan):  # t_i feeds block l_{i+1}: its input width
            setattr(self, f"t{i}", TopologyProjection(c_in))
        self.topo = TopologyEncoding(TOPO_ELEMENTS)
        self.out_channels = 2 * C

        self.fc = nn.Linear(2 * C, num_class)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_class))
        bn_init(self.data_bn, 1)
        self.drop_out = nn.Dropout(drop_out) if drop_out else nn.Identity()

    @staticmethod
    def _block(c_in: int, c_out: int, hops: Tensor, stride: int, alpha: bool) -> GCNTCNBlock:
        """Official ``TCN_GCN_unit`` (kernel 5, dilations [1, 2]); built gcn -> tcn -> residual like the official."""
        gcn1 = BlockGC(c_in, c_out, hops, alpha=alpha)
        tcn1 = MultiScaleTemporalConv(c_out, c_out, kernel_size=5, stride=stride, dilations=(1, 2), residual=False)
        return GCNTCNBlock(gcn1, tcn1, residual_branch(c_in, c_out, stride))

    def split_input(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, T, V, M) -> (model input, raw joints for the topology branch); see the class docstring."""
        C = x.shape[1]
        if C == self.in_channels + 3:
            return x[:, :self.in_channels], x[:, self.in_channels:]
        if C == self.in_channels:
            return x, x
        raise ValueError(f"BlockGCN built for in_channels={self.in_channels} expects {self.in_channels} "
                         f"or {self.in_channels + 3} (with raw joints) input channels, got {C}")

    def topology(self, joint: Tensor) -> Tensor:
        """Raw joints (N, 3, T, V, M) -> persistent-homology features (N, 64) (batch-dependent)."""
        return self.topo(joint)

    def features(self, x: Tensor) -> Tensor:
        x, joint = self.split_input(x)
        N, _, T, V, M = x.shape
        topo = self.topo(joint)  # (N, 64)
        x = self.to_joint_embedding(x.permute(0, 4, 2, 3, 1))  # (N, M, T, V, 128)
        x = x + self.pos_embedding[:, :self.num_point]
        x = data_bn_fold(self.data_bn, x.permute(0, 4, 2, 3, 1))  # (N·M, 128, T, V)
        for i in range(10):
            x = getattr(self, f"l{i + 1}")(x + getattr(self, f"t{i}")(topo, M))
        return x  # (N·M, 256, T/4, V)

    def head(self, features: Tensor, num_person: int) -> Tensor:
        return self.fc(self.drop_out(mean_pool(features, num_person)))  # (N, num_class)
