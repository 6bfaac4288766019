"""Training data: every source kind, EOS between documents, the token cache and its invalidation, the split."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_train_tinylm import _tokenizer

from grow_cli.data.sources import check_sources, find_sources
from grow_cli.data.tokens import prepare_tokens
from grow_cli.errors import DataError

DOCS = [
    "Shall I compare thee to a summer's day?",
    "Thou art more lovely and more temperate.",
    "Rough winds do shake the darling buds of May.",
]
EOS = 2


def tokens_of(paths, tmp_path, text_field="text", seq_len=4, **kw):
    sources = find_sources([str(p) for p in paths])
    check_sources(sources, text_field)
    return prepare_tokens(
        sources,
        _tokenizer(),
        text_field=text_field,
        seq_len=seq_len,
        eval_fraction=0.1,
        vocab_size=512,
        eos_id=EOS,
        cache_dir=tmp_path / "cache",
        **kw,
    )


def stream(data) -> np.ndarray:
    return np.fromfile(data.cache_file, dtype=data.blocks.dtype)


def expected_stream() -> list[int]:
    ids: list[int] = []
    for doc in DOCS:
        ids += _tokenizer()(doc, add_special_tokens=False)["input_ids"] + [EOS]
    return ids


def test_text_folder_one_document_per_file_with_eos_after_each(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        (folder / f"{i}.txt").write_text(doc)
    data = tokens_of([folder], tmp_path)
    assert stream(data).tolist() == expected_stream()
    assert data.num_documents == 3 and data.blocks.dtype == np.uint16


def test_jsonl_parquet_and_datasets_folder_read_the_text_field(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "content": d}) + "\n" for i, d in enumerate(DOCS)))
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": DOCS}), parquet)
    want = expected_stream()
    assert stream(tokens_of([jsonl], tmp_path, "content")).tolist() == want
    assert stream(tokens_of([parquet], tmp_path, "content")).tolist() == want
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"content": DOCS}).save_to_disk(tmp_path / "ds")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": DOCS})}).save_to_disk(tmp_path / "dd")
    assert stream(tokens_of([tmp_path / "ds"], tmp_path, "content")).tolist() == want
    assert stream(tokens_of([tmp_path / "dd"], tmp_path, "content")).tolist() == want


def test_pretokenized_bin_and_glob(tmp_path):
    ids = np.array(expected_stream(), dtype=np.uint16)
    ids.tofile(tmp_path / "a.bin")
    ids.tofile(tmp_path / "b.bin")
    data = tokens_of([str(tmp_path / "*.bin")], tmp_path)
    assert stream(data).tolist() == ids.tolist() * 2
    assert data.num_documents == 6


def test_long_text_file_is_tokenized_in_pieces_without_losing_text(tmp_path, monkeypatch):
    import grow_cli.data.sources as sources

    monkeypatch.setattr(sources, "CHUNK_CHARS", 50)  # force many pieces from a small file
    text = "\n".join(DOCS * 4)
    (tmp_path / "long.txt").write_text(text)
    data = tokens_of([tmp_path / "long.txt"], tmp_path)
    ids = stream(data).tolist()
    assert ids.count(EOS) == 1 and ids[-1] == EOS
    assert _tokenizer().decode(ids[:-1]) == text


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


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: [str(p / "nope.txt")], "no such file"),
        (lambda p: [str(p / "*.jsonl")], "matches no files"),
        (lambda p: [(p / "empty.txt").write_text("") or str(p / "empty.txt")], "is empty"),
        (lambda p: [(p / "sub").mkdir() or str(p / "sub")], "holds no"),
    ],
)
def test_missing_or_empty_data_fails_with_the_path(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        find_sources(make(tmp_path))


def test_missing_text_field_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="no text field 'text' .*found: body.*--text-field"):
        check_sources(find_sources([str(path)]), "text")


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    np.array([1, 2, 600], dtype=np.uint16).tofile(tmp_path / "bad.bin")
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        tokens_of([tmp_path / "bad.bin"], tmp_path)


def test_too_little_data_for_a_block(tmp_path):
    (tmp_path / "a.txt").write_text("Hi.")
    with pytest.raises(DataError, match="too few"):
        tokens_of([tmp_path / "a.txt"], tmp_path, seq_len=64)
