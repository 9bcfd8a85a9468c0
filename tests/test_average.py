"""The weights' running average (`train.ema`): its formula, its place at a phase's end, and an
exact resume with it."""

from __future__ import annotations

import pytest
import torch

from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.core.errors import ConfigError
from tzkgraph.training.average import WeightAverage
from tzkgraph.training.train import run

from helpers import tiny


def test_the_average_follows_its_formula_and_swaps_both_ways():
    w = torch.nn.Parameter(torch.zeros(3))
    average = WeightAverage([w], decay=0.9)
    expected = None
    for n, value in enumerate([1.0, 2.0, 4.0, -3.0, 0.5, 7.0] * 5):
        with torch.no_grad():
            w.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))  # starts low, rises to the decay
        expected = value if expected is None else d * expected + (1 - d) * value
        average.update()
    assert average.shadow[0].tolist() == pytest.approx([expected] * 3, rel=1e-6)
    average.swap()
    assert w.tolist() == pytest.approx([expected] * 3, rel=1e-6) and average.shadow[0].tolist() == [7.0] * 3
    copy = WeightAverage([w], decay=0.9)
    copy.load_state_dict(average.state_dict())
    assert copy.updates == 30 and torch.equal(copy.shadow[0], average.shadow[0])
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage([torch.nn.Parameter(torch.zeros(4))], 0.9).load_state_dict(average.state_dict())


def _state(root):
    return load_checkpoint(root / "runs" / "tiny" / "checkpoint.pt")["model"]


def test_each_phase_ends_on_its_average(tmp_path):
    plain = run(tiny(tmp_path / "a"), progress=False, say=lambda _: None)
    said = []
    averaged = run(tiny(tmp_path / "b", "train.ema=0.9"), progress=False, say=said.append)
    assert plain.finished and averaged.finished
    ends = [line for line in averaged.history if "objective_average_weights" in line]
    assert [line["phase"] for line in ends] == ["pretrain", "conditional"]
    assert [line["step"] for line in ends] == [30, 50]
    assert sum("running average" in s for s in said) == 2
    # the pretraining's own steps are the same in both runs (the average does not steer them):
    # its metric lines agree, and its weights differ only because the average replaced them
    pre = lambda h: [l["loss"] for l in h if l["phase"] == "pretrain" and "loss" in l]
    assert pre(plain.history) == pre(averaged.history)
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    flow = [k for k in a if k.startswith("stages.images.t_flow.") and a[k].is_floating_point()]
    assert flow and any(not torch.equal(a[k], b[k]) for k in flow)
    # an average over a few steps of a short, noisy phase lands near the last weights' objective
    for line in ends:
        assert abs(line["objective_average_weights"] - line["objective_last_weights"]) \
            < 0.5 * abs(line["objective_last_weights"]) + 50


def test_resume_with_an_average_continues_exactly(tmp_path):
    whole = run(tiny(tmp_path / "a", "train.ema=0.9"), progress=False, say=lambda _: None)
    spec = tiny(tmp_path / "b", "train.ema=0.9")
    run(spec, stop_after=37, progress=False, say=lambda _: None)  # mid conditional phase
    saved = load_checkpoint(tmp_path / "b" / "runs" / "tiny" / "checkpoint.pt")
    assert saved["average"]["updates"] == 7
    resumed = run(spec, resume=True, progress=False, say=lambda _: None)
    assert resumed.finished and resumed.step == whole.step
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value, says", [(1.0, "expected a decay < 1"), (-0.5, "expected a number >= 0")])
def test_a_bad_decay_is_refused(tmp_path, value, says):
    with pytest.raises(ConfigError, match=f"train.ema: {says}"):
        tiny(tmp_path, f"train.ema={value}")
