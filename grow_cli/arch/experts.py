"""Mixture-of-experts knowledge that the definitions' `moe` block and tensor fields hold, read in one place.

- **Which layers are sparse.** Mixtral and OLMoE make every MLP an MoE block. Qwen2-MoE and Qwen3-MoE keep a dense
  MLP in the layers listed in `mlp_only_layers` and in those off the `decoder_sparse_step` (layer i is sparse when
  i is not listed and (i + 1) is a multiple of the step); a definition names those keys as `moe.dense_layers` and
  `moe.sparse_step`. Depth growth maps the pattern through the layer map and writes it back as an explicit
  `mlp_only_layers` with step 1, so that every grown layer keeps the kind of the layer it copies.
- **Where the routed experts are.** On disk, `save_pretrained` writes one 2-D tensor per expert and matrix
  (`…experts.{e}.w1.weight`, the *per_expert* layout); transformers 5 fuses them on load into 3-D tensors
  (`…experts.gate_up_proj`: experts × [gate|up] × hidden, and `…experts.down_proj`) and writes those only with
  `save_original_format=False` (the *fused* layout). A checkpoint holds one layout or the other; grow reads both
  and writes what it read.
- **Active parameters.** A token runs top-k of the E routed experts: active = total − (1 − k/E) × routed.
- **Router normalisation.** Whether the top-k weights are renormalised to sum to 1: always (Mixtral), or when the
  config key the definition names is true (`norm_topk_prob`: Qwen2-MoE, Qwen3-MoE, OLMoE; false by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grow_cli.arch.registry import ArchDef, WeightDef
from grow_cli.errors import CheckpointError, UsageError

PER_EXPERT, FUSED = "per_expert", "fused"


def sparse_layers(arch: ArchDef, config: dict[str, Any], layers: int) -> tuple[int, ...]:
    """The indices of the layers whose MLP is an MoE block, from config.json."""
    assert arch.moe is not None
    step_key, dense_key = arch.moe.get("sparse_step"), arch.moe.get("dense_layers")
    step = config.get(step_key, arch.config_defaults.get(step_key, 1)) if step_key else 1
    dense = config.get(dense_key) if dense_key else None
    dense = [] if dense is None else dense
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise CheckpointError(f"config.json: {step_key} must be a positive integer, found {step!r}")
    if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
        raise CheckpointError(f"config.json: {dense_key} must be a list of layer indices, found {dense!r}")
    return tuple(i for i in range(layers) if i not in dense and (i + 1) % step == 0)


def sparse_config(arch: ArchDef, sparse: Sequence[bool]) -> dict[str, Any]:
    """The config keys that make exactly the layers marked in `sparse` MoE layers (for a grown layer stack)."""
    assert arch.moe is not None
    step_key, dense_key = arch.moe.get("sparse_step"), arch.moe.get("dense_layers")
    if all(sparse):
        return {**({step_key: 1} if step_key else {}), **({dense_key: []} if dense_key else {})}
    if not dense_key:
        raise UsageError(f"{arch.name} makes every layer an MoE layer; a mix of dense and sparse layers cannot be set")
    return {**({step_key: 1} if step_key else {}), dense_key: [j for j, s in enumerate(sparse) if not s]}


def weight_applies(weight: WeightDef, sparse: bool, layout: str | None) -> bool:
    """Whether `weight` exists in a layer that is `sparse` (or dense) and stores its experts in `layout`."""
    if weight.layers is not None and weight.layers != ("sparse" if sparse else "dense"):
        return False
    return weight.layout is None or weight.layout == layout


def detect_layout(arch: ArchDef, names: set[str], first_sparse_prefix: str | None) -> str | None:
    """The expert layout of a checkpoint: fused when the first sparse layer holds a fused expert tensor."""
    if not arch.is_moe or first_sparse_prefix is None:
        return None
    fused = [w for w in arch.layer if w.layout == FUSED and w.moe == "expert"]
    return FUSED if any(first_sparse_prefix + w.name in names for w in fused) else PER_EXPERT


def topk_normalised(arch: ArchDef, config: dict[str, Any]) -> bool:
    """Whether the router renormalises its top-k weights to sum to 1 (what makes identical experts exact)."""
    assert arch.moe is not None
    key = arch.moe["topk_norm"]
    return key == "always" or bool(config.get(key, arch.config_defaults.get(key, False)))


def parameter_counts(tensors: Iterable[Any], num_experts: int, top_k: int) -> dict[str, int]:
    """Total and active parameters (a token runs top-k of the routed experts) of tensors with a `weight` (WeightDef)
    and a `shape`: bound checkpoint tensors, or a plan's output tensors."""
    from grow_cli.checkpoint.dtypes import numel

    total = routed = 0
    for t in tensors:
        n = numel(t.shape)
        total += n
        routed += n if t.weight.routed else 0
    active = total - routed + (routed * top_k // num_experts if num_experts else 0)
    return {"total": total, "active": active, "routed_experts": routed}


def upcycle_target(arch: ArchDef) -> ArchDef | None:
    """The curated MoE definition a dense `arch` upcycles into (Llama/Mistral → Mixtral, Qwen2 → Qwen2-MoE,
    Qwen3 → Qwen3-MoE), or None."""
    from grow_cli.arch.registry import all_definitions

    return next((d for d in all_definitions().values() if d.moe and arch.name in d.moe.get("upcycle_from", ())), None)


def routed_parameter_names(config: dict[str, Any], names: Iterable[str]) -> list[str]:
    """The names among `names` (a model's in-memory parameters) that are routed experts' weights, for a model type
    with a curated MoE definition; transformers 5 holds them fused, under the fused layout's names."""
    from grow_cli.arch.registry import all_definitions

    arch = next((d for d in all_definitions().values() if config.get("model_type") in d.model_types), None)
    if arch is None or not arch.is_moe:
        return []
    suffixes = tuple("." + w.name for w in arch.layer if w.routed and w.layout == FUSED)
    return [n for n in names if n.endswith(suffixes)]
