"""A model's dimensions read from its config.json through its architecture definition, and the size of each
axis space. Shapes of checkpoint tensors are checked against these before anything is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from grow_cli.arch.registry import ArchDef
from grow_cli.errors import CheckpointError


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
        }
        size = sizes[space]
        if size is None:
            raise CheckpointError(f"config.json does not give the size of the '{space}' axis")
        return size

    def tensor_shape(self, axes: tuple[str | int, ...]) -> tuple[int, ...]:
        return tuple(self.space_size(a) for a in axes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(config: dict[str, Any], key: str | None, what: str, defaults: dict[str, Any]) -> int | None:
    """The positive integer `config[key]`, or the architecture's default for a key config.json leaves out."""
    if key is None:
        return None
    value = config.get(key)
    if value is None:
        value = defaults.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"config.json: {key} ({what}) must be a positive integer, found {value!r}")
    return value


def config_flag(arch: ArchDef, config: dict[str, Any], key: str) -> bool:
    """A boolean config switch such as `attention_bias`, with the architecture's default."""
    return bool(config.get(key, arch.config_defaults.get(key, False)))


def read_shape(arch: ArchDef, config: dict[str, Any]) -> ModelShape:
    """The `ModelShape` of a config.json, with HF's defaults (kv heads = heads, head_dim = hidden / heads)."""
    keys, defaults = arch.config, arch.config_defaults
    layers = _int(config, keys["layers"], "layer count", defaults)
    hidden = _int(config, keys["hidden"], "hidden size", defaults)
    heads = _int(config, keys["heads"], "attention heads", defaults)
    vocab = _int(config, keys["vocab"], "vocabulary size", defaults)
    for value, role in ((layers, "layers"), (hidden, "hidden"), (heads, "heads"), (vocab, "vocab")):
        if value is None:
            raise CheckpointError(f"config.json lacks '{keys[role]}', which a {arch.name} model needs")
    assert layers is not None and hidden is not None and heads is not None and vocab is not None  # checked above
    ffn = _int(config, keys.get("ffn"), "FFN size", defaults)
    if ffn is None:
        uses_ffn = any(a in ("ffn", "gate_up") for w in arch.all_weights() for a in w.axes)
        if not arch.ffn_default_multiple and uses_ffn:
            raise CheckpointError(f"config.json lacks '{keys.get('ffn')}', which a {arch.name} model needs")
        ffn = (arch.ffn_default_multiple or 0) * hidden  # 0: no axis of this definition is an FFN axis
    kv_heads = _int(config, keys.get("kv_heads"), "key/value heads", defaults) or heads
    explicit_head_dim = _int(config, keys.get("head_dim"), "head dimension", defaults)
    head_dim = explicit_head_dim or hidden // heads
    if hidden % heads and not explicit_head_dim:
        raise CheckpointError(f"config.json: hidden size {hidden} is not divisible by {heads} heads")
    if heads % kv_heads:
        raise CheckpointError(f"config.json: {heads} attention heads are not a multiple of {kv_heads} KV heads")
    tie_key = keys.get("tie")
    tie = config.get(tie_key) if tie_key else None
    tie = arch.tie_default if tie is None else bool(tie)
    return ModelShape(
        layers=layers,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        max_positions=_int(config, keys.get("positions"), "positions", defaults),
        type_vocab_size=_int(config, keys.get("token_types"), "token types", defaults),
        tie_word_embeddings=tie,
    )
