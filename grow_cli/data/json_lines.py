"""JSON Lines: one object per line, its text in a field; what is not is refused by file, or by line."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grow_cli.data.file_head import UTF16_BOMS, UTF16_FIX, first_bytes
from grow_cli.errors import DataError, first_line


def check_json_lines(path: Path) -> None:
    """Refuse a `.json` file that holds one JSON document, not JSON Lines, judged by its first 8 KB: an array of
    records (Alpaca's alpaca_data.json is one) or an object written over several lines. Read line by line, they were
    "not valid JSON (Expecting value)" at line 1, or "no text field 'text' (found: none)" for an array on one line."""
    head = first_bytes(path).removeprefix(codecs.BOM_UTF8).lstrip()
    if head.startswith(b"["):
        raise DataError(
            f"--data {path}: the file holds a JSON array, not JSON Lines (one object per line); convert it, e.g. "
            f"jq -c '.[]' {path} > NEW.jsonl"
        )
    if head.split(b"\n", 1)[0].strip() == b"{":
        raise DataError(
            f"--data {path}: the file holds one JSON document over several lines, not JSON Lines (one object per "
            "line); write each record on a line of its own"
        )


JSON_KINDS = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    type(None): "null",
    list: "a list",
    dict: "an object",
}


def json_object(record: Any, where: str) -> dict[str, Any]:
    """The JSON Lines record `record`, read at `where`, which must be an object (a string or a list holds no field:
    it was refused as lacking the text field, with advice to pass --text-field)."""
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: the line holds {JSON_KINDS[type(record)]}, not a JSON object; each line must be one object, its "
            "text in a field"
        )
    return record


LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins the pairs; what is left is unpaired


def json_text(value: Any, text_field: str, where: str) -> str:
    """The text of one JSON Lines record: a null is an empty document, as a null in a Parquet column is; a number,
    list or object is refused rather than trained on as its Python repr ("7", "['a', 'b']", "None")."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{where}: the field '{text_field}' holds {JSON_KINDS[type(value)]}, not text; pass --text-field NAME "
            "of a text field"
        )
    if lone := LONE_SURROGATE.search(value):  # JSON allows the escape; no text encoding holds it
        raise DataError(
            f"{where}: the field '{text_field}' holds an unpaired UTF-16 surrogate (\\u{ord(lone.group()):04x} at "
            f"character {lone.start() + 1}), which is not text; fix or remove that line"
        )
    return value


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON Lines file; a line that is not UTF-8 JSON (the format
    requires UTF-8) is refused by its number. A UTF-8 byte-order mark opening a line is skipped, as RFC 8259 lets a
    parser do (Windows tools write one; it was refused as "not valid JSON"), and a UTF-16 one is named."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(UTF16_BOMS):
                raise DataError(f"--data {path}: {UTF16_FIX}")
            raw = raw.removeprefix(codecs.BOM_UTF8)  # (on any line: files that had one, concatenated)
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{n}: not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); JSON Lines must "
                    "be UTF-8: convert the file (e.g. iconv -f latin1 -t utf-8)"
                ) from None
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{n}: not valid JSON (nested too deeply to read)") from None
            except ValueError as exc:  # e.g. an integer of more digits than Python converts
                raise DataError(f"{path}:{n}: not valid JSON ({first_line(exc, 200)})") from None
