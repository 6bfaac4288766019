"""SIGTERM handled like Ctrl-C.

`timeout`, Slurm, Docker, Kubernetes and systemd stop a process with SIGTERM, whose default action ends Python
without unwinding: `finally` blocks never run and a half-written output folder outlives the run. grow turns SIGTERM
into `Terminated`, a `BaseException` like `KeyboardInterrupt` (so no `except Exception` swallows it), and everything
that cleans up after Ctrl-C (temporary output removed, the output claim released) runs for it too; train-stage's
loop treats a first SIGTERM exactly like a first Ctrl-C (finish the step, save a checkpoint, exit). SIGKILL cannot
be caught; what it leaves is cleared by the next run into the same folder (`grow_cli.checkpoint.claim`).

An interruption can also land after the output is in place (between its rename and the process's end); the line that
reports it then says the output is complete (`completed`, `interruption_note`), instead of leaving the user to
think it lost. Once the command has finished, an interruption while Python exits ends the process at once
(`end_at_once_when_interrupted`). A few system calls whose result must be recorded before anything unwinds hold an
interruption back until they are done (`interruptions_held`).
"""

from __future__ import annotations

import _imp
import atexit
import importlib._bootstrap
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The command's whole output, when it has one folder (`command_output`), and whether it is in place: one pair for
# the process, reset as each command starts (`forget_completed`).
_output: dict[str, Path | bool | None] = {"path": None, "complete": False}


class Terminated(BaseException):
    """The process received SIGTERM; exit status 143 (128 + 15), as the shell reports it. Not a KeyboardInterrupt:
    Typer turns those into a silent exit 130 before `grow_cli.cli.main` could say what happened."""

    exit_code = 128 + signal.SIGTERM


def _raise_terminated(signum, frame) -> None:
    _caught["signum"] = signum
    _raise(Terminated, frame)


def terminate_like_interrupt() -> None:
    """Make SIGTERM raise `Terminated` in the main thread, unless someone chose to ignore it (e.g. `nohup`-style)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers (grow's CLI called from a worker thread)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


# The signal that last reached the command through grow's handlers (0: none), reset as each command starts
# (`remember_interrupts`).
_caught: dict[str, int] = {"signum": 0}


def _remember_interrupt(signum, frame) -> None:
    _caught["signum"] = signum
    _raise(KeyboardInterrupt, frame)


# The `interruptions_held` blocks being run, and the first interruption that came meanwhile.
_held: dict[str, Any] = {"depth": 0, "pending": None}

# importlib's own modules. They take and release the import locks in plain Python (`_imp.acquire_lock()` and then a
# `try`; a module lock's `__enter__`, then the `with` it serves; a weakref callback that drops one), so an exception
# raised between two of their bytecodes can leave a lock held for good. The main thread goes on (the locks are
# reentrant), but a background thread importing a module then waits forever, and so does whatever waits for that
# thread: `grow expand` hung (1 in 286 interrupted runs, benchmarks/interrupted_runs.py). In the weakref callback the
# exception is also swallowed ("Exception ignored in: <function _get_module_lock.<locals>.cb>"): the run went on.
_IMPORT_MACHINERY = frozenset({"importlib._bootstrap", "importlib._bootstrap_external"})
# How importlib runs a C extension module's initialisation: `_call_with_frames_removed(f, ...)`, `f` being
# `_imp.create_dynamic` or `_imp.exec_dynamic`. The C code may clear what the Python code it runs raised: torch's
# does, for its import of numpy, so a Ctrl-C landing there was lost and the run went on to its end (exit 0; 6 in 80
# interrupted `import torch`, 0 now).
_RUNS_EXTENSION_INIT = importlib._bootstrap._call_with_frames_removed.__code__  # type: ignore[attr-defined]
# Modules whose body calls a native function that aborts the process if a Python exception is raised while it runs:
# torch's `torch._C._<name>_init()` calls, made as `import torch` imports them (pybind11: "terminate called after
# throwing an instance of 'pybind11::error_already_set' what(): KeyboardInterrupt", exit -6; 2 in 286 interrupted
# runs of `grow expand` in `_c10d_init`, 1 in 232 in `_autograd_init` once that one was handled). An interruption
# that comes while such a body runs is raised at its next line (`_c10d_init` takes ~3 ms).
_ABORTS_ON_EXCEPTION = frozenset(
    {
        "torch.autograd",
        "torch.distributed",
        "torch.distributed.autograd",
        "torch.distributed.rpc",
        "torch.jit",
        "torch.multiprocessing",
    }
)
# Modules of weakref callbacks. Python prints and drops an exception raised in one ("Exception ignored in: <function
# WeakSet.__init__.<locals>._remove>", a traceback), as in a finaliser (`__del__`), and the garbage collector runs
# both inside whatever code allocated: a Ctrl-C landing there was lost, and the run went on (1 in 130 interrupted runs
# of `grow expand` with a cold cache). It is raised in the code the collection interrupted.
_WEAKREFS = frozenset({"weakref", "_weakrefset"})
# An interruption on its way (`_follow`): what to raise; whether to raise it at the first call outside importlib; the
# frame outside imports where it is raised unless it comes out through it; the trace function to put back.
_on_its_way: dict[str, Any] = {"interruption": None, "at_first_call": False, "outside": None, "previous": None}


def _raise(interruption: type[BaseException], frame) -> None:
    """What grow's handlers do with Ctrl-C (`KeyboardInterrupt`) and SIGTERM (`Terminated`), which came while `frame`
    ran: raise it, unless an `interruptions_held` block runs. Where raising it at once would do harm, a trace
    function raises it a little later (`_follow`): after a module body of `_ABORTS_ON_EXCEPTION`'s current line;
    from importlib's code, at the first call outside it; from code that drops exceptions, in the code it interrupted;
    during an extension's initialisation, at once and again where it returns if it swallowed that one (or only there,
    from importlib's code: for torch's, up to ~0.3 s later)."""
    if _held["depth"]:
        _held["pending"] = _held["pending"] or interruption
        return
    if (
        frame is not None
        and frame.f_code.co_name == "<module>"
        and frame.f_globals.get("__name__") in _ABORTS_ON_EXCEPTION
    ):
        _follow(interruption, frame, at_first_call=False)
        return
    in_importlib, dropping = _in_importlib(frame), _drops_exceptions(frame)
    outside, initialising = _outside_imports(frame)
    if in_importlib or dropping or initialising:
        _follow(interruption, outside, at_first_call=in_importlib and not initialising)
    if not (in_importlib or dropping):
        raise interruption


def _in_importlib(frame) -> bool:
    return frame is not None and frame.f_globals.get("__name__") in _IMPORT_MACHINERY


def _drops_exceptions(frame) -> bool:
    return frame is not None and (frame.f_code.co_name == "__del__" or frame.f_globals.get("__name__") in _WEAKREFS)


def _outside_imports(frame):
    """The nearest frame outwards of `frame` (itself included) outside importlib, code that drops exceptions and
    every extension's initialisation: where an exception raised inside them comes out (unless that C code swallows
    it); and whether an extension's initialisation is running."""
    outside, initialising = None, False
    while frame is not None:
        if frame.f_code is _RUNS_EXTENSION_INIT and frame.f_locals.get("f") in (_imp.create_dynamic, _imp.exec_dynamic):
            outside, initialising = None, True  # what it runs is inside it, however deep
        elif outside is None and not _in_importlib(frame) and not _drops_exceptions(frame):
            outside = frame
        frame = frame.f_back
    return outside, initialising


def _comes_out_to_importlib(frame) -> bool:
    """Whether an exception raised as `frame` starts comes out to importlib's code: `frame` is not importlib's, and
    none between them drops exceptions (a weakref callback that the collector ran inside the import)."""
    if _in_importlib(frame):
        return False
    while frame is not None and not _in_importlib(frame):
        if _drops_exceptions(frame):
            return False
        frame = frame.f_back
    return True


def _follow(interruption: type[BaseException], outside, *, at_first_call: bool) -> None:
    """Raise `interruption` with a trace function (`_on_the_way`) at the next line of `outside`, unless it comes out
    through `outside` first, or, with `at_first_call`, at the first call outside importlib if that comes sooner (a
    module body the import runs, a finder: importlib expects exceptions from what it calls and releases its locks
    for them). Raising from a trace function ends tracing, so there is no following it further."""
    if _on_its_way["interruption"] is not None or (outside is None and not at_first_call):
        return  # one is on its way already, or there is nowhere to follow this one
    _on_its_way.update(interruption=interruption, at_first_call=at_first_call, outside=outside, previous=sys.gettrace())
    if outside is not None:
        outside.f_trace = _on_the_way
    sys.settrace(_on_the_way)


def _on_the_way(frame, event, arg):
    """The trace function of `_follow`, for calls and for the events of `outside`."""
    interruption = _on_its_way["interruption"]
    if frame is _on_its_way["outside"] or (
        event == "call" and _on_its_way["at_first_call"] and _comes_out_to_importlib(frame)
    ):
        _arrived()
        if event == "exception":
            return None  # it came out through `outside`
        raise interruption
    return None  # no line events in other frames


def _arrived() -> None:
    """Stop following the interruption: no trace function of ours is left."""
    outside, previous = _on_its_way["outside"], _on_its_way["previous"]
    _on_its_way.update(interruption=None, at_first_call=False, outside=None, previous=None)
    if outside is not None:
        outside.f_trace = None
    sys.settrace(previous)


@contextmanager
def interruptions_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back during a few system calls whose result must be recorded before anything may
    unwind, and raise the first that came as the block ends. An output claim's lock file is created, locked and its
    descriptor kept in one such block: an interruption between those steps left the file beside OUT for good. Never
    around an import or other long work: Ctrl-C must stay prompt. It holds grow's own handlers
    (`remember_interrupts`, `terminate_like_interrupt`), which the CLI installs; elsewhere nothing is held."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        pending = _held["pending"]
        if pending is not None and not _held["depth"]:
            _held["pending"] = None
            raise pending


def remember_interrupts() -> None:
    """Make Ctrl-C raise KeyboardInterrupt as Python's own handler does, and remember that it came: a library can
    turn it into another error (a Ctrl-C during transformers' lazy import of a model module comes out as
    "ModuleNotFoundError: Could not import module 'LlamaConfig'"), which is then still reported as the interruption
    (`interrupted`), not as a bug. Left alone where SIGINT is not Python's default (a shell's background job ignores
    it), and off the main thread."""
    _caught["signum"] = 0
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _remember_interrupt)
    if not isinstance(sys.unraisablehook, _RaiseDropped):
        sys.unraisablehook = _RaiseDropped(sys.unraisablehook)


class _RaiseDropped:
    """`sys.unraisablehook` while grow's handlers are installed: an interruption that Python dropped, raised in code
    whose exceptions it prints and drops (a weakref callback, a `__del__`, whatever they call), is raised at the next
    line of the code the garbage collector or the last reference's release interrupted, instead of being printed as
    "Exception ignored in: …" while the run went on (train-stage trained on to its last step). `_raise` keeps it out
    of weakref's own modules and `__del__` itself beforehand; this catches every other such callback. Other
    unraisable exceptions go to the hook that was there before."""

    def __init__(self, previous) -> None:
        self.previous = previous

    def __call__(self, unraisable) -> None:
        interruption = type(unraisable.exc_value)
        if interruption not in (KeyboardInterrupt, Terminated):
            self.previous(unraisable)
            return
        interrupted = sys._getframe(1)  # the hook is called once the dropping code's frames are gone
        outside, initialising = _outside_imports(interrupted)
        _follow(interruption, outside, at_first_call=_in_importlib(interrupted) and not initialising)


def interrupted() -> bool:
    """Whether Ctrl-C reached the command since it started (`remember_interrupts`)."""
    return _caught["signum"] == signal.SIGINT


def caught_signal() -> int:
    """The signal (SIGINT, SIGTERM) that last reached the command through grow's handlers since it started, or 0.
    Its exception can be lost on the way out: C code may clear one raised in Python code it called (what Python
    drops from a weakref callback or `__del__` is raised again, `_RaiseDropped`)."""
    return _caught["signum"]


def command_output(output: Path) -> None:
    """Declare `output` (resolved) the command's whole output, as `grow expand`'s OUT is; a command that writes
    several (a family's members) declares none, since one of them complete is not the command's work done."""
    _output.update(path=output, complete=False)


def completed(output: Path) -> None:
    """Record that `output` (resolved) is in place and whole (renamed from its temporary folder)."""
    if output == _output["path"]:
        _output["complete"] = True


def interruption_note() -> str:
    """What the line reporting an interruption adds: that the command's output was already complete."""
    return f" after {_output['path']} was complete; it holds the whole output" if _output["complete"] else ""


def forget_completed() -> None:
    """Start a command with no output declared or completed, and no threads left behind (a Python caller may run
    several in one process)."""
    _output.update(path=None, complete=False)
    _ending["threads_left"] = False


def end_at_once_when_interrupted() -> None:
    """For the rest of the process (the command has finished): Ctrl-C or SIGTERM while Python exits, during its exit
    handlers (torch's, a tracker's upload), ends the process at once with one line, not with an "Exception ignored in
    atexit callback" traceback. Everything grow wrote is closed and on disk by then."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _end_at_once)


# The status the `grow` process ends with once its exit handlers have run (`end_without_finalizing`): 1 until the
# command sets it, as Python ends a process that an exception left.
_ending: dict[str, Any] = {"registered": False, "status": 1, "threads_left": False}


def end_without_finalizing() -> None:
    """End the process as soon as its last exit handler has run, with the status `exit_with` set, its streams
    flushed, skipping the interpreter's finalization: it does nothing grow needs (grow closes and fsyncs its outputs
    before a command returns) and takes time — a last garbage collection over every object alive (once torch is
    imported, its operator registry's hundreds of thousands: 0.3–0.5 s on the development VM), then the C++
    libraries' teardown — in which a Ctrl-C could no longer be handled: the process died by the signal without a
    line, or exited 0 (17 of 289 interrupted runs of `grow expand`, benchmarks/interrupted_runs.py).

    Registered once, by the first caller: the `grow` script calls it before anything else registers an exit
    handler, so it runs after all of them (those registered before it would be skipped: the config child's close,
    `hf_config`, left the child importing transformers after grow had ended). Only in the `grow` process, never in
    one that goes on: Python callers run `cli.main`, and tests run the script in a child process (in pytest's own, it
    ended pytest with the command's status and skipped pytest's exit handlers)."""
    if not _ending["registered"]:
        _ending["registered"] = True
        atexit.register(_end_now)


def exit_with(code: int) -> None:
    """The status the process ends with (`end_without_finalizing`)."""
    _ending["status"] = code


def leave_threads_behind() -> None:
    """Let the `grow` process end as soon as the command has reported, without waiting for the threads a library
    still runs for it (`end_if_threads_left_behind`): an interruption stopped the command while huggingface_hub's
    threads were still transferring files it no longer needs (`background.interruptible`), and Python's exit waits
    for a thread pool's threads, each until its file has arrived."""
    _ending["threads_left"] = True


def end_if_threads_left_behind() -> None:
    """End the process now, with the status `exit_with` set, when `leave_threads_behind` was called; the `grow`
    script calls it once the command has unwound (its temporary files removed, its line printed)."""
    if _ending["threads_left"]:
        _end_now()


def _end_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: exit all the same
            pass
    os._exit(_ending["status"])


def forget_caught_interrupts() -> None:
    """Keep the exit status grow chose (130 after Ctrl-C) under `python -m grow_cli` too.

    CPython records a KeyboardInterrupt that leaves a string `exec` or `eval` as unhandled even when a caller then
    catches it, and under `-m` ends the process at exit by SIGINT when that record is set, whatever the exit status
    (its `run_eval_code_obj` and `Py_RunMain`): subprocess callers saw -2, not 130 (a shell shows 130 either way;
    the `grow` script exits by another path, which ignores the record). Start-up runs such code throughout: each
    dataclass's methods are made by `exec` as its module is imported, and Typer `eval`s the commands' type hints. A
    Ctrl-C there got grow's one line and then the death by SIGINT (9 of 100 runs of `grow expand` interrupted in
    their first 1.5 s). Every string `exec` starts by clearing the record, so an empty one does; a KeyboardInterrupt
    that does leave grow sets it again on its way out, and still ends the process by SIGINT."""
    exec("pass", {})


def stopped_by(signum: int) -> str:
    """How grow's last line names the signal that stopped it; the exit status is 128 + `signum` (130, 143)."""
    return "interrupted (Ctrl-C)" if signum == signal.SIGINT else "terminated (SIGTERM)"


def _end_at_once(signum, frame) -> None:
    end_at_once(signum)


def end_at_once(signum: int) -> None:
    """End the process now, the command having finished, with the line that `signum` stopped it as grow exited and
    the signal's status: what the command printed is flushed first."""
    for stream in (sys.stdout, sys.stderr):  # what the command printed (its --json document) is not lost
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe, or a flush this signal interrupted: exit all the same
            pass
    os.write(2, f"{stopped_by(signum)} as grow exited; the command had finished\n".encode())
    os._exit(128 + signum)
