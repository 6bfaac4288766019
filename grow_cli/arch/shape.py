"""A model's dimensions read from its config.json through its architecture definition, and the size of each
axis space. Shapes of checkpoint tensors are checked against these before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from grow_cli.arch.registry import ArchDef, WeightDef
from grow_cli.errors import CheckpointError, counted, shown
from grow_cli.limits import DEEPEST_RELEASED, MAX_EXPERTS, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH


@dataclass(frozen=True)
class ModelShape:
    """Dimensions that growth changes or must respect (HF config names in comments)."""

    layers: int  # num_hidden_layers / n_layer
    hidden_size: int  # hidden_size / n_embd
    intermediate_size: int  # intermediate_size / n_inner
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int | None
    type_vocab_size: int | None
    tie_word_embeddings: bool
    # mixture of experts (all 0 / empty for a dense model)
    num_experts: int = 0  # num_local_experts / num_experts
    experts_per_token: int = 0  # num_experts_per_tok (top-k)
    expert_intermediate_size: int = 0  # a routed expert's FFN: moe_intermediate_size (Qwen) or intermediate_size
    shared_intermediate_size: int = 0  # the shared expert's FFN (Qwen2-MoE); 0: none
    sparse_layers: tuple[int, ...] = ()  # the layers whose MLP is an MoE block
    # the definition's own `config_spaces` (DeepSeek's latent attention), sized from config.json; None: not set
    config_space_sizes: tuple[tuple[str, int | None], ...] = ()

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def space_size(self, space: str | int) -> int:
        """Length of an axis that lives in `space` (an integer axis is its own, fixed, length)."""
        if isinstance(space, int):
            return space
        sizes = {
            "hidden": self.hidden_size,
            "q": self.num_heads * self.head_dim,
            "kv": self.num_kv_heads * self.head_dim,
            "head_dim": self.head_dim,
            "ffn": self.intermediate_size,
            "gate_up": 2 * self.intermediate_size,
            "vocab": self.vocab_size,
            "positions": self.max_positions,
            "token_types": self.type_vocab_size,
            "qkv": (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
            "qkv_heads": 3 * self.num_heads * self.head_dim,
            "experts": self.num_experts,
            "expert_ffn": self.expert_intermediate_size,
            "expert_gate_up": 2 * self.expert_intermediate_size,
            "shared_ffn": self.shared_intermediate_size,
            **dict(self.config_space_sizes),
        }
        size = sizes[space]
        if size is None:
            raise CheckpointError(f"config.json does not give the size of the '{space}' axis")
        return size

    def tensor_shape(self, axes: tuple[str | int, ...]) -> tuple[int, ...]:
        return tuple(self.space_size(a) for a in axes)

    def as_dict(self) -> dict[str, Any]:
        """The dimensions as JSON; the mixture-of-experts ones only for an MoE model."""
        moe = ("num_experts", "experts_per_token", "expert_intermediate_size", "shared_intermediate_size")
        result = asdict(self)
        result["sparse_layers"] = list(self.sparse_layers)
        del result["config_space_sizes"]
        if self.config_space_sizes:
            result["config_spaces"] = dict(self.config_space_sizes)
        if not self.is_moe:
            for key in (*moe, "sparse_layers"):
                del result[key]
        return result


def config_value(arch: ArchDef, config: dict[str, Any], key: str) -> Any:
    """`config[key]`, read under the other names transformers accepts for it (`config_aliases`) when absent."""
    if config.get(key) is not None:
        return config[key]
    return next((config[a] for a in arch.config_aliases.get(key, ()) if config.get(a) is not None), None)


def config_int(arch: ArchDef, config: dict[str, Any], key: str | None, what: str, *, minimum: int = 1) -> int | None:
    """The integer `config[key]` (≥ `minimum`), or the architecture's default for a key config.json leaves out."""
    if key is None:
        return None
    value = config_value(arch, config, key)
    if value is None:
        value = arch.config_defaults.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise CheckpointError(f"config.json: {key} ({what}) must be {kind}, found {value!r}")
    return value


def config_flag(arch: ArchDef, config: dict[str, Any], key: str) -> bool:
    """A config switch such as `attention_bias` (or a size such as `q_lora_rank`: set when not null or 0), with the
    architecture's default."""
    return bool(config.get(key, arch.config_defaults.get(key, False)))


def weight_present(arch: ArchDef, config: dict[str, Any], weight: WeightDef) -> bool:
    """Whether the config gives the model `weight`: its `when` keys are set, its `unless` key is not."""
    if not all(config_flag(arch, config, key) for key in weight.when):
        return False
    return weight.unless is None or not config_flag(arch, config, weight.unless)


def presence_key(arch: ArchDef, config: dict[str, Any], weight: WeightDef) -> str:
    """The config setting that leaves `weight` out of the model, for messages: `attention_bias=false`."""
    unset = [key for key in weight.when if not config_flag(arch, config, key)]
    if not unset:
        return f"{weight.unless} set"
    return f"{unset[0]}={json.dumps(config.get(unset[0], arch.config_defaults.get(unset[0], False)))}"


def read_layers(arch: ArchDef, config: dict[str, Any]) -> int | None:
    """The layer count of a config.json (None where it gives none), within grow's bound: read before anything is
    built per layer (a mixture of experts' sparse layers here, transformers' per-layer lists and modules), which a
    count of 10**12 made a MemoryError in the catch-all of `grow inspect`."""
    layers = config_int(arch, config, arch.config["layers"], "layer count")
    if layers is not None and layers > MAX_LAYERS:
        raise CheckpointError(
            f"config.json: {shown(layers)} layers is beyond grow's bound of {MAX_LAYERS:,} ({DEEPEST_RELEASED}); "
            f"check {arch.config['layers']}"
        )
    return layers


# A definition's config sizes (its `config` roles) as messages name them.
SIZE_WORDS = {
    "hidden": "hidden size",
    "ffn": "FFN size",
    "heads": "attention heads",
    "kv_heads": "key/value heads",
    "vocab": "vocabulary size",
}


def read_shape(arch: ArchDef, config: dict[str, Any]) -> ModelShape:
    """The `ModelShape` of a config.json, with HF's defaults (kv heads = heads, head_dim = hidden / heads), every
    size within grow's bounds."""
    keys = arch.config
    layers = read_layers(arch, config)
    hidden = config_int(arch, config, keys["hidden"], SIZE_WORDS["hidden"])
    heads = config_int(arch, config, keys["heads"], SIZE_WORDS["heads"])
    vocab = config_int(arch, config, keys["vocab"], SIZE_WORDS["vocab"])
    for value, role in ((layers, "layers"), (hidden, "hidden"), (heads, "heads"), (vocab, "vocab")):
        if value is None:
            raise CheckpointError(f"config.json lacks '{keys[role]}', which a {arch.name} model needs")
    assert layers is not None and hidden is not None and heads is not None and vocab is not None  # checked above
    ffn = config_int(arch, config, keys.get("ffn"), SIZE_WORDS["ffn"])
    if ffn is None:
        uses_ffn = any(a in ("ffn", "gate_up") for w in arch.all_weights() for a in w.axes)
        if not arch.ffn_default_multiple and uses_ffn:
            raise CheckpointError(f"config.json lacks '{keys.get('ffn')}', which a {arch.name} model needs")
        ffn = (arch.ffn_default_multiple or 0) * hidden  # 0: no axis of this definition is an FFN axis
    kv_heads = config_int(arch, config, keys.get("kv_heads"), SIZE_WORDS["kv_heads"]) or heads
    explicit_head_dim = config_int(arch, config, keys.get("head_dim"), "head dimension")
    head_dim = explicit_head_dim or hidden // heads
    if hidden % heads and not explicit_head_dim:
        raise CheckpointError(f"config.json: hidden size {hidden} is not divisible by {heads} heads")
    if heads % kv_heads:
        raise CheckpointError(f"config.json: {heads} attention heads are not a multiple of {kv_heads} KV heads")
    tie = _tie(arch, config)
    shape = ModelShape(
        layers=layers,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_positions=config_int(arch, config, keys.get("positions"), "positions"),
        type_vocab_size=config_int(arch, config, keys.get("token_types"), "token types"),
        tie_word_embeddings=tie,
        config_space_sizes=tuple((name, _space(arch, config, name)) for name in arch.config_spaces),
        **_moe_shape(arch, config, layers),
    )
    _refuse_beyond_bounds(shape)
    return shape


def _tie(arch: ArchDef, config: dict[str, Any]) -> bool:
    """Whether the output head is tied to the embedding: the config's switch, else the architecture's default. Text
    is refused, as transformers refuses it: "false" read as true made `grow expand` advise setting
    tie_word_embeddings to false, in a config that said so."""
    key = arch.config.get("tie")
    tie = config.get(key) if key else None
    if tie is None:
        return arch.tie_default
    if not isinstance(tie, bool):
        raise CheckpointError(
            f"config.json: {key} is {json.dumps(tie)[:40]}, not true or false (JSON's, unquoted); set it to one"
        )
    return tie


def _refuse_beyond_bounds(shape: ModelShape) -> None:
    """Refuse a size past grow's bounds (far above any released model's): transformers builds a model of whatever
    size its config gives, so a typo held all the memory there is before anything failed (`grow train-stage` and
    `grow compare` of a hidden size or vocabulary of 2**63 reached the catch-all), or planned for minutes."""
    sizes = {
        "hidden units": (shape.hidden_size, MAX_WIDTH),
        "FFN units": (shape.intermediate_size, MAX_WIDTH),
        "attention heads": (shape.num_heads, MAX_HEADS),
        "units per head": (shape.head_dim, MAX_WIDTH),
        "vocabulary entries": (shape.vocab_size, MAX_VOCAB),
        "experts": (shape.num_experts, MAX_EXPERTS),
        "units per expert": (shape.expert_intermediate_size, MAX_WIDTH),
    }
    for what, (value, bound) in sizes.items():
        if value > bound:
            raise CheckpointError(
                f"config.json: {shown(value)} {what} is beyond grow's bound of {bound:,} (far above any released "
                "model's); correct it"
            )


def _space(arch: ArchDef, config: dict[str, Any], name: str) -> int | None:
    """The size of a definition's config space: its terms' products summed (None when a key is not set: null in
    config.json, such as DeepSeek-V2-Lite's q_lora_rank, or absent without a default)."""
    total = 0
    for term in arch.config_spaces[name]:
        product = 1
        for key in term:
            what = f"a factor of the '{name}' axis"
            value = None if key in config and config[key] is None else config_int(arch, config, key, what, minimum=0)
            if value is None:
                return None
            product *= value
        total += product
    return total


def _moe_shape(arch: ArchDef, config: dict[str, Any], layers: int) -> dict[str, Any]:
    """The mixture-of-experts dimensions of an MoE definition's config.json (none for a dense one)."""
    if not arch.is_moe:
        return {}
    from grow_cli.arch.experts import sparse_layers

    keys = arch.config
    experts = config_int(arch, config, keys["experts"], "routed experts")
    top_k = config_int(arch, config, keys["experts_per_token"], "experts per token")
    expert_ffn = config_int(arch, config, keys["expert_ffn"], "expert FFN size")
    for value, role in ((experts, "experts"), (top_k, "experts_per_token"), (expert_ffn, "expert_ffn")):
        if value is None:
            raise CheckpointError(f"config.json lacks '{keys[role]}', which a {arch.name} model needs")
    assert experts is not None and top_k is not None and expert_ffn is not None  # checked above
    if top_k > experts:
        raise CheckpointError(f"config.json: {top_k} experts per token but only {counted(experts, 'expert')}")
    shared = config_int(arch, config, keys.get("shared_ffn"), "shared expert FFN size", minimum=0) or 0
    if "shared_experts" in keys:  # DeepSeek, GLM-4.5: the shared expert is that many experts' FFN wide
        shared = expert_ffn * (config_int(arch, config, keys["shared_experts"], "shared experts", minimum=0) or 0)
    return {
        "num_experts": experts,
        "experts_per_token": top_k,
        "expert_intermediate_size": expert_ffn,
        "shared_intermediate_size": shared,
        "sparse_layers": sparse_layers(arch, config, layers),
    }
