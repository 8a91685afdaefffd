"""The report: pure helpers by hand, then a whole report over fake run directories (full and partial)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness import report as rep
from harness.io import Scores, save_scores, write_json
from harness.metrics import classification_metrics, difficulty_levels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
C, PER_CLASS = 12, 5  # 12 classes x 5 test samples = 60 points (4 of 5 right is exactly 80 %)
LABELS = np.repeat(np.arange(C), PER_CLASS)  # (60,)

# Correct test samples per class at the last epoch (of 5): the numbers every check below uses.
CORRECT = {
    ("base", 1): [5, 5, 4, 4, 3, 5, 2, 5, 4, 5, 1, 5],
    ("base", 2): [5, 4, 4, 5, 3, 5, 3, 5, 4, 4, 2, 5],
    ("csre", 1): [5, 5, 5, 4, 4, 5, 3, 5, 5, 5, 2, 4],
    ("csre", 2): [5, 5, 4, 5, 4, 5, 4, 5, 5, 4, 2, 5],
}


# --------------------------------------------------------------------------- pure helpers

def test_per_class_difference_by_hand():
    base = [[50.0, 80.0, None], [70.0, 90.0, 100.0]]
    csre = [[60.0, 70.0, 20.0], [70.0, 100.0, None]]
    # seed 1: +10, -10, (base missing); seed 2: 0, +10, (CSRE missing) -> means 5, 0, NaN
    d = rep.per_class_difference(base, csre)
    np.testing.assert_allclose(d[:2], [5.0, 0.0])
    assert np.isnan(d[2])
    # a class present in only one seed pair averages over that pair alone
    np.testing.assert_allclose(rep.per_class_difference([[None, 40.0], [50.0, 40.0]], [[10.0, 40.0], [80.0, 60.0]]),
                               [30.0, 10.0])


def test_per_class_difference_rejects_mismatch():
    with pytest.raises(ValueError, match="same positive number of seeds"):
        rep.per_class_difference([[1.0]], [])
    with pytest.raises(ValueError, match="differ in shape"):
        rep.per_class_difference([[1.0, 2.0]], [[1.0, 2.0, 3.0]])


def test_level_counts_boundaries():
    acc = [0.0, 79.99, 80.0, 89.99, 90.0, 100.0, None]
    assert rep.level_counts(acc) == {"hard": 2, "medium": 2, "easy": 2}
    # the same rule as harness.metrics on fractions
    frac = np.array([np.nan if a is None else a / 100 for a in acc])
    assert rep.level_counts(acc) == difficulty_levels(frac)["counts"]
    assert rep.level_counts([]) == {"hard": 0, "medium": 0, "easy": 0}


def test_stratified_subsample():
    labels = np.array([0] * 30 + [1] * 20 + [2] * 10)
    idx = rep.stratified_subsample(labels, 30, seed=0)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [15, 10, 5]
    np.testing.assert_array_equal(idx, rep.stratified_subsample(labels, 30, seed=0))  # seeded
    # remainders: 7 of 60 -> exact 3.5, 2.33, 1.17 -> floors 3, 2, 1, the spare one to class 0
    assert np.bincount(labels[rep.stratified_subsample(labels, 7)]).tolist() == [4, 2, 1]
    np.testing.assert_array_equal(rep.stratified_subsample(labels, 100), np.arange(60))


def test_mean_std_and_row_normalise():
    assert rep.mean_std([1.0, 3.0, None]) == (2.0, pytest.approx(np.sqrt(2.0)), 2)
    assert rep.mean_std([4.0]) == (4.0, None, 1)
    assert rep.mean_std([]) == (None, None, 0)
    np.testing.assert_allclose(rep.row_normalise(np.array([[1, 3], [0, 0]])), [[0.25, 0.75], [0.0, 0.0]])


def test_pair_groups_tags():
    k = lambda arm, profile="paper": ("ucla", "ctrgcn", "joint", arm, profile)  # noqa: E731
    keys = [k("base"), k("csre"), k("csre-tc"), k("base-x"), k("csre-x"), k("csre", "ci")]
    assert rep.pair_groups(keys) == [(k("base"), k("csre")), (k("base"), k("csre-tc")), (k("base-x"), k("csre-x"))]


def test_class_names(tmp_path):
    names = rep.class_names("ntu60_xsub", 60)
    assert len(names) == 60 and names[0] == "A1 drink water" and names[59].startswith("A60 ")
    assert len(rep.class_names("ntu120_xset", 120)) == 120
    assert rep.class_names("ucla", 10, meta_dir=tmp_path) is None
    (tmp_path / "ucla_action_classes.tsv").write_text("1\tpick up with one hand\n2\tpick up with two hands\n")
    assert rep.class_names("ucla", 2, meta_dir=tmp_path) == ["A1 pick up with one hand", "A2 pick up with two hands"]
    assert rep.class_names("ucla", 3, meta_dir=tmp_path) is None  # incomplete file: fall back to ids


# --------------------------------------------------------------------------- fake run directories

def _logits(correct_per_class, labels=LABELS, num_class=C, per_class=PER_CLASS) -> np.ndarray:
    """Logits whose top-1 is right for the first k samples of each class, else the next class."""
    logits = np.zeros((len(labels), num_class), np.float32)
    for i, y in enumerate(labels):
        right = (i % per_class) < correct_per_class[y]
        logits[i, y if right else (y + 1) % num_class] = 5.0
        logits[i, (y + 2) % num_class] = 1.0
    return logits


def _features(labels: np.ndarray, seed: int, dim: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, dim)) * 3
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32)


def make_run(root: Path, arm: str, seed: int, *, profile: str = "ci", features: bool = True,
             scores: bool = True, run_json: bool = True, stream: str = "joint") -> Path:
    """A run directory shaped as harness.train writes it (metrics.json, scores, features, run.json)."""
    csre = arm.startswith("csre")
    run_dir = root / "ucla" / "ctrgcn" / stream / arm / f"seed{seed}"
    last_counts = np.array(CORRECT[(arm.split("-")[0], seed)])
    # epoch 0 worse, epoch 1 better than the last (so best-on-test is epoch 1), epoch 2 the last
    test_counts = [np.clip(last_counts - 2, 0, PER_CLASS), np.clip(last_counts + 1, 0, PER_CLASS), last_counts]
    val_labels = np.repeat(np.arange(C), 2)
    val_counts = [np.full(C, 1), np.full(C, 2), np.r_[np.full(C // 2, 2), np.full(C - C // 2, 1)]]
    history = []
    for epoch in range(3):
        test = classification_metrics(_logits(test_counts[epoch]), LABELS, C) | {"loss": 1.5 - 0.3 * epoch}
        val = classification_metrics(_logits(val_counts[epoch], val_labels, C, 2), val_labels, C) | {"loss": 1.6}
        history.append({"epoch": epoch, "lr": 0.1, "train": {"loss": 2.0 - 0.5 * epoch, "ce": 2.0 - 0.5 * epoch,
                                                              "contrastive": 0.1 if csre else 0.0,
                                                              "top1": 30.0 + 20 * epoch, "samples": 240},
                        "val": val, "test": test})

    def at(part):
        e = int(np.argmax([h[part]["top1"] for h in history]))  # the earliest best, as the trainer
        return {"selected_on": part, "epoch": e, "val": history[e]["val"], "test": history[e]["test"]}

    secs = 10.0 + seed + (2.0 if csre else 0.0)
    cost = [{"epoch": e, "train_seconds": secs, "eval_seconds": 1.0, "train_samples": 240, "peak_rss_mb": 500.0 + e}
            for e in range(3)]
    cell = {"benchmark": "ucla", "encoder": "ctrgcn", "stream": stream, "csre": csre, "seed": seed, "profile": profile}
    write_json(run_dir / "metrics.json", {
        "cell": cell, "finished": True, "epochs_done": 3, "headline": "last epoch (test)",
        "last": {"epoch": 2, "val": history[2]["val"], "test": history[2]["test"]},
        "best_on_val": at("val"), "best_on_test": at("test"),
        "recipe": {"epochs": 3, "batch_size": 16}, "data": {"modality": stream}, "train_config": {"seed": seed},
        "precision": "fp32", "determinism": {}, "world_size": 1, "device": "cpu",
        "cost": {"seconds_per_epoch": secs, "eval_seconds_per_epoch": 1.0, "peak_memory_mb": 502.0,
                 "memory_kind": "process peak RSS", "per_epoch": cost},
        "history": history,
    })
    names = np.array([f"a{y + 1:02d}_s{i:03d}" for i, y in enumerate(LABELS)])
    if scores:
        save_scores(run_dir / "scores_test.npz", Scores(_logits(last_counts), LABELS, names, 2))
    if features:
        np.savez(run_dir / "features_test.npz", features=_features(LABELS, seed + 10 * csre), labels=LABELS,
                 names=names, epoch=np.int64(2))
    if run_json:
        write_json(run_dir / "run.json", {"cell": cell, "parameters": 1_460_000 + (70_000 if csre else 0),
                                          "encoder_parameters": 1_460_000, "device_name": "x86_64"})
    return run_dir


def _pct(k: int) -> float:
    return 100.0 * k / PER_CLASS


def _top1(counts) -> float:
    return 100.0 * sum(counts) / (C * PER_CLASS)


def _images(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\((figures/[^)]+)\)", text)


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, path


def _row(text: str, *cells: str) -> str:
    """The table line containing every one of ``cells``."""
    rows = [line for line in text.splitlines() if line.startswith("|") and all(c in line for c in cells)]
    assert rows, f"no row with {cells}"
    return rows[0]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for arm in ("base", "csre"):
        for seed in (1, 2):
            make_run(root, arm, seed)
    path = rep.write_report(root, tsne_max=40)
    return root, path, path.read_text()


def test_competitor_head_arms_are_their_own_groups(tmp_path):
    """The arm comes from the cell the trainer writes, so a head's runs (arm 'skeletongcl') are not
    mistaken for duplicates of the baseline."""
    base = make_run(tmp_path, "base", 1)
    head = base.parent.parent / "skeletongcl" / "seed1"
    shutil.copytree(base, head)
    doc = json.loads((head / "metrics.json").read_text())
    doc["cell"].update(arm="skeletongcl", head="skeletongcl")
    write_json(head / "metrics.json", doc)
    doc = json.loads((base / "metrics.json").read_text())
    doc["cell"].update(arm="base", head=None)
    write_json(base / "metrics.json", doc)
    problems: list[str] = []
    runs = rep.collect_runs(tmp_path, problems)
    assert sorted(r.arm for r in runs) == ["base", "skeletongcl"] and problems == []


def test_collect_runs(full_report):
    root, _, _ = full_report
    runs = rep.collect_runs(root)
    assert [(r.arm, r.seed) for r in runs] == [("base", 1), ("base", 2), ("csre", 1), ("csre", 2)]
    assert runs[0].group == ("ucla", "ctrgcn", "joint", "base", "ci") and runs[2].csre
    assert runs[0].run_info["parameters"] == 1_460_000


def test_report_results_table(full_report):
    root, path, text = full_report
    assert path == root / "report" / "report.md"
    for arm in ("base", "csre"):
        a, b = _top1(CORRECT[(arm, 1)]), _top1(CORRECT[(arm, 2)])
        row = _row(text, f"| `{arm}` |", "| `ci` |")
        assert f"{np.mean([a, b]):.2f} ± {np.std([a, b], ddof=1):.2f}" in row
        assert "| 1,2 |" in row and "2/2 (3 epochs)" in row
    # labelled selections: best on val (epoch 1 by val top-1) and best on test (epoch 1, the +1 epoch)
    assert "Top-1 best on val (honest)" in text and "Top-1 best on test (optimistic)" in text
    best = [_top1(np.clip(np.array(CORRECT[("base", s)]) + 1, 0, PER_CLASS)) for s in (1, 2)]
    assert f"{np.mean(best):.2f} ± {np.std(best, ddof=1):.2f}" in _row(text, "| `base` |", "| `ci` |")
    # every table states its profile and the paper caveat
    assert text.count("Profile of these numbers: `ci`") == 7
    assert text.count(rep.PAPER_NOTE) >= 7 and "**Not comparable with the paper:** `ci`" in text


def test_report_per_class_difference(full_report):
    root, _, text = full_report
    diff = np.mean([[_pct(c) - _pct(b) for b, c in zip(CORRECT[("base", s)], CORRECT[("csre", s)])]
                    for s in (1, 2)], axis=0)
    expected = rep.per_class_difference(
        [[_pct(k) for k in CORRECT[("base", s)]] for s in (1, 2)], [[_pct(k) for k in CORRECT[("csre", s)]] for s in (1, 2)])
    np.testing.assert_allclose(expected, diff)
    overall = [_top1(CORRECT[("csre", s)]) - _top1(CORRECT[("base", s)]) for s in (1, 2)]
    row = _row(text, "`csre` − `base`")
    assert f"{np.mean(overall):.2f} ± {np.std(overall, ddof=1):.2f}" in row
    assert f"{diff.mean():+.2f}" in row
    up, down, same = int((diff > 0).sum()), int((diff < 0).sum()), int((diff == 0).sum())
    assert f"{up} / {down} / {same}" in row
    # NW-UCLA has no class-name file in data/meta: class ids, said so in the figure title
    assert f"{np.argmax(diff)} (+{diff.max():.1f})" in row
    assert "perclass__ucla__ctrgcn__joint__csre-vs-base__ci.png" in text


def test_report_levels_and_cost(full_report):
    _, _, text = full_report
    table7 = text[text.index("## Difficulty levels"):text.index("## Cost")]
    row = _row(table7, "`base` (2)", "`csre` (2)")
    cells = [c.strip() for c in row.strip("|").split("|")]
    for arm, at in (("base", 5), ("csre", 9)):
        counts = [rep.level_counts([_pct(k) for k in CORRECT[(arm, s)]]) for s in (1, 2)]
        for j, lv in enumerate(("hard", "medium", "easy")):
            v = [c[lv] for c in counts]
            want = f"{np.mean(v):.1f}" + (f" ± {np.std(v, ddof=1):.1f}" if np.std(v) > 0 else " ± 0.0")
            assert cells[at + j] == want, (arm, lv, cells)
    # base seed 1: 4 of 5 right is exactly 80 % -> medium, not hard
    assert rep.level_counts([_pct(k) for k in CORRECT[("base", 1)]]) == {"hard": 3, "medium": 3, "easy": 6}
    table8 = text[text.index("## Cost"):text.index("## t-SNE")]
    base = _row(table8, "| `base` |")
    assert "| 11.5 ± 0.7 |" in base and "1,460,000" in base and "process peak RSS" in base
    assert "1,530,000" in _row(table8, "| `csre` |")


def test_report_figures(full_report):
    root, path, text = full_report
    images = _images(text)
    kinds = sorted({Path(i).name.split("__")[0] for i in images})
    assert kinds == ["confusion", "curves", "perclass", "tsne"]
    assert len([i for i in images if "curves__" in i]) == 2 and len([i for i in images if "confusion__" in i]) == 2
    for image in images:
        _assert_png(path.parent / image)
    assert "tsne__ucla__ctrgcn__joint__base-vs-csre__ci.png" in text
    assert "base, seed 1, epoch 3: 40 of 60 samples, 64-d features (PCA 64 -> 40 dims" in text
    assert "Every input was present; nothing skipped." in text


def test_partial_input_skips_with_notes(tmp_path):
    make_run(tmp_path, "base", 1, features=False, run_json=False)
    make_run(tmp_path, "csre", 1, scores=False)
    make_run(tmp_path, "csre-tc", 1, features=False, scores=False)  # compared with base
    broken = tmp_path / "ucla" / "ctrgcn" / "bone" / "base" / "seed1"
    broken.mkdir(parents=True)
    (broken / "metrics.json").write_text("{not json")
    out = tmp_path / "elsewhere"
    path = rep.write_report(tmp_path, out, tsne_max=2000)
    assert path == out / "report.md"
    text = path.read_text()
    notes = text[text.index("## Notes"):]
    assert "base/seed1`: t-SNE input skipped (no features_test.npz)" in notes
    assert "csre/seed1`: no scores_test.npz; confusion matrix skipped" in notes
    assert "no run.json in seed(s) 1" in notes
    assert "bone/base/seed1`: skipped (" in notes and "not valid JSON" in notes
    assert "csre-tc (profile ci): no usable features_test.npz; t-SNE skipped" in notes
    # the CSRE t-SNE stands alone; the pairs still get their per-class figures; the base confusion exists
    assert "tsne__ucla__ctrgcn__joint__csre__ci.png" in text
    assert "perclass__ucla__ctrgcn__joint__csre-tc-vs-base__ci.png" in text
    assert "confusion__ucla__ctrgcn__joint__base__ci.png" in text
    assert "confusion__ucla__ctrgcn__joint__csre__ci.png" not in text
    for image in _images(text):
        _assert_png(out / image)
    assert _row(text, "| `csre-tc` |", "| `ci` |")


def test_no_runs_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        rep.write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such runs directory"):
        rep.collect_runs(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="no readable run directories"):
        rep.collect_runs(tmp_path)


def test_verb(tmp_path, capsys):
    make_run(tmp_path, "base", 1, profile="paper")
    p = argparse.ArgumentParser()
    rep.configure_parser(p)
    args = p.parse_args([str(tmp_path), "--out", str(tmp_path / "r"), "--tsne-max", "0"])
    assert rep.run(args) == 0
    assert str(tmp_path / "r" / "report.md") in capsys.readouterr().out
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Skipped (`--tsne-max 0`)." in text and "Not comparable" not in text
    assert "No (benchmark, encoder, stream, profile) has both a baseline and a CSRE arm" in text
    assert p.parse_args([str(tmp_path)]).tsne_max == 2000 and p.parse_args([str(tmp_path)]).out is None
    with pytest.raises(ValueError, match="tsne_max"):
        rep.write_report(tmp_path, tsne_max=-1)
