"""The grown training state: AdamW moments, step, schedule position and per-tensor multipliers, planned from the
same plan as the weights and written beside them (`OUT/training-state/`), for `grow train-stage --resume grown`.

Under exact symmetric duplication a widened entry's gradient is the source's divided by (copies × value scale) —
the two numbers the width operator reports per tensor (`state_scales`; e.g. 1/C_out for an IN-divided matrix, 1
for a tied head's folded norm gain). With s that factor, AdamW continues the source's trajectory exactly when

    m' = m[map]·s,  v' = v[map]·s²,  eps' = eps·s,  lr' = lr·value scale,  weight_decay' = weight_decay / value scale

(the moments follow the weights' own path, `state_layout`; the step counter is kept, so is bias correction).
docs/training-state.md derives it and measures what is exact. Tensors with no counterpart — new layers, staged
training's off-diagonal blocks — start with zero moments: they get gradients from the first step and follow their
own trajectory. Methods that change the function (stack, AKI, …) cannot continue a trajectory and are refused.
A mixture of experts' load-balancing loss averages over its MoE layers, so adding some changes the original
layers' gradients too: the state then says so in a note (`aux_loss_note`).

Files: `training-state/model*.safetensors` (+ index when sharded) hold `<param>.exp_avg` and `<param>.exp_avg_sq`
in float32 for every carried tensor; `training-state/state.json` everything else (schema in the docs page).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grow_cli.arch.experts import aux_loss_coef
from grow_cli.checkpoint.arrays import Stored
from grow_cli.checkpoint.buffers import BufferPool
from grow_cli.checkpoint.direct_io import STAGING_BYTES
from grow_cli.checkpoint.dtypes import block_shape, numel
from grow_cli.checkpoint.files import TRAINING_STATE_DIR
from grow_cli.checkpoint.finite import non_finite_count, non_finite_moment
from grow_cli.checkpoint.mapped import release
from grow_cli.checkpoint.writer import PlannedTensor, ShardWriter, plan_shards
from grow_cli.errors import OptionError, UsageError, counted
from grow_cli.growth.plan import OutputTensor, Plan, blocks_of, lm_dropout
from grow_cli.growth.restart import suggest_restart
from grow_cli.growth.spec import GrowthSpec
from grow_cli.growth.train_state import OPTIMIZER_FILE, WEIGHTS_ONLY_HINT, SourceState, checkpoint_blocks_read
from grow_cli.operators.layer_map import state_refusal
from grow_cli.train.continuation import FORMAT, STATE_FILE  # (where state.json is read, and checked)

STATE_DIR = TRAINING_STATE_DIR
MOMENTS_EARLIER = f"grow a checkpoint saved before the run diverged, or {WEIGHTS_ONLY_HINT}"  # moments not finite
FORMAT_VERSION = 1
# Both moments of a tensor are gathered into the same width buffers: each is scaled and written before the next.
MOMENT_TAG = "moment"
DYNAMICS_METHODS = {"width": ("fpi", "hypercloning", "staged"), "depth": ("identity", "staged-identity")}


def method_refusal(spec: GrowthSpec) -> str | None:
    """Why `spec`'s methods cannot carry a training run on (they change the function, or their copies are not
    symmetric duplicates), or None."""
    if spec.grows_experts:
        return (
            "upcycling into experts routes each token through a renormalised top-k, so the experts' gradients are not "
            "the dense MLP's divided by a copy count and its AdamW state cannot continue on them"
        )
    if spec.layer_map is not None:  # a mergekit config's map is read, and judged, when the plan is made
        if why := state_refusal(spec.layer_map, spec.identity_repeats):
            return why
    for kind, grows in (("width", spec.grows_width), ("depth", spec.grows_depth and not spec.maps_layers)):
        method = spec.width_method if kind == "width" else spec.depth_method
        if grows and method not in DYNAMICS_METHODS[kind]:
            exact = " or ".join(DYNAMICS_METHODS[kind])
            return (
                f"--{kind}-method {method} changes the model's function, so the source's training state cannot "
                f"continue on it (exact {kind} methods: {exact})"
            )
    return None


def plan_refusal(plan: Plan, spec: GrowthSpec) -> str | None:
    """Why `plan` cannot carry a training run on, or None: `method_refusal`, and what only the plan shows — a layer
    map that leaves out the source's top layers (exactness needs the source's depth), queries a moved layer's index
    scales. Said by `plan_state` and, before any member runs, by `grow family --check`."""
    if why := method_refusal(spec):
        return why
    if (explicit := spec.explicit_layer_map) is not None:  # a mergekit config's, or layers left out at the top
        if why := state_refusal(*explicit, plan.source_shape.layers):
            return why
    if scaled := next((t for t in plan.tensors if t.query_scale != 1), None):  # operators/index_scaling
        flag = plan.arch.index_scaled_attention.flag  # type: ignore[union-attr]
        return (
            f"this growth multiplies the query of layers it moves ({scaled.name}) because config.json sets {flag}, "
            "and AdamW would take other steps on it, so the source's training state cannot continue"
        )
    return None


def trained_tensors(plan: Plan) -> list[OutputTensor]:
    """The planned tensors an optimizer trains: all but persistent buffers (DeepSeek-V3's and the GLMs' e-score
    correction bias), which are grown like weights but are no parameter of the model and have no optimizer state."""
    return [t for t in plan.tensors if not t.source.weight.buffer]


def state_scales(plan: Plan) -> list[tuple[int, float]]:
    """(copies, value scale) of every trained tensor (`WidthOperator.state_scales`); a tensor whose units are copied
    unequally often — which no per-tensor multiplier can follow — is refused. (Plan with `uniform_maps`.)"""
    result = []
    for t in trained_tensors(plan):
        scales = plan.width.state_scales(t.source.weight) if plan.width else (1, 1.0)
        if scales is None:
            raise UsageError(
                f"{t.name}: the width maps copy some units of it more often than others, and per-tensor LR and eps "
                f"multipliers cannot follow that; grow every size by an integer factor, or {WEIGHTS_ONLY_HINT}"
            )
        result.append(scales)
    return result


@dataclass(frozen=True)
class TensorState:
    """How one output tensor's optimizer state is made."""

    name: str
    role: str  # the source tensor it comes from (a new layer's: the tensor of the layer it was planned from)
    carried: bool  # moments carried from the source; otherwise zero (fresh)
    step: int | None  # AdamW's step for this tensor (None: fresh, torch starts it at 0)
    scale: float  # s: m' = m·s, v' = v·s², eps' = eps·s
    lr: float  # multipliers, composed with the source run's own
    eps: float
    weight_decay: float
    fresh_entries: bool  # carried, but some entries have no counterpart (staged's off-diagonal blocks)

    def describe(self) -> dict[str, Any]:
        moments = "carried" if self.carried else "fresh"
        if self.fresh_entries:
            moments += "; off-diagonal blocks fresh"
        return {
            "moments": moments,
            "step": self.step,
            "lr": self.lr,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }


@dataclass
class StatePlan:
    source: SourceState
    tensors: list[TensorState]  # one per trained tensor (`trained_tensors`), in plan order
    shards: list[list[PlannedTensor]]
    restart: dict[str, Any]  # the suggested restart step and its rule (growth/restart.py)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for shard in self.shards for t in shard)

    @property
    def exact(self) -> bool:
        """Every tensor continues the source's trajectory: nothing fresh, and no note (noise, clipping, dropout…)."""
        return not self.notes and all(t.carried and not t.fresh_entries for t in self.tensors)


def plan_state(plan: Plan, source: SourceState, spec: GrowthSpec) -> StatePlan:
    """The grown state of `source` under `plan` (which must have been built with uniform maps); refuses what cannot
    continue the source's dynamics."""
    if why := plan_refusal(plan, spec):
        raise OptionError("weights_only", f"{why}; {WEIGHTS_ONLY_HINT}")
    shapes = {t.name: t.shape for t in plan.binding.all_tensors()}
    source.open(shapes)
    scales = state_scales(plan)
    tensors: list[TensorState] = []
    planned: list[PlannedTensor] = []
    for t, (copies, value) in zip(trained_tensors(plan), scales, strict=True):
        role = t.source.name
        moments = None if t.new else source.moments(role)
        base = source.multipliers(role)
        s = 1.0 / (copies * value)
        tensors.append(
            TensorState(
                name=t.name,
                role=role,
                carried=moments is not None,
                step=moments[0] if moments else None,
                scale=s,
                lr=base["lr"] * value,
                eps=base["eps"] * s,
                weight_decay=base["weight_decay"] / value,
                fresh_entries=moments is not None and bool(plan.width and plan.width.fresh_entries(t.source.weight)),
            )
        )
        if moments is not None:
            planned += [PlannedTensor(f"{t.name}.{key}", t.shape, "F32") for key in ("exp_avg", "exp_avg_sq")]
    growth = "both" if plan.width and plan.depth else "width" if plan.width else "depth"
    warmup = int((source.state.get("schedule") or {}).get("warmup_steps") or 0)
    sizes = (_non_embedding(t.shape, t.weight.axes) for t in plan.binding.all_tensors())
    grown = (_non_embedding(t.shape, t.source.weight.axes) for t in plan.tensors)
    restart = suggest_restart(source.step, source.losses, warmup, sum(sizes), sum(grown), growth)
    notes = (
        noise_note(plan),
        frozen_note(plan, tensors),
        clipping_note(source, scales, tensors),
        dropout_note(plan),
        aux_loss_note(plan),
    )
    return StatePlan(source, tensors, plan_shards(planned, spec.max_shard_bytes), restart, [n for n in notes if n])


# Each *_note says why the grown state does not continue the source's dynamics exactly, or None; any one of them makes
# `StatePlan.exact` false.


def noise_note(plan: Plan) -> str | None:
    """HyperCloning's symmetric noise cancels in the forward pass, not in the backward one."""
    if plan.width is None or getattr(plan.width, "noise_snr_db", None) is None:
        return None
    return (
        "HyperCloning's noise keeps the function but not the gradients' symmetry: the copies' updates differ from "
        "the first step"
    )


def frozen_note(plan: Plan, tensors: list[TensorState]) -> str | None:
    """Tensors the source run froze (no moments) but that are no new tensor: they train from fresh moments now."""
    frozen = [s.name for t, s in zip(trained_tensors(plan), tensors, strict=True) if not s.carried and not t.new]
    if not frozen:
        return None
    return f"{counted(len(frozen), 'tensor')} without optimizer state in the source (frozen there): fresh"


def clipping_note(source: SourceState, scales: list[tuple[int, float]], tensors: list[TensorState]) -> str | None:
    """A source run that clipped the gradient's global norm (`--grad-clip`, 1.0 by default), when growth changes
    that norm: each carried tensor's squared norm changes by 1/(copies × value scale²) (the gradient is the source's
    times s, on `copies` entries), and tensors or entries without a counterpart add their own, so the grown run
    clips by another factor than the source would have. Unclipped, no step depends on the global norm. A run whose
    clipping is not recorded (an earlier grow's optimizer.bin) may have clipped: it is not called exact either."""
    clip = _source_optimizer(source).get("grad_clip")
    norm_kept = all(math.isclose(copies * value**2, 1.0) for copies, value in scales)
    if clip == 0 or (norm_kept and all(t.carried and not t.fresh_entries for t in tensors)):
        return None
    clipped = (
        f"clipped the gradient's global norm at {clip:g} (--grad-clip)"
        if clip is not None
        else "may have clipped the gradient's global norm (its --grad-clip, 1 by default, is not recorded)"
    )
    return (
        f"the source run {clipped}, and this growth changes that norm (copied and new entries change each tensor's "
        "share), so the grown run clips by another factor than the source would: its steps are not the grown image "
        "of the source's. Train the source with --grad-clip 0, and continue it so, for an exact continuation"
    )


def dropout_note(plan: Plan) -> str | None:
    """A model that trains with dropout (`lm_dropout`): the grown model draws masks of its own — each copy of a unit
    another, new layers from the same random stream — so no step is the grown image of the source's."""
    rates = lm_dropout(plan.source_config)
    if not rates:
        return None
    named = ", ".join(f"{key} {rate:g}" for key, rate in rates.items())
    return (
        f"the model trains with dropout ({named}): the grown model draws other masks than the source would (each "
        "copy of a unit its own), so its steps are not the grown image of the source's. A source trained with these "
        "at 0 in its config.json grows an exact state"
    )


def aux_loss_note(plan: Plan) -> str | None:
    """Why a growth that adds MoE layers changes the gradients of the source's own layers, or None. The load-balancing
    loss (which grow asks for in every training pass, whatever config.json's `output_router_logits`:
    train/router.py) averages over the MoE layers: with more of them each original router's share of it shrinks,
    and the new layers' routers add terms whose gradient reaches the layers below them. The carried moments then
    do not continue the source's trajectory (docs/training-state.md measures the gap); with the loss's coefficient
    0, or no MoE layer added, they do."""
    before, after = len(plan.source_shape.sparse_layers), len(plan.target_shape.sparse_layers)
    if before == after or not (coef := aux_loss_coef(plan.source_config)):
        return None
    return (
        f"the load-balancing loss (router_aux_loss_coef {coef:g}) averages over the MoE layers, {before} in the "
        f"source and {after} grown, so the original layers' gradients are not the source run's: their moments are "
        "carried, but the run does not continue the source's dynamics exactly (with router_aux_loss_coef 0 it would)"
    )


def _non_embedding(shape: tuple[int, ...], axes: tuple) -> int:
    """A tensor's parameters as Kaplan's N counts them: embeddings and the vocabulary head excluded."""
    return 0 if {"vocab", "positions", "token_types"} & set(axes) else numel(shape)


def peak_bytes(plan: Plan, state: StatePlan) -> int:
    """Estimated peak memory of growing the moments (`write_state`), in float32, per block of rows (`moment_blocks`):
    the largest block's two source moments (memory-mapped, resident once read, given back after it), the reused
    buffer the scaled moment is written from (as large as the largest grown block), plus, for a width growth, the
    gather buffers both moments share, which keep the largest size any block needed per axis; and the direct-I/O
    staging buffers the moments are written through. The second set of gather buffers the moments no longer take is
    still counted, as headroom: the excess it was added for came from torch's `isfinite` temporaries (1.7× the
    moment checked), which `finite.non_finite_count` now avoids; SmolLM2's state then peaked at 0.85× this estimate
    by fpi ×2 and 1.17× by depth ×2, ~20 MB of that grow's own bookkeeping (docs/benchmarks.md, Memory,
    thirty-eighth session)."""
    carried = [t for t, s in zip(trained_tensors(plan), state.tensors, strict=True) if s.carried]
    first = {t.name: moment_blocks(plan, t)[0] for t in carried}  # the first block is the largest
    sources = max((4 * 2 * numel(block_shape(t.source.shape, first[t.name])) for t in carried), default=0)
    result = max((4 * numel(block_shape(t.shape, first[t.name])) for t in carried), default=0)
    peak = sources + result + STAGING_BYTES
    if plan.width is None:
        return peak
    axes: dict[int, int] = {}
    for t in carried:
        rows = first[t.name]
        for axis, size in enumerate(gather_bytes(block_shape(t.source.shape, rows), block_shape(t.shape, rows))):
            axes[axis] = max(axes.get(axis, 0), size)
    return peak + 2 * sum(axes.values())  # one buffer set for both moments (`MOMENT_TAG`), and the margin above


def moment_blocks(plan: Plan, t: OutputTensor) -> list[tuple[int, int] | None]:
    """The blocks of rows (`plan.blocks_of`) that the moments of trained tensor `t` are grown in, or [None]: whole.
    In blocks where each row of the grown moment comes from the same row of the source's (a depth growth only
    scales them; a width map that leaves the first axis as it is: `WidthPlan.rows_apart`), so that neither the
    mapped source moments nor the result of an embedding are resident whole."""
    return blocks_of(t.shape) if plan.width is None or plan.width.rows_apart(t.source) else [None]


def gather_bytes(source: tuple[int, ...], target: tuple[int, ...]) -> list[int]:
    """The float32 bytes of each step of a width gather from `source` to `target` shape, one axis at a time (0 for
    an axis that keeps its size: nothing is gathered along it)."""
    sizes, shape = [], list(source)
    for axis, size in enumerate(target):
        grows = shape[axis] != size
        shape[axis] = size
        sizes.append(4 * numel(tuple(shape)) if grows else 0)
    return sizes


def write_state(plan: Plan, state: StatePlan, folder: Path, advance=None) -> dict[str, Any]:
    """Stream the grown moments into `folder` (shards as planned) and write state.json; returns the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(folder, state.shards)
    results = BufferPool()  # one scaled moment at a time: written (copied out) before the next is made
    for t, s in zip(trained_tensors(plan), state.tensors, strict=True):
        if not s.carried:
            continue
        moments = state.source.moments(s.role)
        assert moments is not None
        _, m, v = moments
        blocks = moment_blocks(plan, t)
        for key, x, factor in (("exp_avg", m, s.scale), ("exp_avg_sq", v, s.scale**2)):
            for rows in blocks:
                part = x if rows is None else x[rows[0] : rows[1]]
                if non_finite_count(part):  # checked here, where each moment is read anyway; counted whole
                    optimizer = state.source.checkpoint / OPTIMIZER_FILE
                    raise non_finite_moment(str(optimizer), f"{key} of {s.role}", non_finite_count(x), MOMENTS_EARLIER)
                part = part.float()
                laid = plan.width.state_layout(t.source, part.numpy(), MOMENT_TAG) if plan.width else part.numpy()
                # into a reused buffer: fresh results, freed one after another, fragment the heap glibc keeps (FPI to
                # 2048/8192 of an 8x1024 Llama's state: 485 -> 420 MB beyond import; docs/benchmarks.md, Memory)
                scaled = np.multiply(laid, factor, out=results.array("scaled", block_shape(t.shape, rows), "F32"))
                written = writer.write(f"{t.name}.{key}", Stored(scaled, "F32"), rows)
                if advance is not None:
                    advance(written)
                release(x)  # optimizer.bin is memory-mapped: without this, every moment read stays resident
    writer.finish()
    document = state_document(state)
    (folder / STATE_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return summary(state, document)


def _source_optimizer(source: SourceState) -> dict[str, Any]:
    """The source run's optimizer settings: recorded by grow ≥ this version, else read from optimizer.bin."""
    recorded = source.state.get("optimizer")
    if isinstance(recorded, dict):
        return recorded
    groups = source.param_groups() or [{}]
    return {
        "max_lr": groups[0].get("initial_lr", groups[0].get("lr")),
        "betas": list(groups[0].get("betas", ())),
        "eps": groups[0].get("eps"),
        "weight_decay": max(g.get("weight_decay", 0.0) for g in groups),
        "grad_clip": None,
    }


def state_document(state: StatePlan) -> dict[str, Any]:
    """state.json: what `grow train-stage --resume grown` needs to continue, and what the source run was."""
    src = state.source
    kept_apart = ("parameters", "placeholders", "multipliers", "optimizer", "step", "tokens", "data_blocks")
    run = {k: v for k, v in src.state.items() if k not in kept_apart}
    step = src.step
    fresh = [t.name for t in state.tensors if not t.carried]
    partly = [t.name for t in state.tensors if t.fresh_entries]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": "adamw",
        "step": step,
        "tokens": src.state.get("tokens"),
        "data_blocks": checkpoint_blocks_read(src.state),
        "source": {"checkpoint": str(src.checkpoint), "run": run, "optimizer": _source_optimizer(src)},
        "loss_at_growth": src.loss_at_growth,
        "restart": state.restart,
        "dynamics": {
            "exact": state.exact,
            "carried": sum(t.carried for t in state.tensors),
            "fresh": fresh,
            "partly_fresh": partly,
            "notes": state.notes,
        },
        "parameters": {t.name: t.describe() for t in state.tensors},
    }


def multiplier_groups(parameters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tensors grouped by their (lr, eps, weight_decay) multipliers, for grow.json and the card."""
    groups: dict[tuple[float, float, float], list[str]] = {}
    for name, p in parameters.items():
        groups.setdefault((p["lr"], p["eps"], p["weight_decay"]), []).append(name)
    return [
        {"lr": lr, "eps": eps, "weight_decay": wd, "tensors": names}
        for (lr, eps, wd), names in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]


def summary(state: StatePlan, document: dict[str, Any] | None = None) -> dict[str, Any]:
    """The expand stage's `training_state` entry in grow.json (and the dry-run's)."""
    document = document or state_document(state)
    dynamics = document["dynamics"]
    return {
        "folder": STATE_DIR,
        "source_checkpoint": str(state.source.checkpoint),
        "step": document["step"],
        "tokens": document["tokens"],
        "loss_at_growth": document["loss_at_growth"],
        "suggested_restart_step": document["restart"]["suggested_step"],
        "exact_dynamics": dynamics["exact"],
        "carried_tensors": dynamics["carried"],
        "fresh_tensors": len(dynamics["fresh"]),
        "partly_fresh_tensors": len(dynamics["partly_fresh"]),
        "notes": dynamics["notes"],
        "multipliers": [
            {k: v for k, v in g.items() if k != "tensors"} | {"num_tensors": len(g["tensors"])}
            for g in multiplier_groups(document["parameters"])
        ],
        "bytes": state.total_bytes,
    }
