"""2s-AGCN (Shi et al., CVPR 2019), state_dict-compatible with ``lshiwjx/2s-AGCN`` ``model/agcn.py``.

Ten :class:`~models.units.GCNTCNBlock` blocks with the same channel plan as CTR-GCN; the temporal
unit is a plain 9x1 :class:`~models.units.UnitTCN`. The adaptive graph convolution uses, per
subset ``k``, the fixed graph ``A[k]`` + a learned offset ``PA[k]`` (init 1e-6) + a data-dependent
attention ``softmax(θ(x)ᵀ φ(x))`` over joints.

Deviation: the official ``Model`` hard-codes 3 input channels for ``l1`` while sizing ``data_bn``
with ``in_channels``; here ``l1`` uses ``in_channels`` (identical for the default 3, and the only
setting in which the official runs at all).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.adjacency import build_graph
from models.encoder import Encoder, mean_pool
from models.units import GCNTCNBlock, UnitTCN, bn_init, conv_branch_init, conv_init, data_bn_fold, residual_branch


class AGCNUnitGCN(nn.Module):
    """Official ``unit_gcn`` of 2s-AGCN (adaptive graph convolution, one branch per subset).

    ``A`` (the fixed graph) is a non-persistent buffer: the official keeps it as a plain attribute,
    so it is not in official checkpoints, yet it must follow ``.to(device)``. ``attention_tap`` is a
    stateless ``nn.Identity`` the raw product ``θ(x)ᵀφ(x)`` (N·M, V, V) of every subset passes
    through (once per subset, in order), for forward hooks (:mod:`models.heads.skeletongcl`).
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor, coff_embedding: int = 4,
                 num_subset: int = 3) -> None:
        super().__init__()
        self.inter_c = out_channels // coff_embedding
        A = A.to(torch.float32)
        self.PA = nn.Parameter(torch.full_like(A, 1e-6))
        self.register_buffer("A", A.clone(), persistent=False)
        self.num_subset = num_subset

        self.conv_a = nn.ModuleList()  # θ: joint embeddings for the attention, one per subset
        self.conv_b = nn.ModuleList()  # φ
        self.conv_d = nn.ModuleList()  # per-subset output transform
        for _ in range(num_subset):  # interleaved creation, as the official (order of random draws)
            self.conv_a.append(nn.Conv2d(in_channels, self.inter_c, 1))
            self.conv_b.append(nn.Conv2d(in_channels, self.inter_c, 1))
            self.conv_d.append(nn.Conv2d(in_channels, out_channels, 1))
        if in_channels != out_channels:
            self.down: nn.Module = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1),
                                                 nn.BatchNorm2d(out_channels))
        else:
            self.down = nn.Identity()
        self.bn = nn.BatchNorm2d(out_channels)
        # Stateless pass-through of the raw attention product θ(x)ᵀφ(x) of each subset (called once
        # per subset, in subset order), so that add-ons can read it with a forward hook
        # (SkeletonGCL contrasts l10's); no parameters, so the state_dict is unchanged.
        self.attention_tap = nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                bn_init(m, 1)
        bn_init(self.bn, 1e-6)
        for conv in self.conv_d:
            conv_branch_init(conv, num_subset)

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C_in, T, V) -> (N·M, C_out, T, V)
        N, C, T, V = x.shape
        A = self.A + self.PA  # (K, V, V)
        y = None
        for i in range(self.num_subset):
            theta = self.conv_a[i](x).permute(0, 3, 1, 2).contiguous().view(N, V, self.inter_c * T)  # (N, V, C'·T)
            phi = self.conv_b[i](x).view(N, self.inter_c * T, V)  # (N, C'·T, V)
            product = self.attention_tap(torch.matmul(theta, phi))  # (N, V, V) raw A1·A2
            attention = torch.softmax(product / theta.size(-1), dim=-2)  # (N, V, V)
            adjacency = attention + A[i]  # (N, V, V)
            z = torch.matmul(x.view(N, C * T, V), adjacency).view(N, C, T, V)  # aggregate joints
            z = self.conv_d[i](z)  # (N, C_out, T, V)
            y = z if y is None else z + y
        y = self.bn(y) + self.down(x)
        return torch.relu(y)


class AGCN(Encoder):
    """2s-AGCN encoder (one stream). Final map (N·M, 256, T/4, V); head = person/space-time mean + ``fc``.

    Constructor arguments are the official ``Model``'s, with ``graph`` as a layout name
    (``'ntu'``, ``'ucla'``, ``'ntu_hyperformer'``) instead of a dotted import path.
    """

    def __init__(self, num_class: int = 60, num_point: int = 25, num_person: int = 2, graph: str | None = None,
                 graph_args: Mapping[str, Any] | None = None, in_channels: int = 3) -> None:
        super().__init__()
        A = build_graph(graph, graph_args, num_point).A  # (3, V, V) float64
        self.num_class = num_class
        self.num_point = num_point
        self.num_person = num_person
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * num_point)

        plan = [(in_channels, 64, 1), (64, 64, 1), (64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1),
                (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 256, 1)]
        for i, (c_in, c_out, stride) in enumerate(plan, start=1):
            gcn1 = AGCNUnitGCN(c_in, c_out, A)
            tcn1 = UnitTCN(c_out, c_out, kernel_size=9, stride=stride)
            setattr(self, f"l{i}", GCNTCNBlock(gcn1, tcn1, residual_branch(c_in, c_out, stride, residual=i > 1)))
        self.out_channels = 256

        self.fc = nn.Linear(256, num_class)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_class))
        bn_init(self.data_bn, 1)

    def features(self, x: Tensor) -> Tensor:
        x = data_bn_fold(self.data_bn, x)  # (N·M, C, T, V)
        for i in range(1, 11):
            x = getattr(self, f"l{i}")(x)
        return x  # (N·M, 256, T/4, V)

    def head(self, features: Tensor, num_person: int) -> Tensor:
        return self.fc(mean_pool(features, num_person))  # (N, num_class)
