"""The DVC pipeline, run for real in scratch copies of the project (offline).

The module's project has every stage built (NW-UCLA from the bundled data, NTU60/NTU120 from a few
synthetic ``.skeleton`` files) and ``dvc status`` clean, so a stage that ``status`` lists changed
because of what a test did, not because it was never built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data import synthetic
from tests.conftest import REPO

pytestmark = pytest.mark.slow

STAGES = ("ucla", "ntu60", "ntu120")
OUTPUTS = sorted(f"{stage}.h5" for stage in STAGES)


def _dvc(cwd: Path, *args: str, check: bool = True, workers: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("CSRE_PREPARE_WORKERS", None)
    if workers is not None:
        env["CSRE_PREPARE_WORKERS"] = workers
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _changed(project: Path) -> set[str]:
    """Stages that `dvc status` lists as changed."""
    return set(json.loads(_dvc(project, "status", "--json").stdout or "{}"))


def _copy_project(dst: Path) -> Path:
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, dst / name)
    (dst / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", dst / ".dvc" / "config")
    skip = shutil.ignore_patterns("__pycache__", "h5", "*.h5", "nturgb+d_skeletons*")
    for pkg in ("data", "harness", "models"):
        shutil.copytree(REPO / pkg, dst / pkg, ignore=skip)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    dst = _copy_project(tmp_path_factory.mktemp("project"))
    raw = dst / "data" / "raw" / "ntu"
    synthetic.write_corpus(raw / "nturgb+d_skeletons", 3, seed=1, frames=(20, 40), two_body_fraction=0.5,
                           names=["S001C001P001R001A001", "S002C002P003R002A013", "S017C003P040R001A060"])
    synthetic.write_skeleton(raw / "nturgb+d_skeletons120" / "S018C001P045R002A061.skeleton", n_frames=30, seed=2)
    h5_dir = dst / "data" / "h5"
    h5_dir.mkdir()
    stale = h5_dir / f".ucla.h5.tmp{_dead_pid()}"  # what a build killed with SIGKILL leaves
    stale.write_bytes(b"partial")
    _dvc(dst, "repro", workers="1")
    assert not stale.exists()
    return dst


def test_repro_builds_everything_then_is_a_true_noop(project):
    h5_dir = project / "data" / "h5"
    assert sorted(p.name for p in h5_dir.iterdir() if p.name != ".gitignore") == OUTPUTS  # no .*.h5.tmp<pid>
    assert _changed(project) == set()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in h5_dir.glob("*.h5")}
    again = _dvc(project, "repro")
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout
    assert "is cached" not in again.stdout and "Running stage" not in again.stdout, again.stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in h5_dir.glob("*.h5")} == before
    assert sorted(p.name for p in h5_dir.iterdir() if p.name != ".gitignore") == OUTPUTS


@pytest.mark.parametrize("group, key, value, expected", [
    ("ntu", "min_frames", 12, {"ntu60", "ntu120"}),
    ("ntu", "noise_spread_ratio", 0.7, {"ntu60", "ntu120"}),
    ("ntu", "noise_frame_ratio", 0.5, {"ntu60", "ntu120"}),
    ("prepare", "compression", "lzf", set(STAGES)),
])
def test_a_parameter_change_touches_exactly_its_stages(project, group, key, value, expected):
    path = project / "params.yaml"
    original = path.read_text()
    assert _changed(project) == set()  # every stage up to date: what follows comes from the edit
    params = yaml.safe_load(original)
    params[group][key] = value
    try:
        path.write_text(yaml.safe_dump(params))
        assert _changed(project) == expected
    finally:
        path.write_text(original)
    assert _changed(project) == set()


def _lock_md5(project: Path, stage: str) -> str:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["outs"][0]["md5"]


def test_workers_reach_the_ntu_stages_without_being_tracked(project):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in ("ntu60", "ntu120"):
        assert not any("workers" in p for p in stages[stage]["params"]), stages[stage]["params"]
        assert "${CSRE_PREPARE_WORKERS:-0}" in stages[stage]["cmd"].replace("\\${", "${")
    assert "workers" not in yaml.safe_load((REPO / "params.yaml").read_text())["prepare"]
    md5 = _lock_md5(project, "ntu60")
    # the variable reaches --workers: a bad value fails the stage with argparse's message
    bad = _dvc(project, "repro", "--force", "--no-run-cache", "ntu60", workers="lots", check=False)
    assert bad.returncode != 0 and "invalid int value: 'lots'" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    # a real rebuild with another worker count (built with 1 above) gives the same bytes
    rebuilt = _dvc(project, "repro", "--force", "--no-run-cache", "ntu60", workers="2")
    assert "Running stage 'ntu60'" in rebuilt.stdout, rebuilt.stdout
    assert _lock_md5(project, "ntu60") == md5
    assert _changed(project) == set()


def test_ntu_stage_without_raw_data_fails_fast(tmp_path):
    bare = _copy_project(tmp_path)
    proc = _dvc(bare, "repro", "ntu60", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "nturgbd_skeletons_s001_to_s017" in text and "data/raw/ntu" in text, text
    assert not (bare / "data" / "h5" / "ntu60.h5").exists()
