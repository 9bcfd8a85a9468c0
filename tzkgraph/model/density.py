"""Gaussian log-densities and the one bits-per-dimension convention."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_log_prob", "bits_per_dim", "LOG_2PI"]

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor | None = None, log_std: Tensor | None = None,
                      event_dims: int | None = None) -> Tensor:
    """``log N(x; mean, diag exp(log_std)²)`` summed over each event's dims.

    ``mean``/``log_std`` of ``None`` mean 0 / 0 (the standard normal). Computed
    in float32 or wider even when the inputs come from a lower-precision
    autocast region.

    Arguments:
        event_dims: how many trailing dims make one event (summed over); ``None``
            = all but the first (the batch dim).

    Returns:
        log-densities in nats: ``(B,)``, or ``x``'s leading dims when ``event_dims`` is given.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    if mean is not None:
        x = x - mean.to(dtype)
    if log_std is not None:
        log_std = log_std.to(dtype)
        x = x * torch.exp(-log_std)
    out = -0.5 * (x * x + LOG_2PI)
    if log_std is not None:
        out = out - log_std
    if event_dims is None:
        return out.reshape(out.shape[0], -1).sum(dim=1)
    return out.flatten(-event_dims).sum(dim=-1)


def bits_per_dim(nll: Tensor | float, dims: int, bits: int | None = None) -> Tensor | float:
    """Converts a negative log-likelihood in nats to bits per dimension.

    The convention (the papers' one, so figures compare with Glow's 1.05 and
    TzK's 1.11 on MNIST): pixels are ``bits``-bit integers ``k``, dequantised
    to ``t = (k + u) / 2**bits − 0.5`` with ``u ~ U[0, 1)`` (see
    :func:`tzkgraph.data.sources.dequantise`). ``nll`` is the continuous
    ``−log p(t)`` of that scaled data; adding ``D · log 2**bits`` gives a bound
    on the discrete NLL of the integers, hence::

        bpd = nll / (D · ln 2) + bits

    For continuous observations (a parent's codes) pass ``bits=None``:
    ``bpd = nll / (D · ln 2)``.

    Arguments:
        nll: negative log-likelihood per example, in nats.
        dims: number of dimensions ``D`` of one example (e.g. 1·32·32).
        bits: bits per pixel of the quantised data, or ``None``.
    """
    return nll / (dims * math.log(2)) + (bits or 0)
