"""Every flow: exact inverse and exact log-determinant, away from the identity init."""

from __future__ import annotations

import io
import zlib

import pytest
import torch

from tzkgraph.model.flows import (ActNorm, AffineCoupling, Glow, InvConvLU, Shuffle, SplitPrior,
                            Squeeze, SymLog, VectorFlow)

from helpers import autocast_round_trip, jacobian_logdet, randomize

CASES = {
    "actnorm-image": (lambda: ActNorm(3), (3, 4, 4)),
    "actnorm-vector": (lambda: ActNorm(5), (5,)),
    "shuffle-image": (lambda: Shuffle(4, seed=1), (4, 3, 3)),
    "shuffle-vector": (lambda: Shuffle(6, seed=2), (6,)),
    "invconv-lu-image": (lambda: InvConvLU(4, seed=3), (4, 3, 3)),
    "invconv-lu-vector": (lambda: InvConvLU(5, seed=4), (5,)),
    "coupling-image": (lambda: AffineCoupling(4, hidden=8, image=True), (4, 4, 4)),
    "coupling-image-odd": (lambda: AffineCoupling(3, hidden=8, image=True), (3, 4, 4)),
    "coupling-vector": (lambda: AffineCoupling(5, hidden=16, image=False), (5,)),
    "squeeze": (lambda: Squeeze(), (2, 4, 4)),
    "symlog": (lambda: SymLog(), (7,)),
    "glow-shuffle": (lambda: Glow((1, 8, 8), levels=2, steps=2, hidden=8), (1, 8, 8)),
    "glow-lu": (lambda: Glow((3, 4, 4), levels=2, steps=2, hidden=8, permutation="lu"), (3, 4, 4)),
    "glow-relu": (lambda: Glow((1, 8, 8), levels=2, steps=2, hidden=8, activation="relu"), (1, 8, 8)),
    "vector-flow-relu": (lambda: VectorFlow(6, steps=2, hidden=16, activation="relu"), (6,)),
    "glow-fixed-prior": (lambda: Glow((1, 8, 8), levels=2, steps=2, hidden=8, prior="fixed"), (1, 8, 8)),
    "glow-three-levels": (lambda: Glow((1, 8, 8), levels=3, steps=1, hidden=8, permutation="lu"), (1, 8, 8)),
    "split-prior-top": (lambda: SplitPrior((2, 2, 2)), (2, 2, 2)),
    "glow-one-level": (lambda: Glow((2, 4, 4), levels=1, steps=3, hidden=8), (2, 4, 4)),
    "vector-flow": (lambda: VectorFlow(6, steps=3, hidden=16), (6,)),
    "vector-flow-lu-symlog": (lambda: VectorFlow(4, steps=2, hidden=16, permutation="lu", symlog=True), (4,)),
    "vector-flow-1d": (lambda: VectorFlow(1, steps=2, hidden=8), (1,)),
    # volume-preserving layers (the code flows f_c): logdet exactly 0
    "actnorm-vector-vp": (lambda: ActNorm(5, volume_preserving=True), (5,)),
    "invconv-lu-vector-vp": (lambda: InvConvLU(5, seed=4, volume_preserving=True), (5,)),
    "coupling-vector-vp": (lambda: AffineCoupling(5, hidden=16, image=False, volume_preserving=True), (5,)),
    "coupling-image-vp": (lambda: AffineCoupling(4, hidden=8, image=True, volume_preserving=True), (4, 4, 4)),
    "vector-flow-vp": (lambda: VectorFlow(6, steps=3, hidden=16, volume_preserving=True), (6,)),
    "vector-flow-lu-vp": (lambda: VectorFlow(4, steps=2, hidden=16, permutation="lu",
                                             volume_preserving=True), (4,)),
    "vector-flow-2d-vp": (lambda: VectorFlow(2, steps=3, hidden=16, volume_preserving=True), (2,)),
}
VOLUME_PRESERVING = [name for name in CASES if name.endswith("-vp")]


def _randomized(name: str):
    make, shape = CASES[name]
    torch.manual_seed(0)
    flow = make().double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    flow(x)  # data-dependent initialisation (ActNorm) happens here
    randomize(flow, seed=zlib.crc32(name.encode()) % 1000)  # not hash(): salted per process
    flow.eval()
    return flow, torch.randn(3, *shape, dtype=torch.float64)


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_is_exact(name):
    flow, x = _randomized(name)
    z, logdet = flow(x)
    assert logdet.shape == (3,)
    assert (flow.inverse(z) - x).abs().max() < 1e-6


@pytest.mark.parametrize("name", [n for n in CASES if any(True for _ in CASES[n][0]().parameters())])
def test_every_parameter_receives_a_gradient(name):
    # the negative log-likelihood under a standard normal base: a parameter it does not reach
    # (a net cut off, a scale detached) would never train
    flow, x = _randomized(name)
    flow.train()
    z, logdet = flow(x)
    (0.5 * z.flatten(1).square().sum(1) - logdet).sum().backward()
    dead = [n for n, p in flow.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


@pytest.mark.parametrize("name", list(CASES))
def test_logdet_matches_autograd_jacobian(name):
    flow, x = _randomized(name)
    _, logdet = flow(x)
    reference = jacobian_logdet(lambda v: flow(v)[0], x)
    assert torch.all((logdet - reference).abs() <= 1e-6 * reference.abs().clamp(min=1.0))


@pytest.mark.parametrize("name", VOLUME_PRESERVING)
def test_volume_preserving_flows_have_unit_jacobian(name):
    """|det ∂f/∂x| = 1 by autograd, at parameters far from the identity (scales included)."""
    flow, x = _randomized(name)
    z, logdet = flow(x)
    assert torch.equal(logdet, torch.zeros_like(logdet)) or logdet.abs().max() < 1e-12
    assert jacobian_logdet(lambda v: flow(v)[0], x).abs().max() < 1e-9
    assert not torch.allclose(z, x)  # and still a non-trivial map


@pytest.mark.parametrize("name", ["glow-shuffle", "vector-flow"])
def test_inverse_logdet_is_negated_forward(name):
    """log|det ∂x/∂z| at z = f(x) equals −logdet, checked with autograd."""
    flow, x = _randomized(name)
    z, logdet = flow(x)
    reference = jacobian_logdet(flow.inverse, z)
    assert torch.allclose(reference, -logdet, rtol=1e-6, atol=1e-6)


def test_every_layer_is_randomized_away_from_identity():
    """Guards the tests above: a randomised layer must not be the identity."""
    for name in CASES:
        if name.startswith(("shuffle", "squeeze", "symlog")):
            continue
        flow, x = _randomized(name)
        z, _ = flow(x)
        assert (z.reshape(3, -1) - x.reshape(3, -1)).abs().max() > 1e-2, name


def test_glow_gathers_all_parts_into_one_flat_latent():
    flow = Glow((1, 32, 32), levels=3, steps=1, hidden=8)
    z, logdet = flow(torch.rand(2, 1, 32, 32) - 0.5)
    assert z.shape == (2, 1024) and logdet.shape == (2,)
    assert flow.out_shapes == [(2, 16, 16), (4, 8, 8), (16, 4, 4)]


def test_actnorm_initializes_from_data():
    layer = ActNorm(3)
    x = 5 + 3 * torch.randn(256, 3, 4, 4)
    z, _ = layer(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


def test_actnorm_keeps_scale_one_on_a_constant_channel():
    # A child observing its parent's posterior means sees one value at the start
    # (the parent's last layers are zero): scale 1/eps there made the first step NaN.
    layer = ActNorm(2)
    x = torch.stack([torch.full((64,), 0.7), torch.randn(64) * 2], dim=1)
    z, logdet = layer(x)
    assert torch.allclose(layer.log_scale[0], torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(z[:, 0], torch.zeros(64), atol=1e-6) and torch.isfinite(logdet).all()
    moved, _ = layer(x + 0.01)
    assert torch.allclose(moved[:, 0], torch.full((64,), 0.01), atol=1e-5)
    assert torch.allclose(z[:, 1].std(unbiased=False), torch.tensor(1.0), atol=1e-3)


def test_reloaded_actnorm_is_not_reinitialized():
    layer = ActNorm(3)
    layer(5 + 3 * torch.randn(64, 3))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)

    reloaded = ActNorm(3)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert bool(reloaded.initialized)
    other = -7 + 0.1 * torch.randn(64, 3)  # would give very different init statistics
    assert torch.equal(reloaded(other)[0], layer(other)[0])
    assert torch.equal(reloaded.bias, layer.bias) and torch.equal(reloaded.log_scale, layer.log_scale)


def test_shuffle_permutation_is_saved():
    a, b = Shuffle(16, seed=1), Shuffle(16, seed=2)
    assert not torch.equal(a.perm, b.perm)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.perm, b.perm)


def test_conditional_coupling_depends_on_cond():
    layer = randomize(AffineCoupling(4, hidden=8, image=True, cond_channels=3)).double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    c1, c2 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    z1, _ = layer(x, c1)
    assert not torch.allclose(z1, layer(x, c2)[0])
    assert (layer.inverse(z1, c1) - x).abs().max() < 1e-10
    reference = jacobian_logdet(lambda v: layer(v, c1[:1])[0], x[:1])
    assert torch.allclose(layer(x[:1], c1[:1])[1], reference, rtol=1e-6)


def test_glow_rejects_indivisible_size():
    with pytest.raises(ValueError, match="divisible"):
        Glow((1, 28, 28), levels=3, steps=1, hidden=8)


def test_channels_last_coupling_net_matches_plain_convolutions():
    from torch import nn

    from tzkgraph.model.flows import coupling_net

    net = randomize(coupling_net(3, 6, hidden=16, image=True)).double()
    plain = nn.Sequential(*net)  # the same layers, run in the default layout
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    y = net(x)
    assert y.is_contiguous() and torch.allclose(y, plain(x), atol=1e-12)
    (g_fast,) = torch.autograd.grad(y.square().sum(), x)
    (g_plain,) = torch.autograd.grad(plain(x).square().sum(), x)
    assert torch.allclose(g_fast, g_plain, atol=1e-10)


@pytest.mark.parametrize("permutation", ["shuffle", "lu"])
def test_glow_inverts_under_bf16_autocast(permutation):
    # the coupling nets may run in bf16; the 1x1 convolutions, affine maps and logdets may not
    torch.manual_seed(0)
    flow = Glow((1, 8, 8), levels=2, steps=2, hidden=16, permutation=permutation)
    x = torch.rand(16, 1, 8, 8) - 0.5
    z, logdet, back, logdet_ref = autocast_round_trip(flow, x, "cpu")
    assert z.dtype == logdet.dtype == back.dtype == torch.float32
    assert (back - x).abs().max() < 1e-4
    assert torch.allclose(logdet, logdet_ref, rtol=2e-2, atol=0.5)


def test_learned_prior_starts_as_the_fixed_one():
    """Zero-initialised split priors are the identity: at initialisation a Glow with the learned
    prior maps like the same Glow with N(0, I) over its parts (same seed, same level weights)."""
    x = torch.rand(4, 1, 16, 16) - 0.5
    flows = []
    for prior in ("learned", "fixed"):
        torch.manual_seed(0)
        flows.append(Glow((1, 16, 16), levels=3, steps=2, hidden=8, prior=prior))
    (z1, ld1), (z2, ld2) = (f(x) for f in flows)
    assert torch.allclose(z1, z2) and torch.allclose(ld1, ld2)
    assert sum(p.numel() for p in flows[0].priors.parameters()) > 0


def test_split_prior_is_a_gaussian_given_the_kept_half():
    """N(0, I) over the output of a split prior is N(part; μ(h), σ(h)²), computed directly."""
    torch.manual_seed(1)
    prior = SplitPrior((2, 4, 4), kept_channels=3).double()
    randomize(prior, seed=5)
    part, kept = torch.randn(2, 2, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    u, logdet = prior(part, kept)
    mean, log_std = prior._gaussian(kept)
    direct = torch.distributions.Normal(mean, log_std.exp()).log_prob(part).flatten(1).sum(1)
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(u).flatten(1).sum(1)
    assert torch.allclose(standard + logdet, direct)
    with pytest.raises(ValueError, match="kept half"):
        prior(part)


def test_glow_rejects_an_unknown_prior():
    with pytest.raises(ValueError, match="unknown prior 'flat'"):
        Glow((1, 8, 8), levels=2, steps=1, hidden=8, prior="flat")
