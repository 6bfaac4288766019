"""Staged training's restart step (grow_cli/growth/restart.py): from the loss at growth where the source's curve
allows, by the paper's c_op ratio otherwise."""

from __future__ import annotations

import pytest

from grow_cli.growth.restart import ALPHA_N, ALPHA_S, C_OP, FIT_RULE, RATIO_RULE, suggest_restart


def kaplan(a: float, b: float, steps: range) -> dict[int, float]:
    return {s: a + b * s**-ALPHA_S for s in steps}


def test_a_kaplan_shaped_curve_gives_the_step_where_the_grown_model_reaches_the_loss():
    a, b, step = 2.0, 30.0, 400
    losses = kaplan(a, b, range(1, step + 1))
    result = suggest_restart(step, losses, warmup=10, params=1_000_000, grown_params=4_000_000, growth="width")
    floor = a * 0.25**ALPHA_N
    at_growth = sum(losses[s] for s in range(step - 9, step + 1)) / 10  # the measured loss: the last 10 steps
    expected = (b / (at_growth - floor)) ** (1 / ALPHA_S)
    assert result["rule"] == FIT_RULE and result["suggested_step"] == round(expected)
    assert result["fit"]["A"] == pytest.approx(a) and result["fit"]["B"] == pytest.approx(b)
    assert 1 <= result["suggested_step"] < step  # the larger model gets there sooner
    assert result["by_ratio"] == round(step / C_OP["width"])


@pytest.mark.parametrize(
    "losses, why",
    [
        ({s: 5.0 - 0.01 * s for s in range(1, 15)}, "too few points"),
        ({s: 5.0 for s in range(1, 100)}, "flat"),
        ({s: 6.0 - 0.02 * s for s in range(1, 100)}, "not Kaplan-shaped: a straight line"),
    ],
)
def test_without_a_usable_curve_the_papers_ratio_is_used(losses, why):
    result = suggest_restart(99, losses, warmup=0, params=1, grown_params=2, growth="depth")
    assert result["rule"] == RATIO_RULE and result["suggested_step"] == round(99 / C_OP["depth"]), why
