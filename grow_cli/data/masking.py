"""Masked-LM inputs: BERT's corruption of a block of token ids (Devlin et al. 2019), reproducible from a seed.

Each maskable position (never a special token) is chosen with probability `probability` (15 %); a chosen position
becomes the mask token with probability `mask_replace_prob` (80 %), a random token with `random_replace_prob` (10 %),
and keeps its token otherwise (10 %) — the same rule and names as transformers' `DataCollatorForLanguageModeling`.
The labels hold the original token at chosen positions and -100 (ignored by the loss) elsewhere. With whole-word
masking, words are chosen instead of tokens and every token of a chosen word is chosen (BERT's later release).

The random draws of a row come from a generator seeded by the caller's seed words and the row's own tokens, so a
row is masked the same way whatever the batch it sits in and however the batch is split over processes: a resumed
run re-masks exactly, a 2-process run masks as a 1-process run does, and held-out blocks get one fixed mask that
every evaluation (and `grow compare` of two models) shares. Every row has at least one chosen position, so a
masked-token loss is never an average over nothing.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from grow_cli.errors import UsageError

IGNORE_INDEX = -100  # the label that torch's cross-entropy (and every HF model's loss) skips
EVAL_SEED = 0x4D4C4D  # seeds the fixed masks of held-out blocks: the same for every run and every model


@dataclass(frozen=True)
class MaskingRule:
    """How to corrupt blocks for masked-LM training; `word_start` (per token id) enables whole-word masking."""

    mask_id: int
    vocab_size: int  # random replacements are drawn from [0, vocab_size)
    special_ids: tuple[int, ...]
    probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    word_start: np.ndarray | None = None  # bool [vocab]: the token begins a word; None: mask single tokens
    word_break: np.ndarray | None = None  # bool [vocab]: a line end or tab, after which a word begins (`word_starts`)

    def describe(self) -> dict[str, object]:
        """The rule as grow.json records it."""
        return {
            "mlm_probability": self.probability,
            "mask_replace_prob": self.mask_replace_prob,
            "random_replace_prob": self.random_replace_prob,
            "keep_prob": round(1.0 - self.mask_replace_prob - self.random_replace_prob, 10) + 0.0,  # never -0.0
            "whole_word_mask": self.word_start is not None,
        }


def masking_rule(
    tokenizer,
    *,
    mlm_probability: float,
    mask_replace_prob: float,
    random_replace_prob: float,
    whole_word_mask: bool,
) -> MaskingRule:
    """The `MaskingRule` for `tokenizer` and the masking settings under their own names (`masking_settings.NAMES`:
    train-stage's options, compare's, a recipe's keys); a tokenizer without a mask token cannot be trained with
    masking."""
    if tokenizer.mask_token_id is None:
        raise UsageError(
            "masked-LM training needs a mask token, and this tokenizer has none; train this model with "
            "--objective causal, or use the tokenizer it was pretrained with"
        )
    word_start, word_break = word_starts(tokenizer) if whole_word_mask else (None, None)
    return MaskingRule(
        mask_id=int(tokenizer.mask_token_id),
        vocab_size=len(tokenizer),
        special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        probability=mlm_probability,
        mask_replace_prob=mask_replace_prob,
        random_replace_prob=random_replace_prob,
        word_start=word_start,
        word_break=word_break,
    )


BYTE_LEVEL_BREAK = set("ĉĊċČč")  # byte-level BPE's \t \n \v \f \r (its 'Ġ' is the space)
BYTE_FALLBACK_BREAK = re.compile(r"(<0x0[9A-D]>)+")  # SentencePiece's byte pieces of the same


def _byte_level_break(token: str) -> bool:
    return bool(token) and set(token) <= BYTE_LEVEL_BREAK | {"Ġ"} and bool(set(token) & BYTE_LEVEL_BREAK)


def _sentencepiece_break(token: str) -> bool:
    text = token.replace("▁", " ")
    return (text.isspace() and bool(text.strip(" "))) or BYTE_FALLBACK_BREAK.fullmatch(token) is not None


def word_starts(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """For each token id, whether it begins a word, and whether it breaks words: WordPiece marks continuations with
    '##' (and holds no whitespace); byte-level BPE ('Ġ') and SentencePiece ('▁') mark word starts, and a token that
    begins with neither the marker nor a letter or digit (punctuation) starts a word of its own. A line end or tab
    token ('Ċ', '<0x0A>') breaks words: a line's first word has no marker, and was masked as one word with the
    line end and the last word of the line before ("here", "ĊĊ", "Another")."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens = [t or "" for t in tokens]
    if any(t.startswith("##") for t in tokens):
        return np.array([not t.startswith("##") for t in tokens]), np.zeros(len(tokens), dtype=bool)
    for marker, breaking in (("Ġ", _byte_level_break), ("▁", _sentencepiece_break)):
        if sum(t.startswith(marker) for t in tokens) > len(tokens) // 10:
            breaks = np.array([breaking(t) for t in tokens])
            return np.array([t.startswith(marker) or not t[:1].isalnum() for t in tokens]) | breaks, breaks
    raise UsageError(
        "--whole-word-mask: this tokenizer marks no word boundaries grow can read (WordPiece '##', byte-level "
        "'Ġ' or SentencePiece '▁'); mask single tokens instead (drop --whole-word-mask)"
    )


def mask_rows(rule: MaskingRule, ids: torch.Tensor, seed: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked inputs and labels of a batch of token ids [B, T]; row r draws from a generator seeded by `seed`
    and row r's tokens."""
    rows = ids.cpu().numpy()
    inputs, labels = rows.copy(), np.full_like(rows, IGNORE_INDEX)
    special = np.isin(rows, np.asarray(rule.special_ids, dtype=rows.dtype))
    for r, row in enumerate(rows):
        rng = np.random.default_rng([*seed, zlib.crc32(row.tobytes())])
        chosen = _choose(rule, row, special[r], rng)
        labels[r, chosen] = row[chosen]
        action = rng.random(len(row))
        to_mask = chosen & (action < rule.mask_replace_prob)
        to_random = chosen & ~to_mask & (action < rule.mask_replace_prob + rule.random_replace_prob)
        inputs[r, to_mask] = rule.mask_id
        inputs[r, to_random] = rng.integers(0, rule.vocab_size, int(to_random.sum()))
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def _choose(rule: MaskingRule, row: np.ndarray, special: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The positions of `row` to predict: tokens (or whole words) drawn with `rule.probability`, specials never."""
    maskable = ~special
    if rule.word_start is None:
        chosen = maskable & (rng.random(len(row)) < rule.probability)
    else:
        # A word begins at a word-start token, after a special token or a line end, and at the block's first
        # position. An id past the tokenizer (a model's vocabulary padded beyond it, read from a `.bin` file) has no
        # text to say whether it continues a word: it is a word of its own.
        known = row < len(rule.word_start)
        breaks = special.copy()
        if rule.word_break is not None:
            breaks[known] |= rule.word_break[row[known]]
        starts = ~known | special | np.roll(breaks, 1)
        starts[known] |= rule.word_start[row[known]]
        starts[0] = True
        word = np.cumsum(starts) - 1
        chosen = maskable & (rng.random(int(word[-1]) + 1) < rule.probability)[word]
    if not chosen.any() and maskable.any():
        chosen[rng.choice(np.flatnonzero(maskable))] = True
    return chosen
