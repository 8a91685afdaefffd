"""GCN/TCN building blocks shared by the CTR-GCN family of encoders, written once.

2s-AGCN, CTR-GCN, Hyperformer, InfoGCN and BlockGCN each carry a private copy of the same temporal
units and init helpers. The copies here keep the official **attribute names** (so state_dict keys
match: ``conv``/``bn``, ``branches.{i}.{j}``, ...) and the official **construction and init order**
(so a model built right after ``torch.manual_seed(s)`` draws the same random numbers as the official
one; the tests check this bit for bit).

Layout convention for every unit: feature maps are (N·M, C, T, V), i.e. persons folded into the
batch, time on axis 2, joints on axis 3. Temporal convolutions are (k, 1) convolutions over T.

What lives here:

* init helpers: :func:`conv_init`, :func:`bn_init`, :func:`conv_branch_init`,
  :func:`ms_tcn_weights_init`;
* :class:`UnitTCN` (official ``unit_tcn``: conv (k, 1) + BN), also the strided 1x1 projection of
  block residuals;
* :class:`TemporalConv` and :class:`MultiScaleTemporalConv` (CTR-GCN's ``MultiScale_TemporalConv``:
  dilated branches + max-pool branch + 1x1 branch);
* residual helpers: :class:`Zero`, :func:`residual_branch`;
* :class:`GCNTCNBlock` (``relu(tcn1(gcn1(x)) + residual(x))``, the official ``TCN_GCN_unit``
  skeleton) and :func:`data_bn_fold` (the ``data_bn`` input normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

# ---------------------------------------------------------------------------------------------
# Weight initialisation (the official helpers, same distributions and call order)


def conv_init(conv: nn.Module) -> None:
    """Kaiming-normal (fan_out) weight, zero bias: official ``conv_init``."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)


def bn_init(bn: nn.Module, scale: float) -> None:
    """Constant weight ``scale`` and zero bias: official ``bn_init``.

    A GCN unit's last BN gets ``scale=1e-6`` so that at init each block is close to its residual
    path (a zero-init-residual trick); that is why the fixtures also test a perturbed state.
    """
    nn.init.constant_(bn.weight, scale)
    nn.init.constant_(bn.bias, 0)


def conv_branch_init(conv: nn.Conv2d, branches: int) -> None:
    """N(0, 2 / (out·in·kh·branches)) weight, zero bias: official ``conv_branch_init`` (2s-AGCN ``conv_d``).

    The variance is divided by the number of subsets because their outputs are summed.
    """
    n, k1, k2 = conv.weight.shape[:3]
    nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / (n * k1 * k2 * branches)))
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)


def ms_tcn_weights_init(m: nn.Module) -> None:
    """Official ``weights_init`` applied by ``MultiScale_TemporalConv``: Kaiming convs, BN weight ~ N(1, 0.02).

    The official dispatches on the class *name* containing 'Conv' / 'BatchNorm' and skips modules
    without a ``weight`` (its ``TemporalConv`` wrappers); dispatching on the torch base classes
    selects exactly the same leaf modules.
    """
    if isinstance(m, _ConvNd):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, _BatchNorm):
        if m.weight is not None:
            m.weight.data.normal_(1.0, 0.02)
        if m.bias is not None:
            m.bias.data.fill_(0)


# ---------------------------------------------------------------------------------------------
# Temporal units


class UnitTCN(nn.Module):
    """Temporal conv (kernel_size x 1, stride over T) + BN, no activation: official ``unit_tcn``.

    2s-AGCN uses it with k=9 as the block's TCN; every encoder uses it with k=1 as the strided
    projection on the block residual. (The official also builds an unused ``relu``: it has no state
    and is left out.)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 9, stride: int = 1) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, 1), padding=(pad, 0),
                              stride=(stride, 1))
        self.bn = nn.BatchNorm2d(out_channels)
        conv_init(self.conv)
        bn_init(self.bn, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class TemporalConv(nn.Module):
    """Dilated temporal conv + BN with 'same' padding (for odd kernels): official ``TemporalConv``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, 1), padding=(pad, 0),
                              stride=(stride, 1), dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class Zero(nn.Module):
    """A switched-off residual path (the official ``lambda x: 0``); a stateless module so it can be registered."""

    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(())  # broadcasts; adding it is exact


def residual_branch(in_channels: int, out_channels: int, stride: int = 1, residual: bool = True,
                    projection: Callable[[int, int, int], nn.Module] | None = None) -> nn.Module:
    """The official three-way residual choice: off → :class:`Zero`; same shape → identity; else a projection.

    ``projection(in_channels, out_channels, stride)`` defaults to a 1x1 strided :class:`UnitTCN`
    (``residual.conv``/``residual.bn`` keys), which is what every ``TCN_GCN_unit`` uses.
    """
    if not residual:
        return Zero()
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    if projection is None:
        return UnitTCN(in_channels, out_channels, kernel_size=1, stride=stride)
    return projection(in_channels, out_channels, stride)


class MultiScaleTemporalConv(nn.Module):
    """CTR-GCN's multi-scale TCN (``MultiScale_TemporalConv``), also used by Hyperformer, InfoGCN, BlockGCN.

    ``len(dilations) + 2`` branches of ``out_channels / branches`` channels each, concatenated:

    * one per dilation: 1x1 conv → BN → ReLU → :class:`TemporalConv` (kernel_size, dilation, stride);
    * max branch: 1x1 conv → BN → ReLU → MaxPool (3, 1) with the stride → BN;
    * 1x1 branch: strided 1x1 conv → BN.

    Keys: ``branches.{d}.{0,1,3.conv,3.bn}``, ``branches.{D}.{0,1,4}``, ``branches.{D+1}.{0,1}``, and
    ``residual.{conv,bn}`` when ``residual`` is on and the shape changes (the encoders here all pass
    ``residual=False`` and put the residual around the whole block instead).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3, stride: int = 1,
                 dilations: Sequence[int] = (1, 2, 3, 4), residual: bool = True, residual_kernel_size: int = 1) -> None:
        super().__init__()
        num_branches = len(dilations) + 2
        if out_channels % num_branches != 0:
            raise ValueError(f"out_channels={out_channels} must be a multiple of the {num_branches} branches")
        branch_channels = out_channels // num_branches
        if isinstance(kernel_size, int):
            kernel_sizes = [kernel_size] * len(dilations)
        else:
            kernel_sizes = list(kernel_size)
            if len(kernel_sizes) != len(dilations):
                raise ValueError("one kernel size per dilation is required")
        self.num_branches = num_branches

        def pointwise(conv_stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(in_channels, branch_channels, kernel_size=1, padding=0, stride=(conv_stride, 1)),
                    nn.BatchNorm2d(branch_channels)]

        branches = [
            nn.Sequential(*pointwise(), nn.ReLU(inplace=True),
                          TemporalConv(branch_channels, branch_channels, kernel_size=ks, stride=stride, dilation=d))
            for ks, d in zip(kernel_sizes, dilations)
        ]
        branches.append(nn.Sequential(*pointwise(), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(kernel_size=(3, 1), stride=(stride, 1), padding=(1, 0)),
                                      nn.BatchNorm2d(branch_channels)))
        branches.append(nn.Sequential(*pointwise(conv_stride=stride)))
        self.branches = nn.ModuleList(branches)

        self.residual = residual_branch(
            in_channels, out_channels, stride, residual,
            projection=lambda i, o, s: TemporalConv(i, o, kernel_size=residual_kernel_size, stride=s))
        self.apply(ms_tcn_weights_init)

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C_in, T, V) -> (N·M, C_out, T / stride, V)
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        return out + self.residual(x)


# ---------------------------------------------------------------------------------------------
# Blocks and input normalisation


class GCNTCNBlock(nn.Module):
    """``relu(tcn1(gcn1(x)) + residual(x))``: the official ``TCN_GCN_unit`` of 2s-AGCN and CTR-GCN.

    The spatial unit, the temporal unit and the residual are built by the caller (in that order,
    which is the official order of random draws) and only wired here, so each encoder file states
    just what differs. Keys: ``gcn1.*``, ``tcn1.*``, ``residual.*``.
    """

    def __init__(self, gcn1: nn.Module, tcn1: nn.Module, residual: nn.Module) -> None:
        super().__init__()
        self.gcn1 = gcn1
        self.tcn1 = tcn1
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.tcn1(self.gcn1(x)) + self.residual(x))


def data_bn_fold(data_bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """Normalise each (person, joint, channel) coordinate over (N, T), then fold persons into the batch.

    ``data_bn`` is ``BatchNorm1d(M·V·C)``; the official reshapes are kept so the running-statistic
    order (person-major, then joint, then channel) matches the official ``data_bn`` buffers.
    (N, C, T, V, M) -> (N·M, C, T, V).
    """
    N, C, T, V, M = x.shape
    x = x.permute(0, 4, 3, 1, 2).contiguous().view(N, M * V * C, T)  # (N, M·V·C, T)
    x = data_bn(x)
    return x.view(N, M, V, C, T).permute(0, 1, 3, 4, 2).contiguous().view(N * M, C, T, V)  # (N·M, C, T, V)
