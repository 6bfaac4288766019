"""What a grow call changes in its Python process, and gives back when it returns or raises.

The command line needs none of this: its process ends with the command. A notebook or a training script that calls
grow does: training seeds torch's generator (and a resumed run restores its checkpoint's Python, NumPy, torch and
CUDA generators), grow switches transformers' and huggingface_hub's progress bars off while its own progress
speaks, planning may start transformers' config child (`grow_cli.arch.hf_config`), and accelerate keeps one
process-wide state per `Accelerator`, which a second run with another mixed precision (or the caller's own
`Accelerator`) could not change. `public` wraps each function of `grow_cli.__all__` so that none of it outlives the
call; `run_accelerate_state` also scopes accelerate's state to each member of a family run.

The one thing a run leaves is the process group of a distributed launch (`end_run`): torch cannot create the default
group a second time under the launcher's store (gloo then connects to the first group's closed ports, or waits for
ever), so a script's or a family's next run joins the same group, and the process's exit destroys it. A family joins
it before its first member trains (`join_group`), for the steps its main process takes alone, and keeps only the
group too.
"""

from __future__ import annotations

import atexit
import functools
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from grow_cli.field_types import checked_call

P = ParamSpec("P")
R = TypeVar("R")


def public(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` as `grow_cli` serves it: its arguments checked against its annotations (`field_types.checked_call`),
    and the process as the call found it when it returns or raises (`given_back`)."""
    checked = checked_call(fn)

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with given_back():
            return checked(*args, **kwargs)

    return call


@contextmanager
def given_back() -> Iterator[None]:
    """Run the block; then put the random generators and the progress bars back as they were, clear the accelerate
    state it made, and end the config child it started. A library imported during the block is left as a fresh
    import has it."""
    generators, bars = _generators(), _progress_bars()
    try:
        with run_accelerate_state():
            yield
    finally:
        _restore_generators(generators)
        _restore_progress_bars(*bars)
        if (hf_config := sys.modules.get("grow_cli.arch.hf_config")) is not None:
            hf_config.close()


@contextmanager
def progress_bars_restored() -> Iterator[None]:
    """Run the block (a training run, which turns transformers' progress bars off while grow's own progress speaks);
    then put transformers' and huggingface_hub's switches back. transformers' switch turns the hub's off with it, so
    left off, it hid a later push's upload bars (`train-stage --push-to-hub` on a terminal showed none)."""
    bars = _progress_bars()
    try:
        yield
    finally:
        _restore_progress_bars(*bars)


@contextmanager
def run_accelerate_state() -> Iterator[None]:
    """Accelerate's process-wide state as the block's: one its `Accelerator` makes is cleared after it, so that the
    next run in this process may choose another mixed precision (a family's members, a notebook's second run). A
    state made before (the caller's own `Accelerator`) is the caller's, and is left as it is. The command line's
    train-stage keeps its run's state: it asks it afterwards which process prints the result."""
    made_before = _accelerate_state() is not None and _accelerate_state().is_initialized()
    try:
        yield
    finally:
        state = _accelerate_state()
        if not made_before and state is not None and state.is_initialized():
            state.AcceleratorState._reset_state(reset_partial_state=True)  # as accelerate's own tests do
            state.GradientState._reset_state()


def end_run(accelerator: Any) -> None:
    """End a training run: finish its trackers, as `Accelerator.end_training` does, but keep the process group, which
    only the process's exit destroys (the module docstring says why)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        _destroy_group_at_exit()


def join_group() -> None:
    """Join the process group of a distributed launch as a run's `Accelerator` would (accelerate picks the backend
    and binds the process to its device), and keep nothing of accelerate's state but the group: each later run makes
    and clears its own (`run_accelerate_state`). A state made before (the caller's own) is left as it is."""
    from accelerate.state import PartialState

    made_before = bool(PartialState._shared_state)
    PartialState()
    if not made_before:
        PartialState._reset_state()  # as `run_accelerate_state` clears it after a run
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        _destroy_group_at_exit()


@functools.cache
def _destroy_group_at_exit() -> None:
    """Register, once per process, the destruction of the default process group at exit (torch warns of an NCCL
    group left to the exit)."""

    def destroy() -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(destroy)


def _accelerate_state() -> Any:
    """`accelerate.state` where imported (a grow call that trains imports it; one that does not must not pay for it)."""
    return sys.modules.get("accelerate.state")


def _generators() -> dict[str, Any]:
    """The states of Python's generator and of NumPy's and torch's (CPU, and CUDA once initialised) where imported."""
    states: dict[str, Any] = {"python": random.getstate()}
    if (numpy := sys.modules.get("numpy")) is not None:
        states["numpy"] = numpy.random.get_state()
    if (torch := sys.modules.get("torch")) is not None:
        states["torch"] = torch.random.get_rng_state()
        if torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_generators(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    if "numpy" in states:
        sys.modules["numpy"].random.set_state(states["numpy"])
    if "torch" in states:
        torch = sys.modules["torch"]
        torch.random.set_rng_state(states["torch"])
        if "cuda" in states:
            torch.cuda.set_rng_state_all(states["cuda"])


def _progress_bars() -> tuple[bool | None, dict[str, bool] | None]:
    """Whether transformers' progress bars are on, and huggingface_hub's per-name switches (None: not imported)."""
    transformers = sys.modules.get("transformers.utils.logging")
    hub = sys.modules.get("huggingface_hub.utils.tqdm")
    return (
        None if transformers is None else transformers.is_progress_bar_enabled(),
        None if hub is None else dict(hub.progress_bar_states),
    )


def _restore_progress_bars(transformers_on: bool | None, hub_states: dict[str, bool] | None) -> None:
    """Put the switches back; for a library imported during the call, as its import set them. transformers' switch
    sets huggingface_hub's too, so the hub's own switches are put back last."""
    transformers = sys.modules.get("transformers.utils.logging")
    hub = sys.modules.get("huggingface_hub.utils.tqdm")
    if hub is None:
        return  # transformers imports it: neither was imported
    if transformers is not None:
        if transformers_on is None:  # imported during the call: a fresh import follows the hub's switches
            _set_hub_states(hub, hub_states or {})
            transformers_on = not hub.are_progress_bars_disabled()
        if transformers.is_progress_bar_enabled() != transformers_on:
            (transformers.enable_progress_bar if transformers_on else transformers.disable_progress_bar)()
    _set_hub_states(hub, hub_states or {})


def _set_hub_states(hub: Any, states: dict[str, bool]) -> None:
    hub.progress_bar_states.clear()
    hub.progress_bar_states.update(states)
