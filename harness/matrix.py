"""Benchmark matrices: a benchmark expanded into training cells, run resumably, then ensembled and checked.

``python -m harness matrix ucla --profile quick --encoders ctrgcn --streams joint --seeds 1``

A **cell** is one ``harness train`` run: encoder x benchmark x stream x CSRE on/off x seed, with
the gin files of :func:`cell_gin_files` (encoder, dataset, the NW-UCLA recipe where the benchmark
is NW-UCLA, the 2s-AGCN CTR-GCN-pipeline recipe on NTU, CSRE, the profile, extra files) and its
run directory ``<root>/<benchmark>/<encoder>/<stream>/<csre|base>/seed<k>`` (``<root>`` = ``runs``
for the ``paper`` profile, ``runs/<profile>`` otherwise, so shortened runs never mix with real
ones).

Running: each cell is a child process (``python -m harness train ... --resume``), so one cell's
gin state, memory or crash cannot touch the next; its output goes to ``train.log`` in its run
directory. A finished cell (``metrics.json`` with ``finished``) is skipped, an interrupted one
resumes exactly from its checkpoint: re-running a matrix continues where it stopped. A cell that
fails is reported with its log path and exit code, the others go on, and the matrix exits non-zero
naming the failed cells (re-running retries only those).

After the cells: the stream ensembles per (encoder, CSRE, seed) (:mod:`harness.ensemble`) and the
comparison with the paper (:mod:`harness.paper`), written as JSON and markdown beside the runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]  # (not from harness.configurables: keeps `--help` free of torch)

__all__ = ["BENCHMARKS", "Cell", "MatrixResult", "cell_gin_files", "expand", "run_matrix"]

BENCHMARKS = ("ntu60_xsub", "ntu60_xview", "ntu120_xsub", "ntu120_xset", "ucla")
ENCODERS = ("hcn", "agcn", "ctrgcn", "hyperformer", "blockgcn", "infogcn")
STREAMS = ("joint", "bone", "joint_motion", "bone_motion")
PROFILES = ("paper", "quick", "ci")
#: the dataset file each benchmark reads, and how to get it
DATA_FILES = {"ntu60_xsub": "data/h5/ntu60.h5", "ntu60_xview": "data/h5/ntu60.h5",
              "ntu120_xsub": "data/h5/ntu120.h5", "ntu120_xset": "data/h5/ntu120.h5", "ucla": "data/h5/ucla.h5"}
#: official NW-UCLA recipes; the other families have none and use CTR-GCN's as a labelled stand-in
UCLA_RECIPES = {"ctrgcn": "ctrgcn_ucla", "hyperformer": "hyperformer_ucla"}


def data_hint(benchmark: str) -> str:
    """What to do when a benchmark's dataset file is missing."""
    if benchmark == "ucla":
        return "build it from the bundled raw data with `dvc repro ucla` (seconds)"
    stage = "ntu60" if benchmark.startswith("ntu60") else "ntu120"
    return (f"download the NTU RGB+D skeletons from the ROSE Lab (see data/raw/ntu/README.md), unpack them "
            f"under data/raw/ntu/, then `dvc repro {stage}`")


def cell_gin_files(benchmark: str, encoder: str, csre: bool, profile: str, extra: Sequence[str] = ()) -> list[str]:
    """The gin files of a cell, in the order that makes later files win where they must."""
    files = [f"gin/encoders/{encoder}.gin", f"gin/datasets/{benchmark}.gin"]
    if benchmark == "ucla":
        files.append(f"gin/recipes/{UCLA_RECIPES.get(encoder, 'ctrgcn_ucla')}.gin")
    elif encoder == "agcn":  # the paper trains 2s-AGCN in the CTR-GCN pipeline (64 frames, 65 epochs)
        files.append("gin/recipes/agcn_ctrgcn_pipeline.gin")
    if csre:
        files.append("gin/csre.gin")
    files.append(f"gin/profiles/{profile}.gin")
    return files + list(extra)


@dataclass(frozen=True)
class Cell:
    benchmark: str
    encoder: str
    stream: str
    csre: bool
    seed: int
    profile: str
    root: Path
    extra_gin: tuple[str, ...] = ()
    extra_params: tuple[str, ...] = ()
    tag: str = ""  # a variant label (e.g. 'tc', 'tau0.5') appended to the csre/base folder

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.encoder}/{self.stream}/{self.arm}/seed{self.seed}"

    @property
    def arm(self) -> str:
        return ("csre" if self.csre else "base") + (f"-{self.tag}" if self.tag else "")

    @property
    def run_dir(self) -> Path:
        return self.root / self.benchmark / self.encoder / self.stream / self.arm / f"seed{self.seed}"

    @property
    def gin_files(self) -> list[str]:
        return cell_gin_files(self.benchmark, self.encoder, self.csre, self.profile, self.extra_gin)

    @property
    def gin_params(self) -> list[str]:
        params = [f"TrainConfig.seed = {self.seed}", f"DataConfig.modality = '{self.stream}'",
                  f"TrainConfig.csre = {self.csre}"]
        return params + list(self.extra_params)

    def command(self, python: str = sys.executable) -> list[str]:
        cmd = [python, "-m", "harness", "train"]
        for f in self.gin_files:
            cmd += ["--gin_file", f]
        for p in self.gin_params:
            cmd += ["--gin_param", p]
        return cmd + ["--run_dir", str(self.run_dir), "--resume"]

    def finished(self) -> bool:
        path = self.run_dir / "metrics.json"
        try:
            return bool(json.loads(path.read_text()).get("finished"))
        except (OSError, ValueError):
            return False


def default_root(profile: str) -> Path:
    return REPO / "runs" if profile == "paper" else REPO / "runs" / profile


def expand(benchmark: str, *, encoders: Iterable[str] = ENCODERS, streams: Iterable[str] = STREAMS,
           csre: Iterable[bool] = (False, True), seeds: Iterable[int] = (1,), profile: str = "paper",
           root: str | os.PathLike | None = None, extra_gin: Sequence[str] = (), extra_params: Sequence[str] = (),
           tag: str = "") -> list[Cell]:
    """The cells of a benchmark: encoders x streams x CSRE on/off x seeds (in that nesting order)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    encoders, streams = list(encoders), list(streams)
    for e in encoders:
        if e not in ENCODERS:
            raise ValueError(f"unknown encoder {e!r}; known: {', '.join(ENCODERS)}")
    for s in streams:
        if s not in STREAMS:
            raise ValueError(f"unknown stream {s!r}; known: {', '.join(STREAMS)}")
    root = Path(root) if root is not None else default_root(profile)
    return [Cell(benchmark, e, s, c, int(k), profile, root, tuple(extra_gin), tuple(extra_params), tag)
            for e, s, c, k in itertools.product(encoders, streams, list(csre), list(seeds))]


@dataclass
class MatrixResult:
    done: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, int, Path]] = field(default_factory=list)  # (cell, exit code, log)

    @property
    def ok(self) -> bool:
        return not self.failed


def check_data(cells: Sequence[Cell], data_path: str | None = None) -> None:
    """Fail within seconds, saying what to download and where, when a dataset file is missing."""
    for benchmark in sorted({c.benchmark for c in cells}):
        path = Path(data_path) if data_path else REPO / DATA_FILES[benchmark]
        if not path.exists():
            raise FileNotFoundError(f"{path}: the {benchmark} dataset file is missing; {data_hint(benchmark)}")


def run_cell(cell: Cell, *, python: str = sys.executable, env: dict | None = None) -> tuple[int, Path]:
    """Run (or resume) one cell in a child process, its output appended to ``run_dir/train.log``."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    log = cell.run_dir / "train.log"
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cell.command(python))}\n")
        f.flush()
        proc = subprocess.run(cell.command(python), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})})
    return proc.returncode, log


def run_matrix(cells: Sequence[Cell], *, python: str = sys.executable, echo=print) -> MatrixResult:
    """Run every unfinished cell in order; a failure is recorded and the next cell runs."""
    result = MatrixResult()
    n = len(cells)
    for i, cell in enumerate(cells, 1):
        if cell.finished():
            result.skipped.append(cell)
            echo(f"[{i}/{n}] {cell.name}: finished, skipped")
            continue
        echo(f"[{i}/{n}] {cell.name}: running (log {cell.run_dir / 'train.log'})")
        t0 = time.perf_counter()
        code, log = run_cell(cell, python=python)
        if code == 0 and cell.finished():
            result.done.append(cell)
            echo(f"[{i}/{n}] {cell.name}: done in {time.perf_counter() - t0:.0f} s")
        else:
            result.failed.append((cell, code, log))
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            echo(f"[{i}/{n}] {cell.name}: FAILED (exit {code}; log {log}){': ' + tail[0] if tail else ''}")
    return result


def summarize(cells: Sequence[Cell], out_dir: Path, *, echo=print) -> dict:
    """Ensembles and the paper comparison of the finished cells, written to ``out_dir``."""
    from harness.ensemble import ensemble_report, format_markdown as ensemble_md
    from harness.io import write_json, write_text
    finished = [c for c in cells if c.finished()]
    summary: dict = {"cells": len(cells), "finished": len(finished)}
    if not finished:
        return summary
    dirs = [c.run_dir for c in finished]
    report = ensemble_report(dirs)
    write_json(out_dir / "ensembles.json", report)
    write_text(out_dir / "ensembles.md", ensemble_md(report))
    summary["ensembles"] = str(out_dir / "ensembles.json")
    try:
        from harness import paper
    except ImportError:  # pragma: no cover - the checker lands separately
        return summary
    check = paper.check(dirs, ensembles=report)
    write_json(out_dir / "paper_check.json", check)
    write_text(out_dir / "paper_check.md", paper.format_markdown(check))
    summary["paper_check"] = str(out_dir / "paper_check.json")
    echo(paper.format_markdown(check, only_data=True))  # the full table (every paper cell) is in the file
    echo(f"paper check: {out_dir / 'paper_check.md'}")
    return summary


# --------------------------------------------------------------------------- command line

def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("--profile", choices=PROFILES, default="paper",
                   help="paper = official recipes (compared with the paper); quick / ci = shortened")
    p.add_argument("--seeds", type=int, default=1, help="seeds 1..N (default 1)")
    p.add_argument("--encoders", type=_csv, default=list(ENCODERS), help="comma-separated (default: all six)")
    p.add_argument("--streams", type=_csv, default=list(STREAMS), help="comma-separated (default: all four)")
    p.add_argument("--csre", choices=["both", "on", "off"], default="both")
    p.add_argument("--root", type=Path, default=None, help="runs root (default runs/, or runs/<profile>)")
    p.add_argument("--gin_file", "--gin-file", dest="gin_file", action="append", default=[],
                   help="extra gin file for every cell (after the profile)")
    p.add_argument("--gin_param", "--gin-param", dest="gin_param", action="append", default=[],
                   help="extra binding for every cell")
    p.add_argument("--tag", default="", help="variant label appended to the csre/base folder name")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")


def run(args: argparse.Namespace) -> int:
    csre = {"both": (False, True), "on": (True,), "off": (False,)}[args.csre]
    cells = expand(args.benchmark, encoders=args.encoders, streams=args.streams, csre=csre,
                   seeds=range(1, args.seeds + 1), profile=args.profile, root=args.root,
                   extra_gin=args.gin_file, extra_params=args.gin_param, tag=args.tag)
    data_path = next((p.split("=", 1)[1].strip().strip("'\"") for p in args.gin_param
                      if p.replace(" ", "").startswith("DataConfig.path=")), None)
    if args.dry_run:
        for c in cells:
            print(f"{'done   ' if c.finished() else 'pending'} {c.name}  ->  {c.run_dir}")
        return 0
    check_data(cells, data_path)
    print(f"matrix {args.benchmark} ({args.profile}): {len(cells)} cells under {cells[0].root}")
    result = run_matrix(cells)
    out_dir = cells[0].root / args.benchmark
    summarize(cells, out_dir)
    print(f"cells: {len(result.done)} run, {len(result.skipped)} already finished, {len(result.failed)} failed")
    if result.failed:
        for cell, code, log in result.failed:
            print(f"  FAILED {cell.name}: exit {code}, log {log}", file=sys.stderr)
        return 1
    return 0
