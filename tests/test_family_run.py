"""`grow family` end to end (`grow_cli.family.run`): a two-member family with a from-scratch baseline that pauses in
its second member, then resumes, skips the finished member, and writes the ledger, the comparison and the report."""

from __future__ import annotations

import json

import yaml
from tinylm import save_tiny_lm, write_plays


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
    recipe = {
        "members": members,
        "out": "run",
        "train": train,
        "compare": {"seq_len": 32, "max_blocks": 4},
        "baselines": True,
    }
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli("family", path, "--check").code == 0

    first = cli("family", path, "-q")
    assert first.code == 3, first.stderr  # paused in member "big"
    run = tmp_path / "run"
    small_marker = run / "small" / "member.json"
    assert small_marker.is_file() and not (run / "big" / "member.json").exists()
    assert list((run / "big" / "trained" / "checkpoints").glob("step_*"))
    small_mtime = small_marker.stat().st_mtime_ns

    second = cli("family", path, "-q", "--json")
    assert second.code == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["status"] == "done"
    assert small_marker.stat().st_mtime_ns == small_mtime  # finished member skipped
    big = json.loads((run / "big" / "member.json").read_text())
    assert big["train"]["steps"] == 6
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
    scratch = json.loads((run / "big" / "baseline" / "grow.json").read_text())
    assert [s["kind"] for s in scratch["stages"]] == ["train"]
    row = book["members"][1]["baseline"]
    assert row["final_eval_loss"] > 0 and row["flops"] > 0
    assert "Against training from scratch" in (run / "family.md").read_text()


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
        if optimizer == "grow":
            assert (run / "small" / "trained" / "checkpoints" / "step_00000004" / "optimizer.bin").is_file()
            assert (run / "wide" / "grown" / "training-state" / "state.json").is_file()
            assert stage["continued"]["source"]["step"] == 4 and stage["end_step"] == 7
            assert "Continued the previous member's grown training state" in (run / "family.md").read_text()
        else:
            assert stage["continued"] is None and not (run / "small" / "trained" / "checkpoints").exists()
    assert published["fresh"] == published["grow"]  # saving the state changed nothing the member publishes
