"""Tokenize the sources once into a cached token stream, then pack it into `--seq-len` blocks and split it.

The stream is one flat file of token ids (uint16 when the vocabulary fits, else uint32) with EOS after every
document (`.bin` files hold their own; one that leaves its last document open gets one EOS before the next source,
`_Stream`). It is cached under a fingerprint of the data files, the text field and the tokenizer, so re-running a
stage, or running another with a different `--seq-len`, skips tokenization, and any change re-tokenizes. The
model's vocabulary is not in the fingerprint, which names the data: the ids of `.bin` files are checked against it
at every read of the entry instead.

Packing cuts the stream into contiguous blocks of `seq_len` tokens (the tail that does not fill a block is
dropped). A fixed-seed permutation of the block indices holds out `eval_fraction` of them for evaluation, so the
split depends on the data alone, never on the training seed or the number of processes. The held-out blocks are
listed in the order evaluations read them (`evaluation_order`): an evaluation of k blocks reads the first k, spread
over the whole stream.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grow_cli.checkpoint.output import disk_full
from grow_cli.console import err
from grow_cli.data.sources import (
    TOKEN_DTYPES,
    Source,
    changed_while_read,
    field_read,
    fingerprint_sources,
    read_texts,
    read_unchanged,
)
from grow_cli.errors import DataError, OutputError
from grow_cli.json_shape import COUNT, Kind, ListOf, MapOf, Required, Unfit, read_checked
from grow_cli.whole_file import write_whole

# Bump when the stream layout or the EOS rule changes, to invalidate old caches (2: documents are never truncated).
FORMAT_VERSION = 2
BATCH_PIECES = 256  # texts per tokenizer call; fast tokenizers encode a batch on all cores
# Text per tokenizer call: its encodings and ids take 60-100 bytes per character until the call returns, so this
# bounds what tokenization adds (~0.8 GB measured) whatever the file's size (256 pieces of 1 MB would take ~20 GB).
BATCH_CHARS = 8 << 20
SPLIT_SEED = 0x5EED
COPY_TOKENS = 1 << 24  # a .bin file is read in pieces of this many ids (even: a piece's odd places are the file's)
# The fewest 16-bit values, of a .bin file read as uint16, whose every second one being a uint32 id's high half marks
# uint32 ids (`_check_width`); a shorter file is not judged.
WIDE_SIGNATURE_MIN = 256
# Bump when a .bin file is checked for more as it is copied: an entry holding one that a grow checking less copied
# (it may hold uint32 ids read as uint16) is copied, and checked, again. 2: high halves past 0 (vocabularies past
# 65,536) are recognized.
TOKEN_FILE_CHECKS = 2
# What a run reads of a cache entry's metadata (json_shape.py); an entry of another shape is tokenized again.
META_SHAPE = {
    "tokens": Required(COUNT),
    "documents": Required(COUNT),
    "dtype": Required(Kind(" or ".join(TOKEN_DTYPES), lambda v: v in TOKEN_DTYPES)),  # `stream_dtype`'s
    "largest_ids": ListOf(COUNT),
    "undecodable": MapOf(COUNT),
    "token_file_checks": COUNT,
}


CACHE_FOLDER = ".grow-cache"  # grow's token cache in the folder that holds a run's output (or compare's first model)


def token_cache_dir(root: Path) -> Path:
    """Where token streams are cached under `root`: `root/.grow-cache/tokens`. `grow train-stage` and `grow compare`
    use the folder that holds their output (or first model), a family its output folder, so runs on the same data
    share one tokenization."""
    return Path(root) / CACHE_FOLDER / "tokens"


@dataclass
class TokenData:
    """The packed blocks: `train_ids` / `eval_ids` index rows of `blocks` (a read-only memmap view)."""

    blocks: np.ndarray  # [n_blocks, seq_len]
    train_ids: np.ndarray  # in stream order
    eval_ids: np.ndarray  # in the order evaluations read them (`evaluation_order`)
    fingerprint: str
    num_tokens: int
    num_documents: int
    cache_file: Path
    from_cache: bool
    undecodable: dict[str, int]  # text file → byte sequences that were not UTF-8, read as U+FFFD


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides token ids: the full serialized tokenizer, or its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}|{state}".encode()).hexdigest()[:16]


def stream_dtype(vocab_size: int) -> np.dtype:
    """The token stream's dtype: the narrowest that holds every id of the model's vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def token_dtype(vocab_size: int, requested: str | None) -> np.dtype:
    """The dtype `.bin` token files are read as: `--token-dtype`, else the stream's. It is the files' alone: the
    stream holds the text's ids too, which need the vocabulary's dtype (`--token-dtype uint16` for a uint16 file
    beside text, with 70,000 tokens, stopped on numpy's OverflowError writing the text's ids)."""
    return np.dtype(requested) if requested is not None else stream_dtype(vocab_size)


def _encoder(tokenizer):
    """A function from texts to token ids, for whole documents: never truncated, never padded.

    Fast tokenizers are used through a copy of their Rust tokenizer (parallel, no "sequence too long" warnings)
    with truncation and padding switched off: a tokenizer.json may carry them (all-MiniLM-L6-v2 truncates to 128
    tokens), and the user's own tokenizer must stay as it is."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        whole = Tokenizer.from_str(backend.to_str())
        whole.no_truncation()
        whole.no_padding()
        # the same ids without the character offsets: half the memory and time (tokenizers >= 0.21)
        encode = getattr(whole, "encode_batch_fast", whole.encode_batch)
        return lambda texts: [enc.ids for enc in encode(texts, add_special_tokens=False)]
    return lambda texts: tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]


def _check_ids(path: Path, largest: int, vocab_size: int) -> None:
    """Refuse the `.bin` file `path` if its largest token id, `largest`, is outside the model's vocabulary."""
    if largest >= vocab_size:
        raise DataError(
            f"{path}: token id {largest} is outside the model's vocabulary ({vocab_size}); wrong --token-dtype or a "
            "different tokenizer?"
        )


def _check_width(path: Path, bin_dtype, tokens: int, largest: int, odd_largest: int, vocab_size: int) -> None:
    """Refuse the `.bin` file `path` of `tokens` ids read as `bin_dtype` if they look like uint32 ids read as uint16.

    Read as uint16 (little-endian), each uint32 id is its low half then its high half, which is at most
    `(vocab_size - 1) >> 16`: 0 for a vocabulary that fits uint16, 3 for Gemma 3's 262,144. So every second value
    (the largest of them is `odd_largest`) is at most that bound, and the model would train on "id, 0, id, 3, …"
    without a word. A genuine uint16 file is refused only if its ≥ WIDE_SIGNATURE_MIN / 2 = 128 ids in odd places are
    all among the bound + 1 lowest ids (special tokens, or the first bytes, in every tokenizer we know): below 2**-128
    even were those ids half the text's. A file of nothing but such ids, and a short one, are not judged."""
    bound = (vocab_size - 1) >> 16
    if bin_dtype == np.uint16 and odd_largest <= bound < largest and tokens >= WIDE_SIGNATURE_MIN:
        what = "0" if bound == 0 else f"at most {bound}"
        why = "" if bound == 0 else f", as the high halves of ids below {vocab_size:,} are"
        raise DataError(
            f"--data {path}: its ids look like uint32, not uint16: every second 16-bit value is {what} (of "
            f"{tokens:,}){why}; pass --token-dtype uint32 (token_dtype: uint32 in a recipe)"
        )


def _token_pieces(path: Path, f, bin_dtype, tokens: int) -> Iterator[np.ndarray]:
    """The `tokens` ids of the open `.bin` file `f` in pieces of `COPY_TOKENS`, so memory stays bounded whatever its
    size. Read, not memory-mapped: a mapped file cut while it is read (rewritten by the job that makes it) killed the
    process with SIGBUS, without a word; read, it ends early and is refused by name."""
    for start in range(0, tokens, COPY_TOKENS):
        want = min(COPY_TOKENS, tokens - start)
        piece = np.fromfile(f, dtype=bin_dtype, count=want)
        if piece.size < want:  # cut as it was read
            raise DataError(changed_while_read(path))
        yield piece


def _copy_token_file(path: Path, bin_dtype, vocab_size: int, eos_id: int, out: _Stream) -> tuple[int, int, int]:
    """Copy the `.bin` file `path`, read as `bin_dtype`, into the stream `out`; return its (tokens,
    documents, largest id). A file whose dtype cannot hold the EOS id separates no documents, one whose ids are past
    the vocabulary cannot be trained on, and one of uint32 ids read as uint16 is misread (`_check_width`): all
    refused. The file is read once, so what is checked is what was copied; the checks that need the whole file come
    after the copy, into the temporary stream that a refusal removes (`_tokenize_into`)."""
    most = int(np.iinfo(bin_dtype).max)
    if eos_id > most:  # (uint16 under a vocabulary past 65,536, which --token-dtype uint16 alone gives)
        raise DataError(
            f"--data {path}: the end-of-document id {eos_id:,} does not fit its {bin_dtype.name} tokens (at most "
            f"{most:,}), so the file cannot hold the EOS between its documents; write it as uint32 and pass "
            "--token-dtype uint32"
        )
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size % bin_dtype.itemsize:
            raise DataError(
                f"--data {path}: {size:,} bytes is not a whole number of {bin_dtype.name} tokens "
                f"({bin_dtype.itemsize} bytes each); is it a token file, and is --token-dtype right?"
            )
        tokens = size // bin_dtype.itemsize
        largest = odd_largest = documents = 0
        for piece in _token_pieces(path, f, bin_dtype, tokens):
            largest = max(largest, int(piece.max()))
            odd_largest = max(odd_largest, int(piece[1::2].max(initial=0)))  # (COPY_TOKENS is even)
            documents += int(np.count_nonzero(piece == eos_id))
            out.write(piece)  # an id past the stream's dtype wraps, and is refused below
    _check_ids(path, largest, vocab_size)
    _check_width(path, bin_dtype, tokens, largest, odd_largest, vocab_size)
    return tokens, documents, largest


class _Stream:
    """The token stream being written to the open file `out` as `dtype`, source after source.

    Text always ends its last document with EOS, but a `.bin` file need not (a writer that puts EOS before each
    document, a corpus cut mid-document): its last document then ran straight into the next source's first, a
    continuation the model learned that no data holds. So where a source left its last document open, one EOS goes
    before the next source's first id, unless that id is EOS already; `separators` counts them (each closes a
    document). Data without an open end is written as before, under the cache key it had (`_open_ends`)."""

    def __init__(self, out, dtype: np.dtype, eos_id: int):
        self.out, self.dtype, self.eos_id = out, dtype, eos_id
        self.last: int | None = None  # the last id written
        self.pending = False  # the source before this one left its last document open
        self.separators = 0

    def next_source(self) -> None:
        """Mark the start of another source: if the last one left its document open, the next id written closes it."""
        self.pending = self.last is not None and self.last != self.eos_id

    def write(self, ids: np.ndarray) -> None:
        if not ids.size:
            return
        if self.pending and int(ids[0]) != self.eos_id:
            np.asarray([self.eos_id], dtype=self.dtype).tofile(self.out)
            self.separators += 1
        self.pending = False
        self.last = int(ids[-1])
        ids.astype(self.dtype, copy=False).tofile(self.out)


def _open_ends(sources: list[Source], bin_dtype, eos_id: int) -> list[int]:
    """The indices of the `.bin` sources that leave their last document open (their last id is not EOS) before a
    source that does not open with EOS (a `.bin` file may; text, not read here, is taken not to): where `_Stream`
    puts an EOS. Part of the cache key when not empty, so an entry written without that EOS is not read, and the
    entries of all other data stay valid. At most two ids are read per file."""
    ends = []
    for i, (source, after) in enumerate(zip(sources, sources[1:], strict=False)):
        if source.kind == "tokens" and _id_at(source.path, bin_dtype, -1) not in (None, eos_id):
            if after.kind != "tokens" or _id_at(after.path, bin_dtype, 0) != eos_id:
                ends.append(i)
    return ends


def _id_at(path: Path, bin_dtype, index: int) -> int | None:
    """The id at `index` (0: the first, -1: the last) of the `.bin` file `path` read as `bin_dtype`; None when it
    holds no whole id (refused as it is copied)."""
    with path.open("rb") as f:
        tokens = os.fstat(f.fileno()).st_size // bin_dtype.itemsize
        if not tokens:
            return None
        f.seek((index % tokens) * bin_dtype.itemsize)
        return int(np.fromfile(f, dtype=bin_dtype, count=1)[0])


def _write_stream(
    sources, tokenizer, text_field, eos_id, bin_dtype, vocab_size, tmp: Path, undecodable: dict[str, int]
) -> tuple[int, int, list[int]]:
    """Tokenize every source into `tmp` (`.bin` files read as `bin_dtype`); return (tokens, documents, the largest
    id of each `.bin` file) and count undecodable text in `undecodable`."""
    dtype = stream_dtype(vocab_size)
    num_tokens = num_docs = 0
    largest_ids: list[int] = []
    encode = _encoder(tokenizer)
    with tmp.open("wb") as out:
        stream = _Stream(out, dtype, eos_id)

        def flush(texts: list[str], afters: list[str], ends: list[bool]) -> int:
            ids: list[int] = []
            for piece, end in zip(_piece_ids(encode, texts, afters), ends, strict=True):
                ids += piece
                if end:
                    ids.append(eos_id)
            stream.write(np.asarray(ids, dtype=dtype))
            return len(ids)

        for source in sources:
            stream.next_source()
            with read_unchanged(source):
                if source.kind == "tokens":
                    tokens, documents, largest = _copy_token_file(source.path, bin_dtype, vocab_size, eos_id, stream)
                    largest_ids.append(largest)
                else:
                    tokens, documents = _write_texts(read_texts(source, text_field, undecodable), flush)
            num_tokens, num_docs = num_tokens + tokens, num_docs + documents
    return num_tokens + stream.separators, num_docs + stream.separators, largest_ids


def _piece_ids(encode: Callable[[list[str]], list[list[int]]], texts: list[str], afters: list[str]) -> list[list[int]]:
    """The token ids of `texts`, pieces of documents each of which follows the text `after` there ("" at a document's
    start, `read_texts`), in one `encode` call.

    A tokenizer takes the start of its input for the start of a text: a SentencePiece-style one adds its dummy prefix
    there ("▁"), a byte-level BPE with add_prefix_space a space. So a piece cut from a long file is encoded after its
    `after`, and the ids of `after` alone, the first of what that gives, are dropped: what remains are the ids the
    piece has in its whole document. Where they are not the first (a token across the cut, which no tokenizer we know
    makes at the points `read_texts` cuts at), the piece is encoded alone."""
    anchors = sorted({after for after in afters if after})
    ids = encode([after + text for text, after in zip(texts, afters, strict=True)] + anchors)
    anchor_ids = dict(zip(anchors, ids[len(texts) :], strict=True))
    pieces, unanchored = [], []
    for i, after in enumerate(afters):
        prefix = anchor_ids.get(after, [])
        pieces.append(ids[i][len(prefix) :])
        if ids[i][: len(prefix)] != prefix:
            unanchored.append(i)
    for i, alone in zip(unanchored, encode([texts[i] for i in unanchored]) if unanchored else [], strict=True):
        pieces[i] = alone
    return pieces


def _write_texts(
    pieces: Iterator[tuple[str, bool, str]], flush: Callable[[list[str], list[str], list[bool]], int]
) -> tuple[int, int]:
    """Tokenize the (text, ends_document, after) `pieces` of a source through `flush`, in calls of at most
    BATCH_PIECES pieces and about BATCH_CHARS characters; return (tokens, documents)."""
    tokens = documents = chars = 0
    texts: list[str] = []
    afters: list[str] = []
    ends: list[bool] = []
    for text, end, after in pieces:
        texts.append(text)
        afters.append(after)
        ends.append(end)
        documents += end
        chars += len(text)
        if len(texts) == BATCH_PIECES or chars >= BATCH_CHARS:
            tokens += flush(texts, afters, ends)
            texts, afters, ends, chars = [], [], [], 0
    if texts:
        tokens += flush(texts, afters, ends)
    return tokens, documents


@contextmanager
def _cache_writes(folder: Path) -> Iterator[None]:
    """A token cache that cannot be written — its disk full or read-only, or a path in it the system refuses (a folder
    under /proc) — is one line naming it and what to do; what the failed write left is removed by the blocks inside
    (`_tokenize_into`, `_cache_folder`). Errors of other paths (the data's, read in the same blocks) pass on."""
    try:
        yield
    except OSError as exc:
        if disk_full(exc, folder) or exc.errno == errno.EROFS:
            why = "its file system is read-only" if exc.errno == errno.EROFS else "its disk is full"
            raise OutputError(
                f"cannot write the token cache in {folder}: {why}; free some space there, or pass --cache-dir FOLDER "
                "on another disk"
            ) from None
        if exc.filename is not None and Path(os.fsdecode(exc.filename)).absolute().is_relative_to(folder.absolute()):
            raise OutputError(
                f"cannot write the token cache in {folder}: {exc.strerror or exc}; pass --cache-dir FOLDER (a folder "
                "you can write)"
            ) from None
        raise


@contextmanager
def _cache_folder(folder: Path) -> Iterator[None]:
    """Make the cache folder `folder` and its missing parents for the block; if the block fails (a tokenizer error,
    Ctrl-C, SIGTERM) the folders made here that it left empty are removed again: a stopped run leaves no empty
    `--cache-dir` behind."""
    made = []
    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        made.append(probe)  # deepest first, the order to remove them in
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(
            f"cannot make the token cache folder {folder}: a file is in the way; pass --cache-dir FOLDER"
        ) from None
    try:
        yield
    except BaseException:
        for path in made:
            try:
                path.rmdir()  # only when empty
            except OSError:
                break
        raise


def _lock(path: Path, *, wait: bool) -> int | None:
    """A descriptor holding an exclusive `flock` on the file now at `path` (made when missing), or None when another
    process holds it and `wait` is false. The holder before us may unlink the file as we open it: the lock taken is
    always on the path's current file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                return None
            err.print(f"note: waiting for another grow run that is tokenizing the same data into {path.parent}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _unlock(path: Path, fd: int) -> None:
    path.unlink(missing_ok=True)  # while still locked, so nobody locks a file about to vanish
    os.close(fd)


def _remove_abandoned(cache_dir: Path) -> None:
    """Remove the temporary streams of entries that no process is tokenizing: a killed run's, whose data changed
    since (the same data's next run removes them under its own lock), would otherwise stay for good."""
    for fingerprint in sorted({p.name.split(".")[1] for p in cache_dir.glob(".*.tmp")}):
        path = cache_dir / f".{fingerprint}.lock"
        fd = _lock(path, wait=False)
        if fd is None:
            continue  # being tokenized now
        try:
            for stale in cache_dir.glob(f".{fingerprint}.*.tmp"):
                stale.unlink(missing_ok=True)
        finally:
            _unlock(path, fd)


@contextmanager
def _entry_lock(cache_dir: Path, fingerprint: str) -> Iterator[None]:
    """Hold the lock of cache entry `fingerprint` (an advisory `flock` on `.<fingerprint>.lock`, dropped by the
    kernel however the holder dies): a second run of the same data waits for the first to tokenize it, then reads
    the cache instead of tokenizing again; and the temporary files that a killed run left, of this entry or of any
    other no run is tokenizing, are removed here."""
    path = cache_dir / f".{fingerprint}.lock"
    fd = _lock(path, wait=True)
    assert fd is not None
    try:
        for stale in cache_dir.glob(f".{fingerprint}.*.tmp"):
            stale.unlink(missing_ok=True)
        _remove_abandoned(cache_dir)
        yield
    finally:
        _unlock(path, fd)


def _cached_meta(stream_file: Path, meta_file: Path, token_files: int) -> dict | None:
    """The cache entry's metadata when both files are there and agree, and it holds the largest id of each of the
    data's `token_files` `.bin` files, copied under today's checks (`TOKEN_FILE_CHECKS`; entries written before grow
    recorded them lack them); None (tokenize again) otherwise — a metadata file cut, or edited into another shape
    (`META_SHAPE`), too."""
    try:
        meta = read_checked(meta_file, META_SHAPE)
        if stream_file.stat().st_size != meta["tokens"] * np.dtype(meta["dtype"]).itemsize:
            return None
    except (Unfit, OSError):
        return None
    if len(meta.setdefault("largest_ids", [])) != token_files:
        return None
    if token_files and meta.get("token_file_checks") != TOKEN_FILE_CHECKS:
        return None
    return meta


def _tokenize_into(
    sources: list[Source], tokenizer, text_field: str, eos_id: int, bin_dtype, vocab_size: int, stream_file: Path
) -> dict:
    """Tokenize `sources` into the cache entry `stream_file` and its `.json` metadata (each renamed into place
    whole); return the metadata."""
    tmp = stream_file.with_name(f".{stream_file.stem}.{os.getpid()}.tmp")
    undecodable: dict[str, int] = {}
    try:
        num_tokens, num_docs, largest_ids = _write_stream(
            sources, tokenizer, text_field, eos_id, bin_dtype, vocab_size, tmp, undecodable
        )
        tmp.replace(stream_file)  # rename last, so a crash never leaves a half-written cache behind
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "tokens": num_tokens,
        "documents": num_docs,
        "dtype": stream_dtype(vocab_size).name,
        "sources": [str(s.path) for s in sources],
        "undecodable": undecodable,
        "largest_ids": largest_ids,  # of the .bin files: checked again by a run of a model with fewer ids
        "token_file_checks": TOKEN_FILE_CHECKS,
    }
    # Whole or absent: a run killed before it re-tokenizes next time.
    write_whole(stream_file.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return meta


def prepare_tokens(
    sources: list[Source],
    tokenizer,
    *,
    text_field: str | None,
    seq_len: int,
    eval_fraction: float,
    vocab_size: int,
    eos_id: int,
    cache_dir: Path,
    dtype_name: str | None = None,
) -> TokenData:
    """Tokenize (or reuse the cache), pack into blocks of `seq_len` and split off the eval blocks. `text_field`:
    the field of tabular sources (None: `TEXT_FIELD`)."""
    bin_dtype = token_dtype(vocab_size, dtype_name)
    field = field_read(text_field)
    key = "|".join(
        [
            fingerprint_sources(sources, field),
            tokenizer_fingerprint(tokenizer),
            str(eos_id),
            bin_dtype.name,  # the stream's dtype is in the entry's metadata
            str(FORMAT_VERSION),
        ]
    )
    if open_ends := _open_ends(sources, bin_dtype, eos_id):  # (absent where there are none: their entries stay)
        key += "|eos after " + ",".join(map(str, open_ends))
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir)
    stream_file, meta_file = cache_dir / f"{fingerprint}.bin", cache_dir / f"{fingerprint}.json"
    token_files = [source.path for source in sources if source.kind == "tokens"]
    meta = _cached_meta(stream_file, meta_file, len(token_files))
    from_cache = meta is not None
    if meta is None:
        with _cache_writes(cache_dir), _cache_folder(cache_dir), _entry_lock(cache_dir, fingerprint):
            meta = _cached_meta(stream_file, meta_file, len(token_files))  # another run may have written it meanwhile
            from_cache = meta is not None
            if meta is None:
                meta = _tokenize_into(sources, tokenizer, field, eos_id, bin_dtype, vocab_size, stream_file)
    # The entry names the data, whatever the model: one made for a model with more ids holds ids this one lacks.
    for path, largest in zip(token_files, meta["largest_ids"], strict=True):
        _check_ids(path, largest, vocab_size)
    num_blocks = meta["tokens"] // seq_len
    num_eval = max(1, round(num_blocks * eval_fraction))
    if num_blocks < num_eval + 1:
        raise DataError(
            f"the data holds {meta['tokens']} tokens: too few for one training and one eval block "
            f"of --seq-len {seq_len}; add data or lower --seq-len"
        )
    stream = np.memmap(stream_file, dtype=np.dtype(meta["dtype"]), mode="r")
    blocks = stream[: num_blocks * seq_len].reshape(num_blocks, seq_len)
    order = np.random.default_rng(SPLIT_SEED).permutation(num_blocks)
    return TokenData(
        blocks=blocks,
        train_ids=np.sort(order[num_eval:]),
        eval_ids=evaluation_order(np.sort(order[:num_eval])),
        fingerprint=fingerprint,
        num_tokens=int(meta["tokens"]),
        num_documents=int(meta["documents"]),
        cache_file=stream_file,
        from_cache=from_cache,
        undecodable=dict(meta.get("undecodable", {})),
    )


def evaluation_order(ids: np.ndarray) -> np.ndarray:
    """The held-out blocks `ids` (in stream order) in the order evaluations read them, an evaluation of k blocks the
    first k (train-stage's `--eval-batches` × micro-batch, `grow compare`'s `--max-blocks`).

    In stream order the first k came from the start of the stream alone: the first source of several, ~1% of a large
    corpus. This is the van der Corput (bit-reversal) order of their ranks, so the first k are spread over the whole
    held-out set for every k — no 2 × len(ids) / k consecutive held-out blocks without one of them, each source
    represented in proportion to its held-out blocks — and a smaller evaluation reads a subset of a larger one.
    """
    bits = max(1, (len(ids) - 1).bit_length())
    ranks = np.arange(len(ids))
    reversed_ranks = np.zeros_like(ranks)
    for bit in range(bits):
        reversed_ranks |= ((ranks >> bit) & 1) << (bits - 1 - bit)
    return ids[np.argsort(reversed_ranks)]
