"""Type and range checks of config values, from a dataclass's annotations and field metadata.

A config section (`asrkd.config`) declares what each field allows next to its default::

    lr: float = field(default=2e-3, metadata=allowed(POSITIVE))
    schedule: str = field(default="cosine", metadata=allowed(("cosine", "constant")))
    max_steps: int | None = field(default=None, metadata=allowed(AT_LEAST_ONE, null="by epochs"))

and `check_fields` (called from the section's ``__post_init__``) checks every field's type from
its annotation (unions, lists, mappings, nested sections) and its range or choices from the
metadata, raising `ConfigError` ``key: what is wrong (allowed: what is allowed)``; the config
reader puts the file and the section in front of it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from asrkd.errors import AsrkdError


class ConfigError(AsrkdError, ValueError):
    """A configuration file or dict has a missing, unknown or invalid field."""


@dataclass(frozen=True)
class Bounds:
    """The numbers a field allows (each element, for a list): ``low``..``high``, each end inclusive
    unless ``low_open`` / ``high_open``; None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, x: float) -> bool:
        """Whether the number ``x`` is within the bounds."""
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
AT_LEAST_ONE = Bounds(1)
PROBABILITY = Bounds(0, 1)


def allowed(what: Bounds | tuple[str, ...], null: str = "") -> dict[str, Any]:
    """Field metadata: the values a field allows beyond its type, e.g.
    ``lr: float = field(default=2e-3, metadata=allowed(POSITIVE))``; ``null``: what an optional
    field's null means, for the error message."""
    return {"allowed": what, "null": null}


class Section:
    """Base of the config sections: `__post_init__` checks every field (`check_fields`)."""

    def __post_init__(self) -> None:
        check_fields(self)


def check_fields(section: Any) -> None:
    """Check each field of the dataclass ``section`` against its type and ``allowed`` metadata.

    Raises ConfigError ``key: what is wrong (allowed: ...)``; `_build` puts the file and the
    section in front. A float field takes an int (YAML ``lr: 1``); no field takes a bool for a
    number, or a string for a number (a quoted ``"4"`` is a mistake to point at, not to guess)."""
    hints = _type_hints(type(section))
    for f in dataclasses.fields(section):
        value, hint, limit = getattr(section, f.name), hints[f.name], f.metadata.get("allowed")
        if not _has_type(value, hint):
            wrong = _type_mistake(value, hint)
        elif limit is not None and not _within(value, limit):
            wrong = f"{value!r} is not allowed" if isinstance(limit, tuple) else f"{value!r} is out of range"
        else:
            continue
        null = f.metadata.get("null")
        raise ConfigError(f"{f.name}: {wrong} (allowed: {_describe(hint, limit)}{f': {null}' if null else ''})")


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """``cls``'s field types, evaluated (this module's annotations are strings)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type ``hint`` (unions, lists, dicts, sections)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if origin is list:
        return isinstance(value, list | tuple) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1])
                                               for k, v in value.items())
    return isinstance(value, hint)


def _type_mistake(value: Any, hint: Any) -> str:
    """Why ``value`` is not a ``hint``: its kind, or for a list or mapping, the first item that is
    of the wrong kind (``[0.9, 'x'] holds 'x', a string``)."""
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for arm in arms:
        origin, args = typing.get_origin(arm), typing.get_args(arm)
        if origin is list and isinstance(value, list | tuple):
            items = [(v, args[0]) for v in value]
        elif origin is dict and isinstance(value, dict):
            items = [pair for k, v in value.items() for pair in ((k, args[0]), (v, args[1]))]
        else:
            continue
        bad = [x for x, t in items if not _has_type(x, t)]
        if bad:
            return f"{value!r} holds {bad[0]!r}, {kind_of(bad[0])}"
    return f"{value!r} is {kind_of(value)}"


def _within(value: Any, limit: Bounds | tuple[str, ...]) -> bool:
    """Whether ``value`` (of the field's type already) is one of the choices ``limit``, or each of
    its numbers (a list's items, a mapping's keys and values) is within the `Bounds` ``limit``."""
    if value is None:
        return True  # an optional field's null
    if isinstance(limit, tuple):
        return value in limit
    if isinstance(value, dict):
        values = [*value, *value.values()]
    else:
        values = value if isinstance(value, list | tuple) else [value]
    return all(limit.admits(v) for v in values)


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
          type(None): "null"}
_PLURALS = {int: "whole numbers", float: "numbers", str: "strings"}


def kind_of(value: Any) -> str:
    """What a YAML reader would call ``value``'s type: ``'4' is a string``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if isinstance(value, list | tuple):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def _describe(hint: Any, limit: Bounds | tuple[str, ...] | None) -> str:
    """What ``hint`` (and ``limit``) allow, in words: ``a whole number >= 1, or null``."""
    if isinstance(limit, tuple):
        return "one of " + ", ".join(repr(c) for c in limit)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        words = " or ".join(_describe(a, limit) for a in arms)
        return f"{words}, or null" if len(arms) < len(args) else words
    bound = f" {limit}" if isinstance(limit, Bounds) else ""
    if origin is list:
        return f"a list of {_PLURALS.get(args[0], 'items')}{bound}"
    if origin is dict:
        return f"a mapping of {_PLURALS.get(args[0], 'keys')} to {_PLURALS.get(args[1], 'values')}{bound}"
    if hint is Any:
        return "anything"
    if dataclasses.is_dataclass(hint):
        return "a mapping of its keys"
    return _KINDS.get(hint, hint.__name__) + bound
