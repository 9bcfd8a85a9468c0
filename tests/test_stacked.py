"""Knowledge types evaluated as one stacked batch: the same function as one at a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tzkgraph.model.stage
from tzkgraph.model.flows import ActNorm
from tzkgraph.model.nets import Knowledge
from tzkgraph.model.stacked import StackedKnowledge, signature, stackable
from tzkgraph.model.stage import TzKStage

from helpers import randomize

SMALL = dict(steps=2, hidden=8, net_hidden=8, code_steps=2, code_hidden=8)
B = 16


def _vector_stage(permutation: str = "shuffle") -> TzKStage:
    return TzKStage((6,), {str(i): 2 for i in range(10)}, permutation=permutation, **SMALL)


def _image_stage() -> TzKStage:
    return TzKStage((1, 8, 8), {"a": 3, "b": 3}, levels=2, **SMALL)


def _mixed_stage() -> TzKStage:  # two code dims: groups [a, b, e] and [c, d]
    return TzKStage((4,), {"a": 2, "b": 2, "c": 3, "d": 3, "e": 2}, **SMALL)


STAGES = {"vector": _vector_stage, "vector-lu": lambda: _vector_stage("lu"), "image": _image_stage,
          "mixed": _mixed_stage}


def _batch(stage: TzKStage, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(B, *stage.t_shape, generator=g, dtype=torch.float64) - 0.5
    e = (torch.rand(B, len(stage.names), generator=g) < 0.4).double()
    return t, e


def _ready(make) -> tuple[TzKStage, torch.Tensor, torch.Tensor]:
    """A float64 stage past its ActNorms' initialisation, parameters moved off their init; a batch."""
    torch.manual_seed(0)
    stage = make().double()
    t, e = _batch(stage)
    stage.loss(t, e)  # data-dependent init of every ActNorm (one knowledge type at a time)
    randomize(stage)
    return stage, t, e


def _run(stage: TzKStage, stacked: bool, t, e, **kwargs):
    stage.stacked = stacked
    stage.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out = stage.loss(t, e, **kwargs)
    (out.loss + sum(c.square().sum() for c in out.codes.values())).backward()
    grads = {k: p.grad for k, p in stage.named_parameters() if p.grad is not None}
    return out, grads


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-9, atol=1e-9 * max(1.0, float(a.detach().abs().max())))


def _cases(stage: TzKStage, e: torch.Tensor) -> dict[str, dict]:
    names = stage.names
    observed = torch.rand(e.shape, generator=torch.Generator().manual_seed(2)) < 0.6
    return {
        "plain": {},
        "unobserved": {"observed": observed},
        "active": {"active": names[1:][::2]},  # a subset, out of order of the groups
        "weight": {"weight": torch.tensor([1.0, 0.0, 0.5, 0.0] * (B // 4), dtype=torch.float64)},
        "emit": {"emit_codes": [names[0], names[-1]], "active": names[:-1]},  # one emitted code inactive
    }


@pytest.mark.parametrize("case", ["plain", "unobserved", "active", "weight", "emit"])
@pytest.mark.parametrize("mode", ["encoder", "decoder"])
@pytest.mark.parametrize("kind", list(STAGES))
def test_stacked_and_one_at_a_time_agree(kind, mode, case):
    stage, t, e = _ready(STAGES[kind])
    if case == "emit":  # a child is the prior of an emitted code: objective "marginal"
        stage.objective = "marginal"
    kwargs = dict(_cases(stage, e)[case], mode=mode)
    loop, loop_grads = _run(stage, False, t, e, **kwargs)
    stacked, stacked_grads = _run(stage, True, t, e, **kwargs)
    assert _close(loop.loss, stacked.loss)
    assert list(loop.metrics) == list(stacked.metrics)
    for key in loop.metrics:
        assert _close(loop.metrics[key], stacked.metrics[key]), key
    assert loop.codes.keys() == stacked.codes.keys() == set(kwargs.get("emit_codes", ()))
    for key in loop.codes:
        assert _close(loop.codes[key], stacked.codes[key]), key
        assert _close(loop.present[key], stacked.present[key]), key
    assert loop_grads.keys() == stacked_grads.keys()
    active = kwargs.get("active", stage.names)
    assert {k.split(".")[1] for k in loop_grads if k.startswith("knowledge.")} >= set(active)
    for key in loop_grads:
        assert _close(loop_grads[key], stacked_grads[key]), key


def test_every_metric_is_kept():
    stage, t, e = _ready(_mixed_stage)
    metrics = stage.loss(t, e).metrics
    per_knowledge = ["encoder_accuracy", "decoder_accuracy_given_e", "knowledge_gap", "code_std", "code_logdet"]
    assert set(metrics) == {"loss", "objective", "bound", "log_p_t", "log_p_enc", "log_p_dec"} | {
        f"{k}/{m}" for k in stage.names for m in per_knowledge}


def test_frozen_members_get_no_gradient():
    stage, t, e = _ready(_vector_stage)
    stage.knowledge["3"].requires_grad_(False)
    loop, loop_grads = _run(stage, False, t, e, mode="encoder")
    stacked, stacked_grads = _run(stage, True, t, e, mode="encoder")
    assert not any(k.startswith("knowledge.3.") for k in stacked_grads)
    assert any(k.startswith("knowledge.4.") for k in stacked_grads)
    assert loop_grads.keys() == stacked_grads.keys()
    assert all(_close(loop_grads[k], stacked_grads[k]) for k in loop_grads)


def test_discriminate_agrees():
    stage, t, _ = _ready(_mixed_stage)
    stage.stacked = False
    loop = stage.discriminate(t)
    stage.stacked = True
    assert loop.shape == (B, 5)
    assert _close(loop, stage.discriminate(t))


@pytest.fixture
def stacked_calls(monkeypatch) -> list[int]:
    """The sizes of the groups :meth:`TzKStage.loss` evaluates stacked, in order."""
    calls: list[int] = []

    class Counting(StackedKnowledge):
        def __init__(self, modules):
            calls.append(len(modules))
            super().__init__(modules)

    monkeypatch.setattr(tzkgraph.model.stage, "StackedKnowledge", Counting)
    return calls


def test_one_at_a_time_until_every_actnorm_is_initialised(stacked_calls):
    torch.manual_seed(0)
    stage = _mixed_stage()
    t, e = _batch(stage)
    t, e = t.float(), e.float()
    actnorms = [m for m in stage.knowledge.modules() if isinstance(m, ActNorm)]
    assert not any(bool(a.initialized) for a in actnorms)
    stage.loss(t, e)
    assert stacked_calls == []  # the loop ran, and initialised
    assert all(bool(a.initialized) for a in actnorms)
    stage.loss(t, e)
    assert stacked_calls == [3, 2]

    # a reloaded stage reads its ActNorms' buffers: stacked at once, as a run never stopped
    stacked_calls.clear()
    stage.load_state_dict(stage.state_dict())
    assert not any(a._known_initialized for a in actnorms)
    stage.loss(t, e)
    assert stacked_calls == [3, 2]
    # in eval mode ActNorms never initialise: stacked at once
    stacked_calls.clear()
    stage.load_state_dict(stage.state_dict())
    stage.eval()
    stage.loss(t, e)
    assert stacked_calls == [3, 2]
    stage.stacked = False
    stage.loss(t, e)
    assert stacked_calls == [3, 2]


def test_online_knowledge_joins_its_group_once_initialised(stacked_calls):
    torch.manual_seed(0)
    stage = TzKStage((4,), {"a": 2, "b": 2}, **SMALL)
    t, e = _batch(stage)
    t, e = t.float(), e.float()
    stage.loss(t, e)
    stage.loss(t, e)
    before = {k: v.clone() for k, v in stage.state_dict().items()}
    stage.add_knowledge("c", 2)
    assert stage.groups(stage.names) == [["a", "b", "c"]]
    stage.requires_grad_(False)
    stage.knowledge["c"].requires_grad_(True)
    e = torch.cat([e, e[:, :1]], 1)
    stage.loss(t, e, active=["a", "b", "c"]).loss.backward()  # c's ActNorms initialise: one at a time
    stage.loss(t, e, active=["a", "b", "c"]).loss.backward()
    assert stacked_calls == [2, 3]
    assert all(torch.equal(before[k], v) for k, v in stage.state_dict().items() if k in before)
    assert all((p.grad is not None) == n.startswith("knowledge.c.") for n, p in stage.named_parameters())


def test_autocast_keeps_densities_in_float32():
    """bf16 networks under autocast, stacked: float32 densities, close to the loop's."""
    torch.manual_seed(0)
    stage = _image_stage()
    stage.objective = "marginal"  # it emits a code
    t, e = _batch(stage)
    t, e = t.float(), e.float()
    stage.loss(t, e)
    randomize(stage)
    losses = []
    for stacked in (False, True):
        stage.stacked = stacked
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stage.loss(t, e, mode="encoder", emit_codes=["a"])
        assert out.loss.dtype == out.metrics["a/knowledge_gap"].dtype == torch.float32
        losses.append(out.loss)
    assert torch.allclose(losses[0], losses[1], rtol=2e-2)


def test_structure_decides_the_groups():
    a, b = Knowledge((6,), 6, 2, hidden=8), Knowledge((6,), 6, 2, hidden=8)
    assert stackable(a) and signature(a) == signature(b)
    assert stackable(Knowledge((1, 8, 8), 64, 3, hidden=8))  # its conv nets run once per member
    assert signature(a) != signature(Knowledge((6,), 6, 3, hidden=8))
    assert signature(a) != signature(Knowledge((6,), 6, 2, hidden=8, permutation="lu"))
    a.decoder_discriminator.append(nn.ReLU())  # a layer without a stacked implementation
    assert not stackable(a) and signature(a) != signature(b)
