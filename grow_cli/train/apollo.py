"""Apollo (Pan et al., AAAI 2024, "Preparing Lessons for Progressive Training"): train a shallow model as if it
were deep, so that growing it by interpolation pays off.

The model holds N unique layers. Every micro-batch samples a depth L ∈ [N, L_max] with low-value-prioritized
sampling (LVPS) and runs its forward pass with the unique layers shared along the interpolation map — position i
runs unique layer ⌊i·N/L⌋, the *same module object*, so its gradient is the sum over the positions it fills.
Low layers thereby learn to act as higher layers, and the model grown by `grow expand --depth-method interpolate`
(target layer j copies layer ⌊j·N/L_max⌋) computes exactly what the shared model computes at depth L_max.

A stage plan (`--apollo-stages 3,6@200,12@500`) grows N in place at the stage boundaries as the released code's
`stack_model` does: new unique layer j becomes a hard copy of old layer ⌊j·N_old/N_new⌋, copied from the top down,
in a model that was allocated with all its final layers from step 0, under one optimizer and one LR schedule.
Layers not yet in use get no gradient, hence no Adam state and no weight decay, and start with fresh moments once
copied; the others keep theirs (the reference's behaviour). DDP needs `find_unused_parameters` for them.

The sharing map is computed with integers (the released code's ⌊i/(L/N)⌋ in floating point misplaces a layer for
a few (N, L) pairs, e.g. N=14, L=18). The depth of a micro-batch is a pure function of (seed, step, micro-batch):
the same on every process, so they stay in step, and the same after a resume.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from grow_cli.arch.layer_lists import LAYER_INDEX_LISTS, mapped_indices
from grow_cli.errors import ArchitectureError
from grow_cli.operators.depth import interpolate
from grow_cli.train.apollo_plan import DEPTH_SALT, ApolloPlan, definition, layer_lists, sample_depth
from grow_cli.train.flops import attention_width, training_flops_per_token
from grow_cli.train.metrics import matmul_params


class Apollo:
    """The live side of an `ApolloPlan` on one (unwrapped) model: depth sampling, the shared view, stage growth."""

    def __init__(self, plan: ApolloPlan, model: Any, seed: int):
        self.plan, self.seed = plan, seed
        self.arch = definition(model.config)
        self.parent, self.attr = _layer_block(self.arch, model)
        self.config = model.config.get_text_config()
        self.path = _block_path(self.parent, self.attr, model)  # the layer block's name, e.g. "model.layers"
        self.unique = plan.stages[0][0]
        self.layer_params = sum(p.numel() for p in self.layers[0].parameters())
        self.rest_params = matmul_params(model) - len(self.layers) * self.layer_params
        self.attention_width = attention_width(self.config)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return getattr(self.parent, self.attr)

    def depth(self, step: int, micro: int) -> int:
        """The depth micro-batch `micro` of optimizer step `step` runs at (the same on every process)."""
        rng = np.random.default_rng([self.seed, DEPTH_SALT, step, micro])
        return sample_depth(self.plan.unique_at(step), self.plan.target, self.plan.sampling, rng)

    def compute(self, steps: int, grad_accum: int, tokens_per_micro_batch: int, seq_len: int) -> dict[str, float]:
        """The mean depth and the training FLOPs of the first `steps` steps (recomputed from the pure depths, so a
        resumed run counts the steps before its resume too)."""
        depths = [self.depth(step, micro) for step in range(steps) for micro in range(grad_accum)]
        flops = sum(self.flops_per_token(d, seq_len) for d in depths) * tokens_per_micro_batch
        return {"mean_depth": sum(depths) / max(len(depths), 1), "train_flops": flops}

    def start_step(self, step: int) -> str | None:
        """Before optimizer step `step`: at a stage boundary grow the unique layers in place; return a note then.

        Stateless in the step, so a run resumed from a checkpoint taken at a boundary grows from the right stage."""
        old, new = self.plan.unique_at(max(step - 1, 0)), self.plan.unique_at(step)
        self.unique = new
        if old == new:
            return None
        layers = self.layers
        with torch.no_grad():
            for j in reversed(range(new)):  # top down: a layer is read before it is overwritten
                source = j * old // new
                if source != j:
                    for dst, src in zip(_tensors(layers[j]), _tensors(layers[source]), strict=True):
                        dst.copy_(src)
        return f"step {step}: Apollo stage {old} → {new} unique layers (layer j copies layer ⌊j·{old}/{new}⌋)"

    def resume_at(self, step: int) -> None:
        """After restoring a checkpoint taken before step `step`: the unique layers its weights are in."""
        self.unique = self.plan.unique_at(max(step - 1, 0))

    @contextlib.contextmanager
    def view(self, depth: int) -> Iterator[None]:
        """Run the model at `depth` with the unique layers shared along the interpolation map (no weight copied)."""
        layers, config = self.layers, self.config
        saved = {key: getattr(config, key) for key in (self.arch.config["layers"], *self._lists())}
        setattr(self.parent, self.attr, torch.nn.ModuleList([layers[i] for i in interpolate(self.unique, depth)]))
        setattr(config, self.arch.config["layers"], depth)
        for key in self._lists():
            setattr(config, key, [saved[key][0]] * depth)
        try:
            yield
        finally:
            setattr(self.parent, self.attr, layers)
            for key, value in saved.items():
                setattr(config, key, value)

    def flops_per_token(self, depth: int, seq_len: int) -> float:
        """Training FLOPs per token of a forward and backward pass at `depth`."""
        return training_flops_per_token(
            self.rest_params + depth * self.layer_params, depth, self.attention_width, seq_len
        )

    def unused_parameters(self) -> int:
        """Parameters of the allocated layers not yet in use (left out of the written model)."""
        return (len(self.layers) - self.unique) * self.layer_params

    def placeholders(self) -> list[str]:
        """The tensors of the allocated layers not yet in use, by their names in the model's state dict: a checkpoint
        holds them (a resume loads every tensor), the model it trains does not."""
        return [
            f"{self.path}.{j}.{name}"
            for j in range(self.unique, len(self.layers))
            for name in self.layers[j].state_dict()
        ]

    def written_state(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state_dict` without the layers not yet in use, and the config set to the unique layers: the model that
        is written (of its unique layers, or of the whole stack once the last stage holds them all)."""
        keep = self.unique
        prefix = re.compile(rf"^{re.escape(self.path)}\.(\d+)\.")
        kept = {k: v for k, v in state_dict.items() if not (m := prefix.match(k)) or int(m.group(1)) < keep}
        setattr(self.config, self.arch.config["layers"], keep)
        for key in self._lists():
            setattr(self.config, key, getattr(self.config, key)[:keep])
        _map_index_lists(self.config, range(keep))
        return kept

    def _lists(self) -> list[str]:
        return [key for key in layer_lists(self.arch) if isinstance(getattr(self.config, key, None), list)]


def allocate(plan: ApolloPlan, model: Any) -> Any:
    """The model with all the layers of the plan's last stage, the first N of them the model's own: a model of the
    same class built from its config with more layers, loaded with the model's tensors. The extra layers are
    placeholders until the stage boundary that first uses them copies a layer into them."""
    if plan.allocated == plan.stages[0][0]:
        return model
    arch = definition(model.config)
    config = copy.deepcopy(model.config)
    text = config.get_text_config()
    setattr(text, arch.config["layers"], plan.allocated)
    for key in layer_lists(arch):
        values = getattr(text, key, None)
        if isinstance(values, list):
            setattr(text, key, [values[0]] * plan.allocated)
    _map_index_lists(text, [0] * plan.allocated)
    bigger = type(model)(config)
    if getattr(model, "generation_config", None) is not None:  # decoders: keep the checkpoint's own
        bigger.generation_config = model.generation_config
    missing, unexpected = bigger.load_state_dict(model.state_dict(), strict=False)
    parent, attr = _layer_block(arch, bigger)
    path = _block_path(parent, attr, bigger)
    new_layers = re.compile(rf"^{re.escape(path)}\.(\d+)\.")
    stray = [k for k in missing if not ((m := new_layers.match(k)) and int(m.group(1)) >= plan.stages[0][0])]
    assert not stray and not unexpected, (stray, unexpected)
    return bigger.to(next(model.parameters()).dtype)


def _map_index_lists(config: Any, layer_map: list[int] | range) -> None:
    """The config's lists of layer indices (`LAYER_INDEX_LISTS`: an all-attention LFM2's `full_attn_idxs`) for the
    stack `layer_map` builds, as depth growth maps them: a list left as it was named the source's layers only, in the
    config.json written (transformers builds each layer's kind from it where `layer_types` is absent)."""
    for key in LAYER_INDEX_LISTS:
        if isinstance(values := getattr(config, key, None), list):
            setattr(config, key, mapped_indices(values, layer_map))


def _layer_block(arch, model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module holding the layer list and the list's attribute name, from the definition's `layer_prefix`."""
    for prefix in arch.prefixes:
        path = arch.layer_prefix.replace("{p}", prefix).split(".{i}.")[0]
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path)
        except AttributeError:
            continue
        if isinstance(getattr(parent, attr, None), torch.nn.ModuleList):
            return parent, attr
    raise ArchitectureError(
        f"Apollo cannot find the layer block {arch.layer_prefix!r} of {arch.name} in {type(model).__name__}"
    )


def _block_path(parent: torch.nn.Module, attr: str, root: torch.nn.Module) -> str:
    for name, module in root.named_modules():
        if module is parent:
            return f"{name}.{attr}" if name else attr
    raise AssertionError("the layer block is not part of the model")


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]
