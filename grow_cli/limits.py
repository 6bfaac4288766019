"""Limits checked before any work starts: target sizes against sane bounds, output bytes against free disk space,
the largest tensor against the machine's memory.

Without them a typo costs hours: `--layers 1000000000` builds a billion-entry layer map before any message, and
`--layers 100000` starts writing tens of GB into a disk that cannot hold them. The bounds are far above any
released transformer (the deepest have ~130 layers, the widest ~30k hidden units, ~50k FFN units, the most
experts a few hundred, the longest training runs a few million steps), so they only ever refuse mistakes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from grow_cli.errors import OptionError, OutputError, UsageError, shown
from grow_cli.field_types import flag

MAX_LAYERS = 1024
MAX_WIDTH = 1 << 18  # hidden and FFN units
MAX_HEADS = 4096
MAX_EXPERTS = 4096  # routed experts per layer; the most in a released MoE is a few hundred
MAX_VOCAB = 1 << 22  # token ids; the largest released vocabularies have about 262K (Gemma 3)
# A training budget: the largest released pretraining runs read about 2e13 tokens in a few million optimizer steps.
MAX_TOKENS = 10**18
MAX_STEPS = 10**12
MAX_SEED = 2**64 - 1  # the most torch's and numpy's generators take
# The router's initial standard deviation: routers start at 0.02 (the MoE types' initializer_range). At 1 the logits
# over a normed hidden state are already √hidden wide and the softmax near one-hot; more only saturates it (and
# starves its gradient), and past float32's range the router is written as inf.
MAX_ROUTER_NOISE = 1.0
# HyperCloning's noise, in dB of signal over noise (power `mean(W²)/10^(S/10)`). The noise cancels only up to float
# rounding, which grows with it: below 0 dB (noise stronger than the weights) the error grows fast (-20 dB: max
# |Δlogit| 4e-3, and --verify fails an "exact" growth), and at -1000 dB the weights are written as inf and NaN.
# Above 120 dB its amplitude (1e-6 of the weights') is at float32's rounding and breaks no symmetry; past ~3000 dB
# 10^(S/10) overflows.
NOISE_SNR_DB_RANGE = (0.0, 120.0)
DEEPEST_RELEASED = "the deepest released transformers have about 130"


def check_layers(source_layers: int, target_layers: int) -> None:
    """A layer target within `MAX_LAYERS`, checked before any per-layer structure is built."""
    if target_layers > MAX_LAYERS:
        raise OptionError(
            "layers",
            f"{shown(target_layers)} target layers (from {source_layers}) is beyond grow's bound of {MAX_LAYERS:,}; "
            f"{DEEPEST_RELEASED}. Try --layers {2 * source_layers}",
        )


def check_layer_option(option: str, layers: int) -> None:
    """A layer count a training option asks for (Apollo's target depth, its last stage) within `MAX_LAYERS`, checked
    with the other settings: past it, the run trains and then builds and evaluates a layer list that long at the
    end, for hours, before any message."""
    if layers > MAX_LAYERS:
        raise OptionError(
            option,
            f"{flag(option)} asks for {shown(layers)} layers, beyond grow's bound of {MAX_LAYERS:,}; "
            + DEEPEST_RELEASED,
        )


def check_seed(seed: int) -> None:
    """A seed from 0 to `MAX_SEED`, as every generator grow seeds takes it: numpy's refuses a negative one and
    Python's `random` reads -1 as 1 (a negative seed would repeat a positive one's index maps), and torch's
    refuses one past `MAX_SEED` (`grow expand --verify` failed on it after writing the output)."""
    if not 0 <= seed <= MAX_SEED:
        raise OptionError("seed", f"--seed must be between 0 and 2**64 - 1, got {seed}")


def check_token_steps(max_tokens: int, steps: int, global_batch: int, seq_len: int) -> None:
    """The steps a `--max-tokens` budget makes within `MAX_STEPS`, as `--max-steps` is: a tiny global batch (one
    sequence of `--seq-len 2`) made `--max-tokens 1e18` 5e17 steps, trained with a 1% warmup of 5e15."""
    if steps > MAX_STEPS:
        raise OptionError(
            "max_tokens",
            f"--max-tokens {shown(max_tokens)} over a global batch of {shown(global_batch)} × {seq_len} tokens "
            f"(sequences × --seq-len) is {shown(steps)} steps, beyond grow's bound of {MAX_STEPS:g} (as --max-steps); "
            "lower --max-tokens or raise the batch (--micro-batch-size, --grad-accum or --global-batch-tokens)",
        )


def check_final_step(start_step: int, steps: int, option: str, value: int) -> None:
    """A run's final step — the step it starts at (a continued run's: `--schedule-offset`'s or its grown state's, as
    the checkpoint it resumes recorded it) plus the `steps` its budget (`option` `value`) makes — within `MAX_STEPS`,
    as the offset and the budget each are: its schedule runs to that step, and `--schedule-offset 999999999999
    --max-steps 5` trained and recorded step 1,000,000,000,004."""
    end, room = start_step + steps, MAX_STEPS - start_step
    if end > MAX_STEPS:
        made = f" ({shown(steps)} steps)" if option == "max_tokens" else ""
        lower = f"lower {flag(option)}" + (f" to {shown(room)} or less" if option == "max_steps" else "")
        raise OptionError(
            option,
            f"{flag(option)} {shown(value)}{made} from step {shown(start_step)}, where this run starts, ends at step "
            f"{shown(end)}, beyond grow's bound of {MAX_STEPS:g} steps; "
            + (lower if room >= 1 else "start it from an earlier step"),
        )


def check_width(**targets: int) -> None:
    """Every width target (e.g. `hidden_size=…`) within its bound; the flag is named in the refusal."""
    for key, value in targets.items():
        bound = MAX_HEADS if "heads" in key else MAX_WIDTH
        if value > bound:
            raise OptionError(
                key, f"{flag(key)} {shown(value)} is beyond grow's bound of {bound:,}; choose a smaller target"
            )


def check_experts(experts: int) -> None:
    """An expert count within `MAX_EXPERTS`, checked before the plan lists experts × layers × 3 tensors (a typo such
    as `--experts 100000000` otherwise plans for minutes before any message)."""
    if experts > MAX_EXPERTS:
        raise OptionError(
            "experts",
            f"--experts {shown(experts)} is beyond grow's bound of {MAX_EXPERTS:,}; released mixtures have 8 to a few "
            "hundred experts. Try --experts 8",
        )


def require_free_space(folder: Path, needed: int, out: Path) -> None:
    """Refuse before writing when the file system holding `folder` has less than `needed` bytes free."""
    from grow_cli.console import format_bytes

    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(
            f"{out} needs {format_bytes(needed)} but its disk has only {format_bytes(free)} free; free some space or "
            "choose an output folder on another disk"
        )


def require_memory(peak: int) -> None:
    """Refuse a plan whose largest step needs more memory than the machine has in all."""
    from grow_cli.console import format_bytes

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform says
        return
    if peak > total:
        raise UsageError(
            f"the largest tensor of this growth needs about {format_bytes(peak)} of memory but this machine has "
            f"{format_bytes(total)}; choose a smaller target"
        )
