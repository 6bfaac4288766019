"""`grow expand --mergekit-config FILE`: a mergekit `passthrough` config with `slices` of one model, read as a layer
map (grow_cli/operators/layer_map.py), so a SOLAR-style "frankenmerge" recipe runs unchanged through grow.

mergekit's `layer_range: [start, end]` has an EXCLUSIVE end (mergekit issue #360): `[8, 32]` is layers 8-31, which
the map writes inclusively. A slice's `scale` parameter of 0 on `o_proj` and `down_proj` (LLaMA-Pro identity
blocks) becomes `--identity-repeats`, which zeroes the architecture's residual writers of the repeated layers, and
`out_dtype` (or else `dtype`) becomes `--dtype`. What grow cannot do as mergekit would (another merge method,
several models, other scales, zeroed layers that are not repeats) is refused, one line naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grow_cli.errors import OptionError
from grow_cli.limits import MAX_LAYERS
from grow_cli.operators.depth import first_occurrence_is_original
from grow_cli.operators.layer_map import format_layer_map

TOP_KEYS = {"merge_method", "slices", "dtype", "out_dtype", "base_model"}
IDENTITY_FILTERS = {"o_proj", "down_proj"}  # the writers LLaMA-Pro zeroes; grow zeroes each architecture's own
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class MergekitMap:
    """What a mergekit passthrough config asks of grow."""

    path: str  # the config, as given
    model: str  # the one model its slices read
    ranges: tuple[tuple[int, int], ...]  # each slice's layer_range [start, end)
    layer_map: str  # the map, in --layer-map syntax
    identity_repeats: bool  # its repeated layers' o_proj/down_proj scaled to 0
    dtype: str | None  # bf16, fp16, fp32, or None: as the source


def read_mergekit(path: str) -> MergekitMap:
    """The layer map of the mergekit config at `path`; refuses, in one line naming the key, what grow cannot honour."""
    from grow_cli.family.recipe import read_yaml  # (the recipe module imports GrowthSpec, which imports this one)

    where = f"--mergekit-config {path}"
    raw = read_yaml(Path(path).expanduser(), "mergekit config")
    if not isinstance(raw, dict):
        raise _refused(where, "", "expected a mapping with merge_method: passthrough and slices")
    for key in raw:
        if key not in TOP_KEYS:
            raise _refused(where, str(key), f"grow reads only {', '.join(sorted(TOP_KEYS))}; remove it")
    if raw.get("merge_method") != "passthrough":
        raise _refused(
            where,
            "merge_method",
            f"grow grows one model by passthrough slices, not {raw.get('merge_method')!r}; "
            "merges of several models need mergekit",
        )
    slices = raw.get("slices")
    if not isinstance(slices, list) or not slices:
        raise _refused(where, "slices", "expected a list of slices, each with sources: [{model, layer_range}]")
    layers: list[int] = []
    zeroed: list[bool] = []
    models: set[str] = set()
    ranges = []
    for i, piece in enumerate(slices):
        model, start, end, zero = _slice(piece, f"slices[{i}]", where)
        if len(layers) + end - start > MAX_LAYERS:  # before building a list of a billion layers, as --layer-map
            raise _refused(where, f"slices[{i}]", f"the slices give over grow's bound of {MAX_LAYERS:,} layers")
        models.add(model)
        ranges.append((start, end))
        layers += range(start, end)
        zeroed += [zero] * (end - start)
    base = raw.get("base_model")
    if base is not None:
        models.add(str(base))
    if len(models) > 1:
        raise _refused(where, "model", f"the slices read {' and '.join(sorted(models))}; grow grows one model")
    return MergekitMap(
        path=path,
        model=models.pop(),
        ranges=tuple(ranges),
        layer_map=format_layer_map(layers),
        identity_repeats=_identity_repeats(layers, zeroed, where),
        dtype=_dtype(raw, where),
    )


def _slice(piece: Any, at: str, where: str) -> tuple[str, int, int, bool]:
    """One slice's model, layer range [start, end) and whether it zeroes o_proj and down_proj."""
    if not isinstance(piece, dict) or set(piece) - {"sources", "parameters"} or "sources" not in piece:
        raise _refused(where, at, "expected a mapping with sources: [{model, layer_range}] (and parameters: scale)")
    sources = piece["sources"]
    if not isinstance(sources, list) or len(sources) != 1:
        raise _refused(where, f"{at}.sources", "grow copies each slice from one source; give exactly one per slice")
    source = sources[0]
    if not isinstance(source, dict) or set(source) - {"model", "layer_range", "parameters"}:
        raise _refused(where, f"{at}.sources[0]", "expected {model, layer_range} (and parameters: scale)")
    if not isinstance(source.get("model"), str):
        raise _refused(where, f"{at}.sources[0].model", "expected the model's folder or Hub id")
    span = source.get("layer_range")
    if not (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span) and 0 <= span[0] < span[1]):
        raise _refused(
            where,
            f"{at}.sources[0].layer_range",
            f"expected [start, end] with 0 <= start < end (end exclusive), found {span!r}",
        )
    zero = _zeroes(piece.get("parameters"), f"{at}.parameters", where)
    zero = _zeroes(source.get("parameters"), f"{at}.sources[0].parameters", where) or zero
    return source["model"], span[0], span[1], zero


def _zeroes(parameters: Any, at: str, where: str) -> bool:
    """Whether `parameters` scale o_proj and down_proj to 0 (an identity block); refuses any other parameter."""
    if parameters is None:
        return False
    if not isinstance(parameters, dict) or set(parameters) - {"scale"}:
        raise _refused(
            where, at, "grow honours only scale (0 on o_proj and down_proj: identity blocks); remove the rest"
        )
    scale = parameters.get("scale")
    entries = scale if isinstance(scale, list) else [{"value": scale}]
    zeroed = set()
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) - {"filter", "value"}:
            raise _refused(where, f"{at}.scale", "expected a number or a list of {filter, value}")
        value, name = entry.get("value"), entry.get("filter")
        if name in IDENTITY_FILTERS and value == 0:
            zeroed.add(name)
        elif value != 1:
            shown = f"{{filter: {name}, value: {value}}}" if name else f"{value}"
            raise _refused(
                where,
                f"{at}.scale",
                f"{shown}: grow honours scale 0 on o_proj and down_proj (identity blocks) and 1 elsewhere; remove it",
            )
    if zeroed and zeroed != IDENTITY_FILTERS:
        raise _refused(
            where,
            f"{at}.scale",
            f"scale 0 on {zeroed.pop()} alone is not an identity block; scale both o_proj and "
            "down_proj to 0, or neither",
        )
    return bool(zeroed)


def _identity_repeats(layers: list[int], zeroed: list[bool], where: str) -> bool:
    """Whether the zeroed layers are exactly the repeats (copies after a layer's first use), which grow can zero."""
    repeats = list(first_occurrence_is_original(layers))
    if not any(zeroed) or zeroed == repeats:
        return any(zeroed)
    j = next(j for j, (z, r) in enumerate(zip(zeroed, repeats, strict=True)) if z != r)
    problem = "is scaled to 0 but is its first use" if zeroed[j] else "repeats an earlier layer but is not scaled to 0"
    raise _refused(
        where,
        "slices",
        f"target layer {j} (source layer {layers[j]}) {problem}; grow zeroes every repeated layer "
        "and only those: split the slices so that the scale-0 ones hold exactly the repeats",
    )


def _dtype(raw: dict[str, Any], where: str) -> str | None:
    key = "out_dtype" if raw.get("out_dtype") is not None else "dtype"
    value = raw.get(key)
    if value is None:
        return None
    if value not in DTYPES:
        raise _refused(where, key, f"expected one of {', '.join(DTYPES)}, found {value!r}")
    return DTYPES[value]


def check_model(mergekit: MergekitMap, source: str) -> None:
    """The config's model must be SRC: the same Hub id, or the same folder (mergekit reads paths from the working
    directory, as grow does)."""
    model, src = mergekit.model, str(source)
    if model == src:
        return
    a, b = Path(model).expanduser(), Path(src).expanduser()
    if a.exists() and b.exists() and a.resolve() == b.resolve():
        return
    raise OptionError(
        "mergekit_config",
        f"--mergekit-config: the slices read model {model!r}, but SRC is {src!r}; give {model} as SRC (or edit "
        "model: in the config to name SRC)",
    )


def check_ranges(mergekit: MergekitMap, L: int) -> None:
    """Every slice's layer_range within the source's L layers, refused in mergekit's own terms (the end is exclusive,
    mergekit issue #360) before the map's own check would name a layer of the translated map."""
    for i, (start, end) in enumerate(mergekit.ranges):
        if end > L:
            raise _refused(
                f"--mergekit-config {mergekit.path}",
                f"slices[{i}].sources[0].layer_range",
                f"[{start}, {end}] ends past the source's {L} layers; the end is exclusive: [{start}, {L}] takes "
                f"layers {start}-{L - 1}",
            )


def _refused(where: str, key: str, message: str) -> OptionError:
    return OptionError("mergekit_config", f"{where}: {key + ': ' if key else ''}{message}")
