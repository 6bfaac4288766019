"""Every `grow …` command the documentation shows — in README.md's and docs/**/*.md's code blocks and in each
command's `--help` examples — parses as the user would type it: a real command, real options, a value of the
option's type for each that takes one, every required option, and no more arguments than the command has. A
renamed or removed flag, or an example broken over two lines, then fails here instead of in a user's shell. The
`grow expand` and `grow train-stage` commands also pass the checks of their values (GrowthSpec, TrainConfig), so a
renamed method or schedule fails too. Nothing runs: the library call is replaced, and paths need not exist."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer
from typer._click.exceptions import ClickException  # the click Typer vendors (see grow_cli/cli.py)

from grow_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent


def _pages() -> list[Path]:
    """README.md and the docs pages git tracks: not the model cards (README.md) that running the docs' examples
    writes under docs/ (ignored output), so that a checkout that ran them tests what a fresh one does."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--", "docs/*.md"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every page there is
        return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [ROOT / "README.md", *sorted(ROOT / name for name in listed)]


DOCS = _pages()
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
ENV = re.compile(r"^(?:[A-Z_]+=\S+ )+")
PLACEHOLDER = re.compile(r"(^|\s)(…|\.\.\.)(\s|$)|\[--")  # elided options, or a synopsis such as [--layers N]


def _grow_commands(text: str) -> list[str]:
    """The `grow …` commands of a shell snippet: continuations joined, each command of a `&&`, `;` or `|` chain
    apart, comments and leading VAR=value assignments dropped; lines with placeholders (…, [--opt]) skipped. Where
    a snippet shows a session (`$ command`, then its output), only the prompted lines are commands."""
    commands = []
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    if any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    for line in lines:
        line = line.split(" # ")[0]
        for part in re.split(r"&&|;|\|", line):
            part = ENV.sub("", part.strip())
            if part.startswith("grow ") and not PLACEHOLDER.search(part):
                commands.append(part)
    return commands


def _documented() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for block in FENCE.findall(path.read_text()):
            found += [(str(path.relative_to(ROOT)), command) for command in _grow_commands(block)]
    for command in app.registered_commands:
        epilog = command.epilog or ""
        code = [line for line in epilog.splitlines() if line.startswith("    ")] + INLINE.findall(epilog)
        found += [(f"grow {command.name} --help", line) for line in _grow_commands("\n".join(code))]
    return found


@functools.cache
def _group():
    return typer.main.get_command(app)


def _check(command_line: str) -> None:
    """Parse COMMAND_LINE with the real click command (options, their types, required ones, the number of
    arguments); raise click's error where the shell would print one. Commands are not invoked."""
    words = shlex.split(command_line)[1:]
    if words[:1] == ["--debug"]:
        words = words[1:]
    command = _group().commands.get(words[0])
    assert command is not None, f"no command {words[0]!r}"
    command.make_context(words[0], words[1:])


@pytest.mark.parametrize("where, command_line", _documented())
def test_a_documented_command_parses(where, command_line):
    _check(command_line)


def test_the_documents_show_commands_of_every_kind():
    commands = {line.split()[1] for _, line in _documented()}
    assert {c.name for c in app.registered_commands} <= commands


@pytest.mark.parametrize(
    "command_line",
    [
        "grow expand a b --depth-methd stack",  # no such option
        "grow expand a b --layers x",  # not a number
        "grow expand a b c",  # one argument too many
        "grow train-stage m --data d --out o --max-steps",  # an option without its value
        "grow nosuch a",
    ],
)
def test_a_wrong_command_line_is_caught(command_line):
    """The negative control: each of these would fail in a user's shell, so the check must fail too."""
    with pytest.raises((ClickException, AssertionError)):
        _check(command_line)


class _Reached(Exception):
    """Raised by the stand-in library call: the command line got past every check of its options."""


# The commands whose options the CLI turns into a checked object before any file is read: GrowthSpec for expand,
# TrainConfig for train-stage. Their library calls are replaced, so nothing runs and no path need exist.
CHECKED = {"expand": "grow_cli.growth.expand.expand", "train-stage": "grow_cli.train.loop.train_stage"}


def _checked_commands() -> list[tuple[str, str]]:
    return [(where, line) for where, line in _documented() if shlex.split(line)[1] in CHECKED]


def _run_to_the_library(command_line: str, monkeypatch) -> BaseException | None:
    """Run COMMAND_LINE through the real CLI with its library call replaced; the exception it ended with."""
    from typer.testing import CliRunner

    def reached(*args, **kwargs):
        raise _Reached

    words = shlex.split(command_line)[1:]
    monkeypatch.setattr(CHECKED[words[0]], reached)
    monkeypatch.setattr("grow_cli.hub.access.check_may_push", lambda *args, **kwargs: None)  # needs a token
    return CliRunner().invoke(app, words).exception


@pytest.mark.parametrize("where, command_line", _checked_commands())
def test_a_documented_command_passes_its_option_checks(where, command_line, monkeypatch):
    """Beyond parsing: the values are ones grow accepts (a method name, a schedule, an Apollo stage plan) and the
    options do not contradict each other, as `GrowthSpec`/`TrainConfig` check them before anything is read."""
    exception = _run_to_the_library(command_line, monkeypatch)
    assert isinstance(exception, _Reached), f"{where}: {command_line}\n{exception!r}"


@pytest.mark.parametrize(
    "command_line",
    [
        "grow expand a b --depth-method llama-pro",  # no such method
        "grow expand a b --layers 8 --depth-factor 2",  # contradictory
        "grow train-stage m --data d --out o --max-steps 10 --schedule wsd --decay-type exp",
        "grow train-stage m --data d --out o --max-steps 10 --apollo-stages 3,6",  # a stage without its step
    ],
)
def test_a_refused_option_value_is_caught(command_line, monkeypatch):
    """The negative control: each parses, so only the option checks can refuse it, and they do."""
    from grow_cli.errors import UsageError

    _check(command_line)
    assert isinstance(_run_to_the_library(command_line, monkeypatch), UsageError)
