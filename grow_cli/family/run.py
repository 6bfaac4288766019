"""Run a model family unattended and resumably: for each member, expand → train-stage → compare with the previous.

Layout of the output folder (each `final` is a complete HF folder with its lineage in grow.json):

    OUT/<member>/init/       the first member's fresh model, when it is built from a config
    OUT/<member>/grown/      `grow expand` of the previous member's final model (with `optimizer: grow`, of its
                             final training state too, continued by the member's training)
    OUT/<member>/trained/    `grow train-stage` output (checkpoints/ inside while it runs; once it is finished,
                             only the final training state the next member grows with `optimizer: grow`)
    OUT/<member>/baseline/   with `baselines: true`: the same model trained from scratch on as many tokens as the
                             member has seen through its lineage (the independent-training reference)
    OUT/<member>/start.json  the settings that decide the member (its start: `init/`, `grown/` or the source, and
                             its training) and which making of the previous member it starts from, written before
                             its start is made
    OUT/<member>/member.json the member's summary; written last, so its presence means "finished"
    OUT/family.json, family.md, *.png   the family report
    OUT/.grow-family.json    written first: a family run took OUT (a folder without it is the user's)

A re-run skips finished members and finished steps (a complete `grown/` or `trained/` is never redone), and an
interrupted training stage continues from its newest checkpoint — unless the recipe was edited since in what
decided them (`check_finished`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from grow_cli.console import err
from grow_cli.data.tokens import token_cache_dir
from grow_cli.errors import CheckpointError, Interrupted, UsageError
from grow_cli.family.recipe import Member, Recipe
from grow_cli.lineage.record import load_record
from grow_cli.whole_file import write_whole

MEMBER_FILE = "member.json"
START_FILE = "start.json"
OUT_FILE = ".grow-family.json"  # in OUT: a family run took the folder (written before its first member starts)
# Training settings that change how a run goes (where it caches, when it pauses or logs), not the model it makes.
NOT_DECIDING = ("cache_dir", "exit_interval", "log_every", "report_to", "save_every", "keep_last", "quiet")


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


def _first_change(recorded: dict[str, Any] | None, current: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first setting (as `train.max_steps` within a block) that differs, with its old and new value; None when
    they agree or nothing was recorded (a member.json of an earlier grow)."""
    if recorded is None:
        return None
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
        folder = recipe.out / member.name
        later = [str(recipe.out / m.name) for m in recipe.members[i + 1 :] if (recipe.out / m.name).exists()]
        redo = f"delete {' and '.join([str(folder), *later])} to train {'them' if later else 'it'} again"
        finished = (folder / MEMBER_FILE).is_file()
        path = folder / (MEMBER_FILE if finished else START_FILE)
        recorded = _recorded(path, redo) if path.is_file() else None
        state = "finished" if finished else "was started"
        settings = (recorded or {}).get("settings") if finished else recorded  # start.json holds them alone
        _refuse_edited(member, state, _first_change(settings, member_settings(recipe, member)), redo)
        if recorded is not None and i > 0:
            _refuse_regrown(member, recipe.members[i - 1].name, previous, recorded, state, redo)
        if not finished:
            previous = None
            continue
        assert recorded is not None  # member.json is there
        summary = _located(recipe, recorded)
        missing = _model_missing(Path(summary["final"]))
        if missing:
            raise UsageError(f"{member.name} finished, but its model {summary['final']} {missing}; {redo}")
        baseline = (summary.get("baseline") or {}).get("out")
        if baseline and _model_missing(Path(baseline)):
            raise UsageError(f"{member.name} finished, but its from-scratch baseline {baseline} is gone; {redo}")
        previous = summary


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


def model_identity(summary: dict[str, Any]) -> str:
    """What tells one making of a finished member from another: its settings and its model's lineage record, whose
    stages carry the time they were made (a member redone with the same settings is another model all the same)."""
    import hashlib

    made = json.dumps({k: summary.get(k) for k in ("settings", "record")}, sort_keys=True, default=str)
    return hashlib.sha256(made.encode()).hexdigest()[:16]


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


def _trained_tokens(summary: dict[str, Any]) -> int:
    """The tokens a finished member adds to the lineage, as the family's ledger counts them (a first member's
    whole recorded lineage: its source's training by grow too)."""
    from grow_cli.family.report import trainings

    return sum(stage.get("tokens") or 0 for stage in trainings(summary))


def _within(out: Path, path: Path) -> str | None:
    """`path` relative to the family's OUT when it lies there (a member's models), else None (a source, a shared
    baseline)."""
    try:
        return str(path.resolve().relative_to(out.resolve()))
    except ValueError:
        return None


def _located(recipe: Recipe, summary: dict[str, Any]) -> dict[str, Any]:
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
    """A member's start.json or member.json as grow wrote it (a JSON object; member.json names its final model),
    or one line saying it is damaged."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or (path.name == MEMBER_FILE and not isinstance(record.get("final"), str)):
        raise UsageError(f"{path} is damaged (not the record grow wrote); {redo}")
    return record


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


def _write_json(path: Path, value: dict[str, Any]) -> None:
    write_whole(path, json.dumps(value, indent=2, default=str) + "\n")


def _done_training(folder: Path) -> bool:
    record = load_record(folder) if (folder / "grow.json").is_file() else None
    return bool(record and record["stages"][-1]["kind"] == "train" and (folder / "config.json").is_file())


def _save_fresh_model(hf_config, tokenizer_source: Path, folder: Path, seed: int) -> Path:
    """A freshly initialised LM of `hf_config` (causal, or masked for an encoder) with the tokenizer of
    `tokenizer_source`, written to `folder` (through grow's staged output, so a complete `folder` means a finished
    write and a failure leaves nothing)."""
    import torch
    import transformers

    from grow_cli.checkpoint.output import staged_output
    from grow_cli.train.objective import choose_objective

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    masked = choose_objective(hf_config, "auto").name == "masked"  # an encoder gets its masked-LM head
    auto = transformers.AutoModelForMaskedLM if masked else transformers.AutoModelForCausalLM
    model = auto.from_config(hf_config)
    with staged_output(folder, None, force=True) as tmp:
        model.save_pretrained(tmp)
        transformers.AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(tmp)
    return folder


def _init_from_config(member: Member, folder: Path, seed: int) -> Path:
    """A freshly initialised model from `member.config`, with the tokenizer copied next to it."""
    if (folder / "config.json").is_file():
        return folder
    import transformers

    config = dict(member.config or {})
    model_type = config.pop("model_type")
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **config)
    except Exception as exc:  # transformers' strict validation raises several types
        raise UsageError(f"recipe: members[0].config is not a valid {model_type} config: {exc}") from exc
    assert member.tokenizer is not None  # load_recipe requires a tokenizer beside a config
    return _save_fresh_model(hf_config, member.tokenizer, folder, seed)


def _first_model(member: Member, folder: Path, seed: int) -> Path:
    """The first member's starting model: a fresh one from its config, or its source checkpoint."""
    if member.config:
        return _init_from_config(member, folder / "init", seed)
    from grow_cli.checkpoint.source import resolve_source

    assert member.source is not None  # load_recipe requires a source or a config of the first member
    return resolve_source(member.source, revision=member.revision).folder


def _grow(member: Member, previous: Path, out: Path, recipe: Recipe, quiet: bool) -> dict[str, Any]:
    """`grow expand` of the previous member into `out`, as the member's `grow:` block says; with `optimizer: grow`
    its final training state is grown too, otherwise the weights only."""
    from grow_cli.growth.expand import expand
    from grow_cli.growth.train_state import final_checkpoint

    assert member.spec is not None, "every member after the first has a grow: block"
    grows_state = recipe.optimizer_of(member) == "grow"
    if grows_state and final_checkpoint(previous) is None:
        raise UsageError(
            f"recipe: {member.name} has optimizer: grow, but {previous} holds no final training state (it was "
            "trained before the recipe asked for one); delete that member's folder to train it again"
        )
    spec = dataclasses.replace(member.spec, weights_only=not grows_state)
    return expand(str(previous), out, spec, quiet=quiet, force=True, command=["grow", "family", str(recipe.path)])


def baseline_settings(settings: dict[str, Any], tokens: int) -> dict[str, Any]:
    """A member's training settings as its from-scratch run takes them: the lineage's `tokens` as the budget, and
    nothing about how a continued (`optimizer: grow`) run rejoins the previous member's schedule — a fresh run has
    nothing to rejoin, and must share its baseline with the same member trained with a fresh optimizer."""
    dropped = ("max_steps", "max_tokens", "exit_interval", "restart_warmup_steps", "schedule_offset", "data_offset")
    return {**{k: v for k, v in settings.items() if k not in dropped}, "max_tokens": tokens}


def _baseline_root(recipe: Recipe, final: Path, settings: dict[str, Any], folder: Path) -> Path:
    """Where a member's from-scratch baseline lives: beside the member, or — with `baselines_dir` — in a shared
    folder named after everything that decides the run (architecture, tokenizer, training settings, seed), so
    recipes that need the same baseline train it once."""
    if recipe.baselines_dir is None:
        return folder
    import hashlib

    config = json.loads((final / "config.json").read_text())
    key = {
        "config": {k: v for k, v in sorted(config.items()) if k not in ("_name_or_path", "transformers_version")},
        "tokenizer": hashlib.sha256((final / "tokenizer.json").read_bytes()).hexdigest()
        if (final / "tokenizer.json").is_file()
        else None,
        "train": settings,
        "init_seed": recipe.seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = recipe.baselines_dir / f"{config.get('model_type', 'model')}-{digest}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "baseline-key.json").write_text(json.dumps(key, indent=2, default=str) + "\n")
    return root


def _baseline(
    recipe: Recipe, member: Member, final: Path, folder: Path, tokens: int, quiet: bool
) -> dict[str, Any] | None:
    """`final`'s architecture, freshly initialised and trained from scratch on `tokens` tokens."""
    settings = recipe.train_settings(member)
    if settings is None or tokens <= 0:
        return None
    import transformers

    settings = baseline_settings(settings, tokens)
    root = _baseline_root(recipe, final, settings, folder)
    init = root / "baseline-init"
    if not (init / "config.json").is_file():
        _save_fresh_model(transformers.AutoConfig.from_pretrained(final), final, init, recipe.seed)
    return _train_with(settings, recipe, init, root / "baseline", quiet)


def _train(
    recipe: Recipe, member: Member, model: Path, out: Path, quiet: bool, *, grown: bool, save_state: bool
) -> dict[str, Any] | None:
    """The member's training stage; `grown`: continue the grown training state in `model`; `save_state`: leave the
    final training state for the next member (`optimizer: grow`), which changes nothing the member publishes.
    A grown member with a fresh optimizer reads on after the blocks its lineage read (`data_offset: lineage`, unless
    the recipe says otherwise), as its from-scratch baseline reads as many distinct blocks as the whole lineage."""
    settings = recipe.train_settings(member)
    if settings is None:
        return None
    if member.spec is not None and not grown:
        settings = {"data_offset": "lineage", **settings}
    if save_state:
        settings = {**settings, "save_final_state": True}
    return _train_with(settings, recipe, model, out, quiet, grown=grown)


def _train_with(
    settings: dict[str, Any], recipe: Recipe, model: Path, out: Path, quiet: bool, *, grown: bool = False
) -> dict[str, Any]:
    """One `grow train-stage` run into `out`: skipped when finished, resumed when interrupted. Each builds its own
    `Accelerator` (a member may train in another mixed precision than the one before)."""
    from grow_cli.process_state import run_accelerate_state
    from grow_cli.train.checkpoints import complete_checkpoints
    from grow_cli.train.config import TrainConfig
    from grow_cli.train.loop import train_stage
    from grow_cli.train.preflight import killed_before_first_checkpoint

    record = load_record(out) if _done_training(out) else None
    if record is not None:  # finished in an earlier run: report what that run recorded
        _drop_checkpoints(out, keep_final=bool(settings.get("save_final_state")))  # (if that run stopped before)
        stage = record["stages"][-1]
        return {
            "status": "done",
            "skipped": True,
            "out": str(out),
            **{k: stage.get(k) for k in ("steps", "tokens", "max_lr", "final_eval_loss", "final_eval_ppl")},
        }
    resume = "auto" if complete_checkpoints(out) else "grown" if grown else None
    if resume != "auto" and out.is_dir() and not killed_before_first_checkpoint(out):
        found = ", ".join(sorted(entry.name for entry in out.iterdir())[:3])
        raise UsageError(
            f"{out} holds files this family did not write there ({found}); starting the stage would replace them: "
            f"move them away, or delete {out}, and run again"
        )
    config = TrainConfig(
        model=model,
        out=out,
        resume=resume,
        overwrite=resume != "auto",
        quiet=quiet,
        **{"cache_dir": token_cache(recipe), **settings},
    )
    with run_accelerate_state():
        try:
            trained = train_stage(config)
        except Interrupted as exc:  # the family resumes its member itself: `--resume auto` is not its option
            raise Interrupted(exc.signum, exc.what, "Continue by running the same grow family command again") from None
    if trained.get("status") == "done":
        _drop_checkpoints(out, keep_final=config.save_final_state)
    return trained


def _drop_checkpoints(out: Path, *, keep_final: bool) -> None:
    """Remove the checkpoints a finished stage in `out` left (a pause's or an interrupt's, or `save_every`'s: each
    a whole optimizer state, as large as the model several times over), which nothing reads once the stage is
    done; with `keep_final`, its final state, which the next member grows (`optimizer: grow`). Only checkpoint
    folders grow names `step_N` are removed, and checkpoints/ only when nothing else is left in it."""
    from grow_cli.growth.train_state import final_checkpoint
    from grow_cli.train.checkpoints import checkpoint_root

    root = checkpoint_root(out)
    if not root.is_dir():
        return
    keep = final_checkpoint(out) if keep_final else None
    for folder in root.glob("step_*"):
        if folder.is_dir() and folder.name.removeprefix("step_").isdigit() and folder != keep:
            shutil.rmtree(folder)
    if not any(root.iterdir()):
        root.rmdir()


def token_cache(recipe: Recipe) -> Path:
    """The token cache of every stage and comparison: the recipe's `train.cache_dir`, else one in OUT."""
    return Path(recipe.train.get("cache_dir") or token_cache_dir(recipe.out))


def trained_folder(recipe: Recipe, member: Member) -> Path:
    """Where `member`'s training stage writes its trained model."""
    return recipe.out / member.name / "trained"


def compare_settings(recipe: Recipe) -> dict[str, Any]:
    """`compare` on the held-out blocks of the training data by default: same data, seq_len and split as
    train-stage, overridden by the recipe's `compare:`."""
    shared: dict[str, Any] = {
        k: recipe.train[k] for k in ("data", "seq_len", "eval_fraction", "text_field") if k in recipe.train
    }
    settings: dict[str, Any] = {**shared, "cache_dir": token_cache(recipe), **recipe.compare}
    if not settings.get("data"):
        raise UsageError("recipe: compare needs data (compare.data or train.data)")
    return settings


def _silent(*_: Any) -> None:
    """What `quiet` prints."""


def run_family(recipe: Recipe, *, quiet: bool = False) -> dict[str, Any]:
    """Run every member of `recipe` (skipping finished ones) and write the family report.

    Returns what `grow family --json` prints: when every member is done, `{"status": "done", "out", "headline",
    "equal_quality", "consistency", "ledger", "report", "plots"}` (`report` is the path of family.md); when a member's
    training paused (its `exit_interval`), `{"status": "paused", "member", "out"}` — calling it again continues.
    `quiet`: no progress on stderr (members' headers, progress bars); the recipe's notes and a pause are still said.
    """
    from grow_cli.family.check import check_recipe
    from grow_cli.family.compare import compare
    from grow_cli.family.report import write_report

    for note in check_recipe(recipe):  # everything a run needs, before anything is built
        err.print(f"note: {note}", soft_wrap=True)
    recipe.out.mkdir(parents=True, exist_ok=True)
    _write_json(recipe.out / OUT_FILE, {"made_by": "grow family", "recipe": str(recipe.path)})  # (family_output)
    progress = _silent if quiet else err.print
    previous_final: Path | None = None
    summaries: list[dict[str, Any]] = []
    for i, member in enumerate(recipe.members):
        folder = recipe.out / member.name
        marker = folder / MEMBER_FILE
        if marker.is_file():
            summary = _located(recipe, json.loads(marker.read_text()))  # (check_recipe read it whole)
            progress(f"[dim]{member.name}: finished earlier, skipped[/dim]")
            summaries.append(summary)
            previous_final = Path(summary["final"])
            continue
        folder.mkdir(parents=True, exist_ok=True)
        made_from = model_identity(summaries[-1]) if summaries else None  # the model it starts from, as it is now
        # As found there, if any (check_finished)
        _write_json(folder / START_FILE, {**member_settings(recipe, member), "previous_model": made_from})
        progress(f"[bold]{member.name}[/bold] ({i + 1}/{len(recipe.members)})")
        if i == 0:
            start = _first_model(member, folder, recipe.seed)
        else:
            start = folder / "grown"
            if not (start / "grow.json").is_file():  # a complete expand output always has grow.json
                assert previous_final is not None  # set by the member before this one
                _grow(member, previous_final, start, recipe, quiet)
        grown = i > 0 and recipe.optimizer_of(member) == "grow"
        next_grows = i + 1 < len(recipe.members) and recipe.optimizer_of(recipe.members[i + 1]) == "grow"
        trained = _train(
            recipe, member, start, trained_folder(recipe, member), quiet, grown=grown, save_state=next_grows
        )
        if trained is not None and trained.get("status") == "paused":
            err.print(f"{member.name}: training paused at step {trained['step']}; re-run to continue")
            return {"status": "paused", "member": member.name, "out": str(recipe.out)}
        final = trained_folder(recipe, member) if trained is not None else start
        comparison = None
        if previous_final is not None:
            comparison = compare(previous_final, final, **compare_settings(recipe))
        baseline = None
        if recipe.baselines and i > 0:
            lineage = sum(_trained_tokens(s) for s in summaries)  # as the ledger counts them
            baseline = _baseline(recipe, member, final, folder, lineage + ((trained or {}).get("tokens") or 0), quiet)
            if baseline is not None and baseline.get("status") == "paused":
                return {"status": "paused", "member": member.name, "out": str(recipe.out)}
            # Yano et al.'s consistency claim needs the independent side too: the previous member's own
            # from-scratch run (the first member is trained from scratch already) against this one.
            previous = summaries[-1]
            previous_independent = previous["final"] if i == 1 else (previous.get("baseline") or {}).get("out")
            if baseline is not None and previous_independent:
                baseline["compare_with_previous"] = compare(
                    Path(previous_independent), Path(baseline["out"]), **compare_settings(recipe)
                )
        summary = {
            "name": member.name,
            "index": i,
            "final": str(final),
            "grown": i > 0,
            "optimizer": recipe.optimizer_of(member) if i > 0 else None,
            "train": trained,
            "compare_with_previous": comparison,
            "baseline": baseline,
            "record": load_record(final),
            "settings": member_settings(recipe, member),
            "previous_model": made_from,
            "in_out": {  # where the models lie within OUT, which may be moved or copied since
                "final": _within(recipe.out, final),
                "baseline": _within(recipe.out, Path(baseline["out"])) if baseline else None,
            },
        }
        _write_json(marker, summary)  # whole or absent: its presence means "finished"
        summaries.append(summary)
        previous_final = final
    report = write_report(recipe, summaries)
    return {"status": "done", "out": str(recipe.out), **report}
