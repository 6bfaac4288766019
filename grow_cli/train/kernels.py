"""What makes a training step fast on the device: Liger Kernel's fused kernels, and compiling the repeated block.

**Liger Kernel** (`pip install 'grow-cli[liger]'`, Hsu et al. 2024, arXiv 2410.10989) replaces, in the architectures
it supports, RMSNorm, SwiGLU and RoPE with Triton kernels and fuses the output head with the cross-entropy loss, so
the [tokens × vocabulary] logits are never materialised during training (at a 49k vocabulary and 16k tokens per
micro-batch, 3 GB in fp32 plus their gradient). It is used automatically (`liger=None`) when it is installed, the
device is a CUDA GPU and Liger knows the model type; `liger=False` turns it off, `liger=True` refuses to run
without it. Its Triton kernels need a GPU, so a CPU run never imports it. Numerically it is the same computation in
another order: RMSNorm and RoPE are computed as transformers computes them (fp32 statistics for the norm), SwiGLU's
activation is computed in fp32 inside the kernel, and the fused loss sums chunks of the vocabulary — losses agree
with the plain path to rounding (tests/test_kernels.py states the tolerances). Besides the model instance, Liger
patches transformers' modeling module of that architecture (its rope function and norm/MLP classes); `train_stage`
puts them back when the run ends (`undo_liger`), so other models built in the same process stay plain.

**Regional compilation** (`compile=None` on a CUDA GPU, or `compile=True`): `torch.compile` on each repeated block
(the decoder layers) in place, rather than on the whole model. The blocks share their code, so dynamo compiles one
graph (forward and backward) and reuses it for every layer: ready in seconds where compiling the whole model took
minutes, and state-dict names stay unchanged, so checkpoints of compiled and eager runs are interchangeable. With
compiled blocks, Liger contributes its fused loss only: inductor fuses each block's norms, activation and rotary
embedding with their neighbours itself, which Liger's opaque kernels would prevent (one H200, 360M Llama shape:
compiled blocks with Liger's loss 143k tokens/s, with all of Liger's kernels 91k, eager with all of them 98–108k).
It is used automatically on a CUDA GPU for a dense model trained in one process or under DDP; not on a CPU
(compiling takes longer there than most CPU runs train), under FSDP or DeepSpeed (they wrap the blocks themselves),
with Apollo (each depth recompiles), or for a mixture of experts (its routing's data-dependent shapes break the graph,
and it has not been measured on a GPU).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch

from grow_cli.errors import UsageError

COMPILE_BACKEND = "inductor"
LIGER_KERNELS = ("rope", "rms_norm", "swiglu", "fused_linear_cross_entropy")
LIGER_LOSS = "fused_linear_cross_entropy"  # the one kernel outside the repeated blocks
# (a modeling module's namespace, its contents before Liger, what Liger put there): for undo_liger
_replaced: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
_ABSENT = object()


def liger_applies(wanted: bool | None, model_type: str, device: torch.device, *, sharded: bool = False) -> bool:
    """Whether to use Liger Kernel for this run: `wanted=None` where it can, True requires it (a UsageError saying
    why not), False never. Decided before the model loads; nothing is imported off a GPU. With sharded parameters
    (FSDP, DeepSpeed) it is used only when asked for: its fused loss reads the output head's weight outside the
    head's own forward pass, where those engines may not have gathered it."""
    if wanted is False or (wanted is None and sharded):
        return False
    why_not = _liger_unavailable(model_type, device)
    if why_not is not None and wanted:
        raise UsageError(f"--liger: {why_not}; run without --liger (or with --no-liger)")
    return why_not is None


def apply_liger(model: Any, *, loss_only: bool = False) -> list[str]:
    """Patch `model` (and its architecture's transformers module, until `undo_liger`) with Liger's kernels — only
    its fused loss where the blocks are compiled (`loss_only`) — and return their names."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    apply = MODEL_TYPE_TO_APPLY_LIGER_FN[model.config.model_type]
    accepted = inspect.signature(apply).parameters
    chosen = {name: not loss_only or name == LIGER_LOSS for name in LIGER_KERNELS if name in accepted}
    with _recorded(sys.modules.get(type(model).__module__)):  # e.g. transformers.models.llama.modeling_llama
        apply(model=model, **chosen)
    return sorted(name for name, on in chosen.items() if on)


@contextlib.contextmanager
def _recorded(module: ModuleType | None) -> Iterator[None]:
    """Record what the block changes in `module`'s namespace, for `undo_liger` to put back."""
    before = dict(vars(module)) if module is not None else {}
    yield
    if module is not None:
        namespace = vars(module)
        patched = {name: value for name, value in namespace.items() if before.get(name, _ABSENT) is not value}
        _replaced.append((namespace, before, patched))


def undo_liger() -> None:
    """Put back what Liger replaced in transformers' modeling modules (its rope function, norm and MLP classes), so
    that models built later in this process are plain again; a patched model instance keeps its kernels. Only
    Liger's own changes are undone: names others added since stay (dynamo keeps its compiled functions there)."""
    while _replaced:
        namespace, before, patched = _replaced.pop()
        for name, value in patched.items():
            if namespace.get(name, _ABSENT) is not value:
                continue  # replaced again since: not Liger's any more
            if name in before:
                namespace[name] = before[name]
            else:
                del namespace[name]


def _liger_unavailable(model_type: str, device: torch.device) -> str | None:
    """Why Liger Kernel cannot be used here, or None when it can."""
    if device.type != "cuda":
        return f"Liger Kernel's Triton kernels need a CUDA GPU, and this run is on {device.type}"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install 'grow-cli[liger]')"
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return f"Liger Kernel has no kernels for model type {model_type!r}"
    return None


def compile_applies(wanted: bool | None, device: torch.device, *, sharded: bool, apollo: bool, moe: bool) -> bool:
    """Whether to compile the repeated blocks: `wanted=None` on a CUDA GPU for a dense model trained in one process or
    under DDP (see the module docstring for where not), True and False as asked."""
    if wanted is not None:
        return wanted
    return device.type == "cuda" and not (sharded or apollo or moe)


def compile_repeated_blocks(model: torch.nn.Module, **compile_options: Any) -> int:
    """`torch.compile` in place every block of each `ModuleList` whose blocks all share one class (the decoder
    layers), outermost lists only; return how many blocks. The rest of the model stays eager."""
    options = {"backend": COMPILE_BACKEND, **compile_options}
    count = 0
    compiled: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in compiled):
            continue  # inside a block already compiled
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and len({type(b) for b in module}) == 1:
            for block in module:
                block.compile(**options)
            compiled.append(name)
            count += len(module)
    return count
