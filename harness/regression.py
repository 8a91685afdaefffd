"""CI regression values: the ``ci`` profile on a tiny real NW-UCLA subset, against committed numbers.

The ``ci`` matrix (:data:`CI_CELLS`: CTR-GCN and HCN, with and without CSRE, joint stream, seed 1,
``gin/profiles/ci.gin``) is trained and, per cell, the values of :func:`observe` (mean training
loss, CE and CSRE terms per epoch, validation and test top-1 per epoch) are compared with
``tests/regression/expected_ci.json`` within :data:`TOLERANCE`. A change that moves them fails
and shows old against new. To re-record them on purpose (say why in the commit)::

    python -m harness regression --record

**Why float64** (:data:`BINDINGS`): in float32 these tiny cells amplify the last-bit differences
between CPUs' kernels (AVX-512 against AVX2 MKL/oneDNN/ATen paths) into percent-level moves within
two epochs (CTR-GCN train CE 9.117 against 9.233 at epoch 1), so no tolerance could both hold on any
CPU and catch a real change. In float64 the same runs agree to about 1e-12 relative across those
kernel paths (tests/regression/README.md has the measurement), so the tolerance can be tight.

Tolerances: losses relative 1e-6 (a million times the measured cross-CPU spread, far below what a
change of semantics moves: ``lr x 1.1`` or one augmentation switched off move them by 1e-4 or more,
see ``tests/harness/test_regression.py``); accuracies one test sample (5 pp of the 20 test clips;
val: 10 clips).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.io import read_json, write_json

REPO = Path(__file__).resolve().parents[1]
EXPECTED = REPO / "tests" / "regression" / "expected_ci.json"
#: (encoder, csre) cells of the CI matrix, NW-UCLA joint stream, seed 1
CI_CELLS = (("ctrgcn", False), ("ctrgcn", True), ("hcn", False), ("hcn", True))
#: bound on top of the cells' own gin: float64 throughout (see the module docstring for why)
BINDINGS = ("TrainConfig.precision = 'fp64'",)
TOLERANCE = {"loss_rel": 1e-6, "top1_abs": {"test": 5.0, "val": 10.0}}

__all__ = ["BINDINGS", "CI_CELLS", "EXPECTED", "TOLERANCE", "compare", "observe", "record", "run_ci_cells"]


def observe(metrics: dict) -> dict[str, list[float]]:
    """The regression values of one run's metrics."""
    h = metrics["history"]
    out = {f"train_{k}": [r["train"][k] for r in h] for k in ("loss", "ce", "contrastive")}
    for part in ("val", "test"):
        out[f"{part}_top1"] = [r[part]["top1"] for r in h if part in r]
    return out


def ci_cell(encoder: str, csre: bool, root: str | Path = "."):
    """The matrix cell (:class:`harness.matrix.Cell`) of a CI regression cell: NW-UCLA, joint, seed 1, ci."""
    from harness.matrix import Cell
    return Cell("ucla", encoder, "joint", csre, 1, "ci", Path(root))


def cell_name(encoder: str, csre: bool) -> str:
    return ci_cell(encoder, csre).name


def run_ci_cells(h5: str | Path, root: str | Path, cells=CI_CELLS,
                 extra: tuple[str, ...] = ()) -> dict[str, dict[str, list[float]]]:
    """Train the CI ``cells`` ((encoder, csre) pairs; default all) on the NW-UCLA file ``h5`` under
    ``root``, with ``extra`` gin bindings last; their observed values."""
    from harness.train import train
    values = {}
    for encoder, csre in cells:
        cell = ci_cell(encoder, csre, root)
        params = cell.gin_params + [f"DataConfig.path = '{h5}'", "TrainConfig.dvclive = False", *BINDINGS, *extra]
        values[cell.name] = observe(train(cell.gin_files, params, run_dir=cell.run_dir))
    return values


def compare(observed: dict[str, dict[str, list[float]]], expected: dict[str, Any], *,
            only_observed: bool = False) -> list[str]:
    """Differences beyond tolerance, one readable line each (old vs new); empty when all agree.
    ``only_observed``: compare just the cells that were run (no "missing from this run")."""
    problems = []
    cells = expected["cells"]
    names = set(observed) if only_observed else set(cells) | set(observed)
    for name in sorted(names):
        if name not in observed or name not in cells:
            problems.append(f"{name}: {'missing from this run' if name not in observed else 'not recorded'}")
            continue
        for key in sorted(set(cells[name]) | set(observed[name])):
            old, new = cells[name].get(key), observed[name].get(key)
            if old is None or new is None or len(old) != len(new):
                problems.append(f"{name} {key}: recorded {old}, now {new}")
                continue
            for i, (a, b) in enumerate(zip(old, new)):
                if key.endswith("_top1"):
                    ok = abs(a - b) <= TOLERANCE["top1_abs"][key.split("_")[0]]
                else:
                    ok = math.isclose(a, b, rel_tol=TOLERANCE["loss_rel"], abs_tol=1e-6)
                if not ok:
                    problems.append(f"{name} {key}[epoch {i + 1}]: recorded {a!r}, now {b!r}")
    return problems


def record(observed: dict[str, dict[str, list[float]]], path: Path = EXPECTED) -> None:
    import platform

    import torch
    write_json(path, {"about": "ci-profile regression values; re-record with `python -m harness regression --record`",
                      "recorded_with": {"torch": torch.__version__, "python": platform.python_version(),
                                        "machine": platform.machine(),
                                        "cpu_capability": torch.backends.cpu.get_cpu_capability()},
                      "bindings": list(BINDINGS),
                      "tolerance": TOLERANCE, "cells": observed})


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", action="store_true", help=f"re-record {EXPECTED.relative_to(REPO)} on purpose")
    p.add_argument("--data", type=Path, default=REPO / "data" / "h5" / "ucla.h5",
                   help="the NW-UCLA HDF5 (default data/h5/ucla.h5; build it with `dvc repro ucla`)")


def run(args: argparse.Namespace) -> int:
    if not args.data.exists():
        raise FileNotFoundError(f"{args.data}: missing; build it with `dvc repro ucla`")
    with tempfile.TemporaryDirectory() as tmp:
        observed = run_ci_cells(args.data, tmp)
    if args.record:
        record(observed)
        print(f"recorded {EXPECTED}")
        return 0
    problems = compare(observed, read_json(EXPECTED))
    for line in problems:
        print(line, file=sys.stderr)
    print("ci regression: " + ("OK" if not problems else f"{len(problems)} value(s) moved"))
    return 1 if problems else 0
