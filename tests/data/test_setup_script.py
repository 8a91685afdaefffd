"""scripts/setup.sh: where torch comes from (TORCH_INDEX_URL) and the note of which torch it is.

The script runs for real against a stand-in ``.venv/bin/python`` that logs every call, answers
``pip install`` by writing a tiny fake ``torch`` package (CPU or CUDA, after the index it was given)
and runs everything else with the real interpreter on that fake package only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [[ "$1" == "-m" && "$2" == "pip" ]]; then
  if [[ " $* " == *" torch==2.13.0 "* ]]; then
    mkdir -p "$FAKE_SITE/torch"
    if [[ " $* " == *"/cu128 "* ]]; then tag="cu128" cuda="'12.8'"; else tag="cpu" cuda=None; fi
    printf '__version__ = "2.13.0+%s"\nclass version:\n    cuda = %s\n' "$tag" "$cuda" > "$FAKE_SITE/torch/__init__.py"
  fi
  exit 0
fi
PYTHONPATH="$FAKE_SITE" exec "$REAL_PYTHON" -S "$@"
"""


@pytest.fixture
def checkout(tmp_path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return root


def _setup(root: Path, index_url: str | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = root / "calls.log"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    env.update(FAKE_LOG=str(log), FAKE_SITE=str(root / "site"), REAL_PYTHON=sys.executable)
    if index_url is not None:
        env["TORCH_INDEX_URL"] = index_url
    proc = subprocess.run(["bash", str(root / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, log.read_text().splitlines()


def _pip_installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip install") and "--upgrade pip" not in c]


def test_default_index_is_plain_pip(checkout):
    proc, calls = _setup(checkout)
    assert _pip_installs(calls) == ["-m pip install -q torch==2.13.0", "-m pip install -q -e .[dev]"]
    assert proc.stdout.splitlines()[-1] == "setup.sh: torch 2.13.0+cpu in .venv (CPU build)"


@pytest.mark.parametrize("url, note", [
    ("https://download.pytorch.org/whl/cpu", "torch 2.13.0+cpu in .venv (CPU build)"),
    ("https://download.pytorch.org/whl/cu128", "torch 2.13.0+cu128 in .venv (CUDA 12.8 build)"),
])
def test_torch_index_url_is_passed_as_index_url(checkout, url, note):
    proc, calls = _setup(checkout, url)
    assert _pip_installs(calls) == [f"-m pip install -q --index-url {url} torch==2.13.0",
                                    "-m pip install -q -e .[dev]"]
    assert proc.stdout.splitlines()[-1] == f"setup.sh: {note}"


def test_an_installed_torch_is_kept_and_named(checkout):
    _setup(checkout, "https://download.pytorch.org/whl/cu128")
    proc, calls = _setup(checkout, "https://download.pytorch.org/whl/cpu")
    assert _pip_installs(calls)[-1:] == ["-m pip install -q -e .[dev]"] and len(_pip_installs(calls)) == 3
    assert "TORCH_INDEX_URL is not used" in proc.stderr
    assert proc.stdout.splitlines()[-1] == "setup.sh: torch 2.13.0+cu128 in .venv (CUDA 12.8 build)"
