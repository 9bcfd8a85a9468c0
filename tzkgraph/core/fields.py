"""Typed readers for raw YAML values: each names the YAML place when it fails."""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Sequence

from tzkgraph.core.errors import ConfigError

__all__ = [
    "NAME_RE", "check_keys", "did_you_mean", "read_bool", "read_choice", "read_float",
    "read_int", "read_mapping", "read_name", "read_str", "show", "unknown",
]

#: Stage, source and phase names: identifiers, so they read well in paths like ``digits/7``.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# pyyaml (YAML 1.1) reads `1e-3` (no dot) as a string; float fields accept that spelling.
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def show(value: Any) -> str:
    """How a raw value is quoted in an error message (YAML spelling where it differs)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping" if value else "{}"
    if isinstance(value, list):
        return "a list" if value else "[]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The closest of ``known`` to ``name`` (difflib), or ``None``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown(kind: str, name: Any, known: Sequence[str], of: str = "") -> str:
    """Message for an unknown name: ``unknown stage 'imgs'; did you mean 'images'? (known: ...)``.

    Arguments:
        kind: what ``name`` should be (``"key"``, ``"stage"``, ...).
        name: the unknown name.
        known: the valid names.
        of: optional owner, e.g. ``"stage 'images'"`` -> ``unknown knowledge 'x' of stage 'images'``.
    """
    text = f"unknown {kind} {show(name)}" + (f" of {of}" if of else "")
    guess = did_you_mean(str(name), known)
    if guess is not None:
        text += f"; did you mean {guess!r}?"
    return text + f" (known: {', '.join(known) if known else 'none'})"


def check_keys(mapping: dict, where: str, allowed: Sequence[str],
               required: Sequence[str] = ()) -> None:
    """Refuses keys not in ``allowed`` (with did-you-mean) and missing ``required`` keys."""
    for key in mapping:
        if key not in allowed:
            raise ConfigError(where, unknown("key", key, allowed))
    for key in required:
        if key not in mapping:
            raise ConfigError(where, f"missing required key {key!r}")


def read_mapping(value: Any, where: str, allowed: Sequence[str] | None = None,
                 required: Sequence[str] = ()) -> dict:
    """A YAML mapping (``null`` reads as empty); checks its keys when ``allowed`` is given."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected a mapping, got {show(value)}")
    if allowed is not None:
        check_keys(value, where, allowed, required)
    return value


def read_int(value: Any, where: str, lo: int | None = None, hi: int | None = None,
             from_text: bool = False) -> int:
    """An integer in ``lo..hi`` (either bound optional). ``bool`` is not an integer.

    Arguments:
        from_text: also accept a string of digits (a ``$name`` substituted by
            group expansion, e.g. ``label: "$name"`` with name ``"7"``).
    """
    if lo is not None and hi is not None:
        expected = f"an integer in {lo}..{hi}"
    elif lo is not None:
        expected = f"an integer >= {lo}"
    elif hi is not None:
        expected = f"an integer <= {hi}"
    else:
        expected = "an integer"
    if from_text and isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"expected {expected}, got {show(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(where, f"expected {expected}, got {value}")
    return value


def read_float(value: Any, where: str, gt: float | None = None, ge: float | None = None) -> float:
    """A real number (an integer or ``1e-3`` written without a dot is accepted too)."""
    expected = "a number" + (f" > {gt:g}" if gt is not None else "") + \
        (f" >= {ge:g}" if ge is not None else "")
    if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(where, f"expected {expected}, got {show(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")) or \
            (gt is not None and value <= gt) or (ge is not None and value < ge):
        raise ConfigError(where, f"expected {expected}, got {value:g}")
    return value


def read_bool(value: Any, where: str) -> bool:
    """``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ConfigError(where, f"expected true or false, got {show(value)}")
    return value


def read_str(value: Any, where: str, nullable: bool = False) -> str | None:
    """A non-empty string (or ``null`` when ``nullable``)."""
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value:
        expected = "a non-empty string" + (" or null" if nullable else "")
        raise ConfigError(where, f"expected {expected}, got {show(value)}")
    return value


def read_choice(value: Any, where: str, choices: Sequence[Any], kind: str = "value") -> Any:
    """One of ``choices``; an unknown one is reported with the valid ones."""
    if isinstance(value, (dict, list)) or value not in choices or \
            (isinstance(value, bool) and not any(c is value for c in choices)):
        shown = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]  # as YAML writes them
        raise ConfigError(where, unknown(kind, value, shown))
    return value


def read_name(value: Any, where: str, kind: str = "name") -> str:
    """An identifier ``[A-Za-z_][A-Za-z0-9_]*``."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ConfigError(where, f"expected a {kind} matching [A-Za-z_][A-Za-z0-9_]*, "
                                 f"got {show(value)}")
    return value
