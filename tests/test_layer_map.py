"""`grow expand --layer-map` and `--mergekit-config`: the map's syntax (inclusive ranges) and its refusals, the
exact case (repeats as identity blocks) verified after a save → from_pretrained round trip and its negative control
(a plain repeat), per-layer config lists that follow the map on Qwen3 and Gemma, and a mergekit passthrough config
read as the same map, with what grow cannot honour refused in one line naming the key."""

from __future__ import annotations

import json

import pytest
import tiny_decoders
import torch
from fake_hub import fake_hub_fixture  # noqa: F401 (fixture)
from safetensors import safe_open
from tiny_models import MODEL_CLASSES, probe_ids

from grow_cli.operators.layer_map import format_layer_map, parse_layer_map


def _grow(cli, src, out, *args):
    result = cli("expand", src, out, *args, "--shard-size", "30KB", "--json", "-q")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _refused(result, *fragments):
    assert result.code != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _logits(folder, model_class):
    model = model_class.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(probe_ids()).logits


def _tensor(folder, name):
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise KeyError(name)


def test_ranges_are_inclusive_and_any_order_and_repeat_is_kept():
    assert parse_layer_map("0-3, 1-2,0,3-3") == (0, 1, 2, 3, 1, 2, 0, 3)
    assert format_layer_map((0, 1, 2, 3, 1, 2, 0, 3)) == "0-3,1-2,0,3"
    assert parse_layer_map(format_layer_map(tuple(range(24)) + tuple(range(8, 32)))) == (
        *range(24),
        *range(8, 32),
    )


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--layer-map", "0-3,x"], ["'x' is not a layer or range", "inclusive"]),
        (["--layer-map", "3-1"], ["runs backwards", "1-3"]),
        (["--layer-map", "0-1000000000"], ["bound of 1,024"]),
        (["--layer-map", "0-3,1-4"], ["layer 4 is past the source's 4 layers (0-3)", "exclusive ([0, 4] is 0-3)"]),
        (["--layer-map", "0-2"], ["gives 3 layers, fewer than the source's 4"]),
        (["--layer-map", "0-3,1", "--layers", "6"], ["--layers contradicts --layer-map"]),
        (["--layer-map", "0-3,1", "--depth-factor", "2"], ["--depth-factor contradicts --layer-map"]),
        (["--layer-map", "0-3,1", "--depth-method", "stack"], ["--depth-method contradicts --layer-map"]),
        (["--layer-map", "0-3,1", "--depth-method", "identity"], ["--identity-repeats"]),
        (["--layers", "6", "--identity-repeats"], ["--identity-repeats applies only with --layer-map"]),
        (["--layer-map", "0-3", "--identity-repeats"], ["repeats no layer"]),
    ],
)
def test_a_map_grow_cannot_take_is_refused_in_one_line(cli, tiny_checkpoints, tmp_path, args, fragments):
    _refused(cli("expand", tiny_checkpoints("llama"), tmp_path / "out", *args), *fragments)
    assert not (tmp_path / "out").exists()


def test_identity_repeats_are_refused_where_identity_blocks_are_not_exact(cli, tiny_checkpoints, tmp_path):
    """Post-LN BERT: a zeroed block is no identity there (a norm follows the residual add), as for --depth-method
    identity; the same map without it is taken (the control)."""
    src = tiny_checkpoints("bert")
    _refused(cli("expand", src, tmp_path / "out", "--layer-map", "0-3,1", "--identity-repeats"), "--identity-repeats")
    _grow(cli, src, tmp_path / "plain", "--layer-map", "0-3,1")


@pytest.mark.parametrize("layer_map", ["0-3,1-2", "0-2,1-3"])
def test_repeats_as_identity_blocks_are_exact_after_a_round_trip(cli, tiny_checkpoints, tmp_path, layer_map):
    """Originals in order (0-3 then copies; or 0-2, copies of 1-2, then 3 moved up): zeroed copies add nothing."""
    src, out = tiny_checkpoints("llama"), tmp_path / "out"
    report = _grow(cli, src, out, "--layer-map", layer_map, "--identity-repeats", "--verify")
    layers = parse_layer_map(layer_map)
    new = {"0-3,1-2": [4, 5], "0-2,1-3": [3, 4]}[layer_map]
    assert report["depth"]["layer_map"] == list(layers) and report["depth"]["new_layers"] == new
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    cls = MODEL_CLASSES["llama"]
    assert cls.from_pretrained(out).config.num_hidden_layers == 6
    torch.testing.assert_close(_logits(out, cls), _logits(src, cls), rtol=0, atol=1e-5)
    assert not _tensor(out, "model.layers.4.mlp.down_proj.weight").any()  # a repeat: zeroed
    q = "self_attn.q_proj.weight"
    assert torch.equal(_tensor(out, f"model.layers.4.{q}"), _tensor(src, f"model.layers.{layers[4]}.{q}"))
    record = json.loads((out / "grow.json").read_text())["stages"][-1]["depth"]
    assert record["method"] == "layer-map" and record["function_preserving"] is True
    assert record["parameters"] == {"layers": 6, "layer_map": layer_map, "identity_repeats": True}


def test_a_plain_repeat_does_not_claim_exactness(cli, tiny_checkpoints, tmp_path):
    """The negative control: the same map without --identity-repeats changes the function, and says so."""
    report = _grow(cli, tiny_checkpoints("llama"), tmp_path / "out", "--layer-map", "0-3,1-2", "--verify")
    assert report["function_preserving"] is False and report["depth"]["function_preserving"] is False
    assert report["verify"]["passed"] is None and report["verify"]["max_abs_logit_diff"] > 1e-3
    assert "layer map 0-3,1-2 is not function-preserving: its repeats are plain copies" in " ".join(report["notes"])


def test_a_map_that_drops_a_layer_is_not_exact_even_with_identity_repeats(cli, tiny_checkpoints, tmp_path):
    report = _grow(cli, tiny_checkpoints("llama"), tmp_path / "out", "--layer-map", "0-2,0-2", "--identity-repeats")
    assert report["depth"]["function_preserving"] is False  # layer 3 is gone
    assert "layer map 0-2,0-2 is not function-preserving: it leaves out source 1 layer: 3" in report["notes"]


@pytest.mark.parametrize("name", ["qwen3", "gemma2", "gemma3_text"])
def test_per_layer_lists_follow_the_map_and_the_config_loads(cli, tmp_path, name):
    src = tiny_decoders.save(name, tmp_path / "src")
    out = tmp_path / "out"
    report = _grow(cli, src, out, "--layer-map", "0-3,2-3,1", "--identity-repeats", "--verify")
    assert report["verify"]["passed"] is True  # exact: the moved layers keep their attention types
    import transformers

    source = transformers.AutoConfig.from_pretrained(src)
    grown = transformers.AutoConfig.from_pretrained(out)  # transformers' strict validation passes
    assert grown.num_hidden_layers == 7
    assert grown.layer_types == [source.layer_types[i] for i in (0, 1, 2, 3, 2, 3, 1)]
    torch.testing.assert_close(
        _logits(out, tiny_decoders.model_class(name)), _logits(src, tiny_decoders.model_class(name)), rtol=0, atol=1e-5
    )


SOLAR = """
merge_method: passthrough
dtype: bfloat16
slices:
  - sources: [{{model: {model}, layer_range: [0, 4]}}]
  - sources:
      - model: {model}
        layer_range: [1, 3]
    parameters:
      scale: [{{filter: o_proj, value: 0}}, {{filter: down_proj, value: 0}}, {{value: 1}}]
"""


def test_a_mergekit_config_is_the_same_map_with_exclusive_ends(cli, tiny_checkpoints, tmp_path):
    src = tiny_checkpoints("llama")
    config = tmp_path / "solar.yml"
    config.write_text(SOLAR.format(model=src))
    mapped = _grow(cli, src, tmp_path / "mapped", "--layer-map", "0-3,1-2", "--identity-repeats", "--dtype", "bf16")
    report = _grow(cli, src, tmp_path / "out", "--mergekit-config", config, "--verify")
    assert report["depth"]["layer_map"] == mapped["depth"]["layer_map"] == [0, 1, 2, 3, 1, 2]
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"  # the config's dtype
    for name in ("model.layers.4.mlp.down_proj.weight", "model.layers.5.self_attn.q_proj.weight"):
        assert torch.equal(_tensor(tmp_path / "out", name), _tensor(tmp_path / "mapped", name))
    record = json.loads((tmp_path / "out" / "grow.json").read_text())["stages"][-1]["depth"]
    assert record["parameters"]["mergekit_config"] == str(config)
    dry = cli("expand", src, tmp_path / "dry", "--mergekit-config", config, "--dry-run", "--json")
    assert json.loads(dry.stdout)["depth"]["parameters"]["layer_map"] == "0-3,1-2"


@pytest.mark.parametrize(
    "edit,fragments",
    [
        (lambda t, m: t.replace("passthrough", "slerp"), ["merge_method", "not 'slerp'"]),
        (lambda t, m: t + "tokenizer_source: org/other\n", ["tokenizer_source", "the model's own tokenizer"]),
        (lambda t, m: t + "chat_template: chatml\n", ["chat_template", "the model's own chat template"]),
        (lambda t, m: t + "tokenizer: {source: union}\n", ["tokenizer", "remove it"]),
        (lambda t, m: t.replace("[0, 4]}]", "[0, 4]}, {model: o, layer_range: [0, 4]}]"), ["exactly one"]),
        (lambda t, m: t.replace(f"model: {m}\n", "model: org/other\n"), ["the slices read", "grows one model"]),
        (
            lambda t, m: t.replace("value: 1}", "value: 0.5}"),
            ["slices[1]: scale", "input_layernorm would be scaled by 0.5"],
        ),
        (lambda t, m: t.replace("{value: 1}", "{filter: mlp, value: 1}"), []),  # o_proj, down_proj first: identity
        # mergekit takes the first filter that matches: `mlp` gives down_proj 1 before its own entry is read
        (
            lambda t, m: t.replace("[{filter: o_proj", "[{filter: mlp, value: 1}, {filter: o_proj"),
            ["down_proj", "o_proj alone"],
        ),
        (lambda t, m: t.replace("filter: o_proj", "filter: layers.4.self_attn.o_proj"), ["names a layer", "split"]),
        (lambda t, m: t.replace("{value: 1}", "{value: [0, 1]}"), ["[0, 1] is a gradient", "give one"]),
        (lambda t, m: t + "parameters: {scale: 0}\n", ["slices[0]: scale", "would be scaled by 0"]),
        (lambda t, m: t.replace("{filter: down_proj, value: 0}, ", ""), ["o_proj alone", "both"]),
        (lambda t, m: t.replace("[0, 4]", "[0, 5]"), ["slices[0].sources[0].layer_range: [0, 5] ends past", "[0, 4]"]),
        (lambda t, m: t.replace("[1, 3]", "[3, 1]"), ["layer_range", "end exclusive"]),
        (lambda t, m: t.replace("[1, 3]", "[1, 1000000000000]"), ["slices[1]", "over grow's bound"]),
        (lambda t, m: t.replace(str(m), f"{m}+adapter"), ["model:", "LoRA adapter", "merge_and_unload"]),
        (lambda t, m: t.replace(str(m), f"{m}@"), ["model:", "optionally @revision"]),
        (lambda t, m: t.replace("[0, 4]}]", f"[0, 2]}}]\n  - sources: [{{model: {m}, layer_range: [2, 4]}}]"), []),
    ],
)
def test_what_grow_cannot_honour_in_a_mergekit_config_is_refused(cli, tiny_checkpoints, tmp_path, edit, fragments):
    src = tiny_checkpoints("llama")
    config = tmp_path / "merge.yml"
    config.write_text(edit(SOLAR.format(model=src), src))
    result = cli("expand", src, tmp_path / "out", "--mergekit-config", config)
    if not fragments:  # the control: the same map in three slices is taken
        assert result.code == 0, result.stderr
        return
    _refused(result, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit,identity",
    [
        (lambda t: t, True),
        # the first matching condition wins: a filterless 1 first scales every tensor by 1 (mergekit's evaluate_setting)
        (lambda t: t.replace("[{filter: o_proj", "[{value: 1}, {filter: o_proj"), False),
        # a slice's source's own scale comes before the slice's
        (lambda t: t.replace("layer_range: [1, 3]", "layer_range: [1, 3]\n        parameters: {scale: 1}"), False),
        # filters are substrings of the tensor's name
        (
            lambda t: t.replace("filter: o_proj", "filter: self_attn.o_proj").replace("down_proj,", "mlp.down_proj,"),
            True,
        ),
        # the one model's own tokenizer and template
        (lambda t: t + "tokenizer_source: base\nchat_template: auto\nparameters: {scale: 1}\n", True),
    ],
)
def test_a_mergekit_configs_scales_are_read_as_mergekit_reads_them(cli, tiny_checkpoints, tmp_path, edit, identity):
    """grow zeroes a slice's o_proj and down_proj where mergekit would scale them to 0 and keeps them where it would
    keep them: read by mergekit's rules, not by which filters appear (a config whose filterless 1 came first was
    grown with identity blocks that mergekit would not have made)."""
    src = tiny_checkpoints("llama")
    config = tmp_path / "merge.yml"
    config.write_text(edit(SOLAR.format(model=src)))
    plan = json.loads(cli("expand", src, tmp_path / "o", "--mergekit-config", config, "--dry-run", "--json").stdout)
    assert plan["depth"]["parameters"]["identity_repeats"] is identity
    assert plan["function_preserving"] is identity


def test_a_mergekit_configs_scales_on_a_model_without_llamas_names_are_refused(cli, tiny_checkpoints, tmp_path):
    """The filters are read against Llama's tensor names: on GPT-2 (attn.c_proj, mlp.c_proj) mergekit's `o_proj`
    matches nothing and would scale nothing, where grow would have zeroed GPT-2's writers. Refused when the config
    scales anything; a plain passthrough of the same model is taken."""
    src = tiny_checkpoints("gpt2")
    config = tmp_path / "solar.yml"
    config.write_text(SOLAR.format(model=src).replace("[0, 4]", "[0, 2]").replace("[1, 3]", "[0, 2]"))
    result = cli("expand", src, tmp_path / "o", "--mergekit-config", config, "--dry-run")
    _refused(result, "scale: its filters are read against Llama's", "c_proj", "--identity-repeats")
    config.write_text(
        SOLAR.format(model=src).replace("[0, 4]", "[0, 2]").replace("[1, 3]", "[0, 2]").split("    parameters:")[0]
    )
    plan = json.loads(cli("expand", src, tmp_path / "o", "--mergekit-config", config, "--dry-run", "--json").stdout)
    assert plan["depth"]["layer_map"] == [0, 1, 0, 1] and plan["depth"]["parameters"]["identity_repeats"] is False


def test_a_mergekit_config_of_another_model_or_conflicting_options_is_refused(cli, tiny_checkpoints, tmp_path):
    src = tiny_checkpoints("llama")
    config = tmp_path / "solar.yml"
    other = tiny_checkpoints("mistral")  # another folder on disk: another model, whatever its layers
    config.write_text(SOLAR.format(model=other))
    _refused(cli("expand", src, tmp_path / "o", "--mergekit-config", config), f"{str(other)!r}", "give")
    config.write_text(SOLAR.format(model=src))
    _refused(cli("expand", src, tmp_path / "o", "--mergekit-config", config, "--dtype", "fp16"), "contradicts")
    _refused(cli("expand", src, tmp_path / "o", "--mergekit-config", config, "--layers", "6"), "--layers contradicts")
    _refused(
        cli("expand", src, tmp_path / "o", "--mergekit-config", config, "--identity-repeats"), "--identity-repeats"
    )
    zeroed_first_use = SOLAR.replace("[1, 3]", "[1, 4]").replace("[0, 4]", "[0, 3]")
    config.write_text(zeroed_first_use.format(model=src))
    _refused(cli("expand", src, tmp_path / "o", "--mergekit-config", config), "target layer 5 (source layer 3)")


def test_a_map_whose_dense_and_moe_pattern_the_config_cannot_say_is_refused(cli, tmp_path):
    """GLM-4.5's dense first layer copied above its MoE layers has no `first_k_dense_replace`; copied below, it has."""
    import tiny_moe

    src = tiny_moe.save("glm4_moe", tmp_path / "src")
    _refused(cli("expand", src, tmp_path / "out", "--layer-map", "0-2,0"), "layer map 0-2,0 cannot grow this glm4_moe")
    _grow(cli, src, tmp_path / "ok", "--layer-map", "0,0-2")


def test_a_local_folder_stands_in_for_the_hub_id_a_mergekit_config_names_with_a_note(cli, tiny_checkpoints, tmp_path):
    """The usual case: the config reads `org/name`, the user grows the copy they downloaded."""
    src = tiny_checkpoints("llama")
    config = tmp_path / "solar.yml"
    config.write_text(SOLAR.format(model="org/llama@v2"))
    report = _grow(cli, src, tmp_path / "out", "--mergekit-config", config)
    assert report["depth"]["layer_map"] == [0, 1, 2, 3, 1, 2]
    assert f"its slices read org/llama@v2; grown from {src} in its place" in " ".join(report["notes"])
    dry = json.loads(cli("expand", src, tmp_path / "dry", "--mergekit-config", config, "--dry-run", "--json").stdout)
    assert any("in its place" in note for note in dry["notes"])


def test_a_mergekit_model_at_a_revision_is_downloaded_at_it(cli, fake_hub, tiny_checkpoints, tmp_path):
    """mergekit's `model: org/name@revision` reads that revision; `--revision` may repeat it, not contradict it."""
    fake_hub.add_folder("acme/llama", tiny_checkpoints("llama"))
    oid = fake_hub.add_files("acme/llama", {"notes.txt": b"stage 1"}, branch="stage-1")
    config = tmp_path / "solar.yml"
    config.write_text(SOLAR.format(model="acme/llama@stage-1"))
    _grow(cli, "acme/llama", tmp_path / "out", "--mergekit-config", config)
    source = json.loads((tmp_path / "out" / "grow.json").read_text())["stages"][-1]["source"]
    assert (source["revision"], source["commit"]) == ("stage-1", oid)
    _refused(
        cli("expand", "acme/llama", tmp_path / "o2", "--mergekit-config", config, "--revision", "main"),
        "--revision main contradicts the mergekit config's acme/llama@stage-1",
    )
    config.write_text(SOLAR.format(model="acme/llama"))  # the control: no revision, main
    _grow(cli, "acme/llama", tmp_path / "main", "--mergekit-config", config)
    source = json.loads((tmp_path / "main" / "grow.json").read_text())["stages"][-1]["source"]
    assert source["commit"] == fake_hub.head("acme/llama").oid != oid
