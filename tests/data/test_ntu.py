"""data/ntu.py: the strict parser, the official denoising/transformation, splits and ``prepare``.

Fixture tests compare against arrays produced by the official CTR-GCN scripts; they are found
generically (every sample of every ``<variant>/manifest.json`` under
``$CSRE_REFERENCE_DIR/ntu_preprocess``, its input in ``raw/``), so held-out fixture sets with the
same layout run unchanged; a raw input that no manifest lists is a failing test of its own.
"""

from __future__ import annotations

import filecmp
import functools
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from data import h5, ntu, synthetic
from tests.conftest import REPO, fixture_params, realdata_dir, reference_dir, require_fixture

# --------------------------------------------------------------------------- reference fixtures

FAMILY = "ntu_preprocess"
RAW_AUXILIARY = {"cases.json"}  # raw/ files that are documentation, not inputs (see its README)


def _family() -> Path:
    return reference_dir() / FAMILY


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(reference_dir()))
    except ValueError:
        return str(path)


class Case(NamedTuple):
    raw: Path          # <ref>/ntu_preprocess/raw/<name>.skeleton
    variant_dir: Path  # <ref>/ntu_preprocess/<variant>, whose manifest lists the sample


def _fixture_cases() -> list:
    """One param per (manifest, sample), id = the raw input's path relative to the reference dir
    and the variant folder, e.g. ``ntu_preprocess/raw/S001C001P001R001A001.skeleton-ntu60``."""
    params = [pytest.param(Case(_family() / "raw" / f"{sample['name']}.skeleton", manifest.parent),
                           id=f"{_rel(_family() / 'raw' / (sample['name'] + '.skeleton'))}-{manifest.parent.name}")
              for manifest in sorted(_family().glob("*/manifest.json"))
              for sample in json.loads(manifest.read_text())["samples"]]
    return params or [pytest.param(None, id=f"{FAMILY}:no-fixtures")]


def _listed_raw_names() -> set[str]:
    return {f"{sample['name']}.skeleton" for manifest in _family().glob("*/manifest.json")
            for sample in json.loads(manifest.read_text())["samples"]}


@functools.lru_cache(maxsize=None)
def _manifest(variant_dir: Path) -> tuple[str, dict]:
    data = json.loads((variant_dir / "manifest.json").read_text())
    return data.get("variant", variant_dir.name), {s["name"]: s for s in data["samples"]}


@functools.lru_cache(maxsize=None)
def _arrays(variant_dir: Path, kind: str) -> dict:
    with np.load(variant_dir / f"{kind}.npz") as z:
        return {k: z[k] for k in z.files}


@functools.lru_cache(maxsize=None)
def _processed(raw: Path, variant: str) -> ntu.Processed:
    assert raw.is_file(), f"{raw} missing: a manifest lists it, so the fixture set is incomplete"
    return ntu.process_file(raw, variant)


def _case(case: Case | None) -> tuple[str, str, dict, ntu.Processed]:
    """(sample name, variant dir, manifest entry, this project's result) of a fixture param."""
    case = require_fixture(case, FAMILY)
    variant, samples = _manifest(case.variant_dir)
    name = case.raw.stem
    return name, case.variant_dir, samples[name], _processed(case.raw, variant)


FIXTURES = _fixture_cases()
RAW_FILES = fixture_params([p for p in (_family() / "raw").glob("*") if p.name not in RAW_AUXILIARY],
                           f"{FAMILY}/raw")
MANIFESTS = fixture_params(_family().glob("*/manifest.json"), FAMILY)


@pytest.mark.reference
@pytest.mark.parametrize("raw", RAW_FILES)
def test_every_raw_fixture_is_in_a_manifest(raw):
    """A raw input no manifest lists has no expected arrays, so every other test would skip it."""
    raw = require_fixture(raw, f"{FAMILY}/raw")
    assert raw.suffix == ".skeleton", f"{raw}: not a .skeleton input (documentation: {sorted(RAW_AUXILIARY)})"
    assert raw.name in _listed_raw_names(), \
        f"{raw} is in no {_family()}/*/manifest.json, so nothing checks what it should become"


# Exact equality against the files, on any CPU: every stored value is parsed, shifted by one correctly
# rounded float32 subtraction and copied, which gives the same bits everywhere; the float32 reductions
# (motion variance, spread) only choose which bodies are kept, and such a choice moves only at a last-bit tie.
@pytest.mark.reference
@pytest.mark.parametrize("case", FIXTURES)
def test_denoised_matches_official(case):
    name, variant_dir, _, got = _case(case)
    expected = _arrays(variant_dir, "denoised")[name]
    assert got.info.denoised_joints.dtype == np.float32
    assert got.info.denoised_joints.shape == expected.shape
    assert np.array_equal(got.info.denoised_joints, expected)


@pytest.mark.reference
@pytest.mark.parametrize("case", FIXTURES)
def test_final_matches_official(case):
    name, variant_dir, _, got = _case(case)
    expected = _arrays(variant_dir, "final")[name]
    assert got.info.final.dtype == np.float32 and np.array_equal(got.info.final, expected)
    # the HDF5 layout is the same numbers in (C, T, V, M)
    assert got.x.shape == (3, 300, 25, 2) and got.x.dtype == np.float32
    assert np.array_equal(ntu.from_ctvm(got.x), expected)
    assert np.array_equal(got.x[:, 0, 1, 0], expected[0, 3:6])  # frame 0, joint 2, actor 1


@pytest.mark.reference
@pytest.mark.parametrize("case", FIXTURES)
def test_valid_frames_match_official(case):
    name, variant_dir, sample, got = _case(case)
    expected = int(_arrays(variant_dir, "valid_frames")[name])
    assert got.length == got.info.valid_frames == expected
    assert got.length == sample["valid_frames"] == sample["feeder_valid_frame_num"]
    assert not got.x[:, got.length:].any()  # frames past the length are padding


@pytest.mark.reference
@pytest.mark.parametrize("case", FIXTURES)
def test_bookkeeping_matches_manifest(case):
    name, _, sample, got = _case(case)
    info = got.info
    dropped = {(d["bodyID"], d["reason"]) for d in info.dropped_bodies}
    assert dropped == {(d["bodyID"], d["reason"]) for d in sample["dropped_bodies"]}
    if sample["actor_slots"] is None:
        assert info.actor_slots is None
    else:
        assert info.actor_slots == {slot: [b["bodyID"] for b in bodies]
                                    for slot, bodies in sample["actor_slots"].items()}
    assert info.denoised.main_actor_single == sample["main_actor_single"]
    assert info.skeleton.empty_frames == sample["empty_frames_dropped"]
    assert info.skeleton.n_frames_in_file == sample["n_frames_in_file"]
    assert info.skeleton.n_frames == sample["n_frames_after_parse"]
    assert info.denoised.all_zero_frames_removed == sample["all_zero_frames_removed"]
    assert [(b["bodyID"], b["interval"], b["n_frames"]) for b in info.bodies()] == \
        [(b["bodyID"], b["interval"], b["n_frames"]) for b in sample["bodies"]]
    updated = {k: [round(old, 6), round(new, 6)] for k, (old, new) in info.denoised.motion_updated_by_spread.items()}
    assert updated == {k: [round(a, 6), round(b, 6)] for k, (a, b) in sample["motion_updated_by_spread"].items()}
    assert ntu.parse_name(name).label == sample["label"]


# --------------------------------------------------------------------------- names and splits

def test_parse_name_and_split_rules():
    s = ntu.parse_name("S018C002P045R001A061")
    assert (s.setup, s.camera, s.subject, s.replication, s.action, s.label) == (18, 2, 45, 1, 61, 60)
    assert not ntu.in_variant(s, "ntu60") and ntu.in_variant(s, "ntu120")
    assert ntu.is_train(s, "ntu120", "xsub") and ntu.is_train(s, "ntu120", "xset")
    assert not ntu.is_train(ntu.parse_name("S001C001P003R001A001"), "ntu60", "xview")
    assert not ntu.is_train(ntu.parse_name("S001C001P045R001A001"), "ntu60", "xsub")  # 45 is NTU120-only
    with pytest.raises(ValueError, match="not an NTU RGB"):
        ntu.parse_name("S01C001P001R001A001")
    with pytest.raises(ValueError, match="xview"):
        ntu.is_train(s, "ntu120", "xview")


STATS = {"ntu60": ("ntu", 56_578, 302, {"xsub": (40_091, 16_487), "xview": (37_646, 18_932)}),
         "ntu120": ("ntu120", 113_945, 535, {"xsub": (63_026, 50_919), "xset": (54_468, 59_477)})}


@pytest.mark.parametrize("variant", list(STATS))
def test_split_sizes_from_official_statistics(variant):
    folder, count, n_missing, sizes = STATS[variant]
    stats = realdata_dir() / "ntu_statistics_ctrgcn" / folder
    if not stats.is_dir():
        pytest.skip(f"{stats} not present")
    names = (stats / "skes_available_name.txt").read_text().split()
    assert len(names) == len(set(names)) == count
    missing = ntu.missing_samples(variant)
    assert len(missing) == n_missing and not missing & set(names)
    assert len(names) + len(missing) == {"ntu60": 56_880, "ntu120": 114_480}[variant]
    samples = [ntu.parse_name(n) for n in names]
    assert all(ntu.in_variant(s, variant) for s in samples)
    for field, attr in (("setup", "setup"), ("camera", "camera"), ("performer", "subject"),
                        ("replication", "replication"), ("label", "action")):
        column = np.array((stats / f"{field}.txt").read_text().split(), dtype=int)
        assert np.array_equal(column, [getattr(s, attr) for s in samples]), field
    splits = ntu.split_indices(samples, variant)
    assert set(splits) == set(ntu.SPLITS[variant])
    for split, (train, test) in splits.items():
        assert (len(train), len(test)) == sizes[split], split
        assert not np.intersect1d(train, test).size


def test_missing_lists_nest():
    assert ntu.missing_samples("ntu60") <= ntu.missing_samples("ntu120")


# --------------------------------------------------------------------------- parser

def _good_lines(tmp_path, **kw) -> list[str]:
    path = synthetic.write_skeleton(tmp_path / "S001C001P001R001A001.skeleton", n_frames=6, seed=5, **kw)
    return path.read_bytes().decode().split("\r\n")[:-1]


def _write(tmp_path, lines: list[str], name="S001C001P001R001A001") -> Path:
    path = tmp_path / "raw" / f"{name}.skeleton"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes("".join(line + "\r\n" for line in lines).encode())
    return path


# Line layout of a one-body file: 1 frame count, 2 body count, 3 body info, 4 joint count,
# 5..29 joints of frame 1, 30 body count of frame 2, ...
def _truncated(lines):
    return lines[:40], 41, "unexpected end of file: expected 25 joint lines"


def _fewer_frames(lines):
    return lines[:1 + 28 * 4], 1 + 28 * 4 + 1, "unexpected end of file: expected the body count of frame 5 of 6"


def _wrong_joint_count(lines):
    return lines[:31] + ["24"] + lines[32:], 32, "expected joint count 25, got 24"


def _non_numeric(lines):
    parts = lines[9].split()
    parts[4] = "abc"
    return lines[:9] + [" ".join(parts)] + lines[10:], 10, "expected a number in field 5 of a joint line, got 'abc'"


def _eleven_numbers(lines):
    return lines[:26] + [" ".join(lines[26].split()[:11])] + lines[27:], 27, \
        "expected 12 numbers in a joint line, got 11"


def _nan(lines):
    parts = lines[7].split()
    parts[1] = "nan"
    return lines[:7] + [" ".join(parts)] + lines[8:], 8, "expected a finite joint coordinate in field 2"


def _inf(lines):
    parts = lines[7].split()
    parts[2] = "-inf"
    return lines[:7] + [" ".join(parts)] + lines[8:], 8, "expected a finite joint coordinate in field 3"


def _bad_body_info(lines):
    return lines[:2] + [" ".join(lines[2].split()[:9])] + lines[3:], 3, "expected 10 numbers in a body-info line"


def _trailing_garbage(lines):
    return lines + ["", "12 garbage"], len(lines) + 2, "expected end of file after the 6 declared frames"


def _empty(lines):
    return [], 1, "expected the frame count, but the file is empty"


def _bad_frame_count(lines):
    return ["six"] + lines[1:], 1, "expected the frame count (a non-negative integer), got 'six'"


BAD = {f.__name__.strip("_"): f for f in (_truncated, _fewer_frames, _wrong_joint_count, _non_numeric,
                                          _eleven_numbers, _nan, _inf, _bad_body_info, _trailing_garbage,
                                          _empty, _bad_frame_count)}


@pytest.mark.parametrize("case", list(BAD))
def test_parser_rejects_malformed_file_with_file_and_line(tmp_path, case):
    lines, line_no, message = BAD[case](_good_lines(tmp_path))
    path = _write(tmp_path, lines)
    with pytest.raises(ntu.SkeletonFormatError) as err:
        ntu.parse_skeleton(path)
    text = str(err.value)
    assert text.startswith(f"{path}:{line_no}: "), text
    assert message in text


@pytest.mark.parametrize("case", ["truncated", "wrong_joint_count", "non_numeric", "empty", "nan"])
def test_prepare_aborts_on_bad_file_and_leaves_nothing(tmp_path, case):
    lines, line_no, message = BAD[case](_good_lines(tmp_path))
    bad = _write(tmp_path, lines, name="S001C001P002R001A005")
    synthetic.write_skeleton(bad.parent / "S001C001P001R001A001.skeleton", n_frames=30, seed=1)
    out = tmp_path / "out" / "ntu60.h5"
    with pytest.raises(ntu.SkeletonFormatError, match=f"{bad.name}:{line_no}: .*{message[:20]}"):
        ntu.prepare(bad.parent, out, "ntu60", workers=1, progress=False)
    assert list(out.parent.iterdir()) == []  # neither the file nor a temporary one


def test_all_frames_empty_is_an_empty_skeleton(tmp_path):
    path = _write(tmp_path, ["3", "0", "0", "0"])
    with pytest.raises(ntu.EmptySkeletonError, match="none of its 3 frames has a body"):
        ntu.parse_skeleton(path)


def test_missing_raw_directory_says_what_to_download(tmp_path):
    out = tmp_path / "out" / "ntu60.h5"
    with pytest.raises(ntu.RawDataMissingError) as err:
        ntu.prepare(tmp_path / "nope", out, "ntu60", workers=1, progress=False)
    text = str(err.value)
    for needle in (str(tmp_path / "nope"), "https://rose1.ntu.edu.sg/dataset/actionRecognition/",
                   "nturgbd_skeletons_s001_to_s017.zip", "nturgbd_skeletons_s018_to_s032.zip",
                   "data/raw/ntu/nturgb+d_skeletons/", "data/raw/ntu/nturgb+d_skeletons120/"):
        assert needle in text
    assert not out.exists() and not out.parent.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ntu.RawDataMissingError, match="no ntu60 .skeleton files"):
        ntu.prepare(tmp_path / "empty", out, "ntu60", workers=1, progress=False)


def test_crlf_and_lf_parse_identically(tmp_path):
    spec = [synthetic.BodySpec(), synthetic.BodySpec(frames=(3, 40), absent=(10, 11))]
    crlf = synthetic.write_skeleton(tmp_path / "a" / "S001C001P001R001A050.skeleton", n_frames=50,
                                    bodies=spec, empty_frames=[0, 20], seed=2)
    lf = synthetic.write_skeleton(tmp_path / "b" / "S001C001P001R001A050.skeleton", n_frames=50,
                                  bodies=spec, empty_frames=[0, 20], seed=2, line_ending="\n")
    assert crlf.read_bytes().replace(b"\r\n", b"\n") == lf.read_bytes() != crlf.read_bytes()
    a, b = ntu.parse_skeleton(crlf), ntu.parse_skeleton(lf)
    assert a.empty_frames == b.empty_frames == [0, 20]
    assert [(x.body_id, x.interval) for x in a.bodies] == [(x.body_id, x.interval) for x in b.bodies]
    assert all(np.array_equal(x.joints, y.joints) for x, y in zip(a.bodies, b.bodies))
    assert np.array_equal(ntu.process_file(crlf, "ntu60").x, ntu.process_file(lf, "ntu60").x)


def test_parser_accepts_irregular_whitespace_like_the_official_reader(tmp_path):
    lines = _good_lines(tmp_path)
    lines[5] = "  " + lines[5].replace(" ", "\t  ") + "  "
    reference = ntu.parse_skeleton(_write(tmp_path, _good_lines(tmp_path), name="S001C001P001R001A002"))
    got = ntu.parse_skeleton(_write(tmp_path, lines))
    assert np.array_equal(got.bodies[0].joints, reference.bodies[0].joints)


def test_unused_fields_may_be_non_finite_but_must_be_numbers(tmp_path):
    """Kinect writes -inf for depth/colour points it cannot map; the pipeline never uses them."""
    lines = _good_lines(tmp_path)
    parts = lines[6].split()
    parts[3], parts[6] = "-inf", "nan"
    lines[6] = " ".join(parts)
    reference = ntu.parse_skeleton(_write(tmp_path, _good_lines(tmp_path), name="S001C001P001R001A002"))
    assert np.array_equal(ntu.parse_skeleton(_write(tmp_path, lines)).bodies[0].joints,
                          reference.bodies[0].joints)
    parts[8] = "1.2.3"
    lines[6] = " ".join(parts)  # non-finite fields beside it do not hide a malformed one
    with pytest.raises(ntu.SkeletonFormatError, match=r":7: expected a number in field 9 of a joint line"):
        ntu.parse_skeleton(_write(tmp_path, lines))


MALFORMED_NUMBERS = ["1.2.3", "--", "1e", ".", "-", "+", "1e5e3", "+-1", "1.5e-3.2", "5-3", "e5", ".e5", "1e+", "-.", "1..2"]


@pytest.mark.parametrize("token", MALFORMED_NUMBERS)
def test_unused_fields_are_strict_in_kinects_canonical_layout(tmp_path, token):
    """Only number characters and single spaces, as Kinect writes them (the parser's fast path):
    a malformed number in a field the pipeline never uses is still an error naming file, line, field."""
    field = 4 + MALFORMED_NUMBERS.index(token) % 9  # fields 4..12
    lines = _good_lines(tmp_path)
    parts = lines[16].split()
    parts[field - 1] = token
    lines[16] = " ".join(parts)
    assert not set(token) - set("0123456789.+-eE") and lines[16].count(" ") == 11  # canonical layout
    path = _write(tmp_path, lines)
    with pytest.raises(ntu.SkeletonFormatError) as err:
        ntu.parse_skeleton(path)
    assert str(err.value) == f"{path}:17: expected a number in field {field} of a joint line, got {token!r}"


def test_float32_parse_goes_through_float64_like_numpy(tmp_path):
    """A decimal just above a float32 rounding midpoint: NumPy's str -> float32 (what the official
    scripts use) rounds through float64, giving 1.0 where a direct parse gives 1.0000001."""
    lines = _good_lines(tmp_path)
    parts = lines[4].split()
    parts[0] = "1.000000059604644775390625000001"
    lines[4] = " ".join(parts)
    sk = ntu.parse_skeleton(_write(tmp_path, lines))
    assert sk.bodies[0].joints[0, 0, 0] == np.array([parts[0]], dtype=np.float32)[0] == np.float32(1.0)


# --------------------------------------------------------------------------- denoising rules on synthetic files

def test_rules_on_synthetic_bodies(tmp_path):
    Spec = synthetic.BodySpec
    path = synthetic.write_skeleton(
        tmp_path / "S001C001P001R001A050.skeleton", n_frames=60, seed=9,
        bodies=[Spec(body_id=1), Spec(frames=(0, 10), body_id=2),          # 11 frames: length rule
                Spec(lying=True, body_id=3), Spec(x_offset=0.9, body_id=4)])  # noisy: spread rule
    got = ntu.process_file(path, "ntu60")
    assert {(d["bodyID"], d["reason"]) for d in got.info.dropped_bodies} == {("2", "length"), ("3", "spread")}
    assert sorted(got.info.actor_slots["actor1"] + got.info.actor_slots["actor2"]) == ["1", "4"]
    assert got.length == 60 and got.info.denoised_joints.shape == (60, 150)
    # origin: spine middle of actor 1 in its first frame
    assert np.array_equal(got.x[:, 0, 1, 0], np.zeros(3, np.float32))


def test_single_actor_padding_differs_between_variants(tmp_path):
    path = synthetic.write_skeleton(tmp_path / "S001C001P001R001A001.skeleton", n_frames=40, seed=4)
    a, b = ntu.process_file(path, "ntu60"), ntu.process_file(path, "ntu120")
    assert np.array_equal(a.x[..., 0], b.x[..., 0]) and not a.x[..., 1].any()
    assert np.array_equal(b.x[..., 1], b.x[..., 0])


def test_params_change_the_rules(tmp_path):
    Spec = synthetic.BodySpec
    path = synthetic.write_skeleton(tmp_path / "S001C001P001R001A050.skeleton", n_frames=40, seed=3,
                                    bodies=[Spec(), Spec(frames=(0, 14), x_offset=0.9)])
    assert ntu.process_file(path, "ntu60").info.actor_slots is not None
    strict = ntu.DenoiseParams(min_frames=15)
    assert ntu.process_file(path, "ntu60", strict).info.dropped_bodies[0]["reason"] == "length"
    with pytest.raises(ntu.DenoiseError, match="max_frames=30"):
        ntu.process_file(path, "ntu60", ntu.DenoiseParams(max_frames=30))


def _only_short_bodies(tmp_path):
    Spec = synthetic.BodySpec
    return synthetic.write_skeleton(tmp_path / "raw" / "S001C001P001R001A050.skeleton", n_frames=20, seed=3,
                                    bodies=[Spec(frames=(0, 9)), Spec(frames=(10, 19))]), {}, "every bodyID has <= 11"


def _zero_actor(tmp_path):
    lines = [" ".join(["0", "0", "0", *line.split()[3:]]) if len(line.split()) == 12 else line
             for line in _good_lines(tmp_path)]
    return _write(tmp_path, lines), {}, "actor 1 is zero in every frame"


def _body_twice_in_a_frame(tmp_path):
    lines = _good_lines(tmp_path)
    return _write(tmp_path, ["1", "2", *lines[2:29], *lines[2:29]]), {}, "occurs twice in one frame"


def _too_long(tmp_path):
    path = synthetic.write_skeleton(tmp_path / "raw" / "S001C001P001R001A001.skeleton", n_frames=40, seed=4)
    return path, {"max_frames": 30}, "40 frames after denoising, more than max_frames=30"


DENOISE_ERRORS = {f.__name__.strip("_"): f for f in (_only_short_bodies, _zero_actor, _body_twice_in_a_frame,
                                                     _too_long)}


@pytest.mark.parametrize("case", list(DENOISE_ERRORS))
def test_denoise_errors_name_the_file(tmp_path, case):
    path, params, message = DENOISE_ERRORS[case](tmp_path)
    with pytest.raises(ntu.DenoiseError) as err:
        ntu.process_file(path, "ntu60", ntu.DenoiseParams(**params))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)


# --------------------------------------------------------------------------- prepare end to end

MISSING_NAME = "S001C002P005R002A008"  # first name on both official missing lists


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    """4 real files (when present) + synthetic ones, one on the missing list, one NTU120-only."""
    root = tmp_path_factory.mktemp("ntu_raw")
    (root / "nturgb+d_skeletons").mkdir()
    for path in sorted((realdata_dir() / "ntu_raw_skeleton").glob("*.skeleton")):
        shutil.copy(path, root / "nturgb+d_skeletons" / path.name)
    names = ["S003C002P007R001A010", "S004C003P015R002A055", "S017C001P040R001A060", MISSING_NAME]
    synthetic.write_corpus(root / "nturgb+d_skeletons", len(names), seed=7, frames=(20, 60), names=names,
                           two_body_fraction=0.5)
    synthetic.write_skeleton(root / "nturgb+d_skeletons120" / "S018C001P045R002A061.skeleton", n_frames=33,
                             seed=8)
    return root


def _expected_names(raw_dir: Path, variant: str) -> list[str]:
    names = sorted(p.stem for p in raw_dir.rglob("*.skeleton") if p.stem != MISSING_NAME)
    return [n for n in names if variant == "ntu120" or int(n[1:4]) <= 17]


@pytest.fixture(scope="module")
def built(raw_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("ntu_h5")
    return {v: ntu.prepare(raw_dir, out / f"{v}.h5", v, workers=1, progress=False) for v in ntu.VARIANTS}


@pytest.mark.parametrize("variant", ntu.VARIANTS)
def test_prepare_writes_every_sample_and_split(raw_dir, built, variant):
    index = h5.read_index(built[variant])
    names = _expected_names(raw_dir, variant)
    assert list(index.name) == names and MISSING_NAME not in names
    assert index.shape == (len(names), 3, 300, 25, 2) and index.dtype == np.float32
    assert index.attrs["dataset"] == variant and index.attrs["pipeline_version"] == ntu.PIPELINE_VERSION
    assert index.params["variant"] == variant and index.params["min_frames"] == 11
    x = h5.open_samples(built[variant])
    for i, name in enumerate(names):
        path = next(raw_dir.rglob(f"{name}.skeleton"))
        expected = ntu.process_file(path, variant)
        s = ntu.parse_name(name)
        assert np.array_equal(x[i], expected.x), name
        assert index.length[i] == expected.length
        assert (index.label[i], index.subject[i], index.camera[i], index.setup[i], index.replication[i]) == \
            (s.label, s.subject, s.camera, s.setup, s.replication)
    x.file.close()
    assert set(index.splits) == set(ntu.SPLITS[variant])
    for split in ntu.SPLITS[variant]:
        train = [i for i, n in enumerate(names) if ntu.is_train(ntu.parse_name(n), variant, split)]
        assert list(index.split(split, "train")) == train
        assert sorted([*train, *index.split(split, "test")]) == list(range(len(names)))


@pytest.mark.reference
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_prepare_matches_official_final_arrays(manifest, tmp_path):
    """A dataset built from the fixture inputs holds exactly the official rows of every sample."""
    manifest = require_fixture(manifest, FAMILY)
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in (_family() / "raw").glob("*.skeleton"):
        shutil.copy(path, raw / path.name)
    if not any(int(p.name[1:4]) > 17 for p in raw.iterdir()):  # ntu120 refuses a NTU60-only folder
        synthetic.write_skeleton(raw / "S018C001P045R002A061.skeleton", n_frames=30, seed=1)
    variant, samples = _manifest(manifest.parent)
    expected = _arrays(manifest.parent, "final")
    lengths = _arrays(manifest.parent, "valid_frames")
    path = ntu.prepare(raw, tmp_path / f"{variant}.h5", variant, workers=1, progress=False)
    index = h5.read_index(path)
    position = {n: i for i, n in enumerate(index.name)}
    wanted = [n for n in samples if ntu.in_variant(ntu.parse_name(n), variant)
              and n not in ntu.missing_samples(variant)]
    assert wanted and set(wanted) <= set(position)
    x = h5.open_samples(path)
    for name in wanted:
        i = position[name]
        assert np.array_equal(ntu.from_ctvm(x[i]), expected[name]), name
        assert index.length[i] == int(lengths[name])
    x.file.close()


def test_prepare_is_byte_identical_for_any_worker_count(raw_dir, built, tmp_path):
    again = ntu.prepare(raw_dir, tmp_path / "ntu60.h5", "ntu60", workers=2, chunksize=1, progress=False)
    assert filecmp.cmp(built["ntu60"], again, shallow=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ntu60.h5"]


def test_prepare_lzf(raw_dir, built, tmp_path):
    lzf = ntu.prepare([raw_dir / "nturgb+d_skeletons", raw_dir / "nturgb+d_skeletons120"],
                      tmp_path / "ntu120.h5", "ntu120", workers=1, compression="lzf", progress=True)
    assert h5.open_samples(lzf).compression == "lzf"
    a, b = h5.open_samples(built["ntu120"]), h5.open_samples(lzf)
    assert np.array_equal(a[()], b[()])
    a.file.close(), b.file.close()


_SLOW_PREPARE = """
import sys, time
from data import ntu
from harness.cli import main
process = ntu._process_chunk
def slow(paths, variant, params):  # one file per chunk here: time to send the signal mid-build
    print("chunk", flush=True)
    time.sleep(0.5)
    return process(paths, variant, params)
ntu._process_chunk = slow
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_prepare_leaves_no_partial_file(raw_dir, tmp_path):
    out = tmp_path / "out" / "ntu60.h5"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, "prepare", "ntu60", "--raw", str(raw_dir),
                             "--out", str(out), "--workers", "1", "--no-progress"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "chunk\n", proc.stderr.read()
        assert [p.name for p in out.parent.iterdir()] == [f".ntu60.h5.tmp{proc.pid}"]  # mid-build
        proc.send_signal(signal.SIGTERM)  # what `kill`, DVC on Ctrl-C or a job scheduler sends
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM while writing" in err, err
    assert list(out.parent.iterdir()) == []


def test_ntu120_needs_the_ntu120_download(raw_dir, tmp_path):
    with pytest.raises(ntu.RawDataMissingError, match="nturgbd_skeletons_s018_to_s032.zip"):
        ntu.prepare(raw_dir / "nturgb+d_skeletons", tmp_path / "x.h5", "ntu120", workers=1, progress=False)
    assert not (tmp_path / "x.h5").exists()
