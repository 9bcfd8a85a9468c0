"""Helpers the test modules share (imported as ``from helpers import ...``; fixtures stay in conftest)."""

from __future__ import annotations

from pathlib import Path

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


@torch.no_grad()
def autocast_round_trip(flow: nn.Module, x: torch.Tensor, device_type: str):
    """A flow initialised on ``x``, randomised and evaluated in float32 and under bf16 autocast.

    Returns:
        ``(z, logdet, back, logdet_ref)``: the autocast forward, its inverse of ``z``, and
        the float32 forward's logdet.
    """
    with torch.enable_grad():
        flow(x)  # ActNorm initialisation
    randomize(flow, 0.1)
    flow.eval()
    _, logdet_ref = flow(x)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        z, logdet = flow(x)
        back = flow.inverse(z)
    return z, logdet, back, logdet_ref


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det ∂fn(x)/∂x|`` per example, from autograd's full Jacobian."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0)).flatten(), xi)
        out.append(torch.linalg.slogdet(jac.reshape(xi.numel(), xi.numel()))[1])
    return torch.stack(out)


class TrainedRun:
    """A graph trained by a fixture: its YAML, the ``--set`` overrides pointing at its run, the run folder."""

    def __init__(self, graph: str, overrides: list[str], run_dir: Path):
        self.graph, self.overrides, self.run_dir = graph, overrides, run_dir

    def spec(self, *more: str):
        from tzkgraph.spec.load import load_spec

        return load_spec(self.graph, self.overrides + list(more))

    def args(self, *more: str) -> list[str]:
        """``GRAPH --set K=V ...`` for the command line."""
        return [self.graph] + [a for o in self.overrides + list(more) for a in ("--set", o)]


def tiny(tmp_path: Path, *overrides: str):
    """``graphs/tiny.yaml`` on 1000 MNIST images, 30 + 20 steps, writing under ``tmp_path``."""
    from tzkgraph.spec.load import load_spec

    quick = ["data.limit=1000", "train.log_every=5", "train.checkpoint_every=10",
             "train.phases.0.steps=30", "train.phases.1.steps=20",
             f"train.out_dir={tmp_path / 'runs'}", f"train.cache_dir={tmp_path / 'cache'}"]
    return load_spec("graphs/tiny.yaml", quick + list(overrides))
