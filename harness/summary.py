"""A human-readable summary of a dataset file: what a user checks before training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.h5 import read_index


def summarize(path: str | Path) -> str:
    idx = read_index(path)
    n, c, t_max, v, m = idx.shape
    lines = [
        f"{idx.path}",
        f"  dataset {idx.attrs.get('dataset')!s}, pipeline {idx.attrs.get('pipeline_version')!s}, "
        f"format {idx.attrs.get('format_version')!s}",
        f"  {n:,} samples of (C={c}, T<={t_max}, V={v}, M={m}) {idx.dtype}",
        f"  {len(np.unique(idx.label))} classes, labels {idx.label.min()}..{idx.label.max()}" if n else "  no samples",
    ]
    if n:
        q = np.percentile(idx.length, [0, 50, 100]).astype(int)
        lines.append(f"  frames per sample: min {q[0]}, median {q[1]}, max {q[2]}")
    for split in sorted(idx.splits):
        parts = []
        for part in ("train", "test"):
            sel = idx.split(split, part)
            counts = np.bincount(idx.label[sel], minlength=int(idx.label.max()) + 1) if sel.size else np.zeros(1, int)
            parts.append(f"{part} {sel.size:,} (per class {counts.min()}..{counts.max()})")
        lines.append(f"  split {split}: " + ", ".join(parts))
    params = idx.params
    if params:
        lines.append("  parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(params.items())))
    return "\n".join(lines)
