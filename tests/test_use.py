"""Using a trained graph: eval, sample, graph and interpolate, on the command line and as a library."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

from tzkgraph.cli import main
from tzkgraph.data.dataset import load_graph_data
from tzkgraph.core.runtime import seeded
from tzkgraph.use.evaluate import evaluate, evaluate_run, load_trained
from tzkgraph.graph.model import TzKGraph
from tzkgraph.use.sampling import interpolate, sample_path, valid_paths, write_sample_grids
from tzkgraph.spec.load import load_spec, parse_spec
from tzkgraph.training.train import run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"




def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from a PNG's signature and IHDR chunk (asserting both are there)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def grid_side(count: int, image: int = 32, padding: int = 2) -> int:
    """Pixels along one side of a torchvision grid of ``count`` images."""
    return count * (image + padding) + padding


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tzkgraph: error: ") and "\n" not in err and "Traceback" not in err
    return err


def finite_numbers(value) -> list[float]:
    """Every number in a JSON value (asserting none is NaN or infinite)."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in finite_numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert math.isfinite(value)
        return [value]
    return []


# --- eval -----------------------------------------------------------------------------------


def test_eval_prints_a_table_and_writes_json(trained_tiny, capsys):
    assert main(["eval", *trained_tiny.args(), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "32×32×1, 8-bit, uniform dequantisation" in out and "bits/dim" in out and "group 0..4" in out
    report = json.loads((trained_tiny.run_dir / "eval-test.json").read_text())
    assert {"graph", "split", "step", "finished", "examples", "stages"} <= report.keys()
    assert report["split"] == "test" and report["examples"] == 300 and report["step"] == 70
    finite_numbers(report)
    images, digits = report["stages"]["images"], report["stages"]["digits"]
    assert images["measured_on"] == "32×32×1, 8-bit, uniform dequantisation" and images["dims"] == 1024
    assert 1.0 < images["bits_per_dim"] < 9.0  # trained 40 steps: far from the papers' ~1.1, not random
    assert images["bits_per_dim"] == pytest.approx(images["nll"] / (1024 * math.log(2)) + 8)
    assert images["content_dims"] == 784  # the 28×28 pixels inside the padding: an upper bound
    assert images["content_bits_per_dim"] == pytest.approx(images["bits_per_dim"] * 1024 / 784)
    keys = {"present", "nll", "prior_bits_per_dim", "bits_per_dim", "iw_bits_per_dim", "encoder_accuracy",
            "encoder_balanced_accuracy", "decoder_classifier_accuracy", "decoder_classifier_balanced_accuracy",
            "decoder_accuracy_given_e", "knowledge_gap"}
    content = {f"content_{k}" for k in ("prior_bits_per_dim", "bits_per_dim", "iw_bits_per_dim")}
    for stage, extra in ((images, content), (digits, set())):
        for figures in stage["knowledge"].values():
            assert figures.keys() == keys | extra
            for key in ("encoder_accuracy", "decoder_classifier_accuracy", "decoder_accuracy_given_e"):
                assert 0 <= figures[key] <= 1
    mnist = images["knowledge"]["mnist"]  # present everywhere: its prior figure is the stage's
    assert mnist["prior_bits_per_dim"] == pytest.approx(images["bits_per_dim"])
    assert images["knowledge"]["mnist"]["present"] == 300   # every image is MNIST: all flow down the edge
    assert digits["examples"] == 300 and digits["dims"] == 4 and "continuous" in digits["measured_on"]
    labels = load_graph_data(trained_tiny.spec().data, "test").labels
    group = digits["groups"]["0..4"]
    assert group["exclusive"] and group["examples"] == int((labels < 5).sum())
    assert 0 <= group["argmax_accuracy"] <= 1 and 0 <= group["decoder_argmax_accuracy"] <= 1
    assert 0 <= group["marginal_argmax_accuracy"] <= 1 and group["code_samples"] == 16  # a child stage
    for d in range(5):
        assert digits["knowledge"][str(d)]["present"] == int((labels == d).sum())


def test_eval_subset_and_missing_checkpoint(trained_tiny, tmp_path, capsys):
    assert main(["eval", *trained_tiny.args(), "--no-progress", "--split", "train", "-n", "50"]) == 0
    assert json.loads((trained_tiny.run_dir / "eval-train.json").read_text())["examples"] == 50
    capsys.readouterr()
    assert main(["eval", "graphs/tiny.yaml", "--set", f"train.out_dir={tmp_path}", "--no-progress"]) == 2
    assert "tzkgraph run" in one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_missing_checkpoint_from_the_shell(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tzkgraph", "sample", "graphs/tiny.yaml", "--set",
                             f"train.out_dir={tmp_path}", "-o", str(tmp_path / "x.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no checkpoint" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_child_of_two_parents_sees_the_examples_present_in_both(tmp_path):
    spec = _two_parent_graph(tmp_path)
    data = load_graph_data(spec.data, "test")
    report = evaluate(TzKGraph(spec), data, progress=False)
    labels = data.labels
    assert report["stages"]["child"]["examples"] == int(((labels & 3) == 3).sum())  # bit 0 and bit 1 set
    assert report["stages"]["child"]["dims"] == 5  # the two codes concatenated
    finite_numbers(report)


# --- sample ---------------------------------------------------------------------------------


def test_sample_down_a_path_writes_a_grid(trained_tiny, tmp_path, capsys):
    out = tmp_path / "three.png"
    assert main(["sample", *trained_tiny.args(), "--path", "digits/3", "-n", "16", "-o", str(out)]) == 0
    assert png_size(out) == (grid_side(4), grid_side(4))
    again = tmp_path / "again.png"
    assert main(["sample", *trained_tiny.args(), "--path", "digits/3", "-n", "16", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()  # same seed, same samples
    prior = tmp_path / "prior.png"
    assert main(["sample", *trained_tiny.args(), "-n", "10", "--temperature", "1", "-o", str(prior)]) == 0
    assert png_size(prior) == (grid_side(4), grid_side(3))  # 10 images: 4 per row, 3 rows
    assert main(["sample", *trained_tiny.args(), "--path", "images/mnist", "-n", "64", "-o", str(out)]) == 0
    assert png_size(out) == (grid_side(8), grid_side(8))


def test_sample_with_a_guide_and_temperatures_per_stage(trained_tiny, tmp_path, capsys):
    out, again = tmp_path / "guided.png", tmp_path / "again.png"
    args = ["sample", *trained_tiny.args(), "--path", "digits/3", "-n", "8", "--guide", "16",
            "--temperature", "images=0.5,digits=1"]
    assert main([*args, "-o", str(out)]) == 0 and main([*args, "-o", str(again)]) == 0
    assert out.read_bytes() == again.read_bytes()  # seeded, guided draws included
    assert main(["sample", *trained_tiny.args(), "--temperature", "pixels=1", "-o", str(out)]) == 2
    assert "--temperature: unknown stage 'pixels'" in one_line_error(capsys)
    assert main(["sample", *trained_tiny.args(), "--temperature", "digits=-1", "-o", str(out)]) == 2
    assert "digits's temperature must be a number >= 0" in one_line_error(capsys)
    assert main(["sample", *trained_tiny.args(), "--guide", "-3", "-o", str(out)]) == 2
    assert "--guide" in one_line_error(capsys)


def test_sample_a_group_as_one_grid_with_a_row_per_member(trained_tiny, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "digits.png"
    assert main(["sample", *trained_tiny.args(), "--path", "digits/0..4", "-n", "3", "-o", str(out)]) == 0
    width, height = Image.open(out).size
    assert (width, height) == (2 + 3 * 34, 2 + 5 * 34)  # 3 columns, 5 rows of 32×32 with 2 px padding


def test_sample_bad_input_is_one_line(trained_tiny, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["sample", *trained_tiny.args(), "--path", "digits/7", "-o", str(out)]) == 2
    err = one_line_error(capsys)
    assert "digits/7" in err and all(p in err for p in ["images/mnist", "digits/0", "digits/4"])
    assert main(["sample", *trained_tiny.args(), "--path", "digits/3", "-o", "/nonexistent/dir/x.png"]) == 2
    assert "/nonexistent/dir" in one_line_error(capsys)
    (tmp_path / "a file").write_text("")  # unwritable even for root: its "folder" is a file
    assert main(["sample", *trained_tiny.args(), "-o", str(tmp_path / "a file" / "x.png")]) == 2
    one_line_error(capsys)
    assert main(["sample", *trained_tiny.args(), "-o", str(tmp_path / "x.txt")]) == 2
    assert ".txt" in one_line_error(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["a file"]


def test_a_path_through_concatenated_codes_continues_down_the_first_parent(tmp_path):
    spec = _two_parent_graph(tmp_path)
    model = TzKGraph(spec).eval()
    calls = []
    decode = model.stages["images"].decode

    def recording(k, c, *args, **kwargs):
        calls.append((k, tuple(c.shape)))
        return decode(k, c, *args, **kwargs)

    model.stages["images"].decode = recording
    images = sample_path(model, spec, "child/x", 3)
    assert images.shape == (3, 1, 32, 32) and torch.isfinite(images).all()
    assert calls == [("a", (3, 2))]  # the child's t = (c_a, c_b): c_a, 2 dims, decoded by images/a
    assert valid_paths(spec) == ["images", "images/a", "images/b", "child", "child/x"]


# --- graph ----------------------------------------------------------------------------------


def test_graph_pictures_with_and_without_figures(trained_tiny, tmp_path, capsys):
    untrained = ["graphs/tiny.yaml", "--set", f"train.out_dir={tmp_path / 'none'}"]
    assert main(["graph", *untrained, "-o", str(tmp_path / "g.dot")]) == 0  # structure only
    dot = (tmp_path / "g.dot").read_text()
    for node in ["data", "images", "images/mnist", "digits", "digits/0..4"]:  # the group: one node
        assert f'"{node}" [' in dot
    assert '"data" -> "images"' in dot and '"images/mnist" -> "digits"' in dot
    assert '"digits" -> "digits/0..4"' in dot
    assert "cached images/t_flow" in dot and "bits/dim" not in dot

    report = evaluate_run(trained_tiny.spec(), examples=60, progress=False, say=lambda _: None)
    assert main(["graph", *trained_tiny.args(), "-o", str(tmp_path / "f.dot")]) == 0
    dot = (tmp_path / "f.dot").read_text()
    assert "bits/dim" in dot and "balanced acc" in dot
    assert f"argmax acc {report['stages']['digits']['groups']['0..4']['argmax_accuracy']:.2f}" in dot
    assert main(["graph", *trained_tiny.args(), "-o", str(tmp_path / "g.svg")]) == 0
    assert ElementTree.parse(tmp_path / "g.svg").getroot().tag.endswith("svg")
    assert main(["graph", *trained_tiny.args(), "-o", str(tmp_path / "g.png")]) == 0
    width, height = png_size(tmp_path / "g.png")
    assert 250 <= width <= 600 and 350 <= height <= 900  # 444×671 when measured
    capsys.readouterr()
    assert main(["graph", *untrained, "-o", str(tmp_path / "g.pdf")]) == 2
    assert ".pdf" in one_line_error(capsys)
    assert main(["graph", *untrained, "-o", "/nonexistent/dir/g.svg"]) == 2
    one_line_error(capsys)
    (tmp_path / "a file").write_text("")
    assert main(["graph", *untrained, "-o", str(tmp_path / "a file" / "g.png")]) == 2
    one_line_error(capsys)


# --- interpolate ----------------------------------------------------------------------------


def test_interpolate_rows_run_between_the_examples(trained_tiny, tmp_path, capsys):
    out = tmp_path / "interp.png"
    assert main(["interpolate", *trained_tiny.args(), "--stage", "images", "--index", "0", "1", "2",
                 "--steps", "5", "-o", str(out)]) == 0
    assert png_size(out) == (grid_side(5), grid_side(2))  # one row per consecutive pair

    spec = trained_tiny.spec()
    model, _ = load_trained(spec)
    t = load_graph_data(spec.data, "test").observations(torch.arange(3), fixed=True)
    rows = interpolate(model, "images", t, steps=5)
    assert rows.shape == (2, 5, 1, 32, 32)
    assert torch.allclose(rows[:, 0], t[:-1], atol=1e-3) and torch.allclose(rows[:, -1], t[1:], atol=1e-3)
    assert not torch.allclose(rows[:, 2], t[:-1], atol=1e-2)  # the middle is neither end

    for bad, word in [(["--stage", "digits"], "digits"), (["--index", "0"], "two"),
                      (["--index", "0", "99999"], "99999"), (["--steps", "1"], "steps")]:
        assert main(["interpolate", *trained_tiny.args(), *bad, "-o", str(tmp_path / "bad.png")]) == 2
        assert word in one_line_error(capsys)
    assert not (tmp_path / "bad.png").exists()


# --- sample grids during training -----------------------------------------------------------


def test_write_sample_grids_draws_every_path_and_leaves_training_state_alone(trained_tiny, tmp_path):
    spec = trained_tiny.spec()
    model, _ = load_trained(spec)
    model.train()
    model.stages["images"].t_flow.eval()  # a frozen part stays in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    rng = torch.get_rng_state()
    written = write_sample_grids(model, spec, tmp_path, step=70)
    assert sorted(p.name for p in written) == sorted(
        ["step-70-images-prior.png", "step-70-images-mnist.png", "step-70-digits-prior.png"]
        + [f"step-70-digits-{d}.png" for d in range(5)])
    assert all(png_size(p) == (grid_side(4), grid_side(4)) for p in written)
    assert all(p.parent == tmp_path / "samples" for p in written)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_write_sample_grids_warns_instead_of_raising(trained_tiny, tmp_path, monkeypatch):
    import tzkgraph.use.sampling as sampling

    spec = trained_tiny.spec()
    model, _ = load_trained(spec)
    real = sampling.sample_path

    def failing(model, spec, path, n, temperature):
        if path.startswith("digits"):
            raise RuntimeError("boom")
        return real(model, spec, path, n, temperature)

    monkeypatch.setattr(sampling, "sample_path", failing)
    with pytest.warns(UserWarning, match="boom"):
        written = write_sample_grids(model, spec, tmp_path, step=1)
    assert sorted(p.name for p in written) == ["step-1-images-mnist.png", "step-1-images-prior.png"]
    blocked = tmp_path / "a file"
    blocked.write_text("")
    with pytest.warns(UserWarning, match="no sample grids"):  # its samples/ folder cannot be made
        assert write_sample_grids(model, spec, blocked, step=1) == []


# --- behaviour: samples of a knowledge type are recognised as that knowledge type -------------


TWO_SOURCES = """
name: two_sources
seed: 0
data:
  sources: [{name: mnist, dataset: mnist}, {name: fashion, dataset: fashion_mnist}]
  image: {size: 32, channels: 1, bits: 8}
  limit: 1000
stages:
  images:
    observe: data
    flow: {levels: 2, steps: 2, hidden: 16}
    code_flow: {steps: 2, hidden: 16}
    nets: {hidden: 16}
    objective: paper
    knowledge:
      mnist: {code_dim: 4, present: {source: mnist}}
      fashion: {code_dim: 4, present: {source: fashion}}
train:
  batch_size: 32
  lr: 2.0e-3
  warmup: 20
  device: cpu
  amp: false
  log_every: 50
  checkpoint_every: 0
  sample_every: 0
  out_dir: OUT
  cache_dir: CACHE
  phases:
    - {name: pretrain, trains: [images/flow], steps: 50}
    - {name: conditional, freeze: [images/flow], steps: 150}
"""


def test_samples_of_a_knowledge_type_are_classified_as_it(tmp_path):
    path = tmp_path / "two_sources.yaml"
    path.write_text(TWO_SOURCES.replace("OUT", str(tmp_path / "runs"))
                    .replace("CACHE", str(tmp_path / "cache")))
    spec = load_spec(path)
    run(spec, progress=False, say=lambda _: None)
    model, _ = load_trained(spec)
    stage = model.stages["images"]
    said = {}  # knowledge sampled -> rate of p(e=1 | t) > 0.5 for (mnist, fashion); chance is 0.5
    with torch.no_grad(), seeded(0):
        for k in ("mnist", "fashion"):
            samples = sample_path(model, spec, f"images/{k}", 64, temperature=0.7)
            said[k] = (stage.discriminate(samples) > 0.5).float().mean(0)
    # Measured over training seeds 0-3: MNIST samples called MNIST 0.98-1.0 of the time (fashion 0.0-0.36),
    # Fashion samples called MNIST 0.0 (fashion 1.0).
    assert said["mnist"][0] >= 0.75 and said["fashion"][0] <= 0.25
    assert said["fashion"][1] >= 0.75
    # Measured (seeds 0-3, 400 test images): encoder accuracy 0.978-0.998; prior 7.60-7.62 bits/dim,
    # conditional 5.52-5.59 (mnist) and 6.50-6.56 (fashion): knowing the dataset makes images likelier.
    report = evaluate(model, load_graph_data(spec.data, "test"), examples=400, progress=False)
    report = report["stages"]["images"]
    for k in ("mnist", "fashion"):
        figures = report["knowledge"][k]
        assert figures["encoder_accuracy"] >= 0.9
        assert figures["bits_per_dim"] < report["bits_per_dim"] - 0.5
        # like with like: the prior on the same examples, and a true bound (iw) beside Appendix C's figure
        assert figures["bits_per_dim"] < figures["prior_bits_per_dim"] - 0.5
        assert figures["iw_bits_per_dim"] < figures["prior_bits_per_dim"]


def test_a_graph_without_knowledge_is_a_plain_flow(tmp_path):
    spec = parse_spec({
        "name": "flow_only", "data": {"sources": [{"name": "mnist", "dataset": "mnist"}], "limit": 50},
        "stages": {"images": {"observe": "data", "flow": {"levels": 1, "steps": 1, "hidden": 8},
                              "knowledge": {}}}})
    model = TzKGraph(spec)
    report = evaluate(model, load_graph_data(spec.data, "test"), progress=False)["stages"]["images"]
    assert report["knowledge"] == {} and 9.0 < report["bits_per_dim"] < 10.0  # an identity flow: ~9.5
    written = write_sample_grids(model, spec, tmp_path, step=0)
    assert [p.name for p in written] == ["step-0-images-prior.png"]


def _two_parent_graph(tmp_path):
    """An untrained graph whose child stage observes two codes of its parent (bit 0 and bit 1)."""
    return parse_spec({
        "name": "two_parents",
        "data": {"sources": [{"name": "mnist", "dataset": "mnist"}], "limit": 100},
        "stages": {
            "images": {"observe": "data", "flow": {"levels": 1, "steps": 1, "hidden": 8},
                       "nets": {"hidden": 8},
                       "knowledge": {"a": {"code_dim": 2, "present": {"label_bit": 0}},
                                     "b": {"code_dim": 3, "present": {"label_bit": 1}}}},
            "child": {"observe": ["images/a", "images/b"], "flow": {"steps": 1, "hidden": 8},
                      "knowledge": {"x": {"code_dim": 2, "present": {}}}}},
        "train": {"out_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}})
