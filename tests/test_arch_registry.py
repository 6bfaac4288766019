"""Architecture definitions (`grow_cli.arch.registry`): every packaged definition parses, and a definition with an
unknown key, a bad axis space, a wrong axis count, a missing key or missing tensors is refused with a message that
names the file and the problem — a stale or mistyped field must never be silently ignored."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources

import pytest
import tiny_decoders
import tiny_models
import tiny_moe

from grow_cli.arch.registry import all_definitions, definition_document, detect, parse_definition
from grow_cli.errors import ArchitectureError

PACKAGED = sorted(
    entry.name
    for entry in resources.files("grow_cli.arch").joinpath("definitions").iterdir()
    if entry.name.endswith(".json")
)


def llama() -> dict:
    return json.loads(resources.files("grow_cli.arch").joinpath("definitions", "llama.json").read_text())


def weight(raw: dict, name: str) -> dict:
    """The layer weight called `name` in a raw definition."""
    return next(w for w in raw["layer"] if w["name"] == name)


def q_proj(raw: dict) -> dict:
    return weight(raw, "self_attn.q_proj.weight")


@pytest.mark.parametrize("file", PACKAGED)
def test_every_packaged_definition_parses_and_is_detected_by_its_model_types(file):
    raw = json.loads(resources.files("grow_cli.arch").joinpath("definitions", file).read_text())
    arch = parse_definition(raw, file)
    assert all_definitions()[arch.name] == arch
    for model_type in arch.model_types:
        assert detect({"model_type": model_type}) is all_definitions()[arch.name]


# Each case: how to break a copy of llama.json, and what the refusal must say.
BROKEN = {
    "unknown top-level key": (
        lambda d: d.update(layer_prefx="model.layers.{i}."),
        "unknown key(s) ['layer_prefx']",
    ),
    "unknown weight key": (
        lambda d: q_proj(d).update(axis=["q", "hidden"]),
        "unknown key(s) ['axis'] in weight 'self_attn.q_proj.weight'",
    ),
    "unknown axis space": (
        lambda d: q_proj(d).update(axes=["heads", "hidden"]),
        "weight 'self_attn.q_proj.weight' has unknown axis space(s) ['heads']",
    ),
    "one axis for a matrix": (
        lambda d: q_proj(d).update(axes=["q"]),
        "weight 'self_attn.q_proj.weight' of kind linear needs 2 axes, has 1",
    ),
    "two axes for a norm": (
        lambda d: weight(d, "input_layernorm.weight").update(axes=["hidden", "hidden"]),
        "weight 'input_layernorm.weight' of kind norm needs 1 axes, has 2",
    ),
    "unknown kind": (
        lambda d: q_proj(d).update(kind="dense"),
        "weight 'self_attn.q_proj.weight' has unknown kind 'dense'",
    ),
    "weight without axes": (
        lambda d: q_proj(d).pop("axes"),
        "weight 'self_attn.q_proj.weight' lacks 'axes'",
    ),
    "weight that is not an object": (
        lambda d: d["layer"].append("mlp.extra.weight"),
        "each weight must be an object",
    ),
    "missing required key": (
        lambda d: d.pop("final"),
        "missing key(s) ['final']",
    ),
    "unknown config role": (
        lambda d: d["config"].update(depth="num_hidden_layers"),
        "unknown config role(s) ['depth']",
    ),
    "missing config role": (
        lambda d: d["config"].pop("heads"),
        "config lacks role(s) ['heads']",
    ),
    "bad norm": (lambda d: d.update(norm="batch"), "norm must be one of 'rms', 'layer'"),
    "bad residual": (lambda d: d.update(residual="sandwich"), "residual must be one of"),
    "bad positions": (lambda d: d.update(positions="alibi"), "positions must be 'rope', 'learned' or 'other'"),
    "layer prefix without {i}": (lambda d: d.update(layer_prefix="model.layers."), "layer_prefix must contain '{i}'"),
    "a base model prefix without the headless form": (
        lambda d: d.update(prefixes=["model."]),
        "prefixes ['model.'] lack \"\", the base model saved alone (headless)",
    ),
    "an embedding outside the base model": (
        lambda d: [
            w.update({k: "model.embed_tokens.weight"})
            for w, k in ((d["embeddings"][0], "name"), (d["final"][1], "tied_to"))
        ],
        "'model.embed_tokens.weight' does not begin with {p}, although the base model holds it",
    ),
    "layers outside the base model": (
        lambda d: d.update(layer_prefix="model.layers.{i}."),
        "'model.layers.{i}.' does not begin with {p}, although the base model holds it",
    ),
    "a prefix that is no module path": (
        lambda d: d.update(prefixes=["model", ""]),
        "'prefixes' lists module prefixes, each ending in '.'",
    ),
    "no embedding tensors": (
        lambda d: d.update(embeddings=[]),
        "needs at least one tensor in 'embeddings' and one in 'layer'",
    ),
    "empty layer template": (
        lambda d: d.update(layer=[]),
        "needs at least one tensor in 'embeddings' and one in 'layer'",
    ),
    "no head norm": (
        lambda d: d["final"][0].pop("head_norm"),  # model.norm.weight
        "no final tensor is marked head_norm",
    ),
    "tensor named twice": (
        lambda d: d["layer"].append(copy.deepcopy(q_proj(d))),
        "a tensor name appears twice",
    ),
    "a config space named like one of grow's": (
        lambda d: d.update(config_spaces={"ffn": [["intermediate_size"]]}, width_refused="no map"),
        "config space 'ffn' is one of grow's own spaces",
    ),
    "a config space that is not a sum of products": (
        lambda d: d.update(config_spaces={"latent": ["kv_lora_rank"]}, width_refused="no map"),
        "config space 'latent': give a list of terms, each a list of config keys to multiply",
    ),
    "an axis in an undeclared config space": (
        lambda d: q_proj(d).update(axes=["latent", "hidden"]),
        "weight 'self_attn.q_proj.weight' has unknown axis space(s) ['latent']",
    ),
    "a presence condition that is not a key": (
        lambda d: q_proj(d).update(when=[True]),
        "weight 'self_attn.q_proj.weight': 'when' is a config key, or a list of keys that must all be set",
    ),
    "a buffer flag that is not a boolean": (
        lambda d: q_proj(d).update(buffer="yes"),
        "weight 'self_attn.q_proj.weight': 'buffer' is true or false",
    ),
    "mtp_layers that is not a key": (
        lambda d: d.update(mtp_layers=1),
        "'mtp_layers' is the config key that counts the multi-token-prediction layers",
    ),
    "a presence condition on two lists": (
        lambda d: q_proj(d).update(only_where={"layer_types": "full", "indexer_types": "full"}),
        "weight 'self_attn.q_proj.weight': 'only_where' is one per-layer list key and its value",
    ),
    "identity layer values that are not strings": (
        lambda d: d.update(identity_layer_values={"indexer_types": 1}),
        "'identity_layer_values' maps a per-layer list key to one of its values",
    ),
    "index-scaled attention that is not a flag and tensors": (
        lambda d: d.update(index_scaled_attention={"flag": "scale_attn_by_inverse_layer_idx"}),
        '\'index_scaled_attention\' is {"flag": a config key, "query": [layer tensor names]}',
    ),
    "index-scaled attention on a tensor without a query axis": (
        lambda d: d.update(index_scaled_attention={"flag": "scale", "query": ["self_attn.k_proj.weight"]}),
        "index_scaled_attention: 'self_attn.k_proj.weight' is not a layer tensor with a 'q' or 'qkv' axis",
    ),
    "tied to a tensor that is not there": (
        lambda d: d["final"][-1].update(tied_to="model.embed_token.weight"),
        "weight(s) ['lm_head.weight'] are tied to a tensor the definition does not name",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_definition_is_refused_naming_the_file_and_the_problem(case):
    break_it, message = BROKEN[case]
    raw = llama()
    break_it(raw)
    with pytest.raises(ArchitectureError, match=re.escape(f"architecture definition broken.json: {message}")):
        parse_definition(raw, "broken.json")


def test_the_unbroken_copy_parses():
    """The negative control of the cases above: the definition they start from is valid."""
    assert parse_definition(llama(), "llama.json").name == "llama"


def test_an_unknown_model_type_names_what_grow_supports():
    with pytest.raises(
        ArchitectureError, match="unknown architecture model_type='no_such_model'.*grow supports: .*llama"
    ):
        detect({"model_type": "no_such_model", "architectures": ["NoSuchModelForCausalLM"]})
    with pytest.raises(ArchitectureError, match="'lamma'.*did you mean llama or"):
        detect({"model_type": "lamma"})


@pytest.mark.parametrize(
    ("module", "name"),
    [
        *[("tiny_moe", n) for n in [*tiny_moe.NAMES, *tiny_moe.PREFIX_NAMES, *tiny_moe.LISTED_CONFIGS]],
        *[("tiny_decoders", n) for n in tiny_decoders.NAMES],
        *[("tiny_models", n) for n in tiny_models.ALL],
    ],
)
def test_the_definition_marks_exactly_the_models_persistent_buffers(module, name):
    """A tensor transformers saves as a buffer is never trained, so a grown training state must give it no optimizer
    state (`buffer: true`), and a parameter must not be marked: either way `--resume grown` would refuse the state.
    GLM-4.7-Flash's and GLM-5's e-score correction bias were unmarked."""
    build = {"tiny_moe": tiny_moe.build, "tiny_decoders": tiny_decoders.build, "tiny_models": tiny_models.build_tiny}
    model = build[module](name)
    state = model.state_dict()
    saved_buffers = {re.sub(r"^.*?layers\.\d+\.", "", n) for n, _ in model.named_buffers() if n in state}
    document = definition_document(model.config.to_dict())
    marked = {w["name"] for part in ("embeddings", "layer", "final") for w in document[part] if w.get("buffer")}
    assert saved_buffers == marked
