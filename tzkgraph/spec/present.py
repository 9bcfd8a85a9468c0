"""``present:`` rules: when knowledge is present (``e = 1``) in an example, never evaluated Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from tzkgraph.core.fields import read_int, read_mapping, read_str, unknown
from tzkgraph.core.errors import ConfigError

__all__ = ["DATASET_CLASSES", "PRESENT_KEYS", "PresentRule", "read_present"]

#: Datasets a source may name, with their number of classes (labels are ``0..n-1``).
DATASET_CLASSES: dict[str, int] = {"mnist": 10, "fashion_mnist": 10}

#: The whole vocabulary of a rule; the given keys are AND-ed.
PRESENT_KEYS = ("source", "label", "label_bit")


@dataclass(frozen=True)
class PresentRule:
    """Which examples have ``e = 1`` for one knowledge type: the AND of the given conditions.

    An empty rule (``present: {}``) holds for every example that reaches the stage.

    Example:
        >>> rule = PresentRule(source="mnist", label=3)
        >>> rule.evaluate(torch.tensor([0, 0, 1]), torch.tensor([3, 4, 3]), ["mnist", "fashion"])
        tensor([ True, False, False])
    """

    source: str | None = None     # the example comes from this data source
    label: int | None = None      # its integer class label equals this
    label_bit: int | None = None  # bit `label_bit` of its label is set (bit 0 = odd labels)

    def evaluate(self, source_index: Tensor, labels: Tensor, source_names: Sequence[str]) -> Tensor:
        """``e`` of every example, vectorised.

        Arguments:
            source_index: ``(N,)`` long, index into ``source_names`` of each example's source.
            labels: ``(N,)`` long class labels; a negative label means unknown and makes
                every label condition false.
            source_names: the data sources in the order ``source_index`` counts them.

        Returns:
            ``(N,)`` bool, ``True`` where the knowledge is present.

        Raises:
            ValueError: the rule's source is not in ``source_names``.
        """
        present = torch.ones_like(labels, dtype=torch.bool)  # (N,)
        if self.source is not None:
            if self.source not in source_names:
                raise ValueError(f"source {self.source!r} not among {list(source_names)}")
            present &= source_index == list(source_names).index(self.source)
        if self.label is not None:
            present &= labels == self.label
        if self.label_bit is not None:
            present &= (labels >= 0) & (((labels >> self.label_bit) & 1) == 1)
        return present

    def holds(self, source: str, label: int) -> bool:
        """Whether the rule holds for one example (plain Python, for validation)."""
        return ((self.source is None or source == self.source)
                and (self.label is None or label == self.label)
                and (self.label_bit is None or (label >= 0 and (label >> self.label_bit) & 1 == 1)))

    def to_dict(self) -> dict[str, Any]:
        """The rule as YAML gives it (only the keys that are set)."""
        return {key: getattr(self, key) for key in PRESENT_KEYS if getattr(self, key) is not None}

    def __str__(self) -> str:
        parts = [f"{key}={value}" for key, value in self.to_dict().items()]
        return " & ".join(parts) if parts else "always"


def read_present(value: Any, where: str, sources: Mapping[str, str],
                 from_text: bool = False) -> PresentRule:
    """Reads and checks a ``present:`` mapping.

    Arguments:
        value: the raw YAML value.
        where: its YAML place, e.g. ``stages.digits.knowledge.0..9.present``.
        sources: declared data source name -> dataset.
        from_text: accept digit strings for integers (values substituted by
            group expansion, e.g. ``label: "$name"``).

    Returns:
        The rule, with ``source`` declared and labels/bits within the classes
        of the datasets the rule can match.
    """
    raw = read_mapping(value, where, PRESENT_KEYS)
    source = None
    if "source" in raw:
        source = read_str(raw["source"], f"{where}.source")
        if source not in sources:
            raise ConfigError(f"{where}.source", unknown("source", source, list(sources)))
    datasets = [sources[source]] if source is not None else list(sources.values())
    n_classes = max((DATASET_CLASSES[d] for d in datasets), default=0)
    label = label_bit = None
    if "label" in raw:
        label = read_int(raw["label"], f"{where}.label", 0, None, from_text)
        if label >= n_classes:
            raise ConfigError(f"{where}.label", f"label {label} does not exist: "
                              f"{'/'.join(datasets)} labels are 0..{n_classes - 1}")
    if "label_bit" in raw:
        bits = max(n_classes - 1, 1).bit_length()
        label_bit = read_int(raw["label_bit"], f"{where}.label_bit", 0, None, from_text)
        if label_bit >= bits:
            raise ConfigError(f"{where}.label_bit", f"bit {label_bit} is never set: "
                              f"{'/'.join(datasets)} labels 0..{n_classes - 1} use bits 0..{bits - 1}")
    return PresentRule(source, label, label_bit)
