"""Fixtures the test modules share; plain helpers are in ``helpers.py``."""

from __future__ import annotations

import pytest
import torch

from helpers import TrainedRun

@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The whole suite runs on one torch thread: its models are small, and one thread is faster
    for them (far faster on a busy machine, where two threads spin against each other); with
    ``pytest -n 2`` each of the two workers has a core of its own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> TrainedRun:
    """``graphs/tiny.yaml`` trained once for the session (300 MNIST images per split, 40 + 30 steps)."""
    from tzkgraph.training.train import run

    root = tmp_path_factory.mktemp("trained_tiny")
    trained = TrainedRun("graphs/tiny.yaml",
                         ["data.limit=300", "train.phases.0.steps=40", "train.phases.1.steps=30",
                          "train.checkpoint_every=0", f"train.out_dir={root / 'runs'}",
                          f"train.cache_dir={root / 'cache'}"], root / "runs" / "tiny")
    run(trained.spec(), progress=False, say=lambda _: None)
    return trained
