"""Glow for images (multi-scale, factor-out into one flat latent) and a flow for vectors."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn
import torch

from .actnorm import ActNorm
from .base import Flow, FlowSequence, sum_except_batch
from .coupling import AffineCoupling
from .elementwise import Squeeze, SymLog
from .permute import InvConvLU, Shuffle

__all__ = ["Glow", "SplitPrior", "VectorFlow", "flow_step", "PERMUTATIONS", "PRIORS"]

PERMUTATIONS = {"shuffle": Shuffle, "lu": InvConvLU}
PRIORS = ("learned", "fixed")  # a Glow's prior over its factored-out parts (see Glow)
PRIOR_LOG_STD_BOUND = 5.0      # σ ∈ (e^-5, e^5), softly


class SplitPrior(Flow):
    """Glow's learned prior of one factored-out part, written as a flow layer.

    ``u = (z − μ) · e^{−log σ}`` with ``logdet = −Σ log σ``, so a standard normal over ``u``
    is ``N(z; μ, σ²)``. For a part split off beside a kept half ``h`` (the ``cond`` of
    ``forward``/``inverse``), ``(μ, log σ)`` are a zero-initialised 3×3 convolution of ``h``
    (Glow's ``split2d`` prior) plus a learned value per dimension (normflows' per-level
    Gaussian: MNIST's constant border pixels want their own scale); for the last level's
    output (no ``h``) only the latter (Glow's ``learntop``). Zero-initialised, the layer
    starts as the identity; ``log σ`` is softly bounded to ``±5``.

    Arguments:
        shape: ``(C, H, W)`` of the part.
        kept_channels: channels of ``h``, or 0 for the last level.
    """

    def __init__(self, shape: Sequence[int], kept_channels: int = 0):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(*shape))
        self.log_std = nn.Parameter(torch.zeros(*shape))
        self.net = None
        if kept_channels:
            self.net = nn.Conv2d(kept_channels, 2 * shape[0], 3, padding=1)
            nn.init.zeros_(self.net.weight)
            nn.init.zeros_(self.net.bias)

    def _gaussian(self, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, raw = self.mean, self.log_std
        if self.net is not None:
            if cond is None:
                raise ValueError("a split prior needs the kept half as cond")
            m, r = self.net(cond).chunk(2, dim=1)
            mean, raw = mean + m, raw + r
        return mean, PRIOR_LOG_STD_BOUND * torch.tanh(raw / PRIOR_LOG_STD_BOUND)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_std = self._gaussian(cond)
        logdet = -sum_except_batch(log_std.expand_as(x))
        return (x - mean) * torch.exp(-log_std), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        mean, log_std = self._gaussian(cond)
        return z * torch.exp(log_std) + mean


def flow_step(channels: int, hidden: int, image: bool, permutation: str, seed: int,
              cond_channels: int = 0, activation: str = "swish", volume_preserving: bool = False) -> list[Flow]:
    """One Glow step: ActNorm → permutation → affine coupling (each with ``logdet = 0``
    when ``volume_preserving``)."""
    if permutation not in PERMUTATIONS:
        raise ValueError(f"unknown permutation {permutation!r} (known: {', '.join(PERMUTATIONS)})")
    vp = volume_preserving
    layers: list[Flow] = [ActNorm(channels, volume_preserving=vp),
                          PERMUTATIONS[permutation](channels, seed=seed, volume_preserving=vp)]
    if channels >= 2:
        layers.append(AffineCoupling(channels, hidden, image, cond_channels, activation, volume_preserving=vp))
    return layers


class _Density:
    """``log_prob`` and ``sample`` of a flow over a flat latent ``z ∈ R^dim`` with a standard
    normal base: what makes :class:`Glow` and :class:`VectorFlow` usable as density models."""

    dim: int

    def log_prob(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``log p(x) = log N(z; 0, I) + log|det ∂z/∂x|``, ``(B,)`` nats."""
        z, logdet = self(x, cond)
        return -0.5 * (z.square() + math.log(2 * math.pi)).flatten(1).sum(1) + logdet

    def sample(self, n: int, temperature: float = 1.0, cond: Tensor | None = None) -> Tensor:
        """``n`` draws ``x = f⁻¹(temperature · ε)``, ``ε ~ N(0, I)``."""
        p = next(self.parameters())
        return self.inverse(temperature * torch.randn(n, self.dim, device=p.device, dtype=p.dtype), cond)


class Glow(_Density, Flow):
    """Multi-scale Glow whose ``forward`` maps an image to one flat latent ``z``.

    Each of the ``levels`` squeezes, applies ``steps`` flow steps, and (but for
    the last) factors out half of its channels. Every factored-out part is
    flattened and gathered, with the last level's output, into one
    ``z ∈ R^D`` (``D = C·H·W``), so any density over the image — the prior or a
    conditional — is a Gaussian over that whole ``z``.

    Arguments:
        in_shape: ``(C, H, W)``, with ``H`` and ``W`` divisible by ``2**levels``.
        levels: number of scales.
        steps: flow steps per level.
        hidden: channels of the coupling networks.
        permutation: ``"shuffle"`` (fixed, the paper's choice) or ``"lu"``.
        activation: of the coupling networks, ``"swish"`` (the paper's) or ``"relu"``.
        cond_channels: size of an optional conditioning vector for the couplings.
        prior: ``"learned"`` (Glow's): each factored-out part passes through a
            :class:`SplitPrior` given the half that stays, the last level's output through a
            learned per-dimension Gaussian, so the standard normal over ``z`` is a learned
            conditional prior over the parts; ``"fixed"``: ``N(0, I)`` over the parts as they
            come (the TzK paper's). Either way ``z`` is one flat latent with a standard
            normal base, which every density over the image (prior or decoder) regresses.

    Example:
        >>> flow = Glow((1, 32, 32), levels=3, steps=4, hidden=64)
        >>> z, logdet = flow(torch.rand(8, 1, 32, 32) - 0.5)   # (8, 1024), (8,)
        >>> x = flow.inverse(z)                                # (8, 1, 32, 32)
        >>> flow.log_prob(x), flow.sample(16)                  # (8,) nats, (16, 1, 32, 32)
    """

    def __init__(self, in_shape: Sequence[int], levels: int, steps: int, hidden: int,
                 permutation: str = "shuffle", cond_channels: int = 0, activation: str = "swish",
                 prior: str = "learned"):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r} (known: {', '.join(PRIORS)})")
        c, h, w = in_shape
        if h % 2**levels or w % 2**levels:
            raise ValueError(f"image size {h}×{w} is not divisible by 2**levels = {2**levels}")
        self.in_shape = (c, h, w)
        self.dim = c * h * w
        self.levels = nn.ModuleList()
        self.out_shapes: list[tuple[int, int, int]] = []  # shape of each factored-out part
        seed = 0
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            layers: list[Flow] = [Squeeze()]
            for _ in range(steps):
                layers += flow_step(c, hidden, True, permutation, seed, cond_channels, activation)
                seed += 1
            self.levels.append(FlowSequence(layers))
            if level < levels - 1:
                self.out_shapes.append((c // 2, h, w))
                c = c - c // 2
        self.out_shapes.append((c, h, w))
        self.prior = prior
        self.priors = None
        if prior == "learned":  # a level's channels are even: the kept half is as wide as the part
            last = len(self.out_shapes) - 1
            self.priors = nn.ModuleList(SplitPrior(shape, 0 if i == last else shape[0])
                                        for i, shape in enumerate(self.out_shapes))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        parts, logdet = [], x.new_zeros(x.shape[0])
        h = x
        last = len(self.levels) - 1
        for i, (level, shape) in enumerate(zip(self.levels, self.out_shapes)):
            h, ld = level(h, cond)
            logdet = logdet + ld
            part, h = (h, None) if i == last else (h[:, : shape[0]], h[:, shape[0] :])
            if self.priors is not None:
                part, ld = self.priors[i](part, h)
                logdet = logdet + ld
            parts.append(part.flatten(1))
        return torch.cat(parts, dim=1), logdet  # (B, D), (B,)

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        sizes = [math.prod(s) for s in self.out_shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(z.split(sizes, dim=1), self.out_shapes)]
        h = None
        for i in reversed(range(len(self.levels))):
            part = parts[i] if self.priors is None else self.priors[i].inverse(parts[i], h)
            h = part if h is None else torch.cat([part, h], dim=1)
            h = self.levels[i].inverse(h, cond)
        return h


class VectorFlow(_Density, FlowSequence):
    """A flow over vectors ``(B, D)``: ``steps`` × (ActNorm → permutation → coupling).

    Used for the code flows ``f_c`` and for stages whose observation is a
    parent's code. For ``D = 1`` there is nothing to couple and the flow is
    affine (ActNorm only). ``symlog=True`` ends every step with the SymLog
    activation of the TzK workshop paper (heavier tails).

    Arguments:
        dim: dimension ``D``.
        steps: number of flow steps.
        hidden: width of the coupling networks.
        permutation: ``"shuffle"`` or ``"lu"``.
        activation: of the coupling networks, ``"swish"`` or ``"relu"``.
        cond_channels: size of an optional conditioning vector.
        symlog: append a SymLog after each step.
        volume_preserving: every layer has ``logdet = 0`` (not with ``symlog``): the flow
            reshapes a density but cannot shrink or grow its volume. The code flows ``f_c``
            are built so, which keeps a code space from collapsing (docs/objective.md, "Code space").
    """

    def __init__(self, dim: int, steps: int, hidden: int, permutation: str = "shuffle",
                 cond_channels: int = 0, symlog: bool = False, activation: str = "swish",
                 volume_preserving: bool = False):
        if symlog and volume_preserving:
            raise ValueError("a SymLog is not volume-preserving")
        layers: list[Flow] = []
        for seed in range(steps):
            layers += flow_step(dim, hidden, False, permutation, seed, cond_channels, activation,
                                volume_preserving)
            if symlog:
                layers.append(SymLog())
        super().__init__(layers)
        self.in_shape = (dim,)
        self.dim = dim
        self.volume_preserving = volume_preserving
