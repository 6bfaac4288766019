"""Where in the data order a fresh run starts: `--data-offset BLOCKS|lineage`.

A model grown from a trained one and trained with a fresh optimizer reads the data order from its first block —
the blocks its ancestors trained on already — while the same model trained from scratch on as many tokens as its
whole lineage reads that many distinct blocks. `lineage` reads on after the blocks the model's lineage read from
the same data order (same data fingerprint, seq_len and seed, hence the same permutation, of the same train blocks:
the same eval fraction), so the members of a
family together read each block once per epoch, exactly like the from-scratch run they are compared with. A grown
training state (`--resume grown`) carries its own position (train/continuation.py) and needs no offset; that
position counts blocks of its source's order, so a continuation in another order reads its own from the start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grow_cli.errors import CheckpointError
from grow_cli.lineage.record import RECORD_FILE, load_record
from grow_cli.train.continuation import Continuation


def blocks_read(stage: dict[str, Any]) -> int | None:
    """How far into its data order a training stage of grow.json read: recorded as `data_blocks`; derived from the
    end step, batch and continuation for records written before grow recorded it; None where it records neither."""
    if "data_blocks" in stage:
        return int(stage["data_blocks"])
    if not ("end_step" in stage and "seq_len" in stage and "global_batch_tokens" in (stage.get("batch") or {})):
        return None
    global_batch = stage["batch"]["global_batch_tokens"] // stage["seq_len"]
    continued = stage.get("continued")
    offset = (
        Continuation(continued["start_step"], continued["data_blocks"]).data_offset(global_batch) if continued else 0
    )
    return int(stage["end_step"]) * global_batch + offset


def lineage_blocks(model_dir: Path, fingerprint: str, seq_len: int, seed: int, eval_fraction: float) -> int | None:
    """The blocks the newest training in `model_dir`'s lineage read from this data order, or None when none read it
    (no grow.json, other data, another block length, seed or eval fraction: another order). A training is a
    finished train stage, or the run of a checkpoint that a growth started from (recorded with the expand stage's
    source: that run's own train stage reaches grow.json only when it finishes)."""
    ours = (fingerprint, seq_len, seed)
    stages = (load_record(model_dir) or {}).get("stages", [])
    for number, stage in reversed(list(enumerate(stages, 1))):
        if stage.get("kind") == "train":
            theirs = ((stage.get("data") or {}).get("fingerprint"), stage.get("seq_len"), stage.get("seed"))
            if theirs == ours and _same_split((stage.get("run_key") or {}).get("eval_fraction"), eval_fraction):
                read = blocks_read(stage)
                if read is None:
                    raise CheckpointError(
                        f"--data-offset lineage: stage {number} of {Path(model_dir) / RECORD_FILE} trained on this "
                        "data but records neither how far it read (data_blocks) nor its end step and batch; give "
                        "--data-offset BLOCKS instead"
                    )
                return read
        elif stage.get("kind") == "expand" and (checkpoint := (stage.get("source") or {}).get("checkpoint")):
            theirs = (checkpoint.get("data_fingerprint"), checkpoint.get("seq_len"), checkpoint.get("seed"))
            if theirs == ours and _same_split(checkpoint.get("eval_fraction"), eval_fraction):
                return int(checkpoint["data_blocks"])
    return None


def _same_split(recorded: float | None, eval_fraction: float) -> bool:
    """Whether a recorded run held out the same share of blocks (which decides the train blocks the permutation
    orders); a record of a grow that did not note its eval fraction counts as the same, as it did then."""
    return recorded is None or recorded == eval_fraction


def step_offset(
    config, continuation: Continuation | None, fingerprint: str, train_blocks: int, global_batch: int
) -> tuple[int, int | None, str | None]:
    """Blocks added to every step's data position (`StepBatches.offset`); the block `--data-offset` makes the first
    step read (None without one; a resume must match it); a note for the user."""
    if continuation is not None and continuation.data_blocks is not None:
        other = _other_order(continuation, fingerprint, config)
        if other is None:
            return continuation.data_offset(global_batch), None, None  # a grown state reads on after its source
        return (
            -continuation.start_step * global_batch,
            None,
            (
                f"--resume grown: the grown state's run read another data order ({other}); this run reads its own "
                f"from the first block (the {continuation.data_blocks:,} blocks the source read count in the source's "
                "order only)"
            ),
        )
    if config.data_offset is None:
        return 0, None, None  # step t reads its own blocks (a bare --schedule-offset R starts with step R's)
    first, note = first_block(config, fingerprint, train_blocks)
    start = continuation.start_step if continuation else 0
    return first - start * global_batch, first, note


def _other_order(continuation: Continuation, fingerprint: str, config) -> str | None:
    """How the data order of the run a grown state continues differs from this run's (the data, seq_len and seed
    make the permutation, of the train blocks the eval fraction leaves), or None when it is the same or a state of
    an earlier grow does not say."""
    run = (continuation.source or {}).get("run") or {}
    theirs = {
        "data": run.get("data_fingerprint"),
        "seq_len": run.get("seq_len"),
        "seed": run.get("seed"),
        "eval_fraction": run.get("eval_fraction"),
    }
    ours = {"data": fingerprint, "seq_len": config.seq_len, "seed": config.seed, "eval_fraction": config.eval_fraction}
    changed = [
        f"{key} {theirs[key]} → {ours[key]}" for key in ours if theirs[key] is not None and theirs[key] != ours[key]
    ]
    return ", ".join(changed) or None


def first_block(config, fingerprint: str, train_blocks: int) -> tuple[int, str | None]:
    """`config.data_offset` in blocks, and a note for the user when `lineage` decided it or a number reaches past the
    data (the data order repeats, each epoch in a permutation of its own: the run starts in a later epoch)."""
    if config.data_offset != "lineage":
        first = int(config.data_offset)
        if first < train_blocks:
            return first, None
        return first, (
            f"--data-offset {first:,} is past the data's {train_blocks:,} training blocks: the first step reads "
            f"block {first % train_blocks:,} of epoch {first // train_blocks + 1:,} ({first / train_blocks:.2f} "
            "epochs in)"
        )
    blocks = lineage_blocks(config.model, fingerprint, config.seq_len, config.seed, config.eval_fraction)
    if blocks is None:
        return 0, (
            f"--data-offset lineage: no training in {config.model}'s lineage read this data with seq_len "
            f"{config.seq_len}, seed {config.seed} and eval fraction {config.eval_fraction}; reading the data order "
            "from its first block"
        )
    return blocks, (
        f"--data-offset lineage: reading on after the {blocks:,} blocks the lineage read ({blocks / train_blocks:.2f} "
        "epochs)"
    )
