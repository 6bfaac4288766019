"""Experiments on transformers model classes that a derived definition is built from (see `grow_cli.arch.derive`).

Everything here runs on instances grow builds itself, never on the user's weights: the model class instantiated on
the meta device (names and shapes, no memory), and a tiny random instance of the same class (two layers, every
dimension small and distinct) on which grow measures what shapes cannot say — the order modules run in, what a norm
module computes, how the embedding is scaled, and which zeroed tensors make a copied block an exact identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from grow_cli.arch.layer_lists import LAYER_INDEX_LISTS, mapped_indices

# Standard config attribute names (transformers' `attribute_map` translates them to a model's own keys) and the
# role each plays in a definition; the tiny instance sets each to a small, distinct value.
ROLES = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "vocab": "vocab_size",
    "positions": "max_position_embeddings",
}
# Small and distinct where it matters (query width 4·8 = 32 ≠ hidden 64); every head_dim a multiple of 8, so partial
# rotary factors such as StableLM's 0.25 still rotate an even number of dimensions.
TINY = {"layers": 2, "hidden": 64, "ffn": 80, "heads": 4, "kv_heads": 2, "head_dim": 8, "vocab": 128, "positions": 72}
# One probe per role: the role's value changed, everything else as TINY. An axis's *signature* is the set of roles
# whose probe changed its length.
PERTURBED = {"hidden": 96, "ffn": 104, "heads": 8, "kv_heads": 4, "head_dim": 16, "vocab": 160, "positions": 88}
_DROPPED = ("quantization_config", "auto_map", "_name_or_path", "torch_dtype", "dtype", "rope_scaling")
_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id")


@dataclass
class TinyModel:
    """The class instantiated small: its config, the layer list's prefix and the roles its config has."""

    model: Any
    config: Any
    block_prefix: str  # e.g. "model.layers"
    roles: dict[str, str]  # role → the model's own config key


def role_keys(config, *, free_head_dim: bool) -> dict[str, str]:
    """The roles this config class has, mapped to its own keys (`n_embd` for GPT-2's hidden size).

    With `free_head_dim`, `head_dim` is a role even where the class does not declare it: most modeling code reads
    `getattr(config, "head_dim", hidden // heads)`, so setting it makes query axes distinguishable from hidden ones
    (code that ignores it shows up as axes that follow no single dimension, or fails to run and is retried without).
    """
    amap = getattr(config, "attribute_map", {}) or {}
    keys = {}
    for role, std in ROLES.items():
        key = amap.get(std, std)
        if isinstance(getattr(type(config), key, None), property):
            continue  # computed from other keys (Falcon's head_dim): not a dimension of its own
        if hasattr(config, key) or (role == "head_dim" and free_head_dim):
            keys[role] = key
    return keys


def tiny_config(cls_config, params: dict[str, Any], roles: dict[str, str], layers: int, **changes: int):
    """A small config of the same class: the user's switches kept, every dimension replaced by TINY (+ changes)."""
    values = {**TINY, "layers": layers, **changes}
    source_layers = params.get(roles["layers"])
    small = {
        k: v
        for k, v in params.items()
        if k not in _DROPPED and not (isinstance(v, list) and len(v) == source_layers)  # per-layer lists: defaults
    }
    for k in LAYER_INDEX_LISTS:  # the kinds of the source's first layers (a list naming every layer is no default)
        if isinstance(params.get(k), list):
            small[k] = mapped_indices(params[k], range(values["layers"]))
    for k in _TOKEN_IDS:  # special token ids must stay inside the small vocabulary
        if isinstance(small.get(k), int):
            small[k] %= values["vocab"]
        elif isinstance(small.get(k), list):
            small[k] = [i % values["vocab"] for i in small[k] if isinstance(i, int)]
    small.update({roles[r]: v for r, v in values.items() if r in roles})
    head_dim = values["head_dim"] if "head_dim" in roles else values["hidden"] // values["heads"]
    if "head_dim" not in roles and "head_dim" in getattr(cls_config, "__dataclass_fields__", {}):
        small["head_dim"] = head_dim  # a class that needs head_dim = hidden / heads gets exactly that
    if isinstance(small.get("rotary_dim"), int):  # GPT-J / CodeGen rotate part of each head
        small["rotary_dim"] = min(small["rotary_dim"], head_dim)
    if "rope_parameters" in small:  # may hold head_dim-sized factors (longrope); irrelevant to shapes and identity
        small.pop("rope_parameters")
    return cls_config(**small)


def block_prefix(model, layers: int) -> str:
    """The name of the module list holding the repeated layers (exactly `layers` long, the largest such list)."""
    import torch.nn as nn

    lists = [
        (sum(p.numel() for p in m.parameters()), name)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == layers and name
    ]
    if not lists:
        return ""
    return max(lists)[1]


def other_layer_lists(model, layers: int, prefix: str) -> list[str]:
    """The module lists besides `prefix` (and outside its layers: a layer's own list of as many experts is no other
    layer list) that are `layers` long and hold parameters: a model that keeps each layer's parts in lists of their
    own (XLM's `attentions`, `ffns`, `layer_norm1`) has no single repeated block to copy."""
    import torch.nn as nn

    return sorted(
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList)
        and len(m) == layers
        and name
        and name != prefix
        and not name.startswith(prefix + ".")
        and next(m.parameters(), None) is not None
    )


def shapes(model) -> dict[str, tuple[int, ...]]:
    """Every persistent tensor (what a checkpoint holds) and its shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}


def meta_instance(model_class, config):
    """`model_class(config)` on the meta device: names and shapes without memory."""
    import torch

    with torch.device("meta"):
        return model_class(config)


def signatures(model_class, base, probes: dict[str, Any], names: list[str]) -> dict[str, list[set[str]]]:
    """For each tensor in `names`, per axis, the roles whose probe config changed that axis's length."""
    ref = shapes(meta_instance(model_class, base))
    found: dict[str, list[set[str]]] = {n: [set() for _ in ref[n]] for n in names}
    for role, config in probes.items():
        got = shapes(meta_instance(model_class, config))
        for n in names:
            if n not in got or len(got[n]) != len(ref[n]):
                found[n] = [set(ROLES) for _ in ref[n]]  # the probe changed the structure: nothing is certain
                continue
            for axis, (a, b) in enumerate(zip(ref[n], got[n], strict=True)):
                if a != b:
                    found[n][axis].add(role)
    return found


def execution_order(tiny: TinyModel) -> list[str]:
    """Module names in the order their forward first runs on a tiny batch."""
    import torch

    order: list[str] = []
    hooks = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: order.append(name) if name not in order else None)
        for name, module in tiny.model.named_modules()
    ]
    try:
        with torch.no_grad():
            tiny.model(input_ids=_ids(tiny))
    finally:
        for h in hooks:
            h.remove()
    return order


def _ids(tiny: TinyModel, length: int = 7):
    import torch

    vocab = getattr(tiny.config, tiny.roles["vocab"])
    return torch.randint(3, vocab, (2, length), generator=torch.Generator().manual_seed(0))


def randomize(model, seed: int = 0) -> None:
    """Give every parameter a visible random value: matrices of unit-scale outputs, 1-D tensors around 1 (gains)
    or 0 (biases), so a tensor left out of an identity test changes the output measurably."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                base = 0.0 if name.endswith("bias") else 1.0
                p.copy_(base + 0.3 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]))


def norm_semantics(module) -> tuple[str, float] | None:
    """What a norm module computes, measured: ('rms' or 'layer', gain offset 0 or 1), or None if neither fits."""
    import torch

    weight = getattr(module, "weight", None)
    if weight is None or weight.ndim != 1:
        return None
    n = weight.shape[0]
    x = 10 * torch.randn(3, n, generator=torch.Generator().manual_seed(1)) + 3.0  # eps negligible, mean visible
    rms = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    centred = x - x.mean(-1, keepdim=True)
    layer = centred / centred.pow(2).mean(-1, keepdim=True).sqrt()
    saved = {k: v.detach().clone() for k, v in module.named_parameters(recurse=False)}
    try:
        with torch.no_grad():
            outs = []
            for w in (0.0, 1.0):
                for k, v in module.named_parameters(recurse=False):
                    v.fill_(w if k == "weight" else 0.0)
                outs.append(module(x.unsqueeze(0)).squeeze(0).float())
    except Exception:  # a module that needs more than one input is not a norm grow can reason about
        return None
    finally:
        with torch.no_grad():
            for k, v in module.named_parameters(recurse=False):
                v.copy_(saved[k])
    for kind, ref in (("rms", rms), ("layer", layer)):
        for offset in (0.0, 1.0):
            if all(
                torch.allclose(out, (offset + w) * ref, atol=1e-3, rtol=1e-3)
                for out, w in zip(outs, (0, 1), strict=True)
            ):
                return kind, offset
    return None


def embedding_scale(tiny: TinyModel, embedding: str) -> float | None:
    """The factor between the token embedding's rows and the first layer's input, or None if not proportional."""
    import torch

    captured = []
    block0 = tiny.model.get_submodule(f"{tiny.block_prefix}.0")

    def grab(_module, args, kwargs):
        captured.append(args[0] if args else kwargs.get("hidden_states"))

    hook = block0.register_forward_pre_hook(grab, with_kwargs=True)
    ids = _ids(tiny)
    try:
        with torch.no_grad():
            tiny.model(input_ids=ids)
    finally:
        hook.remove()
    rows = tiny.model.state_dict()[embedding][ids]
    if not captured or captured[0] is None or captured[0].shape != rows.shape:
        return None
    h = captured[0].float()
    c = float((h * rows).sum() / rows.pow(2).sum())
    return c if torch.allclose(h, c * rows, atol=1e-5, rtol=1e-4) else None


def residual_writers(
    source: TinyModel, target: TinyModel, fills: dict[str, float], order: list[str]
) -> tuple[list[str] | None, str]:
    """The block tensors whose zeroing makes a copied block an exact identity, found on tiny random instances.

    `source` has two layers, `target` three: layer 2 copies layer 1 (config lists mapped the same way). Starting
    from *every* tensor of the copy zeroed (to `fills[name]`: 0, or −1 for a (1 + w) gain), each tensor in execution
    order is restored whenever the copy stays an identity without it; what remains is the set that must be zeroed,
    the last tensors of each sublayer (output projections, or post-sublayer norm gains) — LLaMA-Pro's choice.
    Returns (writers, "") or (None, why not).
    """
    import torch

    ids = _ids(source)
    with torch.no_grad():
        expected = source.model(input_ids=ids).logits
    src_state = source.model.state_dict()
    prefix = target.block_prefix
    mapped = {}
    for name in target.model.state_dict():
        source_name = f"{prefix}.1." + name[len(f"{prefix}.2.") :] if name.startswith(f"{prefix}.2.") else name
        if source_name in src_state:
            mapped[name] = src_state[source_name]
    missing = set(target.model.state_dict()) - set(mapped)
    if missing:
        raise ValueError(f"the grown instance has tensors no source layer has ({sorted(missing)[0]} …)")
    target.model.load_state_dict(mapped)
    copy = target.model.get_submodule(f"{prefix}.2")
    params = dict(copy.named_parameters())
    rank = {name: i for i, name in enumerate(order)}

    def position(rel: str) -> int:
        owner = rel.rsplit(".", 1)[0] if "." in rel else ""
        return rank.get(f"{prefix}.1.{owner}".rstrip("."), -1)

    candidates = sorted(params, key=position)
    tolerance = 1e-5 * max(1.0, float(expected.abs().max()))

    def identity(zeroed: set[str]) -> bool:
        with torch.no_grad():
            for rel, p in params.items():
                p.copy_(src_state[f"{prefix}.1.{rel}"])
                if rel in zeroed:
                    p.fill_(fills.get(rel, 0.0))
            got = target.model(input_ids=ids).logits
        return float((got - expected).abs().max()) <= tolerance

    zeroed = set(candidates)
    if not identity(zeroed):
        return None, (
            "zeroing every tensor of a copied block does not make it an identity (a norm or another computation "
            "runs after the residual add)"
        )
    for rel in candidates:
        if identity(zeroed - {rel}):
            zeroed.discard(rel)
    return [c for c in candidates if c in zeroed], ""


def saved_names(model) -> set[str]:
    """The tensor names `save_pretrained` writes for `model` (transformers 5 converts some layouts on save)."""
    from safetensors import safe_open

    from grow_cli.scratch import scratch_folder

    with scratch_folder("derive") as tmp:
        model.save_pretrained(tmp)
        names: set[str] = set()
        for path in tmp.glob("*.safetensors"):
            with safe_open(path, "pt") as f:
                names.update(f.keys())
    return names
