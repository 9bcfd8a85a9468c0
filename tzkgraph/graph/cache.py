"""HDF5 cache of what frozen parts compute, keyed by a content hash, written atomically."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import h5py
import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tzkgraph.core.files import atomic_write, remove_stale_temporaries

__all__ = ["FORMAT_VERSION", "LatentCache", "hash_module", "hash_tensors"]

FORMAT_VERSION = 2


def hash_tensors(tensors: Iterable[Tensor], h: "hashlib._Hash | None" = None) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes, in order."""
    h = h or hashlib.sha256()
    for x in tensors:
        x = x.detach().cpu().contiguous()
        h.update(f"{x.dtype}{tuple(x.shape)}".encode())
        h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def hash_module(module: nn.Module) -> str:
    """SHA-256 of a module's whole state (parameters and buffers, with names)."""
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        h.update(name.encode())
    return hash_tensors((state[name] for name in sorted(state)), h)


class LatentCache:
    """One HDF5 file of per-example arrays, valid for exactly one ``key``.

    The key is a content hash of everything that determines the arrays (the
    part's spec, its frozen weights, the data and its preprocessing, the
    dequantisation seed); it is stored in the file's attributes with a
    ``complete`` flag written last. A file with another key, without the
    flag, or that h5py cannot read (truncated, corrupt) is rebuilt. Writes go
    to a temporary file in the same folder, then ``os.replace`` it: a crash
    never leaves a half-written cache under the real name.

    Arguments:
        path: the ``.h5`` file.
        key: hex content hash the file must carry.
    """

    def __init__(self, path: str | os.PathLike, key: str):
        self.path = Path(path)
        self.key = key
        self.built = False  # whether the last `get_or_build` computed the arrays

    def load(self) -> dict[str, Tensor] | None:
        """The cached arrays, or ``None`` if the file is missing, stale or unreadable."""
        if not self.path.exists():
            return None
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("key") != self.key or not f.attrs.get("complete", False):
                    return None
                if int(f.attrs.get("format", -1)) != FORMAT_VERSION:
                    return None
                arrays = {name: torch.from_numpy(np.asarray(f[name])) for name in f.keys()}
        except (OSError, KeyError, ValueError):
            return None
        return arrays

    def write(self, arrays: Mapping[str, Tensor]) -> None:
        """Writes ``arrays`` atomically (temporary file, then rename)."""
        def write(tmp: str) -> None:
            with h5py.File(tmp, "w") as f:
                f.attrs["key"] = self.key
                f.attrs["format"] = FORMAT_VERSION
                for name, x in arrays.items():
                    f.create_dataset(name, data=x.detach().cpu().numpy())
                f.attrs["complete"] = True

        atomic_write(self.path, write)

    def get_or_build(self, compute: Callable[[Tensor], Mapping[str, Tensor]], n: int,
                     batch_size: int = 256, description: str = "caching",
                     progress: bool = True) -> dict[str, Tensor]:
        """Loads the arrays, or computes them over examples ``0..n-1`` and writes them.

        Arguments:
            compute: maps a ``LongTensor`` of example indices to per-example arrays.
            n: number of examples.
            batch_size: examples per ``compute`` call.
            description: the progress bar's label.
            progress: show the progress bar.
        """
        arrays = self.load()
        self.built = arrays is None
        if arrays is not None:
            return arrays
        remove_stale_temporaries(self.path)  # of a build killed before it could clean up
        parts: dict[str, list[Tensor]] = {}
        with torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc=description, unit="batch",
                              leave=False, disable=not progress):
                index = torch.arange(start, min(start + batch_size, n))
                for name, x in compute(index).items():
                    parts.setdefault(name, []).append(x.detach().float().cpu())
        arrays = {name: torch.cat(xs) for name, xs in parts.items()}
        self.write(arrays)
        return arrays
