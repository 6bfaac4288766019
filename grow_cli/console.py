"""Where grow writes: reports on stdout (`out`; a JSON document instead with `--json`), progress and
messages on stderr (`err`); how it keeps what libraries write off them (`keep_stdout_for_json`,
`quiet_transformers`, `hub_bars_only_on_a_terminal`); and how it writes a byte size.

Progress bars are rich `Progress` objects on stderr; they stay silent when stderr is not a terminal or when the
user asked for `--quiet`, so logs and CI output stay clean. Byte sizes are decimal everywhere (kB, MB, GB), as
Hugging Face names shard sizes (`--shard-size 5GB`) and as the Hub shows file sizes.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

out = Console(highlight=False, soft_wrap=True)  # a long line is one line, piped or logged; a terminal wraps it
err = Console(stderr=True, highlight=False, soft_wrap=True)


def format_bytes(n: float) -> str:
    """A byte count for people: `512 B`, `20.5 kB`, `1.3 MB`, `4.97 GB` (decimal units, three significant digits)."""
    unit = "B"
    for larger in ("kB", "MB", "GB", "TB"):
        if n < 999.5:
            break
        n, unit = n / 1000, larger
    return f"{int(n)} B" if unit == "B" else f"{n:.3g} {unit}" if n < 999.5 else f"{n:.0f} {unit}"


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


_json_stdout: TextIO | None = None  # the real stdout, once `keep_stdout_for_json` moved everything else off it


def keep_stdout_for_json() -> None:
    """Keep the process's stdout for `print_json` alone, and send whatever else writes there to stderr.

    `--json` promises one JSON document on stdout, but libraries write there too: DeepSpeed's logger and its op
    builders (JIT-compiled on first use) print to stdout, from Python and from C. So a whole `grow` process with
    `--json` (`cli.script`; not an in-process caller of `cli.main`, whose streams are its own) points file
    descriptor 1 and `sys.stdout` at stderr and keeps a duplicate of the original stdout for the JSON document.
    Without a stdout (closed) or a stderr, nothing changes: the command then fails as it did, in one line."""
    global _json_stdout
    if sys.stdout is None or sys.stderr is None:
        return
    sys.stdout.flush()
    try:
        kept = os.dup(1)
    except OSError:
        return
    os.dup2(2, 1)
    _json_stdout = os.fdopen(kept, "w", encoding="utf-8")
    sys.stdout = sys.stderr


class _LinesDropped(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


@contextmanager
def dropped_log_lines(fragment: str, *loggers: str):
    """The log lines of `loggers` (by name) that contain `fragment` dropped for the block, the others kept: a
    library's warning that grow says in its own words, or has shown to be harmless, would only worry users."""
    drop = _LinesDropped(fragment)
    for name in loggers:
        logging.getLogger(name).addFilter(drop)
    try:
        yield
    finally:
        for name in loggers:
            logging.getLogger(name).removeFilter(drop)


@contextmanager
def quiet_transformers():
    """transformers' logging (below errors), Python warnings and progress bars off for the block, then as they were:
    grow's output is its own while it reads a config or loads a model (transformers' notices about a config's token
    ids beyond the vocabulary, its tables of created weights) or builds one of its own tiny instances. Errors still
    raise, and grow says what matters in its own words."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextmanager
def hub_bars_only_on_a_terminal(*, quiet: bool = False):
    """huggingface_hub's own progress bars (a download's "Fetching N files", an upload's per-file bars) off for the
    block when stderr is not a terminal or the user asked for `quiet`, as grow's own are (`byte_progress`): piped or
    logged, tqdm writes each update as a fragment ending in a carriage return, and a CI log or `2> log` filled with
    them. A command with `-q` wraps its downloads and pushes in it; a block within keeps the bars off."""
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module: the package's `tqdm` is the class
    if err.is_terminal and not quiet:
        yield
        return
    states = dict(hub_tqdm.progress_bar_states)
    hub_tqdm.disable_progress_bars()
    try:
        yield
    finally:
        hub_tqdm.progress_bar_states.clear()
        hub_tqdm.progress_bar_states.update(states)


def print_json(payload: Any) -> None:
    """Write one JSON document to stdout (the only thing grow ever writes to stdout)."""
    stream = _json_stdout or sys.stdout
    stream.write(json.dumps(_finite(payload), indent=2, default=str) + "\n")
    stream.flush()


def _finite(value: Any) -> Any:
    """`value` with each NaN or infinity as None (null): JSON has no such numbers, and strict parsers refuse the
    bare `NaN` and `Infinity` Python's json module writes for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@contextmanager
def activity(message: str, *, quiet: bool = False):
    """A spinner with `message` on stderr while a step without a measurable total runs (gone when it ends), so a
    long wait after a finished progress bar does not look like a hang; silent when quiet or not a terminal."""
    if quiet or not err.is_terminal:
        yield
        return
    with err.status(message):
        yield


@contextmanager
def byte_progress(description: str, total_bytes: int, *, quiet: bool = False):
    """A progress bar over bytes (with tensor count in the description) on stderr; yields an `advance(n)`."""
    disabled = quiet or not err.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=False),
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
