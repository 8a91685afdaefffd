"""Launchers: shards, claims, and SLURM through submitit (its LocalExecutor: real job processes on this CPU).

The slow tests run tiny real NW-UCLA ``ci`` cells of HCN (the fastest encoder) in real subprocesses:
submitit jobs against the local launcher, a preemption signal (submitit's, to the job) and a SIGTERM
(to the trainer) followed by requeue / rerun, and two shard workers sharing one results directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.launch import (CLAIM, CLAIM_LOG, JOB_STATUS, SLURM_RECORD, Claim, SlurmOptions, classify,
                            executor_parameters, make_executor, parse_shard, run_slurm, shard_cells)
from harness.matrix import Cell, expand, run_cell, run_matrix
from tests.conftest import REPO

submitit = pytest.importorskip("submitit")


@pytest.fixture
def one_thread(monkeypatch):
    """Cells in parallel on few cores: one intra-op thread each (children inherit it)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def runs(cell: Cell) -> int:
    """How many times a trainer was started in this cell (the `$ ... train` lines of train.log)."""
    log = cell.run_dir / "train.log"
    return sum(line.startswith("$ ") and " train " in line for line in log.read_text().splitlines()) \
        if log.exists() else 0


def numbers(cell: Cell) -> dict:
    """The deterministic part of a finished cell's metrics (everything but wall-clock and memory)."""
    m = json.loads((cell.run_dir / "metrics.json").read_text())
    assert m["finished"]
    return {"history": m["history"], "last": m["last"], "best_on_val": m["best_on_val"]}


def local_opts(**kw) -> SlurmOptions:
    return SlurmOptions(cluster="local", gpus=0, poll_s=0.2, **kw)


# --------------------------------------------------------------------------- fast

def test_shards_split_the_expansion_order_deterministically(tmp_path):
    cells = expand("ucla", encoders=["hcn", "ctrgcn"], streams=["joint", "bone"], seeds=[1, 2], root=tmp_path)
    parts = [shard_cells(cells, k, 3) for k in (1, 2, 3)]
    assert [c.name for c in parts[0]] == [c.name for c in cells[0::3]]
    assert sorted(c.name for p in parts for c in p) == sorted(c.name for c in cells)  # a partition
    assert shard_cells(cells, 1, 1) == cells
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/2", "3/2", "1-2", "x"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    run_dir = tmp_path / "cell"
    lines: list[str] = []
    a = Claim(run_dir, echo=lines.append, launcher="local", shard="1/2")
    assert a.acquire() == (True, None)
    rec = json.loads((run_dir / CLAIM).read_text())
    assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid() and rec["shard"] == "1/2"
    b = Claim(run_dir, echo=lines.append)
    ours, holder = b.acquire()  # a live owner (this very process): running elsewhere
    assert not ours and f"pid {os.getpid()}" in holder
    b.release()  # not b's: nothing happens
    assert (run_dir / CLAIM).exists()
    a.release()
    assert not (run_dir / CLAIM).exists() and b.acquire() == (True, None)
    b.release()

    def plant(**rec) -> None:
        (run_dir / CLAIM).write_text(json.dumps({"token": "t0", **rec}))

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(host=socket.gethostname(), pid=dead.pid)  # same host, owner gone: stale
    c = Claim(run_dir, echo=lines.append)
    assert c.acquire() == (True, None)
    assert any("took over the stale claim" in line and f"pid {dead.pid} is gone" in line for line in lines)
    c.release()
    plant(host="node-elsewhere", pid=1)  # another host, fresh heartbeat: live
    assert Claim(run_dir).acquire() == (False, "node-elsewhere pid 1")
    old = time.time() - 3600
    os.utime(run_dir / CLAIM, (old, old))  # ... an hour without heartbeat
    assert Claim(run_dir, stale_after=0).acquire()[0] is False  # 0: never taken over
    d = Claim(run_dir, stale_after=900, echo=lines.append)
    assert d.acquire() == (True, None) and "no heartbeat" in lines[-1]
    d.release()
    plant(host="node-elsewhere", pid=1, job_id="77_3")  # a requeued job takes its own claim back at once
    assert Claim(run_dir, job_id="77_3").acquire() == (True, None)
    log = (run_dir / CLAIM_LOG).read_text()
    assert log.count("claimed by") == 2 and log.count("took over") == 3 and log.count("released by") == 4


def test_slurm_job_parameters_come_from_the_command_line(tmp_path, monkeypatch):
    opts = SlurmOptions(partition="gpu", account="proj42", gpus=2, cpus=12, mem_gb=64, time_min=600, qos="high",
                        array_parallelism=16, extra={"constraint": "a100", "signal_delay_s": 180})
    params = executor_parameters(opts)
    assert params["gpus_per_node"] == 2 and params["cpus_per_task"] == 12 and params["tasks_per_node"] == 1
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "proj42"
    assert params["slurm_signal_delay_s"] == 180 and opts.grace_s == 150  # the trainer's checkpoint window
    bin_dir = tmp_path / "bin"  # submitit's SLURM executor wants `srun` on PATH; nothing is submitted
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(**params)  # submitit accepts every name
    sbatch = ex._executor._make_submission_file_text("cmd", "uid")  # (submitit internal: the sbatch script)
    for flag in ("--partition=gpu", "--account=proj42", "--gpus-per-node=2", "--cpus-per-task=12", "--mem=64GB",
                 "--time=600", "--qos=high", "--constraint=a100", f"--signal={submitit.JobEnvironment.USR_SIG}@180"):
        assert f"#SBATCH {flag}" in sbatch, flag
    assert classify("RUNNING", 0) == "running" and classify("PENDING", 0) == "pending"
    assert classify("REQUEUED", 0) == "pending" and classify("CANCELLED by 123", 0) == "ended"
    assert classify("UNKNOWN", 5) == "pending" and classify("UNKNOWN", 3600) == "ended"
    assert classify("OUT_OF_MEMORY", 0) == "ended" and classify("TIMEOUT", 0) == "ended"
    if not any(Path(p, "sbatch").exists() for p in os.environ.get("PATH", "").split(os.pathsep)):
        with pytest.raises(FileNotFoundError, match="sbatch"):
            make_executor(opts, tmp_path)


def test_multi_gpu_cells_run_under_torchrun(tmp_path):
    cell = expand("ucla", encoders=["hcn"], streams=["joint"], csre=[False], root=tmp_path)[0]
    cmd = cell.command("py", nproc=4)
    assert cmd[:6] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]
    assert cmd[6:8] == ["harness", "train"] and cmd[-1] == "--resume"
    assert cell.command("py") == ["py", "-m", "harness", "train"] + cmd[8:]


# --------------------------------------------------------------------------- real jobs

@pytest.mark.slow
def test_submitit_jobs_match_the_local_launcher_and_report_failures(ucla_h5, tmp_path, one_thread):
    data = (f"DataConfig.path = '{ucla_h5}'",)
    local = expand("ucla", encoders=["hcn"], streams=["joint"], profile="ci", root=tmp_path / "local",
                   extra_params=data)
    assert run_matrix(local, echo=lambda s: None).ok
    cells = expand("ucla", encoders=["hcn"], streams=["joint"], profile="ci", root=tmp_path / "slurm",
                   extra_params=data)
    broken = Cell("ucla", "hcn", "bone", False, 1, "ci", tmp_path / "slurm", (), data + ("Recipe.batch_size = 100000",))
    lines: list[str] = []
    first = run_slurm(cells, local_opts(), wait=False, echo=lines.append)  # --no-wait: submit and return
    assert [c.name for c in first.submitted] == [c.name for c in cells]
    ids = {c.name: json.loads((c.run_dir / SLURM_RECORD).read_text())["job_id"] for c in cells}
    again = run_slurm(cells, local_opts(), wait=False, echo=lines.append)  # the same command again: no resubmission
    assert not again.submitted and len(again.running) + len(again.pending) + len(again.done) == 2
    result = run_slurm(cells + [broken], local_opts(), echo=lines.append)  # and once more, waiting this time
    assert [c.name for c in result.submitted] == [broken.name]
    assert sorted(c.name for c in result.done) == sorted(c.name for c in cells)
    [(cell, reason, log)] = result.failed  # the failure did not stop the others
    assert cell.name == broken.name and "harness train exited 2" in reason and "fewer than one batch" in reason
    assert log == broken.run_dir / "train.log" and any("FAILED" in s and str(log) in s for s in lines)
    assert any(re.search(r"\d done / \d running / 0 failed / \d pending of 3 cells", s) for s in lines)
    assert any("2 done / 0 running / 1 failed / 0 pending of 3 cells" in s for s in lines)
    for a, b in zip(local, cells):  # same numbers, same run directory, whichever launcher ran the cell
        assert numbers(a) == numbers(b)
        assert runs(b) == 1 and json.loads((b.run_dir / SLURM_RECORD).read_text())["job_id"] == ids[b.name]
        assert {p.name for p in a.run_dir.iterdir()} <= {p.name for p in b.run_dir.iterdir()}
        assert json.loads((b.run_dir / JOB_STATUS).read_text())["state"] == "done"  # (the jobs have exited)
        assert not (b.run_dir / CLAIM).exists()
    retry = run_slurm(cells + [broken], local_opts(), echo=lines.append)  # a rerun retries only the failed cell
    assert [c.name for c in retry.submitted] == [broken.name] and [c.name for c, _ in retry.retried] == [broken.name]
    assert len(json.loads((broken.run_dir / SLURM_RECORD).read_text())["previous"]) == 1
    # the verb: everything finished, nothing submitted, the summary written
    from harness.cli import main
    code = main(["matrix", "ucla", "--profile", "ci", "--encoders", "hcn", "--streams", "joint", "--root",
                 str(tmp_path / "slurm"), "--gin_param", data[0], "--launcher", "slurm", "--submitit-cluster",
                 "local", "--gpus-per-cell", "0", "--poll-s", "0.2"])
    assert code == 0 and (tmp_path / "slurm" / "ucla" / "ensembles.json").exists()
    assert all(runs(c) == 1 for c in cells)


LONG = ("Recipe.epochs = 6", "TrainConfig.dvclive = False")  # long enough to be stopped midway


def _long_cell(root: Path, h5: Path) -> Cell:
    return expand("ucla", encoders=["hcn"], streams=["joint"], csre=[False], profile="ci", root=root,
                  extra_params=(f"DataConfig.path = '{h5}'",) + LONG)[0]


def _when(path: Path, timeout: float = 120) -> None:
    t_end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < t_end, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_preempted_or_killed_cells_resume_to_the_same_numbers(ucla_h5, tmp_path, one_thread):
    ref = _long_cell(tmp_path / "ref", ucla_h5)
    assert run_cell(ref)[0] == 0
    lines: list[str] = []
    # 1. submitit's preemption signal to the job: the trainer checkpoints, the job is requeued and resumes
    pre = _long_cell(tmp_path / "preempted", ucla_h5)
    run_slurm([pre], local_opts(), wait=False, echo=lines.append)
    _when(pre.run_dir / "checkpoint.pt")
    status = json.loads((pre.run_dir / JOB_STATUS).read_text())
    os.kill(status["pid"], getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG))
    result = run_slurm([pre], local_opts(), echo=lines.append)
    assert [c.name for c in result.done] == [pre.name] and not result.submitted
    log = (pre.run_dir / "train.log").read_text()
    assert "interrupted by signal 15" in log and "cell requeued" in log and runs(pre) == 2
    assert numbers(pre) == numbers(ref)
    # 2. SIGTERM straight to the trainer (as `scancel` does): checkpoint, the job reports it, a rerun resumes
    term = _long_cell(tmp_path / "terminated", ucla_h5)
    run_slurm([term], local_opts(), wait=False, echo=lines.append)
    _when(term.run_dir / "checkpoint.pt")
    os.kill(json.loads((term.run_dir / JOB_STATUS).read_text())["child_pid"], signal.SIGTERM)
    result = run_slurm([term], local_opts(), echo=lines.append)
    [(_, reason, _)] = result.failed
    assert "stopped by a signal" in reason and "rerun resumes" in reason
    result = run_slurm([term], local_opts(), echo=lines.append)
    assert [c.name for c in result.done] == [term.name] and [c.name for c, _ in result.retried] == [term.name]
    assert runs(term) == 2 and numbers(term) == numbers(ref)
    # 3. the local launcher: SIGTERM to the matrix reaches the trainer once, it checkpoints, the matrix stops
    #    (exit 3, no summary; the rerun is the resume above)
    loc = _long_cell(tmp_path / "local", ucla_h5)
    cmd = [sys.executable, "-m", "harness", "matrix", "ucla", "--profile", "ci", "--encoders", "hcn", "--streams",
           "joint", "--csre", "off", "--seeds", "2", "--root", str(tmp_path / "local"),
           "--gin_param", f"DataConfig.path = '{ucla_h5}'"] + [a for p in LONG for a in ("--gin_param", p)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _when(loc.run_dir / "checkpoint.pt")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, out  # harness.train.INTERRUPTED
    assert "interrupted by signal 15, checkpoint written" in out and "seed2: running" not in out
    assert "interrupted by signal 15" in (loc.run_dir / "train.log").read_text() and not loc.finished()
    assert not (loc.run_dir / CLAIM).exists() and not (tmp_path / "local" / "ucla" / "ensembles.json").exists()


@pytest.mark.slow
def test_parallel_shard_workers_run_every_cell_exactly_once(ucla_h5, tmp_path, one_thread):
    def workers(root: Path, streams: str, *shards: str) -> list[str]:
        base = [sys.executable, "-m", "harness", "matrix", "ucla", "--profile", "ci", "--encoders", "hcn",
                "--streams", streams, "--root", str(root), "--gin_param", f"DataConfig.path = '{ucla_h5}'",
                "--gin_param", "TrainConfig.dvclive = False"]
        procs = [subprocess.Popen(base + ["--shard", s], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for s in shards]
        try:
            outs = [p.communicate(timeout=300)[0] for p in procs]
        finally:  # a timed-out worker must not outlive the test (it would load the machine for the rest)
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        assert [p.returncode for p in procs] == [0] * len(procs), outs
        return outs

    cells = expand("ucla", encoders=["hcn"], streams=["joint", "bone"], profile="ci", root=tmp_path / "a",
                   extra_params=(f"DataConfig.path = '{ucla_h5}'", "TrainConfig.dvclive = False"))
    one, two = workers(tmp_path / "a", "joint,bone", "1/2", "2/2")  # disjoint halves, at the same time
    assert [c.name for c in cells if f"{c.name}: done" in one] == [cells[0].name, cells[2].name]
    assert [c.name for c in cells if f"{c.name}: done" in two] == [cells[1].name, cells[3].name]
    workers(tmp_path / "a", "joint,bone", "1/1", "1/1")  # then both on everything: finished, nothing runs again
    assert [runs(c) for c in cells] == [1, 1, 1, 1]
    # both on a larger matrix over the same directory: the finished cells are skipped, the claims split the new
    outs = workers(tmp_path / "a", "joint,bone,joint_motion", "1/1", "1/1")
    fresh = expand("ucla", encoders=["hcn"], streams=["joint_motion"], profile="ci", root=tmp_path / "a")
    assert [runs(c) for c in cells + fresh] == [1] * 6 and all(c.finished() for c in fresh)
    for c in cells:
        assert all(f"{c.name}: finished, skipped" in o for o in outs)
    for c in fresh:
        ran = [f"{c.name}: done" in o for o in outs]
        assert sum(ran) == 1
        other = outs[ran.index(False)]
        assert f"{c.name}: running elsewhere" in other or f"{c.name}: finished, skipped" in other
        assert not (c.run_dir / CLAIM).exists()  # released
        log = (c.run_dir / CLAIM_LOG).read_text()  # (a loser may claim a cell just after it finished, then skip it)
        assert log.count("claimed by") == log.count("released by") >= 1
