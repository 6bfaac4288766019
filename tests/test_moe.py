"""Mixture-of-experts checkpoints — mixtral, qwen2_moe (shared expert, a dense layer), qwen3_moe (every other layer
sparse), olmoe — read in both expert layouts and grown in depth and width by every method that claims exactness,
saved in shards, loaded back with transformers and compared with their source (fp32, eval mode), greedy generation
with the KV cache included.

Negative controls show that the rules matter: a stacked copy changes the function, and a grown Qwen3-MoE whose
sparse-layer pattern were left to its default would give a copied layer the wrong kind.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from behaviour import behaviour, compare, tensors
from doc_keys import json_output_problems
from tiny_moe import NAMES, model_class, probe_ids, save

from grow_cli.growth.describe import inspect
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

EXACT = 1e-5  # measured gaps are ≤ 2e-7 on logits of magnitude ≤ 1.5


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    folders = {name: save(name, root / name) for name in NAMES}
    folders["qwen2_moe-fused"] = save("qwen2_moe", root / "qwen2_moe-fused", fused=True)
    return folders


@pytest.fixture(scope="module")
def reference(sources):
    """Each source's logits and greedy continuation (with the KV cache), computed once."""
    return {
        key: behaviour(
            model_class(key.removesuffix("-fused")).from_pretrained(folder, dtype=torch.float32).eval(), probe_ids()
        )
        for key, folder in sources.items()
    }


def grow(sources, reference, tmp_path, key, *, generate=False, verify=False, **kw):
    """Expand `key`, load the output, return (report, max |Δlogit|, greedy tokens equal or None, output folder)."""
    out = tmp_path / f"{key}-out"
    report = expand(str(sources[key]), out, GrowthSpec(shard_size="40KB", **kw), quiet=True, force=True, verify=verify)
    model = model_class(key.removesuffix("-fused")).from_pretrained(out, dtype=torch.float32).eval()
    gap, same = compare(model, reference[key], probe_ids(), generate=generate)
    return report, gap, same, out


def tensor_names(folder) -> set[str]:
    return set(tensors(folder))


@pytest.mark.parametrize("key", [*NAMES, "qwen2_moe-fused"])
def test_identity_depth_growth_is_exact_and_generates(sources, reference, tmp_path, key):
    report, gap, same, out = grow(sources, reference, tmp_path, key, layers=6, depth_method="identity", generate=True)
    assert report["function_preserving"] is True and report["target"]["layers"] == 6
    assert gap <= EXACT, gap
    assert same, "greedy continuation changed"
    # every expert of a new layer (and the shared expert) writes nothing: their output projections are zero
    new = report["depth"]["new_layers"]
    outputs = {n: t for n, t in tensors(out).items() if any(f".layers.{j}." in n for j in new)}
    zeroed = [n for n in outputs if "down_proj" in n or ".w2." in n or "o_proj" in n]
    assert len(zeroed) >= 2 * len(new) and all(not outputs[n].any() for n in zeroed)


@pytest.mark.parametrize("key", [*NAMES, "qwen2_moe-fused"])
def test_fpi_doubling_keeps_every_router_decision_and_is_exact(sources, reference, tmp_path, key):
    report, gap, same, _ = grow(sources, reference, tmp_path, key, width_factor=2, generate=True)
    assert report["function_preserving"] is True and report["target"]["hidden_size"] == 64
    assert report["target"]["num_experts"] == 4  # the expert count is not a width
    assert gap <= EXACT, gap
    assert same


@pytest.mark.parametrize("key", NAMES)
def test_hypercloning_with_noise_and_identity_in_one_verified_pass(sources, reference, tmp_path, key):
    width = dict(width_method="hypercloning", width_factor=2, noise_snr_db=10)
    report, gap, _, _ = grow(sources, reference, tmp_path, key, **width, layers=5, depth_method="identity", verify=True)
    assert report["verify"]["passed"] is True and gap <= EXACT, gap


@pytest.mark.parametrize("key", NAMES)
def test_zero_widening_of_every_ffn_is_exact(sources, reference, tmp_path, key):
    source = inspect(str(sources[key]))
    ffn = 2 * source["intermediate_size"]
    report, gap, _, _ = grow(sources, reference, tmp_path, key, width_method="zero", intermediate_size=ffn)
    shape = report["target"]
    assert report["function_preserving"] is True and gap <= EXACT, gap
    assert shape["expert_intermediate_size"] == 2 * source["expert_intermediate_size"]  # experts grow like the FFN
    assert shape["shared_intermediate_size"] == 2 * source["shared_intermediate_size"]


def test_stacking_changes_the_function_negative_control(sources, reference, tmp_path):
    report, gap, _, _ = grow(sources, reference, tmp_path, "mixtral", layers=8, depth_method="stack")
    assert report["function_preserving"] is False and gap > 1e-2


def test_expert_layout_is_kept(sources, reference, tmp_path):
    """A checkpoint written one tensor per expert stays so; a fused one stays fused (what was read is written)."""
    _, _, _, out = grow(sources, reference, tmp_path, "qwen2_moe", layers=5, depth_method="identity")
    assert "model.layers.4.mlp.experts.3.down_proj.weight" in tensor_names(out)
    _, _, _, out = grow(sources, reference, tmp_path, "qwen2_moe-fused", layers=5, depth_method="identity")
    names = tensor_names(out)
    assert "model.layers.4.mlp.experts.down_proj" in names and not any(".experts.0." in n for n in names)


def test_sparse_layer_pattern_follows_the_layer_map(sources, reference, tmp_path):
    """Qwen3-MoE with decoder_sparse_step 2 (layers 1 and 3 sparse) grown 4 → 6 by identity: each copy keeps its
    source layer's kind, written as an explicit mlp_only_layers; the type's default pattern would not."""
    report, gap, _, out = grow(sources, reference, tmp_path, "qwen3_moe", layers=6, depth_method="identity")
    config = json.loads((out / "config.json").read_text())
    layer_map = report["depth"]["layer_map"]
    assert config["decoder_sparse_step"] == 1
    assert config["mlp_only_layers"] == [j for j, src in enumerate(layer_map) if src in (0, 2)]
    assert gap <= EXACT
    # negative control: the source's own pattern keys for the grown depth give the copies other kinds
    config.update(decoder_sparse_step=2, mlp_only_layers=[])
    (out / "config.json").write_text(json.dumps(config))
    model, info = model_class("qwen3_moe").from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] and info["unexpected_keys"]  # an MoE block where a dense MLP was copied, and back
    with torch.no_grad():
        assert float((model.eval()(probe_ids()).logits - reference["qwen3_moe"][0]).abs().max()) > 1e-2


@pytest.mark.parametrize(
    ("key", "layer_map", "dense"),
    [
        ("qwen2_moe", "0,1,1,2,3,3", [1, 2]),  # mlp_only_layers [1]: the dense layer and its copy
        ("qwen3_moe", "0-3,0,3", [0, 2, 4]),  # decoder_sparse_step 2: 0 and 2 dense, repeats of 0 and 3 at the top
    ],
)
def test_every_record_of_the_moe_layers_follows_a_layer_map_that_repeats_layers(
    sources, reference, tmp_path, key, layer_map, dense
):
    """A layer map that duplicates layers of a mixed dense/sparse stack: the grown config.json, the report's (and
    --dry-run's) `target.sparse_layers` and the model transformers builds all give each copy its source layer's kind
    (the report's were once the source's, unmapped)."""
    report, gap, _, out = grow(sources, reference, tmp_path, key, layer_map=layer_map, identity_repeats=True)
    sparse = [j for j in range(6) if j not in dense]
    assert report["target"]["layers"] == 6 and report["target"]["sparse_layers"] == sparse
    config = json.loads((out / "config.json").read_text())
    assert (config["mlp_only_layers"], config["decoder_sparse_step"]) == (dense, 1)
    assert inspect(str(out))["sparse_layers"] == sparse  # read back from the written config.json
    model = model_class(key).from_pretrained(out, dtype=torch.float32)
    assert [j for j, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")] == sparse
    assert report["function_preserving"] is True and gap <= EXACT, gap


def test_inspect_shows_experts_top_k_and_active_parameters(sources):
    info = inspect(str(sources["qwen2_moe"]))
    assert info["num_experts"] == 4 and info["experts_per_token"] == 2
    assert info["dense_layers"] == [1] and info["sparse_layers"] == [0, 2, 3]
    assert info["expert_layout"] == "per_expert" and info["topk_weights_sum_to_1"] is False
    model = model_class("qwen2_moe").from_pretrained(sources["qwen2_moe"])
    total = sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert info["num_parameters"] == total
    assert info["active_parameters"] == total - routed // 2  # top-2 of 4 experts
    fused = inspect(str(sources["qwen2_moe-fused"]))
    assert fused["expert_layout"] == "fused" and fused["active_parameters"] == info["active_parameters"]
    assert [m["applies"] for m in info["methods"]["moe"]] == [False, False] and info["upcycles_to"] is None


def test_inspect_cli_renders_the_moe_rows(cli, sources):
    result = cli("inspect", sources["qwen3_moe"])
    assert result.code == 0, result.stderr
    text = " ".join(re.sub("[│┃┌┐└┘─┬┴┼├┤]", " ", result.stdout).split())  # the table's cells, unwrapped
    assert "4 routed, 2 per token" in text and "top-k weights sum to 1: yes" in text
    assert "MoE layers" in text and "active parameters" in text


def test_grow_plan_charges_an_moe_target_its_active_parameters(cli, tmp_path):
    """`grow plan --target FOLDER` on a Mixtral: the compute C = 6·N·D counts the top-2 of 8 experts a token runs."""
    import transformers as tf

    config = tf.MixtralConfig(
        vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
    )  # fmt: skip
    tf.MixtralForCausalLM(config).save_pretrained(tmp_path / "mixtral")
    info = inspect(str(tmp_path / "mixtral"))
    assert json_output_problems("`grow inspect`", info) == []  # an MoE's keys
    total, active = info["num_parameters"], info["active_parameters"]
    assert active < total / 2
    result = cli("plan", "--target", tmp_path / "mixtral", "--tokens", "1B", "--family", str(total), "--json")
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert json_output_problems("`grow plan`", plan) == []  # an MoE target's
    assert plan["target"]["compute_flops"] == 6 * active * 1e9
    member = plan["family"]["members"][0]
    assert member["num_parameters"] == total and member["active_parameters"] == active
