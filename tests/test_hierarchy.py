"""A hierarchy is one generative model: the child stage is the prior of the parent's code.

The parent's ``e = 1`` bound keeps the entropy of ``q(c | e=1, t)`` where it had ``−KL(q ‖ p(c))``,
and the child's bound on the same reparameterised draw completes it, at the coefficient of
that term in the parent's objective (``½ · 1/K``: half of a mean over the parent's K types) (docs/objective.md). These tests check that composition term by term in
float64, that rescaling the parent's code changes nothing, and that what is logged is what
is optimised.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tzkgraph.model.density import gaussian_log_prob
from tzkgraph.model.flows import ActNorm
from tzkgraph.model.stage import TzKStage

from helpers import randomize

B = 6


def _pair(label_weight: float = 0.0) -> tuple[TzKStage, TzKStage]:
    """A vector parent with knowledge ``a`` (observed by the child) and ``b``; a child on ``a``'s code."""
    torch.manual_seed(0)
    code = dict(code_dim=2, code_steps=2, code_hidden=8, volume_preserving=False)
    parent = TzKStage((4,), {"a": code, "b": code}, steps=2, hidden=8, net_hidden=8, objective="marginal")
    child = TzKStage((2,), {"x": 2, "y": 2}, steps=2, hidden=8, net_hidden=8, code_steps=2, code_hidden=8,
                     objective="marginal", label_weight=label_weight)
    parent.double(), child.double()
    t, e_p, e_c = _batch()
    out = parent.loss(t, e_p, emit_codes=["a"])  # every ActNorm's data-dependent init
    child.loss(out.codes["a"].detach(), e_c)
    randomize(parent), randomize(child, seed=1)
    return parent, child


def _batch():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(B, 4, generator=g, dtype=torch.float64)
    e_p = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.float64)
    e_c = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=torch.float64)
    return t, e_p, e_c


def _joint(parent: TzKStage, child: TzKStage, t, e_p, e_c, seed: int = 5):
    """The two stages composed as :class:`~tzkgraph.graph.executor.GraphExecutor` composes them."""
    torch.manual_seed(seed)
    out_p = parent.loss(t, e_p, emit_codes=["a"])
    out_c = child.loss(out_p.codes["a"], e_c, weight=out_p.present["a"])
    return out_p, out_c, out_p.loss + 0.25 * out_c.loss  # ½ · 1/K, K = 2 in the parent's p_dec


def _by_hand(stage: TzKStage, t, e, noise, weight=None, child_of: str | None = None):
    """``−½ Σ_b w (log p_enc + log p_dec) / B`` of a stage, written out; and the draws of ``child_of``."""
    z, logdet = stage.t_flow(t)
    log_p_t = gaussian_log_prob(z) + logdet
    enc, dec, draw = [], [], None
    for i, name in enumerate(stage.names):
        kn = stage.knowledge[name]
        logit_t = kn.encoder_logit(z)  # a stage observing vectors: its encoders read z = f_t(t)
        bound = []
        for v, sign in ((0, -1.0), (1, 1.0)):
            mean, log_std = kn.posterior(z, v)
            c = kn.code_flow.inverse(mean + log_std.exp() * noise[i])
            mu, ls = kn.decoder[v](c)
            log_p = gaussian_log_prob(z, mu, ls) + logdet + F.logsigmoid(sign * kn.decoder_logit(c))
            if v == 1 and name == child_of:  # H[q] in c-space; the child adds E_q log p_child(c)
                entropy = log_std.sum(-1) + mean.shape[-1] / 2 * (1 + math.log(2 * math.pi)) - kn.code_flow(c)[1]
                bound.append(log_p + entropy)
                draw = c
            else:
                kl = 0.5 * (mean ** 2 + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
                bound.append(log_p - kl)
        present = e[:, i].bool()
        enc.append(torch.where(present, F.logsigmoid(logit_t), F.logsigmoid(-logit_t)))
        dec.append(torch.where(present, bound[1], bound[0]))
    k = len(stage.names)
    log_p_enc = log_p_t + sum(enc)
    log_p_dec = sum(dec) / k + (k - 1) / k * sum(enc)  # mean_j [dec_j + Σ_{i≠j} enc_i]
    w = torch.ones_like(log_p_t) if weight is None else weight
    return -0.5 * (w * (log_p_enc + log_p_dec)).sum() / t.shape[0], draw, sum(enc)


def test_the_logged_objective_is_the_bound_term_by_term():
    parent, child = _pair()
    t, e_p, e_c = _batch()
    out_p, out_c, total = _joint(parent, child, t, e_p, e_c)

    torch.manual_seed(5)  # replay the draws: per stage, the group's code noise, then its uniforms
    noise_p = torch.randn(2, B, 2, dtype=torch.float64)
    torch.rand(2, B, dtype=torch.float64)
    noise_c = torch.randn(2, B, 2, dtype=torch.float64)
    parent_bound, draw, _ = _by_hand(parent, t, e_p, noise_p, child_of="a")
    child_bound, _, _ = _by_hand(child, draw, e_c, noise_c, weight=e_p[:, 0])
    torch.testing.assert_close(out_p.loss, parent_bound)
    torch.testing.assert_close(out_c.loss, child_bound)
    torch.testing.assert_close(total, parent_bound + 0.25 * child_bound)
    for out in (out_p, out_c):  # what is optimised is what is logged, and it is the bound
        assert out.metrics["objective"] == out.loss.detach() == out.metrics["bound"]


def test_the_labelled_term_is_logged_apart_from_the_bound():
    parent, child = _pair(label_weight=3.0)
    t, e_p, e_c = _batch()
    _, out_c, _ = _joint(parent, child, t, e_p, e_c)
    torch.manual_seed(5)
    torch.randn(2, B, 2, dtype=torch.float64), torch.rand(2, B, dtype=torch.float64)
    noise_c = torch.randn(2, B, 2, dtype=torch.float64)
    torch.manual_seed(5)
    draw = parent.loss(t, e_p, emit_codes=["a"]).codes["a"]
    bound, _, labelled = _by_hand(child, draw, e_c, noise_c, weight=e_p[:, 0])
    torch.testing.assert_close(out_c.metrics["bound"], bound.detach())
    torch.testing.assert_close(out_c.loss, bound - 3.0 * (e_p[:, 0] * labelled).sum() / B)
    assert out_c.metrics["objective"] == out_c.loss.detach()


@torch.no_grad()
def _rescale_reader(module: torch.nn.Module, alpha: float) -> None:
    """The first ActNorm of ``module`` absorbs inputs scaled by ``alpha``: same outputs."""
    norm = next(m for m in module.modules() if isinstance(m, ActNorm))
    norm.bias.mul_(alpha)
    norm.log_scale.sub_(math.log(alpha))


@pytest.mark.parametrize("alpha", [0.01, 30.0])
@pytest.mark.parametrize("label_weight", [0.0, 3.0])
def test_rescaling_the_parents_code_changes_nothing(alpha, label_weight):
    """``c → α·c``, the parent's code readers and the child's flow compensating: the parent's
    entropy gains ``C·log α``, the child's density loses it, and the joint objective is
    unchanged (with ``KL(q ‖ p(c))`` to a fixed prior instead, shrinking codes would pay).
    The child's encoders read its flow's latent, which its flow keeps: they need no
    compensation, so a labelled term on them cannot gain from inflating the code."""
    parent, child = _pair(label_weight)
    t, e_p, e_c = _batch()
    before = _joint(parent, child, t, e_p, e_c)
    seen_before = child.discriminate(before[0].codes["a"])
    kn = parent.knowledge["a"]
    _rescale_reader(kn.code_flow, alpha)  # f_c'(c') = f_c(c' / α): c' = α·c, logdet − C·log α
    for reader in (kn.decoder_discriminator, kn.decoder[0], kn.decoder[1], child.t_flow):
        _rescale_reader(reader, alpha)
    after = _joint(parent, child, t, e_p, e_c)
    torch.testing.assert_close(after[0].codes["a"], alpha * before[0].codes["a"])
    torch.testing.assert_close(after[2], before[2])
    torch.testing.assert_close(child.discriminate(after[0].codes["a"]), seen_before)
    assert not torch.allclose(after[1].loss, before[1].loss)  # the child alone does change


def test_the_child_sends_its_gradient_into_the_parents_posterior():
    parent, child = _pair()
    t, e_p, e_c = _batch()
    _, out_c, _ = _joint(parent, child, t, e_p, e_c)
    out_c.loss.backward()
    grads = [p.grad for p in parent.knowledge["a"].encoder_posterior[1].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None or not p.grad.any() for p in parent.knowledge["b"].parameters())


def test_a_guided_code_is_drawn_from_p_c_given_e():
    """``guide = M`` resamples M draws of p(c) by p(e=1 | c): with p(e=1 | c) = σ(8·u₀) the
    kept codes sit where e = 1 is likely, and at e = 0 where it is not."""
    torch.manual_seed(0)
    stage = TzKStage((4,), {"a": dict(code_dim=2, code_steps=1, code_hidden=4)}, steps=1, hidden=4, net_hidden=4)
    kn = stage.knowledge["a"]
    kn.code_flow.inverse = lambda u: u  # the identity f_c: c = u
    kn.decoder_logit = lambda c: 8 * c[:, 0]
    plain = stage.sample_code("a", 4000)
    guided = stage.sample_code("a", 4000, guide=64)
    against = stage.sample_code("a", 4000, guide=64, e=0)
    assert abs(float((plain[:, 0] > 0).float().mean()) - 0.5) < 0.05
    assert float((guided[:, 0] > 0).float().mean()) > 0.9
    assert float((against[:, 0] < 0).float().mean()) > 0.9


def _controlled_stage(discriminator, decoder_shift: float):
    """A vector stage whose parts the test sets: ``p(e=1 | t)`` = ``discriminator(t)``,
    ``p(e | c) = ½``, and a decoder that puts ``t₀`` at ``±decoder_shift`` for ``e = 1 / 0``."""
    torch.manual_seed(0)
    stage = TzKStage((2,), {"a": 2}, steps=1, hidden=8, net_hidden=8).eval()
    stage.discriminate = lambda t: discriminator(t).unsqueeze(1)
    stage.knowledge["a"].decoder_logit = lambda c: torch.zeros(c.shape[0])

    def decode(name, c, temperature=1.0, e=1):
        t = temperature * torch.randn(c.shape[0], 2)
        t[:, 0] += decoder_shift * (2 * e - 1)
        return t

    stage.decode = decode
    return stage


def test_sampling_given_knowledge_draws_from_the_trained_mixture():
    """``M(t | e) ∝ ½ p(t) p(e | t) + ½ p_a(t, e)`` (one knowledge type): a discriminator that
    reads the sign of ``t₀`` gives the encoder's half of the samples that sign, while the
    decoder's half (centred, ``p(e | c) = ½``) keeps either: ¾ of them have it. A decoder
    placed at ``t₀ = ±3`` takes its half, in the share its weight gives it."""
    sharp = _controlled_stage(lambda t: torch.sigmoid(50 * t[:, 0]), decoder_shift=0.0)
    for e, sign in ((1, 1.0), (0, -1.0)):
        t = sharp.sample_given({"a": e}, 4000, candidates=64)
        assert 0.72 < float((sign * t[:, 0] > 0).float().mean()) < 0.78
        assert abs(float(t[:, 1].mean())) < 0.1
    blind = _controlled_stage(lambda t: torch.full((t.shape[0],), 0.5), decoder_shift=3.0)
    t = blind.sample_given({"a": 1}, 4000, candidates=8)
    share = float((t[:, 0] > 1.5).float().mean())  # the decoder's half: p_enc(e=1) = p_dec(e=1) = ½
    assert 0.45 < share < 0.55, share
    t = blind.sample_given({}, 4000, candidates=8)  # e summed out: the decoder draws e ~ p(e | c)
    assert 0.2 < float((t[:, 0] > 1.5).float().mean()) < 0.3
