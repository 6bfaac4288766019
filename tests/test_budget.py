"""`grow plan` (`grow_cli.family.budget`): the stacking guideline reproduces the paper's table; the ledger and LR rule
are consistent."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from grow_cli.errors import UsageError
from grow_cli.family.budget import family_ledger, plan, stacking_growth_tokens
from grow_cli.quantities import parse_count

# Du et al. 2024 (tongxuluo/prts README): model, N, D, growth timing d.
PAPER_TABLE = [
    ("Llama3-8B", 8e9, 15e12, 6.58e9),
    ("Llama2-7B", 7e9, 2e12, 11.11e9),
    ("Llama2-13B", 13e9, 2e12, 15.84e9),
    ("Llama2-70B", 70e9, 2e12, 42.48e9),
]


@pytest.mark.parametrize("model,n,d_tokens,expected", PAPER_TABLE)
def test_stacking_guideline_reproduces_the_paper(model, n, d_tokens, expected):
    assert stacking_growth_tokens(n, d_tokens) == pytest.approx(expected, rel=5e-3), model


def test_cli_plan_json(cli):
    result = cli("plan", "--target", "7B", "--tokens", "2T", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["stacking"]["growth_tokens"] == pytest.approx(11.11e9, rel=5e-3)
    small = report["stacking"]["small_model"]
    layers = report["target"]["config"]["num_hidden_layers"]
    assert small["num_hidden_layers"] == layers // 4
    assert report["stacking"]["growth_factor"] == round(layers / small["num_hidden_layers"], 2)
    members = report["family"]["members"]
    target = report["target"]["config"]["num_parameters"]
    assert len(members) == 4 and members[-1]["num_parameters"] == pytest.approx(target)
    assert [m["max_lr"] for m in members] == sorted((m["max_lr"] for m in members), reverse=True)


def test_ledger_arithmetic():
    members = [
        {"num_parameters": 1e9, "layers": 16, "attention_width": 2048, "tokens": 40e9},
        {"num_parameters": 2e9, "layers": 16, "attention_width": 2816, "tokens": 80e9},
    ]
    book = family_ledger(members, seq_len=1024, new_token_fraction=0.5)
    per_token = [6 * m["num_parameters"] + 12 * m["layers"] * m["attention_width"] * 1024 for m in members]
    independent = per_token[0] * 40e9 + per_token[1] * 80e9
    progressive = per_token[0] * 40e9 + per_token[1] * 40e9
    assert book["independent_flops"] == pytest.approx(independent)
    assert book["progressive_flops"] == pytest.approx(progressive)
    assert book["saving"] == pytest.approx(1 - progressive / independent)
    assert book["members"][0]["max_lr"] == pytest.approx(1.5e-3)


def test_lr_rule_end_points_in_plan():
    report = plan(8e9, 320e9, family=[1e9, 8e9])
    lrs = [m["max_lr"] for m in report["family"]["members"]]
    assert lrs[0] == pytest.approx(1.5e-3, rel=0.05) and lrs[1] == pytest.approx(3.0e-4, rel=0.05)


def test_counts_and_refusals(cli):
    assert parse_count("135M") == 135e6 and parse_count("15T") == 15e12 and parse_count("2e12") == 2e12
    assert parse_count(".5K") == 500 and parse_count("1.5e+12") == 1.5e12
    for text in ("lots", "1.2.3", "..", "1e"):
        with pytest.raises(UsageError, match=f"cannot read '{re.escape(text)}' as a count"):
            parse_count(text)
    result = cli("plan", "--target", "huge", "--tokens", "1T")
    assert result.code == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_plan_labels_its_saving_a_projection_and_cuts_no_number(cli):
    """Piped (not a terminal, rich's default 80 columns), the ledger must still show every number and header whole,
    and the saving must read as a projection with its assumptions and the published measurements beside it."""
    result = cli("plan", "--target", "8B", "--tokens", "320B", "--family", "1B,2B,4B,8B")
    assert result.code == 0, result.stderr
    text = result.stdout
    report = plan(8e9, 320e9, family=[1e9, 2e9, 4e9, 8e9])
    for member in report["family"]["members"]:
        assert f"{member['independent_flops']:.3g}" in text and f"{member['flops_per_token']:.3g}" in text
    assert "…" not in text and "independent FLOPs" in text and "progressive FLOPs" in text
    assert "with the ledger's progressive tokens instead: 55.6% of the independent family's FLOPs" in text
    assert "It assumes:" in text and "26% (one max LR) to 31%" in text
    assert "progressive training saves" not in text
    assert report["projection"]["kind"] == "projection" and report["projection"]["published"]
    assert "train a small model (9 layers, 2.08B parameters) on d = 21.6B tokens" in text  # was "(9 layers, 2.08B)"


def test_plan_leads_with_the_saving_of_yano_et_als_budget(cli):
    """Yano et al. hold a family's progressive training to what its largest member trained alone costs (papers.md),
    which is where their ≈25% comes from; the plan's saving leads with that figure, then gives its ledger's
    projection, which applies the 8B member's token share to every grown member and so projects about twice as
    much at the paper's setting (it led with that one, 55.6%, twice what the paper measured)."""
    result = cli("plan", "--target", "8B", "--tokens", "320B", "--family", "1B,2B,4B,8B", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    members = report["family"]["members"]
    largest_alone = 1 - members[-1]["independent_flops"] / report["family"]["independent_flops"]
    assert report["projection"]["saving_at_largest_alone"] == pytest.approx(largest_alone)
    assert 0.24 < largest_alone < 0.27 and report["projection"]["saving"] > 2 * largest_alone
    text = cli("plan", "--target", "8B", "--tokens", "320B", "--family", "1B,2B,4B,8B").stdout
    lead = (
        "projected saving (arithmetic, not a measurement) at Yano et al.'s budget, the whole family for what its "
        f"largest member alone costs: {largest_alone:.1%} of the independent family's FLOPs\n"
        f"  with the ledger's progressive tokens instead: {report['projection']['saving']:.1%}"
    )
    assert lead in text and text.index("projected saving") < text.index("measured in the papers")


def test_the_target_trains_on_the_tokens_given(cli):
    """`--target 8B` is planned as the nearest Llama shape, 7.95B parameters; its row trains on the 320B tokens asked
    for, not 318B (tokens were scaled by 7.95B / 8B), and the smaller members scale from that shape's count."""
    members = plan(8e9, 320e9, family=[1e9, 2e9, 4e9, 8e9])["family"]["members"]
    assert members[-1]["tokens"] == 320e9 and members[-1]["num_parameters"] != 8e9
    for member in members:
        assert member["tokens"] == pytest.approx(320e9 * member["num_parameters"] / members[-1]["num_parameters"])
    table = cli("plan", "--target", "8B", "--tokens", "320B", "--family", "1B,2B,4B,8B").stdout
    assert re.search(r"│ 7\.95B +│ [0-9]+ × 4096 +│ 32/32 × 128 +│ 11008 +│ 320B +│", table), table


def test_the_ledger_shows_each_members_heads_and_ffn(cli, tmp_path):
    """The table showed only layers × hidden: a member's query and KV heads, head_dim and FFN size — what `grow
    expand` grows it into the next with, and where a GQA family's members differ from the target (narrower by whole
    KV groups) — were in --json alone."""
    target = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 8,
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "vocab_size": 2048,
    }
    (tmp_path / "config.json").write_text(json.dumps(target))
    args = ("plan", "--target", tmp_path, "--tokens", "10B", "--family", "10M,30M")
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert "heads (q/kv × dim)" in result.stdout and "FFN" in result.stdout
    members = json.loads(cli(*args, "--json").stdout)["family"]["members"]
    rows = [
        (m["layers"], m["hidden_size"], m["config"]["num_attention_heads"], m["config"]["intermediate_size"])
        for m in members
    ]
    assert rows == [(1, 768, 12, 2048), (4, 768, 12, 2048), (8, 1024, 16, 2816)]  # 12 query heads: 3 KV groups
    for layers, hidden, heads, ffn in rows:
        row = rf"│ {layers} × {hidden} +│ {heads}/{heads // 4} × 64 +│ {ffn} +│"
        assert re.search(row, result.stdout), result.stdout


def test_print_table_never_narrower_than_its_content():
    import io

    from rich.console import Console
    from rich.table import Table

    from grow_cli.console import print_table

    console = Console(file=io.StringIO(), width=30, highlight=False)
    table = Table("member", "independent FLOPs", "progressive tokens")
    table.add_row("7.95B", "1.64e+22", "139B")
    print_table(table, console)
    text = console.file.getvalue()
    assert "1.64e+22" in text and "independent FLOPs" in text and "…" not in text
    assert console.width == 30  # the console is left as it was


def test_guideline_says_when_it_does_not_apply(cli):
    result = cli("plan", "--target", "135M", "--tokens", "2B")
    assert "gives no usable growth timing at this scale" in result.stdout
    assert plan(8e9, 320e9)["stacking"]["applies"]


def test_family_sizes_that_round_to_one_shape_are_listed_once():
    result = plan(135e6, 2e12)
    shapes = [(m["layers"], m["hidden_size"]) for m in result["family"]["members"]]
    assert len(shapes) == len(set(shapes)) == 3  # 1/8 and 1/4 of 135M are both one 768-wide layer
    assert len(result["family"]["notes"]) == 1 and "same 1 × 768 shape" in result["family"]["notes"][0]
    assert plan(8e9, 1e12)["family"]["notes"] == []


@pytest.mark.parametrize(
    "family, why",
    [
        (["1B", "1B", "8B"], "1B parameters is given twice; listed once"),
        (["1B", "1.01B", "8B"], "the two sizes differ by less than one layer of that shape"),
        (["2M", "3M", "8B"], "beside the embeddings (49.2M parameters) less than one and a half layers"),
        (["60M", "62M", "8B"], "the two sizes differ by less than one layer of that shape (7.08M parameters)"),
    ],
)
def test_a_collapsed_family_size_says_why(family, why):
    """Each collapsed size gets the reason that holds for it: a size given twice, two sizes less than a layer apart,
    or sizes so small that both are one layer beside the embeddings — only the last is about the embeddings (the
    note used to blame them for every collapse, 1B,1B included)."""
    notes = plan(8e9, 1e12, family=family)["family"]["notes"]
    assert len(notes) == 1 and why in notes[0], notes
    assert ("embeddings" in notes[0]) == ("embeddings" in why), notes


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "8B", "--tokens", "1T", "--seq-len", "0"], "--seq-len must be between 1"),
        (["--target", "1e300", "--tokens", "1T"], "--target 1e\\+300 parameters is outside"),
        (["--target", "8B", "--tokens", "1e40"], "--tokens 1e\\+40 tokens is outside"),
        (["--target", "8B", "--tokens", "1T", "--family", "1B,1e30"], "a --family size 1e\\+30 parameters"),
        (
            ["--target", "1B", "--tokens", "20B", "--family", "2B,1B"],
            "a --family size \\(2e\\+09 parameters\\) is larger",
        ),
        (
            ["--target", "8B", "--tokens", "1T", "--family", "1B,8.5B"],
            "a --family size \\(8.5e\\+09 parameters\\) is larger than the target \\(8e\\+09; a size within 5% of",
        ),
    ],
)
def test_plans_outside_the_fitted_range_are_refused(cli, args, message):
    result = cli("plan", *args)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and re.search(message, lines[0]), result.stderr


# Llama-3.1-8B's config.json as `grow plan --target` reads a folder holding it (counted on the meta device).
LLAMA31_8B = {
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "num_parameters": 8_030_261_248,
}


@pytest.mark.parametrize(
    "family, left_out",
    [
        (["1B", "2B", "4B", "8B"], False),
        (["1B", "2B", "4B", "8.3B"], False),
        (["1B", "2B", "4B", "7.8B", "8B"], False),
        (["1B", "2B", "4B"], True),
    ],
)
def test_the_target_is_always_the_familys_last_member(family, left_out):
    """The family of an 8.03B target with --family 1B,2B,4B,8B ended in a 7.53B model (32 × 4096 on 14.1T tokens), a
    different one, and left the target out: only its exact parameter count was taken as the target. A size within 5%
    of the target is the target, and a family that names none ends with it all the same, saying so."""
    report = plan(LLAMA31_8B, "15T", family=family)
    members, notes = report["family"]["members"], report["family"]["notes"]
    last = members[-1]
    shown = (last["num_parameters"], last["layers"], last["hidden_size"], last["tokens"])
    assert shown == (8_030_261_248, 32, 4096, 15e12)
    assert len(members) == 4 and all(m["num_parameters"] < 4.5e9 for m in members[:-1]), members
    assert any("the target is the family's last member" in note for note in notes) == left_out, notes


@pytest.mark.parametrize("layers, option", [(32, "--depth-factor 4"), (30, "--layers 30"), (33, "--layers 33")])
def test_stacking_command_grows_the_small_model_to_the_targets_depth(layers, option):
    """The quarter-depth small model grown by the printed command has the target's depth: ×4 would make 28 of 30."""
    target = {"num_hidden_layers": layers, "hidden_size": 576, "vocab_size": 49152, "num_parameters": 135e6}
    stacking = plan(target, 1e12)["stacking"]
    assert stacking["small_model"]["num_hidden_layers"] == layers // 4
    assert stacking["command"] == f"grow expand SMALL OUT {option} --depth-method stack"


# SmolLM2-135M's config.json: `grow inspect` of the real checkpoint (converted by benchmarks/real_smollm2.py) counts
# 134,515,008 parameters; its head is tied, so its embeddings are one 49152 × 576 matrix.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}


@pytest.mark.parametrize("name", ["llama_tied", "gpt2", "bert"])
def test_a_config_without_weights_counts_as_its_checkpoint_does(tiny_checkpoints, tmp_path, name):
    """A folder holding only config.json (a target not trained yet) counts the parameters inspect counts in the
    checkpoint, from the model built on the meta device."""
    import shutil

    from grow_cli.growth.describe import describe_shape, inspect

    checkpoint = tiny_checkpoints(name)
    shutil.copy(checkpoint / "config.json", tmp_path / "config.json")
    counted = describe_shape(tmp_path)
    info = inspect(str(checkpoint))
    assert counted["num_parameters"] == info["num_parameters"] and counted["layers"] == info["layers"]
    assert counted["tie_word_embeddings"] == info["tie_word_embeddings"]


def test_plan_a_target_config_with_a_tied_head(cli, tmp_path):
    """`grow plan --target` a config folder (or its config.json) plans; the tied head is one matrix, so the
    quarter-depth small model is 28.3M embeddings + 7 of the 30 layers (it once counted the head twice: 74.8M)."""
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    for target in (tmp_path, tmp_path / "config.json"):
        result = cli("plan", "--target", target, "--tokens", "1T", "--json")
        assert result.code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["target"]["num_parameters"] == 134_515_008
        embeddings = 49152 * 576
        per_layer = (134_515_008 - embeddings) / 30
        assert report["stacking"]["small_model"]["num_parameters"] == int(embeddings + 7 * per_layer)


def test_a_bert_target_config_plans_in_whole_counts_and_quietly(cli, tmp_path):
    """A BERT config without `architectures` is counted on a model transformers builds as a causal LM, which warned
    "If you want to use `BertLMHeadModel` as a standalone, add `is_decoder=True.`" on stderr; and the parameter
    counts of `--json` came out as floats (109514298.0)."""
    import logging

    from transformers import BertConfig
    from transformers.utils import logging as hf_logging

    BertConfig().save_pretrained(tmp_path)
    said: list[str] = []  # (transformers' own handler writes to the stderr it was created with, not the test's)
    heard = logging.Handler()
    heard.emit = lambda record: said.append(record.getMessage())
    hf_logging.get_logger().addHandler(heard)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        result = cli("plan", "--target", tmp_path, "--tokens", "1B", "--json")
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.get_logger().removeHandler(heard)
    assert result.code == 0 and result.stderr == "" and said == [], (result.stderr, said)
    report = json.loads(result.stdout)
    counts = [report["target"]["num_parameters"], report["stacking"]["num_parameters"]]
    for member in report["family"]["members"]:
        counts += [member[key] for key in ("num_parameters", "active_parameters", "matmul_parameters")]
    assert all(type(count) is int for count in counts), counts
    assert report["target"]["num_parameters"] == report["family"]["members"][-1]["num_parameters"] == 109_514_298


def test_a_target_config_transformers_cannot_build_is_one_line(cli, tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 30, '
        '"num_attention_heads": 4, "intermediate_size": 8, "vocab_size": 16}'
    )
    result = cli("plan", "--target", tmp_path, "--tokens", "1T")
    lines = result.stderr.strip().splitlines()
    assert result.code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_a_target_folder_too_small_to_plan_is_named_as_the_target(cli, tmp_path):
    """A model folder below the fitted range is refused as `--target`, like a count is; it used to be refused as
    "a --family size" (its default member target/8), naming an option the user never gave."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                **SMOLLM2_CONFIG,
                "hidden_size": 64,
                "head_dim": 16,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "vocab_size": 512,
            }
        )
    )
    result = cli("plan", "--target", tmp_path, "--tokens", "1T")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.stderr
    assert re.search("--target .* parameters is outside", lines[0]) and "--family" not in lines[0], lines[0]


def test_family_members_of_a_target_folder_never_outgrow_it(cli, tmp_path):
    """Members below a 576-wide target once came out 768 wide (the nearest Llama width), a family no growth can
    build (growth only widens); they now stay within its hidden and FFN sizes and share its tied head."""
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "tie_word_embeddings")
    target = {k: SMOLLM2_CONFIG[k] for k in keys} | {"num_parameters": 134_515_008}
    members = plan(target, 1e12, family=[40e6, 80e6, 134_515_008])["family"]["members"]
    assert [m["hidden_size"] for m in members] == [576, 576, 576]
    assert [m["layers"] for m in members] == sorted(m["layers"] for m in members) and members[-1]["layers"] == 30
    embeddings, per_layer = 49152 * 576, 4 * 576 * 576 + 3 * 576 * 1536 + 2 * 576
    assert members[0]["num_parameters"] == embeddings + members[0]["layers"] * per_layer + 576  # one tied matrix


def test_plan_from_python_takes_what_the_command_takes(tmp_path):
    """`grow_cli.plan` reads counts ("7B", "2T"), a model folder or its config.json, as `grow plan` does; a path that
    does not exist is named, not read as a malformed count."""
    import grow_cli

    assert grow_cli.plan("7B", "2T", family=["1B", "7B"]) == plan(7e9, 2e12, family=[1e9, 7e9])
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    for target in (tmp_path, str(tmp_path / "config.json")):
        assert grow_cli.plan(target, 1e12)["target"]["num_parameters"] == 134_515_008
    for missing in (tmp_path / "nothing", "./nothing/config.json"):
        with pytest.raises(grow_cli.UsageError, match="no such model folder"):
            grow_cli.plan(missing, 1e12)


@pytest.mark.parametrize(
    "args, line",
    [
        (["--target", "1B", "--tokens", "0"], "error: --tokens: '0' must be positive"),
        (["--target", "0", "--tokens", "1T"], "error: --target: '0' must be positive"),
        (["--target", "1B", "--tokens", "-5B"], "error: --tokens: '-5B' must be positive"),
        (["--target", "8B", "--tokens", "1T", "--family", "-1"], "error: --family: '-1' must be positive"),
        (["--target", "-1B", "--tokens", "1T"], "error: --target: '-1B' must be positive"),
        (["--target", "1B", "--tokens", "1T", "--family", "1B,"], "error: --family: cannot read '' as a count"),
        (["--target", "8B", "--tokens", "1T", "--family", "1B 2B"], "error: --family: '1B 2B' holds several sizes;"),
        (["--target", "5M", "--tokens", "1T"], "error: --target 5M: no Llama-style shape comes near 5M parameters"),
        (["--target", "my-model", "--tokens", "1T"], "error: --target 'my-model' is neither a count (a number"),
        (["--target", "1.2.3B", "--tokens", "2T"], "error: --target: cannot read '1.2.3B' as a count; use a number"),
        (["--target", "1B", "--tokens", "..T"], "error: --tokens: cannot read '..T' as a count; use a number"),
    ],
)
def test_a_bad_count_names_its_option(cli, args, line):
    """Two options take counts; a refusal names the one at fault (once: "'0' must be positive", of either), and a
    default family the user never gave is not blamed on --family. A malformed number (1.2.3B) is refused the same
    way: it once reached `float` and came out as the catch-all "ValueError: could not convert string to float"."""
    result = cli("plan", *args)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith(line), result.stderr


@pytest.mark.parametrize("count", ["1M", "50M"])
def test_a_count_no_llama_shape_comes_near_is_refused(count):
    """`--target 1M` was planned as a 56.2M model (one 768-wide layer beside a 32k vocabulary's 49.2M embeddings):
    the guideline used 1M, the ledger's target row and the small model 56.2M ("grow it ×1.0 in depth", to 1 layer).
    A count whose nearest shape is more than 10% off is refused, naming that shape; 60M (63.3M) still plans."""
    with pytest.raises(
        UsageError,
        match=f"--target {count}: no Llama-style shape comes near {count} parameters .*"
        "the nearest shape, 1 layer × 768 hidden, has 56.2M",
    ):
        plan(count, "1B")
    assert plan("60M", "1B")["target"]["config"]["num_parameters"] == pytest.approx(60e6, rel=0.1)


def test_a_one_layer_target_gets_no_stacking_command(cli, tmp_path):
    """A 1-layer target's "small model" was the target itself, "grown ×1.0 in depth" by `grow expand SMALL OUT
    --layers 1`, which `grow expand` refuses (nothing to grow): there is no shallower model to stack from."""
    config = {**SMOLLM2_CONFIG, "num_hidden_layers": 1, "hidden_size": 256, "num_attention_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 4, "vocab_size": 4096}))
    args = ("plan", "--target", tmp_path, "--tokens", "20B", "--family", "1M")
    stacking = json.loads(cli(*args, "--json").stdout)["stacking"]
    assert stacking["applies"] is False and stacking["command"] is None and stacking["small_model"] is None
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert "grow expand SMALL" not in result.stdout and "train a small model" not in result.stdout
    assert "a 1-layer target has no shallower model to grow from by stacking" in result.stdout
    assert "d exceeds the target's whole budget" not in result.stdout  # d is within the 20B tokens
    two = plan(
        {"num_hidden_layers": 2, "hidden_size": 256, "vocab_size": 4096, "num_parameters": 3.5e6}, 2e10, family=[1e6]
    )
    assert two["stacking"]["command"] == "grow expand SMALL OUT --layers 2 --depth-method stack"
    with pytest.raises(UsageError, match="the default family of --target 3.5e\\+06 parameters starts at"):
        plan({**two["target"]["config"], "num_parameters": 3.5e6}, 2e10)  # (a count this small is refused above)


def test_a_target_that_is_a_file_but_no_config_json_is_named_a_file(cli, tmp_path):
    """A file given as --target was read as a folder: "notes.txt has no config.json; is it a Hugging Face model
    folder?"."""
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("plan", "--target", tmp_path / "notes.txt", "--tokens", "1T", "--json")
    assert result.code == 2 and result.stdout == "", result.stdout
    assert (
        result.stderr.strip()
        == f"error: --target {tmp_path / 'notes.txt'} is a file; give a model folder, or the config.json in one"
    )


def test_train_stage_refuses_a_malformed_token_count_in_one_line(cli, tmp_path):
    """`train-stage --max-tokens` reads counts with the same parser: 1.2.3 is a usage error naming the option, not
    the catch-all ValueError (exit 1) it once was."""
    result = cli(
        "train-stage", tmp_path / "m", "--data", tmp_path / "d", "--out", tmp_path / "o", "--max-tokens", "1.2.3"
    )
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --max-tokens: cannot read '1.2.3' as a count; use a number"), lines


@pytest.mark.parametrize("value", ["-1B", "-5M", "-0.5K"])
def test_train_stage_refuses_a_negative_token_count_as_not_positive(cli, tmp_path, value):
    """`--max-tokens -1B` said "cannot read '-1B'", where -1 and 0 are refused as out of range."""
    result = cli(
        "train-stage", tmp_path / "m", "--data", tmp_path / "d", "--out", tmp_path / "o", "--max-tokens", value
    )
    assert result.code == 2 and result.stderr.splitlines() == [f"error: --max-tokens: '{value}' must be positive"]


def test_the_growth_factor_is_the_one_the_command_makes(cli, tmp_path):
    """A 30-layer target has a 7-layer small model (30 // 4): the plan says ×4.29, what `--layers 30` does, not
    G_stack's nominal ×4 beside a command that does something else."""
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2_CONFIG, "num_hidden_layers": 30}))
    report = json.loads(cli("plan", "--target", tmp_path, "--tokens", "2T", "--json").stdout)
    stacking = report["stacking"]
    assert stacking["small_model"]["num_hidden_layers"] == 7 and stacking["command"].endswith(
        "--layers 30 --depth-method stack"
    )
    assert stacking["growth_factor"] == 4.29


@pytest.mark.parametrize("family", [[1e9, 2e9, 4e9, 8e9], [1e8, 3e8, 1e9, 8e9], [2e9, 2.5e9, 8e9]])
def test_each_family_member_grows_into_the_next(family):
    """Depth and width never shrink from one member to the next, so each member can be grown into the next: shapes
    chosen per size alone gave 1B as 17 × 2048 and 2B as 16 × 3072, a step no growth takes."""
    members = plan(8e9, 320e9, family=family)["family"]["members"]
    for smaller, larger in itertools.pairwise(members):
        assert smaller["layers"] <= larger["layers"], (smaller, larger)
        assert smaller["hidden_size"] <= larger["hidden_size"], (smaller, larger)


@pytest.mark.parametrize("target", ["1B", "2B", "3B"])
def test_a_member_the_next_ones_depth_caps_is_made_wider_not_left_far_below_its_size(cli, target):
    """A member may be no deeper than the next larger one; at its own table width that cap left it far below its size:
    the default family of a 1B target (17 layers) was 127M, 245M, 284M for the 500M member, and a 2B target's 250M
    and 500M members were 245M and 271M. A member the cap leaves more than 10% short is made wider instead, still
    within the next member's width and heads, so it grows into it."""
    result = cli("plan", "--target", target, "--tokens", "20B", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    members, n = report["family"]["members"], report["target"]["num_parameters"]
    for member, size in zip(members, [n / 8, n / 4, n / 2], strict=False):
        assert member["num_parameters"] >= 0.9 * size, (size, member["config"])
    for smaller, larger in itertools.pairwise(m["config"] for m in members):
        for key in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"):
            assert smaller[key] <= larger[key], (key, smaller, larger)
        assert smaller["head_dim"] == larger["head_dim"]


@pytest.mark.parametrize("kv_heads", [4, 1, 16])  # GQA (4 query heads per KV head), MQA, MHA
def test_grows_own_planner_grows_each_member_of_a_family_into_the_next(tmp_path, kv_heads):
    """Members of a 1024-wide target with 16 heads of 64 were multi-head attention at whatever width they came out:
    768 wide, 12 query and 12 KV heads, which no width growth turns into the target's 4 KV heads (`grow expand
    --num-kv-heads 4` refuses: "smaller than the source's 12"). They now keep the target's head_dim, hidden size per
    head and heads per KV head: grow's own planner grows each member into the next, and each member's count is that
    of the model transformers builds from its config."""
    import torch
    import transformers as tf

    from grow_cli.growth.plan import build_plan
    from grow_cli.growth.spec import GrowthSpec

    def config_of(shape):
        keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 2048} | {
            k: shape[k] for k in (*keys, "head_dim") if k in shape
        }

    def head_dim(config):
        return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]

    def built(config):  # {name: (shape, dtype)} and the parameter count of the model, built without memory
        with torch.device("meta"):
            model = tf.LlamaForCausalLM(tf.LlamaConfig(**config))
        return {n: (tuple(t.shape), "F32") for n, t in model.state_dict().items()}, model.num_parameters()

    target = config_of(
        {"num_hidden_layers": 8, "hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16}
    ) | {"num_key_value_heads": kv_heads}
    (tmp_path / "config.json").write_text(json.dumps(target))
    members = plan(str(tmp_path), "10B", family=["10M", "30M"])["family"]["members"]
    assert [(m["layers"], m["hidden_size"]) for m in members] == [(1, 768), (4, 768), (8, 1024)]
    for member in members:
        assert built(config_of(member["config"]))[1] == member["num_parameters"], member["config"]
    flags = {  # each config key's `grow expand` option, as a GrowthSpec field
        "hidden_size": "hidden_size",
        "intermediate_size": "intermediate_size",
        "num_attention_heads": "num_heads",
        "num_key_value_heads": "num_kv_heads",
    }
    for smaller, larger in itertools.pairwise(config_of(m["config"]) for m in members):
        wider = any(smaller[k] != larger[k] for k in flags)
        deeper = smaller["num_hidden_layers"] != larger["num_hidden_layers"]
        spec = GrowthSpec(
            layers=larger["num_hidden_layers"] if deeper else None,
            **({flag: larger[k] for k, flag in flags.items()} if wider else {}),
        )
        grown = build_plan(smaller, built(smaller)[0], spec)
        assert {t.name: t.shape for t in grown.tensors} == {name: s for name, (s, _) in built(larger)[0].items()}
        assert {k: grown.target_config[k] for k in flags} == {k: larger[k] for k in flags}
        # head_dim: written out by width growth, else hidden / heads, as in the target's config.json
        assert head_dim(grown.target_config) == head_dim(larger)


def test_a_target_config_whose_heads_form_no_kv_groups_is_refused():
    """The members follow the target's heads per KV head, so a config dict whose heads are not a whole number of KV
    groups is refused in one line rather than planned into fractional heads."""
    target = {"num_hidden_layers": 8, "hidden_size": 384, "vocab_size": 2048, "num_parameters": 20e6}
    with pytest.raises(UsageError, match=r"num_attention_heads \(6\) must be a whole multiple of its num_key_value"):
        plan(target | {"num_attention_heads": 6, "num_key_value_heads": 4}, 1e9)


def _gpt2():
    import transformers as tf

    config = tf.GPT2Config(vocab_size=2048, n_embd=128, n_layer=4, n_head=4, n_positions=1024)
    return tf.GPT2LMHeadModel(config)


def _bert():
    import transformers as tf

    config = tf.BertConfig(vocab_size=2048, hidden_size=128, num_hidden_layers=4, num_attention_heads=4)
    return tf.BertForMaskedLM(config)


def _llama(tied: bool):
    def build():
        import transformers as tf
        from tinylm import tiny_config

        shape = dict(hidden_size=256, intermediate_size=512, vocab_size=2048)  # ~2-3M parameters: plan's range
        return tf.LlamaForCausalLM(tiny_config(tie_word_embeddings=tied, **shape))

    return build


@pytest.mark.parametrize("build", [_llama(False), _llama(True), _gpt2, _bert], ids=["llama", "tied", "gpt2", "bert"])
def test_the_ledger_counts_flops_as_train_stage_does_and_torch_measures(tmp_path, build):
    """PaLM's 6·N leaves out the embedding tables, lookups: the plan used to count an untied input embedding, so its
    FLOPs per token disagreed with those train-stage logs for the same model (by 1.6% at 8B, far more at small
    sizes); both counted learned positions and BERT's token types, which put a tiny GPT-2 at 1.94× and a BERT at
    2.27× the FLOPs torch's counter measures. The count is 3× the forward pass's matrix products as torch counts them
    (eager attention, whose two products per layer are PaLM's attention term), within the norms and biases that N
    holds and no product runs."""
    from torch.utils.flop_counter import FlopCounterMode

    from grow_cli.train.metrics import flops_per_token

    model = build().eval()
    model.set_attn_implementation("eager")
    model.save_pretrained(tmp_path)
    seq_len = 32
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(3, 2048, (1, seq_len)))
    assert flops_per_token(model, seq_len) == pytest.approx(3 * counter.get_total_flops() / seq_len, rel=0.02)
    params = sum(p.numel() for p in model.parameters())
    member = plan(str(tmp_path), 1e9, family=[params], seq_len=seq_len)["family"]["members"][0]
    assert member["flops_per_token"] == flops_per_token(model, seq_len)


def test_a_target_under_the_home_folder_is_read_as_inspect_reads_it(cli, tmp_path, monkeypatch):
    """`--target=~/my-model` (the shell leaves `~` after `=` alone) was "no such model folder", where `grow inspect
    ~/my-model` reads the folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    result = cli("plan", "--target=~/my-model", "--tokens", "1T", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["target"]["num_parameters"] == 134_515_008


def test_a_huge_token_count_reads_as_a_count(cli):
    """`--tokens 1e16`, the top of the range grow plans for, printed as `1e+04T tokens` (3 significant digits of
    10,000 in T), and 999.7B as 1e+03B, then as 1,000B (plan's ledger: 474B, 526B, 1,000B, 2T); a count that 3 digits
    round up to the next suffix is written in it, and past the last suffix a count is written out whole."""
    from grow_cli.quantities import format_count

    assert format_count(1e16) == "10,000T" and format_count(2.5e15) == "2,500T" and format_count(999e12) == "999T"
    assert format_count(999.7e9) == "1T" and format_count(999.7) == "1K" and format_count(0.5) == "0.5"
    assert format_count(999.4e9) == "999B" and format_count(999.5e6) == "1B" and format_count(1.5e12) == "1.5T"
    assert format_count(7.95e9) == "7.95B" and format_count(135e6) == "135M" and format_count(950) == "950"
    result = cli("plan", "--target", "1B", "--tokens", "1e16")
    assert result.code == 0 and "1B parameters, 10,000T tokens" in result.stdout, result.stdout
