"""The Python types a setting accepts, read from its annotation — a field of a settings dataclass (`GrowthSpec`,
`TrainConfig`) or an argument of a public function — and the one check of a call against them.

A Python caller's mistake (a string for a number, `True` for a count, a misspelt keyword, a path where a
`GrowthSpec` belongs) is refused before anything runs, as one `OptionError` naming the setting — not as a TypeError
from deep inside, nor `"no"` read as true. The same rule types a family recipe's keys (`grow_cli/family/recipe.py`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from grow_cli.errors import OptionError

# An int where a float is meant; text or any os.PathLike where a Path is meant (a recipe names a path as text).
ACCEPTED: dict[Any, tuple[type, ...]] = {float: (int, float), Path: (str, os.PathLike), Any: (object,)}

# How a Python caller gets an object of a type grow's functions take, for the refusal of anything else.
MADE_BY = {
    "GrowthSpec": "grow_cli.GrowthSpec(layers=…, …)",
    "TrainConfig": "grow_cli.TrainConfig(model=…, data=…, out=…, …)",
    "Recipe": "grow_cli.load_recipe(path)",
}

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)


def flag(name: str) -> str:
    """The command-line flag of the setting `name` (`seq_len` is `--seq-len`): a field or keyword of the Python API
    is its flag without the dashes."""
    return "--" + name.replace("_", "-")


def check_given_names(cls: type, given: Collection[str]) -> None:
    """Refuse a name in `given` (the options a caller says were given, for `check_given`) that is no field of the
    settings dataclass `cls`: a misspelt one would otherwise pass the checks that look for it unseen."""
    fields = [f.name for f in dataclasses.fields(cls)]
    for name in given:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise OptionError(name, f"{cls.__name__}.check_given: {name!r} is no field of {cls.__name__}{hint}")


def kinds_of(hint: Any) -> tuple[type, ...]:
    """The types a value annotated `hint` may have: those `ACCEPTED` for it, the origin of a generic (`list[str]`:
    `list`), each member of a union (`NoneType` where it may be None); any value for a form that is no class."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    args = typing.get_args(hint) if union else (hint,)
    found = (t for a in args for t in ACCEPTED.get(a, (typing.get_origin(a) or a,)))
    return tuple(dict.fromkeys(t if isinstance(t, type) else object for t in found))


def field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Every field of dataclass `cls` and the types its value may have (`kinds_of` its annotation)."""
    hints = typing.get_type_hints(cls)
    return {f.name: kinds_of(hints[f.name]) for f in dataclasses.fields(cls)}


def accepts(kinds: tuple[type, ...], value: object) -> bool:
    """Whether `value` is of one of `kinds`, a bool counting only where `bool` is named (`True` is an int to
    Python, but never a count of layers)."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def as_python_scalar(value: object) -> object:
    """A numpy scalar (`np.int64`, `np.float32`, `np.bool_`) as the Python int, float or bool it holds, so that a
    caller's `layers=np.int64(8)` is 8 and everything downstream (grow.json, the config) stays plain JSON; any other
    value as it is. Its type is then judged as a Python value's (`np.float64(3.0)` is still no count of layers)."""
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()  # type: ignore[attr-defined]
    return value


def empty_path(folder: str = "the working folder") -> str:
    """The refusal of an empty string where a path belongs (an unset variable, most often): to the OS it is the
    working folder — to a family recipe, its own `folder` — which as output with `force=True` would be replaced.
    The command line refuses an empty argument for the same reason."""
    return f"expected a path, found '' (an empty string, which names {folder}); give the path ('.' for that)"


EMPTY_PATH = empty_path()

# What a refusal calls a type its annotation names in the abstract.
PLAIN_NAMES: dict[type, str] = {os.PathLike: "path", Sequence: "list"}


def type_names(kinds: tuple[type, ...]) -> str:
    """`int, float or str`: the types of a setting for a refusal (None, the default of an optional one, unnamed)."""
    names = [PLAIN_NAMES.get(k, k.__name__) for k in kinds if k is not type(None)]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def checked_init(cls: C) -> C:
    """Make the dataclass `cls` refuse, at construction, an unknown or missing field and a value of the wrong type
    (`GrowthSpec.layers: expected int, found '8' (str)`), before its own `__post_init__` checks run; a numpy number
    is taken as the Python one (`as_python_scalar`)."""
    init = vars(cls)["__init__"]  # the one @dataclass wrote
    kinds = functools.cache(lambda: field_types(cls))
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _bind(signature, cls.__name__, (self, *args), kwargs)
        _check_values(bound, kinds(), lambda name: f"{cls.__name__}.{name}")
        init(*bound.args, **bound.kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def checked_call(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` with its arguments checked against its annotations first (`compare(seq_len=…): expected int, found '64'
    (str)`), and an unknown or missing keyword refused as an `OptionError` too. The signature, name and docstring
    stay `fn`'s (`inspect.signature`, `help`)."""
    signature = inspect.signature(fn)

    @functools.cache
    def kinds() -> dict[str, tuple[type, ...]]:  # on the first call: annotations may name what imports later
        hints = typing.get_type_hints(fn)
        return {name: kinds_of(hints[name]) for name in signature.parameters if name in hints}

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = _bind(signature, f"{fn.__name__}()", args, kwargs)
        _check_values(bound, kinds(), lambda name: f"{fn.__name__}({name}=…)")
        return fn(*bound.args, **bound.kwargs)

    return call


def _bind(signature: inspect.Signature, where: str, args: tuple, kwargs: dict[str, Any]) -> inspect.BoundArguments:
    """The arguments bound to `signature`, or an `OptionError` naming the keyword that is unknown or missing."""
    try:
        return signature.bind(*args, **kwargs)
    except TypeError:
        pass
    parameters = signature.parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        for name in kwargs:
            if name not in parameters:
                close = difflib.get_close_matches(name, [n for n in parameters if n != "self"], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise OptionError(name, f"{where} has no option {name!r}{hint}") from None
    try:
        given = signature.bind_partial(*args, **kwargs).arguments
    except TypeError as exc:  # too many positional arguments, or one given twice
        raise OptionError(None, f"{where}: {exc}") from None
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    missing = [n for n, p in parameters.items() if n not in given and p.default is p.empty and p.kind not in variadic]
    raise OptionError(missing[0], f"{where} needs {', '.join(missing)}")


def _check_values(
    bound: inspect.BoundArguments, kinds: dict[str, tuple[type, ...]], label: Callable[[str], str]
) -> None:
    """Refuse the first bound argument whose value is not of its annotation's types (`*args`/`**kwargs` unchecked),
    after taking a numpy scalar as the Python value it holds (`as_python_scalar`, in `bound`)."""
    for name, value in bound.arguments.items():
        allowed = kinds.get(name)
        variadic = bound.signature.parameters[name].kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        )
        if allowed is None or variadic:
            continue
        value = bound.arguments[name] = as_python_scalar(value)
        if value == "" and os.PathLike in allowed:
            raise OptionError(name, f"{label(name)}: {EMPTY_PATH}")
        if accepts(allowed, value):
            continue
        shown = repr(value) if len(repr(value)) <= 80 else f"{repr(value)[:77]}…"
        made_by = next((MADE_BY[k.__name__] for k in allowed if k.__name__ in MADE_BY), None)
        raise OptionError(
            name,
            f"{label(name)}: expected {type_names(allowed)}, found {shown} ({type(value).__name__})"
            + (f"; make one with {made_by}" if made_by else ""),
        )
