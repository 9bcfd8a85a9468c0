"""Where and with which random numbers work runs: the device, and seeded regions."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from tzkgraph.core.errors import TzkError

__all__ = ["pick_device", "seeded"]


def free_cores() -> int:
    """The cores this process may use less the 1-minute load average, rounded (at least 1).

    A training step's OpenMP threads spin-wait on each other: beside one busy process on a
    2-core machine, 2 threads made 87 images/s of the default pretraining, 1 thread 199
    (alone: 327 and 161; docs/performance.md). The load average lags by about a minute.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = 0.0
    return max(1, cores - int(load + 0.5))


def pick_device(name: str) -> torch.device:
    """``auto`` → CUDA when there is a GPU, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TzkError(f"train.device: {name!r} asked for, but CUDA is not available (use auto or cpu)")
    return device


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """A context in which torch's random numbers (CPU, and ``device`` if CUDA) start from ``seed``.

    The global random state is restored on exit, so a training run that
    evaluates or samples along the way draws the same numbers as one that does not.
    """
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
