"""The flow contract every layer follows, and a sequence of flows."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

__all__ = ["Flow", "FlowSequence", "centred", "sum_except_batch"]


def sum_except_batch(x: Tensor) -> Tensor:
    """Sums every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def centred(log_scale: Tensor, dims: int = 1) -> Tensor:
    """``log_scale`` less its mean over the last ``dims`` dims: scales whose product is 1.

    What makes a layer volume-preserving (``log|det| = 0``) while it still rescales
    dimensions against each other.
    """
    keep = tuple(range(log_scale.dim() - dims, log_scale.dim()))
    return log_scale - log_scale.mean(dim=keep, keepdim=True)


class Flow(nn.Module):
    """An invertible map with an exact log-determinant.

    One direction convention for the whole package:

    - ``forward(x, cond=None) -> (z, logdet)`` goes **data → latent**, and
      ``logdet`` is ``log |det ∂z/∂x|`` with shape ``(B,)``;
    - ``inverse(z, cond=None) -> x`` goes latent → data and is exact.

    So the density of data under a base ``p(z)`` is
    ``log p(x) = log p(z) + logdet``. ``cond`` is an optional conditioning
    tensor for layers that take one (ignored by the others). Batch first.
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class FlowSequence(Flow):
    """Flows applied in order (data → latent); inverted in reverse order.

    Arguments:
        flows: the layers, first applied first in ``forward``.
    """

    def __init__(self, flows: Iterable[Flow]):
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for flow in self.flows:
            x, ld = flow(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        for flow in reversed(self.flows):
            z = flow.inverse(z, cond)
        return z
