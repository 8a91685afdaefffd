"""The report of a runs tree: results, the paper's figures 5 and 6, tables 7 and 8, curves, confusions.

``python -m harness report RUNS_DIR [--out DIR] [--tsne-max N]`` walks ``RUNS_DIR`` for run
directories (any folder holding a ``metrics.json``, as :mod:`harness.train` writes it) and writes
``report.md`` with its PNG figures under ``figures/`` to ``--out`` (default ``RUNS_DIR/report``).

Runs are grouped by (benchmark, encoder, stream, arm, profile); the *arm* is the run folder's
``csre`` / ``base`` name with its variant tag (``csre-tc``), as :mod:`harness.matrix` lays it out
(``<root>/<benchmark>/<encoder>/<stream>/<arm>/seed<k>``), or ``csre`` / ``base`` from the cell
when the folder is named otherwise. A CSRE arm ``csre-<tag>`` is compared with ``base-<tag>``
when that exists, else with ``base``, over the seeds both arms have.

What the report holds, every number labelled with its profile (only ``paper``-profile numbers are
comparable with the paper):

* **Results**: mean ± sample std (ddof 1) over seeds of the last-epoch test top-1 / top-5 (the
  headline), with the test top-1 of the epoch selected on validation and of the best test epoch
  (the official scripts' choice, optimistic) beside it;
* **Per-class accuracy difference** (Fig. 5): CSRE minus baseline, last-epoch test top-1 per
  class, mean over paired seeds, as a bar chart named with the class names of ``data/meta``
  (``<benchmark family>_action_classes.tsv``; NTU uses ``ntu120_action_classes.tsv``) or ids;
* **t-SNE** (Fig. 6) of the pooled test features (``features_test.npz``) of one seed per group,
  a stratified subsample of at most ``--tsne-max`` points, PCA to 50 dimensions first when the
  features are wider, base and CSRE side by side on the same samples;
* **Difficulty levels** (Table 7): hard < 80 % <= medium < 90 % <= easy classes, from the
  last-epoch test per-class accuracy, mean over seeds;
* **Cost** (Table 8): training and evaluation seconds per epoch, peak memory (and its kind),
  parameters from ``run.json``;
* **Training curves** per group (every seed) and the row-normalised **confusion matrix** of the
  group's first seed (``scores_test.npz``).

Missing or unreadable inputs (features, scores, ``run.json``, a broken ``metrics.json``) skip only
what needs them, with a note in the report. A ``RUNS_DIR`` without any run raises
FileNotFoundError naming it. Figures are drawn on matplotlib ``Figure`` objects with the Agg
canvas (no pyplot state, no GUI backend) and written atomically.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from harness.constants import STREAMS
from harness.io import atomic_path, load_scores, read_json, write_text
from harness.metrics import difficulty_levels, mean_std

__all__ = ["PAPER_NOTE", "RunRecord", "class_names", "collect_runs", "configure_parser", "level_counts",
           "mean_std", "pair_groups", "per_class_difference", "row_normalise", "run", "stratified_subsample",
           "tsne_embedding", "write_report"]

REPO = Path(__file__).resolve().parents[1]
META_DIR = REPO / "data" / "meta"
HARD, EASY = 80.0, 90.0  # Table 7 thresholds, percent: hard < 80 <= medium < 90 <= easy
TSNE_SEED = 0
PAPER_NOTE = ("Only numbers of the `paper` profile are comparable with the paper's tables; `quick` and "
              "`ci` runs use shortened recipes or data subsets.")
_ARM = re.compile(r"^(csre|base)(?:-(.+))?$")
_DASH = "—"

GroupKey = tuple  # (benchmark, encoder, stream, arm, profile)


# --------------------------------------------------------------------------- run directories

@dataclass(frozen=True)
class RunRecord:
    """One run directory: its cell, where it sits in the layout, its metrics and ``run.json``."""

    run_dir: Path
    benchmark: str
    encoder: str
    stream: str
    arm: str  #: ``csre`` / ``base`` (with ``-<tag>`` for a variant), or a competitor head's name
    csre: bool
    seed: int
    profile: str
    metrics: Mapping[str, Any] = field(compare=False, repr=False)
    run_info: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)  #: run.json

    @property
    def tag(self) -> str:
        m = _ARM.match(self.arm)
        return (m.group(2) or "") if m else ""

    @property
    def group(self) -> GroupKey:
        return (self.benchmark, self.encoder, self.stream, self.arm, self.profile)

    @property
    def finished(self) -> bool:
        return bool(self.metrics.get("finished"))

    @property
    def last_test(self) -> Mapping[str, Any]:
        return self.metrics["last"]["test"]

    @property
    def num_class(self) -> int:
        return len(self.last_test.get("per_class") or [])

    def selected_test(self, which: str) -> Mapping[str, Any] | None:
        """Test metrics at the epoch chosen by ``best_on_val`` / ``best_on_test`` (None if absent)."""
        sel = self.metrics.get(which)
        if not isinstance(sel, Mapping) or not isinstance(sel.get("test"), Mapping):
            return None
        return {**sel["test"], "epoch": sel.get("epoch")}


_CELL_TYPES = {"benchmark": str, "encoder": str, "stream": str, "csre": bool, "seed": int, "profile": str}


def _load_record(path: Path, problems: list[str]) -> RunRecord:
    doc = read_json(path)
    cell = doc.get("cell") if isinstance(doc, dict) else None
    if not isinstance(cell, dict):
        raise ValueError("metrics.json has no 'cell' object")
    for key, typ in _CELL_TYPES.items():
        value = cell.get(key)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ValueError(f"cell {key!r} must be {typ.__name__}, got {value!r}")
    last = doc.get("last")
    test = last.get("test") if isinstance(last, dict) else None
    if not isinstance(test, dict) or not isinstance(test.get("top1"), (int, float)):
        raise ValueError("no evaluated epoch yet ('last' has no test metrics)")
    run_dir = path.parent
    arm = cell.get("arm")  # the trainer writes it (competitor heads included)
    if not isinstance(arm, str) or not arm:  # older cells: from the directory name
        m = _ARM.match(run_dir.parent.name)
        arm = run_dir.parent.name if m and (m.group(1) == "csre") == cell["csre"] else ("csre" if cell["csre"] else "base")
    info = None
    if (run_dir / "run.json").is_file():
        try:
            info = read_json(run_dir / "run.json")
        except ValueError as e:
            problems.append(f"`{run_dir}`: run.json ignored ({e})")
    return RunRecord(run_dir, cell["benchmark"], cell["encoder"], cell["stream"], arm, cell["csre"], cell["seed"],
                     cell["profile"], doc, info if isinstance(info, dict) else None)


def collect_runs(root: str | Path, problems: list[str] | None = None) -> list[RunRecord]:
    """Every readable run directory under ``root`` (those holding a ``metrics.json``), sorted.

    Unreadable ones and duplicates of a (group, seed) already seen are skipped; a line saying why
    is appended to ``problems`` when given. No ``metrics.json`` at all, or none readable, raises
    FileNotFoundError naming ``root``.
    """
    root = Path(root)
    problems = [] if problems is None else problems
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such runs directory")
    paths = sorted(root.rglob("metrics.json"))
    if not paths:
        raise FileNotFoundError(f"{root}: no run directories under it (no metrics.json found)")
    records, seen = [], {}
    for path in paths:
        try:
            rec = _load_record(path, problems)
        except (ValueError, OSError) as e:
            problems.append(f"`{path.parent}`: skipped ({e})")
            continue
        key = (rec.group, rec.seed)
        if key in seen:
            problems.append(f"`{rec.run_dir}`: skipped, the same cell as `{seen[key]}`")
            continue
        seen[key] = rec.run_dir
        records.append(rec)
    if not records:
        raise FileNotFoundError(f"{root}: no readable run directories ({len(paths)} metrics.json found; "
                                f"first problem: {problems[0] if problems else 'unknown'})")
    return sorted(records, key=lambda r: (_group_sort(r.group), r.seed))


def _group_sort(key: GroupKey) -> tuple:
    benchmark, encoder, stream, arm, profile = key
    s = STREAMS.index(stream) if stream in STREAMS else len(STREAMS)
    return (profile != "paper", profile, benchmark, encoder, s, stream, not arm.startswith("base"), arm)


def group_records(records: Iterable[RunRecord]) -> dict[GroupKey, list[RunRecord]]:
    """(benchmark, encoder, stream, arm, profile) -> runs sorted by seed, groups in report order."""
    out: dict[GroupKey, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.group, []).append(r)
    return {k: sorted(out[k], key=lambda r: r.seed) for k in sorted(out, key=_group_sort)}


def pair_groups(keys: Iterable[GroupKey]) -> list[tuple[GroupKey, GroupKey]]:
    """(baseline key, CSRE key) pairs: ``csre-<tag>`` against ``base-<tag>`` if present, else ``base``."""
    keys = list(keys)
    present = set(keys)
    pairs = []
    for key in keys:
        benchmark, encoder, stream, arm, profile = key
        m = _ARM.match(arm)
        if not m or m.group(1) != "csre":
            continue
        tagged = (benchmark, encoder, stream, f"base-{m.group(2)}", profile) if m.group(2) else None
        plain = (benchmark, encoder, stream, "base", profile)
        base = tagged if tagged in present else plain if plain in present else None
        if base is not None:
            pairs.append((base, key))
    return pairs


# --------------------------------------------------------------------------- pure helpers

def _fmt(values: Iterable[float | None], digits: int = 2, expect_n: int | None = None) -> str:
    mean, std, n = mean_std(values)
    if mean is None:
        return _DASH
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    return text + (f" (n={n})" if expect_n is not None and n != expect_n else "")


def per_class_difference(base: Sequence[Sequence[float | None]], csre: Sequence[Sequence[float | None]]) -> np.ndarray:
    """(C,) mean over paired seeds of CSRE minus baseline per-class accuracy (percentage points).

    ``base[i]`` and ``csre[i]`` are the per-class accuracies (percent; None for a class without
    test samples) of the same seed. A class's mean uses the seeds where both arms have it; NaN
    where none does.
    """
    if len(base) != len(csre) or not base:
        raise ValueError(f"need the same positive number of seeds per arm, got {len(base)} and {len(csre)}")
    b = np.array([[np.nan if a is None else float(a) for a in row] for row in base], dtype=np.float64)
    c = np.array([[np.nan if a is None else float(a) for a in row] for row in csre], dtype=np.float64)
    if b.ndim != 2 or b.shape != c.shape:
        raise ValueError(f"per-class arrays differ in shape: baseline {b.shape}, CSRE {c.shape}")
    diff = c - b  # (S, C), NaN where either is missing
    ok = ~np.isnan(diff)
    n = ok.sum(axis=0)
    out = np.full(diff.shape[1], np.nan)
    out[n > 0] = np.where(ok, diff, 0.0).sum(axis=0)[n > 0] / n[n > 0]
    return out


def level_counts(per_class: Sequence[float | None], hard: float = HARD, easy: float = EASY) -> dict[str, int]:
    """Table 7 counts from per-class accuracies in percent: hard < ``hard`` <= medium < ``easy`` <= easy.

    :func:`harness.metrics.difficulty_levels` (exactly 80 % is medium, exactly 90 % easy) on the
    percent values metrics.json stores (or their means over seeds); None (no test samples) counts nowhere.
    """
    acc = np.array([np.nan if a is None else float(a) for a in per_class], dtype=np.float64)
    return difficulty_levels(acc / 100, hard / 100, easy / 100)["counts"]


def stratified_subsample(labels: Sequence[int], max_n: int, seed: int = TSNE_SEED) -> np.ndarray:
    """Sorted indices of at most ``max_n`` samples, classes kept in proportion (seeded).

    Each class gets ``floor(max_n * count / N)`` samples, the remainder going to the largest
    fractional parts (lower class id first on ties); all indices when ``N <= max_n``.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    if n <= max_n:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    exact = max_n * counts / n
    quota = np.floor(exact).astype(int)
    order = np.lexsort((classes, -(exact - quota)))  # largest remainder first, then lower class
    quota[order[: max_n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota) if q]
    return np.sort(np.concatenate(picked))


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (a row without samples stays zero)."""
    cm = np.asarray(cm, dtype=np.float64)
    sums = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)


def class_names(benchmark: str, num_class: int, meta_dir: Path = META_DIR) -> list[str] | None:
    """``A<id> <name>`` per class from ``<family>_action_classes.tsv`` in ``meta_dir``; None if absent.

    NTU benchmarks read ``ntu120_action_classes.tsv`` (its first 60 rows are NTU RGB+D 60); other
    benchmarks ``<benchmark>_action_classes.tsv``. Rows are ``<id>\\t<name>``, id 1-based.
    """
    family = "ntu120" if benchmark.startswith("ntu") else benchmark
    path = Path(meta_dir) / f"{family}_action_classes.tsv"
    if not path.is_file():
        return None
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split("\t", 1)
        if len(parts) == 2 and parts[0].strip().isdigit():
            names[int(parts[0])] = parts[1].strip().rstrip(".")
    if not all(i + 1 in names for i in range(num_class)):
        return None
    return [f"A{i + 1} {names[i + 1]}" for i in range(num_class)]


def tsne_embedding(features: np.ndarray, seed: int = TSNE_SEED) -> tuple[np.ndarray, str]:
    """(N, 2) t-SNE of ``features`` (PCA to 50 dimensions first when wider) and a line saying how."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    x = np.asarray(features, dtype=np.float64)
    n, dim = x.shape
    how = []
    if dim > 50:
        k = min(50, n)
        x = PCA(n_components=k, random_state=seed).fit_transform(x)
        how.append(f"PCA {dim} -> {k} dims")
    perplexity = min(30.0, (n - 1) / 3.0)
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
               random_state=seed).fit_transform(x)
    how.append(f"t-SNE perplexity {perplexity:g}, random_state {seed}")
    return emb, ", ".join(how)


# --------------------------------------------------------------------------- figures

def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    fig.clear()


def _title(key: GroupKey) -> str:
    benchmark, encoder, stream, arm, profile = key
    return f"{benchmark} / {encoder} / {stream} / {arm} (profile {profile})"


def _slug(kind: str, *parts: str) -> str:
    return "__".join([kind] + [re.sub(r"[^A-Za-z0-9.+-]+", "-", p) for p in parts]) + ".png"


def _class_labels(benchmark: str, num_class: int) -> tuple[list[str], bool]:
    names = class_names(benchmark, num_class)
    return (names, True) if names is not None else ([str(i) for i in range(num_class)], False)


def plot_per_class_difference(diff: np.ndarray, labels: Sequence[str], title: str, path: Path) -> None:
    c = len(diff)
    fig, (ax,) = _figure(max(6.0, 0.13 * c + 1.5), 4.2 if c <= 20 else 5.5)
    heights = np.nan_to_num(diff, nan=0.0)
    colours = ["tab:green" if h > 0 else "tab:red" for h in heights]
    ax.bar(np.arange(c), heights, color=colours, width=0.8)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xticks(np.arange(c), labels, rotation=90, fontsize=7 if c <= 20 else 5)
    ax.set_xlim(-0.6, c - 0.4)
    ax.set_ylabel("CSRE − baseline, test top-1 (pp)")
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def plot_tsne(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], num_class: int, title: str, path: Path) -> None:
    fig, axes = _figure(5.0 * len(panels) + 0.8, 4.8, ncols=len(panels))
    sc = None
    for ax, (label, emb, y) in zip(axes, panels):
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap="turbo", vmin=0, vmax=max(num_class - 1, 1), s=6,
                        linewidths=0)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=list(axes), label="class id", shrink=0.85)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_curves(runs: Sequence[RunRecord], title: str, path: Path) -> None:
    fig, (ax_loss, ax_acc) = _figure(10.0, 4.0, ncols=2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for r, col in zip(runs, colours):
        hist = [h for h in r.metrics.get("history") or [] if isinstance(h, Mapping)]
        ep = [int(h.get("epoch", i)) + 1 for i, h in enumerate(hist)]

        def series(part: str, key: str) -> list[float]:
            return [float(h[part][key]) if isinstance(h.get(part), Mapping) and h[part].get(key) is not None
                    else np.nan for h in hist]

        ax_loss.plot(ep, series("train", "loss"), color=col, label=f"seed {r.seed}")
        for part, style in (("train", ":"), ("val", "--"), ("test", "-")):
            ys = series(part, "top1")
            if not all(np.isnan(ys)):
                ax_acc.plot(ep, ys, style, color=col, label=f"seed {r.seed} {part}")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1: train (dotted), val (dashed), test (solid)")
    from matplotlib.ticker import MaxNLocator
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], title: str, path: Path) -> None:
    c = cm.shape[0]
    side = min(max(4.5, 0.09 * c + 3.0), 16.0)
    fig, (ax,) = _figure(side + 1.0, side)
    im = ax.imshow(row_normalise(cm), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
    if c <= 30:
        ax.set_xticks(np.arange(c), labels, rotation=90, fontsize=6)
        ax.set_yticks(np.arange(c), labels, fontsize=6)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(title, fontsize=8)
    _save(fig, path)


# --------------------------------------------------------------------------- the report

def _profiles_line(profiles: Iterable[str]) -> str:
    ps = sorted(set(profiles))
    off = [p for p in ps if p != "paper"]
    text = "Profile of these numbers: " + ", ".join(f"`{p}`" for p in ps) + ". " + PAPER_NOTE
    if off:
        text += " **Not comparable with the paper:** " + ", ".join(f"`{p}`" for p in off) + "."
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _int(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) and not isinstance(n, bool) else _DASH


def _unique(values: Iterable[Any]) -> str:
    vs = sorted({str(v) for v in values if v is not None})
    return ", ".join(vs) if vs else _DASH


def _load_features(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int | None]:
    path = run_dir / "features_test.npz"
    if not path.is_file():
        raise FileNotFoundError("no features_test.npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z.files or "labels" not in z.files:
                raise ValueError("features_test.npz lacks 'features' or 'labels'")
            feats, labels = np.asarray(z["features"]), np.asarray(z["labels"])
            names = np.asarray(z["names"]).astype(str) if "names" in z.files else None
            epoch = int(z["epoch"]) if "epoch" in z.files else None
    except (OSError, EOFError) as e:
        raise ValueError(f"features_test.npz unreadable ({e})") from None
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(f"features_test.npz: features {feats.shape} and labels {labels.shape} do not match")
    if not np.isfinite(feats).all():
        raise ValueError("features_test.npz: features contain NaN or inf")
    return feats, labels.astype(np.int64), names, epoch


class _Builder:
    def __init__(self, root: Path, out: Path, records: list[RunRecord], problems: list[str], tsne_max: int):
        self.root, self.out, self.records, self.tsne_max = root, out, records, tsne_max
        self.fig_dir = out / "figures"
        self.groups = group_records(records)
        self.pairs = pair_groups(self.groups)
        self.notes: list[str] = list(problems)
        self.lines: list[str] = []

    # -- helpers ---------------------------------------------------------------------------

    def _image(self, name: str, alt: str) -> None:
        self.lines += [f"![{alt}](figures/{name})", ""]

    def _attempt(self, what: str, fn) -> bool:
        """Run one figure; an unexpected failure becomes a note instead of ending the report."""
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - a broken input must not stop the other figures
            self.notes.append(f"{what}: figure skipped ({type(e).__name__}: {e})")
            return False

    # -- sections --------------------------------------------------------------------------

    def header(self) -> None:
        profiles = sorted({r.profile for r in self.records})
        self.lines += [
            "# CSRE-bench report", "",
            f"Runs directory: `{self.root}`; {len(self.records)} run(s) in {len(self.groups)} group(s) "
            f"(benchmark, encoder, stream, arm, profile); profiles: {', '.join(f'`{p}`' for p in profiles)}.", "",
            f"> {PAPER_NOTE}", "",
            "Accuracies are percent on the test split. The headline is the **last epoch**; "
            "\"best on val\" is the test accuracy at the epoch selected on the validation split (honest), "
            "\"best on test\" the best test epoch as the official scripts report it (optimistic). "
            "Mean ± sample standard deviation (ddof 1) over seeds; a single seed shows no ±.", "",
        ]

    def results(self) -> None:
        self.lines += ["## Results (last epoch, test)", "", _profiles_line(r.profile for r in self.records), ""]
        rows, no_val = [], False
        for key, runs in self.groups.items():
            n = len(runs)
            val = [r.selected_test("best_on_val") for r in runs]
            no_val = no_val or any(v is None for v in val)
            tst = [r.selected_test("best_on_test") for r in runs]
            epochs = {r.metrics["recipe"].get("epochs") for r in runs if isinstance(r.metrics.get("recipe"), Mapping)}
            done = sum(r.finished for r in runs)
            rows.append([*key[:3], f"`{key[3]}`", f"`{key[4]}`", str(n), ",".join(str(r.seed) for r in runs),
                         _fmt([r.last_test.get("top1") for r in runs], expect_n=n),
                         _fmt([r.last_test.get("top5") for r in runs], expect_n=n),
                         _fmt([v["top1"] if v else None for v in val], expect_n=n),
                         _fmt([t["top1"] if t else None for t in tst], expect_n=n),
                         f"{done}/{n}" + (f" ({_unique(epochs)} epochs)" if epochs - {None} else "")])
        self.lines += _table(["Benchmark", "Encoder", "Stream", "Arm", "Profile", "n", "Seeds",
                              "Top-1 last epoch", "Top-5 last epoch", "Top-1 best on val (honest)",
                              "Top-1 best on test (optimistic)", "Finished"], rows)
        if no_val:
            self.lines += ["", "\"—\" under best on val: the runs had no validation split (`val_fraction = 0`)."]
        self.lines += [""]

    def _paired_seeds(self, base_key: GroupKey, csre_key: GroupKey) -> list[tuple[RunRecord, RunRecord]]:
        base = {r.seed: r for r in self.groups[base_key]}
        return [(base[r.seed], r) for r in self.groups[csre_key] if r.seed in base]

    def per_class(self) -> None:
        self.lines += ["## Per-class accuracy difference, CSRE − baseline (Fig. 5)", ""]
        if not self.pairs:
            self.lines += ["No (benchmark, encoder, stream, profile) has both a baseline and a CSRE arm; "
                           "nothing to compare.", ""]
            return
        self.lines += [_profiles_line(k[4] for pair in self.pairs for k in pair),
                       "Last-epoch test top-1 per class, mean over the seeds both arms have; pp = percentage "
                       "points.", ""]
        rows, images = [], []
        for base_key, csre_key in self.pairs:
            pairs = self._paired_seeds(base_key, csre_key)
            where = f"{_title(csre_key)} vs `{base_key[3]}`"
            if not pairs:
                self.notes.append(f"{where}: no seed in common; per-class difference skipped")
                continue
            widths = {r.num_class for pair in pairs for r in pair}
            if len(widths) != 1 or 0 in widths:
                self.notes.append(f"{where}: per-class accuracies missing or of different lengths {sorted(widths)}; "
                                  f"per-class difference skipped")
                continue
            diff = per_class_difference([b.last_test["per_class"] for b, _ in pairs],
                                        [c.last_test["per_class"] for _, c in pairs])
            labels, named = _class_labels(csre_key[0], len(diff))
            overall = [c.last_test["top1"] - b.last_test["top1"] for b, c in pairs]
            known = ~np.isnan(diff)
            order = np.argsort(-np.nan_to_num(diff, nan=0.0), kind="stable")
            shown = labels if named else [f"class {i}" for i in range(len(diff))]
            gains = [f"{shown[i]} ({diff[i]:+.1f})" for i in order[:3] if known[i] and diff[i] > 0]
            losses = [f"{shown[i]} ({diff[i]:+.1f})" for i in order[::-1][:3] if known[i] and diff[i] < 0]
            seeds = ",".join(str(b.seed) for b, _ in pairs)
            rows.append([*csre_key[:3], f"`{csre_key[3]}` − `{base_key[3]}`", f"`{csre_key[4]}`", seeds,
                         _fmt(overall), f"{np.nanmean(diff):+.2f}" if known.any() else _DASH,
                         f"{int((diff[known] > 0).sum())} / {int((diff[known] < 0).sum())} / "
                         f"{int((diff[known] == 0).sum())}", "; ".join(gains) or _DASH, "; ".join(losses) or _DASH])
            name = _slug("perclass", *csre_key[:3], csre_key[3] + "-vs-" + base_key[3], csre_key[4])
            title = (f"{_title(csre_key)} − {base_key[3]}\nlast-epoch per-class test top-1, mean over seeds {seeds}"
                     + ("" if named else "\n(0-based class ids: no class-name file in data/meta)"))
            if self._attempt(where, lambda: plot_per_class_difference(diff, labels, title, self.fig_dir / name)):
                images.append((name, f"per-class difference {where}"))
        self.lines += _table(["Benchmark", "Encoder", "Stream", "Arms", "Profile", "Paired seeds",
                              "Δ top-1 (pp)", "Mean per-class Δ (pp)", "Classes up / down / same",
                              "Largest gains", "Largest losses"], rows)
        self.lines.append("")
        for name, alt in images:
            self._image(name, alt)

    def tsne(self) -> None:
        self.lines += ["## t-SNE of test features (Fig. 6)", ""]
        if self.tsne_max == 0:
            self.lines += ["Skipped (`--tsne-max 0`).", ""]
            return
        self.lines += [_profiles_line(k[4] for k in self.groups), f"Pooled test features (`features_test.npz`) of one seed, "
                       f"a stratified subsample of at most {self.tsne_max} samples (seeded, the same samples for "
                       f"both arms), coloured by label.", ""]
        paired = {k for pair in self.pairs for k in pair}
        units = [(b, c) for b, c in self.pairs] + [(k,) for k in self.groups if k not in paired]
        self._tsne_done: set[Path] = set()
        for unit in units:
            self._attempt(" vs ".join(_title(k) for k in unit), lambda: self._tsne_unit(unit))

    def _tsne_unit(self, unit: tuple[GroupKey, ...]) -> None:
        loaded: dict[GroupKey, tuple[RunRecord, tuple]] = {}
        seeds_in_all = sorted(set.intersection(*[{r.seed for r in self.groups[k]} for k in unit]))
        for key in unit:
            runs = self.groups[key]
            order = sorted(runs, key=lambda r: (r.seed not in seeds_in_all, r.seed))
            for r in order:  # a seed every arm has first, then any seed with features
                try:
                    loaded[key] = (r, _load_features(r.run_dir))
                    break
                except (FileNotFoundError, ValueError) as e:
                    self.notes.append(f"`{r.run_dir}`: t-SNE input skipped ({e})")
        if not loaded:
            self.notes.append(f"{' vs '.join(_title(k) for k in unit)}: no usable features_test.npz; t-SNE skipped")
            return
        if len(loaded) < len(unit):
            lacking = [k[3] for k in unit if k not in loaded]
            self.notes.append(f"{' vs '.join(_title(k) for k in unit)}: no features for {', '.join(lacking)}; "
                              f"t-SNE of {', '.join(k[3] for k in loaded)} alone")
        dirs = {r.run_dir for r, _ in loaded.values()}
        if dirs <= self._tsne_done:  # e.g. the baseline alone, already drawn beside another CSRE arm
            return
        self._tsne_done |= dirs
        panels, idx_cache = [], {}
        for key, (r, (feats, labels, names, epoch)) in loaded.items():
            if len(labels) < 6:
                self.notes.append(f"`{r.run_dir}`: only {len(labels)} test features; t-SNE skipped")
                continue
            sig = (labels.tobytes(), None if names is None else names.tobytes())
            if sig not in idx_cache:
                idx_cache[sig] = stratified_subsample(labels, self.tsne_max, TSNE_SEED)
            idx = idx_cache[sig]
            emb, how = tsne_embedding(feats[idx], TSNE_SEED)
            when = f"epoch {epoch + 1}" if epoch is not None else "epoch ?"
            panels.append((f"{key[3]}, seed {r.seed}, {when}: {len(idx)} of {len(labels)} samples, "
                           f"{feats.shape[1]}-d features", emb, labels[idx], how))
        if not panels:
            return
        num_class = max(int(p[2].max()) + 1 for p in panels)
        first = unit[-1]
        arms = "-vs-".join(k[3] for k in loaded)
        name = _slug("tsne", *first[:3], arms, first[4])
        plot_tsne([p[:3] for p in panels], num_class,
                  f"{first[0]} / {first[1]} / {first[2]} (profile {first[4]}): {panels[-1][3]}", self.fig_dir / name)
        self.lines += [f"**{first[0]} / {first[1]} / {first[2]}**, profile `{first[4]}`: "
                       + "; ".join(f"{p[0]} ({p[3]})" for p in panels) + ".", ""]
        self._image(name, f"t-SNE {arms}")

    def levels(self) -> None:
        self.lines += ["## Difficulty levels (Table 7)", "",
                       _profiles_line(k[4] for k in self.groups),
                       f"Number of classes by last-epoch test top-1: hard < {HARD:g} % <= medium < {EASY:g} % <= "
                       f"easy; mean over seeds (± sample std); classes without test samples count nowhere.", ""]
        paired = {k for pair in self.pairs for k in pair}
        units = [(b, c) for b, c in self.pairs] + [
            ((k, None) if not k[3].startswith("csre") else (None, k)) for k in self.groups if k not in paired]

        def cells(key: GroupKey | None) -> list[str]:
            if key is None:
                return [_DASH] * 4
            counts = [level_counts(r.last_test.get("per_class") or []) for r in self.groups[key]]
            return [f"`{key[3]}` ({len(counts)})"] + [_fmt([c[lv] for c in counts], digits=1)
                                                     for lv in ("hard", "medium", "easy")]

        rows = []
        for base, csre in units:
            key = base or csre
            rows.append([*key[:3], f"`{key[4]}`", *cells(base), *cells(csre)])
        self.lines += _table(["Benchmark", "Encoder", "Stream", "Profile", "Baseline (seeds)", "hard", "medium",
                              "easy", "CSRE (seeds)", "hard", "medium", "easy"], rows)
        self.lines.append("")

    def cost(self) -> None:
        self.lines += ["## Cost (Table 8)", "", _profiles_line(k[4] for k in self.groups),
                       "Wall-clock seconds of training and of evaluation per epoch and peak memory depend on the "
                       "machine, precision and batch; parameters are of the trained model (with CSRE's heads "
                       "for a CSRE arm) and of the encoder alone, from `run.json`.", ""]
        rows = []
        for key, runs in self.groups.items():
            costs = [r.metrics.get("cost") if isinstance(r.metrics.get("cost"), Mapping) else {} for r in runs]
            infos = [r.run_info or {} for r in runs]
            missing = [r for r in runs if r.run_info is None]
            if missing:
                self.notes.append(f"{_title(key)}: no run.json in seed(s) {','.join(str(r.seed) for r in missing)}; "
                                  f"parameters not shown for them")
            rows.append([*key[:3], f"`{key[3]}`", f"`{key[4]}`", str(len(runs)),
                         _fmt([c.get("seconds_per_epoch") for c in costs], digits=1),
                         _fmt([c.get("eval_seconds_per_epoch") for c in costs], digits=1),
                         _fmt([c.get("peak_memory_mb") for c in costs], digits=0),
                         _unique(c.get("memory_kind") for c in costs),
                         _unique(_int(i.get("parameters")) for i in infos if i.get("parameters") is not None),
                         _unique(_int(i.get("encoder_parameters")) for i in infos
                                 if i.get("encoder_parameters") is not None),
                         _unique(i.get("device_name") or r.metrics.get("device") for i, r in zip(infos, runs)),
                         _unique(r.metrics.get("precision") for r in runs)])
        self.lines += _table(["Benchmark", "Encoder", "Stream", "Arm", "Profile", "n", "Train s/epoch",
                              "Eval s/epoch", "Peak memory (MB)", "Memory kind", "Parameters",
                              "Encoder parameters", "Device", "Precision"], rows)
        self.lines.append("")

    def curves(self) -> None:
        self.lines += ["## Training curves", "", _profiles_line(k[4] for k in self.groups), ""]
        for key, runs in self.groups.items():
            name = _slug("curves", *key)
            if self._attempt(_title(key), lambda: plot_curves(runs, _title(key), self.fig_dir / name)):
                self.lines += [f"**{_title(key)}**, seeds {','.join(str(r.seed) for r in runs)}", ""]
                self._image(name, f"training curves {_title(key)}")

    def confusion(self) -> None:
        from harness.metrics import confusion_matrix
        self.lines += ["## Confusion matrices (last epoch, test, rows normalised)", "",
                       _profiles_line(k[4] for k in self.groups), "The first seed of each group with `scores_test.npz`.", ""]
        for key, runs in self.groups.items():
            for r in runs:
                path = r.run_dir / "scores_test.npz"
                if not path.is_file():
                    self.notes.append(f"`{r.run_dir}`: no scores_test.npz; confusion matrix skipped for this seed")
                    continue
                try:
                    s = load_scores(path)
                    cm = confusion_matrix(s.logits, s.labels, s.logits.shape[1])
                except ValueError as e:
                    self.notes.append(f"`{r.run_dir}`: confusion matrix skipped ({e})")
                    continue
                labels, _ = _class_labels(key[0], cm.shape[0])
                name = _slug("confusion", *key)
                title = f"{_title(key)}, seed {r.seed}, epoch {s.epoch + 1}"
                if self._attempt(title, lambda: plot_confusion(cm, labels, title, self.fig_dir / name)):
                    self.lines += [f"**{title}**: top-1 {100 * np.trace(cm) / cm.sum():.2f} % of {int(cm.sum())} "
                                   f"samples", ""]
                    self._image(name, f"confusion {title}")
                break
            else:
                self.notes.append(f"{_title(key)}: no readable scores_test.npz; confusion matrix skipped")

    def footer(self) -> None:
        self.lines += ["## Notes", ""]
        self.lines += [f"- {n}" for n in self.notes] if self.notes else ["- Every input was present; nothing skipped."]
        self.lines.append("")

    def build(self) -> str:
        self.header()
        self.results()
        self.per_class()
        self.levels()
        self.cost()
        self.tsne()
        self.curves()
        self.confusion()
        self.footer()
        return "\n".join(self.lines)


def write_report(root: str | Path, out: str | Path | None = None, tsne_max: int = 2000) -> Path:
    """Write ``report.md`` and ``figures/*.png`` for the runs under ``root``; returns report.md's path.

    ``out`` defaults to ``root/report``. ``tsne_max`` caps the t-SNE points per panel (0 skips
    t-SNE). Raises FileNotFoundError when ``root`` holds no run.
    """
    if isinstance(tsne_max, bool) or not isinstance(tsne_max, int) or tsne_max < 0:
        raise ValueError(f"tsne_max must be a non-negative integer, got {tsne_max!r}")
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    problems: list[str] = []
    records = collect_runs(root, problems)
    out.mkdir(parents=True, exist_ok=True)
    text = _Builder(root, out, records, problems, tsne_max).build()
    path = out / "report.md"
    write_text(path, text)
    return path


# --------------------------------------------------------------------------- command line

def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m harness report``."""
    p.add_argument("runs_dir", type=Path, metavar="RUNS_DIR",
                   help="folder searched recursively for run directories (those holding metrics.json)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where report.md and figures/ go (default RUNS_DIR/report)")
    p.add_argument("--tsne-max", dest="tsne_max", type=int, default=2000, metavar="N",
                   help="at most N test samples per t-SNE panel, stratified by class (default 2000; 0 skips t-SNE)")


def run(args: argparse.Namespace) -> int:
    """Write the report; input errors raise ValueError / FileNotFoundError (the CLI prints them)."""
    path = write_report(args.runs_dir, args.out, tsne_max=args.tsne_max)
    print(f"wrote {path}")
    return 0
