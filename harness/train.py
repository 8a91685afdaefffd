"""The trainer: one cell (encoder x benchmark x stream x CSRE on/off x seed) from gin to a run directory.

``python -m harness train --gin_file ... [--gin_param ...] [--run_dir DIR] [--resume]``.

What a run does, in order:

1. parse the gin files strictly (:func:`harness.configurables.parse_gin`), in the main process:
   every value is resolved there and handed to the feeders as plain objects (spawned DataLoader
   workers do not inherit gin);
2. seed python, numpy and torch with the run seed, build the encoder (its initial weights
   depend on the seed), the training / validation / test feeders (the validation split is carved
   from the training part, seeded and stratified: :func:`harness.batches.stratified_holdout`),
   CSRE (bank size and labels from the training feeder, its draw generator seeded with the run
   seed), the optimiser and the loss; then write ``config.gin``, ``operative_config.gin`` and
   ``run.json``;
3. per epoch: the recipe's learning rate, the epoch's batches (a permutation of ``(seed,
   epoch)``), forward under the chosen precision, ``CE + CSRE terms``, backward, step; then logits
   on the validation and test splits, metrics, score files, the checkpoint;
4. at the end: ``metrics.json`` with the **last epoch as the headline**, best epochs beside it
   (selected on validation, and on test as the official code does, labelled), and a summary.

Exactness. Nothing random depends on anything but the seed and the checkpointed state: the
batch order and the DataLoader's worker seeds come from :func:`harness.batches.epoch_generator`
(never the global RNG), augmentations from the feeder's per-sample generators, dropout and
InfoGCN's noise from the global torch RNG (checkpointed), CSRE's random negatives from its own
generator (in its state_dict). So on CPU a run resumed from any checkpoint (after a ``kill -9``,
or the mid-epoch checkpoint written on SIGTERM/SIGINT) ends with bit-identical metrics,
checkpoint and scores to an uninterrupted run, and two runs with one seed are bit-identical.
Wall-clock and memory figures are the only exceptions; they live under ``cost``.

Departures from the official trainers (each is an option or documented):

* precision is fp32 by default (the CSRE/Hyperformer code always runs AMP): ``precision='fp16'``
  (autocast + GradScaler) or ``'bf16'`` (autocast); ``'recipe'`` (the ``paper`` profile) is the
  official trainer's: fp16 + GradScaler where ``Recipe.amp`` says it trained under AMP, evaluation
  in fp32, fp32 for the others, and fp32 on a CPU (recorded as such, with the reason);
  ``'fp64'`` runs parameters, inputs and losses in float64 (the CI regression cells: float32
  results move with the CPU's kernels);
* the validation split (``val_fraction``, default 5 %) is held out of training; ``0`` trains on
  the whole training part as the official code does (then there is no validation selection);
* the headline is the last epoch; the official scripts report the best test epoch;
* a NaN/inf loss stops the run (the official code trains on);
* an encoder's own loss term (:meth:`models.encoder.Encoder.regulariser`) is added to the loss and
  logged as ``regulariser``: InfoGCN's MMD and latent-mean terms (with its label-smoothed CE,
  ``gin/recipes/infogcn.gin``, this is the official objective).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gin
import numpy as np
import torch
import torch.nn.functional as F

from harness import checkpoint as ckpt_lib
from harness.constants import PROFILES
from harness.batches import EpochBatches, epoch_generator, per_class_subset, stratified_holdout
from harness.configurables import REPO, CrossEntropyLoss, DataConfig, Recipe, build_encoder, build_head, parse_gin
from harness.distributed import World, all_reduce_sum, barrier, setup, teardown
from harness.evaluate import PRECISIONS, autocast, loader, parameter_dtype, predict, resolve_device
from harness.io import Scores, atomic_path, save_scores, score_file, write_json, write_text
from harness.signals import SignalCatcher
from models.encoder import at_least_float32

__all__ = ["NonFiniteLoss", "TrainConfig", "Trainer", "resolve_precision", "train"]



#: running sums of an epoch (the checkpoint's ``accum``): loss terms times samples, correct, samples
ACCUMULATED = ("loss", "ce", "contrastive", "regulariser", "correct", "count")


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf; the last good checkpoint is kept."""


@gin.configurable(module="harness")
@dataclass(frozen=True)
class TrainConfig:
    """Run-level settings of one training cell (the recipe and data live in ``Recipe``/``DataConfig``).

    ``benchmark`` and ``encoder`` default to the gin macros ``%DATASET`` and ``%ENCODER`` of the
    dataset and encoder files. ``run_dir`` defaults to
    ``runs/<benchmark>/<encoder>/<stream>/<arm>/seed<k>`` (design.md section 3), where the arm is
    ``base``, ``csre`` or the head's name, with ``-<tag>`` for a variant (``csre-sc``).
    ``csre = True`` is the same as ``head = 'csre'``; ``head`` selects a contrastive head
    (``'csre'``, ``'skeletongcl'``, ``'frhead'``: :data:`harness.configurables.HEADS`).
    ``tag`` labels a variant of the arm (the matrix sets it: Table 5 and 6 cells).
    ``profile`` labels every number (only ``paper`` is compared with the paper's tables).
    ``train_per_class`` / ``test_per_class``: the first k samples of each class (tiny real CI
    subsets). ``max_steps``: stop each epoch after this many batches (CI). ``deterministic``:
    ``torch.use_deterministic_algorithms`` and cuDNN's deterministic mode.
    """

    seed: int = 1
    csre: bool = False
    head: str | None = None
    tag: str = ""
    benchmark: str | None = None
    encoder: str | None = None
    run_dir: str | None = None
    profile: str = "paper"
    precision: str = "fp32"  # 'fp32' | 'bf16' | 'fp16' | 'fp64' | 'recipe' (the official trainer's, on CUDA)
    deterministic: bool = False
    device: str = "auto"
    num_workers: int = 0
    val_fraction: float = 0.05
    train_per_class: int | None = None
    test_per_class: int | None = None
    max_steps: int | None = None
    progress: bool = True
    dvclive: bool = True

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"TrainConfig.profile must be one of {PROFILES}, got {self.profile!r}")
        if self.precision not in (*PRECISIONS, "recipe"):
            raise ValueError(f"TrainConfig.precision must be one of {sorted(PRECISIONS)} or 'recipe', "
                             f"got {self.precision!r}")
        if self.seed < 0:
            raise ValueError(f"TrainConfig.seed must be >= 0, got {self.seed}")
        from harness.configurables import HEADS
        if self.head is not None and self.head not in HEADS:
            raise ValueError(f"TrainConfig.head must be one of {sorted(HEADS)} or None, got {self.head!r}")
        if self.csre and self.head not in (None, "csre"):
            raise ValueError(f"TrainConfig.csre = True contradicts TrainConfig.head = {self.head!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def head_name(self) -> str | None:
        """The contrastive head of the run (None: the bare encoder)."""
        return "csre" if self.csre else self.head

    @property
    def arm(self) -> str:
        return (self.head_name or "base") + (f"-{self.tag}" if self.tag else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _macro(name: str) -> Any:
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_determinism(on: bool) -> dict[str, Any]:
    """Switch deterministic algorithms on or off; returns the flags as recorded in the run's metrics."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


class _Interrupt(SignalCatcher):
    """SIGTERM / SIGINT set a flag; the loop writes a checkpoint at the next batch and stops.
    A second signal gives up at once."""

    def handle(self, signum: int) -> None:
        if self.signum is not None:
            self.restore(signum)
            raise KeyboardInterrupt
        self.signum = signum


def resolve_precision(requested: str, recipe: Recipe, device: torch.device) -> tuple[str, str, str | None]:
    """(training precision, evaluation precision, note) of ``TrainConfig.precision = requested``.

    ``'recipe'`` is the official trainer's: fp16 autocast + GradScaler in training and fp32 in
    evaluation where ``recipe.amp`` (the official code runs ``torch.cuda.amp``), fp32 otherwise.
    On a device without CUDA it is fp32, and the note says that this departs from the recipe.
    Any other value is used as given for both.
    """
    if requested != "recipe":
        return requested, requested, None
    if not recipe.amp:
        return "fp32", "fp32", None
    if device.type != "cuda":
        return "fp32", "fp32", (f"the official recipe ({recipe.source or 'Recipe'}) trains under AMP (fp16 "
                                f"autocast + GradScaler) on CUDA; this {device.type} run is fp32")
    return "fp16", "fp32", None


class Trainer:
    """Builds everything for one cell from the parsed gin config and trains it; see the module docstring."""

    def __init__(self, *, gin_files: Sequence[str] = (), gin_params: Sequence[str] = (),
                 run_dir: str | os.PathLike | None = None, world: World | None = None) -> None:
        self.gin_files, self.gin_params = list(gin_files), list(gin_params)
        self.cfg = TrainConfig()
        self.recipe = Recipe()
        self.data = DataConfig()
        self.benchmark = self.cfg.benchmark or _macro("DATASET")
        self.encoder_name = self.cfg.encoder or _macro("ENCODER")
        if not self.benchmark or not self.encoder_name:
            raise ValueError("the run needs a dataset file (defines %DATASET) and an encoder file (defines "
                             "%ENCODER), or TrainConfig.benchmark / TrainConfig.encoder")
        self.stream = self.data.modality
        self.cell = {"benchmark": self.benchmark, "encoder": self.encoder_name, "stream": self.stream,
                     "csre": self.cfg.head_name == "csre", "head": self.cfg.head_name, "arm": self.cfg.arm,
                     "seed": self.cfg.seed, "profile": self.cfg.profile}
        self.run_dir = Path(run_dir or self.cfg.run_dir or REPO / "runs" / self.benchmark / self.encoder_name
                            / self.stream / self.cfg.arm / f"seed{self.cfg.seed}")
        self.world = world or World()
        self.device = resolve_device(self.cfg.device)
        if self.device.type == "cuda" and self.world.distributed:
            self.device = torch.device("cuda", self.world.local_rank)
        self.determinism = set_determinism(self.cfg.deterministic)
        self.precision, self.eval_precision, self.precision_note = resolve_precision(
            self.cfg.precision, self.recipe, self.device)
        self.dtype = parameter_dtype(self.precision)  # of the parameters, banks and inputs
        seed_everything(self.cfg.seed)
        self._build()

    # -- construction ------------------------------------------------------------------------

    def _build(self) -> None:
        cfg, data = self.cfg, self.data
        self.encoder = build_encoder()
        joints = bool(getattr(self.encoder, "wants_joints", False))
        full = data.feeder("train", seed=cfg.seed)
        positions = np.arange(full.num_samples)
        if cfg.train_per_class is not None:
            positions = per_class_subset(full.labels[:full.num_samples], cfg.train_per_class)
        tr, va = stratified_holdout(full.labels[positions], cfg.val_fraction, cfg.seed)
        self.train_positions, self.val_positions = positions[tr], positions[va]
        self.train_set = data.feeder("train", seed=cfg.seed, subset=self.train_positions, with_joints=joints)
        self.val_set = (data.feeder("train", seed=cfg.seed, subset=self.val_positions, train=False, repeat=1,
                                    p_interval=data.test_p_interval, random_rot=None, with_joints=joints)
                        if len(self.val_positions) else None)
        test = data.feeder("test", seed=cfg.seed)
        test_subset = (per_class_subset(test.labels, cfg.test_per_class) if cfg.test_per_class is not None else None)
        self.test_set = data.feeder("test", seed=cfg.seed, subset=test_subset, with_joints=joints)
        if len(self.train_set) < self.recipe.batch_size:
            raise ValueError(f"the training set has {len(self.train_set)} samples, fewer than one batch "
                             f"({self.recipe.batch_size}); lower Recipe.batch_size")
        sample_shape = tuple(self.train_set[0][0].shape)  # (C, T, V, M) as the encoder sees it
        self.model: torch.nn.Module = self.encoder
        if cfg.head_name is not None:
            self.model = build_head(cfg.head_name, self.encoder, len(self.train_set),
                                    torch.as_tensor(self.train_set.labels), input_shape=sample_shape, seed=cfg.seed,
                                    stream=self.stream, benchmark=self.benchmark)
        self.model.to(self.device)
        if self.dtype != torch.float32:  # fp64: every floating parameter and buffer (the CSRE banks too)
            self.model.to(self.dtype)
        self.criterion = CrossEntropyLoss()
        self.optimizer = self.recipe.make_optimizer(self.model.parameters())
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.ddp = None
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The CSRE banks are kept identical on every rank by their own all-gather; DDP's
            # per-forward buffer broadcast would copy them (S x 256 floats per bank) every step.
            banks = [name for name, _ in self.model.named_buffers() if name.startswith("banks.")]
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, banks)
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.sample_shape = sample_shape

    @property
    def net(self) -> torch.nn.Module:
        """What the training step calls (the DDP wrapper under torchrun)."""
        return self.ddp if self.ddp is not None else self.model

    # -- records -----------------------------------------------------------------------------

    def _write_configs(self) -> None:
        if not self.world.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.gin", gin.config_str())
        write_text(self.run_dir / "operative_config.gin", gin.operative_config_str())
        params = sum(p.numel() for p in self.model.parameters())
        enc_params = sum(p.numel() for p in self.encoder.parameters())
        write_json(self.run_dir / "run.json", {
            "cell": self.cell, "argv": sys.argv, "gin_files": self.gin_files, "gin_params": self.gin_params,
            "git": _git_sha(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "gin": getattr(gin, "__version__", None), "platform": platform.platform(),
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor(),
            "data_file": str(self.data.resolve_path()), "sample_shape": list(self.sample_shape),
            "train_samples": len(self.train_set), "train_distinct": int(self.train_set.num_samples),
            "val_samples": 0 if self.val_set is None else len(self.val_set), "test_samples": len(self.test_set),
            "val_positions": self.val_positions.tolist(), "parameters": params, "encoder_parameters": enc_params,
            **self._how_it_ran(),
        })

    def _how_it_ran(self) -> dict[str, Any]:
        """Precision and process layout, recorded in run.json and metrics.json alike."""
        return {"precision": self.precision, "eval_precision": self.eval_precision,
                "precision_note": self.precision_note, "world_size": self.world.size,
                "batch_per_process": self.recipe.batch_size // self.world.size}  # BatchNorm's batch

    def _fingerprint(self) -> str:
        return gin.config_str()

    # -- training ----------------------------------------------------------------------------

    def _train_epoch(self, epoch: int, start: int, accum: dict[str, float], interrupt: _Interrupt,
                     ckpt_state: dict) -> bool:
        """Train the rest of ``epoch`` from global batch ``start``; False if interrupted (checkpoint written)."""
        cfg, recipe = self.cfg, self.recipe
        self.train_set.set_epoch(epoch)
        batches = EpochBatches(len(self.train_set), recipe.batch_size, seed=cfg.seed, epoch=epoch, start=start,
                               drop_last=recipe.drop_last,
                               rank=self.world.rank, world=self.world.size)
        total = batches.num_batches if cfg.max_steps is None else min(batches.num_batches, cfg.max_steps)
        data_loader = loader(self.train_set, recipe.batch_size, num_workers=cfg.num_workers, sampler=batches,
                             generator=epoch_generator(cfg.seed, epoch))
        self.model.train()
        bar = None
        if cfg.progress and self.world.main and sys.stderr.isatty():  # a log file gets one line per epoch
            from tqdm import tqdm
            bar = tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False,
                       dynamic_ncols=True, file=sys.stderr)
        step = start
        try:
            for x, y, index in data_loader:
                if step >= total:
                    break
                x = x.to(self.device, self.dtype)
                y, index = y.to(self.device), index.to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with autocast(self.device, self.precision):
                    if cfg.head_name is not None:
                        out = self.net(x, y, index)
                        logits, contrastive = out.logits, out.contrastive
                    else:
                        logits, contrastive = self.net(x), None
                    ce = self.criterion(at_least_float32(logits), y)
                    reg = self.encoder.regulariser(y)  # the encoder's own term (InfoGCN), from this forward
                zero = ce.new_zeros(())
                contrastive = zero if contrastive is None else at_least_float32(contrastive)
                reg = zero if reg is None else at_least_float32(reg)
                loss = ce + contrastive + reg
                values = torch.stack([loss.detach(), ce.detach(), contrastive.detach(), reg.detach(),
                                      (logits.argmax(1) == y).sum().float()])  # on the device: no sync yet
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if recipe.max_grad_norm is not None:
                        self.scaler.unscale_(self.optimizer)  # clip the true gradients
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), recipe.max_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if recipe.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), recipe.max_grad_norm)
                    self.optimizer.step()
                n = float(y.numel())
                # [loss·n, CE·n, CSRE·n, regulariser·n, correct, n, stop], summed over ranks under DDP on
                # the device, then the step's one host sync: every rank keeps the global running sums,
                # and all of them stop at the same batch on a signal or a non-finite loss
                sums = torch.cat([values[:4] * n, values[4:], values.new_tensor([n, float(interrupt.signum is not None)])])
                sums = all_reduce_sum(self.world, sums).cpu()
                if not torch.isfinite(sums[:4]).all():  # the model is not saved after this step
                    v = (sums[:4] / sums[5]).tolist()
                    raise NonFiniteLoss(
                        f"{self.run_dir}: non-finite loss at epoch {epoch + 1}, batch {step + 1} (loss {v[0]:.4g}, "
                        f"CE {v[1]:.4g}, CSRE {v[2]:.4g}, regulariser {v[3]:.4g}); stopped. The last good "
                        f"checkpoint is kept: lower Recipe.base_lr, try precision='fp32', or check the data for NaN")
                for key, v in zip(ACCUMULATED, sums[:6].tolist()):
                    accum[key] += v
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{accum['loss'] / accum['count']:.3f}",
                                    acc=f"{100 * accum['correct'] / accum['count']:.1f}%")
                if float(sums[6]) > 0 and step < total:
                    self._save(ckpt_state | {"epoch": epoch, "step": step, "accum": dict(accum), "finished": False})
                    return False
        finally:
            if bar is not None:
                bar.close()
        return True

    def _evaluate(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Logits and labels on val and test (main process; the others wait)."""
        out = {}
        if self.world.main:
            bs = self.recipe.test_batch_size
            for part, feeder in (("val", self.val_set), ("test", self.test_set)):
                if feeder is not None:
                    out[part] = predict(self.model, feeder, batch_size=bs, device=self.device,
                                        precision=self.eval_precision, num_workers=self.cfg.num_workers,
                                        features=part == "test")
            if "test" in out:
                logits, labels, self._test_features = out["test"]
                out["test"] = (logits, labels)
        barrier(self.world)
        return out

    # -- checkpoints -------------------------------------------------------------------------

    def _rng_state(self) -> dict:
        """Every RNG state of this process; under DDP those of all ranks (each rank draws its own
        dropout / noise), gathered to the main process. Called by every rank."""
        state = ckpt_lib.capture_rng()
        if not self.world.distributed:
            return state
        import torch.distributed as dist
        states: list = [None] * self.world.size
        dist.all_gather_object(states, state)
        return {"per_rank": states}

    def _save(self, state: dict) -> None:
        rng = self._rng_state()  # a collective under DDP: before the main-process-only write
        if not self.world.main:
            return
        ckpt_lib.save(self.run_dir / "checkpoint.pt", {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": rng, "config": self._fingerprint(), "cell": self.cell, "world_size": self.world.size, **state})

    def _load(self) -> dict | None:
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return None
        ck = ckpt_lib.load(path, map_location="cpu")  # RNG states must stay CPU tensors; load_state_dict moves the rest
        if ck["config"] != self._fingerprint():
            raise ValueError(f"{path}: written under a different gin configuration; refusing to resume "
                             f"(see {self.run_dir / 'config.gin'}; use another --run_dir to start afresh)")
        rng = ck["rng"]  # checked before anything is loaded
        if "per_rank" in rng:
            saved = len(rng["per_rank"])
            if saved != self.world.size:
                raise ValueError(f"{path}: written by {saved} processes, resumed with {self.world.size}; an exact "
                                 f"resume needs the same number (torchrun --nproc_per_node={saved})")
            rng = rng["per_rank"][self.world.rank]
        elif self.world.distributed:
            raise ValueError(f"{path}: written by one process, resumed with {self.world.size}; an exact resume "
                             f"needs the same number")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scaler is not None and ck["scaler"] is not None:
            self.scaler.load_state_dict(ck["scaler"])
        ckpt_lib.restore_rng(rng)
        return ck

    # -- the run -----------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict[str, Any] | None:
        """Train to the end (or until interrupted: returns None). Returns the final metrics."""
        recipe = self.recipe
        if self.world.main and not resume and (self.run_dir / "checkpoint.pt").exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass --resume to continue it, or "
                                  f"choose another --run_dir")
        self._write_configs()
        ck = self._load() if resume else None
        state = {"history": [], "cost": [], "best": {}, "epoch": 0, "step": 0,
                 "accum": None, "finished": False}
        if ck is not None:
            state.update({k: ck[k] for k in state if k in ck})
        if state["finished"]:
            if self.world.main:
                print(f"{self.run_dir}: already finished; nothing to do")
            return self._final_metrics(state)
        live = self._live(state["history"])
        with _Interrupt() as interrupt:
            while state["epoch"] < recipe.epochs:
                epoch = state["epoch"]
                lr = recipe.set_lr(self.optimizer, epoch)
                accum = state["accum"] or dict.fromkeys(ACCUMULATED, 0.0)
                t0 = time.perf_counter()
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                done = self._train_epoch(epoch, state["step"], accum, interrupt,
                                         {k: state[k] for k in ("history", "cost", "best")} | {"lr": lr})
                if not done:
                    if self.world.main:
                        print(f"\n{self.run_dir}: interrupted by signal {interrupt.signum} in epoch {epoch + 1}; "
                              f"checkpoint written, continue with --resume", file=sys.stderr)
                    return None
                train_time = time.perf_counter() - t0
                t1 = time.perf_counter()
                preds = self._evaluate()
                eval_time = time.perf_counter() - t1
                record = self._epoch_record(epoch, lr, accum, preds)
                state["history"].append(record)
                state["cost"].append({"epoch": epoch, "train_seconds": train_time, "eval_seconds": eval_time,
                                      "train_samples": accum["count"], **_peak_memory_mb(self.device)})
                self._update_best(state["best"], epoch, preds, record)
                state.update(epoch=epoch + 1, step=0, accum=None, finished=epoch + 1 >= recipe.epochs)
                if self.world.main:
                    self._write_scores(preds, state["best"], epoch)
                self._save({k: state[k] for k in ("history", "cost", "best", "epoch", "step", "accum", "finished")}
                           | {"lr": lr})
                self._log(live, record)
                if self.world.main:
                    print(self._epoch_line(record, train_time), flush=True)
                barrier(self.world)
                if interrupt.signum is not None and not state["finished"]:
                    if self.world.main:
                        print(f"\n{self.run_dir}: interrupted by signal {interrupt.signum} after epoch {epoch + 1}; "
                              f"checkpoint written, continue with --resume", file=sys.stderr)
                    return None
        metrics = self._final_metrics(state)
        if live is not None:
            live.end()
        if self.world.main:
            print(self.summary(metrics))
        return metrics

    def _epoch_record(self, epoch: int, lr: float, accum: dict, preds: dict) -> dict[str, Any]:
        from harness.metrics import classification_metrics
        count = max(accum["count"], 1)
        record: dict[str, Any] = {"epoch": epoch, "lr": lr, "train": {
            "loss": accum["loss"] / count, "ce": accum["ce"] / count, "contrastive": accum["contrastive"] / count,
            "regulariser": accum["regulariser"] / count,
            "top1": 100 * accum["correct"] / count, "samples": accum["count"]}}
        for part, (logits, labels) in preds.items():
            record[part] = classification_metrics(logits, labels, self.data.num_class)
            record[part]["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
        return record

    def _epoch_line(self, record: dict, seconds: float) -> str:
        t = record["train"]
        parts = [f"epoch {record['epoch'] + 1}/{self.recipe.epochs}", f"lr {record['lr']:.4g}",
                 f"loss {t['loss']:.4f} (CE {t['ce']:.4f}, CSRE {t['contrastive']:.4f}"
                 + (f", regulariser {t['regulariser']:.4f})" if t.get("regulariser") else ")"),
                 f"train top-1 {t['top1']:.2f}%"]
        parts += [f"{p} top-1 {record[p]['top1']:.2f}%" for p in ("val", "test") if p in record]
        return " | ".join(parts + [f"{seconds:.0f} s"])

    def _update_best(self, best: dict, epoch: int, preds: dict, record: dict) -> None:
        """Keep the logits of the best epoch per part (top-1 of ``record``; the earliest epoch wins ties)."""
        for part, (logits, labels) in preds.items():
            top1 = record[part]["top1"]
            if part not in best or top1 > best[part]["top1"]:
                best[part] = {"epoch": epoch, "top1": top1, "logits": logits, "labels": labels}

    def _write_scores(self, preds: dict, best: dict, epoch: int) -> None:
        feeders = {"val": self.val_set, "test": self.test_set}
        if "test" in preds:  # pooled test features of this epoch, for the t-SNE figure of the report
            names = np.asarray(self.test_set.sample_names).astype(str)
            with atomic_path(self.run_dir / "features_test.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, features=self._test_features, labels=preds["test"][1], names=names, epoch=np.int64(epoch))
        for part, (logits, labels) in preds.items():
            names = np.asarray(feeders[part].sample_names).astype(str)
            save_scores(self.run_dir / score_file(part), Scores(logits, labels, names, epoch),
                        official_pickle=self.run_dir / f"scores_{part}.pkl" if part == "test" else None)
            b, path = best[part], self.run_dir / score_file(part, best=True)
            if b["epoch"] == epoch or not path.exists():  # unchanged since the best epoch wrote it
                save_scores(path, Scores(b["logits"], b["labels"], names, b["epoch"]))

    def _final_metrics(self, state: dict) -> dict[str, Any]:
        history, cost = state["history"], state["cost"]
        last = history[-1] if history else None

        def at(part: str) -> dict | None:
            if part not in state["best"]:
                return None
            e = state["best"][part]["epoch"]
            rec = history[e]
            return {"selected_on": part, "epoch": e, **{p: rec[p] for p in ("val", "test") if p in rec}}

        train_secs = [c["train_seconds"] for c in cost]
        metrics = {
            "cell": self.cell, "finished": state["finished"], "epochs_done": len(history),
            "headline": "last epoch (test)",
            "last": None if last is None else {"epoch": last["epoch"], **{p: last[p] for p in ("val", "test") if p in last}},
            "best_on_val": at("val"),
            "best_on_test": at("test"),  # the official code's selection: optimistic, labelled
            "recipe": self.recipe.to_dict(), "data": self.data.to_dict(),
            "train_config": self.cfg.to_dict(), **self._how_it_ran(), "determinism": self.determinism,
            "device": str(self.device),
            "cost": {"seconds_per_epoch": float(np.mean(train_secs)) if train_secs else None,
                     "eval_seconds_per_epoch": float(np.mean([c["eval_seconds"] for c in cost])) if cost else None,
                     "peak_memory_mb": max((c.get("peak_cuda_allocated_mb", c["peak_rss_mb"]) for c in cost), default=None),
                     "memory_kind": "cuda max allocated" if self.device.type == "cuda" else "process peak RSS",
                     "per_epoch": cost},
            "history": history,
        }
        if self.world.main:
            write_json(self.run_dir / "metrics.json", metrics)
        return metrics

    # -- logging -----------------------------------------------------------------------------

    def _live(self, history: list[dict]):
        """A dvclive logger in ``run_dir/dvclive`` (recreated from the history on resume)."""
        if not (self.cfg.dvclive and self.world.main):
            return None
        try:
            from dvclive import Live
        except ImportError:  # pragma: no cover - dvclive is a dependency
            return None
        # A dvc.yaml per run (not the repository's): `dvc exp show` lists every run directory that
        # git does not ignore (see .gitignore: only the heavy files of runs/ are ignored).
        live_dir = self.run_dir / "dvclive"
        live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=str(live_dir / "dvc.yaml"), report=None)
        live.log_params({"cell": self.cell, "recipe": self.recipe.to_dict(), "train": self.cfg.to_dict(),
                         "data": self.data.to_dict()})
        for record in history:
            self._log(live, record)
        return live

    def _log(self, live, record: dict) -> None:
        if live is None:
            return
        live.step = record["epoch"]
        live.log_metric("train/loss", record["train"]["loss"])
        live.log_metric("train/top1", record["train"]["top1"])
        live.log_metric("lr", record["lr"])
        for part in ("val", "test"):
            if part in record:
                live.log_metric(f"{part}/top1", record[part]["top1"])
                live.log_metric(f"{part}/top5", record[part]["top5"])
        live.next_step()

    def summary(self, metrics: dict) -> str:
        c = self.cell
        lines = [f"\n== {c['benchmark']} / {c['encoder']} / {c['stream']} / {c['arm']} "
                 f"/ seed {c['seed']} (profile {c['profile']}) ==", f"run dir: {self.run_dir}"]
        last = metrics["last"]
        if last is not None:
            lines.append(f"last epoch {last['epoch'] + 1}: test top-1 {last['test']['top1']:.2f}%  "
                         f"top-5 {last['test']['top5']:.2f}%" +
                         (f"  (val top-1 {last['val']['top1']:.2f}%)" if "val" in last else ""))
        for key, label in (("best_on_val", "best epoch on val"), ("best_on_test", "best epoch on test (optimistic)")):
            b = metrics[key]
            if b is not None:
                lines.append(f"{label}: epoch {b['epoch'] + 1}, test top-1 {b['test']['top1']:.2f}%")
        cost = metrics["cost"]
        if cost["seconds_per_epoch"] is not None:
            lines.append(f"cost: {cost['seconds_per_epoch']:.1f} s/epoch training, peak memory "
                         f"{cost['peak_memory_mb']:.0f} MB ({cost['memory_kind']}); precision {self.precision}")
        return "\n".join(lines)


def train(gin_files: Sequence[str], gin_params: Sequence[str] = (), *, run_dir: str | os.PathLike | None = None,
          resume: bool = False) -> dict[str, Any] | None:
    """Parse the gin config and run one cell (also under torchrun). None if interrupted."""
    gin.clear_config()
    parse_gin(gin_files, gin_params)
    device = TrainConfig().device
    world = setup("cuda" if device == "auto" and torch.cuda.is_available() else device)
    try:
        trainer = Trainer(gin_files=gin_files, gin_params=gin_params, run_dir=run_dir, world=world)
        return trainer.fit(resume=resume)
    finally:
        teardown(world)
