"""The HDF5 writer/reader: layout, atomicity, byte-identical rebuilds, validation errors."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import h5py
import numpy as np
import pytest

from data import h5
from tests.conftest import REPO


def _write(path, n=4, shape=(3, 10, 5, 2), compression=None, fail_at=None, params=None):
    rng = np.random.default_rng(0)
    with h5.create(path, dataset="toy", num_samples=n, sample_shape=shape, pipeline_version="t1",
                   params=params or {"a": 1, "b": [0.5, 2]}, compression=compression) as w:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("boom")
            t = 4 + i
            w.write(i, rng.standard_normal((shape[0], t, *shape[2:])).astype(np.float32),
                    name=f"s{i:03d}", length=t, label=i % 2, subject=i, camera=1, setup=2, replication=3)
        w.add_split("s", train=[2, 0], test=[1, 3])
    return path


def test_roundtrip(tmp_path):
    path = _write(tmp_path / "a.h5")
    idx = h5.read_index(path)
    assert idx.shape == (4, 3, 10, 5, 2)
    assert idx.length.tolist() == [4, 5, 6, 7]
    assert idx.label.tolist() == [0, 1, 0, 1]
    assert idx.name.tolist() == ["s000", "s001", "s002", "s003"]
    assert idx.split("s", "train").tolist() == [0, 2]
    assert idx.split("all", "train").tolist() == [0, 1, 2, 3]
    assert idx.params == {"a": 1, "b": [0.5, 2]}
    assert idx.attrs["dataset"] == "toy" and idx.attrs["pipeline_version"] == "t1"
    x = h5.open_samples(path)
    assert x.chunks == (1, 3, 10, 5, 2)
    s = h5.read_sample(x, 1, idx.length[1])
    assert s.shape == (3, 5, 5, 2)
    assert not np.any(x[1, :, 5:])  # zero padding past the length
    with pytest.raises(KeyError, match="no split 'nope'"):
        idx.split("nope", "train")


@pytest.mark.parametrize("compression", [None, "lzf"])
def test_rebuild_is_byte_identical(tmp_path, compression):
    a = _write(tmp_path / "a.h5", compression=compression).read_bytes()
    b = _write(tmp_path / "b.h5", compression=compression).read_bytes()
    assert a == b


def test_failure_leaves_no_output(tmp_path):
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError, match="boom"):
        _write(path, fail_at=2)
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_output(tmp_path):
    path = _write(tmp_path / "out.h5")
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        _write(path, fail_at=1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_unwritten_samples_are_an_error(tmp_path):
    with pytest.raises(h5.H5FormatError, match="never written"):
        with h5.create(tmp_path / "x.h5", dataset="toy", num_samples=2, sample_shape=(3, 4, 5, 1),
                       pipeline_version="t") as w:
            w.write(0, np.zeros((3, 4, 5, 1)), name="a", length=4, label=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad, match", [
    (np.full((3, 4, 5, 1), np.nan), "NaN"),
    (np.zeros((3, 4, 6, 1)), "does not fit"),
    (np.zeros((3, 9, 5, 1)), "does not fit"),
])
def test_write_rejects_bad_samples(tmp_path, bad, match):
    with pytest.raises(h5.H5FormatError, match=match) as e:
        with h5.create(tmp_path / "x.h5", dataset="toy", num_samples=1, sample_shape=(3, 8, 5, 1),
                       pipeline_version="t") as w:
            w.write(0, bad, name="bad_one", length=4, label=0)
    assert "bad_one" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_read_index_errors(tmp_path):
    with pytest.raises(h5.H5FormatError, match="no such dataset file"):
        h5.read_index(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(h5.H5FormatError, match="not a readable HDF5"):
        h5.read_index(tmp_path / "junk.h5")
    path = _write(tmp_path / "ok.h5")
    with h5py.File(path, "a") as f:
        del f["label"]
        f["label"] = np.zeros(3, np.int16)
    with pytest.raises(h5.H5FormatError, match=r"/label has shape \(3,\)"):
        h5.read_index(path)
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["x"] = np.zeros((2, 3, 4))
    with pytest.raises(h5.H5FormatError, match="expected 5 axes") as e:
        h5.read_index(tmp_path / "flat.h5")
    assert "flat.h5" in str(e.value)


def test_read_sample_rejects_nan(tmp_path):
    path = _write(tmp_path / "a.h5")
    with h5py.File(path, "a") as f:
        f["x"][2, 0, 0, 0, 0] = np.nan
    with pytest.raises(h5.H5FormatError, match="sample 2 contains NaN"):
        h5.read_sample(h5.open_samples(path), 2)


# --------------------------------------------------------------------------- durability and interruption

def test_file_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = h5.os.fsync, h5.os.replace
    monkeypatch.setattr(h5.os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), real_fsync(fd))[1])
    monkeypatch.setattr(h5.os, "replace", lambda a, b: (events.append(("replace", os.stat(a).st_ino)), real_replace(a, b))[1])
    path = _write(tmp_path / "a.h5")
    inode = path.stat().st_ino
    assert ("replace", inode) in events
    assert ("fsync", inode) in events[:events.index(("replace", inode))]


def _handler_while_writing(path) -> object:
    """The SIGTERM handler in force inside a :func:`h5.create` block (which writes one sample)."""
    with h5.create(path, dataset="toy", num_samples=1, sample_shape=(3, 4, 5, 1), pipeline_version="t") as w:
        w.write(0, np.ones((3, 4, 5, 1)), name="a", length=4, label=0)
        return signal.getsignal(signal.SIGTERM)


def test_sigterm_handler_only_while_writing_in_the_main_thread(tmp_path):
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        inside = _handler_while_writing(tmp_path / "a.h5")
        assert callable(inside) and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def own(signum, frame):
            pass

        signal.signal(signal.SIGTERM, own)  # a program's own handler is left alone
        assert _handler_while_writing(tmp_path / "b.h5") is own
        assert signal.getsignal(signal.SIGTERM) is own
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        seen = []
        t = threading.Thread(target=lambda: seen.append(_handler_while_writing(tmp_path / "c.h5")))
        t.start()
        t.join()
        assert seen == [signal.SIG_DFL] and (tmp_path / "c.h5").is_file()
    finally:
        signal.signal(signal.SIGTERM, previous)


_BLOCKED_WRITER = """
import sys, time
import numpy as np
from data import h5
with h5.create(sys.argv[1], dataset="toy", num_samples=2, sample_shape=(3, 4, 5, 1), pipeline_version="t") as w:
    w.write(0, np.ones((3, 4, 5, 1)), name="a", length=4, label=0)
    print("writing", flush=True)
    time.sleep(120)
"""


def test_sigterm_while_writing_removes_the_temporary_file(tmp_path):
    out = _write(tmp_path / "out.h5")
    before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _BLOCKED_WRITER, str(out)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "writing\n", proc.stderr.read()
        assert [p.name for p in tmp_path.glob(".out.h5.tmp*")] == [f".out.h5.tmp{proc.pid}"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM while writing" in err and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    assert out.read_bytes() == before


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f".out.h5.tmp{dead.pid}", f".out.h5.tmp{alive.pid}", f".other.h5.tmp{dead.pid}",
                 ".out.h5.tmpabc", f".out.h5.tmp{dead.pid}.keep", "out.h5.tmp1"]
        for name in names:
            (tmp_path / name).write_bytes(b"partial")
        with caplog.at_level(logging.WARNING, logger="data.h5"):
            _write(tmp_path / "out.h5")
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.h5", *names[1:]])
    assert f".out.h5.tmp{dead.pid}" in caplog.text and "no longer runs" in caplog.text
