"""The grown model's config.json: the source's keys kept as they are, growth applied, and transformers 5's strict
validation run before anything is written.

mergekit leaves per-layer lists stale (a depth-grown Qwen2 then fails to load); grow maps every per-layer list
through the depth map, so layer j gets the type of the source layer it copies. A list the source config.json leaves
to transformers' default (Gemma 2's alternating `layer_types`, SmolLM3's `no_rope_layers`, Qwen3's sliding layers
above `max_window_layers`) is computed for the *source* layer count and written out explicitly: the default for
the grown layer count would give copied layers a different type than their source, and the copy would not be exact.
"""

from __future__ import annotations

import copy
from typing import Any

from grow_cli.arch.registry import ArchDef
from grow_cli.errors import UsageError

DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
# Per-layer lists that transformers validates against the layer count, whatever the architecture.
GENERIC_LAYER_LISTS = ("layer_types", "mlp_layer_types", "no_rope_layers")
# Lists that may happen to have one entry per layer without being per-layer.
_NOT_PER_LAYER = ("architectures",)


def _transformers_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}


def _built(model_type: str, params: dict[str, Any]):
    """transformers' config object for `params` (defaults filled in), or None when it cannot be built."""
    import transformers

    try:
        return transformers.AutoConfig.for_model(model_type, **params)
    except Exception:  # an unknown type or a config transformers rejects: validate_config reports it later
        return None


def per_layer_lists(arch: ArchDef, source: dict[str, Any], layers: int) -> dict[str, list[Any]]:
    """Every per-layer list of `source` (a config.json with `layers` layers), defaults included, by key.

    A key is per-layer when the definition or transformers says so (`layer_lists`, `layer_types`, …) or when the
    config class makes it one entry per layer by default (found by building the config for `layers + 1` layers).
    A list of exactly `layers` entries that is neither is refused: grow never guesses what it means.
    """
    key_L = arch.config["layers"]
    params = _transformers_params(source)
    own = {k for k, v in params.items() if isinstance(v, list) and len(v) == layers}
    probe = _built(
        source.get("model_type", ""), {**{k: v for k, v in params.items() if k not in own}, key_L: layers + 1}
    )
    defaulted = set()
    if probe is not None:
        defaulted = {k for k, v in vars(probe).items() if isinstance(v, list) and len(v) == layers + 1}
    known = {*arch.layer_lists, *GENERIC_LAYER_LISTS, *defaulted}
    unknown = sorted(k for k in own - known if k not in _NOT_PER_LAYER and not k.endswith(("_token_id", "_token_ids")))
    if unknown:
        raise UsageError(
            f"config.json: {', '.join(unknown)} has one entry per layer ({layers}) but grow does not know it as a "
            f"per-layer setting, so it cannot extend it through the layer map; nothing was written"
        )
    lists = {k: list(params[k]) for k in own & known}
    missing = defaulted - own
    if missing:
        built = _built(source.get("model_type", ""), params)
        for key in sorted(missing):
            value = getattr(built, key, None) if built is not None else None
            if isinstance(value, list) and len(value) == layers:
                lists[key] = list(value)
    return lists


def grown_config(
    arch: ArchDef,
    source: dict[str, Any],
    *,
    layer_map: tuple[int, ...] | None,
    width_updates: dict[str, Any],
    dtype: str | None,
) -> dict[str, Any]:
    """The target config: layer count, per-layer lists, width keys and dtype updated; everything else kept."""
    config = copy.deepcopy(source)
    if layer_map is not None:
        key_L = arch.config["layers"]
        L = config.get(key_L, arch.config_defaults.get(key_L))
        config[key_L] = len(layer_map)
        for key, value in per_layer_lists(arch, source, L).items():
            config[key] = [value[src] for src in layer_map]
        # Qwen2/Qwen3 "layers below this index use full attention": count the layers that copy one of them, which
        # is the grown prefix for every order-keeping map (interleave, interpolate, identity); layer_types, mapped
        # above, is what transformers reads per layer.
        if isinstance(config.get("max_window_layers"), int):
            config["max_window_layers"] = sum(1 for src in layer_map if src < config["max_window_layers"])
    config.update(width_updates)
    if dtype is not None:
        config.pop("torch_dtype", None)
        config["dtype"] = DTYPE_NAMES.get(dtype, dtype)
    elif "torch_dtype" in config:
        config["dtype"] = config.pop("torch_dtype")
    return config


def validate_config(config: dict[str, Any]) -> None:
    """Run transformers' own (strict) validation on `config`; a failure is a UsageError naming the cause."""
    import transformers

    params = _transformers_params(config)
    try:
        built = transformers.AutoConfig.for_model(config["model_type"], **params)
        built.validate()
    except Exception as exc:  # transformers raises several types (ValueError, StrictDataclass…Error)
        cause = exc.__cause__ or exc
        raise UsageError(f"the grown config.json would not load in transformers: {cause}".splitlines()[0]) from exc
