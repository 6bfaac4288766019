"""The Python types each field of a settings dataclass (`GrowthSpec`, `TrainConfig`) accepts, read from its
annotations: one rule for what the Python API checks at construction and a family recipe checks per key."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

ACCEPTED = {float: (int, float), Path: (str,)}  # an int where a float is meant; a recipe names a path as text


def field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Every field of dataclass `cls` and the types its value may have: those `ACCEPTED` for its annotation, `list`
    for a `list[str]`, and `NoneType` where the field may be None."""
    hints = typing.get_type_hints(cls)
    kinds: dict[str, tuple[type, ...]] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds[f.name] = tuple(
            dict.fromkeys(t for a in args for t in ACCEPTED.get(a, (typing.get_origin(a) or a,)))  # list[str]: list
        )
    return kinds


def accepts(kinds: tuple[type, ...], value: object) -> bool:
    """Whether `value` is of one of `kinds`, a bool counting only where `bool` is named (`True` is an int to
    Python, but never a count of layers)."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
