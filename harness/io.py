"""Atomic writes and the score files of a run: the one place the harness writes results.

Every result file (checkpoint, metrics, scores, configs) is written to a temporary file in the
same directory, flushed and fsync'ed, then renamed over the target (``os.replace`` is atomic on
POSIX): a reader, a resumed run or a ``kill -9`` never sees a half-written file.

Score files. A run saves, for each evaluated part (``test``, ``val``) and epoch choice
(``last``, ``best``)::

    scores_<part>.npz        last epoch (the headline)
    scores_<part>_best.npz   best epoch on that part (labelled as such wherever it is used)

each an ``.npz`` with ``logits`` (N, num_class) float32 (raw logits, no softmax, as the official
``epoch1_test_score.pkl``), ``labels`` (N,) int64, ``names`` (N,) str (sample names) and ``epoch``
(0-dim int). ``scores_test.pkl`` is the official format: ``{sample_name: logits (num_class,)}``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

__all__ = ["Scores", "atomic_path", "load_scores", "read_json", "save_scores", "score_file", "write_bytes",
           "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync'ed and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # pragma: no cover - some filesystems refuse directory fsync
            pass
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


class Scores(NamedTuple):
    """Logits of one run on one part: what ensembles and reports read."""

    logits: np.ndarray  #: (N, num_class) float32 raw logits
    labels: np.ndarray  #: (N,) int64
    names: np.ndarray  #: (N,) str sample names
    epoch: int  #: 0-based epoch the logits come from


def score_file(part: str, best: bool = False) -> str:
    """The name of a run's score file of ``part`` (``test``, ``val``): the last epoch, or ``best``."""
    return f"scores_{part}_best.npz" if best else f"scores_{part}.npz"


def save_scores(path: str | os.PathLike, scores: Scores, *, official_pickle: str | os.PathLike | None = None) -> None:
    """Write ``scores`` as ``.npz`` (atomically); with ``official_pickle`` also ``{name: logits}``."""
    logits = np.asarray(scores.logits, dtype=np.float32)
    labels = np.asarray(scores.labels, dtype=np.int64)
    names = np.asarray(scores.names).astype(str)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or names.shape != labels.shape:
        raise ValueError(f"{path}: inconsistent scores: logits {logits.shape}, labels {labels.shape}, "
                         f"names {names.shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, logits=logits, labels=labels, names=names, epoch=np.int64(scores.epoch))
    if official_pickle is not None:
        if len(set(names.tolist())) != len(names):
            raise ValueError(f"{official_pickle}: sample names are not unique; the official pickle is keyed by name")
        write_bytes(official_pickle, pickle.dumps({n: row for n, row in zip(names.tolist(), logits)}))


def load_scores(path: str | os.PathLike) -> Scores:
    """Read a score file written by :func:`save_scores`, checking its arrays."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such score file")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"logits", "labels", "names", "epoch"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a score file (missing {sorted(missing)})")
            s = Scores(z["logits"], z["labels"], z["names"], int(z["epoch"]))
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: unreadable score file ({e})") from None
    if s.logits.ndim != 2 or s.labels.shape != (s.logits.shape[0],) or s.names.shape != s.labels.shape:
        raise ValueError(f"{path}: inconsistent arrays: logits {s.logits.shape}, labels {s.labels.shape}, "
                         f"names {s.names.shape}")
    if not np.isfinite(s.logits).all():
        raise ValueError(f"{path}: logits contain NaN or inf")
    return s
