"""Staged training's operators (grow_cli/operators/staged.py): width `staged` (block-diagonal ×k) and depth
`staged-identity` (zero gains and biases, identity matrices), exact after a save → from_pretrained round trip on
every architecture they apply to, with the paper's layout checked tensor by tensor and negative controls that fail."""

from __future__ import annotations

import pytest
import tiny_moe
import torch
from behaviour import tensors
from safetensors.torch import load_file, save_file
from tiny_models import ALL, DECODERS, MODEL_CLASSES, probe_ids

from grow_cli.errors import OptionError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec
from grow_cli.operators import staged

EXACT = 1e-4


def logits(name, folder):
    model = MODEL_CLASSES[name].from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=probe_ids()).logits


def grow(tiny_checkpoints, tmp_path, name, **spec):
    src = tiny_checkpoints(name)
    out = tmp_path / f"{name}-grown"
    report = expand(str(src), out, GrowthSpec(shard_size="30KB", **spec), quiet=True)
    return report, float((logits(name, src) - logits(name, out)).abs().max()), src, out


@pytest.mark.parametrize("name", ALL)
def test_staged_width_is_exact_after_a_round_trip(tiny_checkpoints, tmp_path, name):
    report, gap, _, _ = grow(tiny_checkpoints, tmp_path, name, width_method="staged", width_factor=2)
    assert report["function_preserving"] is True and "block-diagonal ×2" in report["width"]["exactness"]
    assert gap < EXACT, gap


def test_staged_width_is_the_papers_layout(tiny_checkpoints, tmp_path):
    """GPT-2 as in allenai/staged-training: c_attn [q,q,k,k,v,v] block-diagonal, matrices [[W,0],[0,W]] undivided,
    embeddings [E, E], ln_f duplicated and halved."""
    _, _, src, out = grow(tiny_checkpoints, tmp_path, "gpt2", width_method="staged", width_factor=2)
    a, b = tensors(src), tensors(out)
    w, w2 = a["transformer.h.0.mlp.c_fc.weight"], b["transformer.h.0.mlp.c_fc.weight"]  # Conv1D: in × out
    n, m = w.shape
    assert torch.equal(w2[:n, :m], w) and torch.equal(w2[n:, m:], w)
    assert not w2[:n, m:].any() and not w2[n:, :m].any()
    qkv, qkv2 = a["transformer.h.0.attn.c_attn.weight"], b["transformer.h.0.attn.c_attn.weight"]
    for part in range(3):  # output order q, q, k, k, v, v; each part block-diagonal
        block = qkv[:, part * n : (part + 1) * n]
        grown = qkv2[:, 2 * part * n : 2 * (part + 1) * n]
        assert torch.equal(grown[:n, :n], block) and torch.equal(grown[n:, n:], block)
        assert not grown[:n, n:].any() and not grown[n:, :n].any()
    assert torch.equal(b["transformer.wte.weight"], torch.cat([a["transformer.wte.weight"]] * 2, dim=1))
    assert torch.equal(b["transformer.ln_f.weight"], torch.cat([a["transformer.ln_f.weight"]] * 2) / 2)
    assert torch.equal(b["transformer.ln_f.bias"], torch.cat([a["transformer.ln_f.bias"]] * 2) / 2)
    assert torch.equal(b["transformer.h.0.ln_1.bias"], torch.cat([a["transformer.h.0.ln_1.bias"]] * 2))


def test_staged_untied_head_is_copied_and_its_norm_halved(tiny_checkpoints, tmp_path):
    _, gap, src, out = grow(tiny_checkpoints, tmp_path, "llama", width_method="staged", width_factor=2)
    a, b = tensors(src), tensors(out)
    assert torch.equal(b["lm_head.weight"], torch.cat([a["lm_head.weight"]] * 2, dim=1))  # not divided
    assert torch.equal(b["model.norm.weight"], torch.cat([a["model.norm.weight"]] * 2) / 2)
    assert gap < EXACT


def test_negative_control_staged_without_the_head_norm_fold_breaks(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(staged.StagedWidth, "__init__", _init_without_fold)
    report, gap, _, _ = grow(tiny_checkpoints, tmp_path, "gpt2", width_method="staged", width_factor=2)
    assert report["function_preserving"] is True and gap > 100 * EXACT, gap


_real_init = staged.StagedWidth.__init__


def _init_without_fold(self, *args, **kwargs):
    _real_init(self, *args, **kwargs)
    self.head_folds = False  # the head then reads both copies undivided: logits double


def test_staged_needs_one_factor_for_every_space(tiny_checkpoints):
    with pytest.raises(OptionError, match="same factor.*hidden ×2 but intermediate_size ×3"):
        expand(
            str(tiny_checkpoints("llama")),
            None,
            GrowthSpec(width_method="staged", hidden_size=64, num_heads=8, num_kv_heads=4, intermediate_size=144),
            dry_run=True,
        )


@pytest.mark.parametrize("name", DECODERS)
def test_staged_identity_is_exact_and_initialised_as_the_paper_says(tiny_checkpoints, tmp_path, name):
    report, gap, src, out = grow(tiny_checkpoints, tmp_path, name, depth_method="staged-identity", layers=8)
    assert report["function_preserving"] is True and gap < EXACT, gap
    new_layers = report["depth"]["new_layers"]
    assert new_layers == [1, 3, 5, 7] and report["depth"]["layer_map"] == [0, 0, 1, 1, 2, 2, 3, 3]
    a, b = tensors(src), tensors(out)
    prefix = {"gpt2": "transformer.h.", "gpt_neox": "gpt_neox.layers."}.get(name, "model.layers.")
    seen = {"gain": 0, "bias": 0, "eye": 0}
    for key, value in b.items():
        if not key.startswith(prefix):
            continue
        j, rest = key[len(prefix) :].split(".", 1)
        if int(j) not in new_layers:
            assert torch.equal(value, a[f"{prefix}{int(j) // 2}.{rest}"]), key  # originals keep their weights
        elif value.ndim == 1:
            assert not value.any(), key  # every gain and bias zero
            seen["gain" if "norm" in rest or "ln_" in rest else "bias"] += 1
        else:
            assert value.sum() == min(value.shape) * (3 if "c_attn" in rest or "query_key_value" in rest else 1)
            assert set(value.unique().tolist()) <= {0.0, 1.0}, key
            seen["eye"] += 1
    assert seen["gain"] >= 8 and seen["eye"] >= 16


def grads_after_sgd(model, ids, prefixes: tuple[str, ...], steps: int = 3) -> dict[str, float]:
    """The largest |gradient| of each parameter named with one of `prefixes`, at the last of `steps` SGD steps on
    `ids` (a new layer's gradients after the rest of the model has moved); 0 for one autograd never reaches
    (DeepSeek-V3.2's indexer runs under no_grad in transformers)."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return {
        n: 0.0 if p.grad is None else float(p.grad.abs().max())
        for n, p in model.named_parameters()
        if n.startswith(prefixes)
    }


def test_staged_identity_leaves_a_swiglu_mlp_at_a_stationary_point(tiny_checkpoints, tmp_path):
    """Measured, and documented: in a new Llama layer the zero norm gain makes gate = up = 0, so every gradient of
    that MLP is exactly zero — also after steps have moved the rest — while its attention and GPT-2's biased GELU
    MLP do get gradients."""

    def new_layer_grads(name):
        _, _, _, out = grow(tiny_checkpoints, tmp_path / name, name, depth_method="staged-identity", layers=8)
        layer = "transformer.h.1." if name == "gpt2" else "model.layers.1."
        grads = grads_after_sgd(MODEL_CLASSES[name].from_pretrained(out, dtype=torch.float32), probe_ids(), (layer,))
        return {n[len(layer) :]: g for n, g in grads.items()}

    llama = new_layer_grads("llama")
    mlp = {n: g for n, g in llama.items() if n.startswith(("mlp.", "post_attention_layernorm"))}
    assert len(mlp) == 4 and all(g == 0.0 for g in mlp.values()), mlp
    assert llama["input_layernorm.weight"] > 0 and llama["self_attn.o_proj.weight"] > 0
    gpt2 = new_layer_grads("gpt2")
    assert gpt2["ln_2.weight"] > 0 and gpt2["mlp.c_fc.weight"] > 0 and gpt2["mlp.c_proj.weight"] > 0
    report = expand(
        str(tiny_checkpoints("llama")), None, GrowthSpec(depth_method="staged-identity", layers=8), dry_run=True
    )
    assert any("stationary point" in note for note in report["notes"])


@pytest.mark.parametrize("name", ["deepseek_v3", "deepseek_v32", "deepseek_v2", "glm4_moe_lite", "glm_moe_dsa"])
def test_staged_identity_is_refused_where_latent_norms_would_leave_new_layers_untrainable(tmp_path, monkeypatch, name):
    """Multi-head latent attention normalises its query and key-value latents: with those gains zeroed too, behind
    the zero pre-norm gain, no tensor of a new layer gets a gradient, ever — measured here on a growth the refusal is
    lifted for, with a negative control: the same layers with their latent gains at one do train."""
    src = tiny_moe.save(name, tmp_path / "src")
    with pytest.raises(OptionError, match="normalises latents .* so the new layers would never train"):
        expand(str(src), None, GrowthSpec(depth_method="staged-identity", layers=6), dry_run=True)

    monkeypatch.setattr(staged, "latent_norms", lambda arch: [])
    out = tmp_path / "out"
    expand(str(src), out, GrowthSpec(depth_method="staged-identity", layers=6), quiet=True)
    new = ("model.layers.1.", "model.layers.3.", "model.layers.5.")

    def new_layer_grads(folder):
        return grads_after_sgd(
            tiny_moe.model_class(name).from_pretrained(folder, dtype=torch.float32), tiny_moe.probe_ids(), new
        )

    grads = new_layer_grads(out)
    assert len(grads) >= 24 and not any(grads.values()), {n: g for n, g in grads.items() if g}
    latent = []
    for shard in out.glob("*.safetensors"):
        weights = load_file(shard)
        gains = [
            n for n in weights if n.startswith(new) and n.endswith(("q_a_layernorm.weight", "kv_a_layernorm.weight"))
        ]
        save_file({**weights, **{n: torch.ones_like(weights[n]) for n in gains}}, shard, metadata={"format": "pt"})
        latent += gains
    assert latent and new_layer_grads(out)["model.layers.1.input_layernorm.weight"] > 0


def test_staged_identity_is_refused_after_a_post_norm(tiny_checkpoints):
    with pytest.raises(OptionError, match="post-LayerNorm"):
        expand(str(tiny_checkpoints("bert")), None, GrowthSpec(depth_method="staged-identity", layers=8), dry_run=True)
