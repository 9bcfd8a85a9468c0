"""A graph's training data: every source's images and labels as tensors on one device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tzkgraph.data.sources import load_images, pad_to, quantise
from tzkgraph.spec.present import PresentRule
from tzkgraph.spec.types import DataSpec

__all__ = ["GraphData", "load_graph_data", "fixed_uniform_grid"]

_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def fixed_uniform_grid(index: Tensor, numel: int, seed: int, bits: int) -> Tensor:
    """Per-example dequantisation noise that depends only on (example, pixel, seed).

    Counter-based (a hash, no state), so the frozen t-flow's cached ``z`` and
    the images the encoder networks see in a batch use the same noise without
    storing it. Values lie on the grid of :func:`tzkgraph.data.sources.dequantise`
    (step ``2**-(24-bits)``) in ``[0, 1)``.

    Returns:
        ``(B, numel)`` float32 on ``index.device``.
    """
    steps = 2 ** (24 - bits)
    pixel = torch.arange(numel, device=index.device, dtype=torch.int64)
    key = _mix32((index.to(torch.int64)[:, None] * 0x9E3779B1 + seed * 0x85EBCA77) & _MASK32)
    h = _mix32((key ^ pixel) & _MASK32)
    return (h % steps).to(torch.float32) / steps


@dataclass
class GraphData:
    """All examples of one split of a graph's sources, concatenated in source order.

    Attributes:
        images: ``(N, C, S, S)`` quantised integers (uint8), already on the device.
        source_index: ``(N,)`` index into ``source_names`` of each example's source.
        labels: ``(N,)`` class labels.
        source_names: the data sources, in order.
        bits: bit depth of ``images``.
        dequant_seed: seed of the fixed dequantisation noise.
        label_known: ``(N,)`` bool, whose labels the model may see (``None``: all).
    """

    images: Tensor
    source_index: Tensor
    labels: Tensor
    source_names: list[str]
    bits: int
    dequant_seed: int = 0
    label_known: Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def present(self, rule: PresentRule) -> Tensor:
        """``e`` of every example for one rule, ``(N,)`` bool (from the true labels)."""
        return rule.evaluate(self.source_index, self.labels, self.source_names)

    def observed(self, rule: PresentRule) -> Tensor:
        """Whether ``e`` of each example is known for one rule, ``(N,)`` bool.

        Known where the rule needs no label, where the label is known, and where the
        rule's source condition alone already fails (then ``e = 0`` whatever the label).
        """
        if self.label_known is None or (rule.label is None and rule.label_bit is None):
            return torch.ones_like(self.labels, dtype=torch.bool)
        known = self.label_known
        if rule.source is not None:
            known = known | ~PresentRule(source=rule.source).evaluate(
                self.source_index, self.labels, self.source_names)
        return known

    def observations(self, index: Tensor, fixed: bool = False, step: int = 0) -> Tensor:
        """Dequantised images ``t ∈ [-½, ½)`` for the examples ``index``, ``(B, C, S, S)``.

        The noise is a counter-based function of (example, pixel, seed), never
        of a random stream, so it does not depend on how a batch is split
        across processes.

        Arguments:
            index: example indices on the data's device.
            fixed: use the example's fixed noise (what a frozen part's cache
                was computed with); otherwise fresh noise for training ``step``.
            step: the training step (fresh noise differs from step to step).
        """
        x = self.images[index]
        seed = self.dequant_seed if fixed else (self.dequant_seed + 1) * 1_000_003 + step
        u = fixed_uniform_grid(index, x[0].numel(), seed, self.bits).view(x.shape)
        return (x.to(torch.float32) + u) / 2**self.bits - 0.5

    def to(self, device: torch.device | str) -> "GraphData":
        return GraphData(self.images.to(device), self.source_index.to(device), self.labels.to(device),
                         self.source_names, self.bits, self.dequant_seed,
                         None if self.label_known is None else self.label_known.to(device))


def first_per_class(labels: Tensor, n: int) -> Tensor:
    """``(N,)`` bool: the first ``n`` examples of every class, in order."""
    known = torch.zeros_like(labels, dtype=torch.bool)
    for label in labels.unique():
        known[torch.nonzero(labels == label).flatten()[:n]] = True
    return known


def load_graph_data(spec: DataSpec, split: str = "train",
                    device: torch.device | str = "cpu") -> GraphData:
    """Loads, pads, quantises and concatenates every source of ``spec``.

    Arguments:
        spec: the graph's ``data:`` section (``limit`` keeps the first N per source;
            ``labelled`` makes only the first N training examples of each class and
            source keep their label, see :meth:`GraphData.observed`).
        split: ``"train"`` or ``"test"``.
        device: where the tensors live during training (no per-step copies).
    """
    images, sources, labels, known = [], [], [], []
    for i, source in enumerate(spec.sources):
        x, y = load_images(source.dataset, split, spec.root)
        if spec.limit is not None:  # the first examples of each source
            x, y = x[:spec.limit], y[:spec.limit]
        x = quantise(pad_to(x, spec.image.size), spec.image.bits)
        if spec.image.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        images.append(x.contiguous())
        labels.append(y)
        sources.append(torch.full_like(y, i))
        if spec.labelled is not None and split == "train":
            known.append(first_per_class(y, spec.labelled))
    return GraphData(torch.cat(images), torch.cat(sources), torch.cat(labels),
                     spec.source_names, spec.image.bits, spec.dequant_seed,
                     torch.cat(known) if known else None).to(device)
