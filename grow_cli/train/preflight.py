"""Step 1 of `grow train-stage`: every check that needs no weights and no tokenization, before anything is built.

What a user can get wrong about the data, the model folder, the tokenizer, `--train-only new`, the output folder (it
may not be the model folder, nor inside it), the checkpoint or grown training state to resume from (a damaged one
is named) and `--report-to` fails here, in one line, within a second — not after minutes of tokenization or
loading weights.
What the checks found (the data sources, the model's config, the tokenizer) is handed on to `build`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grow_cli.checkpoint.files import CHECKPOINTS_DIR, METRICS_FILE
from grow_cli.checkpoint.output import check_not_overlapping, previous_run_entries
from grow_cli.data.masking import MaskingRule, masking_rule
from grow_cli.data.masking_settings import NAMES as MASKING
from grow_cli.data.masking_settings import first_changed
from grow_cli.data.sources import Source, check_sources, data_paths, find_sources
from grow_cli.data.walk import walk
from grow_cli.errors import OptionError, OutputError, UsageError
from grow_cli.field_types import flag
from grow_cli.lineage.record import load_record
from grow_cli.train.apollo_plan import ApolloPlan, plan_apollo
from grow_cli.train.attention import check_attention
from grow_cli.train.checkpoint_state import load_state
from grow_cli.train.checkpoints import (
    checkpoint_root,
    complete_checkpoints,
    damage_in,
    finished_run,
    resolve_resume,
)
from grow_cli.train.config import TrainConfig
from grow_cli.train.continuation import Continuation, plan_continuation
from grow_cli.train.freeze import added_tensors
from grow_cli.train.model_io import (
    MODEL_STAGING,
    check_seq_len,
    check_weights,
    load_model_config,
    load_tokenizer,
    model_class,
)
from grow_cli.train.objective import Choice, choose_objective

KILLED_RUN_REMAINS = {METRICS_FILE, CHECKPOINTS_DIR, MODEL_STAGING}  # what a run writes before its first checkpoint


@dataclass
class Checked:
    """What preflight read: the data sources, the model config, the tokenizer, what to train and where to resume."""

    sources: list[Source]
    model_config: Any  # a transformers PretrainedConfig
    tokenizer: Any  # a transformers tokenizer
    eos_id: int  # the id placed between documents
    trainable_names: list[str] | None  # --train-only new: the tensors grow added; None: train all
    resume_from: Path | None  # the checkpoint to continue from; None: a fresh start
    notes: list[str]  # for the user, e.g. a damaged newer checkpoint skipped by --resume auto
    objective: Choice  # causal or masked LM, decided from the architecture and --objective
    masking: MaskingRule | None  # how a masked LM's blocks are corrupted
    apollo: ApolloPlan | None  # Apollo's depth sampling and stages; None: plain training
    continuation: Continuation | None = None  # a run that continues another: --resume grown, --schedule-offset
    finished: dict[str, Any] | None = None  # --resume auto: the grow.json stage of a run finished in --out
    replaced: list[Path] = field(default_factory=list)  # what --overwrite removes from --out before the first step


def preflight(config: TrainConfig) -> Checked:
    """Check the data, the model folder, the objective, --attn-implementation, the tokenizer, Apollo, --train-only,
    --out/--resume and --report-to."""
    model, out, data = Path(config.model), Path(config.out), data_paths(config.data)  # as TrainConfig holds them
    sources = find_sources(data)
    check_sources(sources, config.text_field, config.token_dtype)
    model_config = load_model_config(model)
    check_weights(model)
    load_record(model)  # its stages begin the output's grow.json: a damaged one is named now, not after training
    check_seq_len(model_config, config.seq_len)
    objective = choose_objective(model_config, config.objective)
    check_attention(model_config, model_class(objective), config.attn_implementation)
    tokenizer, eos_id = load_tokenizer(Path(config.tokenizer or model), model_config)
    masking = None
    if objective.name == "causal":
        check_no_masking_options(config)
    elif config.document_masking:
        raise UsageError(
            "--document-masking applies to causal-LM training; a masked LM sees its whole block in both directions "
            "(see --objective)"
        )
    else:
        masking = masking_rule(tokenizer, **{name: getattr(config, name) for name in MASKING})
    apollo = plan_apollo(config, model_config)
    trainable_names = added_tensors(model) if config.train_only == "new" else None
    check_not_overlapping(out, model)  # --overwrite would otherwise delete the model being trained
    check_data_outside(out, data, sources)
    check_cache_outside(config.cache_dir, data)
    check_cache_apart(config.cache_dir, out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder")
    notes: list[str]
    if config.resume == "grown":
        if complete_checkpoints(out) and not config.overwrite:
            raise OutputError(
                f"{out} already holds checkpoints of a run under way; continue it with --resume auto, or start "
                "again with --overwrite"
            )
        resume_from, notes = None, []
    else:
        resume_from, notes = resolve_resume(None if config.resume is None else os.fspath(config.resume), out)
    finished = finished_run(out) if config.resume == "auto" else None  # build compares it with this run
    own = resume_from is not None and resume_from.resolve().parent == checkpoint_root(out).resolve()
    if not own and out.exists() and any(out.iterdir()) and not config.overwrite and finished is None:
        if config.resume in ("auto", "grown") and killed_before_first_checkpoint(out):
            notes.append(
                f"--resume {config.resume}: {out} holds no checkpoint yet, only what a run killed before its first "
                "one left; starting again"
            )
        elif config.resume == "auto":  # e.g. a run killed while writing its model, or someone else's files
            raise OutputError(
                f"--resume auto: {out} holds no checkpoint to continue from, but is not empty; pass --overwrite "
                "to start again, or another --out"
            )
        elif resume_from is not None:  # another folder's checkpoint: a run of its own, new to --out
            raise OutputError(
                f"--resume {resume_from}: the checkpoint is not one of {out}'s, and {out} is not empty; continue "
                f"{out}'s own run with --resume auto, pass --overwrite to replace what it holds with this run, or "
                "give an empty --out"
            )
        else:
            raise OutputError(
                f"{out} exists and is not empty; pass --resume auto to continue it, --overwrite to "
                "start again, or another --out"
            )
    replaced = replaced_in_out(config, out, resume_from if own else None)
    checkpoint_state = load_state(resume_from) if resume_from else None
    continuation = plan_continuation(config, model, checkpoint_state)
    check_trackers(config.report_to)
    return Checked(
        sources,
        model_config,
        tokenizer,
        eos_id,
        trainable_names,
        resume_from,
        notes,
        objective,
        masking,
        apollo,
        continuation,
        finished,
        replaced,
    )


def check_data_outside(out: Path, data: list[str], sources: list[Source]) -> None:
    """Refuse an --out that is or directly holds a data file (the run writes README.md, config.json and
    metrics.jsonl there, and --overwrite removes `.bin` token files and checkpoints), or that lies in a --data folder
    (what the run writes there would become the next run's training text)."""
    out = out.expanduser().resolve()
    for source in sources:
        path = source.path.expanduser().resolve()
        if path == out or path.parent == out or out / CHECKPOINTS_DIR in path.parents:
            raise OutputError(
                f"--out {out} holds the training data {path}, which the run's own files would replace; choose an "
                "--out outside the data"
            )
    folder = data_folder_holding(out, data)
    if folder is not None:
        raise OutputError(f"--out {out} lies inside the --data folder {folder}; choose an --out outside the data")


def data_folder_holding(path: Path, data: list[str]) -> Path | None:
    """The --data folder that is `path` (resolved) or holds it — or a folder in one that links to where `path` is, as
    the data's walk follows links (`data/walk.py`) — or None."""
    for arg in data:
        folder = Path(arg).expanduser().resolve()
        if not folder.is_dir():
            continue
        for root, _, _ in walk(folder, arg):  # (the first is `folder` itself)
            real = Path(os.path.realpath(root))
            if real == path or real in path.parents:
                return root
    return None


def check_cache_outside(cache_dir: str | os.PathLike[str] | None, data: list[str]) -> None:
    """Refuse a --cache-dir that is or lies in a --data folder: the token files written there would be read as
    training data by the next run of the same command (its `--resume auto` included), which then fails on them."""
    if cache_dir is None:
        return
    cache = Path(cache_dir).expanduser().resolve()
    folder = data_folder_holding(cache, data)
    if folder is not None:
        raise OutputError(
            f"--cache-dir {cache} lies inside the --data folder {folder}: its token files would be read as data by "
            "the next run; choose a --cache-dir outside the data"
        )


def check_cache_apart(cache_dir: str | os.PathLike[str] | None, out: Path) -> None:
    """Refuse a --cache-dir that is or lies in --out: its token files would sit among the model's files (and go to
    the Hub with them on a push of the folder), and --overwrite, which empties the output, took part of the cache
    with it (its .bin files, leaving their .json)."""
    if cache_dir is None:
        return
    cache, out = Path(cache_dir).expanduser().resolve(), out.expanduser().resolve()
    if cache.is_relative_to(out):
        raise OutputError(
            f"--cache-dir {cache} lies inside --out {out}: its token files would be mixed with the model's; choose "
            "a --cache-dir outside the output (by default it is .grow-cache beside it)"
        )


def killed_before_first_checkpoint(out: Path) -> bool:
    """Whether `out` holds nothing but what a run killed before its first whole checkpoint leaves (its metrics, a
    half-saved checkpoint, the final model's staging folder): a job restarted with --resume auto (or --resume grown,
    which has no checkpoint to continue before its first) after such a kill starts again instead of being refused;
    the new run rewrites or removes each of them."""
    return all(entry.name in KILLED_RUN_REMAINS for entry in out.iterdir())


def replaced_in_out(config: TrainConfig, out: Path, own_checkpoint: Path | None) -> list[Path]:
    """What the run removes from `out` before its first step. A fresh start with --overwrite, or a checkpoint of
    another folder continued here with it, removes an earlier run's files (`previous_run_entries`). A checkpoint of
    `out`'s own run given by path (`own_checkpoint`) replaces what continuing from it abandons: refused unless
    --overwrite, which then removes it."""
    if own_checkpoint is None:
        return previous_run_entries(out) if config.overwrite else []
    if config.resume == "auto":  # the newest whole checkpoint, of a run that has not finished: nothing abandoned
        return []
    model, newer = abandoned_by(own_checkpoint, out)
    if (model or newer) and not config.overwrite:
        raise OutputError(abandoning(own_checkpoint, out, model, newer))
    return [*model, *newer]


def abandoning(checkpoint: Path, out: Path, model: list[Path], newer: list[Path]) -> str:
    """The refusal of `--resume PATH` to `out`'s own checkpoint where continuing from it abandons the finished
    run's `model` or `newer` checkpoints, with what to do instead."""
    held = ["the finished run's model"] if model else []
    if newer:
        held.append(f"newer checkpoints of its run ({', '.join(p.name for p in newer)})")
    if model:
        advice = (
            f"to train that model on, give {out} as the MODEL of a new stage with another --out; to train again "
            f"from {checkpoint.name}, pass --overwrite"
        )
    else:
        advice = "continue from the newest with --resume auto, or pass --overwrite to remove them and continue here"
    return (
        f"--resume {checkpoint}: {out} holds {' and '.join(held)}, which continuing from {checkpoint.name} would "
        f"replace; {advice}"
    )


def abandoned_by(checkpoint: Path, out: Path) -> tuple[list[Path], list[Path]]:
    """What continuing from `checkpoint`, one of `out`'s own, abandons: the model a finished run wrote in `out` (its
    grow.json and card would describe a run that the retraining replaces, and a kill part-way would leave them
    beside metrics cut back to the checkpoint, where `--resume auto` would find the run finished); and the newer
    whole checkpoints (after a kill, `--resume auto` would take one of them, and metrics.jsonl would skip the steps
    in between). A newer damaged one is left as it is: `--resume auto` never takes it."""
    model = [
        entry
        for entry in previous_run_entries(out)
        if entry.parent == out and entry.name not in (CHECKPOINTS_DIR, METRICS_FILE)  # (not a step folder)
    ]
    newer = [p for p in complete_checkpoints(out) if p.name > checkpoint.name and damage_in(p) is None]
    return model, newer


def check_no_masking_options(config: TrainConfig) -> None:
    """Refuse masking options on a run that trains a causal LM, set away from their defaults or named at them
    (`config.given`): they would silently do nothing."""
    given = first_changed({name: getattr(config, name) for name in MASKING})
    given = given or next((name for name in MASKING if name in config.given), None)
    if given:
        raise OptionError(
            given,
            f"{flag(given)} applies to masked-LM training, but this model trains as a causal LM (see --objective)",
        )


def check_trackers(report_to: list[str]) -> None:
    """Refuse a `--report-to` name that is no tracker accelerate knows, or a tracker it cannot find installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    unknown = [name for name in report_to if name not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        raise OptionError(
            "report_to",
            f"--report-to {', '.join(unknown)}: not a tracker accelerate knows (one of "
            f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))})",
        )
    available = {str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()}
    missing = [name for name in report_to if name not in available]
    if missing:
        raise UsageError(
            f"--report-to {', '.join(missing)}: not installed here (available: "
            f"{', '.join(sorted(available)) or 'none'}); pip install {' '.join(missing)}, or drop it from --report-to"
        )
