"""What a run under DeepSpeed (`accelerate launch` with a DeepSpeed config, docs/accelerate/) needs from grow.

**The engine's batch settings.** DeepSpeed's config holds the micro-batch, the accumulation and the clipping, and
accelerate fills those left "auto" from the DataLoader it is given, or from defaults: grow's loop hands it none
(`StepBatches` feeds the model itself), so without this accelerate refuses to prepare the model, and clipping would
be DeepSpeed's 1.0 whatever `--grad-clip` says. `fill_deepspeed_config` writes grow's own values where the config
says "auto", and refuses in one line a config that sets another value.

**ZeRO-3's partitioned parameters.** Loaded under `deepspeed.zero.Init` (accelerate's `zero3_init_flag`), every
parameter holds an empty tensor; the whole parameter's size and shape are `ds_numel` and `ds_shape`. Counting
parameters, FLOPs and which tensors are matrices (weight decay) reads those through `full_numel` and `full_ndim`.
"""

from __future__ import annotations

from typing import Any

import torch

from grow_cli.errors import UsageError


def fill_deepspeed_config(accelerator: Any, micro_batch_size: int, grad_accum: int, grad_clip: float) -> None:
    """Set DeepSpeed's micro-batch, accumulation and clipping to this run's where its config leaves them "auto";
    refuse one it sets otherwise. Nothing to do without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": (micro_batch_size, "--micro-batch-size"),
        "gradient_accumulation_steps": (grad_accum, "--grad-accum"),
        "gradient_clipping": (grad_clip, "--grad-clip"),
    }
    for key, (value, flag) in wanted.items():
        held = config.get(key, "auto")
        if held == "auto":
            config[key] = value
        elif held != value:
            raise UsageError(
                f'the DeepSpeed config sets {key} to {held}, but this run\'s {flag} is {value}; set it to "auto" '
                f"in the DeepSpeed config (grow then fills it in) or to {value}"
            )


def full_numel(param: torch.Tensor) -> int:
    """The parameter's element count, also where ZeRO-3 partitioned it."""
    return int(getattr(param, "ds_numel", param.numel()))


def full_ndim(param: torch.Tensor) -> int:
    """The parameter's number of dimensions, also where ZeRO-3 partitioned it."""
    return len(getattr(param, "ds_shape", param.shape))
