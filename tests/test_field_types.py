"""The one rule for the Python values a setting accepts (`grow_cli/field_types.py`): the types an annotation admits,
and a call checked against them — an unknown, missing or wrongly typed argument is one `OptionError` naming it,
before the function runs, while the function keeps its signature."""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from grow_cli.errors import OptionError
from grow_cli.field_types import accepts, checked_call, checked_init, flag, kinds_of


def test_the_types_an_annotation_admits():
    assert kinds_of(int | None) == (int, type(None))
    assert kinds_of(float) == (int, float)  # an int where a float is meant
    assert kinds_of(str | os.PathLike[str]) == (str, os.PathLike)
    assert kinds_of(Path) == (str, os.PathLike)  # a Path parameter takes the text of one too
    assert kinds_of(list[str] | None) == (list, type(None))
    assert kinds_of(Sequence[str]) == (Sequence,)
    assert kinds_of(Any) == (object,)
    assert accepts((int,), 3) and not accepts((int,), True) and accepts((bool,), True)  # True is no count
    assert flag("seq_len") == "--seq-len"


def _grow(source: str | os.PathLike[str], layers: int, *, verify: bool = False, shard: str | int = "5GB") -> str:
    """A stand-in library function."""
    return f"{os.fspath(source)} {layers} {verify} {shard}"


@pytest.mark.parametrize(
    "args, kwargs, option, message",
    [
        (("m",), {"layers": "8"}, "layers", "_grow(layers=…): expected int, found '8' (str)"),
        (("m", True), {}, "layers", "_grow(layers=…): expected int, found True (bool)"),
        ((None, 4), {}, "source", "_grow(source=…): expected str or path, found None (NoneType)"),
        (("m", 4), {"verify": "no"}, "verify", "_grow(verify=…): expected bool, found 'no' (str)"),
        (("m", 4), {"shard": 1.5}, "shard", "_grow(shard=…): expected str or int, found 1.5 (float)"),
        (("m", 4), {"verfy": True}, "verfy", "_grow() has no option 'verfy'; did you mean 'verify'?"),
        (("m", 4), {"colour": 1}, "colour", "_grow() has no option 'colour'"),
        (("m",), {}, "layers", "_grow() needs layers"),
        ((), {}, "source", "_grow() needs source, layers"),
        (("m", 4, 5), {}, None, "_grow(): too many positional arguments"),
    ],
)
def test_a_checked_call_refuses_what_its_annotations_do_not_admit(args, kwargs, option, message):
    with pytest.raises(OptionError) as info:
        checked_call(_grow)(*args, **kwargs)
    assert info.value.option == option and str(info.value) == message


def test_a_checked_call_runs_what_they_admit_and_keeps_the_signature():
    """The negative control: a Path or text, an int shard size; and help()/IDEs still see the function's own."""
    checked = checked_call(_grow)
    assert checked(Path("m"), 4, shard=10**9) == "m 4 False 1000000000" == checked("m", layers=4, shard=10**9)
    assert inspect.signature(checked) == inspect.signature(_grow) and checked.__doc__ == _grow.__doc__


def test_a_long_value_is_shown_cut():
    with pytest.raises(OptionError) as info:
        checked_call(_grow)("m", list(range(1000)))
    assert len(str(info.value)) < 160 and "…" in str(info.value)


@checked_init
@dataclasses.dataclass(frozen=True)
class _Settings:
    path: str | os.PathLike[str]
    steps: int = 1
    lr: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))


def test_a_checked_dataclass_refuses_at_construction_and_on_replace():
    settings = _Settings("x", lr=1)  # an int where a float is meant
    assert settings.path == Path("x") and dataclasses.replace(settings, steps=3).steps == 3
    for kwargs, message in [
        ({"path": "x", "steps": 2.0}, "_Settings.steps: expected int, found 2.0 (float)"),
        ({"path": "x", "stpes": 2}, "_Settings has no option 'stpes'; did you mean 'steps'?"),
        ({}, "_Settings needs path"),
    ]:
        with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _Settings(**kwargs)
    with pytest.raises(OptionError, match="_Settings.lr: expected int or float, found '1' "):
        dataclasses.replace(settings, lr="1")


def test_numpy_scalars_are_taken_as_the_python_values_they_hold():
    """A count or a rate computed with numpy (`np.int64`, `np.float32`, `np.bool_`) is the Python value it holds
    (downstream, grow.json and the config stay plain JSON), judged as that value: a float is still no count."""
    np = pytest.importorskip("numpy")
    settings = _Settings(np.str_("x"), steps=np.int64(3), lr=np.float32(0.5))
    assert (settings.steps, settings.lr) == (3, 0.5) and (type(settings.steps), type(settings.lr)) == (int, float)
    assert type(_Settings("x", lr=np.int32(2)).lr) is int  # an int where a float is meant, as for Python's own
    grow = checked_call(_grow)
    assert grow("m", np.int16(8), verify=np.bool_(True), shard=np.uint64(5)) == "m 8 True 5"
    with pytest.raises(OptionError, match=r"_Settings.steps: expected int, found 3.0 \(float\)"):
        _Settings("x", steps=np.float64(3.0))
    with pytest.raises(OptionError, match=r"_grow\(layers=…\): expected int, found array\(\[8\]\) \(ndarray\)"):
        grow("m", np.array([8]))
