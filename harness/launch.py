"""Where a matrix's cells run: this machine, plain machines sharing one results directory, or SLURM.

``python -m harness matrix <benchmark> [--launcher local|slurm] [--shard k/n] ...``

:mod:`harness.matrix` expands the cells; this module only decides where each one runs. A cell's run
directory (``config.gin``, ``metrics.json``, scores, ``checkpoint.pt``, ``train.log``) is the same
whichever launcher ran it: every launcher runs the same ``python -m harness train ... --resume``
child process (or ``torchrun --nproc_per_node=K -m harness train ...`` for a multi-GPU cell) with
its output appended to ``train.log`` after a ``$ <command>`` line. Bookkeeping files beside it:

* ``claim.lock`` while a cell runs: who runs it (``host``, ``pid``, the process start time, the
  SLURM job id, a token), created with ``O_CREAT | O_EXCL`` so that one process wins; its mtime is a
  heartbeat (touched every minute). ``claims.log`` keeps one line per claim, take-over and release.
* ``slurm_job.json`` (SLURM launcher): the cell's job id, submitit folder, submission time and the
  earlier attempts; ``job_status.json``: what the job itself did (running, done, failed with the
  reason, requeued, busy).

Claims (:class:`Claim`). A claim held by a live owner is respected: the cell is reported as
"running elsewhere" and skipped. On the same host an owner is alive while its pid exists with the
recorded start time (pid reuse is caught); a dead owner's claim is stale and taken over (logged).
Owners on other hosts cannot be checked: their claim counts as live while its heartbeat is younger
than ``--stale-after`` seconds (default 900, i.e. 15 missed heartbeats; 0 = never take over) and
is taken over after that. A job requeued by SLURM takes over the claim of its own job id at once.
A take-over goes through a second ``O_EXCL`` file, so two workers never both take one claim.

Shards (:func:`shard_cells`): cell ``i`` (0-based, in :func:`harness.matrix.expand` order) belongs
to shard ``i % n + 1``. The claim makes the split a matter of balance, not correctness: workers
with overlapping shards (e.g. all ``--shard 1/1``) still run each cell once.

SLURM (:func:`run_slurm`), through submitit: each unfinished cell without a live job is submitted as
one task of a job array (:meth:`submitit.Executor.batch`); the job (:class:`CellJob`, a
checkpointable callable) claims the cell and runs the trainer as a child process that ignores
submitit's preemption signal (SLURM signals every process of the step) and dies with the job
(``PR_SET_PDEATHSIG``). On that signal (preemption, or ``signal_delay_s`` before the time limit),
submitit calls :meth:`CellJob.__submitit_checkpoint__`: it forwards SIGTERM to the trainer, whose
handler writes the checkpoint at the next batch and exits 3, and hands submitit the same cell to
requeue; the requeued job runs ``harness train ... --resume`` and so ends with the same numbers. If
the trainer does not stop within the grace time it is killed, and the resume starts from the last
epoch checkpoint (still exact). Re-running the same command submits nothing twice: a cell whose
recorded job is still pending or running is only watched, a finished one is collected; an
unfinished cell whose job ended is reported with the reason and resubmitted (a retry).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.constants import INTERRUPTED
from harness.matrix import REPO, Cell, MatrixResult
from harness.signals import SignalCatcher

__all__ = ["CLAIM", "Claim", "CellJob", "SlurmOptions", "cell_state", "executor_parameters", "parse_shard",
           "pid_alive", "run_slurm", "shard_cells", "start_child"]

CLAIM = "claim.lock"
CLAIM_LOG = "claims.log"
SLURM_RECORD = "slurm_job.json"
JOB_STATUS = "job_status.json"
HEARTBEAT_S = 60.0


# --------------------------------------------------------------------------- shards

def parse_shard(text: str) -> tuple[int, int]:
    """``'k/n'`` -> ``(k, n)`` with ``1 <= k <= n``."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like k/n (e.g. 2/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard k/n needs 1 <= k <= n, got {text!r}")
    return k, n


def shard_cells(cells: Sequence[Cell], k: int, n: int) -> list[Cell]:
    """The cells of shard ``k`` of ``n``: cell ``i`` of the expansion order belongs to shard ``i % n + 1``."""
    return [c for i, c in enumerate(cells) if i % n == k - 1]


# --------------------------------------------------------------------------- processes

def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on; the name may hold spaces


def proc_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot; None where /proc is absent)."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` of this host is alive (zombies are not), and is the one started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust kill(0)
    if stat[0] in ("Z", "X"):
        return False
    return start is None or int(stat[19]) == start


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_json(path: Path, obj: Any) -> None:
    from harness.io import write_json  # atomic
    write_json(path, obj)


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


_PRCTL: Any = False


def _prctl():
    global _PRCTL
    if _PRCTL is False:
        try:
            import ctypes
            _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
        except (OSError, AttributeError):
            _PRCTL = None
    return _PRCTL


def start_child(cmd: Sequence[str], log: Path, *, env: dict | None = None,
                ignore: Sequence[int] = ()) -> tuple[subprocess.Popen, Any]:
    """Start ``cmd`` in its own session with its output appended to ``log`` after a ``$ cmd`` line.

    The child ignores the signals in ``ignore`` (inherited through exec) and gets SIGTERM when its
    parent dies (Linux ``PR_SET_PDEATHSIG``), so a killed launcher never leaves a trainer behind.
    Callers must not run other threads (``preexec_fn``). Returns the process and the open log file.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "a")
    f.write(f"\n$ {' '.join(cmd)}\n")
    f.flush()
    prctl = _prctl()
    ignored = tuple(ignore)

    def setup() -> None:  # runs in the child between fork and exec
        for s in ignored:
            signal.signal(s, signal.SIG_IGN)
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    try:
        proc = subprocess.Popen(list(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True, preexec_fn=setup)
    except BaseException:
        f.close()
        raise
    return proc, f


def exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (Popen still gets its exit code)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exited(pid: int, timeout: float) -> bool:
    t_end = time.monotonic() + timeout
    while not exited(pid):
        if time.monotonic() >= t_end:
            return False
        time.sleep(0.05)
    return True


class forward_signals(SignalCatcher):
    """While active (main thread), SIGTERM and SIGINT are passed on to the running child once each
    (the trainer writes its checkpoint and exits 3) and recorded in ``signum``; the caller then
    stops starting new cells."""

    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen | None = None

    def handle(self, signum: int) -> None:
        self.signum = signum
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                os.kill(proc.pid, signum)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- claims

def _owner(**extra: Any) -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": proc_start(pid), "since": _now_iso(),
            "token": uuid.uuid4().hex, **{k: v for k, v in extra.items() if v is not None}}


def describe_owner(rec: dict | None, since: bool = True) -> str:
    if not rec:
        return "an unreadable claim"
    out = f"{rec.get('host', '?')} pid {rec.get('pid', '?')}"
    if rec.get("job_id"):
        out += f" (job {rec['job_id']})"
    if rec.get("shard"):
        out += f" (shard {rec['shard']})"
    return out + (f" since {rec['since']}" if since and rec.get("since") else "")


class Claim:
    """The atomic claim of one cell (or of any ``path``): see the module docstring for the rules."""

    def __init__(self, run_dir: Path | None = None, *, path: Path | None = None, stale_after: float = 900.0,
                 echo: Callable[[str], Any] = print, **owner: Any) -> None:
        if path is None:
            assert run_dir is not None
            path = Path(run_dir) / CLAIM
        self.path = Path(path)
        self.log_path = self.path.parent / CLAIM_LOG
        self.stale_after = stale_after
        self.echo = echo
        self.owner = _owner(**owner)
        self.held = False
        self._beat = 0.0

    # -- reading -------------------------------------------------------------------------------

    def read(self) -> tuple[dict | None, float | None]:
        """The current claim record and its mtime (heartbeat); (None, None) when unclaimed."""
        try:
            mtime = self.path.stat().st_mtime
            text = self.path.read_text()
        except FileNotFoundError:
            return None, None
        try:
            rec = json.loads(text)
        except ValueError:
            rec = {}
        return (rec if isinstance(rec, dict) else {}), mtime

    def judge(self, rec: dict, mtime: float) -> tuple[bool, str]:
        """``(live, why)`` for an existing claim record."""
        age = time.time() - mtime
        if not rec:  # being written (create, then write) or corrupt
            return (age < 60, f"unreadable claim, {age:.0f} s old")
        job = self.owner.get("job_id")
        if job and rec.get("job_id") == job:
            return False, f"left by an earlier attempt of job {job}"
        if rec.get("host") == self.owner["host"]:
            if pid_alive(int(rec.get("pid", -1)), rec.get("pid_start")):
                return True, "owner alive"
            return False, f"pid {rec.get('pid')} is gone"
        if self.stale_after > 0 and age > self.stale_after:
            return False, f"other host, no heartbeat for {age:.0f} s (> --stale-after {self.stale_after:.0f} s)"
        return True, f"other host, heartbeat {age:.0f} s ago"

    def holder(self) -> str | None:
        """Who holds a live claim (None when free or stale)."""
        rec, mtime = self.read()
        if rec is None:
            return None
        live, _ = self.judge(rec, mtime)
        return describe_owner(rec) if live else None

    # -- writing -------------------------------------------------------------------------------

    def _log(self, event: str) -> None:
        line = f"{_now_iso()} {event} by {describe_owner(self.owner, since=False)}\n"
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:  # pragma: no cover - the record is informational
            pass

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.owner, f)
            f.flush()
            os.fsync(f.fileno())
        self.held, self._beat = True, time.monotonic()
        return True

    def acquire(self) -> tuple[bool, str | None]:
        """``(True, None)`` when the claim is ours now, else ``(False, who holds it)``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self._log("claimed")
                return True, None
            rec, mtime = self.read()
            if rec is None:  # released meanwhile
                continue
            live, why = self.judge(rec, mtime)
            if live:
                return False, describe_owner(rec)
            if self._take_over(rec, why):
                return True, None
        rec, _ = self.read()
        return False, describe_owner(rec) if rec is not None else "another worker"

    def _take_over(self, stale: dict, why: str) -> bool:
        lock = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:  # a take-over takes milliseconds: an old lock is a crashed one
                if time.time() - lock.stat().st_mtime > 60:
                    lock.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            rec, _ = self.read()
            if rec is not None and rec.get("token") != stale.get("token"):
                return False  # changed meanwhile: judge again
            self.path.unlink(missing_ok=True)
            if not self._create():
                return False
        finally:
            lock.unlink(missing_ok=True)
        msg = f"took over the stale claim of {describe_owner(stale)}: {why}"
        self._log(msg)
        self.echo(f"{self.path.parent}: {msg}")
        return True

    def heartbeat(self, every: float = HEARTBEAT_S) -> None:
        if self.held and time.monotonic() - self._beat >= every:
            self._beat = time.monotonic()
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Remove the claim if it is still ours (idempotent)."""
        if not self.held:
            return
        self.held = False
        rec, _ = self.read()
        if rec is not None and rec.get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)
            self._log("released")

    def clear_if_job(self, job_id: str) -> bool:
        """Remove a claim left by ``job_id`` (a job the scheduler says has ended)."""
        rec, _ = self.read()
        if rec and rec.get("job_id") == job_id:
            self.path.unlink(missing_ok=True)
            self._log(f"cleared the claim of ended job {job_id}")
            return True
        return False


# --------------------------------------------------------------------------- the SLURM job

def stopped_at_checkpoint(code: int, log: Path) -> bool:
    """Whether the last trainer run in ``log`` was stopped by a signal after writing its checkpoint
    (exit 3; under torchrun, which exits 1 when signalled, the trainer's own message says so)."""
    if code == INTERRUPTED:
        return True
    if code == 0:
        return False
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "checkpoint written, continue with --resume" in text[text.rfind("\n$ "):]


class CellFailed(RuntimeError):
    """The cell's trainer failed (or was stopped) inside its job; the message says why and where the log is."""


def _tail(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").strip().splitlines() if not ln.startswith("# job")]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class CellJob:
    """One cell as a submitit job: claim it, run its trainer as a child process, release it.

    Checkpointable (submitit calls :meth:`__submitit_checkpoint__` on its preemption / time-limit
    signal): the trainer gets SIGTERM, writes its checkpoint and exits; the same cell is requeued
    and its next run resumes. Picklable (only the specification travels).
    """

    def __init__(self, cell: Cell, *, python: str = sys.executable, nproc: int = 1, grace_s: float = 60.0,
                 stale_after: float = 900.0, attempt: int = 1) -> None:
        self.cell, self.python, self.nproc = cell, python, nproc
        self.grace_s, self.stale_after, self.attempt = grace_s, stale_after, attempt
        self._runtime()

    def _runtime(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._claim: Claim | None = None
        self._job_id: str | None = None
        self._requeued = False

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._runtime()

    def spec(self) -> dict:
        return {"python": self.python, "nproc": self.nproc, "grace_s": self.grace_s, "stale_after": self.stale_after}

    @property
    def log(self) -> Path:
        return self.cell.run_dir / "train.log"

    def _status(self, state: str, **extra: Any) -> None:
        _write_json(self.cell.run_dir / JOB_STATUS, {
            "cell": self.cell.name, "job_id": self._job_id, "attempt": self.attempt, "state": state,
            "host": socket.gethostname(), "pid": os.getpid(), "updated": _now_iso(), **extra})

    def _note(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"# job {self._job_id} (attempt {self.attempt}) on {socket.gethostname()}: {text}\n")

    def __call__(self) -> dict:
        import submitit
        env = submitit.JobEnvironment()
        self._job_id = str(env.job_id)
        usr = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        cell = self.cell
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        claim = Claim(cell.run_dir, stale_after=self.stale_after, launcher="slurm", job_id=self._job_id)
        ok, holder = claim.acquire()
        if not ok:
            self._status("busy", reason=f"claimed by {holder} (running elsewhere)")
            raise CellFailed(f"{cell.name}: claimed by {holder} (running elsewhere); not run")
        self._claim = claim
        try:
            if cell.finished():
                self._status("done", reason="already finished")
                return {"cell": cell.name, "state": "done", "job_id": self._job_id}
            self._note("started")
            proc, f = start_child(cell.command(self.python, nproc=self.nproc), self.log, ignore=(usr,))
            self._proc = proc
            try:
                self._status("running", child_pid=proc.pid, log=str(self.log))
                while (code := proc.poll()) is None:
                    claim.heartbeat()
                    time.sleep(0.25)
            finally:
                f.close()
            if code == 0 and cell.finished():
                self._status("done", exit=0)
                return {"cell": cell.name, "state": "done", "job_id": self._job_id}
            tail = _tail(self.log)
            if stopped_at_checkpoint(code, self.log):
                reason = "trainer stopped by a signal (checkpoint written; a rerun resumes it)"
                state = "interrupted"
            else:
                reason, state = f"harness train exited {code}", "failed"
            self._status(state, exit=code, reason=reason + (f": {tail}" if tail else ""), log=str(self.log))
            raise CellFailed(f"{cell.name}: {reason}; log {self.log}" + (f": {tail}" if tail else ""))
        finally:
            if not self._requeued:
                claim.release()

    def __submitit_checkpoint__(self, *args: Any, **kwargs: Any):
        """Preemption or time limit: stop the trainer at a checkpoint, then requeue the same cell."""
        from submitit.helpers import DelayedSubmission
        self._requeued = True
        proc = self._proc
        if proc is not None and not exited(proc.pid):
            os.kill(proc.pid, signal.SIGTERM)  # the trainer (or torchrun, which passes it on)
            if not wait_exited(proc.pid, self.grace_s):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # its session: torchrun's workers too
                except ProcessLookupError:
                    pass
                wait_exited(proc.pid, 30)
                self._note(f"trainer did not stop within {self.grace_s:.0f} s; killed (resumes from the "
                           f"last epoch checkpoint)")
        if self._job_id is not None and self.log.parent.exists():
            self._note("preemption / time-limit signal: checkpoint written, cell requeued")
            self._status("requeued", next_attempt=self.attempt + 1)
        if self._claim is not None:
            self._claim.release()
        return DelayedSubmission(CellJob(self.cell, attempt=self.attempt + 1, **self.spec()))

    checkpoint = __submitit_checkpoint__  # the name older submitit versions look up


# --------------------------------------------------------------------------- submission

@dataclass
class SlurmOptions:
    """What each cell's job asks SLURM for (all from the command line; no gin)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus: int = 1  # per cell; > 1: torchrun --nproc_per_node=gpus inside the job
    cpus: int = 8
    mem_gb: float | None = None
    time_min: int = 24 * 60
    max_timeouts: int = 3  # requeues after hitting the time limit (preemptions are not counted)
    array_parallelism: int | None = None
    signal_delay_s: int = 120
    extra: dict = field(default_factory=dict)  # any other submitit slurm_<key> parameter
    cluster: str = "slurm"  # 'local': the same jobs as subprocesses here (submitit's LocalExecutor)
    folder: Path | None = None  # submitit's folder (pickles, job logs); default <root>/<benchmark>/submitit
    poll_s: float = 30.0
    stale_after: float = 900.0

    def __post_init__(self) -> None:
        self.extra = dict(self.extra)
        if "signal_delay_s" in self.extra:  # also sets how long the job waits for the checkpoint
            self.signal_delay_s = int(self.extra.pop("signal_delay_s"))

    @property
    def grace_s(self) -> float:
        """How long the job waits for the trainer's checkpoint after the signal (the rest of the delay is margin)."""
        return max(10.0, self.signal_delay_s - 30.0) if self.cluster == "slurm" else 20.0


def executor_parameters(opts: SlurmOptions, name: str = "csre-bench") -> dict:
    """``executor.update_parameters(**...)`` for the cells' jobs."""
    params: dict[str, Any] = {"name": name, "timeout_min": int(opts.time_min), "nodes": 1, "tasks_per_node": 1,
                              "cpus_per_task": int(opts.cpus)}
    if opts.gpus > 0:  # (0: a CPU job; no GPU request at all)
        params["gpus_per_node"] = int(opts.gpus)
    if opts.mem_gb is not None:
        params["mem_gb"] = float(opts.mem_gb)
    if opts.cluster == "slurm":
        for key, value in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos),
                           ("array_parallelism", opts.array_parallelism)):
            if value is not None:
                params[f"slurm_{key}"] = value
        params["slurm_signal_delay_s"] = int(opts.signal_delay_s)
        params.update({f"slurm_{k}": v for k, v in opts.extra.items()})
    return params


def make_executor(opts: SlurmOptions, folder: Path, name: str = "csre-bench"):
    import shutil

    import submitit
    if opts.cluster == "slurm" and shutil.which("sbatch") is None:
        raise FileNotFoundError("--launcher slurm: no `sbatch` on PATH (run this on a SLURM login node; "
                                "--submitit-cluster local runs the same jobs as local subprocesses)")
    kwargs = {"slurm_max_num_timeout": int(opts.max_timeouts)} if opts.cluster == "slurm" else {}
    ex = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster=opts.cluster, **kwargs)
    ex.update_parameters(**executor_parameters(opts, name))
    return ex


def _job(record: dict):
    import submitit
    cls = submitit.SlurmJob if record.get("cluster") == "slurm" else submitit.LocalJob
    return cls(folder=record["folder"], job_id=str(record["job_id"]))


RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD", "SUSPENDED",
           "STOPPED", "PREEMPTED", "READY"}
UNKNOWN_GRACE_S = 600.0  # sacct may not know a job for a while after sbatch


def classify(state: str, age_s: float) -> str:
    """A scheduler state -> 'running' | 'pending' | 'ended'."""
    word = (state or "UNKNOWN").split()[0].upper()
    if word in RUNNING:
        return "running"
    if word in PENDING:
        return "pending"
    if word == "UNKNOWN":
        return "pending" if age_s < UNKNOWN_GRACE_S else "ended"
    return "ended"


def job_states(records: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """For each cell name -> ``(kind, scheduler state)`` of its recorded job (one sacct call for all)."""
    out: dict[str, tuple[str, str]] = {}
    slurm = {name: r for name, r in records.items() if r.get("cluster") == "slurm"}
    if slurm:
        import submitit
        jobs = {name: _job(r) for name, r in slurm.items()}
        submitit.SlurmJob.watcher.update()
        for name, job in jobs.items():
            state = submitit.SlurmJob.watcher.get_state(job.job_id, mode="cache")
            out[name] = (classify(state, time.time() - slurm[name].get("submitted_at", 0)), state)
    for name, r in records.items():
        if name in out:
            continue
        held = _HELD.get(str(r["job_id"]))
        if held is not None:  # submitted by this process: ask submitit (which also reaps it)
            state = held.state
            out[name] = ("running", state) if state == "RUNNING" else ("ended", state)
            if state != "RUNNING":
                _HELD.pop(str(r["job_id"]), None)
            continue
        # submitit's local jobs from an earlier process: the job id is the controller's pid on the submitting host
        alive = r.get("host") == socket.gethostname() and pid_alive(int(r["job_id"]), r.get("pid_start"))
        out[name] = ("running", "RUNNING") if alive else ("ended", "FINISHED")
    return out


#: submitit's local jobs submitted by this process, by job id (kept so that they are polled and reaped)
_HELD: dict[str, Any] = {}


def _reap(records: dict[str, dict], timeout: float = 30.0) -> None:
    """Wait (a little) for this process's local jobs to exit after their cells finished."""
    t_end = time.monotonic() + timeout
    for r in records.values():
        job = _HELD.get(str(r.get("job_id")))
        while job is not None and job.state == "RUNNING" and time.monotonic() < t_end:
            time.sleep(0.05)
        if job is not None and job.state != "RUNNING":
            _HELD.pop(str(r["job_id"]), None)


def failure_reason(cell: Cell, record: dict, state: str) -> str:
    """Why an ended job left its cell unfinished: the job's own account, else the scheduler's state."""
    status = _read_json(cell.run_dir / JOB_STATUS)
    if status and status.get("job_id") == record.get("job_id") and status.get("reason") and \
            status.get("state") in ("failed", "interrupted", "busy"):
        return f"job {record['job_id']}: {status['reason']}"
    try:
        err = _job(record).paths.stderr
    except Exception:  # pragma: no cover - submitit missing
        err = Path(record.get("folder", "?"))
    return (f"job {record['job_id']} ended ({state}) without finishing the cell (killed, out of memory, time limit "
            f"or node failure?); job log {err}")


def read_record(cell: Cell) -> dict | None:
    return _read_json(cell.run_dir / SLURM_RECORD)


def cell_state(cell: Cell, stale_after: float = 900.0) -> str:
    """One word and details for ``--dry-run``: done, pending, running elsewhere, job state, failed."""
    if cell.finished():
        return "done"
    holder = Claim(cell.run_dir, stale_after=stale_after).holder() if (cell.run_dir / CLAIM).exists() else None
    record = read_record(cell)
    if record is not None:
        try:
            kind, state = job_states({cell.name: record})[cell.name]
        except Exception as e:  # pragma: no cover - no sacct here
            return f"job {record.get('job_id')} (state unknown: {e})"
        if kind != "ended":
            return f"{kind:7s} (job {record['job_id']}, {state})"
        if holder is None:
            return f"failed  ({failure_reason(cell, record, state)})"
    if holder is not None:
        return f"running elsewhere ({holder})"
    return "pending"


@dataclass
class LaunchResult(MatrixResult):
    running: list[Cell] = field(default_factory=list)
    pending: list[Cell] = field(default_factory=list)
    submitted: list[Cell] = field(default_factory=list)
    retried: list[tuple[Cell, str]] = field(default_factory=list)  # unfinished cells whose earlier job had ended
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return not (self.failed or self.running or self.pending or self.elsewhere)


def submit(cells: Sequence[Cell], opts: SlurmOptions, folder: Path, *, python: str = sys.executable,
           previous: dict[str, dict] | None = None) -> dict[str, dict]:
    """Submit ``cells`` as one job array; writes and returns each cell's ``slurm_job.json`` record."""
    if not cells:
        return {}
    ex = make_executor(opts, folder, name=f"csre-{cells[0].benchmark}")
    nproc = max(1, opts.gpus)
    with ex.batch():
        jobs = [ex.submit(CellJob(c, python=python, nproc=nproc, grace_s=opts.grace_s, stale_after=opts.stale_after))
                for c in cells]
    records = {}
    for cell, job in zip(cells, jobs):
        before = (previous or {}).get(cell.name)
        history = [] if not before else \
            list(before.get("previous", [])) + [{k: before.get(k) for k in ("job_id", "submitted_at", "reason")}]
        if opts.cluster != "slurm":
            _HELD[str(job.job_id)] = job
        rec = {"cell": cell.name, "cluster": opts.cluster, "job_id": str(job.job_id),
               "folder": str(Path(folder) / "%j"), "submitted_at": time.time(), "submitted": _now_iso(),
               "submitted_from": socket.gethostname(), "gpus": opts.gpus,
               "command": cell.command(python, nproc=nproc), "previous": history}
        if opts.cluster != "slurm":
            rec.update(host=socket.gethostname(), pid_start=proc_start(int(job.job_id)))
        _write_json(cell.run_dir / SLURM_RECORD, rec)
        records[cell.name] = rec
    return records


def run_slurm(cells: Sequence[Cell], opts: SlurmOptions, *, wait: bool = True, python: str = sys.executable,
              echo: Callable[[str], Any] = print) -> LaunchResult:
    """Submit what needs submitting, then (``wait``) watch until no cell has a live job; see the module docstring."""
    result = LaunchResult()
    if not cells:
        return result
    folder = Path(opts.folder) if opts.folder else cells[0].root / cells[0].benchmark / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(cells)
    lock = Claim(path=folder / "submit.lock", stale_after=opts.stale_after, echo=echo, launcher="submitter")
    ok, holder = lock.acquire()
    if not ok:
        raise FileExistsError(f"{folder}: another submitter ({holder}) is submitting this matrix; wait for it")
    try:
        records = {c.name: r for c in cells if not c.finished() and (r := read_record(c)) is not None}
        states = job_states(records) if records else {}
        todo: list[Cell] = []
        retry: dict[str, dict] = {}
        for i, cell in enumerate(cells, 1):
            if cell.finished():
                result.skipped.append(cell)
                continue
            rec = records.get(cell.name)
            kind, state = states.get(cell.name, ("none", ""))
            if rec is not None and kind != "ended":
                echo(f"[{i}/{n}] {cell.name}: {kind} (job {rec['job_id']}, {state}), not resubmitted")
                continue
            holder = Claim(cell.run_dir, stale_after=opts.stale_after).holder() if (cell.run_dir / CLAIM).exists() \
                else None
            if rec is not None:
                reason = failure_reason(cell, rec, state)
                result.retried.append((cell, reason))
                echo(f"[{i}/{n}] {cell.name}: FAILED earlier ({reason}; log {cell.run_dir / 'train.log'}); retrying")
                if Claim(cell.run_dir).clear_if_job(str(rec["job_id"])):
                    holder = None
                retry[cell.name] = {**rec, "reason": reason}
            if holder is not None:
                result.elsewhere.append((cell, holder))
                echo(f"[{i}/{n}] {cell.name}: running elsewhere ({holder}), not submitted")
                continue
            todo.append(cell)
        if todo:
            new = submit(todo, opts, folder, python=python, previous=retry)
            records.update(new)
            for cell in todo:
                echo(f"submitted {cell.name}: job {new[cell.name]['job_id']} (log {cell.run_dir / 'train.log'})")
            result.submitted = list(todo)
    finally:
        lock.release()
    watch = {c.name: c for c in cells if not c.finished() and c.name in records
             and c not in [e[0] for e in result.elsewhere]}
    if not wait:
        _tally(result, watch, records, job_states({k: records[k] for k in watch}) if watch else {})
        echo(_progress(result, n))
        return result
    return _watch(result, cells, watch, records, opts, echo)


def _tally(result: LaunchResult, watch: dict[str, Cell], records: dict, states: dict) -> None:
    for name, cell in watch.items():
        kind = states.get(name, ("pending", ""))[0]
        if cell.finished():
            result.done.append(cell)
        elif kind == "running":
            result.running.append(cell)
        elif kind == "pending":
            result.pending.append(cell)


def _progress(result: LaunchResult, n: int) -> str:
    done = len(result.done) + len(result.skipped)
    line = (f"{done} done / {len(result.running)} running / {len(result.failed)} failed / "
            f"{len(result.pending)} pending of {n} cells")
    return line + (f" / {len(result.elsewhere)} running elsewhere" if result.elsewhere else "")


def _watch(result: LaunchResult, cells: Sequence[Cell], watch: dict[str, Cell], records: dict,
           opts: SlurmOptions, echo: Callable[[str], Any]) -> LaunchResult:
    n = len(cells)
    seen: dict[str, str] = {}
    last = ""
    active = dict(watch)
    t0 = time.monotonic()
    try:
        while True:
            states = job_states({k: records[k] for k in active}) if active else {}
            result.running, result.pending = [], []
            for name, cell in list(active.items()):
                kind, state = states[name]
                status = _read_json(cell.run_dir / JOB_STATUS) or {}
                ours = status.get("job_id") == records[name]["job_id"]
                if cell.finished() or (kind == "ended" and ours and status.get("state") == "done"):
                    result.done.append(cell)
                    del active[name]
                    echo(f"{cell.name}: done (job {records[name]['job_id']})")
                elif kind == "ended":
                    reason = failure_reason(cell, records[name], state)
                    result.failed.append((cell, reason, cell.run_dir / "train.log"))
                    del active[name]
                    echo(f"{cell.name}: FAILED ({reason}; log {cell.run_dir / 'train.log'})")
                else:
                    (result.running if kind == "running" else result.pending).append(cell)
                    if seen.get(name) != kind:
                        seen[name] = kind
                        echo(f"{cell.name}: {kind} (job {records[name]['job_id']}, {state})")
            line = _progress(result, n)
            if line != last:
                echo(f"[{time.monotonic() - t0:.0f} s] {line}")
                last = line
            if not active:
                _reap({k: records[k] for k in watch})
                return result
            time.sleep(opts.poll_s)
    except KeyboardInterrupt:
        echo("stopped watching; the jobs go on. Run the same command again to collect them.")
        result.interrupted = True
        return result
