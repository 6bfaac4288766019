"""Sparse upcycling: tiny dense Llama, Mistral, Qwen2 and Qwen3 models grown into Mixtral, Qwen2-MoE and Qwen3-MoE,
saved in shards, loaded back with transformers and compared with the dense source (fp32, eval mode): exact logits
and the same greedy continuation with the KV cache, for every router option; Drop-Upcycling's gap measured and its
re-initialised units checked; the shared expert exact; depth and width in the same pass; and every refusal one line.

The negative control: Qwen2-MoE's own default `norm_topk_prob: false` (top-k weights that do not sum to 1) breaks
the exactness the upcycled config's `true` gives.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers as tf
from behaviour import behaviour, compare, tensors
from doc_keys import json_output_problems
from test_refusals import _assert_refused
from tiny_models import build_tiny, probe_ids

from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

EXACT = 1e-5  # measured gaps are ≤ 2.4e-7 on logits of magnitude ≤ 0.8


def _qwen3() -> torch.nn.Module:
    """A tiny Qwen3 as Qwen3 checkpoints ship (no sliding-window layers), norms and q/k norms randomised."""
    torch.manual_seed(0)
    config = tf.Qwen3Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = tf.Qwen3ForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
    return model.eval()


DENSE = {
    "llama": ("mixtral", lambda: build_tiny("llama")),
    "llama_tied": ("mixtral", lambda: build_tiny("llama_tied")),
    "mistral": ("mixtral", lambda: build_tiny("mistral")),
    "qwen2": ("qwen2_moe", lambda: build_tiny("qwen2")),
    "qwen3": ("qwen3_moe", _qwen3),
}


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """name → (folder, logits, greedy continuation): each dense source saved in shards and run once."""
    root = tmp_path_factory.mktemp("dense")
    result = {}
    for name, (_, build) in DENSE.items():
        model = build()
        model.save_pretrained(root / name, max_shard_size="20KB")
        result[name] = (root / name, behaviour(model, probe_ids()))
    return result


def upcycle(dense, tmp_path, name, *, generate=False, verify=False, config_edit=None, **kw):
    """Upcycle `name`; return (report, max |Δlogit| against the dense source, greedy equal or None, output folder)."""
    folder, reference = dense[name]
    out = tmp_path / f"{name}-moe"
    report = expand(str(folder), out, GrowthSpec(shard_size="30KB", **kw), quiet=True, force=True, verify=verify)
    if config_edit:
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, **config_edit}))
    model = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    gap, same = compare(model, reference, probe_ids(), generate=generate)
    return report, gap, same, out


@pytest.mark.parametrize("name", list(DENSE))
def test_upcycling_is_exact_and_generates_like_the_dense_model(dense, tmp_path, name):
    report, gap, same, out = upcycle(dense, tmp_path, name, experts=4, top_k=2, generate=True)
    target = DENSE[name][0]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == target and report["architecture"] == name.removesuffix("_tied")
    assert report["function_preserving"] is True and report["moe"]["method"] == "upcycle"
    assert report["target"]["num_experts"] == 4 and report["target"]["experts_per_token"] == 2
    assert config.get("norm_topk_prob", True) is True  # set where the type has the switch
    assert gap <= EXACT, gap
    assert same, "greedy continuation (KV cache) changed"
    written = tensors(out)
    routers = [n for n in written if n.endswith(("block_sparse_moe.gate.weight", "mlp.gate.weight"))]
    assert len(routers) == 4 and all(0.01 < float(written[n].std()) < 0.03 for n in routers)  # seeded N(0, 0.02²)


@pytest.mark.parametrize(
    "options",
    [
        {"router_noise": 0},  # a zero router: every logit ties
        {"top_k": 1},
        {"top_k": 3},  # weights of 1/3 each: not exact in binary, within rounding
        {"top_k": 4, "router_noise": 1.0},  # every expert, a loud router
    ],
)
def test_every_router_setting_stays_exact(dense, tmp_path, options):
    report, gap, _, _ = upcycle(dense, tmp_path, "llama", experts=4, **options)
    assert report["function_preserving"] is True and gap <= EXACT, (options, gap)


def test_shared_expert_is_exact_with_halved_routed_outputs(dense, tmp_path):
    report, gap, same, out = upcycle(dense, tmp_path, "qwen2", experts=4, shared_expert=True, generate=True)
    assert report["function_preserving"] is True and gap <= EXACT and same, gap
    written, source = tensors(out), tensors(dense["qwen2"][0])
    down = source["model.layers.0.mlp.down_proj.weight"]
    assert torch.equal(written["model.layers.0.mlp.shared_expert.down_proj.weight"], down)
    assert torch.equal(written["model.layers.0.mlp.experts.2.down_proj.weight"], down * 0.5)
    assert not written["model.layers.0.mlp.shared_expert_gate.weight"].any()  # σ(0) = ½
    assert json.loads((out / "config.json").read_text())["shared_expert_intermediate_size"] == 48


def test_without_a_shared_expert_qwen2_moe_gets_an_empty_one(dense, tmp_path):
    _, gap, _, out = upcycle(dense, tmp_path, "qwen2", experts=4)
    assert json.loads((out / "config.json").read_text())["shared_expert_intermediate_size"] == 0
    assert tensors(out)["model.layers.0.mlp.shared_expert.up_proj.weight"].shape == (0, 32)
    assert gap <= EXACT


def test_unnormalised_top_k_weights_break_exactness_negative_control(dense, tmp_path):
    """Qwen2-MoE's default norm_topk_prob: false — the top 2 of 4 softmax weights sum to less than 1."""
    _, gap, _, _ = upcycle(dense, tmp_path, "qwen2", experts=4, config_edit={"norm_topk_prob": False})
    assert gap > 1e-2, gap


def test_drop_upcycling_reinitialises_whole_units_and_measures_its_gap(dense, tmp_path):
    gaps = {}
    for ratio in (0.1, 0.5):
        report, gaps[ratio], _, out = upcycle(dense, tmp_path, "llama", experts=4, drop_upcycling=ratio, verify=True)
        assert report["function_preserving"] is False and report["moe"]["method"] == "drop-upcycle"
        assert report["verify"]["exact_claimed"] is False and report["verify"]["passed"] is None
    assert 1e-3 < gaps[0.1] < gaps[0.5] < 0.2, gaps  # measured: 1.4e-2 and 2.7e-2 on logits of scale 0.38
    written, source = tensors(out), tensors(dense["llama"][0])
    prefix = "model.layers.1.block_sparse_moe.experts"
    changed = {}
    for e in range(4):
        gate = (written[f"{prefix}.{e}.w1.weight"] != source["model.layers.1.mlp.gate_proj.weight"]).any(dim=1)
        up = (written[f"{prefix}.{e}.w3.weight"] != source["model.layers.1.mlp.up_proj.weight"]).any(dim=1)
        down = (written[f"{prefix}.{e}.w2.weight"] != source["model.layers.1.mlp.down_proj.weight"]).any(dim=0)
        assert torch.equal(gate, up) and torch.equal(gate, down)  # whole units: gate and up rows, down columns
        assert int(gate.sum()) == 24  # ⌊0.5 · 48⌋ units
        changed[e] = tuple(gate.nonzero().flatten().tolist())
    assert len(set(changed.values())) == 4  # a different draw for every expert
    fresh = written[f"{prefix}.0.w2.weight"][:, list(changed[0])]
    dense_down = source["model.layers.1.mlp.down_proj.weight"]
    assert abs(float(fresh.std()) / float(dense_down.std()) - 1) < 0.2  # drawn with the dense weights' statistics


def test_depth_and_width_compose_with_upcycling_in_one_verified_pass(dense, tmp_path):
    report, gap, same, out = upcycle(
        dense,
        tmp_path,
        "qwen2",
        experts=4,
        shared_expert=True,
        layers=6,
        depth_method="identity",
        width_factor=2,
        generate=True,
        verify=True,
    )
    assert report["verify"]["passed"] is True and gap <= EXACT and same, gap
    shape = report["target"]
    assert (shape["layers"], shape["hidden_size"], shape["expert_intermediate_size"]) == (6, 64, 96)
    new = report["depth"]["new_layers"]
    written = tensors(out)
    for j in new:  # an identity layer's experts and shared expert write nothing
        assert not written[f"model.layers.{j}.mlp.experts.3.down_proj.weight"].any()
        assert not written[f"model.layers.{j}.mlp.shared_expert.down_proj.weight"].any()


def test_inspect_names_the_type_a_dense_model_upcycles_into(cli, dense):
    result = cli("inspect", dense["qwen3"][0])
    text = " ".join(re.sub("[│┃┌┐└┘─┬┴┼├┤]", " ", result.stdout).split())  # the table's cells, unwrapped
    assert result.code == 0 and "--experts N makes a qwen3_moe" in text


def test_the_plan_shows_how_each_expert_is_made(cli, dense, tmp_path):
    result = cli("expand", dense["llama"][0], tmp_path / "out", "--experts", "4", "--dry-run", "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert json_output_problems("`grow expand --dry-run`", plan) == []  # an MoE target's shape
    made = {t["name"]: t["from"] for t in plan["tensors"]}
    assert made["model.layers.0.block_sparse_moe.gate.weight"] == "router ~ N(0, 0.02²), seeded"
    assert made["model.layers.0.block_sparse_moe.experts.1.w2.weight"] == "copy model.layers.0.mlp.down_proj.weight"
    assert (
        plan["moe"]["exactness"].startswith("exact")
        and plan["target"]["active_parameters"] < (plan["target"]["num_parameters"])
    )
    assert not (tmp_path / "out").exists()


def test_the_printed_plan_and_report_say_what_the_mlps_became(cli, dense, tmp_path):
    """Without --json, both the plan and the report name the upcycling (they once printed only the shapes); the
    record names the architecture the output holds."""
    planned = cli("expand", dense["llama"][0], tmp_path / "plan", "--experts", "4", "--dry-run")
    made = cli("expand", dense["llama"][0], tmp_path / "out", "--experts", "4", "--top-k", "1", "--router-noise", "0")
    assert planned.code == 0 and made.code == 0, planned.stderr + made.stderr
    assert "moe: upcycle → mixtral, 4 experts, top-2, router N(0, 0.02²), seeded (exact" in planned.stdout
    assert "moe: upcycle → mixtral, 4 experts, top-1, router zeros (exact" in made.stdout
    model = json.loads((tmp_path / "out" / "grow.json").read_text())["model"]
    assert model["architecture"] == model["model_type"] == "mixtral"  # what the folder holds (it said llama)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--experts", "4", "--top-k", "5"], "--top-k must be between 1 and --experts 4"),
        (["--experts", "1"], "--experts must be at least 2"),
        (["--experts", "100000000"], "--experts 100,000,000 is beyond grow's bound of 4,096"),
        (["--layers", "6", "--router-noise", "0.1"], "--router-noise applies only with --experts"),
        # a router of inf was written (--verify caught it as nan, after the work)
        (["--experts", "4", "--router-noise", "2e99"], "--router-noise is the standard deviation of the router's"),
        (["--experts", "4", "--drop-upcycling", "1.5"], "--drop-upcycling is the share of units re-initialised"),
        (["--experts", "4", "--shared-expert"], "--shared-expert: mixtral has no shared expert"),
        (
            ["--experts", "4", "--layers", "6", "--depth-method", "staged-identity"],
            "--depth-method staged-identity initialises dense layers; with --experts use --depth-method identity",
        ),
    ],
)
def test_bad_upcycling_options_are_one_line(cli, dense, tmp_path, args, fragment):
    out = tmp_path / "out"
    _assert_refused(cli("expand", dense["llama"][0], out, *args), out, fragment)


def test_an_moe_source_keeps_its_expert_count(cli, tmp_path):
    from tiny_moe import save

    source, out = save("mixtral", tmp_path / "mixtral"), tmp_path / "out"
    _assert_refused(
        cli("expand", source, out, "--experts", "8"), out, "mixtral is already a mixture of experts", "depth or width"
    )


def test_a_dense_type_without_an_moe_counterpart_is_refused(cli, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    _assert_refused(
        cli("expand", tiny_checkpoints("gpt2"), out, "--experts", "4"),
        out,
        "gpt2 has no mixture-of-experts counterpart",
        "llama, mistral → mixtral",
    )


def test_dense_features_the_moe_type_lacks_are_refused(cli, tmp_path):
    """A Llama with attention biases has no Mixtral counterpart: refused, not silently dropped."""
    config = tf.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_bias=True,
    )  # fmt: skip
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path / "biased")
    out = tmp_path / "out"
    _assert_refused(cli("expand", tmp_path / "biased", out, "--experts", "4"), out, "mixtral has no place for")


def test_sliding_layers_without_per_layer_types_in_the_moe_type_are_refused(cli, tmp_path):
    from tiny_decoders import save

    out = tmp_path / "out"  # tiny_decoders' Qwen3 has sliding-window layers above max_window_layers
    _assert_refused(
        cli("expand", save("qwen3", tmp_path / "qwen3"), out, "--experts", "4"), out, "sliding-window attention"
    )


def test_an_moe_type_without_a_curated_definition_is_one_line(cli, tmp_path):
    config = tf.PhimoeConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4,
    )  # fmt: skip
    tf.PhimoeForCausalLM(config).save_pretrained(tmp_path / "phimoe")
    out = tmp_path / "out"
    _assert_refused(cli("expand", tmp_path / "phimoe", out, "--layers", "3"), out, "phimoe")
