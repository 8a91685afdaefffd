"""Benchmark matrices: a benchmark expanded into training cells, run resumably, then ensembled and checked.

``python -m harness matrix ucla --profile quick --encoders ctrgcn --streams joint --seeds 1``

A **cell** is one ``harness train`` run: encoder x benchmark x stream x CSRE on/off x seed, with
the gin files of :func:`cell_gin_files` (encoder, dataset, the cell's official recipe where it differs
from the encoder file's: :func:`recipe_file`, CSRE, the profile, extra files) and its
run directory ``<root>/<benchmark>/<encoder>/<stream>/<csre|base>/seed<k>`` (``<root>`` = ``runs``
for the ``paper`` profile, ``runs/<profile>`` otherwise, so shortened runs never mix with real
ones).

Running: each cell is a child process (``python -m harness train ... --resume``; ``torchrun
--nproc_per_node=K`` with ``--gpus-per-cell K``), so one cell's gin state, memory or crash cannot
touch the next; its output goes to ``train.log`` in its run directory. A finished cell
(``metrics.json`` with ``finished``) is skipped, an interrupted one resumes exactly from its
checkpoint: re-running a matrix continues where it stopped. A cell that fails is reported with its
log path and exit code, the others go on, and the matrix exits non-zero naming the failed cells
(re-running retries only those). SIGTERM / SIGINT to the matrix reach the running trainer once
(it writes its checkpoint) and stop the matrix after it.

Launchers (:mod:`harness.launch`): ``--launcher local`` (default) runs the cells here one after
another; ``--launcher slurm`` submits each as a SLURM job through submitit (requeued with exact
resume on preemption). ``--shard k/n`` (either launcher) takes every n-th cell, for plain machines
sharing one results directory; an atomic claim per cell (``claim.lock``) makes each cell run once.

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
from typing import Any, Callable, Iterable, Sequence

from harness.constants import INTERRUPTED, PROFILES, STREAMS

REPO = Path(__file__).resolve().parents[1]  # (not from harness.configurables: keeps `--help` free of torch)

__all__ = ["BENCHMARKS", "Cell", "MatrixResult", "RECIPES", "cell_gin_files", "expand", "recipe_file", "run_matrix"]

BENCHMARKS = ("ntu60_xsub", "ntu60_xview", "ntu120_xsub", "ntu120_xset", "ucla")
ENCODERS = ("hcn", "agcn", "ctrgcn", "hyperformer", "blockgcn", "infogcn")
#: recipe files (gin/recipes/<name>.gin) of the official configs that differ from the encoder file's own,
#: by (encoder, benchmark, stream), the stream None for every stream; NW-UCLA families without an
#: official recipe use CTR-GCN's as a labelled stand-in (see :func:`recipe_file`)
RECIPES = {
    ("ctrgcn", "ucla", None): "ctrgcn_ucla",
    ("hyperformer", "ucla", None): "hyperformer_ucla",
    ("hyperformer", "ucla", "bone"): "hyperformer_ucla_bone",
    ("hyperformer", "ucla", "bone_motion"): "hyperformer_ucla_bone",
    ("hyperformer", "ntu60_xview", None): "hyperformer_ntu60_xview",
}


def recipe_file(benchmark: str, encoder: str, stream: str | None = None) -> str | None:
    """The recipe file a cell adds after the encoder and dataset files, or None (the encoder file's own)."""
    for key in ((encoder, benchmark, stream), (encoder, benchmark, None)):
        if key in RECIPES:
            return f"gin/recipes/{RECIPES[key]}.gin"
    if benchmark == "ucla":
        return "gin/recipes/ctrgcn_ucla.gin"
    if encoder == "agcn":  # the paper trains 2s-AGCN in the CTR-GCN pipeline (64 frames, 65 epochs)
        return "gin/recipes/agcn_ctrgcn_pipeline.gin"
    return None


def data_hint(benchmark: str) -> str:
    """What to do when a benchmark's dataset file is missing."""
    if benchmark == "ucla":
        return "build it from the bundled raw data with `dvc repro ucla` (seconds)"
    stage = "ntu60" if benchmark.startswith("ntu60") else "ntu120"
    return (f"download the NTU RGB+D skeletons from the ROSE Lab (see data/raw/ntu/README.md), unpack them "
            f"under data/raw/ntu/, then `dvc repro {stage}`")


def cell_gin_files(benchmark: str, encoder: str, csre: bool, profile: str, extra: Sequence[str] = (),
                   head: str | None = None, stream: str | None = None) -> list[str]:
    """The gin files of a cell, in the order that makes later files win where they must.

    ``head``: a competitor contrastive head (``'skeletongcl'``, ``'frhead'``; Table 4), whose
    ``gin/heads/<head>.gin`` takes the place of ``gin/csre.gin``. ``stream``: the cell's stream,
    for the recipes that differ by stream (:data:`RECIPES`).
    """
    files = [f"gin/encoders/{encoder}.gin", f"gin/datasets/{benchmark}.gin"]
    recipe = recipe_file(benchmark, encoder, stream)
    if recipe is not None:
        files.append(recipe)
    if csre:
        files.append("gin/csre.gin")
    if head is not None:
        files.append(f"gin/heads/{head}.gin")
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
    head: str | None = None  # a competitor head instead of CSRE ('skeletongcl', 'frhead')

    @property
    def name(self) -> str:
        return f"{self.benchmark}/{self.encoder}/{self.stream}/{self.arm}/seed{self.seed}"

    @property
    def arm(self) -> str:
        return (self.head or ("csre" if self.csre else "base")) + (f"-{self.tag}" if self.tag else "")

    @property
    def run_dir(self) -> Path:
        return self.root / self.benchmark / self.encoder / self.stream / self.arm / f"seed{self.seed}"

    @property
    def gin_files(self) -> list[str]:
        return cell_gin_files(self.benchmark, self.encoder, self.csre, self.profile, self.extra_gin, self.head,
                              self.stream)

    @property
    def gin_params(self) -> list[str]:
        params = [f"TrainConfig.seed = {self.seed}", f"DataConfig.modality = '{self.stream}'",
                  f"TrainConfig.csre = {self.csre}"]
        if self.head is not None:
            params.append(f"TrainConfig.head = '{self.head}'")
        if self.tag:  # so the run's own cell (metrics.json) names the same arm as its folder
            params.append(f"TrainConfig.tag = '{self.tag}'")
        return params + list(self.extra_params)

    def command(self, python: str = sys.executable, nproc: int = 1) -> list[str]:
        """``python -m harness train ... --resume`` (``nproc > 1``: under torchrun, one process per GPU)."""
        torchrun = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd = [python, "-m", "harness", "train"] if nproc <= 1 else torchrun + ["-m", "harness", "train"]
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


def tau_grid() -> tuple[list[float], float]:
    """(the paper's temperature grid, the released code's tau): the macro ``CSRE_TAU_GRID`` of
    gin/csre/tau_grid.gin, read with gin's own parser (no global gin state), and the checker's
    default CSRE setting (``harness.paper.DEFAULT_SETTING``, which equals gin/csre.gin; a test holds it)."""
    from gin import config, config_parser
    from harness.paper import DEFAULT_SETTING
    path = REPO / "gin" / "csre" / "tau_grid.gin"
    statements = config_parser.ConfigParser(path.read_text(), config.ParserDelegate(skip_unknown=True))
    grid = [s.value for s in statements if isinstance(s, config_parser.BindingStatement)
            and s.selector == "CSRE_TAU_GRID"]
    if not grid:
        raise ValueError(f"{path}: no CSRE_TAU_GRID macro")
    return [float(v) for v in grid[-1]], float(DEFAULT_SETTING["tau"])


def expand(benchmark: str, *, encoders: Iterable[str] = ENCODERS, streams: Iterable[str] = STREAMS,
           csre: Iterable[bool] = (False, True), seeds: Iterable[int] = (1,), profile: str = "paper",
           root: str | os.PathLike | None = None, extra_gin: Sequence[str] = (), extra_params: Sequence[str] = (),
           tag: str = "", heads: Sequence[str] = (), tau_grid_cells: bool = False) -> list[Cell]:
    """The cells of a benchmark: encoders x streams x arms x seeds (in that nesting order).

    The arms are CSRE off / on (``csre``), then one per competitor head in ``heads``.
    ``tau_grid_cells``: every CSRE cell also runs at the paper's other temperatures
    (:func:`tau_grid`: 0.5 and 1.0, composing ``gin/csre/tau_<v>.gin``, folder tag ``tau<v>``), right
    after its default (0.8) cell; the checker's paper protocol then takes the best on test.
    """
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
    from harness.configurables import HEADS
    for h in heads:
        if h not in HEADS or h == "csre":
            raise ValueError(f"unknown head {h!r}; known competitor heads: {', '.join(x for x in HEADS if x != 'csre')}")
    root = Path(root) if root is not None else default_root(profile)
    arms = [(c, None) for c in csre] + [(False, h) for h in heads]
    seeds = list(seeds)
    for name, values in (("encoders", encoders), ("streams", streams), ("arms", arms), ("seeds", seeds)):
        if not values:
            raise ValueError(f"no {name} given: the {benchmark} matrix would have no cells")
    cells = []
    grid, default_tau = tau_grid() if tau_grid_cells else ([], None)
    for e, s, (c, h), k in itertools.product(encoders, streams, arms, seeds):
        cells.append(Cell(benchmark, e, s, c, int(k), profile, root, tuple(extra_gin), tuple(extra_params), tag, h))
        if c and h is None:
            for v in (v for v in grid if v != default_tau):
                cells.append(Cell(benchmark, e, s, c, int(k), profile, root, (*extra_gin, f"gin/csre/tau_{v}.gin"),
                                  tuple(extra_params), f"{tag}-tau{v}" if tag else f"tau{v}", h))
    return cells


@dataclass
class MatrixResult:
    done: list[Cell] = field(default_factory=list)
    skipped: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, int | str, Path]] = field(default_factory=list)  # (cell, exit code or reason, log)
    elsewhere: list[tuple[Cell, str]] = field(default_factory=list)  # (cell, who holds its claim)
    stopped_by: int | None = None  # the signal that stopped the matrix (the running cell checkpointed)

    @property
    def ok(self) -> bool:
        return not self.failed


def configured_data_path(cell: Cell) -> Path:
    """The dataset file that the cell's gin files and bindings name, parsed as its run will parse them.

    A binding error fails here too, before any cell starts.
    """
    import gin
    from harness.configurables import DataConfig, parse_gin
    gin.clear_config()
    try:
        parse_gin(cell.gin_files, cell.gin_params)
        return DataConfig().resolve_path()
    finally:
        gin.clear_config()


def check_data(cells: Sequence[Cell]) -> None:
    """Fail within seconds, saying what to download and where, when a dataset file is missing."""
    first = {}
    for c in cells:
        first.setdefault(c.benchmark, c)
    for benchmark, cell in sorted(first.items()):
        path = configured_data_path(cell)
        if not path.exists():
            raise FileNotFoundError(f"{path}: the {benchmark} dataset file is missing; {data_hint(benchmark)}")


def run_cell(cell: Cell, *, python: str = sys.executable, env: dict | None = None, nproc: int = 1,
             tick: Callable[[], Any] | None = None, forward: Any = None) -> tuple[int, Path]:
    """Run (or resume) one cell in a child process, its output appended to ``run_dir/train.log``.

    ``tick`` is called about every second while it runs (the claim's heartbeat); ``forward`` (a
    :class:`harness.launch.forward_signals`) passes SIGTERM / SIGINT on to it.
    """
    from harness.launch import start_child
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    log = cell.run_dir / "train.log"
    proc, f = start_child(cell.command(python, nproc=nproc), log, env=env)
    if forward is not None:
        forward.proc = proc
    try:
        while True:
            try:
                code = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick()
    finally:
        if forward is not None:
            forward.proc = None
        f.close()
    return code, log


def run_matrix(cells: Sequence[Cell], *, python: str = sys.executable, echo=print, nproc: int = 1,
               stale_after: float = 900.0, shard: str | None = None) -> MatrixResult:
    """Run every unfinished cell in order; a failure is recorded and the next cell runs.

    Each cell is claimed first (:class:`harness.launch.Claim`): one claimed by a live owner is
    reported as running elsewhere and skipped, so several workers can share one results directory.
    """
    from harness.launch import Claim, forward_signals, stopped_at_checkpoint
    result = MatrixResult()
    n = len(cells)
    with forward_signals() as fwd:
        for i, cell in enumerate(cells, 1):
            if fwd.signum is not None:
                break
            if cell.finished():
                result.skipped.append(cell)
                echo(f"[{i}/{n}] {cell.name}: finished, skipped")
                continue
            claim = Claim(cell.run_dir, stale_after=stale_after, echo=echo, launcher="local", shard=shard)
            ours, holder = claim.acquire()
            if not ours:
                result.elsewhere.append((cell, holder or "?"))
                echo(f"[{i}/{n}] {cell.name}: running elsewhere ({holder}), skipped")
                continue
            try:
                if cell.finished():  # finished by another worker between the check and the claim
                    result.skipped.append(cell)
                    echo(f"[{i}/{n}] {cell.name}: finished, skipped")
                    continue
                echo(f"[{i}/{n}] {cell.name}: running (log {cell.run_dir / 'train.log'})")
                t0 = time.perf_counter()
                code, log = run_cell(cell, python=python, nproc=nproc, tick=claim.heartbeat, forward=fwd)
            finally:
                claim.release()
            if fwd.signum is not None and stopped_at_checkpoint(code, log):
                result.stopped_by = fwd.signum
                echo(f"[{i}/{n}] {cell.name}: interrupted by signal {fwd.signum}, checkpoint written; run the "
                     f"same command again to resume it")
                break
            if code == 0 and cell.finished():
                result.done.append(cell)
                echo(f"[{i}/{n}] {cell.name}: done in {time.perf_counter() - t0:.0f} s")
            else:
                result.failed.append((cell, code, log))
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                echo(f"[{i}/{n}] {cell.name}: FAILED (exit {code}; log {log}){': ' + tail[0] if tail else ''}")
            if fwd.signum is not None:
                break
    if fwd.signum is not None and result.stopped_by is None:
        result.stopped_by = fwd.signum
        echo(f"stopped by signal {fwd.signum}; run the same command again to continue")
    return result


def summarize(cells: Sequence[Cell], out_dir: Path, *, echo=print) -> dict:
    """Ensembles and the paper comparison of the finished cells, written to ``out_dir``.

    The weight searches use the official budget (200 gp_minimize calls: 197 s for a 4S ensemble of
    NTU120 X-Sub's 50,919 test samples on a 2-core CPU machine) for ``paper``-profile cells, and
    :data:`harness.ensemble.SHORT_PROFILE_CALLS` for the shortened profiles, whose numbers are
    never compared with the paper (the report records it).
    """
    from harness.ensemble import SHORT_PROFILE_CALLS, TUNE_CALLS, ensemble_report, format_markdown as ensemble_md
    from harness.io import write_json, write_text
    finished = [c for c in cells if c.finished()]
    summary: dict = {"cells": len(cells), "finished": len(finished)}
    if not finished:
        return summary
    dirs = [c.run_dir for c in finished]
    calls = TUNE_CALLS if all(c.profile == "paper" for c in finished) else SHORT_PROFILE_CALLS
    report = ensemble_report(dirs, n_calls=calls)
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


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip().replace("-", "_"), json.loads(value)
    except ValueError:
        return key.strip().replace("-", "_"), value


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("--profile", choices=PROFILES, default="paper",
                   help="paper = official recipes (compared with the paper); quick / ci = shortened")
    p.add_argument("--seeds", type=int, default=1, help="seeds 1..N (default 1)")
    p.add_argument("--encoders", type=_csv, default=list(ENCODERS), help="comma-separated (default: all six)")
    p.add_argument("--streams", type=_csv, default=list(STREAMS), help="comma-separated (default: all four)")
    p.add_argument("--csre", choices=["both", "on", "off"], default="both")
    p.add_argument("--heads", type=_csv, default=[],
                   help="competitor heads as extra arms, comma-separated: skeletongcl,frhead (Table 4)")
    p.add_argument("--root", type=Path, default=None, help="runs root (default runs/, or runs/<profile>)")
    p.add_argument("--gin_file", "--gin-file", dest="gin_file", action="append", default=[],
                   help="extra gin file for every cell (after the profile)")
    p.add_argument("--gin_param", "--gin-param", dest="gin_param", action="append", default=[],
                   help="extra binding for every cell")
    p.add_argument("--tag", default="", help="variant label appended to the csre/base folder name")
    p.add_argument("--tau-grid", action="store_true",
                   help="the paper's temperature selection: every CSRE cell also at tau 0.5 and 1.0 "
                        "(gin/csre/tau_grid.gin); the paper protocol takes the best on test, the honest one "
                        "keeps the released code's 0.8 (default: off, 0.8 only)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")
    g = p.add_argument_group("where the cells run")
    g.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: one after another on this machine (default); slurm: one job per cell (a job "
                        "array) through submitit, requeued with exact resume on preemption")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="only cell i with i %% N == K-1 (expansion order), for machines sharing one results "
                        "directory; a claim per cell (claim.lock) makes each cell run once")
    g.add_argument("--stale-after", type=float, default=900.0, metavar="S",
                   help="a claim from another host whose heartbeat (mtime, touched every 60 s) is older than S "
                        "seconds is taken over (default 900; 0 = never). Same-host claims are checked by pid")
    g.add_argument("--gpus-per-cell", type=int, default=None, metavar="K",
                   help="GPUs per cell (slurm default 1; 0 = CPU job); K > 1 runs the cell under "
                        "torchrun --nproc_per_node=K")
    s = p.add_argument_group("--launcher slurm (all settings are flags; no gin)")
    s.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    s.add_argument("--account", default=None, help="SLURM account to charge")
    s.add_argument("--qos", default=None, help="SLURM quality of service")
    s.add_argument("--cpus-per-cell", type=int, default=8, help="CPUs per cell's job (default 8)")
    s.add_argument("--mem-gb", type=float, default=None, help="memory per cell's job in GB (default: the cluster's)")
    s.add_argument("--time-min", type=int, default=24 * 60,
                   help="time limit per job in minutes (default 1440); a cell that needs longer is "
                        "checkpointed and requeued before the limit")
    s.add_argument("--max-timeouts", type=int, default=3,
                   help="requeues after reaching the time limit (default 3; preemptions do not count)")
    s.add_argument("--array-parallelism", type=int, default=None, help="at most this many cells running at once")
    s.add_argument("--slurm-param", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other submitit SLURM parameter, e.g. constraint=a100, exclude=node7, "
                        "signal_delay_s=180, additional_parameters='{\"reservation\": \"r1\"}' (repeatable)")
    s.add_argument("--submitit-dir", type=Path, default=None,
                   help="submitit's folder for pickles and job logs, on a shared filesystem (default "
                        "<root>/<benchmark>/submitit)")
    s.add_argument("--submitit-cluster", choices=["slurm", "local"], default="slurm",
                   help="local: the same jobs as subprocesses on this machine (submitit's LocalExecutor), to try "
                        "the slurm launcher without a cluster")
    s.add_argument("--no-wait", action="store_true",
                   help="submit and return; running the same command again collects what finished (and "
                        "submits nothing twice)")
    s.add_argument("--poll-s", type=float, default=30.0, help="seconds between state checks while waiting")


def run(args: argparse.Namespace) -> int:
    csre = {"both": (False, True), "on": (True,), "off": (False,)}[args.csre]
    every = expand(args.benchmark, encoders=args.encoders, streams=args.streams, csre=csre,
                   seeds=range(1, args.seeds + 1), profile=args.profile, root=args.root,
                   extra_gin=args.gin_file, extra_params=args.gin_param, tag=args.tag, heads=args.heads,
                   tau_grid_cells=args.tau_grid)
    cells = every
    shard = None
    if args.shard:
        from harness.launch import parse_shard, shard_cells
        k, n = parse_shard(args.shard)
        cells, shard = shard_cells(every, k, n), f"{k}/{n}"
    label = f"matrix {args.benchmark} ({args.profile})" + (f", shard {shard}" if shard else "")
    if args.dry_run:
        from harness.launch import cell_state
        print(f"{label}: {len(cells)} of {len(every)} cells")
        for c in cells:
            print(f"{cell_state(c, args.stale_after)} {c.name}  ->  {c.run_dir}")
        return 0
    check_data(cells)
    out_dir = every[0].root / args.benchmark
    print(f"{label}: {len(cells)} cells under {every[0].root} (launcher {args.launcher})")
    if not cells:
        return 0
    if args.launcher == "local":
        result = run_matrix(cells, nproc=max(1, args.gpus_per_cell or 1), stale_after=args.stale_after, shard=shard)
        if result.stopped_by is not None:
            return INTERRUPTED
        summarize(every, out_dir)
        print(f"cells: {len(result.done)} run, {len(result.skipped)} already finished, {len(result.failed)} failed"
              + (f", {len(result.elsewhere)} running elsewhere" if result.elsewhere else ""))
    else:
        from harness.launch import SlurmOptions, run_slurm
        opts = SlurmOptions(partition=args.partition, account=args.account, qos=args.qos,
                            gpus=1 if args.gpus_per_cell is None else args.gpus_per_cell, cpus=args.cpus_per_cell,
                            mem_gb=args.mem_gb, time_min=args.time_min, max_timeouts=args.max_timeouts,
                            array_parallelism=args.array_parallelism, extra=dict(args.slurm_param),
                            cluster=args.submitit_cluster, folder=args.submitit_dir, poll_s=args.poll_s,
                            stale_after=args.stale_after)
        result = run_slurm(cells, opts, wait=not args.no_wait)
        if result.interrupted:
            return 130
        if result.complete:
            summarize(every, out_dir)
        elif args.no_wait:
            print("not finished yet; run the same command again to collect (it submits nothing twice)")
        elif not result.failed:
            print("some cells run elsewhere; the summary waits for them (run the same command again)")
    for cell, holder in result.elsewhere:
        print(f"  running elsewhere {cell.name}: {holder}")
    if result.failed:
        for cell, code, log in result.failed:
            reason = f"exit {code}" if isinstance(code, int) else code
            print(f"  FAILED {cell.name}: {reason}, log {log}", file=sys.stderr)
        print(f"failed cells: {', '.join(c.name for c, _, _ in result.failed)} (re-running retries only those)",
              file=sys.stderr)
        return 1
    return 0
