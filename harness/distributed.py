"""torchrun / DDP plumbing: one process per device, NCCL on GPUs, gloo on CPU.

``torchrun --nproc_per_node=K -m harness train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` then joins the process group. A plain ``python -m harness train`` is
a world of one and touches nothing in ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "all_reduce_sum", "barrier", "setup", "teardown"]


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: str) -> World:
    """Join the process group that torchrun describes (if any); returns this process's place."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return World(size, rank, local_rank)


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce_sum(world: World, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``values`` over all ranks, in float64, on the device ``values`` is on."""
    t = values.to(torch.float64)
    if world.distributed:
        dist.all_reduce(t)
    return t
