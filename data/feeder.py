"""The skeleton feeder: one HDF5 dataset file -> ``(x, label, index)`` samples, official transforms.

Transforms follow the official CTR-GCN feeders (``feeders/feeder_ntu.py``, ``feeders/feeder_ucla.py``,
``feeders/tools.py``) step for step, so that test-mode output equals theirs (checked against the
reference fixtures), plus the spine-relative variant of Hyperformer/BlockGCN/CSRE.

NTU (x stored float32, (3, 300, 25, 2)):
    crop to the valid frames and resize to ``window`` (:func:`valid_crop_resize`) -> random
    rotation (train) -> bone or spine-relative joint -> motion.
NW-UCLA (x stored float64, (3, T_max, 20, 1)), in float64 until the final cast:
    subtract joint ``origin`` of frame 0 -> view transform (train: random) -> per-axis min-max to
    [-1, 1] -> pick ``window`` frames (train: random with duplicates; test: linspace) -> bone or
    spine-relative joint -> motion.

``with_joints=True`` appends the skeleton as it is before the modality step (after crop/resize and
rotation, resp. after normalisation and frame selection) as 3 more channels: the BlockGCN feeder's
``joint``, which feeds BlockGCN's topology branch (see :mod:`models.blockgcn`).

Randomness. The official feeders draw from the global ``random``/``np.random``/``torch`` RNGs,
re-seeded per worker with the worker id, so the augmentation of a sample depends on which worker
loads it. Here every sample draws from its own ``np.random.default_rng([seed, epoch, index])``: two
runs with one seed see identical batches whatever the number of workers or the assignment of
samples to them, and nothing touches a global RNG.

Workers. Only the path and the small index arrays are kept in ``__init__``; the HDF5 file is
opened on the first ``__getitem__`` of each process (h5py handles survive neither pickling nor a
fork safely), so the dataset works with fork, forkserver and spawn DataLoader workers.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data import h5
from models.graph import Layout, layout_for

MODALITIES = ("joint", "bone", "joint_motion", "bone_motion")
DEFAULT_WINDOW = {"ntu": 64, "ucla": 52}
# Persons M per layout, as data/ntu.py and data/ucla.py write them (the official feeders' M); a file
# with another M would silently feed a model built for the wrong number of persons.
NUM_PERSONS = {"ntu": 2, "ucla": 1}
NTU_P_INTERVAL = {"train": (0.5, 1.0), "test": (0.95,)}
NTU_RANDOM_ROT = 0.3  # radians, official train setting
NTU_MIN_CROP = 64  # official lower bound of the random crop length (hard-coded in tools.py)
UCLA_VIEW_ANGLE = 60  # degrees: agx, agy ~ randint[-60, 60]
UCLA_VIEW_SCALE = (0.5, 1.5)  # s ~ U(0.5, 1.5)
UCLA_RESAMPLE_COPIES = 100  # official: random.sample(list(range(L)) * 100, window)


# ----------------------------------------------------------------------------------------------
# NTU transforms
# ----------------------------------------------------------------------------------------------

def valid_crop_resize(x: np.ndarray, p_interval: Sequence[float], window: int,
                      rng: np.random.Generator | None = None, min_crop: int = NTU_MIN_CROP) -> np.ndarray:
    """Crop the valid frames of ``x`` (C, valid, V, M) and resize them to ``window`` frames.

    As official ``tools.valid_crop_resize``: one ``p`` -> centre crop keeping ``[bias, valid-bias)``
    with ``bias = int((1-p)*valid/2)``; two values ``[lo, hi]`` -> ``p ~ U(lo, hi)``, length
    ``clip(floor(valid*p), min_crop, valid)`` at a random start. The resize is the same torch call
    as official (bilinear on the (C*V*M, L) matrix, ``align_corners=False``), which makes test-mode
    output bit-identical to the reference. Returns float32 (C, window, V, M).
    """
    c, valid, v, m = x.shape
    if valid < 1:
        raise ValueError("sample has no valid frames")
    if len(p_interval) == 1:
        bias = int((1 - p_interval[0]) * valid / 2)
        data = x[:, bias:valid - bias]
    elif len(p_interval) == 2:
        if rng is None:
            raise ValueError("a random crop (two-valued p_interval) needs a generator")
        lo, hi = p_interval
        p = rng.random() * (hi - lo) + lo
        length = min(max(int(math.floor(valid * p)), min_crop), valid)
        start = int(rng.integers(0, valid - length + 1))
        data = x[:, start:start + length]
    else:
        raise ValueError(f"p_interval must have one or two values, got {p_interval!r}")
    length = data.shape[1]
    if length < 1:
        raise ValueError(f"crop of {valid} valid frames with p_interval {p_interval!r} is empty")
    t = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    t = t.permute(0, 2, 3, 1).reshape(1, 1, c * v * m, length)  # (C, L, V, M) -> (1, 1, C*V*M, L)
    t = F.interpolate(t, size=(c * v * m, window), mode="bilinear", align_corners=False)
    t = t.reshape(c, v, m, window).permute(0, 3, 1, 2)  # (C*V*M, W) -> (C, W, V, M)
    return np.ascontiguousarray(t.numpy())


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """The 3x3 matrix of official ``tools._rot`` for angles (about x, y, z): ``Rz @ Ry @ Rx``.

    Note the official sign convention: each factor is the transpose of the textbook rotation
    (e.g. ``Rx = [[1,0,0],[0,c,s],[0,-s,c]]``). It is still a rotation, so distances are kept.
    """
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rot(x: np.ndarray, theta: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate every frame and person of ``x`` (C=3, T, V, M) by one random rotation.

    Angles ~ U(-theta, theta) about x, y, z (official ``tools.random_rot``: one triple per sample,
    repeated over frames). The matrix is built in float64 and applied in ``x``'s dtype.
    """
    rot = rotation_matrix(rng.uniform(-theta, theta, size=3)).astype(x.dtype)
    c, t, v, m = x.shape
    out = rot @ x.reshape(c, t * v * m)  # (3, 3) @ (C, T*V*M)
    return out.reshape(c, t, v, m)


# ----------------------------------------------------------------------------------------------
# NW-UCLA transforms
# ----------------------------------------------------------------------------------------------

def view_matrix(agx_deg: float, agy_deg: float, scale: float) -> np.ndarray:
    """Official ``rand_view_transform`` matrix ``Ry @ (Rx @ S)``, applied to row vectors (X @ M)."""
    ax, ay = math.radians(agx_deg), math.radians(agy_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), math.sin(ax)], [0, -math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, -math.sin(ay)], [0, 1, 0], [math.sin(ay), 0, math.cos(ay)]])
    s = np.diag([scale, scale, scale])
    return ry @ (rx @ s)


def ucla_normalise(x: np.ndarray, origin: int, view: np.ndarray | None = None) -> np.ndarray:
    """Centre, view-transform and min-max normalise ``x`` (C=3, T, V, M) float64 to [-1, 1] per axis.

    Steps as official: subtract joint ``origin`` of frame 0; multiply by ``view`` (None = the
    identity of the test transform, skipped: ``x*1 + y*0 + z*0`` is exact, so the result is equal);
    then per axis over all frames and joints ``(x - min) / (max - min) * 2 - 1``. An axis with zero
    range would give NaN in the official code; here it is an error.
    """
    c, t, v, m = x.shape
    x = x - x[:, :1, origin:origin + 1, :]  # (C, T, V, M) - (C, 1, 1, M)
    if view is not None:
        x = (view.T @ x.reshape(c, -1)).reshape(c, t, v, m)  # rows X @ M == (M^T @ X^T)^T
    flat = x.reshape(c, -1)  # (C, T*V*M)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    if np.any(hi == lo):
        raise ValueError(f"an axis has zero range after centring (min {lo}, max {hi}); cannot min-max normalise")
    lo, hi = lo[:, None, None, None], hi[:, None, None, None]
    return (x - lo) / (hi - lo) * 2 - 1


def ucla_frames(length: int, window: int, rng: np.random.Generator | None) -> np.ndarray:
    """Frame indices to keep: test ``linspace(0, L-1, window)`` truncated; train random, sorted.

    The official train draw is ``random.sample(list(range(L)) * 100, window)``: ``window`` distinct
    positions of a population in which every frame appears 100 times. Drawing ``window`` distinct
    positions out of ``100*L`` and taking them modulo ``L`` has exactly that distribution.
    """
    if rng is None:
        return np.linspace(0, length - 1, window).astype(int)
    population = length * UCLA_RESAMPLE_COPIES
    if window > population:
        raise ValueError(f"cannot draw {window} frames from {length} frames x {UCLA_RESAMPLE_COPIES} copies")
    return np.sort(rng.choice(population, size=window, replace=False) % length)


# ----------------------------------------------------------------------------------------------
# Streams (both layouts)
# ----------------------------------------------------------------------------------------------

def to_bone(x: np.ndarray, layout: Layout, spine_relative: bool = False) -> np.ndarray:
    """Bone stream of ``x`` (C, T, V, M): ``x[child] - x[parent]`` in the child's slot.

    The root pair (child == parent) gives 0, or, in the spine-relative variant, the centre joint's
    absolute trajectory (Hyperformer: "keep spine center's trajectory").
    """
    parent = np.empty(layout.num_joints, dtype=np.int64)
    for c, p in layout.bone_pairs:  # every joint is the child of exactly one pair (checked in Layout)
        parent[c - 1] = p - 1
    out = x - x[:, :, parent]  # one gather; the root gives x - x = 0 exactly, as the official loop
    if spine_relative:
        out[:, :, layout.center] = x[:, :, layout.center]
    return out


def to_spine_relative(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Joint stream relative per frame to the centre joint, whose absolute trajectory stays in its slot."""
    c = layout.center
    out = x - x[:, :, c:c + 1]  # (C, T, V, M) - (C, T, 1, M)
    out[:, :, c] = x[:, :, c]
    return out


def to_origin(x: np.ndarray, joint: int) -> np.ndarray:
    """``x`` (C, T, V, M) minus joint ``joint`` (1-based) of person 0, per frame, for every joint and person.

    HCN-pytorch's ``origin_transfer = 0`` (joint 2). Like the official, an absent second person
    (zeros) becomes minus the origin's trajectory.
    """
    return x - x[:, :, joint - 1:joint, :1]  # (C, T, V, M) - (C, T, 1, 1)


def to_motion(x: np.ndarray) -> np.ndarray:
    """Frame differences ``x[:, t+1] - x[:, t]``; the last frame is 0."""
    out = np.zeros_like(x)
    out[:, :-1] = x[:, 1:] - x[:, :-1]
    return out


def to_modality(x: np.ndarray, modality: str, layout: Layout, spine_relative: bool = False) -> np.ndarray:
    """Official order: bone (or, spine-relative variant only, the re-centred joint), then motion."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if modality.startswith("bone"):
        x = to_bone(x, layout, spine_relative)
    elif spine_relative:
        x = to_spine_relative(x, layout)
    if modality.endswith("motion"):
        x = to_motion(x)
    return x


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------

def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (the resize is tiny; threads only
    oversubscribe the cores). Seeding is not needed: samples carry their own generators."""
    torch.set_num_threads(1)


class SkeletonFeeder(Dataset):
    """``(x, label, index)`` samples of one split part of an HDF5 dataset file.

    ``x`` is a numpy array (C, window, V, M) in ``dtype`` (the default collate turns it into a
    tensor); ``index`` is the position in this dataset, in ``[0, len(self))``, which a memory bank
    keys on. With ``repeat`` (official NW-UCLA train: 5) the dataset is ``repeat`` copies of the
    part: ``len = n * repeat``, position ``i`` is sample ``i % n`` with its own augmentation draw.

    Defaults depend on the layout (from the file's ``dataset`` attribute, else V) and on ``train``:
    NTU window 64, ``p_interval`` (0.5, 1) train / (0.95,) test, ``random_rot`` 0.3 rad in train
    mode; NW-UCLA window 52, random view transform and frame resampling in train mode.

    ``subset``: the first ``k`` samples of the part (an int) or positions within it (an array), for
    CI runs on tiny subsets. ``set_epoch`` changes the augmentation draw; it is stored in shared
    memory so that it also reaches persistent DataLoader workers.

    ``with_joints``: ``x`` becomes (2·3, window, V, M), the modality stream followed by the skeleton
    before the modality transform (same augmentation draw), for BlockGCN (official feeder's ``joint``).
    """

    def __init__(self, path: str | os.PathLike, split: str = "xsub", part: str = "train", *,
                 modality: str = "joint", train: bool | None = None, window: int | None = None,
                 p_interval: Sequence[float] | None = None, random_rot: float | None = None,
                 min_crop: int = NTU_MIN_CROP, view_angle: int = UCLA_VIEW_ANGLE,
                 view_scale: tuple[float, float] = UCLA_VIEW_SCALE, spine_relative: bool = False,
                 origin_joint: int | None = None, repeat: int = 1, seed: int = 0, subset: int | Sequence[int] | np.ndarray | None = None,
                 dtype=np.float32, with_joints: bool = False):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if part not in ("train", "test"):
            raise ValueError(f"part must be 'train' or 'test', got {part!r}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.path = Path(path)
        index = h5.read_index(self.path)
        self.layout = self._check_layout(index)
        self.num_person = int(index.shape[4])  # M of the file (checked against the layout)
        self.dataset = str(index.attrs.get("dataset", ""))
        self.split, self.part, self.modality = split, part, modality
        self.train = (part == "train") if train is None else bool(train)
        self.window = DEFAULT_WINDOW[self.layout.name] if window is None else int(window)
        self.spine_relative = bool(spine_relative)
        if origin_joint is not None and not 1 <= origin_joint <= self.layout.num_joints:
            raise ValueError(f"origin_joint must be a joint number in 1..{self.layout.num_joints}, got {origin_joint}")
        self.origin_joint = None if origin_joint is None else int(origin_joint)
        self.with_joints = bool(with_joints)
        self.repeat, self.seed, self.dtype = int(repeat), int(seed), np.dtype(dtype)
        self.min_crop, self.view_angle, self.view_scale = int(min_crop), int(view_angle), tuple(view_scale)
        self._set_ntu_params(p_interval, random_rot)
        # Whether any step draws random numbers (test mode does not: skip making a generator).
        self.random = self.train if self.layout.name == "ucla" else (len(self.p_interval) == 2 or self.random_rot > 0)

        rows = index.split(split, part)
        if subset is not None:
            rows = rows[:subset] if isinstance(subset, (int, np.integer)) else rows[np.asarray(subset, dtype=np.int64)]
        self.rows = np.asarray(rows, dtype=np.int64)  # HDF5 rows of the n distinct samples
        self.num_samples = len(self.rows)
        self.length = index.length[self.rows]
        if self.num_samples and self.length.min() < 1:
            bad = self.rows[np.argmin(self.length)]
            raise h5.H5FormatError(f"{self.path}: sample {bad} ({index.name[bad]}) has no valid frames")
        tiled = np.tile(np.arange(self.num_samples), self.repeat)
        self.labels = index.label[self.rows][tiled]  # aligned with the returned index
        self.sample_names = index.name[self.rows][tiled]
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._x = None
        self._pid = None

    # -- construction helpers ----------------------------------------------------------------

    def _check_layout(self, index: h5.Index) -> Layout:
        n, c, t, v, m = index.shape
        try:
            layout = layout_for(index.attrs.get("dataset"), v)
        except ValueError as e:
            raise h5.H5FormatError(f"{index.path}: {e} (x shape {index.shape})") from e
        if c != 3:
            raise h5.H5FormatError(f"{index.path}: x has C={c} coordinates, expected 3 (shape {index.shape})")
        if m != NUM_PERSONS[layout.name]:
            raise h5.H5FormatError(f"{index.path}: x has M={m} persons, but {layout.name} dataset files have "
                                   f"M={NUM_PERSONS[layout.name]} (shape {index.shape}, dataset "
                                   f"{index.attrs.get('dataset')!r})")
        return layout

    def _set_ntu_params(self, p_interval: Sequence[float] | None, random_rot: float | None) -> None:
        if self.layout.name == "ntu":
            default_p = NTU_P_INTERVAL["train" if self.train else "test"]
            self.p_interval = tuple(float(p) for p in (default_p if p_interval is None else p_interval))
            if len(self.p_interval) not in (1, 2):
                raise ValueError(f"p_interval must have one or two values, got {p_interval!r}")
            self.random_rot = (NTU_RANDOM_ROT if self.train else 0.0) if random_rot is None else float(random_rot)
        else:
            if p_interval is not None or random_rot:
                raise ValueError("p_interval and random_rot are NTU options; NW-UCLA uses the view transform "
                                 "(view_angle, view_scale) and frame resampling")
            self.p_interval, self.random_rot = (), 0.0

    # -- epoch and pickling ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (seen by workers, persistent ones included)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_x"] = None  # h5py handles cannot be pickled; reopened lazily
        state["_pid"] = None
        return state

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.num_samples * self.repeat

    def _samples(self):
        if self._x is None or self._pid != os.getpid():  # a handle inherited through fork is unsafe
            self._x = h5.open_samples(self.path)
            self._pid = os.getpid()
        return self._x

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index = int(index) % n
        j = index % self.num_samples
        row = int(self.rows[j])
        # A generator per sample (seed, epoch, index): the draw does not depend on the worker.
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.random else None
        try:
            x = h5.read_sample(self._samples(), row, int(self.length[j]))  # (C, L, V, M)
            x = self.transform(x, rng)
        except h5.H5FormatError as e:  # already names the file and row: add the sample name
            raise h5.H5FormatError(f"{e} (sample {self.sample_names[j]})") from e
        except ValueError as e:  # a transform refused the sample: say which one
            raise ValueError(f"{self.path}: sample {row} ({self.sample_names[j]}): {e}") from e
        return x.astype(self.dtype, copy=False), int(self.labels[index]), index

    def transform(self, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """The full per-sample transform of ``x`` (C, L, V, M) holding only the valid frames.

        Returns (C, window, V, M), or (2·C, window, V, M) with ``with_joints``.
        """
        if self.layout.name == "ntu":
            x = valid_crop_resize(x, self.p_interval, self.window, rng, self.min_crop)
            if self.random_rot:
                x = random_rot(x, self.random_rot, rng)
        else:
            x = self._ucla(x, rng)
        if self.origin_joint is not None:  # per-frame and linear: commutes with the resize and rotation
            x = to_origin(x, self.origin_joint)
        out = to_modality(x, self.modality, self.layout, self.spine_relative)
        if self.with_joints:  # the pre-modality skeleton as 3 extra channels (BlockGCN's `joint`)
            out = np.concatenate((out, x), axis=0)
        return out

    def _ucla(self, x: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.train:
            agx, agy = rng.integers(-self.view_angle, self.view_angle + 1, size=2)
            view = view_matrix(float(agx), float(agy), float(rng.uniform(*self.view_scale)))
        else:
            view = None  # angles 0, scale 1: the identity
        x = ucla_normalise(x, self.layout.origin, view)
        return x[:, ucla_frames(x.shape[1], self.window, rng if self.train else None)]

    def __repr__(self) -> str:
        return (f"SkeletonFeeder({str(self.path)!r}, split={self.split!r}, part={self.part!r}, "
                f"modality={self.modality!r}, train={self.train}, window={self.window}, n={self.num_samples}, "
                f"repeat={self.repeat}, spine_relative={self.spine_relative}, origin_joint={self.origin_joint}, "
                f"with_joints={self.with_joints})")
