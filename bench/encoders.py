"""Encoder training throughput: forward + backward samples/s per encoder, batch size and mode.

Each encoder (HCN, 2s-AGCN, CTR-GCN, Hyperformer, BlockGCN, InfoGCN) is built exactly as a run
builds it, from ``gin/encoders/<name>.gin`` plus the dataset file (through
:func:`harness.models_table.build_from_gin`), for NTU RGB+D 60 shapes by default
((N, 3, 64, 25, 2), 60 classes) or NW-UCLA shapes with ``--shape ucla`` ((N, 3, 52, 20, 1),
10 classes). Inputs are seeded random skeletons (``0.5 * randn``); labels uniform. BlockGCN gets
what training feeds it (``harness.train`` asks for the raw joints when the encoder has
``wants_joints``; its recipe sets ``spine_relative``): the spine-relative joint stream plus the raw
joints as three more channels ((N, 6, T, V, M), ``SkeletonFeeder(spine_relative=True,
with_joints=True)``; see :mod:`models.blockgcn`), so its topology branch runs on the skeleton.

One timed step = ``zero_grad`` + forward in train mode + cross-entropy + backward (no optimiser
step, so the weights stay fixed; BatchNorm running statistics do move). Steps are timed one by one
after ``--warmup`` untimed ones (device synchronised); samples/s = batch / median step time.

Modes, all on the same model object in the same process:

* ``fp32``: eager float32, **the baseline**; every other mode is printed as a ratio to it.
* ``bf16``: eager under ``torch.autocast(device, dtype=torch.bfloat16)`` (forward and loss;
  backward outside). On a CPU without native bf16 instructions this is usually slower.
* ``compile``: ``torch.compile(model, dynamic=False)`` (inductor), float32. Its first train-mode
  call (the compilation) is reported as ``compile_s`` and always left out of the timing, whatever
  ``--warmup`` says. Dynamo's caches are reset before each compiled model.

Outputs check: before timing a mode, the model in eval mode is run on one fixed batch eagerly in
fp32 and in that mode; the max abs difference of the logits is reported (``max|dlogit|``), with
the largest reference logit for scale (``rel`` = their ratio: untrained networks in eval mode
can have logits of 1e5 and more, BlockGCN's with the initial BatchNorm statistics in particular).
For ``compile`` it is flagged ``ok`` when within
``1e-3 * max(1, max|logit|)``; bf16 differences are only reported (its tolerance is loose).

A mode that fails (unsupported on the device, a compiler error, out of memory) is reported as
``failed: <reason>`` and the run goes on.

Be honest about CPU time: on a 2-core machine one batch-64 step of these networks takes seconds,
and ``compile`` on CPU can take minutes per encoder. Defaults are ``--steps 3 --warmup 1``.

    python -m bench.encoders --batches 16 --modes fp32          # all six, CPU: a few minutes
    python -m bench.encoders --encoders ctrgcn --batches 16 --modes fp32,bf16
    python -m bench.encoders --device cuda --steps 20 --warmup 5   # fp32, bf16, compile; 16 and 64
    python -m bench.encoders --shape ucla --json                   # one JSON object on stdout

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # allow `python bench/encoders.py` as well as `python -m bench.encoders`
    sys.path.insert(0, str(REPO))

from bench.timing import sync, timed  # noqa: E402
from harness.models_table import BENCHMARKS, Benchmark, build_from_gin  # noqa: E402
from data.feeder import to_spine_relative  # noqa: E402
from models import registry  # noqa: E402
from models.graph import layout_for  # noqa: E402

SHAPES: dict[str, Benchmark] = {"ntu": BENCHMARKS[0], "ucla": BENCHMARKS[1]}
MODES = ("fp32", "bf16", "compile")
DEFAULT_ENCODERS = ("hcn", "agcn", "ctrgcn", "hyperformer", "blockgcn", "infogcn")
COMPILE_RTOL = 1e-3


# ---------------------------------------------------------------------------------- helpers

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()})"
    except OSError:
        pass
    return f"CPU ({platform.processor() or platform.machine()})"


def reason(e: BaseException) -> str:
    """One line: the exception type and the first non-empty line of its message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def make_input(bench: Benchmark, batch: int, device: torch.device, with_joints: bool = False, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    _, C, T, V, M = bench.shape
    g = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(batch, C, T, V, M, generator=g)
    if with_joints:  # spine-relative stream + raw joints, as SkeletonFeeder(spine_relative=True, with_joints=True)
        layout = layout_for(num_joints=V)
        stream = torch.from_numpy(np.stack([to_spine_relative(s, layout) for s in x.numpy()]))
        x = torch.cat([stream, x], 1)
    y = torch.randint(bench.num_class, (batch,), generator=g)
    return x.to(device), y.to(device)


def autocast(mode: str, device: torch.device):
    if mode == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_mode(mode: str, device: torch.device) -> None:
    """Raise if ``mode`` is known not to work on ``device`` (the rest fails when tried)."""
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"bf16 not supported by {torch.cuda.get_device_name(device)}")
    if mode == "compile" and not hasattr(torch, "compile"):
        raise RuntimeError("torch.compile not available in this torch build")


# ---------------------------------------------------------------------------------- one mode

def run_mode(mode: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             steps: int, warmup: int) -> dict:
    """Outputs check (eval mode) then the timed train-mode steps of ``mode`` on ``model``."""
    check_mode(mode, device)
    out: dict = {}
    if mode == "compile":
        torch._dynamo.reset()
        fn: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model, dynamic=False)
    else:
        fn = model

    # outputs check, eval mode, same state as the reference (computed right before)
    if mode != "fp32":
        model.eval()
        with torch.no_grad():
            ref = model(x).float()
            t0 = time.perf_counter()
            with autocast(mode, device):
                got = fn(x)
            sync(device)
            check_s = time.perf_counter() - t0
        diff = float((got.float() - ref).abs().max())
        scale = float(ref.abs().max())
        out.update(max_abs_diff=diff, max_abs_logit=scale)
        if mode == "compile":
            out["eval_compile_s"] = check_s
            out["within_tol"] = diff <= COMPILE_RTOL * max(1.0, scale)
        del ref, got

    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(mode, device):
            loss = F.cross_entropy(fn(x), y)
        loss.backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if mode == "compile":  # the first call compiles: timed on its own, never part of the figures
        t0 = time.perf_counter()
        step()
        sync(device)
        out["compile_s"] = time.perf_counter() - t0
    times = timed(step, device, steps, warmup)
    med = statistics.median(times)
    out.update(step_s=med, step_min_s=min(times), samples_per_s=x.shape[0] / med, times_s=times)
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    model.zero_grad(set_to_none=True)
    return out


def bench_encoder(encoder: str, bench: Benchmark, batches: list[int], modes: list[str], device: torch.device,
                  steps: int, warmup: int, log: Callable[[str], None]) -> dict:
    torch.manual_seed(0)
    model = build_from_gin(encoder, [bench.gin_file]).to(device)
    # what harness.train feeds: the raw joints too when the encoder says it wants them
    joints = bool(getattr(model, "wants_joints", False))  # as the trainer reads it
    res: dict = {"params": sum(p.numel() for p in model.parameters()), "with_joints": joints, "batches": {}}
    for batch in batches:
        x, y = make_input(bench, batch, device, joints)
        row: dict = {"input": list(x.shape)}
        for mode in modes:
            t0 = time.perf_counter()
            try:
                row[mode] = run_mode(mode, model, x, y, device, steps, warmup)
            except Exception as e:  # noqa: BLE001 - a failed mode is a result, not a crash
                row[mode] = {"error": reason(e)}
                if mode == "compile":
                    torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            row[mode]["wall_s"] = time.perf_counter() - t0
            log(f"  {encoder} batch {batch} {mode}: "
                + (f"failed: {row[mode]['error']}" if "error" in row[mode]
                   else f"{row[mode]['samples_per_s']:.1f} samples/s") + f" ({row[mode]['wall_s']:.0f}s)")
        base = row.get("fp32", {})
        for mode in modes:
            if mode != "fp32" and "samples_per_s" in row[mode] and "samples_per_s" in base:
                row[mode]["ratio_vs_fp32"] = row[mode]["samples_per_s"] / base["samples_per_s"]
        res["batches"][str(batch)] = row
        del x, y
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------------------------- output

def cell(r: dict) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    s = f"{r['samples_per_s']:8.1f}/s"
    if "ratio_vs_fp32" in r:
        s += f" {r['ratio_vs_fp32']:5.2f}x"
    if "max_abs_diff" in r:
        s += f"  max|dlogit| {r['max_abs_diff']:.1e} (rel {r['max_abs_diff'] / max(r['max_abs_logit'], 1e-30):.0e})"
        if "within_tol" in r:
            s += " ok" if r["within_tol"] else " OVER TOL"
    if "compile_s" in r:
        s += f"  compile {r['compile_s']:.0f}s"
    if "peak_mem_gib" in r:
        s += f"  {r['peak_mem_gib']:.1f} GiB"
    return s


def print_table(result: dict) -> None:
    cfg = result["config"]
    print(f"Encoder fwd+bwd throughput on {cfg['device_name']} [{cfg['device']}], torch {cfg['torch']}, "
          f"{cfg['cpu_threads']} CPU threads, python {cfg['python']}")
    print(f"shape {cfg['shape']} ({cfg['benchmark']}): input (N, {', '.join(map(str, cfg['sample_shape'][1:]))}), "
          f"{cfg['num_class']} classes; BlockGCN gets 6 channels (stream + raw joints); "
          f"{cfg['steps']} timed steps after {cfg['warmup']} warm-up, median")
    print("cells: samples/s, ratio vs fp32 eager of the same model (same process), max abs logit diff vs "
          f"fp32 eager (eval mode; compile tolerance {COMPILE_RTOL:g} x max(1, max|logit|))")
    modes = cfg["modes"]
    header = ["encoder", "params", "batch", *modes]
    rows = []
    for enc, r in result["encoders"].items():
        if "error" in r:
            rows.append([enc, "-", "-", f"failed: {r['error']}"] + [""] * (len(modes) - 1))
            continue
        for batch, row in r["batches"].items():
            rows.append([enc, f"{r['params']:,}", batch, *(cell(row[m]) for m in modes)])
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|" + "---|" * len(modes))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"({result['wall_s']:.0f}s)")


# ---------------------------------------------------------------------------------- main

def csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    return lambda s: [kind(v.strip()) for v in s.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="ntu",
                    help="ntu: (3, 64, 25, 2), 60 classes; ucla: (3, 52, 20, 1), 10 classes")
    ap.add_argument("--encoders", type=csv(str), default=list(DEFAULT_ENCODERS),
                    help=f"comma-separated (default: {','.join(DEFAULT_ENCODERS)})")
    ap.add_argument("--batches", type=csv(int), default=[16, 64], help="comma-separated batch sizes (16,64)")
    ap.add_argument("--modes", type=csv(str), default=list(MODES), help="comma-separated: fp32,bf16,compile")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per mode first")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    unknown = [e for e in args.encoders if e not in registry.ENCODERS]
    if unknown:
        ap.error(f"unknown encoder(s) {', '.join(unknown)}; known: {', '.join(sorted(registry.ENCODERS))}")
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        ap.error(f"unknown mode(s) {', '.join(bad) or '(none given)'}; known: {', '.join(MODES)}")
    if args.steps < 1 or args.warmup < 0 or any(b < 1 for b in args.batches):
        ap.error("--steps >= 1, --warmup >= 0 and batch sizes >= 1")
    modes = ["fp32"] + [m for m in dict.fromkeys(args.modes) if m != "fp32"]  # the baseline always runs first
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False (CPU build of torch?)")
    bench = SHAPES[args.shape]

    result: dict = {"config": {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
        "shape": args.shape, "benchmark": bench.label, "gin_file": bench.gin_file,
        "sample_shape": list(bench.shape), "num_class": bench.num_class, "batches": args.batches,
        "modes": modes, "steps": args.steps, "warmup": args.warmup, "baseline": "fp32",
        "compile_tolerance": f"{COMPILE_RTOL:g} * max(1, max|logit|)",
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        if device.type == "cuda" else None,
    }, "encoders": {}}

    def log(msg: str) -> None:  # progress on stderr, so --json stays one object on stdout
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    for enc in args.encoders:
        try:
            result["encoders"][enc] = bench_encoder(enc, bench, args.batches, modes, device, args.steps,
                                                    args.warmup, log)
        except Exception as e:  # noqa: BLE001 - building (or fp32 input prep) failed: report, go on
            result["encoders"][enc] = {"error": reason(e)}
            log(f"  {enc}: failed: {reason(e)}")
    result["wall_s"] = time.perf_counter() - t0

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result


if __name__ == "__main__":
    main()
