"""`--attn-implementation`: the name reaches transformers, a name it refuses is refused in one line before the data
is read, and packed documents stay apart under an attention that finds them only in a batch of one row, as flash
attention's variable-length kernels do — measured with an attention of that rule registered in transformers, since
flash-attn runs on CUDA only."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from tinylm import run_grow, save_tiny_lm, tiny_config, write_plays
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from grow_cli.errors import UsageError
from grow_cli.train.attention import check_attention_run, one_row
from grow_cli.train.documents import check_document_masking
from grow_cli.train.objective import Objective

EOS = 2
BATCH_ONE = "grow_batch_one"  # a name without "flash": transformers would look for a flash kernel by that name


def batch_one_attention(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """Flash attention's rule for packed documents: found from the position ids (a restart at 0 starts one) only in
    a batch of one row; any other batch attends causally over each whole row."""
    batch, length = query.shape[0], query.shape[2]
    mask = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
    if batch == 1 and position_ids is not None:
        document = (torch.diff(position_ids[0], prepend=position_ids[0, :1] - 1) != 1).cumsum(0)
        mask = mask & (document[:, None] == document[None, :])
    return sdpa_attention_forward(module, query, key, value, mask.expand(batch, 1, length, length), **kwargs)


AttentionInterface.register(BATCH_ONE, batch_one_attention)
AttentionMaskInterface.register(BATCH_ONE, sdpa_mask)


def _model(attention: str) -> tf.LlamaForCausalLM:
    torch.manual_seed(0)
    return tf.LlamaForCausalLM._from_config(tiny_config(), attn_implementation=attention).eval()


def _blocks(vocab: int) -> torch.Tensor:
    """Three blocks of 16 tokens, each holding the end of one document and the start of another."""
    blocks = torch.randint(3, vocab, (3, 16), generator=torch.Generator().manual_seed(1))
    blocks[0, 5], blocks[1, 9], blocks[2, 3] = EOS, EOS, EOS
    return blocks


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_one_row_trains_the_same_losses(attention):
    """The blocks of a micro-batch fed as one row give the loss they give as rows, over as many predictions; the
    negative control — one row whose block starts are not ignored — lets each block predict the next one's first
    token and differs."""
    model = _model(attention)
    blocks = _blocks(model.config.vocab_size)
    rows, row = (Objective("causal", 0, None, EOS, one_row=flag).eval_inputs(blocks) for flag in (False, True))
    assert row["input_ids"].shape == (1, 48) and rows["input_ids"].shape == (3, 16)
    assert Objective("causal", 0).predicted(row) == Objective("causal", 0).predicted(rows) == 3 * 15
    with torch.no_grad():
        assert abs(model(**row).loss.item() - model(**rows).loss.item()) < 1e-6
        unmasked = model(**{**row, "labels": blocks.reshape(1, -1)}).loss.item()
    assert abs(unmasked - model(**rows).loss.item()) > 1e-3


def test_the_probe_feeds_the_model_as_training_does():
    """An attention that keeps documents apart in a batch of one row only passes the probe when training feeds it
    one row, and is refused when it would be fed rows (two blocks, where a one-block probe would have passed)."""
    model = _model(BATCH_ONE)
    check_document_masking(model, EOS, one_row=True)
    with pytest.raises(UsageError, match=f"llama does not mask attention .* under {BATCH_ONE} attention"):
        check_document_masking(model, EOS)
    check_document_masking(_model("sdpa"), EOS, one_row=True)  # transformers' default handles both


def test_the_probe_runs_under_autocast_with_a_half_precision_tolerance():
    check_document_masking(_model("sdpa"), EOS, autocast=torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attention", ["sdpa", "flex_attention", BATCH_ONE])
def test_the_probe_on_a_gpu(attention):
    """The probe as a bf16 GPU run makes it: the model on the device, under autocast (flex attention compiles)."""
    model = _model(attention).cuda()
    check_document_masking(model, EOS, one_row=attention == BATCH_ONE, autocast=torch.bfloat16)
    if attention == BATCH_ONE:
        with pytest.raises(UsageError, match="does not mask attention"):
            check_document_masking(model, EOS, autocast=torch.bfloat16)


def test_only_flash_attention_goes_in_one_row():
    assert one_row("flash_attention_2") and one_row("kernels-community/flash-attn3")
    assert not any(one_row(name) for name in (None, "sdpa", "eager", "flex_attention", BATCH_ONE))


@pytest.mark.parametrize(
    ("name", "device", "precision", "refusal"),
    [
        ("flex_attention", "cpu", "no", "torch has no backward pass for flex attention on the CPU"),
        ("flash_attention_2", "cuda", "no", "computes in bf16 or fp16 only, and this run's mixed precision is no"),
        ("flash_attention_2", "cuda", "fp8", "mixed precision is fp8; add --mixed-precision bf16"),
    ],
)
def test_an_attention_the_run_cannot_train_with_is_refused(name, device, precision, refusal):
    with pytest.raises(UsageError, match=refusal):
        check_attention_run(name, torch.device(device), precision)
    check_attention_run(name, torch.device("cuda"), "bf16")  # the positive control: a GPU in bf16


def _train_args(tmp_path, *extra) -> list:
    model, data = save_tiny_lm(tmp_path / "model"), write_plays(tmp_path / "data", count=1, chars=20_000)
    args = ["train-stage", model, "--data", data, "--out", tmp_path / "out", "--seq-len", 32, "--max-steps", 2]
    return [*args, "--micro-batch-size", 4, "-q", *extra]


def test_train_stage_runs_the_attention_asked_for(tmp_path, capsys):
    code, _, stderr = run_grow(_train_args(tmp_path, "--attn-implementation", "eager", "--document-masking"), capsys)
    assert code == 0, stderr
    stage = json.loads((tmp_path / "out" / "grow.json").read_text())["stages"][-1]
    assert stage["kernels"]["attention"] == "eager" and stage["objective"]["document_masking"] is True
    assert "attn" not in (tmp_path / "out" / "config.json").read_text()  # the trained model loads with the default


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_stage_with_flex_attention_on_a_gpu(tmp_path, capsys):
    """Flex attention trains packed documents apart on a GPU, where it has a backward pass (compiled by torch, whose
    kernels need a head dimension of at least 16: the tiny model's is 8, so this one has two heads of 16)."""
    args = _train_args(tmp_path, "--attn-implementation", "flex_attention", "--document-masking")
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tiny_config(num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "model")
    code, _, stderr = run_grow([*args, "--mixed-precision", "bf16"], capsys)
    assert code == 0, stderr
    stage = json.loads((tmp_path / "out" / "grow.json").read_text())["stages"][-1]
    assert stage["kernels"]["attention"] == "flex_attention"


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("no_such_attention", 'Specified `attn_implementation="no_such_attention"` is not supported'),
        ("flash_attention_2", "the package for FlashAttention2 doesn't seem to be installed"),
        pytest.param(
            "flex_attention",
            "torch has no backward pass for flex attention on the CPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="the run is on a GPU, where flex trains"),
        ),
        (" ", "--attn-implementation is empty"),
    ],
)
def test_an_attention_transformers_refuses_is_one_line_before_the_data(tmp_path, capsys, name, refusal):
    code, _, stderr = run_grow(_train_args(tmp_path, "--attn-implementation", name), capsys)
    assert code == 2 and refusal in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / ".grow-cache").exists()
