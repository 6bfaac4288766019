"""Sentence-transformers modules with weights of their own (a `2_Dense/`) through growth: depth copies them, width
widens a Dense's input axis as the output head's, and a module grow cannot grow refuses width growth up front.

Each model is a tiny BERT, GPT-2 or Llama built from a config, with Pooling, Dense and Normalize modules, saved by
sentence-transformers itself (the transformer re-saved in several shards: headless, as sentence-transformers saves
it, or with its head); every check loads the output with `SentenceTransformer` and compares embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import tiny_models
import torch
from fake_hub import fake_hub_fixture  # noqa: F401 (fixture)
from tinylm import run_grow

from grow_cli.errors import OptionError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

st = pytest.importorskip("sentence_transformers")
SENTENCES = ["w1 w2 w3 w4 w5", "w6 w7", "w8 w9 w10 w11 w12 w13 w14 w15", "w3 w1 w4 w1 w5 w9"]
WORDS = [f"w{i}" for i in range(60)]  # the tokenizer's vocabulary, after its 5 special tokens


def _save_st(
    folder, kind: str, model_class, pooling, dense_sizes: list[int], normalize: bool = True, named: str | None = None
):
    """A tiny sentence-transformer: a `kind` transformer saved as `model_class` (tiny_models' config, random norms
    and biases), Pooling of `pooling` mode(s), a Tanh Dense per size in `dense_sizes` (each reading the previous), and
    Normalize unless not `normalize`; `named`: the class config.json's `architectures` names instead."""
    import transformers as tf
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    torch.manual_seed(0)
    model = model_class(tiny_models.CONFIGS[kind]())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                gain = ("norm" in name.lower() or "ln_" in name) and name.endswith("weight")
                param.copy_(float(gain) + 0.1 * torch.randn_like(param))
    base = folder.parent / f"{folder.name}-base"
    model.save_pretrained(base)
    (base / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "bert" else [])
    tf.BertTokenizerFast(vocab_file=str(base / "vocab.txt"), model_input_names=inputs).save_pretrained(base)
    hidden = model.config.hidden_size
    modules = [Transformer(str(base)), Pooling(hidden, pooling)]
    width = hidden * (len(pooling) if isinstance(pooling, list) else 1)
    for size in dense_sizes:
        modules.append(Dense(width, size))
        width = size
    SentenceTransformer(modules=[*modules, *([Normalize()] if normalize else [])], device="cpu").save(str(folder))
    (folder / "model.safetensors").unlink()  # the transformer again, in several shards
    model.save_pretrained(folder, max_shard_size="20KB")
    shutil.rmtree(base)
    if named is not None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": [named]}))
    return folder


@pytest.fixture(scope="module")
def st_source(tmp_path_factory):
    """`st_source(name)` → a tiny sentence-transformer folder (read-only use), built once per module."""
    built = {}
    import transformers as tf

    kinds = {
        "bert-mean": ("bert", tf.BertModel, "mean", [16]),
        "bert-mean-max": ("bert", tf.BertModel, ["mean", "max"], [24, 16]),  # 2 × 32 pooled units; Dense after Dense
        "gpt2-mean": ("gpt2", tf.GPT2Model, "mean", [16]),
        "gpt2-lm-mean": ("gpt2", tf.GPT2LMHeadModel, "mean", [16]),  # its head tied: width folds into ln_f
        "llama-mean": ("llama", tf.LlamaForCausalLM, "mean", [16]),  # RMSNorm: G_zero (`zero`) is exact
        "llama-headless-mean": ("llama", tf.LlamaModel, "mean", [16]),  # as e5-mistral-7b-instruct is stored
        # Pooling alone after a transformer saved over a tied-head LM: `model.`-prefixed, or unprefixed with
        # config.json naming the LM (a head class, so grow reads a tied head, as for the original GPT-2)
        "llama-tied-lm-pooled": ("llama_tied", tf.LlamaForCausalLM, "mean", [], False),
        "llama-tied-named-lm-pooled": ("llama_tied", tf.LlamaModel, "mean", [], False, "LlamaForCausalLM"),
    }

    def get(name: str):
        if name not in built:
            built[name] = _save_st(tmp_path_factory.mktemp("st") / name, *kinds[name])
        return built[name]

    return get


def _st_model(folder):
    """`folder` loaded by sentence-transformers, on the CPU."""
    from sentence_transformers import SentenceTransformer

    logging.disable(logging.WARNING)
    try:
        return SentenceTransformer(str(folder), device="cpu")
    finally:
        logging.disable(logging.NOTSET)


def _encode(folder, edit: Callable[[torch.Tensor], Any] | None = None) -> torch.Tensor:
    """The normalised embeddings of SENTENCES; `edit` changes the first Dense's weight (out × in) in place first
    (a control)."""
    model = _st_model(folder)
    if edit is not None:
        dense = next(m for m in model if type(m).__name__ == "Dense")
        with torch.no_grad():
            edit(dense.linear.weight)
    return model.encode(SENTENCES, convert_to_tensor=True)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("source", "method", "wrong_scale"),
    [
        # BERT's encoder output is the last post-LN state: the Dense's input axis is divided (IN); the control
        # gathers without dividing.
        ("bert-mean", "fpi", 2.0),
        ("bert-mean", "staged", 2.0),
        # mean+max pooling: two blocks of hidden units, each widened; the second Dense (24 → 16) is copied
        ("bert-mean-max", "hypercloning", 2.0),
        # GPT2LMHeadModel, its head tied, and GPT2Model, headless: either way sentence-transformers reads the last
        # hidden state, so ln_f takes no fold (the tied head's 1/C, staged's 1/k) and the Dense's input axis is
        # divided as an untied head's; the control leaves it undivided.
        ("gpt2-lm-mean", "fpi", 2.0),
        ("gpt2-lm-mean", "staged", 2.0),
        ("gpt2-mean", "fpi", 2.0),
        ("llama-headless-mean", "fpi", 2.0),
        # G_zero on RMSNorm: the new hidden units are zero, so the Dense keeps the source's columns where it reads
        # the old units (its new columns read zeros); the control divides them as FPI would.
        ("llama-mean", "zero", 0.5),
    ],
)
def test_width_growth_widens_a_dense_and_keeps_the_embeddings(st_source, tmp_path, source, method, wrong_scale):
    src = st_source(source)
    spec = GrowthSpec(width_method=method, width_factor=2, noise_snr_db=10 if method == "hypercloning" else None)
    report = expand(str(src), tmp_path / "wide", spec, quiet=True)
    out = tmp_path / "wide"
    assert report["function_preserving"] is True
    dense = json.loads((src / "2_Dense" / "config.json").read_text())
    assert json.loads((out / "2_Dense" / "config.json").read_text())["in_features"] == 2 * dense["in_features"]
    assert "2_Dense/model.safetensors" in report["files"]["modules"]
    assert any(
        n.startswith("sentence-transformers module 2_Dense/ (Dense): input axis widened") for n in report["notes"]
    )
    before, after = _encode(src), _encode(out)
    gap = (after - before).abs().max().item()
    print(f"{source} {method} ×2: max |Δ embedding| {gap:.3g}")
    assert gap < 1e-5
    control = (_encode(out, lambda w: w.mul_(wrong_scale)) - before).abs().max().item()
    assert control > 1e-2, control  # the other rule for the Dense's input axis changes the embeddings
    if source == "bert-mean-max":  # the second Dense reads the first's 24 units, which width growth keeps
        assert _sha(out / "3_Dense" / "model.safetensors") == _sha(src / "3_Dense" / "model.safetensors")


@pytest.mark.parametrize("method", ["fpi", "staged"])
@pytest.mark.parametrize("source", ["llama-tied-lm-pooled", "llama-tied-named-lm-pooled"])
def test_width_growth_keeps_the_hidden_state_of_a_transformer_saved_with_a_tied_head(
    st_source, tmp_path, source, method
):
    """sentence-transformers loads the transformer as its base model (AutoModel), whatever config.json names: a
    transformer saved over a tied-head LM is used for its last hidden state too. Width growth keeps that state, so
    with Pooling alone after it (no Dense to undo a fold, no Normalize to hide one) the grown embeddings are the
    source's, unit j copying unit j mod d; --verify compares the hidden states, and the report says the tied head's
    logits now scale. It folded the head's 1/C into the final norm: every embedding was halved, while --verify
    compared the LM's logits and passed."""
    src = st_source(source)
    spec = GrowthSpec(width_method=method, width_factor=2)
    report = expand(str(src), tmp_path / "wide", spec, verify=True, quiet=True)
    out = tmp_path / "wide"
    assert report["verify"]["passed"] is True and report["verify"]["compared"] == "last_hidden_state"
    assert any("the tied head's logits scale ×2" in note for note in report["notes"]), report["notes"]
    before = _encode(src).repeat(1, 2)
    gap = (_encode(out) - before).abs().max().item()
    print(f"{source} {method} ×2, Pooling alone: max |Δ embedding| {gap:.3g}")
    assert gap < 1e-5
    grown = _st_model(out)
    with torch.no_grad():
        grown[0].auto_model.norm.weight.mul_(0.5)  # the control: the head's 1/C folded into the norm, as before
    assert (grown.encode(SENTENCES, convert_to_tensor=True) - before).abs().max().item() > 1e-2
    assert "model = SentenceTransformer(" in (out / "README.md").read_text()
    width = json.loads((out / "grow.json").read_text())["stages"][-1]["width"]
    assert width["tied_head"].startswith("kept tied, nothing folded: the last hidden state is kept")


def test_zero_on_layernorm_is_not_exact_but_the_dense_reads_zero_new_units(st_source, tmp_path):
    """G_zero claims no function preservation on LayerNorm with the hidden size grown (the mean over d' units shifts
    every old unit); what it claims is that the new hidden units are zero: so the Dense's new columns (random, to let
    gradients in) read nothing, and replacing them changes no embedding, where replacing its old ones does. Its old
    columns are the source's."""
    from safetensors.torch import load_file

    src = st_source("bert-mean")
    report = expand(str(src), tmp_path / "wide", GrowthSpec(width_method="zero", width_factor=2), quiet=True)
    out, d = tmp_path / "wide", json.loads((src / "config.json").read_text())["hidden_size"]
    assert report["function_preserving"] is False
    weight_OI = load_file(str(out / "2_Dense" / "model.safetensors"))["linear.weight"]
    assert torch.equal(weight_OI[:, :d], load_file(str(src / "2_Dense" / "model.safetensors"))["linear.weight"])
    grown = _encode(out)
    assert (_encode(out, lambda w: w[:, d:].normal_()) - grown).abs().max().item() < 1e-6
    assert (_encode(out, lambda w: w[:, :d].normal_()) - grown).abs().max().item() > 1e-2  # the control


def test_aki_widens_a_dense_by_fpis_rule_for_a_head(st_source, tmp_path):
    """AKI is not function-preserving by design (a layer's new units take the next layer's weights); for a reader of
    the last hidden state, which has no next layer, it claims FPI's rule for an output head. So AKI's Dense, put in
    place of the Dense of FPI's growth of the same source (the same maps), gives the source's embeddings; the same
    Dense gathered without FPI's division does not."""
    src = st_source("bert-mean-max")
    aki = expand(str(src), tmp_path / "aki", GrowthSpec(width_method="aki", width_factor=2), quiet=True)
    fpi = expand(str(src), tmp_path / "fpi", GrowthSpec(width_method="fpi", width_factor=2), quiet=True)
    assert aki["function_preserving"] is False and fpi["function_preserving"] is True
    assert "sentence-transformers module 2_Dense/ (Dense): input axis widened" in " ".join(aki["notes"])
    shutil.copyfile(
        tmp_path / "aki" / "2_Dense" / "model.safetensors", tmp_path / "fpi" / "2_Dense" / "model.safetensors"
    )
    before = _encode(src)
    gap = (_encode(tmp_path / "fpi") - before).abs().max().item()
    print(f"AKI's Dense over FPI's growth: max |Δ embedding| {gap:.3g}")
    assert gap < 1e-5
    assert (_encode(tmp_path / "fpi", lambda w: w.mul_(2.0)) - before).abs().max().item() > 1e-2


def _one_file(src, dest):
    """A copy of `src` whose transformer is one `model.safetensors`: the name each Dense's weights file has too."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    index = dest / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    tensors = {name: t for shard in shards for name, t in load_file(str(dest / shard)).items()}
    for shard in [index.name, *shards]:
        (dest / shard).unlink()
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize(
    "spec",
    [GrowthSpec(layers=6, depth_method="stack"), GrowthSpec(width_method="fpi", width_factor=2)],
    ids=["depth", "width"],
)
def test_grow_json_hashes_each_modules_weights_under_its_path(st_source, tmp_path, spec):
    """Three source files named model.safetensors, the transformer's and two Dense modules': grow.json records each,
    a module's under its path in the source folder, the transformer's under its name as before."""
    src = _one_file(st_source("bert-mean-max"), tmp_path / "one-file")
    expand(str(src), tmp_path / "out", spec, quiet=True)
    recorded = json.loads((tmp_path / "out" / "grow.json").read_text())["stages"][-1]["source"]["files"]
    names = ["model.safetensors", "config.json", "2_Dense/model.safetensors", "3_Dense/model.safetensors"]
    assert recorded == {name: {"sha256": _sha(src / name), "size": (src / name).stat().st_size} for name in names}


def test_dtype_writes_the_dense_modules_in_it_too(st_source, tmp_path):
    """--dtype bf16 converts the Dense modules with the transformer, widened (2_Dense) or not (3_Dense), in width and
    in depth growth: each tensor the value the growth in float32 writes, in bfloat16 — what sentence-transformers
    casts it to when it loads a float32 Dense beside a bfloat16 transformer. --dtype fp32, their dtype already,
    leaves a Dense the growth does not widen byte for byte."""
    from safetensors.torch import load_file

    src = st_source("bert-mean-max")
    growths = {"wide": {"width_method": "fpi", "width_factor": 2}, "deep": {"layers": 6, "depth_method": "stack"}}
    for name, options in growths.items():
        kept = expand(str(src), tmp_path / f"{name}-fp32", GrowthSpec(**options, dtype="fp32"), quiet=True)
        cast = expand(str(src), tmp_path / f"{name}-bf16", GrowthSpec(**options, dtype="bf16"), quiet=True)
        for dense in ("2_Dense", "3_Dense"):
            reference = load_file(str(tmp_path / f"{name}-fp32" / dense / "model.safetensors"))
            written = load_file(str(tmp_path / f"{name}-bf16" / dense / "model.safetensors"))
            assert written.keys() == reference.keys() and {t.dtype for t in written.values()} == {torch.bfloat16}
            assert all(torch.equal(written[k], reference[k].to(torch.bfloat16)) for k in reference)
            note = f"sentence-transformers module {dense}/ (Dense): "
            assert any(n.startswith(note) and n.endswith("cast to BF16") for n in cast["notes"])
        for dense in ("2_Dense", "3_Dense") if name == "deep" else ("3_Dense",):
            assert _sha(tmp_path / f"{name}-fp32" / dense / "model.safetensors") == _sha(
                src / dense / "model.safetensors"
            )
            assert f"sentence-transformers module {dense}/ (Dense): weights copied unchanged" in kept["notes"]

    mixed = shutil.copytree(tmp_path / "wide-bf16", tmp_path / "mixed")  # the bfloat16 growth, its Dense in float32
    shutil.copyfile(tmp_path / "wide-fp32" / "2_Dense" / "model.safetensors", mixed / "2_Dense" / "model.safetensors")
    loaded = next(m for m in _st_model(mixed) if type(m).__name__ == "Dense").linear.weight
    assert torch.equal(
        loaded, load_file(str(tmp_path / "wide-bf16" / "2_Dense" / "model.safetensors"))["linear.weight"]
    )


def test_depth_growth_copies_the_dense_and_an_exact_method_keeps_the_embeddings(st_source, tmp_path):
    src = st_source("gpt2-mean")
    report = expand(str(src), tmp_path / "deep", GrowthSpec(layers=6, depth_method="identity"), quiet=True)
    out = tmp_path / "deep"
    assert report["function_preserving"] is True
    assert _sha(out / "2_Dense" / "model.safetensors") == _sha(src / "2_Dense" / "model.safetensors")
    assert (out / "2_Dense" / "config.json").read_bytes() == (src / "2_Dense" / "config.json").read_bytes()
    assert "sentence-transformers module 2_Dense/ (Dense): weights copied unchanged" in report["notes"]
    before = _encode(src)
    gap = (_encode(out) - before).abs().max().item()
    print(f"gpt2 identity depth 4 → 6: max |Δ embedding| {gap:.3g}")
    assert gap < 1e-5
    assert (_encode(out, lambda w: w.neg_()) - before).abs().max().item() > 1e-2  # the check sees the Dense


def test_a_sentence_transformer_over_a_headless_decoder_grows_in_its_own_naming(st_source, tmp_path):
    """A headless Llama (`LlamaModel`, as sentence-transformers saves a decoder: e5-mistral-7b-instruct,
    SFR-Embedding-Mistral) under its modules: identity depth growth writes the base model's names and class again,
    copies the modules, and keeps the embeddings."""
    from grow_cli.checkpoint.reader import CheckpointReader

    src = st_source("llama-headless-mean")
    report = expand(str(src), tmp_path / "deep", GrowthSpec(layers=6, depth_method="identity"), quiet=True)
    out = tmp_path / "deep"
    assert report["function_preserving"] is True
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaModel"]
    with CheckpointReader(out) as reader:
        assert "layers.5.mlp.down_proj.weight" in reader.tensors and "norm.weight" in reader.tensors
        assert not any(name.startswith("model.") or name == "lm_head.weight" for name in reader.tensors)
    assert (out / "modules.json").read_bytes() == (src / "modules.json").read_bytes()
    assert _sha(out / "2_Dense" / "model.safetensors") == _sha(src / "2_Dense" / "model.safetensors")
    before = _encode(src)
    gap = (_encode(out) - before).abs().max().item()
    print(f"headless llama identity depth 4 → 6: max |Δ embedding| {gap:.3g}")
    assert gap < 1e-5
    assert (_encode(out, lambda w: w.neg_()) - before).abs().max().item() > 1e-2


def test_a_depth_growth_and_a_dry_run_still_import_no_torch(st_source, tmp_path):
    """Reading a Dense's tensor names takes its safetensors header, not torch (see test_startup.py)."""
    from test_startup import grow

    args = ("--layers", "6", "--depth-method", "stack")
    result, stdout, _ = grow(tmp_path, "expand", st_source("bert-mean"), tmp_path / "never", *args, "--dry-run")
    assert result == {"code": 0, "imported": []} and "2_Dense/ (Dense): weights copied unchanged" in stdout
    result, _, _ = grow(tmp_path, "expand", st_source("bert-mean"), tmp_path / "out", *args, "-q")
    assert result == {"code": 0, "imported": []} and (tmp_path / "out" / "2_Dense" / "model.safetensors").is_file()


def _with_lstm(src, dest):
    """`src` with a module grow cannot grow appended to modules.json: an LSTM with weights of its own."""
    from safetensors.torch import save_file

    shutil.copytree(src, dest)
    (dest / "4_LSTM").mkdir()
    (dest / "4_LSTM" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16, "hidden_dim": 8}))
    save_file({"encoder.weight_ih_l0": torch.randn(32, 16)}, str(dest / "4_LSTM" / "model.safetensors"))
    entries = json.loads((dest / "modules.json").read_text())
    entries.append({"idx": 4, "name": "4", "path": "4_LSTM", "type": "sentence_transformers.models.LSTM"})
    (dest / "modules.json").write_text(json.dumps(entries))
    return dest


def test_a_module_grow_cannot_grow_refuses_width_before_writing_and_is_copied_in_depth(st_source, tmp_path, cli):
    src = _with_lstm(st_source("bert-mean"), tmp_path / "lstm")
    result = cli("expand", src, tmp_path / "wide", "--width-method", "fpi", "--width-factor", "2")
    assert result.code != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "4_LSTM/" in lines[0] and "--layers" in lines[0]
    assert not (tmp_path / "wide").exists()
    dry = cli("expand", src, tmp_path / "wide", "--dry-run", "--width-method", "fpi", "--width-factor", "2")
    assert dry.code != 0 and "4_LSTM/" in dry.stderr

    dry = cli("expand", src, tmp_path / "deep", "--dry-run", "--layers", "6", "--depth-method", "stack")
    assert dry.code == 0 and "4_LSTM/ (LSTM): weights copied unchanged" in dry.stdout
    report = expand(str(src), tmp_path / "deep", GrowthSpec(layers=6, depth_method="stack"), quiet=True)
    for module in ("2_Dense", "4_LSTM"):
        assert _sha(tmp_path / "deep" / module / "model.safetensors") == _sha(src / module / "model.safetensors")
    assert sorted(report["files"]["modules"]) == ["2_Dense/model.safetensors", "4_LSTM/model.safetensors"]


def test_a_dense_that_does_not_read_the_pooled_width_is_refused(st_source, tmp_path, cli):
    src = shutil.copytree(st_source("bert-mean"), tmp_path / "odd")
    config = json.loads((src / "2_Dense" / "config.json").read_text())
    (src / "2_Dense" / "config.json").write_text(json.dumps({**config, "in_features": 48}))
    result = cli("expand", src, tmp_path / "wide", "--width-method", "fpi", "--width-factor", "2")
    assert result.code != 0 and "2_Dense/" in result.stderr and "in_features 48 is not the 32 units" in result.stderr
    assert not (tmp_path / "wide").exists()


def test_a_dense_after_a_module_grow_does_not_know_is_refused(st_source, tmp_path, cli):
    """A module of another package, even without weights, may rewrite the pooled vector at any width."""
    src = shutil.copytree(st_source("bert-mean"), tmp_path / "custom")
    entries = json.loads((src / "modules.json").read_text())
    entries.insert(2, {"idx": 1.5, "name": "whiten", "path": "1_Whiten", "type": "acme.modules.Whiten"})
    (src / "modules.json").write_text(json.dumps(entries))
    result = cli("expand", src, tmp_path / "wide", "--width-method", "fpi", "--width-factor", "2")
    assert result.code != 0 and "2_Dense/ (it reads features after 1_Whiten/" in result.stderr
    assert not (tmp_path / "wide").exists()


def test_inspect_says_what_growth_does_with_each_module(st_source, tmp_path, cli):
    from grow_cli.growth.describe import inspect

    info = inspect(str(st_source("bert-mean")))
    assert info["st_modules"] == [
        {
            "path": "2_Dense",
            "type": "Dense",
            "depth": "weights copied unchanged",
            "width": "input axis widened as the output head's",
        }
    ]
    assert all(m["applies"] for m in info["methods"]["width"])
    src = _with_lstm(st_source("bert-mean"), tmp_path / "lstm")
    info = inspect(str(src))
    assert [m["path"] for m in info["st_modules"]] == ["2_Dense", "4_LSTM"]
    assert not any(m["applies"] for m in info["methods"]["width"])
    assert all("4_LSTM/" in m["why"] for m in info["methods"]["width"])
    shown = cli("inspect", src)
    assert shown.code == 0 and "module 4_LSTM/" in shown.stdout


def test_a_hub_source_brings_its_module_folders(st_source, fake_hub, tmp_path, cli):
    """From the Hub, the module folders modules.json lists are fetched (small files, one weights format), for the
    download and for the headers-only dry run; other weight formats stay on the Hub."""
    from grow_cli.hub import download_checkpoint

    fake_hub.add_folder("acme/tiny-st", st_source("bert-mean"))
    fake_hub.add_files(
        "acme/tiny-st", {"2_Dense/pytorch_model.bin": b"the same Dense, pickled", "onnx/model.onnx": b""}
    )
    dry = cli("expand", "acme/tiny-st", tmp_path / "never", "--dry-run", "--width-method", "fpi", "--width-factor", "2")
    assert dry.code == 0 and "2_Dense/ (Dense): input axis widened as the output head's" in dry.stdout
    folder, source = download_checkpoint("acme/tiny-st")
    assert {"1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors"} <= set(source["files"])
    assert not {"2_Dense/pytorch_model.bin", "onnx/model.onnx"} & set(source["files"])
    report = expand("acme/tiny-st", tmp_path / "wide", GrowthSpec(width_method="fpi", width_factor=2), quiet=True)
    assert report["files"]["modules"] == ["2_Dense/model.safetensors", "1_Pooling/config.json", "2_Dense/config.json"]
    assert (_encode(tmp_path / "wide") - _encode(st_source("bert-mean"))).abs().max().item() < 1e-5


# -- through grow train-stage ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_st(tmp_path_factory):
    """A tiny sentence-transformer over a headless Llama with tinylm's tokenizer (Pooling, Dense, Normalize), and
    its `grow train-stage` run of 4 steps: a checkpoint at step 2, and the final state (`--save-final-state`).
    `run(capsys)` trains once, for the first test that asks, and gives the run's stderr."""
    import transformers as tf
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling
    from tinylm import tiny_config, tiny_tokenizer, write_plays

    root = tmp_path_factory.mktemp("trained-st")
    torch.manual_seed(0)
    tf.LlamaModel(tiny_config()).save_pretrained(root / "base")
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # sentence-transformers pads its batches
    tokenizer.save_pretrained(root / "base")
    modules = [Transformer(str(root / "base")), Pooling(32, "mean"), Dense(32, 16), Normalize()]
    logging.disable(logging.WARNING)
    try:
        SentenceTransformer(modules=modules, device="cpu").save(str(root / "st"))
    finally:
        logging.disable(logging.NOTSET)
    args = ["train-stage", root / "st", "--data", write_plays(root / "data"), "--out", root / "out", "--seq-len", 32]
    args += ["--micro-batch-size", 8, "--max-steps", 4, "--save-every", 2, "--save-final-state"]
    stderr: list[str] = []

    def run(capsys) -> str:
        if not stderr:
            code, _, err = run_grow(args, capsys)
            assert code == 0, err
            stderr.append(err)
        return stderr[0]

    return SimpleNamespace(source=root / "st", out=root / "out", args=args, run=run)


def test_train_stage_carries_a_sentence_transformers_models_modules(trained_st, capsys):
    """The transformer trains; modules.json, the configs beside it and every module (Dense weights included) are
    carried into the output unchanged and said so, so that it loads as the same sentence-transformer (it wrote the
    transformer alone, which sentence-transformers then loaded with a default mean Pooling and no Dense)."""
    from safetensors.torch import load_file

    from grow_cli.growth.st_modules import module_files

    src, out, stderr = trained_st.source, trained_st.out, trained_st.run(capsys)
    assert (
        "a sentence-transformers model: its transformer trains; modules.json and its modules (1_Pooling/, 2_Dense/, "
        "3_Normalize/) are carried unchanged into the output" in " ".join(stderr.split())
    )
    files = module_files(src)
    assert {"modules.json", "sentence_bert_config.json", "2_Dense/model.safetensors"} <= set(files)
    assert all((out / name).read_bytes() == (src / name).read_bytes() for name in files)
    assert json.loads((out / "grow.json").read_text())["model"]["library"] == "sentence-transformers"
    trained = _st_model(out)
    assert [type(m).__name__ for m in trained] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert not torch.equal(
        load_file(out / "model.safetensors")["model.norm.weight"], _st_model(src)[0].auto_model.norm.weight
    )


def test_a_train_stage_checkpoint_of_a_sentence_transformer_grows_with_its_modules(trained_st, tmp_path, capsys):
    """`grow expand` of the run's final state widens the Dense it reads from the run's output (the embeddings are
    the trained model's); of its step-2 checkpoint, whose modules are the source folder's, it copies them. Both
    linked the modules' configs but not their weights, so the output had a Dense without weights."""
    trained_st.run(capsys)
    src, out = trained_st.source, trained_st.out
    wide = expand(str(out), tmp_path / "wide", GrowthSpec(width_method="fpi", width_factor=2), quiet=True)
    assert wide["function_preserving"] is True
    assert json.loads((tmp_path / "wide" / "2_Dense" / "config.json").read_text())["in_features"] == 64
    before = _encode(out)
    gap = (_encode(tmp_path / "wide") - before).abs().max().item()
    print(f"train-stage final state, fpi ×2: max |Δ embedding| {gap:.3g}")
    assert gap < 1e-5
    assert (_encode(tmp_path / "wide", lambda w: w.mul_(2.0)) - before).abs().max().item() > 1e-2

    step_2 = out / "checkpoints" / "step_00000002"
    expand(str(step_2), tmp_path / "deep", GrowthSpec(layers=4, depth_method="identity"), quiet=True)
    assert _sha(tmp_path / "deep" / "2_Dense" / "model.safetensors") == _sha(src / "2_Dense" / "model.safetensors")
    assert [type(m).__name__ for m in _st_model(tmp_path / "deep")] == ["Transformer", "Pooling", "Dense", "Normalize"]


def test_overwrite_removes_an_earlier_runs_modules(trained_st, tmp_path, capsys):
    """A run of a plain model with --overwrite into a sentence-transformer's run output leaves no modules.json or
    module folder of it: the plain model would load as that sentence-transformer."""
    from tinylm import save_tiny_lm

    trained_st.run(capsys)
    again = shutil.copytree(trained_st.out, tmp_path / "again")
    data = trained_st.args[trained_st.args.index("--data") + 1]
    args = ["train-stage", save_tiny_lm(tmp_path / "lm"), "--data", data, "--out", again, "--seq-len", 32]
    code, _, stderr = run_grow([*args, "--micro-batch-size", 8, "--max-steps", 1, "--overwrite"], capsys)
    assert code == 0, stderr
    assert not any((again / name).exists() for name in ("modules.json", "1_Pooling", "2_Dense", "3_Normalize"))
    assert not (again / "sentence_bert_config.json").exists()


def test_a_module_path_outside_the_model_folder_is_refused(st_source, tmp_path, cli):
    """modules.json names folders under the model folder; one outside it (`../`) is refused before grow reads,
    copies or writes there."""
    src = shutil.copytree(st_source("bert-mean"), tmp_path / "src")
    listing = json.loads((src / "modules.json").read_text())
    listing[2]["path"] = "../2_Dense"
    outside = shutil.move(src / "2_Dense", tmp_path / "2_Dense")
    (src / "modules.json").write_text(json.dumps(listing))
    kept = {p.name: _sha(p) for p in outside.iterdir()}
    result = cli("expand", src, tmp_path / "out", "--width-factor", "2")
    assert result.code != 0 and "modules.json lists module path '../2_Dense', outside the model folder" in result.stderr
    assert not (tmp_path / "out").exists() and {p.name: _sha(p) for p in outside.iterdir()} == kept


@pytest.mark.parametrize(
    ("entry", "refusal"),
    [
        ({"idx": "1"}, "gives module '1_Pooling' the idx \"1\", not a number; fix it"),
        ({"idx": None}, "gives module '1_Pooling' the idx null, not a number; fix it"),
        ({"path": 5}, "is not a list of modules with a path each; fix or remove it"),
        ({"path": None}, "is not a list of modules with a path each; fix or remove it"),
    ],
)
def test_a_module_entry_of_the_wrong_kind_is_one_line(st_source, tmp_path, cli, entry, refusal):
    """An idx that is no number beside the others' (1.5 sorts between them) was a TypeError in the catch-all of every
    command (modules.json is sorted by it); a path that is no text (5, null) was read as the folder "5" or "None", left
    out without a word, and sentence-transformers fails on it (found by an audit)."""
    src = shutil.copytree(st_source("bert-mean"), tmp_path / "src")
    listing = json.loads((src / "modules.json").read_text())
    listing[1].update(entry)
    (src / "modules.json").write_text(json.dumps(listing))
    for args in (["inspect", src], ["expand", src, tmp_path / "out", "--layers", "4"]):
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.code == 1 and len(lines) == 1 and f"{src / 'modules.json'} {refusal}" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options", [("--layers", "6"), ("--width-factor", "2")], ids=["depth", "width"])
def test_a_module_whose_weights_hold_nan_is_refused_naming_it(st_source, tmp_path, cli, options):
    """A Dense saved by a diverged run: its weights were hashed but not checked, so depth growth copied the NaN and
    width growth widened it into an output whose embeddings are NaN (exit 0). Refused now, as the transformer's own
    weights are, naming the module's file and tensor, with nothing in OUT."""
    from safetensors.torch import load_file, save_file

    src = shutil.copytree(st_source("bert-mean"), tmp_path / "src")
    weights = load_file(str(src / "2_Dense" / "model.safetensors"))
    weights["linear.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    save_file(weights, str(src / "2_Dense" / "model.safetensors"), metadata={"format": "pt"})
    result = cli("expand", src, tmp_path / "out", *options)
    line = result.stderr.strip()
    assert result.code == 1 and "\n" not in line, result.stderr
    assert line.startswith("error: 2_Dense/model.safetensors: tensor linear.weight holds 3 NaN or infinite values")
    assert not (tmp_path / "out").exists()


def test_a_dense_whose_bin_weights_hold_nan_is_refused_naming_it(st_source, tmp_path, cli):
    """A Dense saved as pytorch_model.bin (sentence-transformers before 2.3), which the hashing cannot check tensor by
    tensor: depth growth copied its NaN (exit 0). Its tensors are loaded and checked now."""
    from safetensors.torch import load_file

    src = shutil.copytree(st_source("bert-mean"), tmp_path / "src")
    weights = load_file(str(src / "2_Dense" / "model.safetensors"))
    weights["linear.weight"][1, :2] = float("nan")
    torch.save(weights, src / "2_Dense" / "pytorch_model.bin")
    (src / "2_Dense" / "model.safetensors").unlink()
    result = cli("expand", src, tmp_path / "out", "--layers", "6")
    line = result.stderr.strip()
    assert result.code == 1 and "\n" not in line, result.stderr
    assert line.startswith("error: 2_Dense/pytorch_model.bin: tensor linear.weight holds 2 NaN or infinite values")
    assert not (tmp_path / "out").exists()


def test_dtype_fp16_refuses_a_dense_weight_beyond_its_range(st_source, tmp_path):
    """A Dense module is cast apart from the transformer, so a weight past float16's 65504 became infinite under
    --dtype fp16 there although the transformer's tensors were checked: refused alike, naming the module's tensor,
    and nothing is left in OUT."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(st_source("bert-mean-max"), src)
    weights = load_file(str(src / "3_Dense" / "model.safetensors"))
    weights["linear.weight"][0, 0] = 1e6
    save_file(weights, str(src / "3_Dense" / "model.safetensors"), metadata={"format": "pt"})
    spec = GrowthSpec(layers=6, depth_method="stack", dtype="fp16")
    with pytest.raises(OptionError, match=r"^tensor 3_Dense/linear.weight holds 1 value beyond float16's range"):
        expand(str(src), tmp_path / "out", spec, quiet=True)
    assert not (tmp_path / "out").exists()
