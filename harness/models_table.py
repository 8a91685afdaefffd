"""``python -m harness models``: size and cost of every encoder, built from its gin file.

Each encoder is built exactly as a run builds it: ``gin/encoders/<name>.gin`` plus a dataset file
(NTU RGB+D 60 cross-subject and NW-UCLA), through :func:`harness.configurables.build_encoder`. So
the parameter counts check the gin files as much as the models (CTR-GCN on NTU60 must give the
official 1,446,672, 2s-AGCN 3,469,510, HCN 2,647,868).

Cost is counted by ``torch.utils.flop_counter.FlopCounterMode`` on one sample in eval mode (on
the ``meta`` device: the counts depend on shapes only). It
counts the FLOPs of matrix products and convolutions (``mm``, ``addmm``, ``bmm``, ``einsum`` via
``bmm``, ``convolution``, attention) as 2 per multiply-accumulate; the table reports
**MACs = FLOPs / 2**. Element-wise operations, normalisation, pooling, softmax and activations
are not counted, so the figures are a lower bound (close to the truth for these networks, whose
cost is dominated by convolutions). Papers mix "FLOPs" and MACs; compare with care.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import gin
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.configurables import GIN_DIR, REPO, build_encoder, encoder_gin_file, parse_gin
from models import registry

COUNTER = "torch.utils.flop_counter.FlopCounterMode"


@dataclass(frozen=True)
class Benchmark:
    label: str
    gin_file: str  # relative to the repository
    shape: tuple[int, int, int, int, int]  # (N, C, T, V, M) of one sample
    num_class: int


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("NTU RGB+D 60", "gin/datasets/ntu60_xsub.gin", (1, 3, 64, 25, 2), 60),
    Benchmark("NW-UCLA", "gin/datasets/ucla.gin", (1, 3, 52, 20, 1), 10),
)


@dataclass(frozen=True)
class ModelStats:
    encoder: str
    benchmark: str
    params: int
    macs: int  # FlopCounterMode FLOPs / 2
    macs_by_op: dict[str, int]


def build_from_gin(encoder: str, files: Sequence[str], bindings: Sequence[str] = ()) -> torch.nn.Module:
    """``gin/encoders/<encoder>.gin`` + ``files`` -> the encoder. Clears the global gin config
    before and after (the verb builds several configurations in one process)."""
    gin.clear_config()
    try:
        parse_gin([encoder_gin_file(encoder), *files], bindings)
        return build_encoder()
    finally:
        gin.clear_config()


def _count(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    with FlopCounterMode(display=False) as counter:
        model(x)
    by_op = {str(op): int(flops) // 2 for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()) // 2, by_op


def count_macs(model: torch.nn.Module, shape: Sequence[int], *, meta: bool = True) -> tuple[int, dict[str, int]]:
    """MACs (FLOPs / 2, as counted by FlopCounterMode) of one eval-mode forward on ``shape``.

    The counted FLOPs depend on shapes only, so by default a copy of the model runs on the
    ``meta`` device (no arithmetic: milliseconds instead of seconds on a CPU); a model whose
    forward cannot run there is counted on a real random input instead. Gradients are switched
    off on the parameters rather than with ``torch.no_grad()``: FlopCounterMode's module tracker
    fails on parameters that require grad under ``no_grad``. Returns (total, per aten op).
    """
    model.eval().requires_grad_(False)
    if meta:
        try:
            return _count(copy.deepcopy(model).to("meta"), torch.empty(*shape, device="meta"))
        except (NotImplementedError, RuntimeError):  # data-dependent ops have no meta kernel
            pass
    return _count(model, torch.randn(*shape, generator=torch.Generator().manual_seed(0)))


def measure(encoder: str, benchmark: Benchmark) -> ModelStats:
    model = build_from_gin(encoder, [benchmark.gin_file])
    params = sum(p.numel() for p in model.parameters())
    macs, by_op = count_macs(model, benchmark.shape)
    return ModelStats(encoder, benchmark.label, params, macs, by_op)


def table(encoders: Sequence[str] | None = None, benchmarks: Sequence[Benchmark] = BENCHMARKS) -> str:
    """The markdown table the verb prints (header lines explain what is counted)."""
    names = list(encoders) if encoders else list(registry.ENCODERS)
    for name in names:
        if name not in registry.ENCODERS:
            raise KeyError(f"unknown encoder {name!r}; known: {', '.join(sorted(registry.ENCODERS))}")
        if not encoder_gin_file(name).exists():
            raise FileNotFoundError(f"no gin file for encoder {name!r}: {encoder_gin_file(name)}")
    shapes = "; ".join(f"{b.label}: input {b.shape} (N, C, T, V, M), {b.num_class} classes ({b.gin_file})"
                       for b in benchmarks)
    lines = [
        f"Encoders built from {GIN_DIR.relative_to(REPO)}/encoders/<name>.gin + the dataset file; one sample, "
        f"eval mode.",
        shapes + ".",
        f"MACs = FLOPs / 2 as counted by {COUNTER} (convolutions and matrix products only; "
        f"element-wise ops, normalisation, pooling and activations are not counted).",
        "",
    ]
    header = ["encoder"]
    for b in benchmarks:
        header += [f"params {b.label}", f"GMACs {b.label}"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---" + "|---:" * (len(header) - 1) + "|")
    for name in names:
        row = [name]
        for b in benchmarks:
            s = measure(name, b)
            row += [f"{s.params:,}", f"{s.macs / 1e9:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
