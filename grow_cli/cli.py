"""The `grow` command line: one Typer app whose commands parse options, call one library function each, and
render the result. Library errors (`grow_cli.errors.GrowError`) are translated here, once, into a single line on
stderr and a non-zero exit code; `--debug` shows the traceback instead. Under `accelerate launch` an error that every
process found before they joined up is printed once, later ones by every rank with its rank (`grow_cli.launch`).

Command modules live in `grow_cli/commands/` and import torch/transformers only inside the command body, so
`grow --help` stays instant.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from typing import Any, NoReturn

import typer

from grow_cli import __version__
from grow_cli.commands import compare as compare_cmd
from grow_cli.commands import demo as demo_cmd
from grow_cli.commands import expand as expand_cmd
from grow_cli.commands import family as family_cmd
from grow_cli.commands import inspect as inspect_cmd
from grow_cli.commands import plan as plan_cmd
from grow_cli.commands import push as push_cmd
from grow_cli.commands import train_stage as train_stage_cmd

CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what would break the last line: C0 but the tab, DEL

app = typer.Typer(
    name="grow",
    help=(
        "Grow a pretrained transformer checkpoint into a larger one (depth and width), train it further, "
        "and publish it.\n\nRun `grow COMMAND --help` for a command's options and examples."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)

app.command("inspect", no_args_is_help=True, epilog=inspect_cmd.EXAMPLES)(inspect_cmd.inspect)
app.command("expand", no_args_is_help=True, epilog=expand_cmd.EXAMPLES)(expand_cmd.expand)
app.command("demo", epilog=demo_cmd.EXAMPLES)(demo_cmd.demo)
app.command("plan", no_args_is_help=True, epilog=plan_cmd.EXAMPLES)(plan_cmd.plan)
app.command("compare", no_args_is_help=True, epilog=compare_cmd.EXAMPLES)(compare_cmd.compare)
app.command("family", no_args_is_help=True, epilog=family_cmd.EXAMPLES)(family_cmd.family)
app.command("push", no_args_is_help=True, epilog=push_cmd.EPILOG)(push_cmd.push)
app.command("train-stage", no_args_is_help=True, epilog=train_stage_cmd.EXAMPLES)(train_stage_cmd.train_stage)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"grow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    if debug:
        os.environ["GROW_DEBUG"] = "1"


def _run_app() -> None:
    """Run the app with click's own error display off, so that a mistyped option or value gets one line like
    every other refusal (click draws a multi-line box), and Ctrl-C is named (Typer turns it into exit 130). A
    Ctrl-C or SIGTERM whose exception was lost on its way still ends the command as interrupted, never with 0."""
    # Typer (0.26 to 0.29 at least) raises the exceptions of the click it vendors, not of an installed click.
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from grow_cli.signals import Terminated, caught_signal

    empty = _empty_argument(sys.argv[1:])
    if empty is not None:
        _report(f"error: {empty}", every_rank=True)
        sys.exit(2)
    try:
        code = app(prog_name="grow", standalone_mode=False)  # returns the exit code of --help, --version, Ctrl-C
    except NoArgsIsHelpError:  # a bare `grow X`: Typer has printed X's help
        sys.exit(2)
    except UsageError as exc:
        _report(f"error: {exc.format_message().rstrip('.')}; see `{_command_path(exc)} --help`")
        sys.exit(exc.exit_code)
    except ClickException as exc:
        _report(f"error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except typer.Abort:  # end of input at a prompt
        _report("aborted", error=False)
        sys.exit(1)
    caught = caught_signal()  # even where its exception was lost on the way (`signals.caught_signal`)
    if caught == signal.SIGTERM:
        raise Terminated
    if code == 128 + signal.SIGINT or caught == signal.SIGINT:
        _stopped_by_ctrl_c()
    sys.exit(code if isinstance(code, int) else 0)  # always, as click's standalone mode did


def _stopped_by_ctrl_c() -> NoReturn:
    """Ctrl-C's one line (saying what output was already complete) and its exit status, 130."""
    from grow_cli.signals import interruption_note, stopped_by

    _report(f"{stopped_by(signal.SIGINT)}{interruption_note()}", error=False)
    sys.exit(128 + signal.SIGINT)


def _empty_argument(args: list[str]) -> str | None:
    """The refusal of an argument that is an empty string, naming it as the command's help does (argument 'out', the
    value of --cache-dir), or None. No grow argument takes one, and a path given as "" is the working folder:
    `grow expand SRC "$OUT" --force` with OUT unset would replace it."""
    if not any(arg == "" or (arg.startswith("--") and arg.endswith("=")) for arg in args):
        return None  # the usual case, without building the command tree below
    from typer.main import get_command

    group: Any = get_command(app)
    command: Any = None
    positional, option, options_end = 0, None, False
    for arg in args:
        if option is not None:  # the value of the option before it
            if arg == "":
                return f"the value of {option} is empty (an unset shell variable?); give a value, or leave it out"
            option = None
        elif arg.startswith("--") and arg.endswith("=") and not options_end:
            return f"the value of {arg[:-1]} is empty (an unset shell variable?); give a value, or leave it out"
        elif arg == "--" and not options_end:
            options_end = True
        elif arg.startswith("-") and len(arg) > 1 and not options_end:
            option = _option_with_value(command or group, arg)
        elif command is None:
            command = group.commands.get(arg)
            if command is None:  # no such command: click names it ('' too)
                return None
        elif arg == "":
            return _empty_positional(command, positional)
        else:
            positional += 1
    return None


def _option_with_value(command: Any, arg: str) -> str | None:
    """`arg` (an option of `command`) when the next argument is its value; None for a flag or `--name=value`. An
    option the command lacks is taken as one with a value: click refuses it anyway, and an empty string after it is
    named as its value."""
    if "=" in arg:
        return None
    for param in command.params:
        if arg in getattr(param, "secondary_opts", ()):  # --no-liger
            return None
        if param.param_type_name == "option" and arg in param.opts:
            return None if param.is_flag or param.count else arg
    return arg


def _empty_positional(command: Any, index: int) -> str:
    """The refusal of the `index`-th positional argument of `command` given as an empty string: named as click names
    it in its own refusals (`Missing argument 'out'`), told to be left out only where it may be."""
    arguments = [param for param in command.params if param.param_type_name == "argument"]
    if index >= len(arguments):  # an extra one: click would refuse it as such
        names = " and ".join(f"'{argument.name}'" for argument in arguments)
        return f"an extra argument is empty: grow {command.name} takes only {names}; drop it"
    argument = arguments[index]
    leave = "" if argument.required else ", or leave it out"
    return f"argument '{argument.name}' is empty (an unset shell variable?); give a value{leave}"


def _report(line: str, *, error: bool = True, every_rank: bool = False) -> None:
    """Print the run's last line on stderr: once under a distributed launch when every process found the same
    thing (before the processes joined up, or an error of that kind: `every_rank`), else from every rank, naming it
    (`grow_cli.launch`). A process that says nothing of an `error` waits for the one that says it (an interruption
    ends every process anyway). It is one line whatever the message holds: a control character, such as the newline
    or terminal escape of a file name it quotes, is written escaped (`\\n`, `\\x1b`)."""
    from grow_cli.launch import error_prefix, wait_for_the_reporting_process

    line = CONTROL_CHARACTER.sub(lambda found: repr(found.group())[1:-1], line)
    prefix = error_prefix(every_rank)
    if prefix is None and error:
        wait_for_the_reporting_process()
    elif prefix is not None:
        # One write per line: under PYTHONUNBUFFERED `print` writes the text and its newline apart, and the ranks'
        # lines, sharing one pipe, then run together.
        sys.stderr.write(f"{prefix}{line}\n")


def _command_path(exc: Any) -> str:
    """`grow COMMAND` of a usage error: its context's, or (the option parser gives none) the command named in argv."""
    if exc.ctx is not None:
        return exc.ctx.command_path
    names = {command.name for command in app.registered_commands}
    return " ".join(["grow", *[arg for arg in sys.argv[1:] if arg in names][:1]])


def _too_long(path: object) -> str:
    """The one line for a path the file system refuses as too long (any path the user gave: a source, an output,
    data), shortened so that the line stays readable."""
    text = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else "a path"
    shown = text if len(text) <= 80 else f"{text[:40]}…{text[-30:]} ({len(text):,} characters)"
    return f"{shown} is too long for the file system (at most 255 bytes per name, 4,096 in all); choose a shorter path"


def script() -> None:
    """The `grow` command and `python -m grow_cli`: `main`, in a process that ends as soon as it is done.

    The process ends with the command's exit status as soon as the last exit handler has run, skipping the
    interpreter's finalization (`signals.end_without_finalizing`). A Ctrl-C that lands while the exit handlers run
    ends the process at once (`signals.end_at_once_when_interrupted`), as does one that stopped the command while a
    library's threads still work for it (`signals.leave_threads_behind`), and one that lands after the command has
    finished but before that handling is in place: it left `main` as a KeyboardInterrupt (a traceback) and the
    process ended with the command's status, 0 after a success, as if no Ctrl-C had come.

    With `--json`, stdout is kept for the JSON document (`console.keep_stdout_for_json`): libraries that print
    there would otherwise break it.
    """
    from grow_cli.signals import (
        Terminated,
        end_at_once,
        end_at_once_when_interrupted,
        end_if_threads_left_behind,
        end_without_finalizing,
        exit_with,
    )

    end_without_finalizing()  # already, where the `grow` script (`grow_cli.__main__`) started
    if "--json" in sys.argv[1:] and "--help" not in sys.argv[1:]:
        from grow_cli.console import keep_stdout_for_json

        keep_stdout_for_json()
    try:
        try:
            main()
        except SystemExit as exc:
            exit_with(0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1)
            raise
        finally:
            end_at_once_when_interrupted()
            end_if_threads_left_behind()
    except (KeyboardInterrupt, Terminated) as exc:  # `main` turns those of the command into its exit status
        end_at_once(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def main() -> None:
    """Run the app, turning library errors into one line and an exit code (in-process: see `script`)."""
    from grow_cli.errors import GrowError
    from grow_cli.signals import (
        Terminated,
        forget_completed,
        interrupted,
        interruption_note,
        remember_interrupts,
        stopped_by,
        terminate_like_interrupt,
    )

    terminate_like_interrupt()
    remember_interrupts()
    forget_completed()
    try:
        _run_app()
    except GrowError as exc:
        if os.environ.get("GROW_DEBUG"):
            raise
        _report(f"error: {exc}", every_rank=exc.every_rank)
        sys.exit(exc.exit_code)
    except PermissionError as exc:  # the user's files and folders, not a bug in grow: name the path, once, here
        if os.environ.get("GROW_DEBUG"):
            raise
        where = exc.filename or "a file grow needs"
        _report(f"error: permission denied: {where}; check its owner and mode (or run as a user who may use it)")
        sys.exit(1)
    except Terminated:
        note = interruption_note() or "; nothing unfinished was left behind"
        _report(f"{stopped_by(signal.SIGTERM)}{note}", error=False)
        sys.exit(Terminated.exit_code)
    except KeyboardInterrupt:  # Typer names a Ctrl-C during the command; this one came while Typer built the CLI
        _stopped_by_ctrl_c()
    except Exception as exc:  # a bug in grow or a library: still one line, with a way to get the details
        if os.environ.get("GROW_DEBUG"):
            raise
        if interrupted():  # a library turned the Ctrl-C into another error (`signals.remember_interrupts`)
            _stopped_by_ctrl_c()
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:  # a path the user gave, not a bug
            _report(f"error: {_too_long(exc.filename)}")
            sys.exit(1)
        from grow_cli.launch import lost_contact

        if lost := lost_contact(exc):  # another process's failure, reported by that process
            _report(f"error: {lost}")
            sys.exit(1)
        _report(f"error: {type(exc).__name__}: {exc} (run `grow --debug …` for the traceback)")
        sys.exit(1)
