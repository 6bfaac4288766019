"""`grow.json`: the lineage record every grow output carries, and the single source of its model card.

A record is a list of stages, oldest first. `grow expand` appends an "expand" stage, `grow train-stage` a "train"
stage; a model grown from a grown model inherits the earlier stages, so the record of the last member of a model
family tells its whole history. The schema is plain JSON (documented in docs/grow-json.md) so that other tools
can read it without grow installed.

Stage keys used by other parts of grow:
- every stage: ``kind`` ("expand" | "train"), ``created`` (UTC ISO time), ``grow_version``;
- expand: ``source`` ({path | repo_id, revision, files: {path in the source folder: {sha256, size}}, architecture,
  shape}),
  ``target`` (shape), ``depth`` / ``width`` (method, parameters, maps, ``function_preserving``; the card
  finds the paper in the operator registry by method),
  ``seed``, ``dtype``, ``added_tensors`` (names of tensors that have no counterpart in the source: what
  `train-stage --train-only new` trains), ``verify`` (the function-preservation check, or null);
- train: ``data`` ({paths, fingerprint, datasets}), ``objective`` ({name, masking rule, created/carried
  tensors}), ``apollo`` (null or its plan and results), ``tokens``, ``steps``, ``schedule``, ``max_lr``,
  ``train_only``, ``final_eval_loss``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from grow_cli import __version__
from grow_cli.errors import CheckpointError
from grow_cli.json_shape import (
    COUNT,
    FLAG,
    NUMBER,
    OBJECT,
    POSITIVE,
    SIZE,
    STEP,
    TEXT,
    ListOf,
    OneOf,
    Required,
    Unfit,
    maybe,
    read_checked,
)
from grow_cli.train.checkpoint_state import APOLLO_STAGES, MULTIPLIERS
from grow_cli.whole_file import write_whole

RECORD_FILE = "grow.json"
FORMAT = "grow-record"
FORMAT_VERSION = 1

# What grow reads of a record (json_shape.py): the keys above, as the card (card.py), `--data-offset lineage`,
# `--train-only new`, `--resume auto` on a finished run, the family's report and `grow push` read them.
MODEL_SHAPE = dict.fromkeys(("layers", "num_parameters", "active_parameters"), maybe(COUNT))
OPERATOR = {
    "method": TEXT,
    "parameters": maybe(OBJECT),
    "layer_map": ListOf(COUNT),
    "new_layers": ListOf(COUNT),
    "drop_upcycling": maybe(NUMBER),
}
CHECKPOINT = {  # an expand stage's source checkpoint: where it was in its run (growth/train_state.position)
    "path": Required(TEXT),
    "step": Required(STEP),
    "tokens": maybe(COUNT),
    "data_blocks": Required(COUNT),
}
MULTIPLIER_GROUP = MULTIPLIERS | {"tensors": Required(ListOf(TEXT))}
STAGE = {
    "kind": Required(TEXT),
    "source": {
        **dict.fromkeys(("path", "repo_id", "revision", "commit"), maybe(TEXT)),
        "shape": maybe(MODEL_SHAPE),
        "checkpoint": maybe(CHECKPOINT),
    },
    "target": maybe(MODEL_SHAPE),
    **dict.fromkeys(("depth", "width", "moe"), maybe(OPERATOR)),
    "verify": maybe(OBJECT),
    "training_state": maybe(OBJECT),
    "command": maybe(OneOf((ListOf(TEXT), TEXT))),  # None from Python
    "added_tensors": ListOf(TEXT),
    "data": maybe({"paths": ListOf(TEXT), "datasets": ListOf(TEXT), "fingerprint": maybe(TEXT)}),
    "data_blocks": COUNT,
    "objective": maybe({"name": TEXT, "created_tensors": ListOf(TEXT)}),
    "apollo": maybe({"stages": APOLLO_STAGES}),
    **dict.fromkeys(("tokens", "steps"), COUNT),
    "end_step": STEP,
    "schedule": maybe(OneOf((OBJECT, TEXT))),
    "train_only": maybe(TEXT),
    "seq_len": POSITIVE,
    "batch": {"global_batch_tokens": POSITIVE},
    "run_key": maybe({"max_steps": Required(STEP), "eval_fraction": maybe(SIZE)}),
    "continued": maybe(
        {
            "start_step": Required(STEP),
            "data_blocks": Required(maybe(COUNT)),
            "restart_warmup_steps": COUNT,
            "source": maybe({"step": maybe(STEP), "tokens": maybe(COUNT)}),
            "multipliers": ListOf(MULTIPLIER_GROUP),
            "tokens": COUNT,
        }
    ),
    "router": maybe(OBJECT),
    **dict.fromkeys(("flops_per_token", "train_flops"), maybe(SIZE)),
}
SHAPE = {
    "format": Required(TEXT),
    "model": {
        "architecture": TEXT,
        "library": TEXT,
        "headless": FLAG,
        "tokenizer": FLAG,  # whether the folder holds a tokenizer (absent: it does, as every trained model's)
        "num_parameters": maybe(COUNT),
        "shape": MODEL_SHAPE,
    },
    "stages": Required(ListOf(STAGE)),
}


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC, to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def load_record(folder: Path) -> dict[str, Any] | None:
    """The record in `folder`, checked against `SHAPE`; None when the folder was not made by grow (no grow.json)."""
    path = Path(folder) / RECORD_FILE
    if not os.path.lexists(path):
        return None
    try:
        record = read_checked(path, SHAPE)
        if record["format"] != FORMAT:
            raise Unfit(f"format is {json.dumps(record['format'])[:40]}, not {json.dumps(FORMAT)}")
    except Unfit as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); remove it or restore it from the source") from None
    return record


def append_stage(previous: dict[str, Any] | None, stage: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """A new record: the stages of `previous` (if any), then `stage`; `model` summarises the resulting model."""
    stage = {"kind": stage["kind"], "created": utc_now(), "grow_version": __version__, **stage}
    stages = list(previous["stages"]) if previous else []
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "grow_version": __version__,
        "model": model,
        "stages": [*stages, stage],
    }


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write `record` as `folder/grow.json` (pretty-printed, stable key order), whole or not at all, and return its
    path: a run killed while writing it left an empty grow.json, which `--resume auto` refused as damaged."""
    path = Path(folder) / RECORD_FILE
    write_whole(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def last_stage(record: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The most recent stage of `kind` in `record`, or None."""
    if not record:
        return None
    for stage in reversed(record["stages"]):
        if stage.get("kind") == kind:
            return stage
    return None
