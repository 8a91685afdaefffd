"""The feeder: official test-mode output (reference fixtures), train-mode behaviour, seeding, workers."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data import feeder as fd
from data import h5, ntu, synthetic, ucla
from data.feeder import SkeletonFeeder
from models.graph import LAYOUTS, NTU, UCLA
from tests.conftest import assert_scaled_close, fixture_params, reference_dir, require_fixture

REPO = Path(__file__).resolve().parents[2]
TARBALL = REPO / "data" / "raw" / "nwucla" / "all_sqe.tar.gz"
NTU_FIXTURE_MODALITY = {"joint": "joint", "bone": "bone", "vel": "joint_motion", "bone_vel": "bone_motion"}
UCLA_FIXTURE_MODALITY = {"joint": "joint", "bone": "bone", "motion": "joint_motion", "bone_motion": "bone_motion"}
UCLA_TRAINLIST_PREFIX = "trainlist_testmode_"


# ---------------------------------------------------------------------------------- builders

def valid_frame_num(x: np.ndarray) -> int:
    """Official feeder's count: frames of x (C, T, V, M) with any non-zero value."""
    return int(np.sum(x.sum(0).sum(-1).sum(-1) != 0))


def write_ntu_h5(path: Path, arrays: dict[str, np.ndarray], dataset: str = "ntu60") -> Path:
    """An NTU-layout HDF5 of (C, T, V, M) arrays (all in the test part of 'xsub'), as data/ntu.py would."""
    names = sorted(arrays)
    shape = arrays[names[0]].shape
    with h5.create(path, dataset=dataset, num_samples=len(names), sample_shape=shape,
                   pipeline_version="test") as w:
        for i, name in enumerate(names):
            x = arrays[name]
            w.write(i, x, name=name, length=valid_frame_num(x), label=int(name[-3:]) - 1 if name[-4] == "A" else i % 3)
        w.add_split("xsub", train=np.arange(0, len(names), 2), test=np.arange(1, len(names), 2))
        w.add_split("fixture", train=[], test=np.arange(len(names)))
    return path


def final_to_ctvm(a: np.ndarray) -> np.ndarray:
    """Preprocessed NTU (300, 150) -> (3, 300, 25, 2), as the official feeder reshapes it."""
    return a.reshape(a.shape[0], 2, 25, 3).transpose(3, 0, 2, 1)  # (T, M, V, C) -> (C, T, V, M)


def random_walk_ntu(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Smooth random-walk skeletons with varied lengths (incl. 1 and < 64) and one or two persons."""
    rng = np.random.default_rng(seed)
    lengths = [1, 30, 63, 64, 65, 100, 150, 300, 200, 77, 5, 250][:n] + list(rng.integers(20, 300, max(0, n - 12)))
    out = {}
    for i, t in enumerate(lengths):
        x = np.zeros((3, 300, 25, 2), np.float32)
        walk = np.cumsum(rng.normal(0, 0.02, (3, t, 25, 2)), axis=1) + rng.normal(0, 0.3, (3, 1, 25, 2))
        x[:, :t] = walk
        if i % 3 == 0:
            x[..., 1] = 0  # one person
        out[f"S001C001P{i + 1:03d}R001A{i % 60 + 1:03d}"] = x
    return out


@pytest.fixture(scope="module")
def ntu_h5(tmp_path_factory) -> Path:
    return write_ntu_h5(tmp_path_factory.mktemp("ntu") / "ntu60.h5", random_walk_ntu())


@pytest.fixture(scope="module")
def ucla_h5(tmp_path_factory) -> Path:
    return ucla.prepare(TARBALL, tmp_path_factory.mktemp("ucla") / "ucla.h5", progress=False)


@pytest.fixture(scope="module")
def fixture_h5(tmp_path_factory):
    """Build (once per final.npz) the NTU HDF5 the feeder fixtures were made from."""
    cache: dict[Path, Path] = {}

    def build(variant_dir: Path) -> Path:
        final = reference_dir() / "ntu_preprocess" / variant_dir.name / "final.npz"
        if final not in cache:
            assert final.is_file(), f"{final} missing: the NTU feeder fixtures are made from it"
            with np.load(final) as z:
                arrays = {k: final_to_ctvm(z[k]) for k in z.files}
            cache[final] = write_ntu_h5(tmp_path_factory.mktemp(variant_dir.name) / "x.h5", arrays,
                                        dataset=variant_dir.name)
        return cache[final]

    return build


# ---------------------------------------------------------------------------------- reference fixtures

# Every .npz is a param: one whose stem names no known stream fails (instead of going untested).
NTU_VFN_STEM = "valid_frame_num"
NTU_FIXTURES = fixture_params([p for p in (reference_dir() / "feeders" / "ntu").glob("*/*.npz")
                               if p.stem != NTU_VFN_STEM], "feeders/ntu")
NTU_VFN = fixture_params((reference_dir() / "feeders" / "ntu").glob(f"*/{NTU_VFN_STEM}.npz"), "feeders/ntu vfn")
UCLA_FIXTURES = fixture_params((reference_dir() / "feeders" / "nwucla").glob("*.npz"), "feeders/nwucla")


def _known_stem(fixture: Path, stem: str, known: dict) -> str:
    if stem not in known:
        pytest.fail(f"{fixture}: no test knows the feeder fixture {stem!r} (known: {sorted(known)}); "
                    "map it to a modality in tests/data/test_feeder.py so that it is checked")
    return known[stem]


@pytest.fixture(scope="module")
def prepared_from_raw(tmp_path_factory):
    """(Once per variant) the NTU HDF5 that data/ntu.py builds from the preprocessing fixtures' raw
    inputs, i.e. this project's own lengths, not ones recomputed by a test helper."""
    cache: dict[str, Path] = {}

    def build(variant: str) -> Path:
        if variant not in cache:
            raw_fixtures = sorted((reference_dir() / "ntu_preprocess" / "raw").glob("*.skeleton"))
            assert raw_fixtures, f"no raw inputs under {reference_dir() / 'ntu_preprocess' / 'raw'}"
            raw = tmp_path_factory.mktemp(f"{variant}_raw")
            for path in raw_fixtures:
                shutil.copy(path, raw / path.name)
            if variant == "ntu120" and not any(int(p.name[1:4]) > 17 for p in raw_fixtures):
                synthetic.write_skeleton(raw / "S018C001P045R002A061.skeleton", n_frames=30, seed=1)
            cache[variant] = ntu.prepare(raw, tmp_path_factory.mktemp(variant) / f"{variant}.h5", variant,
                                         workers=1, progress=False)
        return cache[variant]

    return build


@pytest.mark.reference
@pytest.mark.parametrize("fixture", NTU_FIXTURES)
def test_ntu_test_mode_matches_official(fixture, fixture_h5):
    fixture = require_fixture(fixture, "feeders/ntu")
    modality = _known_stem(fixture, fixture.stem, NTU_FIXTURE_MODALITY)
    path = fixture_h5(fixture.parent)
    index = h5.read_index(path)
    with np.load(fixture) as ref:
        names = ref.files
        missing = sorted(set(names) - set(index.name))
        assert not missing, f"{fixture}: samples {missing} not in the final.npz it was made from"
        rows = [int(np.flatnonzero(index.name == n)[0]) for n in names]
        ds = SkeletonFeeder(path, "fixture", "test", modality=modality, subset=rows)
        assert not ds.train and ds.window == 64 and ds.p_interval == (0.95,) and ds.random_rot == 0
        for i, name in enumerate(names):
            x, label, idx = ds[i]
            assert idx == i and ds.sample_names[i] == name
            assert x.dtype == np.float32 and x.shape == ref[name].shape == (3, 64, 25, 2)
            # README: 1e-6, scaled by the array, as the file may come from another CPU
            assert_scaled_close(x, ref[name], 1e-6, f"{fixture} {name}")


@pytest.mark.reference
@pytest.mark.parametrize("fixture", NTU_VFN)
def test_ntu_stored_length_is_valid_frame_num(fixture, prepared_from_raw):
    """The length data/ntu.py stores is the official feeder's valid_frame_num of each sample."""
    fixture = require_fixture(fixture, "feeders/ntu vfn")
    assert fixture.parent.name in ntu.VARIANTS, f"{fixture}: folder is not an NTU variant {ntu.VARIANTS}"
    index = h5.read_index(prepared_from_raw(fixture.parent.name))
    with np.load(fixture) as ref:
        assert ref.files
        for name in ref.files:
            assert index.length[index.name == name].tolist() == [int(ref[name])], name


@pytest.mark.reference
@pytest.mark.parametrize("fixture", UCLA_FIXTURES)
def test_ucla_test_mode_matches_official(fixture, ucla_h5):
    fixture = require_fixture(fixture, "feeders/nwucla")
    prefix = UCLA_TRAINLIST_PREFIX if fixture.stem.startswith(UCLA_TRAINLIST_PREFIX) else ""
    modality = _known_stem(fixture, fixture.stem.removeprefix(prefix), UCLA_FIXTURE_MODALITY)
    manifest = fixture.parent / f"{prefix}manifest.json"
    labels = ({s["file_name"]: s["label"] for s in json.loads(manifest.read_text())["samples"]}
              if manifest.is_file() else {})
    index = h5.read_index(ucla_h5)
    with np.load(fixture) as ref:
        names = ref.files
        rows = [int(np.flatnonzero(index.name == n)[0]) for n in names]
        ds = SkeletonFeeder(ucla_h5, "all", "test", modality=modality, subset=rows)
        assert not ds.train and ds.window == 52
        for i, name in enumerate(names):
            x, label, _ = ds[i]
            assert x.dtype == np.float32 and x.shape == ref[name].shape == (3, 52, 20, 1)
            if name in labels:
                assert label == labels[name]
            # README: 1e-6, scaled by the array, as the file may come from another CPU
            assert_scaled_close(x, ref[name], 1e-6, f"{fixture} {name}")


# ---------------------------------------------------------------------------------- train mode

@pytest.mark.parametrize("modality", fd.MODALITIES)
def test_train_shapes_and_dtype(ntu_h5, ucla_h5, modality):
    ntu = SkeletonFeeder(ntu_h5, "all", "train", modality=modality)
    assert ntu.train and ntu.p_interval == (0.5, 1.0) and ntu.random_rot == 0.3
    for i in range(len(ntu)):
        x, label, idx = ntu[i]
        assert x.shape == (3, 64, 25, 2) and x.dtype == np.float32 and np.isfinite(x).all()
        assert idx == i and label == ntu.labels[i]
    uc = SkeletonFeeder(ucla_h5, "xview", "train", modality=modality, subset=8)
    for i in range(len(uc)):
        x, _, _ = uc[i]
        assert x.shape == (3, 52, 20, 1) and x.dtype == np.float32
        if modality == "joint":
            assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6


def test_seeded_determinism(ntu_h5, ucla_h5):
    for path, split in ((ntu_h5, "all"), (ucla_h5, "xview")):
        a = SkeletonFeeder(path, split, "train", seed=3, subset=6)
        b = SkeletonFeeder(path, split, "train", seed=3, subset=6)
        other_seed = SkeletonFeeder(path, split, "train", seed=4, subset=6)
        for ds in (a, b, other_seed):
            ds.set_epoch(2)
        for i in range(1, 6):  # sample 0 of the NTU set has one frame: every crop is the same
            np.testing.assert_array_equal(a[i][0], b[i][0])
            assert not np.array_equal(a[i][0], other_seed[i][0])
        before = [a[i][0] for i in range(1, 6)]
        a.set_epoch(3)
        assert all(not np.array_equal(x, a[i][0]) for i, x in enumerate(before, start=1))
        a.set_epoch(2)
        assert all(np.array_equal(x, a[i][0]) for i, x in enumerate(before, start=1))


def _batches(ds, **kw) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    loader = DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7),
                        worker_init_fn=fd.worker_init_fn, **kw)
    return list(loader)


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert ya.tolist() == yb.tolist() and ia.tolist() == ib.tolist()


def test_workers_do_not_change_batches(ntu_h5):
    ds = SkeletonFeeder(ntu_h5, "all", "train", modality="bone", seed=1)
    ds.set_epoch(5)
    serial = _batches(ds, num_workers=0)
    _assert_same(serial, _batches(ds, num_workers=2))
    spawn = _batches(ds, num_workers=1, multiprocessing_context="spawn")
    _assert_same(serial, spawn)
    x, y, i = serial[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 64, 25, 2)
    assert y.tolist() == ds.labels[i.numpy()].tolist()


def test_set_epoch_reaches_persistent_workers(ntu_h5):
    ds = SkeletonFeeder(ntu_h5, "all", "train", seed=1)
    loader = DataLoader(ds, batch_size=len(ds), num_workers=2, persistent_workers=True,
                        worker_init_fn=fd.worker_init_fn)
    seen = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen.append(next(iter(loader))[0])
        ref = torch.stack([torch.from_numpy(ds[i][0]) for i in range(len(ds))])
        torch.testing.assert_close(seen[-1], ref, rtol=0, atol=0)
    assert not torch.equal(seen[0], seen[1])


def test_repeat_semantics(ucla_h5):
    n = 7
    ds = SkeletonFeeder(ucla_h5, "xview", "train", subset=n, repeat=5)
    assert len(ds) == 5 * n and ds.num_samples == n
    assert len(ds.labels) == len(ds.sample_names) == 5 * n
    assert ds.labels.tolist() == ds.labels[:n].tolist() * 5
    assert ds.sample_names.tolist() == ds.sample_names[:n].tolist() * 5
    x3, y3, i3 = ds[3]
    x10, y10, i10 = ds[3 + n]
    assert (i3, i10) == (3, 3 + n) and y3 == y10 == ds.labels[3 + n]
    assert not np.array_equal(x3, x10)  # each copy has its own augmentation draw
    test = SkeletonFeeder(ucla_h5, "xview", "train", train=False, subset=n, repeat=2)
    np.testing.assert_array_equal(test[3][0], test[3 + n][0])  # deterministic transform: same sample
    with pytest.raises(IndexError):
        ds[5 * n]
    assert ds[-1][2] == 5 * n - 1


def test_subset_and_split(ntu_h5):
    index = h5.read_index(ntu_h5)
    full = SkeletonFeeder(ntu_h5, "xsub", "test", modality="joint")
    assert full.rows.tolist() == index.split("xsub", "test").tolist()
    sub = SkeletonFeeder(ntu_h5, "xsub", "test", subset=np.array([4, 1]))
    assert sub.rows.tolist() == full.rows[[4, 1]].tolist()
    np.testing.assert_array_equal(sub[0][0], full[4][0])
    assert len(SkeletonFeeder(ntu_h5, "xsub", "test", subset=2)) == 2


# ---------------------------------------------------------------------------------- streams

def test_bone_root_zero_and_motion_last_frame_zero(ntu_h5, ucla_h5):
    for path, split, layout in ((ntu_h5, "all", NTU), (ucla_h5, "xview", UCLA)):
        for train in (False, True):
            bone = SkeletonFeeder(path, split, "train", modality="bone", train=train, subset=4)
            motion = SkeletonFeeder(path, split, "train", modality="joint_motion", train=train, subset=4)
            bm = SkeletonFeeder(path, split, "train", modality="bone_motion", train=train, subset=4)
            for i in range(4):
                assert layout.root == layout.center
                assert not bone[i][0][:, :, layout.root].any()
                assert not motion[i][0][:, -1].any() and not bm[i][0][:, -1].any()


def test_streams_are_derived_from_the_joint_stream(ntu_h5):
    kw = dict(split="all", part="train", seed=9, subset=6)
    joint = SkeletonFeeder(ntu_h5, modality="joint", **kw)
    streams = {m: SkeletonFeeder(ntu_h5, modality=m, **kw) for m in fd.MODALITIES[1:]}
    for i in range(6):
        j = joint[i][0]
        b = fd.to_bone(j, NTU)
        for c, p in NTU.bone_pairs:
            np.testing.assert_array_equal(b[:, :, c - 1], j[:, :, c - 1] - j[:, :, p - 1])
        np.testing.assert_array_equal(streams["bone"][i][0], b)
        np.testing.assert_array_equal(streams["joint_motion"][i][0][:, :-1], j[:, 1:] - j[:, :-1])
        np.testing.assert_array_equal(streams["bone_motion"][i][0][:, :-1], b[:, 1:] - b[:, :-1])


def test_spine_relative_hand_example():
    layout = UCLA  # centre joint index 2
    x = np.zeros((3, 2, 20, 1))
    x[:, 0, :, 0] = np.arange(20)[None, :] + np.array([[0], [100], [200]])  # frame 0: joint v at (v, 100+v, 200+v)
    x[:, 1] = x[:, 0] + 1000
    joint = fd.to_modality(x, "joint", layout, spine_relative=True)
    # joint 5 relative to joint 2 in each frame; joint 2 keeps its absolute trajectory
    np.testing.assert_array_equal(joint[:, 0, 5, 0], [3, 3, 3])
    np.testing.assert_array_equal(joint[:, 1, 0, 0], [-2, -2, -2])
    np.testing.assert_array_equal(joint[:, :, 2, 0], x[:, :, 2, 0])
    bone = fd.to_modality(x, "bone", layout, spine_relative=True)
    np.testing.assert_array_equal(bone[:, :, 2, 0], x[:, :, 2, 0])  # centre slot: absolute, not 0
    np.testing.assert_array_equal(bone[:, 0, 5, 0], [1, 1, 1])  # (6, 5) pair: joint 5 - joint 4
    np.testing.assert_array_equal(bone, np.where(np.arange(20)[None, None, :, None] == 2, x,
                                                 fd.to_bone(x, layout)))
    motion = fd.to_modality(x, "joint_motion", layout, spine_relative=True)
    assert motion[:, 0, 2, 0].tolist() == [1000, 1000, 1000] and motion[:, 0, 5, 0].tolist() == [0, 0, 0]
    assert not motion[:, -1].any()
    assert np.array_equal(fd.to_modality(x, "joint", layout), x)  # the plain joint stream is untouched


def test_spine_relative_feeder(ntu_h5):
    kw = dict(split="all", part="test", subset=5)
    plain = SkeletonFeeder(ntu_h5, **kw)
    rel = SkeletonFeeder(ntu_h5, spine_relative=True, **kw)
    for i in range(5):
        p, r = plain[i][0], rel[i][0]
        np.testing.assert_array_equal(r[:, :, 20], p[:, :, 20])
        np.testing.assert_allclose(np.delete(r, 20, axis=2), np.delete(p - p[:, :, 20:21], 20, axis=2), atol=0)


def test_origin_transfer_hand_example():
    """HCN-pytorch's origin_transfer 0: joint 2 of person 0, per frame, from every joint and person."""
    x = np.zeros((3, 2, 25, 2))
    x[:, :, :, 0] = np.arange(25)[None, None, :] + np.array([0, 100, 200])[:, None, None]
    x[:, 1, :, 0] += 1000  # frame 1 moved (person 1 stays absent: zeros)
    out = fd.to_origin(x, 2)
    assert not out[:, :, 1, 0].any()  # the origin itself is 0 in every frame
    np.testing.assert_array_equal(out[:, :, 5, 0], np.full((3, 2), 4.0))  # joint 6 - joint 2
    np.testing.assert_array_equal(out[:, :, :, 1], np.broadcast_to(-x[:, :, 1:2, 0], (3, 2, 25)))  # absent: -origin
    bone = fd.to_bone(out, NTU)  # bones are translation-free: person 0's unchanged, the absent person's 0
    np.testing.assert_array_equal(bone[..., 0], fd.to_bone(x, NTU)[..., 0])
    assert not bone[..., 1].any()


def test_origin_joint_commutes_with_the_crop_and_rotation(ntu_h5):
    """The feeder subtracts the origin after crop/resize and rotation; HCN-pytorch does it at load time,
    before them. Both are per-frame linear maps, so the order does not matter."""
    x = h5.read_sample(h5.open_samples(ntu_h5), 0, 40)  # (C, L, V, M) valid frames
    for seed in range(3):
        a = fd.to_origin(fd.random_rot(fd.valid_crop_resize(x, (0.5, 1.0), 64, np.random.default_rng(seed)), 0.3,
                                       np.random.default_rng(seed + 10)), 2)
        b = fd.random_rot(fd.valid_crop_resize(fd.to_origin(x, 2), (0.5, 1.0), 64, np.random.default_rng(seed)), 0.3,
                          np.random.default_rng(seed + 10))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    kw = dict(split="all", part="train", subset=4, seed=3)
    plain, moved = SkeletonFeeder(ntu_h5, **kw), SkeletonFeeder(ntu_h5, origin_joint=2, **kw)
    for i in range(4):
        np.testing.assert_allclose(moved[i][0], fd.to_origin(plain[i][0], 2), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="origin_joint must be a joint number in 1..25"):
        SkeletonFeeder(ntu_h5, origin_joint=26, **kw)


# ---------------------------------------------------------------------------------- transforms

def test_rotation_matrix_is_official_convention():
    a = 0.2
    c, s = np.cos(a), np.sin(a)
    np.testing.assert_allclose(fd.rotation_matrix(np.array([a, 0, 0])), [[1, 0, 0], [0, c, s], [0, -s, c]])
    np.testing.assert_allclose(fd.rotation_matrix(np.array([0, a, 0])), [[c, 0, -s], [0, 1, 0], [s, 0, c]])
    np.testing.assert_allclose(fd.rotation_matrix(np.array([0, 0, a])), [[c, s, 0], [-s, c, 0], [0, 0, 1]])
    angles = np.array([0.1, -0.2, 0.3])
    r = fd.rotation_matrix(angles)
    rz, ry, rx = (fd.rotation_matrix(np.eye(3)[k] * angles[k]) for k in (2, 1, 0))
    np.testing.assert_allclose(r, rz @ ry @ rx)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-15)


def test_random_rot_preserves_distances(ntu_h5):
    rot = SkeletonFeeder(ntu_h5, "all", "train", seed=2)
    still = SkeletonFeeder(ntu_h5, "all", "train", seed=2, random_rot=0)
    for i in range(1, 6):
        a, b = rot[i][0].astype(np.float64), still[i][0].astype(np.float64)
        assert np.abs(a - b).max() > 1e-3  # it did rotate (same crop: same generator stream)
        da = np.linalg.norm(a[:, :, :, None] - a[:, :, None], axis=0)  # (T, V, V, M) pairwise distances
        db = np.linalg.norm(b[:, :, :, None] - b[:, :, None], axis=0)
        np.testing.assert_allclose(da, db, atol=1e-5)


def test_valid_crop_resize_semantics():
    ramp = np.broadcast_to(np.arange(200, dtype=np.float32)[None, :, None, None], (3, 200, 25, 2))
    out = fd.valid_crop_resize(ramp, (0.95,), 64)
    assert out.shape == (3, 64, 25, 2) and out.dtype == np.float32
    bias = int(0.05 * 200 / 2)  # 5 frames each side: keep [5, 195)
    t = np.clip((np.arange(64) + 0.5) * (200 - 2 * bias) / 64 - 0.5, 0, None)
    np.testing.assert_allclose(out[0, :, 0, 0], bias + t, atol=1e-4)
    short = fd.valid_crop_resize(ramp[:, :40], (0.5, 1.0), 64, np.random.default_rng(0))
    assert short[0, 0, 0, 0] == 0 and short[0, -1, 0, 0] == 39  # fewer than 64 valid: the whole sequence
    spans = []
    for s in range(200):
        o = fd.valid_crop_resize(ramp, (0.5, 1.0), 64, np.random.default_rng(s))
        spans.append(o[0, -1, 0, 0] - o[0, 0, 0, 0])
        assert 0 <= o.min() and o.max() <= 199
    # crop length in [100, 200] frames: the resampled span is just under it
    assert 95 < min(spans) < 110 and 190 < max(spans) <= 199
    one = fd.valid_crop_resize(ramp[:, :1] + 1, (0.95,), 64)
    assert (one == 1).all()


def test_ucla_frames_and_view():
    np.testing.assert_array_equal(fd.ucla_frames(10, 52, None), np.linspace(0, 9, 52).astype(int))
    rng = np.random.default_rng(0)
    idx = fd.ucla_frames(10, 52, rng)
    assert len(idx) == 52 and (np.diff(idx) >= 0).all() and 0 <= idx.min() and idx.max() <= 9
    assert (fd.ucla_frames(1, 52, rng) == 0).all()
    counts = np.bincount(np.concatenate([fd.ucla_frames(3, 52, rng) for _ in range(300)]), minlength=3)
    assert np.abs(counts / counts.sum() - 1 / 3).max() < 0.02
    a = np.radians(30)
    np.testing.assert_allclose(fd.view_matrix(30, 0, 1.0), [[1, 0, 0], [0, np.cos(a), np.sin(a)],
                                                             [0, -np.sin(a), np.cos(a)]])
    np.testing.assert_allclose(fd.view_matrix(0, 0, 2.0), 2 * np.eye(3))
    x = np.random.default_rng(1).standard_normal((3, 9, 20, 1))
    np.testing.assert_allclose(fd.ucla_normalise(x, 1, fd.view_matrix(0, 0, 1.0)), fd.ucla_normalise(x, 1),
                               rtol=0, atol=1e-12)
    m = fd.view_matrix(20, -45, 0.7)
    rows = (x - x[:, :1, 1:2]).transpose(1, 2, 3, 0).reshape(-1, 3) @ m  # official: X(-1, 3) @ M
    ref = (rows - rows.min(0)) / (rows.max(0) - rows.min(0)) * 2 - 1
    ours = fd.ucla_normalise(x, 1, m).transpose(1, 2, 3, 0).reshape(-1, 3)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="zero range"):
        fd.ucla_normalise(np.ones((3, 4, 20, 1)), 1)


# ---------------------------------------------------------------------------------- robustness

def test_pickling_keeps_output(ntu_h5):
    ds = SkeletonFeeder(ntu_h5, "all", "train", seed=5)
    first = ds[2][0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._x is None
    np.testing.assert_array_equal(clone[2][0], first)


def test_nan_sample_is_a_clear_error(tmp_path):
    path = write_ntu_h5(tmp_path / "nan.h5", random_walk_ntu(4))
    with h5py.File(path, "r+") as f:
        f["x"][2, 0, 0, 3, 0] = np.nan
    ds = SkeletonFeeder(path, "all", "test")
    ds[1]
    with pytest.raises(h5.H5FormatError, match=r"nan.h5: sample 2 contains NaN.*\(sample S001C001P003R001A003\)"):
        ds[2]


def test_wrong_shapes_are_errors_at_construction(tmp_path):
    def make(name, shape, dataset):
        with h5.create(tmp_path / name, dataset=dataset, num_samples=1, sample_shape=shape,
                       pipeline_version="t") as w:
            w.write(0, np.ones(shape, np.float32), name="s", length=shape[1], label=0)
        return tmp_path / name

    with pytest.raises(h5.H5FormatError, match="V=20"):
        SkeletonFeeder(make("v.h5", (3, 10, 20, 2), "ntu60"), "all")
    with pytest.raises(h5.H5FormatError, match="5 axes"):
        SkeletonFeeder(make("d.h5", (3, 10, 25), "ntu60"), "all")
    with pytest.raises(h5.H5FormatError, match="cannot tell the skeleton layout"):
        SkeletonFeeder(make("u.h5", (3, 10, 17, 1), "toy"), "all")
    with pytest.raises(h5.H5FormatError, match="C=2"):
        SkeletonFeeder(make("c.h5", (2, 10, 25, 2), "ntu120"), "all")
    with pytest.raises(h5.H5FormatError, match=r"m1.h5: x has M=1 persons, but ntu dataset files have M=2"):
        SkeletonFeeder(make("m1.h5", (3, 10, 25, 1), "ntu60"), "all")
    with pytest.raises(h5.H5FormatError, match=r"m3.h5: x has M=3 persons, but ntu dataset files have M=2"):
        SkeletonFeeder(make("m3.h5", (3, 10, 25, 3), "ntu120"), "all")
    with pytest.raises(h5.H5FormatError, match=r"m2.h5: x has M=2 persons, but ucla dataset files have M=1"):
        SkeletonFeeder(make("m2.h5", (3, 10, 20, 2), "ucla"), "all")
    assert SkeletonFeeder(make("ok.h5", (3, 10, 20, 1), "other"), "all").layout is LAYOUTS["ucla"]
    with pytest.raises(h5.H5FormatError, match="no such dataset file"):
        SkeletonFeeder(tmp_path / "absent.h5", "all")


def test_bad_arguments(ntu_h5, ucla_h5):
    with pytest.raises(ValueError, match="modality"):
        SkeletonFeeder(ntu_h5, "all", modality="vel")
    with pytest.raises(ValueError, match="part"):
        SkeletonFeeder(ntu_h5, "xsub", "val")
    with pytest.raises(KeyError, match="no split 'xview'"):
        SkeletonFeeder(ntu_h5, "xview", "train")
    with pytest.raises(ValueError, match="NTU options"):
        SkeletonFeeder(ucla_h5, "xview", "train", random_rot=0.3)
    with pytest.raises(ValueError, match="one or two values"):
        SkeletonFeeder(ntu_h5, "all", p_interval=(0.1, 0.5, 0.9))


def test_degenerate_samples_are_clear_errors(tmp_path):
    path = tmp_path / "flat.h5"
    with h5.create(path, dataset="ucla", num_samples=2, sample_shape=(3, 6, 20, 1), dtype="float64",
                   pipeline_version="t") as w:
        w.write(0, np.ones((3, 6, 20, 1)), name="a01_s01_e00_v03", length=6, label=0)  # every joint equal
        w.write(1, np.zeros((3, 0, 20, 1)), name="a01_s02_e00_v03", length=0, label=0)
        w.add_split("one", train=[], test=[0])
    with pytest.raises(ValueError, match=r"flat.h5: sample 0 \(a01_s01_e00_v03\): .*zero range"):
        SkeletonFeeder(path, "one", "test")[0]
    with pytest.raises(h5.H5FormatError, match="a01_s02_e00_v03.*no valid frames"):
        SkeletonFeeder(path, "all", "test")


def test_with_joints_appends_the_pre_modality_skeleton(ntu_h5, ucla_h5):
    """BlockGCN's `joint`: the skeleton after crop/resize/rotation (NTU) or normalisation/frame
    selection (NW-UCLA), before bone / spine-relative / motion, stacked after the modality stream."""
    for path, split, layout, shape in ((ntu_h5, "all", NTU, (3, 64, 25, 2)), (ucla_h5, "xview", UCLA, (3, 52, 20, 1))):
        for modality in fd.MODALITIES:
            kw = dict(split=split, part="train", modality=modality, seed=5, subset=4)
            plain = SkeletonFeeder(path, spine_relative=True, **kw)
            stacked = SkeletonFeeder(path, spine_relative=True, with_joints=True, **kw)
            raw = SkeletonFeeder(path, modality="joint", **{k: v for k, v in kw.items() if k != "modality"})
            assert stacked.with_joints and not plain.with_joints
            for i in range(1, 4):  # same augmentation draw for both parts
                x, label, idx = stacked[i]
                assert x.shape == (6, *shape[1:]) and x.dtype == np.float32
                assert (label, idx) == plain[i][1:]
                np.testing.assert_array_equal(x[:3], plain[i][0])
                np.testing.assert_array_equal(x[3:], raw[i][0])  # plain joint stream = pre-modality skeleton
                if modality != "joint":
                    assert not np.array_equal(x[:3], x[3:])
                if layout is NTU:  # float32 throughout: the modality of the extra channels is the stream
                    np.testing.assert_array_equal(fd.to_modality(x[3:], modality, layout, True), x[:3])
    batch = next(iter(DataLoader(SkeletonFeeder(ntu_h5, "all", "train", with_joints=True), batch_size=4)))
    assert batch[0].shape == (4, 6, 64, 25, 2)
