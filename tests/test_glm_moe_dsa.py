"""GLM-5 (`glm_moe_dsa`): GLM-4.7-Flash's latent attention and experts (dense layers marked in `mlp_layer_types`)
with DeepSeek-V3.2's sparse-attention indexer, which here keeps 5 of the probe's 12 positions. `indexer_types` marks
each layer "full" (it runs its indexer) or "shared" (it has none and reuses the picks of the last full layer before
it).

Tiny models from `tests/tiny_moe.py` — every layer full, and full/shared/full — saved in shards, grown and loaded back
with `from_pretrained`: identity growth is exact and keeps every router decision, with the per-layer lists written for
the grown stack (an identity block before a shared layer is shared too, and holds no indexer; elsewhere it stays
full); FPI doubles the hidden size and FFNs exactly with the latents and the indexer's sizes kept; G_stack applies
and writes the repeated lists. Controls: without the shared-block rule identity growth is not exact; a perturbed
indexer changes the logits; a shared layer that stores an indexer, and an `indexer_types` that is not one entry per
layer, are refused in one line with nothing written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from behaviour import behaviour, compare, nudge, tensors
from test_moe_prefix import EXACT, routing
from tiny_moe import model_class, probe_ids, save

from grow_cli.arch import layer_lists
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

NAME = "glm_moe_dsa"
INDEXER_KEYS = ("index_n_heads", "index_head_dim", "index_topk")
KINDS = {"full": ["full"] * 3, "shared": ["full", "shared", "full"]}
GROWN = {  # indexer_types after identity growth 3 → 6 (layer map 0 0 1 1 2 2; the copies at 1, 3, 5)
    "full": ["full"] * 6,
    "shared": ["full", "shared", "shared", "shared", "full", "full"],  # the copy of layer 0 precedes shared layer 1
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("glm-moe-dsa")
    return {key: save(NAME, root / key, indexer_types=kinds) for key, kinds in KINDS.items()}


@pytest.fixture(scope="module")
def reference(sources):
    return {key: behaviour(load(folder), probe_ids()) for key, folder in sources.items()}


def load(folder: Path, **kw):
    return model_class(NAME).from_pretrained(folder, dtype=torch.float32, **kw)


def written_config(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def with_indexer(folder: Path) -> list[int]:
    """The layers that store an indexer."""
    return sorted({int(n.split(".")[2]) for n in tensors(folder) if ".self_attn.indexer.wk." in n})


@pytest.mark.parametrize("key", list(KINDS))
def test_identity_growth_is_exact_keeps_every_router_decision_and_the_picks(sources, reference, tmp_path, key):
    out = tmp_path / "out"
    report = expand(
        str(sources[key]), out, GrowthSpec(layers=6, depth_method="identity", shard_size="40KB"), quiet=True
    )
    assert report["depth"]["layer_map"] == [0, 0, 1, 1, 2, 2] and report["function_preserving"] is True
    config = written_config(out)
    assert config["indexer_types"] == GROWN[key]
    assert config["mlp_layer_types"] == ["dense", "dense", "sparse", "sparse", "sparse", "sparse"]
    assert with_indexer(out) == [j for j, kind in enumerate(GROWN[key]) if kind == "full"]
    grown, info = load(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gap, same = compare(grown.eval(), reference[key], probe_ids(), generate=True)
    assert gap <= EXACT and same is True, gap
    source_routes, grown_routes = routing(load(sources[key]).eval()), routing(grown)
    assert sorted(source_routes) == [1, 2] and sorted(grown_routes) == [2, 3, 4, 5]
    assert all(torch.equal(source_routes[i], grown_routes[2 * i]) for i in source_routes)


def test_without_the_shared_block_rule_identity_growth_is_not_exact_negative_control(
    sources, reference, tmp_path, monkeypatch
):
    """A full copy of layer 0 placed before shared layer 1 makes layer 1 reuse the copy's picks, computed on another
    hidden state."""
    real = layer_lists.grown_entries
    monkeypatch.setattr(
        "grow_cli.growth.plan.grown_entries",
        lambda arch, *args: real(dataclasses.replace(arch, identity_layer_values={}), *args),
    )
    out = tmp_path / "out"
    expand(str(sources["shared"]), out, GrowthSpec(layers=6, depth_method="identity"), quiet=True)
    assert written_config(out)["indexer_types"] == ["full", "full", "shared", "shared", "full", "full"]
    gap, _ = compare(load(out).eval(), reference["shared"], probe_ids(), generate=False)
    assert gap > 100 * EXACT, gap


@pytest.mark.parametrize("key", list(KINDS))
def test_fpi_doubles_hidden_and_ffns_exactly_keeping_the_latents_and_the_indexer(sources, reference, tmp_path, key):
    out = tmp_path / "out"
    report = expand(str(sources[key]), out, GrowthSpec(width_factor=2, shard_size="40KB"), quiet=True, verify=True)
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    assert report["verify"]["max_abs_logit_diff"] <= EXACT
    before, after = json.loads((sources[key] / "config.json").read_text()), written_config(out)
    assert (after["hidden_size"], after["intermediate_size"]) == (2 * before["hidden_size"], 96)
    assert all(after[k] == before[k] for k in (*INDEXER_KEYS, "q_lora_rank", "kv_lora_rank", "num_attention_heads"))
    assert with_indexer(out) == with_indexer(sources[key])
    gap, same = compare(load(out).eval(), reference[key], probe_ids(), generate=True)
    assert gap <= EXACT and same is True, gap


def test_stacking_applies_and_writes_the_repeated_lists_but_is_not_exact(sources, reference, tmp_path):
    out = tmp_path / "out"
    report = expand(str(sources["shared"]), out, GrowthSpec(layers=6, depth_method="stack"), quiet=True)
    config = written_config(out)
    assert config["mlp_layer_types"] == ["dense", "sparse", "sparse"] * 2
    assert config["indexer_types"] == KINDS["shared"] * 2 and len(config["layer_types"]) == 6
    grown, info = load(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    gap, _ = compare(grown.eval(), reference["shared"], probe_ids(), generate=False)
    assert report["function_preserving"] is False and gap > 1e-2


def test_a_perturbed_indexer_query_projection_is_not_exact_negative_control(sources, reference, tmp_path):
    out = tmp_path / "out"
    expand(str(sources["full"]), out, GrowthSpec(width_factor=2), quiet=True)
    nudge(out, "model.layers.1.self_attn.indexer.wq_b.weight", 0.5)
    gap, _ = compare(load(out).eval(), reference["full"], probe_ids(), generate=False)
    assert gap > 100 * EXACT, gap


def _with_config(source: Path, folder: Path, **changes) -> Path:
    """`source`'s files linked into `folder`, with config.json changed."""
    folder.mkdir()
    for f in source.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    config = json.loads((source / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_a_shared_layer_that_stores_an_indexer_is_one_line(cli, sources, tmp_path):
    bad = _with_config(sources["full"], tmp_path / "bad", indexer_types=KINDS["shared"])
    result = cli("expand", bad, tmp_path / "out", "--layers", "6", "--depth-method", "identity")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert "model.layers.1.self_attn.indexer." in lines[0]
    assert "is present although config.json's indexer_types marks layer 1 'shared'" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "found"), [("full", "found 'full'"), (["full", "full"], "found 2 entries")])
def test_an_indexer_list_that_is_no_list_of_one_entry_per_layer_is_one_line(cli, sources, tmp_path, value, found):
    bad = _with_config(sources["full"], tmp_path / "bad", indexer_types=value)
    result = cli("expand", bad, tmp_path / "out", "--layers", "6", "--depth-method", "identity")
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and len(lines) == 1, result.stderr
    assert f"indexer_types must list one entry for each of 3 layers, {found}" in lines[0]
    assert not (tmp_path / "out").exists()
