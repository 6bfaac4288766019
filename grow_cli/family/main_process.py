"""The steps of a family run that the main process takes alone under `accelerate launch` (or torchrun).

Every process of a launch walks the same recipe. The steps that write files or compute something once — a member's
start record and its `init/` or `grown/` (`grow expand`), the comparisons, a baseline's fresh model, the member's
summary, the report — run on the main process (global rank 0) only; the others wait for it and get its result
(`on_main`). What decides a resume (a member finished, a stage done or interrupted) is read the same way, by the main
process alone, so every process takes the same path. The training stages run on every process, as train-stage does
under a launch.

The others wait on a gloo group of the family's own, whatever the launch's backend: what is handed over is a small
Python value on the CPU, and a step may last longer than an NCCL collective waits by default (10 minutes; the growth
of a large model, a comparison), so the group waits a day (`WAIT`). A main process that fails hands the others its
error instead of a result: it reports its error itself (the CLI's one line), and the others raise `MainProcessFailed`,
which none of them prints on the main process's machine — one line in all, and the launcher ends them as the main
process exits. One that dies without a word (killed, out of memory) takes the launch with it the same way.

In one process (no launch) every step runs where it is called, as it always did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from grow_cli.errors import GrowError, one_line
from grow_cli.launch import launched, main_process

P = ParamSpec("P")
R = TypeVar("R")

WAIT = timedelta(days=1)  # the longest the other processes wait for one step of the main process


class MainProcessFailed(GrowError):
    """A step the main process took alone failed there; raised on the other processes, with the main process's exit
    status. The main process reports the error: the others say nothing on its machine (`every_rank`)."""

    every_rank = True

    def __init__(self, line: str, exit_code: int):
        super().__init__(f"the main process stopped: {line}")
        self.exit_code = exit_code


def join() -> None:
    """Join the launch's process group and wait until every process has got here; nothing outside a launch. A family
    joins once its recipe is checked on every process, so that no process writes before all of them have checked
    what they found."""
    if launched():
        import torch.distributed as dist

        dist.barrier(group=_group())


def on_main(step: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`step(*args, **kwargs)` on the main process; every process returns its result (or raises: the main process
    its own error, the others `MainProcessFailed`)."""
    if not launched():
        return step(*args, **kwargs)
    import torch.distributed as dist

    box: list[Any] = [None]
    if not main_process():
        dist.broadcast_object_list(box, src=0, group=_group())
        done, value = box[0]
        if not done:
            raise MainProcessFailed(*value)
        return value
    try:
        result = step(*args, **kwargs)
    except BaseException as exc:  # an interruption too: the others must not wait a day for a result
        with suppress(Exception):  # (a broken group: the launcher ends the others anyway)
            dist.broadcast_object_list([(False, (one_line(exc, 500), _exit_code(exc)))], src=0, group=_group())
        raise
    dist.broadcast_object_list([(True, result)], src=0, group=_group())
    return result


def main_first(step: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`step` on the main process, then — once it succeeded — on each of the others: for a step that makes a file
    once (a fresh model) or fetches one into a cache each machine has (a Hub download), which the others then find."""
    result = on_main(step, *args, **kwargs)
    return result if main_process() else step(*args, **kwargs)


@functools.cache
def _group() -> Any:
    """The family's gloo group over every process of the launch, made once per process (after the launch's own)."""
    import torch.distributed as dist

    from grow_cli.process_state import join_group

    join_group()
    return dist.new_group(backend="gloo", timeout=WAIT)


def _exit_code(exc: BaseException) -> int:
    """The exit status the main process ends with for `exc` (`grow_cli.cli.main`)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    code = getattr(exc, "exit_code", 1)
    return code if isinstance(code, int) else 1
