"""Mixture-of-experts knowledge that the definitions' `moe` block and tensor fields hold, read in one place.

- **Which layers are sparse.** Mixtral and OLMoE make every MLP an MoE block. Qwen2-MoE and Qwen3-MoE keep a dense
  MLP in the layers listed in `mlp_only_layers` and in those off the `decoder_sparse_step` (layer i is sparse when
  i is not listed and (i + 1) is a multiple of the step); a definition names those keys as `moe.dense_layers` and
  `moe.sparse_step`. DeepSeek-V2/V3 and GLM-4.5 keep a dense MLP in their first `first_k_dense_replace` layers
  (`moe.dense_prefix`). Depth growth maps the pattern through the layer map and writes it back — as an explicit
  `mlp_only_layers` with step 1, or as the grown dense prefix — so that every grown layer keeps the kind of the layer
  it copies. A dense prefix can say only "the first k": a layer map that puts a copy of a dense layer after a sparse
  one (G_stack repeating the whole stack) cannot be written, and is refused before anything is written.
  GLM-4.7-Flash (`glm4_moe_lite`) marks each layer in a per-layer list instead (`mlp_layer_types`: "dense" or
  "sparse", transformers' default when absent; `moe.layer_types`): any pattern can be written, so every depth method
  applies. The list travels through the layer map with the other per-layer lists (grow_cli/arch/layer_lists.py); a
  `dense_prefix` key named beside it (transformers ignores it, other runtimes read it) is written as the grown
  stack's leading dense layers.
- **Where the routed experts are.** On disk, `save_pretrained` writes one 2-D tensor per expert and matrix
  (`…experts.{e}.w1.weight`, the *per_expert* layout); transformers 5 fuses them on load into 3-D tensors
  (`…experts.gate_up_proj`: experts × [gate|up] × hidden, and `…experts.down_proj`) and writes those only with
  `save_original_format=False` (the *fused* layout). A checkpoint holds one layout or the other; grow reads both
  and writes what it read.
- **Active parameters.** A token runs top-k of the E routed experts: active = total − (1 − k/E) × routed.
- **The load-balancing loss.** Mixtral, Qwen2/3-MoE and OLMoE add `router_aux_loss_coef` × a loss averaged over
  their MoE layers to the training loss (DeepSeek's and GLM's configs have no such key: no such loss); a depth
  growth that adds MoE layers therefore changes the original layers' gradients (grow_cli/growth/grown_state.py).
- **Router normalisation.** Whether the top-k weights are renormalised to sum to 1: always (Mixtral), never
  (DeepSeek-V2), or when the config key the definition names is true (`norm_topk_prob`: Qwen2-MoE, Qwen3-MoE, OLMoE;
  false by default) — and then multiplied by a config factor where the definition names one (`moe.routed_scale`:
  DeepSeek's and GLM-4.5's `routed_scaling_factor`), so that they sum to 1 only when that factor is 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grow_cli.arch.registry import ArchDef, WeightDef
from grow_cli.errors import CheckpointError, UsageError
from grow_cli.field_types import accepts

PER_EXPERT, FUSED = "per_expert", "fused"


def sparse_layers(arch: ArchDef, config: dict[str, Any], layers: int) -> tuple[int, ...]:
    """The indices of the layers whose MLP is an MoE block, from config.json."""
    assert arch.moe is not None
    if list_key := arch.moe.get("layer_types"):
        return _listed_sparse(list_key, config, layers)
    step_key, dense_key, prefix_key = (arch.moe.get(k) for k in ("sparse_step", "dense_layers", "dense_prefix"))
    step = config.get(step_key, arch.config_defaults.get(step_key, 1)) if step_key else 1
    dense = config.get(dense_key) if dense_key else None
    dense = [] if dense is None else dense
    prefix = config.get(prefix_key, arch.config_defaults.get(prefix_key, 0)) if prefix_key else 0
    if not accepts((int,), step) or step < 1:
        raise CheckpointError(f"config.json: {step_key} must be a positive integer, found {step!r}")
    if not isinstance(dense, list) or not all(accepts((int,), i) for i in dense):
        raise CheckpointError(f"config.json: {dense_key} must be a list of layer indices, found {dense!r}")
    if not accepts((int,), prefix) or prefix < 0:
        raise CheckpointError(f"config.json: {prefix_key} must be a layer count (0 or more), found {prefix!r}")
    return tuple(i for i in range(layers) if i >= prefix and i not in dense and (i + 1) % step == 0)


def _listed_sparse(key: str, config: dict[str, Any], layers: int) -> tuple[int, ...]:
    """The sparse layers of a definition whose config marks each layer (`moe.layer_types`): the list in config.json,
    or the one transformers' config class fills in when it is absent (GLM-4.7-Flash's config.json leaves it out)."""
    from grow_cli.arch.layer_lists import listed

    kinds = listed(key, config)
    if not isinstance(kinds, list) or len(kinds) != layers or not set(kinds) <= {"dense", "sparse"}:
        raise CheckpointError(f"config.json: {key} must list 'dense' or 'sparse' for each of {layers} layers")
    return tuple(i for i, kind in enumerate(kinds) if kind == "sparse")


def grown_kinds(sparse: Sequence[int], layer_map: Sequence[int]) -> list[bool]:
    """Which layers of a stack grown by `layer_map` (target layer j copies source layer layer_map[j]) are MoE layers,
    given the source's `sparse` ones: each keeps the kind of the layer it copies."""
    return [src in sparse for src in layer_map]


def sparse_config(arch: ArchDef, sparse: Sequence[bool]) -> dict[str, Any]:
    """The config keys that make exactly the layers marked in `sparse` MoE layers (for a grown layer stack)."""
    assert arch.moe is not None
    why = pattern_refusal(arch, sparse)
    if why is not None:
        raise UsageError(why)
    step_key, dense_key, prefix_key = (arch.moe.get(k) for k in ("sparse_step", "dense_layers", "dense_prefix"))
    if arch.moe.get("layer_types"):  # the list itself is mapped with the other per-layer lists (layer_lists.py)
        return {prefix_key: next((j for j, s in enumerate(sparse) if s), len(sparse))} if prefix_key else {}
    keys: dict[str, Any] = {step_key: 1} if step_key else {}
    if prefix_key:  # the prefix holds every dense layer (pattern_refusal) unless a list of dense layers exists
        keys[prefix_key] = 0 if dense_key else next((j for j, s in enumerate(sparse) if s), len(sparse))
    if dense_key:
        keys[dense_key] = [j for j, s in enumerate(sparse) if not s]
    return keys


def pattern_refusal(arch: ArchDef, sparse: Sequence[bool]) -> str | None:
    """Why no config of `arch` makes exactly the layers marked in `sparse` its MoE layers, or None."""
    assert arch.moe is not None
    if all(sparse) or arch.moe.get("dense_layers") or arch.moe.get("layer_types"):
        return None
    dense = [j for j, s in enumerate(sparse) if not s]
    prefix_key = arch.moe.get("dense_prefix")
    if not prefix_key:
        return f"{arch.name} makes every layer an MoE layer; a mix of dense and sparse layers cannot be set"
    if dense == list(range(len(dense))):
        return None
    first_sparse = sparse.index(True)
    after = [j for j in dense if j > first_sparse]
    return f"the grown stack would have dense layers at {_listed(after)}, after MoE layers, and {prefix_only(arch)}"


def prefix_only(arch: ArchDef) -> str:
    """What a dense-prefix config can say, for refusals: "deepseek_v3 can mark only its first layers dense (…)"."""
    assert arch.moe is not None
    return f"{arch.name} can mark only its first layers dense ({arch.moe.get('dense_prefix')})"


def _listed(indices: Sequence[int]) -> str:
    shown = ", ".join(map(str, indices[:4]))
    return shown + (f" and {len(indices) - 4} more" if len(indices) > 4 else "")


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
    """Whether the router's top-k weights sum to 1 (what makes identical experts exact): renormalised, and not
    multiplied by a scale other than 1."""
    assert arch.moe is not None
    key, scale_key = arch.moe["topk_norm"], arch.moe.get("routed_scale")
    scale = config.get(scale_key, arch.config_defaults.get(scale_key, 1.0)) if scale_key else 1.0
    if key == "never" or scale != 1:
        return False
    return key == "always" or bool(config.get(key, arch.config_defaults.get(key, False)))


def num_parameters(tensors: Iterable[Any]) -> int:
    """The parameters among tensors with a `weight` (WeightDef) and a `shape`, as transformers counts them:
    persistent buffers (a router's correction bias) are stored but are no parameters."""
    from grow_cli.checkpoint.dtypes import numel

    return sum(numel(t.shape) for t in tensors if not t.weight.buffer)


def parameter_counts(tensors: Iterable[Any], num_experts: int, top_k: int) -> dict[str, int]:
    """Total and active parameters (a token runs top-k of the routed experts) of tensors with a `weight` (WeightDef)
    and a `shape`: bound checkpoint tensors, or a plan's output tensors."""
    tensors = list(tensors)
    total = num_parameters(tensors)
    routed = num_parameters(t for t in tensors if t.weight.routed)
    active = total - routed + (routed * top_k // num_experts if num_experts else 0)
    return {"total": total, "active": active, "routed_experts": routed}


def aux_loss_coef(config: dict[str, Any]) -> float:
    """The weight of the load-balancing loss in a training pass: config.json's `router_aux_loss_coef`, or
    transformers' default for the type where config.json leaves it out; 0 for a type whose config has none
    (DeepSeek, GLM: transformers adds no such loss to theirs)."""
    from grow_cli.arch.layer_lists import built_config, transformers_params

    value = config.get("router_aux_loss_coef")
    if value is None:
        built = built_config(config.get("model_type", ""), transformers_params(config))
        value = getattr(built, "router_aux_loss_coef", None)
    return float(value or 0.0)


def experts_and_top_k(model_config: Any) -> tuple[int, int]:
    """(routed experts, experts per token) of a transformers config object; (0, 0) for a dense model. Read through
    transformers' attribute names, which every MoE config maps its own keys onto (DeepSeek's n_routed_experts is
    `num_local_experts`), so it holds for types without a curated definition too."""
    text = model_config.get_text_config()
    experts = getattr(text, "num_local_experts", None) or getattr(text, "num_experts", None) or 0
    return int(experts), int(getattr(text, "num_experts_per_tok", 0) or 0)


def upcycle_target(arch: ArchDef) -> ArchDef | None:
    """The curated MoE definition a dense `arch` upcycles into (Llama/Mistral → Mixtral, Qwen2 → Qwen2-MoE,
    Qwen3 → Qwen3-MoE), or None."""
    from grow_cli.arch.registry import all_definitions

    return next((d for d in all_definitions().values() if d.moe and arch.name in d.moe.get("upcycle_from", ())), None)


def moe_definition(config: dict[str, Any]) -> ArchDef | None:
    """The curated MoE definition of a config's model type; None for a dense type or one grow has no definition of
    (a derived definition knows no experts)."""
    from grow_cli.arch.registry import all_definitions

    arch = next((d for d in all_definitions().values() if config.get("model_type") in d.model_types), None)
    return arch if arch is not None and arch.is_moe else None


def moe_layer_indices(config: dict[str, Any]) -> tuple[int, ...] | None:
    """The decoder layers whose MLP is an MoE block (`sparse_layers`), from a config.json or a transformers config's
    `to_dict()`; None for a type without a curated MoE definition, whose pattern grow cannot read. Training places
    each layer's expert load by it: transformers returns router logits for the MoE layers only."""
    arch = moe_definition(config)
    if arch is None:
        return None
    key = arch.config["layers"]
    layers = config.get(key, arch.config_defaults.get(key))
    assert isinstance(layers, int), "a config of an MoE type gives its layer count (transformers writes it)"
    return sparse_layers(arch, config, layers)


def routed_parameter_names(config: dict[str, Any], names: Iterable[str]) -> list[str]:
    """The names among `names` (a model's in-memory parameters) that are routed experts' weights, for a model type
    with a curated MoE definition; transformers 5 holds them fused, under the fused layout's names."""
    arch = moe_definition(config)
    if arch is None:
        return []
    suffixes = tuple("." + w.name for w in arch.layer if w.routed and w.layout == FUSED)
    return [n for n in names if n.endswith(suffixes)]


def depth_refusal(arch: ArchDef, config: dict[str, Any], layers: int, layer_map: Sequence[int]) -> str | None:
    """Why the MoE pattern of a source of `layers` layers grown by `layer_map` (target layer j copies source layer
    layer_map[j]) cannot be written in `arch`'s config, or None."""
    if not arch.is_moe:
        return None
    return pattern_refusal(arch, grown_kinds(sparse_layers(arch, config, layers), layer_map))


def depth_methods_keeping(
    arch: ArchDef, config: dict[str, Any], layers: int, targets: Iterable[int]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """For each depth method that applies to `arch`: (the targets among `targets` it can make from `layers` layers,
    those of them whose layer map gives a stack `arch`'s config can describe) — what grow's layer maps actually give,
    not a rule about them (SOLAR's dus keeps a dense prefix only while its overlap covers it)."""
    from grow_cli.errors import OptionError
    from grow_cli.growth.spec import GrowthSpec
    from grow_cli.operators.depth import depth_map, target_layers
    from grow_cli.operators.registry import operators

    result = {}
    for op in operators("depth"):
        if op.why_not(arch) is not None:
            continue
        tried, kept = [], []
        for target in targets:
            try:  # the target and SOLAR overlap as `grow expand --layers target` would plan them
                _, overlap = target_layers(layers, GrowthSpec(layers=target, depth_method=op.name))
                grown = depth_map(op, layers, target, dus_overlap=overlap)
            except OptionError:  # a target this method cannot make (dus: even, up to 2·L; identity: more layers)
                continue
            tried.append(target)
            if depth_refusal(arch, config, layers, grown.layer_map) is None:
                kept.append(target)
        result[op.name] = (tuple(tried), tuple(kept))
    return result
