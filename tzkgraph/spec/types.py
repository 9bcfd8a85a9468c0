"""The typed, frozen spec of a validated graph: stages, knowledge, phases, DAG and shapes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import networkx as nx

from tzkgraph.spec.present import DATASET_CLASSES, PresentRule

__all__ = [
    "ACTIVATIONS", "DATA", "FLOW_PART", "LR_DECAYS", "OBJECTIVES", "PERMUTATIONS", "PRIORS", "CodeFlowSpec", "DataSpec", "FlowSpec", "GraphSpec", "ImageSpec",
    "KnowledgeSpec", "NetsSpec", "PhaseSpec", "SourceSpec", "StageSpec", "TrainSpec",
    "canonical_json", "spec_hash",
]

# The vocabularies of the YAML, each checked against what the model accepts (tests/test_spec.py).
LR_DECAYS = ("none", "cosine", "cooldown")      # train.lr_decay
PERMUTATIONS = ("shuffle", "lu")    # flow.permutation: tzkgraph.model.flows.PERMUTATIONS
ACTIVATIONS = ("swish", "relu")     # flow.activation: tzkgraph.model.flows.coupling.ACTIVATIONS
PRIORS = ("learned", "fixed")       # flow.prior (image stages): tzkgraph.model.flows.PRIORS
OBJECTIVES = ("marginal", "paper")  # stages.NAME.objective: tzkgraph.model.terms.OBJECTIVES
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune",
                 "max-autotune-no-cudagraphs")  # train.compile: off, on, or torch.compile's mode
DATA = "data"        # `observe: data`: a root stage observes images
FLOW_PART = "flow"   # `STAGE/flow` names a stage's t-flow in phase parts


def canonical_json(obj: Any) -> str:
    """Stable JSON of plain data (sorted keys, no spaces): what spec hashes are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def spec_hash(obj: Any) -> str:
    """SHA-256 hex digest of :func:`canonical_json` of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


@dataclass(frozen=True)
class SourceSpec:
    """One data source: a dataset under the name that ``present: {source: ...}`` uses."""

    name: str       # e.g. "mnist"; unique
    dataset: str    # a key of present.DATASET_CLASSES: mnist | fashion_mnist


@dataclass(frozen=True)
class ImageSpec:
    """How every source's images are presented to a root stage."""

    size: int = 32      # side of the square image, 28..64 (28×28 datasets are zero-padded)
    channels: int = 1   # 1 = gray; 3 = the gray image duplicated into RGB
    bits: int = 8       # pixels quantised to this many bits (1..8) before dequantisation


@dataclass(frozen=True)
class DataSpec:
    """The data root stages observe: the sources, concatenated in this order."""

    sources: tuple[SourceSpec, ...]                        # >= 1; order = `source_index`
    image: ImageSpec = field(default_factory=ImageSpec)
    root: str | None = None                                # None = tzkgraph.data.sources.default_root()
    dequant_seed: int = 0                                  # seed of the uniform dequantisation
    limit: int | None = None                               # first N examples per source and split (None = all)
    labelled: int | None = None                            # labels known for N training examples per class
                                                           # and source (None = all): semi-supervised

    @property
    def source_names(self) -> list[str]:
        """Source names in order (what ``PresentRule.evaluate`` takes)."""
        return [source.name for source in self.sources]

    def to_dict(self) -> dict[str, Any]:
        out = {"root": self.root, "sources": [asdict(s) for s in self.sources],
               "image": asdict(self.image), "dequant_seed": self.dequant_seed, "limit": self.limit}
        if self.labelled is not None:  # left out when unset: older graphs keep their identity
            out["labelled"] = self.labelled
        return out

    def images_dict(self) -> dict[str, Any]:
        """What determines the images (not which labels are known): what caches are keyed by."""
        return {k: v for k, v in self.to_dict().items() if k != "labelled"}


@dataclass(frozen=True)
class FlowSpec:
    """A stage's t-flow: a multi-scale Glow on images, a coupling flow on vectors."""

    steps: int = 8                 # flow steps (per level on images)
    hidden: int = 128              # width of the coupling networks
    permutation: str = "shuffle"   # "shuffle" (fixed, the paper's) | "lu" (invertible 1×1 conv)
    levels: int | None = None      # image stages: scales (3 when not given); None on vector stages
    activation: str | None = None  # coupling nets: None = "swish" (the paper's) | "relu" (cheaper)
    prior: str | None = None       # image stages: "learned" (Glow's split priors, the default) |
                                   # "fixed" (N(0, I) over the parts, the paper's); None on vectors

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class CodeFlowSpec:
    """The z-flow ``f_c`` of one knowledge type's code (a coupling flow on vectors)."""

    steps: int = 4
    hidden: int = 64
    permutation: str = "shuffle"   # "shuffle" | "lu"
    volume_preserving: bool = True  # log|det f_c| = 0, so a code space cannot collapse (docs/objective.md)


@dataclass(frozen=True)
class NetsSpec:
    """The encoder/decoder regressors and discriminators of a stage's knowledge types."""

    hidden: int = 64   # width of their hidden layers


@dataclass(frozen=True)
class KnowledgeSpec:
    """One knowledge type ``k = (e, c)``: when it is present, and its code."""

    name: str                      # unique in its stage; "0".."9" from a group "0..9"
    code_dim: int                  # dimension of the code c (>= 2: its flow uses coupling)
    present: PresentRule           # which examples have e = 1
    group: str | None = None       # mutually exclusive group (range key such as "0..9"), or None
    code_flow: CodeFlowSpec = field(default_factory=CodeFlowSpec)

    def to_dict(self) -> dict[str, Any]:
        out = {"code_dim": self.code_dim, "present": self.present.to_dict(),
               "code_flow": asdict(self.code_flow)}
        if self.group is not None:
            out["group"] = self.group
        return out


@dataclass(frozen=True)
class StageSpec:
    """One TzK stage: an observation t, its t-flow, and K knowledge types."""

    name: str
    observe: tuple[str, ...]                 # ("data",) on a root, else "STAGE/KNOWLEDGE", concatenated
    knowledge: tuple[KnowledgeSpec, ...]     # declaration order (groups expanded in place)
    flow: FlowSpec = field(default_factory=FlowSpec)
    code_flow: CodeFlowSpec = field(default_factory=CodeFlowSpec)   # the stage's default
    nets: NetsSpec = field(default_factory=NetsSpec)
    objective: str = "marginal"              # "marginal" (codes integrated out) or "paper" (Eq. 10, imputed)
    label_weight: float = 0.0                # α: the objective adds α·Σ log p(e|t) of the observed e (docs/objective.md)

    @property
    def is_root(self) -> bool:
        """Whether the stage observes data (images) rather than parent codes."""
        return self.observe == (DATA,)

    @property
    def kind(self) -> str:
        """``"image"`` for a root stage, ``"vector"`` for one observing codes."""
        return "image" if self.is_root else "vector"

    @property
    def parents(self) -> list[tuple[str, str]]:
        """``(stage, knowledge)`` of every observed code, in concatenation order."""
        return [] if self.is_root else [tuple(ref.split("/")) for ref in self.observe]

    @property
    def knowledge_names(self) -> list[str]:
        return [k.name for k in self.knowledge]

    def get(self, name: str) -> KnowledgeSpec:
        """The knowledge type called ``name`` (``KeyError`` if none)."""
        for k in self.knowledge:
            if k.name == name:
                return k
        raise KeyError(f"stage {self.name!r} has no knowledge {name!r}")

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group -> its knowledge names (mutually exclusive, for argmax accuracy)."""
        out: dict[str, list[str]] = {}
        for k in self.knowledge:
            if k.group is not None:
                out.setdefault(k.group, []).append(k.name)
        return out

    def to_dict(self) -> dict[str, Any]:
        observe = self.observe[0] if len(self.observe) == 1 else list(self.observe)
        out = {"observe": observe, "flow": self.flow.to_dict(),
               "code_flow": asdict(self.code_flow), "nets": asdict(self.nets),
               "knowledge": {k.name: k.to_dict() for k in self.knowledge}}
        for key, default in (("objective", "marginal"), ("label_weight", 0.0)):
            if getattr(self, key) != default:  # training choices: left out at their defaults
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class PhaseSpec:
    """One training phase. Give ``trains`` or ``freeze`` (or neither: all trains)."""

    name: str
    steps: int                             # optimiser steps of this phase
    trains: tuple[str, ...] | None = None  # ONLY these parts train
    freeze: tuple[str, ...] | None = None  # everything BUT these parts trains

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TrainSpec:
    """Training settings shared by the phases."""

    phases: tuple[PhaseSpec, ...] = (PhaseSpec("train", 1000),)   # run in order
    batch_size: int = 64
    lr: float = 1e-3                # Adam learning rate
    clip_grad: float = 4.0          # clip each tensor's gradient norm at this many times its running scale (0 = off)
    warmup: int = 500               # steps of linear learning-rate warm-up (per phase)
    lr_decay: str = "none"          # none | cosine | cooldown: down to 0 at the phase's end (cooldown: linearly, over its last 20 %)
    ema: float = 0.0                # decay of a running average of each phase's weights, put in place at its end (0 = off)
    device: str = "auto"            # auto | cpu | cuda | cuda:N | mps
    amp: bool = False               # bf16 autocast where numerically safe (CUDA only; pays off for wide nets)
    compile: bool | str = False     # torch.compile the step: false | true | a mode (COMPILE_MODES)
    log_every: int = 50             # steps between metric log lines (>= 1)
    checkpoint_every: int = 1000    # steps between checkpoints (0 = at the end of phases only)
    sample_every: int = 1000        # steps between sample grids (0 = never)
    out_dir: str = "runs"           # the run directory is out_dir/<graph name>
    cache_dir: str = "cache"        # HDF5 latent caches of frozen parts
    init_from: str | None = None    # checkpoint to load weights from; missing keys = new parts
    labelled_share: float | None = None  # with data.labelled: this share of every batch drawn from labelled examples
    threads: int | None = None      # CPU threads; None: `tzkgraph run` takes the cores not busy at its
                                    # start, the library leaves torch's setting (docs/performance.md)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "phases"}
        if self.lr_decay == "none":  # left out by default: older runs keep their identity
            del out["lr_decay"]
        if not self.ema:
            del out["ema"]
        if self.threads is None:
            del out["threads"]
        out["phases"] = [phase.to_dict() for phase in self.phases]
        return out


@dataclass(frozen=True)
class GraphSpec:
    """A validated graph of stages. Build it with ``load_spec`` / ``parse_spec``.

    Parts (what phases train or freeze): ``STAGE/flow`` (the t-flow) and
    ``STAGE/KNOWLEDGE`` (all of one knowledge type's networks and code flow)
    are atomic; ``STAGE`` and ``STAGE/GROUP`` name several at once.
    """

    name: str
    stages: tuple[StageSpec, ...]          # declaration order
    train: TrainSpec = field(default_factory=TrainSpec)
    data: DataSpec | None = None           # present whenever a stage observes data
    seed: int = 0
    source: str = field(default="<dict>", compare=False)   # the YAML file it came from

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name`` (``KeyError`` if none)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}")

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    @cached_property
    def dag(self) -> nx.DiGraph:
        """Nodes = stages (attrs ``kind``, ``knowledge``, ``t_shape``); edges parent -> child.

        Edge attrs: ``knowledges``, the tuple of the parent's knowledge types the
        child observes (usually one), and ``knowledge``, the same joined by ", "
        (a label ready to draw).
        """
        dag = nx.DiGraph()
        for stage in self.stages:
            dag.add_node(stage.name, kind=stage.kind, knowledge=tuple(stage.knowledge_names),
                         t_shape=self.t_shape(stage.name))
        for stage in self.stages:
            for parent, k in stage.parents:
                if dag.has_edge(parent, stage.name):
                    ks = dag.edges[parent, stage.name]["knowledges"] + (k,)
                else:
                    ks = (k,)
                dag.add_edge(parent, stage.name, knowledges=ks, knowledge=", ".join(ks))
        return dag

    @cached_property
    def order(self) -> list[str]:
        """Stages in topological order (parents first; ties in declaration order)."""
        index = {name: i for i, name in enumerate(self.stage_names)}
        return list(nx.lexicographical_topological_sort(self.dag, key=index.__getitem__))

    def parents(self, stage: str) -> list[tuple[str, str]]:
        """``(stage, knowledge)`` whose codes ``stage`` observes, in concatenation order."""
        return self.stage(stage).parents

    def children(self, stage: str, knowledge: str | None = None) -> list[str]:
        """Stages observing a code of ``stage`` (of ``knowledge`` only, when given)."""
        return [s.name for s in self.stages
                if any(p == stage and (knowledge is None or k == knowledge) for p, k in s.parents)]

    def prior_of(self, stage: str, knowledge: str | None) -> str | None:
        """The child stage that is the prior of ``stage/knowledge``'s code — its only observer,
        observing it alone — or ``None``: then the knowledge type's own ``p(c)`` is."""
        children = self.children(stage, knowledge) if knowledge is not None else []
        if len(children) == 1 and len(self.stage(children[0]).parents) == 1:
            return children[0]
        return None

    @property
    def roots(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.is_root]

    def t_shape(self, stage: str) -> tuple[int, ...]:
        """One observation's shape: ``(C, H, W)`` on image stages, else ``(sum of parent code_dims,)``."""
        spec = self.stage(stage)
        if spec.is_root:
            image = self.data.image
            return (image.channels, image.size, image.size)
        return (sum(self.stage(p).get(k).code_dim for p, k in spec.parents),)

    @cached_property
    def _reaching(self) -> dict[str, frozenset[tuple[str, int]]]:
        every = {(s.name, label) for s in self.data.sources
                 for label in range(DATASET_CLASSES[s.dataset])} if self.data else set()
        reach: dict[str, frozenset[tuple[str, int]]] = {}
        for name in self.order:
            seen = set(every)
            for parent, k in self.parents(name):
                rule = self.stage(parent).get(k).present
                seen &= {ex for ex in reach[parent] if rule.holds(*ex)}
            reach[name] = frozenset(seen)
        return reach

    def reaching(self, stage: str) -> frozenset[tuple[str, int]]:
        """The kinds of example, ``(source, label)``, that reach ``stage``.

        A root sees every example; a child sees those with ``e = 1`` in every
        parent knowledge it observes (the edges' rule: only present knowledge
        flows down).
        """
        return self._reaching[stage]

    def exclusive_groups(self, stage: str) -> dict[str, list[str]]:
        """The stage's groups whose knowledge types are mutually exclusive.

        Exclusive = no example reaching the stage has two of them present (the
        ten digits are; ``bit0..3`` are not). Argmax accuracy applies to these,
        over the examples with exactly one member present.
        """
        spec = self.stage(stage)
        out = {}
        for group, names in spec.groups.items():
            rules = [spec.get(k).present for k in names]
            if all(sum(rule.holds(*ex) for rule in rules) <= 1 for ex in self.reaching(stage)):
                out[group] = names
        return out

    def atomic_parts(self) -> list[str]:
        """Every ``STAGE/flow`` and ``STAGE/KNOWLEDGE``, stage by stage."""
        return [f"{s.name}/{part}" for s in self.stages for part in [FLOW_PART] + s.knowledge_names]

    def part_names(self) -> list[str]:
        """Every name a phase may use: atomic parts, ``STAGE`` and ``STAGE/GROUP``."""
        names = []
        for s in self.stages:
            names += [s.name] + [f"{s.name}/{p}" for p in [FLOW_PART] + s.knowledge_names]
            names += [f"{s.name}/{g}" for g in s.groups if g not in s.knowledge_names]
        return names

    def expand_part(self, part: str) -> list[str]:
        """The atomic parts that ``part`` names (``KeyError`` if it names none)."""
        stage_name, _, rest = part.partition("/")
        stage = self.stage(stage_name)
        if not rest:
            return [f"{stage.name}/{p}" for p in [FLOW_PART] + stage.knowledge_names]
        if rest == FLOW_PART or rest in stage.knowledge_names:
            return [part]
        if rest in stage.groups:
            return [f"{stage.name}/{k}" for k in stage.groups[rest]]
        raise KeyError(f"no part {part!r}")

    def trainable(self, phase: PhaseSpec) -> frozenset[str]:
        """The atomic parts that train in ``phase`` (the others are frozen)."""
        every = self.atomic_parts()
        if phase.trains is not None:
            return frozenset(p for name in phase.trains for p in self.expand_part(name))
        frozen = {p for name in phase.freeze or () for p in self.expand_part(name)}
        return frozenset(p for p in every if p not in frozen)

    def to_dict(self) -> dict[str, Any]:
        """The validated, expanded spec as plain YAML/JSON data (``parse_spec`` reads it back)."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        if self.data is not None:
            out["data"] = self.data.to_dict()
        out["stages"] = {stage.name: stage.to_dict() for stage in self.stages}
        out["train"] = self.train.to_dict()
        return out

    def canonical_json(self) -> str:
        """:func:`canonical_json` of :meth:`to_dict`."""
        return canonical_json(self.to_dict())
