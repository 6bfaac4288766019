"""`accelerate launch --config_file Z.yaml tests/sharded_on_cpu.py ARGS…`: grow's CLI under DeepSpeed or FSDP on CPU
processes, for tests/test_deepspeed_cpu.py, tests/test_fsdp_cpu.py and tests/test_family_launch.py
(`sharded_runs.launch`); tests/test_ddp_state.py launches it under DDP for its several command lines in one launch
(below). On GPUs nothing of this is needed; without one, accelerate needs two nudges:

- It starts the processes without naming a backend and then counts one process (DeepSpeed's batch check fails:
  "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size"). Each process state made
  here names gloo, the CPU backend, where its maker names none, so that it counts them all: grow's first, and each
  that a family makes for its next member after clearing the last (`process_state.run_accelerate_state`), which
  otherwise trained on each process alone, as a one-process run.
- It turns FSDP on only for accelerators (its list of distributed types that may become FSDP has no CPU entry),
  although torch's FSDP2 runs on CPU processes over gloo. The patch below does, for a CPU run given an FSDP plugin,
  what accelerate does for a GPU run: the state's distributed type becomes FSDP, the process state's too.

stdout is kept for `--json` first, as the `grow` script does (`cli.script`): importing DeepSpeed on a CPU prints a
warning there. Several command lines separated by `--then` run one after another in the same launched processes
(each launch costs CI seconds), stopping at the first that fails; each starts from a fresh accelerate state, as a
family's next member does, in the process group of the first. Each process says on stderr how each command line it
ran ended (`sharded_runs.exits`), so a launch may end with a line that is meant to fail (a refusal) and still show
that the lines before it succeeded, and under which distributed type each accelerate state it made trained
(`sharded_runs.engines`: one per training stage)."""

import os
import sys

from grow_cli.signals import end_without_finalizing, exit_with

# Each process ends as the `grow` script ends (`cli.script`), without the interpreter's finalization: torn down there
# with gloo's threads still alive, a rank aborted now and then after its last command line had exited 0 ("terminate
# called without an active exception", exit -6; once in a full CI run).
end_without_finalizing()

from grow_cli.console import keep_stdout_for_json  # noqa: E402

if "--json" in sys.argv:
    keep_stdout_for_json()

from accelerate import PartialState  # noqa: E402
from accelerate.state import AcceleratorState, GradientState, is_initialized  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

_partial_state = PartialState.__init__
_accelerator_state = AcceleratorState.__init__


def _on_gloo(self, *args, backend=None, **kwargs):
    """PartialState's init, naming gloo where its caller names no backend (the first nudge above)."""
    _partial_state(self, *args, backend=backend or "gloo", **kwargs)


PartialState.__init__ = _on_gloo


def _with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    made = not is_initialized()
    _accelerator_state(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.num_processes > 1 and self.distributed_type != DistributedType.FSDP:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate's own init ends
    if made:
        say(f"accelerate state {self.distributed_type.value} of {self.num_processes} processes")


AcceleratorState.__init__ = _with_fsdp_on_cpu

from grow_cli.cli import main  # noqa: E402


def command_lines(args: list[str]) -> list[list[str]]:
    """ARGS split at each `--then`."""
    lines: list[list[str]] = [[]]
    for arg in args:
        lines.append([]) if arg == "--then" else lines[-1].append(arg)
    return lines


def say(what: str) -> None:
    """One line on stderr in one write (both processes share the pipe), naming this process."""
    sys.stderr.write(f"sharded_on_cpu.py: rank {os.environ['RANK']}, {what}\n")
    sys.stderr.flush()


for i, line in enumerate(command_lines(sys.argv[1:])):
    if i:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    sys.argv = ["grow", *line]
    try:
        main()
    except SystemExit as exit:
        say(f"command line {i + 1} exited {exit.code or 0}")
        if exit.code:
            exit_with(exit.code)
            raise
    else:
        say(f"command line {i + 1} exited 0")
exit_with(0)  # every line succeeded (any other exception leaves the status at 1)
