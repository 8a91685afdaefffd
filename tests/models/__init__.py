"""Tests of models/: encoders against the official reference fixtures, adjacency matrices, units.

Fixture discovery: every ``*.pt`` anywhere under ``<reference>/encoders`` (recursively) is a fixture.
Each test module checks the fixtures whose ``encoder`` field it handles (:data:`FIXTURE_FAMILIES`
says which module handles which encoder); a fixture of any other encoder, or one that cannot be
read, fails ``tests/models/test_encoders.py::test_every_fixture_is_checked`` instead of being
skipped silently.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from tests.conftest import reference_dir

# encoder name (a fixture's ``encoder`` field) -> the test module that checks its fixtures
FIXTURE_FAMILIES: dict[str, str] = {
    "ctrgcn": "tests.models.test_encoders",
    "agcn": "tests.models.test_encoders",
    "hcn": "tests.models.test_encoders",
    "hyperformer": "tests.models.test_hyperformer",
    "blockgcn": "tests.models.test_blockgcn",
    "infogcn": "tests.models.test_infogcn",
}


def encoders_dir() -> Path:
    return reference_dir() / "encoders"


@lru_cache(maxsize=None)
def load_fixture(path: Path) -> dict:
    """One encoder fixture (memory-mapped: collection reads only the small fields it touches)."""
    return torch.load(path, weights_only=False, mmap=True)


def all_fixture_paths() -> list[Path]:
    """Every ``*.pt`` under ``<reference>/encoders``, in subdirectories too, sorted."""
    root = encoders_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.pt") if p.is_file())


def fixture_encoder(path: Path) -> str | None:
    """The ``encoder`` field of a fixture; None when the file cannot be read or has no such field
    (``test_every_fixture_is_checked`` reports those)."""
    try:
        fx = load_fixture(path)
    except Exception:  # noqa: BLE001 - reported by test_every_fixture_is_checked
        return None
    name = fx.get("encoder") if isinstance(fx, dict) else None
    return name if isinstance(name, str) else None


def encoder_fixture_paths(encoders) -> list[Path]:
    """Every fixture (see :func:`all_fixture_paths`) whose ``encoder`` field is one of ``encoders``."""
    wanted = set(encoders)
    unknown = wanted - set(FIXTURE_FAMILIES)
    if unknown:
        raise KeyError(f"encoders {sorted(unknown)} are not in tests.models.FIXTURE_FAMILIES")
    return [p for p in all_fixture_paths() if fixture_encoder(p) in wanted]


def perturb_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every constant parameter non-degenerate, like the fixtures' ``perturbed`` block.

    At the official initialisation several parameters are constant in a way that zeroes gradients
    elsewhere (CTR-GCN ``alpha = 0`` zeroes the gradients of conv1/conv2/conv4, BatchNorm weights of
    1e-6 nearly cut a branch, Hyperformer's ``alpha``/``rpe``/``w1 = 0`` switch the attention
    off). Here, with a seeded generator: every floating parameter whose elements are all equal is
    replaced, norm weights by ``0.5 + U[0, 1)``, anything else by ``value + 0.1·N(0, 1)``; the
    other parameters are left alone. After this every parameter a forward uses should receive a
    non-zero gradient.
    """
    g = torch.Generator().manual_seed(seed)
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # noqa: SLF001
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, norm_types)
                    and isinstance(getattr(m, "weight", None), nn.Parameter)}
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point() or p.numel() == 0 or not bool((p == p.flatten()[0]).all()):
                continue
            if id(p) in norm_weights:
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def parameters_without_gradient(model: nn.Module) -> list[str]:
    """Names of the parameters whose gradient is missing, all zero, or not finite."""
    return [n for n, p in model.named_parameters()
            if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
