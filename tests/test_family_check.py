"""`grow family --check` checks everything a run needs, and the recipe loader refuses YAML alias bombs anywhere."""

from __future__ import annotations

import sys

import pytest
import yaml
from tinylm import FRESH_CONFIG as FRESH
from tinylm import save_tiny_lm, write_plays

from grow_cli.errors import UsageError
from grow_cli.family.check import check_recipe
from grow_cli.family.recipe import MAX_ALIAS_NODES, load_recipe

TRAIN = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4}


@pytest.fixture
def folder(tmp_path):
    save_tiny_lm(tmp_path / "lm")
    write_plays(tmp_path / "text", count=1, chars=5000)
    return tmp_path


def _recipe(folder, text_or_doc):
    path = folder / "family.yaml"
    path.write_text(text_or_doc if isinstance(text_or_doc, str) else yaml.safe_dump(text_or_doc))
    return path


def _bomb(levels: int, where: str) -> str:
    lines = ["x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    if where == "top":
        return "\n".join(lines) + "\nmembers: [{name: a, source: lm}]\n"
    body = "\n".join("      " + line for line in lines)
    return f"members:\n  - name: a\n    tokenizer: lm\n    config:\n      model_type: llama\n{body}\n"


@pytest.mark.parametrize("where", ["top", "member-config"])
def test_alias_bombs_are_refused_anywhere(folder, where):
    with pytest.raises(UsageError, match="YAML aliases"):
        load_recipe(_recipe(folder, _bomb(7, where)))


def test_a_recursive_alias_is_refused(folder):
    with pytest.raises(UsageError, match="YAML aliases"):
        load_recipe(_recipe(folder, "members: &m [{name: a, source: lm, x: *m}]\n"))


def test_ordinary_anchors_are_fine(folder):
    text = (
        "train: &t {data: [text], seq_len: 32, micro_batch_size: 4}\n"
        "members:\n"
        "  - {name: a, source: lm, train: {<<: *t, max_steps: 2}}\n"
        "  - {name: b, grow: {depth_factor: 2}, train: {<<: *t, max_steps: 2}}\n"
    )
    recipe = load_recipe(_recipe(folder, text))
    assert recipe.members[1].train["seq_len"] == 32 and MAX_ALIAS_NODES >= 100
    assert check_recipe(recipe) == []


def test_check_plans_every_member_from_a_fresh_config(folder):
    doc = {
        "train": TRAIN,
        "members": [
            {"name": "a", "config": FRESH, "tokenizer": "lm", "train": {"max_steps": 2}},
            {"name": "b", "grow": {"depth_factor": 2}, "train": {"max_steps": 2}},
            {"name": "c", "grow": {"width_factor": 2, "width_method": "fpi"}, "train": {"max_steps": 2}},
        ],
    }
    assert check_recipe(load_recipe(_recipe(folder, doc))) == []


def test_check_lists_each_member_with_its_grow_settings_as_the_recipe_writes_them(cli, folder):
    """The human --check printed a member's growth as a Python dict ({'depth_factor': 2, 'depth_method': 'stack'})."""
    members = [
        {"name": "a", "source": "lm", "train": {"max_steps": 2}},
        {"name": "b", "grow": {"depth_factor": 2, "depth_method": "stack"}},
    ]
    result = cli("family", _recipe(folder, {"train": TRAIN, "members": members}), "--check")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        f"  a: from {folder / 'lm'}; grow —; train yes",
        "  b: from previous member; grow {depth_factor: 2, depth_method: stack}; train no",
    ], result.stdout


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda d: d["members"][0].update(tokenizer="text"), "members[0].tokenizer: no usable tokenizer"),
        (lambda d: d["members"][0]["config"].update(hidden_size=30), "members[0].config: not a valid llama"),
        (
            lambda d: d["members"][0]["config"].update(hidden_size=-5),
            "members[0].config: hidden_size (hidden size) must be a positive integer, found -5",
        ),
        (lambda d: d["members"][0]["config"].update(model_type="lamma"), "'lamma': neither a curated definition nor"),
        (lambda d: d["members"][2]["grow"].update(width_factor=1.3), "members[2].grow"),
        (lambda d: d["members"][1].update(grow={"layers": 1}), "members[1].grow: --layers 1 is smaller"),
        (lambda d: d["members"][1].update(grow={"layers": 10**9}), "members[1].grow: 1,000,000,000 target layers"),
        (
            lambda d: d["members"][1].update(grow={"experts": 4, "router_noise": 2e99}),
            "members[1].grow.router_noise: --router-n",
        ),
        (lambda d: d["train"].update(seq_len=4096), "members[0].train: --seq-len 4096 exceeds"),
        (lambda d: d["train"].update(data=["nope"]), "recipe: train.data (members[0]): --data"),
        (lambda d: d.update(compare={"data": ["nope"]}), "compare: --data"),
        (lambda d: d["train"].update(cache_dir="text/cache"), "members[0].train: --cache-dir"),
        (lambda d: d.update(out="text/family"), "members[0].train: --out"),
        (lambda d: d.update(out=123), "recipe: out: expected"),
        (lambda d: d.update(compare={"seq_len": 100_000}), "compare.seq_len: seq_len 100000 exceeds members[0]'s"),
        (lambda d: d.update(seed=-1), "recipe: seed: must be between 0 and 2**64 - 1"),
        (
            lambda d: d["train"].update(token_dtype="uint32"),
            "train.token_dtype (members[0]): --token-dtype uint32 applies only",
        ),
        (
            lambda d: d["train"].update(text_field="body"),
            "train.text_field (members[0]): --text-field 'body' applies only",
        ),
        (lambda d: d.update(compare={"text_field": "body"}), "compare: --text-field 'body' applies only"),
        (
            lambda d: d["train"].update(text_field="text"),
            "train.text_field (members[0]): --text-field 'text' applies only",
        ),
        (lambda d: d.update(compare={"text_field": "text"}), "compare: --text-field 'text' applies only"),
        (lambda d: d.update(compare={"token_dtype": "uint32"}), "compare: --token-dtype uint32 applies only"),
        (
            lambda d: d.update(compare={"token_dtype": "int8"}),
            "compare.token_dtype: --token-dtype 'int8' is not one of",
        ),
        (lambda d: d["members"][1].update(name="b" * 101), "plain folder name of at most 100 characters"),
        (lambda d: d["members"][1].update(name="family.json"), "ends like the report's files"),
        (lambda d: d["members"][1].update(train={}), "members[1].train: no budget"),
        (lambda d: d["train"].update(max_lr="1e-3x"), "recipe: train.max_lr (members[0]): --max-lr must be a number"),
        (lambda d: d["members"][0]["train"].update(max_lr="x"), "recipe: members[0].train.max_lr: --max-lr must be"),
        (lambda d: d.update(baselines=True, baselines_dir="lm/config.json"), "config.json is a file; give a folder"),
        (lambda d: d.update(baselines=True, baselines_dir="text/bl"), "bl lies inside the data folder"),
    ],
)
def test_check_finds_what_a_run_would_trip_on(folder, change, fragment):
    doc = {
        "train": dict(TRAIN),
        "members": [
            {"name": "a", "config": dict(FRESH), "tokenizer": "lm", "train": {"max_steps": 2}},
            {"name": "b", "grow": {"depth_factor": 2}},
            {"name": "c", "grow": {"width_factor": 2}},
        ],
    }
    change(doc)
    with pytest.raises(UsageError) as info:
        check_recipe(load_recipe(_recipe(folder, doc)))
    assert fragment in str(info.value)


def test_a_data_refusal_is_put_at_the_data_setting_whatever_its_wording(folder, monkeypatch):
    """Which setting a refusal is about follows its type (every DataError is about the data; an OptionError names
    its option), not its first words: the missing-pyarrow refusal names no --data."""
    (folder / "table.parquet").write_bytes(b"PAR1")  # never read: pyarrow is missing
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ModuleNotFoundError
    doc = {
        "train": {**TRAIN, "data": ["table.parquet"]},
        "members": [{"name": "a", "config": dict(FRESH), "tokenizer": "lm", "train": {"max_steps": 2}}],
    }
    with pytest.raises(UsageError, match=r"train\.data \(members\[0\]\): reading Parquet .* needs pyarrow"):
        check_recipe(load_recipe(_recipe(folder, doc)))


def test_a_train_text_field_is_not_applied_to_compare_data_of_its_own(folder):
    """`compare:` reads the training data and its text field unless it names data of its own: a `train.text_field`
    that named the training JSON Lines' field was applied to compare's text files too, and refused for them
    ('applies only to data with fields'), though no setting of the recipe could then be right."""
    import json

    from grow_cli.family.run import compare_settings

    (folder / "d.jsonl").write_text(json.dumps({"body": "To be, or not to be. " * 40}) + "\n")
    doc = {
        "train": {**TRAIN, "data": ["d.jsonl"], "text_field": "body"},
        "compare": {"data": ["text"]},
        "members": [
            {"name": "a", "config": dict(FRESH), "tokenizer": "lm", "train": {"max_steps": 2}},
            {"name": "b", "grow": {"depth_factor": 2}},
        ],
    }
    recipe = load_recipe(_recipe(folder, doc))
    assert check_recipe(recipe) == []
    assert "text_field" not in compare_settings(recipe)
    del doc["compare"]  # compare reads the training data then, with its field
    assert compare_settings(load_recipe(_recipe(folder, doc)))["text_field"] == "body"


def test_a_comparison_scores_members_as_the_later_one_trains(folder):
    """A member's own `document_masking` (or masking setting) decided how it trained but not how it was compared:
    the comparison took the family's `train:` alone. Now the pair's second member's settings score the pair, and a
    note says where the two members trained differently."""
    from grow_cli.family.run import compare_settings

    doc = {
        "train": {**TRAIN, "data": ["text"]},
        "members": [
            {"name": "a", "config": dict(FRESH), "tokenizer": "lm", "train": {"max_steps": 2}},
            {"name": "b", "grow": {"depth_factor": 2}, "train": {"max_steps": 2, "document_masking": True}},
            {"name": "c", "grow": {"depth_factor": 2}, "train": {"max_steps": 2, "document_masking": True}},
        ],
    }
    recipe = load_recipe(_recipe(folder, doc))
    a, b, c = recipe.members
    assert "document_masking" not in compare_settings(recipe, a)
    assert compare_settings(recipe, b)["document_masking"] is True
    assert compare_settings(recipe, c)["document_masking"] is True
    notes = check_recipe(recipe)
    assert notes == [
        "members[0] and members[1] train with different document_masking; their comparison scores both as "
        "members[1] trains"
    ]


def test_a_text_field_stated_at_its_default_is_no_edit_and_the_same_baseline():
    """`text_field: text` and no `text_field` read the same field (TrainConfig holds None for the second, so that data
    without fields can refuse a given one): adding or removing it is no edit of a finished member, and names the
    same shared baseline, as a default spelt out is elsewhere."""
    from grow_cli.family.resume import _first_change
    from grow_cli.family.run import _deciding_settings

    train = {"data": ["d.jsonl"], "max_steps": 2}
    stated = {**train, "text_field": "text"}
    assert _first_change({"train": train}, {"train": stated}) is None
    assert _first_change({"train": stated}, {"train": train}) is None
    assert _deciding_settings(train) == _deciding_settings(stated)
    other = {**train, "text_field": "body"}
    assert _first_change({"train": train}, {"train": other}) == ("train.text_field", "text", "body")
    assert _deciding_settings(other) != _deciding_settings(train)


def test_a_failed_fresh_model_write_leaves_nothing(folder):
    import transformers

    from grow_cli.family.run import _save_fresh_model

    config = transformers.AutoConfig.for_model(**FRESH)
    with pytest.raises(OSError):
        _save_fresh_model(config, folder / "no-tokenizer-here", folder / "init", seed=0)
    assert not (folder / "init").exists() and not [p for p in folder.iterdir() if ".grow-" in p.name]


def test_a_grown_config_transformers_refuses_is_named_by_its_member(folder):
    """transformers validates a grown config in the background; the check still names the member it belongs to, and
    (the value at fault came from the source's config.json, whose keys growth keeps) names that config.json."""
    import json

    config = json.loads((folder / "lm" / "config.json").read_text())
    (folder / "lm" / "config.json").write_text(json.dumps({**config, "hidden_act": 5}))
    members = [{"name": "a", "source": "lm"}, {"name": "b", "grow": {"depth_factor": 2}}]
    with pytest.raises(UsageError, match=r"members\[1\]\.grow: the source's config.json does not load in trans"):
        check_recipe(load_recipe(_recipe(folder, {"members": members})))


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED"])
def test_optimizer_grow_under_a_sharding_launch_is_refused_before_anything_is_written(folder, monkeypatch, engine):
    """`optimizer: grow` continues a member's whole training state, which FSDP and DeepSpeed shard. A launch of
    either was refused only once the first member's training started, with train-stage's advice to leave out
    --save-final-state (an option the recipe never gave), and after its start.json had recorded the setting, so that
    the run with `optimizer: fresh` the line should have advised was refused in turn until the member was deleted."""
    doc = {
        "train": TRAIN,
        "optimizer": "grow",
        "members": [
            {"name": "a", "source": "lm", "train": {"max_steps": 2}},
            {"name": "b", "grow": {"depth_factor": 2, "depth_method": "identity"}, "train": {"max_steps": 2}},
        ],
    }
    recipe = load_recipe(_recipe(folder, doc))
    assert check_recipe(recipe) == []  # one process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert check_recipe(recipe) == []  # DDP
    monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")
    with pytest.raises(UsageError) as info:
        check_recipe(recipe)
    assert str(info.value) == (
        f"recipe: members[1].optimizer: grow continues a's whole training state, which {engine} (this launch's "
        "accelerate config) shards; use optimizer: fresh, or launch on one process or with DDP"
    )
    doc["optimizer"] = "fresh"
    assert check_recipe(load_recipe(_recipe(folder, doc))) == []


def test_optimizer_grow_with_a_layer_map_that_drops_the_top_layer_is_refused_before_anything_runs(folder):
    """The recipe's load sees only the map: 0,0,0 with identity repeats (originals 0, in order) may yet keep the
    function. Against the 2-layer source it leaves out layer 1 and cannot carry the state on, which --check said
    "OK" to, so `grow family` trained the first member and only then was refused by the second's expand."""
    doc = {
        "train": TRAIN,
        "optimizer": "grow",
        "members": [
            {"name": "a", "source": "lm", "train": {"max_steps": 2}},
            {"name": "b", "grow": {"layer_map": "0,0,0", "identity_repeats": True}, "train": {"max_steps": 2}},
        ],
    }
    with pytest.raises(UsageError) as info:
        check_recipe(load_recipe(_recipe(folder, doc)))
    assert str(info.value).startswith(
        "recipe: members[1].optimizer: layer map 0,0,0 changes the model's function (it leaves out source 1 layer: 1)"
    )
    assert str(info.value).endswith("; use optimizer: fresh")
    doc["members"][1]["grow"]["layer_map"] = "0,1,0,1"  # every source layer once, in order: carried on
    assert check_recipe(load_recipe(_recipe(folder, doc))) == []
    doc["members"][1]["grow"]["layer_map"] = "0,0,0"
    doc["optimizer"] = "fresh"  # the weights alone grow by any map
    assert check_recipe(load_recipe(_recipe(folder, doc))) == []


def test_a_recipes_paths_read_a_leading_tilde_as_the_home_folder(cli, folder, monkeypatch):
    """YAML leaves `~` as it is, and the recipe joined it to its own folder: `data: [~/text]` was refused as
    /recipe-folder/~/text: no such file or folder, though `grow train-stage --data '~/text'` reads it."""
    import json

    monkeypatch.setenv("HOME", str(folder))
    (folder / "recipes").mkdir()
    doc = {
        "out": "~/family",
        "train": {**TRAIN, "data": ["~/text"]},
        "members": [
            {"name": "a", "config": dict(FRESH), "tokenizer": "~/lm", "train": {"max_steps": 2}},
            {"name": "b", "grow": {"depth_factor": 2}},
        ],
    }
    result = cli("family", _recipe(folder / "recipes", doc), "--check", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["out"] == str(folder / "family")


@pytest.mark.parametrize(
    "change,key,written",
    [
        (lambda d: d["members"][0].update(source="lm"), "members[0].source", "../lm"),
        (lambda d: d["train"].update(data=["text"]), "train.data[0]", "../text"),
        (
            lambda d: d["members"][0].update(train={"max_steps": 2, "tokenizer": "lm"}),
            "members[0].train.tokenizer",
            "../lm",
        ),
    ],
)
def test_a_relative_path_found_only_from_the_working_directory_is_refused(
    cli, folder, monkeypatch, change, key, written
):
    """A recipe's paths are read from its folder, but a `source:` that was not there was read from the working
    directory: the recipe ran from one folder and, from any other, stopped with a Hub error (`lm does not exist
    locally`); a data path or tokenizer was refused naming only the path it made. Each now says where it was found
    and how to write it."""
    monkeypatch.chdir(folder)
    (folder / "recipes").mkdir()
    doc = {
        "train": {**TRAIN, "data": [str(folder / "text")]},
        "members": [{"name": "a", "source": str(folder / "lm"), "train": {"max_steps": 2}}],
    }
    change(doc)
    result = cli("family", _recipe(folder / "recipes", doc), "--check")
    assert result.code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"error: recipe: {key}: " in result.stderr, result.stderr
    assert f"write it as {written}" in result.stderr


def _budgets(member: dict, *, optimizer: str = "fresh") -> dict:
    """A two-member recipe whose second member trains `member` (10 steps of 4 × 32 tokens from `max_tokens` 1280)."""
    grown = {"name": "b", "grow": {"depth_factor": 2, "depth_method": "identity"}, "optimizer": optimizer}
    return {
        "train": dict(TRAIN),
        "members": [
            {"name": "a", "config": dict(FRESH), "tokenizer": "lm", "train": {"max_steps": 2}},
            {**grown, "train": {"max_tokens": 1280, **member}},
        ],
    }


@pytest.mark.parametrize(
    "member, optimizer, refusal",
    [
        (
            {"warmup_steps": 11},
            "fresh",
            "members[1].train.warmup_steps: --warmup-steps 11 outlasts the run, which ends at step 10 (what "
            "--max-tokens 1,280 makes)",
        ),
        (
            {"restart_warmup_steps": 11},
            "grow",
            "members[1].train.restart_warmup_steps: --restart-warmup-steps 11 outlasts this run of 10 steps (what "
            "--max-tokens 1,280 makes)",
        ),
        (
            {"warmup_steps": 8, "schedule": "wsd", "decay_ratio": 0.5, "schedule_offset": 2},
            "fresh",
            "members[1].train.warmup_steps: --warmup-steps 8 reaches into the decay, which starts at step 6 of 12 "
            "(this run's 10 steps from step 2",
        ),
        ({"warmup_steps": 10, "restart_warmup_steps": 10}, "fresh", None),  # both fit the 10 steps
        ({"warmup_steps": 11}, "grow", None),  # its schedule starts where member a ends: checked when it runs
        ({"warmup_steps": 4, "restart_warmup_steps": 10}, "grow", None),
    ],
)
def test_a_members_token_budget_is_checked_before_any_member_runs(folder, member, optimizer, refusal):
    """A later member's warmup that does not fit the steps its `max_tokens` makes was refused only when that member
    began to train — after the members before it had trained, possibly for hours. Now it is refused as the recipe
    is read, naming the member's setting, in train-stage's words; what only the run can know (where a continued
    member's schedule starts) is left to the run, so nothing train-stage would take is refused."""
    path = _recipe(folder, _budgets(member, optimizer=optimizer))
    if refusal is None:
        load_recipe(path)
        return
    with pytest.raises(UsageError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"recipe: {refusal}"), str(info.value)


def test_a_refused_token_budget_leaves_the_output_folder_as_it_was(cli, folder):
    """`grow family` refuses the second member's warmup in one line before anything is written: no output folder."""
    path = _recipe(folder, _budgets({"warmup_steps": 11}))
    result = cli("family", path, "--out", folder / "family")
    assert result.code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "error: recipe: members[1].train.warmup_steps: --warmup-steps 11 outlasts the run" in result.stderr
    assert not (folder / "family").exists()


@pytest.mark.parametrize(
    "environment, member, end",
    [
        ({"WORLD_SIZE": "2"}, {}, 5),  # 4 × 32 tokens on each of 2 processes: 5 steps
        ({"WORLD_SIZE": "2"}, {"grad_accum": 2}, 3),
        ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}, {}, 5),  # as `accelerate launch` passes DeepSpeed's
        ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}, {"grad_accum": 1}, None),  # the settings' own: 10 steps
        ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}, {"global_batch_tokens": 128}, None),
    ],
)
def test_a_token_budget_is_checked_on_the_batch_the_launch_makes(folder, monkeypatch, environment, member, end):
    """The steps a token budget makes follow this launch's processes and the accumulation accelerate takes from the
    launcher where the settings leave it (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, which `accelerate launch` sets
    from its DeepSpeed config): read as train-stage reads them, so the check neither misses what the run refuses nor
    refuses what it takes. Under a launch it used to leave them to the run, as if accelerate's config could set the
    accumulation another way."""
    monkeypatch.delenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    path = _recipe(folder, _budgets({"warmup_steps": 6, **member}))
    if end is None:
        load_recipe(path)
        return
    with pytest.raises(UsageError, match=rf"--warmup-steps 6 outlasts the run, which ends at step {end} "):
        load_recipe(path)


@pytest.mark.parametrize("value, said", [("0", "0: a run without --grad-accum"), ("two", "'two' is not a whole")])
def test_a_launcher_accumulation_no_run_can_use_is_refused_before_any_member_runs(folder, monkeypatch, value, said):
    """ACCELERATE_GRADIENT_ACCUMULATION_STEPS=0 made an empty global batch (a token budget divided by zero), and one
    that is no number stops accelerate's `Accelerator`: in every member that takes it, so before the first."""
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", value)
    with pytest.raises(UsageError) as info:
        load_recipe(_recipe(folder, _budgets({})))
    assert str(info.value).startswith(f"recipe: members[0].train: ACCELERATE_GRADIENT_ACCUMULATION_STEPS={said}")
