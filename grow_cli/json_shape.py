"""The shape of a JSON file grow writes and reads back — a checkpoint's grow-state.json, a model's grow.json, a grown
training state's state.json, a family member's member.json, a metrics record, a cache entry — and the one check of
a parsed document against it.

Such a file is read again later, often by another run, and may have been edited, cut or replaced by hand in between.
Its readers index it (`state["step"]`, `stage["run_key"]["max_steps"]`), so a key of the wrong kind would surface
as a KeyError or TypeError deep inside a command. So the file is checked once, where it is read, against its shape,
and the rest of grow trusts what it holds. A shape names only the keys grow reads: other keys (written by a later
grow, or by another tool) pass, and a key may be absent — an earlier grow did not write it — unless it is
`Required`.

A shape is a `Kind` (one kind of value), a dict (an object with these keys), `ListOf`, `MapOf` (an object with any
keys, every value of one shape) or `OneOf` (any of several shapes; `maybe(shape)`: the shape or null).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grow_cli.limits import MAX_STEPS

INT64 = 2**63  # past it a count no longer fits numpy's or torch's integers


@dataclass(frozen=True)
class Kind:
    """A JSON value of one kind: `what` names it in a refusal, `holds` tests a value."""

    what: str
    holds: Callable[[Any], bool]


@dataclass(frozen=True)
class Required:
    """A key that every version of the file holds."""

    shape: Any


@dataclass(frozen=True)
class ListOf:
    item: Any


@dataclass(frozen=True)
class MapOf:
    value: Any


@dataclass(frozen=True)
class OneOf:
    shapes: tuple[Any, ...]


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count_up_to(limit: int) -> Kind:
    """A whole number from 0 to `limit` (a step: grow's bound on steps)."""
    return Kind(f"a whole number from 0 to {limit:.3g}", lambda v: _whole(v) and 0 <= v <= limit)


TEXT = Kind("text", lambda v: isinstance(v, str))
FLAG = Kind("true or false", lambda v: isinstance(v, bool))
NULL = Kind("null", lambda v: v is None)
OBJECT = Kind("a JSON object", lambda v: isinstance(v, dict))
COUNT = Kind("a whole number from 0 to 2**63 - 1", lambda v: _whole(v) and 0 <= v < INT64)
POSITIVE = Kind("a whole number from 1 to 2**63 - 1", lambda v: _whole(v) and 1 <= v < INT64)
REAL = Kind("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))  # NaN, ±Infinity too
NUMBER = Kind("a finite number", lambda v: REAL.holds(v) and math.isfinite(v))
SIZE = Kind("a finite number ≥ 0", lambda v: NUMBER.holds(v) and v >= 0)
STEP = count_up_to(MAX_STEPS)  # a step of a training run


def maybe(shape: Any) -> OneOf:
    """`shape`, or null."""
    return OneOf((shape, NULL))


class Unfit(Exception):
    """Why a JSON file is not what grow wrote, as a phrase: `a folder, not a file`, `stages[0].kind is missing`."""


def read_checked(path: Path, shape: Any) -> Any:
    """The JSON document in `path`, which must have `shape`; otherwise `Unfit`, saying why: not a regular file (a
    folder; a named pipe, whose read would wait for a writer forever), unreadable, not JSON (cut, overwritten, not
    UTF-8, nested too deeply to parse), or of another shape."""
    if not path.is_file():
        raise Unfit("a folder, not a file" if path.is_dir() else "not a regular file" if path.exists() else "missing")
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise Unfit(f"unreadable: {exc.strerror or exc}") from None
    except ValueError:
        raise Unfit("not the JSON grow wrote") from None
    except RecursionError:
        raise Unfit("JSON nested too deeply to read") from None
    found = problem(document, shape)
    if found is not None:
        raise Unfit(found)
    return document


def problem(value: Any, shape: Any, at: str = "") -> str | None:
    """What in `value` does not have `shape`, as a phrase naming where (`continuation.start_step is "x", not a whole
    number from 0 to 1e+12`); None when all of it does. `at`: where `value` lies in its document ("" for all of it)."""
    if isinstance(shape, Required):
        shape = shape.shape
    if isinstance(shape, Kind):
        return None if shape.holds(value) else _wrong(value, shape.what, at)
    if isinstance(shape, OneOf):
        return _none_fits(value, shape, at)
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            return _wrong(value, _what(shape), at)
        return next((p for i, item in enumerate(value) if (p := problem(item, shape.item, f"{at}[{i}]"))), None)
    if not isinstance(value, dict):
        return _wrong(value, _what(shape), at)
    if isinstance(shape, MapOf):
        return next((p for key, item in value.items() if (p := problem(item, shape.value, _key(at, key)))), None)
    for key, inner in shape.items():
        if key not in value:
            if isinstance(inner, Required):
                return f"{_key(at, key)} is missing"
            continue
        if found := problem(value[key], inner, _key(at, key)):
            return found
    return None


def _none_fits(value: Any, shape: OneOf, at: str) -> str | None:
    """None when `value` has one of `shape`'s shapes; else what is wrong with it: inside the list or object it is,
    where one of the shapes is a list or object (`apollo.stages[0].from_step is missing`), else its kind."""
    found = [problem(value, option, at) for option in shape.shapes]
    if None in found:
        return None
    inner = [p for p, option in zip(found, shape.shapes, strict=True) if _container(option) is type(value)]
    return inner[0] if inner else _wrong(value, _what(shape), at)


def _container(shape: Any) -> type | None:
    """The Python type of the JSON container `shape` describes; None for a `Kind` or `OneOf`."""
    if isinstance(shape, Required):
        return _container(shape.shape)
    return list if isinstance(shape, ListOf) else dict if isinstance(shape, dict | MapOf) else None


def _what(shape: Any) -> str:
    if isinstance(shape, Required):
        return _what(shape.shape)
    if isinstance(shape, Kind):
        return shape.what
    if isinstance(shape, OneOf):
        return " or ".join(_what(option) for option in shape.shapes)
    return "a list" if isinstance(shape, ListOf) else "a JSON object"


def _key(at: str, key: str) -> str:
    """Where `key` of the object at `at` lies: `at.key`, or `at["key"]` for a key that is no plain name."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{at}.{key}" if at else key
    return f"{at}[{json.dumps(key)}]"


def _wrong(value: Any, what: str, at: str) -> str:
    try:
        shown = json.dumps(value)
    except RecursionError:  # a list or object nested nearly as deeply as the parser goes
        shown = "[…]" if isinstance(value, list) else "{…}"
    shown = shown if len(shown) <= 40 else shown[:39] + "…"
    return f"{at or 'the file'} is {shown}, not {what}"
