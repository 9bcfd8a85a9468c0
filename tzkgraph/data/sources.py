"""Loading MNIST and Fashion-MNIST splits through torchvision (fetching them first if missing), and preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tzkgraph.core.errors import DataError
from tzkgraph.data.fetch import fetch, is_present
from tzkgraph.data.registry import SPLITS, _one_line, _spec, default_root

__all__ = ["SOURCE_SIZE", "load_images", "pad_to", "quantise", "dequantise"]

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
