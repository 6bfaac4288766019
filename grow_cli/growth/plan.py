"""The growth planner: (source config, architecture, tensors, `GrowthSpec`) → a `Plan`, touching no tensor data.

A plan lists every output tensor with the source tensors it reads and the transform applied (width map, copy,
zeroed identity output, expert initialisation), the target config (checked in the background: `Plan.target_config`),
the shard layout and the estimated peak memory.
`--dry-run` prints it; `grow_cli.growth.expand` streams it. Width is applied first and depth second, as in bert2BERT:
a target layer j is the widened source layer `layer_map[j]`; upcycling (`--experts`) comes last and turns each target
layer's MLP into a mixture of experts (grow_cli/operators/upcycle.py).
"""

from __future__ import annotations

import re
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from grow_cli.arch.binding import Binding, BoundTensor, bind
from grow_cli.arch.experts import depth_methods_keeping, depth_refusal, grown_kinds, num_parameters, parameter_counts
from grow_cli.arch.layer_lists import grown_entries, holds
from grow_cli.arch.registry import ArchDef, WeightDef, detect
from grow_cli.arch.shape import ModelShape, read_shape
from grow_cli.background import in_background, problem_so_far
from grow_cli.checkpoint.direct_io import STAGING_BYTES
from grow_cli.checkpoint.dtypes import block_shape, converted, nbytes, numel
from grow_cli.checkpoint.file_copy import CHUNK as COPY_BUFFER_BYTES
from grow_cli.checkpoint.writer import PlannedTensor, plan_shards
from grow_cli.errors import OptionError, UsageError, counted
from grow_cli.growth.config import grown_config, validate_config
from grow_cli.growth.mergekit import check_ranges, check_tensor_names
from grow_cli.growth.spec import GrowthSpec
from grow_cli.operators import index_scaling, registry
from grow_cli.operators.depth import DepthMap, depth_map, target_layers
from grow_cli.operators.index_scaling import query_scale
from grow_cli.operators.layer_map import function_change, mapped_depth
from grow_cli.operators.staged import gated_mlp
from grow_cli.operators.upcycle import ExpertInit, Upcycler
from grow_cli.operators.width import target_shape

# float32 bytes of a computed tensor made at a time where its rows can be made apart (`Plan.row_blocks`)
BLOCK_BYTES = 32 << 20


class WidthPlan(Protocol):
    """What the planner needs from a width operator (`grow_cli.operators.width.WidthOperator`)."""

    method: str
    target: ModelShape
    function_preserving: bool
    symmetric_copies: bool

    def sources(self, tensor: BoundTensor, binding: Binding) -> tuple[str, ...]: ...

    def apply(self, tensor: BoundTensor, inputs: list[Any]) -> Any: ...

    def widen_reader(self, name: str, w_OI: Any) -> Any: ...

    def release_buffers(self) -> None: ...

    def rows_apart(self, tensor: BoundTensor) -> bool: ...

    def buffer_bytes(self, calls: list[tuple[BoundTensor, list[BoundTensor]]]) -> int: ...

    def temporary_bytes(self, tensor: BoundTensor, shape: tuple[int, ...]) -> int: ...

    def config_updates(self) -> dict[str, Any]: ...

    def notes(self) -> list[str]: ...

    def record(self) -> dict[str, Any]: ...

    # what growing a training state needs (grow_cli/growth/grown_state.py)
    def state_layout(self, tensor: BoundTensor, x: Any, tag: str) -> Any: ...

    def state_scales(self, w: WeightDef) -> tuple[int, float] | None: ...

    def fresh_entries(self, w: WeightDef) -> bool: ...


@dataclass(frozen=True)
class OutputTensor:
    """One tensor of the grown model and how to make it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: BoundTensor
    reads: tuple[str, ...]  # checkpoint tensors read (empty when the result is all zeros)
    zero: bool  # identity block output: all zeros
    new: bool  # has no counterpart in the source (a new layer's tensor)
    layer: int | None = None
    init: ExpertInit | None = None  # upcycling: how the tensor is made from what it reads (or from nothing)
    target_weight: WeightDef | None = None  # upcycling: what the tensor is in the MoE definition
    identity_init: bool = False  # staged-identity: a new layer's gain/bias 0 or identity matrix (reads nothing)
    query_scale: float = 1.0  # attention scaled by the layer's index: the query's factor (operators/index_scaling)

    @property
    def weight(self) -> WeightDef:
        """What the tensor is in the output's architecture."""
        return self.target_weight or self.source.weight

    @property
    def nbytes(self) -> int:
        return PlannedTensor(self.name, self.shape, self.dtype).nbytes

    def describe(self, width: str | None) -> str:
        if self.zero:
            return "zeros (identity block output)"
        if self.identity_init:
            return "staged identity init (gains and biases 0, matrices I) → new"
        if not self.reads:
            return self.init.describe() if self.init else "zeros"
        how = f"{width}({', '.join(self.reads)})" if width else f"copy {self.reads[0]}"
        if self.init is not None:
            how += f": {self.init.describe()}"
        if self.query_scale != 1:
            how += f", query × {self.query_scale:.6g}"
        return how + (" → new" if self.new else "")


@dataclass
class Plan:
    arch: ArchDef
    binding: Binding
    source_shape: ModelShape
    target_shape: ModelShape
    source_config: dict[str, Any]
    config_job: Future[dict[str, Any]]  # the grown config.json, validated by transformers (see `target_config`)
    depth: DepthMap | None
    width: WidthPlan | None
    tensors: list[OutputTensor]
    shards: list[list[PlannedTensor]]
    out_dtype: str | None
    seed: int
    notes: list[str] = field(default_factory=list)
    upcycle: Upcycler | None = None
    stored_ranges: bool = True  # the source stores each tensor as a byte range (safetensors), not in a pickle (.bin)

    @property
    def target_config(self) -> dict[str, Any]:
        """The grown config.json, once transformers' config class has filled its per-layer lists and validated it
        (raising why it would not load). That takes a child process importing transformers on a first run, about
        as long as writing 2 GB, so it runs in the background while the tensors are written (`config_problem`)."""
        return self.config_job.result()

    def config_problem(self) -> BaseException | None:
        """Why the grown config failed, as soon as that is known (None while it is being checked, or when fine)."""
        return problem_so_far(self.config_job)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def num_parameters(self) -> int:
        return num_parameters(self.tensors)

    @property
    def peak_bytes(self) -> int:
        """Estimated peak memory of the streaming executor: the largest (inputs + fp32 work + output) per block of rows
        that arithmetic makes (`row_blocks`); tensors written without any (`without_arithmetic`) need at most one
        copy buffer, except from a `.bin` source (`stored_ranges` False), whose tensors are read whole and written
        from memory. A width growth counts the buffers it computes in instead (`_width_peak_bytes`)."""
        if self.width is not None:
            return self._width_peak_bytes(self.width)
        shapes = {t.name: t.shape for t in self.binding.all_tensors()}
        peak = cast = 0
        for t in self.tensors:
            if self.without_arithmetic(t):
                copied = self.stored_ranges or t.zero  # file to file in the kernel, or from the shared zeros
                peak = max(peak, COPY_BUFFER_BYTES if copied else t.nbytes + STAGING_BYTES)
                continue
            rows = self.row_blocks(t)[0]  # the first block is the largest
            read = sum(nbytes("F32", block_shape(shapes[r], rows)) for r in t.reads)  # at most fp32 each
            work = numel(t.shape) * 4 if t.init or t.query_scale != 1 else 0  # fp32 before the cast
            block = nbytes(t.dtype, block_shape(t.shape, rows))
            peak = max(peak, read + work + block)
            cast = max(cast, block if self.casts(t) else 0)
        if any(not self.without_arithmetic(t) for t in self.tensors):
            peak += STAGING_BYTES  # computed bytes go to the disk through direct I/O's staging buffers
        return peak + cast  # the cast being written

    def _width_peak_bytes(self, width: WidthPlan) -> int:
        """A width growth's peak: the buffers every tensor is computed in (`width_buffer_bytes`); the most any one
        block of rows makes outside them (`temporary_bytes`, an upcycling init's or a query scale's float32 copy, a
        `.bin` tensor's stored copy while it is read), with the previous block's fresh result while it is written;
        and direct I/O's staging buffers. Measured on an 8 × 1024 Llama, bf16 and fp32, ×2 and hidden- or FFN-only:
        the run's peak beyond torch's import is 1.06–1.12× this, ~20 MB of bookkeeping (docs/benchmarks.md, Memory,
        2026-12-04)."""
        source = {t.name: t for t in self.binding.all_tensors()}
        peak = written = 0
        for t in self.tensors:
            inputs = [source[r] for r in t.reads]
            for rows in self.row_blocks(t):
                shape = block_shape(t.shape, rows)
                fresh = numel(shape) * 4 if t.init or t.query_scale != 1 or not inputs else 0
                if inputs:
                    fresh += width.temporary_bytes(t.source, shape)
                    fresh += 0 if self.stored_ranges else max(nbytes(x.dtype, x.shape) for x in inputs)
                peak = max(peak, fresh + written)
                # a fresh result, written while the next block is made
                written = nbytes(t.dtype, shape) if fresh and not self.casts(t) else 0
        return self.width_buffer_bytes + peak + STAGING_BYTES

    @property
    def width_buffer_bytes(self) -> int:
        """The bytes a width growth's reused buffers hold once every tensor is computed, block by block of rows
        (`row_blocks`), each slot as large as the largest block it took (`BufferPool`): the reader's, one per input;
        the width operator's (its `buffer_bytes`); and the two the casts alternate in (`materialize`)."""
        assert self.width is not None
        source = {t.name: t for t in self.binding.all_tensors()}
        reads: dict[int, int] = {}  # per input slot (`materialize`: ("read", i))
        casts: dict[int, int] = {}  # by the parity of the block (`stream`)
        calls = []
        blocks = ((t, rows) for t in self.tensors for rows in self.row_blocks(t))  # (a width growth computes all)
        for computed, (t, rows) in enumerate(blocks):
            inputs = [replace(source[r], shape=block_shape(source[r].shape, rows)) for r in t.reads]
            for slot, x in enumerate(inputs):
                reads[slot] = max(reads.get(slot, 0), nbytes(x.dtype, x.shape))
            if inputs:
                calls.append((t.source, inputs))
            if self.casts(t):
                side = computed % 2
                casts[side] = max(casts.get(side, 0), nbytes(t.dtype, block_shape(t.shape, rows)))
        return sum(reads.values()) + self.width.buffer_bytes(calls) + sum(casts.values())

    def row_blocks(self, t: OutputTensor) -> list[tuple[int, int] | None]:
        """The blocks of rows (first-axis ranges, start and stop) that output `t` is computed in, one after another,
        or [None]: the whole tensor at once. Blocks of about BLOCK_BYTES of float32 result where each of its rows
        comes from the same row of every tensor it reads (a dtype cast; a width map that leaves the first axis as it
        is: `WidthPlan.rows_apart`), so that no buffer holds a whole large tensor: a 128k-token vocabulary's
        embedding widened to 4,096 is 2.1 GB in float32, and fresh memory is slow to fill (`direct_io.py`)."""
        whole: list[tuple[int, int] | None] = [None]
        if not t.shape or not t.reads or not self.stored_ranges or t.zero or t.identity_init:
            return whole
        if t.init is not None or t.query_scale != 1 or (self.width is not None and not self.width.rows_apart(t.source)):
            return whole
        return blocks_of(t.shape)

    def without_arithmetic(self, t: OutputTensor) -> bool:
        """Whether output `t` is written as bytes that already exist: a source tensor's stored bytes (a depth copy
        that keeps its dtype; copied file to file where the source stores a byte range, growth/expand.py) or all
        zeros (an identity block's writer whose zero is 0, written from a shared buffer)."""
        if self.width is not None:
            return False
        if t.zero:
            return t.source.weight.zero_fill == 0
        source = t.source
        return (
            t.init is None
            and not t.identity_init
            and t.query_scale == 1
            and t.reads == (source.name,)
            and (source.dtype, source.shape) == (t.dtype, t.shape)
        )

    def casts(self, t: OutputTensor) -> bool:
        """Whether output `t` is cast after it is computed (to --dtype, or from a width map's float32 work): the
        executor casts into two alternating buffers, writing one while it fills the other (growth/expand.py)."""
        computed_in = "F32" if self.width or t.init or t.query_scale != 1 else t.source.dtype
        return bool(t.reads) and t.dtype != computed_in

    @property
    def function_preserving(self) -> bool:
        parts = [p for p in (self.depth, self.width, self.upcycle) if p is not None]
        return bool(parts) and all(p.function_preserving for p in parts)

    def added_tensors(self) -> list[str]:
        return [t.name for t in self.tensors if t.new]

    def parameters(self) -> dict[str, int]:
        """Total and active parameters of the output (they differ for a mixture of experts)."""
        s = self.target_shape
        return parameter_counts(self.tensors, s.num_experts, s.experts_per_token)


def _validated(config: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    validate_config(config, source)
    return config


def source_shape_of(
    config: dict[str, Any], tensors: dict[str, tuple[tuple[int, ...], str]]
) -> tuple[ArchDef, ModelShape, Binding]:
    """Detect the architecture, read its shape and bind the checkpoint's tensors to it."""
    arch = detect(config)
    shape = read_shape(arch, config)
    return arch, shape, bind(arch, config, shape, tensors)


def build_plan(
    config: dict[str, Any],
    tensors: dict[str, tuple[tuple[int, ...], str]],
    spec: GrowthSpec,
    *,
    uniform_maps: bool = False,
    sentence_transformer: bool = False,
    stored_ranges: bool = True,
) -> Plan:
    """Plan the growth `spec` of a checkpoint ({name: (shape, dtype)} plus config.json) without reading tensor data.

    `uniform_maps`: every width map tiled, as growing a training state needs (grow_cli/growth/grown_state.py);
    `sentence_transformer`: the checkpoint is a sentence-transformers model's transformer (`Binding`);
    `stored_ranges`: its tensors lie as byte ranges in their files (False for `.bin` weights: `Plan.peak_bytes`)."""
    arch, shape, binding = source_shape_of(config, tensors)
    binding.sentence_transformer = sentence_transformer
    out_dtype, seed = spec.out_dtype, spec.seed

    width = None
    if spec.grows_width:
        op = registry.operator("width", spec.width_method)
        registry.refuse_if_inapplicable(op, arch)
        uniform = {"uniform": True} if uniform_maps else {}  # (the plain call keeps the constructor's signature)
        width = op.implementation(spec, arch, binding, config, **uniform)
    target_shape = width.target if width else shape

    depth = _depth(arch, binding, spec)
    if depth is not None:
        _refuse_unwritable_moe_pattern(arch, config, shape.layers, depth)
    if depth is None and width is None and not spec.grows_experts:
        raise UsageError(
            f"nothing to grow: the source already has {counted(shape.layers, 'layer')}; give more --layers or a "
            "width target"
        )
    layer_map = depth.layer_map if depth else tuple(range(shape.layers))
    if depth is not None:
        target_shape = deepened(target_shape, layer_map)
    identity_layers: frozenset[int] = frozenset()  # new layers that add nothing (identity blocks)
    if depth is not None and (depth.zero_new_outputs or depth.identity_init):
        identity_layers = frozenset(j for j, new in enumerate(depth.new) if new)
    entries = grown_entries(arch, binding.layer_entries, layer_map, identity_layers)  # which layers hold what

    def target_config() -> dict[str, Any]:
        return grown_config(
            arch,
            config,
            layer_map=depth.layer_map if depth else None,
            layer_entries=entries,
            width_updates=width.config_updates() if width else {},
            dtype=out_dtype,
        )

    upcycle = None
    if spec.grows_experts:
        if depth is not None and depth.identity_init:
            raise OptionError(
                "depth_method",
                "--depth-method staged-identity initialises dense layers; with --experts use --depth-method identity",
            )
        op = registry.operator("moe", "drop-upcycle" if spec.drop_upcycling else "upcycle")
        registry.refuse_if_inapplicable(op, arch)
        upcycle = op.implementation(spec, arch, binding, target_config())
        target_shape = upcycle.shape
        moe_config = upcycle.config
        config_job = in_background(lambda: _validated(moe_config, config), "grow-config")
    else:
        config_job = in_background(lambda: _validated(target_config(), config), "grow-config")

    def out_dtype_of(t: BoundTensor) -> str:
        return converted(t.dtype, out_dtype)

    def output(t: BoundTensor, name: str, *, new: bool, zero: bool, layer: int | None, init: bool = False):
        shape_ = target_shape.tensor_shape(t.weight.axes)
        reads = () if zero or init else (width.sources(t, binding) if width else (t.name,))
        scale = 1.0 if layer is None or zero or init else query_scale(arch, config, t.weight, layer_map[layer], layer)
        return OutputTensor(
            name, shape_, out_dtype_of(t), t, reads, zero, new, layer, identity_init=init, query_scale=scale
        )

    out: list[OutputTensor] = [output(t, t.name, new=False, zero=False, layer=None) for t in binding.embeddings]
    for j, src in enumerate(layer_map):
        is_new = bool(depth and depth.new[j])
        if upcycle is not None:
            zero_outputs = bool(depth and depth.zero_new_outputs and is_new)
            out += _upcycled(upcycle, j, binding.layers[src], binding, width, is_new, zero_outputs, out_dtype_of)
            continue
        init = bool(depth and depth.identity_init and is_new)
        for t in binding.layers[src]:
            if not holds(t.weight, entries, j):  # (a GLM-5 identity block has no indexer)
                continue
            zero = bool(depth and depth.zero_new_outputs and is_new and t.weight.residual_writer)
            name = binding.layer_name(t.weight, j, t.expert)
            out.append(output(t, name, new=is_new, zero=zero, layer=j, init=init))
    out += [output(t, t.name, new=False, zero=False, layer=None) for t in binding.final]

    shards = plan_shards([PlannedTensor(t.name, t.shape, t.dtype) for t in out], spec.max_shard_bytes)
    plan = Plan(arch, binding, shape, target_shape, config, config_job, depth, width, out, shards, out_dtype, seed)
    plan.upcycle, plan.stored_ranges = upcycle, stored_ranges
    plan.notes = _notes(plan, spec)
    return plan


def deepened(shape: ModelShape, layer_map: tuple[int, ...]) -> ModelShape:
    """`shape` (the source's, or its width target) grown in depth by `layer_map`: its layer count, and its MoE layers
    mapped as the grown config.json maps them (each copy keeps its source layer's kind)."""
    kinds = grown_kinds(shape.sparse_layers, layer_map)
    return replace(shape, layers=len(layer_map), sparse_layers=tuple(j for j, sparse in enumerate(kinds) if sparse))


def _depth(arch: ArchDef, binding: Binding, spec: GrowthSpec) -> DepthMap | None:
    """The depth growth `spec` asks of the source (a method to a target, or a layer map), or None."""
    L = binding.shape.layers
    if (explicit := spec.explicit_layer_map) is not None:
        text, identity_repeats = explicit
        if identity_repeats and (why := arch.identity_refusal):
            raise OptionError("identity_repeats", f"--identity-repeats: no identity blocks in {arch.name}: {why}")
        origin = {}
        if spec.mergekit is not None:
            check_ranges(spec.mergekit, L)
            check_tensor_names(spec.mergekit, arch.name, [t.name for t in binding.layers[0]])
            origin = {"mergekit_config": spec.mergekit.path}
        return mapped_depth(L, text, identity_repeats=identity_repeats, parameters=origin)
    layers, overlap = target_layers(L, spec)
    if layers == L:
        return None
    op = registry.operator("depth", spec.depth_method)
    registry.refuse_if_inapplicable(op, arch)
    return depth_map(op, L, layers, dus_overlap=overlap)


def _not_written(dropped: list[tuple[str, str]]) -> list[str]:
    """One note per kind of tensor not written: the same name in every layer (`h.*.attn.bias`, GPT-2's causal mask)
    is one line with its count, where each layer had its own (hundreds of lines for a large model)."""
    kinds: dict[tuple[str, str], int] = {}
    for name, why in dropped:
        key = (name if "*" in name else re.sub(r"\.\d+\.", ".*.", name), why)  # (a pattern: one layer's, kept)
        kinds[key] = kinds.get(key, 0) + 1
    return [
        f"not written: {name} ({why})" if count == 1 else f"not written: {name}, {count} tensors ({why})"
        for (name, why), count in kinds.items()
    ]


def _notes(plan: Plan, spec: GrowthSpec) -> list[str]:
    """What the user should know about this growth before training it: tensors not written, and starts that train
    poorly (a stationary gated MLP, copies that stay copies)."""
    notes = _not_written(plan.binding.dropped)
    depth, width, upcycle = plan.depth, plan.width, plan.upcycle
    if any(t.query_scale != 1 for t in plan.tensors):
        notes.append(index_scaling.note(plan.arch))
    if depth is not None and depth.method == "layer-map":
        if change := function_change(depth.layer_map, depth.zero_new_outputs, plan.source_shape.layers):
            notes.append(f"layer map {depth.parameters['layer_map']} is not function-preserving: {change}")
    if depth and depth.identity_init and gated_mlp(plan.arch):
        notes.append(
            "staged-identity: the new layers' gated MLP (gate·up) starts at a stationary point — with its norm gain "
            "at zero every MLP gradient there is exactly zero, so it never trains (its attention does); "
            "--depth-method identity has no such problem"
        )
    if width is not None:
        notes += width.notes()
    if width is not None and width.symmetric_copies and not lm_dropout(plan.source_config):
        notes.append(
            f"the units {spec.width_method} adds are exact copies and this model trains without dropout, so copies "
            "receive identical gradients and stay copies: the added width learns nothing of its own until something "
            f"breaks the symmetry.{_symmetry_breaker(plan, spec)}"
        )
    if upcycle is not None and (note := upcycle.note()):
        notes.append(note)
    return notes


def _symmetry_breaker(plan: Plan, spec: GrowthSpec) -> str:
    """The flags of an exact start that breaks the copies' symmetry: HyperCloning's noise, which cancels between
    tiled copies. It tiles whole copies only, so for a target it cannot tile (fpi to 1.5× the hidden size) the
    advice says what it would need, in its own refusal's words, rather than flags that would be refused; none for
    an architecture it does not apply to."""
    flags = (
        "--noise-snr-db 10" if spec.width_method == "hypercloning" else "--width-method hypercloning --noise-snr-db 10"
    )
    hypercloning = replace(spec, width_method="hypercloning", noise_snr_db=10.0)
    try:
        registry.refuse_if_inapplicable(registry.operator("width", "hypercloning"), plan.arch)
    except UsageError:
        return ""
    try:
        target_shape(plan.arch, plan.source_shape, hypercloning)
    except UsageError as exc:
        return f" For an exact start that does break it: {flags}, at a size it can tile ({exc})"
    return f" For an exact start that does break it: {flags}"


def _refuse_unwritable_moe_pattern(arch: ArchDef, config: dict[str, Any], layers: int, depth: DepthMap) -> None:
    """A grown stack whose pattern of dense and MoE layers the config cannot describe (a copy of DeepSeek's dense
    first layer after its MoE layers) is refused before anything is written, naming the depth methods that keep the
    pattern at this target."""
    why = depth_refusal(arch, config, layers, depth.layer_map)
    if why is None:
        return
    if depth.method == "layer-map":
        raise OptionError("layer_map", f"layer map {depth.parameters['layer_map']} cannot grow this {arch.name}: {why}")
    target = len(depth.layer_map)
    keep = [name for name, (_, kept) in depth_methods_keeping(arch, config, layers, [target]).items() if kept]
    either = keep[0] if len(keep) == 1 else f"{', '.join(keep[:-1])} or {keep[-1]}"
    hint = f"; for {target} layers use --depth-method {either}" if keep else ""
    raise OptionError("depth_method", f"--depth-method {depth.method} cannot grow this {arch.name}: {why}{hint}")


def _upcycled(
    upcycle: Upcycler,
    j: int,
    dense: list[BoundTensor],
    binding: Binding,
    width: WidthPlan | None,
    is_new: bool,
    zero_outputs: bool,
    out_dtype_of,
) -> list[OutputTensor]:
    """The tensors of target layer j upcycled from the (widened) dense layer `dense`: each reads its dense tensor
    through the width map, or nothing (a router: a new tensor); an identity layer's output projections are zero."""
    out = []
    for u in upcycle.layer(j, dense):
        zero = zero_outputs and u.weight.residual_writer
        reads = () if zero or not u.reads else (width.sources(u.source, binding) if width else (u.source.name,))
        shape = upcycle.shape.tensor_shape(u.weight.axes)
        init, new = (None if zero else u.init), is_new or not u.reads  # a router has no counterpart in the source
        out.append(OutputTensor(u.name, shape, out_dtype_of(u.source), u.source, reads, zero, new, j, init, u.weight))
    return out


# Dropout rates that only a task head reads (GPT-2's and GPT's SequenceSummary, the *ForSequenceClassification and
# question-answering heads): grow trains the language model, whose forward pass never applies them.
HEAD_DROPOUT = frozenset(
    {
        "summary_first_dropout",
        "summary_last_dropout",
        "classifier_dropout",
        "classifier_dropout_prob",
        "classifier_dropout_rate",
        "seq_classif_dropout",
        "qa_dropout",
        "pooler_dropout",
    }
)


def lm_dropout(config: dict[str, Any]) -> dict[str, float]:
    """The dropout rates above zero that the language model's training forward pass applies, from a config.json
    (`attention_dropout`, `resid_pdrop`, `hidden_dropout_prob`…): each breaks the symmetry of copied units, and the
    exact continuation of a training state. A task head's (`HEAD_DROPOUT`; GPT-2's default config sets
    `summary_first_dropout` 0.1) does neither.

    Some LMs keep a rate in a nested part of their own config (MPT's and DBRX's `attn_config.attn_pdrop`), named here
    by its dotted path. A nested config that names a `model_type` of its own belongs to another model (git's and
    phi4_multimodal's `vision_config`, which a text-only forward pass never runs), so its rates are not the LM's. A
    config whose LM is itself such a part (a `text_config`) never gets here: its class has no layer count of its own,
    so `arch.derive` refuses it. The label maps (`id2label`, `label2id`) are a head's names, not config: a config
    built in memory keys `id2label` by int."""
    rates: dict[str, float] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            # (a part of the LM's own config names no model_type: "" as transformers saves it, none in MosaicML's MPT)
            if key not in ("id2label", "label2id") and not value.get("model_type"):
                rates |= {f"{key}.{inner}": rate for inner, rate in lm_dropout(value).items()}
        elif (
            ("dropout" in key or "pdrop" in key)
            and key not in HEAD_DROPOUT
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0
        ):
            rates[key] = float(value)
    return rates


def plan_summary(plan: Plan, *, with_tensors: bool = False) -> dict[str, Any]:
    """A JSON-able description of a plan (printed by --dry-run and stored in reports). The run's peak memory is
    not in it: that depends on the training state too, see `expand.peak_memory`."""
    source = plan.source_shape
    source_params = parameter_counts(plan.binding.all_tensors(), source.num_experts, source.experts_per_token)
    summary: dict[str, Any] = {
        "architecture": plan.arch.name,
        "source": {
            **source.as_dict(),
            "num_parameters": source_params["total"],
            **({"active_parameters": source_params["active"]} if source.is_moe else {}),
        },
        "target": {
            **plan.target_shape.as_dict(),
            "num_parameters": plan.num_parameters,
            **({"active_parameters": plan.parameters()["active"]} if plan.target_shape.is_moe else {}),
        },
        "depth": None
        if plan.depth is None
        else {
            "method": plan.depth.method,
            "layer_map": list(plan.depth.layer_map),
            "new_layers": [j for j, n in enumerate(plan.depth.new) if n],
            "function_preserving": plan.depth.function_preserving,
            "parameters": plan.depth.parameters,
        },
        "width": None if plan.width is None else plan.width.record(),
        "moe": None if plan.upcycle is None else plan.upcycle.record(),
        "function_preserving": plan.function_preserving,
        "dtype": plan.out_dtype,
        "output_bytes": plan.total_bytes,
        "shards": [{"num_tensors": len(s), "bytes": sum(t.nbytes for t in s)} for s in plan.shards],
        "target_config": plan.target_config,
        "notes": plan.notes,
    }
    if with_tensors:
        width = plan.width.method if plan.width else None
        summary["tensors"] = [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "from": t.describe(width)} for t in plan.tensors
        ]
    return summary


def blocks_of(shape: tuple[int, ...]) -> list[tuple[int, int] | None]:
    """A tensor of `shape` cut along its first axis into blocks of about BLOCK_BYTES of float32 (start and stop
    rows), or [None] where it is no larger: the whole tensor (`Plan.row_blocks`)."""
    per_block = max(1, BLOCK_BYTES // max(1, 4 * numel(shape[1:])))
    if not shape or per_block >= shape[0]:
        return [None]
    return [(r, min(shape[0], r + per_block)) for r in range(0, shape[0], per_block)]
