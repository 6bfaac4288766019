"""The token stream (`grow_cli.data.tokens`): the cache and its invalidation, the deterministic train/eval split of
the packed blocks, and refusals of out-of-vocabulary ids and of too little data for one block."""

from __future__ import annotations

import os

import numpy as np
import pytest
from tinylm import DOCS, tokens_of

from grow_cli.errors import DataError


def test_cache_is_reused_and_invalidated_by_a_data_or_tokenizer_change(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)
    first = tokens_of([path], tmp_path)
    again = tokens_of([path], tmp_path)
    assert not first.from_cache and again.from_cache and again.fingerprint == first.fingerprint
    path.write_text(" ".join(DOCS) * 6)
    os.utime(path, ns=(1, 1))  # an edit that changes the size and the mtime
    changed = tokens_of([path], tmp_path)
    assert not changed.from_cache and changed.fingerprint != first.fingerprint
    wide = tokens_of([path], tmp_path, dtype_name="uint32")
    assert wide.fingerprint != changed.fingerprint


def test_split_is_deterministic_and_disjoint(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 40)
    a, b = tokens_of([path], tmp_path), tokens_of([path], tmp_path)
    assert a.eval_ids.tolist() == b.eval_ids.tolist()
    assert not set(a.eval_ids) & set(a.train_ids)
    assert len(a.eval_ids) + len(a.train_ids) == len(a.blocks)


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    np.array([1, 2, 600], dtype=np.uint16).tofile(tmp_path / "bad.bin")
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        tokens_of([tmp_path / "bad.bin"], tmp_path)


def test_too_little_data_for_a_block(tmp_path):
    (tmp_path / "a.txt").write_text("Hi.")
    with pytest.raises(DataError, match="too few"):
        tokens_of([tmp_path / "a.txt"], tmp_path, seq_len=64)
