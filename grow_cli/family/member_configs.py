"""`grow plan`'s family members as models of the target's architecture: the target's config.json at a member's
shape, and the parameter counts of the model it describes, counted as `grow inspect` counts a config-only model.

The shape search (`budget.llama_like_shape`) estimates a member's size with a Llama layer's formula; counted by that
formula, a GPT-2 target's 3 × 768 member (biases, learned positions, a 2-matrix FFN) came out 7% too large, and a
DeepSeek-V3 target's members lost their latent attention's head widths. The count that the ledger uses is instead that
of the member's own config, built on the meta device — a few models per plan, one per member.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grow_cli.arch.registry import detect
from grow_cli.growth.config import grown_config

# A member shape's sizes (`budget._shape_at`'s keys) by the role the architecture definition names its config key for
SIZE_ROLES = {
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "expert_ffn": "expert_intermediate_size",  # an MoE member's (`moe_members`)
    "shared_ffn": "shared_intermediate_size",
}


def target_config(folder: Path) -> dict[str, Any]:
    """The config.json of a target model folder, as `grow inspect` reads it (a train-stage checkpoint's: its
    model's)."""
    from grow_cli.checkpoint.model_config import load_config
    from grow_cli.checkpoint.source import CheckpointSource
    from grow_cli.growth.train_state import checkpoint_weights

    with checkpoint_weights(CheckpointSource(folder=folder.resolve(), path=os.fspath(folder))) as src:
        return load_config(src.folder)


def hub_target_config(source: dict[str, Any]) -> dict[str, Any] | None:
    """The config.json of a Hub target that `grow inspect` read (`source`: its `source`, with the commit it resolved
    to), from the Hub cache, where inspect's download of the repo's small files put it: no second request. None
    where the cache does not hold it (the members are then Llama-like, as a count's)."""
    from huggingface_hub import try_to_load_from_cache

    from grow_cli.checkpoint.model_config import load_config

    path = try_to_load_from_cache(source["repo_id"], "config.json", revision=source["commit"])
    return load_config(Path(path).parent) if isinstance(path, str) else None


def member_config(target: dict[str, Any], shape: dict[str, Any]) -> dict[str, Any]:
    """The target's config.json at a member's `shape`: its layer count and sizes under the architecture's own key
    names, everything else kept — head widths (head_dim, latent attention's ranks and head dims), experts,
    positions. The member's layers are the target's first ones, so per-layer lists (sliding or full attention, dense
    or MoE) take the types of the target's bottom layers, as `grow expand` maps them."""
    arch = detect(target)
    sizes = {
        arch.config[role]: shape[key] for role, key in SIZE_ROLES.items() if arch.config.get(role) and key in shape
    }
    layers = tuple(range(shape["num_hidden_layers"]))
    return grown_config(arch, target, layer_map=layers, width_updates=sizes, dtype=None)


def plan_counts(info: dict[str, Any]) -> dict[str, Any]:
    """What the ledger counts of a model `grow inspect` (or `describe_config`) described: its parameters, active
    ones of an MoE, those in matrix products (`matmul_parameters`), and, in latent attention (DeepSeek), its
    query-key and value head widths, from the spaces of heads × each (head_dim is the rotary part alone there), which
    its attention FLOPs count (`train/flops.py`)."""
    spaces, heads = info.get("config_spaces", {}), info["num_heads"]
    latent = (
        {"qk_head_dim": spaces["mla_q"] // heads, "v_head_dim": spaces["mla_o"] // heads} if "mla_q" in spaces else {}
    )
    return {
        "num_parameters": info["num_parameters"],
        **({"active_parameters": info["active_parameters"]} if "active_parameters" in info else {}),
        "matmul_parameters": info.get("active_parameters", info["num_parameters"]) - lookup_embedding(info),
        **latent,
    }


def counted_member(target: dict[str, Any], shape: dict[str, Any]) -> dict[str, Any]:
    """A member `shape` of the target config.json `target`, with the counts of the model its config describes and
    that config (`config`), which builds it."""
    from grow_cli.growth.describe import describe_config

    config = member_config(target, shape)
    info = describe_config(config, f"the {shape['num_hidden_layers']} × {shape['hidden_size']} member's config")
    return {**shape, **plan_counts(info), "config": config}


def embedding_parameters(vocab_size: int, hidden_size: int, tied: bool) -> int:
    """The parameters of a model's input embedding and output head: one matrix where the head is tied to the
    embedding, two where not (counting a tied one twice made the small model of a Gemma 3 270M 321M)."""
    return vocab_size * hidden_size * (1 if tied else 2)


def lookup_embedding(shape: dict[str, Any]) -> int:
    """The parameters of the embedding tables that are only lookups, which PaLM's 6·N leaves out, as `grow
    train-stage`'s FLOPs count does (`train/metrics.py`): the input embedding unless it is tied to the head (then it
    is the head's matmul, counted), and, in a shape `grow inspect` described, learned positions (GPT-2's, BERT's)
    and token types."""
    tokens = 0 if shape.get("tie_word_embeddings") else shape["vocab_size"]
    positions = (shape.get("max_positions") or 0) if shape.get("positions") == "learned" else 0
    return (tokens + positions + (shape.get("type_vocab_size") or 0)) * shape["hidden_size"]
