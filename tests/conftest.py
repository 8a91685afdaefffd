"""Shared test plumbing: where the reference fixtures and the real data live.

Fixture tests discover their files under ``$CSRE_REFERENCE_DIR`` (default ``../shared/reference``
beside the repository). When the variable is set explicitly, a fixture family with no files
fails instead of skipping, so a misconfigured CI cannot pass by testing nothing.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


#: environment variables that change which CPU kernels torch, oneDNN, MKL, OpenBLAS and numpy use
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE",
                    "NPY_DISABLE_CPU_FEATURES")


def machine_lines() -> list[str]:
    """What a float result depends on (torch build, CPU capability, kernel overrides) and which fixtures
    ran, so a failure on a new machine is easy to place."""
    import torch
    overrides = ", ".join(f"{k}={os.environ[k]}" for k in KERNEL_VARIABLES if k in os.environ)
    return [f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()} "
            f"({platform.machine()}, {os.cpu_count()} cores){'; kernel overrides: ' + overrides if overrides else ''}",
            f"reference fixtures: {reference_dir()}"]


def pytest_report_header(config) -> list[str]:
    return machine_lines()


def pytest_terminal_summary(terminalreporter) -> None:
    """The same lines at the end, where ``-q`` (which hides the header) still shows them."""
    for line in machine_lines():
        terminalreporter.write_line(line)


def reference_dir() -> Path:
    return Path(os.environ.get("CSRE_REFERENCE_DIR", SHARED / "reference")).resolve()


def realdata_dir() -> Path:
    return SHARED / "realdata"


def assert_scaled_close(ours, ref, tol: float, what: str) -> None:
    """``max|ours - ref| <= tol * max(1, max|ref|)``: a file made on another CPU moves in the last bits
    of its largest entries, so the bound follows the array's scale instead of a fixed atol."""
    as_array = lambda a: np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)  # noqa: E731
    ours, ref = as_array(ours), as_array(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    bound = tol * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    assert err <= bound, f"{what}: max abs diff {err:.3g} > {bound:.3g} (tol {tol:g} x max(1, max|ref|))"


def fixture_params(paths, family: str) -> list:
    """pytest params, one per fixture path (id = its path relative to the reference dir).

    With nothing found, one placeholder param that :func:`require_fixture` turns into a failure
    (variable set) or a skip (variable unset and the default directory absent).
    """
    root = reference_dir()
    params = []
    for p in sorted(paths):
        p = Path(p)
        try:
            pid = str(p.relative_to(root))
        except ValueError:
            pid = p.name
        params.append(pytest.param(p, id=pid))
    return params or [pytest.param(None, id=f"{family}:no-fixtures")]


def require_fixture(path, family: str) -> Path:
    if path is not None:
        return path
    msg = f"no reference fixtures for {family!r} under {reference_dir()}"
    if "CSRE_REFERENCE_DIR" in os.environ:
        pytest.fail(msg + " ($CSRE_REFERENCE_DIR is set, so this is an error)")
    pytest.skip(msg)
