"""Adjacency matrices of skeleton graphs, computed exactly as the official ``graph/`` packages do.

The CTR-GCN family (2s-AGCN, CTR-GCN, Hyperformer, BlockGCN, InfoGCN) all copy one
``graph/tools.py``; the functions here reproduce its arithmetic (float64, column normalisation by
in-degree), so ``spatial_graph('ntu').A.float()`` equals the official ``Graph().A`` cast to float32
bit for bit. That matters: CTR-GCN stores the graph as the initial value of a parameter (``PA``),
2s-AGCN adds it to every forward pass.

Edge lists are 0-based ``(i, j)`` pairs in the official ``inward`` orientation: ``i`` is the joint
farther from the body centre, ``j`` the one closer to it. ``edge_matrix`` puts edge ``(i, j)`` at
``A[j, i]`` (the official ``edge2mat``), so column ``i`` of the inward matrix says where joint ``i``
sends its message.

Layouts:

* ``'ntu'``: CTR-GCN ``graph/ntu_rgb_d.py`` (``inward_ori_index``), identical to 2s-AGCN's. It is
  the bone list of :mod:`models.graph` without the self pair, so it is derived from there.
* ``'ucla'``: CTR-GCN ``graph/ucla.py``; likewise the NW-UCLA bone list of :mod:`models.graph`.
* ``'ntu_hyperformer'``: Hyperformer / BlockGCN ``graph/ntu_rgb_d.py``, where the hand-tip and
  thumb joints both hang off the hand: ``(22, 8), (24, 12)`` (1-based) instead of CTR-GCN's
  ``(22, 23), (24, 25)``. Hyperformer's "hops" (shortest-path distances) depend on this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.graph import LAYOUTS

Edge = tuple[int, int]

# Hyperformer/BlockGCN `graph/ntu_rgb_d.py` re-attach two hand joints (1-based (child, parent)).
_HYPERFORMER_NTU_REWIRE: dict[Edge, Edge] = {(22, 23): (22, 8), (24, 25): (24, 12)}


def _hyperformer_ntu_inward() -> tuple[Edge, ...]:
    rewire = {(c - 1, p - 1): (nc - 1, np_ - 1) for (c, p), (nc, np_) in _HYPERFORMER_NTU_REWIRE.items()}
    return tuple(rewire.get(e, e) for e in LAYOUTS["ntu"].edges)


GRAPH_NAMES: tuple[str, ...] = (*LAYOUTS, "ntu_hyperformer")


def inward_edges(graph: str) -> tuple[Edge, ...]:
    """0-based inward edges ``(child, parent)`` of a layout name (see the module docstring)."""
    if graph == "ntu_hyperformer":
        return _hyperformer_ntu_inward()
    if graph in LAYOUTS:
        return LAYOUTS[graph].edges
    raise ValueError(f"unknown graph {graph!r}; known: {sorted(GRAPH_NAMES)}")


def num_nodes(graph: str) -> int:
    base = "ntu" if graph == "ntu_hyperformer" else graph
    if base not in LAYOUTS:
        raise ValueError(f"unknown graph {graph!r}; known: {sorted(GRAPH_NAMES)}")
    return LAYOUTS[base].num_joints


def reroot(edges: Iterable[Edge], root: int) -> tuple[Edge, ...]:
    """Orient the edges of a tree as ``(child, parent)`` pairs pointing toward ``root`` (0-based).

    The official repositories do not agree on the root of the NTU tree: CTR-GCN/2s-AGCN's inward
    edges point toward joint 21 (index 20), InfoGCN's ``graph/ntu_rgb_d.py`` toward joint 2
    (index 1; its ``A_outward_binary`` is ``edge_matrix(reroot(inward_edges('ntu'), 1), 25).T``).
    The order of the input edges is kept.
    """
    edges = tuple(edges)
    neighbours: dict[int, set[int]] = {}
    for i, j in edges:
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    depth = {root: 0}
    frontier = [root]
    while frontier:  # breadth-first distances from the root
        nxt = []
        for u in frontier:
            for w in neighbours.get(u, ()):
                if w not in depth:
                    depth[w] = depth[u] + 1
                    nxt.append(w)
        frontier = nxt
    if len(depth) != len(neighbours) or len(edges) != len(neighbours) - 1:
        raise ValueError("edges must form a tree that contains the root")
    return tuple((i, j) if depth[i] > depth[j] else (j, i) for i, j in edges)


def edge_matrix(edges: Iterable[Edge], num_node: int) -> Tensor:
    """Binary (V, V) float64 matrix with ``A[j, i] = 1`` for each edge ``(i, j)`` (official ``edge2mat``).

    InfoGCN's ``tools.get_adjacency_matrix`` uses the other convention (``A[i, j] = 1``): that is
    ``edge_matrix(edges, V).T``.
    """
    A = torch.zeros(num_node, num_node, dtype=torch.float64)
    for i, j in edges:
        A[j, i] = 1.0
    return A


def normalize_digraph(A: Tensor) -> Tensor:
    """Divide every column by its sum; all-zero columns stay zero (official ``normalize_digraph``).

    The official code multiplies by ``diag(1 / colsum)``; each output entry is one product, so this
    broadcast division by the same reciprocal gives identical float64 values.
    """
    col = A.sum(0)  # (V,) in-degree of each column
    inv = torch.where(col > 0, col.reciprocal(), torch.zeros_like(col))
    return A * inv[None, :]  # (V, V)


def spatial_adjacency(num_node: int, inward: Sequence[Edge]) -> Tensor:
    """The three spatial subsets (self, inward, outward), float64 (3, V, V): official ``get_spatial_graph``."""
    outward = [(j, i) for i, j in inward]
    identity = edge_matrix([(i, i) for i in range(num_node)], num_node)
    return torch.stack((identity, normalize_digraph(edge_matrix(inward, num_node)),
                        normalize_digraph(edge_matrix(outward, num_node))))


def normalize_adjacency_matrix(A: Tensor) -> Tensor:
    """Symmetric normalisation ``D^-1/2 A D^-1/2`` with row-sum degrees (official ``normalize_adjacency_matrix``).

    Used by Hyperformer/BlockGCN graphs as ``A_norm`` (with ``A_binary + 2I``). Returns float32 like
    the official (which casts at the end).
    """
    d = A.sum(-1).pow(-0.5)  # (V,)
    return (torch.diag(d) @ A @ torch.diag(d)).float()


def k_adjacency(A: Tensor, k: int, with_self: bool = False, self_factor: float = 1.0) -> Tensor:
    """Pairs exactly ``k`` hops apart (official ``k_adjacency``): ``min((A+I)^k, 1) - min((A+I)^(k-1), 1)``."""
    identity = torch.eye(len(A), dtype=A.dtype)
    if k == 0:
        return identity

    def within(n: int) -> Tensor:  # 1 where j is reachable from i in at most n hops
        return torch.linalg.matrix_power(A + identity, n).clamp(max=1)

    Ak = within(k) - within(k - 1)
    if with_self:
        Ak = Ak + self_factor * identity
    return Ak


def k_scale_graph(scale: int, A: Tensor) -> Tensor:
    """Binary reachability within ``scale`` hops, without self unless ``A`` has it (official ``get_k_scale_graph``)."""
    if scale == 1:
        return A
    An = torch.zeros_like(A)
    power = torch.eye(A.shape[0], dtype=A.dtype)
    for _ in range(scale):
        power = power @ A
        An += power
    return (An > 0).to(A.dtype)


def hop_distance(A: Tensor) -> Tensor:
    """Shortest-path hop counts (V, V) int64 from any adjacency stack, as Hyperformer/BlockGCN compute ``hops``.

    ``A`` may be (K, V, V) (the subsets are summed) or (V, V); every non-zero entry is an edge.
    The official loop keeps ``h[i]`` = "reachable within i hops" and adds ``i`` where that set grows;
    unreachable pairs therefore get 0 (never the case on a connected skeleton). The diagonal is 0.
    """
    adj = (A.sum(0) if A.dim() == 3 else A) != 0
    V = adj.shape[-1]
    step = (adj | torch.eye(V, dtype=torch.bool)).to(torch.float64)
    reach = torch.eye(V, dtype=torch.float64)
    hops = torch.zeros(V, V, dtype=torch.long)
    for i in range(1, V):
        new = ((reach @ step) > 0).to(torch.float64)
        hops += i * (new - reach).long()  # pairs first reached at hop i
        if torch.equal(new, reach):
            break
        reach = new
    return hops


@dataclass(frozen=True, eq=False)
class SkeletonGraph:
    """A layout's edges and its (3, V, V) spatial adjacency ``A`` (float64, like the official numpy array).

    Plays the role of the official ``Graph`` object: ``A`` is ``Graph(labeling_mode='spatial').A``.
    """

    name: str
    num_node: int
    inward: tuple[Edge, ...]
    A: Tensor

    @property
    def outward(self) -> tuple[Edge, ...]:
        return tuple((j, i) for i, j in self.inward)

    @property
    def neighbor(self) -> tuple[Edge, ...]:
        return self.inward + self.outward

    @property
    def A_binary(self) -> Tensor:
        """Symmetric binary adjacency without self links (official ``edge2mat(neighbor, V)``)."""
        return edge_matrix(self.neighbor, self.num_node)


def spatial_graph(graph: str, labeling_mode: str = "spatial", scale: int = 1) -> SkeletonGraph:
    """Build the graph of a layout name with the official ``graph_args``.

    ``labeling_mode`` only supports ``'spatial'`` (the official raises ``ValueError`` otherwise).
    ``scale`` is accepted because the UCLA/Hyperformer/BlockGCN ``Graph`` constructors take it; it
    only affects their ``A_binary_K``, never ``A``.
    """
    if labeling_mode != "spatial":
        raise ValueError(f"labeling_mode {labeling_mode!r} is not supported (the official graphs only know 'spatial')")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    V = num_nodes(graph)
    inward = inward_edges(graph)
    return SkeletonGraph(name=graph, num_node=V, inward=inward, A=spatial_adjacency(V, inward))


def build_graph(graph: str | None, graph_args: Mapping[str, Any] | None, num_point: int) -> SkeletonGraph:
    """Resolve an encoder's ``graph`` / ``graph_args`` keyword arguments; checks the joint count.

    ``graph`` is a layout name (``'ntu'``, ``'ucla'``, ``'ntu_hyperformer'``), not the official dotted
    import path: the project never imports the official code, and the dotted path
    ``graph.ntu_rgb_d.Graph`` means a different edge list in the Hyperformer repository.
    """
    if graph is None:
        raise ValueError(f"graph is required (one of {sorted(GRAPH_NAMES)})")  # the official raises too
    g = spatial_graph(graph, **dict(graph_args or {}))
    if g.num_node != num_point:
        raise ValueError(f"graph {graph!r} has {g.num_node} joints, but num_point={num_point}")
    return g
