"""`grow family` under `accelerate launch` (2 CPU processes, gloo): every process walks the recipe, the training
stages run on all of them, the growth, comparisons, records and report on the main process alone
(`grow_cli.family.main_process`)."""

from __future__ import annotations

import json

import pytest
import yaml
from test_train_distributed import launch_grow
from tinylm import save_tiny_lm, write_plays

from grow_cli.train.metrics_file import read_metrics


def _recipe(tmp_path, out: str, micro_batch_size: int):
    train = {
        "data": ["text"],
        "seq_len": 32,
        "micro_batch_size": micro_batch_size,
        "eval_every": 2,
        "eval_fraction": 0.05,
        "max_lr": "3e-3",
        "warmup_steps": 1,
        "max_steps": 4,  # (eval_batches: its default, 16, covers the 51 held-out blocks at either micro-batch)
    }
    members = [
        {"name": "small", "source": "base"},
        {"name": "big", "grow": {"depth_factor": 2, "depth_method": "stack"}},
    ]
    path = tmp_path / f"{out}.yaml"
    recipe = {"out": out, "train": train, "compare": {"seq_len": 32, "max_blocks": 4}, "members": members}
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_a_launched_family_matches_one_process_with_the_same_global_batch(cli, tmp_path):
    """Two processes with micro-batches of 4 make the family one process makes with 8: each member trains to the
    same losses, the comparison measures the same models, and one report is written — the growth of `big` happens
    once (every process growing it collided on its output before), and only the main process speaks."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=2, chars=30_000)
    one = cli("family", _recipe(tmp_path, "one", 8), "--json")
    assert one.code == 0, one.stderr

    two = launch_grow(["family", _recipe(tmp_path, "two", 4), "--json"], timeout=200)
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads(two.stdout)  # exactly one JSON document: only the main process prints
    assert result["status"] == "done" and result["report"] == str(tmp_path / "two" / "family.md")
    assert two.stderr.count("big (2/2)") == 1  # the main process's progress only
    assert "error" not in two.stderr

    for member in ("small", "big"):
        a = read_metrics(tmp_path / "one" / member / "trained" / "metrics.jsonl")
        b = read_metrics(tmp_path / "two" / member / "trained" / "metrics.jsonl")
        assert [m["step"] for m in a] == [m["step"] for m in b]
        for x, y in zip(a, b, strict=True):
            for key in ("loss", "eval_loss", "lr", "tokens"):
                if key in x:
                    assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-5), (member, x["step"], key)
    summaries = [json.loads((tmp_path / run / "big" / "member.json").read_text()) for run in ("one", "two")]
    assert summaries[1]["record"]["stages"][-1]["batch"]["num_processes"] == 2
    kl = [s["compare_with_previous"]["kl_a_b"] for s in summaries]
    assert kl[1] == pytest.approx(kl[0], rel=1e-3, abs=1e-6)
