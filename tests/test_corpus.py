"""The offline corpus and `train_tokenizer`: the tokenizer trained on Shakespeare is a real one, so the data and
train-stage tests that use it (through `tests/tinylm.py`) exercise real tokenization, EOS placement and caching."""

from __future__ import annotations

import transformers as tf
from tinylm import VOCAB, save_tiny_lm


def test_tiny_lm_round_trips_text(tmp_path):
    """The test tokenizer is real: it round-trips English and knows its EOS, so packing tests mean something."""
    model_dir = save_tiny_lm(tmp_path / "m")
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    text = "If music be the food of love, play on."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token_id == 2 and len(tok) == VOCAB
