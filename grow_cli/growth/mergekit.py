"""`grow expand --mergekit-config FILE`: a mergekit `passthrough` config with `slices` of one model, read as a layer
map (grow_cli/operators/layer_map.py), so a SOLAR-style "frankenmerge" recipe runs unchanged through grow.

mergekit's `layer_range: [start, end]` has an EXCLUSIVE end (mergekit issue #360): `[8, 32]` is layers 8-31, which
the map writes inclusively. A slice's `scale` parameter of 0 on `o_proj` and `down_proj` (LLaMA-Pro identity
blocks) becomes `--identity-repeats`, which zeroes the architecture's residual writers of the repeated layers, and
`out_dtype` (or else `dtype`) becomes `--dtype`. What grow cannot do as mergekit would (another merge method,
several models, other scales, zeroed layers that are not repeats) is refused, one line naming the key.

A slice's `model` is mergekit's reference `path[@revision]`: the revision is the one grow downloads a Hub id at (a
LoRA, `path+adapter`, is refused: grow grows a model, not an adapter merge). It must name SRC; a local folder SRC
may stand in for a Hub id (the usual downloaded copy), with a note in the report saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.source import is_hub_id
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
    model: str  # the one model its slices read, without its revision
    revision: str | None  # mergekit's `model@revision`, or None
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
    model, revision = _reference(models.pop(), where)
    return MergekitMap(
        path=path,
        model=model,
        revision=revision,
        ranges=tuple(ranges),
        layer_map=format_layer_map(layers),
        identity_repeats=_identity_repeats(layers, zeroed, where),
        dtype=_dtype(raw, where),
    )


def _reference(text: str, where: str) -> tuple[str, str | None]:
    """mergekit's model reference `path[@revision]` as (path, revision); a LoRA (`+adapter`) is refused."""
    if "+" in text:
        raise _refused(
            where,
            "model",
            f"{text!r} applies a LoRA adapter, which grow does not merge: merge it into the model first (peft's "
            "merge_and_unload) and name that folder",
        )
    path, at, revision = text.partition("@")
    if not path or "@" in revision or (at and not revision):
        raise _refused(where, "model", f"{text!r}: expected a folder or Hub id, optionally @revision")
    return path, revision or None


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


def check_model(mergekit: MergekitMap, source: str, revision: str | None) -> tuple[str | None, str | None]:
    """The revision to grow SRC at (the config's `@revision` unless `--revision` says it) and a note for the report,
    or a refusal when the config's model is not SRC: the same Hub id, the same folder (mergekit reads paths from the
    working directory, as grow does), or a local folder SRC in place of the Hub id the config names."""
    model, src = mergekit.model, str(source)
    a, b = Path(model).expanduser(), Path(src).expanduser()
    if model == src or (a.exists() and b.exists() and a.resolve() == b.resolve()):
        return _revision(mergekit, revision, local=b.exists()), None
    if is_hub_id(model) and b.is_dir():  # a downloaded copy: nothing on disk says which repository it came from
        at = f"@{mergekit.revision}" if mergekit.revision else ""
        return revision, f"mergekit config: its slices read {model}{at}; grown from {src} in its place"
    raise OptionError(
        "mergekit_config",
        f"--mergekit-config: the slices read model {model!r}, but SRC is {src!r}; give {model} as SRC (or edit "
        "model: in the config to name SRC)",
    )


def _revision(mergekit: MergekitMap, given: str | None, *, local: bool) -> str | None:
    """`--revision`, else the config's `@revision` for a Hub id (a local folder has none); both, differing, refused."""
    if local or mergekit.revision is None:
        return given
    if given is not None and given != mergekit.revision:
        raise OptionError(
            "revision",
            f"--revision {given} contradicts the mergekit config's {mergekit.model}@{mergekit.revision}; drop one",
        )
    return mergekit.revision


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
