"""The DVC pipeline, run for real in a scratch copy of the project (offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, dst / name)
    (dst / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", dst / ".dvc" / "config")
    skip = shutil.ignore_patterns("__pycache__", "h5", "*.h5", "nturgb+d_skeletons*")
    for pkg in ("data", "harness", "models"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=skip)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst


def test_repro_ucla_then_noop(project):
    first = _dvc(project, "repro", "ucla")
    assert (project / "data" / "h5" / "ucla.h5").is_file(), first.stdout
    again = _dvc(project, "repro", "ucla")
    assert "didn't change" in again.stdout or "is cached" in again.stdout, again.stdout
    assert not (project / "data" / "h5" / ".ucla.h5.tmp").exists()


def test_ntu_stage_without_raw_data_fails_fast(project):
    proc = _dvc(project, "repro", "ntu60", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "nturgbd_skeletons_s001_to_s017" in text and "data/raw/ntu" in text, text


def test_changing_a_denoising_parameter_touches_only_ntu(project):
    _dvc(project, "repro", "ucla")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ntu"]["min_frames"] = 12
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    status = _dvc(project, "status", "--json").stdout
    changed = set(json.loads(status))
    assert "ucla" not in changed
    assert {"ntu60", "ntu120"} <= changed
