"""`grow plan` (`grow_cli.family.budget`): the stacking guideline reproduces the paper's table; the ledger and LR rule
are consistent."""

from __future__ import annotations

import json

import pytest

from grow_cli.errors import UsageError
from grow_cli.family.budget import family_ledger, parse_count, plan, stacking_growth_tokens

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
    assert report["stacking"]["growth_factor"] == 4
    assert report["stacking"]["growth_tokens"] == pytest.approx(11.11e9, rel=5e-3)
    small = report["stacking"]["small_model"]
    assert small["num_hidden_layers"] == report["target"]["config"]["num_hidden_layers"] // 4
    members = report["family"]["members"]
    assert len(members) == 4 and members[-1]["params"] == pytest.approx(report["target"]["config"]["num_parameters"])
    assert [m["max_lr"] for m in members] == sorted((m["max_lr"] for m in members), reverse=True)


def test_ledger_arithmetic():
    members = [
        {"params": 1e9, "layers": 16, "hidden": 2048, "tokens": 40e9},
        {"params": 2e9, "layers": 16, "hidden": 2816, "tokens": 80e9},
    ]
    book = family_ledger(members, seq_len=1024, new_token_fraction=0.5)
    per_token = [6 * m["params"] + 12 * m["layers"] * m["hidden"] * 1024 for m in members]
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
    with pytest.raises(UsageError):
        parse_count("lots")
    result = cli("plan", "--target", "huge", "--tokens", "1T")
    assert result.code == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
