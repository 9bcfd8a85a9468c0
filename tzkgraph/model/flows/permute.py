"""Channel permutations: a fixed shuffle and an invertible 1×1 convolution (LU)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Flow, centred

__all__ = ["Shuffle", "InvConvLU", "lu_weight"]


def lu_weight(p: Tensor, lower: Tensor, upper: Tensor, lower_mask: Tensor, eye: Tensor,
              sign_s: Tensor, log_s: Tensor) -> Tensor:
    """``W = P L (U + diag(sign · exp(log_s)))`` from its factors, ``(..., C, C)``.

    Leading dims batch (the stacked layers of :mod:`tzkgraph.model.stacked` pass ``K``
    sets of factors); ``log_s`` as applied (centred when volume-preserving).
    """
    full_lower = lower * lower_mask + eye
    full_upper = upper * lower_mask.transpose(-1, -2) + torch.diag_embed(sign_s * log_s.exp())
    return p @ full_lower @ full_upper


def _mix(x: Tensor, weight: Tensor) -> Tensor:
    """Applies a (C, C) channel-mixing matrix to ``(B, C)`` or ``(B, C, H, W)``.

    Always at the flow's own precision, also inside an autocast region: an
    invertible map computed in bf16 would no longer be inverted exactly. A
    matrix product, not a 1×1 convolution: on CUDA, cuDNN convolutions may run
    in TF32 (10-bit mantissa), float32 matrix products do not by default; on a
    CPU the product is also the faster of the two.
    """
    with torch.autocast(x.device.type, enabled=False):
        weight = weight.to(x.dtype)
        if x.dim() == 2:
            return x @ weight.T
        return (weight @ x.flatten(2)).view(x.shape)


class Shuffle(Flow):
    """A fixed random permutation of channels (the TzK paper's choice).

    The permutation is drawn once from ``seed`` and kept as a buffer, so a
    saved model restores exactly the same one. ``logdet`` is 0.

    Arguments:
        channels: number of channels ``C``.
        seed: seed of the permutation.
        volume_preserving: accepted for symmetry with :class:`InvConvLU`; a shuffle always is.
    """

    def __init__(self, channels: int, seed: int = 0, volume_preserving: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(channels, generator=g)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return z[:, self.inv_perm]


class InvConvLU(Flow):
    """Invertible 1×1 convolution ``W = P L (U + diag(sign · exp(log_s)))`` (Glow).

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` strictly
    upper triangular; ``log|det W| = Σ log_s`` per pixel. Initialised from a
    random rotation.

    Arguments:
        channels: number of channels ``C``.
        seed: seed of the initial rotation.
        volume_preserving: use ``log_s`` less its mean, so ``|det W| = 1``.
    """

    def __init__(self, channels: int, seed: int = 0, volume_preserving: bool = False):
        super().__init__()
        self.volume_preserving = volume_preserving
        g = torch.Generator().manual_seed(seed)
        w = torch.linalg.qr(torch.randn(channels, channels, generator=g))[0]
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def extra_repr(self) -> str:
        return f"{self.eye.shape[0]}" + (", volume_preserving=True" if self.volume_preserving else "")

    def effective_log_s(self) -> Tensor:
        """``log|diag U|``: ``log_s``, centred when volume-preserving."""
        return centred(self.log_s) if self.volume_preserving else self.log_s

    def weight(self) -> Tensor:
        """The (C, C) matrix ``W``, at the parameters' precision (also under autocast)."""
        with torch.autocast(self.lower.device.type, enabled=False):
            return lu_weight(self.p, self.lower, self.upper, self.lower_mask, self.eye, self.sign_s,
                             self.effective_log_s())

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        spatial = x[0, 0].numel()
        logdet = (self.effective_log_s().sum() * spatial).expand(x.shape[0])
        return _mix(x, self.weight()), logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return _mix(z, torch.linalg.inv(self.weight()))
