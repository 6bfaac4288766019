"""A push keeps a model card the repo's owner wrote on the Hub, and replaces the one grow rendered (`hub_card.py`)."""

from __future__ import annotations

import json

import pytest
from fake_hub import TOKEN, fake_hub_fixture, make_grown_folder  # noqa: F401 (fixtures)

from grow_cli.hub.push import push_folder

REPO = "acme/tiny-grown"
OWNERS_CARD = b"---\nlicense: apache-2.0\n---\n\n# Tiny grown\n\nResults, intended use: written on the Hub.\n"


@pytest.fixture
def grown(tmp_path):
    return make_grown_folder(tmp_path / "tiny-grown")


def _next_stage(folder):
    """The folder as a later stage leaves it: another grow.json and its card, which differs from the one pushed."""
    from grow_cli.lineage.card import write_card

    record = json.loads((folder / "grow.json").read_text())
    record["stages"].append({**record["stages"][-1], "created": "2026-12-04T12:00:00Z"})
    (folder / "grow.json").write_text(json.dumps(record))
    write_card(folder, record)


def test_a_card_written_on_the_hub_is_kept_and_replace_card_replaces_it(fake_hub, grown):
    fake_hub.add_files(REPO, {"README.md": OWNERS_CARD})
    result = push_folder(grown, REPO, token=TOKEN)
    assert result["card"] == "hub" and result["changed"]
    held = fake_hub.files(REPO)
    assert held["README.md"] == OWNERS_CARD and held["grow.json"] == (grown / "grow.json").read_bytes()
    assert "README.md" not in {f["path"] for f in result["files"]}

    replaced = push_folder(grown, REPO, token=TOKEN, replace_card=True)
    assert replaced["card"] == "regenerated"
    assert fake_hub.files(REPO)["README.md"] == (grown / "README.md").read_bytes()


def test_grows_own_card_is_replaced_and_one_edited_on_the_hub_is_kept(fake_hub, grown):
    """The negative control: a card grow rendered from the repo's grow.json is the tool's, and a later stage's push
    replaces it; the same card with a line added on the Hub is the owner's, and stays."""
    push_folder(grown, REPO, token=TOKEN)
    first = fake_hub.files(REPO)["README.md"]
    _next_stage(grown)
    assert push_folder(grown, REPO, token=TOKEN)["card"] == "regenerated"
    second = fake_hub.files(REPO)["README.md"]
    assert second != first and second == (grown / "README.md").read_bytes()

    edited = second + b"\n## Evaluation\n\nAdded on the Hub.\n"
    fake_hub.add_files(REPO, {"README.md": edited})
    _next_stage(grown)
    assert push_folder(grown, REPO, token=TOKEN)["card"] == "hub"
    assert fake_hub.files(REPO)["README.md"] == edited


def test_a_card_the_folder_holds_by_hand_is_sent_as_it_is(fake_hub, grown):
    fake_hub.add_files(REPO, {"README.md": OWNERS_CARD})
    (grown / "README.md").write_text("# Mine\n\nWritten in the folder.\n")
    assert push_folder(grown, REPO, token=TOKEN)["card"] == "kept"
    assert fake_hub.files(REPO)["README.md"] == b"# Mine\n\nWritten in the folder.\n"


def test_the_command_says_the_card_was_kept_and_how_to_replace_it(fake_hub, grown, cli):
    fake_hub.add_files(REPO, {"README.md": OWNERS_CARD})
    result = cli("push", grown, REPO, "--token", TOKEN)
    assert result.code == 0, result.stderr
    assert f"note: README.md on {REPO} (branch main) was not written by grow" in result.stderr
    assert f"`grow push {grown} {REPO} --replace-card` replaces it" in result.stderr
    assert fake_hub.files(REPO)["README.md"] == OWNERS_CARD
