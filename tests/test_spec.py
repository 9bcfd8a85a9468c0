"""Graph YAML loading and validation: shipped graphs, a corpus of bad graphs, present rules, --set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from tzkgraph.core.errors import ConfigError
from tzkgraph.spec.load import (PERMUTATIONS, CodeFlowSpec, GraphSpec, PresentRule, load_spec,
                           parse_spec)

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = sorted((ROOT / "graphs").glob("*.yaml"))
BAD = ROOT / "tests" / "fixtures" / "bad_graphs"

MINIMAL = {
    "name": "mini",
    "data": {"sources": [{"name": "mnist", "dataset": "mnist"}]},
    "stages": {
        "images": {"observe": "data",
                   "knowledge": {"mnist": {"code_dim": 4, "present": {"source": "mnist"}}}},
        "digits": {"observe": "images/mnist",
                   "knowledge": {"0..9": {"code_dim": 2, "present": {"label": "$name"}}}},
    },
}


def mini(**changes) -> dict:
    """A deep copy of MINIMAL with top-level keys replaced."""
    data = json.loads(json.dumps(MINIMAL))
    data.update(changes)
    return data


# --- the shipped graphs -----------------------------------------------------------------

def test_the_shipped_graphs_exist():
    assert {p.name for p in GRAPHS} >= {"mnist_digits.yaml", "mnist_binary.yaml", "tiny.yaml"}


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_every_graph_loads_and_round_trips(path):
    spec = load_spec(path)
    assert isinstance(spec, GraphSpec)
    assert spec.order and set(spec.order) == set(spec.stage_names)
    for phase in spec.train.phases:
        assert spec.trainable(phase)
    plain = spec.to_dict()
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain      # plain data only
    assert parse_spec(json.loads(json.dumps(plain)), "copy") == spec


def test_mnist_digits_is_the_dataset_to_digit_hierarchy():
    spec = load_spec(ROOT / "graphs" / "mnist_digits.yaml")
    assert spec.order == ["images", "digits"]
    assert spec.data.source_names == ["mnist", "fashion"]
    assert spec.t_shape("images") == (1, 32, 32)
    assert spec.t_shape("digits") == (10,)
    assert spec.parents("digits") == [("images", "mnist")]
    assert spec.children("images", "mnist") == ["digits"] and spec.children("images", "fashion") == []
    assert spec.stage("digits").label_weight > 0  # the labelled term (docs/objective.md)
    digits = spec.stage("digits")
    assert digits.knowledge_names == [str(i) for i in range(10)]
    assert all(k.group == "0..9" and k.code_dim == 2 for k in digits.knowledge)
    assert [k.present.label for k in digits.knowledge] == list(range(10))
    assert spec.exclusive_groups("digits") == {"0..9": [str(i) for i in range(10)]}
    assert spec.stage("images").flow.levels == 3 and digits.flow.levels is None
    assert spec.reaching("digits") == {("mnist", label) for label in range(10)}
    dag = spec.dag
    assert list(dag.edges(data="knowledge")) == [("images", "digits", "mnist")]
    pretrain, conditional = spec.train.phases
    assert spec.trainable(pretrain) == {"images/flow"}
    assert "images/flow" not in spec.trainable(conditional)
    assert {"images/mnist", "digits/flow", "digits/7"} <= spec.trainable(conditional)


def test_mnist_binary_bits_are_a_group_but_not_exclusive():
    spec = load_spec(ROOT / "graphs" / "mnist_binary.yaml")
    stage = spec.stage("images")
    assert stage.knowledge_names == ["bit0", "bit1", "bit2", "bit3"]
    assert [k.present.label_bit for k in stage.knowledge] == [0, 1, 2, 3]   # "$i" -> int
    assert stage.groups == {"bit0..3": stage.knowledge_names}
    assert spec.exclusive_groups("images") == {}


def test_tiny_is_small():
    spec = load_spec(ROOT / "graphs" / "tiny.yaml")
    assert spec.order == ["images", "digits"]
    assert 3 <= len(spec.stage("digits").knowledge) <= 10
    assert spec.stage("images").flow.hidden <= 32 and spec.train.batch_size <= 32
    assert sum(p.steps for p in spec.train.phases) <= 400


# --- the bad-graph corpus ---------------------------------------------------------------

# file -> (the YAML place the error names, a substring of what it says). FILE = the path.
BAD_GRAPHS = {
    "empty": ("FILE", "empty file"),
    "comments_only": ("FILE", "empty file"),
    "not_yaml": ("FILE", "not valid YAML (line 4, column 9)"),
    "top_level_list": ("FILE", "expected a mapping at the top level, got a list"),
    "duplicate_key": ("FILE", "not valid YAML (line 12, column 7): duplicate key 'mnist'"),
    "missing_stages": ("FILE", "missing required key 'stages'"),
    "missing_name": ("FILE", "missing required key 'name'"),
    "missing_data": ("FILE", "missing required key 'data' (stage 'images' observes data)"),
    "no_stages": ("stages", "expected at least one stage"),
    "cycle": ("stages", "cycle images -> digits -> images"),
    "self_loop": ("stages", "cycle digits -> digits"),
    "unknown_stage": ("stages.digits.observe",
                      "unknown stage 'imgs'; did you mean 'images'? (known: images, digits)"),
    "unknown_knowledge": ("stages.digits.observe",
                          "unknown knowledge 'mnst' of stage 'images'; did you mean 'mnist'?"),
    "unknown_source": ("stages.images.knowledge.fashion.present.source",
                       "unknown source 'fashon'; did you mean 'fashion'?"),
    "unknown_dataset": ("data.sources.1.dataset",
                        "unknown dataset 'kmnist'; did you mean 'mnist'? (known: mnist, fashion_mnist)"),
    "batch_size_string": ("train.batch_size", "expected an integer >= 1, got 'sixty-four'"),
    "bool_as_int": ("stages.images.flow.steps", "expected an integer >= 1, got true"),
    "negative_steps": ("train.phases.0.steps", "expected an integer >= 1, got -5"),
    "float_as_int": ("stages.images.knowledge.mnist.code_dim", "expected an integer >= 1, got 4.5"),
    "lr_not_number": ("train.lr", "expected a number > 0, got 'fast'"),
    "amp_not_bool": ("train.amp", "expected true or false, got 'yes please'"),
    "labelled_zero": ("data.labelled", "expected an integer >= 1, got 0"),
    "negative_clip_grad": ("train.clip_grad", "expected a number >= 0, got -1"),
    "unknown_objective": ("stages.digits.objective", "unknown objective 'papper'; did you mean 'paper'?"),
    "negative_label_weight": ("stages.digits.label_weight", "expected a number >= 0, got -3"),
    "parent_paper_objective": ("stages.images.objective", "stage 'digits' observes images/mnist, and a child "
                               "is the prior of the code it observes: that needs objective: marginal"),
    "volume_preserving_not_bool": ("stages.digits.code_flow.volume_preserving", "expected true or false, got 2"),
    "bad_device": ("train.device", "expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    "bad_permutation": ("stages.digits.flow.permutation", "unknown permutation 'lu2'; did you mean 'lu'?"),
    "bad_activation": ("stages.images.flow.activation", "unknown activation 'gelu'; did you mean 'relu'?"),
    "unknown_top_key": ("FILE", "unknown key 'trian'; did you mean 'train'?"),
    "unknown_stage_key": ("stages.images", "unknown key 'knowlege'; did you mean 'knowledge'?"),
    "unknown_flow_key": ("stages.images.flow", "unknown key 'step'; did you mean 'steps'?"),
    "unknown_train_key": ("train", "unknown key 'bacth_size'; did you mean 'batch_size'?"),
    "unknown_knowledge_key": ("stages.images.knowledge.mnist", "unknown key 'presnt'; did you mean 'present'?"),
    "unknown_present_key": ("stages.digits.knowledge.0..9.present", "unknown key 'labels'; did you mean 'label'?"),
    "size_not_divisible": ("stages.images.flow.levels", "3 levels need image size divisible by 8, got 30"),
    "size_too_small": ("data.image.size", "expected an integer in 28..64, got 16"),
    "levels_on_vector": ("stages.digits.flow.levels", "levels applies to image observations"),
    "prior_on_vector": ("stages.digits.flow.prior", "prior applies to image observations"),
    "bad_prior": ("stages.images.flow.prior", "unknown prior 'flat'"),
    "huge_code_dim": ("stages.images.knowledge.mnist.code_dim", "1000000000000 would need at least"),
    "huge_hidden": ("stages.images.nets.hidden", "100000000 would need at least"),
    "huge_batch": ("train.batch_size", "10000000000 would need at least"),
    "huge_steps": ("train.phases.0.steps", "is more than can be counted"),
    "channels_two": ("data.image.channels", "expected 1 (gray) or 3 (gray duplicated into RGB), got 2"),
    "code_dim_one": ("stages.digits.knowledge.0..9.code_dim", "expected an integer >= 2, got 1"),
    "label_too_big": ("stages.digits.knowledge.0..10.present.label", "label 10 does not exist"),
    "label_bit_too_big": ("stages.digits.knowledge.bit0..4.present.label_bit", "bit 4 is never set"),
    "never_present": ("stages.digits.knowledge.shoe.present", "never holds for 'shoe'"),
    "child_without_knowledge": ("stages.digits.knowledge", "needs at least one knowledge type"),
    "group_clash": ("stages.digits.knowledge.3", "knowledge '3' clashes with group '0..9'"),
    "group_overlap": ("stages.digits.knowledge.5..9", "knowledge '5' clashes with group '0..5'"),
    "empty_range": ("stages.digits.knowledge.9..0", "empty range 9..0"),
    "knowledge_named_flow": ("stages.images.knowledge.flow", "'flow' is reserved"),
    "mixed_observe": ("stages.digits.observe", "'data' cannot be mixed with parent codes"),
    "observe_twice": ("stages.digits.observe", "'images/mnist' is observed twice"),
    "observe_malformed": ("stages.digits.observe", "got 'images.mnist'"),
    "bad_stage_name": ("stages.my-digits", "expected a stage name matching"),
    "duplicate_source": ("data.sources.1.name", "duplicate source name 'mnist'"),
    "unknown_trains_part": ("train.phases.0.trains", "unknown part 'images/flw'; did you mean 'images/flow'?"),
    "unknown_freeze_stage": ("train.phases.1.freeze", "unknown part 'imgs'; did you mean 'images'?"),
    "trains_and_freeze": ("train.phases.0", "give trains (only these parts train) or freeze"),
    "nothing_trains": ("train.phases.1.freeze", "nothing would train in this phase"),
    "duplicate_phase": ("train.phases.1.name", "duplicate phase name 'pretrain'"),
    "phases_empty": ("train.phases", "expected a list of at least one phase, got []"),
}


def test_the_corpus_and_the_table_agree():
    assert {p.stem for p in BAD.glob("*.yaml")} == set(BAD_GRAPHS)


@pytest.mark.parametrize("name", sorted(BAD_GRAPHS))
def test_bad_graph_is_refused_naming_the_place(name):
    where, what = BAD_GRAPHS[name]
    path = BAD / f"{name}.yaml"
    where = str(path) if where == "FILE" else where
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    error = caught.value
    assert error.where == where
    assert what in error.what
    assert str(error) == f"{where}: {error.what}" and "\n" not in str(error)


def test_missing_file():
    with pytest.raises(ConfigError, match="nowhere.yaml: file not found"):
        load_spec(ROOT / "nowhere.yaml")


# --- present rules ----------------------------------------------------------------------

SOURCES = ["mnist", "fashion"]
SOURCE_INDEX = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0])
LABELS = torch.tensor([0, 3, 6, 7, 3, 8, 5, -1])


@pytest.mark.parametrize("rule, expected", [
    (PresentRule(), [1, 1, 1, 1, 1, 1, 1, 1]),
    (PresentRule(label=3), [0, 1, 0, 0, 1, 0, 0, 0]),
    (PresentRule(source="fashion"), [0, 0, 0, 0, 1, 1, 1, 0]),
    (PresentRule(label_bit=0), [0, 1, 0, 1, 1, 0, 1, 0]),     # odd labels; -1 is unknown
    (PresentRule(label_bit=2), [0, 0, 1, 1, 0, 0, 1, 0]),     # 4..7
    (PresentRule(source="mnist", label=3), [0, 1, 0, 0, 0, 0, 0, 0]),
    (PresentRule(source="mnist", label_bit=1), [0, 1, 1, 1, 0, 0, 0, 0]),
], ids=str)
def test_present_rule_evaluates(rule, expected):
    got = rule.evaluate(SOURCE_INDEX, LABELS, SOURCES)
    assert got.dtype == torch.bool and got.shape == (8,)
    assert got.tolist() == [bool(x) for x in expected]
    pairs = zip(SOURCE_INDEX.tolist(), LABELS.tolist())
    assert [rule.holds(SOURCES[s], label) for s, label in pairs] == got.tolist()


def test_present_rule_refuses_an_unknown_source():
    with pytest.raises(ValueError, match="'shoes'"):
        PresentRule(source="shoes").evaluate(SOURCE_INDEX, LABELS, SOURCES)


# --- group expansion, defaults, structure -----------------------------------------------

def test_defaults_and_code_flow_inheritance():
    data = mini()
    data["stages"]["digits"]["code_flow"] = {"steps": 2}
    data["stages"]["digits"]["knowledge"]["odd"] = {
        "code_dim": 3, "present": {"label_bit": 0}, "code_flow": {"hidden": 8}}
    spec = parse_spec(data)
    images, digits = spec.stage("images"), spec.stage("digits")
    assert images.flow.levels == 3 and images.flow.permutation == "shuffle"
    assert spec.data.image.size == 32 and spec.train.batch_size == 64 and spec.seed == 0
    assert images.get("mnist").code_flow == CodeFlowSpec()
    assert digits.get("3").code_flow == CodeFlowSpec(steps=2)
    assert digits.get("odd").code_flow == CodeFlowSpec(steps=2, hidden=8)
    assert digits.get("odd").group is None
    assert spec.exclusive_groups("digits") == {"0..9": [str(i) for i in range(10)]}


def test_expansion_substitutes_name_and_i():
    data = mini()
    data["stages"]["digits"]["knowledge"] = {
        "bit0..bit2": {"code_dim": 2, "present": {"label_bit": "$i"}},
        "d5..6": {"code_dim": "$i", "present": {"label": "$i"}},
    }
    digits = parse_spec(data).stage("digits")
    assert digits.knowledge_names == ["bit0", "bit1", "bit2", "d5", "d6"]
    assert [k.present.label_bit for k in digits.knowledge[:3]] == [0, 1, 2]
    assert [(k.code_dim, k.present.label) for k in digits.knowledge[3:]] == [(5, 5), (6, 6)]
    assert digits.groups == {"bit0..bit2": ["bit0", "bit1", "bit2"], "d5..6": ["d5", "d6"]}


def test_explicit_group_and_integer_keys():
    data = mini()
    data["stages"]["digits"]["knowledge"] = {
        3: {"code_dim": 2, "present": {"label": 3}, "group": "small"},
        "four": {"code_dim": 2, "present": {"label": 4}, "group": "small"},
    }
    spec = parse_spec(data)
    assert spec.stage("digits").groups == {"small": ["3", "four"]}
    assert spec.expand_part("digits/small") == ["digits/3", "digits/four"]
    assert "digits/small" in spec.part_names()


def test_a_root_stage_may_have_no_knowledge():
    data = mini(stages={"images": {"observe": "data"}})
    spec = parse_spec(data)
    assert spec.stage("images").knowledge == () and spec.atomic_parts() == ["images/flow"]


def test_several_parents_are_concatenated():
    data = mini()
    data["data"]["sources"].append({"dataset": "fashion_mnist"})       # name defaults to dataset
    data["stages"]["images"]["knowledge"]["odd"] = {"code_dim": 3, "present": {"label_bit": 0}}
    data["stages"]["digits"]["observe"] = ["images/mnist", "images/odd"]
    with pytest.raises(ConfigError, match="0..9.present: never holds for '0'"):
        parse_spec(data)                        # only odd digits reach it
    data["stages"]["digits"]["knowledge"] = {"1..3": {"code_dim": 2, "present": {"label": "$i"}}}
    with pytest.raises(ConfigError, match="1..3.present: never holds for '2'"):
        parse_spec(data)
    data["stages"]["digits"]["knowledge"] = {"one": {"code_dim": 2, "present": {"label": 1}},
                                             "three": {"code_dim": 2, "present": {"label": 3}}}
    spec = parse_spec(data)
    assert spec.data.source_names == ["mnist", "fashion_mnist"]
    assert spec.t_shape("digits") == (7,)
    assert spec.parents("digits") == [("images", "mnist"), ("images", "odd")]
    assert spec.dag.edges["images", "digits"]["knowledges"] == ("mnist", "odd")
    assert spec.dag.edges["images", "digits"]["knowledge"] == "mnist, odd"
    assert spec.reaching("digits") == {("mnist", label) for label in (1, 3, 5, 7, 9)}


def test_order_is_topological_then_declaration():
    data = mini()
    data["stages"] = {"b": {"observe": "a/x", "knowledge": {"y": {"code_dim": 2, "present": {}}}},
                      "a": {"observe": "data", "knowledge": {"x": {"code_dim": 2, "present": {}}}},
                      "c": {"observe": "a/x", "knowledge": {"z": {"code_dim": 2, "present": {}}}}}
    assert parse_spec(data).order == ["a", "b", "c"]


def test_phase_parts_expand():
    data = mini(train={"phases": [{"trains": ["digits"], "steps": 5},
                                  {"freeze": ["images", "digits/0..9"], "steps": 5}]})
    spec = parse_spec(data)
    first, second = spec.train.phases
    assert (first.name, second.name) == ("phase0", "phase1")
    assert spec.trainable(first) == {"digits/flow"} | {f"digits/{i}" for i in range(10)}
    assert spec.trainable(second) == {"digits/flow"}


def test_loose_number_spellings():
    spec = parse_spec(mini(train={"lr": "1e-3"}))      # pyyaml reads 1e-3 as a string
    assert spec.train.lr == 1e-3


def test_merge_keys_still_work():
    text = """
name: merged
data: {sources: [{dataset: mnist}]}
stages:
  images:
    observe: data
    flow: &small {steps: 1, hidden: 8}
    knowledge: {mnist: {code_dim: 2, present: {}}}
  digits:
    observe: images/mnist
    flow: {<<: *small, hidden: 4}
    knowledge: {"0..1": {code_dim: 2, present: {label: $i}}}
"""
    path = ROOT / "tests" / "fixtures" / "_merged.yaml"
    try:
        path.write_text(text)
        spec = load_spec(path)
    finally:
        path.unlink()
    assert (spec.stage("digits").flow.steps, spec.stage("digits").flow.hidden) == (1, 4)


def test_vocabularies_match_what_the_model_accepts():
    from tzkgraph.model import flows, terms
    from tzkgraph.model.flows.coupling import ACTIVATIONS as MODEL_ACTIVATIONS
    from tzkgraph.spec import types

    assert set(types.PERMUTATIONS) == set(flows.PERMUTATIONS) and PERMUTATIONS is types.PERMUTATIONS
    assert set(types.ACTIVATIONS) == set(MODEL_ACTIVATIONS)
    assert set(types.PRIORS) == set(flows.PRIORS)
    assert set(types.OBJECTIVES) == set(terms.OBJECTIVES)


def test_canonical_json_is_stable_and_sensitive():
    a, b = parse_spec(mini()), parse_spec(mini())
    assert a.canonical_json() == b.canonical_json()
    assert json.loads(a.canonical_json()) == a.to_dict()
    c = parse_spec(mini(seed=1))
    assert c.canonical_json() != a.canonical_json()


# --- --set overrides --------------------------------------------------------------------

DIGITS = ROOT / "graphs" / "mnist_digits.yaml"


def test_overrides_change_values():
    spec = load_spec(DIGITS, [
        "train.batch_size=16", "train.amp=false", "stages.images.flow.steps=2",
        "train.phases.0.steps=100", "stages.digits.knowledge.0..9.code_dim=3",
        "train.phases.1.freeze=[images/flow, images/fashion]", "train.init_from=",
        "stages.digits.knowledge.odd={code_dim: 2, present: {label_bit: 0}}",
        "data.image.bits=5", "seed=7",
    ])
    assert spec.train.batch_size == 16 and spec.train.amp is False
    assert spec.stage("images").flow.steps == 2
    assert spec.train.phases[0].steps == 100
    assert all(k.code_dim == 3 for k in spec.stage("digits").knowledge if k.group == "0..9")
    assert spec.train.phases[1].freeze == ("images/flow", "images/fashion")
    assert spec.train.init_from is None
    assert spec.stage("digits").knowledge_names[-1] == "odd"
    assert spec.data.image.bits == 5 and spec.seed == 7
    assert spec.t_shape("digits") == (10,)


def test_override_creates_missing_sections():
    spec = load_spec(ROOT / "graphs" / "mnist_binary.yaml", ["train.compile=true",
                                                             "stages.images.nets.hidden=8"])
    assert spec.train.compile is True and spec.stage("images").nets.hidden == 8


@pytest.mark.parametrize("override, where, what", [
    ("train.batch_size", "--set train.batch_size", "expected KEY=VALUE"),
    ("=3", "--set =3", "expected KEY=VALUE"),
    ("train.batch_size=abc", "train.batch_size", "expected an integer >= 1, got 'abc'"),
    ("train.batch_size=0", "train.batch_size", "expected an integer >= 1, got 0"),
    ("trian.batch_size=3", "--set trian.batch_size", "unknown key 'trian'; did you mean 'train'?"),
    ("train.bacth_size=3", "train", "unknown key 'bacth_size'; did you mean 'batch_size'?"),
    ("stages.imgs.flow.steps=2", "--set stages.imgs.flow.steps",
     "stages: unknown stage 'imgs'; did you mean 'images'?"),
    ("stages.images.flow.levels=6", "stages.images.flow.levels",
     "6 levels need image size divisible by 64, got 32"),
    ("train.phases.5.steps=1", "--set train.phases.5.steps", "a list of 2; expected an index 0..1"),
    ("train.lr=[1", "--set train.lr", "value is not valid YAML"),
    ("train.batch_size.x=1", "--set train.batch_size.x", "train.batch_size is 64"),
    ("stages.digits.observe=imgs/mnist", "stages.digits.observe", "unknown stage 'imgs'"),
])
def test_bad_overrides_are_refused(override, where, what):
    with pytest.raises(ConfigError) as caught:
        load_spec(DIGITS, [override])
    assert caught.value.where == where
    assert what in caught.value.what


def test_overrides_do_not_touch_the_input():
    from tzkgraph.spec.overrides import apply_overrides
    data = mini()
    apply_overrides(data, ["train.batch_size=2"], ["name", "data", "stages", "train"])
    assert "train" not in data


def test_flow_activation_swish_is_the_default_and_keeps_the_graph_identity():
    plain = load_spec("graphs/tiny.yaml")
    swish = load_spec("graphs/tiny.yaml", ["stages.images.flow.activation=swish"])
    relu = load_spec("graphs/tiny.yaml", ["stages.images.flow.activation=relu"])
    assert plain.to_dict() == swish.to_dict()  # old checkpoints and caches stay valid
    assert relu.stage("images").flow.activation == "relu" and relu.to_dict() != plain.to_dict()


def test_compile_takes_a_bool_or_a_torch_compile_mode():
    assert load_spec("graphs/tiny.yaml", ["train.compile=true"]).train.compile is True
    assert load_spec("graphs/tiny.yaml", ["train.compile=reduce-overhead"]).train.compile == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"train.compile: unknown compile setting 'fast'.*\(known: false, true, "):
        load_spec("graphs/tiny.yaml", ["train.compile=fast"])


def test_sizes_are_charged_what_they_imply():
    """The shipped graphs fit with room to spare; a size's charge grows with it, and the check
    names the key whose charge alone exceeds the memory it is given."""
    from tzkgraph.spec.sizes import check_sizes, size_charges

    spec = load_spec("graphs/mnist_digits.yaml")
    charges = {key: charge for key, _, charge in size_charges(spec, {})}
    assert max(charges.values()) < 2**30
    wider = load_spec("graphs/mnist_digits.yaml", ["stages.images.nets.hidden=128"])
    assert dict((k, c) for k, _, c in size_charges(wider, {}))["stages.images.nets.hidden"] > \
        charges["stages.images.nets.hidden"]
    check_sizes(spec, {}, memory=2**30)
    with pytest.raises(ConfigError) as caught:
        check_sizes(spec, {}, memory=2**20)
    assert caught.value.where in charges and "would need at least" in caught.value.what


def test_train_threads_is_a_positive_count_or_left_to_the_command():
    from tzkgraph.core.runtime import free_cores

    assert load_spec("graphs/tiny.yaml").train.threads is None
    assert "threads" not in load_spec("graphs/tiny.yaml").train.to_dict()
    assert load_spec("graphs/tiny.yaml", ["train.threads=1"]).train.threads == 1
    with pytest.raises(ConfigError) as caught:
        load_spec("graphs/tiny.yaml", ["train.threads=0"])
    assert caught.value.where == "train.threads"
    assert 1 <= free_cores() <= (os.cpu_count() or 1)
