"""Depth growth on every architecture: outputs load with from_pretrained, identity blocks are exact, copies are
the intended source layers bit for bit, configs validate, and grown decoders generate with the KV cache."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import ALL, DECODERS, MODEL_CLASSES, probe_ids

from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.operators import depth as ops

METHODS = ["stack", "interleave", "interpolate", "identity", "dus"]


def _tensors(folder):
    """All tensors of a saved folder, by name (tiny models only)."""
    result = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                result[name] = f.get_tensor(name)
    return result


def _grow(src, out, method, verify=False, **kw):
    kw.setdefault("layers", None if method == "dus" else 6)
    if method == "dus":
        kw.setdefault("dus_overlap", 1)
    return expand(str(src), out, GrowthSpec(depth_method=method, shard_size="30KB", **kw), quiet=True, verify=verify)


# identity on post-LN BERT is refused (tests/test_refusals.py::test_identity_refused_for_post_ln).
CASES = [(name, method) for name in ALL for method in METHODS if (name, method) != ("bert", "identity")]


@pytest.mark.parametrize("name,method", CASES)
def test_depth_growth_loads_and_copies_intended_layers(tiny_checkpoints, tmp_path, name, method):
    src = tiny_checkpoints(name)
    report = _grow(src, tmp_path / "out", method)
    out = tmp_path / "out"
    layer_map = report["depth"]["layer_map"]
    assert len(layer_map) == 6
    assert len(report["files"]["shards"]) > 1  # the sharded writer path ran

    model = MODEL_CLASSES[name].from_pretrained(out).eval()
    assert model.config.num_hidden_layers == len(layer_map)
    if name in DECODERS:  # the KV cache works with the renumbered layers: cached == uncached generation
        ids = probe_ids()[:1, :4]
        with torch.no_grad():
            cached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
            uncached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)

    a, b = _tensors(src), _tensors(out)
    prefix_of = {
        "llama": "model.layers.",
        "llama_tied": "model.layers.",
        "mistral": "model.layers.",
        "qwen2": "model.layers.",
        "gpt2": "transformer.h.",
        "gpt_neox": "gpt_neox.layers.",
        "bert": "bert.encoder.layer.",
    }[name]
    zeroed = 0
    for out_name, tensor in b.items():
        if not out_name.startswith(prefix_of):
            assert torch.equal(tensor, a[out_name]), out_name  # embeddings and head untouched
            continue
        j, rest = out_name[len(prefix_of) :].split(".", 1)
        src_name = f"{prefix_of}{layer_map[int(j)]}.{rest}"
        new = int(j) in report["depth"]["new_layers"]
        if (
            method == "identity"
            and new
            and any(k in rest for k in ("o_proj", "down_proj", "c_proj", "attention.dense", "dense_4h_to_h"))
        ):
            assert not tensor.any(), out_name
            zeroed += 1
        else:
            assert torch.equal(tensor, a[src_name]), (out_name, src_name)
    if method == "identity":
        assert zeroed > 0


def test_repeated_layers_do_not_share_storage(tiny_checkpoints, tmp_path):
    _grow(tiny_checkpoints("llama"), tmp_path / "out", "stack", layers=8)
    model = MODEL_CLASSES["llama"].from_pretrained(tmp_path / "out")
    q0 = model.model.layers[0].self_attn.q_proj.weight
    q4 = model.model.layers[4].self_attn.q_proj.weight
    assert torch.equal(q0, q4)
    assert q0.data_ptr() != q4.data_ptr()
    with torch.no_grad():
        q0.add_(1.0)
    assert not torch.equal(q0, q4)


@pytest.mark.parametrize("name", DECODERS)
def test_identity_is_exact_and_generates(tiny_checkpoints, tmp_path, name):
    src = tiny_checkpoints(name)
    _grow(src, tmp_path / "out", "identity", layers=7)
    base = MODEL_CLASSES[name].from_pretrained(src).eval()
    grown = MODEL_CLASSES[name].from_pretrained(tmp_path / "out").eval()
    ids = probe_ids()
    with torch.no_grad():
        diff = (base(ids).logits - grown(ids).logits).abs().max().item()
    assert diff <= 1e-5
    with torch.no_grad():
        a = base.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
        b = grown.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["stack", "interleave", "interpolate", "dus"])
def test_copy_methods_are_not_function_preserving(tiny_checkpoints, tmp_path, method):
    """The negative control: copying layers changes the function, and the report says so."""
    src = tiny_checkpoints("llama")
    report = _grow(src, tmp_path / "out", method, verify=True)
    assert report["function_preserving"] is False
    assert report["verify"]["passed"] is None
    assert report["verify"]["max_abs_logit_diff"] > 1e-3


def test_qwen2_layer_types_follow_the_layer_map(tiny_copy, tmp_path):
    src = tiny_copy("qwen2")
    config = json.loads((src / "config.json").read_text())
    config["layer_types"] = ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    config["use_sliding_window"], config["sliding_window"], config["max_window_layers"] = True, 16, 2
    (src / "config.json").write_text(json.dumps(config))
    _grow(src, tmp_path / "out", "stack", layers=8)
    grown = json.loads((tmp_path / "out" / "config.json").read_text())
    assert grown["num_hidden_layers"] == 8
    assert grown["layer_types"] == config["layer_types"] * 2
    import transformers

    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "out")  # strict validation passes
    assert loaded.layer_types == grown["layer_types"]


def test_gpt2_layer_count_is_written_under_its_own_key(tiny_checkpoints, tmp_path):
    _grow(tiny_checkpoints("gpt2"), tmp_path / "out", "interleave", layers=8)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["n_layer"] == 8 and "num_hidden_layers" not in config


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_conversion(tiny_checkpoints, tmp_path, dtype, torch_dtype):
    src = tiny_checkpoints("llama")
    _grow(src, tmp_path / "out", "stack", dtype=dtype)
    tensors = _tensors(tmp_path / "out")
    assert {t.dtype for t in tensors.values()} == {torch_dtype}
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    assert torch.equal(tensors["model.norm.weight"], _tensors(src)["model.norm.weight"].to(torch_dtype))


@pytest.mark.parametrize("blocked", [False, True])
def test_dtype_fp16_refuses_a_weight_beyond_its_range(cli, tiny_copy, tmp_path, monkeypatch, blocked):
    """A bf16 weight of 1e6 became an infinity in float16 (exit 0; --verify blamed the exact method). A tensor cast a
    block of rows at a time (`Plan.row_blocks`) is named with the rows its count is of."""
    from grow_cli.growth import plan as planning

    if blocked:
        monkeypatch.setattr(planning, "BLOCK_BYTES", 14 * 4 * 32)  # 14 rows of the 32-wide head
    src = tiny_copy("llama")
    shard = next(p for p in sorted(src.glob("*.safetensors")) if "lm_head.weight" in safe_open(p, "pt").keys())
    with safe_open(shard, "pt") as f:
        state = {name: f.get_tensor(name) for name in f.keys()}
    state["lm_head.weight"][3, 5] = 1e6
    save_file(state, shard, metadata={"format": "pt"})
    result = cli("expand", str(src), str(tmp_path / "out"), "--layers", "6", "--dtype", "fp16")
    assert result.code != 0 and not (tmp_path / "out").exists()
    named = "lm_head.weight (rows 0:14 of 96)" if blocked else "lm_head.weight"
    assert result.stderr.startswith(f"error: tensor {named} holds 1 value beyond float16's range"), result.stderr
    assert "or use --dtype bf16" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_layer_maps_of_each_method():
    assert ops.stack(4, 10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert ops.interleave(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ops.interleave(4, 10) == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]  # remainder from the top
    assert ops.interpolate(3, 7) == [0, 0, 0, 1, 1, 2, 2]  # Apollo's example
    # LLaMA-Pro 32 → 40: one copy after layers 3, 7, …, 31
    pro = ops.identity(32, 40)
    copies = [j for j in range(1, 40) if pro[j] == pro[j - 1]]
    assert [pro[j] for j in copies] == list(range(3, 32, 4))
    # SOLAR: 32 layers, overlap 8 → 0..23 then 8..31
    assert ops.dus(32, 8) == list(range(24)) + list(range(8, 32))
    assert ops.target_layers(32, GrowthSpec(layers=48, depth_method="dus")) == (48, 8)


@pytest.mark.parametrize("layers, suggestion", [(41, 42), (61, 60), (31, 32), (30, 32)])
def test_a_dus_depth_it_cannot_make_suggests_the_nearest_it_can(layers, suggestion):
    """dus makes an even count above L up to 2L; the refusal names the nearest such count (it once said 46 for 41,
    and it once accepted L itself, a "growth" that added no layer)."""
    from grow_cli.errors import UsageError

    with pytest.raises(UsageError, match=f"between 32 and 60; try {suggestion}$"):
        ops.target_layers(30, GrowthSpec(layers=layers, depth_method="dus"))
    assert ops.target_layers(30, GrowthSpec(layers=suggestion, depth_method="dus"))[0] == suggestion


def _gpt2_scaled_by_layer_index(folder, flag=True):
    """A GPT-2 whose attention is scaled by 1/(layer index + 1) when `flag`; its weights scaled up to peak
    attention (at default init a moved layer's gap is ~1e-7)."""
    import transformers as tf

    config = tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    config.scale_attn_by_inverse_layer_idx = flag
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(8 if param.ndim >= 2 else 1)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case,method",
    [("flag", "identity"), ("flag", "staged-identity"), ("no-flag", "identity"), ("flag-unscaled", "identity")],
)
def test_identity_blocks_keep_attention_scaled_by_layer_index_exact(tmp_path, monkeypatch, case, method):
    """GPT-2's `scale_attn_by_inverse_layer_idx` divides each layer's attention scores by its index + 1, and
    identity blocks move the original layers up: the query of each moved layer is multiplied by
    (index + 1)/(source index + 1), so the growth stays exact (`--verify`, after a real save and load). Controls:
    without the flag nothing is scaled; with the scaling turned off the same growth misses by |Δlogit| > 1e-2 (it was
    once called exact so, then recorded as inexact)."""
    from grow_cli.errors import VerificationError
    from grow_cli.growth import plan as plan_module

    src = _gpt2_scaled_by_layer_index(tmp_path / "src", flag=case != "no-flag")
    if case == "flag-unscaled":
        monkeypatch.setattr(plan_module, "query_scale", lambda *args: 1.0)
        with pytest.raises(VerificationError, match="max \\|Δlogit\\| = .* although the method is exact"):
            _grow(src, tmp_path / "out", method, verify=True, layers=4)
        return
    report = _grow(src, tmp_path / "out", method, verify=True, layers=4)
    assert report["function_preserving"] is True and report["verify"]["passed"] is True
    assert report["verify"]["max_abs_logit_diff"] < 1e-4
    scaled = "the query of each layer placed at another index is multiplied"
    assert any(scaled in note for note in report["notes"]) is (case == "flag")
    # identity 2 → 4 layers: layer_map (0, 0, 1, 1); source layer 1 moved to index 2 gets 3/2 on its query only
    assert report["depth"]["layer_map"] == [0, 0, 1, 1]
    a, b = _tensors(src), _tensors(tmp_path / "out")
    factor = 1.5 if case == "flag" else 1.0
    q, kv = b["transformer.h.2.attn.c_attn.weight"][:, :32], b["transformer.h.2.attn.c_attn.weight"][:, 32:]
    assert torch.allclose(q, a["transformer.h.1.attn.c_attn.weight"][:, :32] * factor, rtol=1e-6, atol=0)
    assert torch.equal(kv, a["transformer.h.1.attn.c_attn.weight"][:, 32:])
    assert torch.equal(b["transformer.h.0.attn.c_attn.weight"], a["transformer.h.0.attn.c_attn.weight"])
    if case == "flag" and method == "identity":
        _check_its_training_state_is_not_grown(src)


def _check_its_training_state_is_not_grown(src):
    """Such a growth cannot continue the source's AdamW state: refused before any moment is read."""
    from grow_cli.checkpoint.model_config import load_config
    from grow_cli.checkpoint.reader import CheckpointReader
    from grow_cli.errors import OptionError
    from grow_cli.growth.grown_state import plan_state
    from grow_cli.growth.plan import build_plan

    spec = GrowthSpec(depth_method="identity", layers=4)
    with CheckpointReader(src) as reader:
        plan = build_plan(load_config(src), reader.tensor_infos(), spec, uniform_maps=True)
    with pytest.raises(OptionError, match="multiplies the query.*scale_attn_by_inverse_layer_idx.*--weights-only"):
        plan_state(plan, None, spec)  # refused before the source state is read


def test_verify_probes_a_model_with_few_positions_within_them(tmp_path):
    """The probe was 64 tokens whatever the model: a GPT-2 of 16 learned positions failed `--verify` as a source
    that 'does not run in transformers' (found by an audit). It now probes no more positions than the source has."""
    import transformers as tf

    torch.manual_seed(0)
    tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=16)).save_pretrained(
        tmp_path / "src"
    )
    report = _grow(tmp_path / "src", tmp_path / "out", "identity", verify=True, layers=4)
    assert report["verify"]["passed"] is True and report["verify"]["tokens"] == 16  # 2 rows of 8
