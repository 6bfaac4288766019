"""Width growth of DeepSeek-V2/V3/V3.2 (multi-head latent attention): the hidden size and the FFNs (dense, routed and
shared experts) grow while every config key that sizes MLA's latent and per-head axes — and V3.2's sparse-attention
indexer — keeps its value, so those axes are copied unchanged and FPI/HyperCloning are exact as on any RMSNorm decoder.

Tiny models from `tests/tiny_moe.py` (DeepSeek-V3 through a query latent and with `q_lora_rank` null → `q_proj`,
DeepSeek-V3.2, DeepSeek-V2 (Lite)), saved in shards, grown, loaded back with `from_pretrained` and compared: logits,
greedy text, every router decision, and `--verify`. Controls: AKI (not exact by design), a perturbed MLA tensor and a
perturbed indexer tensor are caught; a target that would change a key of a config space (the head count) is refused
in one line with nothing written.
"""

from __future__ import annotations

import json

import pytest
import torch
from behaviour import behaviour, compare, nudge
from test_moe_prefix import EXACT, routing
from tiny_moe import model_class, probe_ids, save

from grow_cli.growth.describe import inspect
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

CASES = {  # key → (tiny_moe name, config overrides)
    "deepseek_v3": ("deepseek_v3", {}),
    "deepseek_v3-q_proj": ("deepseek_v3", {"q_lora_rank": None}),
    "deepseek_v32": ("deepseek_v32", {}),
    "deepseek_v2": ("deepseek_v2", {}),
}
MLA_KEYS = ("num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
INDEXER_KEYS = ("index_n_heads", "index_head_dim", "index_topk")  # DeepSeek-V3.2's sparse attention


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mla-width")
    return {key: save(name, root / key, **overrides) for key, (name, overrides) in CASES.items()}


@pytest.fixture(scope="module")
def reference(sources):
    return {key: behaviour(load(key, folder), probe_ids()) for key, folder in sources.items()}


def load(key: str, folder) -> torch.nn.Module:
    return model_class(CASES[key][0]).from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("key", list(CASES))
def test_fpi_doubles_hidden_and_ffns_exactly_keeping_every_router_decision(sources, reference, tmp_path, key):
    out = tmp_path / "out"
    spec = GrowthSpec(hidden_size=64, intermediate_size=96, shard_size="40KB")
    report = expand(str(sources[key]), out, spec, quiet=True, verify=True)
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    assert report["verify"]["max_abs_logit_diff"] <= EXACT
    assert len(list(out.glob("*.safetensors"))) > 1  # written in shards
    source, grown = (json.loads((f / "config.json").read_text()) for f in (sources[key], out))
    assert (grown["hidden_size"], grown["intermediate_size"], grown["moe_intermediate_size"]) == (64, 96, 32)
    assert all(grown.get(k) == source.get(k) for k in (*MLA_KEYS, *INDEXER_KEYS, "num_key_value_heads"))
    assert grown["n_shared_experts"] == source["n_shared_experts"]
    model = load(key, out)
    query_latent = key in ("deepseek_v3", "deepseek_v32")
    assert ("q_proj" in dict(model.model.layers[0].self_attn.named_children())) != query_latent
    gap, same = compare(model, reference[key], probe_ids(), generate=True)
    assert gap <= EXACT and same, gap
    source_routes, grown_routes = routing(load(key, sources[key])), routing(model)
    assert sorted(grown_routes) == [1, 2]
    assert all(torch.equal(source_routes[i], grown_routes[i]) for i in (1, 2))
    kept = report["width"]["kept"]
    assert kept["num_attention_heads"] == 4 and kept["kv_lora_rank"] == 16
    assert kept["q_lora_rank"] == (24 if query_latent else None)
    indexer = (kept.get("index_n_heads"), kept.get("index_head_dim"))
    assert indexer == ((2, 8) if key == "deepseek_v32" else (None, None))


def test_width_factor_grows_hidden_and_ffns_and_says_what_it_keeps(cli, sources, reference, tmp_path):
    out = tmp_path / "out"
    args = ("expand", sources["deepseek_v3"], out, "--width-factor", "2", "--width-method", "hypercloning")
    result = cli(*args, "--noise-snr-db", "10", "--verify", "--json", "--shard-size", "40KB")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    shape = report["target"]
    assert (shape["hidden_size"], shape["num_heads"], shape["expert_intermediate_size"]) == (64, 4, 32)
    assert shape["config_spaces"] == inspect(str(sources["deepseek_v3"]))["config_spaces"]
    assert report["verify"]["passed"] is True and report["verify"]["max_abs_logit_diff"] <= EXACT
    [note] = [n for n in report["notes"] if n.startswith("width: ")]
    assert "num_attention_heads=4" in note and "--width-factor 2 scales the rest: hidden 32 → 64" in note
    gap, _ = compare(load("deepseek_v3", out), reference["deepseek_v3"], probe_ids(), generate=False)
    assert gap <= EXACT, gap
    width = {m["method"]: m for m in inspect(str(sources["deepseek_v2"]))["methods"]["width"]}
    assert "keeps num_attention_heads" in width.pop("staged")["why"]  # staged needs the heads ×k
    assert all(m["applies"] and "num_attention_heads" in m["only"] for m in width.values())


def test_aki_and_a_perturbed_latent_projection_are_not_exact_negative_control(sources, reference, tmp_path):
    aki = expand(str(sources["deepseek_v3"]), tmp_path / "aki", GrowthSpec(width_method="aki", width_factor=2))
    gap, _ = compare(load("deepseek_v3", tmp_path / "aki"), reference["deepseek_v3"], probe_ids(), generate=False)
    assert aki["function_preserving"] is False and gap > 1e-2, gap
    # the same comparison catches a wrong MLA tensor: an exact growth with one kv_b_proj nudged by 1e-3
    out = tmp_path / "fpi"
    expand(str(sources["deepseek_v2"]), out, GrowthSpec(width_factor=2, shard_size="40KB"), quiet=True)
    nudge(out, "model.layers.1.self_attn.kv_b_proj.weight", 1e-3)
    gap, _ = compare(load("deepseek_v2", out), reference["deepseek_v2"], probe_ids(), generate=False)
    assert gap > 100 * EXACT, gap


def test_a_perturbed_indexer_key_projection_is_not_exact_negative_control(sources, reference, tmp_path):
    """DeepSeek-V3.2's indexer picks which keys each query attends to: with its key projection nudged in one layer of
    an exact growth, the picks and so the logits change, so the exact results above depend on the indexer too."""
    out = tmp_path / "fpi"
    expand(str(sources["deepseek_v32"]), out, GrowthSpec(width_factor=2), quiet=True)
    nudge(out, "model.layers.0.self_attn.indexer.wk.weight", 0.5)
    gap, _ = compare(load("deepseek_v32", out), reference["deepseek_v32"], probe_ids(), generate=False)
    assert gap > 100 * EXACT, gap


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (
            ["--num-heads", "8"],
            "would change num_attention_heads 4 → 8 (it sizes mla_q, mla_kv, mla_o); drop --num-heads",
        ),
        (["--hidden-size", "64", "--num-kv-heads", "8"], "deepseek_v3 has no separate KV heads"),
        # staged needs every space ×k, the heads too: no flag can give it that here, so none is suggested
        *(
            (
                ["--width-method", "staged", *size],
                "--width-method staged does not apply to deepseek_v3 (it grows every space ×k, the heads too, and "
                "deepseek_v3's width growth keeps num_attention_heads); use --width-method",
            )
            for size in (["--width-factor", "2"], ["--hidden-size", "64"])
        ),
    ],
)
def test_changing_a_key_of_a_config_space_is_refused_before_anything_is_written(cli, sources, tmp_path, args, phrase):
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        result = cli("expand", sources["deepseek_v3"], out, *args, *extra)
        lines = result.stderr.strip().splitlines()
        assert result.code == 2 and len(lines) == 1 and phrase in lines[0], result.stderr
        assert not out.exists()


def test_zero_widens_a_model_without_a_query_latent(sources, reference, tmp_path):
    """G_zero reads the size of every normed space: DeepSeek-V2-Lite's q_lora (no q_lora_rank) has none and no norm."""
    out = tmp_path / "out"
    expand(str(sources["deepseek_v3-q_proj"]), out, GrowthSpec(width_method="zero", width_factor=2), quiet=True)
    gap, _ = compare(load("deepseek_v3-q_proj", out), reference["deepseek_v3-q_proj"], probe_ids(), generate=False)
    assert gap <= EXACT, gap
