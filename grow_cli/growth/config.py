"""The grown model's config.json: the source's keys kept as they are, growth applied, and transformers 5's strict
validation run before anything is written.

mergekit leaves per-layer lists stale (a depth-grown Qwen2 then fails to load); grow maps every per-layer list
through the depth map, so layer j gets the type of the source layer it copies.
"""

from __future__ import annotations

import copy
from typing import Any

from grow_cli.arch.registry import ArchDef
from grow_cli.checkpoint.dtypes import config_name
from grow_cli.errors import UsageError

# Per-layer lists that transformers validates against the layer count, whatever the architecture.
GENERIC_LAYER_LISTS = ("layer_types", "mlp_layer_types")


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
        L = config[arch.config["layers"]]
        config[arch.config["layers"]] = len(layer_map)
        for key in dict.fromkeys((*arch.layer_lists, *GENERIC_LAYER_LISTS)):
            value = config.get(key)
            if isinstance(value, list):
                if len(value) != L:
                    raise UsageError(f"config.json: {key} has {len(value)} entries for {L} layers")
                config[key] = [value[src] for src in layer_map]
        # Qwen2-style "layers below this index use full attention": keep "all layers" meaning "all layers".
        if isinstance(config.get("max_window_layers"), int) and config["max_window_layers"] >= L:
            config["max_window_layers"] = len(layer_map)
    config.update(width_updates)
    if dtype is not None:
        config.pop("torch_dtype", None)
        config["dtype"] = config_name(dtype)
    elif "torch_dtype" in config:
        config["dtype"] = config.pop("torch_dtype")
    return config


def validate_config(config: dict[str, Any]) -> None:
    """Run transformers' own (strict) validation on `config`; a failure is a UsageError naming the cause."""
    import transformers

    params = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}
    try:
        built = transformers.AutoConfig.for_model(config["model_type"], **params)
        built.validate()
    except Exception as exc:  # transformers raises several types (ValueError, StrictDataclass…Error)
        cause = exc.__cause__ or exc
        raise UsageError(f"the grown config.json would not load in transformers: {cause}".splitlines()[0]) from exc
