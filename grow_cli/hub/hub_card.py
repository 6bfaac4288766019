"""Whether a push may replace the model card a Hub repo already holds.

grow renders README.md from grow.json, and a push sends it. A card the owner wrote on the Hub (a new repo made with
one, or grow's card edited there: results, a licence, intended use) would be replaced by every later push of the
same repo — by `grow train-stage --push-to-hub` after each stage, unnoticed. So before a push sends a card grow
rendered, the revision's own README.md is read (with the grow.json beside it, both small): it is replaced only when
it is the card grow renders from that grow.json, or the same text as the one sent. Any other card is kept, and the
push says so; `grow push --replace-card` replaces it. A card the user put in the folder by hand is theirs to send,
and is sent as it is.

A card rendered by another grow version that renders cards differently also counts as written by hand: it is
kept, and the note says how to replace it.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelInfo, hf_hub_url
from huggingface_hub.utils import build_hf_headers

from grow_cli import __version__
from grow_cli.hub.client import endpoint
from grow_cli.hub.headers import read_range
from grow_cli.json_shape import problem
from grow_cli.lineage.card import is_grow_card
from grow_cli.lineage.record import RECORD_FILE, SHAPE

CARD = "README.md"


def hub_card_is_owned(repo_id: str, head: ModelInfo, folder: Path, token: str) -> bool:
    """True when the revision `head` of `repo_id` holds a README.md that is neither the card in `folder` nor the card
    grow renders from the revision's own grow.json: the owner's, which a push keeps."""
    sizes = {entry.rfilename: entry.size for entry in head.siblings or []}
    if CARD not in sizes:
        return False
    text = _read(repo_id, head, CARD, sizes[CARD], token).decode(errors="replace")
    if text == (folder / CARD).read_text():
        return False
    if RECORD_FILE not in sizes:
        return True
    try:
        record = json.loads(_read(repo_id, head, RECORD_FILE, sizes[RECORD_FILE], token))
    except ValueError:  # not JSON: no record a card could be rendered from
        return True
    return problem(record, SHAPE) is not None or not is_grow_card(text, record)


def _read(repo_id: str, head: ModelInfo, name: str, size: int | None, token: str) -> bytes:
    """The file `name` of the revision `head`, whole (`size` bytes as the Hub lists it)."""
    url = hf_hub_url(repo_id, name, revision=head.sha, endpoint=endpoint())
    headers = build_hf_headers(token=token, library_name="grow", library_version=__version__)
    return read_range(url, headers, 0, size or 0, f"{name} of {repo_id}") if size else b""
