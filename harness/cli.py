"""``python -m harness <verb>``: the command line of csre-bench.

Verbs are small functions registered in ``VERBS``; each gets its own argparse sub-parser so that
``python -m harness --help`` lists them and ``python -m harness <verb> --help`` documents one.
Heavy imports (torch, h5py) happen inside the verbs, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from pathlib import Path
from typing import Callable

# name -> (one-line help, configure(parser), run(args) -> exit code)
VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


# --------------------------------------------------------------------------- prepare

def _denoise_fields() -> list[dataclasses.Field]:
    from data.ntu import DenoiseParams
    return list(dataclasses.fields(DenoiseParams))


def _configure_prepare(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["ntu60", "ntu120", "ucla"], help="which dataset to build")
    p.add_argument("--raw", required=True, type=Path, nargs="+",
                   help="raw input: NTU .skeleton folder(s), searched recursively; NW-UCLA folder of "
                        "JSON files or the all_sqe .tar.gz")
    p.add_argument("--out", required=True, type=Path, help="HDF5 file to write (atomically)")
    p.add_argument("--workers", type=int, default=0, help="parallel processes for NTU (0 = all cores)")
    p.add_argument("--compression", choices=["none", "lzf"], default="none",
                   help="HDF5 compression of the sample array (default none: 4-6x faster reads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = p.add_argument_group("NTU denoising parameters (defaults = the official CTR-GCN pipeline)")
    for f in _denoise_fields():
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"ntu_{f.name}", default=None,
                           type=type(f.default) if f.default is not None else str,
                           help=f"default {f.default!r}")


def _run_prepare(args: argparse.Namespace) -> int:
    compression = None if args.compression == "none" else args.compression
    workers = args.workers or os.cpu_count() or 1
    progress = not args.no_progress
    if args.dataset == "ucla":
        from data import ucla
        if len(args.raw) != 1:
            raise SystemExit("prepare ucla: give exactly one --raw (a folder of JSON files or all_sqe.tar.gz)")
        ucla.prepare(args.raw[0], args.out, compression=compression, progress=progress)
    else:
        from data import ntu
        overrides = {f.name: getattr(args, f"ntu_{f.name}") for f in _denoise_fields()
                     if getattr(args, f"ntu_{f.name}") is not None}
        params = dataclasses.replace(ntu.DenoiseParams(), **overrides)
        ntu.prepare(args.raw, args.out, args.dataset, workers=workers, compression=compression,
                    params=params, progress=progress)
    print(f"wrote {args.out}")
    return 0


VERBS["prepare"] = ("build a dataset HDF5 from raw NTU RGB+D .skeleton files or NW-UCLA JSON",
                    _configure_prepare, _run_prepare)


# --------------------------------------------------------------------------- summary

def _configure_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("h5", type=Path, nargs="+", help="dataset file(s) written by `prepare`")


def _run_summary(args: argparse.Namespace) -> int:
    from harness.summary import summarize
    for path in args.h5:
        print(summarize(path))
    return 0


VERBS["summary"] = ("print a dataset summary: samples, splits, classes, sequence lengths",
                    _configure_summary, _run_summary)


# --------------------------------------------------------------------------- models

def _configure_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoders", nargs="+", metavar="NAME", default=None,
                   help="encoders to list (default: all registered, e.g. ctrgcn agcn hcn hyperformer)")


def _run_models(args: argparse.Namespace) -> int:
    from harness.models_table import table
    print(table(args.encoders))
    return 0


VERBS["models"] = ("print each encoder's parameters and MACs (NTU60 and NW-UCLA shapes), built from its gin file",
                   _configure_models, _run_models)


# --------------------------------------------------------------------------- train

def _gin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gin_file", "--gin-file", dest="gin_file", action="append", default=[], required=True,
                   metavar="FILE", help="gin file (repeatable, later wins): encoder, dataset, recipe, csre, profile")
    p.add_argument("--gin_param", "--gin-param", dest="gin_param", action="append", default=[], metavar="BINDING",
                   help="one gin binding, e.g. 'TrainConfig.seed = 2' (repeatable, applied after the files)")


def _configure_train(p: argparse.ArgumentParser) -> None:
    _gin_args(p)
    p.add_argument("--run_dir", "--run-dir", dest="run_dir", type=Path, default=None,
                   help="run directory (default runs/<benchmark>/<encoder>/<stream>/<csre|base>/seed<k>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run_dir from its checkpoint (a finished run is left as it is)")


def _run_train(args: argparse.Namespace) -> int:
    from harness.constants import INTERRUPTED
    from harness.train import NonFiniteLoss, train
    try:
        metrics = train(args.gin_file, args.gin_param, run_dir=args.run_dir, resume=args.resume)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return INTERRUPTED if metrics is None else 0


VERBS["train"] = ("train one cell (encoder x benchmark x stream x CSRE on/off x seed) into a run directory",
                  _configure_train, _run_train)


# --------------------------------------------------------------------------- eval

def _configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="official checkpoint (CTR-GCN, 2s-AGCN, Hyperformer, CSRE, BlockGCN, InfoGCN .pt) or ours")
    _gin_args(p)
    p.add_argument("--out", type=Path, default=None, help="folder for scores_test.npz/.pkl and eval.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=0)


def _run_eval(args: argparse.Namespace) -> int:
    from harness.evaluate import evaluate_checkpoint
    r = evaluate_checkpoint(args.checkpoint, args.gin_file, args.gin_param, device=args.device,
                            batch_size=args.batch_size, out_dir=args.out, num_workers=args.workers)
    t = r["test"]
    print(f"{args.checkpoint}: test top-1 {t['top1']:.2f}%  top-5 {t['top5']:.2f}%  ({t['n']} samples)")
    return 0


VERBS["eval"] = ("evaluate a checkpoint (official repositories' or ours) on the test split",
                 _configure_eval, _run_eval)


# --------------------------------------------------------------------------- verbs of their own modules

def module_verb(name: str, module: str, help_text: str) -> None:
    """Register verb ``name`` whose ``configure_parser(p)`` and ``run(args)`` live in ``module``
    (imported only when the verb's parser is built or it runs)."""
    def configure(p: argparse.ArgumentParser) -> None:
        importlib.import_module(module).configure_parser(p)

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module).run(args)

    VERBS[name] = (help_text, configure, run)


module_verb("ensemble", "harness.ensemble",
            "combine the streams of finished runs into 2S and 4S ensembles (published, val- and test-tuned weights)")
module_verb("matrix", "harness.matrix",
            "run a benchmark's cells (encoders x streams x CSRE on/off x seeds) resumably, then ensembles and the paper check")
module_verb("regression", "harness.regression",
            "train the ci-profile cells on tiny real NW-UCLA and compare with the recorded values (--record re-records)")
module_verb("paper", "harness.paper",
            "compare finished paper-profile runs with the paper's Tables 1-8 (tolerances, paired bootstrap)")
module_verb("report", "harness.report",
            "write a markdown report with figures (per-class gains, t-SNE, curves, confusion, Tables 7-8)")


# --------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness",
        description="csre-bench: reproduce CSRE and its baselines for skeleton action recognition.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (help_text, configure, _) in VERBS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, _, run = VERBS[args.verb]
    try:
        return run(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        # Input errors already name the file and the problem; a traceback would bury that.
        print(f"error: {e}", file=sys.stderr)
        return 2
