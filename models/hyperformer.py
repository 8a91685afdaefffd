"""Hyperformer (Zhou et al., 2022), state_dict-compatible with ``ZhouYuxuanYX/Hyperformer`` ``model/Hyperformer.py``.

Ten blocks ``relu(tcn1(vit1(x)) + residual(x))``, all with ``24 · num_of_heads`` channels (216 for
the default 9 heads); stride 2 at l5 and l8. The spatial unit is a transformer-style attention over
the joints of each frame (:class:`HyperformerAttention`) whose logits add

* ``a``: the usual query-key term,
* ``b``: a relative-position term, the learned embedding ``rpe`` of the **hop distance** between
  the two joints (shortest path on the skeleton),
* ``c`` / ``d``: a "hypergraph" term, the query against (``c``) and a learned vector ``w1`` against
  (``d``) the embedding of the key joint's **body part** (``joint_label`` partitions the joints;
  each part's embedding is ``pe_proj`` of the part's mean feature).

The attention is blended with a learned per-head joint mixing matrix ``outer`` (initialised to the
identity): ``(alpha · softmax(...) + outer) @ v``. ``alpha``, ``rpe`` and ``w1`` start at 0, so at
initialisation the attention is switched off; the fixtures' perturbed state exercises it.
The temporal unit is the shared :class:`~models.units.MultiScaleTemporalConv` (kernel 5,
dilations 1 and 2, CTR-GCN's weight init).

Deviations from the official code (none changes a number):

* The constructor has no ``**kwargs`` (the official accepts and ignores any keyword; none of its
  configs passes one), so a misspelt argument or gin binding fails instead of being dropped.
* ``forward(x)`` takes only the skeletons. The official ``forward(x, y)`` takes the one-hot label
  ``y`` and returns ``(logits, y)`` untouched; the label plays no part in the computation.
* ``graph`` is a layout name. ``'ntu'`` means **Hyperformer's own** NTU graph, whose hand tip and
  thumb joints hang off the hand (:data:`models.adjacency` layout ``'ntu_hyperformer'``; the
  official ``graph.ntu_rgb_d.Graph`` of this repository). Only the hop distances depend on the
  graph, and the fixture's ``hops`` equal those of this variant, not of CTR-GCN's NTU graph (whose
  largest hop distance differs, which would change the shape of ``rpe``).
* ``joint_label=[]`` (the official default) crashes the official forward (``max([])``); here an
  empty list selects the partition the official config of the layout uses (NTU: 5 parts, NW-UCLA:
  3 parts, see :data:`DEFAULT_JOINT_LABELS`). A label list with an unused part id is rejected: the
  official would divide by zero (NaN gradients for ``pe_proj``).
* ``hops`` (a plain attribute officially) is a non-persistent buffer; the per-part averaging
  matrix is precomputed as a non-persistent buffer instead of being rebuilt every forward.
* The official dropouts inside the attention (``attn_drop``, ``proj_drop``, both 0) and
  ``DropPath(0)`` are identities and left out; ``drop_out`` before ``fc`` is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.adjacency import build_graph, hop_distance
from models.encoder import Encoder, mean_pool
from models.units import MultiScaleTemporalConv, bn_init, data_bn_fold, residual_branch

# Body-part partitions from the official configs (``model_args.joint_label``): NTU
# (config/nturgbd*/joint.yaml) and NW-UCLA (config/ucla/joint.yaml). Keyed by joint count.
DEFAULT_JOINT_LABELS: dict[int, tuple[int, ...]] = {
    25: (0, 4, 2, 2, 2, 2, 1, 1, 2, 2, 1, 1, 2, 3, 3, 3, 2, 3, 3, 3, 1, 0, 1, 0, 1),
    20: (0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2),
}

# Hyperformer's NTU graph is the hand-rewired variant (see the module docstring).
_GRAPH_ALIASES: dict[str, str] = {"ntu": "ntu_hyperformer"}


def resolve_joint_label(joint_label: Sequence[int], num_point: int) -> tuple[int, ...]:
    """Validate a body-part partition, or pick the layout's official one when it is empty."""
    if len(joint_label) == 0:
        if num_point not in DEFAULT_JOINT_LABELS:
            raise ValueError(f"joint_label is required for num_point={num_point} (defaults exist for "
                             f"{sorted(DEFAULT_JOINT_LABELS)} joints)")
        return DEFAULT_JOINT_LABELS[num_point]
    labels = tuple(int(v) for v in joint_label)
    if len(labels) != num_point:
        raise ValueError(f"joint_label has {len(labels)} entries, but num_point={num_point}")
    if min(labels) < 0 or set(labels) != set(range(max(labels) + 1)):
        raise ValueError(f"joint_label must use every part id 0..{max(labels)} (got {sorted(set(labels))})")
    return labels


class HyperformerAttention(nn.Module):
    """Official ``MHSA``: joint-to-joint attention per frame with hop and body-part biases.

    ``hops`` (V, V) are shortest-path distances on the skeleton; ``rpe`` has one learned ``dim``-vector
    per distance, split over the heads. Keys: ``rpe, w1, outer, alpha, kv.weight, q.weight,
    proj.weight, proj.bias`` (parameters first, in the official registration order).
    """

    def __init__(self, dim_in: int, dim: int, hops: Tensor, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be a multiple of num_heads={num_heads}")
        V = hops.shape[0]
        self.num_heads = num_heads
        self.dim = dim
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.register_buffer("hops", hops.long().clone(), persistent=False)  # (V, V)
        # Same creation order as the official: rpe, w1, outer, alpha, then kv, q, proj (default init).
        self.rpe = nn.Parameter(torch.zeros(int(hops.max()) + 1, dim))
        self.w1 = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.outer = nn.Parameter(torch.stack([torch.eye(V) for _ in range(num_heads)], dim=0))  # (H, V, V)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.kv = nn.Conv2d(dim_in, dim * 2, 1, bias=False)
        self.q = nn.Conv2d(dim_in, dim, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, groups=6)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x: normalised features (N, C_in, T, V); e: body-part embedding of each joint (N, dim, T, V)."""
        N, _, T, V = x.shape
        H, D = self.num_heads, self.head_dim
        kv = self.kv(x).reshape(N, 2, H, D, T, V).permute(1, 0, 4, 2, 5, 3)  # (2, N, T, H, V, D)
        k, v = kv[0], kv[1]
        q = self.q(x).reshape(N, H, D, T, V).permute(0, 3, 1, 4, 2)  # (N, T, H, V, D)
        e_k = e.reshape(N, H, D, T, V).permute(0, 3, 1, 4, 2)  # (N, T, H, V, D)

        k_r = self.rpe[self.hops].view(V, V, H, D)  # (V, V, H, D): embedding of each pair's hop distance
        b = torch.einsum("bthnc, nmhc->bthnm", q, k_r)  # (N, T, H, V, V) hop term
        c = torch.einsum("bthnc, bthmc->bthnm", q, e_k)  # (N, T, H, V, V) query vs. key's body part
        d = torch.einsum("hc, bthmc->bthm", self.w1, e_k).unsqueeze(-2)  # (N, T, H, 1, V) body-part prior
        a = q @ k.transpose(-2, -1)  # (N, T, H, V, V)
        attn = ((a + b + c + d) * self.scale).softmax(dim=-1)

        x = (self.alpha * attn + self.outer) @ v  # (N, T, H, V, D)
        x = x.transpose(3, 4).reshape(N, T, -1, V).transpose(1, 2)  # (N, H·D, T, V)
        return self.proj(x)


class HyperformerViT(nn.Module):
    """Official ``unit_vit``: pre-norm attention with a (projected) skip connection.

    The body-part embedding is computed here: the mean feature of each part (``x @ part_mean``),
    projected by ``pe_proj`` and handed back to every joint of the part. Keys: ``norm1``,
    ``attn.*``, ``skip_proj`` (only when the width changes, i.e. l1), ``pe_proj``.
    """

    def __init__(self, dim_in: int, dim: int, hops: Tensor, num_heads: int, joint_label: Sequence[int]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim_in)
        self.attn = HyperformerAttention(dim_in, dim, hops, num_heads)
        self.skip_proj = nn.Conv2d(dim_in, dim, 1, bias=False) if dim_in != dim else None
        self.pe_proj = nn.Conv2d(dim_in, dim, 1, bias=False)
        label = torch.nn.functional.one_hot(torch.tensor(list(joint_label))).float()  # (V, G)
        self.register_buffer("part_mean", label / label.sum(dim=0, keepdim=True), persistent=False)  # (V, G)
        self.register_buffer("joint_part", torch.tensor(list(joint_label)), persistent=False)  # (V,)

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C_in, T, V) -> (N·M, dim, T, V)
        z = self.pe_proj(x @ self.part_mean)  # (N·M, dim, T, G): embedding of each part's mean
        e = z[..., self.joint_part]  # (N·M, dim, T, V): each joint gets its part's embedding
        y = self.attn(self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), e)  # LayerNorm over channels
        skip = self.skip_proj(x) if self.skip_proj is not None else x
        return skip + y


class HyperformerBlock(nn.Module):
    """Official ``TCN_ViT_unit``: ``relu(tcn1(vit1(x)) + residual(x))``; keys ``vit1``, ``tcn1``, ``residual``.

    Built vit1 → tcn1 → residual like the official, so seeded construction draws the same numbers.
    """

    def __init__(self, in_channels: int, out_channels: int, hops: Tensor, num_heads: int,
                 joint_label: Sequence[int], stride: int = 1) -> None:
        super().__init__()
        self.vit1 = HyperformerViT(in_channels, out_channels, hops, num_heads, joint_label)
        self.tcn1 = MultiScaleTemporalConv(out_channels, out_channels, kernel_size=5, stride=stride,
                                           dilations=(1, 2), residual=False)
        self.residual = residual_branch(in_channels, out_channels, stride, residual=True)

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C_in, T, V) -> (N·M, C_out, T / stride, V)
        return torch.relu(self.tcn1(self.vit1(x)) + self.residual(x))


class Hyperformer(Encoder):
    """Hyperformer encoder. Final map (N·M, 24·num_of_heads, T/4, V); head = person/space-time mean, dropout, ``fc``.

    Constructor arguments are the official ``Model``'s (``graph`` a layout name, ``'ntu'`` meaning
    Hyperformer's NTU graph; ``joint_label`` empty → the layout's official partition). See the
    module docstring for all deviations. Unlike the official ``Model(..., **kwargs)``, there is no
    catch-all: the official configs pass no other argument, and an unknown keyword (a typo such as
    ``num_of_head``, or a stray gin binding) is an error instead of being silently ignored.
    """

    def __init__(self, num_class: int = 60, num_point: int = 25, num_person: int = 2, graph: str | None = "ntu",
                 graph_args: Mapping[str, Any] | None = None, in_channels: int = 3, drop_out: float = 0,
                 num_of_heads: int = 9, joint_label: Sequence[int] = ()) -> None:
        super().__init__()
        g = build_graph(_GRAPH_ALIASES.get(graph, graph) if graph is not None else None, graph_args, num_point)
        hops = hop_distance(g.A)  # (V, V) shortest-path hop counts
        self.joint_label = resolve_joint_label(joint_label, num_point)
        self.num_class = num_class
        self.num_point = num_point
        self.num_person = num_person
        self.num_of_heads = num_of_heads
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * num_point)

        width = 24 * num_of_heads  # "· num_heads: effect of concatenation" (official comment)
        for i in range(1, 11):
            c_in = in_channels if i == 1 else width
            stride = 2 if i in (5, 8) else 1
            setattr(self, f"l{i}", HyperformerBlock(c_in, width, hops, num_of_heads, self.joint_label, stride))
        self.out_channels = width

        self.fc = nn.Linear(width, num_class)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_class))
        bn_init(self.data_bn, 1)
        self.drop_out = nn.Dropout(drop_out) if drop_out else nn.Identity()

    def features(self, x: Tensor) -> Tensor:
        x = data_bn_fold(self.data_bn, x)  # (N·M, C, T, V)
        for i in range(1, 11):
            x = getattr(self, f"l{i}")(x)
        return x  # (N·M, 24·heads, T/4, V)

    def head(self, features: Tensor, num_person: int) -> Tensor:
        return self.fc(self.drop_out(mean_pool(features, num_person)))  # (N, num_class)
