"""``--set KEY=VALUE`` overrides, applied to the raw YAML before it is validated."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import yaml

from tzkgraph.core.fields import show, unknown
from tzkgraph.core.errors import ConfigError

__all__ = ["apply_overrides", "parse_override"]

def parse_override(text: str) -> tuple[str, Any]:
    """Splits ``KEY=VALUE`` and reads VALUE with ``yaml.safe_load`` (``16`` is an int).

    Example:
        >>> parse_override("train.phases.0.steps=100")
        ('train.phases.0.steps', 100)
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or key.startswith(".") or key.endswith(".") or \
            any(c.isspace() for c in key):
        raise ConfigError(f"--set {text}", "expected KEY=VALUE with a dotted KEY, "
                                           "e.g. train.batch_size=16")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}", f"value is not valid YAML: "
                                          f"{str(error).splitlines()[0]}") from None


def apply_overrides(data: dict, overrides: Sequence[str], top_keys: Sequence[str]) -> dict:
    """Returns a copy of ``data`` with every ``KEY=VALUE`` set, in order.

    KEY is a dotted path into the raw YAML; list items are numbered from 0
    (``train.phases.0.steps``). A key that itself holds dots (a group such as
    ``"0..9"``) is matched whole: ``stages.digits.knowledge.0..9.code_dim``.
    Missing schema sections are created (``train.amp=false`` with no ``train:``);
    the result is validated afterwards like any YAML, so a misspelt key deep in
    the path is reported there with a did-you-mean.

    Arguments:
        data: the raw YAML mapping (not modified).
        overrides: ``KEY=VALUE`` strings.
        top_keys: the valid top-level keys (an unknown first segment is refused here).

    Returns:
        The overridden copy.
    """
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        segments = key.split(".")
        if segments[0] not in top_keys:
            raise ConfigError(f"--set {key}", unknown("key", segments[0], list(top_keys)))
        node: Any = data
        path: list[str] = []
        while True:
            where = ".".join(path) or "top level"
            if isinstance(node, list):
                head, rest = segments[0], segments[1:]
                if not head.isdigit() or int(head) >= len(node):
                    raise ConfigError(f"--set {key}", f"{where} is a list of {len(node)}; "
                                      f"expected an index 0..{len(node) - 1}, got {head!r}")
                index: Any = int(head)
            elif isinstance(node, dict):
                index, rest = _match_key(node, segments)
            else:
                raise ConfigError(f"--set {key}", f"{where} is {show(node)}, not a mapping or list")
            if not rest:
                node[index] = value
                break
            if isinstance(node, dict) and index not in node:
                # Stages and knowledge types are named by the user: one missing
                # mid-path is a typo, not a section to create.
                if path == ["stages"] or (len(path) == 3 and path[0] == "stages"
                                          and path[2] == "knowledge"):
                    kind = "stage" if path == ["stages"] else "knowledge"
                    raise ConfigError(f"--set {key}", f"{where}: " +
                                      unknown(kind, index, [str(k) for k in node]))
                node[index] = {}
            node, segments = node[index], rest
            path.append(str(index))
    return data


def _match_key(node: dict, segments: list[str]) -> tuple[Any, list[str]]:
    """The longest run of segments that is a key of ``node`` (keys may hold dots).

    Integer keys (YAML ``3:``) match their digits. Falls back to the first segment.
    """
    for n in range(len(segments), 0, -1):
        candidate = ".".join(segments[:n])
        for key in node:
            if str(key) == candidate:
                return key, segments[n:]
    return segments[0], segments[1:]
