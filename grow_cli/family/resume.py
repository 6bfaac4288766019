"""What a re-run of a model family finds in its output folder, and whether it may go on from there.

A family run records, before it makes anything, that it took OUT (`OUT_FILE`) and, per member, the settings that
decide the member and which making of the previous member it starts from (`START_FILE`); it writes the member's
summary last (`MEMBER_FILE`: "finished"). A re-run compares them with the recipe and with the members as they are
now (`check_finished`): a finished or started member whose settings were edited since, whose model is gone, or whose
predecessor is gone or was made again since, is refused in one line naming it, rather than skipped, resumed from a
stale `grown/`, or replaced without being asked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from grow_cli.errors import CheckpointError, UsageError
from grow_cli.family.recipe import Member, Recipe
from grow_cli.json_shape import (
    COUNT,
    FLAG,
    OBJECT,
    POSITIVE,
    REAL,
    TEXT,
    Required,
    Unfit,
    count_up_to,
    maybe,
    read_checked,
)
from grow_cli.limits import MAX_SEED
from grow_cli.lineage.record import SHAPE as RECORD_SHAPE

MEMBER_FILE = "member.json"
START_FILE = "start.json"
OUT_FILE = ".grow-family.json"  # in OUT: a family run took the folder (written before its first member starts)
# Training settings that change how a run goes (where it caches, when it pauses or logs), not the model it makes.
NOT_DECIDING = ("cache_dir", "exit_interval", "log_every", "report_to", "save_every", "keep_last", "quiet")

# What grow reads of start.json and member.json (json_shape.py): the settings `member_settings` records, which a
# re-run compares with the recipe's; and of a finished member, what the re-run and the report take from its summary
# (`run._run_members` writes it) — its models, its training's tokens, its comparisons and its grow.json.
SETTINGS = {
    **dict.fromkeys(("grown_from", "source", "revision", "tokenizer", "optimizer"), maybe(TEXT)),
    **dict.fromkeys(("config", "grow", "train"), maybe(OBJECT)),
    "seed": maybe(count_up_to(MAX_SEED)),
}
START_SHAPE = {**SETTINGS, "previous_model": maybe(TEXT)}
COMPARISON = {
    **dict.fromkeys(("kl_a_b", "kl_b_a", "js", "top1_agreement"), REAL),  # NaN where a model diverged
    "data_fingerprint": TEXT,
    "seq_len": POSITIVE,
    "blocks": COUNT,
}
MEMBER_SHAPE = {
    "name": Required(TEXT),
    "final": Required(TEXT),
    "grown": FLAG,
    "optimizer": maybe(TEXT),
    "train": maybe({"tokens": maybe(COUNT)}),
    "compare_with_previous": maybe(COMPARISON),
    "baseline": maybe({"out": Required(TEXT), "compare_with_previous": maybe(COMPARISON)}),
    "record": maybe(RECORD_SHAPE),
    "settings": maybe(SETTINGS),
    "previous_model": maybe(TEXT),
    "commit": maybe(TEXT),  # the commit the first member's Hub source resolved to
    "in_out": maybe(dict.fromkeys(("final", "baseline"), maybe(TEXT))),
}


def member_settings(recipe: Recipe, member: Member) -> dict[str, Any]:
    """What in the recipe decides `member`'s model, as member.json records it (JSON values)."""
    train = recipe.train_settings(member)
    index = recipe.members.index(member)
    settings = {
        "grown_from": recipe.members[index - 1].name if index else None,  # a removed or reordered member shows
        "source": member.source,
        "revision": member.revision,
        "config": member.config,
        "tokenizer": member.tokenizer,
        "seed": None if member.source else recipe.seed,  # a fresh model's initialisation, a growth's randomness
        "grow": member.grow,
        "optimizer": recipe.optimizer_of(member),
        "train": {k: v for k, v in train.items() if k not in NOT_DECIDING} if train else None,
    }
    return json.loads(json.dumps(settings, default=str))


def _known(defaults: dict[str, Any]) -> dict[str, Any]:
    """A dataclass's `DEFAULTS` table without the fields it has none for, as JSON values (as member.json holds
    them)."""
    import dataclasses

    return json.loads(json.dumps({k: v for k, v in defaults.items() if v is not dataclasses.MISSING}, default=str))


def _effective(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` (as `member_settings` makes them, recorded or now) with every `grow:` and `train:` key the recipe
    leaves out at the value its absence gives (`schedule: cosine`; a growth's `seed`, the recipe's): spelling a default
    out, or deleting it, changes nothing the member is made with, so it is no edit."""
    from grow_cli.data.sources import TEXT_FIELD
    from grow_cli.growth.spec import DEFAULTS as GROW_DEFAULTS
    from grow_cli.train.config import DEFAULTS as TRAIN_DEFAULTS

    grow_defaults = {**_known(GROW_DEFAULTS), "seed": settings.get("seed")}  # a growth's seed defaults to the recipe's
    train_defaults = {k: v for k, v in _known(TRAIN_DEFAULTS).items() if k not in NOT_DECIDING}
    train_defaults["text_field"] = TEXT_FIELD  # the field read where none is given (None)
    effective = dict(settings)
    for block, defaults in (("grow", grow_defaults), ("train", train_defaults)):
        if isinstance(settings.get(block), dict):
            effective[block] = {**defaults, **settings[block]}
    return effective


def _first_change(
    recorded: dict[str, Any] | None, current: dict[str, Any], commit: str | None = None
) -> tuple[str, Any, Any] | None:
    """The first setting (as `train.max_steps` within a block) that differs, with its old and new value; None when
    they agree or nothing was recorded (a member.json of an earlier grow). A default spelt out is no change, and
    neither is a `revision` that names `commit`, the commit the source resolved to when the member was made: pinning
    it changes nothing the member was made from. (The reverse, a pinned commit removed, is an edit: what the branch
    resolves to now is on the Hub, and the check asks it nothing.)"""
    if recorded is None:
        return None
    if commit is not None and current["revision"] == commit:
        current = {**current, "revision": recorded.get("revision")}
    recorded, current = _effective(recorded), _effective(current)
    for key, now in current.items():
        if key not in recorded:  # recorded by an earlier grow, which did not record it
            continue
        was = recorded[key]
        if isinstance(was, dict) and isinstance(now, dict):
            inner = next((k for k in {**was, **now} if was.get(k) != now.get(k)), None)
            if inner is not None:
                return f"{key}.{inner}", was.get(inner), now.get(inner)
        elif was != now:
            return key, was, now
    return None


def check_finished(recipe: Recipe) -> None:
    """Refuse, in one line naming the member, a re-run whose finished members are no longer what the recipe asks:
    a member's settings edited since it finished, its model deleted, or an earlier member gone or made again (the
    later ones grew from it); likewise an unfinished member whose starting model (e.g. `grown/`) was made with
    settings edited since, or from an earlier member that is gone or was made again since. Skipping them would
    report and grow on from stale models; re-training them would replace results without being asked. Deleting the
    member's folder (and those after it) trains them again."""
    previous: dict[str, Any] | None = None  # the summary of the member before, while that one is finished
    for i, member in enumerate(recipe.members):
        folder, redo = recipe.out / member.name, _redo(recipe, member)
        finished = os.path.lexists(folder / MEMBER_FILE)  # a folder in its place is named damaged, not unfinished
        path = folder / (MEMBER_FILE if finished else START_FILE)
        recorded = _recorded(path, redo) if os.path.lexists(path) else None
        state = "finished" if finished else "was started"
        settings = (recorded or {}).get("settings") if finished else recorded  # start.json holds them alone
        commit = (recorded or {}).get("commit") if finished else None  # start.json is written before it resolves
        _refuse_edited(member, state, _first_change(settings, member_settings(recipe, member), commit), redo)
        if recorded is not None and i > 0:
            _refuse_regrown(member, recipe.members[i - 1].name, previous, recorded, state, redo)
        if not finished:
            previous = None
            continue
        assert recorded is not None  # member.json is there
        summary = located(recipe, recorded)
        missing = _model_missing(Path(summary["final"]))
        if missing:
            raise UsageError(f"{member.name} finished, but its model {summary['final']} {missing}; {redo}")
        baseline = (summary.get("baseline") or {}).get("out")
        if baseline and _model_missing(Path(baseline)):
            raise UsageError(f"{member.name} finished, but its from-scratch baseline {baseline} is gone; {redo}")
        previous = summary


def finished_summary(recipe: Recipe, member: Member) -> dict[str, Any] | None:
    """The summary of `member` when an earlier run finished it (its member.json, checked, with its models found in
    OUT as it is now), else None."""
    path = recipe.out / member.name / MEMBER_FILE
    return located(recipe, _recorded(path, _redo(recipe, member))) if os.path.lexists(path) else None


def _redo(recipe: Recipe, member: Member) -> str:
    """What to delete to make `member` again: its folder, and those of the members after it that are there (they
    grew from it)."""
    i = recipe.members.index(member)
    later = [str(recipe.out / m.name) for m in recipe.members[i + 1 :] if (recipe.out / m.name).exists()]
    return f"delete {' and '.join([str(recipe.out / member.name), *later])} to train {'them' if later else 'it'} again"


def family_output(out: Path) -> bool:
    """Whether the folder `out` was taken by a `grow family` run: it holds the run's OUT_FILE, or (an output of an
    earlier grow, or of a run that wrote none) a member folder a run started. A family's report, token cache and
    member folders are then its own; what else a folder holds is the user's."""
    if (out / OUT_FILE).is_file():
        return True
    return any(started(entry) for entry in out.iterdir() if entry.is_dir())


def started(folder: Path) -> bool:
    """Whether a family run started the member in `folder` (its start.json, or the member.json of its end)."""
    return (folder / START_FILE).is_file() or (folder / MEMBER_FILE).is_file()


def some_names(folder: Path) -> str:
    """The first three entries of `folder`, to name what a refusal of files the family did not write is about."""
    return ", ".join(sorted(entry.name for entry in folder.iterdir())[:3])


def model_identity(summary: dict[str, Any]) -> str:
    """What tells one making of a finished member's model from another: its weights (`weights_fingerprint`). A member
    made again with other settings, or by a run that does not repeat bit for bit, is another model; one made again
    bit for bit is the same model, and what was grown from it still holds."""
    from grow_cli.checkpoint.fingerprint import weights_fingerprint

    return weights_fingerprint(Path(summary["final"]))


def _refuse_regrown(
    member: Member, before: str, previous: dict[str, Any] | None, recorded: dict[str, Any], state: str, redo: str
) -> None:
    """Refuse a member started (or finished) from the member `before` it when that one is now gone, unfinished
    (`previous` is None) or made again since (its `model_identity` is not the one `recorded` when the member
    started): its `grown/` and everything after were made from a model that is no longer there."""
    if previous is None:
        raise UsageError(f"{member.name} {state}, but {before} before it is gone or unfinished; {redo}")
    made_from = recorded.get("previous_model")  # absent from the records of an earlier grow
    if made_from is not None and made_from != model_identity(previous):
        raise UsageError(
            f"{member.name} {state} from {before}'s model as it was then, but {before} was made again since; {redo}"
        )


def located(recipe: Recipe, summary: dict[str, Any]) -> dict[str, Any]:
    """A finished member's summary with its models found in OUT as it is now: an OUT renamed, moved or copied since
    (or a relative --out given from another folder) still finds its own models, never the old folder's."""
    within = summary.get("in_out")
    if not isinstance(within, dict):
        within = {}
    if isinstance(within.get("final"), str):
        summary["final"] = str(recipe.out / within["final"])
    if isinstance(within.get("baseline"), str) and isinstance(summary.get("baseline"), dict):
        summary["baseline"]["out"] = str(recipe.out / within["baseline"])
    return summary


def _recorded(path: Path, redo: str) -> dict[str, Any]:
    """A member's start.json or member.json, checked against what grow reads of it (`START_SHAPE`, `MEMBER_SHAPE`),
    or one line saying what in it is damaged."""
    try:
        return read_checked(path, MEMBER_SHAPE if path.name == MEMBER_FILE else START_SHAPE)
    except Unfit as exc:
        raise UsageError(f"{path} is damaged ({exc}); {redo}") from None


def _model_missing(folder: Path) -> str | None:
    """What a finished member's model folder lacks (its config.json, or weights its layout names: read from the
    shard headers), or None when it is whole."""
    from grow_cli.checkpoint.reader import CheckpointReader

    if not (folder / "config.json").is_file():
        return "is gone"
    try:
        CheckpointReader(folder)
    except CheckpointError as exc:
        return f"is incomplete ({exc})"
    return None


def _refuse_edited(member: Member, state: str, change: tuple[str, Any, Any] | None, redo: str) -> None:
    """Refuse a member whose recorded settings differ from the recipe's (`change`, from `_first_change`)."""
    if change:
        key, was, now = change
        raise UsageError(
            f"recipe: {member.name} {state} with {key}: {was!r}, but the recipe now says {key}: {now!r}; "
            f"{redo}, or restore the recipe"
        )
