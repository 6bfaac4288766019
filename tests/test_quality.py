"""The equal-quality arithmetic of the family report, on synthetic held-out curves: reached (interpolated), reached
by the first evaluation (an upper bound), never reached (a lower bound), and Yano et al.'s family total."""

from __future__ import annotations

import pytest

from grow_cli.family.quality import (
    PUBLISHED,
    eval_curve,
    family_saving,
    flops_to_reach,
    member_saving,
    saving_phrase,
    saving_text,
    unrecorded_source_bound,
)

# A from-scratch held-out curve: (FLOPs so far, loss), falling.
CURVE = [(1e12, 6.0), (2e12, 5.0), (3e12, 4.5), (4e12, 4.2)]


def test_eval_curve_reads_metrics_and_places_the_final_eval_at_the_last_token():
    metrics = [
        {"step": 1, "loss": 7.0, "tokens": 100, "flops_per_token": 10.0},
        {"step": 2, "loss": 6.0, "tokens": 200, "eval_loss": 6.5},
        {"step": 3, "loss": 5.5, "tokens": 300},
        {"step": 3, "eval_loss": 5.9},  # the final evaluation carries no token count
    ]
    assert eval_curve(metrics) == [(2000.0, 6.5), (3000.0, 5.9)]


def test_reached_is_interpolated_between_the_evaluations_around_the_crossing():
    reach = flops_to_reach(CURVE, 4.75)  # halfway between 5.0 (2e12) and 4.5 (3e12)
    assert reach["status"] == "reached" and reach["flops"] == pytest.approx(2.5e12)
    entry = member_saving(2e12, 4.75, CURVE)
    assert entry["saving"] == pytest.approx(1 - 2e12 / 2.5e12) and entry["bound"] == "="
    assert saving_text(entry) == "20.0%" and saving_phrase(entry) == "20.0% less"
    dearer = member_saving(3e12, 4.75, CURVE)
    assert dearer["saving"] == pytest.approx(-0.2) and saving_phrase(dearer) == "20.0% more"


def test_reached_at_the_first_evaluation_is_an_upper_bound():
    entry = member_saving(0.5e12, 6.2, CURVE)
    assert entry["status"] == "by-first-eval" and entry["bound"] == "≤"
    assert entry["saving"] == pytest.approx(0.5) and saving_text(entry) == "≤ 50.0%"
    assert saving_phrase(entry) == "at most 50.0% less"


def test_not_reached_is_a_lower_bound_with_the_reason():
    entry = member_saving(3e12, 4.0, CURVE)
    assert entry["status"] == "not-reached" and entry["bound"] == ">"
    assert entry["scratch_flops_needed"] == 4e12 and entry["scratch_final_loss"] == 4.2
    assert entry["saving"] == pytest.approx(0.25) and saving_text(entry) == "> 25.0%"
    assert saving_phrase(entry) == "at least 25.0% less"
    # A grown member that cost more than the whole scratch run and is still better: at most x% more.
    assert saving_phrase(member_saving(5e12, 4.0, CURVE)) == "at most 25.0% more"
    assert flops_to_reach([], 4.0)["status"] == "not-reached"


def test_family_total_is_yanos_measure():
    # first member 1e12; second grown for 1e12 more (lineage 2e12), third for 2e12 more (lineage 4e12).
    second = member_saving(2e12, 4.75, CURVE)  # scratch needs 2.5e12
    third = member_saving(4e12, 4.35, CURVE)  # scratch needs 3.5e12
    family = family_saving(1e12, [second, third], ["m2", "m3"])
    assert family["progressive_flops"] == 4e12
    assert family["independent_flops_needed"] == pytest.approx(1e12 + 2.5e12 + 3.5e12)
    assert family["saving"] == pytest.approx(1 - 4 / 7) and family["bound"] == "="
    # A member whose scratch run never got there makes the family figure a lower bound, and says why.
    unreached = member_saving(4e12, 4.0, CURVE)
    family = family_saving(1e12, [second, unreached], ["m2", "m3"])
    assert family["bound"] == ">" and family["independent_flops_needed"] == pytest.approx(7.5e12)
    assert "m3: from scratch never reached 4.0000" in family["reason"]
    # Bounds in both directions leave it undetermined; a member without a baseline leaves it unmeasured.
    early = member_saving(0.5e12, 6.2, CURVE)
    assert saving_text(family_saving(1e12, [early, unreached], ["m2", "m3"])) == "undetermined"
    missing = family_saving(1e12, [second, None], ["m2", "m3"])
    assert missing["saving"] is None and "m3" in missing["reason"]


@pytest.mark.parametrize(
    "saving,bound,member,family",
    [
        (0.2, "=", "≤", "≤"),  # the source's cost lowers a member's saving, and moves the family's towards zero
        (0.2, "≤", "≤", "≤"),
        (0.2, ">", "?", "?"),  # "at least" no longer holds once a cost is missing from the grown side
        (-0.2, "=", "≤", ">"),  # a family dearer than scratch: counting the source on both sides makes it less so
        (-0.2, ">", "?", ">"),
        (-0.2, "≤", "≤", "?"),
    ],
)
def test_a_source_whose_training_is_unrecorded_leaves_each_figure_a_one_sided_bound(saving, bound, member, family):
    """A first member from a source grow did not train: its cost was counted nowhere, yet the report said 'at least
    x% less … the saving is larger than this' and that the first member 'counts the same on both sides'."""
    entry = {"saving": saving, "bound": bound, "explanation": "from scratch reached 4.0"}
    weakened = unrecorded_source_bound(entry, "small's source has no training in its grow.json", family=False)
    assert weakened["bound"] == member and weakened["explanation"].startswith("from scratch reached 4.0; small's")
    assert unrecorded_source_bound({**entry, "reason": None}, "why", family=True)["bound"] == family


def test_the_report_says_what_an_unrecorded_source_leaves_out(monkeypatch):
    import grow_cli.family.report as report

    rows = [
        {"name": "small", "final_eval_loss": 5.0, "lineage_flops": 1e12, "progressive_flops": 1e12},
        {"name": "big", "final_eval_loss": 4.0, "lineage_flops": 2e12, "progressive_flops": 1e12},
    ]
    rows[0]["source_unrecorded"] = True
    summaries = [{"name": "small"}, {"name": "big", "baseline": {"out": "scratch"}}]
    # from scratch: 4.5 at 2e12 FLOPs, 3.5 at 4e12, so big's 4.0 at 3e12 (33% saved), the family's 50%
    scratch = [{"tokens": 1, "flops_per_token": 2e12, "eval_loss": 4.5}, {"tokens": 2, "eval_loss": 3.5}]
    monkeypatch.setattr(report, "member_metrics", lambda folder: scratch)
    quality = report.equal_quality(summaries, {"members": rows}, baselines=True)
    assert quality["source_unrecorded"] == "small" and quality["members"][0]["bound"] == "≤"
    assert quality["family"]["saving"] == pytest.approx(0.5) and quality["family"]["bound"] == "≤"
    text = report.headline(quality)
    assert "cost at most 50.0% less compute" in text and "at least" not in text
    assert text.endswith(
        "a bound, not an exact figure: small's source has no training in its grow.json, so whatever "
        "trained it is not counted and the saving is at most this."
    )


def test_each_published_saving_is_the_band_its_text_states():
    """`grow plan --json` and the family report give a published measurement's band (`saving`), the table its text:
    the two must say the same. Yano et al.'s band began at 25% where its text, as the paper, says 26% with one fixed
    max LR (and 31% with the max LR lowered by size)."""
    for entry in PUBLISHED:
        low, high = entry["saving"]
        assert f"{low:.0%}" in entry["text"] and f"{high:.0%}" in entry["text"], entry


def test_eval_curve_charges_each_step_its_own_flops_per_token():
    """Under Apollo each step runs at the depths it sampled and its record carries their FLOPs per token; the curve
    took the first record's for every token, charging a from-scratch run with `apollo_stages` 27% less than the
    train_flops it recorded (and its grown member, whose ledger reads train_flops, what it spent)."""
    metrics = [
        {"step": 1, "loss": 7.0, "tokens": 100, "flops_per_token": 10.0},
        {"step": 2, "loss": 6.0, "tokens": 200, "flops_per_token": 20.0, "eval_loss": 6.5},
        {"step": 3, "loss": 5.5, "tokens": 300, "flops_per_token": 40.0},
        {"step": 3, "eval_loss": 5.9},
    ]
    assert eval_curve(metrics) == [(3000.0, 6.5), (7000.0, 5.9)]


@pytest.mark.parametrize(
    "saving, bound, text, phrase",
    [
        (0.29996, ">", "> 29.9%", "at least 29.9% less"),
        (0.40004, "≤", "≤ 40.1%", "at most 40.1% less"),
        (-0.04236, ">", "> -4.3%", "at most 4.3% more"),
        (-0.04236, "≤", "≤ -4.2%", "at least 4.2% more"),
        (0.29996, "=", "30.0%", "30.0% less"),
    ],
)
def test_a_bound_is_rounded_outwards(saving, bound, text, phrase):
    """A bound shown to 0.1% must still be a bound: a saving of more than 29.996% was shown as "> 30.0%" and "at
    least 30.0% less", more than is known; an upper bound of 40.004% as "≤ 40.0%". An exact figure is rounded."""
    entry = {"saving": saving, "bound": bound}
    assert (saving_text(entry), saving_phrase(entry)) == (text, phrase)
