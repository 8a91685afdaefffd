"""Shared test plumbing: where the reference fixtures and the real data live.

Fixture tests discover their files under ``$CSRE_REFERENCE_DIR`` (default ``../shared/reference``
beside the repository). When the variable is set explicitly, a fixture family with no files
fails instead of skipping, so a misconfigured CI cannot pass by testing nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def reference_dir() -> Path:
    return Path(os.environ.get("CSRE_REFERENCE_DIR", SHARED / "reference")).resolve()


def realdata_dir() -> Path:
    return SHARED / "realdata"


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
