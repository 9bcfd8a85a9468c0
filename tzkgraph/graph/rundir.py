"""A graph's run directory, ``out_dir/name``, and the trained model it holds.

Here, below both ``tzkgraph.training`` (which writes the run directory) and ``tzkgraph.use``
(which reads it), so that each imports it without importing the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.core.errors import TzkError
from tzkgraph.graph.model import TzKGraph
from tzkgraph.spec.types import GraphSpec

__all__ = ["run_directory", "load_trained"]


def run_directory(spec: GraphSpec) -> Path:
    """Where ``tzkgraph run`` keeps the graph's checkpoint, metrics and results: ``out_dir/name``."""
    return Path(spec.train.out_dir) / spec.name


def load_trained(spec: GraphSpec, device: torch.device | str = "cpu") -> tuple[TzKGraph, dict[str, Any]]:
    """The graph's trained model (in eval mode, on ``device``) and its checkpoint.

    Raises:
        TzkError: there is no checkpoint yet, it cannot be read, or it holds
            another graph (a part of ``spec`` it has no weights for).
    """
    path = run_directory(spec) / "checkpoint.pt"
    if not path.is_file():
        raise TzkError(f"{path}: no checkpoint; train the graph first with `tzkgraph run {spec.source}`")
    state = load_checkpoint(path)
    model = TzKGraph(spec)
    own = model.state_dict()
    missing = [k for k in own if k not in state["model"]]
    wrong = [k for k in own if k in state["model"] and state["model"][k].shape != own[k].shape]
    if missing or wrong:
        part = model.part_of((missing or wrong)[0])
        what = "has no weights for" if missing else "has other shapes for"
        raise TzkError(f"{path} {what} {part} of {spec.source}: "
                       f"train it with `tzkgraph run {spec.source}` first")
    model.load_state_dict({k: state["model"][k] for k in own})
    return model.to(device).eval(), state
