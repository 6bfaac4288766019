"""The `grow family` recipe (`grow_cli.family.recipe`): every unknown key or wrong value is refused with its location,
in one line on the command line."""

from __future__ import annotations

import pytest
import yaml

from grow_cli.errors import UsageError
from grow_cli.family.recipe import load_recipe


def write_recipe(tmp_path, members, **top):
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump({"members": members, **top}))
    return path


@pytest.mark.parametrize(
    "members,top,fragment",
    [
        ([{"name": "a", "source": "m"}], {"trian": {}}, "recipe: trian: unknown key; did you mean train?"),
        (
            [{"name": "a", "source": "m"}, {"name": "b", "grow": {"depth_methd": "stack"}}],
            {},
            "members[1].grow.depth_methd: unknown key",
        ),
        (
            [{"name": "a", "source": "m", "train": {"max_stepz": 3}}],
            {},
            "members[0].train.max_stepz: unknown key",
        ),
        ([{"name": "a", "source": "m"}, {"name": "b"}], {}, "members[1]: needs a 'grow' section"),
        ([{"name": "a"}], {}, "exactly one of 'source'"),
        ([{"name": "a", "source": "m"}, {"name": "a", "grow": {"layers": 4}}], {}, "members[1].name"),
        (  # one folder on macOS and Windows
            [{"name": "small", "source": "m"}, {"name": "Small", "grow": {"layers": 4}}],
            {},
            "members[1].name: 'Small' differs from 'small' only in case",
        ),
        (
            [{"name": "a", "source": "m"}, {"name": "b", "grow": {"layers": "four"}}],
            {},
            "members[1].grow.layers: expected int",
        ),
        ([{"name": "a", "source": "m", "train": {"max_steps": 3}}], {}, "no 'data'"),
        (
            [{"name": "a", "source": "m", "train": {"max_steps": 3, "schedule": "zigzag", "data": "x"}}],
            {},
            "--schedule",
        ),
        ([{"name": "a", "source": "m", "optimizer": "grow"}], {}, "members[0].optimizer: the first member"),
        (
            [{"name": "a", "source": "m"}, {"name": "b", "grow": {"layers": 4, "weights_only": True}}],
            {},
            "members[1].grow.weights_only: unknown key",
        ),
        (
            [{"name": "a", "source": "m"}, {"name": "b", "grow": {"mergekit_config": "solar.yml"}}],
            {},
            "members[1].grow.mergekit_config: unknown key",
        ),
        (
            [{"name": "a", "source": "m"}, {"name": "b", "grow": {"layer_map": "0-3,1", "layers": 6}}],
            {},
            "members[1].grow.layers: --layers contradicts --layer-map",
        ),
        (
            [{"name": "a", "source": "m"}, {"name": "b", "grow": {"width_factor": 2, "depth_method": "stack"}}],
            {},
            "members[1].grow.depth_method: --depth-method stack applies only with --layers or --depth-factor",
        ),
        ([{"name": "a", "source": "m"}], {"optimizer": "carry"}, "optimizer: expected one of fresh, grow"),
        (
            [{"name": "a", "source": "m"}, {"name": "b", "grow": {"layers": 4}, "optimizer": "grow"}],
            {},
            "members[1].optimizer: grow continues a's training state, but a is not trained",
        ),
        (
            [
                {"name": "a", "source": "m", "train": {"max_steps": 3}},
                {"name": "b", "grow": {"layers": 4, "depth_method": "stack"}, "train": {"max_steps": 3}},
            ],
            {"optimizer": "grow", "train": {"data": "x"}},
            "members[1].optimizer: --depth-method stack changes the model's function",
        ),
        (
            [
                {"name": "a", "source": "m", "train": {"max_steps": 3}},
                {"name": "b", "grow": {"layer_map": "0-3,1-2"}, "train": {"max_steps": 3}},
            ],
            {"optimizer": "grow", "train": {"data": "x"}},
            "members[1].optimizer: layer map 0-3,1-2 changes the model's function (its repeats are plain copies",
        ),
        (
            [
                {"name": "a", "source": "m", "train": {"max_steps": 3}},
                {"name": "b", "grow": {"layer_map": "0,2,2", "identity_repeats": True}, "train": {"max_steps": 3}},
            ],
            {"optimizer": "grow", "train": {"data": "x"}},
            "members[1].optimizer: layer map 0,2,2 changes the model's function (it leaves out source 1 layer: 1)",
        ),
        (
            [
                {"name": "a", "source": "m", "train": {"max_steps": 3}},
                {"name": "b", "grow": {"layer_map": "0,1000000000", "identity_repeats": True}, "train": {}},
            ],
            {"optimizer": "grow", "train": {"data": "x", "max_steps": 3}},
            # counted, not listed: the layers left out were a set of a billion numbers
            "members[1].optimizer: layer map 0,1000000000 changes the model's function (it leaves out source "
            "999,999,999 layers: 1-999999999)",
        ),
        *[
            (
                [{"name": "a", "source": "m", "train": {"max_steps": 3, key: value}}],
                {},
                f"members[0].train.{key}: {want}",
            )
            for key, value, want in [
                ("max_lr", [1], "expected int, float or str, found [1]"),
                ("eval_every", 2.5, "expected int, found 2.5"),
                ("seq_len", 32.5, "expected int, found 32.5"),
                ("schedule_offset", [1], "expected int or str, found [1]"),
                ("text_field", 5, "expected str, found 5"),
                ("report_to", "tensorboard", "expected a list of str, found 'tensorboard'"),
                ("report_to", [5], "expected a list of str, found [5]"),
            ]
        ],
        ([{"name": "a", "source": "m", "train": {"max_steps": 1.5}}], {}, "train.max_steps: expected int, found 1.5"),
        (
            [{"name": "a", "source": "m", "train": {"max_lr": 2.0e-3}}],
            {"train": {"data": "x"}},
            "members[0].train: no budget: give max_steps or max_tokens",
        ),
        (
            [{"name": "a", "source": "m", "train": {"max_steps": 3, "decay_type": "linear"}}],
            {"train": {"data": "x"}},
            "members[0].train.decay_type: --decay-type applies only with --schedule wsd",
        ),
        ([{"name": "a", "source": "m"}], {"name": ["x"]}, "recipe: name: expected str, found ['x']"),
        ([{"name": "a", "source": "m"}], {"description": {"a": 1}}, "recipe: description: expected str"),
    ],
)
def test_recipe_errors_name_their_location(tmp_path, members, top, fragment):
    with pytest.raises(UsageError, match="recipe") as info:
        load_recipe(write_recipe(tmp_path, members, **top))
    assert fragment in str(info.value)


def test_a_layer_map_that_keeps_the_function_may_carry_the_optimizer_on(tmp_path):
    """The map alone cannot show whether it drops the source's top layers: that is checked when the member grows."""
    members = [
        {"name": "a", "source": "m", "train": {"max_steps": 3}},
        {"name": "b", "grow": {"layer_map": "0-3,1-2", "identity_repeats": True}, "train": {"max_steps": 3}},
    ]
    recipe = load_recipe(write_recipe(tmp_path, members, optimizer="grow", train={"data": "x"}))
    assert recipe.optimizer_of(recipe.members[1]) == "grow"


@pytest.mark.parametrize(
    "members,top,key",
    [
        ([{"name": "a", "source": "m"}], {"out": ""}, "out"),
        ([{"name": "a", "source": "m"}], {"baselines_dir": ""}, "baselines_dir"),
        ([{"name": "a", "source": ""}], {}, "members[0].source"),
        ([{"name": "a", "config": {"model_type": "llama"}, "tokenizer": ""}], {}, "members[0].tokenizer"),
        ([{"name": "a", "source": "m"}], {"train": {"data": ""}}, "train.data"),
        ([{"name": "a", "source": "m"}], {"train": {"data": ["x", ""]}}, "train.data[1]"),
        ([{"name": "a", "source": "m", "train": {"max_steps": 3, "data": [""]}}], {}, "members[0].train.data[0]"),
        ([{"name": "a", "source": "m"}], {"train": {"tokenizer": ""}}, "train.tokenizer"),
        ([{"name": "a", "source": "m"}], {"train": {"cache_dir": ""}}, "train.cache_dir"),
        ([{"name": "a", "source": "m"}], {"compare": {"data": [""]}}, "compare.data[0]"),
    ],
)
def test_an_empty_path_is_refused_naming_its_key(tmp_path, members, top, key):
    """`out: ""`, `data: [""]`, a source or tokenizer of "" were joined to the recipe's folder, which they then named:
    the family's output there, or the recipe's folder read whole as data. Each is refused as the Python API refuses an
    empty path (field_types.EMPTY_PATH's text), naming the key."""
    from grow_cli.field_types import empty_path

    with pytest.raises(UsageError) as info:
        load_recipe(write_recipe(tmp_path, members, **top))
    assert str(info.value) == f"recipe: {key}: " + empty_path("the recipe's folder")


def test_a_yaml_syntax_error_names_the_problem_and_its_line(tmp_path):
    """The line was cut to PyYAML's first line, "while parsing a block collection": the context, without the problem
    or where it is (found by an audit)."""
    recipe = tmp_path / "family.yaml"
    recipe.write_text("members:\n  - name: small\n    source: base\n   train: {max_steps: 4\n")
    with pytest.raises(UsageError, match="is not valid YAML: expected <block end>, but found .* at line 4, column 4$"):
        load_recipe(recipe)


def test_recipe_error_on_the_cli_is_one_line(cli, tmp_path):
    path = write_recipe(tmp_path, [{"name": "a", "source": "m", "colour": "blue"}])
    result = cli("family", path)
    assert result.code == 2 and result.stderr.count("\n") == 1 and "members[0].colour" in result.stderr


@pytest.mark.parametrize(
    "member,top,line",
    [
        ({}, {"train": {"micro_bach_size": 4}}, "train.micro_bach_size: unknown key; did you mean micro_batch_size?"),
        ({}, {"train": {"lr": 1e-3}}, "train.lr: unknown key; did you mean max_lr?"),  # (another trainer's name)
        (
            {},
            {"train": {"gradient_accumulation_steps": 2}},
            "gradient_accumulation_steps: unknown key; did you mean grad_",
        ),
        ({"max_steps": 3}, {}, "members[0].max_steps: unknown key here: max_steps is a training setting; put it under"),
        ({"layers": 4}, {}, "members[0].layers: unknown key here: layers is a growth option; put it under the member"),
        ({}, {"max_steps": 3}, "recipe: max_steps: unknown key here: max_steps is a training setting; put it under"),
    ],
)
def test_an_unknown_key_says_what_to_write_instead(cli, tmp_path, member, top, line):
    """A typo'd key was refused with the list of every key allowed there (sixty training settings) and nothing
    else; a training setting or growth option written beside a member's `name:` was "unknown" too, with no word of
    where it goes. The line now names the key it is a typo of, or the block it belongs in."""
    path = write_recipe(tmp_path, [{"name": "a", "source": "m", **member}], **top)
    result = cli("family", path, "--check")
    assert result.code == 2 and result.stderr.count("\n") == 1 and line in result.stderr, result.stderr


def test_every_synonym_names_a_training_setting():
    from grow_cli.family.recipe import TRAIN_SYNONYMS, _train_fields

    assert set(TRAIN_SYNONYMS.values()) <= set(_train_fields())


@pytest.mark.parametrize("budget, tokens", [("2B", 2_000_000_000), ("2e4", 20_000), (2.0e4, 20_000), (20_000, 20_000)])
def test_a_token_budget_is_read_as_the_command_line_reads_it(tmp_path, budget, tokens):
    train = {"max_tokens": budget, "data": "x"}
    recipe = load_recipe(write_recipe(tmp_path, [{"name": "a", "source": "m", "train": train}]))
    assert recipe.train_settings(recipe.members[0])["max_tokens"] == tokens
    with pytest.raises(UsageError, match=r"members\[0\].train.max_tokens: --max-tokens: cannot read '2 apples'"):
        load_recipe(
            write_recipe(tmp_path, [{"name": "a", "source": "m", "train": {**train, "max_tokens": "2 apples"}}])
        )


def test_a_members_own_budget_replaces_the_familys_of_the_other_kind(tmp_path):
    """A top-level max_steps and a member's own max_tokens was refused as two budgets; the member's own settings
    override the family's, its budget included."""
    members = [{"name": "a", "source": "m"}, {"name": "b", "grow": {"depth_factor": 2}, "train": {"max_tokens": 1000}}]
    recipe = load_recipe(write_recipe(tmp_path, members, train={"max_steps": 3, "data": "x"}))
    first, second = (recipe.train_settings(m) for m in recipe.members)
    assert first["max_steps"] == 3 and "max_tokens" not in first
    assert second["max_tokens"] == 1000 and "max_steps" not in second


def test_the_comparison_reads_the_trainings_token_files_as_the_training_does(tmp_path):
    """A family trained on .bin token files of uint32 ids (train.token_dtype) compared its members on the same files
    read as uint16, each id followed by a 0. The training's token dtype goes with its data to the comparison; a
    `compare.data` of its own takes its own `compare.token_dtype`."""
    from grow_cli.family.run import compare_settings

    members = [{"name": "a", "source": "m"}, {"name": "b", "grow": {"depth_factor": 2}}]
    train = {"data": "tokens", "token_dtype": "uint32", "max_steps": 1}
    recipe = load_recipe(write_recipe(tmp_path, members, train=train))
    assert compare_settings(recipe)["token_dtype"] == "uint32"
    text = load_recipe(write_recipe(tmp_path, members, train=train, compare={"data": ["text"]}))
    assert "token_dtype" not in compare_settings(text)
    own = {"data": ["other-tokens"], "token_dtype": "uint16"}
    assert compare_settings(load_recipe(write_recipe(tmp_path, members, train=train, compare=own)))["token_dtype"] == (
        "uint16"
    )


def test_the_comparison_masks_documents_as_the_training_did(tmp_path):
    """Members trained with document masking were compared with attention across documents, which they never saw,
    so the comparison's loss was not their held-out loss: the training's `document_masking` goes to the comparison,
    whatever data it reads."""
    from grow_cli.family.run import compare_settings

    members = [{"name": "a", "source": "m"}, {"name": "b", "grow": {"depth_factor": 2}}]
    train = {"data": "corpus", "document_masking": True, "max_steps": 1}
    assert compare_settings(load_recipe(write_recipe(tmp_path, members, train=train)))["document_masking"] is True
    own = load_recipe(write_recipe(tmp_path, members, train=train, compare={"data": ["other"]}))
    assert compare_settings(own)["document_masking"] is True
