"""Mixtures of experts whose first layers keep a dense MLP (`first_k_dense_replace`): GLM-4.5 (`glm4_moe`),
DeepSeek-V3 (`deepseek_v3`, with its e-score correction bias and multi-head latent attention), DeepSeek-V3.2
(`deepseek_v32`, V3 plus a sparse-attention indexer in every layer) and DeepSeek-V2 (`deepseek_v2`, V2-Lite's direct
query projection), tiny and saved in shards in both expert layouts.

Identity growth is exact after a save → `from_pretrained` round trip and keeps every router decision of the
original layers; the grown dense prefix is written back (a wrong one does not load); a grown stack whose dense
layers would not be a prefix (G_stack) is refused in one line before anything is written, naming the methods that
keep it; GLM-4.5's GQA attention widens exactly, MLA's head count is kept by width growth (tests/test_mla_width.py)
and a change of it refused in one line; multi-token-prediction layers stored after the stack are left out with one
note.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from behaviour import behaviour, compare, tensors
from safetensors.torch import save_file
from tiny_moe import PREFIX_NAMES, model_class, probe_ids, save

from grow_cli.growth.describe import inspect
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

EXACT = 1e-5  # measured: identity 0.0, fpi/hypercloning ≤ 2e-7 on logits of magnitude ~1


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-prefix")
    folders = {name: save(name, root / name) for name in PREFIX_NAMES}
    folders.update({f"{name}-fused": save(name, root / f"{name}-fused", fused=True) for name in PREFIX_NAMES})
    return folders


@pytest.fixture(scope="module")
def reference(sources):
    """Each source's logits and greedy continuation, computed once."""
    return {key: behaviour(load(key, folder), probe_ids()) for key, folder in sources.items()}


@pytest.fixture(scope="module")
def routes(sources):
    """Each source's router decisions on the probe tokens, computed once."""
    return {key: routing(load(key, folder)) for key, folder in sources.items()}


def load(key: str, folder: Path) -> torch.nn.Module:
    return model_class(key.removesuffix("-fused")).from_pretrained(folder, dtype=torch.float32).eval()


def routing(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Each MoE layer's chosen experts on the probe tokens (sorted per token), by layer index."""
    chosen: dict[int, torch.Tensor] = {}
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda m, a, out, i=i: chosen.update({i: out[2].sort(-1).values}))
        for i, layer in enumerate(model.model.layers)
        if hasattr(layer.mlp, "experts")
    ]
    with torch.no_grad():
        model(probe_ids())
    for hook in hooks:
        hook.remove()
    return chosen


def grow(sources, key, out, **kw):
    return expand(str(sources[key]), out, GrowthSpec(shard_size="40KB", **kw), quiet=True, force=True)


@pytest.mark.parametrize("key", [*PREFIX_NAMES, *(f"{n}-fused" for n in PREFIX_NAMES)])
def test_identity_growth_is_exact_keeps_every_routing_decision_and_the_dense_prefix(
    sources, reference, routes, tmp_path, key
):
    out = tmp_path / "out"
    report = grow(sources, key, out, layers=6, depth_method="identity")
    layer_map = report["depth"]["layer_map"]
    assert layer_map == [0, 0, 1, 1, 2, 2] and report["function_preserving"] is True
    grown = load(key, out)
    gap, same = compare(grown, reference[key], probe_ids(), generate=not key.endswith("-fused"))
    assert gap <= EXACT and same is not False, gap
    assert json.loads((out / "config.json").read_text())["first_k_dense_replace"] == 2  # layer 0 and its copy
    assert report["target"]["sparse_layers"] == [2, 3, 4, 5]  # the grown stack's, as its config.json says
    source_routes, grown_routes = routes[key], routing(grown)
    assert sorted(source_routes) == [1, 2] and sorted(grown_routes) == [2, 3, 4, 5]
    for i, j in ((1, 2), (2, 4)):  # each original MoE layer picks the same experts for every token
        assert torch.equal(source_routes[i], grown_routes[j])
    # a copied MoE layer holds its source's router, correction bias and shared experts; its output writers are zero
    written = tensors(out)
    new = [n for n in written if n.startswith("model.layers.3.")]
    for n in new:
        twin = written[n.replace("layers.3.", "layers.2.")]
        if n.endswith(("down_proj", "down_proj.weight", "o_proj.weight")):
            assert not written[n].any(), n
        else:
            assert torch.equal(written[n], twin), n
    assert any("e_score_correction_bias" in n for n in new) == (not key.startswith("deepseek_v2"))
    assert any("shared_experts" in n for n in new)


def test_a_wrong_dense_prefix_does_not_load_negative_control(sources, reference, tmp_path):
    """The written first_k_dense_replace is what makes the copies load as what they are."""
    out = tmp_path / "out"
    grow(sources, "deepseek_v3", out, layers=6, depth_method="identity")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "first_k_dense_replace": 1}))
    model, info = model_class("deepseek_v3").from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert info["missing_keys"] and info["unexpected_keys"]  # an MoE block where the dense copy was written
    with torch.no_grad():
        assert float((model.eval()(probe_ids()).logits - reference["deepseek_v3"][0]).abs().max()) > 1e-2


@pytest.mark.parametrize("key", ["glm4_moe", "deepseek_v3-fused"])
def test_interleave_keeps_the_prefix_but_is_not_exact_negative_control(sources, reference, tmp_path, key):
    out = tmp_path / "out"
    report = grow(sources, key, out, layers=6, depth_method="interleave")
    gap, _ = compare(load(key, out), reference[key], probe_ids(), generate=False)
    assert report["function_preserving"] is False and gap > 1e-2
    assert json.loads((out / "config.json").read_text())["first_k_dense_replace"] == 2


@pytest.mark.parametrize("key", ["glm4_moe", "deepseek_v3"])
def test_stacking_is_refused_in_one_line_before_anything_is_written(cli, sources, tmp_path, key):
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        result = cli("expand", sources[key], out, "--layers", "6", "--depth-method", "stack", *extra)
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1, result.stderr
        assert "dense layers at 3, after MoE layers" in lines[0] and "first_k_dense_replace" in lines[0]
        others = (
            "interleave, interpolate or identity"
            if key == "deepseek_v3"
            else "interleave, interpolate, identity or staged-identity"
        )
        assert f"use --depth-method {others}" in lines[0]  # staged-identity: never on latent attention (test_staged.py)
        assert not out.exists()
    # SOLAR's dus keeps the prefix only while its overlap covers the dense layer: 3 → 4 runs, 3 → 6 does not
    assert cli("expand", sources[key], out, "--layers", "6", "--depth-method", "dus").code == 2 and not out.exists()
    assert cli("expand", sources[key], out, "--layers", "4", "--depth-method", "dus").code == 0


def test_inspect_lists_the_depth_methods_that_keep_the_prefix(sources):
    info = inspect(str(sources["deepseek_v3"]))
    assert info["dense_layers"] == [0] and info["sparse_layers"] == [1, 2]
    assert info["shared_intermediate_size"] == 16 and info["topk_weights_sum_to_1"] is False  # scaled by 2.5
    assert info["config_spaces"] == {"q_lora": 24, "kv_lora": 16, "kv_a": 20, "mla_q": 48, "mla_kv": 64, "mla_o": 32}
    depth = {m["method"]: m for m in info["methods"]["depth"]}
    assert depth["stack"]["applies"] is False and "first_k_dense_replace" in depth["stack"]["why"]
    assert depth["dus"] == {"method": "dus", "applies": True, "only": "up to --layers 4"}
    assert all(depth[m]["applies"] and "only" not in depth[m] for m in ("interleave", "identity"))
    assert depth["staged-identity"]["applies"] is False and "never train" in depth["staged-identity"]["why"]
    width = {m["method"]: m for m in info["methods"]["width"]}
    assert width.pop("staged")["applies"] is False  # it needs the heads ×k, which MLA keeps
    assert all(m["applies"] and "num_attention_heads" in m["only"] for m in width.values())
    glm = inspect(str(sources["glm4_moe-fused"]))
    assert glm["expert_layout"] == "fused" and all(m["applies"] for m in glm["methods"]["width"])
    model = load("glm4_moe", sources["glm4_moe"])
    assert glm["num_parameters"] == sum(p.numel() for p in model.parameters())  # not the correction-bias buffers


def test_a_dense_prefix_covering_every_layer_inspects_and_grows_all_dense(cli, tmp_path):
    """first_k_dense_replace at or past num_hidden_layers (transformers allows it: every MLP dense): inspect's table
    says so instead of failing on the expert layout it has none of, and growth keeps every layer dense."""
    from tiny_moe import build

    model = build("deepseek_v3")
    config = model.config.to_dict() | {"first_k_dense_replace": 5}
    type(model)(type(model.config).from_dict(config)).save_pretrained(tmp_path / "src", max_shard_size="40KB")
    result = cli("inspect", tmp_path / "src")
    assert result.code == 0, result.stderr
    assert "0 of 3 (dense MLP in layers 0, 1, 2)" in " ".join(result.stdout.split())
    out = tmp_path / "out"
    result = cli("expand", tmp_path / "src", out, "--layers", "5", "--depth-method", "identity", "--verify")
    assert result.code == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["first_k_dense_replace"] == 5
    assert not any(".experts." in n or "mlp.gate." in n for n in tensors(out))


@pytest.mark.parametrize("name", ["deepseek_v3", "glm4_moe_lite"])
def test_a_grown_training_state_leaves_out_the_routers_correction_biases_and_resumes(tmp_path, name):
    """The e-score correction bias of DeepSeek-V3 and of the GLMs is a buffer (saved, grown, never trained): the
    grown AdamW state lists only the model's parameters, so `--resume grown` takes it, and no tensor is called frozen
    (GLM-4.7-Flash's and GLM-5's were unmarked, and the resume refused the state)."""
    from accelerate.state import AcceleratorState
    from tiny_moe import build
    from tinylm import tiny_tokenizer, write_plays

    from grow_cli.train.config import TrainConfig
    from grow_cli.train.loop import train_stage

    model = build(name)
    model = type(model)(type(model.config).from_dict(model.config.to_dict() | {"vocab_size": 512}))
    model.save_pretrained(tmp_path / "src")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    data = write_plays(tmp_path / "data", count=1, chars=8000)
    settings = dict(data=[str(data)], seq_len=32, micro_batch_size=2, max_steps=2, quiet=True)
    train_stage(TrainConfig(model=tmp_path / "src", out=tmp_path / "run", **{**settings, "max_steps": 3}, save_every=2))
    report = expand(str(tmp_path / "run/checkpoints/step_00000002"), tmp_path / "grown", GrowthSpec(layers=5,
                    depth_method="identity"), quiet=True)  # fmt: skip
    state = json.loads((tmp_path / "grown/training-state/state.json").read_text())
    assert not any("e_score_correction_bias" in n for n in state["parameters"])
    assert not any("frozen" in n for n in report["notes"] + state["dynamics"]["notes"])
    AcceleratorState._reset_state(True)
    result = train_stage(TrainConfig(model=tmp_path / "grown", out=tmp_path / "more", resume="grown", **settings))
    assert result["status"] == "done" and result["end_step"] == 4


@pytest.mark.parametrize("method", ["fpi", "hypercloning"])
def test_glm4_moe_widens_exactly_with_every_router_decision_kept(sources, reference, routes, tmp_path, method):
    out = tmp_path / "out"
    report = grow(sources, "glm4_moe", out, width_method=method, width_factor=2)
    shape = report["target"]
    assert report["function_preserving"] is True and shape["hidden_size"] == 64 and shape["num_heads"] == 8
    assert shape["expert_intermediate_size"] == 32 and shape["shared_intermediate_size"] == 32
    grown = load("glm4_moe", out)
    gap, same = compare(grown, reference["glm4_moe"], probe_ids(), generate=True)
    assert gap <= EXACT and same, gap
    grown_routes = routing(grown)
    assert all(torch.equal(routes["glm4_moe"][i], grown_routes[i]) for i in (1, 2))
    # the index and grow.json count parameters as transformers does: the correction-bias buffers are no parameters
    index = json.loads((out / "model.safetensors.index.json").read_text())
    parameters = sum(p.numel() for p in grown.parameters())
    assert index["metadata"]["total_parameters"] == parameters == report["target"]["num_parameters"]


def test_glm4_moe_heads_that_do_not_divide_the_hidden_size_widen_too(tmp_path):
    """GLM-4.5-Air has 96 heads of 128 over a hidden size of 4096, which its config class allows: a tiny one (6 heads
    of 8 over 40) widens ×2 exactly, where grow's check that heads divide the hidden size would have refused it."""
    from tiny_moe import build

    torch.manual_seed(0)
    model = build("glm4_moe")
    config = model.config.to_dict() | {"hidden_size": 40, "num_attention_heads": 6, "vocab_size": 96}
    model = type(model)(type(model.config).from_dict(config)).eval()
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    report = expand(str(tmp_path / "src"), tmp_path / "out", GrowthSpec(width_factor=2), quiet=True, verify=True)
    assert report["target"]["hidden_size"] == 80 and report["target"]["num_heads"] == 12
    assert report["verify"]["passed"] is True and report["verify"]["max_abs_logit_diff"] <= EXACT


def test_glm4_moe_width_and_depth_pass_verify_through_the_cli(cli, sources, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "expand", sources["glm4_moe-fused"], out, "--width-factor", "2", "--layers", "5", "--depth-method",
        "identity", "--verify", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    verify = json.loads(result.stdout)["verify"]
    assert verify["passed"] is True and verify["max_abs_logit_diff"] <= EXACT


def test_mla_width_and_upcycling_are_refused_in_one_line(cli, sources, tmp_path):
    for args, phrase in (
        (["--num-heads", "8"], "width growth of deepseek_v3 keeps every key of its config spaces"),
        (["--experts", "4"], "deepseek_v3 is already a mixture of experts"),
    ):
        result = cli("expand", sources["deepseek_v3"], tmp_path / "out", *args)
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1 and phrase in lines[0], result.stderr


def with_mtp_layer(source: Path, folder: Path) -> Path:
    """A copy of `source` with a multi-token-prediction layer after its stack, in a shard of its own, as DeepSeek-V3
    (model.layers.61) and GLM-4.5 store one: a decoder layer (its last one's tensors) plus the projection, norms,
    embedding and head of the MTP module."""
    import shutil

    shutil.copytree(source, folder)
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    every = tensors(folder)
    last = max(int(n.split(".")[2]) for n in every if n.startswith("model.layers."))
    mtp = {
        n.replace(f"layers.{last}.", f"layers.{last + 1}."): t.clone()
        for n, t in every.items()
        if n.startswith(f"model.layers.{last}.")
    }
    hidden = every["model.norm.weight"].shape[0]
    prefix = f"model.layers.{last + 1}."
    mtp.update(
        {
            prefix + "enorm.weight": torch.ones(hidden),
            prefix + "hnorm.weight": torch.ones(hidden),
            prefix + "eh_proj.weight": torch.randn(hidden, 2 * hidden),
            prefix + "embed_tokens.weight": every["model.embed_tokens.weight"].clone(),
            prefix + "shared_head.norm.weight": torch.ones(hidden),
            prefix + "shared_head.head.weight": every["lm_head.weight"].clone(),
        }
    )
    save_file(mtp, folder / "model-mtp.safetensors", metadata={"format": "pt"})
    index["weight_map"].update({n: "model-mtp.safetensors" for n in mtp})
    index_file.write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize("key", ["deepseek_v3", "glm4_moe-fused"])
def test_a_multi_token_prediction_layer_is_left_out_with_one_note(cli, sources, reference, tmp_path, key):
    src = with_mtp_layer(sources[key], tmp_path / "src")
    assert json.loads((src / "config.json").read_text())["num_nextn_predict_layers"] == 1
    info = inspect(str(src))
    assert [n["name"] for n in info["not_read"]] == ["model.layers.3.*"]
    out = tmp_path / "out"
    dry = cli("expand", src, out, "--layers", "5", "--depth-method", "identity", "--dry-run", "--json")
    dry = json.loads(dry.stdout)
    assert dry["target_config"]["num_nextn_predict_layers"] == 0 and dry["target_config"]["first_k_dense_replace"] == 1
    assert sum("multi-token-prediction" in n for n in dry["notes"]) == 1 and not out.exists()
    result = cli("expand", src, out, "--layers", "5", "--depth-method", "identity", "--verify", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    notes = [n for n in report["notes"] if "multi-token-prediction" in n]
    assert len(notes) == 1 and notes[0].startswith("not written: model.layers.3.* (a multi-token-prediction layer")
    assert report["verify"]["passed"] is True
    written = set(tensors(out))
    assert not any(part in n for n in written for part in ("eh_proj", "enorm", "shared_head", "layers.3.embed"))
    assert max(int(n.split(".")[2]) for n in written if n.startswith("model.layers.")) == 4
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 0
    gap, _ = compare(load(key, out), reference[key], probe_ids(), generate=False)
    assert gap <= EXACT, gap
    # without the config's count, the same layer is a layer config.json does not have: refused, not guessed
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 0}))
    result = cli("expand", src, tmp_path / "out2", "--layers", "5", "--depth-method", "identity")
    assert result.code != 0 and "belongs to layer 3 but config.json says 3 layers" in result.stderr
    assert "multi-token-prediction layer, set num_nextn_predict_layers (now 0) to count it" in result.stderr


def test_an_mtp_count_under_transformers_other_name_is_not_left_contradicting_the_grown_one(sources, tmp_path):
    """config.json may count the MTP layers as `num_mtp_layers` (transformers' attribute map): the grown config says
    0 under one name only, not 0 beside a stale 1 that a reader of the other name would take."""
    src = with_mtp_layer(sources["deepseek_v3"], tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["num_mtp_layers"] = config.pop("num_nextn_predict_layers")
    (src / "config.json").write_text(json.dumps(config))
    report = expand(str(src), None, GrowthSpec(layers=5, depth_method="identity"), dry_run=True, quiet=True)
    grown = report["target_config"]
    assert grown["num_nextn_predict_layers"] == 0 and "num_mtp_layers" not in grown
    assert sum("multi-token-prediction" in n for n in report["notes"]) == 1


def test_grow_plan_proposes_a_depth_method_that_keeps_the_prefix(cli, tmp_path):
    """`grow plan --target FOLDER` on a DeepSeek-V3 config: G_stack's command would be refused, so the guideline
    names interleave and says why."""
    import transformers as tf

    config = tf.DeepseekV3Config(
        vocab_size=1000, hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_group=2, topk_group=1,
        num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=8,
        qk_nope_head_dim=16, v_head_dim=16,
    )  # fmt: skip
    config.save_pretrained(tmp_path / "dsv3")
    result = cli("plan", "--target", tmp_path / "dsv3", "--tokens", "1B", "--family", "2e6", "--json")
    assert result.code == 0, result.stderr
    stacking = json.loads(result.stdout)["stacking"]
    assert stacking["command"].endswith("--depth-method interleave")
    assert "stack does not apply" in stacking["note"] and "first_k_dense_replace" in stacking["note"]
