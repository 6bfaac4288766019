"""`grow expand` as a library call: resolve the source, plan the `GrowthSpec`, stream every tensor into the output,
write config, small files, `grow.json` and the model card, optionally verify, and move the folder into place.
A source with a training state (a train-stage checkpoint, `growth/train_state.py`) also gets its AdamW state grown
into `OUT/training-state/` (`growth/grown_state.py`).

Memory stays bounded: the reader returns one tensor at a time and the writer appends it to a shard whose header was
written in advance, so the peak is about one tensor (see `Plan.peak_bytes`), not one shard or one model. Tensors
that no arithmetic changes (depth copies keeping their dtype, zeroed identity writers) never pass through Python:
they are copied file to file in the kernel (`stored_bytes`), so a depth-only growth runs at the speed of `cp`. The
others are computed in NumPy (`checkpoint/arrays.py`): a growth of safetensors weights without torch's seeded draws
or inits (G_zero, HyperCloning's noise, upcycling, staged-identity) imports no torch, whose import took longer than
writing a gigabyte.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from grow_cli.arch.binding import Binding, untie_choices
from grow_cli.checkpoint import arrays
from grow_cli.checkpoint.arrays import Stored
from grow_cli.checkpoint.buffers import BufferPool
from grow_cli.checkpoint.dtypes import block_shape, nbytes
from grow_cli.checkpoint.file_copy import FileRange
from grow_cli.checkpoint.files import SENTENCE_TRANSFORMERS_MODULES, holds_tokenizer_files
from grow_cli.checkpoint.finite import refuse_overflow
from grow_cli.checkpoint.libc import map_large_blocks
from grow_cli.checkpoint.model_config import load_config
from grow_cli.checkpoint.output import copy_small_files, small_files, staged_output
from grow_cli.checkpoint.reader import CheckpointReader, TensorEntry
from grow_cli.checkpoint.source import CheckpointSource, FileHasher, is_local, resolve_source, source_headers
from grow_cli.checkpoint.writer import ShardWriter, ZeroBytes
from grow_cli.console import activity, byte_progress, hub_bars_only_on_a_terminal
from grow_cli.errors import CheckpointError, GrowError, OptionError, UsageError
from grow_cli.growth.grown_state import STATE_DIR, StatePlan, plan_state, write_state
from grow_cli.growth.grown_state import peak_bytes as state_peak_bytes
from grow_cli.growth.grown_state import summary as state_summary
from grow_cli.growth.mergekit import check_model
from grow_cli.growth.plan import Plan, build_plan, plan_summary
from grow_cli.growth.spec import GrowthSpec
from grow_cli.growth.st_modules import (
    Module,
    module_bytes,
    module_notes,
    module_weight_files,
    module_weight_tensors,
    refuse_non_finite_bin_denses,
    refuse_width,
    st_modules,
    write_modules,
)
from grow_cli.growth.train_state import SourceState, config_of_weights, training_source, weights_only_refused
from grow_cli.limits import require_free_space, require_memory
from grow_cli.lineage.card import write_card
from grow_cli.lineage.command_line import recorded_command
from grow_cli.lineage.record import append_stage, load_record, write_record
from grow_cli.operators.index_scaling import scale_query
from grow_cli.operators.staged import identity_init
from grow_cli.quantities import parse_size

CARD_AND_RECORD_BYTES = 1 << 20  # config.json, grow.json, README.md and the index: generously


def stored_bytes(plan: Plan, reader: CheckpointReader, index: int) -> FileRange | ZeroBytes | None:
    """Output tensor `plan.tensors[index]` when no arithmetic makes it: the range of a source file that holds it byte
    for byte (a depth copy that keeps its dtype), or all-zero bytes (an identity block's zeroed writer); else None.

    These are written without torch: copied file to file in the kernel, or from a shared zero buffer.
    """
    t = plan.tensors[index]
    if plan.without_arithmetic(t) and t.zero:
        return ZeroBytes(t.nbytes)
    return reader.file_range(t.reads[0]) if copied_entry(plan, reader, index) is not None else None


def copied_entry(plan: Plan, reader: CheckpointReader, index: int) -> TensorEntry | None:
    """The source tensor whose stored bytes output tensor `index` is, byte for byte; None when arithmetic (a width
    map, a dtype change, zeros, an upcycling or identity init) makes it, or the source stores no byte range (`.bin`)."""
    t = plan.tensors[index]
    if t.zero or not plan.without_arithmetic(t):
        return None
    entry = reader.tensors[t.reads[0]]
    if entry.dtype != t.dtype or entry.shape != t.shape or entry.start < 0:
        return None
    return entry


def materialize(
    plan: Plan,
    reader: CheckpointReader,
    index: int,
    pool: BufferPool | None = None,
    casts: BufferPool | None = None,
    rows: tuple[int, int] | None = None,
    side: int = 0,
) -> Stored:
    """The output tensor `plan.tensors[index]`, computed from the tensors it reads, in NumPy (`checkpoint/arrays.py`;
    torch only for `.bin` weights and what draws from its generators or builds with it: G_zero, HyperCloning's noise,
    an upcycling or identity init); `rows` (start, stop): only those rows of it, from the same rows of what it reads
    (a block of `plan.row_blocks`).

    With a `pool`, inputs are read into reused buffers: the result is valid until the next call. With `casts`, a
    result cast to another dtype is written into one of two buffers, the one `side` (0 or 1) names: taken in turn,
    each result stays valid while the next is computed. Fresh casts, freed one after another, made the allocator
    keep their space (1.6× the planned peak for `--dtype bf16` of a 2.2 GB model).
    """
    t = plan.tensors[index]
    if t.zero:  # an identity block's residual writer: 0, or −1 for a Gemma (1 + w) gain
        return arrays.full(t.shape, t.source.weight.zero_fill, t.dtype)
    if t.identity_init:
        return arrays.cast(arrays.stored(identity_init(t.source.weight, t.shape, plan.target_shape)), t.dtype)
    inputs = [reader.read_stored(name, pool, ("read", i), rows) for i, name in enumerate(t.reads)]
    result: Stored | None = inputs[0] if inputs else None
    if plan.width and inputs:
        result = Stored(plan.width.apply(t.source, inputs), "F32")
    if t.init is not None:  # upcycling: an expert's copy (scaled, partly re-initialised) or a new router
        given = None if result is None else arrays.torch_view(Stored(arrays.to_float32(result), "F32"))
        result = arrays.stored(t.init.apply(given, t.shape, plan.seed))
    assert result is not None, t.name  # only an upcycling init makes a tensor that reads nothing
    if t.query_scale != 1:  # (a copy in float32: the input may be the reader's buffer)
        copy = arrays.to_float32(result, out=np.empty(t.shape, np.float32))
        values = scale_query(copy, t.source.weight, plan.target_shape, t.query_scale)
        result = Stored(values, "F32")
    shape = block_shape(t.shape, rows)
    out = casts.array(("cast", side), shape, t.dtype) if casts is not None and plan.casts(t) else None
    written = arrays.cast(result, t.dtype, out)
    named = t.name if rows is None else f"{t.name} (rows {rows[0]}:{rows[1]} of {t.shape[0]})"  # counts are the block's
    refuse_overflow(named, result, written, dtype_given=plan.out_dtype is not None)
    return written


def stream(
    plan: Plan, reader: CheckpointReader, writer: ShardWriter, advance=None, hasher: FileHasher | None = None
) -> None:
    """Write every output tensor of `plan` in order, as `stored_bytes` or `materialize` makes it, a computed one a
    block of rows at a time where the plan says so (`Plan.row_blocks`).

    A computed tensor (or block) is written by a background thread while the next one is computed (file writes and
    NumPy's kernels both release the GIL), so arithmetic and I/O overlap; at most one write is in flight, and the
    width operators and casts alternate two buffer sets (`WidthOperator.apply`, `materialize`'s `side`), so what is
    being written is never what is being computed. Stored bytes and any tensor that lies in the reader's buffers are
    written in this thread, after the write in flight: their source range or buffer is only valid until the next
    read. The width operator's buffers are freed at the end: growing the training state, next, takes buffers of its
    own. A grown config transformers refuses, or a source the `hasher` finds damaged, stops the writing at the next
    tensor.
    """
    pool, casts = BufferPool(), BufferPool()
    total, computed = len(plan.tensors), 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="grow-write") as background:
        in_flight: Future | None = None
        for i, t in enumerate(plan.tensors):
            if (problem := plan.config_problem() or (hasher.problem() if hasher else None)) is not None:
                raise problem  # stop writing now (the temporary output goes)
            stored = stored_bytes(plan, reader, i)
            for rows in [None] if stored is not None else plan.row_blocks(t):
                if stored is None:
                    data: Stored | FileRange | ZeroBytes = materialize(plan, reader, i, pool, casts, rows, computed % 2)
                    computed += 1
                else:
                    data = stored
                if in_flight is not None:
                    in_flight.result()  # the previous write is done: its buffers may be taken again
                    in_flight = None
                if isinstance(data, Stored) and not pool.owns(data.values):
                    in_flight = background.submit(writer.write, t.name, data, rows)
                else:
                    writer.write(t.name, data, rows)
                if advance is not None:
                    advance(nbytes(t.dtype, block_shape(t.shape, rows)), f"growing {i + 1}/{total} tensors")
        if in_flight is not None:
            in_flight.result()
    if plan.width is not None:
        plan.width.release_buffers()


def _verify_memory(text: str | int | None, verify: bool) -> int | None:
    """`--verify-max-memory` in bytes (None: not given); refused without `--verify`, whose bound it is."""
    if text is None:
        return None
    if not verify:
        raise OptionError("verify_max_memory", "--verify-max-memory applies only with --verify")
    try:
        return parse_size(text)
    except UsageError as exc:
        raise OptionError("verify_max_memory", f"--verify-max-memory: {exc}") from None


def _stage(
    plan: Plan,
    source: CheckpointSource,
    hashes: dict[str, Any],
    verify: dict[str, Any] | None,
) -> dict[str, Any]:
    summary = plan_summary(plan)
    shape_keys = (
        "layers",
        "hidden_size",
        "intermediate_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "vocab_size",
        "num_parameters",
        *("model_type", "num_experts", "experts_per_token", "active_parameters"),  # MoE shapes only
    )
    if plan.upcycle is not None:  # the model type changes
        summary["source"]["model_type"] = plan.source_config.get("model_type")
        summary["target"]["model_type"] = plan.target_config.get("model_type")
    return {
        "kind": "expand",
        "source": {
            **source.describe(),
            "files": hashes,
            "architecture": plan.arch.name,
            "definition": "curated" if plan.arch.curated else "derived",
            "shape": {k: summary["source"][k] for k in shape_keys if k in summary["source"]},
        },
        "target": {k: summary["target"][k] for k in shape_keys if k in summary["target"]},
        "width": summary["width"],
        "depth": summary["depth"],
        "moe": summary["moe"],
        "function_preserving": plan.function_preserving,
        "seed": plan.seed,
        "dtype": plan.out_dtype or "as source",
        "added_tensors": plan.added_tensors(),
        "verify": verify,
        "command": recorded_command(),
    }


def expand(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    spec: GrowthSpec,
    *,
    revision: str | None = None,
    token: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    verify: bool = False,
    verify_max_memory: str | int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Grow the checkpoint `source` (folder, Hub id or train-stage checkpoint) into the folder `out` as `spec` says.

    Returns the report `grow expand --json` prints (docs/json-output.md): `out` (the folder's absolute path),
    `source` (where from, and its `shape`: layers, sizes, parameters), `architecture`, `target` (the grown shape),
    `depth`/`width`/`moe` (what was done, or None), `function_preserving`, `verify` (with `verify=True`:
    `max_abs_logit_diff`, `tolerance`, `passed`, …; else None), `training_state` (the grown AdamW state, or None),
    `files`, `notes` and `seconds`. With `dry_run=True` nothing is written (`out` may be None) and it returns the
    plan under the same names, with `"dry_run": True`, every output tensor with its sources (`tensors`), the shards
    and the peak memory.

    `out` must not exist or be empty unless `force`. Raises `OptionError`/`UsageError` for a growth the source cannot
    take, `CheckpointError`, `ArchitectureError`, `OutputError`, `HubError`, and `VerificationError` when `verify`
    finds an exact method not exact (nothing is written then). `quiet` hides the progress bars on stderr (grow's, and
    a Hub download's). grow.json records the grow command line set by `lineage.command_line.recording` (None from
    Python).
    """
    from grow_cli.checkpoint.output import check_output

    verify_memory = _verify_memory(verify_max_memory, verify)
    spec, notes = spec.fresh(), []
    if spec.mergekit is not None:  # its slices must read SRC, before anything is read or downloaded
        revision, note = check_model(spec.mergekit, os.fspath(source), revision)
        notes += [note] if note else []
    if out is None and not dry_run:
        raise OptionError("out", "expand needs an output folder (out) unless dry_run=True, which writes nothing")
    if out is not None:  # before any download: a refused output must not cost a multi-GB fetch
        out = Path(out).expanduser().resolve()  # absolute: `--force` may replace the working folder "." names
        local = Path(source).expanduser()
        check_output(Path(out), local if local.exists() else None, force=force)
    local_source = is_local(source, revision)
    if spec.weights_only and not local_source:  # before a download that could only be refused
        raise weights_only_refused(os.fspath(source))  # grow downloads no training state from the Hub
    # a Hub id's download (a local source imports no huggingface_hub: 0.06 s before the first byte)
    with nullcontext() if local_source else hub_bars_only_on_a_terminal(quiet=quiet):
        if dry_run:  # config.json and the shard headers are all a plan reads: a Hub id's weights stay on the Hub
            return _dry_run(source, spec, revision=revision, token=token, notes=notes)
        src = resolve_source(source, revision=revision, token=token)
    with training_source(src, weights_only=spec.weights_only) as (src, source_state):
        config = load_config(src.folder)
        with CheckpointReader(src.folder, library_check_later=True, leave_out=src.placeholders) as reader:
            assert out is not None  # refused above
            # Hashing starts now, beside the planning (which may wait for transformers' answers in a child process).
            hasher = FileHasher(
                [*reader.files, src.folder / "config.json", *module_weight_files(src.folder)],
                src.folder,
                weights={**reader.safetensors_files(), **module_weight_tensors(src.folder)},
            )
            try:
                plan, state, modules = _plan(config, reader, spec, source_state, checkpoint=src.trained is not None)
                plan.notes += notes
                return _execute(
                    plan,
                    reader,
                    src,
                    hasher,
                    Path(out),
                    state=state,
                    modules=modules,
                    force=force,
                    verify=verify or (plan.arch.always_verify and plan.function_preserving),
                    verify_memory=verify_memory,
                    quiet=quiet,
                )
            finally:
                hasher.cancel()  # a refused plan or a failed run leaves no thread hashing


def _dry_run(
    source: str | os.PathLike[str], spec: GrowthSpec, *, revision: str | None, token: str | None, notes: list[str]
) -> dict:
    """`expand`'s answer with `dry_run=True`: the plan of every output tensor, the shards and the peak memory;
    `notes` (the caller's, before planning) go with the plan's."""
    with (
        source_headers(source, revision=revision, token=token) as src,
        training_source(src, weights_only=spec.weights_only) as (src, source_state),
    ):
        config = load_config(src.folder)
        with CheckpointReader(
            src.folder, library_check_later=True, fetch=src.fetch, leave_out=src.placeholders
        ) as reader:
            plan, state, _ = _plan(config, reader, spec, source_state, checkpoint=src.trained is not None)
            plan.notes += notes
            reader.library_checked()
        summary = plan_summary(plan, with_tensors=True)
        return {
            "dry_run": True,
            **growth_summary(summary, src),
            "dtype": summary["dtype"],
            "estimated_peak_memory_bytes": peak_memory(plan, state),
            "target_config": summary["target_config"],
            "tensors": summary["tensors"],
            "training_state": state_summary(state) if state else None,
        }


def growth_summary(summary: dict[str, Any], src: CheckpointSource) -> dict[str, Any]:
    """What `grow expand`'s report and its --dry-run plan both say of a growth, under grow.json's names (`source`
    with its `shape`, `target`), and the weights' `files`: one builder, so that a script reads the same keys from
    either (docs/json-output.md)."""
    return {
        "source": {**src.describe(), "shape": summary["source"]},
        "architecture": summary["architecture"],
        "target": summary["target"],
        "depth": summary["depth"],
        "width": summary["width"],
        "moe": summary["moe"],
        "function_preserving": summary["function_preserving"],
        "notes": summary["notes"],
        "files": {"bytes": summary["output_bytes"], "shards": summary["shards"]},
    }


def _plan(
    config: dict[str, Any],
    reader: CheckpointReader,
    spec: GrowthSpec,
    source_state: SourceState | None,
    *,
    checkpoint: bool,
) -> tuple[Plan, StatePlan | None, list[Module]]:
    """The weights' plan, the training state's when the source has one (its maps must then be uniform), and the
    sentence-transformers modules with weights of their own (a width growth one cannot follow is refused here,
    before anything is written). A training `checkpoint`'s config is the run's model folder's, which may name
    another dtype than its weights."""
    infos = reader.tensor_infos()
    if checkpoint:
        config = config_of_weights(config, infos)
    st_folder = (reader.folder / SENTENCE_TRANSFORMERS_MODULES).is_file()
    plan = build_plan(
        config,
        infos,
        spec,
        uniform_maps=source_state is not None,
        sentence_transformer=st_folder,
        stored_ranges=reader.format == "safetensors",
    )
    check_tied_copies(plan.binding, reader)
    if source_state is None and (reader.folder / STATE_DIR).is_dir():
        plan.notes.append(
            f"{STATE_DIR}/ (a grown training state that has not trained yet) is not grown again: the output holds "
            "weights only; to grow a run twice, continue it first (train-stage --resume grown) and grow its checkpoint"
        )
    modules = st_modules(reader.folder, plan.source_shape.hidden_size, plan.out_dtype)
    if plan.width is not None:
        refuse_width(modules)
    plan.notes += module_notes(modules, _hidden_factor(plan))
    return plan, plan_state(plan, source_state, spec) if source_state is not None else None, modules


def _hidden_factor(plan: Plan) -> float | None:
    """How many times wider the hidden state grows; None for depth only."""
    return plan.target_shape.hidden_size / plan.source_shape.hidden_size if plan.width else None


def peak_memory(plan: Plan, state: StatePlan | None) -> int:
    """The run's estimated peak memory: writing the weights, or growing the moments after them, whichever needs more."""
    return max(plan.peak_bytes, state_peak_bytes(plan, state) if state else 0)


def check_tied_copies(binding: Binding, reader: CheckpointReader) -> None:
    """Refuse a tied head stored with values of its own: transformers then unties them and uses the stored head,
    which grow, writing a tied tensor once, would drop (some exporters store the copy; an equal copy is fine)."""
    for stored, target in binding.tied_copies:
        if not reader.same_values(stored, target):
            raise CheckpointError(
                f"config.json ties {stored} to {target}, but the checkpoint stores {stored} with different values "
                f"(transformers then does not tie them and uses the stored one); {untie_choices(stored)}"
            )


def _execute(
    plan: Plan,
    reader: CheckpointReader,
    src: CheckpointSource,
    hasher: FileHasher,
    out: Path,
    *,
    state: StatePlan | None,
    modules: list[Module],
    force: bool,
    verify: bool,
    verify_memory: int | None,
    quiet: bool,
) -> dict[str, Any]:
    started = time.perf_counter()
    with staged_output(out, src.folder, force=force) as tmp:
        extra = sum(p.stat().st_size for p in small_files(src.folder)[0]) + CARD_AND_RECORD_BYTES
        extra += module_bytes(src.folder, modules, _hidden_factor(plan))
        refuse_non_finite_bin_denses(src.folder, modules)  # (the hashing checks the safetensors ones)
        state_bytes = state.total_bytes if state else 0
        require_free_space(tmp, plan.total_bytes + state_bytes + extra, out)
        require_memory(peak_memory(plan, state))
        copies = {t.name: e.start for i, t in enumerate(plan.tensors) if (e := copied_entry(plan, reader, i))}
        total = plan.total_bytes + state_bytes
        with (
            ShardWriter(
                tmp, plan.shards, source_offsets=copies, direct=not verify, parameters=plan.num_parameters
            ) as writer,
            byte_progress(f"growing 0/{len(plan.tensors)} tensors", total, quiet=quiet) as advance,
        ):
            stream(plan, reader, writer, advance, hasher)
            writer.finish()
            grown_state = None
            if state is not None:
                map_large_blocks()  # the moments' buffers, after the weights' (its estimate then holds)
                grown_state = write_state(plan, state, tmp / STATE_DIR, lambda n: advance(n, "growing the AdamW state"))
        reader.library_checked()  # the source passed safetensors' own parse too, before anything is published
        (tmp / "config.json").write_text(json.dumps(plan.target_config, indent=2) + "\n")
        copied, skipped = copy_small_files(src.folder, tmp)
        module_files = write_modules(plan, modules, src.folder, tmp)
        write_seconds = time.perf_counter() - started
        try:
            check = _verified(plan, src.folder, tmp, verify_memory, quiet) if verify else None
        except GrowError:
            hasher.result()  # weights the hashing finds non-finite explain a failed check: that is said instead
            raise
        stage = _stage(plan, src, hasher.result(), check)
        stage["training_state"] = grown_state
        _write_lineage(plan, src.folder, tmp, stage, title=out.name)
    growth = growth_summary(plan_summary(plan), src)
    return {
        "out": str(out.resolve()),
        **growth,
        "verify": check,
        "training_state": grown_state,
        "files": {
            **growth["files"],
            "copied": copied,
            "skipped": skipped,
            "modules": module_files,  # sentence-transformers modules' weights (copied or widened) and grown configs
        },
        "seconds": round(time.perf_counter() - started, 3),
        "write_seconds": round(write_seconds, 3),  # the rest of `seconds` is --verify's, and the lineage's
    }


def _verified(plan: Plan, source: Path, grown: Path, max_memory: int | None, quiet: bool) -> dict[str, Any]:
    """`--verify`: both models' outputs on probe tokens, and whether they agree as this growth promises."""
    from grow_cli.growth import verify as verifier

    with activity("verifying: the source, then the grown model, on probe tokens", quiet=quiet):
        result = verifier.measure(
            source,
            grown,
            vocab_size=plan.source_shape.vocab_size,
            seed=plan.seed,
            max_memory=max_memory,
            positions=plan.source_shape.max_positions,
            hidden_state=plan.binding.outputs_hidden_state,
        )
    return verifier.check(
        result,
        exact=plan.function_preserving,
        dtype=plan.out_dtype or _main_dtype(plan),
        rounded=any(plan.casts(t) for t in plan.tensors),
        derived=None if plan.arch.curated else plan.arch.name,
        instead=tuple(
            m for m, grew in (("--depth-method stack", plan.depth), ("--width-method aki", plan.width)) if grew
        ),
    )


def _write_lineage(plan: Plan, source: Path, grown: Path, stage: dict[str, Any], *, title: str) -> None:
    """grow.json (the source's record, if any, plus this stage) and the model card, into the grown folder."""
    library = "sentence-transformers" if (grown / SENTENCE_TRANSFORMERS_MODULES).is_file() else "transformers"
    record = append_stage(
        load_record(source),
        stage,
        {
            "architecture": plan.upcycle.target.name if plan.upcycle else plan.arch.name,  # what OUT holds
            "model_type": plan.target_config.get("model_type"),
            "num_parameters": plan.num_parameters,
            "library": library,
            "headless": plan.binding.headless,
            "tokenizer": holds_tokenizer_files(grown),  # copied from the source, which may have none
        },
    )
    write_record(grown, record)
    write_card(grown, record, title=title)


def _main_dtype(plan: Plan) -> str:
    """The most common floating dtype among the output tensors."""
    counts: dict[str, int] = {}
    for t in plan.tensors:
        counts[t.dtype] = counts.get(t.dtype, 0) + t.nbytes
    return max(counts, key=counts.__getitem__)
