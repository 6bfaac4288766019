"""Work that runs beside the main thread and is waited for only where its answer is needed.

Used for checks that must pass before an output is published but need not hold up the first byte written: the
grown config's validation by transformers (a child process importing transformers on a first run) and the
safetensors library's own parse of the source headers (it imports numpy). A daemon thread, not an executor: a run
that fails or is interrupted exits at once instead of waiting for a check whose answer nobody will read. Work that
runs inside a native extension is the exception (`finish_before_exit`). Work that only the end of the run waits for
gives way to the rest (`lower_priority`). A library call that works in a pool of threads of its own (the Hub
client's downloads and uploads) runs in such a thread too, waited for at once, so that an interruption need not wait
for the pool (`interruptible`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def in_background(work: Callable[[], T], name: str, *, finish_before_exit: bool = False) -> Future[T]:
    """`work()` run in a daemon thread called `name`; its result, or what it raised, in the future.

    `finish_before_exit`: the thread is not a daemon, so the interpreter waits for it before it exits, however the
    run ends. For work inside a native extension, short enough to wait for: the interpreter tears a daemon thread
    down mid-call at exit, and native code that catches that unwinding (safetensors' does) aborts the process
    ("FATAL: exception not rethrown"). An interruption can land where nothing waits for the work yet (after the
    thread started, before the reader that started it is in a `with`)."""
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # delivered to whoever reads the result, as it would have been raised
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=not finish_before_exit).start()
    return future


def interruptible(work: Callable[[], T], name: str) -> T:
    """`work()`, run in a thread called `name` while the caller waits, so that Ctrl-C or SIGTERM stops the command at
    once: for a library call that works in a pool of threads (huggingface_hub's downloads and uploads), which Python
    lets finish what each thread is transferring before the interruption reaches the command — minutes for a
    multi-GB shard, a day under an HTTP 429 whose Retry-After says so. The threads an interruption leaves still
    working end with the process (`signals.leave_threads_behind`)."""
    from grow_cli.signals import leave_threads_behind

    job = in_background(work, name)
    try:
        return job.result()
    except BaseException:
        if not job.done():
            leave_threads_behind()
        raise


def problem_so_far(future: Future) -> BaseException | None:
    """What `future`'s work raised, if it has finished and failed; None while it runs or when it succeeded."""
    return future.exception() if future.done() else None


NICENESS = 10  # how far below the main thread background work runs: on a shared core it gets ~1/10 of the time


def lower_priority() -> None:
    """Run the calling thread (and the threads it starts) `NICENESS` below its priority (a grow started with `nice`
    keeps the difference): work the run waits for only at its end (the source's hashes, the grown config's check by
    transformers) then takes no CPU from the work that writes the next byte. On the 2-core machine where grow is
    developed, a first run's width ×2 growth wrote its first byte 0.18 s sooner and ended 0.45 s sooner (medians of
    8 alternated runs), a depth growth as soon as before (docs/benchmarks.md, ninth session). The price: on a machine
    whose every core is busy with other processes, this work gets a smaller share of them than grow's main thread,
    so the run's end may wait longer for it (a process cannot raise its priority back once lowered). Linux only,
    where a thread has a priority of its own; elsewhere nothing changes."""
    if sys.platform.startswith("linux"):
        thread = threading.get_native_id()
        with contextlib.suppress(OSError):  # a container may forbid it: the work then runs as before
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + NICENESS, 19))
