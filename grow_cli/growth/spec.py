"""`GrowthSpec`: how to grow a checkpoint — depth, width, output dtype, shards and seed — validated once.

`grow expand` builds one from its flags (each flag is named after a field: `--dus-overlap` is `dus_overlap`), a
family recipe from a member's `grow:` block (whose keys and value types are this class's fields), and Python users
directly:

    from grow_cli import GrowthSpec, expand

    expand("./SmolLM2-135M", "./smol-pro", GrowthSpec(layers=36, depth_method="identity"), verify=True)

What no source could satisfy (an unknown method, two options that contradict each other, a size below 1) is
refused here, as one `OptionError` naming the field; what depends on the source (fewer layers than it has, a hidden
size its heads cannot divide) is refused by the operators when the plan meets the source (`target_layers` in
`operators/depth.py`, `target_shape` in `operators/width.py`).

Adding an option is one field below (with its check in `_check_*` when it has one) and the flag of the same name
in `grow_cli/commands/expand.py`; the recipe accepts it at once, and tests/test_spec.py checks that every field has
its flag.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from grow_cli.checkpoint.dtypes import output_dtype
from grow_cli.errors import OptionError, UsageError, shown
from grow_cli.field_types import check_given_names, checked_init, flag
from grow_cli.field_types import field_types as dataclass_types
from grow_cli.growth.mergekit import MergekitMap, read_mergekit
from grow_cli.limits import MAX_ROUTER_NOISE, NOISE_SNR_DB_RANGE, check_experts, check_seed
from grow_cli.operators import registry
from grow_cli.operators.layer_map import parse_layer_map
from grow_cli.quantities import parse_size


@checked_init
@dataclass(frozen=True)
class GrowthSpec:
    """How to grow; None means "unchanged" (or "not given"). Each field is the `grow expand` flag of the same name
    (`dus_overlap` is `--dus-overlap`); what no source could satisfy raises `OptionError` here, at construction,
    an unknown field or a value of the wrong type (`layers="8"`, `layers=True`) first (`grow_cli/field_types.py`)."""

    # depth: the target layer count, as a number or a factor of the source's, and how new layers are made
    layers: int | None = None
    depth_factor: float | None = None
    depth_method: str = "stack"
    dus_overlap: int | None = None  # dus only: layers dropped at the seam of the two copies
    layer_map: str | None = None  # instead of the above: the source layer of each target layer, e.g. "0-23,8-31"
    identity_repeats: bool = False  # layer_map: zero the repeated layers' residual writers (identity blocks)
    mergekit_config: str | None = None  # a mergekit passthrough config, read as a layer map (growth/mergekit.py)
    # width: targets (explicit sizes win over the factor) and how new units are made
    width_method: str = "fpi"
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    width_factor: float | None = None
    noise_snr_db: float | None = None  # hypercloning only: symmetric noise at this SNR
    # mixture of experts: upcycle a dense model into its MoE type (grow_cli/operators/upcycle.py)
    experts: int | None = None  # routed experts per MoE layer, each a copy of the dense MLP
    top_k: int | None = None  # experts each token runs (default 2)
    router_noise: float | None = None  # std of the seeded normal router init (default 0.02; 0: a zero router)
    drop_upcycling: float | None = None  # Drop-Upcycling: share of each expert's units re-initialised
    shared_expert: bool = False  # a shared expert (copy of the MLP) where the MoE type has one
    # training state (a train-stage checkpoint or output with --save-final-state as the source)
    weights_only: bool = False  # grow the weights only, not the source's training state
    # output
    dtype: str | None = None  # bf16, fp16 or fp32; None: as the source
    shard_size: str | int = "5GB"
    seed: int = 0  # every random index map and noise

    def __post_init__(self) -> None:
        self._check_depth()
        self._check_width()
        self._check_files()
        self._check_experts()
        check_seed(self.seed)
        if not self.grows_depth and not self.grows_width and not self.grows_experts:
            raise OptionError(
                None,
                "nothing to grow: give --layers/--depth-factor/--layer-map, a width target and/or --experts "
                "(see grow expand --help)",
            )

    # -- what it asks for -----------------------------------------------------------------------------------------

    @property
    def grows_depth(self) -> bool:
        """A depth target was given (dus always changes the depth, a layer map always sets it)."""
        targets = (self.layers, self.depth_factor, self.layer_map, self.mergekit_config)
        return any(t is not None for t in targets) or self.depth_method == "dus"

    def fresh(self) -> GrowthSpec:
        """This spec with nothing read yet: a growth starts from it, so that a spec reused for another call reads its
        mergekit config as the file is then (the one reused kept the map it read first, whatever the file said)."""
        return dataclasses.replace(self)

    @property
    def maps_layers(self) -> bool:
        """The depth is an explicit layer map: --layer-map, or a mergekit config's."""
        return self.layer_map is not None or self.mergekit_config is not None

    @functools.cached_property
    def mergekit(self) -> MergekitMap | None:
        """The mergekit config `mergekit_config` as a layer map, read once per growth, when it starts (construction
        does not read the file, so a spec can be checked where the file is not, as the docs' examples are)."""
        if self.mergekit_config is None:
            return None
        mergekit = read_mergekit(self.mergekit_config)
        mine, theirs = self.dtype, mergekit.dtype
        if mine is not None and theirs is not None and output_dtype(mine) != output_dtype(theirs):
            raise OptionError("dtype", f"--dtype {mine} contradicts the mergekit config's dtype ({theirs}); drop one")
        return mergekit

    @property
    def explicit_layer_map(self) -> tuple[str, bool] | None:
        """The layer map (--layer-map, or the mergekit config's) and whether its repeats are identity blocks."""
        if self.mergekit is not None:
            return self.mergekit.layer_map, self.mergekit.identity_repeats
        return None if self.layer_map is None else (self.layer_map, self.identity_repeats)

    @property
    def grows_width(self) -> bool:
        """A width target was given."""
        return any(getattr(self, name) is not None for name in WIDTH_TARGETS)

    @property
    def grows_experts(self) -> bool:
        """Upcycling into a mixture of experts was asked (--experts)."""
        return self.experts is not None

    @property
    def out_dtype(self) -> str | None:
        """The safetensors dtype of the output's floating tensors, or None: as the source."""
        dtype = self.dtype if self.dtype is not None or self.mergekit is None else self.mergekit.dtype
        return None if dtype is None else output_dtype(dtype)

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.shard_size)

    @classmethod
    def from_options(cls, options: dict[str, Any], given: Collection[str] = ()) -> GrowthSpec:
        """The spec of the entries of `options` that name its fields (a command's parameters); others are ignored.
        `given` names the options the user gave (`check_given`), the others among them ignored too. A method named
        where nothing grows is refused as a method without its target, the more exact of the two refusals."""
        given = [name for name in given if name in DEFAULTS]
        try:
            spec = cls(**{k: v for k, v in options.items() if k in DEFAULTS})
        except OptionError as exc:
            named = [axis for axis in METHOD_TARGETS if f"{axis}_method" in given]
            if exc.option is None and named:  # nothing to grow: the method named alone is the mistake to name
                name = f"{named[0]}_method"
                raise _method_without_target(named[0], options.get(name, DEFAULTS[name])) from None
            raise
        spec.check_given(given)
        return spec

    def check_given(self, given: Collection[str]) -> None:
        """Refuse a method the user named at its default value without the target it needs (`--depth-method stack`
        alone), as construction refuses any other method: a command line or a recipe knows which options were
        given, where the fields only hold values. A name that is no field is the caller's mistake, refused too (a
        misspelt one would otherwise pass its check unseen)."""
        check_given_names(GrowthSpec, given)
        for axis in METHOD_TARGETS:
            self._check_method_used(axis, named=f"{axis}_method" in given)
        if "depth_method" in given and self.maps_layers:
            self._refuse_with_layer_map("depth_method")

    # -- checks that need no source -------------------------------------------------------------------------------

    def _check_depth(self) -> None:
        registry.operator("depth", self.depth_method)
        if self.layers is not None and self.layers < 1:
            raise OptionError("layers", f"--layers must be at least 1, got {self.layers}")
        if self.dus_overlap is not None and self.dus_overlap < 0:
            raise OptionError("dus_overlap", f"--dus-overlap must be at least 0, got {self.dus_overlap}")
        if self.layers is not None and self.depth_factor is not None:
            raise OptionError("depth_factor", "give --layers or --depth-factor, not both")
        if self.depth_factor is not None and not (math.isfinite(self.depth_factor) and self.depth_factor > 0):
            raise OptionError(
                "depth_factor", f"--depth-factor must be a finite positive number, got {self.depth_factor}; try 2"
            )
        if self.dus_overlap is not None and self.depth_method != "dus":
            raise OptionError("dus_overlap", "--dus-overlap applies only to --depth-method dus")
        self._check_method_used("depth", named=False)
        self._check_layer_map()

    def _check_layer_map(self) -> None:
        """A layer map (given, or a mergekit config's) sets the depth alone; its syntax is checked here, its layers
        against the source's when the plan meets it (`operators/layer_map.py`)."""
        if self.identity_repeats and self.mergekit_config is not None:  # (the config says it, or says otherwise)
            raise OptionError(
                "identity_repeats",
                "--identity-repeats applies only with --layer-map; a mergekit config makes its repeats identity blocks "
                "with scale 0 on o_proj and down_proj in their slices' parameters",
            )
        if self.identity_repeats and self.layer_map is None:
            raise OptionError(
                "identity_repeats",
                "--identity-repeats applies only with --layer-map (for --layers, use --depth-method identity)",
            )
        if self.mergekit_config is not None and self.layer_map is not None:
            raise OptionError("layer_map", "give --layer-map or --mergekit-config, not both (the config holds a map)")
        if self.layer_map is not None:
            parse_layer_map(self.layer_map)
        if not self.maps_layers:
            return
        for name in ("layers", "depth_factor", "dus_overlap"):
            if getattr(self, name) is not None:
                self._refuse_with_layer_map(name)
        if self.depth_method != DEFAULTS["depth_method"]:
            self._refuse_with_layer_map("depth_method")

    def _refuse_with_layer_map(self, name: str) -> None:
        given = "--mergekit-config" if self.mergekit_config is not None else "--layer-map"
        hint = " (for identity blocks, --identity-repeats)" if given == "--layer-map" else ""
        raise OptionError(
            name,
            f"{flag(name)} contradicts {given}: the map sets the depth and which layer each target layer "
            f"copies; drop {flag(name)}{hint}",
        )

    def _check_method_used(self, axis: str, *, named: bool) -> None:
        """A depth or width method other than the default (or `named` by the user) needs a target on its axis."""
        name = f"{axis}_method"
        method, grows = getattr(self, name), self.grows_depth if axis == "depth" else self.grows_width
        if (named or method != DEFAULTS[name]) and not grows:
            raise _method_without_target(axis, method)

    def _check_width(self) -> None:
        registry.operator("width", self.width_method)
        self._check_method_used("width", named=False)
        k = self.width_factor
        if k is not None and not (math.isfinite(k) and k >= 1):
            raise OptionError(
                "width_factor",
                f"--width-factor must be a finite number of at least 1 (width growth only adds units), got {k}; try 2",
            )
        for name in ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(name, f"{flag(name)} must be at least 1, got {value}")
        if self.noise_snr_db is not None:
            if self.width_method != "hypercloning":
                raise OptionError(
                    "noise_snr_db",
                    "--noise-snr-db applies only to --width-method hypercloning (its noise cancels between tiled "
                    "copies); try --width-method hypercloning",
                )
            low, high = NOISE_SNR_DB_RANGE
            if not low <= self.noise_snr_db <= high:  # refuses nan and infinities too
                raise OptionError(
                    "noise_snr_db",
                    f"--noise-snr-db must be from {low:g} dB (noise as strong as the weights) to {high:g} dB, got "
                    f"{shown(self.noise_snr_db)}; try 10",
                )

    def _check_experts(self) -> None:
        if self.experts is None:
            given = [
                name for name in EXPERT_OPTIONS if getattr(self, name) is not None and getattr(self, name) is not False
            ]
            if given:
                raise OptionError(given[0], f"{flag(given[0])} applies only with --experts N (upcycling)")
            return
        if self.experts < 2:
            raise OptionError("experts", f"--experts must be at least 2 (a mixture), got {self.experts}; try 8")
        check_experts(self.experts)
        if self.top_k is not None and not 1 <= self.top_k <= self.experts:
            raise OptionError(
                "top_k", f"--top-k must be between 1 and --experts {self.experts}, got {self.top_k}; try 2"
            )
        if self.router_noise is not None and not 0 <= self.router_noise <= MAX_ROUTER_NOISE:  # refuses nan too
            raise OptionError(
                "router_noise",
                f"--router-noise is the standard deviation of the router's initial weights, from 0 to "
                f"{MAX_ROUTER_NOISE:g}, got {shown(self.router_noise)}; try 0.02 (the MoE types' initializer_range)",
            )
        if self.drop_upcycling is not None and not (
            math.isfinite(self.drop_upcycling) and 0 < self.drop_upcycling <= 1
        ):
            raise OptionError(
                "drop_upcycling",
                f"--drop-upcycling is the share of units re-initialised, in (0, 1], got {self.drop_upcycling}; "
                f"try 0.5 (the paper's choice)",
            )

    def _check_files(self) -> None:
        if self.dtype is not None:
            output_dtype(self.dtype)
        try:
            parse_size(self.shard_size)
        except UsageError as exc:
            raise OptionError("shard_size", f"--shard-size: {exc}") from None


# Each field's default, for the checks of an option given without the option it depends on.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(GrowthSpec)}

# The options of upcycling besides --experts itself.
EXPERT_OPTIONS = ("top_k", "router_noise", "drop_upcycling", "shared_expert")

# What a depth or width method needs to do anything, for its refusal without it.
METHOD_TARGETS = {
    "depth": "--layers or --depth-factor (a depth target)",
    "width": "a width target (--width-factor, --hidden-size, --intermediate-size, --num-heads or --num-kv-heads)",
}


def _method_without_target(axis: str, method: str) -> OptionError:
    """The refusal of a depth or width `method` with no target on its `axis`: it would change nothing."""
    name = f"{axis}_method"
    return OptionError(
        name, f"{flag(name)} {method} applies only with {METHOD_TARGETS[axis]}; give one, or drop {flag(name)}"
    )


# The width targets: any of them set means width growth.
WIDTH_TARGETS = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "width_factor")


def field_types() -> dict[str, tuple[type, ...]]:
    """Every field and the Python types a recipe may give it (an int where a float is expected is fine; null is not:
    a recipe leaves out what it does not set)."""
    return {name: tuple(k for k in kinds if k is not type(None)) for name, kinds in dataclass_types(GrowthSpec).items()}
