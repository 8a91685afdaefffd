"""NTU RGB+D ``.skeleton`` files -> the official CTR-GCN arrays -> one HDF5 file per variant.

This module reproduces, array for array (float32, ``np.array_equal``), what the official
CTR-GCN preprocessing scripts produce (``data/ntu{,120}/get_raw_skes_data.py``,
``get_raw_denoised_data.py``, ``seq_transformation.py``; the same scripts ship with CSRE,
Hyperformer, BlockGCN, SkeletonGCL and FR-Head). It was written from their behaviour, not from
their code, and is checked against fixtures produced by running them
(``$CSRE_REFERENCE_DIR/ntu_preprocess``).

Pipeline for one file (``process_file``)::

    parse_skeleton -> denoise -> translate -> pad -> to_ctvm
    .skeleton         (T, 75|150)  same shape   (300, 150)  (C=3, T=300, V=25, M=2)

Every quirk of the official scripts is reproduced by default. All of them, explicitly:

Parsing (``parse_skeleton``)
  1. Only the first 3 numbers of each joint line (camera-space x, y, z in metres) are used, parsed
     as float32 the way NumPy parses a decimal string into float32: decimal -> float64 -> float32
     (double rounding, which can differ from a direct correctly rounded float32 parse).
  2. Frames with 0 bodies are dropped, and the remaining frames are renumbered 0..T-1.
  3. Bodies are keyed by bodyID (the first token of the body-info line), in order of first
     appearance in the file.
  4. A body's frame interval is [first frame, first frame + number of its frames - 1]: its frames
     are counted consecutively, so a body that disappears and comes back has its later frames
     moved earlier (gaps are ignored).
  5. Only when a file has more than one bodyID, each body gets a "motion":
     ``sum(var(joints.reshape(-1, 3), axis=0))`` over all its frames and joints, in float32.
Denoising (``denoise``)
  6. One bodyID in the file: the output is (T, 75) and no frame is ever removed (not even frames
     whose coordinates are all zero).
  7. Length rule (multi-body files): bodies with ``<= min_frames`` (11) frames are dropped.
  8. Spread rule (only if more than one body is left): a frame of a body is noisy when
     ``x.max() - x.min() > noise_spread_ratio * (y.max() - y.min())`` over its 25 joints. The
     product and comparison are float32 (NumPy >= 2 semantics; NumPy 1.x evaluated the product in
     float64, which can flip frames exactly on the border). A body is dropped when
     ``noisy / frames >= noise_frame_ratio`` (0.69754); otherwise, if it has any noisy frame, its
     motion becomes ``min(motion, motion over its non-noisy frames)``.
  9. The spread rule visits bodies in file order and stops as soon as one body is left, so of
     two equally noisy bodies the second is kept.
 10. One body left after rule 7 or 8: (T, 75) with that body, and then all-zero rows (frames where
     it is absent) are removed.
 11. The motion-range rule of the script (0.089925 .. 2) is dead code (after a ``return``) and is
     not applied.
 12. Two or more bodies left: sorted by motion, largest first (stable: ties keep file order).
     Actor 1 = the first. Each further body goes to the actor-1 slot if its interval does not
     overlap actor 1's, else to the actor-2 slot if it does not overlap actor 2's, else it is
     discarded. Overlap means ``min(end_a, end_b) - max(start_a, start_b) > 0``: intervals
     sharing exactly one frame do not overlap, and the later body overwrites that shared frame.
 13. A slot's interval grows to the hull of the bodies placed in it (gaps inside are ignored).
 14. The actor-2 slot starts as the virtual interval [0, 0], and its start therefore stays 0
     after bodies are added: a body can "overlap both slots" although it overlaps no actor-2
     body.
 15. The output is (T, 150) (actor 1 in columns 0:75, actor 2 in 75:150, even if actor 2 stayed
     empty). Rows whose 150 values *sum* to 0 (float32) are removed: an all-zero test by sum.
 16. If no body survives, or a bodyID occurs twice in one frame, the official scripts crash;
     here :class:`DenoiseError` is raised instead.
Sequence transformation (``translate``, ``pad``)
 17. The origin is joint 2 (spine middle, columns 3:6) of actor 1 in the first frame where actor 1
     has any non-zero value; it is subtracted from every joint of both actors in every frame.
 18. For (T, 150) sequences, the frames where an actor was missing (its 75 values *summed* to 0
     before translation) are set back to 0 for that actor. (T, 75) sequences get no re-zeroing.
 19. The per-frame scale normalisation (``frame_translation``) is defined but not called, and is
     not applied here.
 20. Padding with zero rows to ``max_frames`` (300) x 150. NTU60: a (T, 75) sequence fills
     columns 0:75 and actor 2 is zero. NTU120: a (T, 75) sequence is copied into both halves.
     (T, 150) sequences are identical in both variants, also when actor 2 stayed empty.
 21. The script pads to the longest denoised sequence of the dataset, which is 300 for NTU; here
     the length is fixed to ``max_frames`` and a longer sequence is an error.
 22. The valid length of a sample is the number of denoised rows T.
Samples and splits (``prepare``)
 23. Samples on the official missing-skeleton lists (302 for NTU60, 535 for NTU120) are skipped;
     NTU60 is setups S001-S017, NTU120 everything; samples are ordered by name.
 24. Splits: NTU60 xsub (20 training subjects) and xview (training cameras 2, 3); NTU120 xsub
     (53 training subjects) and xset (even setups train).

Deliberate departures (none changes any array the official scripts produce): malformed files
are rejected with a :class:`SkeletonFormatError` naming the file and line (the scripts silently
misread some of them), and a non-finite x, y or z is rejected. The other 9 numbers of a joint line
(depth/colour coordinates, orientation, tracking state) must be present and look like numbers but
may be non-finite, because Kinect's coordinate mapper writes -inf for points it cannot map and the
pipeline never uses them. Every field of every joint line is syntax-checked: on the fast path by
one bulk NumPy parse of all 12 columns (Kinect's canonical single-space layout), otherwise token by
token, which also names the first bad line and field.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
from collections import deque
from contextlib import closing
from dataclasses import asdict, dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator, Literal, NamedTuple, Sequence

import numpy as np

log = logging.getLogger(__name__)

PIPELINE_VERSION = "ntu-ctrgcn-1"
VARIANTS = ("ntu60", "ntu120")
Variant = Literal["ntu60", "ntu120"]
SPLITS: dict[str, tuple[str, str]] = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub", "xset")}
NUM_JOINTS = 25
JOINT_FIELDS = 12
BODY_INFO_FIELDS = 10
SAMPLE_SHAPE = (3, 300, NUM_JOINTS, 2)  # (C, T, V, M) for the default max_frames

NTU60_XSUB_TRAIN_SUBJECTS = frozenset(
    {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38})
NTU60_XVIEW_TRAIN_CAMERAS = frozenset({2, 3})
NTU120_XSUB_TRAIN_SUBJECTS = NTU60_XSUB_TRAIN_SUBJECTS | frozenset(
    {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
     89, 91, 92, 93, 94, 95, 97, 98, 100, 103})
NTU60_MAX_SETUP = 17
NTU60_MAX_ACTION = 60
# Sizes of the full datasets, for a warning when building from a partial download.
OFFICIAL_SAMPLE_COUNT = {"ntu60": 56_578, "ntu120": 113_945}

META_DIR = Path(__file__).resolve().parent / "meta"
MISSING_LISTS = {"ntu60": META_DIR / "NTU_RGBD_samples_with_missing_skeletons.txt",
                 "ntu120": META_DIR / "NTU_RGBD120_samples_with_missing_skeletons.txt"}

DOWNLOAD_HINT = (
    "Download the NTU RGB+D skeletons from the ROSE Lab "
    "(https://rose1.ntu.edu.sg/dataset/actionRecognition/, free registration): "
    "nturgbd_skeletons_s001_to_s017.zip (NTU RGB+D 60) and, for NTU120, also "
    "nturgbd_skeletons_s018_to_s032.zip. Unpack them into data/raw/ntu/nturgb+d_skeletons/ and "
    "data/raw/ntu/nturgb+d_skeletons120/ respectively (the folders hold the *.skeleton files).")

_NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
# A decimal number as the official scripts' NumPy float parse accepts it (plus nan/inf, which are
# then checked separately); used only to explain a line the fast parser rejected.
_NUMBER = r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|infinity|nan)"
_NUMBER_RE = re.compile(_NUMBER, re.I)
_BODY_INFO_RE = re.compile(rf"\s*{_NUMBER}(?:\s+{_NUMBER}){{9}}\s*", re.I)


# --------------------------------------------------------------------------- errors

class SkeletonFormatError(ValueError):
    """A ``.skeleton`` file is not in the Kinect v2 text format. The message names file and line."""


class EmptySkeletonError(SkeletonFormatError):
    """A well-formed file in which no frame has a body (the official lists exclude such samples)."""


class DenoiseError(ValueError):
    """A sequence the official scripts cannot handle (they crash with an IndexError or similar)."""


class RawDataMissingError(FileNotFoundError):
    """The raw NTU RGB+D skeleton folder is absent or holds no usable ``.skeleton`` files."""


# --------------------------------------------------------------------------- parameters

@dataclass(frozen=True)
class DenoiseParams:
    """Thresholds of the official denoising and transformation; the defaults are the official ones.

    Fields are plain ints and floats so that the command line can expose each one as an option.
    """

    min_frames: int = 11               # bodies with <= this many frames are noise (length rule)
    noise_spread_ratio: float = 0.8    # frame noisy when x-spread > ratio * y-spread
    noise_frame_ratio: float = 0.69754  # body dropped when noisy/frames >= this
    max_frames: int = 300              # padded sequence length T
    origin_joint: int = 1              # 0-based joint whose position in actor 1's first frame is the origin

    def __post_init__(self):
        if self.min_frames < 0 or self.max_frames < 1:
            raise ValueError(f"min_frames must be >= 0 and max_frames >= 1, got {self}")
        if not 0 <= self.origin_joint < NUM_JOINTS:
            raise ValueError(f"origin_joint must be in 0..{NUM_JOINTS - 1}, got {self.origin_joint}")


# --------------------------------------------------------------------------- parsing

@dataclass
class Body:
    """One bodyID of a file: its joints in the order its frames appear."""

    body_id: str
    joints: np.ndarray  # (n_frames, 25, 3) float32
    first_frame: int    # index among the kept (non-empty) frames

    @property
    def n_frames(self) -> int:
        return int(self.joints.shape[0])

    @property
    def interval(self) -> tuple[int, int]:
        """[start, end], both inclusive, counted consecutively from the first frame (quirk 4)."""
        return self.first_frame, self.first_frame + self.n_frames - 1


@dataclass
class Skeleton:
    """A parsed ``.skeleton`` file."""

    name: str
    path: str
    n_frames_in_file: int
    empty_frames: list[int]  # file-frame indices of frames with 0 bodies (dropped)
    bodies: list[Body]       # in order of first appearance

    @property
    def n_frames(self) -> int:
        """Frames left after dropping the empty ones (T of the undenoised sequence)."""
        return self.n_frames_in_file - len(self.empty_frames)


class _Lines:
    """The lines of one file, and errors located in it (``file:line: what was expected``)."""

    def __init__(self, lines: list[str], where: str):
        self.lines = lines
        self.where = where

    def error(self, index: int, what: str) -> SkeletonFormatError:
        return SkeletonFormatError(f"{self.where}:{index + 1}: {what}")

    def count(self, index: int, expected: str) -> int:
        """The non-negative integer on line ``index`` (``expected`` names it in errors)."""
        if index >= len(self.lines):
            raise self.error(index, f"unexpected end of file: expected {expected}")
        text = self.lines[index].strip()
        if not (text.isdigit() and text.isascii()):
            raise self.error(index, f"expected {expected} (a non-negative integer), got {text[:40]!r}")
        return int(text)


def _read_text(path: Path, data: bytes | None) -> list[str]:
    """The file's lines (CRLF or LF). Only ASCII is valid in the Kinect text format."""
    if data is None:
        data = path.read_bytes()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SkeletonFormatError(f"{path}:{line}: non-ASCII byte 0x{data[e.start]:02x}; "
                                  "expected a Kinect v2 text skeleton file") from None
    return text.splitlines()


def _check_body_info(cursor: _Lines, index: int, body: int, frame: int, n_frames: int) -> str:
    """Validate a body-info line (10 numbers); return its bodyID (the first token)."""
    if index >= len(cursor.lines):
        raise cursor.error(index, f"unexpected end of file: expected the body-info line of body {body} "
                                  f"in frame {frame} of {n_frames}")
    line = cursor.lines[index]
    if _BODY_INFO_RE.fullmatch(line):  # fast path: one regex call for the whole line
        return line.split(None, 1)[0]
    tokens = line.split()
    if len(tokens) != BODY_INFO_FIELDS:
        raise cursor.error(index, f"expected {BODY_INFO_FIELDS} numbers in a body-info line (body {body} in "
                                  f"frame {frame} of {n_frames}), got {len(tokens)}")
    for k, token in enumerate(tokens):
        if not _NUMBER_RE.fullmatch(token):
            raise cursor.error(index, f"expected a number in field {k + 1} of a body-info line, got {token[:40]!r}")
    return tokens[0]


def _walk_structure(cursor: _Lines) -> tuple[int, list[int], list[str], list[int], list[int]]:
    """Read every structural line; return where the 25-line joint blocks are.

    Returns (declared frames, empty frames, bodyID per block, kept-frame index per block,
    first line index per block). The joint lines themselves are parsed later in one bulk call.
    """
    lines = cursor.lines
    if not lines:
        raise SkeletonFormatError(f"{cursor.where}:1: expected the frame count, but the file is empty")
    n_frames = cursor.count(0, "the frame count")
    empty: list[int] = []
    ids: list[str] = []
    frames: list[int] = []
    starts: list[int] = []
    kept = -1
    pos = 1
    for f in range(n_frames):
        n_bodies = cursor.count(pos, f"the body count of frame {f + 1} of {n_frames}")
        pos += 1
        if n_bodies == 0:
            empty.append(f)
            continue
        kept += 1
        for b in range(n_bodies):
            ids.append(_check_body_info(cursor, pos, b + 1, f + 1, n_frames))
            n_joints = cursor.count(pos + 1, f"the joint count of body {b + 1} in frame {f + 1} of {n_frames}")
            if n_joints != NUM_JOINTS:
                raise cursor.error(pos + 1, f"expected joint count {NUM_JOINTS}, got {n_joints}")
            pos += 2
            if pos + NUM_JOINTS > len(lines):
                raise cursor.error(len(lines), f"unexpected end of file: expected {NUM_JOINTS} joint lines of "
                                               f"body {b + 1} in frame {f + 1} of {n_frames}, the file has "
                                               f"{len(lines) - pos}")
            frames.append(kept)
            starts.append(pos)
            pos += NUM_JOINTS
    for index in range(pos, len(lines)):
        if lines[index].strip():
            raise cursor.error(index, f"expected end of file after the {n_frames} declared frames, "
                                      f"got {lines[index].strip()[:40]!r}")
    return n_frames, empty, ids, frames, starts


def _explain_joint_lines(cursor: _Lines, starts: list[int]) -> SkeletonFormatError | None:
    """The first joint line that is not 12 numbers, or None (slow path, only off the fast path)."""
    for start in starts:
        for index in range(start, start + NUM_JOINTS):
            tokens = cursor.lines[index].split()
            if len(tokens) != JOINT_FIELDS:
                return cursor.error(index, f"expected {JOINT_FIELDS} numbers in a joint line, got {len(tokens)}")
            for k, token in enumerate(tokens):
                if not _NUMBER_RE.fullmatch(token):
                    return cursor.error(index, f"expected a number in field {k + 1} of a joint line, "
                                               f"got {token[:40]!r}")
    return None


def _load_joint_lines(block_lines: list[str], delimiter: str | None) -> np.ndarray | None:
    """All 12 numbers of every joint line as float64, or None where NumPy refuses the text.

    NumPy's text-to-float conversion accepts exactly what ``_NUMBER`` describes (plus surrounding
    whitespace inside a field), so a successful bulk parse of every column is a full syntax check.
    """
    try:
        values = np.loadtxt(block_lines, dtype=np.float64, comments=None, delimiter=delimiter, ndmin=2)
    except ValueError:
        return None
    return values if values.shape == (len(block_lines), JOINT_FIELDS) else None


def _parse_joint_blocks(cursor: _Lines, starts: list[int]) -> np.ndarray:
    """All joint blocks as (n_blocks, 25, 3) float32 x, y, z.

    Every joint line must hold 12 numbers, each of them syntactically a number (also the 9 the
    pipeline never uses). x, y, z are parsed decimal -> float64 -> float32 (as NumPy parses the
    official scripts' strings) and must be finite. Fast path: one bulk parse of every field of
    every line, split at single spaces (Kinect's canonical layout); a block it refuses (other
    whitespace, or an error) is checked token by token, which explains the first bad field, and
    is otherwise parsed split at any whitespace like the official reader.
    """
    block_lines = list(chain.from_iterable(cursor.lines[s:s + NUM_JOINTS] for s in starts))
    values = _load_joint_lines(block_lines, " ")
    if values is None:
        problem = _explain_joint_lines(cursor, starts)
        if problem:
            raise problem
        values = _load_joint_lines(block_lines, None)
        if values is None:  # unreachable while NumPy accepts what _NUMBER_RE does
            raise SkeletonFormatError(f"{cursor.where}: joint lines that NumPy cannot parse although "
                                      f"every field looks like a number")
    with np.errstate(over="ignore"):  # out-of-range values become inf and are rejected below
        xyz = values[:, :3].astype(np.float32)
    finite = np.isfinite(xyz)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        index = starts[row // NUM_JOINTS] + row % NUM_JOINTS
        token = cursor.lines[index].split()[col]
        raise cursor.error(index, f"expected a finite joint coordinate in field {col + 1} of a joint line, "
                                  f"got {token!r}")
    return xyz.reshape(-1, NUM_JOINTS, 3)


def parse_skeleton(path: str | os.PathLike, data: bytes | None = None) -> Skeleton:
    """Parse a Kinect v2 ``.skeleton`` text file strictly (CRLF or LF line endings).

    Every structural line is checked (counts are integers, body-info lines have 10 numbers, each
    body has exactly 25 joint lines of 12 numbers, nothing but blank lines follows the declared
    frames); errors are :class:`SkeletonFormatError` with ``file:line: what was expected``.
    ``data`` (the file's bytes) may be given to parse without reading ``path``.
    """
    path = Path(path)
    cursor = _Lines(_read_text(path, data), str(path))
    n_frames, empty, ids, frames, starts = _walk_structure(cursor)
    if len(empty) == n_frames:
        raise EmptySkeletonError(f"{path}: none of its {n_frames} frames has a body; such samples are "
                                 "on the official missing-skeleton lists and must be skipped")
    xyz = _parse_joint_blocks(cursor, starts)
    blocks_of: dict[str, list[int]] = {}
    for block, body_id in enumerate(ids):
        blocks_of.setdefault(body_id, []).append(block)
    bodies = [Body(body_id, xyz[blocks], frames[blocks[0]]) for body_id, blocks in blocks_of.items()]
    return Skeleton(name=path.stem, path=str(path), n_frames_in_file=n_frames, empty_frames=empty,
                    bodies=bodies)


# --------------------------------------------------------------------------- denoising

def body_motion(joints: np.ndarray) -> np.float32:
    """Sum over x, y, z of the variance over all frames and joints, float32 (quirk 5)."""
    return np.sum(np.var(joints.reshape(-1, 3), axis=0))


def noisy_frames(joints: np.ndarray, spread_ratio: float) -> np.ndarray:
    """Boolean (n_frames,): x-spread > ratio * y-spread over the 25 joints, in float32 (quirk 8)."""
    x, y = joints[:, :, 0], joints[:, :, 1]
    return (x.max(axis=1) - x.min(axis=1)) > np.float32(spread_ratio) * (y.max(axis=1) - y.min(axis=1))


@dataclass
class Denoised:
    """Output of :func:`denoise`: the (T, 75 | 150) sequence and what happened to each body."""

    joints: np.ndarray
    motion: dict[str, np.float32] = field(default_factory=dict)  # multi-body files, after parsing
    dropped_bodies: list[dict] = field(default_factory=list)    # {"bodyID", "reason", ...}
    motion_updated_by_spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    main_actor_single: str | None = None           # multi-body file reduced to one body
    actor_slots: dict[str, list[str]] | None = None  # {"actor1": [...], "actor2": [...]}, placement order
    all_zero_frames_removed: int = 0


def _place(out: np.ndarray, body: Body, columns: slice, name: str) -> None:
    start, end = body.interval
    if end >= out.shape[0]:
        raise DenoiseError(f"{name}: bodyID {body.body_id} has {body.n_frames} frames but the sequence only "
                           f"{out.shape[0]} (it occurs twice in one frame); the official scripts crash here")
    out[start:end + 1, columns] = body.joints.reshape(-1, 75)


def _one_actor(body: Body, n_frames: int, name: str) -> np.ndarray:
    out = np.zeros((n_frames, 75), dtype=np.float32)
    _place(out, body, slice(0, 75), name)
    return out


def _drop_zero_sum_rows(joints: np.ndarray) -> tuple[np.ndarray, int]:
    """Remove rows whose values sum to 0 in float32 (quirk 10/15: an all-zero test by sum)."""
    keep = joints.sum(axis=1) != 0
    removed = int(keep.size - np.count_nonzero(keep))
    return (joints[keep] if removed else joints), removed


def _length_rule(bodies: list[Body], motion: dict, params: DenoiseParams, report: Denoised) -> list[Body]:
    kept = []
    for body in bodies:
        if body.n_frames <= params.min_frames:
            report.dropped_bodies.append({"bodyID": body.body_id, "reason": "length", "length": body.n_frames,
                                          "motion": float(motion[body.body_id])})
        else:
            kept.append(body)
    return kept


def _spread_rule(bodies: list[Body], motion: dict, params: DenoiseParams, report: Denoised) -> list[Body]:
    kept = list(bodies)
    for body in bodies:  # file order; stops as soon as one body is left (quirk 9)
        if len(kept) == 1:
            break
        noisy = noisy_frames(body.joints, params.noise_spread_ratio)
        n_noisy = int(np.count_nonzero(noisy))
        if n_noisy == 0:
            continue
        ratio = n_noisy / float(body.n_frames)
        old = motion[body.body_id]
        if ratio >= params.noise_frame_ratio:
            kept.remove(body)
            report.dropped_bodies.append({"bodyID": body.body_id, "reason": "spread", "noisy_ratio": ratio,
                                          "motion": float(old)})
        elif n_noisy < body.n_frames:  # (all frames noisy is only possible with a ratio threshold > 1)
            new = body_motion(body.joints[~noisy])
            motion[body.body_id] = new if new < old else old
            report.motion_updated_by_spread[body.body_id] = (float(old), float(motion[body.body_id]))
    return kept


def _assign_actors(ordered: list[Body], n_frames: int, name: str, report: Denoised) -> np.ndarray:
    """Greedy slot assignment in motion order (quirks 12-14); returns the (T, 150) array."""
    out = np.zeros((n_frames, 150), dtype=np.float32)
    first = ordered[0]
    _place(out, first, slice(0, 75), name)
    slots = {"actor1": [first.body_id], "actor2": []}
    start1, end1 = first.interval
    start2, end2 = 0, 0  # the virtual initial actor-2 interval
    for body in ordered[1:]:
        start, end = body.interval
        if min(end1, end) - max(start1, start) <= 0:
            _place(out, body, slice(0, 75), name)
            slots["actor1"].append(body.body_id)
            start1, end1 = min(start, start1), max(end, end1)
        elif min(end2, end) - max(start2, start) <= 0:
            _place(out, body, slice(75, 150), name)
            slots["actor2"].append(body.body_id)
            start2, end2 = min(start, start2), max(end, end2)
        else:
            report.dropped_bodies.append({"bodyID": body.body_id, "reason": "overlaps_both_actor_slots"})
    report.actor_slots = slots
    return out


def _where(skeleton: Skeleton) -> str:
    """How errors name a sample: its file path (its name when parsed from memory)."""
    return skeleton.path or skeleton.name


def denoise(skeleton: Skeleton, params: DenoiseParams = DenoiseParams()) -> Denoised:
    """The official ``get_raw_denoised_data`` for one parsed file (quirks 5-16)."""
    name, n_frames = _where(skeleton), skeleton.n_frames
    if len(skeleton.bodies) == 1:
        return Denoised(joints=_one_actor(skeleton.bodies[0], n_frames, name))
    motion = {b.body_id: body_motion(b.joints) for b in skeleton.bodies}
    report = Denoised(joints=np.zeros((0, 75), np.float32), motion=dict(motion))
    bodies = _length_rule(skeleton.bodies, motion, params, report)
    if len(bodies) > 1:
        bodies = _spread_rule(bodies, motion, params, report)
    if not bodies:
        raise DenoiseError(f"{name}: every bodyID has <= {params.min_frames} frames; nothing is left to "
                           "denoise (the official scripts crash on such a file)")
    if len(bodies) == 1:
        report.main_actor_single = bodies[0].body_id
        joints = _one_actor(bodies[0], n_frames, name)
    else:
        ordered = sorted(bodies, key=lambda b: motion[b.body_id], reverse=True)
        joints = _assign_actors(ordered, n_frames, name, report)
    report.joints, report.all_zero_frames_removed = _drop_zero_sum_rows(joints)
    return report


# --------------------------------------------------------------------------- transformation

def translate(joints: np.ndarray, params: DenoiseParams = DenoiseParams(), name: str = "") -> np.ndarray:
    """The official ``seq_translation`` (quirks 17-18) on a (T, 75 | 150) sequence; returns a copy.

    ``name`` (the sample's file path, as :func:`process_skeleton` passes it) starts error messages.
    """
    two = joints.shape[1] == 150
    if two:
        missing1 = joints[:, :75].sum(axis=1) == 0
        missing2 = joints[:, 75:].sum(axis=1) == 0
    present = np.flatnonzero((joints[:, :75] != 0).any(axis=1))
    if present.size == 0:
        raise DenoiseError(f"{name}: actor 1 is zero in every frame, so there is no origin "
                           "(the official scripts crash here)")
    j = params.origin_joint
    origin = joints[present[0], 3 * j:3 * j + 3].copy()
    out = joints - np.tile(origin, joints.shape[1] // 3)
    if two:
        out[missing1, :75] = 0
        out[missing2, 75:] = 0
    return out


def pad(joints: np.ndarray, variant: Variant, params: DenoiseParams = DenoiseParams(), name: str = "") -> np.ndarray:
    """The official ``align_frames`` (quirk 20): zero rows up to (max_frames, 150). ``name``: as in
    :func:`translate`."""
    _check_variant(variant)
    t = joints.shape[0]
    if t > params.max_frames:
        raise DenoiseError(f"{name}: {t} frames after denoising, more than max_frames={params.max_frames}")
    out = np.zeros((params.max_frames, 150), dtype=np.float32)
    if joints.shape[1] == 150:
        out[:t] = joints
    else:
        out[:t, :75] = joints
        if variant == "ntu120":
            out[:t, 75:] = joints
    return out


def to_ctvm(final: np.ndarray) -> np.ndarray:
    """(T, 150) official rows -> (C=3, T, V=25, M=2): rows are [actor][joint][xyz]."""
    t = final.shape[0]
    return np.ascontiguousarray(final.reshape(t, 2, NUM_JOINTS, 3).transpose(3, 0, 2, 1))


def from_ctvm(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ctvm`: (3, T, 25, 2) -> (T, 150)."""
    return np.ascontiguousarray(x.transpose(1, 3, 2, 0)).reshape(x.shape[1], 150)


# --------------------------------------------------------------------------- one file

@dataclass
class SampleReport:
    """Everything :func:`process_file` learnt about one sample, for tests and debugging."""

    skeleton: Skeleton
    denoised: Denoised
    final: np.ndarray  # (max_frames, 150) float32, the official row layout

    @property
    def name(self) -> str:
        return self.skeleton.name

    @property
    def denoised_joints(self) -> np.ndarray:
        return self.denoised.joints

    @property
    def valid_frames(self) -> int:
        return int(self.denoised.joints.shape[0])

    @property
    def dropped_bodies(self) -> list[dict]:
        return self.denoised.dropped_bodies

    @property
    def actor_slots(self) -> dict[str, list[str]] | None:
        return self.denoised.actor_slots

    def bodies(self) -> list[dict]:
        """Per bodyID: n_frames, interval and motion (None for single-body files), file order."""
        return [{"bodyID": b.body_id, "n_frames": b.n_frames, "interval": list(b.interval),
                 "motion": (float(self.denoised.motion[b.body_id]) if self.denoised.motion else None)}
                for b in self.skeleton.bodies]


class Processed(NamedTuple):
    x: np.ndarray       # (3, max_frames, 25, 2) float32, (C, T, V, M)
    length: int         # valid frames; frames past it are zero
    info: SampleReport


def process_skeleton(skeleton: Skeleton, variant: Variant, params: DenoiseParams = DenoiseParams()) -> Processed:
    """Denoise, translate and pad one parsed file."""
    den = denoise(skeleton, params)
    where = _where(skeleton)
    final = pad(translate(den.joints, params, where), variant, params, where)
    return Processed(to_ctvm(final), int(den.joints.shape[0]), SampleReport(skeleton, den, final))


def process_file(path: str | os.PathLike, variant: Variant, params: DenoiseParams = DenoiseParams()) -> Processed:
    """One ``.skeleton`` file -> (x (3, 300, 25, 2) float32, valid length, report)."""
    return process_skeleton(parse_skeleton(path), variant, params)


# --------------------------------------------------------------------------- names and splits

@dataclass(frozen=True)
class SampleName:
    """The fields of an NTU sample name SsssCcccPpppRrrrAaaa (all 1-based as in the name)."""

    setup: int
    camera: int
    subject: int
    replication: int
    action: int

    @property
    def label(self) -> int:
        """0-based action label."""
        return self.action - 1


def parse_name(name: str) -> SampleName:
    """``"S001C002P003R002A013"`` (a file stem) -> its fields; ValueError if not an NTU name."""
    m = _NAME_RE.fullmatch(name)
    if not m:
        raise ValueError(f"{name!r} is not an NTU RGB+D sample name (SsssCcccPpppRrrrAaaa)")
    return SampleName(*(int(g) for g in m.groups()))


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def in_variant(sample: SampleName, variant: Variant) -> bool:
    """NTU60 is setups 1..17 (actions 1..60); NTU120 is every sample."""
    _check_variant(variant)
    if variant == "ntu60":
        return sample.setup <= NTU60_MAX_SETUP and sample.action <= NTU60_MAX_ACTION
    return True


def is_train(sample: SampleName, variant: Variant, split: str) -> bool:
    """Whether a sample is in the training part of ``split``; everything else is test."""
    _check_variant(variant)
    if split not in SPLITS[variant]:
        raise ValueError(f"{variant} has splits {SPLITS[variant]}, not {split!r}")
    if split == "xsub":
        subjects = NTU60_XSUB_TRAIN_SUBJECTS if variant == "ntu60" else NTU120_XSUB_TRAIN_SUBJECTS
        return sample.subject in subjects
    if split == "xview":
        return sample.camera in NTU60_XVIEW_TRAIN_CAMERAS
    return sample.setup % 2 == 0  # xset


def split_indices(samples: Sequence[SampleName], variant: Variant) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (train indices, test indices)} for the variant's two splits, ascending."""
    result = {}
    for split in SPLITS[variant]:
        train = np.array([is_train(s, variant, split) for s in samples], dtype=bool)
        result[split] = (np.flatnonzero(train), np.flatnonzero(~train))
    return result


def missing_samples(variant: Variant) -> frozenset[str]:
    """Names on the official missing-skeleton list of the variant (302 for NTU60, 535 for NTU120)."""
    _check_variant(variant)
    text = MISSING_LISTS[variant].read_text()
    return frozenset(line.strip() for line in text.splitlines() if _NAME_RE.fullmatch(line.strip()))


# --------------------------------------------------------------------------- dataset build

def find_skeleton_files(raw_dirs: str | os.PathLike | Iterable[str | os.PathLike],
                        variant: Variant) -> list[Path]:
    """The variant's ``*.skeleton`` files under ``raw_dirs`` (recursive), by name, minus the
    official missing-skeleton samples. Raises :class:`RawDataMissingError` with download
    instructions when a folder is absent or nothing usable is found."""
    _check_variant(variant)
    dirs = [Path(raw_dirs)] if isinstance(raw_dirs, (str, os.PathLike)) else [Path(d) for d in raw_dirs]
    if not dirs:
        raise RawDataMissingError(f"no raw NTU folder given. {DOWNLOAD_HINT}")
    for d in dirs:
        if not d.is_dir():
            raise RawDataMissingError(f"raw NTU skeleton folder {d} does not exist. {DOWNLOAD_HINT}")
    found: dict[str, Path] = {}
    for d in dirs:
        for path in d.rglob("*.skeleton"):
            if path.stem in found and found[path.stem].resolve() != path.resolve():
                raise ValueError(f"sample {path.stem} found twice: {found[path.stem]} and {path}")
            found[path.stem] = path
    bad = sorted(n for n in found if not _NAME_RE.fullmatch(n))
    if bad:
        raise ValueError(f"{len(bad)} .skeleton files under {', '.join(map(str, dirs))} are not named like NTU "
                         f"samples (SsssCcccPpppRrrrAaaa), e.g. {found[bad[0]]}")
    in_var = {n: p for n, p in found.items() if in_variant(parse_name(n), variant)}
    missing = missing_samples(variant)
    usable = sorted(n for n in in_var if n not in missing)
    log.info("%s: %d .skeleton files found, %d outside the variant, %d skipped as on the official "
             "missing-skeleton list, %d used", variant, len(found), len(found) - len(in_var),
             len(in_var) - len(usable), len(usable))
    where = ", ".join(map(str, dirs))
    if not usable:
        raise RawDataMissingError(f"no {variant} .skeleton files under {where}. {DOWNLOAD_HINT}")
    if variant == "ntu120" and all(parse_name(n).setup <= NTU60_MAX_SETUP for n in usable):
        raise RawDataMissingError(f"ntu120 needs setups S018-S032 too, but none were found under {where}. "
                                  f"{DOWNLOAD_HINT}")
    if len(usable) != OFFICIAL_SAMPLE_COUNT[variant]:
        log.warning("%s: building from %d samples; the full dataset has %d", variant, len(usable),
                    OFFICIAL_SAMPLE_COUNT[variant])
    return [in_var[n] for n in usable]


def _process_chunk(paths: list[str], variant: Variant, params: DenoiseParams) -> list[tuple[np.ndarray, int]]:
    """Worker task: (x cut to its valid frames, length) per file. Cutting keeps pipes and the main
    process light; the HDF5 writer zero-pads, which is exactly what the official padding does."""
    out = []
    for path in paths:
        x, length, _ = process_file(path, variant, params)
        out.append((np.ascontiguousarray(x[:, :length]), length))
    return out


def _ordered_results(paths: list[Path], variant: Variant, params: DenoiseParams, workers: int,
                     chunksize: int) -> Iterator[tuple[np.ndarray, int]]:
    """Results in input order, with at most 2 chunks per worker in flight: memory stays bounded
    even when writing is slower than processing (``Pool.imap`` would queue results unboundedly)."""
    chunks = [[str(p) for p in paths[i:i + chunksize]] for i in range(0, len(paths), chunksize)]
    if workers <= 1:
        for chunk in chunks:
            yield from _process_chunk(chunk, variant, params)
        return
    # spawn: safe even when the caller has threads (torch, OpenMP) and portable across platforms.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        todo = iter(chunks)
        pending = deque(pool.apply_async(_process_chunk, (c, variant, params)) for c in islice(todo, 2 * workers))
        while pending:
            done = pending.popleft().get()
            for chunk in islice(todo, 1):
                pending.append(pool.apply_async(_process_chunk, (chunk, variant, params)))
            yield from done


def prepare(raw_dirs: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike,
            variant: Variant, *, workers: int | None = None, compression: str | None = None,
            params: DenoiseParams = DenoiseParams(), progress: bool = True, chunksize: int | None = None) -> Path:
    """Build ``out`` (the HDF5 layout of :mod:`data.h5`) from the raw ``.skeleton`` files.

    Files are processed in parallel but written in name order, so the output is byte-identical
    for any ``workers``. A malformed file aborts the build with its error and leaves no output.
    """
    from data import h5  # h5py is not needed by the workers
    from tqdm import tqdm

    _check_variant(variant)
    paths = find_skeleton_files(raw_dirs, variant)
    names = [p.stem for p in paths]
    samples = [parse_name(n) for n in names]
    workers = max(1, workers or os.cpu_count() or 1)
    chunksize = chunksize or max(1, min(16, len(paths) // (8 * workers)))
    out = Path(out)
    with h5.create(out, dataset=variant, num_samples=len(paths),
                   sample_shape=(3, params.max_frames, NUM_JOINTS, 2), dtype="float32",
                   pipeline_version=PIPELINE_VERSION, params={**asdict(params), "variant": variant},
                   compression=compression) as writer, \
            tqdm(total=len(paths), unit="file", desc=f"prepare {variant}", disable=not progress) as bar, \
            closing(_ordered_results(paths, variant, params, workers, chunksize)) as results:
        for i, (x, length) in enumerate(results):
            s = samples[i]
            writer.write(i, x, name=names[i], length=length, label=s.label, subject=s.subject,
                         camera=s.camera, setup=s.setup, replication=s.replication)
            bar.update()
        for split, (train, test) in split_indices(samples, variant).items():
            writer.add_split(split, train=train, test=test)
    log.info("wrote %s: %d %s samples", out, len(paths), variant)
    return out
