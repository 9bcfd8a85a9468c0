"""Running under ``torchrun``: process group, ranks, and the few collectives training needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "setup", "current"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and caches."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over processes (a copy; ``x`` itself when alone)."""
        if not self.enabled:
            return x
        x = x.clone()
        dist.all_reduce(x)
        return x / self.world_size


_CURRENT = Distributed()


def current() -> Distributed:
    """The job set up by :func:`setup` (or a single process)."""
    return _CURRENT


def setup(device_name: str) -> tuple[Distributed, str]:
    """Joins the ``torchrun`` process group if this process was started by one.

    NCCL on GPUs, gloo on CPU. Each process uses the GPU of its local rank.

    Returns:
        ``(job, device name)``: the device name is ``cuda:LOCAL_RANK`` under
        ``torchrun`` on GPUs, ``device_name`` otherwise.
    """
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _CURRENT, device_name
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _CURRENT = Distributed(dist.get_rank(), dist.get_world_size(), local)
    if use_cuda:
        torch.cuda.set_device(local)
        return _CURRENT, f"cuda:{local}"
    return _CURRENT, "cpu"
