"""Tiny random mixture-of-experts models of every curated MoE type, built from transformers configs (no downloads).

Each has GQA heads, four routed experts with top-2 routing and the feature that makes its type special switched on:
Qwen2-MoE a sigmoid-gated shared expert and a dense MLP in layer 1 (`mlp_only_layers`), Qwen3-MoE per-head q/k norms
and every other layer sparse (`decoder_sparse_step` 2), OLMoE q/k norms over all heads. Routers are drawn large
(std 0.5) so that tokens really spread over different experts, and every 1-D tensor is randomised, so that a wrong
rule for an expert, a router row or a gain cannot hide behind identical experts or ones and zeros.

`PREFIX_CONFIGS` adds the types whose first layers keep a dense MLP (GLM-4.5, DeepSeek-V3, DeepSeek-V3.2, DeepSeek-V2),
with their routers' e-score correction biases (buffers) randomised too; DeepSeek-V3.2's sparse-attention indexer keeps
5 of the probe's 12 positions, so the keys it picks decide the output. `LISTED_CONFIGS` adds GLM-4.7-Flash
(`glm4_moe_lite`), DeepSeek-V3's attention and GLM's experts, whose dense layers are marked in a per-layer list
(`mlp_layer_types`), and GLM-5 (`glm_moe_dsa`), the same with DeepSeek-V3.2's indexer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    num_hidden_layers=4,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    hidden_size=32,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts_per_tok=2,
)

CONFIGS = {
    "mixtral": lambda: tf.MixtralConfig(**_COMMON, intermediate_size=48, head_dim=8, num_local_experts=4),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(
        **_COMMON,
        intermediate_size=48,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=40,
        num_experts=4,
        mlp_only_layers=[1],
    ),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(
        **_COMMON,
        intermediate_size=48,
        moe_intermediate_size=16,
        head_dim=8,
        num_experts=4,
        decoder_sparse_step=2,
        norm_topk_prob=True,
    ),
    "olmoe": lambda: tf.OlmoeConfig(**_COMMON, intermediate_size=24, num_experts=4),
}
NAMES = list(CONFIGS)

# Mixtures of experts whose first first_k_dense_replace layers keep a dense MLP (here: layer 0 of 3), with shared
# experts, sigmoid routers with an e-score correction bias and grouped top-k (two groups of four experts, one group
# chosen), and a routed_scaling_factor other than 1: GLM-4.5 with q/k/v biases, partial rotary and q/k norms;
# DeepSeek-V3 with multi-head latent attention through a query latent; DeepSeek-V3.2 as V3 plus its sparse-attention
# indexer; DeepSeek-V2 (Lite) with plain query projections and softmax routing.
_PREFIXED = dict(
    _COMMON,
    num_hidden_layers=3,
    intermediate_size=48,
    moe_intermediate_size=16,
    n_routed_experts=8,
    first_k_dense_replace=1,
)
_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8)
# DeepSeek-V3's routing, shared by the types built on it: a query latent, one shared expert, top-k in one of two groups.
_V3_ROUTING = dict(q_lora_rank=24, n_shared_experts=1, n_group=2, topk_group=1)
_INDEXER = dict(index_n_heads=2, index_head_dim=8, index_topk=5)  # DeepSeek Sparse Attention: 5 of the probe's 12 keys
PREFIX_CONFIGS = {
    "glm4_moe": lambda: tf.Glm4MoeConfig(
        **_PREFIXED,
        head_dim=8,
        attention_bias=True,
        use_qk_norm=True,
        n_shared_experts=1,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=1.5,
    ),
    "deepseek_v3": lambda: tf.DeepseekV3Config(**{**_PREFIXED, **_MLA}, **_V3_ROUTING, routed_scaling_factor=2.5),
    "deepseek_v32": lambda: tf.DeepseekV32Config(
        **{**_PREFIXED, **_MLA}, **_V3_ROUTING, routed_scaling_factor=2.5, **_INDEXER
    ),
    "deepseek_v2": lambda: tf.DeepseekV2Config(**{**_PREFIXED, **_MLA}, q_lora_rank=None, n_shared_experts=2),
}
PREFIX_NAMES = list(PREFIX_CONFIGS)
_LISTED = {k: v for k, v in {**_PREFIXED, **_MLA}.items() if k != "first_k_dense_replace"}
LISTED_CONFIGS = {  # transformers' default pattern: layer 0 dense, the others sparse
    "glm4_moe_lite": lambda: tf.Glm4MoeLiteConfig(**_LISTED, **_V3_ROUTING, routed_scaling_factor=1.5),
    "glm_moe_dsa": lambda: tf.GlmMoeDsaConfig(  # its default pattern follows first_k_dense_replace
        **_LISTED, first_k_dense_replace=1, **_V3_ROUTING, routed_scaling_factor=1.5, **_INDEXER
    ),
}


def config(name: str):
    return {**CONFIGS, **PREFIX_CONFIGS, **LISTED_CONFIGS}[name]()


def model_class(name: str):
    return tf.AutoModelForCausalLM._model_mapping[type(config(name))]


def build(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random tiny MoE model of kind `name` in eval mode (routers std 0.5; gains around 1, biases around 0 — the
    routers' e-score correction biases too, which are buffers); `overrides` set config keys (q_lora_rank=None)."""
    torch.manual_seed(seed)
    cfg = config(name)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = model_class(name)(cfg)
    with torch.no_grad():
        for pname, param in [*model.named_parameters(), *model.named_buffers()]:
            if param.ndim == 1 and (pname.endswith("e_score_correction_bias") or param.requires_grad):
                base = 1.0 if "norm" in pname else 0.0
                param.copy_(base + 0.3 * torch.randn_like(param))
            elif pname.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
                param.copy_(0.5 * torch.randn_like(param))
    return model.eval()


def save(name: str, folder: Path, *, seed: int = 0, fused: bool = False, **overrides) -> Path:
    """Save a tiny MoE model in several shards: one tensor per expert as `save_pretrained` writes them, or (`fused`)
    transformers 5's 3-D expert tensors (`save_original_format=False`); `overrides` as in `build`."""
    build(name, seed, **overrides).save_pretrained(folder, max_shard_size="40KB", save_original_format=not fused)
    return Path(folder)


def probe_ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen)
