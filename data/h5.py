"""The one HDF5 writer and reader for skeleton datasets.

Layout of a dataset file (one per dataset: ``ntu60.h5``, ``ntu120.h5``, ``ucla.h5``)::

    /x            (N, C, T_max, V, M)  float32 (NTU) or float64 (NW-UCLA), zero-padded in time,
                  chunked one sample per chunk, uncompressed by default ("lzf" optional)
    /length       (N,) int32   valid frames of each sample (frames past it are padding)
    /label        (N,) int16   0-based action label
    /name         (N,) bytes   sample name, e.g. b"S001C001P001R001A001" or b"a01_s01_e00_v01"
    /subject      (N,) int16   performer / subject id (-1 where the dataset has none)
    /camera       (N,) int16   camera (NTU) or view (NW-UCLA)
    /setup        (N,) int16   setup id (NTU); -1 for NW-UCLA
    /replication  (N,) int16   replication (NTU) or episode (NW-UCLA)
    /splits/<split>/{train,test}  int64 indices into the arrays above, ascending

Attributes on the root: ``format_version``, ``dataset``, ``pipeline_version`` and one attribute
per pipeline parameter (``param.<name>``), JSON-encoded. No timestamps are written anywhere, so
rebuilding from the same inputs gives a byte-identical file (h5py's default
``track_times=False``), and DVC does not retrain on a no-op rebuild.

Files are written to a temporary name beside the target (``.<name>.tmp<pid>``), flushed to disk
(``fsync``) and renamed into place only when complete: a failed build, or one stopped by SIGTERM
(``kill``, DVC, a job scheduler), removes its temporary file and leaves ``path`` untouched. A
temporary file of the same target left by a process that no longer runs (one killed with SIGKILL,
or a crash of the machine) is removed, with a log message, by the next build of that target.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

FORMAT_VERSION = 1
META_ARRAYS: dict[str, Any] = {
    "length": np.int32,
    "label": np.int16,
    "subject": np.int16,
    "camera": np.int16,
    "setup": np.int16,
    "replication": np.int16,
}
NAME_DTYPE = "S32"
COMPRESSIONS = (None, "lzf")

log = logging.getLogger(__name__)


class H5FormatError(ValueError):
    """A dataset file is missing, unreadable or not in the layout described in this module."""


class Terminated(SystemExit):
    """SIGTERM arrived while :func:`create` was writing; the exit status is 128 + SIGTERM (143)."""


class Writer:
    """Fills a dataset file sample by sample; created by :func:`create`."""

    def __init__(self, f: h5py.File, path: Path, num_samples: int, sample_shape: tuple, dtype):
        self._f = f
        self.path = path
        self.num_samples = num_samples
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)
        self._x = f["x"]
        self._meta = {k: np.full(num_samples, -1, dtype=t) for k, t in META_ARRAYS.items()}
        self._names = np.zeros(num_samples, dtype=NAME_DTYPE)
        self._written = np.zeros(num_samples, dtype=bool)
        self._splits: dict[str, dict[str, np.ndarray]] = {}

    def write(self, i: int, x: np.ndarray, *, name: str, length: int, label: int,
              subject: int = -1, camera: int = -1, setup: int = -1, replication: int = -1) -> None:
        """Store sample ``i``: ``x`` of shape (C, T, V, M) with T <= T_max (zero-padded here)."""
        x = np.asarray(x)
        where = f"sample {i} ({name!r}) of {self.path}"
        if x.ndim != len(self.sample_shape) or x.shape[0] != self.sample_shape[0] \
                or x.shape[2:] != self.sample_shape[2:] or x.shape[1] > self.sample_shape[1]:
            raise H5FormatError(f"{where}: shape {x.shape} does not fit {self.sample_shape} (C, T_max, V, M)")
        if not np.isfinite(x).all():
            raise H5FormatError(f"{where}: contains NaN or infinite values")
        if not 0 <= length <= x.shape[1]:
            raise H5FormatError(f"{where}: length {length} outside 0..{x.shape[1]}")
        if len(name.encode()) > int(NAME_DTYPE[1:]):
            raise H5FormatError(f"{where}: name longer than {NAME_DTYPE[1:]} bytes")
        if x.shape[1] < self.sample_shape[1]:
            padded = np.zeros(self.sample_shape, dtype=self.dtype)
            padded[:, : x.shape[1]] = x
            x = padded
        self._x[i] = x.astype(self.dtype, copy=False)
        for key, value in (("length", length), ("label", label), ("subject", subject),
                           ("camera", camera), ("setup", setup), ("replication", replication)):
            self._meta[key][i] = value
        self._names[i] = name.encode()
        self._written[i] = True

    def add_split(self, split: str, *, train: np.ndarray, test: np.ndarray) -> None:
        """Record a named split as two ascending index arrays."""
        parts = {"train": np.sort(np.asarray(train, dtype=np.int64)),
                 "test": np.sort(np.asarray(test, dtype=np.int64))}
        for part, idx in parts.items():
            if idx.size and (idx[0] < 0 or idx[-1] >= self.num_samples):
                raise H5FormatError(f"{self.path}: split {split}/{part} indexes outside 0..{self.num_samples - 1}")
        self._splits[split] = parts

    def _finish(self) -> None:
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise H5FormatError(f"{self.path}: {missing.size} samples were never written (first: {missing[0]})")
        for key, arr in self._meta.items():
            self._f.create_dataset(key, data=arr)
        self._f.create_dataset("name", data=self._names)
        grp = self._f.create_group("splits")
        for split in sorted(self._splits):
            sub = grp.create_group(split)
            for part in ("train", "test"):
                sub.create_dataset(part, data=self._splits[split][part])


def _temp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp{pid}")


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still run here (True when in doubt: its file is then kept)."""
    if pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists (PermissionError: another user's), or cannot tell
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` left by processes that no longer run; return them.

    Only names of the form ``.<name>.tmp<pid>`` beside ``path`` are considered, and only when no
    process ``pid`` exists on this machine, so a build still running here keeps its file. (Process
    ids are those of this machine: two machines building the same target into one shared folder
    at the same time are not supported.)
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.tmp") + r"(\d+)")
    removed = []
    if not path.parent.is_dir():
        return removed
    for candidate in sorted(path.parent.iterdir()):
        m = pattern.fullmatch(candidate.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        try:
            candidate.unlink()
        except FileNotFoundError:  # another build removed it first
            continue
        log.warning("removed %s, a partial build of %s left by process %s, which no longer runs",
                    candidate, path, m.group(1))
        removed.append(candidate)
    return removed


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a directory entry list) to disk. Directories: POSIX only."""
    try:
        fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    except OSError:
        if directory:  # e.g. Windows cannot open a directory; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def _raise_on_sigterm(what: Path) -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs, so that cleanup code runs.

    Only in the main thread (the only one where Python can install handlers) and only while
    SIGTERM has its default action: a program that installed its own handler, or ignores SIGTERM,
    keeps its choice. A second SIGTERM during the cleanup is ignored; the previous handler is
    restored on the way out.
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    owner = os.getpid()
    fired = []

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked child inherited this handler: die as by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if fired:
            return
        fired.append(signum)
        log.warning("SIGTERM while writing %s: removing the partial file and exiting", what)
        raise Terminated(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def create(path: str | os.PathLike, *, dataset: str, num_samples: int, sample_shape: tuple,
           dtype="float32", pipeline_version: str, params: dict | None = None,
           compression: str | None = None) -> Iterator[Writer]:
    """Open ``path`` for writing through a temporary file; rename it into place on success.

    On any exception, and on SIGTERM (raised as :class:`Terminated` in the main thread while the
    block runs), the temporary file is removed and ``path`` is left untouched. The complete file is
    fsync'ed before the rename. Temporary files of ``path`` left by dead processes are removed
    first (:func:`remove_stale_temporaries`).
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temp_name(path, os.getpid())
    with _raise_on_sigterm(path):
        f = None
        try:
            f = h5py.File(tmp, "w")
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["dataset"] = dataset
            f.attrs["pipeline_version"] = pipeline_version
            for key, value in sorted((params or {}).items()):
                f.attrs[f"param.{key}"] = json.dumps(value, sort_keys=True)
            f.create_dataset("x", shape=(num_samples, *sample_shape), dtype=dtype,
                             chunks=(1, *sample_shape), compression=compression)
            writer = Writer(f, path, num_samples, sample_shape, dtype)
            yield writer
            writer._finish()
            f.close()
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent, directory=True)
        except BaseException:
            if f is not None:
                f.close()
            tmp.unlink(missing_ok=True)
            raise


@dataclass
class Index:
    """The small per-sample arrays, attributes and splits of a dataset file, read eagerly.

    The sample array ``x`` is not read here: open it with :func:`open_samples` (lazily, in each
    DataLoader worker, since h5py handles cannot cross a fork or be pickled).
    """

    path: Path
    attrs: dict
    shape: tuple  # (N, C, T_max, V, M)
    dtype: np.dtype
    length: np.ndarray
    label: np.ndarray
    name: np.ndarray  # str
    subject: np.ndarray
    camera: np.ndarray
    setup: np.ndarray
    replication: np.ndarray
    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def params(self) -> dict:
        return {k[len("param."):]: json.loads(v) for k, v in self.attrs.items() if k.startswith("param.")}

    def split(self, split: str, part: str) -> np.ndarray:
        """Indices of ``part`` ('train' or 'test') of ``split``, or every sample for split 'all'."""
        if split == "all":
            return np.arange(self.shape[0])
        if split not in self.splits:
            raise KeyError(f"{self.path}: no split {split!r}; it has {sorted(self.splits)} (or 'all')")
        if part not in ("train", "test"):
            raise KeyError(f"split part must be 'train' or 'test', got {part!r}")
        return self.splits[split][part]


def read_index(path: str | os.PathLike) -> Index:
    """Read and validate everything but the samples. Errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise H5FormatError(f"{path}: no such dataset file (build it with `dvc repro` or `python -m harness prepare`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise H5FormatError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        if "x" not in f:
            raise H5FormatError(f"{path}: no /x sample array")
        x = f["x"]
        if x.ndim != 5:
            raise H5FormatError(f"{path}: /x has shape {x.shape}, expected 5 axes (N, C, T, V, M)")
        n = x.shape[0]
        arrays = {}
        for key in (*META_ARRAYS, "name"):
            if key not in f:
                raise H5FormatError(f"{path}: missing /{key}")
            arr = f[key][()]
            if arr.shape != (n,):
                raise H5FormatError(f"{path}: /{key} has shape {arr.shape}, expected ({n},) to match /x")
            arrays[key] = arr
        length = arrays["length"]
        if n and (length.min() < 0 or length.max() > x.shape[2]):
            raise H5FormatError(f"{path}: /length outside 0..{x.shape[2]}")
        splits = {}
        for split, grp in f.get("splits", {}).items():
            splits[split] = {}
            for part in ("train", "test"):
                if part not in grp:
                    raise H5FormatError(f"{path}: split {split} has no {part} indices")
                idx = grp[part][()]
                if idx.size and (idx.min() < 0 or idx.max() >= n):
                    raise H5FormatError(f"{path}: split {split}/{part} indexes outside 0..{n - 1}")
                splits[split][part] = idx
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        return Index(path=path, attrs=attrs, shape=tuple(x.shape), dtype=x.dtype,
                     length=arrays["length"].astype(np.int64), label=arrays["label"].astype(np.int64),
                     name=np.array([s.decode() for s in arrays["name"]]),
                     subject=arrays["subject"], camera=arrays["camera"], setup=arrays["setup"],
                     replication=arrays["replication"], splits=splits)


def open_samples(path: str | os.PathLike) -> h5py.Dataset:
    """Open the /x array for reading. Call this lazily inside each worker."""
    return h5py.File(path, "r")["x"]


def read_sample(x: h5py.Dataset, i: int, length: int | None = None) -> np.ndarray:
    """Sample ``i`` as (C, T, V, M), cut to ``length`` frames when given. Rejects NaN."""
    t = x.shape[2] if length is None else int(length)
    out = x[i, :, :t]
    if not np.isfinite(out).all():
        raise H5FormatError(f"{x.file.filename}: sample {i} contains NaN or infinite values")
    return out
