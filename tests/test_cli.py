"""The `grow` command line (`grow_cli.cli`): every command documents examples in `--help`, `--version` works, and
usage mistakes and Ctrl-C get one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grow_cli.cli import app


def _commands():
    return [c.name for c in app.registered_commands]


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented_with_examples(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "Examples" in result.stdout, f"`grow {command} --help` has no examples"


@pytest.mark.parametrize("command", _commands())
def test_help_names_every_option_in_full_in_an_80_column_terminal(cli, command, monkeypatch):
    """Rich shrinks a wide options table by cutting every column short, option names too (`--micro-batch-s…` in
    train-stage's help at 80 columns, the default of many terminals): each name must read whole."""
    import typer.main

    monkeypatch.setenv("COLUMNS", "80")
    result = cli(command, "--help")
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    names = [name for param in click_command.params for name in (*param.opts, *param.secondary_opts)]
    cut = [
        name for name in names if name.startswith("--") and not re.search(rf"{re.escape(name)}(?![\w-])", result.stdout)
    ]
    assert result.code == 0 and names and not cut, f"`grow {command} --help` at 80 columns cuts {cut}"


@pytest.mark.parametrize("command", _commands())
def test_help_shows_every_example_line_whole_in_an_80_column_terminal(cli, command, monkeypatch):
    """Rich wraps an example's code line at the terminal's width, hard: at 80 columns `grow compare … --seq-len` then
    `512 --eval-fraction 0.05 \\` on the next line, which pasted into a shell runs a command without its value, and a
    comment's tail on a line of its own ("numerically") that reads as a command. Every line of the examples fits."""
    monkeypatch.setenv("COLUMNS", "80")
    result = cli(command, "--help")
    epilog = next(c.epilog for c in app.registered_commands if c.name == command) or ""
    code = [line.strip() for line in epilog.splitlines() if line.startswith("    ")]
    shown = {line.strip() for line in result.stdout.splitlines()}
    cut = [line for line in code if line not in shown]
    assert result.code == 0 and code and not cut, f"`grow {command} --help` at 80 columns wraps {cut}"


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.startswith("grow ")


def test_ctrl_c_exits_130_with_one_line(cli, monkeypatch, tmp_path):
    """Typer turns a KeyboardInterrupt into a silent exit 130; grow says what happened, in one line."""
    import grow_cli.growth.describe as describe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(describe, "inspect", interrupted)
    result = cli("inspect", tmp_path)
    assert result.code == 130 and result.stderr.strip().splitlines() == ["interrupted (Ctrl-C)"]


@pytest.mark.parametrize(
    "signum, line", [(signal.SIGINT, "interrupted (Ctrl-C)"), (signal.SIGTERM, "terminated (SIGTERM)")]
)
def test_an_interruption_while_python_exits_is_one_line(signum, line):
    """Ctrl-C during an exit handler (torch registers some) ended in an "Exception ignored in atexit callback"
    traceback; the finished command now ends at once, with one line and the signal's exit status."""
    program = textwrap.dedent(
        f"""
        import atexit, os, signal, sys, time
        import grow_cli.cli as cli
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts ignoring it
        command = cli.main

        def main():  # registered during the command, as torch registers its own
            atexit.register(lambda: (os.kill(os.getpid(), {int(signum)}), time.sleep(5)))
            command()

        cli.main = main
        sys.argv = ["grow", "--version"]
        cli.script()
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("grow ")  # the command's own output is flushed first
    assert done.stderr.strip() == f"{line} as grow exited; the command had finished"
    assert done.returncode == 128 + signum


@pytest.mark.parametrize(
    "signum, line", [(signal.SIGINT, "interrupted (Ctrl-C)"), (signal.SIGTERM, "terminated (SIGTERM)")]
)
def test_an_interruption_as_the_command_returns_is_one_line(signum, line):
    """A Ctrl-C landing after the command had finished but before the handling of an interruption while Python
    exits was in place (a Ctrl-C the moment a train-stage run's grow.json appeared: found by
    benchmarks/interrupted_training.py) left the script as a KeyboardInterrupt, a traceback, and the process ended
    with the command's status, 0, as if none had come. It ends at once with one line and the signal's status."""
    program = textwrap.dedent(
        f"""
        import signal, sys
        import grow_cli.cli as cli
        import grow_cli.signals as signals
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts ignoring it
        take_over = signals.end_at_once_when_interrupted

        def late():  # the signal lands as the command returns, before the exit's handling takes over
            signal.raise_signal({int(signum)})
            take_over()

        signals.end_at_once_when_interrupted = late
        sys.argv = ["grow", "--version"]
        cli.script()
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("grow ")  # the command's own output is flushed first
    assert done.stderr.strip() == f"{line} as grow exited; the command had finished"
    assert done.returncode == 128 + signum


@pytest.mark.parametrize("args, code", [(["--version"], 0), (["inspect", "--nosuch"], 2)])
def test_the_process_ends_with_the_commands_status_once_the_exit_handlers_ran(args, code):
    """After the exit handlers, CPython's own finalisation (a garbage collection over torch's objects, the C++
    libraries' teardown) ran for tens of milliseconds in which a Ctrl-C could not be handled: the process died by the
    signal without a line, or exited 0 as if none had come (17 of 289 interrupted runs of `grow expand`). The
    process now ends there, with the command's status: nothing finalised at shutdown runs any more."""
    program = textwrap.dedent(
        f"""
        import sys
        import grow_cli.cli as cli

        class FinalisedAtShutdown:
            def __del__(self):
                sys.stderr.write("the interpreter's finalisation ran\\n")

        cli.FINALISED_AT_SHUTDOWN = FinalisedAtShutdown()
        sys.argv = ["grow", *{args!r}]
        cli.script()
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == code and "finalisation" not in done.stderr
    assert done.stdout.startswith("grow ") if code == 0 else done.stderr.startswith("error: No such option: --nosuch")


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["expand", "a", "b", "--method", "stack"],
            "error: No such option: --method (Possible options: --depth-method",
        ),
        (["expand", "a", "b", "--layers", "x"], "error: Invalid value for '--layers'"),
        (["expand", "a"], "error: Missing argument 'out'; see `grow expand --help`"),
        (["plan", "--target"], "error: Option '--target' requires an argument; see `grow plan --help`"),
        (["nosuch"], "error: No such command 'nosuch'; see `grow --help`"),
    ],
)
def test_usage_mistakes_are_one_line_with_the_help_to_read(cli, args, line):
    """click would draw a multi-line box; grow gives the one line every other refusal gets, and exit status 2."""
    result = cli(*args)
    assert result.code == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(line), result.stderr


def test_a_bare_command_prints_its_help(cli):
    result = cli("expand")
    assert result.code == 2 and "Usage: grow expand" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "lands",
    [
        # The `grow` script imports the CLI before grow's own handling of Ctrl-C is in place (~0.3 s): a Ctrl-C
        # then is the same one line and exit 130, not a traceback of the import it landed in (each module the CLI's
        # body imports is asked for once it runs).
        '"grow_cli.cli" in sys.modules',
        # The script's first import, grow's own handling of signals, was outside the `try` that turns a Ctrl-C during
        # start-up into grow's line: a Ctrl-C landing in it (~30 ms into a run, found by
        # benchmarks/interrupted_training.py) was a traceback of that import and Python's death by SIGINT.
        'name == "grow_cli.signals" and not self.fired',
    ],
    ids=["cli-import", "signals-import"],
)
def test_ctrl_c_while_the_script_imports_grow_is_one_line(lands):
    """A Ctrl-C while the `grow` script imports grow (where `lands` holds, as a module is asked for) is one line and
    exit 130. In a process of its own, as the script ends its process without finalising: in pytest's, that ended
    pytest with status 130 and skipped pytest's exit handlers."""
    program = textwrap.dedent(
        f"""
        import signal, sys

        class CtrlCInAnImport:  # asked for each module imported
            fired = False

            def find_spec(self, name, path=None, target=None):
                if {lands}:
                    self.fired = True
                    signal.raise_signal(signal.SIGINT)
                return None

        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts ignoring it
        sys.meta_path.insert(0, CtrlCInAnImport())
        sys.argv = ["grow", "--version"]
        from grow_cli import __main__ as entry
        entry.script()
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted (Ctrl-C)\n", "")


def test_sigterm_while_the_cli_is_still_imported_is_one_line():
    """SIGTERM in the script's first ~0.3 s (before `grow_cli.cli.main` made it an exception) ended the process
    silently by the signal; it is the same one line and exit 143 as later."""
    program = textwrap.dedent(
        """
        import signal, sys
        from grow_cli import __main__ as entry
        entry.start_config_child_early = lambda: signal.raise_signal(signal.SIGTERM)
        sys.argv = ["grow", "--version"]
        entry.script()
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 143 and done.stderr == "terminated (SIGTERM)\n" and done.stdout == ""


def test_ctrl_c_while_typer_builds_the_cli_is_one_line(cli, monkeypatch):
    """Typer turns a Ctrl-C during a command into exit 130; one while it builds the command from grow's functions
    (reading their type hints, ~0.2 s into a run) left Typer as a KeyboardInterrupt: a traceback, and Python's own
    death by SIGINT. It is now the same one line and exit 130."""
    import typer.main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.main, "get_command", interrupted)
    try:
        result = cli("inspect", "somewhere")
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C left grow as a KeyboardInterrupt (a traceback)")
    assert result.code == 130 and result.stderr.strip().splitlines() == ["interrupted (Ctrl-C)"]


@pytest.mark.parametrize("where", ["while the CLI is imported", "during the command"])
def test_ctrl_c_inside_a_string_exec_still_exits_130_under_python_m(where, tmp_path):
    """A Ctrl-C that leaves a string `exec` or `eval` (a dataclass being made as its module is imported, Typer
    reading a command's type hints) makes CPython end a `python -m` process by SIGINT at exit, after grow had printed
    its line and chosen exit 130: subprocess callers saw -2 (9 of 100 runs of `grow expand` interrupted in their first
    1.5 s). It exits 130."""
    (tmp_path / "interrupted_grow.py").write_text(
        textwrap.dedent(
            f"""
            import signal, sys
            import grow_cli.__main__ as entry
            import grow_cli.family.budget as budget

            def interrupted(*args, **kwargs):  # the signal's handler runs inside raise_signal, so inside the exec
                exec("signal.raise_signal(signal.SIGINT)", {{"signal": signal}})

            signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts ignoring it
            if {where == "while the CLI is imported"}:
                entry.start_config_child_early = interrupted
            else:
                budget.plan = interrupted
            sys.argv = ["grow", "plan", "--target", {str(tmp_path)!r}, "--tokens", "1T"]
            entry.script()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}  # this checkout's grow_cli, from tmp_path
    run = subprocess.run(
        [sys.executable, "-m", "interrupted_grow"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert (run.returncode, run.stderr) == (130, "interrupted (Ctrl-C)\n")


def test_ctrl_c_that_a_library_turns_into_another_error_is_still_an_interruption(
    cli, monkeypatch, tmp_path, grow_handlers
):
    """A Ctrl-C during transformers' lazy import of a model module comes out of it as "ModuleNotFoundError: Could not
    import module 'LlamaConfig'" (seen 3 times in 15 for `grow plan --target CONFIG_FOLDER` interrupted after 1 s):
    grow reported that as the catch-all error, exit 1. It is the interruption: one line, exit 130."""
    import grow_cli.family.budget as budget

    def import_interrupted(*args, **kwargs):
        handler = signal.getsignal(signal.SIGINT)  # what Python runs for a Ctrl-C: the one the command installed
        try:  # called as Python calls it, not through `signal.raise_signal`, whose delivery in a pytest worker
            handler(signal.SIGINT, sys._getframe())  # that other tests ran in was once lost (a flaky failure)
        except KeyboardInterrupt:
            raise ModuleNotFoundError("Could not import module 'LlamaConfig'") from None
        raise AssertionError(f"the SIGINT handler {handler!r} raised nothing")

    monkeypatch.setattr(budget, "plan", import_interrupted)
    result = cli("plan", "--target", tmp_path, "--tokens", "1T")
    assert result.code == 130 and result.stderr.strip().splitlines() == ["interrupted (Ctrl-C)"], result.stderr
    monkeypatch.undo()
    broken = cli("plan", "--target", tmp_path, "--tokens", "1T")  # the next command starts afresh: a real error
    assert broken.code == 1 and broken.stderr.startswith("error: ") and "interrupted" not in broken.stderr


def test_the_config_child_ends_with_grow(tmp_path):
    """The process ends without finalising (`signals.end_without_finalizing`), which skipped the exit handlers
    registered before it: the one that closes the config child started before the CLI was imported among them, and
    the child went on importing transformers after grow had ended."""
    program = textwrap.dedent(
        f"""
        import sys
        from grow_cli import __main__ as entry

        start = entry.start_config_child_early

        def start_and_say():  # hf_config is imported there, as in the grow script
            start()
            from grow_cli.arch import hf_config

            sys.stderr.write(f"child {{hf_config._child.pid}}\\n")

        entry.start_config_child_early = start_and_say
        sys.argv = ["grow", "inspect", {str(tmp_path / "absent")!r}]
        entry.script()
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "absent" in done.stderr
    pid = int(re.search(r"child (\d+)", done.stderr).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
