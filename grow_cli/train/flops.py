"""Training FLOPs per token, as PaLM counts them (Chowdhery et al. 2022, appendix B).

6·N for the weight matmuls (2 for the forward pass, 4 for the backward; N excludes the input embedding, which is a
lookup, unless it is tied to the output head) plus 12·L·d·s for attention scores and values, with L layers, width d
and sequence length s. `grow train-stage` logs it for the model it trains (MFU), `grow plan` applies it to planned
shapes, and the family report multiplies it by the tokens each member trained on.
"""

from __future__ import annotations


def training_flops_per_token(matmul_params: float, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: 6·N + 12·L·d·s."""
    return 6 * matmul_params + 12 * layers * hidden * seq_len
