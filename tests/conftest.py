"""Shared test helpers: parameter randomisation and reference log-determinants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@torch.no_grad()
def randomize(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Moves every parameter away from its (often identity) initialisation.

    Weight matrices get noise of size ``scale / sqrt(fan_in)`` so deep flows
    stay well-conditioned; vectors (biases, scales) get ``scale``.
    """
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        fan_in = p[0].numel() if p.dim() >= 2 else 1
        noise = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
        p.add_(scale / fan_in**0.5 * noise)
    return module


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det ∂fn(x)/∂x|`` per example, from autograd's full Jacobian."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0)).flatten(), xi)
        out.append(torch.linalg.slogdet(jac.reshape(xi.numel(), xi.numel()))[1])
    return torch.stack(out)
