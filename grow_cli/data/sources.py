"""Training data on disk: find the files behind `--data` arguments and read their documents.

A `--data` argument is a file, a folder (read recursively, `walk.py`) or a glob. Each file is one `Source` of a kind:

- ``text``: any other file; the whole file is one document;
- ``jsonl``: JSON Lines (``.jsonl``/``.json``), one document per line in `--text-field`;
- ``parquet``: one document per row in the `--text-field` column (needs pyarrow);
- ``arrow``: a folder written by `datasets.save_to_disk` (its ``train`` split for a DatasetDict) — read with
  pyarrow directly, so the `datasets` package is not needed;
- ``tokens``: pre-tokenized ``.bin`` files (a flat uint16/uint32 memmap, documents already separated by EOS).

Everything is checked here, before a model is loaded: missing paths, empty files and a missing text field
fail with one line that names the file.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from grow_cli.checkpoint.files import WEIGHT_LAYOUTS
from grow_cli.data.file_head import check_text_file, only_whitespace
from grow_cli.data.json_lines import check_json_lines, json_lines, json_object, json_text
from grow_cli.data.walk import MAGIC, glob_matches, walk
from grow_cli.errors import DataError, OptionError, counted, first_line
from grow_cli.field_types import EMPTY_PATH

TEXT_FIELD = "text"  # the field read when --text-field is not given
TOKEN_DTYPES = ("uint16", "uint32")  # --token-dtype's choices: the ids of .bin token files
FIELD_KINDS = ("jsonl", "parquet", "arrow")  # the kinds whose documents are a field of a record, which it names
SUFFIX_KIND = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".bin": "tokens"}
TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ""}
FOLDER_SUFFIXES = set(SUFFIX_KIND) | TEXT_SUFFIXES
TEXT_COLUMN_TYPES = {"string", "large_string", "string_view", "null"}  # Arrow types a text field may have
# ... and a dictionary of strings (pandas' `category`, some exporters), which pyarrow decodes as it reads
TEXT_DICTIONARY = re.compile(r"dictionary<values=(string|large_string|string_view), ")
CHUNK_CHARS = 1 << 20  # a long text file is tokenized in ~1 MB pieces so memory stays bounded
# Where a long text file may be cut (`_stable_cut`), best first: the last point between a non-space and one space
# before a non-space ("…d| w…"), else the last line end between non-spaces ("…d\n|W…"). The group is the text that
# the piece after the cut follows, which its tokenization is anchored on (`tokens._piece_ids`).
STABLE_CUTS = (re.compile(r"(?s:.*)(\S)(?= \S)"), re.compile(r"(?s:.*)(\S\n)(?=\S)"))
# A split's name at the start of a data file's name or of a folder on its path, as the Hub names them (`datasets`'
# data-file patterns): data/train-00000-of-00004.parquet, test.jsonl, validation/part-1.txt; not a word inside a
# name (rerere-train.sh, latest-contest.txt), which a folder of documents holds without being split
SPLIT = re.compile(r"(?:^|/)(train|training|validation|valid|val|dev|test|testing|eval|evaluation)(?=[-. 0-9/]|$)")


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str


def _is_arrow_dataset(folder: Path) -> bool:
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _holds_a_model(folder: Path) -> bool:
    """Whether `folder` holds a model, config.json beside its weights (a grow output, a train-stage run or
    checkpoint, a downloaded model), rather than data."""
    return (folder / "config.json").is_file() and any(
        (folder / name).is_file() for pair in WEIGHT_LAYOUTS for name in pair
    )


def _from_folder(folder: Path) -> list[Source]:
    """The sources in `folder`: its files of a suffix grow reads, and each `datasets` folder in it whole (its
    state.json and dataset_info.json were read as JSON Lines)."""
    if _is_arrow_dataset(folder):
        return [Source(folder, "arrow")]
    files, datasets = [], []
    for root, subfolders, names in walk(folder, str(folder)):
        if _is_arrow_dataset(root):
            datasets.append(root)
            subfolders[:] = []
            continue
        files += [root / name for name in names if Path(name).suffix in FOLDER_SUFFIXES]
    if broken := [path for path in files if path.is_symlink() and not path.exists()]:
        raise DataError(_broken_link(broken[0]))
    files = [path for path in files if path.is_file()]  # (not a pipe, a socket or a device)
    models = sorted({p.parent for p in files if p.name == "config.json" and _holds_a_model(p.parent)})
    if models:  # its config.json, tokenizer.json, grow.json would be read as JSON Lines ("not valid JSON"), its card
        what = "is a model folder (" if models[0] == folder else f"holds a model folder ({models[0]}: "
        raise DataError(
            f"--data {folder} {what}config.json and its weights), not data; give the text files or folders to read"
        )
    files = _without_dataset_card(files, datasets)
    _refuse_held_out_splits(folder, files)
    if not files and not datasets:
        read = "/".join(sorted(suffix for suffix in FOLDER_SUFFIXES if suffix))
        raise DataError(f"--data {folder}: the folder holds no {read} files or files without a suffix")
    sources = [Source(p, SUFFIX_KIND.get(p.suffix, "text")) for p in files] + [Source(p, "arrow") for p in datasets]
    return sorted(sources, key=lambda source: source.path)


def _without_dataset_card(files: list[Path], datasets: list[Path]) -> list[Path]:
    """`files` less the README.md files of a folder of records (JSON Lines, Parquet, `datasets` folders): a Hub
    dataset downloaded whole carries its card there (YAML front matter, a description of the data), which was
    trained on as one more document. In a folder of text, a README.md is text like the rest, and is read."""
    if not datasets and not any(SUFFIX_KIND.get(path.suffix) in FIELD_KINDS for path in files):
        return files
    return [path for path in files if path.name.lower() != "readme.md"]


def _refuse_held_out_splits(folder: Path, files: list[Path]) -> None:
    """Refuse a folder that holds a train split's files beside another split's (a Hub dataset downloaded whole:
    data/train-….parquet and data/test-….parquet; train.jsonl beside valid.jsonl): every file of a folder is read, so
    the run trained on the test or validation set too, without a word. Named directly or by a glob, files are read as
    given."""
    splits = {path: _split_of(path.relative_to(folder)) for path in files}
    held_out = [path for path, split in splits.items() if split not in (None, "train")]
    if held_out and "train" in splits.values():
        train = next(path for path, split in splits.items() if split == "train")
        raise DataError(
            f"--data {folder}: the folder holds a train split and a {splits[held_out[0]]} split ({held_out[0]}), and "
            f"grow reads every file in it; give the train split's files (e.g. --data {train}, or a glob of them)"
        )


def _split_of(path: Path) -> str | None:
    """The split that the data file at the relative `path` belongs to by its name ('train' for 'training' too), or
    None where the name says none."""
    match = SPLIT.search(path.as_posix().lower())
    return None if match is None else "train" if match.group(1).startswith("train") else match.group(1)


def _broken_link(path: Path) -> str:
    """The refusal of `path`, a symbolic link that leads to no file: a git-annex or DVC file not fetched, say, whose
    data would be left out without a word."""
    return (
        f"--data {path}: a symbolic link that leads to no file ({os.readlink(path)}); fetch what it stands for "
        "(git annex get, dvc pull) or remove the link"
    )


def data_paths(data: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """`--data` arguments as a list of strings (`~` expanded, as a shell would): the Python API may give one path (a
    str or a PathLike) where a list is expected — a string is never read as a sequence of one-character paths."""
    items = [data] if isinstance(data, str | os.PathLike) else list(data) if isinstance(data, Iterable) else [None]
    paths: list[str] = []
    for item in items:
        path = os.path.expanduser(item) if isinstance(item, str | os.PathLike) else None
        if not isinstance(path, str):  # a number, bytes, None
            raise OptionError("data", f"data: expected a path or a list of paths, found {data!r}")
        if not path:  # the working folder, read whole as data
            raise OptionError("data", f"data: {EMPTY_PATH}")
        paths.append(path)
    return paths


def find_sources(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Source]:
    """The sources behind `--data` arguments (`data_paths`), in the given order (folders and globs sorted by
    path)."""
    sources: list[Source] = []
    for arg in data_paths(paths):
        if MAGIC.search(arg):
            matches = glob_matches(arg)
            if not matches:
                raise DataError(f"--data {arg}: the pattern matches no files")
            for match in matches:
                sources += (
                    _from_folder(match) if match.is_dir() else [Source(match, SUFFIX_KIND.get(match.suffix, "text"))]
                )
            continue
        path = Path(arg)
        if not path.exists():  # quoted: a blank or a trailing space (`--data 'corpus '`) is seen
            raise DataError(_broken_link(path) if path.is_symlink() else f"--data {arg!r}: no such file or folder")
        sources += _from_folder(path) if path.is_dir() else [Source(path, SUFFIX_KIND.get(path.suffix, "text"))]
    first_named: dict[Path, Path] = {}
    for source in sources:
        if source.kind != "arrow":  # (a datasets folder's files are `datasets`' to read)
            if source.path.is_symlink() and not source.path.exists():  # (a glob matches the link)
                raise DataError(_broken_link(source.path))
            if not source.path.is_file():  # a named pipe or a device: grow reads its data more than once
                raise DataError(f"--data {source.path}: not a regular file (a pipe or a device); give a file or folder")
        real = source.path.resolve()
        if real in first_named:
            also = f" (also as {first_named[real]})" if first_named[real] != source.path else ""
            raise DataError(
                f"--data reaches {source.path} twice{also}: it would be trained on twice, and its blocks could be "
                "held out too; give each file once"
            )
        first_named[real] = source.path
    _refuse_empty_files([source for source in sources if source.kind != "arrow"])
    return sources


def _refuse_empty_files(sources: list[Source]) -> None:
    """Refuse empty files, naming the first and how many there are: a folder of thousands may hold several, which
    were named one per run. A text file of nothing but whitespace is empty too: it was trained on as a document of
    whitespace tokens."""
    empty = [source.path for source in sources if _empty(source)]
    what = "the file is empty" + ("" if not empty or empty[0].stat().st_size == 0 else " (it holds only whitespace)")
    if len(empty) == 1:
        raise DataError(f"--data {empty[0]}: {what}; remove it, or leave it out of --data")
    if empty:
        raise DataError(
            f"--data {empty[0]}: {what}, as are {len(empty) - 1:,} more of the data's files (the last "
            f"{empty[-1]}); remove them, or leave them out of --data"
        )


def _empty(source: Source) -> bool:
    """Whether `source`, not a `datasets` folder, is empty: no bytes, or a text file of only whitespace."""
    return source.path.stat().st_size == 0 or (source.kind == "text" and only_whitespace(source.path))


def _arrow_files(folder: Path) -> list[Path]:
    """The data files of the `datasets` folder `folder`: a Dataset's, or its `train` split's for a DatasetDict. A
    DatasetDict without one is refused, naming its splits (grow trained on the first, a validation or test set, without
    a word), and so is a listed file that is missing (it reached the catch-all)."""
    given = folder
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        if "train" not in splits:
            example = f", e.g. --data {folder / splits[0]}" if splits else ""
            raise DataError(
                f"--data {folder}: the DatasetDict has no 'train' split (its splits: {', '.join(splits) or 'none'}); "
                f"give the folder of the split to read{example}"
            )
        folder = folder / "train"
    state = json.loads((folder / "state.json").read_text())
    files = [folder / f["filename"] for f in state["_data_files"]]
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise DataError(
            f"--data {given}: {missing[0]} is missing ({len(missing)} of the {len(files)} data files its state.json "
            "lists); save it again (save_to_disk) or copy it whole"
        )
    return files


def _columns(source: Source) -> list[str]:
    """The column names of a tabular source (the keys of the first JSON line)."""
    if source.kind == "jsonl":
        check_json_lines(source.path)
        for n, record in json_lines(source.path):
            return list(json_object(record, f"{source.path}:{n}"))
        raise DataError(f"--data {source.path}: the file holds no JSON lines")
    return list(_schema(source))


def _schema(source: Source) -> dict[str, str]:
    """Column name → Arrow type name of a Parquet file or `datasets` folder; a damaged one is refused by name."""
    pa = _pyarrow()
    try:
        if source.kind == "parquet":
            schema = pa.parquet.read_schema(source.path)
        else:
            files = _arrow_files(source.path)
            if not files:
                raise DataError(f"--data {source.path}: the dataset folder holds no data files")
            with pa.OSFile(str(files[0])) as f:  # (read, not mapped: see `_table_texts`)
                schema = pa.ipc.open_stream(f).schema
    except (pa.ArrowException, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise _unreadable_table(source, exc) from None
    return {field.name: str(field.type) for field in schema}


def _unreadable_table(source: Source, exc: Exception) -> Exception:
    """A Parquet file or `datasets` folder that pyarrow cannot read, refused by name; a permission refusal is left
    as it is (grow's one line names the path and the fix)."""
    if isinstance(exc, PermissionError):
        return exc
    what = "Parquet file" if source.kind == "parquet" else "`datasets` folder (save_to_disk)"
    return DataError(f"--data {source.path}: not a readable {what} ({first_line(exc, 400)}); re-create it")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401  (makes pa.parquet available)
    except ModuleNotFoundError:
        raise DataError("reading Parquet or `datasets` folders needs pyarrow: pip install 'grow-cli[data]'") from None
    return pa


def field_read(text_field: str | None) -> str:
    """The field a source's text is read from: `text_field`, or `TEXT_FIELD` where none was given (None). Not given
    and given at the default differ for data without fields only, which refuses a given one (`check_sources`)."""
    return TEXT_FIELD if text_field is None else text_field


def check_sources(sources: list[Source], text_field: str | None, token_dtype: str | None = None) -> None:
    """Fail now, with the file's name, if a text source is binary or a tabular source lacks the text field; and if a
    `token_dtype` is given for data without any `.bin` token file, or a `text_field` for data without fields (text
    files, `.bin` tokens), which neither would change — the default's name given (`text`) as well as any other.
    None: the option was not given."""
    if token_dtype is not None and not any(source.kind == "tokens" for source in sources):
        raise OptionError(
            "token_dtype",
            f"--token-dtype {token_dtype} applies only to pre-tokenized .bin files, and --data holds none (its "
            "text is tokenized with the model's tokenizer); drop --token-dtype",
        )
    if text_field is not None and not any(source.kind in FIELD_KINDS for source in sources):
        raise OptionError(
            "text_field",
            f"--text-field {text_field!r} applies only to data with fields (JSON Lines, Parquet, a `datasets` folder), "
            "and --data holds none (a text file is one document, a .bin file holds tokens); drop --text-field",
        )
    field = field_read(text_field)
    for source in sources:
        if source.kind == "text":
            check_text_file(source.path)
        if source.kind in FIELD_KINDS:
            columns = _columns(source)
            if field not in columns:
                raise DataError(
                    f"--data {source.path}: no text field '{field}' (found: "
                    f"{', '.join(columns) or 'none'}); pass --text-field NAME"
                )
        if source.kind in ("parquet", "arrow"):
            kind = _schema(source)[field]
            if kind not in TEXT_COLUMN_TYPES and not TEXT_DICTIONARY.match(kind):
                raise DataError(
                    f"--data {source.path}: the field '{field}' holds {kind}, not text; pass --text-field NAME "
                    "of a text column"
                )


def _replace_counting(exc: UnicodeError) -> tuple[str, int]:
    """Python's "replace" decoding (U+FFFD for each undecodable sequence), counting the sequences it replaced."""
    assert isinstance(exc, UnicodeDecodeError)
    _undecodable.count += 1
    return "\ufffd", exc.end


_undecodable = threading.local()  # .count: sequences replaced in the text file being read on this thread
REPLACE_COUNTING = "grow-replace-counting"
codecs.register_error(REPLACE_COUNTING, _replace_counting)


def undecodable_note(path: str, count: int) -> str:
    """The note that names a text file whose `count` byte sequences were not UTF-8 (`read_texts`), and what to do."""
    return (
        f"note: {path}: {counted(count, 'byte sequence')} not UTF-8, read as U+FFFD; if the file is in another "
        "encoding, convert it (e.g. iconv -f latin1 -t utf-8) and run again"
    )


def read_texts(
    source: Source, text_field: str, undecodable: dict[str, int] | None = None
) -> Iterator[tuple[str, bool, str]]:
    """(text, ends_document, after) pieces of a text source: a document may arrive in several pieces, each but the
    first cut where the text before it ends in `after` (`_text_pieces`), "" at a document's start.

    A text file's bytes that are not UTF-8 are read as U+FFFD rather than refused (one stray byte should not stop a
    run over a large corpus), but not silently: their count per file is added to `undecodable`, for a note."""
    if source.kind == "text":
        _undecodable.count = 0
        # "utf-8-sig": a byte-order mark that opens the file (Windows tools write one) is not text to train on
        with source.path.open(encoding="utf-8-sig", errors=REPLACE_COUNTING) as f:
            yield from _text_pieces(f)
        if _undecodable.count and undecodable is not None:
            undecodable[str(source.path)] = _undecodable.count
    elif source.kind == "jsonl":
        for n, record in json_lines(source.path):
            if text_field not in json_object(record, f"{source.path}:{n}"):
                raise DataError(f"{source.path}:{n}: no text field '{text_field}'; pass --text-field NAME")
            yield json_text(record[text_field], text_field, f"{source.path}:{n}"), True, ""
    else:
        yield from ((text, True, "") for text in _table_texts(source, text_field))


def _text_pieces(f) -> Iterator[tuple[str, bool, str]]:
    """The open text file `f`, one document, as `read_texts`' pieces of about CHUNK_CHARS characters, so memory
    stays bounded whatever the file's size: each block read is cut at the last stable point of the text in hand
    (`_stable_cut`) and the rest carried into the next, so at most 2 × CHUNK_CHARS are in hand. One piece is held
    back so the last can say that it ends the document."""
    held: tuple[str, str] | None = None  # a piece not given yet, and what it follows
    carry, carry_after = "", ""  # the text after the last cut, and what it follows
    while block := f.read(CHUNK_CHARS):
        text = carry + block
        cut, after = _stable_cut(text)
        if held is not None:
            yield held[0], False, held[1]
        held = text[:cut], carry_after
        carry, carry_after = text[cut:], after
    if held is None:
        return
    if carry:
        yield held[0], False, held[1]
        held = carry, carry_after
    yield held[0], True, held[1]


def _stable_cut(text: str) -> tuple[int, str]:
    """Where to cut `text`, a part of a document, and what the cut follows (its last one or two characters).

    Cut anywhere, the two sides are tokenized apart and the tokens at the cut differ from the whole document's: a
    word or a run of whitespace split, a token across it made two ("\n\n" at a piece's end), a dummy prefix added.
    At one space between non-spaces, every tokenizer we know starts a new token whatever came before (byte-level
    BPE's pre-tokenization, WordPiece's and SentencePiece's word starts), and the characters the cut follows anchor
    the next piece's tokenization, which drops their tokens (`tokens._piece_ids`). A line end between non-spaces is
    as good for byte-level BPE and WordPiece, but not for a tokenizer that reads a line end as a space
    (SentencePiece's nmt_nfkc normalization): it is the cut only where `text` holds no space between non-spaces (a
    list of words, one a line). Where it holds neither (over CHUNK_CHARS of one line without one space between
    non-spaces: runs of whitespace, text without spaces), it is cut at its end with nothing to anchor on, and a token
    there may be split: memory stays bounded whatever the file holds."""
    for cuts in STABLE_CUTS:
        if match := cuts.match(text):
            return match.end(1), match.group(1)
    return len(text), ""


def _table_texts(source: Source, text_field: str) -> Iterator[str]:
    """The documents of a Parquet file or `datasets` folder, one per row; rows that do not read (a damaged data page,
    a cut shard: only the schema was checked before) are refused by the source's name. Arrow files are read, not
    memory-mapped: one cut while mapped (saved again by the job that makes it) ended the process with SIGBUS."""
    pa = _pyarrow()
    try:
        if source.kind == "parquet":
            batches = pa.parquet.ParquetFile(source.path).iter_batches(columns=[text_field], batch_size=1024)
            for batch in batches:
                for text in batch.column(0).to_pylist():
                    yield text or ""
        else:
            for path in _arrow_files(source.path):
                with pa.OSFile(str(path)) as f:
                    for batch in pa.ipc.open_stream(f):
                        for text in batch.column(text_field).to_pylist():
                            yield text or ""
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable_table(source, exc) from None


def fingerprint_sources(sources: list[Source], text_field: str) -> str:
    """A hash that changes when any source file changes (path, size, modification time) or the field does."""
    h = hashlib.sha256(f"field={text_field}".encode())
    for source in sources:
        for path in _files_of(source):
            stat = path.stat()
            entry = f"|{source.kind}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
            h.update(entry.encode(errors="surrogateescape"))  # a name that is not UTF-8 hashed as its bytes
    return h.hexdigest()[:16]


@contextmanager
def read_unchanged(source: Source) -> Iterator[None]:
    """Refuse `source` if a file of it changes (its size or modification time, as in its fingerprint) while the block
    reads it, rewritten or appended to by another job: the run would train on part of one version, without a word
    (an Arrow file cut between its batches ended early; appended text was read or not as it came). An error that the
    change caused is refused as the change."""
    files = _files_of(source)
    before = _versions(files)
    try:
        yield
    except DataError:
        if _versions(files) != before:
            raise DataError(changed_while_read(source.path)) from None
        raise
    if _versions(files) != before:
        raise DataError(changed_while_read(source.path))


def changed_while_read(path: Path) -> str:
    return f"--data {path}: it changed while grow read it; run again once nothing writes to it"


def _files_of(source: Source) -> list[Path]:
    return _arrow_files(source.path) if source.kind == "arrow" else [source.path]


def _versions(files: list[Path]) -> list[tuple[int, int] | None]:
    """(size, modification time) of each of `files`, None for one that is gone."""
    versions: list[tuple[int, int] | None] = []
    for path in files:
        try:
            stat = path.stat()
        except FileNotFoundError:
            versions.append(None)
        else:
            versions.append((stat.st_size, stat.st_mtime_ns))
    return versions
