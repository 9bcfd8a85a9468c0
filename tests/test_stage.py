"""The TzK stage: gradients, the bound's pieces, sampling, and behaviour on a mixture."""

from __future__ import annotations

import math

import pytest
import torch

from tzkgraph.model.density import bits_per_dim, gaussian_log_prob
from tzkgraph.model.stage import TzKStage, knowledge_terms

from helpers import randomize


def _image_stage(objective: str = "marginal") -> TzKStage:
    return TzKStage((1, 8, 8), {"a": 3, "b": 2}, levels=2, steps=2, hidden=8,
                    net_hidden=8, code_steps=2, code_hidden=8, objective=objective)


def _randomized_image_stage(objective: str = "marginal"):
    """An image stage past its data-dependent init, parameters moved off their init; a batch."""
    torch.manual_seed(0)
    stage = _image_stage(objective)
    t, e = _batch()
    stage.loss(t, e)  # data-dependent init of every ActNorm
    randomize(stage)  # move zero-initialised last layers away from zero
    return stage, t, e


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    t = torch.rand(n, 1, 8, 8, generator=g) - 0.5
    e = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]] * (n // 4), dtype=torch.float32)
    return t, e


@pytest.mark.parametrize("objective, mode", [("marginal", None), ("paper", "encoder"), ("paper", "decoder")])
@pytest.mark.parametrize("unobserved", [False, True])
def test_every_parameter_gets_a_gradient(objective, mode, unobserved):
    stage, t, e = _randomized_image_stage(objective)
    observed = torch.ones_like(e, dtype=torch.bool)
    if unobserved:
        observed[::2, 0] = False
    stage.zero_grad()
    stage.loss(t, e, observed, mode=mode).loss.backward()
    for name, p in stage.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_is_the_bound():
    """With K knowledge types, −½(log p_enc + log p_dec) for fixed codes, term by term."""
    stage, t, e = _randomized_image_stage("paper")
    stage.eval()
    torch.manual_seed(3)
    out = stage.loss(t, e, mode="decoder")

    torch.manual_seed(3)  # replay the same draws by hand
    z, logdet = stage.t_flow(t)
    log_p_t = gaussian_log_prob(z) + logdet
    enc, dec = log_p_t.clone(), torch.zeros_like(log_p_t)
    k = len(stage.names)
    assert stage.groups(stage.names) == [["a"], ["b"]]  # two code dims: one group each
    for col, name in enumerate(stage.names):
        kn = stage.knowledge[name]
        ei = e[:, col].long()
        logit_t = kn.encoder_discriminator(t).squeeze(1)
        heads = [h(t) for h in kn.encoder_posterior]
        noise = torch.randn(1, t.shape[0], kn.code_dim)[0]  # a group's draws: codes' noise,
        torch.rand(1, t.shape[0])  # then uniforms for the (here all observed) e
        c = kn.code_flow.inverse(noise)
        for b in range(t.shape[0]):
            v = int(ei[b])
            p_e_t = torch.sigmoid(logit_t[b]) if v else 1 - torch.sigmoid(logit_t[b])
            logit_c = kn.decoder_discriminator(c[b:b + 1]).squeeze()
            p_e_c = torch.sigmoid(logit_c) if v else 1 - torch.sigmoid(logit_c)
            mean, log_std = heads[v][0][b:b + 1], heads[v][1][b:b + 1]
            enc_i = torch.log(p_e_t) + kn.code_log_prob(c[b:b + 1], mean, log_std)[0]
            enc[b] = enc[b] + enc_i
            dmean, dlog_std = kn.decoder[v](c[b:b + 1])
            dec_i = torch.log(p_e_c) + kn.code_log_prob(c[b:b + 1])[0] \
                + (gaussian_log_prob(z[b:b + 1], dmean, dlog_std) + logdet[b])[0]
            dec[b] = dec[b] + dec_i / k + (1 - 1 / k) * enc_i  # mean_j [dec_j + Σ_{i≠j} enc_i]
    bound = -0.5 * (enc + dec).mean()
    assert torch.allclose(out.metrics["bound"], bound, rtol=1e-4)
    assert torch.allclose(out.loss, bound, rtol=1e-4)  # what is differentiated is the bound
    assert torch.equal(out.metrics["objective"], out.loss.detach())


def test_unobserved_present_variable_is_marginalised():
    """Unobserved e: both joints are log Σ_e of the observed-e joints, at the same code."""
    torch.manual_seed(0)
    stage = TzKStage((4,), {"a": 2}, steps=2, hidden=8, net_hidden=8, code_steps=2, code_hidden=8,
                     objective="paper")
    t = torch.randn(6, 4)
    stage.loss(t, torch.ones(6, 1))
    randomize(stage)
    stage.eval()
    z, logdet = stage.t_flow(t)

    noise, uniform = torch.randn(6, 2), torch.rand(6)  # decoder mode: the code c = f_c⁻¹(noise)

    def terms(value: float, observed: bool):
        e = torch.full((6,), value)
        known = torch.full((6,), observed)
        out = knowledge_terms(stage.knowledge["a"], t, z, logdet, e, known, uniform, noise, "decoder")
        return out.enc, out.dec

    (enc0, dec0), (enc1, dec1) = terms(0.0, True), terms(1.0, True)
    enc, dec = terms(0.0, False)
    assert torch.allclose(enc, torch.logaddexp(enc0, enc1), atol=1e-5)
    assert torch.allclose(dec, torch.logaddexp(dec0, dec1), atol=1e-5)
    assert not torch.allclose(enc0, enc1)


def test_marginal_objective_by_hand():
    """Objective "marginal", term by term: enc = log p(e | t), and dec the evidence bound
    log p(t | e, c) + log p(e | c) − KL(q ‖ p(c)) at one code c ~ q = p(c | e, t)."""
    stage, t, e = _randomized_image_stage()
    stage.eval()
    torch.manual_seed(3)
    out = stage.loss(t, e)

    torch.manual_seed(3)  # replay the same draws by hand
    z, logdet = stage.t_flow(t)
    log_p_t = gaussian_log_prob(z) + logdet
    enc, dec = log_p_t.clone(), torch.zeros_like(log_p_t)
    k = len(stage.names)
    for col, name in enumerate(stage.names):
        kn = stage.knowledge[name]
        logit_t = kn.encoder_discriminator(t).squeeze(1)
        heads = [h(t) for h in kn.encoder_posterior]
        noise = torch.randn(1, t.shape[0], kn.code_dim)[0]
        torch.rand(1, t.shape[0])
        for b in range(t.shape[0]):
            v = int(e[b, col])
            mean, log_std = heads[v][0][b], heads[v][1][b]
            c = kn.code_flow.inverse((mean + log_std.exp() * noise[b])[None])
            sign = 1.0 if v else -1.0
            kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, log_std.exp()),
                                                   torch.distributions.Normal(0.0, 1.0)).sum()
            dmean, dlog_std = kn.decoder[v](c)
            enc_i = torch.nn.functional.logsigmoid(sign * logit_t[b])
            enc[b] = enc[b] + enc_i
            dec_i = torch.nn.functional.logsigmoid(sign * kn.decoder_discriminator(c).squeeze()) \
                + (gaussian_log_prob(z[b:b + 1], dmean, dlog_std) + logdet[b])[0] - kl
            dec[b] = dec[b] + dec_i / k + (1 - 1 / k) * enc_i  # mean_j [dec_j + Σ_{i≠j} enc_i]
    bound = -0.5 * (enc + dec).mean()
    assert torch.allclose(out.metrics["bound"], bound, rtol=1e-4)
    assert torch.allclose(out.loss, bound, rtol=1e-4)


def _vector_knowledge(volume_preserving: bool):
    torch.manual_seed(0)
    stage = TzKStage((3,), {"a": {"code_dim": 2, "volume_preserving": volume_preserving}},
                     steps=2, hidden=8, net_hidden=8, code_steps=2, code_hidden=8)
    t = torch.randn(5, 3)
    stage.loss(t, torch.ones(5, 1))
    randomize(stage, scale=0.3)
    return stage.double().eval(), t.double()


@pytest.mark.parametrize("volume_preserving", [True, False])
def test_marginal_decoder_term_bounds_the_decoders_likelihood(volume_preserving):
    """E[dec] ≤ log p(t, e | k) = log ∫ p(t | e, c) p(e | c) p(c) dc, estimated with 20,000
    importance samples; and the closed-form KL equals the Monte Carlo one through f_c."""
    stage, t = _vector_knowledge(volume_preserving)
    kn = stage.knowledge["a"]
    z, logdet = stage.t_flow(t)
    e, known = torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.bool)
    n = 20_000
    with torch.no_grad():
        noise = torch.randn(n, 5, 2, dtype=torch.float64)
        dec = torch.stack([knowledge_terms(kn, t, z, logdet, e, known, torch.rand(5, dtype=torch.float64),
                                           eps, objective="marginal").dec for eps in noise[:500]])
        mean, log_std = kn.posterior(t, 1)
        mean_n, log_std_n = mean.repeat(n, 1), log_std.repeat(n, 1)  # (n·5, 2), example-minor
        c = kn.code_inverse(mean_n + log_std_n.exp() * noise.flatten(0, 1))
        log_q = kn.code_log_prob(c, mean_n, log_std_n).view(n, 5)
        log_prior = kn.code_log_prob(c).view(n, 5)
        dmean, dlog_std = kn.decoder_gaussian(c, 1)
        log_joint = (gaussian_log_prob(z.repeat(n, 1), dmean, dlog_std, event_dims=1)
                     + torch.nn.functional.logsigmoid(kn.decoder_logit(c))).view(n, 5) + logdet + log_prior
        evidence = torch.logsumexp(log_joint - log_q, 0) - math.log(n)
        kl = 0.5 * (mean ** 2 + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
    assert torch.allclose((log_q - log_prior).mean(0), kl, atol=0.05)  # f_c's log-det cancels
    assert (dec.mean(0) <= evidence + 0.02).all()
    assert (evidence - dec.mean(0) > 1e-3).any()  # a bound, not an equality, off the optimum


def test_marginal_unobserved_present_variable_takes_p_e_given_t_as_its_posterior():
    """Unobserved e: enc = 0 (Σ_e p(e | t) = 1) and dec = Σ_e p(e | t) (dec_e − log p(e | t)),
    a bound on log Σ_e exp(dec_e), the decoder's likelihood marginalised over e."""
    stage, t = _vector_knowledge(True)
    kn = stage.knowledge["a"]
    z, logdet = stage.t_flow(t)
    noise, uniform = torch.randn(5, 2, dtype=torch.float64), torch.rand(5, dtype=torch.float64)

    def terms(value: float, observed: bool):
        e, known = torch.full((5,), value, dtype=torch.float64), torch.full((5,), observed)
        return knowledge_terms(kn, t, z, logdet, e, known, uniform, noise, objective="marginal")

    dec0, dec1 = terms(0.0, True).dec, terms(1.0, True).dec
    unknown = terms(0.0, False)
    q1 = torch.sigmoid(kn.encoder_logit(t))
    expected = q1 * (dec1 - q1.log()) + (1 - q1) * (dec0 - (1 - q1).log())
    assert torch.allclose(unknown.enc, torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(unknown.dec, expected)
    assert (unknown.dec <= torch.logaddexp(dec0, dec1) + 1e-9).all()
    assert torch.allclose(terms(1.0, True).enc, torch.nn.functional.logsigmoid(kn.encoder_logit(t)))


def test_empty_knowledge_is_the_flow_nll():
    stage = _image_stage()
    t, e = _batch()
    out = stage.loss(t, e, active=[])
    assert torch.allclose(out.loss, -stage.log_prob(t).mean())


def test_samples_and_codes_have_the_right_shapes():
    stage = _image_stage()
    t, e = _batch()
    out = stage.loss(t, e, emit_codes=["a"])
    assert out.codes["a"].shape == (8, 3) and out.codes["a"].requires_grad
    assert stage.sample(5).shape == (5, 1, 8, 8)
    assert stage.sample(4, "b", temperature=0.5).shape == (4, 1, 8, 8)
    assert stage.discriminate(t).shape == (8, 2)


def test_online_knowledge_keeps_existing_weights():
    stage = _image_stage()
    before = {k: v.clone() for k, v in stage.state_dict().items()}
    stage.add_knowledge("c", 2)
    after = stage.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert stage.names == ["a", "b", "c"]


def test_bits_per_dim_convention():
    # uniform density on [-0.5, 0.5)^D has NLL 0 → exactly `bits` bits per dim
    assert bits_per_dim(0.0, 1024, bits=8) == 8
    assert math.isclose(bits_per_dim(1024 * math.log(2), 1024, bits=8), 9)
    assert math.isclose(bits_per_dim(10 * math.log(2), 10), 1.0)


def _mixture(n: int, generator: torch.Generator):
    """Four well-separated 2-D Gaussian clusters; one knowledge type per cluster."""
    centres = torch.tensor([[-4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [4.0, 4.0]])
    label = torch.randint(0, 4, (n,), generator=generator)
    t = centres[label] + 0.5 * torch.randn(n, 2, generator=generator)
    return t, torch.nn.functional.one_hot(label, 4).float(), label


def test_stage_learns_a_mixture_of_clusters():
    """The paper's recipe: fit the t-flow alone (K = 0), freeze it, then learn the knowledge."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    stage = TzKStage((2,), {f"cluster{i}": 2 for i in range(4)}, steps=6, hidden=64,
                     net_hidden=32, code_steps=2, code_hidden=16)
    flow_params = list(stage.t_flow.parameters())
    optimizer = torch.optim.Adam(flow_params, lr=3e-3)
    for _ in range(500):
        t, e, _ = _mixture(256, g)
        loss = stage.loss(t, e, active=[]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stage.t_flow.requires_grad_(False)
    knowledge_params = [p for p in stage.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(knowledge_params, lr=3e-3)
    for _ in range(400):
        t, e, _ = _mixture(256, g)
        loss = stage.loss(t, e).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    stage.eval()
    t, e, label = _mixture(2000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        accuracy = ((stage.discriminate(t) > 0.5).float() == e).float().mean(0)
        prior_nll = -stage.log_prob(t)
        for i, name in enumerate(stage.names):
            mine = label == i
            conditional_nll = -stage.conditional_log_prob(name, t[mine]).mean()
            assert conditional_nll < prior_nll[mine].mean() - 0.7, (name, conditional_nll, prior_nll[mine].mean())
    assert (accuracy >= 0.95).all(), accuracy


def test_zero_weight_examples_do_not_touch_the_loss():
    stage, t, e = _randomized_image_stage()
    t = t.clone().requires_grad_(True)
    weight = torch.tensor([1.0, 0.0] * 4)
    stage.loss(t, e, weight=weight, emit_codes=()).loss.backward()
    assert t.grad[weight == 0].abs().max() == 0
    assert t.grad[weight == 1].abs().max() > 0


def test_mixed_precision_keeps_flows_and_densities_in_float32():
    """Under bf16 autocast (CPU here; the same code runs on CUDA) the networks may run in
    bf16, but z, log-determinants and log-densities stay float32 and close to full precision."""
    torch.manual_seed(0)
    stage = TzKStage((1, 8, 8), {"a": 3}, levels=2, steps=2, hidden=8, net_hidden=8,
                     code_steps=2, code_hidden=8, permutation="lu")
    t, e = _batch()
    stage.loss(t, e[:, :1])
    randomize(stage)
    stage.eval()
    torch.manual_seed(1)
    full = stage.loss(t, e[:, :1], mode="encoder")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = stage.t_flow(t)
        back = stage.t_flow.inverse(z)  # the same (bf16-net) map in both directions
        torch.manual_seed(1)
        mixed = stage.loss(t, e[:, :1], mode="encoder")
    assert z.dtype == logdet.dtype == mixed.loss.dtype == torch.float32
    assert (back - t).abs().max() < 1e-4
    assert torch.allclose(mixed.loss, full.loss, rtol=2e-2)
