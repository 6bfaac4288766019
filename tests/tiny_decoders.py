"""Tiny random models of the curated decoders beyond the Llama family, built from transformers configs (no downloads).

Every model has GQA or MQA heads, an explicit head_dim where the architecture has one, and the feature that makes
its growth special switched on and made visible at this size: Gemma's soft-capping caps small enough to bend the
logits, a sliding window shorter than the probe, Granite's four multipliers away from 1, SmolLM3's NoPE layers,
Qwen3's sliding layers above `max_window_layers`. Norm gains and biases are randomised (`tiny_models.build_tiny`
does the same for the first six), so a wrong rule for a gain, an offset or a bias cannot hide behind ones and zeros.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

VOCAB = 96
_COMMON = dict(vocab_size=VOCAB, num_hidden_layers=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
_GQA = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=8)

CONFIGS = {
    "qwen3": lambda: tf.Qwen3Config(
        **_COMMON, **_GQA, use_sliding_window=True, sliding_window=5, max_window_layers=2, pad_token_id=0
    ),
    # MQA, tied head, √d embedding scale, (1 + w) norms.
    "gemma": lambda: tf.GemmaConfig(**_COMMON, **{**_GQA, "num_key_value_heads": 1}, pad_token_id=0),
    # layer_types left to the default (alternating), so depth growth must write them out.
    "gemma2": lambda: tf.Gemma2Config(
        **_COMMON,
        **_GQA,
        query_pre_attn_scalar=12,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        sliding_window=5,
        pad_token_id=0,
    ),
    "gemma3_text": lambda: tf.Gemma3TextConfig(
        **_COMMON,
        **{**_GQA, "num_key_value_heads": 1},
        query_pre_attn_scalar=12,
        sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        pad_token_id=0,
    ),
    "phi3": lambda: tf.Phi3Config(**_COMMON, **{k: v for k, v in _GQA.items() if k != "head_dim"}, pad_token_id=0),
    "olmo2": lambda: tf.Olmo2Config(**_COMMON, **_GQA, pad_token_id=0),
    "smollm3": lambda: tf.SmolLM3Config(**_COMMON, **_GQA, no_rope_layer_interval=2, pad_token_id=0),
    "granite": lambda: tf.GraniteConfig(
        **_COMMON,
        **_GQA,
        embedding_multiplier=3.0,
        residual_multiplier=0.5,
        attention_multiplier=0.2,
        logits_scaling=2.0,
        tie_word_embeddings=True,
    ),
    "starcoder2": lambda: tf.Starcoder2Config(**_COMMON, **_GQA),
}
NAMES = list(CONFIGS)
GEMMA_LIKE = {"gemma", "gemma2", "gemma3_text"}  # (1 + w) gains


def model_class(name: str):
    return tf.AutoModelForCausalLM._model_mapping[type(CONFIGS[name]())]


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A random tiny model of kind `name` in eval mode; every 1-D tensor randomised (gains around their neutral
    value, biases around zero)."""
    torch.manual_seed(seed)
    model = model_class(name)(CONFIGS[name]())
    neutral = 0.0 if name in GEMMA_LIKE else 1.0  # Gemma's gain is 1 + w
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if param.ndim == 1:
                base = neutral if "norm" in pname and pname.endswith("weight") else 0.0
                param.copy_(base + 0.3 * torch.randn_like(param))
    return model.eval()


def save(name: str, folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny model of kind `name` in several shards; return the folder."""
    build(name, seed).save_pretrained(folder, max_shard_size="20KB")
    return Path(folder)


def probe_ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen)
