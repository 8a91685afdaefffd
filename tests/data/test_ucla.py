"""NW-UCLA JSON -> HDF5: the real bundled set (sizes, labels, CTR-GCN's val list), rebuilds, errors."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data import h5, ucla

REPO = Path(__file__).resolve().parents[2]
RAW = REPO / "data" / "raw" / "nwucla"
TARBALL = RAW / "all_sqe.tar.gz"
VAL_LIST = RAW / "val_label.pkl"


@pytest.fixture(scope="module")
def ucla_h5(tmp_path_factory) -> Path:
    return ucla.prepare(TARBALL, tmp_path_factory.mktemp("ucla") / "ucla.h5", progress=False)


@pytest.fixture(scope="module")
def index(ucla_h5) -> h5.Index:
    return h5.read_index(ucla_h5)


def _json_from_tar(name: str) -> bytes:
    with tarfile.open(TARBALL, "r:gz") as tar:
        return tar.extractfile(f"all_sqe/{name}.json").read()


def _good(name="a01_s01_e00_v01", t=5) -> dict:
    action = int(name[1:3])
    skel = np.random.default_rng(0).standard_normal((t, 20, 3)).round(4).tolist()
    return {"file_name": name, "skeletons": skel, "label": ucla.ACTION_TO_LABEL[action] + 1}


# ---------------------------------------------------------------------------------- real data

def test_sizes_and_splits(index):
    assert index.shape == (1484, 3, 201, 20, 1)  # T_max = 201, the longest sequence
    assert index.dtype == np.float64
    assert index.attrs["dataset"] == "ucla"
    train, test = index.split("xview", "train"), index.split("xview", "test")
    assert len(train) == 1020 and len(test) == 464
    assert set(index.camera[train]) == {1, 2} and set(index.camera[test]) == {3}
    assert np.bincount(index.camera)[1:].tolist() == [516, 504, 464]
    assert sorted(set(index.label)) == list(range(10))
    assert index.name.tolist() == sorted(index.name)  # sorted by name: deterministic order
    assert (index.setup == -1).all()


def test_metadata_from_names(index):
    for i in (0, 700, 1483):
        action, subject, episode, view = ucla.parse_name(index.name[i])
        assert index.label[i] == ucla.ACTIONS.index(action)
        assert (index.subject[i], index.replication[i], index.camera[i]) == (subject, episode, view)


def test_samples_equal_json(ucla_h5, index):
    """x holds the JSON's float64 skeletons transposed to (3, T, 20, 1), zero past `length`."""
    x = h5.open_samples(ucla_h5)
    for name in ("a01_s01_e00_v01", "a08_s09_e02_v03", "a02_s09_e04_v03"):
        i = int(np.flatnonzero(index.name == name)[0])
        skel = np.array(json.loads(_json_from_tar(name))["skeletons"], dtype=np.float64)
        assert index.length[i] == skel.shape[0]
        np.testing.assert_array_equal(x[i, :, : skel.shape[0], :, 0], skel.transpose(2, 0, 1))
        assert not x[i, :, skel.shape[0]:].any()


def test_test_split_is_ctrgcn_val_list(ucla_h5):
    ucla.check_val_list(ucla_h5, VAL_LIST)  # raises on any name, label or length difference


def test_check_val_list_reports_differences(ucla_h5, tmp_path):
    entries = ucla.load_val_list(VAL_LIST)
    entries[0] = {**entries[0], "label": entries[0]["label"] % 10 + 1}
    entries.append({"file_name": "a01_s99_e00_v03", "length": 3, "label": 1})
    bad = tmp_path / "val_label.pkl"
    bad.write_bytes(pickle.dumps(entries))
    with pytest.raises(ucla.UclaFormatError, match=r"2 problems.*a01_s99_e00_v03: only in") as e:
        ucla.check_val_list(ucla_h5, bad)
    assert entries[0]["file_name"] in str(e.value)


def test_rebuild_is_byte_identical(ucla_h5, tmp_path):
    again = ucla.prepare(TARBALL, tmp_path / "again.h5", progress=False)
    assert again.read_bytes() == ucla_h5.read_bytes()


def test_directory_input_gives_the_same_file(ucla_h5, tmp_path):
    with tarfile.open(TARBALL, "r:gz") as tar:
        tar.extractall(tmp_path / "raw", filter="data")
    out = ucla.prepare(tmp_path / "raw", tmp_path / "dir.h5", progress=False)
    assert out.read_bytes() == ucla_h5.read_bytes()


# ---------------------------------------------------------------------------------- bad inputs

def _write_dir(root: Path, files: dict[str, bytes | dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        (root / name).write_bytes(data)
    return root


def _with_nan() -> bytes:
    obj = _good()
    obj["skeletons"][2][7][1] = float("nan")
    return json.dumps(obj).encode()  # json writes the non-standard NaN literal, as json.loads reads it


BAD_CASES = {
    "truncated": (lambda: json.dumps(_good()).encode()[:-40], "not valid JSON"),
    "missing-key": (lambda: {"file_name": "a01_s01_e00_v01", "label": 1}, "missing key 'skeletons'"),
    "wrong-joints": (lambda: {**_good(), "skeletons": np.zeros((4, 25, 3)).tolist()}, r"shape \(4, 25, 3\)"),
    "empty": (lambda: {**_good(), "skeletons": []}, r"shape \(0,\)"),
    "ragged": (lambda: {**_good(), "skeletons": [[[0.0, 0.0, 0.0]] * 20, [[0.0, 0.0]] * 20]}, "not a"),
    "nan": (lambda: _with_nan(), r"NaN or infinite values \(first at frame 2, joint 7\)"),
    "label": (lambda: {**_good(), "label": 2}, "'label' is 2"),
    "file-name-field": (lambda: {**_good(), "file_name": "a01_s02_e00_v01"}, "'file_name' is"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_json_gives_clear_error_and_no_output(tmp_path, case):
    make, message = BAD_CASES[case]
    content = make()
    raw = _write_dir(tmp_path / "raw", {"a01_s01_e00_v01.json": content,
                                        "a02_s01_e00_v03.json": _good("a02_s01_e00_v03")})
    out = tmp_path / "out" / "ucla.h5"
    with pytest.raises(ucla.UclaFormatError, match=message) as e:
        ucla.prepare(raw, out, progress=False)
    assert "a01_s01_e00_v01.json" in str(e.value)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.parametrize("name,message", [
    ("a01-s01-e00-v01", "does not match aAA_sSS_eEE_vVV"),
    ("a01_s01_e00_v01_copy", "does not match"),
    ("a07_s01_e00_v01", "unknown action a07"),
    ("a01_s01_e00_v04", "unknown view v04"),
])
def test_bad_file_name(tmp_path, name, message):
    raw = _write_dir(tmp_path / "raw", {f"{name}.json": _good()})
    with pytest.raises(ucla.UclaFormatError, match=message) as e:
        ucla.prepare(raw, tmp_path / "ucla.h5", progress=False)
    assert name in str(e.value)
    assert not (tmp_path / "ucla.h5").exists()


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(ucla.UclaFormatError, match="no such directory"):
        ucla.prepare(tmp_path / "nope", tmp_path / "ucla.h5", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ucla.UclaFormatError, match="no NW-UCLA"):
        ucla.prepare(tmp_path / "empty", tmp_path / "ucla.h5", progress=False)
    assert not (tmp_path / "ucla.h5").exists()


def test_duplicate_names_in_subdirectories(tmp_path):
    raw = _write_dir(tmp_path / "raw", {"a01_s01_e00_v01.json": _good()})
    _write_dir(raw / "sub", {"a01_s01_e00_v01.json": _good()})
    with pytest.raises(ucla.UclaFormatError, match="duplicate sample"):
        ucla.load(raw)


def test_tarball_input_and_corrupt_tarball(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("a02_s01_e00_v03", "a01_s01_e00_v01", "a01_s01_e00_v02"):
            data = json.dumps(_good(name, t=3 + len(name) % 4)).encode()
            info = tarfile.TarInfo(f"all_sqe/{name}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    good = tmp_path / "small.tar.gz"
    good.write_bytes(buf.getvalue())
    out = ucla.prepare(good, tmp_path / "small.h5", progress=False)
    idx = h5.read_index(out)
    assert idx.name.tolist() == ["a01_s01_e00_v01", "a01_s01_e00_v02", "a02_s01_e00_v03"]
    assert idx.split("xview", "train").tolist() == [0, 1] and idx.split("xview", "test").tolist() == [2]
    assert idx.label.tolist() == [0, 0, 1]

    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ucla.UclaFormatError, match="bad.tar.gz"):
        ucla.prepare(bad, tmp_path / "bad.h5", progress=False)
    assert not (tmp_path / "bad.h5").exists()
