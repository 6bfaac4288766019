"""`grow family`'s figures, checked through the command against what its members recorded: the report's savings
recomputed here from the members' grow.json and the from-scratch run's metrics, the comparison of adjacent members
against `grow compare` of the two, and a family interrupted in a member's training and in its from-scratch run that,
run again, ends with the uninterrupted family's models and report."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from tinylm import FRESH_CONFIG, save_tiny_lm, write_plays

TRAIN = {
    "data": ["text"],
    "seq_len": 32,
    "micro_batch_size": 4,
    "eval_every": 2,
    "eval_batches": 2,
    "eval_fraction": 0.05,
    "max_lr": 3e-3,
    "warmup_steps": 1,
}
MEMBERS = [
    {"name": "small", "config": FRESH_CONFIG, "tokenizer": "lm", "train": {"max_steps": 6}},
    {"name": "big", "grow": {"depth_factor": 2, "depth_method": "stack"}, "train": {"max_steps": 4}},
]


def write_recipe(folder: Path, out: str) -> Path:
    path = folder / f"{out}.yaml"
    recipe = {"out": out, "train": TRAIN, "compare": {"max_blocks": 2}, "baselines": True, "members": MEMBERS}
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A two-member family from a fresh config (its first member trained from scratch, so every figure is exact,
    not a bound) with its from-scratch baseline, run once without interruption: (folder, recipe, report)."""
    folder = tmp_path_factory.mktemp("family")
    save_tiny_lm(folder / "lm")
    write_plays(folder / "text", count=2, chars=30_000)
    path = write_recipe(folder, "whole")
    result = run_cli("family", path, "-q", "--json")
    assert result.code == 0, result.stderr
    return folder, path, json.loads(result.stdout)


def _stages(final: Path) -> list[dict]:
    return json.loads((final / "grow.json").read_text())["stages"]


def _flops(stage: dict) -> float:
    """A training stage's FLOPs from what train-stage recorded of it: FLOPs per token × tokens."""
    return stage["flops_per_token"] * stage["tokens"]


def _scratch_curve(baseline: Path) -> list[tuple[float, float]]:
    """(FLOPs so far, held-out loss) at each evaluation of the from-scratch run, from its metrics file and record:
    the final evaluation, logged without a token count, at the run's last token."""
    (stage,) = _stages(baseline)
    lines = [json.loads(line) for line in (baseline / "metrics.jsonl").read_text().splitlines()]
    tokens_at = [line.get("tokens", stage["tokens"]) for line in lines if "eval_loss" in line]
    losses = [line["eval_loss"] for line in lines if "eval_loss" in line]
    return [(stage["flops_per_token"] * tokens, loss) for tokens, loss in zip(tokens_at, losses, strict=True)]


def test_the_reports_savings_are_what_the_members_records_give(family):
    """The report leads with the compute saved at equal quality: per member 1 − lineage FLOPs / the FLOPs the
    from-scratch run needed to reach the member's held-out loss (interpolated between the evaluations around the
    first crossing), for the family its total against the first member's FLOPs plus that need; below it the
    equal-tokens ratio. Each is recomputed here from the members' grow.json and the baseline's metrics.jsonl."""
    folder, _, report = family
    run = folder / "whole"
    small_stage, big_stage = _stages(run / "big" / "trained")[0], _stages(run / "big" / "trained")[-1]
    assert [s["kind"] for s in _stages(run / "big" / "trained")] == ["train", "expand", "train"]
    small_flops, big_flops = _flops(small_stage), _flops(big_stage)
    target = big_stage["final_eval_loss"]
    curve = _scratch_curve(run / "big" / "baseline")
    crossing = next(i for i, (_, loss) in enumerate(curve) if loss <= target)
    assert crossing > 0  # between two evaluations: an exact figure, not a bound
    (x0, y0), (x1, y1) = curve[crossing - 1], curve[crossing]
    needed = x0 + (x1 - x0) * (y0 - target) / (y0 - y1)
    member = 1 - (small_flops + big_flops) / needed
    whole = 1 - (small_flops + big_flops) / (small_flops + needed)
    equal_tokens = 1 - (small_flops + big_flops) / (
        small_flops + big_stage["flops_per_token"] * (small_stage["tokens"] + big_stage["tokens"])
    )

    quality = report["equal_quality"]
    (entry,) = quality["members"]
    assert entry["bound"] == "=" and entry["grown_loss"] == target
    assert entry["scratch_flops_needed"] == pytest.approx(needed, rel=1e-12)
    assert entry["saving"] == pytest.approx(member, rel=1e-12)
    assert quality["family"]["bound"] == "=" and quality["family"]["saving"] == pytest.approx(whole, rel=1e-12)
    assert report["ledger"]["saving"] == pytest.approx(equal_tokens, rel=1e-12)
    md = (run / "family.md").read_text()
    assert f"{abs(whole):.1%}" in report["headline"] and f"{abs(member):.1%}" in md
    assert f"{equal_tokens:.1%}" in md


def test_the_comparison_of_adjacent_members_is_grow_compares(family):
    """With no data of its own, `compare:` reads the training's data, seq_len and held-out split: the KL, JS and
    top-1 the family records for adjacent members are `grow compare`'s of the same two models with those options."""
    folder, _, _ = family
    run = folder / "whole"
    recorded = json.loads((run / "big" / "member.json").read_text())["compare_with_previous"]
    args = ["--data", folder / "text", "--seq-len", 32, "--eval-fraction", 0.05, "--max-blocks", 2]
    result = run_cli("compare", run / "small" / "trained", run / "big" / "trained", *args, "--json")
    assert result.code == 0, result.stderr
    direct = json.loads(result.stdout)
    for key in ("kl_a_b", "kl_b_a", "js", "top1_agreement", "loss_a", "loss_b", "blocks", "positions"):
        assert recorded[key] == direct[key], key


def test_a_family_interrupted_in_training_and_in_its_baseline_ends_as_if_it_never_was(family, monkeypatch):
    """A re-run resumes an interrupted training stage from its newest checkpoint, a member's or its from-scratch
    run's, and skips what is finished (the previous member, the grown/ folder, the member's finished training):
    SIGTERM at big's third step, then at its baseline's third, and the third run ends with the uninterrupted
    family's weights, figures and comparisons, having trained each step once."""
    import grow_cli.train.loop

    folder, _, whole = family
    monkeypatch.chdir(folder)
    train_step = grow_cli.train.loop.train_step
    trained: list[tuple[str, int]] = []
    stop_at: set[tuple[str, int]] = set()

    def step(run):
        where = "/".join(Path(run.config.out).parts[-2:])
        if (where, run.step) in stop_at:
            stop_at.discard((where, run.step))
            os.kill(os.getpid(), signal.SIGTERM)
        trained.append((where, run.step + 1))
        return train_step(run)

    monkeypatch.setattr(grow_cli.train.loop, "train_step", step)
    path = write_recipe(folder, "cut")
    run = folder / "cut"
    stop_at.add(("big/trained", 2))
    first = run_cli("family", path, "-q")
    assert first.code == 143 and "running the same grow family command again" in first.stderr, first.stderr
    assert trained == [("small/trained", s) for s in range(1, 7)] + [("big/trained", s) for s in range(1, 4)]
    grown = {p.name: p.stat().st_mtime_ns for p in (run / "big" / "grown").iterdir()}
    small = (run / "small" / "member.json").stat().st_mtime_ns

    trained.clear()
    stop_at.add(("big/baseline", 2))
    second = run_cli("family", path, "-q")
    assert second.code == 143, second.stderr
    assert trained == [("big/trained", 4)] + [("big/baseline", s) for s in range(1, 4)]

    trained.clear()
    third = run_cli("family", path, "-q", "--json")
    assert third.code == 0, third.stderr
    baseline_steps = (6 + 4) * 4 * 32 // (4 * 32)  # the lineage's tokens, in steps of 4 blocks of 32 tokens
    assert trained == [("big/baseline", s) for s in range(4, baseline_steps + 1)]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "big" / "grown").iterdir()} == grown
    assert (run / "small" / "member.json").stat().st_mtime_ns == small

    for model in ("small/trained", "big/grown", "big/trained", "big/baseline"):
        weights = "model.safetensors"
        assert (run / model / weights).read_bytes() == (folder / "whole" / model / weights).read_bytes(), model
    report = json.loads(third.stdout)
    assert report["equal_quality"] == whole["equal_quality"] and report["ledger"] == whole["ledger"]
    assert report["headline"] == whole["headline"]
    for pair in (report, whole):  # the same comparisons, of models in other folders
        for side in pair["consistency"][0].values():
            if isinstance(side, dict):
                side.pop("a"), side.pop("b")
    assert report["consistency"] == whole["consistency"]


def test_baselines_turned_on_after_a_family_finished_train_none_and_say_why(tmp_path, monkeypatch):
    """`baselines: true` set after the members finished trains no from-scratch run (re-run into a new OUT to get
    one): the re-run skips every member, and the report says the saving at equal quality was not measured because
    they finished first, instead of telling it to add the option it has."""
    monkeypatch.chdir(tmp_path)
    save_tiny_lm(tmp_path / "lm")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    members = [{**m, "train": {"max_steps": 2}} for m in MEMBERS]
    recipe = {"out": "run", "train": TRAIN, "compare": {"max_blocks": 2}, "members": members}
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert run_cli("family", path, "-q").code == 0
    finished = (tmp_path / "run" / "big" / "member.json").read_text()
    path.write_text(yaml.safe_dump({**recipe, "baselines": True}))
    again = run_cli("family", path, "-q", "--json")
    assert again.code == 0, again.stderr
    assert not list((tmp_path / "run").glob("*/baseline*"))
    assert (tmp_path / "run" / "big" / "member.json").read_text() == finished
    said = json.loads(again.stdout)["headline"]
    assert "big finished before `baselines: true` was set" in said and "add `" not in said, said
