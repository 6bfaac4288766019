"""`--data-offset BLOCKS|lineage`: a fresh run reads on after the blocks its lineage read from the same data order
(what `grow family` gives a grown member trained with a fresh optimizer), and only from the same order."""

from __future__ import annotations

import json

import pytest
from tinylm import run_grow, save_tiny_lm, write_plays

from grow_cli.lineage.record import FORMAT
from grow_cli.train.data_offset import blocks_read, first_block, lineage_blocks


def train(model, data, out, capsys, *extra):
    args = ["train-stage", model, "--data", data, "--out", out, "--seq-len", 32, "--micro-batch-size", 4, "--quiet"]
    return run_grow([*args, "--max-lr", "3e-3", *extra], capsys)


def last_stage(folder) -> dict:
    return json.loads((folder / "grow.json").read_text())["stages"][-1]


def test_lineage_reads_on_after_the_blocks_the_previous_stage_read(tmp_path, capsys):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    code, _, stderr = train(model, data, tmp_path / "a", capsys, "--max-steps", 3)
    assert code == 0, stderr
    assert last_stage(tmp_path / "a")["data_blocks"] == 3 * 4

    code, _, stderr = train(tmp_path / "a", data, tmp_path / "b", capsys, "--max-steps", 2, "--data-offset", "lineage")
    assert code == 0, stderr
    assert last_stage(tmp_path / "b")["data_blocks"] == 3 * 4 + 2 * 4  # blocks 12..19 of the order, not 0..7 again
    code, _, stderr = train(tmp_path / "a", data, tmp_path / "c", capsys, "--max-steps", 2)
    assert code == 0, stderr
    assert last_stage(tmp_path / "c")["data_blocks"] == 2 * 4  # the default: the order's first blocks

    # a schedule offset moves the schedule, not where --data-offset starts the data (step 5 reads block 12)
    both = ("--max-steps", 2, "--schedule-offset", 5)
    code, _, stderr = train(tmp_path / "a", data, tmp_path / "f", capsys, *both, "--data-offset", "lineage")
    assert code == 0, stderr
    assert last_stage(tmp_path / "f")["data_blocks"] == 3 * 4 + 2 * 4
    code, _, stderr = train(tmp_path / "a", data, tmp_path / "g", capsys, *both)
    assert code == 0, stderr
    assert last_stage(tmp_path / "g")["data_blocks"] == (5 + 2) * 4  # without it: step 5's own blocks

    # another seed is another order: nothing of it was read, and the note says so
    code, _, stderr = run_grow(
        ["train-stage", tmp_path / "a", "--data", data, "--out", tmp_path / "e", "--seq-len", 32]
        + ["--micro-batch-size", 4, "--max-steps", 1, "--seed", 1, "--data-offset", "lineage"],
        capsys,
    )
    assert code == 0, stderr
    assert "no training in" in stderr and last_stage(tmp_path / "e")["data_blocks"] == 4


@pytest.mark.parametrize("state", ["weights-only", "grown-state"])
def test_lineage_counts_the_run_of_a_checkpoint_the_model_was_grown_from(tmp_path, capsys, state):
    """A model grown from a training checkpoint (not a finished run): that run's train stage is in no grow.json, so
    a fresh optimizer read the order from its first block again (found by an audit). The expand stage records the
    checkpoint's place in its run, with or without its optimizer state grown."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data")
    code, _, stderr = train(
        model, data, tmp_path / "a", capsys, "--max-steps", 6, "--save-every", 3, "--exit-interval", 3
    )
    assert code == 0, stderr
    checkpoint = tmp_path / "a" / "checkpoints" / "step_00000003"
    extra = ["--weights-only"] if state == "weights-only" else ["--depth-method", "identity"]
    code, _, stderr = run_grow(["expand", checkpoint, tmp_path / "grown", "--layers", 4, *extra, "--quiet"], capsys)
    assert code == 0, stderr
    recorded = json.loads((tmp_path / "grown" / "grow.json").read_text())["stages"][-1]["source"]["checkpoint"]
    assert (recorded["step"], recorded["data_blocks"], recorded["seq_len"]) == (3, 3 * 4, 32)
    assert "the training checkpoint `step_00000003` (step 3" in (tmp_path / "grown" / "README.md").read_text()

    code, _, stderr = train(
        tmp_path / "grown", data, tmp_path / "b", capsys, "--max-steps", 2, "--data-offset", "lineage"
    )
    assert code == 0, stderr
    assert last_stage(tmp_path / "b")["data_blocks"] == 3 * 4 + 2 * 4  # blocks 12..19, not the checkpoint's 0..11


def test_old_records_derive_the_blocks_read():
    """grow.json written before `data_blocks` was recorded: the end step, batch and continuation say it."""
    stage = {"seq_len": 32, "end_step": 10, "batch": {"global_batch_tokens": 128}, "continued": None}
    assert blocks_read(stage) == 40
    continued = {**stage, "continued": {"start_step": 6, "data_blocks": 100}}  # started at step 6 after 100 blocks
    assert blocks_read(continued) == 100 + (10 - 6) * 4
    assert blocks_read({**stage, "data_blocks": 7}) == 7


def test_only_a_stage_of_the_same_order_counts(tmp_path):
    def train_stage(fingerprint, seed, blocks, eval_fraction=0.01):
        return {
            "kind": "train",
            "data": {"fingerprint": fingerprint},
            "seq_len": 32,
            "seed": seed,
            "data_blocks": blocks,
            "run_key": {"eval_fraction": eval_fraction, "max_steps": 10},
        }

    stages = [train_stage("aa", 0, 50), {"kind": "expand"}, train_stage("bb", 0, 9), train_stage("aa", 1, 5)]
    (tmp_path / "grow.json").write_text(json.dumps({"format": FORMAT, "stages": stages}))
    assert lineage_blocks(tmp_path, "aa", 32, 0, 0.01) == 50  # the newest stage that read this data with this seed
    assert lineage_blocks(tmp_path, "bb", 32, 0, 0.01) == 9
    assert lineage_blocks(tmp_path, "aa", 64, 0, 0.01) is None  # other blocks
    assert lineage_blocks(tmp_path / "missing", "aa", 32, 0, 0.01) is None
    # another eval fraction holds out other blocks, so the rest are other train blocks in another order (it used to
    # count); a stage of a grow that did not record its eval fraction counts, as it did then
    stages += [train_stage("cc", 0, 7, eval_fraction=0.3), {**train_stage("dd", 0, 3), "run_key": None}]
    (tmp_path / "grow.json").write_text(json.dumps({"format": FORMAT, "stages": stages}))
    assert lineage_blocks(tmp_path, "cc", 32, 0, 0.01) is None
    assert lineage_blocks(tmp_path, "cc", 32, 0, 0.3) == 7
    assert lineage_blocks(tmp_path, "dd", 32, 0, 0.3) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data-offset", "-3"], "--data-offset must be at least 0"),
        (["--data-offset", "half"], "--data-offset must be a number of blocks or 'lineage'"),
        (["--data-offset", "lineage", "--resume", "grown"], "--resume grown reads on after the blocks"),
    ],
)
def test_bad_data_offsets_are_one_clear_line(tmp_path, capsys, extra, message):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=5_000)
    code, _, stderr = train(model, data, tmp_path / "out", capsys, "--max-steps", 1, *extra)
    assert code == 2 and message in stderr and not (tmp_path / "out").exists()


def test_a_data_offset_past_the_data_is_said_with_the_epoch_it_starts_in():
    """The data order repeats (each epoch its own permutation), so an offset past the training blocks is taken, and
    starts in a later epoch: that was taken without a word; within the data, nothing is said."""
    from types import SimpleNamespace

    assert first_block(SimpleNamespace(data_offset=39), "fp", 40) == (39, None)
    first, note = first_block(SimpleNamespace(data_offset=100), "fp", 40)
    assert first == 100 and note == (
        "--data-offset 100 is past the data's 40 training blocks: the first step reads block 20 of epoch 3 "
        "(2.50 epochs in)"
    )
