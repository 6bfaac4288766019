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
    from grow_cli.arch.registry import ArchDef

# Per-layer lists that transformers validates against the layer count, whatever the architecture.
GENERIC_LAYER_LISTS = ("layer_types", "mlp_layer_types", "no_rope_layers")
_NOT_PER_LAYER = ("architectures",)


def transformers_params(config: dict[str, Any]) -> dict[str, Any]:
    """config.json minus the keys transformers' config constructors do not take."""
    return {k: v for k, v in config.items() if k not in ("model_type", "transformers_version", "architectures")}


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


def refuse_unsupported_values(arch: ArchDef, config: dict[str, Any], layers: int) -> None:
    """Refuse a source whose per-layer list holds a value its definition cannot grow (`layer_list_values`), or that
    is no list of one entry per layer."""
    for key, (values, why) in arch.layer_list_values.items():
        entries = listed(key, config)
        if entries is None:  # neither config.json nor this transformers has the list: nothing marks another value
            continue
        if not isinstance(entries, list) or len(entries) != layers:
            found = f"{entries!r:.60}" if not isinstance(entries, list) else f"{len(entries)} entries"
            raise CheckpointError(f"config.json: {key} must list one entry for each of {layers} layers, found {found}")
        odd = [i for i, value in enumerate(entries) if value not in values]
        if odd:
            found = " or ".join(repr(v) for v in sorted({str(entries[i]) for i in odd}))
            where = ", ".join(map(str, odd[:4])) + (", …" if len(odd) > 4 else "")
            raise CheckpointError(
                f"config.json: {key} is {found} at layer{'s' if len(odd) > 1 else ''} {where}, and grow takes a "
                f"{arch.name} only where every entry is {' or '.join(map(repr, values))}: {why}"
            )


def per_layer_lists(
    source: dict[str, Any], layers_key: str, layers: int, known: Iterable[str] = (), *, strict: bool = True
) -> dict[str, list[Any]]:
    """Every per-layer list of `source` (a config.json with `layers` layers), defaults included, by key.

    `strict=False` (grow's own tiny instances, whose two layers make many short lists look per-layer) leaves
    unknown lists alone instead of refusing.
    """
    model_type = source.get("model_type", "")
    params = transformers_params(source)
    own = {k for k, v in params.items() if isinstance(v, list) and len(v) == layers}
    probe = built_config(model_type, {**{k: v for k, v in params.items() if k not in own}, layers_key: layers + 1})
    defaulted = set()
    if probe is not None:
        defaulted = {k for k, v in vars(probe).items() if isinstance(v, list) and len(v) == layers + 1}
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
    and keep Qwen2/Qwen3's `max_window_layers` ("layers below this index use full attention") consistent.

    `max_window_layers` becomes the number of layers that copy one of those layers: the grown prefix for every
    order-keeping map (interleave, interpolate, identity); `layer_types`, mapped here, is what transformers reads.
    """
    for key, value in lists.items():
        config[key] = [value[src] for src in layer_map]
    if isinstance(config.get("max_window_layers"), int):
        config["max_window_layers"] = sum(1 for src in layer_map if src < config["max_window_layers"])
