"""The knowledge graph's picture (``tzkgraph graph``): a group is one node, it shows the figures
that say something (argmax and balanced accuracy, sample accuracy), and it stays compact."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from tzkgraph.cli import main
from tzkgraph.data.dataset import load_graph_data
from tzkgraph.graph.model import TzKGraph
from tzkgraph.spec.load import load_spec
from tzkgraph.use.evaluate import evaluate
from tzkgraph.use.viz import knowledge_graph, to_dot



def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def tiny_report() -> dict:
    """A hand-made eval report of graphs/tiny.yaml: 0.90 plain accuracy everywhere, which is chance
    for a digit (one positive in ten) — the picture must show the balanced accuracy instead."""
    digits = {str(d): {"encoder_accuracy": 0.9, "encoder_balanced_accuracy": 0.5 + 0.05 * d,
                       "bits_per_dim": 1.0 + 0.25 * d} for d in range(5)}
    return {"graph": "tiny", "split": "test", "examples": 300, "step": 70, "stages": {
        "images": {"bits_per_dim": 4.5, "groups": {},
                   "knowledge": {"mnist": {"encoder_accuracy": 1.0, "encoder_balanced_accuracy": 0.97,
                                           "bits_per_dim": 4.25}}},
        "digits": {"bits_per_dim": 2.0, "knowledge": digits,
                   "groups": {"0..4": {"members": list(digits), "exclusive": True, "examples": 150,
                                       "argmax_accuracy": 0.4321, "decoder_argmax_accuracy": 0.3456}}}}}


def test_a_group_is_one_node_with_its_argmax_accuracy_and_its_types_balanced_accuracy(tmp_path):
    spec = load_spec("graphs/tiny.yaml", [f"train.out_dir={tmp_path}"])
    bare = knowledge_graph(spec)
    knowledge = {n: d for n, d in bare.nodes(data=True) if d["kind"] == "knowledge"}
    assert sorted(knowledge) == ["digits/0..4", "images/mnist"]
    assert knowledge["digits/0..4"]["members"] == ["0", "1", "2", "3", "4"]
    assert knowledge["digits/0..4"]["label"].split("\n") == [
        "0..4: 5 types, c ∈ R^2 each", "present: label=$name", "trains in: conditional"]
    assert bare.edges["images/mnist", "digits"]["label"] == "code → t"

    graph = knowledge_graph(spec, tiny_report())
    group, mnist = graph.nodes["digits/0..4"]["label"], graph.nodes["images/mnist"]["label"]
    assert "argmax acc 0.43 (decoder 0.35)" in group
    assert "balanced acc 0.50–0.70 per type" in group and "1.00–2.00 bits/dim" in group
    assert "balanced acc 0.97 · 4.25 bits/dim" in mnist
    assert "0.90" not in group and "1.00 ·" not in mnist  # the plain accuracies are not shown
    assert "sample acc" not in group  # no judge report
    report = tiny_report()  # every image is MNIST: mnist's e is 1 on all, its balanced accuracy undefined
    report["stages"]["images"].update(examples=300, knowledge={"mnist": {
        "present": 300, "encoder_accuracy": 1.0, "encoder_balanced_accuracy": None, "bits_per_dim": 4.25}})
    assert "acc 1.00 (e=1 on all) · 4.25 bits/dim" in knowledge_graph(spec, report).nodes["images/mnist"]["label"]

    dot = to_dot(spec, tiny_report())
    assert '"digits/0..4" [' in dot and '"digits" -> "digits/0..4" [arrowhead=none]' in dot
    assert not any(f'"digits/{d}"' in dot for d in range(5))
    assert "argmax acc 0.43 (decoder 0.35)" in dot and "0.5 = chance" in dot


def test_a_code_of_a_group_member_leaves_the_groups_node(tmp_path):
    from tzkgraph.spec.load import parse_spec

    spec = parse_spec({
        "name": "member", "data": {"sources": [{"name": "mnist", "dataset": "mnist"}], "limit": 100},
        "stages": {"images": {"observe": "data", "flow": {"levels": 1, "steps": 1, "hidden": 8},
                              "knowledge": {"bit0..3": {"code_dim": 2, "present": {"label_bit": "$i"}}}},
                   "child": {"observe": ["images/bit1", "images/bit2"], "flow": {"steps": 1, "hidden": 8},
                             "knowledge": {"x": {"code_dim": 2, "present": {}}}}},
        "train": {"out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}})
    graph = knowledge_graph(spec)
    assert "present: label_bit=$i" in graph.nodes["images/bit0..3"]["label"]
    assert graph.edges["images/bit0..3", "child"]["label"] == "codes of bit1, bit2 → t"
    assert '"images/bit0..3" -> "child" [style=bold, label="codes of bit1, bit2 → t"]' in to_dot(spec)


def test_balanced_accuracy_of_one_positive_in_ten(tmp_path):
    """The first ten MNIST test digits hold one 0: predicting "no 0" everywhere is 0.9 accurate,
    and 0.5 balanced; catching the 0 with one false alarm is (1 + 8/9)/2."""
    spec = load_spec("graphs/tiny.yaml", ["data.limit=10", f"train.out_dir={tmp_path}"])
    data = load_graph_data(spec.data, "test")
    zero = data.labels == 0
    assert int(zero.sum()) == 1 and len(data) == 10
    model = TzKGraph(spec)
    stage = model.stages["digits"]
    false_alarm = torch.arange(10) == int((~zero).nonzero()[0])
    for said in (torch.zeros(10, dtype=torch.bool), zero | false_alarm):
        predictions = torch.zeros(10, len(stage.names))
        predictions[:, stage.names.index("0")] = said.float()

        def discriminate(t, z=None, predictions=predictions):  # TzKStage.discriminate(t, z)
            assert len(t) == 10  # every example reaches digits, in order, in one batch
            return predictions

        stage.discriminate = discriminate
        figures = evaluate(model, data, progress=False, iw_samples=2, code_samples=1)["stages"]["digits"]
        zero_figures = figures["knowledge"]["0"]
        assert zero_figures["encoder_accuracy"] == pytest.approx(0.9)
        expected = 0.5 if not said.any() else (1 + 8 / 9) / 2
        assert zero_figures["encoder_balanced_accuracy"] == pytest.approx(expected)
        label = knowledge_graph(spec, {"stages": {"digits": figures}}).nodes["digits/0..4"]["label"]
        # the other types, never said: 0.5 each (3, with no positive, has none)
        assert ("balanced acc 0.50 per type" if not said.any() else "balanced acc 0.50–0.94 per type") in label


def write_run(run: Path, report: dict, judge: dict | None) -> None:
    run.mkdir(parents=True)
    (run / "eval-test.json").write_text(json.dumps(report))
    if judge is not None:
        (run / "judge.json").write_text(json.dumps(judge))


def test_the_graph_command_shows_the_sample_accuracy_of_judge_json(tmp_path):
    args = ["graph", "graphs/tiny.yaml", "--set", f"train.out_dir={tmp_path}", "-o", str(tmp_path / "g.dot")]
    write_run(tmp_path / "tiny", tiny_report(), None)
    assert main(args) == 0
    dot = (tmp_path / "g.dot").read_text()
    assert "argmax acc 0.43" in dot and "sample acc" not in dot
    judge = {"graph": "tiny", "n": 100, "paths": {"digits/0..4": {
        "T=1": {"accuracy": 0.612, "per_digit": {}}, "T=0.7": {"accuracy": 0.734, "per_digit": {}},
        "T=0": {"accuracy": 0.9, "per_digit": {}}}}}
    (tmp_path / "tiny" / "judge.json").write_text(json.dumps(judge))
    assert main(args) == 0
    dot = (tmp_path / "g.dot").read_text()
    assert "sample acc 0.73 (T=0.7), 0.61 (T=1)" in dot and "100 per digit, judge.json" in dot
    (tmp_path / "tiny" / "judge.json").write_text("{not json")
    assert main(args) == 0 and "sample acc" not in (tmp_path / "g.dot").read_text()


def test_the_mnist_digits_picture_is_compact(tmp_path):
    """It was 2246×721 px, mostly empty (a node per digit); now ~450×740 with every figure on it."""
    out = tmp_path / "g.png"
    args = ["graph", "graphs/mnist_digits.yaml", "--set", f"train.out_dir={tmp_path}", "-o", str(out)]
    assert main(args) == 0
    width, height = png_size(out)
    assert 250 <= width <= 550 and 350 <= height <= 700  # structure only: 395×553 when measured
    digits = {str(d): {"encoder_accuracy": 0.9, "encoder_balanced_accuracy": 0.75, "bits_per_dim": -0.21}
              for d in range(10)}
    kind = {"encoder_accuracy": 1.0, "encoder_balanced_accuracy": 0.998, "bits_per_dim": 1.87}
    report = {"split": "test", "examples": 20000, "step": 6000, "stages": {
        "images": {"bits_per_dim": 2.82, "knowledge": {"mnist": kind, "fashion": kind}, "groups": {}},
        "digits": {"bits_per_dim": 0.02, "knowledge": digits, "groups": {"0..9": {
            "exclusive": True, "argmax_accuracy": 0.41, "decoder_argmax_accuracy": 0.35}}}}}
    judge = {"n": 100, "paths": {"digits/0..9": {"T=1": {"accuracy": 0.14}, "T=0.7": {"accuracy": 0.21}}}}
    write_run(tmp_path / "mnist_digits", report, judge)
    assert main(args) == 0
    width, height = png_size(out)
    assert 300 <= width <= 600 and 450 <= height <= 950  # 450×736 when measured
