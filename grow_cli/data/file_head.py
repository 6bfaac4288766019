"""What the first bytes of a data file tell before it is read: compressed, UTF-16 or binary, each refused by name;
and whether a text file holds nothing but whitespace."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from grow_cli.errors import DataError

BINARY_PROBE = 8192  # bytes read to tell a binary file from text (and, at a time, whitespace from text)
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# The magic numbers of compressed files (bzip2's with its block header: text may begin "BZh")
COMPRESSED = {
    "gzip": re.compile(rb"\x1f\x8b"),
    "zstd": re.compile(rb"\x28\xb5\x2f\xfd"),
    "bzip2": re.compile(rb"BZh[1-9]1AY&SY"),
    "xz": re.compile(rb"\xfd7zXZ\x00"),
    "zip": re.compile(rb"PK\x03\x04"),
}
UTF16_FIX = "the file is UTF-16 text; convert it to UTF-8 (e.g. iconv -f utf-16 -t utf-8) and pass that"


def first_bytes(path: Path) -> bytes:
    """The first 8 KB of the data file `path`; a compressed one (its format's magic number first) is refused, naming
    the format: it was "binary (it holds NUL bytes)", or in a .jsonl "not UTF-8 (byte 0x8b …)", with advice to
    convert from latin1."""
    with path.open("rb") as f:
        head = f.read(BINARY_PROBE)
    for format, magic in COMPRESSED.items():
        if magic.match(head):
            raise DataError(f"--data {path}: the file is compressed ({format}); decompress it and pass the result")
    return head


def check_text_file(path: Path) -> None:
    """Refuse a text source that is not UTF-8 text, judged by its first 8 KB: a compressed file (`first_bytes`) or
    UTF-16 (a byte-order mark, as Windows writes "Unicode" text) is named as such, rather than as binary; a NUL byte
    otherwise marks binary, which text never holds and images, archives, executables and weights almost surely do."""
    head = first_bytes(path)
    if head.startswith(UTF16_BOMS):
        raise DataError(f"--data {path}: {UTF16_FIX}")
    if b"\0" in head:
        raise DataError(
            f"--data {path}: the file is binary (it holds NUL bytes), not text; pass text, .jsonl, .parquet or "
            "pre-tokenized .bin files"
        )


def only_whitespace(path: Path) -> bool:
    """Whether the text file `path` holds nothing but whitespace (and a byte-order mark), which would be trained on as
    a document of whitespace: read until its first other character, the first bytes of any other file, so memory
    stays bounded."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")  # (a byte that is not UTF-8 is text)
    with path.open("rb") as f:
        while block := f.read(BINARY_PROBE):
            if decoder.decode(block).strip():
                return False
    return not decoder.decode(b"", final=True).strip()
