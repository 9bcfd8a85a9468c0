"""The HDF5 latent cache: reuse, invalidation by key, corruption, atomic writes."""

from __future__ import annotations

import pytest
import torch

from tzkgraph.graph.cache import LatentCache, hash_module
from tzkgraph.model.flows import VectorFlow


def _counting(calls: list):
    def compute(index):
        calls.append(len(index))
        return {"z": index.float()[:, None].repeat(1, 3), "logdet": -index.float()}
    return compute


def test_second_use_reuses_the_file(tmp_path):
    calls: list = []
    first = LatentCache(tmp_path / "c.h5", "k1")
    a = first.get_or_build(_counting(calls), n=10, batch_size=4)
    assert first.built and sum(calls) == 10
    second = LatentCache(tmp_path / "c.h5", "k1")
    b = second.get_or_build(_counting(calls), n=10, batch_size=4)
    assert not second.built and sum(calls) == 10  # nothing recomputed
    assert torch.equal(a["z"], b["z"]) and torch.equal(a["logdet"], b["logdet"])


def test_changed_key_rebuilds(tmp_path):
    calls: list = []
    LatentCache(tmp_path / "c.h5", "k1").get_or_build(_counting(calls), n=5)
    cache = LatentCache(tmp_path / "c.h5", "k2")
    cache.get_or_build(_counting(calls), n=5)
    assert cache.built and sum(calls) == 10


def test_changed_frozen_weights_change_the_key():
    flow = VectorFlow(4, steps=1, hidden=8)
    key = hash_module(flow)
    assert key == hash_module(flow)
    with torch.no_grad():
        next(flow.parameters()).add_(1e-3)
    assert hash_module(flow) != key


def test_truncated_file_is_detected_and_rebuilt(tmp_path):
    calls: list = []
    path = tmp_path / "c.h5"
    LatentCache(path, "k1").get_or_build(_counting(calls), n=50)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cache = LatentCache(path, "k1")
    assert cache.load() is None
    arrays = cache.get_or_build(_counting(calls), n=50)
    assert cache.built and arrays["z"].shape == (50, 3)
    assert LatentCache(path, "k1").load() is not None


def test_garbage_file_is_rebuilt(tmp_path):
    path = tmp_path / "c.h5"
    path.write_bytes(b"not an hdf5 file")
    cache = LatentCache(path, "k1")
    cache.get_or_build(_counting([]), n=3)
    assert cache.built and cache.load() is not None


def test_failed_build_leaves_the_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "c.h5"
    LatentCache(path, "k1").get_or_build(_counting([]), n=3)
    before = path.read_bytes()

    def broken(index):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        LatentCache(path, "k2").get_or_build(broken, n=3)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]


def test_a_build_removes_the_temporaries_of_dead_writers_only(tmp_path):
    """A build killed with SIGKILL leaves its temporary file; the next build of that key
    removes it, and leaves a live writer's (and any other file) alone."""
    import os
    import signal
    import subprocess
    import sys

    from tzkgraph.core.files import _host

    path = tmp_path / "images.t_flow.h5"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    name = lambda pid: tmp_path / f".images.t_flow.{_host()}-{pid}.abc123.h5"
    name(child.pid).write_bytes(b"half a cache")  # the killed build's
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    name(os.getppid()).write_bytes(b"a live build")  # a running writer (the test's parent)
    other = tmp_path / ".images.t_flow.elsewhere-1.abc.h5"  # another host's: its PID means nothing here
    other.write_bytes(b"")
    LatentCache(path, "k").get_or_build(lambda i: {"x": i.float()}, 4, progress=False)
    assert not name(child.pid).exists()
    assert name(os.getppid()).exists() and other.exists() and path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, name(os.getppid()).name, other.name])
