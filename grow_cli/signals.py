"""SIGTERM handled like Ctrl-C.

`timeout`, Slurm, Docker, Kubernetes and systemd stop a process with SIGTERM, whose default action ends Python
without unwinding: `finally` blocks never run and a half-written output folder outlives the run. grow turns SIGTERM
into `Terminated`, a `BaseException` like `KeyboardInterrupt` (so no `except Exception` swallows it), and everything
that cleans up after Ctrl-C (temporary output removed, the output claim released) runs for it too; train-stage's
loop treats a first SIGTERM exactly like a first Ctrl-C (finish the step, save a checkpoint, exit). SIGKILL cannot
be caught; what it leaves is cleared by the next run into the same folder (`grow_cli.checkpoint.claim`).
"""

from __future__ import annotations

import signal
import threading


class Terminated(BaseException):
    """The process received SIGTERM; exit status 143 (128 + 15), as the shell reports it. Not a KeyboardInterrupt:
    Typer turns those into a silent exit 130 before `grow_cli.cli.main` could say what happened."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def terminate_like_interrupt() -> None:
    """Make SIGTERM raise `Terminated` in the main thread, unless someone chose to ignore it (e.g. `nohup`-style)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers (grow's CLI called from a worker thread)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
