"""`grow expand` as a library call: resolve the source, plan, stream every tensor into the output, write config,
small files, `grow.json` and the model card, optionally verify, and move the folder into place.

Memory stays bounded: the reader returns one tensor at a time and the writer appends it to a shard whose header was
written in advance, so the peak is about one tensor (see `Plan.peak_bytes`), not one shard or one model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.buffers import BufferPool
from grow_cli.checkpoint.dtypes import torch_dtype
from grow_cli.checkpoint.output import copy_small_files, staged_output, update_pooling_dimension
from grow_cli.checkpoint.reader import CheckpointReader, load_config
from grow_cli.checkpoint.source import FileHasher, Source, resolve_source
from grow_cli.checkpoint.writer import ShardWriter, parse_size
from grow_cli.console import byte_progress
from grow_cli.growth.plan import Plan, build_plan, plan_summary
from grow_cli.lineage.card import write_card
from grow_cli.lineage.record import append_stage, load_record, write_record


@dataclass
class WidthOptions:
    """Width targets as the user gave them (None: unchanged)."""

    method: str = "fpi"
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    width_factor: float | None = None
    noise_snr_db: float | None = None

    def requested(self) -> bool:
        return any(
            v is not None
            for v in (
                self.hidden_size,
                self.intermediate_size,
                self.num_heads,
                self.num_kv_heads,
                self.width_factor,
            )
        )


def materialize(plan: Plan, reader: CheckpointReader, index: int, pool: BufferPool | None = None):
    """The output tensor `plan.tensors[index]`, computed from the tensors it reads.

    With a `pool`, inputs are read into reused buffers: the result is valid until the next call.
    """
    import torch

    t = plan.tensors[index]
    dtype = torch_dtype(t.dtype)
    if t.zero:  # an identity block's residual writer: 0, or −1 for a Gemma (1 + w) gain
        return torch.full(t.shape, t.source.weight.zero_fill, dtype=dtype)
    inputs = [reader.read(name, pool, ("read", i)) for i, name in enumerate(t.reads)]
    result = plan.width.apply(t.source, inputs) if plan.width else inputs[0]
    return result.to(dtype).contiguous()


def _stage(
    plan: Plan,
    source: Source,
    hashes: dict[str, Any],
    verify: dict[str, Any] | None,
    command: list[str] | None,
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
    )
    return {
        "kind": "expand",
        "source": {
            **source.describe(),
            "files": hashes,
            "architecture": plan.arch.name,
            "shape": {k: summary["source"][k] for k in shape_keys},
        },
        "target": {k: summary["target"][k] for k in shape_keys},
        "width": summary["width"],
        "depth": summary["depth"],
        "function_preserving": plan.function_preserving,
        "seed": plan.seed,
        "dtype": plan.out_dtype or "as source",
        "added_tensors": plan.added_tensors(),
        "verify": verify,
        "command": command,
    }


def expand(
    source: str,
    out: Path | None,
    *,
    revision: str | None = None,
    token: str | None = None,
    layers: int | None = None,
    depth_factor: float | None = None,
    depth_method: str = "stack",
    dus_overlap: int | None = None,
    width: WidthOptions | None = None,
    dtype: str | None = None,
    shard_size: str = "5GB",
    seed: int = 0,
    force: bool = False,
    dry_run: bool = False,
    verify: bool = False,
    verify_max_memory: str | None = None,
    quiet: bool = False,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Grow the checkpoint `source` (folder or Hub id) into `out`; return the report (the plan with --dry-run)."""
    from grow_cli.checkpoint.output import check_output

    max_shard = parse_size(shard_size)
    verify_memory = parse_size(verify_max_memory) if verify_max_memory else None
    if out is not None:  # before any download: a refused output must not cost a multi-GB fetch
        local = Path(source).expanduser()
        check_output(Path(out), local if local.exists() else None, force=force)
    src = resolve_source(source, revision=revision, token=token)
    config = load_config(src.folder)
    width_factory = None
    if width is not None and width.requested():
        from grow_cli.operators.width import width_factory_for

        width_factory = width_factory_for(width)
    with CheckpointReader(src.folder) as reader:
        plan = build_plan(
            config,
            reader.tensor_infos(),
            layers=layers,
            depth_factor=depth_factor,
            depth_method=depth_method,
            dus_overlap=dus_overlap,
            width_factory=width_factory,
            dtype=dtype,
            shard_size=max_shard,
            seed=seed,
        )
        if dry_run:
            return {"dry_run": True, "source": src.describe(), "plan": plan_summary(plan, with_tensors=True)}
        if out is None:
            raise ValueError("expand needs an output folder unless dry_run")
        return _execute(
            plan,
            reader,
            src,
            Path(out),
            force=force,
            verify=verify or (plan.arch.always_verify and plan.function_preserving),
            verify_memory=verify_memory,
            quiet=quiet,
            command=command,
        )


def _execute(
    plan: Plan,
    reader: CheckpointReader,
    src: Source,
    out: Path,
    *,
    force: bool,
    verify: bool,
    verify_memory: int | None,
    quiet: bool,
    command: list[str] | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    hasher = FileHasher([*reader.files, src.folder / "config.json"])
    with staged_output(out, src.folder, force=force) as tmp:
        writer = ShardWriter(tmp, plan.shards)
        pool = BufferPool()
        with byte_progress(f"growing 0/{len(plan.tensors)} tensors", plan.total_bytes, quiet=quiet) as advance:
            for i, t in enumerate(plan.tensors):
                written = writer.write(t.name, materialize(plan, reader, i, pool))
                advance(written, f"growing {i + 1}/{len(plan.tensors)} tensors")
        writer.finish()
        (tmp / "config.json").write_text(json.dumps(plan.target_config, indent=2) + "\n")
        copied, skipped = copy_small_files(src.folder, tmp)
        if plan.width:
            update_pooling_dimension(tmp, plan.source_shape.hidden_size, plan.target_shape.hidden_size)
        write_seconds = time.perf_counter() - started
        check = None
        if verify:
            from grow_cli.growth import verify as verifier

            result = verifier.compare(
                src.folder,
                tmp,
                vocab_size=plan.source_shape.vocab_size,
                seed=plan.seed,
                max_memory=verify_memory,
            )
            check = verifier.check(result, exact=plan.function_preserving, dtype=plan.out_dtype or _main_dtype(plan))
        stage = _stage(plan, src, hasher.result(), check, command)
        record = append_stage(
            load_record(src.folder),
            stage,
            {
                "architecture": plan.arch.name,
                "model_type": plan.target_config.get("model_type"),
                "num_parameters": plan.num_parameters,
            },
        )
        write_record(tmp, record)
        write_card(tmp, record, title=out.name)
    summary = plan_summary(plan)
    return {
        "output": str(out.resolve()),
        "source": src.describe(),
        "architecture": plan.arch.name,
        "source_shape": summary["source"],
        "target_shape": summary["target"],
        "depth": summary["depth"],
        "width": summary["width"],
        "function_preserving": plan.function_preserving,
        "verify": check,
        "files": {
            "shards": len(plan.shards),
            "bytes": plan.total_bytes,
            "copied": copied,
            "skipped": skipped,
        },
        "notes": plan.notes,
        "seconds": round(time.perf_counter() - started, 3),
        "write_seconds": round(write_seconds, 3),
    }


def _main_dtype(plan: Plan) -> str:
    """The most common floating dtype among the output tensors."""
    counts: dict[str, int] = {}
    for t in plan.tensors:
        counts[t.dtype] = counts.get(t.dtype, 0) + t.nbytes
    return max(counts, key=counts.get)
