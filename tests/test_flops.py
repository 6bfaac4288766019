"""Training FLOPs per token (`grow_cli.train.flops`, PaLM's count) against what a training pass computes, counted by
torch's FLOP counter, and `grow plan`'s ledger against train-stage's count on the same model."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from torch.utils.flop_counter import FlopCounterMode

from grow_cli.family.budget import plan
from grow_cli.train.metrics import flops_per_token

SEQ_LEN = 64
_SHAPE = dict(vocab_size=96, num_hidden_layers=2, hidden_size=32, intermediate_size=48, max_position_embeddings=128)

# Attention heads whose total width is not the hidden size: 4 heads × 16 against 32 (as Qwen3-0.6B's 16 × 128
# against 1024), and DeepSeek's latent attention, whose query-key heads (12 + 4) are wider than its value heads (8).
# DeepSeek's MLP is dense in both layers (first_k_dense_replace), so every parameter runs for every token.
CONFIGS = {
    "llama": lambda: tf.LlamaConfig(**_SHAPE, num_attention_heads=4, num_key_value_heads=2),
    "qwen3": lambda: tf.Qwen3Config(**_SHAPE, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "deepseek_v3": lambda: tf.DeepseekV3Config(
        **_SHAPE,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=24,
        kv_lora_rank=16,
        qk_nope_head_dim=12,
        qk_rope_head_dim=4,
        v_head_dim=8,
        moe_intermediate_size=16,
        n_routed_experts=8,
        first_k_dense_replace=2,
    ),
}


def _model(name: str, vocab_size: int = 96) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[name]()
    config.vocab_size = vocab_size
    config._attn_implementation = "eager"  # attention as matrix products the counter sees
    return tf.AutoModelForCausalLM.from_config(config)


def _counted_per_token(model: torch.nn.Module) -> float:
    """The FLOPs of one forward and backward pass over SEQ_LEN tokens, per token, as torch counts matrix products."""
    ids = torch.randint(3, 96, (1, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops() / SEQ_LEN


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flops_per_token_is_what_a_training_pass_computes(name):
    """PaLM's attention term is 12·L·H·Q·s with H heads of width Q; it was taken as 12·L·d·s with the hidden size d,
    which undercounted a model whose heads are wider than d (Qwen3 here: 19% of all its FLOPs; DeepSeek's latent
    attention 11%). The count leaves out only the norms' elementwise work (under 1% here)."""
    model = _model(name)
    assert flops_per_token(model, SEQ_LEN) == pytest.approx(_counted_per_token(model), rel=0.01)


@pytest.mark.parametrize("name", ["qwen3", "deepseek_v3"])
def test_plan_counts_a_target_folders_attention_as_train_stage_does(tmp_path, name):
    """`grow plan --target FOLDER` charges the target's row the FLOPs per token train-stage logs for it: its heads'
    width (and latent attention's two head widths), which a folder's config gives and its hidden size does not."""
    model = _model(name, vocab_size=40_000)  # 2.6M parameters, within what plan plans for
    model.save_pretrained(tmp_path)
    params = sum(p.numel() for p in model.parameters())
    member = plan(str(tmp_path), 1e9, family=[params], seq_len=SEQ_LEN)["family"]["members"][-1]
    assert member["flops_per_token"] == pytest.approx(flops_per_token(model, SEQ_LEN), rel=1e-9)
