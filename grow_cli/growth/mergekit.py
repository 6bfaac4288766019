"""`grow expand --mergekit-config FILE`: a mergekit `passthrough` config with `slices` of one model, read as a layer
map (grow_cli/operators/layer_map.py), so a SOLAR-style "frankenmerge" recipe runs unchanged through grow.

mergekit's `layer_range: [start, end]` has an EXCLUSIVE end (mergekit issue #360): `[8, 32]` is layers 8-31, which
the map writes inclusively. `scale` parameters are read by mergekit's rules (a slice's source, the slice, then the
config; within each the first condition whose filter is a substring of the tensor's name): where they zero
`o_proj` and `down_proj` and keep the rest (LLaMA-Pro identity blocks) they become `--identity-repeats`, which
zeroes the architecture's residual writers of the repeated layers, and `out_dtype` (or else `dtype`) becomes
`--dtype`. What grow cannot do as mergekit would (another merge method, several models, other scales, zeroed
layers that are not repeats, another tokenizer or chat template) is refused, one line naming the key.

A slice's `model` is mergekit's reference `path[@revision]`: the revision is the one grow downloads a Hub id at (a
LoRA, `path+adapter`, is refused: grow grows a model, not an adapter merge). It must name SRC; a local folder SRC
may stand in for a Hub id (the usual downloaded copy), with a note in the report saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.source import is_hub_id
from grow_cli.errors import OptionError
from grow_cli.limits import MAX_LAYERS
from grow_cli.operators.depth import first_occurrence_is_original
from grow_cli.operators.layer_map import format_layer_map

TOP_KEYS = {
    "merge_method",
    "slices",
    "dtype",
    "out_dtype",
    "base_model",
    "parameters",
    "tokenizer_source",
    "chat_template",
}
# One decoder layer's tensors as mergekit names them (Llama's; Mistral, Qwen, Gemma and Phi-3 share them): what the
# `scale` filters are matched against, as mergekit matches them (a substring of the name, the first match winning).
LAYER_TENSORS = tuple(
    f"model.layers.0.{name}.weight"
    for name in (
        *("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
        *("post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    )
)
WRITERS = {"model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"}  # LLaMA-Pro zeroes these
LAYER_NUMBER = re.compile(r"(^|\.)\d+(\.|$)")  # a filter's `layers.4.` (not `w1`, a tensor's own name)
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class MergekitMap:
    """What a mergekit passthrough config asks of grow."""

    path: str  # the config, as given
    model: str  # the one model its slices read, without its revision
    revision: str | None  # mergekit's `model@revision`, or None
    ranges: tuple[tuple[int, int], ...]  # each slice's layer_range [start, end)
    scaled: bool  # some scale is given: read against Llama's tensor names (`check_tensor_names`)
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
    config_scale = _scale_setting(raw.get("parameters"), "parameters", where)
    layers: list[int] = []
    zeroed: list[bool] = []
    models: set[str] = set()
    ranges = []
    scaled = bool(config_scale)
    for i, piece in enumerate(slices):
        model, start, end, zero, scales = _slice(piece, f"slices[{i}]", config_scale, where)
        scaled |= scales
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
    reference = models.pop()
    _check_tokenizer(raw, reference, where)
    model, revision = _reference(reference, where)
    return MergekitMap(
        path=path,
        model=model,
        revision=revision,
        ranges=tuple(ranges),
        scaled=scaled,
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


def _slice(piece: Any, at: str, config_scale: Conditions, where: str) -> tuple[str, int, int, bool, bool]:
    """One slice's model, layer range [start, end), whether it zeroes o_proj and down_proj (its source's `scale`
    first, then the slice's, then the config's, as mergekit looks a parameter up) and whether it gives a scale."""
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
    levels = [
        _scale_setting(source.get("parameters"), f"{at}.sources[0].parameters", where),
        _scale_setting(piece.get("parameters"), f"{at}.parameters", where),
        config_scale,
    ]
    return source["model"], span[0], span[1], _zeroes(levels, f"{at}: scale", where), any(levels)


Conditions = list[tuple[str | None, float]]  # a `scale` setting: (filter, value) in order; None: every tensor


def _scale_setting(parameters: Any, at: str, where: str) -> Conditions:
    """The `scale` of a `parameters` mapping as (filter, value) conditions in their order; refuses any other
    parameter, gradients and filters that name a layer."""
    if parameters is None:
        return []
    if not isinstance(parameters, dict) or set(parameters) - {"scale"}:
        raise _refused(
            where, at, "grow honours only scale (0 on o_proj and down_proj: identity blocks); remove the rest"
        )
    scale = parameters.get("scale")
    entries = scale if isinstance(scale, list) and not all(_number(e) for e in scale) else [scale]
    conditions: Conditions = []
    for entry in entries:
        value: Any = entry.get("value") if isinstance(entry, dict) else entry
        name = entry.get("filter") if isinstance(entry, dict) else None
        if isinstance(value, list) and value and all(_number(v) for v in value):
            if len(set(value)) > 1:
                raise _refused(
                    where, f"{at}.scale", f"{value} is a gradient over the layers, which grow does not apply; give one"
                )
            value = value[0]  # a "gradient" of one value
        bad = isinstance(entry, dict) and bool(set(entry) - {"filter", "value"})
        if bad or not _number(value) or not (name is None or isinstance(name, str)):
            raise _refused(where, f"{at}.scale", f"expected a number or a list of {{filter, value}}, found {entry!r}")
        if name is not None and LAYER_NUMBER.search(name):
            raise _refused(
                where,
                f"{at}.scale",
                f"filter {name!r} names a layer: grow reads scale filters by tensor (o_proj, down_proj); split "
                "the slices instead",
            )
        conditions.append((None if name in (None, "*") else name, float(value)))
    return conditions


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _zeroes(levels: list[Conditions], at: str, where: str) -> bool:
    """Whether the scales a slice's layers get (`_scale`) zero exactly o_proj and down_proj — an identity block;
    False when they keep every tensor; refused otherwise."""
    scales = {name: _scale(name, levels) for name in LAYER_TENSORS}
    if name := next((n for n, v in scales.items() if v not in (0, 1) or (v == 0 and n not in WRITERS)), None):
        raise _refused(
            where,
            at,
            f"{_short(name)} would be scaled by {scales[name]:g}: grow honours scale 0 on o_proj and down_proj "
            "(identity blocks) and 1 elsewhere; remove it",
        )
    zeroed = {n for n, v in scales.items() if v == 0}
    if zeroed and zeroed != WRITERS:
        raise _refused(
            where,
            at,
            f"scale 0 on {_short(zeroed.pop())} alone is not an identity block; scale both o_proj and down_proj to "
            "0, or neither",
        )
    return bool(zeroed)


def _scale(name: str, levels: list[Conditions]) -> float:
    """The scale mergekit gives tensor `name`: the first level (a slice's source, the slice, the config) with a
    condition that matches it, the first matching condition of that level; 1 where none does."""
    for conditions in levels:
        for pattern, value in conditions:
            if pattern is None or pattern in name:
                return value
    return 1.0


def _short(name: str) -> str:
    """A layer tensor's name as a filter would say it: `o_proj` of `….self_attn.o_proj.weight` (or `.bias`)."""
    return name.split(".")[-2]


def _check_tokenizer(raw: dict[str, Any], model: str, where: str) -> None:
    """`tokenizer_source` and `chat_template` are taken where they keep the model's own, which grow copies: `base`,
    `union` (of one model's vocabulary) or the model itself; `auto` (of one model: its template). Anything else
    would change the tokenizer or the template: refused."""
    source = raw.get("tokenizer_source")
    if source is not None and source not in ("base", "union", model):
        raise _refused(
            where,
            "tokenizer_source",
            f"{source!r}: grow keeps the model's own tokenizer (base, union or the model give it); remove it",
        )
    template = raw.get("chat_template")
    if template is not None and template != "auto":
        raise _refused(
            where, "chat_template", "grow keeps the model's own chat template (auto gives it); remove chat_template"
        )


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


def check_tensor_names(mergekit: MergekitMap, arch: str, names: list[str]) -> None:
    """`read_mergekit` read the scales against Llama's layer tensors; a model whose layers (`names`, one layer's)
    name their output projections otherwise would be scaled by mergekit in ways grow cannot tell from them (GPT-2's
    `c_proj`: a filter `o_proj` matches none of its tensors), so a config that scales anything is refused there."""
    ends = [writer.removeprefix("model.layers.0.") for writer in sorted(WRITERS)]
    if not mergekit.scaled or all(any(name.endswith(end) for name in names) for end in ends):
        return
    held = ", ".join(sorted({_short(name) for name in names}))
    raise _refused(
        f"--mergekit-config {mergekit.path}",
        "scale",
        f"its filters are read against Llama's layer tensors ({', '.join(ends)}), which this {arch} has not (its "
        f"layers hold {held}); grow cannot tell what mergekit would scale here: grow it with --layer-map and "
        "--identity-repeats",
    )


def _refused(where: str, key: str, message: str) -> OptionError:
    return OptionError("mergekit_config", f"{where}: {key + ': ' if key else ''}{message}")
