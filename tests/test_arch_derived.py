"""Derived definitions: transformers decoders without a curated file, grown in depth (every method) and, where every
axis was placed, in width — always verified. Tiny models of several such types are built here from transformers
configs, saved in shards, grown, loaded back and compared; the refusals (custom code, no repeated block, unplaceable
axes) are one line, a non-zero exit and nothing written.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from grow_cli.arch.derive import derive, derive_definition
from grow_cli.arch.registry import detect, parse_definition
from grow_cli.errors import ArchitectureError, VerificationError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

EXACT = 1e-5
_BASE = dict(vocab_size=96, num_hidden_layers=4, hidden_size=32, num_attention_heads=4, pad_token_id=0)
CONFIGS = {
    # Llama-like with a ReLU² MLP (no gate): derived in full.
    "arcee": dict(_BASE, intermediate_size=48, num_key_value_heads=2, head_dim=8),
    # LayerNorm without bias, parallel attention + MLP, logit_scale, tied head.
    "cohere": dict(_BASE, intermediate_size=48, num_key_value_heads=2, logit_scale=0.5),
    # norms after attention and MLP, before the residual add (like OLMo 2), sliding-window layers.
    "exaone4": dict(_BASE, intermediate_size=48, num_key_value_heads=2, head_dim=8, sliding_window=5),
    # Gemma-like: (1 + w) norms and √hidden embedding scale, found by measurement.
    "vaultgemma": dict(_BASE, intermediate_size=48, num_key_value_heads=1, head_dim=8),
    # LayerNorm with bias, parallel attention + MLP, partial rotary, biased output projections and head.
    "phi": dict(_BASE, intermediate_size=48, num_key_value_heads=2),
    # LayerNorm without parameters: the identity block and width scale only the projections.
    "olmo": dict(_BASE, intermediate_size=48, num_key_value_heads=2),
    # Llama-like, head_dim set apart from hidden / heads.
    "internlm3": dict(_BASE, intermediate_size=48, num_key_value_heads=2, head_dim=8),
    # a bias on every projection: the sublayers' last biases are residual writers too.
    "ernie4_5": dict(_BASE, intermediate_size=48, num_key_value_heads=2, head_dim=8, use_bias=True),
    # runs only with head_dim = hidden / heads: depth only, width refused.
    "stablelm": dict(_BASE, intermediate_size=48, num_key_value_heads=2),
    # fused [q|k|v] with grouped KV heads (Falcon's new decoder architecture): depth only, width refused.
    "falcon": dict(_BASE, num_kv_heads=2, new_decoder_architecture=True),
}
WRITERS = {
    "arcee": ["self_attn.o_proj.weight", "mlp.down_proj.weight"],
    "cohere": ["self_attn.o_proj.weight", "mlp.down_proj.weight"],
    "exaone4": ["post_attention_layernorm.weight", "post_feedforward_layernorm.weight"],
    "vaultgemma": ["self_attn.o_proj.weight", "mlp.down_proj.weight"],
    "phi": ["self_attn.dense.weight", "self_attn.dense.bias", "mlp.fc2.weight", "mlp.fc2.bias"],
    "olmo": ["self_attn.o_proj.weight", "mlp.down_proj.weight"],
    "internlm3": ["self_attn.o_proj.weight", "mlp.down_proj.weight"],
    "ernie4_5": ["self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias"],
    "stablelm": ["self_attn.o_proj.weight", "mlp.down_proj.weight"],
    "falcon": ["self_attention.dense.weight", "mlp.dense_4h_to_h.weight"],
}
WIDTH = ["arcee", "cohere", "exaone4", "vaultgemma", "phi", "olmo", "internlm3", "ernie4_5"]
# The decoders the installed transformers has: internlm3 came after 5.17, grow's lowest transformers.
CONFIGS = {name: params for name, params in CONFIGS.items() if name in tf.CONFIG_MAPPING}
WIDTH = [name for name in WIDTH if name in CONFIGS]


def _model_class(name):
    return tf.AutoModelForCausalLM._model_mapping[type(tf.AutoConfig.for_model(name))]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("derived")
    folders = {}
    for name, params in CONFIGS.items():
        torch.manual_seed(0)
        model = _model_class(name)(tf.AutoConfig.for_model(name, **params)).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.ndim == 1:
                    p.copy_((0.0 if pname.endswith("bias") else 1.0) + 0.3 * torch.randn_like(p))
        model.save_pretrained(root / name, max_shard_size="20KB")
        folders[name] = root / name
    return folders


def _logits(name, folder):
    model = _model_class(name).from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits


def _config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_derivation_finds_the_block_and_its_residual_writers(sources, name):
    arch = detect(_config(sources[name]))
    assert not arch.curated and arch.always_verify and arch.name == name
    assert [w.name for w in arch.layer if w.residual_writer] == WRITERS[name]
    assert (arch.width_refusal is None) == (name in WIDTH), arch.width_refusal
    if name == "vaultgemma":
        assert arch.norm_gain_offset == 1.0 and arch.embeddings[0].runtime_scale == "sqrt_hidden"


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("method", ["identity", "interleave"])
def test_depth_growth_of_derived_decoders(sources, tmp_path, name, method):
    report = expand(str(sources[name]), tmp_path / "out", GrowthSpec(layers=6, depth_method=method), quiet=True)
    gap = float((_logits(name, tmp_path / "out") - _logits(name, sources[name])).abs().max())
    if method == "identity":  # exact, and verified although --verify was not given
        assert report["function_preserving"] is True and report["verify"]["passed"] is True
        assert gap <= EXACT, gap
    else:
        assert report["function_preserving"] is False and report["verify"] is None and gap > EXACT
    assert tf.AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers == 6


@pytest.mark.parametrize("name", WIDTH)
def test_width_growth_of_derived_decoders_is_verified(sources, tmp_path, name):
    report = expand(str(sources[name]), tmp_path / "out", GrowthSpec(width_factor=2), quiet=True)
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    gap = float((_logits(name, tmp_path / "out") - _logits(name, sources[name])).abs().max())
    assert gap <= EXACT, gap


@pytest.mark.parametrize("name", ["arcee", "cohere"])  # cohere: tied head, so width folds nothing into a norm
@pytest.mark.parametrize("spec", [GrowthSpec(layers=6, depth_method="identity"), GrowthSpec(width_factor=2)])
def test_a_headless_derived_decoder_grows_in_its_own_naming(tmp_path, name, spec):
    """The base model saved alone (`ArceeModel`): the derived definition names its tensors under transformers'
    base_model_prefix as `{p}` and binds the headless form too; the output keeps the naming and `architectures`, and
    the forced verification compares the last hidden states."""
    torch.manual_seed(0)
    config = tf.AutoConfig.for_model(name, **CONFIGS[name])
    tf.AutoModel.from_config(config).save_pretrained(tmp_path / "src", max_shard_size="20KB")
    arch = detect(_config(tmp_path / "src"))
    assert arch.prefixes == ("model.", "") and arch.embeddings[0].name == "{p}embed_tokens.weight"
    report = expand(str(tmp_path / "src"), tmp_path / "out", spec, quiet=True)
    assert report["verify"]["passed"] is True and report["verify"]["compared"] == "last_hidden_state"
    headless_class = _config(tmp_path / "src")["architectures"]
    assert _config(tmp_path / "out")["architectures"] == headless_class
    loaded, info = tf.AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert [type(loaded).__name__] == headless_class and not info["missing_keys"] and not info["unexpected_keys"]


def test_a_wrong_derived_rule_fails_the_forced_verification(sources, tmp_path, monkeypatch):
    """Without its measured √hidden embedding scale, a derived VaultGemma widens wrongly: the forced check catches
    it although --verify was not given, says that the derived definition's claim failed, and nothing is written."""
    from grow_cli.arch import derive as derive_module

    real = derive_module._Derivation.embedding

    def forget_scale(self):
        real(self)
        self.runtime_scale = None

    monkeypatch.setattr(derive_module._Derivation, "embedding", forget_scale)
    derive_module._definition.cache_clear()
    try:
        with pytest.raises(VerificationError, match="derived vaultgemma's definition.*nothing was written"):
            expand(str(sources["vaultgemma"]), tmp_path / "out", GrowthSpec(width_factor=2), quiet=True)
    finally:
        derive_module._definition.cache_clear()
    assert not (tmp_path / "out").exists()


def test_a_model_class_failing_without_a_message_is_named_by_its_kind(monkeypatch):
    """Model code that fails a bare `assert` raises an AssertionError with no message: reading its first line raised
    IndexError inside the handler, which the CLI could only report as an unexpected error."""
    from grow_cli.arch import derive as derive_module

    def bare_assert(small):
        raise AssertionError()

    monkeypatch.setattr(derive_module.probe, "execution_order", bare_assert)
    derive_module._definition.cache_clear()
    config = tf.AutoConfig.for_model("arcee", **CONFIGS["arcee"]).to_dict()
    try:
        with pytest.raises(ArchitectureError, match=r"running a small random instance failed \(AssertionError\)"):
            derive_definition(config)
    finally:
        derive_module._definition.cache_clear()


def test_a_layer_that_computes_with_its_own_index_refuses_identity_growth(tmp_path):
    """Differential attention's λ_init = 0.8 − 0.6·e^(−0.3·i) depends on the layer's index i, so a layer copied to
    another index computes otherwise: docs/architectures.md says the forced check refuses DiffLlama's identity growth
    and names the derivation, with nothing written, while stack (not exact) grows it."""
    torch.manual_seed(0)
    config = tf.AutoConfig.for_model("diffllama", **CONFIGS["arcee"])
    _model_class("diffllama")(config).save_pretrained(tmp_path / "src", max_shard_size="20KB")
    spec = GrowthSpec(layers=6, depth_method="identity")
    with pytest.raises(VerificationError, match="derived diffllama's definition.*its own index") as refused:
        expand(str(tmp_path / "src"), tmp_path / "out", spec, quiet=True)
    # The advice names the method for the dimension grown only: DiffLlama refuses width growth (it said aki too).
    assert "(--depth-method stack); nothing was written" in str(refused.value) and "aki" not in str(refused.value)
    assert not (tmp_path / "out").exists()
    report = expand(str(tmp_path / "src"), tmp_path / "out", GrowthSpec(layers=6, depth_method="stack"), quiet=True)
    assert (
        report["function_preserving"] is False
        and tf.AutoConfig.from_pretrained(tmp_path / "out").num_hidden_layers == 6
    )


def test_a_config_with_floats_transformers_tags_grows(tmp_path):
    """transformers 5 saves a float JSON cannot write as a tag (Falcon-H1's Mamba-2 `time_step_limit` is
    [0.0, {"__float__": "Infinity"}]) and reads it back as the float; grow refused such a config.json as one
    transformers rejects. Its identity growth is exact, and the grown config keeps the tag."""
    params = dict(_BASE, intermediate_size=48, num_key_value_heads=2, head_dim=8, mamba_d_ssm=32, mamba_n_heads=4)
    torch.manual_seed(0)
    _model_class("falcon_h1")(tf.AutoConfig.for_model("falcon_h1", **params)).save_pretrained(tmp_path / "src")
    assert _config(tmp_path / "src")["time_step_limit"] == [0.0, {"__float__": "Infinity"}]
    report = expand(str(tmp_path / "src"), tmp_path / "out", GrowthSpec(layers=6, depth_method="identity"), quiet=True)
    gap = float((_logits("falcon_h1", tmp_path / "out") - _logits("falcon_h1", tmp_path / "src")).abs().max())
    assert report["verify"]["passed"] is True and gap <= EXACT, gap
    assert _config(tmp_path / "out")["time_step_limit"] == [0.0, {"__float__": "Infinity"}]


# Configs that name the layers of one kind by index: every layer, which makes the list as long as the stack.
INDEX_LISTS = {
    # LFM2 with attention in every layer (no conv layer): `full_attn_idxs`, beside the `layer_types` it builds.
    "lfm2": ("full_attn_idxs", dict(_BASE, intermediate_size=48, num_key_value_heads=2), "self_attn"),
    # Llama 4's text decoder with experts in every layer, its step (2) saying otherwise: `moe_layers` decides.
    "llama4_text": (
        "moe_layers",
        dict(
            _BASE,
            intermediate_size=48,
            intermediate_size_mlp=48,
            num_key_value_heads=2,
            num_local_experts=2,
            interleave_moe_layer_step=2,
            moe_layers=[0, 1, 2, 3],
        ),
        "feed_forward.experts",
    ),
}
INDEX_LISTS = {name: case for name, case in INDEX_LISTS.items() if name in tf.CONFIG_MAPPING}


@pytest.mark.parametrize("name", list(INDEX_LISTS))
def test_a_list_of_layer_indices_is_mapped_by_membership(tmp_path, name):
    """A list of the layers of one kind that names every layer has one entry per layer, and was mapped as a
    per-layer list: a grown LFM2 said `full_attn_idxs` [0, 1, 2, 3, 0, 1] (its `layer_types` right), and Llama 4's
    `moe_layers` made the grown small instance's new layer dense, refusing the derivation; the small instance dropped
    the list too, so its step made it a hybrid. Each grown layer is listed when the layer it copies was, and the
    config read back builds the model with every layer of that kind."""
    key, params, module = INDEX_LISTS[name]
    torch.manual_seed(0)
    _model_class(name)(tf.AutoConfig.for_model(name, **params)).save_pretrained(tmp_path / "src", max_shard_size="20KB")
    assert key not in detect(_config(tmp_path / "src")).layer_lists
    report = expand(str(tmp_path / "src"), tmp_path / "out", GrowthSpec(layers=6, depth_method="identity"), quiet=True)
    assert report["verify"]["passed"] is True
    written = _config(tmp_path / "out")
    assert written[key] == list(range(6))
    derived = {k: v for k, v in written.items() if k not in ("model_type", "layer_types")}  # the kinds from `key`
    rebuilt = tf.AutoConfig.for_model(name, **derived)
    model = _model_class(name).from_pretrained(tmp_path / "out")
    assert rebuilt.layer_types == written.get("layer_types", rebuilt.layer_types)
    assert all(layer.get_submodule(module) is not None for layer in model.model.layers) and len(model.model.layers) == 6


@pytest.mark.parametrize(("name", "unplaced"), [("stablelm", "k_proj"), ("falcon", "query_key_value")])
def test_width_is_refused_where_an_axis_cannot_be_placed(cli, sources, tmp_path, name, unplaced):
    result = cli("expand", sources[name], tmp_path / "out", "--width-factor", "2")
    lines = result.stderr.strip().splitlines()
    assert result.code != 0 and len(lines) == 1 and f"width growth is refused for {name}" in lines[0]
    assert unplaced in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_inspect_reports_and_writes_a_derived_definition(cli, sources, tmp_path):
    target = tmp_path / "exaone4.json"
    result = cli("inspect", sources["exaone4"], "--json", "--write-definition", target)
    info = json.loads(result.stdout)
    assert info["definition"]["kind"] == "derived" and info["definition"]["model_class"] == "Exaone4ForCausalLM"
    assert info["definition_written"] == str(target)
    written = json.loads(target.read_text())
    arch = parse_definition(written, where=str(target))  # what grow writes, grow's strict schema accepts
    assert arch == derive(_config(sources["exaone4"]))
    assert written["derived"]["identity"] is None and written["residual"] == "derived"
    again = cli("inspect", sources["exaone4"], "--write-definition", target)
    assert again.code != 0 and "--force" in again.stderr
    assert cli("inspect", sources["exaone4"], "--write-definition", target, "--force").code == 0
    human = cli("inspect", sources["stablelm"]).stdout
    assert "derived from" in human and "StableLmForCausalLM" in human and "none (axes follow" in human


def _refused(cli, folder, tmp_path, *fragments):
    out = tmp_path / "out"
    result = cli("expand", folder, out, "--layers", "6")
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()


def test_custom_code_is_refused(cli, sources, tmp_path):
    src = tmp_path / "custom"
    src.mkdir()
    for f in sources["arcee"].iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    config = _config(src)
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_mine.MyForCausalLM"}
    (src / "config.json").write_text(json.dumps(config))
    _refused(cli, src, tmp_path, "auto_map", "--trust-remote-code")


def test_hybrid_stacks_without_a_repeated_block_are_refused():
    config = tf.AutoConfig.for_model("jamba", hidden_size=32, num_attention_heads=4, num_hidden_layers=4).to_dict()
    with pytest.raises(ArchitectureError, match="layers differ.*no single repeated block"):
        derive_definition(config)


def test_layers_kept_in_several_module_lists_are_refused():
    """XLM keeps each layer's attention, FFN and norms in four lists of its own: with more than the small instance's
    two layers, deriving its definition ended in the catch-all (AttributeError: ModuleList has no attribute `2`)."""
    config = tf.AutoConfig.for_model("xlm", emb_dim=32, n_heads=4, n_layers=3, vocab_size=96).to_dict()
    with pytest.raises(ArchitectureError, match="no repeated block: each layer's parts are kept in 4 module lists"):
        derive_definition(config)


def test_a_layers_own_list_as_long_as_the_stack_is_no_other_layer_list():
    """The check above looks outside the repeated block: a layer holding as many experts as there are layers is
    one module per layer still."""
    import torch.nn as nn

    from grow_cli.arch.probe import other_layer_lists

    def layer():
        block = nn.Module()
        block.experts = nn.ModuleList(nn.Linear(2, 2) for _ in range(2))
        return block

    model = nn.Module()
    model.layers = nn.ModuleList(layer() for _ in range(2))
    assert other_layer_lists(model, 2, "layers") == []
    model.norms = nn.ModuleList(nn.LayerNorm(2) for _ in range(2))
    assert other_layer_lists(model, 2, "layers") == ["norms"]


def test_a_checkpoint_under_converted_names_is_refused():
    """transformers 5 stores Mixtral's experts per expert on disk and fused in memory: no single layer template."""
    config = tf.AutoConfig.for_model(
        "mixtral", hidden_size=32, num_attention_heads=4, num_hidden_layers=2, num_local_experts=2
    ).to_dict()
    with pytest.raises(ArchitectureError, match="other names than its modules"):
        derive_definition(config)


def test_a_type_without_attention_heads_is_refused():
    config = tf.AutoConfig.for_model("mamba", hidden_size=32, num_hidden_layers=2).to_dict()
    with pytest.raises(ArchitectureError, match="mamba.*num_attention_heads"):
        derive_definition(config)
