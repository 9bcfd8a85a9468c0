"""A training phase's plan: which stages compute, which take part in the loss, what is cached.

A pure function of the spec and the phase's trainable parts (no tensors), so the knowledge
graph's picture (:mod:`tzkgraph.use.viz`) draws it without building an executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tzkgraph.spec.types import FLOW_PART, GraphSpec

__all__ = ["PhasePlan", "plan_phase"]


@dataclass
class PhasePlan:
    """What a phase evaluates, given the atomic parts it trains.

    Attributes:
        trainable: atomic parts (``STAGE/flow``, ``STAGE/KNOWLEDGE``) that train.
        active: per stage, the knowledge types in its objective (the ones that train).
        loss_stages: stages whose loss is summed into the objective.
        compute: stages evaluated at all, parents first (loss stages and their ancestors).
        emit: per stage, the knowledge types whose codes a computed child observes.
        cached_flow: root stages whose frozen t-flow output is read from the cache.
        cached_codes: root stages, fully frozen, whose code posteriors are read from the cache.
    """

    trainable: frozenset[str]
    active: dict[str, list[str]] = field(default_factory=dict)
    loss_stages: list[str] = field(default_factory=list)
    compute: list[str] = field(default_factory=list)
    emit: dict[str, list[str]] = field(default_factory=dict)
    cached_flow: set[str] = field(default_factory=set)
    cached_codes: set[str] = field(default_factory=set)


def plan_phase(spec: GraphSpec, trainable: frozenset[str]) -> PhasePlan:
    """Works out a :class:`PhasePlan` (see its attributes) from the trainable parts."""
    plan = PhasePlan(trainable)
    for stage in spec.stages:
        plan.active[stage.name] = [k for k in stage.knowledge_names if f"{stage.name}/{k}" in trainable]
        if f"{stage.name}/{FLOW_PART}" in trainable or plan.active[stage.name]:
            plan.loss_stages.append(stage.name)
    needed: set[str] = set()
    for name in reversed(spec.order):
        if name in plan.loss_stages or any(child in needed for child in spec.children(name)):
            needed.add(name)
    plan.compute = [name for name in spec.order if name in needed]
    for name in plan.compute:
        plan.emit[name] = []
    for name in plan.compute:
        for parent, k in spec.parents(name):
            if k not in plan.emit[parent]:
                plan.emit[parent].append(k)
    for name in plan.compute:
        if spec.stage(name).is_root:
            if name in plan.loss_stages and f"{name}/{FLOW_PART}" not in trainable:
                plan.cached_flow.add(name)
            elif name not in plan.loss_stages:
                plan.cached_codes.add(name)
    return plan
