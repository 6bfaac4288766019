"""The metrics file a run writes (`metrics.jsonl`, `grow_cli.train.metrics.JsonlTracker`), read back.

Apart from the tracker that writes it, which needs torch and accelerate, so that readers that only want the losses
(growing a training state, the family report, benchmarks) pay for neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grow_cli.errors import CheckpointError
from grow_cli.json_shape import COUNT, REAL, SIZE, STEP, problem

# What grow reads back of a metrics record (json_shape.py): a resume drops the steps after its checkpoint, and the
# family report reads the losses, tokens and FLOPs per token; losses may be NaN where a run diverged.
RECORD = {"step": STEP, "tokens": COUNT, "flops_per_token": SIZE, "loss": REAL, "eval_loss": REAL}


def read_metrics(path: Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The records of a metrics file (`[]` for a missing one when `missing_ok`): for a resume, the family report,
    tests, benchmarks and notebooks. A line torn by a killed run (not JSON, or not an object) is dropped; a record
    edited by hand into another shape (`RECORD`) is one line naming it."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if found := problem(record, RECORD):
            raise CheckpointError(f"{path} is damaged (line {number}: {found}); delete that line or restore the file")
        records.append(record)
    return records


def step_record(record: dict[str, Any], step: int) -> bool:
    """Whether `record` is the training record of `step` (its loss, LR, tokens, and any evaluation at that step),
    not the final evaluation, logged at the last step in a record of its own."""
    return record.get("step") == step and "loss" in record
