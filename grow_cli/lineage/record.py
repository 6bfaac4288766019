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
from pathlib import Path
from typing import Any

from grow_cli import __version__
from grow_cli.errors import CheckpointError

RECORD_FILE = "grow.json"
FORMAT = "grow-record"
FORMAT_VERSION = 1


def utc_now() -> str:
    """The current time as an ISO 8601 string in UTC, to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def load_record(folder: Path) -> dict[str, Any] | None:
    """The record in `folder`, or None when the folder was not made by grow."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); remove it or restore it from the source") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("stages"), list):
        raise CheckpointError(f"{path} is not a grow record (expected format '{FORMAT}' with a 'stages' list)")
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
    """Write `record` as `folder/grow.json` (pretty-printed, stable key order) and return its path."""
    path = Path(folder) / RECORD_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def last_stage(record: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The most recent stage of `kind` in `record`, or None."""
    if not record:
        return None
    for stage in reversed(record["stages"]):
        if stage.get("kind") == kind:
            return stage
    return None
