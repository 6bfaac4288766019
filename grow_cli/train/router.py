"""Mixture-of-experts training: the router's load-balancing loss as the model type defines it, expert load, and the
parameters a token actually runs.

transformers' MoE causal LMs (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, …) add `router_aux_loss_coef × aux_loss` to
their loss when asked for router logits (`output_router_logits`). The auxiliary loss is the Switch Transformer
load-balancing loss E·Σ_e f_e·P_e over the layers (f_e the share of tokens that chose expert e among their top k,
P_e its mean router probability): k at perfect balance, larger as routing collapses onto few experts. grow asks for
it in training forward passes only, so the objective is the one the model type defines while evaluation stays the
plain next-token loss, comparable with a dense model's. From the same forward pass it records the auxiliary loss and
each MoE layer's expert load — the share of routed slots each expert received, times E: 1 everywhere when balanced,
0 for an expert no token chose — accumulated on the device and read only when the loop logs. transformers returns
router logits for the MoE layers only; the run's summary puts each layer's load at its decoder layer, null for a
dense one (which layers are MoE layers: grow_cli/arch/experts.py).

FLOPs: a token runs only k of the E routed experts, so the training FLOPs per token count the routed experts'
weights × k/E (`inactive_expert_parameters`, for the types with a curated definition).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from grow_cli.arch.experts import experts_and_top_k, moe_layer_indices, routed_parameter_names
from grow_cli.train.deepspeed_engine import full_numel


def is_moe_model(model: Any) -> bool:
    """A transformers causal LM whose forward pass can return router logits (and add the auxiliary loss)."""
    return "output_router_logits" in inspect.signature(model.forward).parameters


def inactive_expert_parameters(model: Any) -> int:
    """The routed experts' weights a token does not run: (1 − k/E) of them (0 for a dense model)."""
    experts, top_k = experts_and_top_k(model.config)
    if not experts or not top_k:
        return 0
    params = dict(model.named_parameters())
    routed = sum(full_numel(params[n]) for n in routed_parameter_names({"model_type": model.config.model_type}, params))
    return routed - routed * top_k // experts


class RouterStats:
    """Turns on the model type's auxiliary loss in training forward passes and accumulates, on the device, the
    auxiliary loss and the expert load of every MoE layer; `metrics()` reads (and restarts) the window."""

    def __init__(self, model: Any):
        self.num_experts, self.top_k = experts_and_top_k(model.config)
        text = model.config.get_text_config()
        self.coef = float(getattr(text, "router_aux_loss_coef", 0.0))
        self.layers, self.moe_layers = int(text.num_hidden_layers), moe_layer_indices(text.to_dict())
        self._handles = [
            model.register_forward_pre_hook(self._ask_for_router_logits, with_kwargs=True),
            model.register_forward_hook(self._record),
        ]
        self._window: tuple[torch.Tensor, torch.Tensor] | None = None  # (aux loss sum, per-layer expert counts)
        self._total: tuple[torch.Tensor, torch.Tensor] | None = None
        self._passes = self._passes_total = 0  # training forward passes in the window, in the run

    @staticmethod
    def _ask_for_router_logits(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Router logits, hence the auxiliary loss, in training passes; none in evaluation even where config.json says
        `output_router_logits: true` (transformers falls back on it, and would add the auxiliary loss there too)."""
        kwargs["output_router_logits"] = module.training
        return args, kwargs

    def _record(self, module: Any, args: tuple, output: Any) -> None:
        logits = getattr(output, "router_logits", None)
        if not module.training or not logits or getattr(output, "aux_loss", None) is None:
            return
        with torch.no_grad():
            chosen = [layer.topk(self.top_k, dim=-1).indices.reshape(-1) for layer in logits]
            counts = torch.stack([self._count(c) for c in chosen])
            aux = output.aux_loss.detach().float().reshape(1)
            for name in ("_window", "_total"):
                held = getattr(self, name)
                setattr(self, name, (aux, counts) if held is None else (held[0] + aux, held[1] + counts))
            self._passes += 1
            self._passes_total += 1

    def _count(self, chosen: torch.Tensor) -> torch.Tensor:
        """How often each expert was chosen, on the device. Not `torch.bincount`: on a GPU it reads the largest index
        back to the host to size its output, a wait in every training forward pass."""
        counts = torch.zeros(self.num_experts, device=chosen.device)
        return counts.index_add_(0, chosen, torch.ones_like(chosen, dtype=counts.dtype))

    def metrics(self, accelerator: Any = None) -> dict[str, Any]:
        """The window since the last call: mean auxiliary loss and the expert load (max and min over layers and
        experts of the share × E); empty when no training pass ran."""
        if self._window is None:
            return {}
        result, _ = self._summarise(self._window, self._passes, accelerator)
        self._window, self._passes = None, 0
        return result

    def summary(self, accelerator: Any = None) -> dict[str, Any]:
        """The same over the whole run, with the load of each decoder layer's experts (`_by_layer`; for grow.json and
        the summary)."""
        if self._total is None:
            return {}
        result, load = self._summarise(self._total, self._passes_total, accelerator)
        if (by_layer := self._by_layer(load)) is not None:
            result["expert_load_by_layer"] = by_layer
        result["router_aux_loss_coef"] = self.coef
        return result

    def totals(self, accelerator: Any) -> dict[str, Any] | None:
        """The run's totals so far, summed over every process, for a checkpoint: a resumed run's summary must cover
        the steps before the checkpoint too (`restore`), and so must its first logged window, which reaches back to
        the last log before the checkpoint (`window`, left out when the checkpoint's step was logged). Every process
        calls it (a collective under a distributed launch); None before the first training pass."""
        if self._total is None:
            return None
        totals = self._sums(self._total, self._passes_total, accelerator)
        if self._window is not None:
            totals["window"] = self._sums(self._window, self._passes, accelerator)
        return totals

    @staticmethod
    def _sums(held: tuple, passes: int, accelerator: Any) -> dict[str, Any]:
        """Held sums as a checkpoint records them: added up over every process, read to the host."""
        aux, counts = held
        if accelerator.num_processes > 1:
            aux, counts = accelerator.reduce(aux, "sum"), accelerator.reduce(counts, "sum")
        return {"passes": passes, "aux_loss_sum": float(aux), "counts": counts.tolist()}

    def restore(self, totals: dict[str, Any], accelerator: Any) -> None:
        """Go on from a checkpoint's `totals` and its window since the last log (a checkpoint of an earlier grow has
        none: the first window then starts at the resume)."""
        self._total, self._passes_total = self._held(totals, accelerator)
        if "window" in totals:
            self._window, self._passes = self._held(totals["window"], accelerator)

    @staticmethod
    def _held(sums: dict[str, Any], accelerator: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        """Saved sums as held on the device: the main process holds the sums of every process (which `_summarise`
        adds up again), the others start from zero; each counts its passes from the saved count, as it would have."""
        device, main = accelerator.device, accelerator.is_main_process
        counts = torch.tensor(sums["counts"], dtype=torch.float32, device=device)
        aux = torch.tensor([sums["aux_loss_sum"]], dtype=torch.float32, device=device)
        held = (aux, counts) if main else (torch.zeros_like(aux), torch.zeros_like(counts))
        return held, int(sums["passes"])

    def _by_layer(self, load: torch.Tensor) -> list[list[float] | None] | None:
        """One entry per decoder layer: its experts' load, or None for a dense layer. The router logits, hence the
        rows of `load`, are the MoE layers' only, in order (Qwen2-MoE's `mlp_only_layers`, DeepSeek's dense first
        layers). For a type without a curated MoE definition they are placed only when every layer has a row; None
        (left out) where they cannot be placed."""
        moe = self.moe_layers
        if moe is None and len(load) == self.layers:
            moe = tuple(range(self.layers))
        if moe is None or len(moe) != len(load):
            return None
        rows = {layer: [round(x, 3) for x in row] for layer, row in zip(moe, load.tolist(), strict=True)}
        return [rows.get(layer) for layer in range(self.layers)]

    def _load(self, counts: torch.Tensor) -> torch.Tensor:
        return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1) * self.num_experts

    def _summarise(self, held: tuple, passes: int, accelerator: Any) -> tuple[dict[str, Any], torch.Tensor]:
        """The mean auxiliary loss and the expert load over every process, and the load itself [layers, experts]."""
        aux, counts = held
        if accelerator is not None and accelerator.num_processes > 1:
            aux, counts = accelerator.reduce(aux, "sum"), accelerator.reduce(counts, "sum")
            passes *= accelerator.num_processes
        load = self._load(counts)
        return {
            "router_aux_loss": float(aux) / max(passes, 1),
            "expert_load_max": float(load.max()),
            "expert_load_min": float(load.min()),
        }, load

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
