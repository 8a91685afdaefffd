"""Evaluation: logits of a model on a feeder, and the ``eval`` verb for official checkpoints.

:func:`predict` runs a model in ``eval()`` mode over a feeder in dataset order and returns the
raw logits (what the official code saves per sample). A CSRE-wrapped model returns exactly the
encoder's logits in eval mode, so the same function serves both.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness.batches import EpochBatches

__all__ = ["autocast", "evaluate_checkpoint", "parameter_dtype", "predict"]

#: precision name -> autocast dtype (None: no autocast). 'fp64' runs parameters and inputs in float64
#: (no autocast): results that do not depend on the CPU's float32 kernels, for regression checks.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": None}


def parameter_dtype(precision: str) -> torch.dtype:
    """The dtype a model's parameters (and its inputs) have under ``precision``."""
    return torch.float64 if precision == "fp64" else torch.float32


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` ('fp32' = none) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def loader(feeder, batch_size: int, *, num_workers: int = 0, sampler=None, generator=None) -> DataLoader:
    """A DataLoader over ``feeder`` with an explicit batch sampler (dataset order by default)."""
    from data.feeder import worker_init_fn
    if sampler is None:
        sampler = EpochBatches(len(feeder), batch_size, shuffle=False, drop_last=False)
    return DataLoader(feeder, batch_sampler=sampler, num_workers=num_workers, generator=generator,
                      worker_init_fn=worker_init_fn if num_workers else None,
                      persistent_workers=False, pin_memory=False)


@torch.no_grad()
def predict(model: torch.nn.Module, feeder, *, batch_size: int, device: torch.device, precision: str = "fp32",
            num_workers: int = 0, features: bool = False) -> tuple[np.ndarray, ...]:
    """(logits (N, num_class) float32, labels (N,)) of ``model`` on every sample of ``feeder``, in order.

    With ``features``, also the encoder's pooled final features (N, C') (mean over T', V and persons,
    as the classifiers pool; what the paper's t-SNE figure shows), from the same forward pass:
    ``head(features(x))`` is ``forward(x)`` exactly, for a bare encoder and for CSRE alike.
    """
    from models.encoder import mean_pool
    was_training = model.training
    model.eval()
    encoder = getattr(model, "encoder", model)  # CSRE wraps the encoder; eval mode = the encoder alone
    dtype = parameter_dtype(precision)
    logits, labels, feats = [], [], []
    try:
        for x, y, _ in loader(feeder, batch_size, num_workers=num_workers):
            x = x.to(device, dtype, non_blocking=True)
            with autocast(device, precision):
                if features:
                    M = encoder.persons_in(x)
                    fmap = encoder.features(x)  # (N·M, C', T', V)
                    out = encoder.head(fmap, M)
                    feats.append(mean_pool(fmap, M).float().cpu())  # (N, C')
                else:
                    out = model(x)
            logits.append(out.float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    if not logits:
        empty = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        return empty + ((np.zeros((0, 0), np.float32),) if features else ())
    out = (torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(np.int64))
    return out + ((torch.cat(feats).numpy(),) if features else ())


def evaluate_checkpoint(checkpoint: str | Path, gin_files: Sequence[str], gin_params: Sequence[str] = (), *,
                        device: str = "auto", batch_size: int | None = None, out_dir: str | Path | None = None,
                        subset: int | None = None, num_workers: int = 0, strict: bool = True) -> dict[str, Any]:
    """Evaluate an official (or our own) checkpoint on the test part of the gin-configured dataset.

    The encoder is built from the gin files (``gin/encoders/<name>.gin`` + a dataset file), the
    checkpoint's encoder keys are loaded with ``strict`` (see
    :func:`harness.checkpoint.official_encoder_state`), and the metrics are returned; with
    ``out_dir`` the scores (npz + the official pickle) and ``eval.json`` are written there.
    ``subset``: positions within the test part; by default the whole part, or the
    ``TrainConfig.test_per_class`` subset when the gin config binds one.
    """
    import gin

    from harness import checkpoint as ckpt_lib
    from harness.configurables import DataConfig, Recipe, build_encoder, parse_gin
    from harness.io import Scores, save_scores, write_json
    from harness.batches import per_class_subset
    from harness.metrics import classification_metrics
    from harness.train import TrainConfig

    path = Path(checkpoint)
    if not path.exists():  # before the gin parse and the model build
        raise FileNotFoundError(f"{path}: no checkpoint")
    gin.clear_config()
    parse_gin(gin_files, gin_params)
    dev = resolve_device(device)
    recipe, data = Recipe(), DataConfig()
    encoder = build_encoder()
    state = ckpt_lib.official_encoder_state(ckpt_lib.read(path), str(path))
    try:
        encoder.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit the encoder built from {list(gin_files)}: {e}") from None
    encoder.to(dev)
    per_class = TrainConfig().test_per_class
    if subset is None and per_class is not None:  # the CI subsets a run trained with
        subset = per_class_subset(data.feeder("test").labels, per_class)
    feeder = data.feeder("test", subset=subset, with_joints=bool(getattr(encoder, "wants_joints", False)))
    logits, labels = predict(encoder, feeder, batch_size=batch_size or recipe.test_batch_size, device=dev,
                             num_workers=num_workers)
    result = {"checkpoint": str(path), "gin_files": list(gin_files), "gin_params": list(gin_params),
              "data": data.to_dict(), "test": classification_metrics(logits, labels, data.num_class)}
    if out_dir is not None:
        out = Path(out_dir)
        names = np.asarray(feeder.sample_names).astype(str)
        save_scores(out / "scores_test.npz", Scores(logits, labels, names, -1),
                    official_pickle=out / "scores_test.pkl")
        write_json(out / "eval.json", result)
    return result


def resolve_device(device: str) -> torch.device:
    """'auto' = the first CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev
