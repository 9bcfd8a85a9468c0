"""Checkpoints: everything needed to rebuild a run and continue it, saved atomically."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from tzkgraph.core.errors import TzkError
from tzkgraph.core.files import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Writes ``state`` with ``torch.save`` to a temporary file, then renames it over ``path``."""
    atomic_write(path, lambda tmp: torch.save(dict(state, format=CHECKPOINT_FORMAT), tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` (no code from the file runs).

    Raises:
        TzkError: the file is missing, unreadable, or not a tzkgraph checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise TzkError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # a damaged file should give our one line, not torch's warnings
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle refused by weights_only, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TzkError(f"{path}: not a readable checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "spec" not in state:
        raise TzkError(f"{path}: not a tzkgraph checkpoint (no model/spec entries)")
    return state


def rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from: torch's CPU and CUDA ones and the data sampler's."""
    state = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator) -> None:
    """Restores what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"].cpu())
    data_generator.set_state(state["data"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
