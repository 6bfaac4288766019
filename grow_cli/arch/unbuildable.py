"""The config values transformers accepts when it builds a config but cannot build a model from, found on the config
alone: no torch, no model, no weights.

transformers 5 validates a config as it builds it (`PreTrainedConfig.validate`, its strict dataclass fields, its
RoPE validators), but some mistakes pass that validation with a logged warning at most and fail only in the model's
constructor, where the rotary embedding and the MLP read them: an unknown `rope_type` (`ROPE_INIT_FUNCTIONS[…]`, a
KeyError), a RoPE number written as text or null (a TypeError in its arithmetic), an unknown activation name
(`ACT2FN[config.hidden_act]`, a KeyError). `grow inspect` and `expand --dry-run` called such a config fine, and
`grow expand` wrote a model no one could load. `problem` names the first such value, and `hf_config.answer` adds it
to transformers' own verdict, so every route that asks whether a config loads hears of it.

Left as transformers leaves them: numbers that build a model (a RoPE `factor` below 1), and special token ids outside
the vocabulary, of which transformers warns only (Hub configs carry `pad_token_id: -1`, which loads): one past it
fails the constructor of a model that gives it to its embedding as `padding_idx` (Llama's) and not of one that does
not (GPT-2's), which the config alone does not tell; `expand --verify` and train-stage find it when they build the
model. Likewise an `attn_implementation` in config.json, which depends on the kernels installed where it runs.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from grow_cli.field_types import accepts, kinds_of, type_names

# The config fields transformers' models pass to `ACT2FN` (most of its `ACT2FN[config.…]` reads; the others are keys
# of models grow does not grow: T5's `dense_act_fn`, speech models' `feat_extract_activation`).
ACTIVATION_KEYS = ("hidden_act", "hidden_activation", "activation_function")
# RoPE numbers that each RoPE computation reads wherever they are given (standardization fills in `rope_theta`, so
# transformers' validators never list it as required): null there fails in the model's arithmetic.
ALWAYS_READ = ("rope_theta", "partial_rotary_factor")


def problem(config: Any, given: Mapping[str, Any]) -> str | None:
    """The first value of transformers' `config` (built from the config.json keys `given`) that would stop
    transformers from building its model, in one phrase naming the key and what to write; None when there is none."""
    return _rope_problem(config, given) or _activation_problem(config)


def _rope_problem(config: Any, given: Mapping[str, Any]) -> str | None:
    """An unknown RoPE type, or a RoPE number that is not one, in any of the config's RoPE parameter sets."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # The key the user wrote: older configs name it `rope_scaling`, which transformers reads first when it is set
    name = "rope_scaling" if given.get("rope_scaling") else "rope_parameters"
    known = sorted({"default", type(config).default_rope_type, *ROPE_INIT_FUNCTIONS})
    for at, rope in _rope_sets(config, name):
        rope_type = rope.get("rope_type")
        if rope_type not in known:
            has = ", ".join(known)
            return f"{at}.rope_type is {json.dumps(rope_type)}, a RoPE transformers does not have (it has {has})"
        found = _wrong_number(rope, at) or _needed_null(config, rope, at)
        if found:
            return found
    return None


def _rope_sets(config: Any, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each RoPE parameter set of the config with where it is written: one, or one per layer type."""
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or not rope:
        return
    if hasattr(config, "nested_rope_parameter_keys"):
        nested = config.nested_rope_parameter_keys(rope)
    else:  # transformers 5.17 nests them by the layer types alone
        nested = [key for key in rope if key in (getattr(config, "layer_types", None) or ())]
    for at, inner in [(f"{name}.{key}", rope[key]) for key in nested] or [(name, rope)]:
        if isinstance(inner, dict):
            yield at, inner


@functools.cache
def _rope_kinds() -> dict[str, tuple[tuple[type, ...], tuple[type, ...]]]:
    """For each key transformers types in `RopeParameters`: the types its value may have, and its items' types
    where it is a list (`short_factor: list[float]`)."""
    from transformers.modeling_rope_utils import RopeParameters

    kinds = {}
    for key, hint in typing.get_type_hints(RopeParameters).items():
        items = next((typing.get_args(h) for h in typing.get_args(hint) if typing.get_origin(h) is list), ())
        kinds[key] = (kinds_of(hint), tuple(t for a in items for t in kinds_of(a)))
    return kinds


def _wrong_number(rope: dict[str, Any], at: str) -> str | None:
    """A RoPE value of another type than transformers declares for it (`factor: "2"`, `rope_theta: [1e4]`)."""
    for key, value in rope.items():
        if key not in _rope_kinds():
            continue  # keys transformers does not type (a model's own); its validators warn of the unknown ones
        kinds, items = _rope_kinds()[key]
        if not accepts(kinds, value) or (isinstance(value, list) and not all(accepts(items, v) for v in value)):
            wanted = f"a list of {type_names(items)}" if items else _with_article(type_names(kinds))
            return f"{at}.{key} is {json.dumps(value)}, not {wanted}"
    return None


def _needed_null(config: Any, rope: dict[str, Any], at: str) -> str | None:
    """A null where the RoPE type needs a number: one every RoPE reads (`ALWAYS_READ`), or one its own transformers
    validator requires (which counts a key given as null as given)."""
    for key in [key for key, value in rope.items() if value is None]:
        if key in ALWAYS_READ or _required(config, rope, key):
            return f"{at}.{key} is null, but the {rope['rope_type']!r} RoPE computes with it; set it to a number"
    return None


def _required(config: Any, rope: dict[str, Any], key: str) -> bool:
    """Whether transformers' validator of this RoPE type requires `key`: asked with the set without it."""
    validate = getattr(config, f"_validate_{rope['rope_type']}_rope_parameters", None)
    if validate is None:
        return False
    try:
        with _rope_warnings_off():  # it warned of these values once already, as the config was built
            validate({k: v for k, v in rope.items() if k != key}, ignore_keys=config.ignore_keys_at_rope_validation)
    except KeyError:  # "Missing required keys in `rope_parameters` for 'rope_type'=…", or its own read of the key
        return True
    except Exception:  # its checks of the other values, which it passed as the config was built
        return False
    return False


@contextlib.contextmanager
def _rope_warnings_off() -> Iterator[None]:
    rope_logger = logging.getLogger("transformers.modeling_rope_utils")
    was = rope_logger.disabled
    rope_logger.disabled = True
    try:
        yield
    finally:
        rope_logger.disabled = was


def _with_article(wanted: str) -> str:
    return f"an {wanted}" if wanted[0] in "aeiou" else f"a {wanted}"


def _activation_problem(config: Any) -> str | None:
    """An activation name transformers' `ACT2FN` does not hold, in a field the config class declares."""
    names = activation_names()
    if not names:
        return None
    fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set(vars(config))
    for key in ACTIVATION_KEYS:
        value = getattr(config, key, None) if key in fields else None
        if isinstance(value, str) and value not in names:
            return f"{key} is {json.dumps(value)}, an activation transformers does not have (it has {', '.join(names)})"
    return None


@functools.cache
def activation_names() -> tuple[str, ...]:
    """The names transformers' `ACT2FN` maps to an activation, read from the source of `transformers.activations`
    (importing it imports torch, which this process may not have: `hf_config`'s child hides it); empty, so that
    nothing is refused, where that source does not hold them as a dict of string keys (`ACT2CLS = {…}`)."""
    spec = importlib.util.find_spec("transformers.activations")
    if spec is None or spec.origin is None:
        return ()
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["ACT2CLS"]
            and isinstance(node.value, ast.Dict)
        ):
            keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            return tuple(sorted(k for k in keys if isinstance(k, str)))
    return ()
