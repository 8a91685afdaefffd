"""NW-UCLA (Northwestern-UCLA Multiview Action 3D) in CTR-GCN's ``all_sqe`` JSON form -> HDF5.

Input: a directory holding ``aAA_sSS_eEE_vVV.json`` files (searched recursively), or the bundled
``all_sqe.tar.gz`` read in place (no unpacking). Each JSON is
``{"file_name": "a01_s01_e00_v01", "skeletons": [T][20][3], "label": 1..10}``.

Output (via :mod:`data.h5`): ``x`` of shape (N, 3, T_max, 20, 1) float64, the raw skeletons in
metres transposed to (C, T, V, M) and zero-padded to the longest sequence. float64 because the
official feeder works on the JSON's float64 values throughout and its test-mode output matches
ours exactly only without an intermediate float32 rounding. No normalisation is stored: the
feeder does it per sample, as the official code does.

Parsing is strict. Anything the official feeder would silently accept or crash on later (a ragged
or NaN skeleton, a label that disagrees with the file name) raises :class:`UclaFormatError` naming
the file, before any output is written.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from data import h5

PIPELINE_VERSION = "ucla-1"
NUM_JOINTS = 20
# The ten actions of NW-UCLA (a07 and a10 do not exist); labels 0..9 follow this order, which is
# also the order of the JSON "label" field (1..10).
ACTIONS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)
ACTION_TO_LABEL: dict[int, int] = {a: i for i, a in enumerate(ACTIONS)}
VIEWS: tuple[int, ...] = (1, 2, 3)
# Cross-view protocol (CTR-GCN and all its descendants): train on views 1 and 2, test on view 3.
SPLITS: dict[str, dict[str, tuple[int, ...]]] = {"xview": {"train": (1, 2), "test": (3,)}}
NAME_RE = re.compile(r"a(\d{2})_s(\d{2})_e(\d{2})_v(\d{2})")


class UclaFormatError(ValueError):
    """A NW-UCLA input is missing or not in the ``all_sqe`` JSON format."""


@dataclass(frozen=True)
class UclaSample:
    """One parsed sequence. ``skeletons`` is (T, 20, 3) float64 as in the JSON."""

    name: str
    skeletons: np.ndarray
    label: int  # 0..9
    action: int  # AA of the name
    subject: int  # SS
    episode: int  # EE
    view: int  # VV


def parse_name(name: str, source: str | None = None) -> tuple[int, int, int, int]:
    """``(action, subject, episode, view)`` of ``aAA_sSS_eEE_vVV``; errors on anything else."""
    where = source or name
    m = NAME_RE.fullmatch(name)
    if m is None:
        raise UclaFormatError(f"{where}: file name {name!r} does not match aAA_sSS_eEE_vVV")
    action, subject, episode, view = (int(g) for g in m.groups())
    if action not in ACTION_TO_LABEL:
        raise UclaFormatError(f"{where}: unknown action a{action:02d} (known: {ACTIONS})")
    if view not in VIEWS:
        raise UclaFormatError(f"{where}: unknown view v{view:02d} (known: {VIEWS})")
    return action, subject, episode, view


def parse_json(raw: bytes | str, source: str) -> UclaSample:
    """Parse one JSON file's content; ``source`` is its path (the name is taken from its stem)."""
    name = Path(source).name.removesuffix(".json")
    action, subject, episode, view = parse_name(name, source)
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UclaFormatError(f"{source}: not valid JSON (truncated or corrupt?): {e}") from e
    if not isinstance(obj, dict):
        raise UclaFormatError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    if "skeletons" not in obj:
        raise UclaFormatError(f"{source}: missing key 'skeletons' (keys: {sorted(obj)})")
    if "file_name" in obj and obj["file_name"] != name:
        raise UclaFormatError(f"{source}: 'file_name' is {obj['file_name']!r} but the file is {name!r}")
    label = ACTION_TO_LABEL[action]
    if "label" in obj and obj["label"] != label + 1:
        raise UclaFormatError(f"{source}: 'label' is {obj['label']!r} but action a{action:02d} is label "
                              f"{label + 1} (1-based)")
    try:
        skel = np.asarray(obj["skeletons"], dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise UclaFormatError(f"{source}: 'skeletons' is not a (T, 20, 3) array of numbers ({e})") from e
    if skel.ndim != 3 or skel.shape[0] < 1 or skel.shape[1:] != (NUM_JOINTS, 3):
        raise UclaFormatError(f"{source}: 'skeletons' has shape {skel.shape}, expected (T, 20, 3) with T >= 1")
    if not np.isfinite(skel).all():
        bad = np.argwhere(~np.isfinite(skel))[0]
        raise UclaFormatError(f"{source}: 'skeletons' has NaN or infinite values (first at frame {bad[0]}, "
                              f"joint {bad[1]})")
    return UclaSample(name=name, skeletons=skel, label=label, action=action, subject=subject,
                      episode=episode, view=view)


def _is_targz(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".tar.gz") or path.name.endswith(".tgz"))


def iter_raw(raw: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """Yield ``(source, content)`` for every ``*.json`` under a directory or inside a ``.tar.gz``."""
    raw = Path(raw)
    if _is_targz(raw):
        try:
            with tarfile.open(raw, "r:gz") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".json"):
                        f = tar.extractfile(member)
                        assert f is not None  # a regular file always has content
                        yield f"{raw}:{member.name}", f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UclaFormatError(f"{raw}: not a readable .tar.gz archive ({e})") from e
    elif raw.is_dir():
        for path in sorted(raw.rglob("*.json")):
            if path.is_file():
                yield str(path), path.read_bytes()
    else:
        raise UclaFormatError(f"{raw}: no such directory or .tar.gz archive of NW-UCLA JSON files")


def load(raw: str | os.PathLike, *, progress: bool = False) -> list[UclaSample]:
    """Parse every JSON under ``raw``, sorted by name. Errors on none found or duplicate names."""
    items = iter_raw(raw)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="NW-UCLA json", unit="file", total=None)
    samples: dict[str, UclaSample] = {}
    sources: dict[str, str] = {}
    for source, content in items:
        s = parse_json(content, source)
        if s.name in samples:
            raise UclaFormatError(f"{source}: duplicate sample {s.name!r} (also {sources[s.name]})")
        samples[s.name] = s
        sources[s.name] = source
    if not samples:
        raise UclaFormatError(f"{raw}: no NW-UCLA *.json files found")
    return [samples[k] for k in sorted(samples)]


def split_indices(samples: list[UclaSample], split: str = "xview") -> dict[str, np.ndarray]:
    """Indices of the train and test parts of ``split`` (by view)."""
    views = np.array([s.view for s in samples])
    return {part: np.flatnonzero(np.isin(views, vs)) for part, vs in SPLITS[split].items()}


def prepare(raw: str | os.PathLike, out: str | os.PathLike, *, compression: str | None = None,
            progress: bool = True) -> Path:
    """Build the NW-UCLA HDF5 file ``out`` from ``raw`` (directory or ``.tar.gz``); returns ``out``.

    Everything is parsed and checked before the file is created, so a bad input leaves no output
    (and :func:`data.h5.create` writes through a temporary file in any case).
    """
    samples = load(raw, progress=progress)
    t_max = max(s.skeletons.shape[0] for s in samples)
    params = {"actions": list(ACTIONS), "splits": {k: {p: list(v) for p, v in d.items()} for k, d in SPLITS.items()}}
    out = Path(out)
    with h5.create(out, dataset="ucla", num_samples=len(samples), sample_shape=(3, t_max, NUM_JOINTS, 1),
                   dtype="float64", pipeline_version=PIPELINE_VERSION, params=params,
                   compression=compression) as w:
        for i, s in enumerate(samples):
            x = s.skeletons.transpose(2, 0, 1)[..., None]  # (T, V, C) -> (C, T, V, 1)
            w.write(i, x, name=s.name, length=s.skeletons.shape[0], label=s.label, subject=s.subject,
                    camera=s.view, setup=-1, replication=s.episode)
        for split in SPLITS:
            w.add_split(split, **split_indices(samples, split))
    return out


def load_val_list(path: str | os.PathLike) -> list[dict]:
    """CTR-GCN's ``val_label.pkl``: a list of ``{file_name, length, label 1..10}`` (plain builtins)."""
    with open(path, "rb") as f:
        entries = pickle.load(f)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UclaFormatError(f"{path}: expected a list of dicts")
    return entries


def check_val_list(h5_path: str | os.PathLike, val_label_path: str | os.PathLike, split: str = "xview") -> None:
    """Check that the test part of ``split`` is exactly CTR-GCN's val list: names, labels, lengths.

    Raises :class:`UclaFormatError` listing the first differences; returns None when they agree.
    """
    index = h5.read_index(h5_path)
    ours = {index.name[i]: (int(index.label[i]), int(index.length[i])) for i in index.split(split, "test")}
    theirs = {e["file_name"]: (int(e["label"]) - 1, int(e["length"])) for e in load_val_list(val_label_path)}
    problems = [f"{n}: only in {val_label_path}" for n in sorted(theirs.keys() - ours.keys())]
    problems += [f"{n}: only in {h5_path}" for n in sorted(ours.keys() - theirs.keys())]
    problems += [f"{n}: (label, length) {ours[n]} here, {theirs[n]} in the val list"
                 for n in sorted(ours.keys() & theirs.keys()) if ours[n] != theirs[n]]
    if problems:
        raise UclaFormatError(f"{h5_path} {split}/test disagrees with {val_label_path} "
                              f"({len(problems)} problems): " + "; ".join(problems[:10]))
