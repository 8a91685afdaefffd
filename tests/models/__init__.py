"""Tests of models/: encoders against the official reference fixtures, adjacency matrices, units."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from tests.conftest import reference_dir


def encoders_dir() -> Path:
    return reference_dir() / "encoders"


@lru_cache(maxsize=None)
def load_fixture(path: Path) -> dict:
    """One encoder fixture (memory-mapped: collection reads only the small fields it touches)."""
    return torch.load(path, weights_only=False, mmap=True)


def encoder_fixture_paths(encoders) -> list[Path]:
    """Every ``*.pt`` under ``<reference>/encoders`` whose ``encoder`` field is one of ``encoders``."""
    root = encoders_dir()
    if not root.is_dir():
        return []
    return [p for p in sorted(root.glob("*.pt")) if load_fixture(p)["encoder"] in set(encoders)]
