"""`grow family` under `accelerate launch` (2 CPU processes, gloo): every process walks the recipe, the training
stages run on all of them, the growth, comparisons, records and report on the main process alone
(`grow_cli.family.main_process`). Plain data-parallel, with `optimizer: grow` (DDP keeps the training state whole:
the main process grows it, every process continues it), and FSDP2 through the shipped config (docs/accelerate/), as
a family of large models runs: each member's training sharded, its final model gathered whole for the main process
to grow, the grown model sharded again for the next member's training."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
import yaml
from sharded_runs import document, engines, launch_grow_sharded, two_process_config
from test_train_distributed import launch_grow
from tinylm import save_tiny_lm, write_plays

from grow_cli.train.metrics_file import read_metrics


def _recipe(tmp_path, out: str, micro_batch_size: int, optimizer: str = "fresh"):
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
    method = "identity" if optimizer == "grow" else "stack"  # a grown state needs a growth that keeps the function
    members = [
        {"name": "small", "source": "base"},
        {"name": "big", "grow": {"depth_factor": 2, "depth_method": method}},
    ]
    path = tmp_path / f"{out}.yaml"
    compare = {"seq_len": 32, "max_blocks": 4}
    recipe = {"out": out, "optimizer": optimizer, "train": train, "compare": compare, "members": members}
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_a_launched_family_matches_one_process_with_the_same_global_batch(cli, tmp_path):
    """Two processes with micro-batches of 4 make the family one process makes with 8: each member trains to the
    same losses, the comparison measures the same models, and one report is written — the growth of `big` happens
    once (every process growing it collided on its output before), and only the main process speaks. With
    `optimizer: grow`, which DDP keeps (docs/family.md): `small` leaves its final training state on 2 processes, the
    main process grows it with the weights, and `big` continues it on both from `small`'s step."""
    one = _family_alone(cli, tmp_path, "grow")
    two = launch_grow(["family", _recipe(tmp_path, "two", 4, "grow"), "--json"], timeout=200)
    _check_like_one_process(one, two, tmp_path)
    for run in ("one", "two"):
        assert _summary(tmp_path / run / "big")["optimizer"] == "grow"
        stage = json.loads((tmp_path / run / "big" / "trained" / "grow.json").read_text())["stages"][-1]
        assert stage["continued"]["source"]["step"] == 4 and stage["end_step"] == 8, run


@pytest.mark.slow
@pytest.mark.parametrize("engine, config", [("FSDP", "fsdp2"), ("DEEPSPEED", "deepspeed_zero3")])
def test_a_sharded_family_shards_every_member_and_matches_one_process(cli, tmp_path, engine, config):
    """Under the shipped fsdp2.yaml (and deepspeed_zero3.yaml, where DeepSpeed is installed: CI does not install it,
    tests/test_deepspeed_cpu.py) each member trains sharded over both processes (`engines`: one state of that engine
    per member on each); `small`'s final model is gathered whole for the main process to grow into `big`, whose
    training shards the grown model again; and the family is the one one process makes with the same global batch.
    Each member builds its accelerate state anew: on CPUs tests/sharded_on_cpu.py names gloo for each, without which
    `big` trained on each process alone (FSDP: both writing its folder) or failed DeepSpeed's batch check."""
    if engine == "DEEPSPEED":
        pytest.importorskip("deepspeed")
    one = _family_alone(cli, tmp_path)
    two = launch_grow_sharded(two_process_config(config, tmp_path), ["family", _recipe(tmp_path, "two", 4), "--json"])
    _check_like_one_process(one, two, tmp_path)
    assert engines(two.stderr) == {rank: [f"{engine} of 2 processes"] * 2 for rank in (0, 1)}, two.stderr[-3000:]


def _family_alone(cli, tmp_path, optimizer: str = "fresh"):
    """The tiny model and plays the family grows and trains, and the family one process makes with micro-batches
    of 8 (in `one`)."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=2, chars=30_000)
    one = cli("family", _recipe(tmp_path, "one", 8, optimizer), "--json")
    assert one.code == 0, one.stderr
    return one


def _check_like_one_process(one, two, tmp_path) -> None:
    """The launched family (`two`, in `two`) against the one of one process (`one`): exactly one JSON document and
    its report, each member's losses within 1e-4 (float reduction order: at most ~3e-7 apart here), the grown and
    the trained `big` loadable whole with `from_pretrained` and their weights those of one process (within 1e-3 of
    each tensor's norm, as tests/sharded_runs.py compares sharded runs), and the same comparison of the two."""
    assert two.returncode == 0, two.stderr[-3000:]
    result = document(two.stdout)  # exactly one JSON document: only the main process prints
    assert result["status"] == "done" and result["report"] == str(tmp_path / "two" / "family.md")
    assert (tmp_path / "two" / "family.md").is_file()
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
    for model in ("grown", "trained"):
        alone, launched = (_loaded(tmp_path / run / "big" / model) for run in ("one", "two"))
        assert launched.config.num_hidden_layers == 4
        weights = launched.state_dict()
        for name, weight in alone.state_dict().items():
            assert torch.linalg.norm(weights[name] - weight) <= 1e-3 * torch.linalg.norm(weight) + 1e-6, (model, name)
    for member in ("small", "big"):
        assert _summary(tmp_path / "two" / member)["record"]["stages"][-1]["batch"]["num_processes"] == 2
    kl = [_summary(tmp_path / run / "big")["compare_with_previous"]["kl_a_b"] for run in ("one", "two")]
    assert kl[1] == pytest.approx(kl[0], rel=1e-3, abs=1e-6)


def _loaded(folder):
    """The model in `folder` by `from_pretrained`, every tensor found and none left over."""
    model, info = tf.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), (folder, info)
    return model


def _summary(member):
    """The member's member.json."""
    return json.loads((member / "member.json").read_text())


@pytest.mark.slow
def test_a_launched_family_that_pauses_ends_the_launch_as_a_pause_not_a_failure(tmp_path):
    """A member's `exit_interval` under `accelerate launch`: every process exited 3, and the launcher reported failed
    workers (exit 1, torch's ChildFailedError traceback) after the pause's line. Now the launch exits 0 like a paused
    train-stage's, the line said once; the same launch again finishes the family."""
    save_tiny_lm(tmp_path / "base")
    write_plays(tmp_path / "text", count=1, chars=20_000)
    train = {"data": ["text"], "seq_len": 32, "micro_batch_size": 4, "max_steps": 4, "exit_interval": 2}
    recipe = {"out": "run", "train": train, "members": [{"name": "small", "source": "base"}]}
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(recipe))
    paused = launch_grow(["family", path, "-q"], timeout=200)
    assert paused.returncode == 0 and "Traceback" not in paused.stderr, paused.stderr[-3000:]
    assert paused.stdout.count("paused in member small; re-run the same command to continue") == 1, paused.stdout
    done = launch_grow(["family", path, "--json"], timeout=200)
    assert done.returncode == 0 and document(done.stdout)["status"] == "done", done.stderr[-3000:]
