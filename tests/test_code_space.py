"""Code spaces: a rescaling of every code cannot buy likelihood — the marginal objective is
blind to it by construction, and the paper's objective is once f_c preserves volume (the
collapse the unconstrained code flow allowed) — and codes keep their scale in training."""

from __future__ import annotations

import math

import pytest
import torch

from tzkgraph.model.stage import TzKStage

from helpers import randomize

DIMS = {"a": 2, "b": 3}


def _stage(volume_preserving: bool, objective: str = "paper") -> tuple[TzKStage, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    knowledge = {k: {"code_dim": c, "volume_preserving": volume_preserving} for k, c in DIMS.items()}
    stage = TzKStage((4,), knowledge, steps=2, hidden=16, net_hidden=16, code_steps=2, code_hidden=16,
                     objective=objective)
    t = torch.randn(16, 4)
    e = (t[:, :2] > 0).float()
    stage.loss(t, e)  # ActNorms' data-dependent initialisation
    randomize(stage, 0.2)
    stage.eval()
    return stage, t, e


@torch.no_grad()
def _rescale_codes(stage: TzKStage, alpha: float) -> None:
    """Every code c ↦ α·c, every prediction unchanged: f_c's first ActNorm and the input
    ActNorms of the nets that read c absorb the factor ((αx + αb)·e^(s − log α) = (x + b)·e^s)."""
    for kn in stage.knowledge.values():
        norms = [kn.code_flow.flows[0], kn.decoder_discriminator[0].norm]
        norms += [head.net[0].norm for head in kn.decoder]
        for norm in norms:
            norm.bias.mul_(alpha)
            norm.log_scale.sub_(math.log(alpha))


def _bound(stage: TzKStage, t, e, mode: str | None) -> float:
    torch.manual_seed(5)
    return float(stage.loss(t, e, mode=mode).metrics["bound"])


@pytest.mark.parametrize("mode", ["encoder", "decoder"])
def test_without_volume_preservation_shrinking_codes_lowers_the_loss_without_limit(mode):
    """The bug: the loss falls by exactly Σ_i C_i·log(1/α), for any α, at unchanged predictions."""
    stage, t, e = _stage(volume_preserving=False)
    before = _bound(stage, t, e, mode)
    for alpha in (0.1, 1e-3):
        shrunk, _, _ = _stage(volume_preserving=False)
        _rescale_codes(shrunk, alpha)
        gain = sum(DIMS.values()) * math.log(1 / alpha)
        assert _bound(shrunk, t, e, mode) == pytest.approx(before - gain, rel=1e-4, abs=1e-3)


def test_the_marginal_objective_is_blind_to_the_code_scale():
    """The same rescaling leaves the marginal objective's bound exactly as it was, even with
    an unconstrained f_c: log p(c) − log p(c | e, t) (the KL) does not depend on f_c."""
    stage, t, e = _stage(False, "marginal")
    before = _bound(stage, t, e, None)
    for alpha in (0.1, 1e-3):
        shrunk, _, _ = _stage(False, "marginal")
        _rescale_codes(shrunk, alpha)
        assert _bound(shrunk, t, e, None) == pytest.approx(before, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("mode", ["encoder", "decoder"])
def test_volume_preserving_code_flows_have_no_scale_to_trade(mode):
    """With f_c volume-preserving (the default) the parameter direction that rescaled every
    code — a common shift of f_c's log-scales — is gone: the codes and the bound stay exactly
    as they were, for any shift (without volume preservation the codes shrink and the bound
    gains C·log(1/α) per code density)."""
    results = {}
    for vp in (True, False):
        stage, t, e = _stage(volume_preserving=vp)
        before = _bound(stage, t, e, mode)
        torch.manual_seed(5)
        codes = stage.sample_code("b", 8)
        for alpha in (0.1, 1e-3):
            shifted, _, _ = _stage(volume_preserving=vp)
            with torch.no_grad():
                for kn in shifted.knowledge.values():
                    for norm in kn.code_flow.flows[0::3]:  # every ActNorm of f_c
                        norm.log_scale.sub_(math.log(alpha) / 2)
            torch.manual_seed(5)
            ratio = (shifted.sample_code("b", 8) / codes).mean().detach()
            results[vp, alpha] = (_bound(shifted, t, e, mode) - before, float(ratio))
    for alpha in (0.1, 1e-3):
        assert results[True, alpha][0] == pytest.approx(0.0, abs=1e-4)
        assert results[True, alpha][1] == pytest.approx(1.0, abs=1e-5)
        assert results[False, alpha][0] < -5.0 and results[False, alpha][1] < 0.5


def _train(volume_preserving: bool, objective: str = "paper", steps: int = 400) -> dict[str, float]:
    """A two-knowledge vector stage trained on a labelled 2-d mixture; the last metrics."""
    torch.manual_seed(0)
    knowledge = {k: {"code_dim": 2, "volume_preserving": volume_preserving} for k in ("left", "up")}
    stage = TzKStage((2,), knowledge, steps=2, hidden=32, net_hidden=32, code_steps=2, code_hidden=16,
                     objective=objective)
    optimizer = None
    for step in range(steps):
        t = torch.randn(128, 2) + 2.0 * torch.randint(0, 2, (128, 2)).float() - 1.0
        e = torch.stack([t[:, 0] < 0, t[:, 1] > 0], 1).float()
        out = stage.loss(t, e)
        if optimizer is None:
            optimizer = torch.optim.Adam(stage.parameters(), lr=3e-3)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return {k: float(v) for k, v in out.metrics.items()}


def test_codes_keep_their_scale_in_training_unless_the_paper_objective_has_free_code_flows():
    """The issue's toy run, as a test: under the paper's objective without volume
    preservation the code std collapses (0.38 -> 0.033 there) while f_c's log-determinant
    climbs; with it, or under the marginal objective even without it, codes stay O(1)."""
    collapsing, kept, marginal = _train(False), _train(True), _train(False, "marginal")
    for k in ("left", "up"):
        assert collapsing[f"{k}/code_std"] < 0.2 and collapsing[f"{k}/code_logdet"] > 3.0
        assert 0.4 < kept[f"{k}/code_std"] < 3.0 and kept[f"{k}/code_logdet"] == pytest.approx(0.0, abs=1e-5)
        assert 0.4 < marginal[f"{k}/code_std"] < 3.0 and abs(marginal[f"{k}/code_logdet"]) < 1.0
    assert kept["left/encoder_accuracy"] > 0.8 and kept["up/encoder_accuracy"] > 0.8
