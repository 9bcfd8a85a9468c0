"""The CUDA paths: flows and stages under bf16 autocast, training on the GPU, torch.compile.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import json

import torch

from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.model.flows import Glow
from tzkgraph.model.stage import TzKStage
from tzkgraph.spec.load import load_spec
from tzkgraph.training.train import run

from helpers import autocast_round_trip, randomize, requires_cuda

pytestmark = requires_cuda
CUDA = torch.device("cuda")


def _tiny(tmp_path, *overrides):
    quick = ["data.limit=1000", "train.device=cuda", "train.log_every=5", "train.checkpoint_every=0",
             "train.phases.0.steps=30", "train.phases.1.steps=20",
             f"train.out_dir={tmp_path / 'runs'}", f"train.cache_dir={tmp_path / 'cache'}"]
    return load_spec("graphs/tiny.yaml", quick + list(overrides))


def test_glow_under_bf16_autocast_keeps_float32_logdets_and_inverts():
    torch.manual_seed(0)
    flow = Glow((1, 16, 16), levels=2, steps=3, hidden=32, permutation="lu").to(CUDA)
    x = torch.rand(32, 1, 16, 16, device=CUDA) - 0.5
    z, logdet, back, logdet_ref = autocast_round_trip(flow, x, "cuda")
    assert z.dtype == torch.float32 and logdet.dtype == torch.float32
    # The coupling nets ran in bf16; the 1x1 convolutions, affine maps and log-determinants did
    # not. The inverse's net inputs differ from the forward's by float32 rounding, which bf16
    # rounding can turn into a 1e-3-sized change of a shift: invertible to ~1e-3, not 1e-6.
    error = (back - x).abs().max().item()
    assert error < 1e-2, f"round trip off by {error:.2e}"
    assert torch.allclose(logdet, logdet_ref, rtol=2e-2, atol=0.5), (logdet - logdet_ref).abs().max()


def test_stage_loss_under_autocast_matches_float32():
    torch.manual_seed(0)
    stage = TzKStage((6,), {str(i): 2 for i in range(4)}, steps=2, hidden=32, net_hidden=32).to(CUDA)
    t = torch.randn(256, 6, device=CUDA)
    e = (torch.rand(256, 4, device=CUDA) < 0.3).float()
    stage.loss(t, e)  # initialisation
    randomize(stage, 0.1)
    torch.manual_seed(1)
    ref = stage.loss(t, e, mode="encoder").loss
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = stage.loss(t, e, mode="encoder")
    assert out.loss.dtype == torch.float32
    assert abs(out.loss.item() - ref.item()) / abs(ref.item()) < 2e-2
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in stage.parameters() if p.grad is not None)


def test_training_on_the_gpu_with_bf16_keeps_data_and_caches_there(tmp_path):
    result = run(_tiny(tmp_path, "train.amp=true"), progress=False, say=lambda _: None)
    assert result.finished and result.caches_built == ["images/t_flow"]
    lines = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    pretrain = [l["loss"] for l in lines if l["phase"] == "pretrain"]
    assert all(map(torch.isfinite, torch.tensor([l["loss"] for l in lines])))
    assert pretrain[-1] < pretrain[0] - 100  # the flow learns in bf16 too
    assert all(l["images_per_s"] > 0 for l in lines)
    state = load_checkpoint(result.run_dir / "checkpoint.pt")  # a GPU checkpoint loads on the CPU
    assert all(v.device.type == "cpu" for v in state["model"].values())


def test_torch_compile_trains_the_flow_like_eager(tmp_path):
    flow_only = "train.phases=[{name: pretrain, trains: [images/flow], steps: 30}]"
    eager = run(_tiny(tmp_path / "eager", "train.amp=false", flow_only), progress=False, say=lambda _: None)
    compiled = run(_tiny(tmp_path / "compiled", "train.amp=false", "train.compile=true", flow_only),
                   progress=False, say=lambda _: None)
    assert compiled.finished and len(eager.history) == len(compiled.history)
    # The flow phase has no random draws (dequantisation noise is a hash of example and step):
    # same batches, same losses up to the kernels' summation order.
    a = [l["loss"] for l in eager.history]
    b = [l["loss"] for l in compiled.history]
    assert all(abs(x - y) <= 0.01 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
