"""Shared test helpers: parameter randomisation and reference log-determinants."""

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


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> TrainedRun:
    """``graphs/tiny.yaml`` trained once for the session (300 MNIST images per split, 40 + 30 steps)."""
    from tzkgraph.training.train import run

    root = tmp_path_factory.mktemp("trained_tiny")
    trained = TrainedRun("graphs/tiny.yaml",
                         ["data.limit=300", "train.phases.0.steps=40", "train.phases.1.steps=30",
                          "train.checkpoint_every=0", f"train.out_dir={root / 'runs'}",
                          f"train.cache_dir={root / 'cache'}"], root / "runs" / "tiny")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is faster, and far faster on a busy machine
    try:
        run(trained.spec(), progress=False, say=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return trained
