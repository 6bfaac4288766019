"""Staged training's growth operators (Shen et al., ICML 2022; allenai/staged-training), beside the others.

* Width `staged`: every map tiled ×k and every matrix **block-diagonal**, `W' = diag(W, …, W)`, not divided: the
  hidden state becomes `[h, …, h]` and each output copy reads only its own input copy, so the forward pass is exact
  (LayerNorm/RMSNorm of `[h, h]` is `[LN(h), LN(h)]`). Embeddings, norms and biases are copied; the norm before the
  output head (`ln_f`) is divided by k, because the head sums over the k copies (operators.md §2.4, E4) — for a tied
  head as in the paper, and for an untied one too (its rows are then copied, not divided). A matrix whose input
  grows but whose output does not (a single KV head under MQA) is IN-divided as in FPI. Every space must grow by
  the same k (a k-th FFN copy with no hidden copy to pair with would be dead).
  The off-diagonal blocks start at zero and, when a training state is grown, with zero moments (the paper's
  transform): they have no counterpart in the source.
* Depth `staged-identity`: new layers (inserted as `identity` inserts them: after their source layer, spread
  evenly) initialised as the paper's `_id` operator: every norm gain and every bias zero, every matrix an identity
  (a fused [q|k|v] one identity per part, a rectangular one a filled diagonal). The zero norm gain makes each new
  sublayer output exactly zero — an exact identity block — while the identity matrices let gradients reach the
  gains. The released code copies layers instead for `alternate_id` and overwrites the original slot's moments
  (§2.4); grow implements the paper: originals keep weights and moments, new layers start fresh.
  On a gated MLP (SwiGLU: silu(gate·x)·(up·x), no biases) the zero gain leaves the new MLP at a stationary point:
  gate = up = 0 makes every gradient of that MLP exactly zero, so it never trains (its attention does); the
  planner says so, and `identity` (LLaMA-Pro) has no such problem.
* Both are refused on multi-head latent attention (DeepSeek-V2/V3/V3.2, GLM-4.7-Flash, GLM-5): width growth keeps
  its heads, which `staged` would need ×k, and its latent norms (`latent_norms`), zeroed too, would leave every tensor
  of a new layer without a gradient, for good.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from grow_cli.arch.binding import BoundTensor
from grow_cli.arch.registry import ArchDef, WeightDef
from grow_cli.arch.shape import ModelShape
from grow_cli.checkpoint.arrays import Stored
from grow_cli.errors import OptionError
from grow_cli.operators.config_spaces import kept_roles
from grow_cli.operators.width import WidthOperator, _along


def staged_width_refusal(arch: ArchDef) -> str | None:
    """Why staged width growth cannot apply to `arch`, or None: width growth's own refusal, or heads that width growth
    keeps as they are (DeepSeek's, which size its latent attention), where staged needs every space ×k."""
    if arch.width_refusal is not None:
        return arch.width_refusal
    if "heads" in kept_roles(arch):
        return f"it grows every space ×k, the heads too, and {arch.name}'s width growth keeps {arch.config['heads']}"
    return None


class StagedWidth(WidthOperator):
    """Block-diagonal width growth ×k; a `WidthPlan` like every width operator (maps from `WidthOperator`)."""

    def __init__(self, spec, arch, binding, config, *, uniform: bool = False):
        # A model used for its last hidden state (headless, or a sentence-transformers model's: `Binding`) keeps
        # it: nothing is folded into the norm, and a stored untied head's input axis is divided instead.
        self.head_folds = not binding.outputs_hidden_state and any(w.head_norm for w in arch.final)
        super().__init__(spec, arch, binding, config, uniform=True)
        s, t = self.source, self.target
        k = t.hidden_size // s.hidden_size
        ratios = {
            "intermediate_size": t.intermediate_size // s.intermediate_size,
            "num_heads": t.num_heads // s.num_heads,
        }
        if s.num_kv_heads != t.num_kv_heads:  # a single or unchanged KV head set is IN-divided instead
            ratios["num_kv_heads"] = t.num_kv_heads // s.num_kv_heads
        uneven = {name: r for name, r in ratios.items() if r != k}
        if uneven:
            name, r = next(iter(uneven.items()))
            raise OptionError(
                name,
                f"staged grows every space by the same factor (block-diagonal ×k): hidden ×{k} but {name} ×{r}; "
                f"use --width-factor {k}",
            )

    @property
    def symmetric_copies(self) -> bool:
        """The k diagonal copies get identical gradients, and so do the off-diagonal blocks: without dropout the
        copies stay copies, as the paper notes (its GPT-2 trains with dropout 0.1)."""
        return True

    @property
    def k(self) -> int:
        return self.target.hidden_size // self.source.hidden_size

    # -- the rules ---------------------------------------------------------------------------------------------

    def apply(self, tensor: BoundTensor, inputs: list[Stored]) -> np.ndarray:
        w = tensor.weight
        side = ("this", self._next_buffer_set())
        out = self.state_layout(tensor, self.as_float(w, inputs[0], side), side)
        divisor = self._in_divisor(w)
        if divisor != 1:
            out = out / divisor
        if w.runtime_scale:
            out = out * self.embed_scale
        if w.head_norm and (fold := self.head_fold()) is not None:
            out = (out + w.gain_offset) * fold - w.gain_offset
        return out

    def rows_apart(self, tensor: BoundTensor) -> bool:
        """Never: staged widens whole tensors (its blocks and divisor are not made a block of rows at a time)."""
        return False

    def head_fold(self) -> float | None:
        """The head sums over the k copies, tied or not: 1/k (and a tied head's 1/scale) goes into its norm."""
        if not self.head_folds:
            return None
        return (1.0 / self.head_scale if self.tied else 1.0) / self.k

    def state_layout(self, tensor: BoundTensor, x: np.ndarray, tag: object) -> np.ndarray:
        """Gathered on every axis, then the off-diagonal blocks zeroed (entries that pair copy a with copy b ≠ a)."""
        w = tensor.weight
        x = self._fpi(w, x, tag, divide=False)
        pair = self._block_axes(w)
        if pair is not None:
            (a, space_a), (b, space_b) = pair
            same = _along(self._ordinals[space_a], a, x.ndim) == _along(self._ordinals[space_b], b, x.ndim)
            np.multiply(x, same, out=x)
        return x

    def fresh_entries(self, w: WeightDef) -> bool:
        return self._block_axes(w) is not None

    def state_scales(self, w: WeightDef) -> tuple[int, float] | None:
        copies = 1
        for space in w.axes:
            count = self._uniform_count(space)
            if count is None:
                return None
            copies *= count
        if self._block_axes(w) is not None:
            copies //= self.k  # each source entry sits once in each of the k diagonal blocks
        scale = 1.0 / self._in_divisor(w)
        if w.runtime_scale:
            scale *= self.embed_scale
        if w.head_norm and (fold := self.head_fold()) is not None:
            scale *= fold
        return copies, scale

    def _exactness(self) -> tuple[bool, str]:
        head = (
            f"the norm before the head takes the head's 1/{self.k}"
            if self.head_folds
            else "the last hidden state (the output: no head, or sentence-transformers') is k copies of the source's"
        )
        return True, (
            f"block-diagonal ×{self.k}: every output copy reads only its own input copy; {head} "
            f"(exact through {self._norm_name})"
        )

    def record(self) -> dict[str, Any]:
        return {**super().record(), "layout": f"block-diagonal ×{self.k}; off-diagonal blocks zero"}

    # -- which axes pair up ---------------------------------------------------------------------------------------

    def _grown_axes(self, w: WeightDef) -> list[tuple[int, str]]:
        return [(axis, space) for axis, space in enumerate(w.axes) if isinstance(space, str) and self._axis(space)]

    def _block_axes(self, w: WeightDef) -> tuple[tuple[int, str], tuple[int, str]] | None:
        """The (input, output) axes of a matrix whose input and output both grow: block-diagonal."""
        grown = self._grown_axes(w)
        if w.in_axis is None or len(grown) != 2 or w.in_axis not in (a for a, _ in grown):
            return None
        first, second = grown
        return (first, second) if first[0] == w.in_axis else (second, first)

    def _in_divisor(self, w: WeightDef) -> int:
        """k for a matrix whose input grows but nothing else does, unless it is the head whose norm takes the 1/k."""
        grown = self._grown_axes(w)
        if w.in_axis is None or [a for a, _ in grown] != [w.in_axis]:
            return 1
        is_head = w in self.arch.final and "vocab" in w.axes and self.head_folds
        return 1 if is_head else (self._uniform_count(w.axes[w.in_axis]) or 1)

    @cached_property
    def _ordinals(self) -> dict[str, np.ndarray]:
        """For every widened space, which copy (0 … k−1) each target unit is; a fused axis counts per part."""
        return {space: np.array(_copy_ordinals(axis.index_list)) for space, axis in self._axes.items()}


def _copy_ordinals(index: tuple[int, ...]) -> list[int]:
    """How many earlier target units copy the same source unit (0 for the first copy)."""
    seen: dict[int, int] = {}
    ordinals = []
    for j in index:
        ordinals.append(seen.get(j, 0))
        seen[j] = seen.get(j, 0) + 1
    return ordinals


# -- depth: staged training's identity initialisation ---------------------------------------------------------------


def staged_identity_refusal(arch: ArchDef) -> str | None:
    """Why new layers cannot be made exact identities by zero norm gains here, or None."""
    if arch.identity_refusal is not None:
        return arch.identity_refusal
    if not any(w.kind == "norm" for w in arch.layer):
        return f"the {arch.name} definition has no norm gain in its layers to zero"
    if any(w.kind == "other" for w in arch.layer):
        return f"the {arch.name} definition has layer tensors grow cannot initialise (kind 'other')"
    if latent := latent_norms(arch):
        return (
            f"its attention normalises latents ({', '.join(latent)}) whose gains would start at zero too: behind the "
            "zero pre-norm gain, every gradient in a new layer is then exactly zero at every step, so the new layers "
            "would never train"
        )
    return None


def latent_norms(arch: ArchDef) -> list[str]:
    """The layer's norms of a latent that a projection into another inner space reads: multi-head latent attention's
    q_a_layernorm and kv_a_layernorm. Not the pre- or post-norms (the hidden state's) nor per-head q/k norms (only the
    attention, or the output projection, reads what they normalise). staged-identity zeroes every gain: a value
    latent whose gain is zero is zero whatever its input, so nothing upstream of it gets a gradient, and its own gain
    gets none either, because its input is the output of the zeroed pre-norm (measured: tests/test_staged.py)."""
    inside = {w.axes[w.in_axis] for w in arch.layer if w.in_axis is not None and "hidden" not in _out_spaces(w)}
    return [w.name for w in arch.layer if w.kind == "norm" and w.axes[-1] != "hidden" and w.axes[-1] in inside]


def gated_mlp(arch: ArchDef) -> bool:
    """Whether the layer's MLP multiplies two projections (SwiGLU/GeGLU): two matrices writing the FFN space."""
    writers = [w for w in arch.layer if w.kind in ("linear", "conv1d") and "ffn" in _out_spaces(w)]
    return len(writers) >= 2 or any("gate_up" in w.axes for w in arch.layer)


def _out_spaces(w: WeightDef) -> list[str | int]:
    return [space for axis, space in enumerate(w.axes) if axis != w.in_axis]


def identity_init(w: WeightDef, shape: tuple[int, ...], target: ModelShape):
    """A new layer's tensor under staged training's `_id` init: norm gains and biases zero (a Gemma (1 + w) gain
    stored as −1), matrices identity — one identity per part of a fused output axis, rectangular ones a filled
    diagonal (in either storage layout)."""
    import torch

    if w.kind == "norm":
        return torch.full(shape, w.zero_fill)
    if w.kind not in ("linear", "conv1d"):
        return torch.zeros(shape)
    in_axis = w.in_axis
    assert in_axis is not None  # linear and conv1d have one
    out_axis = 1 - in_axis
    n_in, out_space = shape[in_axis], str(w.axes[out_axis])
    h = target.head_dim
    q, kv = target.num_heads * h, target.num_kv_heads * h
    if out_space == "qkv_heads":  # GPT-NeoX: rows are (heads, 3, head_dim)
        rows = torch.zeros(target.num_heads, 3, h, n_in)
        for part in range(3):
            rows[:, part] = torch.eye(q, n_in).view(target.num_heads, h, n_in)
        matrix = rows.reshape(-1, n_in)
    else:
        parts = {"qkv": [q, kv, kv], "gate_up": [target.intermediate_size] * 2}.get(out_space, [shape[out_axis]])
        matrix = torch.cat([torch.eye(n, n_in) for n in parts])
    assert matrix.shape[0] == shape[out_axis], (w.name, shape, matrix.shape)
    return matrix if out_axis == 0 else matrix.T.contiguous()
