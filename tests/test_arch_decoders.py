"""The curated decoders beyond the first six — qwen3, gemma, gemma2, gemma3_text, phi3, olmo2, smollm3, granite,
starcoder2 — grown in depth and width by every method that claims exactness (staged training's two included), saved
in shards, loaded back with transformers and compared with their source (fp32, eval mode), greedy generation with the
KV cache included.

Negative controls show that each special rule matters: Gemma's √hidden embedding rescale (fpi and staged), the
(1 + w) gain of an identity block's zeroed post-norm (identity and staged-identity), the tiled head maps under OLMo 2's
all-heads q/k norms, and the per-layer lists (Gemma 2's layer types, SmolLM3's NoPE layers) written out explicitly for
the grown config.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from behaviour import behaviour, compare
from tiny_decoders import NAMES, model_class, probe_ids, save

from grow_cli.errors import UsageError, VerificationError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

EXACT = 1e-5  # measured gaps are ≤ 5e-7 on logits of magnitude ≤ 1


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {name: save(name, root / name) for name in NAMES}


@pytest.fixture(scope="module")
def reference(sources):
    """Each source's logits and greedy continuation (with the KV cache), computed once."""
    return {
        name: behaviour(model_class(name).from_pretrained(sources[name], dtype=torch.float32).eval(), probe_ids())
        for name in NAMES
    }


def grow(sources, reference, tmp_path, name, *, generate=False, verify=False, **kw):
    """Expand `name`, load the output, return (report, max |Δlogit|, greedy tokens equal or None)."""
    out = tmp_path / f"{name}-out"
    report = expand(str(sources[name]), out, GrowthSpec(shard_size="30KB", **kw), quiet=True, force=True, verify=verify)
    model = model_class(name).from_pretrained(out, dtype=torch.float32).eval()
    gap, same = compare(model, reference[name], probe_ids(), generate=generate)
    return report, gap, same


@pytest.mark.parametrize("name", NAMES)
def test_identity_depth_growth_is_exact_and_generates(sources, reference, tmp_path, name):
    report, gap, same = grow(sources, reference, tmp_path, name, layers=6, depth_method="identity", generate=True)
    assert report["function_preserving"] is True and report["target"]["layers"] == 6
    assert gap <= EXACT, gap
    assert same, "greedy continuation changed"


@pytest.mark.parametrize("name", NAMES)
def test_fpi_doubling_is_exact_and_generates(sources, reference, tmp_path, name):
    report, gap, same = grow(sources, reference, tmp_path, name, width_factor=2, generate=True)
    assert report["function_preserving"] is True and report["target"]["hidden_size"] == 64
    assert gap <= EXACT, gap
    assert same, "greedy continuation changed"


@pytest.mark.parametrize("name", NAMES)
def test_hypercloning_with_noise_and_identity_in_one_verified_pass(sources, reference, tmp_path, name):
    width = dict(width_method="hypercloning", width_factor=2, noise_snr_db=10)
    report, gap, _ = grow(sources, reference, tmp_path, name, **width, layers=5, depth_method="identity", verify=True)
    assert report["verify"]["passed"] is True and gap <= EXACT, gap


@pytest.mark.parametrize("name", NAMES)
def test_staged_width_and_staged_identity_are_exact(sources, reference, tmp_path, name):
    """docs/methods.md calls staged training's operators exact on every layout they apply to: block-diagonal ×2
    (Gemma's embedding scale and (1 + w) head norm, Phi-3's fused [q|k|v] and [gate|up] split per part) and new layers
    whose norm gains are zero (−1 for a (1 + w) gain; a post-sublayer norm's in Gemma 2/3 and OLMo 2)."""
    report, gap, _ = grow(sources, reference, tmp_path, name, width_method="staged", width_factor=2)
    assert report["function_preserving"] is True and "block-diagonal ×2" in report["width"]["exactness"]
    assert gap <= EXACT, gap
    report, gap, _ = grow(sources, reference, tmp_path, name, layers=6, depth_method="staged-identity")
    assert report["function_preserving"] is True and report["depth"]["new_layers"] == [2, 5]
    assert gap <= EXACT, gap


@pytest.mark.parametrize("name", NAMES)
def test_zero_width_exact_where_claimed(sources, reference, tmp_path, name):
    report, gap, _ = grow(sources, reference, tmp_path, name, width_method="zero", intermediate_size=80)
    assert report["function_preserving"] is True and gap <= EXACT, gap  # FFN only: exact everywhere
    report, gap, _ = grow(sources, reference, tmp_path, name, width_method="zero", hidden_size=48)
    if name == "starcoder2":  # LayerNorm means over zero-padded units: documented gap
        assert report["function_preserving"] is False and EXACT < gap < 1.0, gap
    elif name in ("qwen3", "gemma3_text"):  # per-head q/k norms share rms_norm_eps with the hidden norms
        assert report["function_preserving"] is False and "eps" in report["width"]["exactness"]
        assert gap < 1e-3, gap  # eps-sized, not a wrong rule
    else:
        assert report["function_preserving"] is True and gap <= EXACT, gap


@pytest.mark.parametrize("method", ["fpi", "staged"])
def test_gemma_width_without_the_embedding_rescale_is_caught(sources, reference, tmp_path, monkeypatch, method):
    from grow_cli.operators import width

    real = width.WidthOperator.__init__

    def unscaled(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.embed_scale = self.head_scale = 1.0  # forget that Gemma multiplies its embedding by √hidden_size

    monkeypatch.setattr(width.WidthOperator, "__init__", unscaled)
    report, gap, _ = grow(sources, reference, tmp_path, "gemma", width_method=method, width_factor=2)
    assert report["function_preserving"] is True and gap > 100 * EXACT, gap
    with pytest.raises(VerificationError):
        spec = GrowthSpec(width_method=method, width_factor=2)
        expand(str(sources["gemma"]), tmp_path / "v", spec, quiet=True, verify=True)
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("method", ["identity", "staged-identity"])
def test_gemma2_identity_with_a_plain_zero_post_norm_gain_is_caught(sources, reference, tmp_path, monkeypatch, method):
    from grow_cli.arch.registry import WeightDef

    monkeypatch.setattr(WeightDef, "zero_fill", property(lambda self: 0.0))  # w = 0 is a gain of 1 in Gemma
    _, gap, _ = grow(sources, reference, tmp_path, "gemma2", layers=6, depth_method=method)
    assert gap > 100 * EXACT, gap


def test_olmo2_head_maps_are_tiled_under_its_all_heads_norms(sources, reference, tmp_path, monkeypatch):
    report = expand(str(sources["olmo2"]), None, GrowthSpec(width_factor=2), dry_run=True, quiet=True)
    assert report["width"]["maps"]["heads"]["kind"] == "tiled"
    # uneven head copies (4 → 6 in 2 groups, hidden ×3) cannot be exact under a norm over all heads: said, measured
    report, gap, _ = grow(sources, reference, tmp_path, "olmo2", hidden_size=96, num_heads=6, num_kv_heads=2)
    assert report["function_preserving"] is False and "q_norm/k_norm" in report["width"]["exactness"]
    assert gap > 100 * EXACT, gap
    # negative control: bert2BERT's random head maps (right for Llama) under these norms break exactness
    from grow_cli.operators import width

    real = width.WidthOperator.__init__

    def random_heads(self, spec, arch, binding, config):
        monkeypatch.setattr(type(arch), "normed_spaces", property(lambda a: {"hidden"}))
        real(self, spec, arch, binding, config)  # maps drawn as if no norm ran over the heads

    monkeypatch.setattr(width.WidthOperator, "__init__", random_heads)
    report, gap, _ = grow(sources, reference, tmp_path, "olmo2", width_factor=2, seed=1)
    assert report["width"]["maps"]["heads"]["kind"] != "tiled" and report["function_preserving"] is True
    assert gap > 100 * EXACT, gap


@pytest.mark.parametrize("name, key", [("gemma2", "layer_types"), ("smollm3", "no_rope_layers")])
def test_per_layer_lists_left_to_their_default_are_written_out(sources, reference, tmp_path, monkeypatch, name, key):
    """A config.json without Gemma 2's layer_types (as on the Hub before transformers wrote them) or SmolLM3's
    no_rope_layers means the default, which follows the index (sliding every other layer; NoPE every
    no_rope_layer_interval-th): grown without writing the source's list out, copied layers would change attention
    type or lose their rotary embedding, and the identity would break."""
    src = tmp_path / f"no-{key}"
    src.mkdir()
    for f in sources[name].iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    source_list = config.pop(key)
    (src / "config.json").write_text(json.dumps(config))
    local = {name: src}
    report, gap, _ = grow(local, reference, tmp_path, name, layers=6, depth_method="identity")
    assert gap <= EXACT, gap
    written = json.loads((tmp_path / f"{name}-out" / "config.json").read_text())
    assert written[key] == [source_list[i] for i in report["depth"]["layer_map"]]
    from grow_cli.growth import config as grown_config

    real = grown_config.per_layer_lists  # the control: every other per-layer list mapped, this one left to its default
    monkeypatch.setattr(
        grown_config, "per_layer_lists", lambda *a, **k: {n: v for n, v in real(*a, **k).items() if n != key}
    )
    _, gap, _ = grow(local, reference, tmp_path, name, layers=6, depth_method="identity")
    assert gap > 100 * EXACT, gap


def test_per_layer_config_lists_follow_the_layer_map(sources, reference, tmp_path):
    report, _, _ = grow(sources, reference, tmp_path, "qwen3", layers=6, depth_method="identity")
    grown = transformers.AutoConfig.from_pretrained(tmp_path / "qwen3-out")  # strict validation
    source = transformers.AutoConfig.from_pretrained(sources["qwen3"])
    layer_map = report["depth"]["layer_map"]
    assert layer_map == [0, 1, 1, 2, 3, 3]
    assert grown.layer_types == [source.layer_types[i] for i in layer_map]
    assert source.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert grown.max_window_layers == 3  # target layers 0, 1, 2 copy the two full-attention layers
    _, _, _ = grow(sources, reference, tmp_path, "smollm3", layers=6, depth_method="identity")
    written = json.loads((tmp_path / "smollm3-out" / "config.json").read_text())
    assert written["no_rope_layers"] == [[1, 0, 1, 0][i] for i in layer_map]
    _, _, _ = grow(sources, reference, tmp_path, "gemma3_text", layers=6, depth_method="stack")
    written = json.loads((tmp_path / "gemma3_text-out" / "config.json").read_text())
    assert written["layer_types"][4:] == written["layer_types"][:2]  # stack: layer 4 copies layer 0
    assert written["rope_parameters"] == json.loads((sources["gemma3_text"] / "config.json").read_text()).get(
        "rope_parameters"
    )


def test_config_literals_survive_width_growth(sources, reference, tmp_path):
    grow(sources, reference, tmp_path, "granite", width_factor=2)
    config = json.loads((tmp_path / "granite-out" / "config.json").read_text())
    assert (config["embedding_multiplier"], config["residual_multiplier"]) == (3.0, 0.5)
    assert (config["attention_multiplier"], config["logits_scaling"], config["tie_word_embeddings"]) == (0.2, 2.0, True)
    grow(sources, reference, tmp_path / "g2", "gemma2", width_factor=2)
    config = json.loads((tmp_path / "g2" / "gemma2-out" / "config.json").read_text())
    assert (config["query_pre_attn_scalar"], config["head_dim"], config["attn_logit_softcapping"]) == (12, 8, 2.0)


def test_an_unknown_per_layer_list_is_refused(sources, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in sources["qwen3"].iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    config["my_layer_scales"] = [1.0, 0.5, 0.5, 1.0]
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="my_layer_scales has one entry per layer"):
        expand(str(src), tmp_path / "out", GrowthSpec(layers=6, depth_method="stack"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_inspect_calls_them_curated(cli, sources):
    info = json.loads(cli("inspect", sources["olmo2"], "--json").stdout)
    assert info["definition"] == {"kind": "curated", "file": "grow_cli/arch/definitions/olmo2.json"}
    identity = next(m for m in info["methods"]["depth"] if m["method"] == "identity")
    assert identity["applies"] is True


@pytest.mark.parametrize(
    "change, message",
    [
        ({"norm_gain_offset": 2}, "norm_gain_offset must be 0"),
        ({"residual": "derived"}, "residual must be one of"),
        ({"residual": "sideways"}, "residual must be one of"),
        (
            {
                "final": [
                    {"name": "model.norm.weight", "kind": "norm", "axes": ["hidden"], "runtime_scale": "sqrt_hidden"}
                ]
            },
            "only an embedding",
        ),
        ({"layer": [{"name": "mlp.act.beta", "kind": "other", "axes": []}]}, "kind 'other' cannot be widened"),
        ({"layer": [{"name": "x.weight", "kind": "norm", "axes": ["hidden"], "zero": True}]}, "unknown key"),
    ],
)
def test_the_schema_stays_strict(change, message):
    from grow_cli.arch.registry import _documents, parse_definition

    raw = {**_documents()["gemma2.json"], **change}
    with pytest.raises(Exception, match=message):
        parse_definition(raw, where="test")


def test_identity_exactness_is_a_property_of_the_definition():
    from grow_cli.arch.registry import all_definitions

    defs = all_definitions()
    assert "post-LayerNorm" in defs["bert"].identity_refusal and not defs["bert"].identity_exact
    for name in ("llama", "gemma2", "olmo2", "starcoder2"):
        assert defs[name].identity_exact, name
    writers = [w.name for w in defs["olmo2"].layer if w.residual_writer]
    assert writers == ["post_attention_layernorm.weight", "post_feedforward_layernorm.weight"]
    assert {w.zero_fill for w in defs["gemma2"].layer if w.residual_writer} == {-1.0}  # gain 1 + w = 0
