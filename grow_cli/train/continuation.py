"""Continuing a training run on a grown model: `--resume grown`, `--schedule-offset` and `--restart-warmup-steps`.

`grow expand` of a train-stage checkpoint writes the grown AdamW state beside the model (`training-state/`,
grow_cli/growth/grown_state.py). `--resume grown` continues it: the run starts at the source's step N — or at
staged training's restart step R (`--schedule-offset R`, or `auto` for the rule recorded in the state) — so the
LR schedule, the step counter and AdamW's bias correction go on where the source stopped; each parameter gets the
LR, eps and weight-decay multipliers the state lists (as parameter groups); the data continues after the blocks the
source read. The budget (`--max-steps` / `--max-tokens`) is what this run trains, as always: its schedule spans
R + budget steps. A restart warmup ramps the LR from 0 to the schedule's value over its first steps (staged
training's `restart_warmup_steps`); for a WSD run grown in its stable phase none is needed. Without a grown state,
`--schedule-offset R` starts any run at step R of its schedule and of its data order (a fresh optimizer placed
exactly where a continued one would be).

A continued run's checkpoints record all of this (grow-state.json `continuation`), so `--resume auto` after an
interruption rebuilds the same parameter groups and schedule before accelerate restores the optimizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.files import TRAINING_STATE_DIR as STATE_DIR
from grow_cli.data.masking_settings import NAMES as MASKING
from grow_cli.errors import CheckpointError, UsageError, counted
from grow_cli.json_shape import COUNT, FLAG, NUMBER, STEP, TEXT, MapOf, Required, Unfit, maybe, read_checked
from grow_cli.train.checkpoint_state import MULTIPLIER_KEYS, MULTIPLIERS, OPTIMIZER
from grow_cli.train.checkpoint_state import SHAPE as CHECKPOINT_SHAPE

STATE_FILE = "state.json"  # the grown state's description, beside its moments (growth/grown_state.py writes it)
FORMAT = "grow-training-state"

# What grow reads of state.json (json_shape.py): the step and restart step a continued run starts from, each
# tensor's multipliers and moments, and of the source run the settings the notes compare (as the checkpoint's
# grow-state.json held them) and its optimizer's, which `--max-lr auto` takes (any of them null when they were read
# from an optimizer.bin that did not hold them).
COMPARED = (
    "data_fingerprint",
    "seq_len",
    "seed",
    "eval_fraction",
    "global_batch",
    "schedule",
    "mixed_precision",
    "objective",
)
SHAPE = {
    "format": Required(TEXT),
    "step": Required(STEP),
    "tokens": maybe(COUNT),
    "data_blocks": maybe(COUNT),
    "loss_at_growth": maybe(NUMBER),
    "restart": Required({"suggested_step": Required(STEP), "rule": maybe(TEXT)}),
    "dynamics": maybe({"exact": maybe(FLAG)}),
    "source": maybe(
        {
            "run": maybe({k: CHECKPOINT_SHAPE[k] for k in COMPARED}),
            "optimizer": maybe({k: maybe(shape) for k, shape in OPTIMIZER.items()}),
        }
    ),
    "parameters": Required(MapOf({**MULTIPLIERS, "moments": Required(TEXT), "step": maybe(STEP)})),
}


@dataclass(frozen=True)
class Continuation:
    """Where this run starts in a longer run, and what it carries from there."""

    start_step: int  # the first step's index in the schedule (R)
    data_blocks: int | None  # blocks the source had read (the first step reads the next); None: step R's own blocks
    restart_warmup_steps: int = 0
    multipliers: dict[str, dict[str, float]] = field(default_factory=dict)  # per parameter: lr / eps / weight_decay
    source: dict[str, Any] | None = None  # the grown state's step, tokens, loss at growth and source run
    load_from: Path | None = None  # the grown state to load now; None when resuming this run's own checkpoint
    max_lr: float | None = None  # the source run's peak LR (what --max-lr auto continues with)
    tokens: int = 0  # tokens the lineage trained before the first step (the grown state's), which checkpoints count

    def data_offset(self, global_batch: int) -> int:
        """Blocks added to every step's data position so that step R reads the block after the source's last (0
        without a source: the step is the data position, as in any run)."""
        return 0 if self.data_blocks is None else self.data_blocks - self.start_step * global_batch

    def multiplier(self, name: str) -> dict[str, float]:
        return self.multipliers.get(name) or dict.fromkeys(MULTIPLIER_KEYS, 1.0)

    def record(self) -> dict[str, Any]:
        """What grow-state.json keeps (for --resume auto) and grow.json reports."""
        return {
            "start_step": self.start_step,
            "data_blocks": self.data_blocks,
            "restart_warmup_steps": self.restart_warmup_steps,
            "source": self.source,
            "max_lr": self.max_lr,
            "tokens": self.tokens,
        }


def plan_continuation(config, model_dir: Path, checkpoint_state: dict[str, Any] | None) -> Continuation | None:
    """The continuation of this run: from its own checkpoint when resuming one, from the grown state with
    `--resume grown`, a bare schedule offset with `--schedule-offset N`, else None (a run from step 0)."""
    recorded = (checkpoint_state or {}).get("continuation")
    if checkpoint_state is not None:
        check_same_start(config, recorded)
    if recorded:
        return Continuation(
            start_step=recorded["start_step"],
            data_blocks=recorded["data_blocks"],
            restart_warmup_steps=recorded.get("restart_warmup_steps", 0),
            multipliers=(checkpoint_state or {}).get("multipliers") or {},
            source=recorded.get("source"),
            max_lr=recorded.get("max_lr"),
            tokens=recorded.get("tokens", 0),  # an earlier grow's checkpoints counted this run's tokens alone
        )
    if config.resume == "grown":
        return from_grown_state(Path(model_dir) / STATE_DIR, config)
    if config.schedule_offset == "auto":
        raise UsageError(
            "--schedule-offset auto reads the restart step a grown training state suggests; add --resume grown"
        )
    if config.schedule_offset or config.restart_warmup_steps:
        return Continuation(int(config.schedule_offset or 0), None, config.restart_warmup_steps)
    return None


def check_same_start(config, recorded: dict[str, Any] | None) -> None:
    """Refuse a resume whose --schedule-offset or --restart-warmup-steps is not the checkpoint's (`recorded`, its
    continuation; None: a run from step 0 without a restart warmup): loading the checkpoint restores the schedule it
    was saved with, so another value would be recorded nowhere and never used. Left out, they take the checkpoint's."""
    start = recorded["start_step"] if recorded else 0
    warmup = recorded.get("restart_warmup_steps", 0) if recorded else 0
    if isinstance(config.schedule_offset, int) and config.schedule_offset != start:
        raise UsageError(
            f"--schedule-offset {config.schedule_offset}: the checkpoint being resumed started at step {start}; "
            "resume with the original settings"
        )
    if config.restart_warmup_steps and config.restart_warmup_steps != warmup:
        held = f"a {warmup}-step restart warmup" if warmup else "no restart warmup"
        raise UsageError(
            f"--restart-warmup-steps {config.restart_warmup_steps}: the checkpoint being resumed has {held}; resume "
            "with the original settings"
        )


def read_state(folder: Path) -> dict[str, Any]:
    """state.json of a grown training state, checked against `SHAPE`; a folder without one, or one damaged, is one
    clear error."""
    path = folder / STATE_FILE
    if not path.exists():
        raise UsageError(
            f"--resume grown: {folder.parent} has no grown training state ({STATE_DIR}/{STATE_FILE}); grow expand "
            "writes one when SRC is a train-stage checkpoint or an output trained with --save-final-state. Drop "
            "--resume grown to start a fresh optimizer"
        )
    try:
        state = read_checked(path, SHAPE)
        if state["format"] != FORMAT:
            raise Unfit(f"format is {json.dumps(state['format'])[:40]}, not {json.dumps(FORMAT)}")
        if unstepped := next(
            (n for n, p in state["parameters"].items() if carries_moments(p) and p.get("step") is None), None
        ):
            raise Unfit(f"parameters[{json.dumps(unstepped)}] carries moments but no step")
    except Unfit as exc:
        raise CheckpointError(
            f"{path} is damaged ({exc}); grow the model again from its checkpoint (grow expand) to write the state "
            "anew, or drop --resume grown to start a fresh optimizer"
        ) from None
    return state


def carries_moments(parameter: dict[str, Any]) -> bool:
    """Whether a tensor of state.json carries the source's moments (`moments` "carried", or "carried; off-diagonal
    blocks fresh"); otherwise its optimizer state starts at zero."""
    return parameter["moments"].startswith("carried")


def from_grown_state(folder: Path, config) -> Continuation:
    state = read_state(folder)
    step = state["step"]
    suggested = state["restart"]["suggested_step"]
    offset = config.schedule_offset
    start = suggested if offset == "auto" else step if offset is None else int(offset)
    if start > step:
        raise UsageError(
            f"--schedule-offset {start} lies beyond the grown state's step {step}: the restart step R is where the "
            f"schedule resumes, at most the step grown from (staged training's rule suggests {suggested})"
        )
    source = {
        "state": str(folder),
        "step": step,
        "tokens": state.get("tokens"),
        "loss_at_growth": state.get("loss_at_growth"),
        "suggested_restart_step": suggested,
        "restart_rule": state["restart"].get("rule"),
        "exact_dynamics": (state.get("dynamics") or {}).get("exact"),
        "run": (state.get("source") or {}).get("run"),
    }
    multipliers = {name: {k: float(p[k]) for k in MULTIPLIER_KEYS} for name, p in state["parameters"].items()}
    max_lr = ((state.get("source") or {}).get("optimizer") or {}).get("max_lr")
    return Continuation(
        start_step=start,
        data_blocks=state.get("data_blocks") or 0,
        restart_warmup_steps=config.restart_warmup_steps,
        multipliers=multipliers,
        source=source,
        load_from=folder,
        max_lr=None if max_lr is None else float(max_lr),
        tokens=state.get("tokens") or 0,
    )


def differences(state_folder: Path, config, this_run: dict[str, Any]) -> list[str]:
    """Settings in which this run differs from the source run it continues: notes, since each one means the grown
    model follows its own dynamics rather than the source's (a legitimate choice, e.g. a larger batch). `this_run`
    holds this run's keys (`build.run_keys`), its `mixed_precision`, its peak LR (`max_lr`: a number given that
    is not the source's scales every step the moments were made for) and its `schedule` (its warmup and LR floor
    move every later step's LR; the horizon is this run's own budget, which the docs let stretch it); a setting the
    source did not record (a state grown by an earlier grow) is not compared."""
    state = read_state(state_folder)
    run = (state.get("source") or {}).get("run") or {}
    optimizer = (state.get("source") or {}).get("optimizer") or {}
    schedule = run.get("schedule") or {}
    ours = {
        "seq_len": config.seq_len,
        "global_batch": this_run["global_batch"],
        "seed": config.seed,
        "schedule": config.schedule,
        "warmup_steps": this_run["schedule"].warmup_steps,
        "min_lr_ratio": this_run["schedule"].min_lr_ratio,
        "max_lr": this_run["max_lr"],
        "betas": [config.beta1, config.beta2],
        "eps": config.eps,
        "weight_decay": config.weight_decay,
        "grad_clip": config.grad_clip,
        "mixed_precision": this_run["mixed_precision"],
        **objective_settings(this_run["objective"]),
    }
    theirs = {
        "seq_len": run.get("seq_len"),
        "global_batch": run.get("global_batch"),
        "seed": run.get("seed"),
        "schedule": schedule.get("name"),
        "warmup_steps": schedule.get("warmup_steps"),
        "min_lr_ratio": schedule.get("min_lr_ratio"),
        "max_lr": optimizer.get("max_lr"),
        "betas": optimizer.get("betas"),
        "eps": optimizer.get("eps"),
        "weight_decay": optimizer.get("weight_decay"),
        "grad_clip": optimizer.get("grad_clip"),
        "mixed_precision": run.get("mixed_precision"),
        **objective_settings(run.get("objective")),
    }
    return [
        f"the grown state's run had {key} {theirs.get(key)!r}, this run {ours[key]!r}"
        for key in ours
        if theirs.get(key) is not None and theirs[key] != ours[key]
    ]


def objective_settings(objective: dict[str, Any] | None) -> dict[str, Any]:
    """An objective as the run keys record it (`Objective.describe`), setting by setting: its name, document masking
    (recorded only when on) and a masked LM's masking rule (its `keep_prob` follows from the other shares; a causal
    LM has none, and another objective is one note, not one per share)."""
    if objective is None:
        return {}
    settings = {"objective": objective["name"], "document_masking": bool(objective.get("document_masking"))}
    return settings | {name: objective[name] for name in MASKING if name in objective}


def check_whole_state(config, continuation: Continuation | None, engine: str | None) -> None:
    """Refuse, before the model loads, a run that would read or leave a training state that FSDP or DeepSpeed
    (`engine`; None for one process or DDP) shard: grow grows and loads the AdamW state whole (accelerate's
    `optimizer.bin`), and a sharded save is only found unusable when `grow expand` reads it, after the run."""
    if engine is None:
        return
    if continuation is not None and continuation.load_from is not None:
        raise UsageError(
            f"--resume grown loads the grown optimizer state whole, which {engine} would shard; run it on one "
            "process or with DDP"
        )
    if config.save_final_state:
        raise UsageError(
            f"--save-final-state leaves the optimizer state for grow expand to grow, which reads it whole; {engine} "
            "saves it sharded. Leave out --save-final-state (grow expand then grows the final model's weights), or "
            "train on one process or with DDP"
        )


def load_grown_state(
    optimizer, names: list[str], model, continuation: Continuation, config, this_run: dict[str, Any]
) -> list[str]:
    """Load the grown AdamW state into `optimizer` before accelerate prepares it (`--resume grown`; one process or
    DDP, `check_whole_state`); return the notes for the user: how this run differs from the source's, and what was
    carried."""
    assert continuation.load_from is not None
    notes = [
        f"note: {difference}: the run continues the state, not the source's exact dynamics"
        for difference in differences(continuation.load_from, config, this_run)
    ]
    carried = load_moments(optimizer, names, model, continuation.load_from)
    step = (continuation.source or {}).get("step")
    notes.append(
        f"continuing the grown training state of step {step} at step {continuation.start_step} "
        f"({counted(carried, 'tensor')} with carried moments, {len(names) - carried} fresh)"
    )
    return notes


def load_moments(optimizer, names: list[str], model, folder: Path) -> int:
    """Put the grown moments and steps of `folder` into `optimizer` (before accelerate prepares it); `names` are
    the parameters in the optimizer's index order. Returns how many tensors carried a state."""
    import torch

    from grow_cli.checkpoint.reader import CheckpointReader

    state = read_state(folder)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(state["parameters"]))
    if missing:
        raise CheckpointError(
            f"{folder / STATE_FILE} does not cover parameter {missing[0]} of the model: the state belongs to another "
            "model; grow it again from the same source"
        )
    known = {name for name, _ in model.named_parameters(remove_duplicate=False)}  # a tied head under both names
    extra = sorted(set(state["parameters"]) - known)
    if extra:
        raise CheckpointError(
            f"{folder / STATE_FILE} holds parameter {extra[0]}, which the model does not have: the model was changed "
            "after growth (its config.json?); grow it again from the same source"
        )
    optimizer_state = optimizer.state_dict()
    carried = 0
    try:
        reader = CheckpointReader(folder)
    except CheckpointError as exc:  # it names the file alone: model.safetensors reads as the model's own weights
        raise CheckpointError(f"the grown training state in {folder}: {exc}") from None
    with reader:
        for index, name in enumerate(names):
            entry = state["parameters"][name]
            if not carries_moments(entry):
                continue
            moments = {key: reader.read(f"{name}.{key}") for key in ("exp_avg", "exp_avg_sq")}
            for key, tensor in moments.items():
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise CheckpointError(
                        f"{folder}: {name}.{key} has shape {list(tensor.shape)} but the parameter has "
                        f"{list(params[name].shape)}; grow the state again from the same source"
                    )
            optimizer_state["state"][index] = {"step": torch.tensor(float(entry["step"])), **moments}
            carried += 1
    optimizer.load_state_dict(optimizer_state)
    return carried
