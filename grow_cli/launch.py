"""Which process of a distributed launch (`accelerate launch`, torchrun) is speaking, for the CLI's one error line.

Every process of a launch runs the same command. Until the processes join their process group (option parsing,
train-stage's configuration checks and preflight), each one has run the same checks on the same arguments and the
same files, so an error there is one error found N times: the first process on each machine reports it (on one
machine, once) and the others exit with the same status without a word. Once the group exists, what fails may be
one rank's own (its device, its part of the data, a collective that broke), so every rank reports its error,
prefixed with its rank, and none is hidden.

The launcher sets WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE and GROUP_RANK (the machine) in every process, or,
under MPI (`mpirun`, as accelerate's multi-CPU launch uses it), its own names for the first four, which accelerate
reads too and turns into the launcher's names only once its `Accelerator` exists. `accelerate launch` also says
which engine its config shards the training with (`sharding_engine`) and, under DeepSpeed, its gradient
accumulation (`launcher_grad_accum`).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from grow_cli.errors import UsageError

FIRST_PROCESS_WAIT = 10.0  # seconds a silent process gives its machine's first process to report the same error


# Each fact's names, in the order accelerate reads them (`get_cpu_distributed_information` in
# accelerate.utils.environment; a test holds the two equal): the launcher's, then MPI's (MPICH or Intel MPI, Open MPI,
# MVAPICH). Read here without accelerate, whose import (torch's) a refused option should not wait for.
WORLD_SIZE = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LOCAL_RANK = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
LOCAL_WORLD_SIZE = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    """The first of `names` set to a whole number ≥ 0 (accelerate's `get_int_from_env`, except that a value that is
    no number is passed over rather than raised on: an error line is being printed, or a check is being made)."""
    for name in names:
        try:
            value = int(os.environ.get(name, -1))
        except ValueError:
            continue
        if value >= 0:
            return value
    return default


def rank() -> int:
    """This process's global rank (0 outside a launch)."""
    return _env_int(RANK, 0)


def _group_started() -> bool:
    """Whether this process has joined its process group (without importing torch: no torch, no group)."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def processes() -> int:
    """How many processes this launch has (the launcher's WORLD_SIZE, or MPI's; 1 outside a launch)."""
    return _env_int(WORLD_SIZE, 1)


# Where accelerate's `Accelerator`, given no accumulation (as grow gives it none), reads its default from.
# `accelerate launch` sets it under DeepSpeed only (from --gradient_accumulation_steps or its config's
# deepspeed_config); a user may set it for any run.
ACCUMULATION_VARIABLE = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"


def launcher_grad_accum() -> int:
    """The gradient accumulation accelerate's `Accelerator` takes where it is given none, read as accelerate 1.16
    reads it (`Accelerator.__init__`: `int()` of ACCUMULATION_VARIABLE, else 1): `grow family` checks its members'
    budgets with it before any member runs, where train-stage reads the `Accelerator`'s own (a test holds the two
    equal). A value `int()` cannot read is refused here, as the `Accelerator` would refuse it; 0 or -2 accelerate
    takes as they are (the budget refuses them where the run uses them)."""
    value = os.environ.get(ACCUMULATION_VARIABLE, "1")
    try:
        return int(value)
    except ValueError:
        raise UsageError(
            f"{ACCUMULATION_VARIABLE}={value!r} is not a whole number, which accelerate reads it as; set it to one "
            "(the gradient accumulation a run takes without --grad-accum) or unset it"
        ) from None


def launched() -> bool:
    """Whether this process is one of several of a launch."""
    return processes() > 1


def started_by_a_launcher() -> bool:
    """Whether a launcher started this process, of however many: torchrun and `accelerate launch` of several
    processes set WORLD_SIZE (mpirun its own names), accelerate's launch of one sets its settings
    (ACCELERATE_DYNAMO_BACKEND among them) alone. Each reports a worker's exit status other than 0 as a failure."""
    return any(name in os.environ for name in WORLD_SIZE) or "ACCELERATE_DYNAMO_BACKEND" in os.environ


def main_process() -> bool:
    """Whether this process speaks for its launch: global rank 0 (outside a launch, the one process). Read from the
    launcher's RANK (or MPI's), so it holds before the process group exists (and without importing torch)."""
    return rank() == 0


def sharding_engine() -> str | None:
    """The engine that will shard this launch's training state, named as accelerate names it ("FSDP",
    "DEEPSPEED"), read before any `Accelerator` exists from what `accelerate launch` sets for its config's
    distributed_type; None outside a launch and for DDP."""
    if not launched():
        return None
    for engine in ("DEEPSPEED", "FSDP"):
        if os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() == "true":
            return engine
    return None


def error_prefix(every_rank: bool = False) -> str | None:
    """What to put before this process's error line: "" outside a launch; None (say nothing) for a process other
    than its machine's first before the group exists, or for an error every process finds alike (`every_rank`: a
    refused setting, an agreed stop); "[rank N] " for other errors once it does ("[node K] " before it, when the
    launch spans machines, whose files may differ; under MPI, which does not name the machine, the machine counted
    from the rank, as MPI places ranks by default)."""
    world = processes()
    if world <= 1:
        return ""
    if _group_started() and not every_rank:
        return f"[rank {rank()}] "
    if _env_int(LOCAL_RANK, rank()) != 0:
        return None
    local_world = _env_int(LOCAL_WORLD_SIZE, world)
    return f"[node {_env_int(('GROUP_RANK',), rank() // max(local_world, 1))}] " if local_world < world else ""


def wait_for_the_reporting_process() -> None:
    """Before a silent process (`error_prefix` None) exits with its error, give its machine's first process time to
    report the same error. The launcher ends every process as soon as one exits with an error, so a silent process
    that exited first had the reporting one killed before its line: the launch then failed without a word (seen
    under load, and every time once grow's exit got faster). The launcher's SIGTERM, sent when the first process
    exits, ends this wait at once and quietly (SIGTERM's default action)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(FIRST_PROCESS_WAIT)


# What torch.distributed's backends say when another process of the group is gone (gloo's TCP pair, NCCL's watchdog).
BACKENDS = ("gloo", "NCCL", "ProcessGroup")
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "Read error", "Broken pipe", "remote process")


def lost_contact(exc: BaseException, go_on: str = "continue from the last checkpoint with --resume auto") -> str | None:
    """The line for `exc` when it is a collective that broke because another process of the launch stopped (it
    failed, was killed, or ran out of memory): that process's own lines say why, this one has nothing to add but
    where to look and how to `go_on`. None for any other error."""
    if processes() < 2:
        return None
    dist = sys.modules.get("torch.distributed")  # (not imported: no group, nothing to lose contact with)
    broken = isinstance(exc, getattr(dist, "DistError", ()))
    text = str(exc)
    said = any(name in text for name in BACKENDS) and any(phrase in text for phrase in LOST_PEER)
    if not (broken or (isinstance(exc, RuntimeError) and said)):
        return None
    return (
        "lost contact with another process of this launch (it stopped: its own lines above say why); once that is "
        f"fixed, {go_on}"
    )
