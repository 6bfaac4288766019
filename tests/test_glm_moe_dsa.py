"""GLM-5 (`glm_moe_dsa`): GLM-4.7-Flash's latent attention and experts (dense layers marked in `mlp_layer_types`)
with DeepSeek-V3.2's sparse-attention indexer in every layer, which here keeps 5 of the probe's 12 positions.

A tiny model from `tests/tiny_moe.py`, saved in shards, is grown and loaded back with `from_pretrained`: identity
growth is exact and keeps every router decision, with the per-layer lists (`mlp_layer_types`, `indexer_types`,
`layer_types`) written for the grown stack; FPI doubles the hidden size and FFNs exactly with the latents and the
indexer's sizes kept; G_stack applies and writes the repeated lists. Controls: a perturbed indexer changes the logits;
a source whose `indexer_types` marks a layer "shared" (no indexer of its own: it reuses another layer's picks) is
refused in one line, nothing written, while the same model with every layer "full" grows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from behaviour import behaviour, compare, tensors
from safetensors.torch import save_file
from test_moe_prefix import EXACT, routing
from tiny_moe import model_class, probe_ids, save

from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

NAME = "glm_moe_dsa"
INDEXER_KEYS = ("index_n_heads", "index_head_dim", "index_topk")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return save(NAME, tmp_path_factory.mktemp("glm-moe-dsa") / "src")


@pytest.fixture(scope="module")
def reference(source):
    return behaviour(load(source), probe_ids())


def load(folder: Path, **kw):
    return model_class(NAME).from_pretrained(folder, dtype=torch.float32, **kw)


def written_config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def test_identity_growth_is_exact_keeps_every_router_decision_and_writes_the_lists(source, reference, tmp_path):
    out = tmp_path / "out"
    report = expand(str(source), out, GrowthSpec(layers=6, depth_method="identity", shard_size="40KB"), quiet=True)
    assert report["depth"]["layer_map"] == [0, 0, 1, 1, 2, 2] and report["function_preserving"] is True
    config = written_config(out)
    assert config["mlp_layer_types"] == ["dense", "dense", "sparse", "sparse", "sparse", "sparse"]
    assert config["indexer_types"] == ["full"] * 6 and config["first_k_dense_replace"] == 2
    grown, info = load(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gap, same = compare(grown.eval(), reference, probe_ids(), generate=True)
    assert gap <= EXACT and same is True, gap
    source_routes, grown_routes = routing(load(source).eval()), routing(grown)
    assert sorted(source_routes) == [1, 2] and sorted(grown_routes) == [2, 3, 4, 5]
    assert all(torch.equal(source_routes[i], grown_routes[2 * i]) for i in source_routes)


def test_fpi_doubles_hidden_and_ffns_exactly_keeping_the_latents_and_the_indexer(source, reference, tmp_path):
    out = tmp_path / "out"
    report = expand(str(source), out, GrowthSpec(width_factor=2, shard_size="40KB"), quiet=True, verify=True)
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    assert report["verify"]["max_abs_logit_diff"] <= EXACT
    before, after = json.loads((source / "config.json").read_text()), written_config(out)
    assert (after["hidden_size"], after["intermediate_size"]) == (2 * before["hidden_size"], 96)
    assert all(after[k] == before[k] for k in (*INDEXER_KEYS, "q_lora_rank", "kv_lora_rank", "num_attention_heads"))
    gap, same = compare(load(out).eval(), reference, probe_ids(), generate=True)
    assert gap <= EXACT and same is True, gap


def test_stacking_applies_and_writes_the_repeated_lists_but_is_not_exact(source, reference, tmp_path):
    out = tmp_path / "out"
    report = expand(str(source), out, GrowthSpec(layers=6, depth_method="stack"), quiet=True)
    config = written_config(out)
    assert config["mlp_layer_types"] == ["dense", "sparse", "sparse"] * 2
    assert config["indexer_types"] == ["full"] * 6 and len(config["layer_types"]) == 6
    grown, info = load(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gap, _ = compare(grown.eval(), reference, probe_ids(), generate=False)
    assert report["function_preserving"] is False and gap > 1e-2


def test_a_perturbed_indexer_query_projection_is_not_exact_negative_control(source, reference, tmp_path):
    out = tmp_path / "out"
    expand(str(source), out, GrowthSpec(width_factor=2), quiet=True)
    written = tensors(out)
    name = "model.layers.1.self_attn.indexer.wq_b.weight"
    written[name] = written[name] + 0.5 * torch.randn_like(written[name])
    save_file(written, out / "model.safetensors", metadata={"format": "pt"})
    gap, _ = compare(load(out).eval(), reference, probe_ids(), generate=False)
    assert gap > 100 * EXACT, gap


def test_a_shared_indexer_layer_is_refused_in_one_line(cli, tmp_path):
    """transformers builds no indexer in a "shared" layer: it reuses the picks of the last full layer before it."""
    shared = save(NAME, tmp_path / "shared", indexer_types=["full", "shared", "full"])
    assert not any(".layers.1.self_attn.indexer." in n for n in tensors(shared))
    for args in (["--layers", "6", "--depth-method", "identity"], ["--width-factor", "2"]):
        result = cli("expand", shared, tmp_path / "out", *args)
        lines = result.stderr.strip().splitlines()
        assert result.code == 1 and len(lines) == 1, result.stderr
        assert (
            "indexer_types is 'shared' at layer 1, and grow takes a glm_moe_dsa only where every entry is" in lines[0]
        )
        assert not (tmp_path / "out").exists()
    full = save(NAME, tmp_path / "full", indexer_types=["full"] * 3)  # the control: the same model, all full
    assert cli("expand", full, tmp_path / "out", "--layers", "6", "--depth-method", "identity").code == 0


@pytest.mark.parametrize(
    ("value", "found"), [("full", "found 'full'"), (["full", "full"], "found 2 entries"), (7, "found 7")]
)
def test_an_indexer_list_that_is_no_list_of_one_entry_per_layer_is_one_line(cli, source, tmp_path, value, found):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in source.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "config.json").unlink()
    config = json.loads((source / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "indexer_types": value}))
    result = cli("expand", bad, tmp_path / "out", "--layers", "6", "--depth-method", "identity")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert f"indexer_types must list one entry for each of 3 layers, {found}" in lines[0]
    assert not (tmp_path / "out").exists()
