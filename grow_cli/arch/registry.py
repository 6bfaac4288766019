"""Architecture definitions: one strictly validated JSON file per architecture in `definitions/`.

A definition names every tensor of the model (embeddings, one layer template, final tensors) and, for each tensor
axis, the *space* it lives in — `hidden`, `q` (query heads × head_dim), `kv` (KV heads × head_dim), `head_dim` (one
head: per-head q/k norms), `ffn`, `gate_up` (Phi-3's fused [gate|up]), `vocab`, `positions`, `token_types`, `qkv`
(fused [q|k|v]) or `qkv_heads` (GPT-NeoX's per-head fused qkv) — or an integer, a size that never changes. The axis
order is the storage order, so GPT-2's Conv1D (in × out) and nn.Linear (out × in) need no special casing: `kind`
says which axis is the input. Width growth maps each space; depth growth copies layer templates.

Mixture-of-experts definitions add the spaces `experts` (one entry per routed expert, never widened), `expert_ffn`
and `expert_gate_up` (a routed expert's FFN units, and its fused [gate|up]) and `shared_ffn` (a shared expert's);
a tensor stored once per expert names `{e}` in its name, a fused 3-D one (kind `experts_linear`, experts × out × in)
has the `experts` axis first. `moe` says what a tensor is in the MoE block (router, routed expert, shared expert,
shared-expert gate), `ffn_role` which MLP matrix it is (gate, up, down, or fused gate_up: what upcycling copies from
a dense MLP), `layers` whether it exists only in sparse or only in dense layers, `layout` to which of the two
on-disk expert layouts it belongs (`per_expert`: what `save_pretrained` writes; `fused`: transformers 5's in-memory
3-D tensors, written with `save_original_format=False`). The `moe` block holds the rest (grow_cli/arch/experts.py).

Attention that the spaces above cannot describe (DeepSeek's multi-head latent attention: low-rank query and key/value
latents, heads of unequal query and value size) names *config spaces* of its own: `config_spaces` gives each one's
size as a sum of products of config keys. Depth growth copies such tensors like any other; width growth maps a config
space only as it is — each of its axes copied unchanged — so it grows the other spaces (hidden, FFNs) while every key
of a config space keeps its value, and refuses a target that would change one (`config_space_keys`). A definition
that cannot be widened at all says why in `width_refused`. A definition whose checkpoints
store multi-token-prediction layers after the decoder stack names the config key that counts them (`mtp_layers`).
A tensor that only some layers hold, as a per-layer list says, names that list and value in `only_where` (GLM-5's
indexer: `{"indexer_types": "full"}`; a "shared" layer has none). `identity_layer_values` gives the value of such a
list that makes a layer reuse the work of the layers before it ("shared"): an identity block followed by such a layer
takes it too, so that the layer keeps reusing what it did (`layer_lists.grown_entries`). `index_scaled_attention`
names a config flag that, when true, divides each layer's attention scores by its index + 1 (GPT-2's
`scale_attn_by_inverse_layer_idx`) and the layer tensors that hold the query: depth growth multiplies the query of a
layer it places at another index by (new index + 1)/(source index + 1), so that the layer computes what it did
(`grow_cli.operators.index_scaling`).

Names begin with `{p}` where the base model holds the tensor: transformers' `base_model_prefix` (`model.` for Llama,
`bert.`, `transformer.` for GPT-2) in a checkpoint of the model with a head, nothing in one of the base model saved
alone (`LlamaModel`, `BertModel`: a *headless* checkpoint, as decoder-based sentence-transformers models are stored),
which holds no tensor named outside `{p}` (no output head). `prefixes` lists both forms, and a definition with a base
model prefix must list the headless `""` too, so every architecture reads and writes both. The prefix is data rather
than code that strips `model.` from names: the names, buffer patterns and tie targets then say where each tensor sits
in either form, one rule for every architecture, as BERT's and GPT-2's definitions always said it.

Definitions in `definitions/` are *curated*; `grow_cli.arch.derive` builds *derived* ones for other transformers
decoders, in the same schema plus a `derived` record (what was found, and why width growth may be refused).

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

SPACES = {
    "hidden",
    "q",
    "kv",
    "head_dim",
    "ffn",
    "gate_up",
    "vocab",
    "positions",
    "token_types",
    "qkv",
    "qkv_heads",
    *("experts", "expert_ffn", "expert_gate_up", "shared_ffn"),  # mixture-of-experts
}
# kind → index of the input axis (None: not a matrix product over its axes).
KINDS: dict[str, int | None] = {
    "linear": 1,  # nn.Linear weight, out × in
    "experts_linear": 2,  # stacked nn.Linear weights of the routed experts, experts × out × in (fused layout)
    "conv1d": 0,  # GPT-2 Conv1D weight, in × out
    "embedding": None,  # rows are looked up, columns are written to the residual stream
    "norm": None,  # norm gain
    "norm_bias": None,  # LayerNorm bias
    "bias": None,  # bias of a linear layer (follows the output axis)
    "other": None,  # derived definitions only: a tensor grow copies in depth but cannot widen
}
RESIDUALS = {
    "pre_norm": "x + f(norm(x))",
    "post_norm": "norm(x + f(x)): BERT",
    "sandwich_norm": "x + norm₂(f(norm₁(x))): Gemma 2/3",
    "post_sublayer_norm": "x + norm(f(x)): OLMo 2",
    "derived": "found on a tiny random instance (derived definitions)",
}
RUNTIME_SCALES = {"sqrt_hidden"}  # an embedding multiplied by √hidden_size in the forward pass (Gemma)
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
    *("experts", "experts_per_token", "expert_ffn", "shared_ffn", "shared_experts"),  # mixture-of-experts
}
REQUIRED_ROLES = {"layers", "hidden", "heads", "vocab"}

_WEIGHT_KEYS = {
    "name",
    "kind",
    "axes",
    "when",
    "unless",
    "residual_writer",
    "head_norm",
    "tied_to",
    "tie_always",
    "group",
    "aliases",
    "runtime_scale",
    "buffer",
    *("moe", "ffn_role", "layers", "layout"),  # mixture-of-experts
    "only_where",
}
MOE_PARTS = {"router", "expert", "shared_expert", "shared_gate"}
FFN_ROLES = {"gate", "up", "down", "gate_up"}
LAYER_KINDS = {"sparse", "dense"}
EXPERT_LAYOUTS = {"per_expert", "fused"}
_REQUIRED_KEYS = {
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
}
_TOP_KEYS = _REQUIRED_KEYS | {
    "description",
    "config_defaults",
    "tie_default",
    "buffers",
    "layer_lists",
    "ffn_default_multiple",
    "norm_gain_offset",
    "derived",
    "config_aliases",
    "moe",
    "config_spaces",
    "width_refused",
    "mtp_layers",
    "identity_layer_values",
    "index_scaled_attention",
}
_DERIVED_KEYS = {"transformers", "model_class", "width_refused", "identity", "notes"}


@dataclass(frozen=True)
class WeightDef:
    """One tensor of the architecture; `name` may contain `{p}` (the detected module prefix)."""

    name: str
    kind: str
    axes: tuple[str | int, ...]  # a space per axis, or a fixed size
    when: tuple[str, ...] = ()  # present only when these config keys are all set (true, or a size: not null or 0)
    unless: str | None = None  # present only when this config key is not set (false, null or absent)
    residual_writer: bool = False  # its zero makes its sublayer add nothing to the residual stream (identity blocks)
    head_norm: bool = False  # the norm right before the (possibly tied) output head
    tied_to: str | None = None  # the tensor this one is tied to (written once, as that tensor)
    tie_always: bool = False  # tied regardless of tie_word_embeddings
    group: str | None = None  # optional block: all of its tensors are present, or none
    aliases: tuple[str, ...] = ()  # older names of the same tensor
    runtime_scale: str | None = None  # multiplied in the forward pass by a factor of the config (Gemma: √hidden)
    buffer: bool = False  # a persistent buffer: saved and grown like a weight, never trained (no optimizer state)
    gain_offset: float = 0.0  # norms: the forward pass multiplies by (gain_offset + weight); from the definition
    moe: str | None = None  # its part of a mixture-of-experts block: router, expert, shared_expert, shared_gate
    ffn_role: str | None = None  # which MLP matrix it is: gate, up, down or gate_up (what upcycling copies)
    layers: str | None = None  # only in "sparse" (MoE) or only in "dense" (MLP) layers; None: in every layer
    layout: str | None = None  # the expert layout it belongs to: "per_expert" or "fused"; None: both
    only_where: tuple[str, str] | None = None  # (per-layer list key, value): only in layers whose entry is the value

    @property
    def per_expert(self) -> bool:
        """Stored once per routed expert: the name holds `{e}`."""
        return "{e}" in self.name

    @property
    def routed(self) -> bool:
        """A routed expert's tensor (only top-k of them run per token)."""
        return self.moe == "expert"

    @property
    def in_axis(self) -> int | None:
        return KINDS[self.kind]

    @property
    def zero_fill(self) -> float:
        """The stored value that makes this tensor's effect zero: 0, or −1 for a Gemma (1 + w) norm gain."""
        return -self.gain_offset if self.kind == "norm" else 0.0


@dataclass(frozen=True)
class IndexScaledAttention:
    """`flag`: a config key that, when true, divides each layer's attention scores by its index + 1 (GPT-2's
    `scale_attn_by_inverse_layer_idx`); `query`: the layer tensors that hold the query (on a `q` or `qkv` axis)."""

    flag: str
    query: tuple[str, ...]


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
    norm_gain_offset: float = 0.0
    derived: dict[str, Any] | None = None  # None: a curated definition
    config_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key → other names transformers reads
    moe: dict[str, Any] | None = None  # mixture-of-experts settings (grow_cli/arch/experts.py); None: dense
    config_spaces: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)  # space → Σ Π config keys
    curated_width_refusal: str | None = None  # a curated definition's `width_refused`: why width growth cannot apply
    mtp_layers: str | None = None  # the config key counting the multi-token-prediction layers stored after the stack
    # per-layer list key → its value that reuses earlier layers' work, which identity blocks before one take
    identity_layer_values: dict[str, str] = field(default_factory=dict)
    # a config flag that, when true, divides each layer's attention scores by its index + 1, and the query tensors
    index_scaled_attention: IndexScaledAttention | None = None

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def curated(self) -> bool:
        return self.derived is None

    @property
    def presence_lists(self) -> tuple[str, ...]:
        """The per-layer lists that decide which layers hold a tensor (`only_where`)."""
        return tuple(sorted({w.only_where[0] for w in self.layer if w.only_where}))

    @property
    def identity_refusal(self) -> str | None:
        """Why zeroing tensors cannot make a new block an exact identity here, or None when it can.

        A block is an identity when everything it adds to the residual stream is zero. That holds whenever the
        residual add is the last operation of each sublayer and the tensors marked `residual_writer` (the output
        projections, or the post-sublayer norm gains) are zeroed; it cannot hold when a norm runs *after* the add.
        """
        if self.residual == "post_norm":
            return (
                f"{self.name} is post-LayerNorm: a norm runs after the residual add (LayerNorm(x + 0) ≠ x), "
                f"so zeroed outputs cannot make an identity block"
            )
        if self.derived is not None and self.derived.get("identity"):
            return self.derived["identity"]
        if not any(w.residual_writer for w in self.layer):
            return f"the {self.name} definition marks no residual writer to zero"
        return None

    @property
    def identity_exact(self) -> bool:
        """Zeroing the `residual_writer` tensors of a copied block makes it an exact identity."""
        return self.identity_refusal is None

    @property
    def width_refusal(self) -> str | None:
        """Why width growth is refused: a curated definition's `width_refused` (an axis width growth has no map for),
        or a derived definition's axis or module grow could not place."""
        if self.derived is None:
            return self.curated_width_refusal
        return self.derived.get("width_refused")

    @property
    def config_space_keys(self) -> dict[str, list[str]]:
        """Each config key that sizes a config space → the spaces it sizes. Width growth has no map that changes a
        config space, so it keeps these keys' values (and refuses a target that would change one)."""
        keys: dict[str, list[str]] = {}
        for space, terms in self.config_spaces.items():
            for key in dict.fromkeys(k for term in terms for k in term):
                keys.setdefault(key, []).append(space)
        return keys

    @property
    def always_verify(self) -> bool:
        """Derived definitions are checked numerically whenever a growth claims to be exact."""
        return self.derived is not None

    @property
    def normed_spaces(self) -> set[str]:
        """The spaces some norm runs over: width maps on them must copy every unit equally often (E1)."""
        return {a for w in self.all_weights() for a in w.axes if w.kind == "norm" and isinstance(a, str)}

    def all_weights(self) -> tuple[WeightDef, ...]:
        return (*self.embeddings, *self.layer, *self.final)


def _fail(where: str, message: str) -> ArchitectureError:
    return ArchitectureError(f"architecture definition {where}: {message}")


def _weight(raw: Any, where: str, gain_offset: float, spaces: frozenset[str] = frozenset()) -> WeightDef:
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
    known = SPACES | spaces
    bad = [a for a in axes if not (a in known or (isinstance(a, int) and not isinstance(a, bool) and a > 0))]
    if bad:
        raise _fail(where, f"weight {raw['name']!r} has unknown axis space(s) {bad}; known: {sorted(known)} or a size")
    when = [raw["when"]] if isinstance(raw.get("when"), str) else raw.get("when", [])
    if not isinstance(when, list) or not all(isinstance(k, str) for k in when):
        raise _fail(where, f"weight {raw['name']!r}: 'when' is a config key, or a list of keys that must all be set")
    if not isinstance(raw.get("unless", ""), str):
        raise _fail(where, f"weight {raw['name']!r}: 'unless' is a config key")
    expected_ndim = {"linear": 2, "conv1d": 2, "embedding": 2, "experts_linear": 3, "other": len(axes)}.get(
        raw["kind"], 1
    )
    if len(axes) != expected_ndim or (not axes and raw["kind"] != "other"):
        raise _fail(where, f"weight {raw['name']!r} of kind {raw['kind']} needs {expected_ndim} axes, has {len(axes)}")
    if raw.get("runtime_scale") not in (None, *RUNTIME_SCALES):
        raise _fail(where, f"weight {raw['name']!r}: runtime_scale must be one of {sorted(RUNTIME_SCALES)}")
    if not isinstance(raw.get("buffer", False), bool):
        raise _fail(where, f"weight {raw['name']!r}: 'buffer' is true or false")
    if raw.get("runtime_scale") and raw["kind"] != "embedding":
        raise _fail(where, f"weight {raw['name']!r}: only an embedding can carry a runtime_scale")
    _check_moe_fields(raw, axes, where)
    only_where = raw.get("only_where")
    if only_where is not None:
        one = isinstance(only_where, dict) and len(only_where) == 1
        if not one or not all(isinstance(x, str) for item in only_where.items() for x in item):
            raise _fail(where, f"weight {raw['name']!r}: 'only_where' is one per-layer list key and its value")
        only_where = next(iter(only_where.items()))
    return WeightDef(
        name=raw["name"],
        kind=raw["kind"],
        axes=axes,
        when=tuple(when),
        unless=raw.get("unless"),
        residual_writer=bool(raw.get("residual_writer", False)),
        head_norm=bool(raw.get("head_norm", False)),
        tied_to=raw.get("tied_to"),
        tie_always=bool(raw.get("tie_always", False)),
        group=raw.get("group"),
        aliases=tuple(raw.get("aliases", ())),
        runtime_scale=raw.get("runtime_scale"),
        buffer=raw.get("buffer", False),
        gain_offset=gain_offset if raw["kind"] == "norm" else 0.0,
        moe=raw.get("moe"),
        ffn_role=raw.get("ffn_role"),
        layers=raw.get("layers"),
        layout=raw.get("layout"),
        only_where=only_where,
    )


def _check_moe_fields(raw: dict[str, Any], axes: tuple[str | int, ...], where: str) -> None:
    """The mixture-of-experts fields of one weight are known values and agree with its name, kind and axes."""
    name = raw["name"]
    for key, allowed in (
        ("moe", MOE_PARTS),
        ("ffn_role", FFN_ROLES),
        ("layers", LAYER_KINDS),
        ("layout", EXPERT_LAYOUTS),
    ):
        if raw.get(key) is not None and raw[key] not in allowed:
            raise _fail(where, f"weight {name!r}: {key} must be one of {sorted(allowed)}")
    fused = raw["kind"] == "experts_linear"
    if fused and (axes[0] != "experts" or raw.get("layout") != "fused"):
        raise _fail(where, f"weight {name!r}: an experts_linear tensor has the 'experts' axis first and layout 'fused'")
    if "experts" in axes and not (fused or raw.get("moe") == "router"):
        raise _fail(where, f"weight {name!r}: only a router or an experts_linear tensor has an 'experts' axis")
    if "{e}" in name and raw.get("layout") != "per_expert":
        raise _fail(where, f"weight {name!r}: a tensor stored per expert ('{{e}}' in its name) has layout 'per_expert'")
    if (raw.get("moe") == "expert") != ("{e}" in name or fused):
        raise _fail(where, f"weight {name!r}: routed expert tensors (moe 'expert') are stored per expert or fused")
    if raw.get("moe") in ("expert", "shared_expert") and raw.get("ffn_role") is None:
        raise _fail(where, f"weight {name!r}: an expert's tensor names its ffn_role (gate, up, down or gate_up)")


def parse_definition(raw: dict[str, Any], where: str = "<memory>") -> ArchDef:
    """Validate a raw JSON definition and build an `ArchDef`; any unknown or inconsistent field is an error."""
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)}")
    missing = _REQUIRED_KEYS - set(raw)
    if missing:
        raise _fail(where, f"missing key(s) {sorted(missing)}")
    roles = set(raw["config"])
    if roles - CONFIG_ROLES:
        raise _fail(where, f"unknown config role(s) {sorted(roles - CONFIG_ROLES)}")
    if REQUIRED_ROLES - roles:
        raise _fail(where, f"config lacks role(s) {sorted(REQUIRED_ROLES - roles)}")
    derived = raw.get("derived")
    if derived is not None:
        if not isinstance(derived, dict) or set(derived) - _DERIVED_KEYS:
            raise _fail(where, f"'derived' must be an object with keys among {sorted(_DERIVED_KEYS)}")
    norms = ("rms", "layer") if derived is None else ("rms", "layer", "unknown")
    if raw["norm"] not in norms:
        raise _fail(where, f"norm must be one of {', '.join(map(repr, norms))}")
    if raw["residual"] not in RESIDUALS or (raw["residual"] == "derived") != (derived is not None):
        raise _fail(where, f"residual must be one of {sorted(set(RESIDUALS) - {'derived'})} ('derived' when derived)")
    if raw["positions"] not in ("rope", "learned", "other"):
        raise _fail(where, "positions must be 'rope', 'learned' or 'other'")
    if "{i}" not in raw["layer_prefix"]:
        raise _fail(where, "layer_prefix must contain '{i}'")
    offset = raw.get("norm_gain_offset", 0.0)
    if offset not in (0, 1):
        raise _fail(where, "norm_gain_offset must be 0 (gain = w) or 1 (gain = 1 + w, Gemma)")
    moe = _moe_block(raw, where)
    spaces = _config_spaces(raw, where)
    extra = frozenset(spaces)
    width_refused = raw.get("width_refused")
    if width_refused is not None and (derived is not None or not isinstance(width_refused, str) or not width_refused):
        raise _fail(
            where, "'width_refused' is a curated definition's reason, one line (derived ones say it in 'derived')"
        )
    mtp = raw.get("mtp_layers")
    if mtp is not None and not isinstance(mtp, str):
        raise _fail(where, "'mtp_layers' is the config key that counts the multi-token-prediction layers")
    arch = ArchDef(
        name=raw["name"],
        model_types=tuple(raw["model_types"]),
        description=raw.get("description", ""),
        config=dict(raw["config"]),
        norm=raw["norm"],
        residual=raw["residual"],
        positions=raw["positions"],
        prefixes=tuple(raw["prefixes"]),
        embeddings=tuple(_weight(w, where, offset, extra) for w in raw["embeddings"]),
        layer_prefix=raw["layer_prefix"],
        layer=tuple(_weight(w, where, offset, extra) for w in raw["layer"]),
        final=tuple(_weight(w, where, offset, extra) for w in raw["final"]),
        buffers=tuple(raw.get("buffers", ())),
        layer_lists=tuple(raw.get("layer_lists", ())),
        config_defaults=dict(raw.get("config_defaults", {})),
        tie_default=bool(raw.get("tie_default", False)),
        ffn_default_multiple=raw.get("ffn_default_multiple"),
        norm_gain_offset=float(offset),
        derived=derived,
        config_aliases={k: tuple(v) for k, v in raw.get("config_aliases", {}).items()},
        moe=moe,
        config_spaces=spaces,
        curated_width_refusal=width_refused,
        mtp_layers=mtp,
        identity_layer_values=_identity_layer_values(raw, where),
        index_scaled_attention=_index_scaled_attention(raw, where),
    )
    layer = {w.name: w for w in arch.layer}
    for name in arch.index_scaled_attention.query if arch.index_scaled_attention else ():
        if name not in layer or not {"q", "qkv"} & set(layer[name].axes):
            raise _fail(where, f"index_scaled_attention: {name!r} is not a layer tensor with a 'q' or 'qkv' axis")
    moe_weights = [w for w in arch.layer if w.moe or w.layers or w.layout]
    if moe_weights and moe is None:
        raise _fail(where, f"weight {moe_weights[0].name!r} is part of an MoE block, but the definition has no 'moe'")
    if not arch.embeddings or not arch.layer:
        raise _fail(where, "needs at least one tensor in 'embeddings' and one in 'layer'")
    names = [w.name for w in (*arch.embeddings, *arch.final)] + [w.name for w in arch.layer]
    if len(names) != len(set(names)):
        raise _fail(where, "a tensor name appears twice")
    dangling = [w.name for w in (*arch.embeddings, *arch.layer, *arch.final) if w.tied_to and w.tied_to not in names]
    if dangling:
        raise _fail(where, f"weight(s) {dangling} are tied to a tensor the definition does not name")
    tied_head = any(w.tied_to for w in arch.final)
    if tied_head and not any(w.head_norm for w in arch.final) and arch.width_refusal is None:
        raise _fail(where, "no final tensor is marked head_norm (needed to fold a tied head's scaling)")
    if arch.width_refusal is None and any(w.kind == "other" for w in arch.all_weights()):
        raise _fail(where, "a tensor of kind 'other' cannot be widened: set derived.width_refused")
    _check_prefixes(arch, where)
    return arch


def _check_prefixes(arch: ArchDef, where: str) -> None:
    """A base model prefix (`model.`) is a module path; a definition with one names its embeddings and layers under
    `{p}` (the base model holds them) and lists the headless form `""` (the base model saved alone)."""
    if not arch.prefixes or any(p and not p.endswith(".") for p in arch.prefixes):
        raise _fail(where, "'prefixes' lists module prefixes, each ending in '.' (or \"\": none)")
    if not any(arch.prefixes):
        return
    if "" not in arch.prefixes:
        raise _fail(where, f'prefixes {list(arch.prefixes)} lack "", the base model saved alone (headless)')
    outside = [w.name for w in arch.embeddings if not w.name.startswith("{p}")]
    if outside or not arch.layer_prefix.startswith("{p}"):
        name = outside[0] if outside else arch.layer_prefix
        raise _fail(where, f"{name!r} does not begin with {{p}}, although the base model holds it")


def _config_spaces(raw: dict[str, Any], where: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    """The validated `config_spaces`: each new space's size as a list of terms, each a list of config keys whose
    values multiply ([["num_attention_heads", "v_head_dim"]] is heads × v_head_dim; two terms add)."""
    block = raw.get("config_spaces", {})
    if not isinstance(block, dict):
        raise _fail(where, "'config_spaces' maps a space name to a list of terms, each a list of config keys")
    spaces = {}
    for name, terms in block.items():
        if name in SPACES:
            raise _fail(where, f"config space {name!r} is one of grow's own spaces; choose another name")
        ok = isinstance(terms, list) and terms and all(isinstance(t, list) and t for t in terms)
        if not ok or not all(isinstance(k, str) for t in terms for k in t):
            raise _fail(where, f"config space {name!r}: give a list of terms, each a list of config keys to multiply")
        spaces[name] = tuple(tuple(t) for t in terms)
    return spaces


def _index_scaled_attention(raw: dict[str, Any], where: str) -> IndexScaledAttention | None:
    """The validated `index_scaled_attention`: {"flag": config key, "query": [layer tensors holding the query, on a
    `q` or fused `qkv` axis]}."""
    block = raw.get("index_scaled_attention")
    if block is None:
        return None
    query = block.get("query") if isinstance(block, dict) else None
    if not (
        isinstance(block, dict)
        and set(block) == {"flag", "query"}
        and isinstance(block["flag"], str)
        and block["flag"]
        and isinstance(query, list)
        and query
        and all(isinstance(name, str) for name in query)
    ):
        raise _fail(where, '\'index_scaled_attention\' is {"flag": a config key, "query": [layer tensor names]}')
    return IndexScaledAttention(block["flag"], tuple(query))


def _identity_layer_values(raw: dict[str, Any], where: str) -> dict[str, str]:
    """The validated `identity_layer_values`: {per-layer list key: its value that reuses earlier layers' work}."""
    block = raw.get("identity_layer_values", {})
    if not isinstance(block, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in block.items()):
        raise _fail(where, "'identity_layer_values' maps a per-layer list key to one of its values")
    return dict(block)


_MOE_KEYS = {"upcycle_from", "topk_norm", "sparse_step", "dense_layers", "dense_prefix", "layer_types", "routed_scale"}


def _moe_block(raw: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The validated `moe` block: which dense definitions upcycle into this type (`upcycle_from`), how its router
    normalises the top-k weights (`topk_norm`: "always", "never", or the config key that switches it on) and the
    config key of a factor it multiplies them by (`routed_scale`), and the config keys of a per-layer sparse/dense
    pattern (`sparse_step`: every n-th layer is sparse; `dense_layers`: listed layers are dense; `dense_prefix`: the
    first k layers are dense; `layer_types`: a list marking each layer "dense" or "sparse", which decides where it is
    named)."""
    block = raw.get("moe")
    aliases = raw.get("config_aliases", {})
    if not isinstance(aliases, dict) or not all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in aliases.values()
    ):
        raise _fail(where, "'config_aliases' maps a config key to a list of the other names transformers reads")
    if block is None:
        return None
    if not isinstance(block, dict) or set(block) - _MOE_KEYS:
        raise _fail(where, f"'moe' must be an object with keys among {sorted(_MOE_KEYS)}")
    if {"experts", "experts_per_token", "expert_ffn"} - set(raw["config"]):
        raise _fail(where, "an MoE definition maps the config roles experts, experts_per_token and expert_ffn")
    if "topk_norm" not in block:
        raise _fail(where, "'moe' needs 'topk_norm': \"always\" or the config key that normalises the top-k weights")
    if not isinstance(block.get("upcycle_from", []), list):
        raise _fail(where, "'moe.upcycle_from' is a list of dense definition names")
    return dict(block)


@cache
def _documents() -> dict[str, dict[str, Any]]:
    """Every packaged definition's JSON document, by file name."""
    docs = {}
    for entry in sorted(resources.files("grow_cli.arch").joinpath("definitions").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            docs[entry.name] = json.loads(entry.read_text())
    return docs


@cache
def all_definitions() -> dict[str, ArchDef]:
    """Every packaged (curated) definition, by name."""
    defs: dict[str, ArchDef] = {}
    for file, raw in _documents().items():
        arch = parse_definition(raw, where=file)
        defs[arch.name] = arch
    return defs


def definition_document(config: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of the definition `detect(config)` uses: the packaged file, or the derived definition."""
    for raw in _documents().values():
        if config.get("model_type") in raw["model_types"]:
            return json.loads(json.dumps(raw))
    from grow_cli.arch.derive import derive_definition

    return derive_definition(config)


def detect(config: dict[str, Any]) -> ArchDef:
    """The definition for a `config.json`: the curated one for its `model_type`, else one derived from transformers'
    model class (`grow_cli.arch.derive`); a type that can be neither is one clear ArchitectureError."""
    model_type = config.get("model_type")
    for arch in all_definitions().values():
        if model_type in arch.model_types:
            return arch
    from grow_cli.arch.derive import derive

    return derive(config)


def known(config: dict[str, Any]) -> ArchDef | None:
    """The definition for a `config.json` (`detect`), or None for a type grow has none of: where grow checks a
    model it does not grow (`grow train-stage`, `grow compare`), such a type is left to transformers' own checks."""
    try:
        return detect(config)
    except ArchitectureError:
        return None
