"""`python -m grow_cli …` (and `accelerate launch -m grow_cli …`) and the `grow` script: one entry, `script`.

`grow expand` and `grow inspect` ask transformers' config child (`grow_cli.arch.hf_config`) whether a config loads.
On a first run that child's import of transformers is their longest step, so `script` starts it before it imports
the CLI itself (Typer, Rich and the command modules: ~0.12 s on the development VM), and the import overlaps all of
grow's own start-up.
"""

import signal
import sys


def script() -> None:
    """The `grow` command (`grow_cli.cli.script`), with the config child started first where the command asks it.
    A Ctrl-C or SIGTERM while the CLI is still being imported (its first ~0.3 s, before grow's own handling is in
    place) is the same one line as later, not a traceback of whichever import it landed in, nor (SIGTERM) a silent
    death; so is a Ctrl-C in the import of that handling itself. (One in the interpreter's own start-up, before this
    function runs, is Python's.)"""
    try:
        from grow_cli.signals import (  # (standard library only: a few ms)
            Terminated,
            end_without_finalizing,
            terminate_like_interrupt,
        )
    except KeyboardInterrupt:
        _stopped(signal.SIGINT)
    end_without_finalizing()  # first: it must run after every other exit handler
    try:
        terminate_like_interrupt()
        start_config_child_early()
        from grow_cli.cli import script as run
    except (KeyboardInterrupt, Terminated) as exc:
        _stopped(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    run()


def _stopped(signum: int) -> None:
    """End the process stopped by `signum` while the CLI was imported, with grow's one line and 128 + `signum` (raises
    SystemExit)."""
    from grow_cli.signals import exit_with, forget_caught_interrupts, stopped_by  # again, if the signal cut it short

    sys.stderr.write(f"{stopped_by(signum)}\n")
    forget_caught_interrupts()  # the import it landed in may have been making a dataclass (see there)
    exit_with(128 + signum)
    raise SystemExit(128 + signum) from None


def start_config_child_early() -> None:
    """Start the config child for `grow expand` and `grow inspect` (not for their `--help`), before the options are
    parsed: the first argument that is not an option names the command. `grow inspect` and `--dry-run` only wait
    for its answer, so it is urgent there; a real expand writes tensors meanwhile."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command in ("expand", "inspect") and "--help" not in sys.argv:
        from grow_cli.arch import hf_config

        hf_config.start_early(urgent=command == "inspect" or "--dry-run" in sys.argv)


if __name__ == "__main__":
    script()
