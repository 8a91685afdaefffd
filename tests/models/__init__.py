"""Tests of models/: encoders against the official reference fixtures, adjacency matrices, units.

Fixture discovery: every ``*.pt`` anywhere under ``<reference>/encoders`` (recursively) is a fixture.
Each test module checks the fixtures whose ``encoder`` field it handles (:data:`FIXTURE_FAMILIES`
says which module handles which encoder); a fixture of any other encoder, or one that cannot be
read, fails ``tests/models/test_encoders.py::test_every_fixture_is_checked`` instead of being
skipped silently.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from tests.conftest import reference_dir

# encoder name (a fixture's ``encoder`` field) -> the test module that checks its fixtures
FIXTURE_FAMILIES: dict[str, str] = {
    "ctrgcn": "tests.models.test_encoders",
    "agcn": "tests.models.test_encoders",
    "hcn": "tests.models.test_encoders",
    "hyperformer": "tests.models.test_hyperformer",
    "blockgcn": "tests.models.test_blockgcn",
    "infogcn": "tests.models.test_infogcn",
}


def encoders_dir() -> Path:
    return reference_dir() / "encoders"


@lru_cache(maxsize=None)
def load_fixture(path: Path) -> dict:
    """One encoder fixture (memory-mapped: collection reads only the small fields it touches)."""
    return torch.load(path, weights_only=False, mmap=True)


def all_fixture_paths() -> list[Path]:
    """Every ``*.pt`` under ``<reference>/encoders``, in subdirectories too, sorted."""
    root = encoders_dir()
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.pt") if p.is_file())


def fixture_encoder(path: Path) -> str | None:
    """The ``encoder`` field of a fixture; None when the file cannot be read or has no such field
    (``test_every_fixture_is_checked`` reports those)."""
    try:
        fx = load_fixture(path)
    except Exception:  # noqa: BLE001 - reported by test_every_fixture_is_checked
        return None
    name = fx.get("encoder") if isinstance(fx, dict) else None
    return name if isinstance(name, str) else None


def encoder_fixture_paths(encoders) -> list[Path]:
    """Every fixture (see :func:`all_fixture_paths`) whose ``encoder`` field is one of ``encoders``."""
    wanted = set(encoders)
    unknown = wanted - set(FIXTURE_FAMILIES)
    if unknown:
        raise KeyError(f"encoders {sorted(unknown)} are not in tests.models.FIXTURE_FAMILIES")
    return [p for p in all_fixture_paths() if fixture_encoder(p) in wanted]


def perturb_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Make every constant parameter non-degenerate, like the fixtures' ``perturbed`` block.

    At the official initialisation several parameters are constant in a way that zeroes gradients
    elsewhere (CTR-GCN ``alpha = 0`` zeroes the gradients of conv1/conv2/conv4, BatchNorm weights of
    1e-6 nearly cut a branch, Hyperformer's ``alpha``/``rpe``/``w1 = 0`` switch the attention
    off). Here, with a seeded generator: every floating parameter whose elements are all equal is
    replaced, norm weights by ``0.5 + U[0, 1)``, anything else by ``value + 0.1·N(0, 1)``; the
    other parameters are left alone. After this every parameter a forward uses should receive a
    non-zero gradient.
    """
    g = torch.Generator().manual_seed(seed)
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # noqa: SLF001
    norm_weights = {id(m.weight) for m in model.modules() if isinstance(m, norm_types)
                    and isinstance(getattr(m, "weight", None), nn.Parameter)}
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point() or p.numel() == 0 or not bool((p == p.flatten()[0]).all()):
                continue
            if id(p) in norm_weights:
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def parameters_without_gradient(model: nn.Module) -> list[str]:
    """Names of the parameters whose gradient is missing, all zero, or not finite."""
    return [n for n, p in model.named_parameters()
            if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]


# ---------------------------------------------------------------------------------------------
# Comparing outputs with a fixture made on another machine

#: the fixtures' scale-aware tolerances (encoders/README.md): max|ours - ref| <= tol * max(1, max|ref|)
EVAL_TOL, TRAIN_TOL = 1e-5, 1e-4
#: where our own float32 result moves by d against float64, the reference's float32 result (another
#: CPU, other kernels) is as uncertain: the two can differ by up to d each, hence 2 d
CONDITIONING = 2.0

#: ``run(model, x, train) -> (feature map, logits, extras)``: one encoder's outputs through its public API
Runner = Callable[[nn.Module, Tensor, bool], "tuple[Tensor, Tensor, dict[str, Tensor]]"]


def state(fx: dict, which: str) -> dict[str, Tensor]:
    """The fixture's state ``which`` ('init' or 'perturbed', whose overrides go over the init state)."""
    sd = dict(fx["state_dict"])
    if which == "perturbed":
        sd.update(fx["perturbed"]["overrides"])
    return sd


def _stored(ref: dict, train: bool) -> dict[str, Callable]:
    """The outputs of a fixture block that a mode produces: name -> how to read ours from (feats, logits, extras)."""
    mode = "train" if train else "eval"
    picks = {f"{mode}_logits": lambda f, lg, e: lg, f"{mode}_feature": lambda f, lg, e: f,
             f"{mode}_feature_head": lambda f, lg, e: f[:1]}
    out = {k: pick for k, pick in picks.items() if k in ref}
    if not train:
        out |= {f"eval_extra[{name}]": (lambda f, lg, e, name=name: e[name]) for name in ref.get("eval_extra", {})}
    return out


def _reference_value(ref: dict, key: str) -> Tensor:
    if key.startswith("eval_extra["):
        return ref["eval_extra"][key[len("eval_extra["):-1]]
    return ref[key]


def output_mismatches(model: nn.Module, x: Tensor, ref: dict, run: Runner, *, train_seed: int | None = None) -> list[str]:
    """Every output stored in the fixture block ``ref`` (a fixture, or its ``perturbed`` block) that
    ``run`` does not reproduce with the model as loaded; empty when all match.

    Rule: the fixtures' scale-aware bound, ``tol * max(1, max|ref|)`` (tol 1e-5 in eval mode, 1e-4
    in train mode), never an element-wise atol: untrained maps reach 1e3..1e6, where float32
    spacing alone exceeds 1e-5, and the reference itself moves by ~1e-6 of scale between CPUs.
    Where an output is ill-conditioned, so that float32 rounding alone moves it by more, the bound
    is ``CONDITIONING x`` that movement, measured on our model: float32 against float64, same
    weights, same input (InfoGCN in train mode: its peaked attention softmax amplifies rounding
    about tenfold per block, 3e-2 of scale at ``l9``). The float64 run is made only when the first
    bound fails, and an error that is not rounding fails both: a real error is many times larger
    than what rounding moves.
    ``train_seed``: torch's global seed before each train-mode pass (dropout, latent noise).
    """
    problems = []
    for train in (False, True):
        wanted = _stored(ref, train)
        if not wanted:
            continue
        ours = _run(model, x, train, run, train_seed)
        ours64 = None
        for key, pick in wanted.items():
            ref_value = _reference_value(ref, key)
            value = pick(*ours).detach()
            if value.shape != ref_value.shape:
                problems.append(f"{key}: shape {tuple(value.shape)} != {tuple(ref_value.shape)}")
                continue
            err = (value.double() - ref_value.double()).abs().max().item()
            bound = (TRAIN_TOL if train else EVAL_TOL) * max(1.0, ref_value.abs().max().item())
            if err <= bound:
                continue
            if ours64 is None:
                ours64 = _run_float64(model, x, train, run, train_seed)
            rounding = math.inf if ours64 is None else (value.double() - pick(*ours64).detach()).abs().max().item()
            if ours64 is not None and err <= CONDITIONING * rounding:
                continue
            problems.append(f"{key}: max abs diff {err:.3g} > {bound:.3g} (tol x max(1, max|ref|))"
                            + ("" if ours64 is None else f" and > {CONDITIONING:g} x {rounding:.3g} (float32 rounding "
                                                         f"of this output, measured against float64)"))
    return problems


def _run(model: nn.Module, x: Tensor, train: bool, run: Runner, train_seed: int | None):
    if train and train_seed is not None:
        torch.manual_seed(train_seed)
    with torch.no_grad():
        return run(model, x, train)


def _run_float64(model: nn.Module, x: Tensor, train: bool, run: Runner, train_seed: int | None):
    """Our outputs in float64 (a copy of the model), or None where the encoder cannot run in float64."""
    try:
        return _run(copy.deepcopy(model).double(), x.double(), train, run, train_seed)
    except (RuntimeError, TypeError):
        return None


def assert_outputs_match(model: nn.Module, x: Tensor, fx: dict, which: str, run: Runner, *,
                         train_seed: int | None = None) -> None:
    """Load the fixture's state ``which`` into ``model`` and assert :func:`output_mismatches` is empty."""
    model.load_state_dict(state(fx, which), strict=True)
    ref = fx if which == "init" else fx["perturbed"]
    problems = output_mismatches(model, x, ref, run, train_seed=train_seed)
    assert not problems, f"{fx.get('case', fx['encoder'])} {which}: " + "; ".join(problems)
