"""Multi-stream ensembles (2S, 4S) of finished runs, with three honestly labelled weight sets.

``python -m harness ensemble RUN_DIR...`` reads each run directory's ``metrics.json`` (its
``cell``) and score files (``scores_test.npz``, optional ``scores_val.npz``; see
:mod:`harness.io`), groups the runs by (benchmark, encoder, csre, arm, seed, profile) and, per group,
reports top-1/top-5 (percent, test set) of every stream alone and of every ensemble under:

``published``
    the fixed weights of the encoder family's official ``ensemble.py`` (reference-behaviour.md
    §8); families without a published table borrow CTR-GCN's, and ``weights_source`` says so.
``val``
    weights tuned on ``scores_val.npz`` (a validation split carved from the training set), then
    applied to the test set: the honest tuned number. Unavailable, not faked, when a stream has
    no ``scores_val.npz``.
``test_tuned``
    weights tuned on the test set itself, as the official CSRE code does (``gp_minimize``):
    optimistic, labelled "tuned on test (optimistic)", never the headline.
``paper``
    the paper's protocol whole: every stream's best test epoch (``scores_test_best.npz``, what the
    official trainers reload and score), weights tuned on those test labels by the official
    search. Unavailable where a stream has no best-epoch score file.

An ensemble is the official one: a weighted sum of raw logits, then argmax (computed in float64;
the official scripts add float32 arrays, which can differ only on near-exact ties). 2S = joint +
bone, 4S = joint, bone, joint_motion, bone_motion (weights always listed in that order).

Published 2S weights. Every official ``ensemble.py`` (CTR-GCN, 2s-AGCN, Hyperformer, BlockGCN)
has the same 2-stream branch, ``J + alpha * B`` with ``--alpha`` defaulting to 1, so 2S published
is (1, 1) for every family: *not* the first two 4S weights (Hyperformer's 0.4, 0.6 would give a
different ensemble). The latest BlockGCN script overwrites ``alpha`` with its 4-stream list
before that branch, which breaks it; we use the branch as written before that change.

Tuning. :func:`tune_weights` is the official CSRE ``ensemble.py`` search, run with the library it
uses: scikit-optimize's ``gp_minimize`` over [0.2, 1.2]^k, 200 calls, ``random_state=0``, with the
objective -top-1 of the weighted sum (its defaults otherwise: 10 initial points, the ``gp_hedge``
acquisition). Its result is the best point it evaluated, so a tie keeps the earliest.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from harness.constants import ENSEMBLES, STREAMS
from harness.io import Scores, load_scores, read_json, score_file, write_json
from harness.metrics import topk_accuracy

__all__ = ["ENSEMBLES", "GROUP_KEYS", "SHORT_PROFILE_CALLS", "STREAMS", "Run", "Published", "Tuned", "align_scores",
           "combine", "configure_parser", "ensemble_report", "evaluate_group", "format_markdown", "group_runs",
           "load_run", "published_weights", "run", "tune_weights"]

GROUP_KEYS = ("benchmark", "encoder", "csre", "arm", "seed", "profile")
_SHORT = {"joint": "J", "bone": "B", "joint_motion": "JM", "bone_motion": "BM"}

TUNE_BOUNDS = (0.2, 1.2)  # the official CSRE search box, per weight
TUNE_CALLS = 200  # the official gp_minimize budget
TUNE_SEED = 0  # the official random_state
#: the budget the matrix gives the searches of shortened profiles (quick, ci): their numbers are never
#: compared with the paper, and 200 calls would cost minutes per ensemble of a tiny CI cell
SHORT_PROFILE_CALLS = 20
TUNER_DESCRIPTION = ("skopt.gp_minimize of -top-1 over the box, as the official CSRE ensemble.py "
                     "(n_calls, random_state as given; 10 initial points, fewer when n_calls is smaller)")

WEIGHT_SET_LABELS = {
    "paper": "paper protocol: best test epochs, tuned on test",
    "published": "published fixed weights",
    "val": "tuned on val (honest)",
    "test_tuned": "tuned on test (optimistic)",
}


# --------------------------------------------------------------------------- run directories

@dataclass(frozen=True)
class Run:
    """One finished run: where it lives, its cell, and its last-epoch scores."""

    run_dir: Path
    cell: Mapping[str, Any]  #: benchmark, encoder, stream, csre, seed, profile
    test: Scores
    val: Scores | None  #: None when the run had no validation split
    best: Scores | None = None  #: best-test-epoch scores (``scores_test_best.npz``), where written

    @property
    def stream(self) -> str:
        return self.cell["stream"]

    @property
    def group(self) -> tuple:
        """The key runs are ensembled under: (benchmark, encoder, csre, seed, profile)."""
        return tuple(self.cell[k] for k in GROUP_KEYS)


_CELL_TYPES: dict[str, type | tuple[type, ...]] = {
    "benchmark": str, "encoder": str, "stream": str, "csre": bool, "seed": int, "profile": str}


def _check_cell(cell: Any, source: Path) -> dict:
    """The ``cell`` of a metrics.json with the keys ensembles need, type-checked."""
    if not isinstance(cell, dict):
        raise ValueError(f"{source}: no 'cell' object")
    out = {}
    for key, typ in _CELL_TYPES.items():
        if key not in cell:
            raise ValueError(f"{source}: cell has no {key!r}")
        value = cell[key]
        # bool is an int subclass: a seed of `true` is a mistake, not seed 1.
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ValueError(f"{source}: cell {key!r} must be {typ.__name__}, got {value!r}")
        out[key] = value
    # the arm tells variants apart (csre-sc, csre-tau0.5, a competitor head); older cells lack it
    arm = cell.get("arm", "csre" if out["csre"] else "base")
    if not isinstance(arm, str) or not arm:
        raise ValueError(f"{source}: cell 'arm' must be a non-empty string, got {arm!r}")
    out["arm"] = arm
    if out["stream"] not in STREAMS:
        raise ValueError(f"{source}: unknown stream {out['stream']!r}; known: {', '.join(STREAMS)}")
    return out


def load_run(run_dir: str | Path) -> Run:
    """Read ``metrics.json``'s cell, ``scores_test.npz`` and, if present, ``scores_val.npz``.

    A missing ``metrics.json`` or ``scores_test.npz`` raises FileNotFoundError naming the run dir.
    """
    run_dir = Path(run_dir)
    metrics, test = run_dir / "metrics.json", run_dir / "scores_test.npz"
    for path in (metrics, test):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: not a finished run directory (no {path.name})")
    doc = read_json(metrics)
    cell = _check_cell(doc.get("cell") if isinstance(doc, dict) else None, metrics)
    val_path, best_path = run_dir / score_file("val"), run_dir / score_file("test", best=True)
    val = load_scores(val_path) if val_path.is_file() else None
    best = load_scores(best_path) if best_path.is_file() else None
    return Run(run_dir, cell, load_scores(test), val, best)


def group_runs(runs: Iterable[Run]) -> dict[tuple, dict[str, Run]]:
    """Group by (benchmark, encoder, csre, seed, profile) -> {stream: run}, sorted by key.

    Two runs of the same stream in one group raise ValueError naming both directories.
    """
    groups: dict[tuple, dict[str, Run]] = {}
    for r in runs:
        streams = groups.setdefault(r.group, {})
        if r.stream in streams:
            raise ValueError(f"two {r.stream} runs for the same cell {dict(zip(GROUP_KEYS, r.group))}: "
                             f"{streams[r.stream].run_dir} and {r.run_dir}")
        streams[r.stream] = r
    # Stable, readable order: by key, and streams in the canonical J, B, JM, BM order.
    # Keys are type-checked (str, str, bool, int, str), so they sort natively (seed 2 before 10).
    return {k: {s: groups[k][s] for s in STREAMS if s in groups[k]} for k in sorted(groups)}


# --------------------------------------------------------------------------- alignment and sums

def _examples(names: Iterable[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def align_scores(scores: Sequence[Scores], sources: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack streams sample by sample, matching sample names (score files may order them differently).

    Returns ``(logits (S, N, C) float32, labels (N,) int64, names (N,))`` in the order of the
    first stream. Different name sets, duplicate names, different class counts or labels that
    disagree for a name raise ValueError naming the run dirs (``sources``) involved.
    """
    if len(scores) != len(sources) or not scores:
        raise ValueError("align_scores needs one source per score set, and at least one")
    ref, ref_src = scores[0], sources[0]
    ref_names = ref.names.astype(str)
    for s, src in zip(scores, sources):
        names = s.names.astype(str)
        if len(set(names.tolist())) != len(names):
            raise ValueError(f"{src}: sample names are not unique; streams cannot be aligned by name")
    index = {n: i for i, n in enumerate(ref_names.tolist())}  # name -> row in the reference
    stacked, n_class = [], ref.logits.shape[1]
    for s, src in zip(scores, sources):
        names = s.names.astype(str).tolist()
        if set(names) != index.keys():
            only_ref, only_here = index.keys() - set(names), set(names) - index.keys()
            raise ValueError(f"sample names differ between {ref_src} and {src}: {len(only_ref)} only in the "
                             f"first ({_examples(only_ref)}), {len(only_here)} only in the second "
                             f"({_examples(only_here)})")
        if s.logits.shape[1] != n_class:
            raise ValueError(f"class counts differ: {ref_src} has {n_class}, {src} has {s.logits.shape[1]}")
        # order[i] = row of this stream holding the reference's i-th sample
        order = np.empty(len(names), dtype=np.int64)
        order[[index[n] for n in names]] = np.arange(len(names))
        bad = np.flatnonzero(s.labels[order] != ref.labels)
        if bad.size:
            raise ValueError(f"labels differ between {ref_src} and {src} for {bad.size} samples "
                             f"({_examples(ref_names[bad].tolist())})")
        stacked.append(np.asarray(s.logits, dtype=np.float32)[order])
    return np.stack(stacked), ref.labels.astype(np.int64), ref_names


def combine(logits: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of stream logits: (S, N, C), (S,) -> (N, C) float64 (the official ensemble)."""
    w = np.asarray(weights, dtype=np.float64)
    if logits.ndim != 3 or w.shape != (logits.shape[0],):
        raise ValueError(f"need one weight per stream: logits {logits.shape}, weights {w.shape}")
    return np.tensordot(w, logits, axes=1)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
    """{"top1": %, "top5": %} of (N, C) logits, full precision."""
    return {"top1": 100.0 * topk_accuracy(logits, labels, 1), "top5": 100.0 * topk_accuracy(logits, labels, 5)}


# --------------------------------------------------------------------------- published weights

class Published(NamedTuple):
    weights: tuple[float, ...]  #: in STREAMS order, one per stream of the ensemble
    source: str  #: where they come from, including any substitution


# 4S weights (J, B, JM, BM) per family and dataset, from each official ensemble.py.
_PUBLISHED_4S: dict[str, dict[str, tuple[float, ...]]] = {
    "ctrgcn": {"ntu": (0.6, 0.6, 0.4, 0.4), "ucla": (0.6, 0.6, 0.4, 0.4)},
    "hyperformer": {"ntu": (0.4, 0.6, 0.2, 0.2), "ucla": (0.4, 0.4, 0.3, 0.2)},
    "blockgcn": {"ntu": (0.6, 0.7, 0.35, 0.2), "ucla": (0.7, 0.5, 0.6, 0.2)},
}
# Families whose official ensemble.py has the 2-stream branch J + alpha*B, alpha = 1 by default.
_PUBLISHED_2S = {"ctrgcn", "agcn", "hyperformer", "blockgcn"}
_FAMILY_NAMES = {"ctrgcn": "CTR-GCN", "agcn": "2s-AGCN", "hyperformer": "Hyperformer", "blockgcn": "BlockGCN",
                 "hcn": "HCN", "infogcn": "InfoGCN"}
_WHY_BORROWED = {
    "hcn": "HCN publishes no multi-stream ensemble",
    "infogcn": "InfoGCN's published ensemble uses 6 other streams (k in {1, 2, 8} x position/motion)",
    "agcn": "2s-AGCN publishes only the 2-stream J + 1*B",
}


def _dataset_family(benchmark: str) -> str:
    if benchmark.startswith("ucla"):
        return "ucla"
    if benchmark.startswith("ntu"):
        return "ntu"
    raise ValueError(f"unknown benchmark {benchmark!r}: published weights exist for NTU (ntu*) and NW-UCLA (ucla)")


def published_weights(encoder: str, benchmark: str, ensemble: str) -> Published:
    """The official fixed weights of ``encoder``'s family for ``ensemble`` ("2S" or "4S") on ``benchmark``.

    2S is J + 1*B for every family (see the module docstring). Encoders without a published
    table (HCN, InfoGCN; 2s-AGCN for 4S; unknown names) get CTR-GCN's, said in ``source``.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; known: {', '.join(ENSEMBLES)}")
    name = _FAMILY_NAMES.get(encoder, encoder)
    if ensemble == "2S":
        own = encoder in _PUBLISHED_2S
        family = encoder if own else "ctrgcn"
        source = f"{_FAMILY_NAMES[family]} ensemble.py: J + 1*B (--alpha default 1)"
        weights: tuple[float, ...] = (1.0, 1.0)
    else:
        own = encoder in _PUBLISHED_4S
        family = encoder if own else "ctrgcn"
        data = _dataset_family(benchmark) if family != "ctrgcn" else "ntu"  # CTR-GCN: same everywhere
        weights = _PUBLISHED_4S[family][data]
        where = {"ntu": "NTU", "ucla": "NW-UCLA"}[data] if family != "ctrgcn" else "all datasets"
        source = f"{_FAMILY_NAMES[family]} ensemble.py ({where})"
    if not own:
        why = _WHY_BORROWED.get(encoder, f"no published ensemble for encoder {encoder!r}")
        source = f"CTR-GCN's weights used for {name}, as {why}; " + source
    return Published(tuple(float(w) for w in weights), source)


# --------------------------------------------------------------------------- tuning

class Tuned(NamedTuple):
    weights: tuple[float, ...]  #: best weights found, one per stream
    top1: float  #: top-1 fraction on the tuning set at those weights
    evaluations: int  #: objective evaluations (gp_minimize's calls)


def _hits(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> int:
    """Top-1 hits of the weighted ensemble (an integer, so comparisons have exact ties)."""
    return int((np.argmax(combine(logits, weights), axis=1) == labels).sum())


def tune_weights(logits: np.ndarray, labels: np.ndarray, *, n_calls: int = TUNE_CALLS,
                 bounds: tuple[float, float] = TUNE_BOUNDS, seed: int = TUNE_SEED) -> Tuned:
    """Maximise ensemble top-1 over weights in ``bounds``^S with ``gp_minimize`` (the official search).

    ``logits`` (S, N, C), ``labels`` (N,). The official call is ``gp_minimize(objective, [(0.2,
    1.2)] * S, n_calls=200, random_state=0)`` with ``objective = -accuracy``; so is this one, with
    the objective computed vectorised (float64 sum of the logits, argmax). Deterministic for a
    given seed. ``n_initial_points`` is gp_minimize's default 10, or ``n_calls`` when that is
    smaller (gp_minimize refuses fewer calls than initial points).
    """
    from skopt import gp_minimize
    logits = np.asarray(logits, dtype=np.float64)  # once, not a float32 -> float64 copy per evaluation
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 3 or labels.shape != (logits.shape[1],):
        raise ValueError(f"tune_weights needs logits (S, N, C) and labels (N,), got {logits.shape}, {labels.shape}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with low < high, got {bounds}")
    if n_calls < 1:
        raise ValueError(f"n_calls must be at least 1, got {n_calls}")
    n = labels.shape[0]

    def objective(w: list[float]) -> float:
        return -_hits(logits, labels, np.asarray(w, dtype=np.float64)) / n

    result = gp_minimize(objective, [(lo, hi)] * logits.shape[0], n_calls=n_calls, random_state=seed,
                         n_initial_points=min(10, n_calls))
    return Tuned(tuple(float(x) for x in result.x), float(-result.fun), len(result.func_vals))


# --------------------------------------------------------------------------- one group

def _unavailable(label: str, reason: str) -> dict:
    return {"available": False, "label": label, "reason": reason}


def _evaluate_ensemble(name: str, runs: Mapping[str, Run], cell: Mapping[str, Any], *, n_calls: int,
                       bounds: tuple[float, float], seed: int) -> dict:
    """Report for one ensemble (2S or 4S) of one group: availability, then the three weight sets."""
    streams = ENSEMBLES[name]
    missing = [s for s in streams if s not in runs]
    out: dict[str, Any] = {"streams": list(streams)}
    if missing:
        return {**out, "available": False, "missing": missing,
                "reason": f"missing stream(s): {', '.join(missing)}"}
    members = [runs[s] for s in streams]
    logits, labels, _ = align_scores([r.test for r in members], [str(r.run_dir) for r in members])
    tuner = {"n_calls": n_calls, "bounds": list(bounds), "seed": seed}
    sets: dict[str, dict] = {}

    pub = published_weights(cell["encoder"], cell["benchmark"], name)
    sets["published"] = {"available": True, "label": WEIGHT_SET_LABELS["published"], "weights": list(pub.weights),
                         "weights_source": pub.source, "tuned_on": None,
                         "test": _accuracy(combine(logits, pub.weights), labels)}

    def tuned(key: str, part: str, missing: str, source: str, **extra: Any) -> dict:
        """The weight set ``key`` tuned on every member's ``part`` scores (``val``, ``best`` or ``test``)."""
        absent = [r for r in members if getattr(r, part) is None]
        if absent:
            return _unavailable(WEIGHT_SET_LABELS[key], f"{missing} in: "
                                + ", ".join(f"{r.stream} ({r.run_dir})" for r in absent))
        t_logits, t_labels, _ = align_scores([getattr(r, part) for r in members],
                                             [f"{r.run_dir} ({part})" for r in members])
        t = tune_weights(t_logits, t_labels, n_calls=n_calls, bounds=bounds, seed=seed)
        on_tuning = _accuracy(combine(t_logits, t.weights), t_labels)
        scored = ({"val": on_tuning, "test": _accuracy(combine(logits, t.weights), labels)} if part == "val"
                  else {"test": on_tuning})  # the best-epoch and test sets are scored where they were tuned
        return {"available": True, "label": WEIGHT_SET_LABELS[key], "weights": list(t.weights),
                "weights_source": source, "tuned_on": "val" if part == "val" else "test", **extra, **scored,
                "evaluations": t.evaluations, "tuner": tuner}

    sets["val"] = tuned("val", "val", "no scores_val.npz (validation split disabled)", "tuned on scores_val.npz")
    sets["paper"] = tuned("paper", "best", "no scores_test_best.npz",
                          "tuned on scores_test_best.npz, as the official CSRE ensemble.py does on the best-epoch "
                          "score files", epochs={r.stream: int(r.best.epoch) for r in members if r.best is not None})
    sets["test_tuned"] = tuned("test_tuned", "test", "no scores_test.npz",
                               "tuned on scores_test.npz, as the official CSRE code does")
    return {**out, "available": True, "missing": [], "n_test": int(labels.shape[0]), "weight_sets": sets}


def evaluate_group(runs: Mapping[str, Run], *, n_calls: int = TUNE_CALLS, bounds: tuple[float, float] = TUNE_BOUNDS,
                   seed: int = TUNE_SEED) -> dict:
    """JSON-ready report of one group ({stream: run} sharing a cell): streams alone, then 2S and 4S."""
    first = next(iter(runs.values()))
    cell = {k: first.cell[k] for k in GROUP_KEYS}
    report: dict[str, Any] = dict(cell)
    report["runs"] = {s: {"run_dir": str(r.run_dir), "epoch": r.test.epoch, "has_val": r.val is not None}
                      for s, r in runs.items()}
    report["streams"] = {
        s: {"test": {**_accuracy(r.test.logits, r.test.labels), "n": int(r.test.labels.shape[0])},
            "val": None if r.val is None else {**_accuracy(r.val.logits, r.val.labels),
                                               "n": int(r.val.labels.shape[0])}}
        for s, r in runs.items()}
    report["ensembles"] = {name: _evaluate_ensemble(name, runs, cell, n_calls=n_calls, bounds=bounds, seed=seed)
                           for name in ENSEMBLES}
    return report


def ensemble_report(run_dirs: Sequence[str | Path], *, n_calls: int = TUNE_CALLS,
                    bounds: tuple[float, float] = TUNE_BOUNDS, seed: int = TUNE_SEED) -> dict:
    """Load, group and evaluate ``run_dirs``: ``{"tuner": {...}, "groups": [group report, ...]}``."""
    if not run_dirs:
        raise ValueError("no run directories given")
    groups = group_runs(load_run(d) for d in run_dirs)
    return {
        "tuner": {"method": TUNER_DESCRIPTION, "n_calls": n_calls, "bounds": list(bounds), "seed": seed},
        "groups": [evaluate_group(g, n_calls=n_calls, bounds=bounds, seed=seed) for g in groups.values()],
    }


# --------------------------------------------------------------------------- markdown

def _pct(x: float) -> str:
    return f"{x:.2f}"


def _fmt_weights(streams: Sequence[str], weights: Sequence[float]) -> str:
    return ", ".join(f"{_SHORT[s]} {w:.3g}" for s, w in zip(streams, weights))


def format_markdown(report: Mapping[str, Any]) -> str:
    """One table per group: test top-1/top-5 (%) of every stream and ensemble x weight set."""
    lines: list[str] = []
    for g in report["groups"]:
        variant = "CSRE" if g["csre"] else "base"
        lines += [f"## {g['benchmark']} / {g['encoder']} / {variant} / seed {g['seed']} / profile {g['profile']}", ""]
        if g["profile"] != "paper":
            lines += [f"_profile `{g['profile']}` is a shortened recipe: not comparable with the paper's tables._", ""]
        lines += ["| scores | weights | test top-1 | test top-5 | note |", "|---|---|---|---|---|"]
        for s, m in g["streams"].items():
            lines.append(f"| {s} | single stream | {_pct(m['test']['top1'])} | {_pct(m['test']['top5'])} | "
                         f"epoch {g['runs'][s]['epoch']} (0-based) |")
        for name, e in g["ensembles"].items():
            if not e["available"]:
                lines.append(f"| {name} | - | - | - | unavailable: {e['reason']} |")
                continue
            for key, ws in e["weight_sets"].items():
                if not ws["available"]:
                    lines.append(f"| {name} | {ws['label']} | - | - | unavailable: {ws['reason']} |")
                    continue
                if key == "published":
                    note = ws["weights_source"]
                elif key == "val":
                    note = f"val top-1 {_pct(ws['val']['top1'])}"
                elif key == "paper":
                    epochs = ", ".join(f"{s} {ep}" for s, ep in ws["epochs"].items())
                    note = f"best test epochs {epochs} (0-based), tuned on the test set itself"
                else:
                    note = "tuned on the test set itself"
                lines.append(f"| {name} | {ws['label']}: {_fmt_weights(e['streams'], ws['weights'])} | "
                             f"{_pct(ws['test']['top1'])} | {_pct(ws['test']['top5'])} | {note} |")
        lines.append("")
    t = report["tuner"]
    lines.append(f"Tuned weights: {t['method']}; box [{t['bounds'][0]}, {t['bounds'][1]}] per weight, "
                 f"{t['n_calls']} evaluations, seed {t['seed']}. The val-tuned row is the honest tuned number.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command line

def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m harness ensemble``."""
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                   help="finished run directories (metrics.json + scores_test.npz); grouped by "
                        "benchmark, encoder, csre, seed and profile")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the full report (every number, weights and their sources) as JSON")
    p.add_argument("--calls", type=int, default=TUNE_CALLS, metavar="N",
                   help=f"evaluations per weight search (default {TUNE_CALLS}, the official budget)")
    p.add_argument("--bounds", type=float, nargs=2, default=list(TUNE_BOUNDS), metavar=("LOW", "HIGH"),
                   help="search box for each weight (default 0.2 1.2, the official one)")
    p.add_argument("--tune-seed", type=int, default=TUNE_SEED, metavar="SEED",
                   help="seed of the weight search (default 0, the official random_state)")


def run(args: argparse.Namespace) -> int:
    """Print the markdown tables; write ``--json`` atomically. Input errors raise ValueError/FileNotFoundError."""
    if args.calls < 1:
        raise ValueError(f"--calls must be at least 1, got {args.calls}")
    report = ensemble_report(args.run_dirs, n_calls=args.calls, bounds=(args.bounds[0], args.bounds[1]),
                             seed=args.tune_seed)
    print(format_markdown(report), end="")
    if args.json is not None:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0
