"""Training mixture-of-experts models: the model type's load-balancing loss in training passes only, expert load
recorded from the same forward pass, FLOPs over the active parameters, and an upcycled model that learns Shakespeare
with every expert in use."""

from __future__ import annotations

import json

import pytest
import torch
from doc_keys import json_output_problems
from safetensors.torch import load_file
from tiny_moe import build, probe_ids
from tinylm import run_grow, save_tiny_lm, write_plays

from grow_cli.arch.experts import moe_layer_indices
from grow_cli.commands.plan import _print_plan
from grow_cli.family.budget import plan, stacking_growth_tokens
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.lineage.record import load_record
from grow_cli.train.flops import training_flops_per_token
from grow_cli.train.metrics import flops_per_token
from grow_cli.train.metrics_file import read_metrics
from grow_cli.train.router import RouterStats, inactive_expert_parameters, is_moe_model

torch.set_num_threads(1)


def test_the_auxiliary_loss_joins_training_passes_only():
    model = build("mixtral")  # 4 experts, top-2, a router loud enough to spread tokens
    stats = RouterStats(model)
    ids = probe_ids()
    with torch.no_grad():
        plain = model.eval()(input_ids=ids, labels=ids).loss  # evaluation: the next-token loss alone
        total = model.train()(input_ids=ids, labels=ids).loss  # training: + coef × aux, as Mixtral defines it
    window = stats.metrics()
    assert window and stats.metrics() == {}  # read once, then a new window
    assert float(total - plain) == pytest.approx(stats.coef * window["router_aux_loss"], abs=1e-6)
    assert window["router_aux_loss"] >= 2 - 1e-4  # top-2: 2 at perfect balance, more otherwise
    run = stats.summary()
    load = torch.tensor(run["expert_load_by_layer"])
    assert load.shape == (4, 4) and torch.allclose(load.sum(dim=1), torch.full((4,), 4.0), atol=0.01)
    assert run["expert_load_min"] == pytest.approx(float(load.min()), abs=1e-3)
    stats.close()
    model(input_ids=ids)  # no hooks left behind
    assert stats.metrics() == {}


def test_the_load_of_each_layer_counts_every_process():
    """Under a distributed launch each process counts its own tokens; the run's per-layer load in grow.json must sum
    them like its maximum and minimum do (it once showed the first process's alone). A stand-in second process
    sends the same counts as the first with every expert moved by one."""
    model = build("mixtral")
    stats = RouterStats(model)
    with torch.no_grad():
        model.train()(input_ids=probe_ids(), labels=probe_ids())
    alone = torch.tensor(stats.summary()["expert_load_by_layer"])

    class TwoProcesses:
        num_processes = 2

        @staticmethod
        def reduce(tensor, reduction):
            return tensor + (tensor.roll(1, dims=-1) if tensor.ndim == 2 else tensor)

    both = stats.summary(TwoProcesses())
    counts = stats._total[1] + stats._total[1].roll(1, dims=-1)
    expected = counts / counts.sum(dim=-1, keepdim=True) * 4
    assert torch.allclose(torch.tensor(both["expert_load_by_layer"]), expected, atol=1e-3)
    assert not torch.allclose(torch.tensor(both["expert_load_by_layer"]), alone, atol=1e-2)
    assert both["expert_load_max"] == pytest.approx(float(expected.max()))
    stats.close()


@pytest.mark.parametrize("name", ["qwen2_moe", "qwen3_moe"])
def test_the_load_of_each_layer_stands_at_its_decoder_layer_and_dense_layers_are_null(name):
    """Qwen2-MoE keeps a dense MLP in layer 1 (`mlp_only_layers`), Qwen3-MoE in layers 0 and 2 (`decoder_sparse_step`
    2); transformers returns router logits for the MoE layers only, and grow once listed their loads in that order,
    so layer 2's load stood at layer 1. Each layer's load must be the one its own router's top-k choices give."""
    model = build(name)
    stats = RouterStats(model)
    layers = model.model.layers
    chosen = {}  # each MoE layer's expert choices, from its own router (it returns logits, weights, indices)

    def record(i):
        def hook(module, args, out):
            chosen[i] = out[2].reshape(-1)

        return hook

    moe = [i for i, layer in enumerate(layers) if hasattr(layer.mlp, "experts")]  # as the model itself is built
    hooks = [layers[i].mlp.gate.register_forward_hook(record(i)) for i in moe]
    with torch.no_grad():
        model.train()(input_ids=probe_ids(), labels=probe_ids())
    for hook in hooks:
        hook.remove()
    by_layer = stats.summary()["expert_load_by_layer"]
    assert len(by_layer) == len(layers) == 4
    assert [i for i, row in enumerate(by_layer) if row is None] == ({"qwen2_moe": [1], "qwen3_moe": [0, 2]}[name])
    assert sorted(chosen) == moe
    for i, picks in chosen.items():
        expected = torch.bincount(picks, minlength=4) / picks.numel() * 4
        assert torch.allclose(torch.tensor(by_layer[i]), expected.float(), atol=1e-3), (i, by_layer[i], expected)
    stats.moe_layers = None  # as for a type without a curated definition: rows that cannot be placed are left out
    assert "expert_load_by_layer" not in stats.summary() and "expert_load_max" in stats.summary()
    stats.close()


def test_the_moe_layers_come_from_one_place_for_every_pattern():
    """`moe_layer_indices` reads each type's pattern: every layer (Mixtral), listed dense layers (Qwen2-MoE), a
    sparse step (Qwen3-MoE), a dense prefix (DeepSeek-V3, GLM-4.5: first_k_dense_replace), a per-layer list
    (GLM-4.7-Flash's mlp_layer_types); None for a dense type."""
    from tiny_moe import config

    names = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "glm4_moe", "deepseek_v3", "glm4_moe_lite"]
    assert {name: moe_layer_indices(config(name).to_dict()) for name in names} == {
        "mixtral": (0, 1, 2, 3),
        "qwen2_moe": (0, 2, 3),
        "qwen3_moe": (1, 3),
        "olmoe": (0, 1, 2, 3),
        "glm4_moe": (1, 2),
        "deepseek_v3": (1, 2),
        "glm4_moe_lite": (1, 2),
    }
    assert moe_layer_indices({"model_type": "llama", "num_hidden_layers": 2}) is None


def test_a_zero_router_collapses_the_load_and_router_noise_spreads_it(tmp_path):
    """Upcycled with `--router-noise 0`, every token picks the same two experts; with the default noise all four
    are used from the first step. Both models are exact copies of the dense one."""
    dense = save_tiny_lm(tmp_path / "dense")
    ids = probe_ids(batch=4, length=32)
    loads = {}
    for noise in (0.0, None):
        out = tmp_path / f"moe-{noise}"
        expand(str(dense), out, GrowthSpec(experts=4, top_k=2, router_noise=noise), quiet=True)
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(out)
        stats = RouterStats(model)
        with torch.no_grad():
            model.train()(input_ids=ids, labels=ids)
        loads[noise] = stats.summary()
    print({noise: (loads[noise]["expert_load_min"], loads[noise]["expert_load_max"]) for noise in loads})
    assert loads[0.0]["expert_load_min"] == 0 and loads[0.0]["expert_load_max"] == 2  # two of four take all
    assert loads[None]["expert_load_min"] > 0.5 and loads[None]["expert_load_max"] < 1.5  # measured 0.67–1.31


def test_flops_count_the_experts_a_token_runs():
    model = build("mixtral")
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert is_moe_model(model) and inactive_expert_parameters(model) == routed // 2  # top-2 of 4
    total = sum(p.numel() for p in model.parameters())
    active = total - model.get_input_embeddings().weight.numel() - routed // 2
    assert flops_per_token(model, 64) == training_flops_per_token(active, 4, 32, 64)


def test_grow_plan_counts_active_parameters_of_an_moe_target():
    shape = {
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 96,
        "num_parameters": 10_000_000,
        "active_parameters": 4_000_000,
    }
    result = plan(shape, 1e9, family=[10_000_000], seq_len=2048)
    assert result["target"]["compute_flops"] == 6 * 4_000_000 * 1e9
    lookup = 96 * 32  # the untied input embedding, which PaLM's 6·N (and train-stage) leave out
    assert result["family"]["members"][0]["flops_per_token"] == training_flops_per_token(
        4_000_000 - lookup, 4, 32, 2048
    )


def test_an_upcycled_model_learns_with_every_expert_and_reports_its_load(tmp_path, capsys):
    """30 steps on Shakespeare: the loss falls, the load-balancing loss stays near its balanced value, and every
    expert of every layer keeps receiving tokens (measured: load 0.17 to 1.86 — two experts of each layer take most
    tokens this early; docs/upcycling.md has the longer run)."""
    dense, data = save_tiny_lm(tmp_path / "dense"), write_plays(tmp_path / "data")
    moe, out = tmp_path / "moe", tmp_path / "out"
    expand(str(dense), moe, GrowthSpec(experts=4, top_k=2), quiet=True)
    args = ["train-stage", moe, "--data", data, "--out", out, "--seq-len", 32, "--micro-batch-size", 8]
    args += ["--max-steps", 30, "--max-lr", "3e-3", "--log-every", 10, "--quiet", "--json"]
    code, stdout, stderr = run_grow(args, capsys)
    assert code == 0, stderr
    result = json.loads(stdout)
    assert json_output_problems("`grow train-stage`", result) == []  # with its router's summary
    metrics = [m for m in read_metrics(out / "metrics.jsonl") if "router_aux_loss" in m]
    assert [m["step"] for m in metrics] == [10, 20, 30]
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5  # ln(512) = 6.24 at the start
    router = result["router"]
    print(
        f"loss {losses[0]:.2f} → {losses[-1]:.2f} (last 5: {sum(losses[-5:]) / 5:.2f}), "
        f"aux {router['router_aux_loss']:.2f}, load {router['expert_load_min']:.2f} to {router['expert_load_max']:.2f}"
    )
    assert router["router_aux_loss_coef"] == 0.01  # written by the upcycler (Switch Transformer's α)
    assert 2 <= router["router_aux_loss"] < 2.2  # 2 (top-2) at perfect balance
    assert router["expert_load_min"] > 0.1 and router["expert_load_max"] < 1.95  # every expert trained
    assert load_record(out)["stages"][-1]["router"] == router
    dense_like = training_flops_per_token(result["num_parameters"], 2, 32, 32)
    assert metrics[0]["flops_per_token"] < dense_like  # a token runs 2 of 4 experts


def test_grow_plan_states_the_stacking_rules_n_and_c_for_an_moe_target(capsys):
    """G_stack's rule takes C = 6·N·D with N the target's parameters — every expert's, for an MoE — while the target's
    compute counts active ones: the plan said C = 6·active·D above a d computed from another C. The guideline now
    states the N and C it used, and its quarter-depth small model has its own active parameters (it carried the
    target's, more than its own total) and FLOPs over them."""
    shape = {
        "num_hidden_layers": 8,
        "hidden_size": 512,
        "intermediate_size": 1024,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "num_parameters": 100_000_000,
        "active_parameters": 30_000_000,
    }
    result = plan(shape, 1e12)
    stacking, embeddings = result["stacking"], 2 * 1000 * 512
    assert stacking["num_parameters"] == 100_000_000 and stacking["compute_flops"] == 6 * 100_000_000 * 1e12
    assert stacking["growth_tokens"] == pytest.approx(stacking_growth_tokens(100_000_000, 1e12))
    small = stacking["small_model"]
    assert small["num_parameters"] == 2 * (100_000_000 - embeddings) // 8 + embeddings
    assert small["active_parameters"] == 2 * (30_000_000 - embeddings) // 8 + embeddings
    assert stacking["small_model_flops"] == 6 * small["active_parameters"] * stacking["growth_tokens"]
    _print_plan(result)
    text = capsys.readouterr().out
    assert f"C = {result['target']['compute_flops']:.3g} FLOPs" in text  # the target's compute: active parameters
    assert "with N = 100M parameters (every expert's) and C = 6·N·D = 6e+20 FLOPs" in text, text
    assert "train a small model (2 layers, 25.8M parameters, 8.27M active) on d = " in text, text


def _whole_and_resumed(tmp_path, capsys, *, steps: int, save_every: int, pause_at: int) -> None:
    """An upcycled MoE (4 experts, top-2) trained `steps` steps with the router logged every 2, twice: in one go into
    tmp_path/whole, and paused at `pause_at` then resumed into tmp_path/parts."""
    dense, data = save_tiny_lm(tmp_path / "dense"), write_plays(tmp_path / "data")
    moe = tmp_path / "moe"
    expand(str(dense), moe, GrowthSpec(experts=4, top_k=2), quiet=True)
    args = ["train-stage", moe, "--data", data, "--seq-len", 32, "--micro-batch-size", 4, "--max-steps", steps]
    args += ["--save-every", save_every, "--log-every", 2, "--eval-every", 100, "--quiet"]
    assert run_grow([*args, "--out", tmp_path / "whole"], capsys)[0] == 0
    assert run_grow([*args, "--out", tmp_path / "parts", "--exit-interval", pause_at], capsys)[0] == 0
    assert run_grow([*args, "--out", tmp_path / "parts", "--resume", "auto"], capsys)[0] == 0


def test_a_resumed_run_reports_the_router_over_the_whole_run(tmp_path, capsys):
    """The router's summary in grow.json is over the whole run; resumed at step 4 of 8, it once covered steps 5 to 8
    alone (the totals started again at zero), unlike the same run made in one go. The checkpoint now carries them."""
    _whole_and_resumed(tmp_path, capsys, steps=8, save_every=2, pause_at=4)
    whole, parts = (load_record(tmp_path / name)["stages"][-1]["router"] for name in ("whole", "parts"))
    assert parts["expert_load_by_layer"] == whole["expert_load_by_layer"]
    assert parts["router_aux_loss"] == pytest.approx(whole["router_aux_loss"], abs=1e-6)


def test_the_first_router_window_after_a_resume_covers_the_steps_since_the_last_log(tmp_path, capsys):
    """Logged every 2 steps and resumed from step 3, the router's window logged at step 4 covered step 4 alone (the
    window restarted at the resume), unlike the same run made in one go (steps 3 and 4). The checkpoint now carries
    the window since the last log, so every logged window is the one-go run's."""
    _whole_and_resumed(tmp_path, capsys, steps=6, save_every=3, pause_at=3)
    keys = ("router_aux_loss", "expert_load_max", "expert_load_min")
    whole, parts = (
        {m["step"]: [m[k] for k in keys] for m in read_metrics(tmp_path / name / "metrics.jsonl") if keys[0] in m}
        for name in ("whole", "parts")
    )
    assert sorted(parts) == sorted(whole) == [2, 4, 6]
    for step, values in whole.items():
        assert parts[step] == pytest.approx(values, abs=1e-6), step


def test_train_only_new_trains_an_upcycled_models_new_tensors(tmp_path, capsys):
    """grow.json names tensors as saved (Mixtral's `block_sparse_moe.gate.weight`, one `experts.{e}.w1.weight` per
    expert), transformers 5 holds them renamed and fused (`mlp.gate.weight`, `mlp.experts.gate_up_proj`): the run
    once refused every upcycled model ("grow.json names tensors the model does not have"). The new routers and the
    identity layers train, every copied tensor comes out bit-identical."""
    dense, data = save_tiny_lm(tmp_path / "dense"), write_plays(tmp_path / "data")
    moe, out = tmp_path / "moe", tmp_path / "out"
    expand(str(dense), moe, GrowthSpec(experts=4, top_k=2, layers=4, depth_method="identity"), quiet=True)
    args = ["train-stage", moe, "--data", data, "--out", out, "--seq-len", 32, "--micro-batch-size", 4]
    code, _, stderr = run_grow([*args, "--max-steps", 3, "--max-lr", "1e-2", "--train-only", "new", "--quiet"], capsys)
    assert code == 0, stderr
    added = set(load_record(moe)["stages"][-1]["added_tensors"])
    assert "model.layers.0.block_sparse_moe.gate.weight" in added
    assert "model.layers.1.block_sparse_moe.experts.3.w1.weight" in added
    before, after = load_file(moe / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert [n for n in before if torch.equal(before[n], after[n]) == (n in added)] == []


def test_evaluation_stays_the_next_token_loss_when_the_config_asks_for_router_logits():
    """A config.json that says `output_router_logits: true` (as fine-tunes made with the Trainer often ship) made
    transformers add `coef × aux` in evaluation passes too: train-stage's eval loss read 0.02 above the next-token
    loss of an upcycled model. Evaluation now asks for no router logits, whatever the config says."""
    model = build("mixtral")
    model.config.output_router_logits = True
    stats = RouterStats(model)
    ids = probe_ids()
    with torch.no_grad():
        out = model.eval()(input_ids=ids, labels=ids)
    next_token = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert float(out.loss) == pytest.approx(float(next_token), abs=1e-6)
    assert stats.metrics() == {}
    stats.close()
