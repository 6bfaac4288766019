"""The grown model's config.json: the source's keys kept as they are, growth applied, and transformers 5's strict
validation run before anything is written.

mergekit leaves per-layer lists stale (a depth-grown Qwen2 then fails to load); grow maps every per-layer list
through the depth map, so layer j gets the type of the source layer it copies. A list the source config.json leaves
to transformers' default (Gemma 2's alternating `layer_types`, SmolLM3's `no_rope_layers`, Qwen3's sliding layers
above `max_window_layers`) is computed for the *source* layer count and written out explicitly: the default for
the grown layer count would give copied layers a different type than their source, and the copy would not be exact.
The MoE layer pattern is mapped the same way (grow_cli/arch/experts.py). A model whose checkpoints carry
multi-token-prediction layers after the stack (DeepSeek-V3, GLM-4.5) is written without them, and its config says so
(`num_nextn_predict_layers` 0).
"""

from __future__ import annotations

import copy
from typing import Any

from grow_cli.arch import hf_config
from grow_cli.arch.experts import grown_kinds, sparse_config, sparse_layers
from grow_cli.arch.layer_lists import map_layer_lists, per_layer_lists, transformers_params
from grow_cli.arch.registry import ArchDef
from grow_cli.checkpoint.dtypes import config_name
from grow_cli.errors import CheckpointError, UsageError


def grown_config(
    arch: ArchDef,
    source: dict[str, Any],
    *,
    layer_map: tuple[int, ...] | None,
    width_updates: dict[str, Any],
    dtype: str | None,
    layer_entries: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """The target config: layer count, per-layer lists, width keys and dtype updated; everything else kept.
    `layer_entries`: the grown stack's lists that decide which layers hold a tensor (`layer_lists.grown_entries`),
    written over the plain copies of the layer map."""
    config = copy.deepcopy(source)
    if layer_map is not None:
        key_L = arch.config["layers"]
        L = config.get(key_L, arch.config_defaults.get(key_L))
        assert isinstance(L, int), "read_shape checked the layer count"
        config[key_L] = len(layer_map)
        map_layer_lists(config, per_layer_lists(source, key_L, L, arch.layer_lists), layer_map)
        config.update(layer_entries or {})
        if arch.is_moe:  # each grown layer keeps the kind (sparse or dense) of the layer it copies
            config.update(sparse_config(arch, grown_kinds(sparse_layers(arch, source, L), layer_map)))
    if arch.mtp_layers is not None:  # grow never writes the multi-token-prediction layers (grow_cli/arch/binding.py)
        for alias in arch.config_aliases.get(arch.mtp_layers, ()):  # a count under another name would contradict it
            config.pop(alias, None)
        config[arch.mtp_layers] = 0
    config.update(width_updates)
    if dtype is not None:
        config.pop("torch_dtype", None)
        config["dtype"] = config_name(dtype)
    elif "torch_dtype" in config:  # transformers 5's name; where both are set, `dtype` wins (as transformers reads it)
        torch_dtype = config.pop("torch_dtype")
        if config.get("dtype") is None:
            config["dtype"] = torch_dtype
    return config


def validate_config(config: dict[str, Any], source: dict[str, Any] | None = None) -> None:
    """Run transformers' own (strict) validation on `config` (without importing torch here: `hf_config`); a failure
    is a UsageError naming the cause — or, when the `source` config it grew from fails too (its keys are kept as
    they are), a CheckpointError naming the source's config.json, which is where the fix belongs."""
    cause = config_problem(config)
    if cause is None:
        return
    source_cause = None if source is None else config_problem(source)
    if source_cause is not None:
        raise source_config_refused(source_cause)
    raise UsageError(f"the grown config.json would not load in transformers: {cause}")


def config_problem(config: dict[str, Any]) -> str | None:
    """Why transformers refuses to load `config` (the first line of its own words), or None when it loads; asked
    through `hf_config`, so without torch and cached (`grow inspect` asks it of every source)."""
    cause = hf_config.problem(config["model_type"], transformers_params(config))
    return None if cause is None else cause.splitlines()[0]


def source_config_refused(cause: str) -> CheckpointError:
    """The one line for a source whose config.json transformers refuses (`config_problem`): expand refuses it,
    inspect reports it and exits with it."""
    return CheckpointError(f"the source's config.json does not load in transformers: {cause}; fix it there")
