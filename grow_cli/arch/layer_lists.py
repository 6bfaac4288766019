"""Which keys of a config.json hold one entry per layer — the lists depth growth maps through its layer map.

A key is per-layer when the definition or transformers says so (`layer_types`, SmolLM3's `no_rope_layers`, …) or
when its config class fills it with one entry per layer by default (found by building the config for one layer
more). Lists the source leaves to that default are returned too, computed for the source's layer count: written
out explicitly, they keep each copied layer's type, which the default for the grown layer count would not (Gemma 2
alternates sliding and full layers by index). A list of exactly one entry per layer that is neither known nor a
default is refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from grow_cli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from grow_cli.arch.registry import ArchDef, WeightDef

# Per-layer lists that transformers validates against the layer count, whatever the architecture.
GENERIC_LAYER_LISTS = ("layer_types", "mlp_layer_types", "no_rope_layers")
_NOT_PER_LAYER = ("architectures",)
# Lists of the indices of the layers of one kind, read by transformers' config classes to build the kind of each layer.
LAYER_INDEX_LISTS = ("full_attn_idxs", "attn_layer_indices", "moe_layers", "mlp_only_layers", "local_layer_ids")


# How transformers 5 writes a float JSON has no literal for ("time_step_limit": [0.0, {"__float__": "Infinity"}])
_FLOAT_TAGS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def transformers_params(config: dict[str, Any]) -> dict[str, Any]:
    """config.json minus the keys transformers' config constructors do not take, its tagged floats read as
    transformers reads them: a config class given the tag itself rejects it, so the Mamba-2 defaults of a Falcon-H1 or
    Nemotron-H that transformers 5 saved made grow refuse a config.json transformers loads."""
    skipped = ("model_type", "transformers_version", "architectures")
    return {k: _untagged(v) for k, v in config.items() if k not in skipped}


def _untagged(value: Any) -> Any:
    """`value` with each `{"__float__": tag}` replaced by its float (transformers' `_decode_special_floats`)."""
    if isinstance(value, dict):
        if value.keys() == {"__float__"} and value["__float__"] in _FLOAT_TAGS:
            return _FLOAT_TAGS[value["__float__"]]
        return {k: _untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    return value


def built_config(model_type: str, params: dict[str, Any]):
    """The attributes of transformers' config for `params` (defaults filled in), or None when it cannot be built
    (an unknown type or a config transformers rejects: `validate_config` reports it later)."""
    from grow_cli.arch import hf_config

    return hf_config.built(model_type, params)


def listed(key: str, config: dict[str, Any]) -> Any:
    """The per-layer list `key` of a config.json: as given, or the one transformers' config class fills in when it
    is absent (GLM-4.7-Flash's config.json leaves `mlp_layer_types` out); None when neither has one."""
    if config.get(key) is not None:
        return config[key]
    built = built_config(config.get("model_type", ""), transformers_params(config))
    return getattr(built, key, None)


def layer_entries(arch: ArchDef, config: dict[str, Any], layers: int) -> dict[str, list[Any]]:
    """The source's entries of each per-layer list that decides which layers hold a tensor (`only_where`): from
    config.json, or transformers' default; a list neither has is left out (every layer then holds the tensor)."""
    entries = {}
    for key in arch.presence_lists:
        listed_entries = listed(key, config)
        if listed_entries is None:
            continue
        if not isinstance(listed_entries, list) or len(listed_entries) != layers:
            found = f"{len(listed_entries)} entries" if isinstance(listed_entries, list) else f"{listed_entries!r:.60}"
            raise CheckpointError(f"config.json: {key} must list one entry for each of {layers} layers, found {found}")
        entries[key] = list(listed_entries)
    return entries


def grown_entries(
    arch: ArchDef, entries: dict[str, list[Any]], layer_map: tuple[int, ...], identity_layers: frozenset[int]
) -> dict[str, list[Any]]:
    """Those lists for the grown stack: each layer keeps the entry of the layer it copies, except an identity block
    followed (past other identity blocks) by a layer whose entry is the definition's `identity_layer_values`: it takes
    that value too. GLM-5's "shared" layer reuses the picks of the last "full" layer before it; a full copy placed
    before one would make it reuse the copy's picks instead of those it reused before, while a shared block passes
    the same picks on (and has no indexer). Elsewhere a block keeps its copy's entry, so a model whose every layer is
    full stays so."""
    grown = {}
    for key, values in entries.items():
        copied = [values[src] for src in layer_map]
        reuse = arch.identity_layer_values.get(key)
        following = None  # the entry of the next layer that is not an identity block
        for j in reversed(range(len(copied))):
            if j not in identity_layers:
                following = copied[j]
            elif reuse is not None and following == reuse:
                copied[j] = reuse
        grown[key] = copied
    return grown


def holds(weight: WeightDef, entries: dict[str, list[Any]], layer: int) -> bool:
    """Whether layer `layer` holds `weight`, as its `only_where` list entry says (every layer, without one)."""
    if weight.only_where is None or weight.only_where[0] not in entries:
        return True
    key, value = weight.only_where
    return entries[key][layer] == value


def per_layer_lists(
    source: dict[str, Any], layers_key: str, layers: int, known: Iterable[str] = (), *, strict: bool = True
) -> dict[str, list[Any]]:
    """Every per-layer list of `source` (a config.json with `layers` layers), defaults included, by key.

    `strict=False` (grow's own tiny instances, whose two layers make many short lists look per-layer) leaves
    unknown lists alone instead of refusing.
    """
    model_type = source.get("model_type", "")
    params = transformers_params(source)
    own = {k for k, v in params.items() if isinstance(v, list) and len(v) == layers} - set(LAYER_INDEX_LISTS)
    probe = built_config(model_type, {**{k: v for k, v in params.items() if k not in own}, layers_key: layers + 1})
    defaulted = set()
    if probe is not None:
        defaulted = {k for k, v in vars(probe).items() if isinstance(v, list) and len(v) == layers + 1}
        defaulted -= set(LAYER_INDEX_LISTS)
    per_layer = {*known, *GENERIC_LAYER_LISTS, *defaulted}
    unknown = sorted(
        k for k in own - per_layer if k not in _NOT_PER_LAYER and not k.endswith(("_token_id", "_token_ids"))
    )
    if unknown and strict:
        raise UsageError(
            f"config.json: {', '.join(unknown)} has one entry per layer ({layers}) but grow does not know it as a "
            f"per-layer setting, so it cannot extend it through the layer map; nothing was written"
        )
    lists = {k: list(params[k]) for k in own & per_layer}
    if defaulted - own:
        built = built_config(model_type, params)
        for key in sorted(defaulted - own):
            value = getattr(built, key, None)
            if isinstance(value, list) and len(value) == layers:
                lists[key] = list(value)
    return lists


def map_layer_lists(config: dict[str, Any], lists: dict[str, list[Any]], layer_map: tuple[int, ...] | list[int]):
    """Write every per-layer list of `lists` into `config` with layer j taking source layer `layer_map[j]`'s entry,
    list layer j in each list of layer indices of `config` when it lists `layer_map[j]`, and keep Qwen2/Qwen3's
    `max_window_layers` ("layers below this index use full attention") consistent.

    `max_window_layers` becomes the number of layers that copy one of those layers: the grown prefix for every
    order-keeping map (interleave, interpolate, identity); `layer_types`, mapped here, is what transformers reads.
    """
    for key, value in lists.items():
        config[key] = [value[src] for src in layer_map]
    for key in LAYER_INDEX_LISTS:
        if isinstance(config.get(key), list):
            config[key] = mapped_indices(config[key], layer_map)
    if isinstance(config.get("max_window_layers"), int):
        config["max_window_layers"] = sum(1 for src in layer_map if src < config["max_window_layers"])


def mapped_indices(indices: list[Any], layer_map: tuple[int, ...] | list[int] | range) -> list[int]:
    """A list of layer indices for the stack `layer_map` builds: layer j is listed when the layer it copies was."""
    return [j for j, src in enumerate(layer_map) if src in indices]
