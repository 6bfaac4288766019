"""The key lists of a docs page, read as the tests check documents against them: docs/grow-json.md (grow.json) and
docs/json-output.md (each command's --json document) list keys as bullets of backticked paths under `### part`
headings, nested bullets for the keys below (`- `a`, `b` — …`). Written once here so that both pages are read, and
a key matched, alike.

A path is `a.b` (key `b` of the object `a`), `a[]` (each object of the list `a`), `<name>` (any one key) or ends in
`*` (everything below). A bullet whose text says "absent" marks keys a document may lack. A bullet that says
"keys as in [part](#anchor)" has that part's keys below its own; one that reads "every key of [part](#anchor)" has
that part's keys beside it, in the same object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from test_docs_links import slug

BULLET = re.compile(r"^( *)- ((?:`[^`]+`(?:, )?)+)(.*)$")
INCLUDE = re.compile(r"^( *)- every key of \[[^\]]*\]\(#([\w-]+)\)")
KEYS_AS_IN = re.compile(r"keys as in \[[^\]]*\]\(#([\w-]+)\)")


@dataclass(frozen=True)
class Key:
    path: tuple[str, ...]
    optional: bool = False  # its bullet says when it is absent
    see: str | None = None  # the part (by anchor) that lists the keys below it
    beside: bool = False  # `see` lists keys beside it ("every key of"), in the object `path` names


def documented(page: Path, section: str = "Every key") -> dict[str, list[Key]]:
    """The keys each part of `page`'s `## section` names, by part heading; each bullet's paths under those of the
    bullet it is indented under."""
    text = page.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    parts: dict[str, list[Key]] = {}
    part, parents = "", [[()]]
    for line in _bullets(text):
        if line.startswith("### "):
            part = line[4:].strip()
            parts[part] = []
        elif match := INCLUDE.match(line):
            depth = len(match[1]) // 2
            parts[part] += [Key(up, see=match[2], beside=True) for up in parents[depth]]
        elif match := BULLET.match(line):
            depth = len(match[1]) // 2
            names = [tuple(name.split(".")) for name in re.findall(r"`([^`]+)`", match[2])]
            paths = [up + name for up in parents[depth] for name in names]
            parents = [*parents[: depth + 1], paths]
            see = KEYS_AS_IN.search(match[3])
            parts[part] += [Key(p, "absent" in match[3], see and see[1]) for p in paths]
    return parts


def _bullets(text: str) -> list[str]:
    """The page's lines with each bullet whole: a bullet's continuation lines (indented, no `- `) joined to it, so
    that what its text says ("absent", "keys as in") is read wherever the line breaks."""
    lines: list[str] = []
    for line in text.splitlines():
        continued = line.startswith(" ") and not line.lstrip().startswith("- ")
        if continued and lines and lines[-1].lstrip().startswith("- "):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def by_anchor(parts: dict[str, list[Key]]) -> dict[str, list[Key]]:
    """The parts under their headings' anchors too, as the links between them name them."""
    return {**parts, **{slug(heading): keys for heading, keys in parts.items()}}


def key_paths(value, path=()):
    """Every key path of a JSON value: an object's keys, and under a list of objects `name[]`."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from key_paths(item, (*path, key))
    elif isinstance(value, list) and path:
        for item in value:
            if isinstance(item, dict):
                yield from key_paths(item, (*path[:-1], path[-1] + "[]"))


def covered(path: tuple[str, ...], patterns: list[tuple[str, ...]]) -> bool:
    """Whether a documented pattern names `path` or a key below it (an object is documented by its keys' bullets),
    with `<name>` for any one key, `a[]` for `a` (a list of objects) and a last `*` for everything below."""
    return any(names(path, pattern) for pattern in patterns)


def names(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if pattern and pattern[-1] == "*":
        pattern, path = pattern[:-1], path[: len(pattern) - 1]
    if len(path) > len(pattern):
        return False
    same = (
        p.startswith("<") or p.removesuffix("[]") == k.removesuffix("[]") for p, k in zip(pattern, path, strict=False)
    )
    return all(same)


def documents(path: tuple[str, ...], part: str, parts: dict[str, list[Key]]) -> bool:
    """Whether `part` documents the key `path`: a key of its own, or one of the part a key refers to."""
    for key in parts[part]:
        n = len(key.path)
        if key.see is None:
            if names(path, key.path):
                return True
        elif len(path) >= n and names(path[:n], key.path):
            if len(path) == n and not key.beside:
                return True
            if len(path) > n and documents(path[n:], key.see, parts):
                return True
    return False


def undocumented(document: dict, part: str, parts: dict[str, list[Key]]) -> list[str]:
    """The key paths of `document` that `part` of the page does not list, each once (however many items hold it)."""
    parts = by_anchor(parts)
    return list(dict.fromkeys(".".join(path) for path in key_paths(document) if not documents(path, part, parts)))


def missing(document: dict, part: str, parts: dict[str, list[Key]]) -> list[str]:
    """The keys `part` lists at the top of its document (and of each document one of its keys refers to) without
    saying when they are absent, that `document` lacks."""
    parts = by_anchor(parts)
    lacking = []
    for key in parts[part]:
        name = key.path[0].removesuffix("[]") if key.path else ""
        top = len(key.path) == 1 or key.path[1:] == ("*",)
        if key.beside:
            lacking += [m for below in _values_at(document, key.path) for m in missing(below, key.see, parts)]
        elif top and name not in document and not key.optional and not name.startswith("<"):
            lacking.append(name)
        elif key.see is not None:
            below = _values_at(document, key.path)
            lacking += [f"{'.'.join(key.path)}.{m}" for value in below for m in missing(value, key.see, parts)]
    return lacking


def _values_at(value, path: tuple[str, ...]):
    """The objects at `path` in a document: each object of a list there, each value of a `<name>` key."""
    if isinstance(value, list):
        for item in value:
            yield from _values_at(item, path)
    elif isinstance(value, dict):
        if not path:
            yield value
            return
        head = path[0].removesuffix("[]")
        items = value.values() if head.startswith("<") else [value[head]] if head in value else []
        for item in items:
            yield from _values_at(item, path[1:])


JSON_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "json-output.md"


def json_output_problems(part: str, document: dict) -> list[str]:
    """How a command's --json `document` differs from `part` of docs/json-output.md (`### part`, e.g. "`grow
    expand`"): each key the page does not list, and each it lists as always there that the document lacks. The
    tests that make a command's document anyway check it here, so that the page cannot drift from any of them."""
    parts = documented(JSON_OUTPUT)
    assert part in parts, f"docs/json-output.md has no part {part!r}"
    stray = [f"not on the page: {path}" for path in undocumented(document, part, parts)]
    lacking = dict.fromkeys(missing(document, part, parts))  # each once, however many list items lack it
    return stray + [f"on the page, not in the document: {name}" for name in lacking]
