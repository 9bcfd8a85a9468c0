"""Sizes that would not fit: a one-line error naming the YAML key, before anything is allocated.

A graph's sizes (code dims, widths, the batch, the number of steps) are checked against this
machine's memory when the YAML is validated. Each size is charged the memory it alone
implies at the graph's other sizes — the weights it multiplies (float32), and for the batch
the activations one training step keeps for its backward pass — and a size whose charge
exceeds the machine's physical memory is an error naming its key. The estimates are lower
bounds of what the model allocates (the largest matrices and feature maps only), so a graph
that passes may still not fit; one that fails certainly does not.
"""

from __future__ import annotations

import math
import os
from typing import Iterator, Mapping

from tzkgraph.core.errors import ConfigError

__all__ = ["check_sizes", "machine_memory", "size_charges"]

FLOAT = 4            # bytes of a float32
MAX_IMAGES = 2**53   # steps × batch_size: image counts stay exact in a float64 (and in int64 indices)


def machine_memory() -> int:
    """Physical memory in bytes (64 GiB where the platform cannot say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


def size_charges(spec, places: Mapping[tuple[str, str], str]) -> Iterator[tuple[str, int, float]]:
    """``(YAML key, value, bytes)``: the memory each size implies, at the graph's other sizes."""
    batch = spec.train.batch_size
    for stage in spec.stages:
        where = f"stages.{stage.name}"
        shape = spec.t_shape(stage.name)
        dims = math.prod(shape)
        pixels = dims // shape[0] if len(shape) == 3 else 1
        flow_hidden, nets_hidden = stage.flow.hidden, stage.nets.hidden
        levels, steps = stage.flow.levels or 1, stage.flow.steps
        # the coupling nets' 1×1 convolution (hidden²) and the decoders' last layer (hidden × 2D, e = 0/1)
        yield f"{where}.flow.hidden", flow_hidden, FLOAT * levels * steps * flow_hidden**2
        yield f"{where}.nets.hidden", nets_hidden, FLOAT * len(stage.knowledge) * (
            4 * nets_hidden * dims + 3 * nets_hidden**2)
        for k in stage.knowledge:
            place = places.get((stage.name, k.name), f"{where}.knowledge.{k.name}")
            code = k.code_dim
            yield f"{place}.code_dim", code, FLOAT * code * (
                4 * nets_hidden * (16 if len(shape) == 3 else 1) + 2 * nets_hidden + k.code_flow.steps * 3 * k.code_flow.hidden)
            flow_place = f"{where}.code_flow" if k.code_flow == stage.code_flow else f"{place}.code_flow"
            yield f"{flow_place}.hidden", k.code_flow.hidden, FLOAT * k.code_flow.steps * k.code_flow.hidden**2
        # activations kept for backward: each coupling net's hidden maps at its level's resolution
        per_image = sum(steps * 2 * flow_hidden * pixels / 4**(level + 1) for level in range(levels))
        per_image += len(stage.knowledge) * 3 * nets_hidden * pixels  # the knowledge nets' first layers
        yield "train.batch_size", batch, FLOAT * batch * per_image


def check_sizes(spec, places: Mapping[tuple[str, str], str], memory: int | None = None) -> None:
    """Raises :class:`ConfigError` naming the first size that alone would not fit in ``memory``
    (default: this machine's), or a phase whose steps × batch_size overflows the counters."""
    memory = machine_memory() if memory is None else memory
    for key, value, charge in size_charges(spec, places):
        if charge > memory:
            raise ConfigError(key, f"{value} would need at least {_gib(charge)} of memory "
                                   f"(this machine has {_gib(memory)})")
    for i, phase in enumerate(spec.train.phases):
        if phase.steps * spec.train.batch_size >= MAX_IMAGES:
            raise ConfigError(f"train.phases.{i}.steps", f"{phase.steps} steps × batch_size "
                              f"{spec.train.batch_size} images is more than can be counted (2**53)")


def _gib(n: float) -> str:
    return f"{n / 2**30:,.0f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"
