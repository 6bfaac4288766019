"""`accelerate launch --config_file Z.yaml tests/deepspeed_on_cpu.py ARGS…`: grow's CLI under DeepSpeed on CPU
processes, for tests/test_deepspeed_cpu.py. Where no GPU is found, accelerate starts DeepSpeed's processes without
naming a backend and then counts one process (DeepSpeed's batch check fails: "train_batch_size is not equal to
micro_batch_per_gpu * gradient_acc_step * world_size"); naming gloo, the backend DeepSpeed's CPU accelerator uses,
before grow builds its Accelerator makes it count them all. On GPUs nothing of this is needed.

stdout is kept for `--json` first, as the `grow` script does (`cli.script`): importing DeepSpeed on a CPU prints a
warning there."""

import sys

from grow_cli.console import keep_stdout_for_json

if "--json" in sys.argv:
    keep_stdout_for_json()

from accelerate import PartialState  # noqa: E402

PartialState(backend="gloo")  # the process group, before grow's Accelerator (PartialState is shared)

from grow_cli.cli import main  # noqa: E402

sys.argv = ["grow", *sys.argv[1:]]
main()
