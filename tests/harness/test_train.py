"""The trainer on tiny real NW-UCLA cells: run directory, determinism, exact resume, NaN, DDP, eval."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import checkpoint as ckpt_lib
from harness.configurables import GinConfigError
from harness.io import load_scores
from harness.train import NonFiniteLoss, Trainer, train
from tests.conftest import REPO
from tests.harness.conftest import cell_files, cell_params

pytestmark = pytest.mark.slow


def deterministic_part(metrics: dict) -> dict:
    """Everything in metrics.json but the wall-clock / memory figures."""
    return {k: v for k, v in metrics.items() if k != "cost"}


def assert_same(a, b, where: str = "") -> None:
    """Bit-exact equality of nested checkpoints / metrics (tensors, arrays, containers, scalars)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def same_checkpoints(a: Path, b: Path) -> None:
    ca, cb = ckpt_lib.load(a), ckpt_lib.load(b)
    ca.pop("cost"), cb.pop("cost")
    assert_same(ca, cb, "checkpoint")


def run_cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness", "train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def cli_args(h5: Path, run_dir: Path, encoder: str = "ctrgcn", csre: bool = False, extra: tuple = ()) -> list[str]:
    args = [a for f in cell_files(encoder, csre) for a in ("--gin_file", f)]
    args += [a for p in cell_params(h5, *extra, csre=csre) for a in ("--gin_param", p)]
    return args + ["--run_dir", str(run_dir)]


# ------------------------------------------------------------------------------ two-epoch runs

@pytest.mark.parametrize("encoder", ["ctrgcn", "hcn"])
@pytest.mark.parametrize("csre", [False, True], ids=["base", "csre"])
def test_two_epoch_run_writes_the_run_directory(ucla_h5, tmp_path, encoder, csre):
    run_dir = tmp_path / "run"
    m = train(cell_files(encoder, csre), cell_params(ucla_h5, csre=csre), run_dir=run_dir)
    for name in ("config.gin", "operative_config.gin", "run.json", "metrics.json", "checkpoint.pt",
                 "scores_test.npz", "scores_test.pkl", "scores_val.npz", "scores_test_best.npz", "features_test.npz",
                 "dvclive", "dvclive/dvc.yaml"):
        assert (run_dir / name).exists(), name
    assert m["finished"] and m["epochs_done"] == 2
    assert m["cell"] == {"benchmark": "ucla", "encoder": encoder, "stream": "joint", "csre": csre,
                         "head": "csre" if csre else None, "arm": "csre" if csre else "base", "seed": 1,
                         "profile": "ci"}
    assert json.loads((run_dir / "metrics.json").read_text())["last"] == m["last"]
    for rec in m["history"]:
        assert np.isfinite(rec["train"]["loss"]) and rec["train"]["samples"] > 0
    if csre:  # the tiny bank passes the gate: the contrastive term is really trained
        assert any(rec["train"]["contrastive"] > 0 for rec in m["history"])
    else:
        assert all(rec["train"]["contrastive"] == 0 for rec in m["history"])
    last = m["last"]
    assert last["epoch"] == 1 and set(last) == {"epoch", "val", "test"}
    assert 0 <= last["test"]["top1"] <= last["test"]["top5"] <= 100
    assert len(last["test"]["per_class"]) == 10 and last["test"]["n"] == 20
    assert set(last["test"]["levels"]) >= {"hard", "medium", "easy"}
    assert m["best_on_val"]["selected_on"] == "val" and m["best_on_test"]["selected_on"] == "test"
    assert m["precision"] == "fp32" and m["determinism"]["deterministic_algorithms"] is False
    assert m["recipe"]["batch_size"] == 8 and m["cost"]["seconds_per_epoch"] > 0
    assert m["cost"]["peak_memory_mb"] > 0
    # scores: last epoch's test logits, consistent with the headline, and the official pickle
    s = load_scores(run_dir / "scores_test.npz")
    assert s.epoch == 1 and s.logits.shape == (20, 10)
    best = load_scores(run_dir / "scores_test_best.npz")  # the best-on-test epoch's logits
    assert best.epoch == m["best_on_test"]["epoch"]
    assert 100 * float((best.logits.argmax(1) == best.labels).mean()) == pytest.approx(m["best_on_test"]["test"]["top1"])
    assert 100 * float((s.logits.argmax(1) == s.labels).mean()) == pytest.approx(last["test"]["top1"])
    with np.load(run_dir / "features_test.npz") as f:  # pooled test features (t-SNE), same sample order
        assert f["features"].shape[0] == 20 and np.array_equal(f["names"], s.names)
    official = pickle.loads((run_dir / "scores_test.pkl").read_bytes())
    assert list(official) == s.names.tolist() and np.array_equal(official[s.names[0]], s.logits[0])
    # operative config: what was really built
    op = (run_dir / "operative_config.gin").read_text()
    assert "Recipe." in op and "DataConfig." in op and "TrainConfig." in op
    assert ("CSRE.K_pos = 2" in op) == csre
    run = json.loads((run_dir / "run.json").read_text())
    assert run["val_samples"] == len(run["val_positions"]) > 0
    assert run["train_samples"] == 2 * run["train_distinct"]  # DataConfig.repeat = 2


def test_val_split_is_disjoint_stratified_and_seeded(ucla_h5, tmp_path):
    from harness.configurables import parse_gin
    parse_gin(cell_files("hcn"), cell_params(ucla_h5, "Recipe.epochs = 1"))
    t = Trainer(run_dir=tmp_path / "a")
    train_pos, val_pos = set(t.train_positions.tolist()), set(t.val_positions.tolist())
    assert not train_pos & val_pos
    labels = t.train_set.labels[:t.train_set.num_samples]
    assert sorted(np.bincount(labels).tolist()) == [3] * 10  # 4 per class, 1 of each held out
    assert not t.val_set.train and t.val_set.repeat == 1
    t2 = Trainer(run_dir=tmp_path / "b")
    assert np.array_equal(t.val_positions, t2.val_positions)


# ------------------------------------------------------------------------------ determinism

def test_same_seed_gives_bit_identical_metrics_checkpoints_and_scores(ucla_h5, tmp_path):
    files, params = cell_files("ctrgcn", csre=True), cell_params(ucla_h5, csre=True)
    a = train(files, params, run_dir=tmp_path / "a")
    b = train(files, params, run_dir=tmp_path / "b")
    assert_same(deterministic_part(a), deterministic_part(b), "metrics")
    same_checkpoints(tmp_path / "a" / "checkpoint.pt", tmp_path / "b" / "checkpoint.pt")
    for name in ("scores_test.npz", "scores_val.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = train(files, params + ["TrainConfig.seed = 2"], run_dir=tmp_path / "c")
    assert c["history"][0]["train"]["loss"] != a["history"][0]["train"]["loss"]


@pytest.mark.parametrize("requested, amp, device, expected", [
    ("recipe", True, "cuda", ("fp16", "fp32", None)),  # the official: AMP training, fp32 evaluation
    ("recipe", False, "cuda", ("fp32", "fp32", None)),
    ("recipe", False, "cpu", ("fp32", "fp32", None)),
    ("fp16", False, "cpu", ("fp16", "fp16", None)),  # an explicit choice is kept for both
    ("fp64", True, "cuda", ("fp64", "fp64", None)),
])
def test_recipe_precision_is_the_official_trainers(requested, amp, device, expected):
    from harness.configurables import Recipe
    from harness.train import resolve_precision
    assert resolve_precision(requested, Recipe(amp=amp), torch.device(device)) == expected


def test_recipe_precision_on_a_cpu_is_fp32_and_says_why(ucla_h5, tmp_path):
    params = cell_params(ucla_h5, "Recipe.epochs = 1", "TrainConfig.max_steps = 1", "TrainConfig.precision = 'recipe'",
                         "Recipe.amp = True", "Recipe.source = 'owner/repo main.py'")
    m = train(cell_files("hcn"), params, run_dir=tmp_path / "r")
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert m["precision"] == run["precision"] == "fp32" and m["eval_precision"] == "fp32"
    assert "owner/repo main.py" in m["precision_note"] and "AMP" in m["precision_note"] and "cpu run" in m["precision_note"]
    assert m["train_config"]["precision"] == "recipe"  # what was asked, beside what ran
    assert m["batch_per_process"] == run["batch_per_process"] == 8 and m["world_size"] == 1


def test_the_last_partial_batch_trains_where_the_recipe_keeps_it(ucla_h5, tmp_path):
    """Recipe.drop_last = False (HCN-pytorch's loader) trains every sample of the epoch, the last
    batch smaller; the default (CTR-GCN's drop_last=True) drops the remainder."""
    samples = {}
    for keep in (False, True):
        params = cell_params(ucla_h5, "Recipe.epochs = 1", f"Recipe.drop_last = {not keep}")
        m = train(cell_files("hcn"), params, run_dir=tmp_path / str(keep))
        run = json.loads((tmp_path / str(keep) / "run.json").read_text())
        samples[keep] = (m["history"][0]["train"]["samples"], run["train_samples"])
    (kept, n), (dropped, n2) = samples[True], samples[False]
    assert n == n2 and n % 8 != 0, "the tiny cell must end in a partial batch for this test to mean anything"
    assert kept == n and dropped == (n // 8) * 8


def test_determinism_switch_and_bf16_are_recorded(ucla_h5, tmp_path):
    m = train(cell_files("hcn"), cell_params(ucla_h5, "Recipe.epochs = 1", "TrainConfig.deterministic = True",
                                             "TrainConfig.precision = 'bf16'"), run_dir=tmp_path / "r")
    assert m["determinism"] == {"deterministic_algorithms": True, "cudnn_deterministic": True,
                                "cudnn_benchmark": False}
    assert m["precision"] == "bf16" and np.isfinite(m["history"][0]["train"]["loss"])
    torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------------------ resume

def test_sigterm_mid_epoch_checkpoints_and_resume_equals_uninterrupted(ucla_h5, tmp_path):
    files, params = cell_files("ctrgcn", csre=True), cell_params(ucla_h5, csre=True)
    reference = train(files, params, run_dir=tmp_path / "ref")

    import gin

    from harness.configurables import parse_gin
    gin.clear_config()
    parse_gin(files, params)
    t = Trainer(run_dir=tmp_path / "cut")
    calls = {"n": 0}
    step = t.optimizer.step

    def step_then_signal(*a, **kw):  # a real SIGTERM after the 2nd step of epoch 2
        out = step(*a, **kw)
        calls["n"] += 1
        if calls["n"] == len(t.train_set) // t.recipe.batch_size + 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    t.optimizer.step = step_then_signal
    assert t.fit() is None
    ck = ckpt_lib.load(tmp_path / "cut" / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["step"] == 2 and not ck["finished"]  # the position within the epoch
    assert not (tmp_path / "cut" / "metrics.json").exists() or not json.loads(
        (tmp_path / "cut" / "metrics.json").read_text())["finished"]
    with pytest.raises(FileExistsError, match="--resume"):
        train(files, params, run_dir=tmp_path / "cut")
    resumed = train(files, params, run_dir=tmp_path / "cut", resume=True)
    assert_same(deterministic_part(resumed), deterministic_part(reference), "metrics")
    same_checkpoints(tmp_path / "ref" / "checkpoint.pt", tmp_path / "cut" / "checkpoint.pt")
    assert (tmp_path / "ref" / "scores_test.npz").read_bytes() == (tmp_path / "cut" / "scores_test.npz").read_bytes()
    again = train(files, params, run_dir=tmp_path / "cut", resume=True)  # finished: nothing to do
    assert_same(deterministic_part(again), deterministic_part(reference))


def test_sigkill_then_resume_equals_uninterrupted(ucla_h5, tmp_path):
    """A real ``kill -9`` of the CLI process once it has checkpointed an epoch, then ``--resume``."""
    extra = ("Recipe.epochs = 3",)
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = run_cli(cli_args(ucla_h5, ref_dir, csre=True, extra=extra))
    out, _ = ref.communicate(timeout=900)
    assert ref.returncode == 0, out

    proc = run_cli(cli_args(ucla_h5, cut_dir, csre=True, extra=extra))
    ck_path = cut_dir / "checkpoint.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if ck_path.exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[0]
    time.sleep(0.3)  # somewhere inside epoch 2 (or its evaluation / checkpoint write)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)  # reap it and close its pipe
    assert proc.returncode == -signal.SIGKILL
    killed_at = ckpt_lib.load(ck_path)  # never torn: the previous or the new checkpoint
    assert not killed_at["finished"]

    res = run_cli(cli_args(ucla_h5, cut_dir, csre=True, extra=extra) + ["--resume"])
    out, _ = res.communicate(timeout=900)
    assert res.returncode == 0, out
    a = json.loads((ref_dir / "metrics.json").read_text())
    b = json.loads((cut_dir / "metrics.json").read_text())
    assert_same(deterministic_part(a)["history"], deterministic_part(b)["history"], "history")
    for key in ("last", "best_on_val", "best_on_test", "recipe", "data"):
        assert a[key] == b[key], key
    same_checkpoints(ref_dir / "checkpoint.pt", cut_dir / "checkpoint.pt")
    assert not list(cut_dir.glob(".*.tmp")), "a temporary file was left behind"


def test_resume_under_another_config_is_refused(ucla_h5, tmp_path):
    files, params = cell_files("hcn"), cell_params(ucla_h5, "Recipe.epochs = 1")
    train(files, params, run_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="different gin configuration"):
        train(files, params + ["Recipe.base_lr = 0.5"], run_dir=tmp_path / "r", resume=True)


# ------------------------------------------------------------------------------ failures

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(ucla_h5, tmp_path):
    from harness.configurables import parse_gin
    parse_gin(cell_files("hcn"), cell_params(ucla_h5))
    t = Trainer(run_dir=tmp_path / "r")
    criterion, calls = t.criterion, {"n": 0}
    per_epoch = len(t.train_set) // t.recipe.batch_size

    def nan_in_epoch_2(logits, y):
        calls["n"] += 1
        loss = criterion(logits, y)
        return loss * float("nan") if calls["n"] > per_epoch else loss

    t.criterion = nan_in_epoch_2
    with pytest.raises(NonFiniteLoss, match="non-finite loss at epoch 2, batch 1.*last good checkpoint"):
        t.fit()
    ck = ckpt_lib.load(tmp_path / "r" / "checkpoint.pt")
    assert ck["epoch"] == 1 and ck["step"] == 0 and len(ck["history"]) == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_unknown_binding_names_close_matches(ucla_h5, tmp_path):
    with pytest.raises(GinConfigError, match="did you mean: seed"):
        train(cell_files("hcn"), cell_params(ucla_h5, "TrainConfig.sed = 3"), run_dir=tmp_path / "r")


def test_cli_missing_dataset_is_a_clear_error(tmp_path):
    p = run_cli(cli_args(tmp_path / "nope.h5", tmp_path / "r", encoder="hcn"))
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 2 and "nope.h5" in out and "Traceback" not in out


# ------------------------------------------------------------------------------ official checkpoints

def test_eval_verb_loads_an_official_style_checkpoint(ucla_h5, tmp_path):
    from harness.cli import main
    files, params = cell_files("ctrgcn", csre=True), cell_params(ucla_h5, "Recipe.epochs = 1", csre=True)
    train(files, params, run_dir=tmp_path / "r")
    ck = ckpt_lib.load(tmp_path / "r" / "checkpoint.pt")
    # what the official CSRE main.py saves: encoder keys plus std.*, DataParallel's module. prefix
    official = {f"module.{k[len('encoder.'):]}" if k.startswith("encoder.") else f"module.{k}": v
                for k, v in ck["model"].items() if k.startswith(("encoder.", "std."))}
    torch.save(official, tmp_path / "official.pt")
    args = ["eval", "--checkpoint", str(tmp_path / "official.pt"), "--out", str(tmp_path / "eval")]
    args += [a for f in cell_files("ctrgcn") for a in ("--gin_file", f)]
    args += [a for p in cell_params(ucla_h5, "Recipe.epochs = 1") for a in ("--gin_param", p)]
    assert main(args) == 0
    ours = load_scores(tmp_path / "r" / "scores_test.npz")
    theirs = load_scores(tmp_path / "eval" / "scores_test.npz")
    assert np.array_equal(ours.names, theirs.names)
    np.testing.assert_allclose(theirs.logits, ours.logits, rtol=1e-5, atol=1e-5)
    bad = {k: v for k, v in official.items() if "fc" not in k}
    torch.save(bad, tmp_path / "bad.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "bad.pt"), *args[3 + 2:]]) == 2
    from harness.evaluate import evaluate_checkpoint  # the errors behind those exit codes
    files, params = cell_files("ctrgcn"), cell_params(ucla_h5, "Recipe.epochs = 1")
    with pytest.raises(ValueError, match="does not fit the encoder built from"):
        evaluate_checkpoint(tmp_path / "bad.pt", files, params, out_dir=tmp_path / "e1")
    (tmp_path / "damaged.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged.pt: unreadable checkpoint"):
        evaluate_checkpoint(tmp_path / "damaged.pt", files, params, out_dir=tmp_path / "e2")
    with pytest.raises(FileNotFoundError, match="missing.pt: no checkpoint"):
        evaluate_checkpoint(tmp_path / "missing.pt", files, params, out_dir=tmp_path / "e3")


# ------------------------------------------------------------------------------ DDP

def test_torchrun_two_processes_on_cpu(ucla_h5, tmp_path):
    run_dir = tmp_path / "ddp"
    args = cli_args(ucla_h5, run_dir, csre=True, extra=("Recipe.epochs = 1",))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "harness", "train", *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["finished"]
    rec = m["history"][0]["train"]
    run = json.loads((run_dir / "run.json").read_text())
    assert rec["samples"] == (run["train_samples"] // 8) * 8  # global batches of 8, summed over ranks
    assert np.isfinite(rec["loss"]) and rec["contrastive"] > 0
    assert run["batch_per_process"] == m["batch_per_process"] == 4


def test_torchrun_resume_after_sigterm_equals_uninterrupted(ucla_h5, tmp_path):
    """Two processes (gloo), HCN (dropout: every rank draws its own masks), stopped by SIGTERM to
    torchrun once an epoch is checkpointed, refused a one-process resume, then resumed with two
    processes: same numbers."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "harness", "train"]
    extra = ("Recipe.epochs = 3",)

    def args(run_dir):
        return cli_args(ucla_h5, run_dir, encoder="hcn", csre=True, extra=extra)

    ref = subprocess.run(torchrun + args(tmp_path / "ref"), cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    cut = tmp_path / "cut"
    with subprocess.Popen(torchrun + args(cut), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.monotonic() + 600
        while not (cut / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 or json.loads((cut / "metrics.json").read_text())["finished"], out
    single = run_cli(args(cut) + ["--resume"])  # one process cannot resume a two-process run exactly
    single_out, _ = single.communicate(timeout=300)
    assert single.returncode != 0 and "written by 2 processes, resumed with 1" in single_out, single_out
    res = subprocess.run(torchrun + args(cut) + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert_same(a["history"], b["history"], "history")
    same_checkpoints(tmp_path / "ref" / "checkpoint.pt", cut / "checkpoint.pt")


@pytest.mark.parametrize("head", ["skeletongcl", "frhead"])
def test_competitor_heads_train_through_the_trainer(ucla_h5, tmp_path, head):
    files = cell_files("ctrgcn") + [f"gin/heads/{head}.gin"]
    params = cell_params(ucla_h5, f"TrainConfig.head = '{head}'", "models.SkeletonGCL.K_pos = 2",
                         "models.SkeletonGCL.K_hard = 8", "models.SkeletonGCL.K_rand = 8")
    m = train(files, params, run_dir=tmp_path / head)
    assert m["finished"] and m["cell"]["head"] == head and m["cell"]["arm"] == head and not m["cell"]["csre"]
    assert any(rec["train"]["contrastive"] > 0 for rec in m["history"])
    ck = ckpt_lib.load(tmp_path / head / "checkpoint.pt")
    assert any(k.startswith("encoder.") for k in ck["model"])  # the head wraps the encoder; export drops it
    with pytest.raises(ValueError, match="contradicts"):
        train(files, params + ["TrainConfig.csre = True"], run_dir=tmp_path / "bad")


@pytest.mark.parametrize("encoder, head", [("ctrgcn", "csre"), ("ctrgcn", "skeletongcl"), ("ctrgcn", "frhead"),
                                          ("infogcn", None)])
def test_fp64_runs_every_head_in_float64(ucla_h5, tmp_path, encoder, head):
    """precision='fp64' (the CI regression cells): parameters, banks, losses and the regulariser in
    float64, with no float32 step that would bring the CPU's float32 kernels back in."""
    files = cell_files(encoder, csre=head == "csre") + ([f"gin/heads/{head}.gin"] if head not in (None, "csre") else [])
    extra = [f"TrainConfig.head = '{head}'"] if head not in (None, "csre") else []
    params = cell_params(ucla_h5, "Recipe.epochs = 1", "TrainConfig.max_steps = 2", "TrainConfig.precision = 'fp64'",
                         "models.SkeletonGCL.K_pos = 2", "models.SkeletonGCL.K_hard = 8", "models.SkeletonGCL.K_rand = 8",
                         *extra, csre=head == "csre")
    seen = []
    original = torch.nn.functional.cross_entropy
    torch.nn.functional.cross_entropy = lambda x, *a, **k: seen.append(x.dtype) or original(x, *a, **k)
    try:
        m = train(files, params, run_dir=tmp_path / "r")
    finally:
        torch.nn.functional.cross_entropy = original
    assert m["precision"] == "fp64" and np.isfinite(m["history"][0]["train"]["loss"])
    assert seen[:2] == [torch.float64] * 2  # the two training steps; val/test losses read the float32 score logits
    ck = ckpt_lib.load(tmp_path / "r" / "checkpoint.pt")
    floating = {k: v.dtype for k, v in ck["model"].items() if torch.is_tensor(v) and v.is_floating_point()}
    assert set(floating.values()) == {torch.float64}, {k: d for k, d in floating.items() if d != torch.float64}
    if head is not None:
        assert m["history"][0]["train"]["contrastive"] >= 0 and any(k.startswith("encoder.") for k in floating)


def test_infogcn_trains_with_its_own_objective(ucla_h5, tmp_path):
    """InfoGCN's MMD and latent-mean terms enter the loss (and the record) through Encoder.regulariser."""
    params = cell_params(ucla_h5, "Recipe.epochs = 1", "TrainConfig.max_steps = 3", "Recipe.base_lr = 0.0001")
    m = train(cell_files("infogcn"), params, run_dir=tmp_path / "on")
    t = m["history"][0]["train"]
    assert t["regulariser"] > 0 and t["contrastive"] == 0
    assert t["loss"] == pytest.approx(t["ce"] + t["regulariser"], rel=1e-6)
    off = train(cell_files("infogcn"), params + ["models.InfoGCN.lambda_1 = 0", "models.InfoGCN.lambda_2 = 0"],
                run_dir=tmp_path / "off")
    t = off["history"][0]["train"]
    assert t["regulariser"] == 0 and t["loss"] == pytest.approx(t["ce"], rel=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gradient_clipping_bounds_every_step(ucla_h5, tmp_path, monkeypatch, precision):
    """Recipe.clip_norm_per_sample clips the (unscaled) gradient norm to clip x batch before each step."""
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        total = real(params, max_norm, *args, **kwargs)
        calls.append((max_norm, float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in params if p.grad is not None])))))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    params = cell_params(ucla_h5, "Recipe.epochs = 1", "TrainConfig.max_steps = 3", "Recipe.clip_norm_per_sample = 0.01",
                         f"TrainConfig.precision = '{precision}'")
    train(cell_files("hcn"), params, run_dir=tmp_path / "clip")
    assert [c[0] for c in calls] == [0.01 * 8] * 3  # batch 8 in the ci profile, once per step
    assert all(after <= 0.08 * (1 + 1e-4) for _, after in calls)
    calls.clear()
    train(cell_files("hcn"), params[:-2] + [f"TrainConfig.precision = '{precision}'"], run_dir=tmp_path / "none")
    assert calls == []  # the NW-UCLA stand-in recipe does not clip


@pytest.mark.parametrize("benchmark, stream, bound, tau", [
    ("ntu120_xsub", "bone_motion", None, 1.0), ("ntu120_xset", "joint", None, 0.5),  # official scripts
    (None, "bone", None, 0.8),  # NW-UCLA (the cell's own benchmark): main.py's default
    ("ntu120_xsub", "bone", 0.7, 0.7)])  # a bound value wins
def test_skeletongcl_gets_the_official_temperature_of_its_cell(ucla_h5, tmp_path, benchmark, stream, bound, tau):
    """The trainer passes the benchmark and the stream: a plain `harness train` gets the official
    scripts' value of its cell (the benchmark is rebound here to reach the NTU entries with the
    NW-UCLA data)."""
    from harness.configurables import parse_gin
    extra = [f"DataConfig.modality = '{stream}'"] + ([f"models.SkeletonGCL.tau = {bound}"] if bound else [])
    extra += [f"TrainConfig.benchmark = '{benchmark}'"] if benchmark else []
    parse_gin(cell_files("ctrgcn") + ["gin/heads/skeletongcl.gin"],
              cell_params(ucla_h5, "TrainConfig.head = 'skeletongcl'", "models.SkeletonGCL.K_pos = 2",
                          "models.SkeletonGCL.K_hard = 8", "models.SkeletonGCL.K_rand = 8", *extra))
    assert Trainer(run_dir=tmp_path / "r").model.tau == tau


def test_fp16_max_steps_and_worker_processes(ucla_h5, tmp_path):
    """fp16 autocast with its GradScaler, the per-epoch step cap and DataLoader worker processes."""
    params = cell_params(ucla_h5, "Recipe.epochs = 1", "TrainConfig.precision = 'fp16'", "TrainConfig.max_steps = 2",
                         "TrainConfig.num_workers = 1")
    m = train(cell_files("hcn"), params, run_dir=tmp_path / "r")
    assert m["precision"] == "fp16" and m["finished"]
    assert m["history"][0]["train"]["samples"] == 2 * 8  # two batches of 8, not the whole epoch
    assert ckpt_lib.load(tmp_path / "r" / "checkpoint.pt")["scaler"] is not None
