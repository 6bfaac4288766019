"""A checkpoint's grow-state.json, a model's grow.json and a grown training state's state.json damaged by hand,
through the real commands that read them (`grow inspect`, `grow expand`, `grow train-stage --resume`, `--resume
grown`, `--train-only new`, `--data-offset lineage`, `grow family` resuming), and `grow family`'s own start.json and
member.json, through a re-run of a finished family: each is one `error:` line naming the file and what in it is
wrong, never a traceback or the catch-all, and nothing the user had is removed (a folder in place of grow-state.json
was taken for a killed save's remains, and `--resume auto` deleted the checkpoint).

The runs are made once: a finished run with checkpoints and its final state, a run paused after its first
checkpoint, a model grown from the finished run's checkpoint with its training state (its grow.json: the train
stage, then the expand stage with its source checkpoint and added tensors), and a finished family of two members.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from tinylm import save_tiny_lm, write_plays

CATCH_ALL = "run `grow --debug"
TRAIN = ("--seq-len", 32, "--micro-batch-size", 8, "-q")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    import grow_cli

    root = tmp_path_factory.mktemp("made")
    model, data = save_tiny_lm(root / "model"), write_plays(root / "data", count=1)
    common = {"model": model, "data": data, "seq_len": 32, "micro_batch_size": 8, "save_every": 2, "quiet": True}
    finished, paused = {"max_steps": 4, "save_final_state": True}, {"max_steps": 6, "exit_interval": 2}
    for out, budget in (("run", finished), ("part", paused)):
        grow_cli.train_stage(grow_cli.TrainConfig(**common, **budget, out=root / out))
    spec = grow_cli.GrowthSpec(layers=4, depth_method="identity")
    grow_cli.expand(root / "run" / "checkpoints" / "step_00000004", root / "grown", spec, quiet=True)
    return root


@pytest.fixture
def copy(made, tmp_path, monkeypatch):
    """The made folders, copied into the test's own folder (its working folder too), free to damage; the data
    linked, as the runs' data fingerprint names its files where they are."""
    monkeypatch.chdir(tmp_path)
    for name in ("model", "run", "part", "grown"):
        shutil.copytree(made / name, tmp_path / name, symlinks=True)
    (tmp_path / "data").symlink_to(made / "data")
    return tmp_path


def _grow(cli, *args):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # each train-stage builds its own Accelerator, as a fresh process would
    return cli(*args)


def _damage(path: Path, how) -> None:
    """Replace the file at `path` with bytes, a folder ("folder"), or its JSON as `how` edits it."""
    if isinstance(how, bytes):
        path.write_bytes(how)
    elif how == "folder":
        path.unlink()
        path.mkdir()
        (path / "notes.txt").write_text("the user's")
    else:
        document = json.loads(path.read_text())
        how(document)
        path.write_text(json.dumps(document))


def _files(folder: Path) -> dict[str, int]:
    """Every file in `folder` and its size, but the token cache's (which a run that tokenized before it was refused
    may add)."""
    files = (p for p in folder.rglob("*") if p.is_file() and ".grow-cache" not in p.parts)
    return {str(p.relative_to(folder)): p.stat().st_size for p in files}


def _one_line(result, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.code != 0 and len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert CATCH_ALL not in errors[0] and "Traceback" not in result.stderr, errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _set(key, value):
    return lambda state: state.update({key: value})


STATE_CASES = {  # how grow-state.json is damaged, and what the one line says of it
    "empty": (b"", "not the JSON grow wrote"),
    "cut": (lambda state: None, "not the JSON grow wrote"),  # (cut below, once written whole)
    "folder": ("folder", "a folder, not a file"),
    "apollo-stages-of-another-kind": (_set("apollo", {"stages": {"unique_layers": 2}}), "apollo.stages is {"),
    "apollo-stage-without-its-step": (
        _set("apollo", {"stages": [{"unique_layers": 2}, {"unique_layers": 4, "from_step": 3}]}),
        "apollo.stages[0].from_step is missing",
    ),
    "continuation-a-list": (_set("continuation", []), "continuation is [], not a JSON object"),
    "start-step-as-text": (
        _set("continuation", {"start_step": "1", "data_blocks": 0}),
        'continuation.start_step is "1", not a whole number from 0 to 1e+12',
    ),
    "data-blocks-null": (_set("data_blocks", None), "data_blocks is null, not a whole number"),
    "file-size-as-text": (_set("files", {"model.safetensors": "big"}), 'files["model.safetensors"] is "big"'),
    "tokens-negative": (_set("tokens", -5), "tokens is -5, not a whole number"),
    "step-past-the-bound": (_set("step", 10**13), "step is 10000000000000, not a whole number from 0 to 1e+12"),
    "multiplier-as-text": (
        _set("multipliers", {"lm_head.weight": {"lr": "x", "eps": 1, "weight_decay": 1}}),
        'multipliers["lm_head.weight"].lr is "x", not a finite number ≥ 0',
    ),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_a_damaged_grow_state_is_one_line_in_every_command_that_reads_it(cli, copy, case):
    """Each reader of grow-state.json: inspect and expand (with and without the optimizer state) of a finished run's
    checkpoint, and train-stage resuming a paused run's (by path, and --resume auto, which finds none whole)."""
    how, said = STATE_CASES[case]
    final, paused = copy / "run" / "checkpoints" / "step_00000004", copy / "part" / "checkpoints" / "step_00000002"
    for checkpoint in (final, paused):
        state = checkpoint / "grow-state.json"
        _damage(state, how)
        if case == "cut":
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before = _files(copy)
    resume = ("train-stage", copy / "model", "--data", copy / "data", "--out", copy / "part", "--max-steps", 6)
    commands = {
        final: [
            ("inspect", final),
            ("expand", final, copy / "out", "--layers", 4, "--depth-method", "identity"),
            ("expand", final, copy / "out", "--layers", 4, "--weights-only"),
        ],
        paused: [(*resume, *TRAIN, "--save-every", 2, "--resume", paused), (*resume, *TRAIN, "--resume", "auto")],
    }
    for checkpoint, runs in commands.items():
        for args in runs:
            line = _one_line(_grow(cli, *args), f"{checkpoint / 'grow-state.json'} is damaged (", said)
            assert ("start again" in line) if args[0] == "train-stage" else ("grow an earlier checkpoint" in line)
    assert _files(copy) == before and not (copy / "out").exists()  # the damaged checkpoints are kept as they were


def _stage(number: int, key: str, value):
    def edit(record):
        stage = record["stages"][number]
        if value is KeyError:
            stage.pop(key)
        else:
            stage[key] = value

    return edit


def _expand_grown(copy):
    return ("expand", copy / "grown", copy / "out", "--layers", 6)


def _train(model: str, *extra):
    return lambda copy: ("train-stage", copy / model, "--data", copy / "data", "--out", copy / "out", *TRAIN, *extra)


def _resume_finished(copy):
    args = ("--max-steps", 4, "--save-every", 2, "--save-final-state", "--resume", "auto")
    return ("train-stage", copy / "model", "--data", copy / "data", "--out", copy / "run", *TRAIN, *args)


def _checkpoint_blocks(value):
    return lambda record: record["stages"][1]["source"]["checkpoint"].update(data_blocks=value)


RECORD_CASES = {  # (the folder whose grow.json is damaged, how, the command that reads it, what the line says)
    "empty": ("grown", b"", _expand_grown, "is damaged (not the JSON grow wrote)"),
    "folder": ("grown", "folder", _expand_grown, "is damaged (a folder, not a file)"),
    "stage-not-an-object": ("grown", lambda r: r["stages"].insert(0, 1), _expand_grown, "stages[0] is 1, not a JSON"),
    "source-a-list": ("grown", _stage(0, "source", []), _expand_grown, "stages[0].source is [], not a JSON object"),
    "kind-missing": ("run", _stage(0, "kind", KeyError), _resume_finished, "stages[0].kind is missing"),
    "run-key-a-list": ("run", _stage(0, "run_key", [4]), _resume_finished, "stages[0].run_key is [4], not a JSON"),
    "end-step-as-text": (
        "run",
        _stage(0, "end_step", "4"),
        lambda copy: ("expand", copy / "run", copy / "out", "--layers", 4, "--depth-method", "identity"),
        'stages[0].end_step is "4", not a whole number from 0 to 1e+12',
    ),
    "added-tensors-as-text": (
        "grown",
        _stage(1, "added_tensors", "abc"),
        _train("grown", "--max-steps", 1, "--train-only", "new"),
        'stages[1].added_tensors is "abc", not a list',
    ),
    "checkpoint-blocks-as-text": (
        "grown",
        _checkpoint_blocks("12"),
        _train("grown", "--max-steps", 1, "--data-offset", "lineage"),
        'stages[1].source.checkpoint.data_blocks is "12", not a whole number',
    ),
    # the record the output's grow.json continues: read after training, its model left in --out without a record
    "trained-on-not-json": ("run", b"{not json", _train("run", "--max-steps", 1), "is damaged (not the JSON grow"),
    "trained-on-stages-as-text": ("grown", lambda r: r.update(stages="x"), _train("grown", "--max-steps", 1), "stages"),
}


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_a_damaged_grow_json_is_one_line_in_the_command_that_reads_it(cli, copy, case):
    """The card of a model grown again, `--resume auto` on a finished run, the final state a run's grow.json names,
    `--train-only new` and `--data-offset lineage`: each read a key of grow.json that a hand-edit can break."""
    folder, how, command, said = RECORD_CASES[case]
    record = copy / folder / "grow.json"
    _damage(record, how)
    before = _files(copy)
    _one_line(_grow(cli, *command(copy)), f"{record} is damaged (", said, "remove it or restore it")
    assert _files(copy) == before and not (copy / "out").exists()


def test_a_train_stage_that_records_no_position_is_named_by_data_offset_lineage(cli, copy):
    """`--data-offset lineage` derives how far a stage of a record before `data_blocks` read from its end step and
    batch; a stage that records none of them was a KeyError."""

    def unrecorded(record):
        for key in ("data_blocks", "batch"):
            record["stages"][0].pop(key)

    _damage(copy / "run" / "grow.json", unrecorded)
    result = _grow(cli, *_train("run", "--max-steps", 1, "--data-offset", "lineage")(copy))
    _one_line(result, f"stage 1 of {copy / 'run' / 'grow.json'}", "records neither how far it read", "--data-offset")
    assert not (copy / "out").exists()


def _parameter(edit):
    """An edit of state.json's first tensor that carries the source's moments."""

    def apply(state):
        edit(next(p for p in state["parameters"].values() if p["moments"] == "carried"))

    return apply


def _in(key, inner, value):
    return lambda state: state[key].update({inner: value})


GROWN_STATE_CASES = {  # how the grown training state's state.json is damaged, and what the one line says of it
    "empty": (b"", "not the JSON grow wrote"),
    "folder": ("folder", "a folder, not a file"),
    "step-as-text": (_set("step", "four"), 'step is "four", not a whole number from 0 to 1e+12'),
    "restart-step-as-text": (_in("restart", "suggested_step", "2"), 'restart.suggested_step is "2", not a whole'),
    "restart-a-list": (_set("restart", []), "restart is [], not a JSON object"),
    "another-format": (_set("format", "grow-record"), 'format is "grow-record", not "grow-training-state"'),
    "data-blocks-negative": (_set("data_blocks", -3), "data_blocks is -3, not a whole number"),
    "dynamics-a-list": (_set("dynamics", ["exact"]), 'dynamics is ["exact"], not a JSON object or null'),
    "schedule-as-text": (
        lambda state: state["source"]["run"].update(schedule="cosine"),
        'source.run.schedule is "cosine", not a JSON object',
    ),
    "max-lr-infinite": (
        lambda state: state["source"]["optimizer"].update(max_lr=float("inf")),
        "source.optimizer.max_lr is Infinity, not a finite number ≥ 0",
    ),
    "multiplier-as-text": (_parameter(lambda p: p.update(lr="x")), '.lr is "x", not a finite number ≥ 0'),
    "carried-without-its-step": (_parameter(lambda p: p.update(step=None)), "carries moments but no step"),
}


@pytest.mark.parametrize("case", list(GROWN_STATE_CASES))
def test_a_damaged_grown_state_is_one_line_in_resume_grown(cli, copy, case):
    """`train-stage --resume grown` reads the state.json `grow expand` wrote beside the grown model's training state:
    a step or restart step as text went through int() to the catch-all (or was taken, "4" for 4), a list where an
    object was written was an AttributeError, an infinite max LR became the run's `--max-lr auto`."""
    how, said = GROWN_STATE_CASES[case]
    _damage(copy / "grown" / "training-state" / "state.json", how)
    before = _files(copy)
    args = _train("grown", "--max-steps", 1, "--resume", "grown", "--max-lr", "auto")(copy)
    line = _one_line(_grow(cli, *args), f"{copy / 'grown' / 'training-state' / 'state.json'} is damaged (", said)
    assert "grow expand" in line and "drop --resume grown" in line
    assert _files(copy) == before and not (copy / "out").exists()


def test_a_family_resuming_a_member_with_only_damaged_checkpoints_says_what_to_delete(cli, copy):
    """`grow family` resumes a paused member with `--resume auto`: when every checkpoint is damaged, the line names
    the newest's damaged file and what to delete to train the stage again — not train-stage's --overwrite, which the
    family does not take; doing so trains it again."""
    recipe = copy / "family.yaml"
    train = {"data": ["data"], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05, "eval_batches": 2}
    member = {"name": "small", "source": "model", "train": {"max_steps": 4, "save_every": 2, "exit_interval": 2}}
    recipe.write_text(yaml.safe_dump({"out": "fam", "train": train, "members": [member]}))
    assert _grow(cli, "family", recipe, "-q").code == 3  # paused at step 2, its checkpoint saved
    checkpoints = copy / "fam" / "small" / "trained" / "checkpoints"
    _damage(checkpoints / "step_00000002" / "grow-state.json", _set("continuation", []))
    line = _one_line(_grow(cli, "family", recipe, "-q"), "step_00000002/grow-state.json is damaged (continuation is")
    assert f"delete {checkpoints} to train this stage again from its start, and run the family again" in line
    assert "--overwrite" not in line and (checkpoints / "step_00000002").is_dir()
    shutil.rmtree(checkpoints)
    assert _grow(cli, "family", recipe, "-q").code == 3  # trained again from its start, paused again


@pytest.fixture(scope="module")
def family(made):
    """A finished two-member family (the second grown from the first, compared with it), its recipe naming the
    source and data by absolute path so that a copy of it elsewhere is the same family."""
    train = {"data": [str(made / "data")], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05}
    members = [
        {"name": "small", "source": str(made / "model"), "train": {"max_steps": 2}},
        {"name": "big", "grow": {"layers": 4, "depth_method": "identity"}, "train": {"max_steps": 2}},
    ]
    recipe = {"out": "fam", "train": {**train, "eval_batches": 2}, "compare": {"max_blocks": 2}, "members": members}
    (made / "family.yaml").write_text(yaml.safe_dump(recipe))
    import grow_cli

    assert grow_cli.run_family(grow_cli.load_recipe(made / "family.yaml"), quiet=True)["status"] == "done"
    return made


@pytest.fixture
def family_copy(family, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(family / "family.yaml", tmp_path)
    shutil.copytree(family / "fam", tmp_path / "fam", symlinks=True)
    return tmp_path


def _unfinished(member):
    """The family as a run killed after `member`'s training, before its member.json, leaves it."""
    return lambda copy: (copy / "fam" / member / "member.json").unlink()


FAMILY_CASES = {  # (the member, its file, how it is damaged, what the one line says)
    "member-folder": ("big", "member.json", "folder", "a folder, not a file"),
    "member-name-missing": ("small", "member.json", lambda s: s.pop("name"), "name is missing"),
    "member-settings-a-list": ("big", "member.json", _set("settings", []), "settings is [], not a JSON object"),
    "member-baseline-a-list": ("big", "member.json", _set("baseline", ["x"]), 'baseline is ["x"], not a JSON'),
    "member-tokens-as-text": ("small", "member.json", _in("train", "tokens", "12"), 'train.tokens is "12", not a'),
    "member-kl-as-text": (
        "big",
        "member.json",
        _in("compare_with_previous", "kl_a_b", "low"),
        'compare_with_previous.kl_a_b is "low", not a number',
    ),
    "member-model-elsewhere": (
        "big",
        "member.json",
        _in("in_out", "final", 1),
        "in_out.final is 1, not text or null",
    ),
    "start-train-as-text": ("big", "start.json", _set("train", "x"), 'train is "x", not a JSON object or null'),
    "start-previous-model-a-number": ("big", "start.json", _set("previous_model", 7), "previous_model is 7, not text"),
}


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_a_damaged_member_or_start_json_is_one_line_in_grow_family(cli, family_copy, case):
    """A re-run of a family reads each member's member.json (a finished member's summary, which the report reads) or
    start.json (what an unfinished one was started with): a list or text where grow wrote an object or a number went
    to the catch-all (settings, baseline; a token count or a KL in the report), a name missing was a KeyError, a
    model's place in OUT that is no text made the re-run report the models of the folder it was copied from, and a
    start.json edited was taken for an edited recipe or a previous member made again."""
    member, name, how, said = FAMILY_CASES[case]
    if name == "start.json":
        _unfinished(member)(family_copy)
    path = family_copy / "fam" / member / name
    _damage(path, how)
    before = _files(family_copy)
    line = _one_line(_grow(cli, "family", family_copy / "family.yaml", "-q"), f"{path} is damaged (", said)
    assert f"delete {family_copy / 'fam' / member}" in line and "to train" in line
    assert _files(family_copy) == before


def test_an_undamaged_family_copied_elsewhere_is_skipped_and_reported(cli, family_copy):
    """The control of the cases above: the same copy, undamaged, is finished and reports its own models."""
    result = _grow(cli, "family", family_copy / "family.yaml", "-q", "--json")
    assert result.code == 0, result.stderr
    members = json.loads((family_copy / "fam" / "family.json").read_text())["members"]
    assert [m["final"] for m in members] == [str(family_copy / "fam" / m / "trained") for m in ("small", "big")]


CACHE_CASES = {  # how a token cache entry's metadata is damaged: each was read on, to a TypeError or ValueError
    "tokens-as-text": lambda meta: meta.update(tokens=str(meta["tokens"])),  # its size still agreed with the stream
    "documents-as-text": _set("documents", "many"),
    "undecodable-a-list": _set("undecodable", [1]),
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_a_token_cache_entry_edited_by_hand_is_tokenized_again(cli, copy, case):
    """The token cache is grow's own (`.grow-cache/tokens` beside the output): an entry whose metadata is not what
    grow wrote is made again, as a cut one is, and the run trains — it went on to the catch-all."""
    args = _train("model", "--max-steps", 1)(copy)
    assert _grow(cli, *args).code == 0
    (meta,) = (copy / ".grow-cache" / "tokens").glob("*.json")
    written = json.loads(meta.read_text())
    _damage(meta, CACHE_CASES[case])
    result = _grow(cli, *args[:5], copy / "again", *args[6:])
    assert result.code == 0, result.stderr
    assert json.loads(meta.read_text()) == written


def _record(index: int, edit):
    """An edit of one record of a metrics.jsonl (`index` as in a list), the others kept as they were."""

    def apply(path: Path) -> None:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        edit(records[index])
        path.write_text("".join(json.dumps(record) + "\n" for record in records))

    return apply


def test_a_damaged_metrics_record_is_one_line_on_resume(cli, copy):
    """`--resume auto` drops the records of the steps after its checkpoint from metrics.jsonl: a step as text there
    was a TypeError through the catch-all, after the run had begun."""
    metrics = copy / "part" / "metrics.jsonl"
    _record(0, _set("step", "1"))(metrics)
    before = _files(copy)
    args = ("--max-steps", 6, "--resume", "auto")
    line = _one_line(_grow(cli, *_train("model", *args)(copy)[:5], copy / "part", *TRAIN, *args))
    assert f'{metrics} is damaged (line 1: step is "1", not a whole number' in line, line
    assert "delete that line or restore the file" in line and _files(copy) == before


def test_a_damaged_metrics_record_is_one_line_in_the_family_report(cli, family_copy):
    """The family report reads each member's held-out losses, tokens and FLOPs per token from its metrics.jsonl: a
    final held-out loss as text was a ValueError through the catch-all once every member was done."""
    metrics = family_copy / "fam" / "small" / "trained" / "metrics.jsonl"
    _record(-1, _set("eval_loss", "low"))(metrics)
    lines = len(metrics.read_text().splitlines())
    before = _files(family_copy)
    line = _one_line(_grow(cli, "family", family_copy / "family.yaml", "-q"))
    assert f'{metrics} is damaged (line {lines}: eval_loss is "low", not a number)' in line
    after = _files(family_copy)
    assert {name for name in before | after if before.get(name) != after.get(name)} <= {"fam/.grow-family.json"}
    # (the family's mark on OUT, its own, names the recipe where it now lies)


def test_a_damaged_metrics_record_is_one_line_when_growing_a_training_state(cli, copy):
    """Growing a checkpoint's training state reads the run's training losses from its metrics.jsonl (the restart it
    suggests follows their trend): a loss as text was skipped there without a word, where every other reader of the
    file names it."""
    metrics = copy / "run" / "metrics.jsonl"
    _record(0, _set("loss", "high"))(metrics)
    before = _files(copy)
    checkpoint = copy / "run" / "checkpoints" / "step_00000004"
    line = _one_line(_grow(cli, "expand", checkpoint, copy / "out", "--layers", 4, "--depth-method", "identity"))
    assert f'{metrics} is damaged (line 1: loss is "high", not a number)' in line, line
    assert _files(copy) == before
