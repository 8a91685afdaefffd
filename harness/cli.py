"""``python -m harness <verb>``: the command line of csre-bench.

Verbs are small functions registered in ``VERBS``; each gets its own argparse sub-parser so that
``python -m harness --help`` lists them and ``python -m harness <verb> --help`` documents one.
Heavy imports (torch, h5py) happen inside the verbs, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    except (ValueError, FileNotFoundError, KeyError) as e:
        # Input errors already name the file and the problem; a traceback would bury that.
        print(f"error: {e}", file=sys.stderr)
        return 2
