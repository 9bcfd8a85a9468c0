"""torchrun with 2 CPU processes (gloo) against one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tzkgraph.core.checkpoint import load_checkpoint
from tzkgraph.spec.load import load_spec
from tzkgraph.training.train import run

ROOT = Path(__file__).parents[1]


def _overrides(out: Path, phases: str) -> list[str]:
    return ["data.limit=300", "train.batch_size=16", "train.log_every=1", "train.checkpoint_every=0",
            "train.warmup=2", f"train.phases={phases}",
            f"train.out_dir={out / 'runs'}", f"train.cache_dir={out / 'cache'}"]


def _torchrun(overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    sets = [arg for o in overrides for arg in ("--set", o)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tzkgraph", "run", "graphs/tiny.yaml", "--no-progress", *sets, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _losses(out: Path) -> list[float]:
    lines = (out / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_two_processes_match_one_on_the_same_global_batch(tmp_path):
    # The flow alone: its only randomness, dequantisation, is keyed by example, not by process.
    phases = "[{name: pretrain, trains: [images/flow], steps: 6}]"
    single = _overrides(tmp_path / "one", phases)
    run(load_spec("graphs/tiny.yaml", single), progress=False, say=lambda _: None)
    double = _overrides(tmp_path / "two", phases)
    result = _torchrun(double)
    assert result.returncode == 0, result.stderr[-2000:]

    # equal up to float summation order (gradients all-reduced vs summed in one batch), which
    # Adam's normalisation carries forward: a wrong split would be off by tens of nats
    one, two = torch.tensor(_losses(tmp_path / "one")), torch.tensor(_losses(tmp_path / "two"))
    assert len(one) == len(two) == 6
    assert torch.allclose(one, two, rtol=0, atol=0.05), (one, two)
    a = load_checkpoint(tmp_path / "one" / "runs" / "tiny" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "runs" / "tiny" / "checkpoint.pt")["model"]
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a if a[k].is_floating_point()])
    # Adam moves a weight by about lr·sign(g) whatever |g|: where g is ~0, summation order can
    # flip the sign, so a few weights differ by up to one step; unsynchronised processes would
    # differ almost everywhere
    assert (diff > 1e-5).float().mean() < 0.02
    assert diff.max() < 3e-3


def test_whole_graph_trains_and_resumes_under_torchrun(tmp_path):
    """Knowledge, a cache built by rank 0, a checkpoint by rank 0, and --resume, with 2 processes."""
    phases = "[{name: pretrain, trains: [images/flow], steps: 3}, {name: conditional, freeze: [images/flow], steps: 4}]"
    overrides = _overrides(tmp_path, phases)
    first = _torchrun(overrides, "--stop-after", "5")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "cache" / "tiny" / "images.t_flow.h5").exists()
    assert load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")["step"] == 5
    second = _torchrun(overrides, "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "checkpoint.pt")
    assert state["finished"] and state["step"] == 7
    assert [json.loads(line)["step"] for line in
            (tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()] == list(range(1, 8))
