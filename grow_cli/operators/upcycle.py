"""Sparse upcycling: a dense decoder grown into the matching mixture-of-experts type, exactly at initialisation.

Llama and Mistral become Mixtral, Qwen2 becomes Qwen2-MoE, Qwen3 becomes Qwen3-MoE (each MoE definition names its
dense sources in `moe.upcycle_from`). Every routed expert of layer j is a copy of the dense MLP that layer j copies
(Komatsuzaki et al. 2022); the router is a new tensor. With all experts equal, an MoE block computes

    Σ_{i ∈ top-k} w_i · MLP(x) = (Σ w_i) · MLP(x),

so the model is exactly the dense one whenever the top-k weights sum to 1, whatever the router says. Mixtral always
renormalises them; Qwen2-MoE and Qwen3-MoE do when `norm_topk_prob` is true (false by default: then the k largest
of E softmax weights sum to less than 1), so the upcycled config sets it. Router noise (`--router-noise STD`, a seeded
normal; default 0.02 as Drop-Upcycling and the model types initialise routers) therefore keeps exactness while it
spreads tokens over experts; a zero router (`--router-noise 0`) ties every logit, sends every token to the same k
experts and leaves them identical until the load-balancing loss moves the router.

Symmetry breaking that changes the function, measured rather than exact:
- **Drop-Upcycling** (`--drop-upcycling r`, Nakamura et al., ICLR 2025): in each expert a seeded fraction r of the
  intermediate units is re-initialised — their rows of the gate and up projections and their columns of the down
  projection — from a normal with the mean and standard deviation of the dense weights being replaced. One index
  set per (layer, expert) serves its three matrices, so a dropped unit is a whole new unit.
- **Shared expert** (`--shared-expert`, where the type has one: Qwen2-MoE): a copy of the dense MLP that every token
  runs, behind a sigmoid gate initialised to zero (σ(0) = ½), with every routed expert's down projection halved, so
  ½·MLP + ½·MLP = MLP stays exact (× ½ is exact in binary floating point). Without it, Qwen2-MoE's shared expert
  has zero units and adds nothing.

Composes with width (applied first, to the dense tensors) and depth (each target layer upcycles the dense layer it
copies; an identity layer's experts and shared expert get zeroed output projections).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grow_cli.arch import hf_config
from grow_cli.arch.binding import Binding, BoundTensor, layer_tensor_name
from grow_cli.arch.experts import PER_EXPERT, sparse_config, upcycle_target, weight_applies
from grow_cli.arch.layer_lists import transformers_params
from grow_cli.arch.registry import ArchDef, WeightDef, all_definitions
from grow_cli.arch.shape import ModelShape, read_shape, weight_present
from grow_cli.errors import ArchitectureError, OptionError

if TYPE_CHECKING:
    from grow_cli.growth.spec import GrowthSpec

ROUTER_STD = 0.02  # the default router noise: Drop-Upcycling's router init and the MoE types' initializer_range
# The load-balancing loss weight written into the upcycled config: Switch Transformer's α (Fedus et al. 2021), also
# OLMoE's; the types' own defaults (0.001 for Mixtral and Qwen) barely move a router that starts near uniform.
ROUTER_AUX_LOSS_COEF = 0.01
DEFAULT_TOP_K = 2  # Mixtral's, and sparse upcycling's decoder top-k


@dataclass(frozen=True)
class ExpertInit:
    """How an upcycled tensor is made from the (widened) dense tensor it reads, or from nothing; recorded in the
    plan and applied by the executor. Random draws are seeded by the plan's seed and `key`."""

    kind: str  # "router" (seeded normal, or zeros), "zeros", or "expert" (a copy, scaled and partly re-initialised)
    key: str  # the output tensor's name: seeds its own draws
    std: float = 0.0  # router: standard deviation of the normal
    scale: float = 1.0  # expert: × scale (½ on routed down projections beside a shared expert)
    drop: float = 0.0  # expert: Drop-Upcycling's ratio of re-initialised intermediate units
    units_key: str = ""  # expert: seeds which units are dropped (one set per layer and expert)
    unit_axis: int = 0  # expert: the axis of the intermediate units (0: gate/up rows, 1: down columns)

    def describe(self) -> str:
        if self.kind == "router":
            return f"router ~ N(0, {self.std:g}²), seeded" if self.std else "router zeros"
        if self.kind == "zeros":
            return "zeros"
        parts = ["expert copy"]
        if self.scale != 1.0:
            parts.append(f"× {self.scale:g}")
        if self.drop:
            parts.append(f"{self.drop:.0%} of units re-initialised (Drop-Upcycling)")
        return ", ".join(parts)

    def apply(self, x: Any, shape: tuple[int, ...], seed: int) -> Any:
        """The tensor: from `x` (the widened dense tensor, float32) for an expert, from nothing otherwise."""
        import torch

        if self.kind == "zeros" or (self.kind == "router" and not self.std):
            return torch.zeros(shape)
        if self.kind == "router":
            return torch.randn(shape, generator=_generator(self.key, seed)) * self.std
        y = x * self.scale if self.scale != 1.0 else x.clone()
        if self.drop:
            units = y.shape[self.unit_axis]
            count = math.floor(self.drop * units)
            chosen = torch.randperm(units, generator=_generator(self.units_key, seed))[:count]
            part = y.index_select(self.unit_axis, chosen)
            mean, std = float(part.mean()), float(part.std()) if part.numel() > 1 else 0.0
            fresh = torch.randn(part.shape, generator=_generator(self.key, seed)) * std + mean
            y.index_copy_(self.unit_axis, chosen, fresh)
        return y


def _generator(key: str, seed: int):
    import torch

    return torch.Generator().manual_seed(zlib.crc32(key.encode()) ^ (seed * 2654435761 % 2**32))


@dataclass(frozen=True)
class UpcycledTensor:
    """One tensor of an upcycled layer: the dense tensor it reads (a stand-in for a new tensor), its weight in the
    MoE definition, its output name, and how it is made (None: a plain copy)."""

    source: BoundTensor
    weight: WeightDef
    name: str
    init: ExpertInit | None
    reads: bool  # False: made from nothing (router, gate, empty shared expert)


class Upcycler:
    """The upcycling part of a plan: the MoE type, its config and shape, and every tensor of an upcycled layer."""

    def __init__(self, spec: GrowthSpec, arch: ArchDef, binding: Binding, dense_config: dict[str, Any]):
        self.target = upcycle_target_or_refuse(arch)
        self.experts = spec.experts or 0
        self.top_k = spec.top_k or min(DEFAULT_TOP_K, self.experts)
        self.router_std = ROUTER_STD if spec.router_noise is None else spec.router_noise
        self.drop = spec.drop_upcycling or 0.0
        self.shared = spec.shared_expert
        if self.shared and "shared_ffn" not in self.target.config:
            with_shared = [d.name for d in all_definitions().values() if d.moe and "shared_ffn" in d.config]
            raise OptionError(
                "shared_expert",
                f"--shared-expert: {self.target.name} has no shared expert (types with one: {', '.join(with_shared)})",
            )
        self.source_arch, self.binding = arch, binding
        self.config = moe_config(self.target, dense_config, self)
        self.shape: ModelShape = read_shape(self.target, self.config)
        self.function_preserving = self.drop == 0

    # -- tensors --------------------------------------------------------------------------------------------------

    def layer(self, j: int, dense: list[BoundTensor]) -> list[UpcycledTensor]:
        """The tensors of upcycled layer j, made from `dense` (the bound tensors of the dense layer it copies)."""
        by_name = {t.weight.name: t for t in dense}
        by_role = {t.weight.ffn_role: t for t in dense if t.weight.ffn_role}
        used: set[str] = set()
        out: list[UpcycledTensor] = []
        name = self._namer(j)
        for w in self.target.layer:
            if not weight_applies(w, j in self.shape.sparse_layers, PER_EXPERT):
                continue
            if not weight_present(self.target, self.config, w):
                continue
            if w.moe in ("router", "shared_gate"):
                init = ExpertInit("router" if w.moe == "router" else "zeros", name(w), std=self.router_std)
                out.append(UpcycledTensor(self._stand_in(w, j, dense[0]), w, name(w), init, reads=False))
                continue
            src = by_role.get(w.ffn_role) if w.ffn_role else by_name.get(w.name)
            if src is None:
                raise ArchitectureError(
                    f"cannot upcycle {self.source_arch.name} into {self.target.name}: the dense layer has no tensor "
                    f"for {self.target.name}'s {w.name}"
                )
            used.add(src.name)
            if w.moe == "expert":
                for e in range(self.experts):
                    out.append(UpcycledTensor(src, w, name(w, e), self._expert_init(w, j, e, name(w, e)), reads=True))
            elif w.moe == "shared_expert" and not self.shared:
                out.append(UpcycledTensor(src, w, name(w), ExpertInit("zeros", name(w)), reads=False))
            else:
                out.append(UpcycledTensor(src, w, name(w), None, reads=True))
        left = [t.name for t in dense if t.name not in used]
        if left:
            raise ArchitectureError(
                f"cannot upcycle {self.source_arch.name} into {self.target.name}: {self.target.name} has no place for "
                f"{left[0]}{' …' if len(left) > 1 else ''} (a feature of the dense model the MoE type lacks, such as "
                f"attention or MLP biases); nothing was written"
            )
        return out

    def _namer(self, j: int):
        def name(w: WeightDef, e: int | None = None) -> str:
            return layer_tensor_name(self.target, self.binding.prefix, w, j, e)

        return name

    def _expert_init(self, w: WeightDef, j: int, e: int, name: str) -> ExpertInit | None:
        scale = 0.5 if self.shared and w.ffn_role == "down" else 1.0
        if scale == 1.0 and not self.drop:
            return None
        unit_axis = list(w.axes).index("expert_ffn")
        return ExpertInit("expert", name, scale=scale, drop=self.drop, units_key=f"drop:{j}:{e}", unit_axis=unit_axis)

    def _stand_in(self, w: WeightDef, j: int, like: BoundTensor) -> BoundTensor:
        """A BoundTensor for a tensor the dense model lacks (the router), shaped as the MoE model's."""
        name = layer_tensor_name(self.target, self.binding.prefix, w, j)
        return BoundTensor(name, w, j, self.shape.tensor_shape(w.axes), like.dtype)

    # -- records --------------------------------------------------------------------------------------------------

    @property
    def method(self) -> str:
        return "drop-upcycle" if self.drop else "upcycle"

    def exactness(self) -> str:
        norm = self.target.moe["topk_norm"] if self.target.moe else "always"
        how = (
            f"{self.target.name} always renormalises the top-k weights"
            if norm == "always"
            else f"{norm}: true makes the top-k weights sum to 1"
        )
        shared = "; shared expert ½·MLP + routed ½·MLP (gate σ(0) = ½)" if self.shared else ""
        if self.drop:
            return f"not exact: {self.drop:.0%} of every expert's units re-initialised (Drop-Upcycling); {how}"
        return f"exact: every expert a copy of the dense MLP and {how}, whatever the router says{shared}"

    def note(self) -> str | None:
        """What the user should know about a symmetric start: a zero router keeps the experts identical."""
        if self.router_std or self.drop:
            return None
        return (
            "with a zero router every token picks the same experts, which stay identical copies until the "
            "load-balancing loss moves the router; for an exact start that spreads the tokens: --router-noise 0.02 "
            "(the default), or --drop-upcycling 0.5 for experts that differ"
        )

    def record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "model_type": self.target.model_types[0],
            "experts": self.experts,
            "top_k": self.top_k,
            "router": f"N(0, {self.router_std:g}²), seeded" if self.router_std else "zeros",
            "drop_upcycling": self.drop or None,
            "shared_expert": self.shared,
            "function_preserving": self.function_preserving,
            "exactness": self.exactness(),
        }


def upcycle_target_or_refuse(arch: ArchDef) -> ArchDef:
    """The MoE definition `arch` upcycles into; an MoE source or a dense type without one is one clear refusal."""
    target = upcycle_target(arch)
    if target is not None:
        return target
    raise OptionError("experts", f"--experts: {upcycle_refusal(arch)}")


def upcycle_refusal(arch: ArchDef) -> str:
    """Why `arch` cannot be upcycled (an MoE already, or no MoE type to become); for the registry and --experts."""
    if arch.is_moe:
        return (
            f"{arch.name} is already a mixture of experts and grow keeps an MoE model's expert count (a new expert "
            f"cannot join exactly); grow it in depth{'' if arch.width_refusal else ' or width'} instead"
        )
    pairs = "; ".join(
        f"{', '.join(d.moe['upcycle_from'])} → {d.name}"
        for d in all_definitions().values()
        if d.moe and d.moe.get("upcycle_from")
    )
    return f"{arch.name} has no mixture-of-experts counterpart grow can upcycle it into (supported: {pairs})"


def moe_config(target: ArchDef, dense: dict[str, Any], up: Upcycler) -> dict[str, Any]:
    """The MoE config.json: the dense one's keys (transformers keeps keys its class does not name, and some modeling
    code reads them, such as Qwen3-MoE's head_dim), the dense class's defaults written out where the MoE class's
    differ (Qwen2-MoE's default layer_types are not Qwen2's), and the MoE keys set for exactness."""
    dense_type, moe_type = dense["model_type"], target.model_types[0]
    moe_reply = hf_config.ask(moe_type, {}, causal_lm=True)
    dense_built = _config_values(dense_type, hf_config.ask(dense_type, transformers_params(dense)))
    moe_default = _config_values(moe_type, moe_reply)
    config = {k: v for k, v in dense.items() if k not in ("architectures", "transformers_version")}
    for key in sorted(moe_default.keys() & dense_built.keys() - set(config) - {"model_type", "architectures"}):
        if dense_built[key] != moe_default[key]:
            config[key] = dense_built[key]
    _check_attention_types(dense_built, moe_default, target, dense_type)
    keys, shape = target.config, read_shape(up.source_arch, dense)
    config["model_type"] = moe_type
    config[keys["experts"]] = up.experts
    config[keys["experts_per_token"]] = up.top_k
    config[keys["expert_ffn"]] = shape.intermediate_size
    if "shared_ffn" in keys:
        config[keys["shared_ffn"]] = shape.intermediate_size if up.shared else 0
    assert target.moe is not None
    if target.moe["topk_norm"] != "always":
        config[target.moe["topk_norm"]] = True
    config["router_aux_loss_coef"] = ROUTER_AUX_LOSS_COEF
    config.update(sparse_config(target, [True] * shape.layers))
    class_name = moe_reply["base_model" if up.binding.headless else "causal_lm"]  # a headless source stays headless
    return {"architectures": [class_name], **config}


def _config_values(model_type: str, reply: dict[str, Any]) -> dict[str, Any]:
    """The public attributes of transformers' config for `model_type` in `reply` (`hf_config.ask`: asked without
    torch in grow's process)."""
    if not reply["built"]:
        raise ArchitectureError(f"transformers cannot build a {model_type} config from this one: {reply['error']}")
    return {k: v for k, v in reply["attributes"].items() if not k.startswith("_")}


def _check_attention_types(dense: dict[str, Any], moe_default: dict[str, Any], target: ArchDef, dense_type: str):
    """A dense model with per-layer attention types (sliding layers) needs an MoE type that has them too."""
    types = dense.get("layer_types") or []
    if "layer_types" not in moe_default and any(t != "full_attention" for t in types):
        raise ArchitectureError(
            f"cannot upcycle this {dense_type} into {target.name}: it uses sliding-window attention in some layers "
            f"({types.count('sliding_attention')} of {len(types)}), and {target.name} has no per-layer attention "
            f"types (its sliding window, when on, applies to every layer)"
        )
