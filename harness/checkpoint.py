"""Checkpoints: atomic writes, every RNG state, and loading official checkpoints.

A training checkpoint (``checkpoint.pt``) is one ``torch.save`` dict::

    format      "csre-bench-checkpoint/1"
    model       the model's state_dict (with CSRE: encoder.*, std.*, banks.*, the draw generator)
    optimizer   optimizer state_dict;  scaler: GradScaler state (fp16) or None
    epoch       the epoch in progress (0-based); step: global batches of it already done
    lr          learning rate of that epoch (the schedule is a pure function of the epoch)
    accum       running sums of the epoch in progress (loss terms, correct, count)
    history     per finished epoch: the deterministic metrics (no wall-clock values)
    best        best-epoch scores per selection part (logits, epoch, top-1)
    cost        wall-clock and memory figures per epoch (the only non-deterministic entries)
    rng         torch (CPU and every CUDA device), numpy and python ``random`` states
    config      the parsed gin config; resuming under a different one is refused

It is written with :func:`harness.io.atomic_path`: a ``kill -9`` at any moment leaves either the
previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from harness.io import atomic_path

FORMAT = "csre-bench-checkpoint/1"

__all__ = ["FORMAT", "capture_rng", "load", "official_encoder_state", "restore_rng", "save"]


def capture_rng() -> dict[str, Any]:
    """Every global RNG state a training step can touch."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> None:
    """``torch.save`` ``checkpoint`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **checkpoint}, tmp)


def read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Whatever ``torch.save`` wrote to ``path`` (ours or an official file); clear errors for a missing
    or damaged one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint written by :func:`save`; a clear error for anything else."""
    ckpt = read(path, map_location)
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    if found != FORMAT:
        raise ValueError(f"{path}: not a csre-bench training checkpoint (found {found!r}, expected {FORMAT!r}); "
                         f"official checkpoints are evaluated with `python -m harness eval`")
    return ckpt


def official_encoder_state(obj: Any, source: str = "checkpoint") -> "OrderedDict[str, torch.Tensor]":
    """The encoder state_dict inside a checkpoint from an official repository (or one of ours).

    Accepts a bare state_dict (CTR-GCN, Hyperformer, CSRE, BlockGCN and InfoGCN save
    ``model.state_dict()`` with ``module.`` stripped), a dict holding it under ``model``,
    ``state_dict`` or ``model_state_dict``, ``module.``-prefixed keys (DataParallel), and our own
    training checkpoints (CSRE's ``encoder.`` prefix). Keys of training-only heads (CSRE's
    ``std.*``, our ``banks.*``) are dropped: evaluation uses the encoder alone.
    """
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["model"]
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: no state_dict of tensors found")
    keys = list(obj)
    strip = lambda k, p: k[len(p):] if k.startswith(p) else k  # noqa: E731
    state = OrderedDict((strip(k, "module."), v) for k, v in obj.items())
    if any(k.startswith("encoder.") for k in state):  # our CSRE wrapper
        state = OrderedDict((k[len("encoder."):], v) for k, v in state.items() if k.startswith("encoder."))
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith(("std.", "banks.", "global_proj.")))
    if not state:
        raise ValueError(f"{source}: no encoder keys among {keys[:5]}...")
    return state
