"""Headless checkpoints: the base model saved alone (`LlamaModel.save_pretrained`, as decoder-based
sentence-transformers models such as e5-mistral-7b-instruct are stored), its tensors without the `model.` prefix and
without a head. Every curated definition binds that form; growth writes it in the same naming with config.json's
`architectures` kept, and the base model class loads the output with the source's last hidden states.

Each source is a tiny random model's base model (`tiny_models`, norms and biases randomised), saved in several shards,
grown, loaded back with its headless class and compared; a negative control shows each comparison can fail.
"""

from __future__ import annotations

import json

import pytest
import tiny_decoders
import tiny_models
import tiny_moe
import torch
import transformers as tf

from grow_cli.arch.binding import bind
from grow_cli.arch.registry import all_definitions, detect
from grow_cli.arch.shape import read_shape
from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.growth.describe import inspect
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

EXACT = 1e-5
CURATED_CONFIGS = {
    **{name: tiny_models.CONFIGS[name] for name in ("llama", "mistral", "qwen2", "gpt2", "gpt_neox", "bert")},
    **tiny_decoders.CONFIGS,
    **{name: lambda name=name: tiny_moe.config(name) for name in tiny_moe.NAMES + tiny_moe.PREFIX_NAMES},
    **{name: lambda name=name: tiny_moe.config(name) for name in tiny_moe.LISTED_CONFIGS},
}


def _headless_tensors(config) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of the base model class (`AutoModel`) for `config`, built on the meta device."""
    with torch.device("meta"):
        model = tf.AutoModel.from_config(config)
    return {name: (tuple(t.shape), "F32") for name, t in model.state_dict().items()}


def test_the_configs_cover_every_curated_definition():
    types = {detect(config().to_dict()).name for config in CURATED_CONFIGS.values()}
    assert types == set(all_definitions())


@pytest.mark.parametrize("name", list(CURATED_CONFIGS))
def test_every_curated_definition_binds_the_base_model_saved_alone(name):
    """The tensors of transformers' base model class bind, every one claimed, as the headless form: no head."""
    config = CURATED_CONFIGS[name]()
    raw = json.loads(config.to_json_string())
    arch = detect(raw)
    tensors = _headless_tensors(config)
    binding = bind(arch, raw, read_shape(arch, raw), tensors)
    assert binding.headless and binding.prefix == ""
    bound = {t.name for t in binding.all_tensors()}
    assert bound <= set(tensors) and set(tensors) - bound == {n for n, _ in binding.dropped}


def _save_headless(name: str, folder, architectures: list[str] | None = None, **overrides):
    """The base model of `tiny_models`' model `name` (norms and biases randomised), saved alone in several shards;
    `architectures`: what config.json names instead of the base model class."""
    config = tiny_models.CONFIGS[name]()
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    full = tiny_models.MODEL_CLASSES[name](config)
    with torch.no_grad():
        for pname, param in full.named_parameters():
            if param.ndim == 1:
                gain = ("norm" in pname.lower() or "ln_" in pname) and pname.endswith("weight")
                param.copy_(float(gain) + 0.1 * torch.randn_like(param))
    full.base_model.save_pretrained(folder, max_shard_size="20KB")
    if architectures is not None:
        config_path = folder / "config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "architectures": architectures}))
    return folder


def _hidden(folder, edit=None) -> torch.Tensor:
    """The last hidden state of `folder` loaded with the class its config.json names (nothing missing or left
    over); `edit(model)` changes it first (a control)."""
    config = json.loads((folder / "config.json").read_text())
    model, info = getattr(tf, config["architectures"][0]).from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    if edit is not None:
        with torch.no_grad():
            edit(model)
    with torch.no_grad():
        return model.eval()(input_ids=tiny_models.probe_ids()).last_hidden_state


def _final_norm(model) -> torch.Tensor:
    return next(p for n, p in model.named_parameters() if n.startswith(("norm.", "final_layer_norm.")))


GROWTHS = {
    # LLaMA-Pro: new blocks' residual writers zeroed; the control stacks the layers instead (not exact)
    "identity": (GrowthSpec(layers=6, depth_method="identity"), GrowthSpec(layers=6, depth_method="stack")),
    # FPI: the hidden units tiled (unit j copies j mod d); no head, so nothing is folded into the final norm: the
    # control halves its gain, as the tied head's 1/C fold did to a headless checkpoint before
    "fpi": (GrowthSpec(width_method="fpi", width_factor=2), None),
    # staged's block-diagonal copies: its 1/k, folded into the norm before any head, has no head here either
    "staged": (GrowthSpec(width_method="staged", width_factor=2), None),
}


@pytest.mark.parametrize("name", ["llama", "llama_tied", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("method", list(GROWTHS))
def test_a_headless_decoder_grows_in_its_own_naming_and_keeps_its_hidden_states(tmp_path, name, method):
    src = _save_headless(name, tmp_path / "src")
    spec, control = GROWTHS[method]
    report = expand(str(src), tmp_path / "out", spec, verify=True, quiet=True)
    out = tmp_path / "out"
    assert report["function_preserving"] is True and report["verify"]["compared"] == "last_hidden_state"
    source_config = json.loads((src / "config.json").read_text())
    assert json.loads((out / "config.json").read_text())["architectures"] == source_config["architectures"]
    with CheckpointReader(out) as reader:
        written = set(reader.tensors)
    prefix = tiny_models.MODEL_CLASSES[name].base_model_prefix + "."
    assert not any(n.startswith(prefix) or n == "lm_head.weight" for n in written)
    assert json.loads((out / "grow.json").read_text())["model"]["headless"] is True
    assert "model = AutoModel.from_pretrained" in (out / "README.md").read_text()

    before, after = _hidden(src), _hidden(out)
    d = before.shape[-1]
    gap = (after[..., [j % d for j in range(after.shape[-1])]] - before.repeat(1, 1, after.shape[-1] // d)).abs().max()
    print(f"headless {name} {method}: max |Δ last hidden state| {gap.item():.3g}")
    assert gap < EXACT
    if control is not None:
        expand(str(src), tmp_path / "control", control, quiet=True)
        assert (_hidden(tmp_path / "control") - before).abs().max() > 1e-2
    else:
        halved = _hidden(out, lambda model: _final_norm(model).mul_(0.5))
        assert (halved[..., :d] - before).abs().max() > 1e-2


def test_inspect_claims_no_head_for_a_headless_checkpoint(tmp_path, cli):
    """A headless checkpoint whose config ties the embeddings has no head to tie: inspect says so (JSON and table),
    and counts the base model's parameters, which the headless class holds."""
    src = _save_headless("llama_tied", tmp_path / "src")
    info = inspect(str(src))
    assert info["headless"] is True and info["embeddings_tied"] is None and info["tie_word_embeddings"] is True
    assert info["num_parameters"] == sum(p.numel() for p in tf.LlamaModel.from_pretrained(src).parameters())
    assert info["not_read"] == [] and info["tied_copies"] == []
    table = " ".join(cli("inspect", src).stdout.replace("│", " ").split())
    assert "tied embeddings no output head (headless: the base model saved alone)" in table
    with_head = inspect(str(tiny_models.save_tiny("llama_tied", tmp_path / "with-head")))
    assert with_head["headless"] is False and with_head["embeddings_tied"] is True


def test_verify_of_a_headless_checkpoint_names_the_hidden_state_it_compares(tmp_path, cli, monkeypatch):
    """The report line and a failing check's refusal say what --verify compared: the last hidden state (they said
    'max |Δ|, mean KL n/a, top-1 agreement n/a' and 'max |Δlogit|')."""
    from grow_cli.errors import VerificationError
    from grow_cli.growth import verify

    src = _save_headless("llama", tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    shown = cli("expand", src, tmp_path / "out", "--width-factor", "2", "--verify")
    assert shown.code == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if "verify on" in line)
    assert "max |Δ last hidden state| " in line and "KL" not in line and "top-1" not in line
    result = {"max_abs_logit_diff": 0.5, "output_scale": 1.0, "compared": "last_hidden_state"}
    with pytest.raises(VerificationError, match=r"by max \|Δ last hidden state\| = 0\.5 \(tolerance"):
        verify.check(result, exact=True, dtype="F32", rounded=False)


def test_upcycling_a_headless_decoder_writes_the_moe_base_model(tmp_path):
    """--experts turns a headless Llama into a headless Mixtral: MixtralModel in config.json, its hidden states the
    source's (every expert a copy of the dense MLP)."""
    src = _save_headless("llama", tmp_path / "src")
    report = expand(str(src), tmp_path / "moe", GrowthSpec(experts=4), verify=True, quiet=True)
    assert report["function_preserving"] is True
    assert json.loads((tmp_path / "moe" / "config.json").read_text())["architectures"] == ["MixtralModel"]
    gap = (_hidden(tmp_path / "moe") - _hidden(src)).abs().max()
    print(f"headless llama upcycled: max |Δ last hidden state| {gap.item():.3g}")
    assert gap < EXACT


@pytest.mark.parametrize(
    ("name", "named", "headless"),
    [
        # stored as gte-Qwen2-7B-instruct is: no lm_head beside an untied embedding, whatever config.json names
        ("llama", ["LlamaForCausalLM"], True),
        # stored as the original GPT-2 is: no `transformer.` prefix, yet a GPT2LMHeadModel, its tied head the
        # embedding; width growth folds the head's 1/C into ln_f and keeps the logits
        ("gpt2", ["GPT2LMHeadModel"], False),
    ],
)
def test_a_tied_head_makes_config_json_decide_what_unprefixed_names_are(tmp_path, name, named, headless):
    src = _save_headless(name, tmp_path / "src", architectures=named)
    info = inspect(str(src))
    assert info["headless"] is headless and info["embeddings_tied"] is (None if headless else True)
    report = expand(str(src), tmp_path / "out", GrowthSpec(width_method="fpi", width_factor=2), verify=True, quiet=True)
    assert report["verify"]["passed"] is True
    assert ("compared" in report["verify"]) is headless  # the last hidden state, else the logits
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == named
