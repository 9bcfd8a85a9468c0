"""Sample accuracy: how often an independent classifier reads the chosen digit in samples.

A generative model is judged in both directions: what it classifies, and what it
generates. For every path of a digit group — a group whose members are present by
``label: N`` (``digits/0..9``, ``images/0..9``), or one whose members are the bits of the
label (``label_bit: b``, ``images/bit0..3``: digit ``d`` is the assignment of its bits) —
images are sampled down the path and :class:`~tzkgraph.use.judge.Judge` says which digit
each shows. Beside it, the two links of a hierarchy's chain, apart:

- **reconstruction**: test images → ``c ~ q(c | e=1, t)`` of a code a child observes →
  the parent's decoder ``p(t | e=1, c)`` → judged as the image's own digit;
- **child**: a child stage's own samples ``t ~ p(t | e_k=1)`` read back by its encoder
  (argmax of ``p(e_j | t)`` over the group) as ``k``.

``python tools/judge.py GRAPH`` prints and saves the report (``RUN/judge.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from tzkgraph.data.dataset import GraphData
from tzkgraph.graph.model import TzKGraph
from tzkgraph.spec.types import GraphSpec
from tzkgraph.use.judge import Judge, judge_accuracy
from tzkgraph.use.sampling import Temperature, _at, descend, sample_path

__all__ = ["DigitPath", "digit_paths", "sample_digit", "sample_given", "sample_accuracy",
           "reconstruction_link", "child_link"]


@dataclass(frozen=True)
class DigitPath:
    """A group of a stage whose knowledge names digits: ``assignments[d]`` sets its members for digit ``d``."""

    stage: str
    group: str
    assignments: dict[int, dict[str, int]]  # digit -> knowledge -> e (one present, or the label's bits)

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.group}"


def digit_paths(spec: GraphSpec) -> list[DigitPath]:
    """Every group of knowledge types present by a digit label, or by its bits."""
    paths = []
    for stage in spec.stages:
        for group, members in stage.groups.items():
            rules = {k: stage.get(k).present for k in members}
            if all(r.label is not None and 0 <= r.label <= 9 for r in rules.values()):
                paths.append(DigitPath(stage.name, group, {
                    r.label: {k: int(k == name) for k in members} for name, r in rules.items()}))
            elif all(r.label_bit is not None for r in rules.values()) and \
                    {r.label_bit for r in rules.values()} >= {0, 1, 2, 3}:
                paths.append(DigitPath(stage.name, group, {
                    d: {k: (d >> r.label_bit) & 1 for k, r in rules.items()} for d in range(10)}))
    return paths


@torch.no_grad()
def sample_given(model: TzKGraph, spec: GraphSpec, stage: str, assignment: Mapping[str, int], n: int,
                 temperature: Temperature = 1.0, guide: int = 0, candidates: int = 32) -> Tensor:
    """Images with the stage's knowledge set to ``assignment`` (several types at once): the
    stage's model ``M(t | ē)`` (:meth:`~tzkgraph.model.stage.TzKStage.sample_given`, ``guide``
    candidates per component, else ``candidates``), then down to images. A one-hot member of
    an exclusive group is :func:`sample_path`'s ``STAGE/KNOWLEDGE``."""
    if sum(assignment.values()) == 1 and len(assignment) > 1 and _one_hot_group(spec, stage, assignment):
        k = next(name for name, v in assignment.items() if v)
        return sample_path(model, spec, f"{stage}/{k}", n, temperature, guide)
    t = model.stages[stage].sample_given(assignment, n, _at(temperature, stage), guide or candidates)
    return descend(model, spec, stage, t, temperature)


def _one_hot_group(spec: GraphSpec, stage: str, assignment: Mapping[str, int]) -> bool:
    """Whether ``assignment`` is one member of an exclusive group (the others implied absent)."""
    exclusive = spec.exclusive_groups(stage)
    return any(set(assignment) == set(members) for group, members in spec.stage(stage).groups.items()
               if group in exclusive)


def sample_digit(model: TzKGraph, spec: GraphSpec, path: DigitPath, digit: int, n: int,
                 temperature: Temperature = 1.0, guide: int = 0) -> Tensor:
    """``n`` images sampled down ``path`` for ``digit``, ``(n, C, H, W)``."""
    return sample_given(model, spec, path.stage, path.assignments[digit], n, temperature, guide)


@torch.no_grad()
def sample_accuracy(model: TzKGraph, spec: GraphSpec, judge: Judge, path: DigitPath, n: int,
                    temperature: Temperature = 1.0, guide: int = 0) -> dict[str, object]:
    """The share of samples judged as the chosen digit: overall, and per digit."""
    per_digit = {d: judge_accuracy(judge, sample_digit(model, spec, path, d, n, temperature, guide), d)
                 for d in sorted(path.assignments)}
    return {"accuracy": sum(per_digit.values()) / len(per_digit), "per_digit": per_digit}


@torch.no_grad()
def reconstruction_link(model: TzKGraph, spec: GraphSpec, judge: Judge, data: GraphData, stage: str,
                        knowledge: str, n: int, temperature: float = 1.0) -> float:
    """Test images through ``c ~ q(c | e=1, t)`` (``temperature`` scales σ) and ``p(t | e=1, c)``,
    judged as their own digit (over the first ``n`` images where ``e = 1``)."""
    s = model.stages[stage]
    rows = data.present(spec.stage(stage).get(knowledge).present).nonzero().flatten()
    rows = rows[data.labels[rows] >= 0][:n]
    t = data.observations(rows, fixed=True)
    c = s.draw_code(knowledge, *s.knowledge[knowledge].posterior(s.reads(t), 1), temperature)
    return judge_accuracy(judge, s.decode(knowledge, c, temperature), data.labels[rows])


@torch.no_grad()
def child_link(model: TzKGraph, spec: GraphSpec, path: DigitPath, n: int, temperature: float = 1.0,
               guide: int = 0) -> float:
    """A stage's own samples for each digit read back as that digit by its encoder (argmax over the
    group): from its model given the digit (``guide`` candidates), or its decoder alone (0)."""
    s = model.stages[path.stage]
    members = list(next(iter(path.assignments.values())))
    cols = [s.names.index(k) for k in members]
    right = []
    for digit, assignment in sorted(path.assignments.items()):
        k = next(name for name, v in assignment.items() if v)
        t = s.sample_given(assignment, n, temperature, guide) if guide else s.sample(n, k, temperature)
        right.append((s.discriminate(t)[:, cols].argmax(1) == members.index(k)).double().mean().item())
    return sum(right) / len(right)


def links(spec: GraphSpec) -> list[tuple[str, str]]:
    """``(stage, knowledge)`` of every root code a child observes: where reconstruction is measured."""
    return sorted({(p, k) for stage in spec.stages for p, k in stage.parents if spec.stage(p).is_root})


def child_paths(spec: GraphSpec, paths: Sequence[DigitPath]) -> list[DigitPath]:
    """The digit paths of child stages with one-hot assignments (where the child link is measured)."""
    return [p for p in paths if not spec.stage(p.stage).is_root
            and all(sum(a.values()) == 1 for a in p.assignments.values())]
