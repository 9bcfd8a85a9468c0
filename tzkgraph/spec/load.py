"""Load a graph YAML (plus ``--set`` overrides), validate all of it, and return a GraphSpec."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import networkx as nx
import yaml

from tzkgraph.core.fields import (check_keys, read_bool, read_choice, read_float, read_int,
                              read_mapping, read_name, read_str, show, unknown)
from tzkgraph.core.errors import ConfigError
from tzkgraph.spec.overrides import apply_overrides
from tzkgraph.spec.present import DATASET_CLASSES, PresentRule, read_present
from tzkgraph.spec.sizes import check_sizes
from tzkgraph.spec.types import (ACTIVATIONS, OBJECTIVES, PERMUTATIONS, PRIORS, COMPILE_MODES, DATA, FLOW_PART, LR_DECAYS, CodeFlowSpec, DataSpec, FlowSpec, GraphSpec,
                                 ImageSpec, KnowledgeSpec, NetsSpec, PhaseSpec, SourceSpec,
                                 StageSpec, TrainSpec, canonical_json, spec_hash)

__all__ = [
    "CodeFlowSpec", "DataSpec", "FlowSpec", "GraphSpec", "ImageSpec", "KnowledgeSpec",
    "NetsSpec", "PERMUTATIONS", "PhaseSpec", "PresentRule", "SourceSpec", "StageSpec",
    "TrainSpec", "canonical_json", "load_spec", "parse_spec", "range_members", "spec_hash",
]

TOP_KEYS = ("name", "seed", "data", "stages", "train")
DATA_KEYS = ("root", "sources", "image", "dequant_seed", "limit", "labelled")
STAGE_KEYS = ("observe", "flow", "code_flow", "nets", "knowledge", "objective", "label_weight")
KNOWLEDGE_KEYS = ("code_dim", "present", "code_flow", "group")
FLOW_KEYS = ("levels", "steps", "hidden", "permutation", "activation", "prior")
CODE_FLOW_KEYS = ("steps", "hidden", "permutation", "volume_preserving")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainSpec))
PHASE_KEYS = ("name", "steps", "trains", "freeze")

_GRAPH_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")      # it names the run directory
_KNOWLEDGE_RE = re.compile(r"[A-Za-z0-9_]+")
_GROUP_NAME_RE = re.compile(r"[A-Za-z0-9_.]+")
# "0..9" -> 0..9; "bit0..3" (or "bit0..bit3") -> bit0..bit3; a prefix never ends in a digit.
_RANGE_RE = re.compile(r"(?P<prefix>(?:[A-Za-z_][A-Za-z0-9_]*[A-Za-z_])?|[A-Za-z_])"
                       r"(?P<a>\d+)\.\.(?P=prefix)?(?P<b>\d+)")
_REF_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)/([A-Za-z0-9_]+)")
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def range_members(key: str) -> list[str] | None:
    """The knowledge names a range key expands to (``"bit0..3"`` → ``bit0 … bit3``), else ``None``."""
    match = _RANGE_RE.fullmatch(key)
    if match is None:
        return None
    return [f"{match['prefix']}{i}" for i in range(int(match["a"]), int(match["b"]) + 1)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (nothing is evaluated) that refuses a key given twice in a mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> GraphSpec:
    """Reads a graph YAML, applies ``--set`` overrides, and validates it.

    Arguments:
        path: the YAML file.
        overrides: ``KEY=VALUE`` strings, e.g. ``["train.batch_size=16"]``.

    Returns:
        The validated spec (groups expanded, defaults filled in).

    Raises:
        ConfigError: anything wrong, naming the YAML place and what was expected.

    Example:
        >>> spec = load_spec("graphs/mnist_digits.yaml", ["train.batch_size=16"])
        >>> spec.order, spec.t_shape("digits")
        (['images', 'digits'], (10,))
    """
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(where, "file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(where, f"cannot read: {error}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        raise ConfigError(where, f"not valid YAML (line {mark.line + 1}, column {mark.column + 1}): "
                                 f"{error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(where, f"not valid YAML: {error}") from None
    _check_top(data, where)
    return parse_spec(apply_overrides(data, overrides, TOP_KEYS), where)


def parse_spec(data: Any, source: str = "<dict>") -> GraphSpec:
    """Validates raw YAML data (a mapping) into a :class:`GraphSpec`.

    Rules beyond types and references (the schema is the dataclasses' fields):
    a stage with no knowledge is allowed only as a root (a plain density model
    of its data); ``code_dim >= 2``, since code flows use affine coupling (so
    a vector stage always observes >= 2 dims); a stage observing several codes
    sees the examples with all of those knowledge types present; every present
    rule must hold for some example that reaches its stage; groups are range
    keys (``"0..9"``) or explicit ``group:`` names.

    Arguments:
        data: what ``yaml.safe_load`` gave (or ``GraphSpec.to_dict()``).
        source: where it came from, for top-level messages.

    Raises:
        ConfigError: anything wrong, naming the YAML place and what was expected.
    """
    _check_top(data, source)
    check_keys(data, source, TOP_KEYS, required=("name", "stages"))
    name = read_str(data["name"], "name")
    if not _GRAPH_NAME_RE.fullmatch(name):
        raise ConfigError("name", f"expected letters, digits, '_', '.', '-' (it names the run "
                                  f"directory), got {show(name)}")
    seed = read_int(data.get("seed", 0), "seed", 0)
    raw_stages = read_mapping(data["stages"], "stages")
    if not raw_stages:
        raise ConfigError("stages", "expected at least one stage")

    if data.get("data") is not None:
        data_spec = _read_data(data["data"])
    else:
        roots = [str(n) for n, s in raw_stages.items() if isinstance(s, dict) and (
            s.get("observe") == DATA or isinstance(s.get("observe"), list) and DATA in s["observe"])]
        if roots:
            raise ConfigError(source, f"missing required key 'data' (stage {roots[0]!r} observes data)")
        data_spec = None
    sources = {s.name: s.dataset for s in data_spec.sources} if data_spec else {}

    stages, places = [], {}
    for stage_name, raw in raw_stages.items():
        stage, knowledge_places = _read_stage(stage_name, raw, data_spec, sources)
        stages.append(stage)
        places.update(knowledge_places)
    spec = GraphSpec(name, tuple(stages), TrainSpec(), data_spec, seed, source)
    _check_graph(spec, places)
    train = _read_train(data.get("train"), spec)
    _check_priors(spec)
    spec = dataclasses.replace(spec, train=train)
    check_sizes(spec, places)
    return spec


def _check_priors(spec: GraphSpec) -> None:
    """A child is the prior of the code it observes: its parent integrates that code out."""
    for stage in spec.stages:
        for parent, k in stage.parents:
            if spec.stage(parent).objective != "marginal":
                raise ConfigError(f"stages.{parent}.objective", f"stage {stage.name!r} observes "
                                  f"{parent}/{k}, and a child is the prior of the code it observes: "
                                  "that needs objective: marginal")


def _check_top(data: Any, where: str) -> None:
    if data is None:
        raise ConfigError(where, "empty file: expected a mapping with 'name' and 'stages'")
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping at the top level, got {show(data)}")


def _read_data(value: Any) -> DataSpec:
    raw = read_mapping(value, "data", DATA_KEYS, required=("sources",))
    if not isinstance(raw["sources"], list) or not raw["sources"]:
        raise ConfigError("data.sources", f"expected a list of at least one "
                                          f"{{name, dataset}}, got {show(raw['sources'])}")
    sources: list[SourceSpec] = []
    for i, item in enumerate(raw["sources"]):
        where = f"data.sources.{i}"
        item = read_mapping(item, where, ("name", "dataset"), required=("dataset",))
        dataset = read_choice(item["dataset"], f"{where}.dataset", list(DATASET_CLASSES), "dataset")
        name = read_name(item.get("name", dataset), f"{where}.name", "source name")
        if name in [s.name for s in sources]:
            raise ConfigError(f"{where}.name", f"duplicate source name {name!r}")
        sources.append(SourceSpec(name, dataset))
    image_raw = read_mapping(raw.get("image"), "data.image", ("size", "channels", "bits"))
    default = ImageSpec()
    channels = read_int(image_raw.get("channels", default.channels), "data.image.channels")
    if channels not in (1, 3):
        raise ConfigError("data.image.channels", f"expected 1 (gray) or 3 (gray duplicated into "
                          f"RGB), got {channels}: {'/'.join(DATASET_CLASSES)} images are gray")
    image = ImageSpec(read_int(image_raw.get("size", default.size), "data.image.size", 28, 64),
                      channels, read_int(image_raw.get("bits", default.bits), "data.image.bits", 1, 8))
    limit, labelled = raw.get("limit"), raw.get("labelled")
    return DataSpec(tuple(sources), image, read_str(raw.get("root"), "data.root", nullable=True),
                    read_int(raw.get("dequant_seed", 0), "data.dequant_seed", 0),
                    None if limit is None else read_int(limit, "data.limit", 1),
                    None if labelled is None else read_int(labelled, "data.labelled", 1))


def _read_stage(name: Any, value: Any, data: DataSpec | None,
                sources: Mapping[str, str]) -> tuple[StageSpec, dict]:
    """One stage; also returns the YAML place of each knowledge type."""
    where = f"stages.{name}"
    read_name(name, where, "stage name")
    if name == DATA:
        raise ConfigError(where, "'data' is reserved (observe: data); name the stage otherwise")
    raw = read_mapping(value, where, STAGE_KEYS, required=("observe",))
    observe = _read_observe(raw["observe"], f"{where}.observe")
    is_root = observe == (DATA,)

    flow_raw = read_mapping(raw.get("flow"), f"{where}.flow", FLOW_KEYS)
    default = FlowSpec()
    levels = prior = None
    if is_root:
        prior = read_choice(flow_raw.get("prior", "learned"), f"{where}.flow.prior", PRIORS, "prior")
        levels = read_int(flow_raw.get("levels", 3), f"{where}.flow.levels", 1)
        size = data.image.size
        if size % 2**levels:
            raise ConfigError(f"{where}.flow.levels", f"{levels} levels need image size divisible "
                                                      f"by {2**levels}, got {size} (data.image.size)")
    else:
        for key in ("levels", "prior"):
            if flow_raw.get(key) is not None:
                raise ConfigError(f"{where}.flow.{key}", f"{key} applies to image observations; stage "
                                  f"{name!r} observes codes ({', '.join(observe)}), a vector")
    flow = FlowSpec(read_int(flow_raw.get("steps", default.steps), f"{where}.flow.steps", 1),
                    read_int(flow_raw.get("hidden", default.hidden), f"{where}.flow.hidden", 1),
                    read_choice(flow_raw.get("permutation", default.permutation),
                                f"{where}.flow.permutation", PERMUTATIONS, "permutation"),
                    levels, _read_activation(flow_raw.get("activation"), f"{where}.flow.activation"),
                    prior)
    code_flow = _read_code_flow(raw.get("code_flow"), f"{where}.code_flow", CodeFlowSpec())
    nets_raw = read_mapping(raw.get("nets"), f"{where}.nets", ("hidden",))
    nets = NetsSpec(read_int(nets_raw.get("hidden", NetsSpec().hidden), f"{where}.nets.hidden", 1))

    knowledge, places = _read_knowledge_map(raw.get("knowledge"), f"{where}.knowledge",
                                            code_flow, sources)
    if not knowledge and not is_root:
        raise ConfigError(f"{where}.knowledge", "a stage observing codes needs at least one "
                          "knowledge type (only a root stage may be a plain density model of data)")
    groups = {k.group for k in knowledge if k.group is not None}
    for k in knowledge:
        if k.name in groups:
            raise ConfigError(places[k.name], f"knowledge {k.name!r} has the name of a group")
    objective = read_choice(raw.get("objective", "marginal"), f"{where}.objective", OBJECTIVES, "objective")
    label_weight = read_float(raw.get("label_weight", 0.0), f"{where}.label_weight", ge=0.0)
    if label_weight and objective != "marginal":
        raise ConfigError(f"{where}.label_weight", "applies to objective: marginal (its labelled term "
                                                   "is log p(e|t))")
    stage = StageSpec(name, observe, tuple(knowledge), flow, code_flow, nets, objective, label_weight)
    return stage, {(name, k): place for k, place in places.items()}


def _read_observe(value: Any, where: str) -> tuple[str, ...]:
    refs = [value] if isinstance(value, str) else value
    expected = "expected 'data', 'STAGE/KNOWLEDGE' or a list of 'STAGE/KNOWLEDGE'"
    if not isinstance(refs, list) or not refs:
        raise ConfigError(where, f"{expected}, got {show(value)}")
    for ref in refs:
        if not isinstance(ref, str) or (ref != DATA and not _REF_RE.fullmatch(ref)):
            raise ConfigError(where, f"{expected}, got {show(ref)}")
        if refs.count(ref) > 1:
            raise ConfigError(where, f"{ref!r} is observed twice")
    if DATA in refs and len(refs) > 1:
        raise ConfigError(where, "'data' cannot be mixed with parent codes: a stage observes "
                                 "either images or codes")
    return tuple(refs)


def _read_code_flow(value: Any, where: str, base: CodeFlowSpec) -> CodeFlowSpec:
    raw = read_mapping(value, where, CODE_FLOW_KEYS)
    return CodeFlowSpec(read_int(raw.get("steps", base.steps), f"{where}.steps", 1),
                        read_int(raw.get("hidden", base.hidden), f"{where}.hidden", 1),
                        read_choice(raw.get("permutation", base.permutation),
                                    f"{where}.permutation", PERMUTATIONS, "permutation"),
                        read_bool(raw.get("volume_preserving", base.volume_preserving),
                                  f"{where}.volume_preserving"))


def _read_activation(value: Any, where: str) -> str | None:
    """``None`` for swish, the default (so graphs written before the setting keep their
    identity, and their checkpoints and caches stay valid); else the activation."""
    if value is None:
        return None
    activation = read_choice(value, where, ACTIVATIONS, "activation")
    return None if activation == "swish" else activation


def _read_knowledge_map(value: Any, where: str, code_flow: CodeFlowSpec,
                        sources: Mapping[str, str]) -> tuple[list[KnowledgeSpec], dict[str, str]]:
    """Knowledge types in order, groups expanded; and each one's YAML place."""
    raw = read_mapping(value, where)
    knowledge: list[KnowledgeSpec] = []
    places: dict[str, str] = {}
    defined: dict[str, str] = {}   # name -> what defined it (for clash messages)
    for key, entry in raw.items():
        key = str(key)             # an unquoted `3:` is read as an integer
        place = f"{where}.{key}"
        match = _RANGE_RE.fullmatch(key)
        if match:
            a, b, prefix = int(match["a"]), int(match["b"]), match["prefix"]
            if a > b:
                raise ConfigError(place, f"empty range {a}..{b} (expected {a} <= {b})")
            if isinstance(entry, dict) and "group" in entry:
                raise ConfigError(f"{place}.group", f"the range key {key!r} is the group already")
            members = [(f"{prefix}{i}", _substitute(entry, f"{prefix}{i}", i)) for i in range(a, b + 1)]
            group, origin = key, f"group {key!r}"
        else:
            if not _KNOWLEDGE_RE.fullmatch(key):
                raise ConfigError(place, f"expected a knowledge name of letters, digits and '_' "
                                         f"(or a range such as '0..9' or 'bit0..3'), got {key!r}")
            members, group, origin = [(key, entry)], None, f"knowledge {key!r}"
        for name, member in members:
            if name == FLOW_PART:
                raise ConfigError(place, "'flow' is reserved: STAGE/flow names the stage's t-flow")
            if name in defined:
                raise ConfigError(place, f"knowledge {name!r} clashes with {defined[name]}")
            defined[name], places[name] = origin, place
            knowledge.append(_read_knowledge(name, member, place, group, code_flow, sources))
    return knowledge, places


def _substitute(value: Any, name: str, i: int) -> Any:
    """``"$i"`` -> ``i`` (an int), ``"$name"`` -> ``name``, inside strings too; deep."""
    if isinstance(value, dict):
        return {k: _substitute(v, name, i) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, name, i) for v in value]
    if value == "$i":
        return i
    if isinstance(value, str):
        return value.replace("$name", name).replace("$i", str(i))
    return value


def _read_knowledge(name: str, value: Any, where: str, group: str | None,
                    code_flow: CodeFlowSpec, sources: Mapping[str, str]) -> KnowledgeSpec:
    from_text = group is not None   # "$name" substituted by expansion may stand for an int
    raw = read_mapping(value, where, KNOWLEDGE_KEYS, required=("code_dim", "present"))
    code_dim = read_int(raw["code_dim"], f"{where}.code_dim", 1, None, from_text)
    if code_dim < 2:
        raise ConfigError(f"{where}.code_dim", "expected an integer >= 2, got 1: a code flow "
                          "couples one half of the code on the other, so it needs 2 dimensions")
    present = read_present(raw["present"], f"{where}.present", sources, from_text)
    if "group" in raw:
        group = read_str(raw["group"], f"{where}.group")
        if not _GROUP_NAME_RE.fullmatch(group) or group == FLOW_PART:
            raise ConfigError(f"{where}.group", f"expected a group name of letters, digits, "
                                                f"'_' and '.' (not 'flow'), got {group!r}")
    return KnowledgeSpec(name, code_dim, present, group,
                         _read_code_flow(raw.get("code_flow"), f"{where}.code_flow", code_flow))


def _check_graph(spec: GraphSpec, places: dict) -> None:
    """References, acyclicity, and that every present rule can hold where it is."""
    names = spec.stage_names
    for stage in spec.stages:
        for parent, k in stage.parents:
            where = f"stages.{stage.name}.observe"
            if parent not in names:
                raise ConfigError(where, unknown("stage", parent, names))
            if k not in spec.stage(parent).knowledge_names:
                raise ConfigError(where, unknown("knowledge", k, spec.stage(parent).knowledge_names,
                                                 of=f"stage {parent!r}"))
    try:
        cycle = nx.find_cycle(spec.dag)
    except nx.NetworkXNoCycle:
        pass
    else:
        loop = [u for u, _ in cycle]
        start = min(range(len(loop)), key=lambda i: names.index(loop[i]))
        loop = loop[start:] + loop[:start]
        raise ConfigError("stages", "cycle " + " -> ".join(loop + [loop[0]]))

    if spec.data is not None and spec.data.labelled is not None:
        for stage in spec.stages:
            for parent, k in stage.parents:
                rule = spec.stage(parent).get(k).present
                if rule.label is not None or rule.label_bit is not None:
                    raise ConfigError(f"stages.{stage.name}.observe", f"{parent}/{k} is present by "
                                      "label, and with data.labelled most labels are unknown: an edge "
                                      "needs a knowledge type known for every example (e.g. a source)")
    for name in spec.order:
        stage, seen = spec.stage(name), spec.reaching(name)
        if not seen:
            raise ConfigError(f"stages.{name}.observe", "no example reaches this stage: none has "
                              "every observed knowledge present")
        for k in stage.knowledge:
            if not any(k.present.holds(*ex) for ex in seen):
                origin = "the data" if stage.is_root else ", ".join(stage.observe)
                raise ConfigError(f"{places[name, k.name]}.present", f"never holds for "
                                  f"{k.name!r}: stage {name!r} sees only examples of {origin} "
                                  f"(sources {', '.join(sorted({s for s, _ in seen}))})")


def _read_train(value: Any, spec: GraphSpec) -> TrainSpec:
    raw = read_mapping(value, "train", TRAIN_KEYS)
    d = TrainSpec()
    get = lambda key: raw.get(key, getattr(d, key))    # noqa: E731
    device = get("device")
    if not isinstance(device, str) or not _DEVICE_RE.fullmatch(device):
        raise ConfigError("train.device", f"expected auto, cpu, cuda, cuda:N or mps, got {show(device)}")
    phases = d.phases
    if "phases" in raw:
        if not isinstance(raw["phases"], list) or not raw["phases"]:
            raise ConfigError("train.phases", f"expected a list of at least one phase, "
                                              f"got {show(raw['phases'])}")
        phases = tuple(_read_phase(p, i, spec) for i, p in enumerate(raw["phases"]))
        names = [p.name for p in phases]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"train.phases.{i}.name", f"duplicate phase name {name!r}")
    return TrainSpec(
        phases=phases,
        batch_size=read_int(get("batch_size"), "train.batch_size", 1),
        lr=read_float(get("lr"), "train.lr", gt=0),
        clip_grad=read_float(get("clip_grad"), "train.clip_grad", ge=0),
        warmup=read_int(get("warmup"), "train.warmup", 0),
        lr_decay=read_choice(get("lr_decay"), "train.lr_decay", LR_DECAYS, "learning-rate decay"),
        ema=_read_ema(get("ema")),
        device=device,
        amp=read_bool(get("amp"), "train.amp"),
        compile=read_choice(get("compile"), "train.compile", COMPILE_MODES, "compile setting"),
        log_every=read_int(get("log_every"), "train.log_every", 1),
        checkpoint_every=read_int(get("checkpoint_every"), "train.checkpoint_every", 0),
        sample_every=read_int(get("sample_every"), "train.sample_every", 0),
        out_dir=read_str(get("out_dir"), "train.out_dir"),
        cache_dir=read_str(get("cache_dir"), "train.cache_dir"),
        init_from=read_str(get("init_from"), "train.init_from", nullable=True),
        labelled_share=_read_labelled_share(get("labelled_share"), spec),
        threads=None if get("threads") is None else read_int(get("threads"), "train.threads", 1, 4096),
    )


def _read_ema(value: Any) -> float:
    decay = read_float(value, "train.ema", ge=0)
    if decay >= 1:
        raise ConfigError("train.ema", f"expected a decay < 1 (0: no average; 0.999: about the last "
                          f"1000 steps), got {decay:g}")
    return decay


def _read_labelled_share(value: Any, spec: GraphSpec) -> float | None:
    if value is None:
        return None
    share = read_float(value, "train.labelled_share", gt=0)
    if share >= 1:
        raise ConfigError("train.labelled_share", f"expected a number < 1 (the labelled share of a "
                          f"batch), got {share:g}")
    if spec.data is None or spec.data.labelled is None:
        raise ConfigError("train.labelled_share", "needs data.labelled (which labels are known)")
    return share


def _read_phase(value: Any, i: int, spec: GraphSpec) -> PhaseSpec:
    where = f"train.phases.{i}"
    raw = read_mapping(value, where, PHASE_KEYS, required=("steps",))
    name = read_name(raw.get("name", f"phase{i}"), f"{where}.name", "phase name")
    steps = read_int(raw["steps"], f"{where}.steps", 1)
    given = [key for key in ("trains", "freeze") if raw.get(key) is not None]
    if len(given) == 2:
        raise ConfigError(where, "give trains (only these parts train) or freeze (all but these "
                                 "train), not both")
    lists = {}
    for key in given:
        parts = [raw[key]] if isinstance(raw[key], str) else raw[key]
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise ConfigError(f"{where}.{key}", f"expected a list of parts (STAGE, STAGE/flow, "
                                                f"STAGE/KNOWLEDGE), got {show(raw[key])}")
        for part in parts:
            if part not in spec.part_names():
                raise ConfigError(f"{where}.{key}", unknown("part", part, spec.part_names()))
        lists[key] = tuple(parts)
    phase = PhaseSpec(name, steps, lists.get("trains"), lists.get("freeze"))
    if not spec.trainable(phase):
        raise ConfigError(f"{where}.{given[0]}", "nothing would train in this phase")
    return phase
