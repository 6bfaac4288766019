"""Depth growth operators: which source layer each target layer copies, and which copies are new.

Each operator is a pure function from (source layers L, target layers L') to a layer map; `depth_map` turns the
one named in the registry (`grow_cli.operators.registry`, which holds the papers and the exactness rules) into a
`DepthMap`. The executor copies the tensors of source layer `layer_map[j]` into target layer `j` (cloned, never
shared) and, for `identity`, zeroes the residual-stream writers of the new layers; `staged-identity` initialises
new layers instead (grow_cli/operators/staged.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from grow_cli.errors import OptionError, counted
from grow_cli.limits import check_layers

if TYPE_CHECKING:
    from grow_cli.growth.spec import GrowthSpec
    from grow_cli.operators.registry import Operator


@dataclass(frozen=True)
class DepthMap:
    """Target layer j copies source layer `layer_map[j]`; `new[j]` marks copies that are not the original."""

    method: str
    layer_map: tuple[int, ...]
    new: tuple[bool, ...]
    zero_new_outputs: bool  # identity blocks: residual writers of new layers are zero
    function_preserving: bool
    parameters: dict
    identity_init: bool = False  # staged-identity: new layers are not copies but gains 0, biases 0, matrices I


def first_occurrence_is_original(layer_map: list[int]) -> tuple[bool, ...]:
    """Which target layers are new: every copy of a source layer after its first (also `--layer-map`'s rule)."""
    seen: set[int] = set()
    new = []
    for src in layer_map:
        new.append(src in seen)
        seen.add(src)
    return tuple(new)


def stack(L: int, target: int) -> list[int]:
    """G_stack (Du et al. 2024): the whole stack repeated, target layer i copies source layer i mod L.

    A target that is not a multiple of L ends with a partial repetition of the bottom layers (prts' order).
    Not function-preserving.
    """
    return [i % L for i in range(target)]


def interleave(L: int, target: int) -> list[int]:
    """Each layer duplicated in place (0,0,1,1,…; staged training's "alternate" order).

    Every layer gets ⌊L'/L⌋ copies; the remaining L' mod L copies go to the top layers, as bert2BERT takes its
    remainder from the top. Not function-preserving.
    """
    base, extra = divmod(target, L)
    return [i for i in range(L) for _ in range(base + (1 if i >= L - extra else 0))]


def interpolate(L: int, target: int) -> list[int]:
    """Apollo (Pan et al. 2024): target layer j copies source layer ⌊j·L/L'⌋ (extra copies spread evenly).

    Not function-preserving.
    """
    return [j * L // target for j in range(target)]


def identity(L: int, target: int) -> list[int]:
    """LLaMA-Pro (Wu et al. 2024): copies inserted evenly, each after the last layer of its group.

    Source layer i is followed by ⌊(i+1)·n/L⌋ − ⌊i·n/L⌋ copies of itself (n = L' − L new layers); when n divides
    L this is LLaMA-Pro's "one copy after every L/n layers". The copies' residual writers are zeroed, which makes
    each new block an exact identity in a pre-norm model.
    """
    n = target - L
    layer_map: list[int] = []
    for i in range(L):
        layer_map += [i] * (1 + (i + 1) * n // L - i * n // L)
    return layer_map


def dus(L: int, overlap: int) -> list[int]:
    """SOLAR depth up-scaling (Kim et al. 2023): layers 0..L−m−1 then m..L−1, i.e. 2(L−m) layers.

    Not function-preserving; SOLAR recovers with continued pretraining.
    """
    return list(range(L - overlap)) + list(range(overlap, L))


def dus_to(L: int, target: int) -> list[int]:
    """`dus` with the overlap that gives `target` layers (target = 2·(L − overlap))."""
    return dus(L, L - target // 2)


def target_layers(L: int, spec: GrowthSpec) -> tuple[int, int | None]:
    """The target layer count (and SOLAR overlap) of `spec` for a source of L layers; refuses what this source
    cannot give. (What is impossible for any source, `GrowthSpec` refuses itself.)"""
    layers, overlap = spec.layers, spec.dus_overlap
    if layers is None and spec.depth_factor is not None:
        layers = round(L * spec.depth_factor)
    if spec.depth_method == "dus":
        if overlap is None:
            if layers is None:
                raise OptionError(
                    "layers", "dus needs --layers or --dus-overlap (SOLAR used 32 layers with overlap 8 → 48)"
                )
            fewest = L + 2 - L % 2  # the first even count above L: dus must add layers
            if layers % 2 or not fewest <= layers <= 2 * L:
                raise OptionError(
                    "layers",
                    f"dus makes 2·(L − overlap) layers; with L={L}, --layers must be even and "
                    f"between {fewest} and {2 * L}; try {min(max(layers + layers % 2, fewest), 2 * L)}",
                )
            overlap = L - layers // 2
        if not 0 <= overlap <= (L - 1) // 2:
            raise OptionError(
                "dus_overlap",
                f"--dus-overlap must be between 0 and {(L - 1) // 2} for {counted(L, 'layer')} (a larger overlap "
                f"would add no layers, or remove some), got {overlap}",
            )
        if layers is not None and layers != 2 * (L - overlap):
            raise OptionError(
                "layers",
                f"--layers {layers} contradicts --dus-overlap {overlap}: dus gives "
                f"2·({L} − {overlap}) = {2 * (L - overlap)} layers",
            )
        check_layers(L, 2 * (L - overlap))
        return 2 * (L - overlap), overlap
    if layers is None:
        return L, None
    if layers < L:
        asked = f"--layers {layers}" if spec.layers is not None else f"--depth-factor {spec.depth_factor} ({layers})"
        raise OptionError(
            "layers" if spec.layers is not None else "depth_factor",
            f"{asked} is smaller than the source's {L} layers; grow only adds layers (try {2 * L})",
        )
    check_layers(L, layers)
    return layers, None


def depth_map(op: Operator, L: int, target: int, *, dus_overlap: int | None = None) -> DepthMap:
    """The `DepthMap` of the depth method `op` (a registry entry) from L to `target` layers."""
    if op.name in ("identity", "staged-identity") and target == L:
        raise OptionError("layers", f"{op.name} needs more target layers than source layers")
    layer_map = op.implementation(L, target)
    assert len(layer_map) == target, (op.name, L, target, layer_map)
    if op.name == "dus":  # SOLAR's second copy is the new part, seam layers included
        new = tuple(j >= L - (dus_overlap or 0) for j in range(target))
        params = {"overlap": dus_overlap}
    else:
        new = first_occurrence_is_original(layer_map)
        params = {}
    zeroed = op.name == "identity"  # zeroed residual writers (LLaMA-Pro)
    staged = op.name == "staged-identity"  # zero gains and biases, identity matrices (staged training)
    return DepthMap(
        op.name, tuple(layer_map), new, zeroed, zeroed or staged, {"layers": target, **params}, identity_init=staged
    )
