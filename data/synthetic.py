"""Seeded NTU-format inputs for tests and benchmarks: ``.skeleton`` files and small HDF5 sets.

NTU RGB+D is not redistributable, so tests and benchmarks run on files written here. They use
the Kinect v2 text layout of the real release (CRLF line endings, a 10-number body-info line per
body, 25 joint lines of 12 numbers: x y z depthX depthY colorX colorY orientW orientX orientY
orientZ trackingState, numbers printed with 7 significant digits) so that the parser meets the
same text it meets in the real files. Joints follow a standing 25-joint Kinect skeleton that
drifts as a smooth random walk, with slow per-joint oscillations: sequences have realistic
spreads (not noisy for the spread rule unless asked) and motion. The same arguments and seed
always give the same bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

NUM_JOINTS = 25
BODY_ID_BASE = 72057594037927936  # 2**56: real Kinect bodyIDs are 7205759403xxxxxxx

# A standing person in metres (x right, y up), spine middle at the origin; Kinect v2 joint order.
_STANDING = np.array([
    [0.00, -0.30, 0.00], [0.00, 0.00, 0.00], [0.00, 0.38, 0.00], [0.00, 0.52, 0.00],      # spine base, mid, neck, head
    [-0.18, 0.27, 0.00], [-0.25, 0.02, 0.02], [-0.28, -0.20, 0.04], [-0.29, -0.28, 0.05],  # left arm
    [0.18, 0.27, 0.00], [0.25, 0.02, 0.02], [0.28, -0.20, 0.04], [0.29, -0.28, 0.05],      # right arm
    [-0.08, -0.36, 0.00], [-0.09, -0.76, 0.02], [-0.09, -1.12, 0.04], [-0.09, -1.18, -0.06],  # left leg
    [0.08, -0.36, 0.00], [0.09, -0.76, 0.02], [0.09, -1.12, 0.04], [0.09, -1.18, -0.06],   # right leg
    [0.00, 0.30, 0.00],                                                                    # spine shoulder
    [-0.30, -0.36, 0.06], [-0.26, -0.30, 0.08], [0.30, -0.36, 0.06], [0.26, -0.30, 0.08],  # hand tips, thumbs
], dtype=np.float64)
# How much each joint oscillates (hands and arms most).
_WOBBLE = np.array([0.2, 0.2, 0.3, 0.4, 0.5, 1.0, 1.6, 1.8, 0.5, 1.0, 1.6, 1.8,
                    0.3, 0.5, 0.6, 0.6, 0.3, 0.5, 0.6, 0.6, 0.3, 1.9, 1.8, 1.9, 1.8])

_JOINT_LINE = " ".join(["%.7g"] * 11 + ["%d"])
_JOINT_BLOCK = "\n".join([_JOINT_LINE] * NUM_JOINTS)


@dataclass(frozen=True)
class BodySpec:
    """One bodyID of a synthetic file.

    ``frames`` = (first, last) file-frame indices, inclusive (None: the whole file); ``absent``
    = file frames inside that range where the body is missing; ``lying`` = a horizontal pose whose
    x-spread exceeds 0.8 x its y-spread in every frame (noisy for the spread rule); ``motion``
    scales the drift and oscillation; ``x_offset`` places the person left/right (metres).
    """

    frames: tuple[int, int] | None = None
    absent: tuple[int, ...] = ()
    body_id: int | None = None
    lying: bool = False
    motion: float = 1.0
    x_offset: float = 0.0


def _trajectory(rng: np.random.Generator, n: int, spec: BodySpec) -> np.ndarray:
    """(n, 25, 3) joint positions: drifting, gently moving skeleton in camera space."""
    pose = _STANDING[:, [1, 0, 2]] * [1.0, 0.6, 1.0] if spec.lying else _STANDING
    velocity = np.zeros((n, 3))
    for t in range(1, n):  # damped random walk: smooth, bounded drift
        velocity[t] = 0.9 * velocity[t - 1] + rng.normal(0.0, 0.004 * spec.motion, 3)
    root = np.cumsum(velocity, axis=0) + [spec.x_offset + rng.uniform(-0.3, 0.3),
                                          rng.uniform(-0.1, 0.2), rng.uniform(2.6, 3.6)]
    t = np.arange(n)[:, None, None]
    period = rng.uniform(25.0, 60.0)
    phase = rng.uniform(0.0, 2 * np.pi, (1, NUM_JOINTS, 3))
    wobble = 0.04 * spec.motion * _WOBBLE[None, :, None] * np.sin(2 * np.pi * t / period + phase)
    return pose[None] + wobble + root[:, None, :] + rng.normal(0.0, 0.003, (n, NUM_JOINTS, 3))


def _joint_lines(rng: np.random.Generator, xyz: np.ndarray) -> np.ndarray:
    """(n, 25, 12) numbers of the joint lines: projected depth/colour pixels and orientations."""
    n = xyz.shape[0]
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    quat = rng.normal(size=(n, NUM_JOINTS, 4))
    quat /= np.linalg.norm(quat, axis=-1, keepdims=True)
    state = np.where(rng.random((n, NUM_JOINTS)) < 0.03, 1, 2)
    return np.concatenate([xyz, np.stack([256 + 365 * x / z, 212 - 365 * y / z,
                                          960 + 1060 * x / z, 540 - 1060 * y / z], -1),
                           quat, state[..., None]], axis=-1)


def _body_ids(rng: np.random.Generator, specs: Sequence[BodySpec]) -> list[int]:
    ids = [s.body_id for s in specs]
    free = iter(rng.permutation(np.arange(1000, 30000))[:len(ids)])
    return [BODY_ID_BASE + int(next(free)) if i is None else i for i in ids]


def skeleton_text(n_frames: int, bodies: int | Sequence[BodySpec] = 1, *, empty_frames: Sequence[int] = (),
                  seed: int = 0, line_ending: str = "\r\n") -> str:
    """The text of a ``.skeleton`` file (see :func:`write_skeleton`)."""
    if isinstance(bodies, int):
        bodies = [BodySpec(x_offset=0.8 * (i - (bodies - 1) / 2)) for i in range(bodies)]
    rng = np.random.default_rng(seed)
    ids = _body_ids(rng, bodies)
    empty = set(empty_frames)
    present: list[np.ndarray] = []
    blocks: list[list[str]] = []
    for spec in bodies:
        first, last = spec.frames if spec.frames is not None else (0, n_frames - 1)
        if not 0 <= first <= last < n_frames:
            raise ValueError(f"body frames {spec.frames} outside 0..{n_frames - 1}")
        frames = [f for f in range(first, last + 1) if f not in empty and f not in set(spec.absent)]
        numbers = _joint_lines(rng, _trajectory(rng, len(frames), spec))
        lean = rng.uniform(-0.1, 0.1, (len(frames), 2))
        present.append(np.array(frames, dtype=int))
        blocks.append([f"{ids[len(blocks)]} 0 1 1 1 1 0 {lx:.7g} {ly:.7g} 2\n25\n"
                       + _JOINT_BLOCK % tuple(numbers[k].ravel()) for k, (lx, ly) in enumerate(lean)])
    out = [str(n_frames)]
    cursor = [0] * len(bodies)
    for f in range(n_frames):
        here = [b for b in range(len(bodies)) if cursor[b] < len(present[b]) and present[b][cursor[b]] == f]
        out.append(str(len(here)))
        for b in here:
            out.append(blocks[b][cursor[b]])
            cursor[b] += 1
    return ("\n".join(out) + "\n").replace("\n", line_ending)


def write_skeleton(path: str | os.PathLike, *, n_frames: int = 100, bodies: int | Sequence[BodySpec] = 1,
                   empty_frames: Sequence[int] = (), seed: int = 0, line_ending: str = "\r\n") -> Path:
    """Write a seeded NTU ``.skeleton`` file.

    ``bodies``: a number of people present in every frame (side by side), or one
    :class:`BodySpec` per bodyID, listed in the file in that order. ``empty_frames``: file
    frames with 0 bodies. Deterministic for a given seed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(skeleton_text(n_frames, bodies, empty_frames=empty_frames, seed=seed,
                                   line_ending=line_ending).encode("ascii"))
    return path


def sample_name(setup: int, camera: int, subject: int, replication: int, action: int) -> str:
    """SsssCcccPpppRrrrAaaa."""
    return f"S{setup:03d}C{camera:03d}P{subject:03d}R{replication:03d}A{action:03d}"


def random_names(n: int, *, seed: int = 0, variant: str = "ntu60") -> list[str]:
    """``n`` distinct valid sample names of the variant (NTU60: setups 1-17, actions 1-60),
    sorted, avoiding the official missing-skeleton samples."""
    from data.ntu import missing_samples  # local: data.ntu imports nothing from here

    rng = np.random.default_rng(seed)
    setups, actions = (17, 60) if variant == "ntu60" else (32, 120)
    skip = missing_samples("ntu120")
    names: set[str] = set()
    while len(names) < n:
        name = sample_name(int(rng.integers(1, setups + 1)), int(rng.integers(1, 4)),
                           int(rng.integers(1, 41 if variant == "ntu60" else 107)),
                           int(rng.integers(1, 3)), int(rng.integers(1, actions + 1)))
        if name not in skip:
            names.add(name)
    return sorted(names)


def write_corpus(directory: str | os.PathLike, n_files: int, *, seed: int = 0, frames: tuple[int, int] = (70, 300),
                 two_body_fraction: float = 0.3, variant: str = "ntu60",
                 names: Sequence[str] | None = None) -> list[Path]:
    """Write ``n_files`` realistic files with valid NTU names into ``directory``: lengths uniform
    in ``frames``, one person or (with ``two_body_fraction``) two, occasional empty frames."""
    rng = np.random.default_rng(seed)
    names = list(names) if names is not None else random_names(n_files, seed=seed, variant=variant)
    paths = []
    for i, name in enumerate(names[:n_files]):
        n = int(rng.integers(frames[0], frames[1] + 1))
        two = rng.random() < two_body_fraction
        empty = sorted(rng.choice(n, size=2, replace=False).tolist()) if rng.random() < 0.1 else []
        paths.append(write_skeleton(Path(directory) / f"{name}.skeleton", n_frames=n, bodies=2 if two else 1,
                                    empty_frames=empty, seed=seed * 100_003 + i))
    return paths


def write_h5(out: str | os.PathLike, *, n_samples: int = 16, variant: str = "ntu60", seed: int = 0,
             frames: tuple[int, int] = (40, 120), raw_dir: str | os.PathLike | None = None) -> Path:
    """A small dataset file built by the real pipeline from synthetic skeletons, for tests of
    what reads HDF5 (feeders, trainers). ``raw_dir`` keeps the ``.skeleton`` files (default: a
    temporary folder, removed afterwards)."""
    import tempfile

    from data import ntu

    names = random_names(n_samples, seed=seed, variant=variant)
    if variant == "ntu120" and all(int(n[1:4]) <= 17 for n in names):
        names[-1] = sample_name(18, 1, 45, 1, 61)  # ntu120 needs an S018+ sample
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(raw_dir) if raw_dir is not None else Path(tmp)
        write_corpus(raw, n_samples, seed=seed, frames=frames, variant=variant, names=sorted(set(names)))
        return ntu.prepare(raw, out, variant, workers=1, progress=False)
