"""Training FLOPs per token, as PaLM counts them (Chowdhery et al. 2022, appendix B).

6·N for the weight matmuls (2 for the forward pass, 4 for the backward; N excludes the embedding tables — tokens,
learned positions, token types — which are lookups, except a token table tied to the output head) plus 12·L·H·Q·s for
attention: in each of L layers, H heads of width Q score a token against s positions (q·kᵀ) and sum s values (p·V), 2
FLOPs a multiply-add, forward and backward. H·Q is the heads' width, not the hidden size, which differs where
config.json sets head_dim (Qwen3-0.6B: 16 heads × 128 against a hidden size of 1024; Gemma 3: 4 × 256 against 640).
Where the query-key and value heads differ in width (DeepSeek's latent attention: 192 and 128) each product counts at
its own width, 6·L·H·(Q_qk + Q_v)·s, as torchtitan counts it (`quadratic_attention_flops_per_token`). Like PaLM, the
count is that of full attention over s positions: it discounts neither the causal mask nor a sliding window (Mistral's,
Gemma's local layers), nor a sparse-attention indexer's selection, and leaves out norms' and activations' elementwise
work.

`grow train-stage` logs it for the model it trains (MFU), `grow plan` applies it to planned shapes, and the family
report multiplies it by the tokens each member trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def training_flops_per_token(matmul_params: float, layers: int, attention_width: float, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6·N + 12·L·H·Q·s, with `attention_width` H·Q."""
    return 6 * matmul_params + 12 * layers * attention_width * seq_len


def attention_width(config: Mapping[str, Any] | Any) -> float:
    """PaLM's H·Q of a config (a config.json dict or a transformers config): the attention heads times the mean of
    their query-key and value widths (`qk_head_dim`, `v_head_dim` in latent attention), each `head_dim` where not
    set, or hidden size / heads where no head_dim is."""

    def get(key: str) -> Any:
        return config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)

    heads = get("num_attention_heads")
    head_dim = get("head_dim") or get("hidden_size") / heads
    return heads * ((get("qk_head_dim") or head_dim) + (get("v_head_dim") or head_dim)) / 2
