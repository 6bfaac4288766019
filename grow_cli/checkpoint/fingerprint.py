"""A fingerprint of a model folder's weights that costs milliseconds, by which a run tells one model from another.

A resume checks that its checkpoint was trained from MODEL's weights (the trained model takes its config, tokenizer,
lineage and card from MODEL), and a family checks that a member's `grown/` was grown from the previous member as it
is now. Hashing every byte of a large model would take minutes at every start.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from grow_cli.checkpoint.files import WEIGHT_SUFFIXES

# `weights_fingerprint` reads this many evenly spaced pieces of each weight file: any stretch of bytes longer than
# about 1/63 of the file (a layer of a deep model) holds one.
FINGERPRINT_READS = 64
FINGERPRINT_READ_BYTES = 4096


def weights_fingerprint(model_dir: Path) -> str:
    """Each weight file's name and size and FINGERPRINT_READS evenly spaced pieces of its bytes (the whole of a
    smaller file): a moved or copied folder keeps it, another initialisation or a trained or grown model changes it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}|".encode())
        with path.open("rb") as file:
            if size <= FINGERPRINT_READS * FINGERPRINT_READ_BYTES:
                digest.update(file.read())
                continue
            for i in range(FINGERPRINT_READS):
                file.seek(i * (size - FINGERPRINT_READ_BYTES) // (FINGERPRINT_READS - 1))
                digest.update(file.read(FINGERPRINT_READ_BYTES))
    return digest.hexdigest()[:16]
