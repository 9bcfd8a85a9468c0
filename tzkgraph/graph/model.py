"""A graph's stages as one module, built from a validated spec, with named parts."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import Tensor, nn

from tzkgraph.spec.types import FLOW_PART, GraphSpec
from tzkgraph.model.stage import TzKStage

__all__ = ["TzKGraph", "build_stage", "load_matching"]


def build_stage(spec: GraphSpec, name: str) -> TzKStage:
    """The :class:`TzKStage` that ``spec`` describes for stage ``name``."""
    stage = spec.stage(name)
    knowledge = {
        k.name: dict(code_dim=k.code_dim, code_steps=k.code_flow.steps,
                     code_hidden=k.code_flow.hidden, permutation=k.code_flow.permutation,
                     volume_preserving=k.code_flow.volume_preserving)
        for k in stage.knowledge
    }
    return TzKStage(spec.t_shape(name), knowledge, levels=stage.flow.levels or 1,
                    steps=stage.flow.steps, hidden=stage.flow.hidden,
                    permutation=stage.flow.permutation, activation=stage.flow.activation or "swish",
                    prior=stage.flow.prior or "fixed",
                    net_hidden=stage.nets.hidden,
                    objective=stage.objective, label_weight=stage.label_weight)


class TzKGraph(nn.Module):
    """Every stage of a graph, in topological order.

    Parts are named as in the YAML: ``STAGE/flow`` is a stage's t-flow,
    ``STAGE/KNOWLEDGE`` one knowledge type's networks and code flow.

    Arguments:
        spec: a validated :class:`~tzkgraph.spec.types.GraphSpec`.
    """

    def __init__(self, spec: GraphSpec):
        super().__init__()
        self.spec = spec
        self.stages = nn.ModuleDict({name: build_stage(spec, name) for name in spec.order})

    def part(self, name: str) -> nn.Module:
        """The module of one atomic part (``STAGE/flow`` or ``STAGE/KNOWLEDGE``)."""
        stage, piece = name.split("/", 1)
        if piece == FLOW_PART:
            return self.stages[stage].t_flow
        return self.stages[stage].knowledge[piece]

    def part_of(self, parameter_name: str) -> str:
        """The atomic part a ``state_dict`` key belongs to."""
        _, stage, kind, *rest = parameter_name.split(".")
        return f"{stage}/{FLOW_PART}" if kind == "t_flow" else f"{stage}/{rest[0]}"

    def set_trainable(self, parts: Iterable[str]) -> list[nn.Parameter]:
        """Makes exactly ``parts`` trainable, in training mode, and the rest frozen in eval
        mode (no data-dependent re-initialisation there); returns their parameters."""
        parts = set(parts)
        self.train()
        for name in self.spec.atomic_parts():
            if name not in parts:
                self.part(name).eval()
        self.requires_grad_(False)
        params: list[nn.Parameter] = []
        for name in sorted(parts):
            module = self.part(name)
            module.requires_grad_(True)
            params += list(module.parameters())
        return params


def load_matching(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[list[str], list[str]]:
    """Loads every entry of ``state`` whose name and shape match ``model``.

    Returns:
        ``(new, mismatched)``: model keys absent from ``state`` (left as built),
        and keys present in both with different shapes (also left as built).
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    model.load_state_dict(usable, strict=False)
    return [k for k in own if k not in usable], mismatched
