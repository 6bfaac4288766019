"""The growth planner (`grow_cli.growth.plan`): from config.json and the shard headers alone, a plan names every
output tensor with its shape, dtype and the source tensors it reads (or zeros), the target config, the shard layout
and the byte and parameter counts — before a single weight is read."""

from __future__ import annotations

import json

import pytest
import tiny_decoders
import transformers as tf

from grow_cli.checkpoint.dtypes import numel
from grow_cli.checkpoint.model_config import load_config
from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.errors import UsageError
from grow_cli.growth.plan import Plan, _not_written, build_plan, lm_dropout
from grow_cli.growth.spec import GrowthSpec

# The weights of one Llama layer, in the definition's order; the two that write into the residual stream are what an
# identity block zeroes.
LAYER = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
RESIDUAL_WRITERS = ("self_attn.o_proj", "mlp.down_proj")


def plan_for(folder, **options) -> Plan:
    """The plan `grow expand` makes for the checkpoint in `folder`, from its config and shard headers only."""
    with CheckpointReader(folder) as reader:
        tensors = reader.tensor_infos()
    return build_plan(load_config(folder), tensors, GrowthSpec(**options))


def source_infos(folder) -> dict[str, tuple[tuple[int, ...], str]]:
    with CheckpointReader(folder) as reader:
        return reader.tensor_infos()


def layer_numel(infos, layer: int) -> int:
    shapes = [infos[f"model.layers.{layer}.{w}.weight"][0] for w in LAYER]
    return sum(numel(s) for s in shapes)


def test_identity_plan_copies_each_layer_and_zeroes_the_residual_writers_of_new_ones(tiny_checkpoints):
    src = tiny_checkpoints("llama")
    infos = source_infos(src)
    plan = plan_for(src, layers=6, depth_method="identity")
    assert plan.depth is not None and plan.width is None
    assert plan.depth.layer_map == (0, 1, 1, 2, 3, 3)
    assert plan.depth.new == (False, False, True, False, False, True)
    by_name = {t.name: t for t in plan.tensors}
    for j, source_layer in enumerate(plan.depth.layer_map):
        for w in LAYER:
            t = by_name[f"model.layers.{j}.{w}.weight"]
            copied = f"model.layers.{source_layer}.{w}.weight"
            assert t.layer == j and t.new == (j in (2, 5)) and t.shape == infos[copied][0] and t.dtype == "F32"
            if t.new and w in RESIDUAL_WRITERS:
                assert t.zero and t.reads == () and t.describe(None).startswith("zeros")
            else:
                assert not t.zero and t.reads == (copied,)
    names = [t.name for t in plan.tensors]
    assert names[0] == "model.embed_tokens.weight" and names[-2:] == ["model.norm.weight", "lm_head.weight"]
    assert len(names) == len(set(names)) == 3 + 6 * len(LAYER)
    assert sorted(plan.added_tensors()) == sorted(f"model.layers.{j}.{w}.weight" for j in (2, 5) for w in LAYER)
    assert plan.target_config == {**load_config(src), "num_hidden_layers": 6}
    assert plan.function_preserving
    source_params = sum(numel(shape) for shape, _ in infos.values())
    assert plan.num_parameters == source_params + layer_numel(infos, 1) + layer_numel(infos, 3)
    assert plan.total_bytes == 4 * plan.num_parameters


def test_stack_plan_repeats_the_whole_stack_and_claims_no_exactness(tiny_checkpoints):
    plan = plan_for(tiny_checkpoints("llama"), layers=8)
    assert plan.depth is not None and plan.depth.method == "stack"
    assert plan.depth.layer_map == (0, 1, 2, 3, 0, 1, 2, 3)
    assert plan.depth.new == (False,) * 4 + (True,) * 4
    assert not any(t.zero for t in plan.tensors) and not plan.function_preserving
    down = {t.name: t.reads for t in plan.tensors if t.name.endswith("down_proj.weight")}
    assert down["model.layers.6.mlp.down_proj.weight"] == ("model.layers.2.mlp.down_proj.weight",)
    assert plan.target_config["num_hidden_layers"] == 8


def test_shards_hold_every_tensor_once_in_order_and_within_the_limit(tiny_checkpoints):
    src = tiny_checkpoints("llama")
    plan = plan_for(src, layers=6, depth_method="identity", shard_size=20_000)
    assert len(plan.shards) > 1
    assert [p.name for shard in plan.shards for p in shard] == [t.name for t in plan.tensors]
    for shard in plan.shards:
        assert sum(p.nbytes for p in shard) <= 20_000 or len(shard) == 1
    assert sum(p.nbytes for shard in plan.shards for p in shard) == plan.total_bytes
    assert len(plan_for(src, layers=6, depth_method="identity", shard_size=10**9).shards) == 1


def test_dtype_casts_every_float_tensor_and_the_config(tiny_checkpoints):
    src = tiny_checkpoints("llama")
    fp32, bf16 = plan_for(src, layers=8), plan_for(src, layers=8, dtype="bf16")
    assert {t.dtype for t in fp32.tensors} == {"F32"} and {t.dtype for t in bf16.tensors} == {"BF16"}
    assert bf16.total_bytes * 2 == fp32.total_bytes and bf16.num_parameters == fp32.num_parameters
    assert bf16.target_config["dtype"] == "bfloat16" and bf16.out_dtype == "BF16"


@pytest.mark.parametrize(
    "keys,expected",
    [({"torch_dtype": "float32"}, "float32"), ({"dtype": "float32", "torch_dtype": "bfloat16"}, "float32")],
)
def test_the_grown_config_keeps_the_dtype_transformers_reads(tiny_checkpoints, keys, expected):
    """transformers 5 renamed `torch_dtype` to `dtype` and reads `dtype` where both are set (a stale `torch_dtype`
    beside it once replaced it, so float32 weights were announced as bfloat16)."""
    src = tiny_checkpoints("llama")
    config = {k: v for k, v in load_config(src).items() if k not in ("dtype", "torch_dtype")} | keys
    with CheckpointReader(src) as reader:
        plan = build_plan(config, reader.tensor_infos(), GrowthSpec(layers=6))
    assert plan.target_config["dtype"] == expected and "torch_dtype" not in plan.target_config


def test_width_plan_widens_every_axis_in_its_space_and_keeps_head_dim(tiny_checkpoints):
    src = tiny_checkpoints("llama")
    plan = plan_for(src, width_method="fpi", hidden_size=64)
    assert plan.depth is None and plan.width is not None and plan.function_preserving
    source = load_config(src)
    changed = {k: v for k, v in plan.target_config.items() if source.get(k) != v}
    assert changed == {"hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 4}
    shapes = {t.name: t.shape for t in plan.tensors}
    assert shapes["model.embed_tokens.weight"] == (96, 64) and shapes["lm_head.weight"] == (96, 64)
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (64, 64)  # 8 heads × head_dim 8
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (32, 64)  # 4 KV heads × head_dim 8
    assert shapes["model.layers.3.mlp.down_proj.weight"] == (64, 48) and shapes["model.norm.weight"] == (64,)
    assert all(t.reads == (t.name,) and not t.new for t in plan.tensors)  # fpi maps each tensor from itself
    assert plan.peak_bytes >= max(t.nbytes for t in plan.tensors)


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "nothing to grow"),
        ({"layers": 6, "dtype": "int8"}, "--dtype must be one of"),
        ({"layers": 3}, "smaller than the source.s 4 layers"),
    ],
)
def test_plans_that_cannot_be_made_are_refused(tiny_checkpoints, options, message):
    with pytest.raises(UsageError, match=message):
        plan_for(tiny_checkpoints("llama"), **options)


@pytest.mark.parametrize(
    "options, dropout, noted",
    [
        ({"width_method": "fpi", "hidden_size": 64}, {"attention_dropout": 0.0}, True),
        ({"width_method": "hypercloning", "width_factor": 2}, {"attention_dropout": 0.0}, True),
        ({"width_method": "hypercloning", "width_factor": 2, "noise_snr_db": 10}, {"attention_dropout": 0.0}, False),
        ({"width_method": "aki", "hidden_size": 64}, {"attention_dropout": 0.0}, False),
        ({"width_method": "fpi", "hidden_size": 64}, {"attention_dropout": 0.1}, False),
        ({"layers": 8}, {"attention_dropout": 0.0}, False),
        # a classification head's dropout (GPT-2's default config sets it) is never applied in the LM's forward pass
        ({"width_method": "fpi", "hidden_size": 64}, {"summary_first_dropout": 0.1, "classifier_dropout": 0.1}, True),
        # a rate in a nested part of the LM's config (MPT's attention dropout) breaks the symmetry as a top-level one…
        ({"width_method": "fpi", "hidden_size": 64}, {"attn_config": {"attn_pdrop": 0.1}}, False),
        ({"width_method": "fpi", "hidden_size": 64}, {"attn_config": {"attn_pdrop": 0}}, True),
        # …and one of another model's config beside the LM (a vision tower, with a model_type of its own) does not
        (
            {"width_method": "fpi", "hidden_size": 64},
            {"vision_config": {"model_type": "siglip_vision_model", "attention_dropout": 0.1}},
            True,
        ),
    ],
)
def test_plan_says_when_copied_units_would_stay_copies(tiny_checkpoints, options, dropout, noted):
    """Exact copies receive identical gradients: without dropout or noise they never diverge, so the plan says so."""
    src = tiny_checkpoints("llama")
    config = {**load_config(src), **dropout}
    plan = build_plan(config, source_infos(src), GrowthSpec(**options))
    assert any("stay copies" in note for note in plan.notes) == noted


@pytest.mark.parametrize(
    "options, advice",
    [
        ({"width_method": "fpi", "width_factor": 2}, "break it: --width-method hypercloning --noise-snr-db 10"),
        ({"width_method": "hypercloning", "width_factor": 2}, "break it: --noise-snr-db 10"),
        (  # hypercloning tiles whole copies: flags it would refuse are not advised
            {"width_method": "fpi", "width_factor": 1.5},
            "--noise-snr-db 10, at a size it can tile (hypercloning tiles whole copies: --width-factor must be a "
            "whole number, got 1.5; try 2)",
        ),
        (
            {"width_method": "fpi", "hidden_size": 48},
            "--noise-snr-db 10, at a size it can tile (hypercloning tiles whole copies: hidden_size must be a "
            "multiple of 32; try 64)",
        ),
    ],
)
def test_the_copies_note_advises_only_a_growth_that_would_be_taken(tiny_checkpoints, options, advice):
    """The note that copies stay copies advised `--width-method hypercloning --noise-snr-db 10` for every target,
    which hypercloning refuses where the target is no whole multiple of the source: there it says what it needs."""
    src = tiny_checkpoints("llama")
    plan = build_plan(load_config(src), source_infos(src), GrowthSpec(**options))
    note = next(note for note in plan.notes if "stay copies" in note)
    assert note.endswith(advice), note


def saved_config(config_class, **changes) -> dict:
    """The config.json that `save_pretrained` writes for this transformers config class."""
    return json.loads(config_class(**changes).to_json_string())


def mpt_config(attn_pdrop: float) -> dict:
    """MPT's config.json with its attention dropout set in the file: transformers 5.25 types
    MptAttentionConfig.attn_pdrop as an int, so its class refuses 0.1 (and loading such a file)."""
    config = saved_config(tf.MptConfig)
    return {**config, "attn_config": {**config["attn_config"], "attn_pdrop": attn_pdrop}}


@pytest.mark.parametrize(
    "config, rates",
    [
        # MPT and DBRX keep their attention dropout in a nested part of the LM's own config
        (lambda: saved_config(tf.DbrxConfig, attn_config={"attn_pdrop": 0.1}), {"attn_config.attn_pdrop": 0.1}),
        (lambda: saved_config(tf.DbrxConfig), {}),
        (lambda: mpt_config(0.1), {"attn_config.attn_pdrop": 0.1}),
        (lambda: mpt_config(0), {}),
        # a flat config reads as before: the LM's rates, not its task head's summary_first_dropout
        (lambda: saved_config(tf.GPT2Config), {"attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1}),
        # the vision and audio towers beside the LM are models of their own: their dropout is not the LM's
        (
            lambda: saved_config(tf.GitConfig, vision_config={"attention_dropout": 0.1}),
            {"attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1},
        ),
        (
            lambda: saved_config(
                tf.Phi4MultimodalConfig, vision_config={"attention_dropout": 0.1}, audio_config={"dropout_rate": 0.1}
            ),
            {},
        ),
        # a config built in memory keys id2label by int, and a head's labels are names, never rates
        (
            lambda: {**tf.LlamaConfig().to_dict(), "id2label": {0: "pdrop", 1: "dropout"}, "label2id": {"dropout": 1}},
            {},
        ),
    ],
    ids=[
        "dbrx",
        "dbrx-no-dropout",
        "mpt",
        "mpt-no-dropout",
        "gpt2",
        "git-vision",
        "phi4-multimodal-towers",
        "label-maps",
    ],
)
def test_lm_dropout_reads_the_language_models_rates_and_only_its(config, rates):
    """The dropout that breaks copies' symmetry and a grown state's exactness is the LM's own, wherever its config
    keeps it; a rate in a sub-model beside it (a `model_type` of its own) is never applied by a text-only pass."""
    assert lm_dropout(config()) == rates


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("llama", {"layers": 6}),
        ("llama", {"layers": 6, "depth_method": "identity"}),
        ("gemma", {"layers": 6, "depth_method": "identity"}),  # its zeroed gains are −1: computed, not zero bytes
        ("llama", {"layers": 6, "dtype": "bf16"}),
        ("llama", {"experts": 4, "top_k": 2}),
        ("llama", {"width_method": "fpi", "hidden_size": 64}),
    ],
    ids=["stack", "identity", "gemma-identity", "dtype", "moe", "width"],
)
def test_the_memory_estimate_counts_what_the_executor_computes(tiny_checkpoints, tmp_path, arch, options):
    """A tensor written as stored bytes (copied file to file) or zeros needs no memory of its own, so the estimate
    `require_memory` refuses by leaves it out (it counted each as read in fp32 plus written: 10–25× the measured peak
    of a depth growth). The plan's `without_arithmetic` must name exactly the tensors the executor writes that way."""
    from grow_cli.checkpoint.file_copy import CHUNK
    from grow_cli.growth.expand import stored_bytes

    src = tiny_checkpoints(arch) if arch == "llama" else tiny_decoders.save(arch, tmp_path / arch)
    plan = plan_for(src, **options)
    with CheckpointReader(src) as reader:
        stored = [stored_bytes(plan, reader, i) is not None for i in range(len(plan.tensors))]
    assert [plan.without_arithmetic(t) for t in plan.tensors] == stored
    computed = [t for t, s in zip(plan.tensors, stored, strict=True) if not s]
    if not computed:  # every tensor copied or zero: one copy buffer, whatever the model's size
        assert plan.peak_bytes == CHUNK
    else:
        assert plan.peak_bytes >= max(t.nbytes for t in computed)
    assert any(stored) == (options.get("dtype") is None and "width_method" not in options)


def test_tensors_not_written_are_one_note_per_kind_not_per_layer():
    """An old GPT-2 checkpoint stores its causal mask (`attn.bias`, a non-persistent buffer) in every layer: one
    "not written" note per layer made hundreds of lines for a large model; a kind found once keeps its own name, and
    a name that is a pattern already (a multi-token-prediction layer, `model.layers.3.*`) is left as it is."""
    buffer = "non-persistent buffer; transformers recomputes it"
    dropped = [(f"transformer.h.{i}.attn.bias", buffer) for i in range(12)]
    dropped += [("lm_head.weight", "tied to transformer.wte.weight; written once"), ("model.layers.3.*", "MTP")]
    assert _not_written(dropped) == [
        f"not written: transformer.h.*.attn.bias, 12 tensors ({buffer})",
        "not written: lm_head.weight (tied to transformer.wte.weight; written once)",
        "not written: model.layers.3.* (MTP)",
    ]
