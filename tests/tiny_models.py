"""Tiny random models of every supported architecture, built from configs inside the tests (no downloads).

`save_tiny(name, folder)` writes a real `save_pretrained` checkpoint in several shards (so the sharded reader
path always runs) plus a small tokenizer-like file and a generation config, like a Hub checkpoint has.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as tf

VOCAB = 96

CONFIGS = {
    # Llama with GQA: 4 query heads share 2 KV heads.
    "llama": lambda: tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Llama with a tied head (SmolLM2-style).
    "llama_tied": lambda: tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "mistral": lambda: tf.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=64,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # Qwen2: q/k/v biases, explicit layer_types.
    "qwen2": lambda: tf.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        max_window_layers=4,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt2": lambda: tf.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=4,
        n_head=4,
        n_positions=128,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "bert": lambda: tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=128,
    ),
}

MODEL_CLASSES = {
    "llama": tf.LlamaForCausalLM,
    "llama_tied": tf.LlamaForCausalLM,
    "mistral": tf.MistralForCausalLM,
    "qwen2": tf.Qwen2ForCausalLM,
    "gpt2": tf.GPT2LMHeadModel,
    "gpt_neox": tf.GPTNeoXForCausalLM,
    "bert": tf.BertForMaskedLM,
}

DECODERS = ["llama", "llama_tied", "mistral", "qwen2", "gpt2", "gpt_neox"]
ALL = [*DECODERS, "bert"]


def build_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised tiny model of kind `name`, in eval mode, with non-trivial norms and biases.

    Norm gains and biases are randomised too, so a wrong rule for them cannot hide behind ones and zeros.
    """
    torch.manual_seed(seed)
    model = MODEL_CLASSES[name](CONFIGS[name]())
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if param.ndim == 1:
                base = 1.0 if ("norm" in pname.lower() or "ln_" in pname) and pname.endswith("weight") else 0.0
                param.copy_(base + 0.1 * torch.randn_like(param))
    return model.eval()


def save_tiny(name: str, folder: Path, *, seed: int = 0, shard_size: str = "20KB") -> Path:
    """Save a tiny model of kind `name` into `folder` in several shards; return the folder."""
    folder = Path(folder)
    model = build_tiny(name, seed)
    model.save_pretrained(folder, max_shard_size=shard_size)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128, "note": "tiny test"}))
    return folder


def probe_ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    """Random token ids for comparing logits."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen)
