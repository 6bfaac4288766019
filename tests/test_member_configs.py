"""`grow plan`'s members of a target read from config.json (`grow_cli.family.member_configs`): each is a model of the
target's architecture, counted as transformers builds it."""

from __future__ import annotations

import itertools

import pytest
import torch
import transformers

from grow_cli.arch.registry import detect
from grow_cli.family.budget import plan
from grow_cli.family.moe_members import SIZE_MATCH
from grow_cli.quantities import format_count
from grow_cli.train.metrics import flops_per_token, inactive_expert_parameters, matmul_params

SEQ_LEN = 512

# Real-shaped targets of each kind the Llama formula miscounted: biases, learned positions and a 2-matrix FFN
# (GPT-2, BERT with token types), head_dim ≠ hidden / heads (Qwen3-0.6B's), experts (Mixtral, Qwen2-MoE), latent
# attention with a dense first layer (DeepSeek-V3).
TARGETS = {
    "gpt2": (transformers.GPT2Config, {}, "GPT2LMHeadModel"),
    "bert": (transformers.BertConfig, {}, "BertForMaskedLM"),
    "qwen3": (
        transformers.Qwen3Config,
        dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
        "Qwen3ForCausalLM",
    ),  # fmt: skip
    "mixtral": (
        transformers.MixtralConfig,
        dict(
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=4,
            num_local_experts=8,
            num_experts_per_tok=2,
        ),
        "MixtralForCausalLM",
    ),  # fmt: skip
    "qwen2_moe": (
        transformers.Qwen2MoeConfig,
        dict(
            hidden_size=1024,
            intermediate_size=2816,
            moe_intermediate_size=704,
            shared_expert_intermediate_size=2816,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            num_experts=16,
            num_experts_per_tok=4,
        ),
        "Qwen2MoeForCausalLM",
    ),  # fmt: skip
    "deepseek_v3": (
        transformers.DeepseekV3Config,
        dict(
            hidden_size=1024,
            intermediate_size=2816,
            moe_intermediate_size=512,
            num_hidden_layers=16,
            num_attention_heads=16,
            num_key_value_heads=16,
            n_routed_experts=16,
            num_experts_per_tok=4,
            n_group=4,
            topk_group=2,
            first_k_dense_replace=1,
            q_lora_rank=384,
            kv_lora_rank=256,
            qk_rope_head_dim=32,
            qk_nope_head_dim=64,
            v_head_dim=64,
        ),
        "DeepseekV3ForCausalLM",
    ),  # fmt: skip
}


def _built(config: dict) -> torch.nn.Module:
    """The model a member's config describes, built by transformers on the meta device."""
    model_config = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(config)
    with torch.device("meta"):
        return getattr(transformers, config["architectures"][0])._from_config(model_config)


@pytest.mark.parametrize("name", TARGETS)
def test_each_member_counts_as_the_model_its_config_builds(tmp_path, name):
    """Members used to be counted with a Llama layer's formula and given a Llama-keyed config: a GPT-2 target's
    3 × 768 member was 59,836,416 parameters where GPT-2 at that shape has 55,927,296, and a DeepSeek-V3 target's
    members took the rotary head_dim for their attention width (256 against the target's 640). Now each member's
    config is one of the target's architecture, which transformers builds, and its counts and FLOPs are that
    model's."""
    config_class, sizes, architecture = TARGETS[name]
    config_class(**sizes, architectures=[architecture]).save_pretrained(tmp_path)
    report = plan(str(tmp_path / "config.json"), "100B", seq_len=SEQ_LEN)
    members = report["family"]["members"]
    assert len(members) >= 2, report["family"]["notes"]  # the target and at least one member below it
    for member in members:
        model = _built(member["config"])
        assert member["config"]["model_type"] == config_class.model_type
        inactive = inactive_expert_parameters(model)
        assert member["num_parameters"] == sum(p.numel() for p in model.parameters())  # tied ones once
        assert member["active_parameters"] == member["num_parameters"] - inactive
        assert member["matmul_parameters"] == matmul_params(model) - inactive
        assert member["flops_per_token"] == flops_per_token(model, SEQ_LEN)


def test_latent_attention_members_keep_the_targets_head_widths(tmp_path):
    """A DeepSeek-V3 member keeps the target's query-key and value head widths and latent ranks: its attention
    width is its heads × (192 + 128) / 2, not heads × the 64-wide rotary part."""
    transformers.DeepseekV3Config(architectures=["DeepseekV3ForCausalLM"]).save_pretrained(tmp_path)
    members = plan(str(tmp_path), "100B", family=["2B", "10B"])["family"]["members"]
    for member in members:
        config = member["config"]
        for key in ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "q_lora_rank", "kv_lora_rank"):
            assert config[key] == members[-1]["config"][key]
        assert member["attention_width"] == config["num_attention_heads"] * (192 + 128) / 2


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_moe_members_are_their_size_in_total_and_grow_into_the_next(tmp_path, name):
    """An MoE target's members were shaped as dense Llama layers and kept every expert: this Mixtral target's
    smallest member came out 677M for a size of 152M. Now each member's total count (what the family's sizes and
    tokens are in) is within SIZE_MATCH of its size, or a note says why, and it grows into the next member by grow's
    width growth: hidden and FFN sizes no larger, the same experts and top-k, the expert FFNs in the proportion
    `--intermediate-size` grows them by, and every key that sizes a config space (DeepSeek's latent heads) kept."""
    config_class, sizes, architecture = TARGETS[name]
    config_class(**sizes, architectures=[architecture]).save_pretrained(tmp_path)
    report = plan(str(tmp_path), "100B")
    members, notes = report["family"]["members"], report["family"]["notes"]
    n = report["target"]["num_parameters"]
    assert len(members) == 4, notes  # the default family, n/8, n/4 and n/2, none collapsed, then the target
    for member, size in zip(members[:-1], (n / 8, n / 4, n / 2), strict=True):
        missed = [note for note in notes if note.startswith(f"{format_count(size)} parameters comes out as")]
        # Qwen2-MoE's 151,936-token embeddings alone are 155M at the 1 × 512 shape that its 134M member comes out as
        assert member["num_parameters"] == pytest.approx(size, rel=SIZE_MATCH) or missed, (size, member, notes)
    arch = detect(members[-1]["config"])
    growth = [arch.config[role] for role in ("hidden", "ffn", "expert_ffn", "shared_ffn") if role in arch.config]
    fixed = [arch.config[role] for role in ("experts", "experts_per_token", "shared_experts") if role in arch.config]
    fixed += list(arch.config_space_keys)
    for small, large in itertools.pairwise(m["config"] for m in members):
        assert all(small[key] <= large[key] for key in growth)
        assert all(small[key] == large[key] for key in fixed)
        ffn, expert_ffn = arch.config["ffn"], arch.config["expert_ffn"]
        assert round(small[expert_ffn] * large[ffn] / small[ffn]) == large[expert_ffn]  # what grow's width growth gives
