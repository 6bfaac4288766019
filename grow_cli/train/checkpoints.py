"""Training checkpoints: `accelerator.save_state` folders under `OUT/checkpoints/step_NNNNNNNN`, keep-last-K (and
the newest one a finite loss vouched for, `vouched_for`).

accelerate saves the model, the optimizer, the LR scheduler, the gradient scaler and every process's RNG states
(and shards them under FSDP/DeepSpeed). grow adds `grow-state.json`, written last: the step (which is the data
position, see `batches.py`), the tokens seen, what must not change across a resume (data fingerprint, sequence
length, global batch) and the mixed precision, which may (with a note: `precision_change`). A folder without it is
an interrupted save and is never resumed from; a folder with a damaged file is named and skipped (`--resume auto`)
or refused (`--resume PATH`), never loaded half-way.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.files import CHECKPOINT_NAME, CHECKPOINTS_DIR, checkpoint_name
from grow_cli.checkpoint.header import read_safetensors_header
from grow_cli.checkpoint.output import removed_unless_written
from grow_cli.checkpoint.torch_files import (
    SHARDED_INDEX,
    TORCH_FILE_SUFFIXES,
    damaged_sharded_state,
    damaged_torch_file,
)
from grow_cli.errors import CheckpointError, UsageError, counted, one_line
from grow_cli.train.checkpoint_state import FILES_KEY, STATE_FILE, load_state, saved
from grow_cli.whole_file import write_whole

# What a resume must match for the run to continue exactly where it stopped.
RESUME_KEYS = (
    "model_weights",
    "data_fingerprint",
    "seq_len",
    "eval_fraction",
    "global_batch",
    "max_steps",
    "seed",
    "train_only",
    "num_processes",
    "start_step",
    "data_offset",
    "objective",
    "apollo",
    "engine",
)


class EveryCheckpointDamaged(CheckpointError):
    """`--resume auto` found no whole checkpoint to continue from, only damaged ones (`what` names the newest's damaged
    file); `advice` says how to start again, in the terms of the command that resumed (`grow family` has its own)."""

    def __init__(self, what: str, advice: str):
        super().__init__(f"{what}; {advice}")
        self.what = what


def checkpoint_root(out: Path) -> Path:
    return Path(out) / CHECKPOINTS_DIR


def _step_folders(out: Path) -> list[Path]:
    """The folders in `out` named as grow names a checkpoint (`step_NNNNNNNN`), finished or not, oldest first."""
    root = checkpoint_root(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name))


def complete_checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints in `out`, oldest first."""
    return [p for p in _step_folders(out) if saved(p)]


def _step(checkpoint: Path) -> int:
    """The step of a checkpoint folder, `step_NNNNNNNN`."""
    return int(checkpoint.name.removeprefix("step_"))


def vouched_for(out: Path, unvouched_step: int) -> list[Path]:
    """The finished checkpoints in `out` whose weights a finite loss vouched for, oldest first, when no finite loss
    has come from the weights after step `unvouched_step` (they diverged, or no step has used them yet).

    Step S's training loss is computed with the weights of step S-1, before update S, so no loss up to step S
    vouches for the weights saved at step S: update S may have made them non-finite. A checkpoint of step S is good
    once a loss computed from its weights was finite — step S+1's training loss, or an evaluation after step S. The
    losses are checked in step order, so every checkpoint before `unvouched_step` is good. The one of that step stays
    unvouched even after a finite evaluation: should its next training loss not be finite, the run diverged from its
    weights, and an older checkpoint is the one to name (diverged.py).
    """
    return [path for path in complete_checkpoints(out) if _step(path) < unvouched_step]


def _missing_file(path: Path, state: dict[str, Any], needed: Collection[str] | None) -> tuple[Path, str] | None:
    """The file of checkpoint `path` that its grow-state.json lists but the folder lacks or holds cut, and why; None
    when they agree. Only the files named in `needed` count, when given."""
    files = state.get(FILES_KEY, {})  # absent from the checkpoints of an earlier grow
    for name, size in files.items():
        file = path / name
        if needed is not None and name not in needed:
            continue
        if not file.is_file():
            return file, "missing"
        if file.stat().st_size != size:
            return file, f"{file.stat().st_size:,} bytes where {size:,} were saved"
    return None


def damage_in(path: Path, needed: Collection[str] | None = None) -> str | None:
    """The first damaged file of checkpoint `path`, as a phrase naming it, or None when the checkpoint is whole.

    Checked without loading anything: grow-state.json is what grow writes (`checkpoint_state.load_state`), and
    every file it lists is there at the size it was saved with (a file deleted or cut by hand); every
    safetensors file passes the strict header check (which catches truncation), every torch file is a complete
    zip archive. With `needed` (file names relative to the checkpoint), only grow-state.json and those files count:
    growing a checkpoint's weights only needs no optimizer state.
    """
    path = Path(path)
    try:
        state = load_state(path)
    except CheckpointError as exc:
        return str(exc)
    found = _missing_file(path, state, needed)
    if found is not None:
        return f"{found[0]} is damaged ({found[1]})"
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if needed is not None and str(file.relative_to(path)) not in needed:
            continue
        why = None
        if file.suffix == ".safetensors":
            try:
                read_safetensors_header(file)
            except CheckpointError as exc:
                why = str(exc).removeprefix(f"{file.name} ").removeprefix("is ").split("; ")[0]
        elif file.suffix in TORCH_FILE_SUFFIXES:
            why = damaged_torch_file(file)
        elif file.name == SHARDED_INDEX:
            found = damaged_sharded_state(file.parent)
            file, why = found if found is not None else (file, None)
        if why is not None:
            return f"{file} is damaged ({why})"
    return None


def resolve_resume(resume: str | None, out: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from, and notes for the user.

    `--resume auto` takes the newest whole checkpoint in `out` (or none: a fresh start); a damaged newer one is
    skipped with a note naming its damaged file. An explicit damaged checkpoint is refused, naming the file and
    the previous whole checkpoint to resume from instead.
    """
    if resume is None:
        return None, []
    if resume == "auto":
        notes: list[str] = []
        for candidate in reversed(complete_checkpoints(out)):
            damage = damage_in(candidate)
            if damage is None:
                return candidate, notes
            notes.append(f"{damage}; skipping {candidate.name}")
        if notes:
            what = f"every checkpoint in {checkpoint_root(out)} is damaged (newest: {notes[0].removesuffix(';')})"
            raise EveryCheckpointDamaged(what, "start again with --overwrite")
        return None, []
    path = Path(resume)
    if not saved(path):
        raise UsageError(f"--resume {path}: not a finished grow checkpoint (no {STATE_FILE})")
    damage = damage_in(path)
    if damage is not None:
        older = previous_whole(path)
        instead = f"resume from the previous whole one with --resume {older}" if older else "start again"
        raise CheckpointError(f"--resume {path}: {damage}; {instead}")
    return path, []


def previous_whole(checkpoint: Path) -> Path | None:
    """The newest whole checkpoint of the run before `checkpoint`, or None."""
    root = checkpoint.parent.parent
    older = [p for p in complete_checkpoints(root) if p.name < checkpoint.name and damage_in(p) is None]
    return older[-1] if older else None


def earlier_checkpoint_advice(checkpoint: Path, out: Path) -> str:
    """What to do instead of resuming from `checkpoint`, whose state diverged: resume from the whole one before it
    (with --overwrite, which removes the newer ones, where it is one of `out`'s own), or start again."""
    older = previous_whole(checkpoint)
    if older is None:
        return "no earlier checkpoint is left: start again with --overwrite"
    if checkpoint_root(out).resolve() == older.parent.resolve():
        return f"resume from the one before it with --resume {older} --overwrite (which removes the newer checkpoints)"
    return f"resume from the one before it with --resume {older}"


def remove_unfinished(out: Path) -> list[str]:
    """Remove the checkpoint folders in `out` that a killed save left without grow-state.json (never resumed from,
    never pruned, so otherwise kept for good); returns their names. Only the process that holds `out` may call it."""
    unfinished = [p for p in _step_folders(out) if not saved(p)]
    for folder in unfinished:
        shutil.rmtree(folder)
    return [folder.name for folder in unfinished]


def save_checkpoint(accelerator, out: Path, state: dict[str, Any], keep_last: int) -> Path:
    """Save the full training state at `state['step']` on every process, once every loss up to that step was found
    finite; prune to the newest `keep_last` and the newest one a finite loss vouched for (`prune`)."""
    path = checkpoint_root(out) / checkpoint_name(state["step"])
    if accelerator.is_main_process and path.exists():
        _remove_checkpoint(path)  # a half-written save of this step from an interrupted run, or a damaged one
    accelerator.wait_for_everyone()
    with removed_unless_written(path, f"the checkpoint of step {state['step']}"):
        with _quiet_about_ties():
            accelerator.save_state(str(path))
        accelerator.wait_for_everyone()  # every process's files are written before they are listed
        if accelerator.is_main_process:
            files = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
            write_whole(path / STATE_FILE, json.dumps({**state, FILES_KEY: files}, indent=2) + "\n")
    if accelerator.is_main_process:
        prune(out, keep_last, state["step"])
    accelerator.wait_for_everyone()
    return path


def prune(out: Path, keep_last: int, saved_step: int) -> None:
    """Remove all but the newest `keep_last` checkpoints and the newest one a finite loss vouched for: the one just
    saved at `saved_step` is vouched for by no loss yet, and should the run diverge from its weights, the one before
    it is what diverged.py names to resume from. So `keep_last` 1 keeps two once a second checkpoint is saved; with
    2 or more, the one before the newest is among them anyway. A checkpoint after `saved_step` (a damaged one that
    `--resume auto` went past) is no part of this run yet: neither counted nor removed; the run overwrites it when it
    gets there."""
    checkpoints = [path for path in complete_checkpoints(out) if _step(path) <= saved_step]
    kept = {*checkpoints[-keep_last:], *vouched_for(out, saved_step)[-1:]}
    for old in checkpoints:
        if old not in kept:
            _remove_checkpoint(old)


def _remove_checkpoint(path: Path) -> None:
    """Remove checkpoint `path`, its grow-state.json first: a kill part-way leaves the remains of a save, which the
    next run removes (`remove_unfinished`), never a checkpoint that still says it is whole with files gone (rmtree
    goes in the order the folder lists its files, on some file systems the order they were written: the state file
    last)."""
    (path / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(path)


def _quiet_about_ties():
    """Drop accelerate's warning at every save of a tied model ("Removed shared tensor {'lm_head.weight'} while
    saving. This should be OK, but check…"): safetensors stores a storage once, and loading ties the head again. In
    grow's runs tensors share storage only through the config's ties, and a tied model resumes exactly (tested),
    so the line would only worry users, once per checkpoint."""
    from grow_cli.console import dropped_log_lines

    return dropped_log_lines("Removed shared tensor", "accelerate.utils.other")  # (after accelerate's "[RANK n] ")


def _made_before(key: str, expected: dict[str, Any]) -> bool:
    """A checkpoint of an earlier grow lacks the keys added since; it matches when this run does what every run
    did then: a causal LM (`objective`), without Apollo (`apollo`); its engine was not recorded (`engine`: loading
    it finds out), nor its eval fraction and model weights (`eval_fraction`, `model_weights`: not known, so not
    compared, as then)."""
    if key == "objective":
        return (expected.get("objective") or {}).get("name") == "causal"
    return key in ("engine", "eval_fraction", "model_weights") or (key == "apollo" and expected.get("apollo") is None)


def run_key_change(recorded: dict[str, Any], expected: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first of RESUME_KEYS on which a recorded run (a checkpoint, a finished run) and this one differ, with
    the recorded and the current value; None when this run is the recorded one. `expected` as JSON stores it."""
    expected = json.loads(json.dumps(expected))
    for key in RESUME_KEYS:
        if key not in recorded and _made_before(key, expected):
            continue
        if recorded.get(key) != expected.get(key):
            return key, recorded.get(key), expected.get(key)
    return None


def described_change(change: tuple[str, Any, Any], recorded: dict[str, Any], expected: dict[str, Any]) -> str:
    """How a recorded run (a checkpoint, a finished run) and this one differ, as a refusal says it: `made with
    KEY=WAS but this run has KEY=NOW`; the model by its folders, as a fingerprint of its weights tells the user
    nothing."""
    key, was, now = change
    if key == "model_weights":
        return (
            f"made from the model in {recorded.get('model') or 'another folder'} but this run's MODEL "
            f"{expected.get('model')} holds other weights"
        )
    return f"made with {key}={was!r} but this run has {key}={now!r}"


def precision_change(recorded: dict[str, Any], precision: str, fresh_scaler: bool) -> str | None:
    """How a checkpoint's mixed precision and this run's differ, as a note; None when they agree (or the checkpoint
    of an earlier grow did not record its own) and the run loads the checkpoint's gradient scaler, if it has one. Not
    a run key: the saved state (float32 weights and moments) loads under any precision, and a run may need another
    one where it resumes (a GPU without bf16), so the resume goes on — but its losses are no longer the ones the
    paused run would have had, and the docs promise those. `fresh_scaler`: `starts_fresh_scaler`."""
    from accelerate.utils import SCALER_NAME

    was = recorded.get("mixed_precision")
    changed = was is not None and was != precision
    if not changed and not fresh_scaler:
        return None
    if changed:
        made = f"the checkpoint was made with mixed_precision={was!r} but this run has mixed_precision={precision!r}"
    else:
        made = f"the checkpoint holds no gradient scaler ({SCALER_NAME}) but this {precision} run has one"
    scaler = " with a fresh gradient scaler, as a new fp16 run starts" if fresh_scaler else ""
    exactly = "no longer exactly as the paused run would have gone on"
    return f"{made}: it continues from the checkpoint's state{scaler}, {exactly}"


def starts_fresh_scaler(accelerator, path: Path) -> bool:
    """Whether this run has a gradient scaler (fp16 on a GPU) and checkpoint `path` holds none (it was saved in bf16
    or fp32, or in fp16 on a CPU, where accelerate uses none): accelerate's `load_state` would fail on the missing
    file, so the run keeps its new scaler (`load_checkpoint`). A checkpoint's scaler that this run has no use for
    (an fp16 one resumed in another precision) is left unread by accelerate itself."""
    from accelerate.utils import SCALER_NAME

    return accelerator.scaler is not None and not (Path(path) / SCALER_NAME).is_file()


def finished_run(out: Path) -> dict[str, Any] | None:
    """The grow.json stage of the run that finished in `out` — its model written, then grow.json, whose last stage
    is a train stage with the run key (`run_key`, written since grow records it) — or None."""
    from grow_cli.lineage.record import load_record

    record = load_record(out) if (Path(out) / "config.json").is_file() else None
    stage = record["stages"][-1] if record and record["stages"] else None
    if stage is None or stage.get("kind") != "train" or not isinstance(stage.get("run_key"), dict):
        return None
    return stage


def setting_change(recorded: dict[str, Any], settings: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first optimizer or schedule setting (max_lr, betas, the schedule's name, its warmup, …) on which a
    checkpoint and this run differ, with both values; None when they agree. Loading the checkpoint restores its
    optimizer's settings and its scheduler, so a changed value would be recorded in grow.json but never used. The
    gradient clip, which each step reads from this run, may change. `settings` as `Run.settings` gives them. The
    schedule's own name is named `schedule`, as --schedule sets it: the refusal said "made with name='cosine'"."""
    expected = json.loads(json.dumps(settings))
    for group in ("optimizer", "schedule"):
        was, now = recorded.get(group), expected[group]
        if not isinstance(was, dict):  # a checkpoint of a grow that recorded no settings
            continue
        for name in [*was, *(name for name in now if name not in was)]:
            if name != "grad_clip" and was.get(name) != now.get(name):
                return ("schedule" if (group, name) == ("schedule", "name") else name), was.get(name), now.get(name)
    return None


def load_checkpoint(accelerator, path: Path, expected: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Restore the training state from `path` after checking that it belongs to this run (its run keys, its
    optimizer's settings and schedule); return grow's state."""
    import pickle

    from safetensors import SafetensorError
    from torch.distributed.checkpoint.api import CheckpointException  # (a BaseException: FSDP's sharded state)

    state = load_state(path)
    change = run_key_change(state, expected) or setting_change(state, settings)
    if change is not None:
        raise UsageError(
            f"--resume {path}: the checkpoint was {described_change(change, state, expected)}; resume with the "
            "original settings"
        )
    try:
        with _scaler_left_fresh(accelerator, starts_fresh_scaler(accelerator, path)):
            accelerator.load_state(str(path))
    except (
        RuntimeError,
        ValueError,
        KeyError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
        SafetensorError,
        CheckpointException,
    ) as exc:
        cause: BaseException = exc
        if isinstance(exc, CheckpointException):  # each rank's own failure, wrapped with its stack
            cause = next((failure[0] for failure in exc.failures.values()), exc)
        detail = _weights_mismatch(str(cause)) or one_line(cause, 300)
        raise CheckpointError(
            f"cannot resume from {path}: its saved state does not load into this run ({detail}); resume it as it "
            "was made (the same model, with FSDP or without as then), or start again with --overwrite"
        ) from None
    return state


@contextlib.contextmanager
def _scaler_left_fresh(accelerator, fresh: bool):
    """With `fresh`, hide the accelerator's gradient scaler from `load_state`, which then loads everything else as
    it always does, and leaves the scaler as this run made it (`starts_fresh_scaler`)."""
    scaler = accelerator.scaler
    if fresh:
        accelerator.scaler = None
    try:
        yield
    finally:
        accelerator.scaler = scaler


def _weights_mismatch(message: str) -> str | None:
    """torch's `load_state_dict` refusal (every missing and unexpected name, then each size mismatch, hundreds of
    lines for a model of another size) as counts and a first example of each; None for any other message."""
    if "Error(s) in loading state_dict" not in message:
        return None
    parts = []
    for label, what in (
        ("Missing", "this model has {n} the checkpoint lacks"),
        ("Unexpected", "the checkpoint has {n} this model lacks"),
    ):
        found = re.search(label + r' key\(s\) in state_dict: ((?:"[^"]+"(?:, )?)+)', message)
        if found:
            names = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(what.format(n=counted(len(names), "tensor")) + f" ({names[0]}…)")
    sizes = re.findall(
        r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, the "
        r"shape in current model is torch\.Size\((\[[^\]]*\])\)",
        message,
    )
    if sizes:
        name, saved, here = sizes[0]
        parts.append(f"{counted(len(sizes), 'tensor')} of other shapes ({name}: {saved} saved, {here} here…)")
    return "its weights are another model's: " + "; ".join(parts) if parts else None
