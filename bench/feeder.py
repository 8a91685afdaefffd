"""Feeder throughput: samples/s per modality, train and test mode, against a plain baseline.

Builds (in a temporary directory) the NW-UCLA HDF5 from the bundled tarball and a synthetic
NTU-layout HDF5 of random-walk skeletons, then times :class:`data.feeder.SkeletonFeeder` read one
sample at a time in this process, and a straightforward baseline in the style of the official
CTR-GCN feeders measured in the same run: the whole dataset in an in-memory array, valid frames
counted per sample, the same torch resize, a Python loop over bone pairs. The ratio
``feeder / baseline`` shows what reading from HDF5 (one chunk per sample) and the per-sample
generators cost or save. Optionally also a DataLoader with workers.

    python -m bench.feeder --ntu-samples 512 --reads 512 --workers 2

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python bench/feeder.py` as well as `python -m bench.feeder`
    sys.path.insert(0, str(REPO))

from data import h5, ucla  # noqa: E402
from data.feeder import MODALITIES, SkeletonFeeder, worker_init_fn  # noqa: E402
from models.graph import NTU, UCLA, Layout  # noqa: E402


# ---------------------------------------------------------------------------------- data

def write_synthetic_ntu(path: Path, n: int, seed: int = 0) -> Path:
    """Random-walk NTU-layout samples: lengths U[40, 300], a second person in 35 % of samples."""
    rng = np.random.default_rng(seed)
    with h5.create(path, dataset="ntu60", num_samples=n, sample_shape=(3, 300, 25, 2),
                   pipeline_version="bench") as w:
        for i in range(n):
            t = int(rng.integers(40, 301))
            x = np.cumsum(rng.normal(0, 0.01, (3, t, 25, 2)), axis=1) + rng.normal(0, 0.3, (3, 1, 25, 2))
            if rng.random() > 0.35:
                x[..., 1] = 0
            w.write(i, x.astype(np.float32), name=f"S001C001P{i % 1000:03d}R001A{i % 60 + 1:03d}",
                    length=t, label=i % 60)
        idx = np.arange(n)
        w.add_split("xsub", train=idx[idx % 2 == 0], test=idx[idx % 2 == 1])
    return path


# ---------------------------------------------------------------------------------- baseline

class NtuBaseline:
    """Official-style NTU feeder over an in-memory (N, 3, 300, 25, 2) float32 array."""

    def __init__(self, x: np.ndarray, modality: str, train: bool, window: int = 64):
        self.x, self.modality, self.train, self.window = x, modality, train, window

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> np.ndarray:
        data = np.array(self.x[i])
        valid = int(np.sum(data.sum(0).sum(-1).sum(-1) != 0))
        c, _, v, m = data.shape
        if self.train:
            p = np.random.rand() * 0.5 + 0.5
            length = min(max(int(np.floor(valid * p)), 64), valid)
            start = np.random.randint(0, valid - length + 1)
        else:
            start = int(0.05 * valid / 2)
            length = valid - 2 * start
        t = torch.tensor(data[:, start:start + length], dtype=torch.float)
        t = t.permute(0, 2, 3, 1).contiguous().view(1, 1, c * v * m, length)
        t = F.interpolate(t, size=(c * v * m, self.window), mode="bilinear", align_corners=False)
        data = t.view(c, v, m, self.window).permute(0, 3, 1, 2).contiguous().numpy()
        if self.train:
            a = np.random.uniform(-0.3, 0.3, 3)
            rot = _rot(a).astype(np.float32)
            data = np.einsum("cd,dtvm->ctvm", rot, data)
        return _streams(data, self.modality, NTU)


class UclaBaseline:
    """Official-style NW-UCLA feeder over in-memory (T, 20, 3) float64 arrays."""

    def __init__(self, seqs: list[np.ndarray], modality: str, train: bool, window: int = 52):
        self.seqs, self.modality, self.train, self.window = seqs, modality, train, window

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> np.ndarray:
        value = self.seqs[i]
        value = value - value[0, 1, :]
        if self.train:
            agx, agy = math.radians(random.randint(-60, 60)), math.radians(random.randint(-60, 60))
            s = random.uniform(0.5, 1.5)
            rx = np.array([[1, 0, 0], [0, math.cos(agx), math.sin(agx)], [0, -math.sin(agx), math.cos(agx)]])
            ry = np.array([[math.cos(agy), 0, -math.sin(agy)], [0, 1, 0], [math.sin(agy), 0, math.cos(agy)]])
            value = np.reshape(np.reshape(value, (-1, 3)) @ (ry @ (rx @ np.eye(3) * s)), value.shape)
        flat = np.reshape(value, (-1, 3))
        flat = (flat - flat.min(0)) / (flat.max(0) - flat.min(0)) * 2 - 1
        value = np.reshape(flat, (-1, 20, 3))
        if self.train:
            idx = sorted(random.sample(list(range(len(value))) * 100, self.window))
        else:
            idx = np.linspace(0, len(value) - 1, self.window).astype(int)
        data = value[idx].transpose(2, 0, 1)[..., None]  # (T, V, C) -> (C, T, V, 1)
        return _streams(data, self.modality, UCLA).astype(np.float32)


def _rot(a: np.ndarray) -> np.ndarray:
    (cx, cy, cz), (sx, sy, sz) = np.cos(a), np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _streams(data: np.ndarray, modality: str, layout: Layout) -> np.ndarray:
    if modality.startswith("bone"):
        bone = np.zeros_like(data)
        for v1, v2 in layout.bone_pairs:
            bone[:, :, v1 - 1] = data[:, :, v1 - 1] - data[:, :, v2 - 1]
        data = bone
    if modality.endswith("motion"):
        data[:, :-1] = data[:, 1:] - data[:, :-1]
        data[:, -1] = 0
    return data


# ---------------------------------------------------------------------------------- timing

def rate(get, n: int, reads: int) -> float:
    """Samples per second of ``get(i)`` over ``reads`` random indices (after a short warm-up)."""
    order = np.random.default_rng(0).integers(0, n, reads)
    for i in order[:8]:
        get(int(i))
    start = time.perf_counter()
    for i in order:
        get(int(i))
    return reads / (time.perf_counter() - start)


def loader_rate(ds, workers: int, batch: int, max_batches: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         worker_init_fn=worker_init_fn,
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    for k, (x, _, _) in enumerate(it):
        seen += len(x)
        if k + 1 >= max_batches:
            break
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ntu-samples", type=int, default=512, help="synthetic NTU samples to write")
    ap.add_argument("--reads", type=int, default=512, help="samples timed per measurement")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader rows (0: skip)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--compression", choices=["none", "lzf"], default="none")
    ap.add_argument("--skip-ucla", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    compression = None if args.compression == "none" else args.compression

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ntu_path = write_synthetic_ntu(tmp / "ntu60.h5", args.ntu_samples)
        print(f"wrote {args.ntu_samples} synthetic NTU samples in {time.perf_counter() - t0:.1f} s")
        datasets = [("ntu", ntu_path, "xsub")]
        if not args.skip_ucla:
            t0 = time.perf_counter()
            ucla_path = ucla.prepare(REPO / "data/raw/nwucla/all_sqe.tar.gz", tmp / "ucla.h5",
                                     compression=compression, progress=False)
            print(f"built NW-UCLA HDF5 (1,484 samples) in {time.perf_counter() - t0:.1f} s")
            datasets.append(("ucla", ucla_path, "xview"))

        print(f"\n{'dataset':8} {'mode':5} {'modality':12} {'feeder/s':>9} {'baseline/s':>10} {'ratio':>6}")
        for name, path, split in datasets:
            index = h5.read_index(path)
            xs = h5.open_samples(path)
            for part in ("train", "test"):
                rows = index.split(split, part)
                if name == "ntu":
                    mem = xs[np.sort(rows)]  # (n, 3, 300, 25, 2) in RAM, as the official npz feeders
                else:
                    mem = [h5.read_sample(xs, r, index.length[r])[..., 0].transpose(1, 2, 0) for r in rows]
                for modality in MODALITIES:
                    ds = SkeletonFeeder(path, split, part, modality=modality, seed=0)
                    base = (NtuBaseline if name == "ntu" else UclaBaseline)(mem, modality, part == "train")
                    ours = rate(ds.__getitem__, len(ds), args.reads)
                    theirs = rate(base.__getitem__, len(base), args.reads)
                    print(f"{name:8} {part:5} {modality:12} {ours:9.0f} {theirs:10.0f} {ours / theirs:6.2f}")
            xs.file.close()

        if args.workers:
            print(f"\nDataLoader, batch {args.batch}, joint stream, train mode (samples/s):")
            for name, path, split in datasets:
                ds = SkeletonFeeder(path, split, "train", seed=0)
                n_batches = max(2, min(len(ds) // args.batch - 1, 8))
                r0 = loader_rate(ds, 0, args.batch, n_batches)
                rw = loader_rate(ds, args.workers, args.batch, n_batches)
                print(f"  {name:5} 0 workers {r0:7.0f}   {args.workers} workers {rw:7.0f}   ratio {rw / r0:.2f}")


if __name__ == "__main__":
    main()
