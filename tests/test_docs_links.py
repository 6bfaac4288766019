"""Every relative link in README.md and docs/**/*.md leads somewhere: the file exists and, for a `#anchor` into a
Markdown page, a heading of that page has that anchor as GitHub makes it. A heading renamed without its links, or a
page that cites a file the repository lacks, then fails here instead of sending a reader nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_docs_commands import DOCS, FENCE, ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped (hyphens and underscores kept),
    spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of `page`'s headings; a repeated heading's second anchor gets GitHub's `-1`."""
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        anchor = slug(heading)
        if anchor in found:
            anchor = next(f"{anchor}-{n}" for n in range(1, 100) if f"{anchor}-{n}" not in found)
        found.add(anchor)
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", link):  # https:, mailto:: not this repository's
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no such heading)")
    return broken


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page):
    assert broken_links(page) == []


def test_a_renamed_heading_breaks_its_links(tmp_path):
    """The check's negative control: a link to a heading that is not there, and to a file that is not there."""
    page = tmp_path / "page.md"
    page.write_text(
        "## Dense first layers: DeepSeek-V2/V3/V3.2, GLM-4.5\n\n[a](#dense-first-layers-deepseek-v2v3-glm-45)"
        " [b](#dense-first-layers-deepseek-v2v3v32-glm-45) [c](operators.md)\n"
    )
    assert broken_links(page) == [
        "#dense-first-layers-deepseek-v2v3-glm-45 (no such heading)",
        "operators.md (no such file)",
    ]
