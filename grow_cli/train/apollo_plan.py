"""Apollo's plan (Pan et al., AAAI 2024): how deep each micro-batch runs (LVPS) and how many unique layers each
stage holds — pure arithmetic, checked against the model's config before anything is loaded.

LVPS, low-value-prioritized sampling, is the released code's `get_curr_apollo_info`: for N unique layers and target
depth L_max, x ~ U(1e-6, 1), y = clip(m/(x+n), 1, L_max/N) with the hyperbola's constants below, and L = ⌊y·N⌋;
shallow depths dominate (P(L = N) ≈ 0.65 for L_max = 12). `uniform` draws L uniformly from [N, L_max]. The released
code computes ⌊y·N⌋ in floating point, which for a few (N, L_max) pairs (e.g. N=11, L_max=15) never reaches L_max;
grow returns L_max whenever y is clipped there. The live side (shared layers, stage growth) is `apollo.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from grow_cli.arch.layer_lists import GENERIC_LAYER_LISTS
from grow_cli.errors import ArchitectureError, OptionError, UsageError, counted

SAMPLINGS = ("lvps", "uniform")
# LVPS constants of the released code (`get_curr_apollo_info`): a hyperbola in x ∈ [X_MIN, 1] that falls from
# L_max/N + BEGIN_OVER_RATIO to END, clipped to [1, L_max/N].
X_MIN, BEGIN_OVER_RATIO, END = 1e-6, 0.4, 0.6
DEPTH_SALT = 0xA9011  # separates the depth draws from every other use of the seed


def lvps_depth(unique: int, target: int, x: float) -> int:
    """The depth LVPS gives for the uniform draw `x` ∈ [X_MIN, 1): ⌊clip(m/(x+n), 1, L_max/N)·N⌋."""
    ratio = target / unique
    begin = ratio + BEGIN_OVER_RATIO
    n = (begin * X_MIN - END) / (END - begin)
    m = END * (n + 1)
    y = m / (x + n)
    if y >= ratio:
        return target
    return max(unique, int(y * unique))


def sample_depth(unique: int, target: int, sampling: str, rng: np.random.Generator) -> int:
    """One depth in [unique, target]: LVPS (shallow depths dominate) or uniform."""
    if unique >= target:
        return target
    if sampling == "uniform":
        return int(rng.integers(unique, target + 1))
    return lvps_depth(unique, target, float(rng.uniform(X_MIN, 1.0)))


def parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    """`--apollo-stages` "3,6@200,12@500" → ((3, 0), (6, 200), (12, 500)): unique layers and the step each stage
    starts at; the first stage starts at step 0 (its "@0" may be left out)."""
    stages: list[tuple[int, int]] = []
    for i, item in enumerate(part.strip() for part in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:@(\d+))?", item)
        if not match or (i > 0 and match.group(2) is None):
            raise OptionError(
                "apollo_stages",
                f"--apollo-stages {text!r}: each stage after the first is LAYERS@STEP, e.g. '3,6@200,12@500' "
                "(3 unique layers from step 0, 6 from step 200, 12 from step 500)",
            )
        stages.append((int(match.group(1)), int(match.group(2) or 0)))
    if stages[0][1] != 0:
        raise OptionError("apollo_stages", f"--apollo-stages {text!r}: the first stage starts at step 0")
    for (layers_a, step_a), (layers_b, step_b) in zip(stages, stages[1:], strict=False):
        if layers_b <= layers_a or step_b <= step_a:
            raise OptionError(
                "apollo_stages",
                f"--apollo-stages {text!r}: stages must grow ({layers_a} → {layers_b} layers) at later steps "
                f"({step_a} → {step_b})",
            )
    if stages[0][0] < 1:
        raise OptionError("apollo_stages", f"--apollo-stages {text!r}: a stage needs at least one layer")
    return tuple(stages)


@dataclass(frozen=True)
class ApolloPlan:
    """What an Apollo run does: the target depth, the stages (unique layers, first step) and the sampling."""

    target: int
    stages: tuple[tuple[int, int], ...]
    sampling: str

    def unique_at(self, step: int) -> int:
        """Unique layers in use at optimizer step `step`."""
        return [layers for layers, start in self.stages if start <= step][-1]

    @property
    def allocated(self) -> int:
        """Layers the model holds from step 0: those of the last stage."""
        return self.stages[-1][0]

    def describe(self) -> dict[str, Any]:
        return {
            "target_layers": self.target,
            "stages": [{"unique_layers": layers, "from_step": start} for layers, start in self.stages],
            "sampling": self.sampling,
            "sharing": "interpolate",
        }


def plan_apollo(config: Any, model_config: Any) -> ApolloPlan | None:
    """The `ApolloPlan` of a `TrainConfig` for a model of `model_config`, or None when Apollo is off; refuses an
    architecture grow cannot share layers of, and a plan that does not fit the model."""
    if config.apollo_target_layers is None and config.apollo_stages is None:
        return None
    text = model_config.get_text_config()
    refuse_experts(model_config)
    block = definition(model_config)
    layers = getattr(text, block.config["layers"])
    stages = parse_stages(config.apollo_stages) if config.apollo_stages else ((layers, 0),)
    target = config.apollo_target_layers or stages[-1][0]
    if stages[0][0] != layers:
        raise UsageError(
            f"--apollo-stages starts with {counted(stages[0][0], 'unique layer')} but the model has {layers}; start "
            f"the plan at {layers} (e.g. '{layers},{2 * layers}@STEP')"
        )
    if target <= layers and config.apollo_target_layers is None:  # the target is the plan's last stage
        raise UsageError(
            f"--apollo-stages {config.apollo_stages!r} never grows past the model's {counted(layers, 'layer')}; add "
            f"a stage (e.g. '{layers},{2 * layers}@STEP') or give --apollo-target-layers (e.g. {2 * layers})"
        )
    if target <= layers:
        raise UsageError(
            f"--apollo-target-layers {target} is not deeper than the model's {counted(layers, 'layer')}; Apollo trains "
            f"a shallow model toward a deeper target (e.g. --apollo-target-layers {2 * layers})"
        )
    if stages[-1][0] > target:
        raise UsageError(f"--apollo-stages grows to {stages[-1][0]} layers, past --apollo-target-layers {target}")
    for key in layer_lists(block):
        values = getattr(text, key, None)
        if isinstance(values, list) and len(set(map(str, values))) > 1:
            raise UsageError(
                f"Apollo shares each layer across positions, but this model's layers differ by {key} "
                f"({sorted(set(map(str, values)))}); it needs layers of one kind"
            )
    return ApolloPlan(target, stages, config.apollo_sampling)


def refuse_experts(model_config: Any) -> None:
    """Refuse a mixture of experts, before anything is loaded. Apollo runs each micro-batch at its own depth with
    layers shared across positions; an MoE's load-balancing loss averages over the MoE layers a pass runs, so its
    weight on each router would change with the sampled depth, the expert load grow records per layer would have
    no fixed layers (the run once stopped there with a raw RuntimeError), and a shared sparse layer would stand
    where the model keeps a dense one (DeepSeek's first layers)."""
    from grow_cli.arch.experts import experts_and_top_k

    experts, _ = experts_and_top_k(model_config)
    if experts:
        raise UsageError(
            f"Apollo's shared-layer training supports dense models only, and this {model_config.model_type} model is "
            f"a mixture of {counted(experts, 'routed expert')}; train it without --apollo-target-layers and "
            "--apollo-stages, or train the dense model with Apollo first and upcycle it after (grow expand --experts)"
        )


def check_apollo_run(
    plan: ApolloPlan, distributed_type: str, max_steps: int, *, start_step: int = 0, grown_state: bool = False
) -> None:
    """Refuse what only the accelerator, the step budget and the run's start reveal: sharded training, a boundary
    the run never crosses (after its end, or before the step a continuation starts it at: a stage's layers are
    copied as its boundary is crossed), and a stage plan on a grown training state (`grown_state`), which holds the
    moments and multipliers of the model's own layers only, none for the layers its stages copy into."""
    if distributed_type not in ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU"):
        raise UsageError(
            f"Apollo's shared layers run in one process or under DDP, not under {distributed_type}, which shards "
            "each layer for a single use per pass; launch with a multi-GPU (DDP) accelerate config"
        )
    if grown_state and plan.allocated > plan.stages[0][0]:
        raise UsageError(
            f"--apollo-stages with --resume grown: the grown training state holds the model's {plan.stages[0][0]} "
            f"layers, not the {plan.allocated} the plan grows to, whose copies would train without the multipliers "
            "of the layers they copy; continue the state with --apollo-target-layers alone, or run the stage plan "
            "with a fresh optimizer (without --resume grown)"
        )
    late = [start for _, start in plan.stages[1:] if start >= max_steps]
    if late:
        raise UsageError(
            f"--apollo-stages starts a stage at step {late[0]}, but the run has only {counted(max_steps, 'step')}; "
            "move the boundary earlier or train longer"
        )
    early = [start for _, start in plan.stages[1:] if start < start_step]
    if early:
        raise UsageError(
            f"--apollo-stages starts a stage at step {early[0]}, but this run starts at step {start_step} of its "
            f"schedule (--schedule-offset), after that boundary, so its layers would never be copied; move the "
            f"boundary to step {start_step} or later"
        )


def describe_apollo(plan: ApolloPlan) -> str:
    """One line for the run's output: what Apollo will do (and how to grow the result when it ends shallower)."""
    growth = "".join(f" → {layers} at step {start:,}" for layers, start in plan.stages[1:])
    line = (
        f"Apollo: {counted(plan.stages[0][0], 'unique layer')}{growth}, shared over depths up to {plan.target} "
        f"({plan.sampling} sampling)"
    )
    if plan.allocated < plan.target:
        line += f"; grow the result with `grow expand --depth-method interpolate --layers {plan.target}`"
    return line


def definition(model_config: Any):
    """grow's definition of the architecture: where its layer block is and which config keys count layers."""
    from grow_cli.arch.registry import detect

    try:
        return detect(model_config.to_dict())
    except ArchitectureError as exc:
        raise ArchitectureError(f"Apollo needs grow's definition of the model's layer block: {exc}") from None


def layer_lists(arch) -> tuple[str, ...]:
    """The config keys that hold one entry per layer."""
    return tuple(dict.fromkeys((*arch.layer_lists, *GENERIC_LAYER_LISTS)))
