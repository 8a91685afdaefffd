"""Ensembles: logit sums by hand, published weights per family, name alignment, the tuner, the verb."""

from __future__ import annotations

import argparse
import itertools
import json
import re

import numpy as np
import pytest

from harness import ensemble as ens
from harness.io import Scores, read_json, save_scores, write_json

# 3 samples x 3 classes, labels 0, 1, 2.
J = np.array([[2.0, 0.0, 0.0],  # right
              [0.0, 1.0, 0.0],  # right
              [1.0, 0.0, 0.8]])  # wrong: predicts 0
B = np.array([[0.0, 1.0, 0.0],  # wrong: predicts 1
              [0.0, 2.0, 0.0],  # right
              [0.0, 0.0, 0.5]])  # right
Y = np.array([0, 1, 2])


def top1(logits, labels):
    """Readable reference: per sample, argmax == label."""
    return sum(int(np.argmax(row) == y) for row, y in zip(logits, labels)) / len(labels)


# --------------------------------------------------------------------------- arithmetic

def test_sum_flips_predictions():
    stacked = np.stack([J, B])  # (S=2, N=3, C=3)
    assert top1(J, Y) == top1(B, Y) == pytest.approx(2 / 3)
    # J + B: rows [2, 1, 0], [0, 3, 0], [1, 0, 1.3] -> all right
    np.testing.assert_allclose(ens.combine(stacked, (1, 1)), J + B)
    assert top1(ens.combine(stacked, (1, 1)), Y) == 1.0
    # J + 0.1 B: sample 2 becomes [1, 0, 0.85] -> wrong again; sample 0 [2, 0.1, 0] stays right
    assert top1(ens.combine(stacked, (1, 0.1)), Y) == pytest.approx(2 / 3)
    # 0.1 J + B: sample 0 becomes [0.2, 1, 0] -> wrong
    assert np.argmax(ens.combine(stacked, (0.1, 1))[0]) == 1


def test_combine_needs_one_weight_per_stream():
    with pytest.raises(ValueError, match="one weight per stream"):
        ens.combine(np.stack([J, B]), (1.0, 1.0, 1.0))


# --------------------------------------------------------------------------- published weights

@pytest.mark.parametrize("encoder, benchmark, weights, source", [
    ("ctrgcn", "ntu60_xsub", (0.6, 0.6, 0.4, 0.4), "CTR-GCN ensemble.py"),
    ("ctrgcn", "ucla", (0.6, 0.6, 0.4, 0.4), "CTR-GCN ensemble.py"),
    ("hyperformer", "ntu120_xset", (0.4, 0.6, 0.2, 0.2), "Hyperformer ensemble.py (NTU)"),
    ("hyperformer", "ucla", (0.4, 0.4, 0.3, 0.2), "Hyperformer ensemble.py (NW-UCLA)"),
    ("blockgcn", "ntu60_xview", (0.6, 0.7, 0.35, 0.2), "BlockGCN ensemble.py (NTU)"),
    ("blockgcn", "ucla", (0.7, 0.5, 0.6, 0.2), "BlockGCN ensemble.py (NW-UCLA)"),
])
def test_published_4s_per_family(encoder, benchmark, weights, source):
    p = ens.published_weights(encoder, benchmark, "4S")
    assert p.weights == weights
    assert p.source.startswith(source)


@pytest.mark.parametrize("encoder", ["hcn", "infogcn", "agcn", "mystery"])
def test_published_4s_falls_back_to_ctrgcn_and_says_so(encoder):
    p = ens.published_weights(encoder, "ucla", "4S")
    assert p.weights == (0.6, 0.6, 0.4, 0.4)
    assert p.source.startswith("CTR-GCN's weights used for")


@pytest.mark.parametrize("encoder", ["ctrgcn", "agcn", "hyperformer", "blockgcn", "hcn", "infogcn"])
def test_published_2s_is_joint_plus_bone(encoder):
    p = ens.published_weights(encoder, "ntu60_xsub", "2S")
    assert p.weights == (1.0, 1.0)
    assert "J + 1*B" in p.source
    assert ("CTR-GCN's weights used" in p.source) == (encoder in {"hcn", "infogcn"})


def test_published_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark"):
        ens.published_weights("hyperformer", "kinetics", "4S")
    assert ens.published_weights("ctrgcn", "kinetics", "4S").weights == (0.6, 0.6, 0.4, 0.4)


# --------------------------------------------------------------------------- alignment

def _scores(logits, labels, names):
    return Scores(np.asarray(logits, np.float32), np.asarray(labels, np.int64), np.asarray(names), 0)


def test_align_by_name_with_shuffled_order():
    names = np.array(["a", "b", "c"])
    perm = np.array([2, 0, 1])  # the bone file lists c, a, b
    logits, labels, out_names = ens.align_scores(
        [_scores(J, Y, names), _scores(B[perm], Y[perm], names[perm])], ["runJ", "runB"])
    assert logits.shape == (2, 3, 3)
    np.testing.assert_array_equal(out_names, names)
    np.testing.assert_array_equal(labels, Y)
    np.testing.assert_array_equal(logits[1], B)
    assert top1(ens.combine(logits, (1, 1)), labels) == 1.0


def test_align_mismatched_names_names_the_runs():
    msg = r"between runJ and runB: 1 only in the first \(c\), 1 only in the second \(z\)"
    with pytest.raises(ValueError, match=msg):
        ens.align_scores([_scores(J, Y, ["a", "b", "c"]), _scores(B, Y, ["a", "b", "z"])], ["runJ", "runB"])


def test_align_disagreeing_labels_and_duplicates():
    with pytest.raises(ValueError, match="labels differ between runJ and runB for 1 samples"):
        ens.align_scores([_scores(J, Y, ["a", "b", "c"]), _scores(B, [0, 1, 0], ["a", "b", "c"])], ["runJ", "runB"])
    with pytest.raises(ValueError, match="runB: sample names are not unique"):
        ens.align_scores([_scores(J, Y, ["a", "b", "c"]), _scores(B, Y, ["a", "a", "c"])], ["runJ", "runB"])


# --------------------------------------------------------------------------- tuner

def _region_case():
    """2 streams, 2 classes, every label 1; sample i is right iff wJ*dJ[i] + wB*dB[i] > 0.

    With r = wB / wJ: sample 0 needs r > 1, sample 1 r < 3, sample 2 r > 2, sample 3 r < 10
    (always, in the box). So all 4 are right only for 2 < r < 3, a tenth of [0.2, 1.2]^2.
    """
    dj = np.array([-1.0, 3.0, -2.0, 1.0])
    db = np.array([1.0, -1.0, 1.0, -0.1])
    logits = np.zeros((2, 4, 2))
    logits[0, :, 1], logits[1, :, 1] = dj, db
    return logits, np.ones(4, dtype=np.int64)


def test_tuner_finds_the_best_region():
    logits, labels = _region_case()
    # brute force on a grid: 100% is reachable, and only with 2 < r < 3
    grid = np.linspace(0.2, 1.2, 41)
    best = max(top1(ens.combine(logits, w), labels) for w in itertools.product(grid, grid))
    assert best == 1.0
    # 12 calls: the region is met among gp_minimize's 10 seeded random initial points, which are
    # numpy draws (the same on any CPU), not a point of the BLAS-fitted Gaussian process
    t = ens.tune_weights(logits, labels, n_calls=12)
    assert t.top1 == 1.0
    assert 2 < t.weights[1] / t.weights[0] < 3
    assert all(0.2 <= w <= 1.2 for w in t.weights)
    assert t.evaluations == 12
    # the plain sum only gets samples 1 and 3 (sample 0 ties and loses)
    assert top1(ens.combine(logits, (1, 1)), labels) == 0.5


def _official_objective(r, label):
    """The official CSRE ensemble.py objective, as written there: a Python loop over samples, the
    streams' float32 score rows times the weights, argmax, minus the accuracy."""
    def objective(weights):
        right_num = total_num = 0
        for i in range(len(label)):
            s = sum(stream[i] * w for stream, w in zip(r, weights))
            right_num += int(np.argmax(s) == int(label[i]))
            total_num += 1
        return -(right_num / total_num)
    return objective


@pytest.mark.parametrize("streams", [2, 4])
def test_tuner_is_the_official_gp_minimize_search(streams):
    """Same library call, box, budget and seed as the official script: the same weights come out,
    with the official (looped, float32) objective and with ours (vectorised)."""
    from skopt import gp_minimize
    rng = np.random.default_rng(streams)
    labels = rng.integers(0, 6, 80)
    r = [(rng.normal(size=(80, 6)) + 0.8 * np.eye(6)[labels]).astype(np.float32) for _ in range(streams)]
    official = gp_minimize(_official_objective(r, labels), [(0.2, 1.2)] * streams, n_calls=12, random_state=0)
    t = ens.tune_weights(np.stack(r), labels, n_calls=12, seed=0)
    assert t.weights == tuple(official.x) and t.top1 == -official.fun and t.evaluations == 12


def test_tuner_is_deterministic():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 60, 5))
    labels = rng.integers(0, 5, 60)
    a = ens.tune_weights(logits, labels, n_calls=12, seed=3)
    b = ens.tune_weights(logits, labels, n_calls=12, seed=3)
    assert a == b
    assert a.evaluations == 12
    assert ens.tune_weights(logits, labels, n_calls=12, seed=4).weights != a.weights


def test_tuner_ties_keep_the_first_point_evaluated():
    # identical streams: every weight vector gives the same predictions, so gp_minimize's result is
    # its first point
    from skopt import gp_minimize
    logits = np.stack([J, J])
    t = ens.tune_weights(logits, Y, n_calls=12)
    first = gp_minimize(lambda w: 0.0, [(0.2, 1.2)] * 2, n_calls=12, random_state=0).x_iters[0]
    assert t.weights == tuple(first)
    assert t.top1 == pytest.approx(2 / 3)


def test_tuner_runs_on_budgets_below_the_initial_points():
    t = ens.tune_weights(np.stack([J, B]), Y, n_calls=3)
    assert t.evaluations == 3 and all(0.2 <= w <= 1.2 for w in t.weights)


def test_tuner_bad_arguments():
    with pytest.raises(ValueError, match="low < high"):
        ens.tune_weights(np.stack([J, B]), Y, bounds=(1.0, 0.5))
    with pytest.raises(ValueError, match="n_calls"):
        ens.tune_weights(np.stack([J, B]), Y, n_calls=0)


# --------------------------------------------------------------------------- run directories and the verb

def make_run(root, stream, test, val=None, *, benchmark="ucla", encoder="ctrgcn", csre=True, seed=0,
             profile="quick"):
    d = root / benchmark / encoder / stream / ("csre" if csre else "base") / f"seed{seed}"
    write_json(d / "metrics.json", {"cell": {"benchmark": benchmark, "encoder": encoder, "stream": stream,
                                             "csre": csre, "seed": seed, "profile": profile},
                                    "last": {"top1": 0.0}})
    save_scores(d / "scores_test.npz", Scores(*test, 4))
    if val is not None:
        save_scores(d / "scores_val.npz", Scores(*val, 4))
    return d


def _random_part(rng, n, c, prefix):
    labels = rng.integers(0, c, n)
    names = np.array([f"{prefix}{i:03d}" for i in range(n)])
    return labels, names


def _stream_scores(rng, labels, names, c):
    """Noisy logits for shared labels, rows shuffled (each stream's file has its own order)."""
    logits = rng.normal(size=(len(labels), c)) + 1.5 * np.eye(c)[labels]
    perm = rng.permutation(len(labels))
    return logits[perm].astype(np.float32), labels[perm], names[perm]


def _parse(argv):
    p = argparse.ArgumentParser()
    ens.configure_parser(p)
    return p.parse_args(argv)


def test_run_on_fake_run_dirs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    c = 6
    test_labels, test_names = _random_part(rng, 40, c, "t")
    val_labels, val_names = _random_part(rng, 30, c, "v")
    dirs, per_stream = [], {}
    for s in ens.STREAMS:  # group 1: all four streams, with validation scores
        t = _stream_scores(rng, test_labels, test_names, c)
        per_stream[s] = t
        dirs.append(make_run(tmp_path, s, t, _stream_scores(rng, val_labels, val_names, c)))
    for s in ("joint", "bone"):  # group 2: hyperformer base, 2 streams, no validation split
        dirs.append(make_run(tmp_path, s, _stream_scores(rng, test_labels, test_names, c), encoder="hyperformer",
                             csre=False, benchmark="ntu60_xsub", profile="paper"))
    out = tmp_path / "report.json"
    assert ens.run(_parse([*map(str, dirs), "--json", str(out), "--calls", "12"])) == 0
    text = capsys.readouterr().out
    report = read_json(out)

    assert [(g["benchmark"], g["encoder"], g["csre"]) for g in report["groups"]] == [
        ("ntu60_xsub", "hyperformer", False), ("ucla", "ctrgcn", True)]
    hyper, ctr = report["groups"]

    # group 1, 4S with the published CTR-GCN weights, recomputed here by sorting each file by name
    def by_name(s):
        logits, labels, names = per_stream[s]
        order = np.argsort(names)
        return logits[order], labels[order]
    ref = sum(w * by_name(s)[0].astype(np.float64) for w, s in zip((0.6, 0.6, 0.4, 0.4), ens.STREAMS))
    pub = ctr["ensembles"]["4S"]["weight_sets"]["published"]
    assert pub["weights"] == [0.6, 0.6, 0.4, 0.4]
    assert pub["test"]["top1"] == pytest.approx(100 * top1(ref, by_name("joint")[1]))
    assert ctr["streams"]["bone"]["test"]["top1"] == pytest.approx(100 * top1(*by_name("bone")))
    for name in ("2S", "4S"):
        sets = ctr["ensembles"][name]["weight_sets"]
        assert sets["val"]["available"] and sets["val"]["tuned_on"] == "val"
        assert sets["test_tuned"]["label"] == "tuned on test (optimistic)"
        # tuning on test can only help on test, relative to the val-tuned weights
        assert sets["test_tuned"]["test"]["top1"] >= sets["val"]["test"]["top1"]
        assert sets["test_tuned"]["evaluations"] <= 40

    # group 2: 4S unavailable with the missing streams listed; val unavailable, not faked
    e4 = hyper["ensembles"]["4S"]
    assert not e4["available"] and e4["missing"] == ["joint_motion", "bone_motion"]
    e2 = hyper["ensembles"]["2S"]["weight_sets"]
    assert e2["published"]["weights"] == [1.0, 1.0] and "Hyperformer" in e2["published"]["weights_source"]
    assert not e2["val"]["available"] and "no scores_val.npz" in e2["val"]["reason"]
    assert e2["test_tuned"]["available"]

    # the markdown says which number is which
    assert "tuned on test (optimistic)" in text and "tuned on val (honest)" in text
    assert "unavailable: missing stream(s): joint_motion, bone_motion" in text
    assert "profile `quick` is a shortened recipe" in text
    assert f"wrote {out}" in text
    json.dumps(report, allow_nan=False)


def test_run_is_deterministic(tmp_path, capsys):
    rng = np.random.default_rng(5)
    labels, names = _random_part(rng, 25, 4, "s")
    dirs = [make_run(tmp_path, s, _stream_scores(rng, labels, names, 4)) for s in ("joint", "bone")]
    ens.run(_parse([*map(str, dirs), "--json", str(tmp_path / "a.json"), "--calls", "12"]))
    ens.run(_parse([*map(str, dirs), "--json", str(tmp_path / "b.json"), "--calls", "12"]))
    capsys.readouterr()
    assert read_json(tmp_path / "a.json") == read_json(tmp_path / "b.json")


def test_missing_files_name_the_run_dir(tmp_path):
    rng = np.random.default_rng(0)
    labels, names = _random_part(rng, 5, 3, "s")
    d = make_run(tmp_path, "joint", _stream_scores(rng, labels, names, 3))
    (d / "scores_test.npz").unlink()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(d))}.*no scores_test.npz"):
        ens.load_run(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(empty))}.*no metrics.json"):
        ens.ensemble_report([empty])


def test_bad_cells_and_duplicate_streams(tmp_path):
    rng = np.random.default_rng(0)
    labels, names = _random_part(rng, 5, 3, "s")
    a = make_run(tmp_path / "a", "joint", _stream_scores(rng, labels, names, 3))
    b = make_run(tmp_path / "b", "joint", _stream_scores(rng, labels, names, 3))
    with pytest.raises(ValueError, match=f"two joint runs for the same cell.*{re.escape(str(a))}.*{re.escape(str(b))}"):
        ens.ensemble_report([a, b])
    write_json(b / "metrics.json", {"cell": {"benchmark": "ucla", "encoder": "ctrgcn", "stream": "rgb",
                                             "csre": True, "seed": 0, "profile": "quick"}})
    with pytest.raises(ValueError, match="unknown stream 'rgb'"):
        ens.load_run(b)
    write_json(b / "metrics.json", {"cell": {"benchmark": "ucla", "encoder": "ctrgcn", "stream": "bone",
                                             "csre": True, "seed": True, "profile": "quick"}})
    with pytest.raises(ValueError, match="'seed' must be int"):
        ens.load_run(b)


def test_streams_with_different_samples_raise_naming_dirs(tmp_path):
    rng = np.random.default_rng(0)
    labels, names = _random_part(rng, 6, 3, "s")
    j = make_run(tmp_path, "joint", _stream_scores(rng, labels, names, 3))
    b = make_run(tmp_path, "bone", _stream_scores(rng, labels[:5], names[:5], 3))
    with pytest.raises(ValueError, match=re.escape(f"sample names differ between {j} and {b}")):
        ens.ensemble_report([j, b])
