"""Shared fixtures: tiny checkpoints of every architecture (built once per session) and an in-process CLI runner
that goes through the real `grow` entry point, error translation included."""

from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


def pytest_collection_modifyitems(items):
    """The tests marked slow run first: under the README's `-n auto` the workers then share out the many short tests
    at the end, instead of one worker finishing a long test (mypy, two-process training) while the others wait."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", autouse=True)
def grow_cache(tmp_path_factory):
    """grow's per-user cache (`grow_cli.cache`) in a folder of this test session: tests never read or write the
    user's, and start with it empty."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GROW_CACHE_DIR", str(tmp_path_factory.mktemp("grow-cache")))
        yield


@pytest.fixture(autouse=True)
def no_grow_ending_in_pytest():
    """No test leaves the `grow` process's ending (`signals.end_without_finalizing`) registered in pytest's own
    process: it ended pytest with the last command's status (130 after a Ctrl-C test) and skipped pytest's exit
    handlers (a /tmp/grow-tinylm-* folder left per run), which `-n auto` hides. A test of the `grow` script runs it
    in a child process."""
    yield
    from grow_cli import signals

    if signals._ending["registered"]:
        atexit.unregister(signals._end_now)
        signals._ending.update(registered=False, status=1)
        pytest.fail("the test registered the grow process's ending in pytest's; run the grow script in a subprocess")


@pytest.fixture(autouse=True)
def signal_handlers_left_as_found(request):
    """No test leaves Ctrl-C or SIGTERM handled otherwise than it found them, but for grow's own handlers, which an
    in-process command installs as the CLI does (`cli` fixture): a later test's Ctrl-C went to the left handler. In
    CI, twice, SIGINT was ignored in one pytest worker when a test sent one (its command then ran on as if none had
    come); the test that left it so fails here, by name."""
    watched = (signal.SIGINT, signal.SIGTERM)
    before = {signum: signal.getsignal(signum) for signum in watched}
    yield
    left = {
        signal.Signals(signum).name: handler
        for signum, handler in ((s, signal.getsignal(s)) for s in watched)
        if handler is not before[signum] and getattr(handler, "__module__", None) != "grow_cli.signals"
    }
    for signum, handler in before.items():
        signal.signal(signum, handler)
    if left:
        pytest.fail(f"{request.node.nodeid} left {left} as signal handlers (it found {before}); restore them")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """`tiny_checkpoints(name)` → a folder holding a sharded tiny checkpoint of kind `name` (read-only use)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = tiny_models.save_tiny(name, tmp_path_factory.mktemp(f"src-{name}"))
        return cache[name]

    return get


@pytest.fixture
def tiny_copy(tiny_checkpoints, tmp_path):
    """`tiny_copy(name)` → a private copy of a tiny checkpoint that a test may damage."""

    def get(name: str) -> Path:
        dest = tmp_path / f"copy-{name}"
        shutil.copytree(tiny_checkpoints(name), dest)
        return dest

    return get


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> CliResult:
    """Run `grow ARGS…` in-process through `grow_cli.cli.main` and capture exit code, stdout and stderr."""
    from grow_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    argv = sys.argv
    sys.argv = ["grow", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def empty_tempdir(tmp_path, monkeypatch):
    """The folder Python's `tempfile` uses, empty and the test's own, so a test can see what a command left there."""
    import tempfile

    folder = tmp_path / "tempdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def grow_handlers():
    """grow's handlers of Ctrl-C and SIGTERM installed as the CLI installs them (`grow_cli.signals`), and the test
    process's own put back after the test."""
    from grow_cli.signals import remember_interrupts, terminate_like_interrupt

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    unraisable_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    remember_interrupts()
    terminate_like_interrupt()
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)
    sys.unraisablehook = unraisable_hook
