"""Every relative link in README.md and docs/**/*.md leads somewhere: the file exists and, for a `#anchor` into a
Markdown page, a heading of that page has that anchor as GitHub makes it. A heading renamed without its links, or a
page that cites a file the repository lacks, then fails here instead of sending a reader nowhere.

So does every file of the repository a page names in backticks (`grow_cli/train/loop.py`, `train/step.py`,
`tests/test_claim.py::test_…`, `grow_cli/arch/definitions/*.json`), and docs/architecture.md's map of the modules
lists every module of grow_cli, so a module renamed, deleted or added without its line fails here too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_docs_commands import DOCS, FENCE, ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
PACKAGES = sorted(p.name for p in (ROOT / "grow_cli").iterdir() if (p / "__init__.py").is_file())
# A repository path in backticks: under grow_cli/, tests/ or benchmarks/, or under one of grow_cli's packages
# (`train/step.py`), or a bare test file (`test_x.py`); each may end in `::name` or `:name`, a test or function of it.
FOLDERS = "|".join(["grow_cli", "tests", "benchmarks", *PACKAGES])
NAMED = re.compile(rf"`((?:{FOLDERS})/[^`\s]*|test_\w+\.py(?:::[^`\s]*)?)`")
MAP = ROOT / "docs" / "architecture.md"
MAP_HEADING = re.compile(r"^### `(grow_cli/[\w/]*)`$")
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


def missing_files(text: str) -> list[str]:
    """The repository paths `text` names in backticks (see `NAMED`) that lead nowhere: no such file or folder (a glob
    matching nothing), or no `def`/`class` of the name after `::` or `:` in that file."""
    missing = []
    for named in NAMED.findall(FENCE.sub("", text)):
        path, _, name = named.partition("::") if "::" in named else named.partition(":")
        if path.split("/")[0] in ("grow_cli", "tests", "benchmarks"):
            base = ROOT
        else:
            base = ROOT / ("grow_cli" if "/" in path else "tests")
        if not any(base.glob(path)):
            missing.append(f"{named} (no such file)")
        elif (ident := re.match(r"[A-Za-z_]\w*", name)) and not re.search(
            rf"^\s*(?:async\s+)?(?:def|class)\s+{ident.group()}\b", (base / path).read_text(), re.M
        ):
            missing.append(f"{named} (no such function or class)")
    return missing


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_file_exists(page):
    assert missing_files(page.read_text()) == []


def map_entries(text: str) -> set[str]:
    """The paths docs/architecture.md's map names: each file in the first cell of a table row under a
    `### `grow_cli/<package>/`` heading, joined to that package."""
    named: set[str] = set()
    folder = None
    for line in text.splitlines():
        if heading := MAP_HEADING.match(line):
            folder = heading.group(1)
        elif line.startswith("#"):
            folder = None
        elif folder and line.startswith("|"):
            named.update(folder.rstrip("/") + "/" + name for name in re.findall(r"`([^`]+)`", line.split("|")[1]))
    return named


def map_gaps(text: str) -> tuple[list[str], list[str]]:
    """(what the map names that is not there, the modules of grow_cli it leaves out). A package's `__init__.py`
    other than grow_cli's own holds no code a reader looks for, and need not be listed."""
    named = map_entries(text)
    gone = sorted(path for path in named if not any(ROOT.glob(path)))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "grow_cli").rglob("*.py")}
    modules -= {m for m in modules if m.endswith("/__init__.py") and m != "grow_cli/__init__.py"}
    return gone, sorted(modules - named)


def test_the_architecture_map_lists_every_module():
    assert map_gaps(MAP.read_text()) == ([], [])


def test_a_renamed_module_breaks_the_pages_that_name_it():
    """The checks' negative controls: a module, a test and a test function that are not there, beside ones that
    are; and a map that names a module that is gone and leaves out one that is there."""
    assert missing_files(
        "`grow_cli/train/loop.py` `train/step.py` `train/stepping.py` `grow_cli/arch/definitions/*.json`"
        " `tests/test_claim.py::test_gone` `test_docs_links.py::map_gaps` `test_docs_linked.py`"
        " `data/tokens.py:evaluation_order` `benchmarks/bench_gone.py`"
    ) == [
        "train/stepping.py (no such file)",
        "tests/test_claim.py::test_gone (no such function or class)",
        "test_docs_linked.py (no such file)",
        "benchmarks/bench_gone.py (no such file)",
    ]
    text = MAP.read_text().replace("| `step_log.py` |", "| `step_logs.py` |")
    assert map_gaps(text) == (["grow_cli/train/step_logs.py"], ["grow_cli/train/step_log.py"])
