"""CTR-GCN (Chen et al., ICCV 2021), state_dict-compatible with ``Uason-Chen/CTR-GCN`` ``model/ctrgcn.py``.

Ten :class:`~models.units.GCNTCNBlock` blocks (64 ×4, 128 ×3, 256 ×3 channels; stride 2 at l5
and l8). The spatial unit sums three :class:`CTRGC` modules, one per subset of the skeleton graph;
each refines the shared topology ``PA[i]`` (initialised to the graph's normalised adjacency) with a
channel-wise correlation term gated by ``alpha`` (initialised to 0). The temporal unit is the
shared :class:`~models.units.MultiScaleTemporalConv` (kernel 5, dilations 1 and 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from models.adjacency import build_graph
from models.encoder import Encoder, mean_pool
from models.units import (GCNTCNBlock, MultiScaleTemporalConv, bn_init, conv_init, data_bn_fold,
                          residual_branch)


class CTRGC(nn.Module):
    """Channel-wise topology refinement graph convolution for one graph subset.

    ``conv1``/``conv2`` embed joints (time-averaged) into ``rel_channels``; the tanh of their pairwise
    differences, lifted to ``out_channels`` by ``conv4`` and scaled by ``alpha``, is added to the
    shared topology ``A`` to give one (V, V) topology per output channel, which aggregates ``conv3(x)``.
    Raw 3-D (or 9-D) input gets fixed widths 8/16 as in the official code. The output of ``conv4``
    (N·M, C_out, V, V) is the refined topology before ``alpha`` (what the SkeletonGCL variant of
    the official code returns); :mod:`models.heads.skeletongcl` reads it with a forward hook on
    ``conv4``, so keep it a separate module call.
    """

    def __init__(self, in_channels: int, out_channels: int, rel_reduction: int = 8, mid_reduction: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        if in_channels in (3, 9):
            self.rel_channels, self.mid_channels = 8, 16
        else:
            self.rel_channels, self.mid_channels = in_channels // rel_reduction, in_channels // mid_reduction
        self.conv1 = nn.Conv2d(in_channels, self.rel_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(in_channels, self.rel_channels, kernel_size=1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.conv4 = nn.Conv2d(self.rel_channels, out_channels, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)

    def forward(self, x: Tensor, A: Tensor | None = None, alpha: Tensor | float = 1) -> Tensor:
        x1, x2 = self.conv1(x).mean(-2), self.conv2(x).mean(-2)  # (N, R, V) each: time-averaged
        x3 = self.conv3(x)  # (N, C_out, T, V)
        rel = torch.tanh(x1.unsqueeze(-1) - x2.unsqueeze(-2))  # (N, R, V, V)
        topology = self.conv4(rel) * alpha  # (N, C_out, V, V)
        if A is not None:
            topology = topology + A.unsqueeze(0).unsqueeze(0)
        return torch.einsum("ncuv,nctv->nctu", topology, x3)  # (N, C_out, T, V)


class CTRGCNUnitGCN(nn.Module):
    """Official ``unit_gcn`` of CTR-GCN: sum of one :class:`CTRGC` per subset, BN, residual ``down``, ReLU.

    ``adaptive=True`` makes the topology a parameter ``PA`` initialised to ``A``; otherwise ``A`` is a
    fixed non-persistent buffer (the official keeps it as a plain attribute, outside the state_dict).
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor, adaptive: bool = True,
                 residual: bool = True) -> None:
        super().__init__()
        self.adaptive = adaptive
        self.num_subset = A.shape[0]
        self.convs = nn.ModuleList(CTRGC(in_channels, out_channels) for _ in range(self.num_subset))
        if not residual:
            self.down: nn.Module = residual_branch(in_channels, out_channels, residual=False)
        elif in_channels != out_channels:
            self.down = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels))
        else:
            self.down = nn.Identity()
        A = A.to(torch.float32)
        if adaptive:
            self.PA = nn.Parameter(A.clone())
        else:
            self.register_buffer("A", A.clone(), persistent=False)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm2d(out_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                bn_init(m, 1)
        bn_init(self.bn, 1e-6)

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C_in, T, V) -> (N·M, C_out, T, V)
        A = self.PA if self.adaptive else self.A  # (K, V, V)
        y = self.convs[0](x, A[0], self.alpha)
        for i in range(1, self.num_subset):
            y = self.convs[i](x, A[i], self.alpha) + y
        y = self.bn(y) + self.down(x)
        return torch.relu(y)


class CTRGCN(Encoder):
    """CTR-GCN encoder. Final map (N·M, 256, T/4, V); head = person/space-time mean, dropout, ``fc``.

    Constructor arguments are the official ``Model``'s, except that ``graph`` is a layout name
    (``'ntu'``, ``'ucla'``, ``'ntu_hyperformer'``) instead of a dotted import path. Like the
    official forward, ``features`` also accepts (N, T, V·C) input (one person).
    """

    def __init__(self, num_class: int = 60, num_point: int = 25, num_person: int = 2, graph: str | None = None,
                 graph_args: Mapping[str, Any] | None = None, in_channels: int = 3, drop_out: float = 0,
                 adaptive: bool = True) -> None:
        super().__init__()
        A = build_graph(graph, graph_args, num_point).A  # (3, V, V) float64
        self.num_class = num_class
        self.num_point = num_point
        self.num_person = num_person
        self.data_bn = nn.BatchNorm1d(num_person * in_channels * num_point)

        base = 64
        plan = [(in_channels, base, 1), (base, base, 1), (base, base, 1), (base, base, 1),
                (base, 2 * base, 2), (2 * base, 2 * base, 1), (2 * base, 2 * base, 1),
                (2 * base, 4 * base, 2), (4 * base, 4 * base, 1), (4 * base, 4 * base, 1)]
        for i, (c_in, c_out, stride) in enumerate(plan, start=1):
            setattr(self, f"l{i}", self._block(c_in, c_out, A, stride, residual=i > 1, adaptive=adaptive))
        self.out_channels = 4 * base

        self.fc = nn.Linear(4 * base, num_class)
        nn.init.normal_(self.fc.weight, 0, math.sqrt(2.0 / num_class))
        bn_init(self.data_bn, 1)
        self.drop_out = nn.Dropout(drop_out) if drop_out else nn.Identity()

    @staticmethod
    def _block(c_in: int, c_out: int, A: Tensor, stride: int, residual: bool, adaptive: bool) -> GCNTCNBlock:
        """Official ``TCN_GCN_unit`` (kernel 5, dilations [1, 2]); built gcn → tcn → residual like the official."""
        gcn1 = CTRGCNUnitGCN(c_in, c_out, A, adaptive=adaptive)
        tcn1 = MultiScaleTemporalConv(c_out, c_out, kernel_size=5, stride=stride, dilations=(1, 2), residual=False)
        return GCNTCNBlock(gcn1, tcn1, residual_branch(c_in, c_out, stride, residual))

    @staticmethod
    def persons_in(x: Tensor) -> int:
        return 1 if x.dim() == 3 else x.shape[-1]

    def features(self, x: Tensor) -> Tensor:
        if x.dim() == 3:  # (N, T, V·C) -> (N, C, T, V, 1), as the official forward
            N, T, _ = x.shape
            x = x.view(N, T, self.num_point, -1).permute(0, 3, 1, 2).contiguous().unsqueeze(-1)
        x = data_bn_fold(self.data_bn, x)  # (N·M, C, T, V)
        for i in range(1, 11):
            x = getattr(self, f"l{i}")(x)
        return x  # (N·M, 256, T/4, V)

    def head(self, features: Tensor, num_person: int) -> Tensor:
        return self.fc(self.drop_out(mean_pool(features, num_person)))  # (N, num_class)
