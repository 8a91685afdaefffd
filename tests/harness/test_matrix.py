"""Benchmark matrices: cell expansion, resumable runs, failures reported, missing data caught at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import gin
import pytest

from harness.configurables import Recipe, build_encoder, parse_gin
from harness.constants import STREAMS
from harness.ensemble import SHORT_PROFILE_CALLS
from harness.matrix import Cell, cell_gin_files, check_data, expand, run_matrix, summarize
from harness.train import TrainConfig
from tests.conftest import REPO


def test_expand_nests_encoders_streams_arms_seeds(tmp_path):
    cells = expand("ucla", encoders=["ctrgcn", "hcn"], streams=["joint", "bone"], seeds=[1, 2], profile="ci",
                   root=tmp_path)
    assert len(cells) == 2 * 2 * 2 * 2
    assert cells[0].name == "ucla/ctrgcn/joint/base/seed1" and cells[1].name == "ucla/ctrgcn/joint/base/seed2"
    assert cells[2].arm == "csre" and cells[-1].name == "ucla/hcn/bone/csre/seed2"
    assert cells[-1].run_dir == tmp_path / "ucla" / "hcn" / "bone" / "csre" / "seed2"
    assert len({c.run_dir for c in cells}) == len(cells)
    with pytest.raises(ValueError, match="unknown encoder 'stgcn'"):
        expand("ucla", encoders=["stgcn"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        expand("ntu60")


def test_gin_files_per_benchmark_and_encoder():
    assert cell_gin_files("ucla", "ctrgcn", False, "quick") == [
        "gin/encoders/ctrgcn.gin", "gin/datasets/ucla.gin", "gin/recipes/ctrgcn_ucla.gin", "gin/profiles/quick.gin"]
    assert "gin/recipes/hyperformer_ucla.gin" in cell_gin_files("ucla", "hyperformer", False, "paper")
    assert "gin/recipes/ctrgcn_ucla.gin" in cell_gin_files("ucla", "blockgcn", False, "paper")  # labelled stand-in
    ntu = cell_gin_files("ntu60_xsub", "agcn", True, "paper", ["gin/csre/tc.gin"])
    assert ntu == ["gin/encoders/agcn.gin", "gin/datasets/ntu60_xsub.gin", "gin/recipes/agcn_ctrgcn_pipeline.gin",
                   "gin/csre.gin", "gin/profiles/paper.gin", "gin/csre/tc.gin"]
    for f in ntu:
        assert (REPO / f).exists(), f


HYPERFORMER_XVIEW = "ZhouYuxuanYX/Hyperformer config/nturgbd-cross-view/{joint,bone,vel,bone_vel}.yaml"
HYPERFORMER_XSUB = "ZhouYuxuanYX/Hyperformer config/nturgbd-cross-subject/joint.yaml"
UCLA_JOINT_PARTS = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]  # config/ucla/{joint,vel}.yaml
UCLA_BONE_PARTS = [0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 2, 2, 2, 0, 2, 2, 2]  # config/ucla/{bone,bone_vel}.yaml
#: (benchmark, encoder, streams): official values, the file they come from
OFFICIAL_RECIPES = [
    ("ntu60_xview", "hyperformer", STREAMS, {"Recipe.base_lr": 0.01, "Recipe.gamma": 0.025, "Recipe.steps": [110, 120],
                                             "Recipe.epochs": 140, "Recipe.test_batch_size": 512}, HYPERFORMER_XVIEW),
    ("ntu60_xsub", "hyperformer", STREAMS, {"Recipe.base_lr": 0.025, "Recipe.gamma": 0.1, "Recipe.test_batch_size": 64},
     HYPERFORMER_XSUB),
    ("ucla", "hyperformer", ("joint", "joint_motion"), {"joint_label": UCLA_JOINT_PARTS}, "Hyperformer config/ucla/joint.yaml"),
    ("ucla", "hyperformer", ("bone", "bone_motion"), {"joint_label": UCLA_BONE_PARTS}, "Hyperformer config/ucla/bone.yaml"),
]


@pytest.mark.parametrize("csre", [False, True], ids=["base", "csre"])
@pytest.mark.parametrize("benchmark, encoder, streams, expected, source", OFFICIAL_RECIPES,
                         ids=[f"{b}-{e}-{'+'.join(s)}" for b, e, s, _, _ in OFFICIAL_RECIPES])
def test_cells_bind_the_official_recipe(benchmark, encoder, streams, expected, source, csre):
    """The paper-profile cells the matrix expands carry the official values (with CSRE too, whose
    runs use the encoder's configs); joint_label is read off the built encoder."""
    for cell in expand(benchmark, encoders=[encoder], streams=list(streams), csre=(csre,), profile="paper"):
        parse_gin(cell.gin_files, cell.gin_params)
        try:
            for key, value in expected.items():
                got = list(build_encoder().joint_label) if key == "joint_label" else gin.query_parameter(key)
                assert got == value, f"{cell.name}: {key} = {got!r}, official {value!r} ({source})"
        finally:
            gin.clear_config()


#: Recipe.amp of the official trainers (torch.cuda.amp / Apex O1); every w/CSRE cell is the CSRE code's (AMP)
OFFICIAL_AMP = {"hcn": False, "agcn": False, "ctrgcn": False,  # HCN-pytorch, 2s-AGCN, CTR-GCN main.py: fp32
                "hyperformer": True, "blockgcn": True,  # main.py train(): use_amp = True
                "infogcn": True}  # README command --half=True (apex O1)


@pytest.mark.parametrize("benchmark", ["ntu120_xsub", "ucla"])
@pytest.mark.parametrize("encoder", sorted(OFFICIAL_AMP))
def test_paper_cells_train_as_the_official_trainers(benchmark, encoder):
    """The paper profile: every training sample trains (no validation part) at the official
    trainer's precision (``'recipe'``: AMP where the official code used it)."""
    for cell in expand(benchmark, encoders=[encoder], streams=["joint"], profile="paper"):
        parse_gin(cell.gin_files, cell.gin_params)
        try:
            cfg, recipe = TrainConfig(), Recipe()
            assert (cfg.val_fraction, cfg.precision) == (0, "recipe"), cell.name
            assert recipe.amp == (OFFICIAL_AMP[encoder] or cell.csre), cell.name
        finally:
            gin.clear_config()
    for profile in ("quick", "ci"):  # the shortened profiles keep their validation part and fp32
        cell = expand(benchmark, encoders=[encoder], streams=["joint"], profile=profile)[0]
        parse_gin(cell.gin_files, cell.gin_params)
        try:
            assert TrainConfig().precision == "fp32" and TrainConfig().val_fraction > 0, cell.name
        finally:
            gin.clear_config()


def test_tau_grid_adds_the_papers_other_temperatures_to_every_csre_cell(tmp_path):
    cells = expand("ucla", encoders=["ctrgcn"], streams=["joint", "bone"], heads=["skeletongcl"], root=tmp_path,
                   tau_grid_cells=True)
    assert [c.name for c in cells if c.stream == "joint"] == [
        "ucla/ctrgcn/joint/base/seed1", "ucla/ctrgcn/joint/csre/seed1", "ucla/ctrgcn/joint/csre-tau0.5/seed1",
        "ucla/ctrgcn/joint/csre-tau1.0/seed1", "ucla/ctrgcn/joint/skeletongcl/seed1"]
    taus = {}
    for c in cells:
        if c.csre:
            parse_gin(c.gin_files, c.gin_params)
            try:
                taus[c.arm] = gin.query_parameter("models.CSRE.tau")
            finally:
                gin.clear_config()
    assert taus == {"csre": 0.8, "csre-tau0.5": 0.5, "csre-tau1.0": 1.0}
    assert len(expand("ucla", encoders=["ctrgcn"], streams=["joint"], root=tmp_path)) == 2  # off by default


@pytest.mark.parametrize("kw, what", [({"encoders": []}, "encoders"), ({"streams": []}, "streams"),
                                      ({"seeds": []}, "seeds"), ({"csre": ()}, "arms")])
def test_an_empty_matrix_is_an_error(tmp_path, kw, what):
    with pytest.raises(ValueError, match=f"no {what} given"):
        expand("ucla", root=tmp_path, **kw)


def test_missing_dataset_fails_at_once_with_what_to_do(tmp_path):
    def cells(benchmark: str, path: Path, extra_gin: tuple = ()):
        return expand(benchmark, encoders=["ctrgcn"], streams=["joint"], root=tmp_path,
                      extra_params=[f"DataConfig.path = '{path}'"], extra_gin=extra_gin)

    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="ntu120.h5: .*ROSE Lab.*dvc repro ntu120"):
        check_data(cells("ntu120_xsub", tmp_path / "ntu120.h5"))
    with pytest.raises(FileNotFoundError, match="u.h5: .*dvc repro ucla"):
        check_data(cells("ucla", tmp_path / "u.h5"))
    # the path is what the cell's configuration says, from a binding or from an extra gin file
    (tmp_path / "here.h5").write_bytes(b"")
    check_data(cells("ucla", tmp_path / "here.h5"))
    extra = tmp_path / "elsewhere.gin"
    extra.write_text(f"DataConfig.path = '{tmp_path / 'missing.h5'}'\n")
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        check_data(expand("ucla", encoders=["ctrgcn"], streams=["joint"], root=tmp_path, extra_gin=[str(extra)]))
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
def test_matrix_runs_skips_finished_cells_and_reports_failures(ucla_h5, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cells' trainers: no thread oversubscription on small machines
    data = (f"DataConfig.path = '{ucla_h5}'",)
    cells = expand("ucla", encoders=["hcn"], streams=["joint"], profile="ci", root=tmp_path, extra_params=data)
    broken = Cell("ucla", "hcn", "bone", False, 1, "ci", tmp_path, (), data + ("Recipe.batch_size = 100000",))
    lines: list[str] = []
    result = run_matrix([cells[0], broken, cells[1]], echo=lines.append)
    assert [c.name for c in result.done] == [c.name for c in cells]  # the failure did not stop the others
    assert [(c.name, code) for c, code, _ in result.failed] == [(broken.name, 2)]
    log = result.failed[0][2]
    assert log == broken.run_dir / "train.log" and "fewer than one batch" in log.read_text()
    assert any("FAILED" in line and str(log) in line for line in lines)
    again = run_matrix(cells, echo=lines.append)  # re-running: finished cells are skipped
    assert [c.name for c in again.skipped] == [c.name for c in cells] and not again.done
    summary = summarize(cells, tmp_path / "ucla", echo=lines.append)
    report = json.loads((tmp_path / "ucla" / "ensembles.json").read_text())
    assert summary["finished"] == 2 and report["groups"]
    assert report["tuner"]["n_calls"] == SHORT_PROFILE_CALLS  # a shortened profile: not the official 200


def test_matrix_verb_dry_run_lists_cells(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness", "matrix", "ucla", "--profile", "ci", "--encoders", "hcn",
                          "--streams", "joint,bone", "--root", str(tmp_path), "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert out.count("pending") == 4 and "ucla/hcn/bone/csre/seed1" in out
    grid = subprocess.run([sys.executable, "-m", "harness", "matrix", "ucla", "--profile", "ci", "--encoders", "hcn",
                           "--streams", "joint", "--root", str(tmp_path), "--dry-run", "--tau-grid"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    assert out.count("pending") == 4 and [line.split()[1] for line in grid.splitlines()[1:]] == [
        "ucla/hcn/joint/base/seed1", "ucla/hcn/joint/csre/seed1", "ucla/hcn/joint/csre-tau0.5/seed1",
        "ucla/hcn/joint/csre-tau1.0/seed1"]


def test_matrix_verb_shard_dry_run_lists_every_nth_cell(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness", "matrix", "ucla", "--profile", "ci", "--encoders", "hcn",
                          "--streams", "joint,bone", "--root", str(tmp_path), "--shard", "2/2", "--dry-run"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "shard 2/2: 2 of 4 cells" in lines[0]
    assert [line.split()[:2] for line in lines[1:]] == [["pending", "ucla/hcn/joint/csre/seed1"],
                                                        ["pending", "ucla/hcn/bone/csre/seed1"]]


def test_a_cell_claimed_by_a_live_owner_is_skipped_as_running_elsewhere(tmp_path):
    from harness.launch import Claim
    cell = expand("ucla", encoders=["hcn"], streams=["joint"], csre=[False], profile="ci", root=tmp_path)[0]
    claim = Claim(cell.run_dir, launcher="elsewhere")
    assert claim.acquire() == (True, None)
    lines: list[str] = []
    result = run_matrix([cell], echo=lines.append)
    assert not result.done and not result.failed and [c.name for c, _ in result.elsewhere] == [cell.name]
    assert "running elsewhere" in lines[0] and not (cell.run_dir / "train.log").exists()
    claim.release()
