"""An explicit layer map (`grow expand --layer-map 0-23,8-31`): the target's layers as a list of source layers.

This is what mergekit writes as a `passthrough` merge of `slices` (SOLAR-style "frankenmerges"), in a syntax with
one reading: comma-separated single layers and INCLUSIVE ranges `a-b` (mergekit's `layer_range: [8, 32]`, whose
end is exclusive, is `8-31` here). Any order and any repeats are allowed; the first occurrence of a source layer is
the original and later ones are new copies. With `identity_repeats` the copies' residual writers are zeroed as
`--depth-method identity` does (LLaMA-Pro), so each copy is an identity block; the map is then exactly
function-preserving when the originals, read in order, are the whole source stack 0..L−1 (a zeroed block adds
nothing wherever it stands). Without it, or with layers dropped or reordered, it is not.
"""

from __future__ import annotations

import re

from grow_cli.errors import OptionError, counted
from grow_cli.limits import MAX_LAYERS
from grow_cli.operators.depth import DepthMap, first_occurrence_is_original

_ITEM = re.compile(r"(\d+)(?:-(\d+))?")

SYNTAX = "comma-separated layers and inclusive ranges, e.g. 0-23,8-31"


def parse_layer_map(text: str) -> tuple[int, ...]:
    """The source layer of each target layer that `text` (e.g. "0-23,8-31,31") names; refuses what is not one."""
    layers: list[int] = []
    for item in text.split(","):
        match = _ITEM.fullmatch(item.strip())
        if match is None:
            raise OptionError("layer_map", f"--layer-map {text!r}: {item.strip()!r} is not a layer or range ({SYNTAX})")
        start = int(match[1])
        end = start if match[2] is None else int(match[2])
        if end < start:
            raise OptionError(
                "layer_map",
                f"--layer-map {text!r}: range {start}-{end} runs backwards; write {end}-{start}, or list "
                "the layers one by one for a reversed order",
            )
        if len(layers) + end - start + 1 > MAX_LAYERS:  # before building a list of a billion layers
            raise OptionError("layer_map", f"--layer-map {text!r} gives over grow's bound of {MAX_LAYERS:,} layers")
        layers += range(start, end + 1)
    return tuple(layers)


def format_layer_map(layer_map: tuple[int, ...] | list[int]) -> str:
    """The shortest `--layer-map` text of `layer_map` (runs of consecutive layers as inclusive ranges)."""
    runs: list[list[int]] = []
    for src in layer_map:
        if runs and src == runs[-1][1] + 1:
            runs[-1][1] = src
        else:
            runs.append([src, src])
    return _runs_text(runs)


def _runs_text(runs: list[list[int]] | list[tuple[int, int]]) -> str:
    """Inclusive (first, last) runs of layers as the map syntax writes them: `0-23,8-31`, a single layer alone."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def check_against_source(layer_map: tuple[int, ...], L: int, text: str) -> None:
    """Every layer of the map must be one of the source's L, and the map must not shrink the model."""
    beyond = sorted({src for src in layer_map if src >= L})
    if beyond:
        raise OptionError(
            "layer_map",
            f"layer map {text}: layer {beyond[0]} is past the source's {counted(L, 'layer')} (0-{L - 1}); ranges are "
            f"inclusive here, where mergekit's layer_range end is exclusive ([0, {L}] is 0-{L - 1})",
        )
    if len(layer_map) < L:
        raise OptionError(
            "layer_map",
            f"layer map {text} gives {counted(len(layer_map), 'layer')}, fewer than the source's {L}; grow only adds "
            f"layers (0-{L - 1} keeps them all)",
        )


def mapped_depth(L: int, text: str, *, identity_repeats: bool, parameters: dict) -> DepthMap:
    """The `DepthMap` of the layer map `text` on a source of L layers; `parameters` what grow.json records of it."""
    layer_map = parse_layer_map(text)
    check_against_source(layer_map, L, text)
    new = first_occurrence_is_original(list(layer_map))
    if identity_repeats and not any(new):
        raise OptionError(
            "identity_repeats", f"--identity-repeats: layer map {text} repeats no layer, so no block would be zeroed"
        )
    exact = function_change(layer_map, identity_repeats, L) is None
    params = {"layers": len(layer_map), "layer_map": format_layer_map(layer_map), "identity_repeats": identity_repeats}
    return DepthMap("layer-map", layer_map, new, identity_repeats, exact, {**params, **parameters})


def function_change(layer_map: tuple[int, ...], identity_repeats: bool, L: int | None) -> str | None:
    """How the map changes the function of a source of L layers (None: it keeps it). With L None (a family recipe,
    before its source is read) only what the map shows alone: layers it leaves out above its highest need L. Layers
    left out are counted run by run, never listed: a recipe's map may name layer 10**9."""
    originals = _originals(layer_map)
    if len(originals) < len(layer_map) and not identity_repeats:
        return "its repeats are plain copies, which add their block's output a second time"
    if (late := next((i for i in range(1, len(originals)) if originals[i] < originals[i - 1]), None)) is not None:
        return f"its originals are out of order (layer {originals[late - 1]} before layer {originals[late]})"
    top = originals[-1] + 1 if L is None else L  # (the originals now rise: the gaps between them are left out)
    gaps = [(a + 1, b - 1) for a, b in zip([-1, *originals], [*originals, top], strict=True) if b > a + 1]
    if not gaps:
        return None
    return f"it leaves out source {counted(sum(b - a + 1 for a, b in gaps), 'layer')}: {_runs_text(gaps)}"


def state_refusal(text: str, identity_repeats: bool, L: int | None = None) -> str | None:
    """Why the layer map `text` cannot carry a training run on (`function_change`), said as grow refuses it, or None
    where it can."""
    change = function_change(parse_layer_map(text), identity_repeats, L)
    if change is None:
        return None
    return (
        f"layer map {text} changes the model's function ({change}), so the source's training state cannot continue "
        "on it; a map keeps it where its repeats are identity blocks (--identity-repeats, or a mergekit config's "
        "o_proj and down_proj scale 0) and its originals are every source layer once, in order (e.g. 0-3,1-2)"
    )


def _originals(layer_map: tuple[int, ...]) -> list[int]:
    """The map's originals (each source layer's first use), in target order."""
    new = first_occurrence_is_original(list(layer_map))
    return [src for src, is_new in zip(layer_map, new, strict=True) if not is_new]
