"""Width growth operators: bert2BERT FPI and AKI, HyperCloning, and G_zero in width.

Every tensor is widened axis by axis from its architecture definition: each axis lives in a *space* (hidden, q, kv,
ffn, qkv, qkv_heads, or an unchanged vocab/positions/token_types axis) with an index map (`index_maps`), and the
tensor's `kind` says which axis is the input. On the input axis a tensor gets `IN` (gather, divide by the copy
count); on every other axis `OUT` (gather, never divided) — operators.md §1.1–1.2. This covers nn.Linear (out × in),
GPT-2's Conv1D (in × out) and its fused [q|k|v], GPT-NeoX's per-head (heads, 3, head_dim) rows, and BERT's MLM head
and pooler without per-architecture code. A tied output head stays tied: its 1/C division is folded into the norm
right before it (E4), never into a runtime wrapper.

Exactness (eval mode, fp32; see docs/methods.md):
* `fpi` — exact iff the hidden ratio is an integer (tiled hidden map, E1); FFN and head maps are prefix + random.
* `hypercloning` — exact (all maps tiled, integer ratios only), with or without its symmetric noise.
* `aki` — not exact by design: new output units take the next layer's weights.
* `zero` — exact on RMSNorm models (gains × √(d/d'), eps × d/d', E1a); on LayerNorm models exact only when the
  hidden size is unchanged.

Architecture details come from the definition, never from its name (operators.md E4–E5): a norm over query/KV heads
(OLMo 2's q_norm/k_norm) needs every head copied equally often, so `fpi` tiles the head maps there; a Gemma
`(1 + w)` gain is scaled or folded as the gain `1 + w`, not as `w`; an embedding multiplied by √hidden_size at run
time is stored × √(d/d') so that its widened output is the source's copied; a tied head's folds go into the head norm.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from grow_cli.arch.binding import Binding, BoundTensor
from grow_cli.arch.registry import ArchDef, WeightDef
from grow_cli.arch.shape import ModelShape, config_value
from grow_cli.checkpoint.arrays import Stored, to_float32, torch_view
from grow_cli.checkpoint.buffers import BufferPool
from grow_cli.checkpoint.dtypes import nbytes
from grow_cli.errors import OptionError, UsageError, counted
from grow_cli.limits import check_width
from grow_cli.operators import index_maps as im
from grow_cli.operators.config_spaces import kept_roles, refuse_config_space_changes

if TYPE_CHECKING:
    from grow_cli.growth.spec import GrowthSpec

_OUT_AXIS = {"linear": 0, "conv1d": 1, "bias": 0, "experts_linear": 1}  # the axis AKI fills from the next layer
_HEAD_SPACES = {"q", "kv", "qkv", "qkv_heads"}
TILED_METHODS = ("hypercloning", "staged")  # methods that copy whole units: integer ratios only
SIZES = ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads")  # what width growth sets, in this order


def _multiples_near(value: int, step: int, floor: int) -> list[int]:
    """Up to two multiples of `step` near `value`, none below `floor`."""
    low = max(floor + (-floor) % step, value - value % step)
    high = low if low >= value else low + step
    return sorted({low, high} if low >= floor else {high})


def _try(values: list[int]) -> str:
    return " or ".join(str(v) for v in values)


def target_shape(arch: ArchDef, shape: ModelShape, spec: GrowthSpec) -> ModelShape:
    """The widened `ModelShape` that `spec` asks of a source of `shape`; every target this source cannot take is one
    clear UsageError. (What is impossible for any source, `GrowthSpec` refuses itself.)"""
    sizes = _asked_sizes(arch, shape, spec)
    d2, f2, H2, K2 = sizes
    _refuse_no_growth(shape, sizes)
    _refuse_head_layout(arch, shape, spec, sizes)
    if spec.width_method in TILED_METHODS:
        _refuse_partial_tiles(spec, shape, sizes)
    fe2, fs2 = _expert_sizes(arch, shape, spec, f2)
    refuse_config_space_changes(
        arch, {"expert_ffn": (shape.expert_intermediate_size, fe2), "shared_ffn": (shape.shared_intermediate_size, fs2)}
    )
    return replace(
        shape,
        hidden_size=d2,
        intermediate_size=f2,
        num_heads=H2,
        num_kv_heads=K2,
        head_dim=shape.head_dim,
        expert_intermediate_size=fe2,
        shared_intermediate_size=fs2,
    )


def _source_sizes(shape: ModelShape) -> tuple[int, int, int, int]:
    return shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.num_kv_heads


def _asked_sizes(arch: ArchDef, shape: ModelShape, spec: GrowthSpec) -> tuple[int, int, int, int]:
    """The hidden size, FFN size, query heads and KV heads that the flags ask for: given ones as given, the others
    scaled by --width-factor, or (heads, without it) following the hidden size at the same head_dim."""
    d, f, H, K, h = shape.hidden_size, shape.intermediate_size, shape.num_heads, shape.num_kv_heads, shape.head_dim
    k = spec.width_factor
    if k and spec.width_method in TILED_METHODS and k != int(k):
        raise OptionError(
            "width_factor",
            f"{spec.width_method} tiles whole copies: --width-factor must be a whole number, got {k:g}; try "
            f"{_try(sorted({max(2, math.floor(k)), math.ceil(k)}))}",
        )

    kept = kept_roles(arch)  # what sizes a config space keeps its value unless a flag asks otherwise (refused below)

    def scaled(x: int, role: str) -> int:
        return max(x, round(x * k)) if k and role not in kept else x

    d2 = spec.hidden_size or scaled(d, "hidden")
    f2 = spec.intermediate_size or scaled(f, "ffn")
    if spec.num_heads:
        H2 = spec.num_heads
    elif "heads" in kept:
        H2 = H  # the heads size config spaces (DeepSeek's MLA): they do not follow the hidden size
    elif k:
        H2 = scaled(H, "heads")
    else:
        H2 = d2 // h if d2 % h == 0 and d2 // h >= H else H
    if "kv_heads" not in arch.config:
        if spec.num_kv_heads and spec.num_kv_heads != H2:
            raise OptionError(
                "num_kv_heads",
                f"{arch.name} has no separate KV heads (num_kv_heads = num_heads); drop "
                f"--num-kv-heads or set it to {H2}",
            )
        K2 = H2
    elif spec.num_kv_heads:
        K2 = spec.num_kv_heads
    elif K == 1:
        K2 = 1  # MQA stays MQA
    elif K == H:
        K2 = H2  # MHA stays MHA
    else:
        K2 = K * H2 // H if (K * H2) % H == 0 else K  # keep the group size, else grow inside groups
    refuse_config_space_changes(arch, {"hidden": (d, d2), "ffn": (f, f2), "heads": (H, H2), "kv_heads": (K, K2)})
    return d2, f2, H2, K2


def _refuse_no_growth(shape: ModelShape, sizes: tuple[int, int, int, int]) -> None:
    """Refuse sizes out of range, a size smaller than the source's, and a target equal to the source."""
    source = _source_sizes(shape)
    check_width(**dict(zip(SIZES, sizes, strict=True)))
    for name, new, old in zip(SIZES, sizes, source, strict=True):
        if new < old:
            flag = "--" + name.replace("_", "-")
            raise OptionError(
                name, f"{flag} {new} is smaller than the source's {old}; width growth only adds units (try {2 * old})"
            )
    if sizes == source:
        raise UsageError(
            f"the width target equals the source (hidden {source[0]}, FFN {source[1]}, {counted(source[2], 'head')}); "
            f"give a larger --hidden-size or --width-factor (try --width-factor 2)"
        )


def _refuse_head_layout(arch: ArchDef, shape: ModelShape, spec: GrowthSpec, sizes: tuple[int, int, int, int]) -> None:
    """Refuse heads that do not form whole KV groups, a head_dim that would change, and KV groups too few to give
    every source head a copy; each refusal suggests sizes that work."""
    d2, _, H2, K2 = sizes
    d, H, K, h = shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.head_dim
    k = spec.width_factor
    if H2 % K2:
        heads = _multiples_near(H2, K2, H)
        if spec.num_heads:
            made, hint = "", _try(heads)
        elif k:
            made, hint = f"--width-factor {k:g} makes {H2} query heads from {H}, but ", f"--num-heads {_try(heads)}"
        else:  # the heads follow the hidden size: suggest larger hidden sizes whose head counts fit
            made = f"--hidden-size {d2} makes {H2} query heads of head_dim {h}, but "
            hint = f"--hidden-size {_try([h * n for n in _multiples_near(H2, K2, H + 1)])}"
            if spec.num_kv_heads and not spec.hidden_size:  # the source's query heads: the KV count is at fault
                made = f"--num-kv-heads {K2} does not divide the {H2} query heads: "
                kv = [n for n in range(K + 1, H2 + 1) if H2 % n == 0 and im.heads_coverable(H, K, H2, n)]
                if kv:
                    hint = f"--num-kv-heads {_try(sorted(sorted(kv, key=lambda n: abs(n - K2))[:2]))}"
        raise UsageError(f"{made}num_heads must be a multiple of num_kv_heads={K2}; try {hint}")
    if "head_dim" in arch.config:
        if d2 % H2 and d % H == 0:  # (a source whose heads do not divide its hidden size shows its class allows it)
            raise UsageError(
                f"hidden_size must be a multiple of num_heads={H2} (transformers checks it even with an "
                f"explicit head_dim); try --hidden-size {_try(_multiples_near(d2, H2, d))}"
            )
    elif d2 != H2 * h:
        why = (
            "RoPE frequencies and the 1/√head_dim temperature depend on it"
            if arch.positions == "rope"
            else "heads are copied whole and the 1/√head_dim temperature depends on it"
        )
        hint = (
            f"--num-heads {d2 // h}"
            if d2 % h == 0 and d2 // h >= H
            else f"--hidden-size {_try(_multiples_near(d2, h, d))}"
        )
        raise UsageError(
            f"hidden_size {d2} with {H2} heads would change head_dim from {h}; head_dim never changes "
            f"({why}); try {hint}"
        )
    if not im.heads_coverable(H, K, H2, K2):
        g = H // K
        per_group = -(-g // max(1, K2 // K))
        raise UsageError(
            f"{H2} query heads in {K2} KV groups leave some of the {H} source heads without a copy "
            f"(each source group of {g} needs room); try --num-heads {K2 * per_group}"
        )


def _refuse_partial_tiles(spec: GrowthSpec, shape: ModelShape, sizes: tuple[int, int, int, int]) -> None:
    """A tiling method copies each unit whole: every size must be a multiple of the source's."""
    for name, new, old in zip(SIZES, sizes, _source_sizes(shape), strict=True):
        if new % old:
            raise OptionError(
                name,
                f"{spec.width_method} tiles whole copies: {name} must be a multiple of {old}; try "
                f"{_try(_multiples_near(new, old, old + 1))}",
            )


def _expert_sizes(arch: ArchDef, shape: ModelShape, spec: GrowthSpec, f2: int) -> tuple[int, int]:
    """An MoE model's routed and shared expert FFN sizes after width growth: the FFN's growth ratio applied to each
    (the same key as the dense FFN, as in Mixtral, simply follows it). The expert count never changes."""
    fe, fs = shape.expert_intermediate_size, shape.shared_intermediate_size
    if not shape.is_moe:
        return fe, fs
    if arch.config.get("expert_ffn") == arch.config.get("ffn"):
        fe2 = f2
    else:
        fe2 = max(fe, round(fe * spec.width_factor)) if spec.width_factor else round(fe * f2 / shape.intermediate_size)
    fs2 = max(fs, round(fs * spec.width_factor)) if spec.width_factor else round(fs * f2 / shape.intermediate_size)
    if "shared_experts" in arch.config:  # the shared expert is n routed experts wide (DeepSeek, GLM-4.5): it follows
        fs2 = fe2 * fs // fe
    if spec.width_method == "hypercloning" and (fe2 % fe or (fs and fs2 % fs)):
        raise OptionError(
            "intermediate_size",
            f"hypercloning tiles whole copies: the expert FFN sizes {fe} and {fs} would grow to {fe2} and {fs2}, "
            f"not whole multiples; give --width-factor 2 or an --intermediate-size that is a multiple of "
            f"{shape.intermediate_size}",
        )
    return fe2, fs2


@dataclass(frozen=True)
class _Axis:
    """One widened axis: the source index of every target position, its copy count, and which positions are new."""

    index: np.ndarray  # integer
    divisor: np.ndarray  # float32: count of the source unit each target position copies
    new: np.ndarray  # bool: not the first copy of its source unit
    index_list: tuple[int, ...]
    tiles: int  # k when the map is the source's units k times over, in order (im.tiled); else 0

    def gather(self, x: np.ndarray, axis: int, out: np.ndarray, *, divide: bool) -> np.ndarray:
        """`x` (float32) gathered along `axis` into `out` (and divided by the copy counts, `divide`), in one pass each.

        A tiled map is k broadcast copies of the whole source, written in one pass (and divided in the same pass by
        k, the count of every unit: the same bits as dividing afterwards), ~1.8× faster than a gather and its divide
        (`up_proj` of the width benchmark, 2816×1024 → 2816×2048, on the development VM). Gathers take their indices
        unchecked (`mode="clip"`): the default checks them by writing into a temporary of the output's size first
        (22 MB and 3× the time for that model's `down_proj`), and a map's indices are in range by construction.
        """
        if self.tiles:
            tiled = out.reshape(*x.shape[:axis], self.tiles, *x.shape[axis:])
            if divide:
                np.divide(np.expand_dims(x, axis), np.float32(self.tiles), out=tiled)
            else:
                np.copyto(tiled, np.expand_dims(x, axis))
            return out
        np.take(x, self.index, axis=axis, out=out, mode="clip")
        return np.divide(out, _along(self.divisor, axis, x.ndim), out=out) if divide else out


class WidthOperator:
    """A `WidthPlan` (grow_cli.growth.plan): the maps of one width growth, and how each tensor is widened."""

    def __init__(
        self, spec: GrowthSpec, arch: ArchDef, binding: Binding, config: dict[str, Any], *, uniform: bool = False
    ):
        """`uniform`: tile every map, as growing a training state needs (`fpi`'s FFN and head maps otherwise copy
        some units more often than others, which no per-tensor LR or eps multiplier can follow)."""
        self._pool = BufferPool()
        self._calls = 0  # apply() calls so far: their parity picks the buffer set
        self.method = spec.width_method
        self.arch = arch
        self.config = config
        self.seed = spec.seed
        self.noise_snr_db = spec.noise_snr_db
        self.width_factor = spec.width_factor
        self.source = binding.shape
        self.target = target_shape(arch, self.source, spec)
        s, t = self.source, self.target
        d, d2 = s.hidden_size, t.hidden_size
        rng = random.Random(self.seed)
        self.integer_hidden = d2 % d == 0
        random_units = self.method in ("fpi", "aki") and not uniform
        self.maps = {
            "hidden": im.tiled(d, d2) if self.integer_hidden or not random_units else im.prefix_random(d, d2, rng),
            "ffn": (im.prefix_random if random_units else im.tiled)(
                s.intermediate_size, t.intermediate_size, *([rng] if random_units else [])
            ),
        }
        for space, n, n2 in (
            ("expert_ffn", s.expert_intermediate_size, t.expert_intermediate_size),
            ("shared_ffn", s.shared_intermediate_size, t.shared_intermediate_size),
        ):
            if n:  # MoE only; a zero-sized shared expert stays zero-sized
                self.maps[space] = (
                    self.maps["ffn"]
                    if (n, n2) == (s.intermediate_size, t.intermediate_size)
                    else (im.prefix_random(n, n2, rng) if random_units else im.tiled(n, n2))
                )
        # A norm over all heads (OLMo 2) commutes with head copies only when every head is copied equally often.
        self.normed_heads = bool(arch.normed_spaces & _HEAD_SPACES)
        self.maps["heads"], self.maps["kv_heads"] = im.head_maps(
            s.num_heads,
            s.num_kv_heads,
            t.num_heads,
            t.num_kv_heads,
            rng if random_units and not self.normed_heads else None,
        )
        # A tied head reads the widened embedding (a headless checkpoint, the base model alone, has no head). Its
        # width scaling is folded into the norm before it, keeping its logits, unless the model is used for its last
        # hidden state (`Binding.outputs_hidden_state`: a sentence-transformers model's), which that fold would scale.
        self.tied = (
            s.tie_word_embeddings and not binding.headless and any(w.tied_to and not w.tie_always for w in arch.final)
        )
        self.folds_tied_head = self.tied and not binding.outputs_hidden_state
        # Gemma multiplies its embedding by √hidden_size at run time: stored × √(d/d'), its output is the source's.
        self.embed_scale = math.sqrt(d / d2)
        tied_to = {w.tied_to for w in arch.final if w.tied_to}
        self.head_scale = next(
            (self.embed_scale for w in arch.embeddings if w.runtime_scale and w.name in tied_to), 1.0
        )
        self.function_preserving, self.exactness = self._exactness()

    # -- what the planner asks -------------------------------------------------------------------------------

    def sources(self, tensor: BoundTensor, binding: Binding) -> tuple[str, ...]:
        """The tensor itself; for AKI, a layer's matrices and biases also read the next layer's same tensor."""
        if self.method == "aki" and tensor.layer is not None and tensor.weight.kind in _OUT_AXIS:
            if tensor.layer + 1 < len(binding.layers):
                nxt = next(
                    (
                        u
                        for u in binding.layers[tensor.layer + 1]
                        if u.weight == tensor.weight and u.expert == tensor.expert
                    ),
                    None,
                )
                if nxt is not None:
                    return (tensor.name, nxt.name)
        return (tensor.name,)

    def apply(self, tensor: BoundTensor, inputs: list[Stored]) -> np.ndarray:
        """The widened tensor, float32, from its inputs as read (the executor casts it to the output dtype).

        It may live in this operator's buffers, and then stays valid until the second next call: calls alternate
        between two buffer sets, so the executor can write one tensor while it computes the next.
        """
        w = tensor.weight
        tags = self._input_tags(tensor, len(inputs), self._next_buffer_set())
        this = self.as_float(w, inputs[0], tags[0])
        if self.method == "zero":
            out = self._zero(w, this, tensor.name, tags[0])
        else:
            out = self._fpi(w, this, tags[0])
            if len(tags) == 2:  # AKI: new output units from the next layer's tensor
                axis = _OUT_AXIS[w.kind]
                widened = self._fpi(w, self.as_float(w, inputs[1], tags[1]), tags[1])
                out = _where_along(self._axes[w.axes[axis]].new, axis, widened, out)  # type: ignore[index]
            if self.method == "hypercloning" and self.noise_snr_db is not None:
                out = self._noise(w, out, tensor.name)
        if w.runtime_scale:
            out = out * self.embed_scale
        if w.head_norm and (fold := self.head_fold()) is not None:
            out = (out + w.gain_offset) * fold - w.gain_offset
        return out

    def widen_reader(self, name: str, w_OI: np.ndarray) -> np.ndarray:
        """A matrix outside the checkpoint that reads the model's last hidden state, out × in (a sentence-transformers
        Dense over the pooled state, `grow_cli/growth/st_modules.py`), widened as an untied output head is: IN on
        the input axis, with HyperCloning's noise, AKI's and G_zero's rules as for the model's own readers
        (`name` seeds the noise). Such a model is used for its last hidden state (`Binding.outputs_hidden_state`),
        so no head's fold scales what it reads. Float32 in and out; a fresh array."""
        weight = WeightDef(name=name, kind="linear", axes=(w_OI.shape[0], "hidden"))
        return self.apply(BoundTensor(name, weight, None, tuple(w_OI.shape), "F32"), [Stored(w_OI, "F32")]).copy()

    def as_float(self, w: WeightDef, x: Stored, tag: object) -> np.ndarray:
        """`x` (an input of `w`) in float32: its own values when they are, else cast into a reused buffer (the first
        of `buffers`). A fresh cast per tensor of a bf16 or fp16 source, freed one after another, made glibc keep
        their space: a width growth of a bf16 Llama held 1.6x its estimated peak, more than the whole source."""
        if x.dtype == "F32":
            return x.values
        (slot, shape), *_ = self.buffers(w, x.values.shape, x.dtype, tag)
        return to_float32(x, out=self._pool.array(slot, shape, "F32"))

    def rows_apart(self, tensor: BoundTensor) -> bool:
        """Whether each row (first-axis entry) of `tensor` widened comes from the same row of its inputs alone, so that
        the executor may widen it a block of rows at a time (`Plan.row_blocks`): its first axis is one width growth
        never widens (an embedding's or a head's vocabulary, experts), and nothing is drawn (G_zero's values and
        HyperCloning's noise are drawn over whole tensors, seeded). (An axis whose map keeps every unit in place is
        not gathered whole, `_gathers`, but a block of it would be.)"""
        if self.method == "zero" or (self.method == "hypercloning" and self.noise_snr_db is not None):
            return False
        return bool(tensor.shape) and self._index(tensor.weight.axes[0]) is None

    def release_buffers(self) -> None:
        """Free the buffers `apply` computed into (the weights are written; growing the moments takes its own)."""
        self._pool.clear()

    def _next_buffer_set(self) -> int:
        """Which of the two buffer sets this `apply` call computes into: they alternate (see `apply`)."""
        self._calls += 1
        return self._calls % 2

    def head_fold(self) -> Any:
        """What the norm right before the output head is multiplied by (as the gain `1 + w` a Gemma norm computes,
        not as `w`), or None: a tied head reads the (scaled) embedding, so 1/C (its sum over copies, E4) and
        1/scale are folded into that norm. Under `zero` the new hidden units are zero, so only the embedding scale
        is folded. A float, or one factor per hidden unit. None where the model is used for its last hidden
        state (`folds_tied_head`)."""
        if not self.folds_tied_head:
            return None
        fold = 1.0 / self.head_scale
        if self.method != "zero":
            return fold / self._axes["hidden"].divisor
        return None if fold == 1.0 else fold

    @property
    def symmetric_copies(self) -> bool:
        """The added units are exact copies of source units (same incoming and outgoing weights): they then receive
        identical gradients and stay copies through training unless dropout or noise breaks the symmetry (Net2Net's
        point, operators.md §2.1). AKI and G_zero make new units that are not copies; HyperCloning's noise differs
        between copies."""
        return self.method == "fpi" or (self.method == "hypercloning" and self.noise_snr_db is None)

    def config_updates(self) -> dict[str, Any]:
        keys, t, s = self.arch.config, self.target, self.source
        updates: dict[str, Any] = {keys["hidden"]: t.hidden_size, keys["heads"]: t.num_heads}
        if "ffn" in keys:
            updates[keys["ffn"]] = t.intermediate_size  # explicit, so GPT-2's n_inner=None cannot mean 4·d'
        if "kv_heads" in keys:
            updates[keys["kv_heads"]] = t.num_kv_heads
        if "head_dim" in keys:
            updates[keys["head_dim"]] = t.head_dim
        if t.is_moe:
            updates[keys["expert_ffn"]] = t.expert_intermediate_size
            if "shared_ffn" in keys:
                updates[keys["shared_ffn"]] = t.shared_intermediate_size
        if self.method == "zero" and t.hidden_size != s.hidden_size and "norm_eps" in keys:
            updates[keys["norm_eps"]] = self._norm_eps() * s.hidden_size / t.hidden_size
        return updates

    def kept_config_keys(self) -> dict[str, Any]:
        """The config keys that size the definition's config spaces, with their values: width growth keeps them."""
        kept = {}
        for key in self.arch.config_space_keys:
            value = config_value(self.arch, self.config, key)
            kept[key] = self.arch.config_defaults.get(key) if value is None and key not in self.config else value
        return kept

    def notes(self) -> list[str]:
        """What this width growth keeps that a user may expect to grow or to keep: the keys sizing config spaces, and
        a tied head's logits where the model is used for its last hidden state."""
        return [*self._kept_keys_note(), *self._unfolded_head_note()]

    def _unfolded_head_note(self) -> list[str]:
        """A tied head stored with a model used for its last hidden state: nothing is folded into the norm before
        it, so the head (which sentence-transformers does not load) reads every copy of each hidden unit."""
        if not self.tied or self.folds_tied_head:
            return []
        copies = 1 if self.method == "zero" else self._uniform_count("hidden")  # zero's new units are zero
        if copies is not None and copies * self.head_scale == 1.0:
            return []
        scale = "change" if copies is None else f"scale ×{copies * self.head_scale:.4g}"
        return [
            "width: the last hidden state is kept, as sentence-transformers pools it (it loads the transformer as "
            f"its base model); the tied head's logits {scale} (AutoModelForCausalLM on the output): folding that "
            "into the norm before the head would scale the hidden state"
        ]

    def _kept_keys_note(self) -> list[str]:
        """The keys sizing config spaces, which width growth keeps."""
        kept = self.kept_config_keys()
        if not kept:
            return []
        s, t = self.source, self.target
        sizes = [("hidden", s.hidden_size, t.hidden_size), ("FFN", s.intermediate_size, t.intermediate_size)]
        if s.is_moe:
            sizes.append(("expert FFN", s.expert_intermediate_size, t.expert_intermediate_size))
        if s.shared_intermediate_size:
            sizes.append(("shared-expert FFN", s.shared_intermediate_size, t.shared_intermediate_size))
        factor = f"--width-factor {self.width_factor:g} scales the rest: " if self.width_factor else ""
        return [
            f"width: {', '.join(f'{k}={json.dumps(v)}' for k, v in kept.items())} keep their values — they size "
            f"{self.arch.name}'s {', '.join(self.arch.config_spaces)} axes, which width growth copies unchanged; "
            f"{factor}{', '.join(f'{name} {a} → {b}' for name, a, b in sizes)}"
        ]

    def record(self) -> dict[str, Any]:
        s, t = self.source, self.target
        sizes = {
            "hidden": s.hidden_size,
            "ffn": s.intermediate_size,
            "heads": s.num_heads,
            "kv_heads": s.num_kv_heads,
            "expert_ffn": s.expert_intermediate_size,
            "shared_ffn": s.shared_intermediate_size,
        }
        moe = (
            {
                "expert_intermediate_size": t.expert_intermediate_size,
                "shared_intermediate_size": t.shared_intermediate_size,
            }
            if t.is_moe
            else {}
        )
        return {
            "method": self.method,
            "function_preserving": self.function_preserving,
            "exactness": self.exactness,
            "seed": self.seed,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_heads": t.num_heads,
            "num_kv_heads": t.num_kv_heads,
            "head_dim": t.head_dim,
            **moe,
            "maps": {name: im.describe(m, sizes[name]) for name, m in self.maps.items()},
            **({"kept": kept} if (kept := self.kept_config_keys()) else {}),
            "noise_snr_db": self.noise_snr_db,
            "tied_head": (
                "kept tied; its 1/C division folded into the head norm"
                if self.folds_tied_head
                else "kept tied, nothing folded: the last hidden state is kept, the head's logits scale"
                if self.tied
                else None
            ),
            "embedding_scale": (
                f"× √(d/d') = {self.embed_scale:.6g}: the model multiplies its embedding by √hidden_size"
                if any(w.runtime_scale for w in self.arch.embeddings)
                else None
            ),
        }

    # -- the rules --------------------------------------------------------------------------------------------

    def _exactness(self) -> tuple[bool, str]:
        s, t = self.source, self.target
        ratio = t.hidden_size / s.hidden_size
        if self.method == "aki":
            return (
                False,
                "AKI fills new units from the next layer's weights: not function-preserving by design",
            )
        if self.method == "hypercloning":
            return (
                True,
                f"every map tiled ×{ratio:g}: exact through {self._norm_name} (symmetric noise cancels)",
            )
        if self.method == "fpi":
            if self.integer_hidden and not self._uneven_heads():
                return (
                    True,
                    f"tiled hidden map ×{ratio:g}: every hidden unit copied equally often, norms commute",
                )
            if self.integer_hidden:
                return False, (
                    f"a norm runs over all query/KV heads ({self.arch.name}'s q_norm/k_norm) and the "
                    f"{self._uneven_heads()} are not copied equally often; grow head counts by an integer factor"
                )
            return False, (
                f"hidden ratio {ratio:.4g} is not an integer: some hidden units are copied more often "
                f"than others, so the {self._norm_name} statistics of the widened hidden state differ "
                f"from the source's (docs/methods.md E1); use an integer multiple, or --width-method zero "
                f"on RMSNorm models, for exactness"
            )
        return self._zero_exactness()

    def _zero_exactness(self) -> tuple[bool, str]:
        """G_zero pads every normed space with zeros; one shared eps can be corrected for one padding ratio only."""
        s, t = self.source, self.target
        ratio = s.hidden_size / t.hidden_size
        absent = {space for space, size in s.config_space_sizes if size is None}  # DeepSeek's q_lora without a rank
        others = sorted(
            space
            for space in self.arch.normed_spaces - {"hidden"} - absent
            if s.space_size(space) / t.space_size(space) != ratio
        )
        if others and self.arch.norm == "rms":
            return False, (
                f"the norms over {', '.join(others)} share rms_norm_eps with the hidden norms but are padded by a "
                f"different ratio, and one eps cannot be right for both: exact only up to eps (a relative error of "
                f"about eps/mean(x²))"
            )
        if t.hidden_size == s.hidden_size:
            return True, "new FFN units and heads are zero; the hidden size is unchanged"
        if self.arch.norm == "rms" and "norm_eps" not in self.arch.config:
            return False, "the definition names no norm eps key, so eps × d/d' cannot be written; not exact"
        if self.arch.norm == "rms":
            return (
                True,
                "zero-padded hidden units with RMSNorm gains × √(d/d') and eps × d/d' (docs/methods.md E1a)",
            )
        return False, (
            "LayerNorm over zero-padded hidden units: the mean is taken over d' units, so every old unit "
            "is shifted (gains × √(d/d') and eps × d/d' correct the variance only); not exact"
        )

    def _uneven_heads(self) -> str:
        """Which head maps copy some heads more often than others, where a norm runs over all heads ('' if none)."""
        if not self.normed_heads:
            return ""
        s = self.source
        uneven = [
            name
            for name, n in (("query heads", s.num_heads), ("KV heads", s.num_kv_heads))
            if not im.is_uniform(self.maps["heads" if name == "query heads" else "kv_heads"], n)
        ]
        return " and ".join(uneven)

    @property
    def _norm_name(self) -> str:
        return "RMSNorm" if self.arch.norm == "rms" else "LayerNorm"

    def _norm_eps(self) -> float:
        key = self.arch.config["norm_eps"]
        if self.config.get(key) is not None:
            return float(self.config[key])
        from grow_cli.arch import hf_config

        defaults = hf_config.built(self.config["model_type"], {})
        return float(getattr(defaults, key))

    @cached_property
    def _indices(self) -> dict[str, tuple[list[int], int]]:
        """Each widenable space's index map (the source unit of every target position) and its source size: what
        `_axes` makes arrays of, in plain lists so that sizing buffers (`buffers`) builds none."""
        s, h = self.source, self.source.head_dim
        q, kv = im.rows(self.maps["heads"], h), im.rows(self.maps["kv_heads"], h)
        qn, kvn = s.num_heads * h, s.num_kv_heads * h
        spaces = {
            "hidden": (self.maps["hidden"], s.hidden_size),
            "ffn": (self.maps["ffn"], s.intermediate_size),
            "q": (q, qn),
            "kv": (kv, kvn),
            "qkv": (q + [qn + r for r in kv] + [qn + kvn + r for r in kv], qn + 2 * kvn),
            # Phi-3's fused [gate|up]: both halves follow the same FFN map, so gate·up is copied unit by unit
            "gate_up": (
                self.maps["ffn"] + [s.intermediate_size + r for r in self.maps["ffn"]],
                2 * s.intermediate_size,
            ),
        }
        if "expert_ffn" in self.maps:  # MoE: each routed expert's units (and its fused [gate|up]), the shared expert's
            fe, mapped = s.expert_intermediate_size, self.maps["expert_ffn"]
            spaces["expert_ffn"] = (mapped, fe)
            spaces["expert_gate_up"] = (mapped + [fe + r for r in mapped], 2 * fe)
        if "shared_ffn" in self.maps:
            spaces["shared_ffn"] = (self.maps["shared_ffn"], s.shared_intermediate_size)
        if self.maps["heads"] == self.maps["kv_heads"]:  # GPT-NeoX: per-head (heads, 3, head_dim) rows, MHA only
            spaces["qkv_heads"] = (im.rows(self.maps["heads"], 3 * h), 3 * qn)
        return spaces

    @cached_property
    def _axes(self) -> dict[str, _Axis]:
        q, kv = im.rows(self.maps["heads"], self.source.head_dim), im.rows(self.maps["kv_heads"], self.source.head_dim)
        axes = {}
        for space, (index, n) in self._indices.items():
            c = im.counts(index, n)
            # new = not the first copy of its source unit (within its part of a fused [q|k|v])
            if space == "qkv":
                new = im.new_units(q) + im.new_units(kv) * 2
            elif space in ("gate_up", "expert_gate_up"):
                new = im.new_units(self.maps["ffn" if space == "gate_up" else "expert_ffn"]) * 2
            else:
                new = im.new_units(index)
            axes[space] = _Axis(
                np.array(index, dtype=np.intp),
                np.array([c[j] for j in index], dtype=np.float32),
                np.array(new, dtype=bool),
                tuple(index),
                len(index) // n if len(index) % n == 0 and index == im.tiled(n, len(index)) else 0,
            )
        return axes

    def _axis(self, space: str | int) -> _Axis | None:
        return None if self._index(space) is None else self._axes[space]  # type: ignore[index]

    def _index(self, space: str | int) -> list[int] | None:
        """The index map of `space` (see `_indices`), or None for an axis width growth leaves as it is."""
        if space in ("vocab", "positions", "token_types", "experts") or space in self.arch.config_spaces:
            return None  # never widened (the expert count is not a width; a config space keeps its keys' values)
        if space == "shared_ffn" and space not in self._indices:
            return None  # a zero-sized shared expert
        if isinstance(space, int) or space == "head_dim":
            return None  # a fixed axis, or one head (head_dim never changes)
        if space not in self._indices:
            raise UsageError(f"{self.arch.name}: cannot widen a '{space}' axis with these head maps")
        return self._indices[space][0]

    def _gathers(self, w: WeightDef, shape: tuple[int, ...], *, every: bool = False) -> list[tuple[int, tuple]]:
        """(axis, shape after it) of each gather `_fpi` makes of a tensor of `w` of `shape`, in order: one per widened
        axis, none where the map keeps every unit in place (a hidden-only growth's FFN axis), which would copy the
        same values (and divide them by 1) into one more full-size buffer. `every`: that axis too (`_zero` draws
        along it, and its draws decide the values of the axes after it)."""
        steps = []
        for axis, space in enumerate(w.axes):
            index = self._index(space)
            if index is None or (not every and index == list(range(shape[axis]))):
                continue
            shape = (*shape[:axis], len(index), *shape[axis + 1 :])
            steps.append((axis, shape))
        return steps

    def buffers(self, w: WeightDef, shape: tuple[int, ...], dtype: str, tag: object) -> list[tuple[object, tuple]]:
        """The float32 buffers widening one input of `w` (of `shape`, safetensors `dtype`) fills, in order, as (pool
        slot, shape): the input's float32 copy (a 16-bit input's only), each gather (`_gathers`), and G_zero's draw
        for new input columns. The last gather (else the copy) holds the result, in the slot `tag` names; the others
        are dead once the next is made, so both buffer sets (and AKI's next-layer input) share two scratch slots
        (`_chain`) and the draw's. One home for their sizes: `apply` fills them and `buffer_bytes` (the plan's
        peak) adds them up."""
        copy = [] if dtype == "F32" else [tuple(shape)]
        zero = self.method == "zero"
        gathers = self._gathers(w, tuple(shape), every=zero)
        draws = [after for axis, after in gathers if zero and axis == w.in_axis and w.axes[axis] != "q"]
        return _chain([*copy, *(after for _, after in gathers)], tag) + [("draw", after) for after in draws]

    def buffer_bytes(self, calls: list[tuple[BoundTensor, list[BoundTensor]]]) -> int:
        """The bytes this operator's buffers hold once `apply` has widened each of `calls` (a tensor and the source
        tensors it reads) in turn: every slot of `buffers` keeps the largest size asked of it (`BufferPool`)."""
        held: dict[object, int] = {}
        for number, (tensor, inputs) in enumerate(calls, 1):
            for tag, x in zip(self._input_tags(tensor, len(inputs), number % 2), inputs, strict=False):
                for slot, shape in self.buffers(tensor.weight, x.shape, x.dtype, tag):
                    held[slot] = max(held.get(slot, 0), max(1, nbytes("F32", shape)))  # (as `BufferPool`)
        return sum(held.values())

    def _input_tags(self, tensor: BoundTensor, inputs: int, side: int) -> list[tuple[str, int]]:
        """The buffer slots `apply` widens its inputs into: the tensor's own, and AKI's next-layer tensor's where it
        fills new output units from it."""
        w = tensor.weight
        takes_next = self.method == "aki" and inputs == 2 and self._index(w.axes[_OUT_AXIS[w.kind]]) is not None
        return [("this", side), ("next", side)] if takes_next else [("this", side)]

    def temporary_bytes(self, tensor: BoundTensor, shape: tuple[int, ...]) -> int:
        """The most bytes `apply` holds outside its buffers while it widens `tensor` to `shape` (0 when its result is
        a gather's buffer): at most two float32 temporaries of the output's size (HyperCloning's noise, AKI's merge,
        staged's blocks, G_zero's norm gains, an embedding's scale or a head norm's fold)."""
        w = tensor.weight
        fresh = (
            self.method in ("aki", "staged")
            or (self.method == "hypercloning" and self.noise_snr_db is not None)
            or (self.method == "zero" and w.kind == "norm")
        )
        return 2 * nbytes("F32", shape) if fresh or w.runtime_scale or w.head_norm else 0

    def _fpi(self, w: WeightDef, x, tag: object, *, divide: bool = True):
        """OUT on every axis, IN (gather and divide by the copy count) on the input axis; `divide=False`: gather only.

        Gathers go into reused buffers (`buffers`): the result, in slot `tag`, is valid until the next call with the
        same tag (see `apply`); the steps before it are scratch.
        """
        gathers = self._gathers(w, tuple(x.shape))
        for (axis, _), (slot, shape) in zip(gathers, _chain([after for _, after in gathers], tag), strict=True):
            m = self._axes[w.axes[axis]]  # type: ignore[index]
            x = m.gather(x, axis, self._pool.array(slot, shape, "F32"), divide=divide and axis == w.in_axis)
        return x

    # -- what growing a training state needs (grow_cli/growth/grown_state.py) -----------------------------------

    def state_layout(self, tensor: BoundTensor, x, tag: object):
        """`x` (an optimizer moment of `tensor`, float32) laid out as the widened tensor: gathered like its weight,
        unscaled. Entries with no counterpart in the source (none here; staged's off-diagonal blocks) are zero."""
        return self._fpi(tensor.weight, x, tag, divide=False)

    def fresh_entries(self, w: WeightDef) -> bool:
        """Whether some widened entries of `w` have no counterpart in the source (never, for a gathered tensor)."""
        return False

    def state_scales(self, w: WeightDef) -> tuple[int, float] | None:
        """(copies, value scale) of `w`: how many widened entries hold each source entry, and the factor `apply`
        multiplies them by (1/C on an IN-divided input axis, folds, embedding scales); None when either differs
        from entry to entry (a map that copies some units more often than others).

        Under exact symmetric duplication a widened entry's gradient is G / (copies × value scale), so AdamW
        continues the source's trajectory with moments m·s, v·s² (s = that factor), eps·s, and the LR times the
        value scale (weight decay divided by it): docs/training-state.md derives it.
        """
        copies, scale = 1, 1.0
        for axis, space in enumerate(w.axes):
            count = self._uniform_count(space)
            if count is None:
                return None
            copies *= count
            if axis == w.in_axis:
                scale /= count
        if w.runtime_scale:
            scale *= self.embed_scale
        if w.head_norm and self.folds_tied_head:
            hidden = self._uniform_count("hidden")
            if hidden is None:
                return None
            scale *= 1.0 / self.head_scale / hidden
        return copies, scale

    def _uniform_count(self, space: str | int) -> int | None:
        """The copy count every unit of `space` has (1 for an axis that does not grow), or None if they differ."""
        m = self._axis(space)
        if m is None:
            return 1
        counts = set(m.divisor.tolist())
        return int(counts.pop()) if len(counts) == 1 else None

    def _noise(self, w: WeightDef, x: np.ndarray, name: str) -> np.ndarray:
        """HyperCloning's symmetric noise: +N and −N on paired copies of each input column, so N·x − N·x = 0 (drawn
        by torch from a seeded generator, `_generator`: the same noise as every earlier grow drew)."""
        import torch

        axis = w.in_axis
        m = None if axis is None else self._axis(w.axes[axis])
        if axis is None or m is None or self.noise_snr_db is None:
            return x
        first, second = _pairs(m.index_list)
        if not first:
            return x
        noisy = torch.from_numpy(x).clone()
        power = float(noisy.pow(2).mean()) / 10 ** (self.noise_snr_db / 10)
        shape = list(x.shape)
        shape[axis] = len(first)
        noise = torch.randn(shape, generator=self._generator(name)) * math.sqrt(power)
        noisy.index_add_(axis, torch.tensor(first), noise)
        noisy.index_add_(axis, torch.tensor(second), -noise)
        return noisy.numpy()

    def _zero(self, w: WeightDef, given: np.ndarray, name: str, tag: object) -> np.ndarray:
        """G_zero in width: new units zero; new input columns random (they read zeros); norm gains corrected.

        Each axis is gathered into this operator's buffers (`buffers`: the result in slot `tag`, valid as `_fpi`'s)
        and worked on in place there, never in `x` as given, which may be the reader's buffer; so is the random
        columns' draw (drawn at full size, so that the values do not depend on which columns are new). Fresh
        temporaries, freed one after another, made glibc keep their space: `--width-factor 2` of a bf16 Llama held
        1.2x its estimate. In torch, whose seeded draws (`_generator`) every earlier grow drew too."""
        import torch

        x = torch.from_numpy(given)
        std = float(x.std()) if x.numel() > 1 else 0.02
        gen = self._generator(name)
        gathers = self._gathers(w, tuple(x.shape), every=True)
        for (axis, shape), (slot, _) in zip(gathers, _chain([after for _, after in gathers], tag), strict=True):
            space, m = w.axes[axis], self._axes[w.axes[axis]]  # type: ignore[index]
            x = torch.index_select(x, axis, torch.from_numpy(m.index), out=self._buffer(slot, shape))
            new = _along(torch.from_numpy(m.new), axis, x.ndim)
            if axis == w.in_axis:
                # New hidden and FFN units are exactly zero, so random weights reading them change nothing and
                # let gradients in. A new query head may read an old KV head (and be non-zero): its columns are 0.
                if space == "q":
                    x.masked_fill_(new, 0.0)
                else:
                    fill = torch.randn(shape, generator=gen, out=self._buffer("draw", shape))
                    torch.where(new, fill.mul_(std or 0.02), x, out=x)
            elif w.kind == "norm":
                # RMS over a zero-padded space shrinks by √(n/n'): scale the gain (1 + w for Gemma) back (E1a)
                scale = math.sqrt(self.source.space_size(space) / self.target.space_size(space))
                x = (x + w.gain_offset) * scale - w.gain_offset
                if self.arch.norm == "layer":  # LayerNorm: new units' output exactly zero
                    x.masked_fill_(new, w.zero_fill)
            else:
                x.masked_fill_(new, 0.0)
        return x.numpy()

    def _buffer(self, slot: object, shape: tuple[int, ...]):
        """Slot `slot` of this operator's buffers as a float32 torch tensor of `shape` (`_zero` computes in torch)."""
        return torch_view(Stored(self._pool.array(slot, shape, "F32"), "F32"))

    def _generator(self, name: str):
        import torch

        return torch.Generator().manual_seed(zlib.crc32(name.encode()) ^ (self.seed * 2654435761 % 2**32))


def _chain(shapes: list[tuple[int, ...]], tag: object) -> list[tuple[object, tuple]]:
    """Buffer slots for a chain of float32 steps of `shapes`, each made from the one before: the last (the result)
    in slot `tag`, the others in two scratch slots taken in turn back from it, so that no step overwrites the one it
    reads, and a chain with or without its first step (`as_float`'s copy, which `_fpi` does not see) puts every
    other step in the same slot."""
    return [(tag if i == len(shapes) - 1 else ("scratch", (len(shapes) - 1 - i) % 2), s) for i, s in enumerate(shapes)]


def _along(v, axis: int, ndim: int):
    """A 1-D array (or torch tensor) shaped to broadcast along `axis` of an `ndim`-D one."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _where_along(mask: np.ndarray, axis: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(_along(mask, axis, a.ndim), a, b)


def _pairs(index: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Target positions paired as (1st, 2nd), (3rd, 4th)… copies of the same source unit; an odd copy is left out."""
    copies: dict[int, list[int]] = {}
    for i, j in enumerate(index):
        copies.setdefault(j, []).append(i)
    first, second = [], []
    for positions in copies.values():
        for a, b in zip(positions[0::2], positions[1::2], strict=False):
            first.append(a)
            second.append(b)
    return first, second
