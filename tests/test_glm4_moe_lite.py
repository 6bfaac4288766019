"""GLM-4.7-Flash (`glm4_moe_lite`): DeepSeek-V3's multi-head latent attention with GLM's experts, whose dense layers
are marked in the per-layer list `mlp_layer_types` rather than by a dense prefix.

Tiny models from `tests/tiny_moe.py`, saved in shards: one as the released checkpoint is (config.json without the
list, so transformers' default applies, `first_k_dense_replace` 1 beside it and a multi-token-prediction layer after
the stack) and one with a pattern no dense prefix can say (dense in the middle). Identity growth is exact after
`from_pretrained` and keeps every router decision; G_stack applies (the list can say any pattern) and writes the
grown list; FPI doubles the hidden size and FFNs exactly with MLA's latents kept. Controls: a wrong list does not
load as the grown model; stacking is not exact; a list that does not fit the layer count is one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from behaviour import behaviour, compare
from test_moe_prefix import EXACT, routing, with_mtp_layer
from tiny_moe import model_class, probe_ids, save

from grow_cli.growth.describe import inspect
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

NAME = "glm4_moe_lite"
MIDDLE = ["sparse", "dense", "sparse"]  # a pattern a dense prefix cannot say


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("glm4-moe-lite")
    released = with_mtp_layer(save(NAME, root / "saved"), root / "released")
    config = json.loads((released / "config.json").read_text())
    del config["mlp_layer_types"]  # as GLM-4.7-Flash's config.json: transformers fills in its default
    config.update(first_k_dense_replace=1, num_nextn_predict_layers=1)
    (released / "config.json").write_text(json.dumps(config))
    return {"released": released, "middle": save(NAME, root / "middle", fused=True, mlp_layer_types=MIDDLE)}


@pytest.fixture(scope="module")
def reference(sources):
    return {key: behaviour(load(folder), probe_ids()) for key, folder in sources.items()}


def load(folder: Path, **kw):
    return model_class(NAME).from_pretrained(folder, dtype=torch.float32, **kw)


def grow(sources, key, out, **kw):
    return expand(str(sources[key]), out, GrowthSpec(shard_size="40KB", **kw), quiet=True, force=True)


def written_config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize(
    ("key", "grown_types", "prefix"),
    [
        ("released", ["dense", "dense", "sparse", "sparse", "sparse", "sparse"], 2),
        ("middle", ["sparse", "sparse", "dense", "dense", "sparse", "sparse"], 0),
    ],
)
def test_identity_growth_is_exact_and_keeps_every_router_decision(
    sources, reference, tmp_path, key, grown_types, prefix
):
    out = tmp_path / "out"
    report = grow(sources, key, out, layers=6, depth_method="identity")
    assert report["depth"]["layer_map"] == [0, 0, 1, 1, 2, 2] and report["function_preserving"] is True
    config = written_config(out)
    assert config["mlp_layer_types"] == grown_types and config["first_k_dense_replace"] == prefix
    assert config["num_nextn_predict_layers"] == 0 and len(list(out.glob("*.safetensors"))) > 1
    grown, info = load(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gap, same = compare(grown.eval(), reference[key], probe_ids(), generate=True)
    assert gap <= EXACT and same is True, gap
    source_routes, grown_routes = routing(load(sources[key]).eval()), routing(grown)
    assert sorted(grown_routes) == [j for j, kind in enumerate(grown_types) if kind == "sparse"]
    for (
        i
    ) in source_routes:  # each original MoE layer (the first of its pair; its copy adds zero) picks the same experts
        assert torch.equal(source_routes[i], grown_routes[2 * i])


def test_a_wrong_mlp_layer_types_does_not_load_negative_control(sources, reference, tmp_path):
    """The written list is what makes the copies load as what they are: the default pattern for 6 layers puts an MoE
    block where layer 0's dense copy was written."""
    out = tmp_path / "out"
    grow(sources, "released", out, layers=6, depth_method="identity")
    config = written_config(out)
    (out / "config.json").write_text(json.dumps({**config, "mlp_layer_types": ["dense"] + ["sparse"] * 5}))
    model, info = load(out, output_loading_info=True)
    assert info["missing_keys"] and info["unexpected_keys"]
    with torch.no_grad():
        assert float((model.eval()(probe_ids()).logits - reference["released"][0]).abs().max()) > 1e-2


@pytest.mark.parametrize("key", ["released", "middle"])
def test_stacking_applies_writes_the_repeated_list_and_loads_but_is_not_exact(sources, reference, tmp_path, key):
    out = tmp_path / "out"
    report = grow(sources, key, out, layers=6, depth_method="stack")
    kinds = MIDDLE if key == "middle" else ["dense", "sparse", "sparse"]
    config = written_config(out)
    assert report["depth"]["layer_map"] == [0, 1, 2, 0, 1, 2] and config["mlp_layer_types"] == kinds * 2
    assert config["first_k_dense_replace"] == kinds.index("sparse")
    grown, info = load(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gap, _ = compare(grown.eval(), reference[key], probe_ids(), generate=False)
    assert report["function_preserving"] is False and gap > 1e-2  # G_stack is not function preserving
    assert sorted(routing(grown)) == [j for j, kind in enumerate(kinds * 2) if kind == "sparse"]


def test_inspect_reads_the_list_and_every_depth_method_but_staged_identity_applies(sources):
    info = inspect(str(sources["released"]))
    assert info["dense_layers"] == [0] and info["sparse_layers"] == [1, 2]
    assert [n["name"] for n in info["not_read"]] == ["model.layers.3.*"]  # the multi-token-prediction layer
    assert info["config_spaces"] == {"q_lora": 24, "kv_lora": 16, "kv_a": 20, "mla_q": 48, "mla_kv": 64, "mla_o": 32}
    depth = {m["method"]: m for m in info["methods"]["depth"]}
    assert depth.pop("staged-identity")["applies"] is False  # its latent norms would keep new layers from training
    assert all(m["applies"] and "only" not in m for m in depth.values())
    assert inspect(str(sources["middle"]))["dense_layers"] == [1]


@pytest.mark.parametrize("key", ["released", "middle"])
def test_fpi_doubles_hidden_and_ffns_exactly_keeping_mla(sources, reference, tmp_path, key):
    out = tmp_path / "out"
    spec = GrowthSpec(hidden_size=64, intermediate_size=96, shard_size="40KB")
    report = expand(str(sources[key]), out, spec, quiet=True, verify=True)
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    assert report["verify"]["max_abs_logit_diff"] <= EXACT
    source, grown = json.loads((sources[key] / "config.json").read_text()), written_config(out)
    assert (grown["hidden_size"], grown["intermediate_size"], grown["moe_intermediate_size"]) == (64, 96, 32)
    mla = ("num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    assert all(grown[k] == source[k] for k in mla)
    model = load(out).eval()
    gap, same = compare(model, reference[key], probe_ids(), generate=True)
    assert gap <= EXACT and same is True, gap
    source_routes, grown_routes = routing(load(sources[key]).eval()), routing(model)
    assert sorted(grown_routes) == sorted(source_routes)
    assert all(torch.equal(source_routes[i], grown_routes[i]) for i in source_routes)


def test_verify_through_the_cli_and_a_bad_list_is_one_line(cli, sources, tmp_path):
    out = tmp_path / "out"
    result = cli("expand", sources["middle"], out, "--layers", "6", "--depth-method", "identity", "--verify", "--json")
    assert result.code == 0, result.stderr
    verify = json.loads(result.stdout)["verify"]
    assert verify["passed"] is True and verify["max_abs_logit_diff"] <= EXACT
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in sources["middle"].iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "config.json").unlink()
    config = json.loads((sources["middle"] / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "mlp_layer_types": ["sparse", "dense"]}))
    result = cli("expand", bad, tmp_path / "out2", "--layers", "6", "--depth-method", "identity")
    lines = result.stderr.strip().splitlines()
    assert result.code != 0 and len(lines) == 1 and "mlp_layer_types" in lines[0], result.stderr
    assert not (tmp_path / "out2").exists()
