"""Where grow writes: reports on stdout (`out`; a JSON document instead with `--json`), progress and
messages on stderr (`err`).

Progress bars are rich `Progress` objects on stderr; they stay silent when stderr is not a terminal or when the
user asked for `--quiet`, so logs and CI output stay clean.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_table(table: Any, console: Console = out) -> None:
    """Print a rich table at its natural width, never narrower: piped, logged or on a narrow terminal, rich would
    otherwise squeeze the columns and cut numbers and headers ("6.88e+…")."""
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update(width=1 << 16), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    width = console.width
    console.width = natural
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def print_json(payload: Any) -> None:
    """Write one JSON document to stdout (the only thing grow ever writes to stdout)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def byte_progress(description: str, total_bytes: int, *, quiet: bool = False):
    """A progress bar over bytes (with tensor count in the description) on stderr; yields an `advance(n)`."""
    disabled = quiet or not err.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=disabled,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total_bytes)

        def advance(nbytes: int, description: str | None = None) -> None:
            progress.update(task, advance=nbytes, description=description or progress.tasks[0].description)

        yield advance


@contextmanager
def count_progress(description: str, total: int | None, *, quiet: bool = False):
    """A progress bar over a count of items on stderr; yields an `advance(n=1, **fields)`."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, **fields: Any) -> None:
            progress.update(task, advance=n, **fields)

        yield advance
