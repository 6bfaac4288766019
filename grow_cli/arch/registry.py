"""Architecture definitions: one strictly validated JSON file per architecture in `definitions/`.

A definition names every tensor of the model (embeddings, one layer template, final tensors) and, for each tensor
axis, the *space* it lives in — `hidden`, `q` (query heads × head_dim), `kv` (KV heads × head_dim), `ffn`, `vocab`,
`positions`, `token_types`, `qkv` (GPT-2's fused [q|k|v]) or `qkv_heads` (GPT-NeoX's per-head fused qkv). The axis
order is the storage order, so GPT-2's Conv1D (in × out) and nn.Linear (out × in) need no special casing: `kind`
says which axis is the input. Width growth maps each space; depth growth copies layer templates.

Unknown keys are errors (a stale field must never be silently ignored, mergekit's lesson), and so is a definition
whose fields contradict each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from grow_cli.errors import ArchitectureError

SPACES = {"hidden", "q", "kv", "ffn", "vocab", "positions", "token_types", "qkv", "qkv_heads"}
# kind → index of the input axis (None: not a matrix product over its axes).
KINDS: dict[str, int | None] = {
    "linear": 1,  # nn.Linear weight, out × in
    "conv1d": 0,  # GPT-2 Conv1D weight, in × out
    "embedding": None,  # rows are looked up, columns are written to the residual stream
    "norm": None,  # norm gain
    "norm_bias": None,  # LayerNorm bias
    "bias": None,  # bias of a linear layer (follows the output axis)
}
CONFIG_ROLES = {
    "layers",
    "hidden",
    "ffn",
    "heads",
    "kv_heads",
    "head_dim",
    "vocab",
    "positions",
    "token_types",
    "tie",
    "norm_eps",
}
REQUIRED_ROLES = {"layers", "hidden", "heads", "vocab"}

_WEIGHT_KEYS = {
    "name",
    "kind",
    "axes",
    "when",
    "residual_writer",
    "head_norm",
    "tied_to",
    "tie_always",
    "group",
    "aliases",
}
_TOP_KEYS = {
    "name",
    "model_types",
    "description",
    "config",
    "config_defaults",
    "tie_default",
    "norm",
    "residual",
    "positions",
    "prefixes",
    "embeddings",
    "layer_prefix",
    "layer",
    "final",
    "buffers",
    "layer_lists",
    "ffn_default_multiple",
}


@dataclass(frozen=True)
class WeightDef:
    """One tensor of the architecture; `name` may contain `{p}` (the detected module prefix)."""

    name: str
    kind: str
    axes: tuple[str, ...]
    when: str | None = None  # present only when this boolean config key is true
    residual_writer: bool = False  # writes into the residual stream (zeroed by identity blocks)
    head_norm: bool = False  # the norm right before the (possibly tied) output head
    tied_to: str | None = None  # the tensor this one is tied to (written once, as that tensor)
    tie_always: bool = False  # tied regardless of tie_word_embeddings
    group: str | None = None  # optional block: all of its tensors are present, or none
    aliases: tuple[str, ...] = ()  # older names of the same tensor

    @property
    def in_axis(self) -> int | None:
        return KINDS[self.kind]


@dataclass(frozen=True)
class ArchDef:
    """A validated architecture definition."""

    name: str
    model_types: tuple[str, ...]
    description: str
    config: dict[str, str]
    norm: str
    residual: str
    positions: str
    prefixes: tuple[str, ...]
    embeddings: tuple[WeightDef, ...]
    layer_prefix: str
    layer: tuple[WeightDef, ...]
    final: tuple[WeightDef, ...]
    buffers: tuple[str, ...] = ()
    layer_lists: tuple[str, ...] = ()
    config_defaults: dict[str, Any] = field(default_factory=dict)
    tie_default: bool = False
    ffn_default_multiple: int | None = None

    @property
    def pre_norm(self) -> bool:
        return self.residual == "pre_norm"

    @property
    def zeroed_block_is_identity(self) -> bool:
        """Whether a layer whose residual writers are zero passes its input through unchanged, so that LLaMA-Pro's
        identity blocks are exact: true in pre-norm models (x + 0 = x), not after a post-norm (LayerNorm(x + 0) ≠ x)."""
        return self.pre_norm


def _fail(where: str, message: str) -> ArchitectureError:
    return ArchitectureError(f"architecture definition {where}: {message}")


def _weight(raw: Any, where: str) -> WeightDef:
    if not isinstance(raw, dict):
        raise _fail(where, "each weight must be an object")
    unknown = set(raw) - _WEIGHT_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)} in weight {raw.get('name')!r}")
    for key in ("name", "kind", "axes"):
        if key not in raw:
            raise _fail(where, f"weight {raw.get('name')!r} lacks '{key}'")
    if raw["kind"] not in KINDS:
        raise _fail(where, f"weight {raw['name']!r} has unknown kind {raw['kind']!r}; known: {sorted(KINDS)}")
    axes = tuple(raw["axes"])
    bad = [a for a in axes if a not in SPACES]
    if bad:
        raise _fail(where, f"weight {raw['name']!r} has unknown axis space(s) {bad}; known: {sorted(SPACES)}")
    expected_ndim = 2 if raw["kind"] in ("linear", "conv1d", "embedding") else 1
    if len(axes) != expected_ndim:
        raise _fail(where, f"weight {raw['name']!r} of kind {raw['kind']} needs {expected_ndim} axes, has {len(axes)}")
    return WeightDef(
        name=raw["name"],
        kind=raw["kind"],
        axes=axes,
        when=raw.get("when"),
        residual_writer=bool(raw.get("residual_writer", False)),
        head_norm=bool(raw.get("head_norm", False)),
        tied_to=raw.get("tied_to"),
        tie_always=bool(raw.get("tie_always", False)),
        group=raw.get("group"),
        aliases=tuple(raw.get("aliases", ())),
    )


def parse_definition(raw: dict[str, Any], where: str = "<memory>") -> ArchDef:
    """Validate a raw JSON definition and build an `ArchDef`; any unknown or inconsistent field is an error."""
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)}")
    missing = {
        "name",
        "model_types",
        "config",
        "norm",
        "residual",
        "positions",
        "prefixes",
        "embeddings",
        "layer_prefix",
        "layer",
        "final",
    } - set(raw)
    if missing:
        raise _fail(where, f"missing key(s) {sorted(missing)}")
    roles = set(raw["config"])
    if roles - CONFIG_ROLES:
        raise _fail(where, f"unknown config role(s) {sorted(roles - CONFIG_ROLES)}")
    if REQUIRED_ROLES - roles:
        raise _fail(where, f"config lacks role(s) {sorted(REQUIRED_ROLES - roles)}")
    if raw["norm"] not in ("rms", "layer"):
        raise _fail(where, "norm must be 'rms' or 'layer'")
    if raw["residual"] not in ("pre_norm", "post_norm"):
        raise _fail(where, "residual must be 'pre_norm' or 'post_norm'")
    if raw["positions"] not in ("rope", "learned"):
        raise _fail(where, "positions must be 'rope' or 'learned'")
    if "{i}" not in raw["layer_prefix"]:
        raise _fail(where, "layer_prefix must contain '{i}'")
    arch = ArchDef(
        name=raw["name"],
        model_types=tuple(raw["model_types"]),
        description=raw.get("description", ""),
        config=dict(raw["config"]),
        norm=raw["norm"],
        residual=raw["residual"],
        positions=raw["positions"],
        prefixes=tuple(raw["prefixes"]),
        embeddings=tuple(_weight(w, where) for w in raw["embeddings"]),
        layer_prefix=raw["layer_prefix"],
        layer=tuple(_weight(w, where) for w in raw["layer"]),
        final=tuple(_weight(w, where) for w in raw["final"]),
        buffers=tuple(raw.get("buffers", ())),
        layer_lists=tuple(raw.get("layer_lists", ())),
        config_defaults=dict(raw.get("config_defaults", {})),
        tie_default=bool(raw.get("tie_default", False)),
        ffn_default_multiple=raw.get("ffn_default_multiple"),
    )
    if not arch.embeddings or not arch.layer:
        raise _fail(where, "needs at least one tensor in 'embeddings' and one in 'layer'")
    names = [w.name for w in (*arch.embeddings, *arch.final)] + [w.name for w in arch.layer]
    if len(names) != len(set(names)):
        raise _fail(where, "a tensor name appears twice")
    dangling = [w.name for w in (*arch.embeddings, *arch.layer, *arch.final) if w.tied_to and w.tied_to not in names]
    if dangling:
        raise _fail(where, f"weight(s) {dangling} are tied to a tensor the definition does not name")
    if not any(w.head_norm for w in arch.final):
        raise _fail(where, "no final tensor is marked head_norm (needed to fold a tied head's scaling)")
    return arch


@cache
def all_definitions() -> dict[str, ArchDef]:
    """Every packaged definition, by name."""
    defs: dict[str, ArchDef] = {}
    for entry in sorted(resources.files("grow_cli.arch").joinpath("definitions").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            arch = parse_definition(json.loads(entry.read_text()), where=entry.name)
            defs[arch.name] = arch
    return defs


def detect(config: dict[str, Any]) -> ArchDef:
    """The definition for a `config.json` (by `model_type`); an unknown architecture is a clear error."""
    model_type = config.get("model_type")
    for arch in all_definitions().values():
        if model_type in arch.model_types:
            return arch
    known = sorted(t for a in all_definitions().values() for t in a.model_types)
    raise ArchitectureError(
        f"unknown architecture model_type={model_type!r} (architectures={config.get('architectures')}); "
        f"grow supports: {', '.join(known)}"
    )
