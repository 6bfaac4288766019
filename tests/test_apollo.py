"""Apollo's pieces (`grow_cli.train.apollo_plan`, `grow_cli.train.apollo`): LVPS follows the released code's
distribution, the shared view runs the same module objects (so each receives the summed gradient of its positions)
and computes exactly what the model grown by `grow expand --depth-method interpolate` computes, on every supported
architecture, with gradient checkpointing and with the KV cache intact afterwards; stage growth copies in place."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import MODEL_CLASSES, build_tiny, probe_ids

from grow_cli.errors import ArchitectureError, UsageError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.train.apollo import Apollo, allocate
from grow_cli.train.apollo_plan import (
    END,
    X_MIN,
    ApolloPlan,
    check_apollo_run,
    lvps_depth,
    parse_stages,
    plan_apollo,
    sample_depth,
)
from grow_cli.train.build import checkpoint_activations

torch.set_num_threads(1)
ARCHS = ["llama", "qwen2", "mistral", "gpt2", "gpt_neox", "bert", "qwen3", "opt"]
# Beyond tests/tiny_models.py: Qwen3 with one kind of layer (no sliding ones), and OPT, which grow has no curated
# definition of (its definition is derived from transformers' model class, arch/derive.py).
EXTRA = {
    "qwen3": lambda: tf.Qwen3ForCausalLM(
        tf.Qwen3Config(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=128,
        )
    ),
    "opt": lambda: tf.OPTForCausalLM(
        tf.OPTConfig(
            vocab_size=96,
            hidden_size=32,
            ffn_dim=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            word_embed_proj_dim=32,
            max_position_embeddings=128,
        )
    ),
}


def tiny_folder(name: str, tiny_checkpoints, tmp_path):
    """A saved tiny checkpoint of `name` and its model class."""
    if name not in EXTRA:
        return tiny_checkpoints(name), MODEL_CLASSES[name]
    torch.manual_seed(0)
    model = EXTRA[name]()
    model.save_pretrained(tmp_path / name)
    return tmp_path / name, type(model)


def lvps_pmf(unique: int, target: int) -> dict[int, float]:
    """The exact distribution of the released code's LVPS depth: y = m/(x+n) falls in x, so
    P(L ≥ k) = P(x ≤ m·N/k − n) for N < k ≤ L_max, with x ~ U(X_MIN, 1); y < 1 is clipped to depth N."""
    ratio = target / unique
    begin = ratio + 0.4
    n = (begin * X_MIN - END) / (END - begin)
    m = END * (n + 1)

    def at_least(k: int) -> float:
        if k == unique:
            return 1.0
        return min(max((m * unique / k - n - X_MIN) / (1 - X_MIN), 0.0), 1.0)

    return {k: at_least(k) - (at_least(k + 1) if k < target else 0.0) for k in range(unique, target + 1)}


def test_lvps_samples_follow_the_reference_distribution():
    rng = np.random.default_rng(1234)
    for unique, target in [(1, 12), (3, 12), (6, 12), (2, 8)]:
        draws = np.array([sample_depth(unique, target, "lvps", rng) for _ in range(20_000)])
        pmf = lvps_pmf(unique, target)
        assert set(np.unique(draws)) <= set(pmf)
        observed = np.array([(draws == k).sum() for k in pmf])
        expected = np.array(list(pmf.values())) * len(draws)
        keep = expected >= 5  # the chi-square approximation needs populated cells
        chi2 = (((observed - expected) ** 2 / expected)[keep]).sum()
        dof = keep.sum() - 1
        assert chi2 < dof + 4 * math.sqrt(2 * dof), (unique, target, chi2, dof)  # far from any plausible draw
    # The table of operators.md §2.6 (simulated from the released code, L_max = 12): P(L = N) and E[L].
    for unique, p_first, mean in [(1, 0.73, 1.77), (3, 0.64, 4.23), (6, 0.65, 7.13)]:
        pmf = lvps_pmf(unique, 12)
        assert pmf[unique] == pytest.approx(p_first, abs=0.01)
        assert sum(k * p for k, p in pmf.items()) == pytest.approx(mean, abs=0.02)


def test_lvps_formula_edges_and_uniform():
    assert lvps_depth(3, 12, X_MIN) == 12  # the hyperbola starts above the clip: the target
    assert lvps_depth(3, 12, 0.999999) == 3  # ... and ends below 1: the unique depth
    assert lvps_depth(11, 15, X_MIN) == 15  # the released code's float ⌊(15/11)·11⌋ gives 14 here
    rng = np.random.default_rng(0)
    draws = [sample_depth(2, 5, "uniform", rng) for _ in range(4000)]
    assert sorted(set(draws)) == [2, 3, 4, 5] and abs(draws.count(5) / 4000 - 0.25) < 0.03
    assert sample_depth(4, 4, "lvps", rng) == 4  # the last stage of a plan that reaches its target


def test_stage_plans_parse_and_bad_ones_are_refused():
    assert parse_stages("3,6@200,12@500") == ((3, 0), (6, 200), (12, 500))
    assert parse_stages("3@0, 6@10") == ((3, 0), (6, 10))
    for bad, message in [
        ("3,6", "LAYERS@STEP"),
        ("3,6@x", "LAYERS@STEP"),
        ("3@5,6@10", "starts at step 0"),
        ("3,2@10", "must grow"),
        ("3,6@10,8@10", "must grow"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_stages(bad)


def _plan(name: str, **settings):
    config = SimpleNamespace(
        **{"apollo_target_layers": None, "apollo_stages": None, "apollo_sampling": "lvps", **settings}
    )
    return plan_apollo(config, MODEL_CLASSES[name].config_class.from_dict(build_tiny(name).config.to_dict()))


def test_plans_that_do_not_fit_the_model_are_refused():
    assert _plan("llama") is None
    assert _plan("llama", apollo_target_layers=8) == ApolloPlan(8, ((4, 0),), "lvps")
    assert _plan("llama", apollo_stages="4,8@5").target == 8
    for settings, message in [
        ({"apollo_target_layers": 3}, "not deeper than the model's 4 layers"),
        ({"apollo_target_layers": 4}, "not deeper than the model's 4 layers"),
        ({"apollo_stages": "2,8@5"}, "starts with 2 unique layers but the model has 4"),
        ({"apollo_stages": "1,8@5"}, "starts with 1 unique layer but the model has 4"),  # (was "1 unique layers")
        ({"apollo_stages": "4,16@5", "apollo_target_layers": 8}, "past --apollo-target-layers 8"),
        # One stage and no target: the refusal named --apollo-target-layers 4, an option the user never gave.
        ({"apollo_stages": "4"}, r"--apollo-stages '4' never grows past the model's 4 layers; add a stage"),
    ]:
        with pytest.raises(UsageError, match=message):
            _plan("llama", **settings)
    encoder = tf.DistilBertConfig(n_layers=2)  # no curated definition, and grow derives them for decoders only
    with pytest.raises(ArchitectureError, match="Apollo needs grow's definition of the model's layer block"):
        plan_apollo(SimpleNamespace(apollo_target_layers=4, apollo_stages=None, apollo_sampling="lvps"), encoder)
    mixed = tf.Qwen2Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=16,
        max_window_layers=2,
    )
    with pytest.raises(UsageError, match="layers differ by layer_types"):
        plan_apollo(SimpleNamespace(apollo_target_layers=8, apollo_stages=None, apollo_sampling="lvps"), mixed)


def test_sharded_training_and_unreachable_boundaries_are_refused():
    plan = ApolloPlan(8, ((2, 0), (4, 10)), "lvps")
    check_apollo_run(plan, "MULTI_GPU", 11)
    for kind in ("FSDP", "DEEPSPEED"):
        with pytest.raises(UsageError, match=f"not under {kind}, which shards each layer"):
            check_apollo_run(plan, kind, 100)
    with pytest.raises(UsageError, match="starts a stage at step 10, but the run has only 10 steps"):
        check_apollo_run(plan, "NO", 10)


def _apollo(model, target: int) -> Apollo:
    layers = model.config.get_text_config().num_hidden_layers
    return Apollo(ApolloPlan(target, ((layers, 0),), "lvps"), model, seed=0)


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits if hasattr(model.config, "use_cache") else model(ids).logits


@pytest.mark.parametrize("name", ARCHS)
def test_the_shared_view_is_the_interpolated_model_and_sums_gradients(tiny_checkpoints, tmp_path, name):
    """At depth L the shared model computes what `grow expand --depth-method interpolate --layers L` computes (after
    a save → from_pretrained round trip), and each unique layer's gradient is the sum of the gradients of its copies
    in the expanded model; the view holds the same module objects and leaves the model as it found it."""
    (src, cls), depth = tiny_folder(name, tiny_checkpoints, tmp_path), 7
    grown = tmp_path / "grown"
    expand(str(src), grown, GrowthSpec(layers=depth, depth_method="interpolate"), quiet=True)
    small = cls.from_pretrained(src, dtype=torch.float64).eval()
    big = cls.from_pretrained(grown, dtype=torch.float64).eval()
    apollo = _apollo(small, target=8)
    ids = probe_ids()
    layers = apollo.layers
    with apollo.view(depth):
        shared = apollo.layers
        assert len(shared) == depth and all(shared[j] is layers[j * 4 // depth] for j in range(depth))
        out_small = _logits(small, ids)
        out_small.pow(2).mean().backward()
    assert apollo.layers is layers and small.config.num_hidden_layers == 4  # restored
    out_big = _logits(big, ids)
    out_big.pow(2).mean().backward()
    torch.testing.assert_close(out_small, out_big, rtol=0, atol=1e-10)

    big_layers = Apollo(ApolloPlan(8, ((depth, 0),), "lvps"), big, 0).layers
    for u in range(4):
        copies = [j for j in range(depth) if j * 4 // depth == u]
        for (pname, p), *twins in zip(
            layers[u].named_parameters(), *(big_layers[j].named_parameters() for j in copies), strict=True
        ):
            summed = sum(t.grad for _, t in twins)
            torch.testing.assert_close(p.grad, summed, rtol=1e-9, atol=1e-12, msg=f"{name} layer {u} {pname}")
    # Negative control: the unique layers at their own depth are not the interpolated model.
    with torch.no_grad():
        assert (_logits(small, ids) - out_big).abs().max() > 1e-3


def test_the_view_restores_the_model_when_the_forward_fails():
    model = build_tiny("qwen2").double()
    apollo = _apollo(model, 8)
    layers, types = apollo.layers, list(model.config.layer_types)
    with pytest.raises(RuntimeError), apollo.view(6):
        assert len(model.config.layer_types) == 6
        raise RuntimeError("boom")
    assert apollo.layers is layers and model.config.layer_types == types and model.config.num_hidden_layers == 4


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name):
    ids = probe_ids()
    grads = []
    for checkpointing in (False, True):
        model = build_tiny(name).double().train()
        for module in model.modules():
            if hasattr(module, "p") and isinstance(module.p, float):  # dropout off: the comparison is exact
                module.p = 0.0
        if checkpointing:
            checkpoint_activations(model)
        apollo = _apollo(model, 8)
        with apollo.view(6):
            _logits(model, ids).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in apollo.layers.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_activation_checkpointing_is_turned_on_without_a_deprecation_warning():
    """transformers after 5.17 renamed `gradient_checkpointing_enable`; grow's call of the old name printed its
    FutureWarning on every --gradient-checkpointing run, --quiet or not."""
    model = build_tiny("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        checkpoint_activations(model)
    assert model.is_gradient_checkpointing


def test_the_kv_cache_works_after_shared_training_steps():
    model = build_tiny("llama")
    apollo = _apollo(model, 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for depth in (5, 8, 4):
        with apollo.view(depth):
            model(input_ids=probe_ids(), labels=probe_ids(), use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    ids = probe_ids()[:1, :4]
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_lists_of_layer_indices_follow_the_allocated_and_written_layers():
    """An all-attention LFM2 names its attention layers by index (`full_attn_idxs`, beside the `layer_types` it
    builds): allocating a stage's layers and writing the unique ones map the list as depth growth does (left as it
    was, the written config.json listed 4 layers of 8)."""
    if "lfm2" not in tf.CONFIG_MAPPING:
        pytest.skip("this transformers has no LFM2")
    config = tf.Lfm2Config(
        vocab_size=96,
        num_hidden_layers=4,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        full_attn_idxs=[0, 1, 2, 3],
        pad_token_id=0,
    )
    plan = ApolloPlan(12, ((4, 0), (8, 3)), "lvps")
    model = allocate(plan, tf.Lfm2ForCausalLM(config))
    assert model.config.full_attn_idxs == list(range(8)), model.config.full_attn_idxs
    assert model.config.layer_types == ["full_attention"] * 8
    Apollo(plan, model, seed=0).written_state(model.state_dict())  # 4 unique layers in use at step 0
    assert model.config.full_attn_idxs == [0, 1, 2, 3] and model.config.num_hidden_layers == 4


def test_stage_growth_copies_layers_in_place_from_the_top_down():
    small = build_tiny("llama").double()
    plan = ApolloPlan(12, ((4, 0), (6, 3), (12, 5)), "lvps")
    model = allocate(plan, small)
    assert model.config.num_hidden_layers == 12 and type(model) is type(small)
    for name, tensor in small.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    apollo = Apollo(plan, model, seed=0)
    before = [dict(layer.state_dict()) for layer in apollo.layers]
    before = [{k: v.clone() for k, v in d.items()} for d in before]
    assert apollo.start_step(1) is None and apollo.start_step(2) is None and apollo.unique == 4
    assert "4 → 6 unique layers" in apollo.start_step(3) and apollo.unique == 6
    for j in range(6):  # layer j now holds old layer ⌊4j/6⌋ = 0, 0, 1, 2, 2, 3
        for key, value in apollo.layers[j].state_dict().items():
            torch.testing.assert_close(value, before[j * 4 // 6][key], rtol=0, atol=0)
    assert apollo.layers[0].self_attn.q_proj.weight is not apollo.layers[1].self_attn.q_proj.weight
    assert [layer.self_attn.layer_idx for layer in apollo.layers] == list(range(12))  # cache slots stay distinct
    apollo.start_step(5)
    assert apollo.unique == 12
    # The written model: the unique layers only, with a config that says so.
    small_again = allocate(ApolloPlan(12, ((4, 0), (6, 3), (12, 5)), "lvps"), build_tiny("llama").double())
    partial = Apollo(plan, small_again, seed=0)
    partial.start_step(3)
    kept = partial.written_state(small_again.state_dict())
    assert small_again.config.num_hidden_layers == 6
    assert not any(k.startswith("model.layers.6.") for k in kept) and "model.layers.5.mlp.up_proj.weight" in kept


def test_depths_are_a_pure_function_of_seed_step_and_micro_batch():
    model = allocate(ApolloPlan(12, ((4, 0), (8, 10)), "lvps"), build_tiny("llama"))
    a, b = Apollo(ApolloPlan(12, ((4, 0), (8, 10)), "lvps"), model, 3), None
    b = Apollo(ApolloPlan(12, ((4, 0), (8, 10)), "lvps"), model, 3)
    draws = [a.depth(step, micro) for step in range(20) for micro in range(2)]
    assert draws == [b.depth(step, micro) for step in range(20) for micro in range(2)]
    assert min(draws[:20]) >= 4 and min(draws[20:]) >= 8 and max(draws) <= 12
    c = Apollo(ApolloPlan(12, ((4, 0), (8, 10)), "lvps"), model, 4)
    assert draws != [c.depth(step, micro) for step in range(20) for micro in range(2)]
