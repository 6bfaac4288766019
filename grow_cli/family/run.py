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
decided them (`resume.check_finished`).

Under `accelerate launch` every process walks the recipe: the training stages run on all of them, every other step
(and what decides a resume) on the main process alone, whose result the others get (`main_process.on_main`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grow_cli.console import err, hub_bars_only_on_a_terminal
from grow_cli.data.masking_settings import NAMES as MASKING
from grow_cli.data.sources import data_paths, field_read
from grow_cli.data.tokens import token_cache_dir
from grow_cli.errors import Interrupted, TrainingError, UsageError
from grow_cli.family.main_process import join, main_first, on_main
from grow_cli.family.recipe import Member, Recipe
from grow_cli.family.resume import (
    MEMBER_FILE,
    OUT_FILE,
    START_FILE,
    finished_summary,
    member_settings,
    model_identity,
    some_names,
)
from grow_cli.lineage.record import load_record
from grow_cli.whole_file import write_whole

# The training settings a comparison scores members with, as they were trained: `compare_settings`.
TRAINED_AS = ("document_masking", *MASKING)

# Training settings that change neither a from-scratch baseline's weights nor its held-out curve.
NOT_DECIDING = {
    "model",
    "out",
    "resume",
    "overwrite",
    "quiet",
    "cache_dir",
    "save_every",
    "keep_last",
    "exit_interval",
    "log_every",
    "report_to",
    "peak_tflops",
    "save_final_state",
}


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


def _write_json(path: Path, value: dict[str, Any]) -> None:
    write_whole(path, json.dumps(value, indent=2, default=str) + "\n")


def _done_training(folder: Path) -> bool:
    stages = (load_record(folder) or {}).get("stages") or [{}]
    return stages[-1].get("kind") == "train" and (folder / "config.json").is_file()


def _save_fresh_model(hf_config, tokenizer_source: Path, folder: Path, seed: int) -> Path:
    """A freshly initialised LM of `hf_config` (causal, or masked for an encoder) with the tokenizer of
    `tokenizer_source`, written to `folder` (through grow's staged output, so a complete `folder` means a finished
    write and a failure leaves nothing)."""
    import torch
    import transformers

    from grow_cli.checkpoint.output import staged_output
    from grow_cli.process_state import progress_bars_restored
    from grow_cli.train.objective import choose_objective

    torch.manual_seed(seed)
    masked = choose_objective(hf_config, "auto").name == "masked"  # an encoder gets its masked-LM head
    auto = transformers.AutoModelForMaskedLM if masked else transformers.AutoModelForCausalLM
    with progress_bars_restored():
        transformers.utils.logging.disable_progress_bar()
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


def _first_model(member: Member, folder: Path, seed: int) -> tuple[Path, str | None]:
    """The first member's starting model: a fresh one from its config, or its source checkpoint; and the commit a
    Hub source resolved to (member.json records it: a `revision:` pinned to it later is no edit)."""
    if member.config:
        return _init_from_config(member, folder / "init", seed), None
    from grow_cli.checkpoint.source import resolve_source

    assert member.source is not None  # load_recipe requires a source or a config of the first member
    source = resolve_source(member.source, revision=member.revision)
    return source.folder, source.commit


def _grow(member: Member, previous: Path, out: Path, recipe: Recipe, quiet: bool) -> dict[str, Any]:
    """`grow expand` of the previous member into `out`, as the member's `grow:` block says; with `optimizer: grow`
    its final training state is grown too, otherwise the weights only."""
    from grow_cli.growth.expand import expand
    from grow_cli.growth.train_state import final_checkpoint, training_checkpoint
    from grow_cli.lineage.command_line import recording

    assert member.spec is not None, "every member after the first has a grow: block"
    grows_state = recipe.optimizer_of(member) == "grow"
    if grows_state and final_checkpoint(previous) is None:
        raise UsageError(
            f"recipe: {member.name} has optimizer: grow, but {previous} holds no final training state (it was "
            "trained before the recipe asked for one); delete that member's folder to train it again"
        )
    # weights only where the previous member kept a training state; expand refuses the option for a model folder
    weights_only = not grows_state and training_checkpoint(previous) is not None
    spec = dataclasses.replace(member.spec, weights_only=weights_only)
    with recording(["grow", "family", str(recipe.path)]):
        return expand(str(previous), out, spec, quiet=quiet, force=True)


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
        "train": _deciding_settings(settings),
        "init_seed": recipe.seed,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = recipe.baselines_dir / f"{config.get('model_type', 'model')}-{digest}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "baseline-key.json").write_text(json.dumps(key, indent=2, default=str) + "\n")
    return root


def _deciding_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` as `TrainConfig` reads them (defaults filled, `3e-3` and `0.003` alike, paths resolved), less
    what decides nothing about the trained model or its held-out curve (logging, checkpoints, where tokens are
    cached): two recipes that say the same run in other words share one baseline."""
    from grow_cli.train.config import TrainConfig

    config = TrainConfig(model=".", out=".", **settings)
    decided = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_DECIDING}
    decided["data"] = [str(Path(p).resolve()) for p in data_paths(config.data)]
    decided["text_field"] = field_read(config.text_field)  # `text_field: text` or none: the same run
    return decided


def _baseline(
    recipe: Recipe, member: Member, final: Path, folder: Path, tokens: int, quiet: bool, progress: Callable[..., None]
) -> dict[str, Any] | None:
    """`final`'s architecture, freshly initialised and trained from scratch on `tokens` tokens; its header says so
    (its training's data and LR lines read as a second run of the member's otherwise)."""
    settings = recipe.train_settings(member)
    if settings is None or tokens <= 0:
        return None
    progress(f"[bold]{member.name}[/bold] baseline: the same model from scratch on its lineage's {tokens:,} tokens")
    settings = baseline_settings(settings, tokens)
    root = on_main(_baseline_init, recipe, final, settings, folder)
    return _train_with(settings, recipe, root / "baseline-init", root / "baseline", quiet)


def _baseline_init(recipe: Recipe, final: Path, settings: dict[str, Any], folder: Path) -> Path:
    """The baseline's folder (`_baseline_root`), with its fresh model in `baseline-init/` made unless there."""
    import transformers

    root = _baseline_root(recipe, final, settings, folder)
    init = root / "baseline-init"
    if not (init / "config.json").is_file():
        _save_fresh_model(transformers.AutoConfig.from_pretrained(final), final, init, recipe.seed)
    return root


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
    from grow_cli.train.checkpoints import EveryCheckpointDamaged, checkpoint_root
    from grow_cli.train.config import TrainConfig
    from grow_cli.train.loop import train_stage

    found = on_main(_stage_found, out, grown, keep_final=bool(settings.get("save_final_state")))
    if found["done"] is not None:
        return found["done"]
    resume = found["resume"]
    config = TrainConfig(
        model=model,
        out=out,
        resume=resume,
        overwrite=resume != "auto",
        quiet=quiet,
        **{"cache_dir": token_cache(recipe), **settings},
    )
    config.check_given(settings)  # (the recipe's keys: a masking key on a causal member is refused at its default too)
    with run_accelerate_state():
        try:
            trained = train_stage(config)
        except Interrupted as exc:  # the family resumes its member itself: `--resume auto` is not its option
            raise Interrupted(exc.signum, exc.what, "Continue by running the same grow family command again") from None
        except EveryCheckpointDamaged as exc:  # nor is `--overwrite`
            advice = f"delete {checkpoint_root(out)} to train this stage again from its start, and run the family again"
            raise EveryCheckpointDamaged(exc.what, advice) from None
    if trained.get("status") == "done":
        on_main(_drop_checkpoints, out, keep_final=config.save_final_state)
    return trained


def _stage_found(out: Path, grown: bool, *, keep_final: bool) -> dict[str, Any]:
    """What a training stage into `out` finds there: `done`, the summary of a stage an earlier run finished (its
    leftover checkpoints removed), else None and how to `resume` ("auto": from its newest checkpoint; "grown": the
    grown training state; None: a fresh start). Files the family did not write there are refused."""
    from grow_cli.train.checkpoints import complete_checkpoints
    from grow_cli.train.preflight import killed_before_first_checkpoint

    record = load_record(out) if _done_training(out) else None
    if record is not None:  # finished in an earlier run: report what that run recorded
        _drop_checkpoints(out, keep_final=keep_final)  # (if that run stopped before)
        stage = record["stages"][-1]
        done = {
            "status": "done",
            "skipped": True,
            "out": str(out),
            **{k: stage.get(k) for k in ("steps", "tokens", "max_lr", "final_eval_loss", "final_eval_ppl")},
        }
        return {"done": done, "resume": None}
    resume = "auto" if complete_checkpoints(out) else "grown" if grown else None
    if resume != "auto" and out.is_dir() and not killed_before_first_checkpoint(out):
        raise UsageError(
            f"{out} holds files this family did not write there ({some_names(out)}); starting the stage would replace "
            f"them: move them away, or delete {out}, and run again"
        )
    return {"done": None, "resume": resume}


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


def compare_settings(recipe: Recipe, member: Member | None = None) -> dict[str, Any]:
    """`compare` on the held-out blocks of the training data by default: same data, seq_len and split as
    train-stage, overridden by the recipe's `compare:`. The training's text field and token dtype go with its data:
    `compare:` data of its own is read with `compare.text_field` and `compare.token_dtype` alone (text files beside
    training JSON Lines have no field). Masked LMs are compared on masks made as the training made its own (its
    `mlm_probability`, … and `whole_word_mask`), whatever data is compared, and causal LMs with the training's
    `document_masking`: members trained on documents that attend only to themselves are scored that way. Those
    (`TRAINED_AS`) are `member`'s own where it sets them in its `train:` — the member whose comparison with the one
    before it this is — as the data, seq_len and split stay the family's, one for every comparison."""
    data = () if "data" in recipe.compare else ("data", "text_field", "token_dtype")
    taken = ("seq_len", "eval_fraction", *TRAINED_AS, *data)
    shared: dict[str, Any] = {k: recipe.train[k] for k in taken if k in recipe.train}
    shared.update(trained_as(recipe, member) if member is not None else {})
    settings: dict[str, Any] = {**shared, "cache_dir": token_cache(recipe), **recipe.compare}
    if not settings.get("data"):
        raise UsageError("recipe: compare needs data (compare.data or train.data)")
    return settings


def trained_as(recipe: Recipe, member: Member) -> dict[str, Any]:
    """The settings of `TRAINED_AS` that `member` trains with: its own `train:`'s, else the family's."""
    settings = recipe.train_settings(member) or recipe.train
    return {k: settings[k] for k in TRAINED_AS if k in settings}


def _silent(*_: Any, **__: Any) -> None:
    """What `quiet` prints, and what a process other than the main one of a launch prints."""


def run_family(recipe: Recipe, *, quiet: bool = False) -> dict[str, Any]:
    """Run every member of `recipe` (skipping finished ones) and write the family report.

    Returns what `grow family --json` prints: when every member is done, `{"status": "done", "out", "headline",
    "equal_quality", "consistency", "ledger", "report", "plots"}` (`report` is the path of family.md); when a member's
    training paused (its `exit_interval`), `{"status": "paused", "member", "out"}` — calling it again continues.
    `quiet`: no progress on stderr (members' headers, progress bars, a Hub source's download's); the recipe's notes
    and a pause are still said.
    Under `accelerate launch` every process returns the same; only the main one speaks.
    """
    from grow_cli.family.check import check_recipe
    from grow_cli.launch import lost_contact

    with hub_bars_only_on_a_terminal(quiet=quiet):  # a Hub source's, while it is checked and when it is downloaded
        notes = check_recipe(recipe)  # everything a run needs, before anything is built (by every process, alike)
        try:
            join()  # (under a launch: every process has checked, before the main one writes)
            return _run_members(recipe, notes, quiet)
        except Exception as exc:  # a launch that lost one of its processes: the family resumes itself (no --resume)
            if lost := lost_contact(exc, go_on="run the same grow family command again"):
                raise TrainingError(lost) from None
            raise


def _run_members(recipe: Recipe, notes: list[str], quiet: bool) -> dict[str, Any]:
    """`run_family` once the recipe is checked and every process of a launch has joined."""
    from grow_cli.family.report import write_report
    from grow_cli.launch import main_process

    say = err.print if main_process() else _silent
    for note in notes:
        say(f"note: {note}", soft_wrap=True)
    on_main(_take, recipe)
    progress = _silent if quiet else say
    previous_final: Path | None = None
    summaries: list[dict[str, Any]] = []
    for i, member in enumerate(recipe.members):
        folder = recipe.out / member.name
        finished = on_main(finished_summary, recipe, member)
        if finished is not None:
            progress(f"[dim]{member.name}: finished earlier, skipped[/dim]")
            summaries.append(finished)
            previous_final = Path(finished["final"])
            continue
        made_from = on_main(_record_start, recipe, member, summaries)
        progress(f"[bold]{member.name}[/bold] ({i + 1}/{len(recipe.members)})")
        commit = None
        if i == 0:
            start, commit = main_first(_first_model, member, folder, recipe.seed)
        else:
            start = folder / "grown"
            assert previous_final is not None  # set by the member before this one
            on_main(_make_grown, member, previous_final, start, recipe, quiet)
        grown = i > 0 and recipe.optimizer_of(member) == "grow"
        next_grows = i + 1 < len(recipe.members) and recipe.optimizer_of(recipe.members[i + 1]) == "grow"
        trained = _train(
            recipe, member, start, trained_folder(recipe, member), quiet, grown=grown, save_state=next_grows
        )
        if trained is not None and trained.get("status") == "paused":
            say(f"{member.name}: training paused at step {trained['end_step']}; re-run to continue")
            return {"status": "paused", "member": member.name, "out": str(recipe.out)}
        final = trained_folder(recipe, member) if trained is not None else start
        comparison = None
        if previous_final is not None:
            comparison = on_main(_compare, recipe, member, previous_final, final)
        baseline = None
        if recipe.baselines and i > 0:
            lineage = sum(_trained_tokens(s) for s in summaries)  # as the ledger counts them
            tokens = lineage + ((trained or {}).get("tokens") or 0)
            baseline = _baseline(recipe, member, final, folder, tokens, quiet, progress)
            if baseline is not None and baseline.get("status") == "paused":
                return {"status": "paused", "member": member.name, "out": str(recipe.out)}
            # Yano et al.'s consistency claim needs the independent side too: the previous member's own
            # from-scratch run (the first member is trained from scratch already) against this one.
            previous = summaries[-1]
            previous_independent = previous["final"] if i == 1 else (previous.get("baseline") or {}).get("out")
            if baseline is not None and previous_independent:
                baseline["compare_with_previous"] = on_main(
                    _compare, recipe, member, Path(previous_independent), Path(baseline["out"])
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
            "record": None,  # the final model's lineage, read by the main process (`_record_finished`)
            "settings": member_settings(recipe, member),
            "commit": commit,
            "previous_model": made_from,
            "in_out": {  # where the models lie within OUT, which may be moved or copied since
                "final": _within(recipe.out, final),
                "baseline": _within(recipe.out, Path(baseline["out"])) if baseline else None,
            },
        }
        summaries.append(on_main(_record_finished, summary, folder / MEMBER_FILE))  # the main process's, everywhere
        previous_final = final
    report = on_main(write_report, recipe, summaries)
    return {"status": "done", "out": str(recipe.out), **report}


def _take(recipe: Recipe) -> None:
    """Make OUT and record that a family run took it (`resume.family_output`)."""
    recipe.out.mkdir(parents=True, exist_ok=True)
    _write_json(recipe.out / OUT_FILE, {"made_by": "grow family", "recipe": str(recipe.path)})


def _record_start(recipe: Recipe, member: Member, summaries: list[dict[str, Any]]) -> str | None:
    """Write the member's start.json before its start is made: the settings that decide it, and the model it starts
    from as it is now (`check_finished` compares both on a re-run). Returns that model's identity."""
    folder = recipe.out / member.name
    folder.mkdir(parents=True, exist_ok=True)
    made_from = model_identity(summaries[-1]) if summaries else None
    _write_json(folder / START_FILE, {**member_settings(recipe, member), "previous_model": made_from})
    return made_from


def _make_grown(member: Member, previous: Path, start: Path, recipe: Recipe, quiet: bool) -> None:
    """The member's `grown/`, grown from `previous` unless a complete one is there (it always has grow.json)."""
    if not (start / "grow.json").is_file():
        _grow(member, previous, start, recipe, quiet)


def _compare(recipe: Recipe, member: Member, a: Path, b: Path) -> dict[str, Any]:
    """`grow compare` of two members (or baselines), the second one `member`'s, on the recipe's comparison data."""
    from grow_cli.family.compare import compare

    return compare(a, b, **compare_settings(recipe, member))


def _record_finished(summary: dict[str, Any], marker: Path) -> dict[str, Any]:
    """The member's summary with its model's lineage, written to member.json (whole or absent: its presence means
    "finished")."""
    summary["record"] = load_record(Path(summary["final"]))
    _write_json(marker, summary)
    return summary
