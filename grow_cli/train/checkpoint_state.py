"""`grow-state.json`: what grow adds to each training checkpoint (`OUT/checkpoints/step_N`), written last, and the one
read of it that every reader goes through (`load_state`).

It holds the run keys a resume must match, the step and tokens, where the run is in its data order, what `grow
expand` needs to grow the training state, a mixture of experts' router totals so far, and every file of the
checkpoint with its size (checkpoints.py, train/build.py `Run.state`). `load_state` checks it against `SHAPE` where
it is read: a file cut, edited or replaced by hand is named in one line with what is wrong in it — `--resume auto`
then skips the checkpoint, and every other reader refuses it — instead of failing later on a missing key or a value
of the wrong kind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grow_cli.errors import CheckpointError
from grow_cli.json_shape import (
    COUNT,
    NUMBER,
    OBJECT,
    POSITIVE,
    SIZE,
    STEP,
    TEXT,
    ListOf,
    MapOf,
    Required,
    Unfit,
    maybe,
    read_checked,
)

STATE_FILE = "grow-state.json"
FILES_KEY = "files"  # every file the checkpoint holds, by relative path, with its size in bytes

# Shapes the run's other records repeat (grow.json's train stages, the grown state's state.json) take from here.
APOLLO_STAGES = ListOf({"unique_layers": Required(POSITIVE), "from_step": Required(STEP)})
APOLLO = {"target_layers": POSITIVE, "stages": APOLLO_STAGES}
CONTINUATION = {
    "start_step": Required(STEP),
    "data_blocks": Required(maybe(COUNT)),
    "restart_warmup_steps": COUNT,
    "source": maybe(OBJECT),
    "max_lr": maybe(SIZE),
    "tokens": COUNT,
}
OPTIMIZER = {"max_lr": SIZE, "betas": ListOf(NUMBER), "eps": SIZE, "weight_decay": SIZE, "grad_clip": SIZE}
MULTIPLIER_KEYS = ("lr", "eps", "weight_decay")  # a tensor's multipliers of the optimizer's settings
MULTIPLIERS = {key: Required(SIZE) for key in MULTIPLIER_KEYS}
# A mixture of experts' router totals so far (train/router.py `RouterStats.totals`): passes, aux loss, expert counts,
# and the same since the last log.
ROUTER_SUMS = {"passes": Required(COUNT), "aux_loss_sum": Required(NUMBER), "counts": Required(ListOf(ListOf(SIZE)))}
ROUTER = {**ROUTER_SUMS, "window": ROUTER_SUMS}
# The keys an earlier grow did not write are read as it wrote them (checkpoints._made_before, train_state.py).
SHAPE = {
    "step": Required(STEP),
    "tokens": Required(COUNT),
    "data_blocks": COUNT,
    FILES_KEY: MapOf(COUNT),
    "model": TEXT,
    "model_weights": TEXT,
    "objective": {"name": Required(TEXT)},
    "apollo": maybe(APOLLO),
    "data_fingerprint": TEXT,
    "seq_len": POSITIVE,
    "eval_fraction": SIZE,
    "global_batch": POSITIVE,
    "max_steps": STEP,
    "seed": COUNT,
    "train_only": TEXT,
    "num_processes": POSITIVE,
    "engine": TEXT,
    "mixed_precision": TEXT,  # not a run key: a resume may change it, and says so (checkpoints.precision_change)
    "start_step": STEP,
    "data_offset": COUNT,
    "model_config": {"model_type": Required(TEXT)},
    "placeholders": ListOf(TEXT),
    "parameters": ListOf(TEXT),
    "optimizer": OPTIMIZER,
    "schedule": OBJECT,
    "continuation": CONTINUATION,
    "multipliers": MapOf(MULTIPLIERS),
    "router": ROUTER,
}


def saved(checkpoint: Path) -> bool:
    """Whether the save of `checkpoint` finished: its grow-state.json, written last, is there — whatever it holds, so
    that a damaged one is named (`load_state`) and never taken for the remains of a killed save, which are removed."""
    return os.path.lexists(Path(checkpoint) / STATE_FILE)


def load_state(checkpoint: Path) -> dict[str, Any]:
    """The grow-state.json of `checkpoint`, checked: a file of JSON with `SHAPE` whose step is the one its folder
    (`step_N`) is named after; otherwise a CheckpointError `PATH is damaged (what is wrong)`, to which each caller
    adds what to do instead."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = read_checked(path, SHAPE)
    except Unfit as exc:
        raise CheckpointError(f"{path} is damaged ({exc})") from None
    folder_step = path.parent.name.removeprefix("step_")
    if path.parent.name.startswith("step_") and folder_step.isdigit() and int(folder_step) != state["step"]:
        raise CheckpointError(f"{path} is damaged (it says step {state['step']} but lies in {path.parent.name})")
    return state
