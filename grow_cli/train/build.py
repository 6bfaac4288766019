"""Step 2 of `grow train-stage`: build what the loop needs, `prepare` it once, and restore a checkpoint to resume.

In order: the accelerator (flags left unset fall through to `accelerate config` / `accelerate launch`), the step
budget, the token data (tokenized once by the main process, read from its cache by the others), the model with
only the trainable tensors unfrozen, the optimizer and its LR schedule (continuing a grown training state: its
multipliers, moments and start step, train/continuation.py), `accelerator.prepare`, the step-indexed batches and
the held-out blocks. The result is a `Run`: everything built, and the position (step, tokens) that the
loop advances.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator, DistributedType

from grow_cli.arch.experts import experts_and_top_k
from grow_cli.checkpoint.files import METRICS_FILE
from grow_cli.checkpoint.fingerprint import weights_fingerprint
from grow_cli.checkpoint.output import remove_entries
from grow_cli.data.batches import StepBatches, check_global_batch, eval_batches
from grow_cli.data.sources import undecodable_note
from grow_cli.data.tokens import TokenData, prepare_tokens, token_cache_dir
from grow_cli.errors import DataError, OptionError, UsageError, counted
from grow_cli.quantities import format_count
from grow_cli.train.apollo import Apollo, allocate
from grow_cli.train.apollo_plan import ApolloPlan, check_apollo_run, describe_apollo
from grow_cli.train.attention import HALF, check_attention_run, one_row
from grow_cli.train.budget import Budget, plan_budget
from grow_cli.train.checkpoints import (
    described_change,
    earlier_checkpoint_advice,
    load_checkpoint,
    precision_change,
    prune,
    remove_unfinished,
    run_key_change,
    starts_fresh_scaler,
)
from grow_cli.train.config import TrainConfig
from grow_cli.train.continuation import Continuation, check_whole_state, load_grown_state
from grow_cli.train.data_offset import step_offset
from grow_cli.train.deepspeed_engine import fill_deepspeed_config, full_ndim, full_numel
from grow_cli.train.documents import check_document_masking
from grow_cli.train.freeze import freeze_all_but
from grow_cli.train.fsdp_units import keep_tied_weights_in_one_unit, shared_parameters_left_to_the_output
from grow_cli.train.kernels import apply_liger, compile_applies, compile_repeated_blocks, liger_applies
from grow_cli.train.lr_rule import SOURCE as LR_RULE_SOURCE
from grow_cli.train.lr_rule import auto_max_lr
from grow_cli.train.metrics import JsonlTracker, flops_per_token, peak_flops
from grow_cli.train.model_io import LoadedModel, load_model, saved_config
from grow_cli.train.objective import Objective, objective_notes
from grow_cli.train.preflight import Checked
from grow_cli.train.router import RouterStats, is_moe_model
from grow_cli.train.schedule import Schedule, warmup_steps_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel

GROWN_STATE_LR = "the grown training state's run"  # --max-lr auto continuing a grown state: its run's peak LR

# Where torch's fused AdamW kernel (one kernel for all tensors, much faster than the per-tensor loop) applies:
# plain and DDP training; FSDP and DeepSpeed bring their own optimizer handling.
FUSED_ADAMW_TYPES = {DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU}


@dataclass
class Run:
    """Everything `build` made, prepared by accelerate, and the position the loop advances (`step`, `tokens`)."""

    config: TrainConfig
    accelerator: Any  # accelerate.Accelerator
    tracker: JsonlTracker
    tokenizer: Any
    data: TokenData
    model: Any  # the prepared model (DDP/FSDP-wrapped under `accelerate launch`)
    optimizer: Any  # accelerate's AcceleratedOptimizer around torch.optim.AdamW
    scheduler: Any  # accelerate's AcceleratedScheduler around LambdaLR(schedule.lr_factor)
    schedule: Schedule
    batches: StepBatches
    held_out: list[tuple[torch.Tensor, bool]]  # this process's eval micro-batches, and whether each counts
    budget: Budget
    max_lr: float
    max_lr_rule: str | None  # where --max-lr auto took the peak LR from (None: a number given)
    num_parameters: int
    trainable: list[str]  # names of the parameters that train
    saved_dtype: torch.dtype  # the checkpoint's dtype, which the trained model is written back in
    flops_per_token: float
    peak_flops: float | None  # the device's dense peak (FLOP/s), None when unknown
    run_keys: dict[str, Any]  # what a resume must match (see checkpoints.RESUME_KEYS)
    objective: Objective  # the inputs and labels of each micro-batch (causal or masked LM)
    apollo: Apollo | None  # Apollo's depth sampling and shared layers; None: plain training
    loaded: LoadedModel  # what loading created (a new head) and what the output carries unchanged
    kernels: dict[str, Any]  # what `speed_up` applied: Liger kernels, compiled blocks, attention (for grow.json)
    parameter_names: list[str]  # the optimizer's parameters, in its index order
    continuation: Continuation | None = None  # where this run continues another (train/continuation.py)
    step: int = 0
    tokens: int = 0  # trained in this run (a checkpoint records `lineage_tokens`)
    router: RouterStats | None = None  # mixture of experts: auxiliary loss and expert load (train/router.py)

    @property
    def start_step(self) -> int:
        """The step this stage started from: 0, or the step of the grown state it continues (`--resume grown`); a
        resume of this stage's own checkpoint starts its loop later, but not the stage."""
        return self.continuation.start_step if self.continuation else 0

    @property
    def lineage_tokens(self) -> int:
        """Tokens trained since the lineage's first step: this run's, and those of the run whose grown state it
        continues — what a checkpoint records, counted as its step is (a continued run's steps go on from its
        source's)."""
        return self.tokens + (self.continuation.tokens if self.continuation else 0)

    @property
    def data_blocks(self) -> int:
        """Blocks of the data order read so far: where a continued run, or a fresh one with `--data-offset
        lineage`, reads on (a run that itself continued another or skipped blocks starts at an offset of its own)."""
        return self.step * self.budget.global_batch + self.batches.offset

    def state(self) -> dict[str, Any]:
        """grow's part of a checkpoint: the run keys (with the model folder), the position, the mixed precision it
        trained in (a resume in another is noted), and what `grow expand` needs to grow the training state (the
        optimizer's parameter order and settings, the multipliers)."""
        state = {
            **self.run_keys,
            # the model the run trains now, which `grow expand` and `grow inspect` read the weights saved as: its
            # config, and the tensors the weights hold beside it (an Apollo stage plan's layers not yet in use)
            "model_config": self.model_config(),
            "placeholders": self.apollo.placeholders() if self.apollo else [],
            "step": self.step,
            "tokens": self.lineage_tokens,
            "data_blocks": self.data_blocks,
            "parameters": self.parameter_names,
            "mixed_precision": self.accelerator.mixed_precision,
            **self.settings(),
        }
        if self.router is not None and (totals := self.router.totals(self.accelerator)) is not None:
            state["router"] = totals  # the run's summary covers the steps before a resume too
        if self.continuation is not None:
            state["continuation"] = self.continuation.record()
            state["multipliers"] = self.continuation.multipliers
        return state

    def model_config(self) -> dict[str, Any]:
        """The config.json of the model the run trains now: under an Apollo stage plan, of its unique layers in use
        (as its evaluation runs it), not of all the layers allocated."""
        with self.apollo.view(self.apollo.unique) if self.apollo else contextlib.nullcontext():
            return saved_config(self.loaded.model)

    def settings(self) -> dict[str, Any]:
        """The optimizer's settings and the schedule, as a checkpoint records them: a resume restores the
        checkpoint's optimizer and scheduler, so it must match them (`checkpoints.setting_change`)."""
        config = self.config
        optimizer = {
            "max_lr": self.max_lr,
            "betas": [config.beta1, config.beta2],
            "eps": config.eps,
            "weight_decay": config.weight_decay,
            "grad_clip": config.grad_clip,
        }
        return {"optimizer": optimizer, "schedule": self.schedule.describe(self.max_lr)}

    def say(self, message: str) -> None:
        say(self.accelerator, self.config.quiet, message)


def say(accelerator: Accelerator, quiet: bool, message: str) -> None:
    """A note on stderr from the main process only (unless --quiet)."""
    if accelerator.is_main_process and not quiet:
        from grow_cli.console import err

        err.print(message, soft_wrap=True)  # logs keep whole lines (and paths) intact


def build(config: TrainConfig, checked: Checked) -> Run | Finished:
    """Build, prepare and (when resuming) restore everything for the loop; see the module docstring. `--resume auto`
    on a run that finished in --out already gets `Finished` instead, and --out is left as it was."""
    out = Path(config.out)
    tracker = JsonlTracker(out / METRICS_FILE, resume_step=0 if checked.resume_from else None)
    accelerator = make_accelerator(config, tracker)
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    check_whole_state(config, checked.continuation, accelerator.distributed_type.value if sharded else None)
    liger = liger_applies(config.liger, checked.model_config.model_type, accelerator.device, sharded=sharded)
    moe = bool(experts_and_top_k(checked.model_config)[0])
    compiled = compile_applies(
        config.compile, accelerator.device, sharded=sharded, apollo=bool(checked.apollo), moe=moe
    )
    check_attention_run(config.attn_implementation, accelerator.device, accelerator.mixed_precision)
    continuation = checked.continuation
    budget = make_budget(config, accelerator, continuation.start_step if continuation else 0)
    fill_deepspeed_config(accelerator, config.micro_batch_size, budget.grad_accum, config.grad_clip)
    if checked.apollo:
        check_apollo_run(
            checked.apollo,
            accelerator.distributed_type.value,
            budget.max_steps,
            start_step=continuation.start_step if continuation else 0,
            grown_state=continuation is not None and continuation.load_from is not None,
        )
    data = load_data(config, checked, accelerator)
    objective = Objective(
        checked.objective.name,
        config.seed,
        checked.masking,
        checked.eos_id if config.document_masking else None,
        config.document_masking and one_row(config.attn_implementation),
    )
    offset, first, offset_note = step_offset(
        config, continuation, data.fingerprint, len(data.train_ids), budget.global_batch
    )
    keys = run_keys(config, data, budget, accelerator, objective, checked.apollo, continuation, first)
    if checked.finished is not None:
        return _finished(config, checked.finished, keys)  # before anything in --out is touched
    check_global_batch(
        micro_batch_size=config.micro_batch_size,
        grad_accum=budget.grad_accum,
        num_processes=accelerator.num_processes,
        train_blocks=len(data.train_ids),
    )
    for note in checked.notes:
        say(accelerator, config.quiet, f"note: {note}")
    describe_data(config, data, accelerator)
    loaded, trainable = load_trainable_model(config, checked, accelerator)
    model, saved_dtype = loaded.model, loaded.saved_dtype
    apollo = Apollo(checked.apollo, model, config.seed) if checked.apollo else None
    kernels = speed_up(model, config, accelerator, liger=liger, compiled=compiled)
    num_parameters = sum(full_numel(p) for p in model.parameters())
    max_lr, max_lr_rule = resolve_max_lr(config, num_parameters, accelerator, continuation)
    if config.max_tokens:
        say(
            accelerator,
            config.quiet,
            f"--max-tokens {config.max_tokens:,} / {budget.tokens_per_step:,} tokens per step = "
            f"{counted(budget.max_steps - (continuation.start_step if continuation else 0), 'step')}",
        )
    schedule = make_schedule(config, budget.max_steps, continuation)
    optimizer, names = make_optimizer(model, config, max_lr, accelerator, continuation)
    if continuation is not None and continuation.load_from is not None:
        this_run = {**keys, "mixed_precision": accelerator.mixed_precision, "max_lr": max_lr, "schedule": schedule}
        for note in load_grown_state(optimizer, names, model, continuation, config, this_run):
            say(accelerator, config.quiet, note)
    scheduler = make_scheduler(optimizer, schedule, continuation.start_step if continuation else 0)
    flops_token = (
        apollo.flops_per_token(apollo.unique, config.seq_len) if apollo else flops_per_token(model, config.seq_len)
    )
    router = RouterStats(model) if is_moe_model(model) else None  # hooks on the model itself, before any wrapper
    if wrapping := keep_tied_weights_in_one_unit(accelerator, model):
        say(accelerator, config.quiet, f"note: {wrapping}")
    with shared_parameters_left_to_the_output(accelerator, model) as sharing:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if sharing:
        say(accelerator, config.quiet, f"note: {sharing}")
    if config.document_masking:  # measured on the model as it trains: on its device, wrapped or sharded
        autocast = HALF.get(accelerator.mixed_precision) if objective.one_row else None  # flash computes in half
        check_document_masking(model, checked.eos_id, one_row=objective.one_row, autocast=autocast)
    if accelerator.is_main_process:  # only now: a run refused before this point leaves --out as it was
        remove_entries(checked.replaced)  # --overwrite: no stale shard, index or checkpoint of the old run survives
        if checked.replaced and checked.resume_from is not None:
            removed = ", ".join(str(entry.relative_to(out)) for entry in checked.replaced)
            say(
                accelerator,
                config.quiet,
                f"note: --overwrite: removed what continuing from {checked.resume_from.name} replaces: {removed}",
            )
        for name in remove_unfinished(out):
            say(accelerator, config.quiet, f"note: removed {name}, a checkpoint a killed run left half-saved")
    accelerator.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)  # only now: unreadable data or a refused model leave no output
    if offset_note:
        say(accelerator, config.quiet, f"note: {offset_note}")
    batches, held_out = make_batches(config, data, budget, accelerator, offset)
    run = Run(
        config=config,
        accelerator=accelerator,
        tracker=tracker,
        tokenizer=checked.tokenizer,
        data=data,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule=schedule,
        batches=batches,
        held_out=held_out,
        budget=budget,
        max_lr=max_lr,
        max_lr_rule=max_lr_rule,
        num_parameters=num_parameters,
        trainable=trainable,
        saved_dtype=saved_dtype,
        flops_per_token=flops_token,
        peak_flops=peak_flops(accelerator.device, accelerator.mixed_precision, config.peak_tflops),
        run_keys=keys,
        objective=objective,
        apollo=apollo,
        loaded=loaded,
        kernels=kernels,
        router=router,
        parameter_names=names,
        continuation=continuation,
        step=continuation.start_step if continuation else 0,
    )
    if checked.resume_from is not None:
        resume(run, checked.resume_from)
    accelerator.init_trackers(
        "grow-train-stage",
        config={k: v for k, v in config.to_dict().items() if isinstance(v, int | float | str | bool)},
    )
    return run


@dataclass(frozen=True)
class Finished:
    """What `build` gives instead of a `Run` when `--resume auto` finds this very run finished in --out."""

    summary: dict[str, Any]


def _finished(config: TrainConfig, stage: dict[str, Any], keys: dict[str, Any]) -> Finished:
    """Nothing to do when the run finished in --out is this run (same run key, hence the same planned end); any
    other run is refused, naming the first setting that differs — resuming it would retrain the finished model."""
    out, end = Path(config.out).resolve(), stage["run_key"]["max_steps"]
    change = run_key_change(stage["run_key"], keys)
    if change is not None:
        raise UsageError(
            f"--resume auto: {out} holds a finished run {described_change(change, stage['run_key'], keys)}; to "
            f"train it on, give {out} as the MODEL of a new stage with another --out; to train again, drop "
            "--resume auto and pass --overwrite"
        )
    summary = {"status": "finished", "out": str(out), "end_step": end, "max_steps": keys["max_steps"]}
    summary.update({k: stage.get(k) for k in ("steps", "tokens", "final_eval_loss", "final_eval_ppl")})
    summary["record"] = str(out / "grow.json")
    return Finished(summary)


def make_accelerator(config: TrainConfig, tracker: JsonlTracker) -> Accelerator:
    """The accelerator; flags left unset (None) fall through to `accelerate config` / `accelerate launch`. With
    grow compiles the repeated blocks itself (`kernels.py`), so accelerate compiles the model (its own config) only
    under --no-compile."""
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import DistributedDataParallelKwargs

    if is_initialized() and config.mixed_precision not in (None, AcceleratorState().mixed_precision):
        held = AcceleratorState().mixed_precision  # accelerate cannot change it: a caller's own Accelerator made it
        raise OptionError(
            "mixed_precision",
            f"--mixed-precision {config.mixed_precision}: this Python process already runs accelerate with mixed "
            f"precision {held!r} (an Accelerator made before this run); pass mixed_precision={held!r} or None, or "
            "train in a new process",
        )
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        dynamo_backend=None if config.compile is False else "no",
        log_with=[tracker, *config.report_to],
        project_dir=str(config.out),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, whatever the process count
        # Apollo's stage plan holds layers that get no gradient until their stage: DDP must look for them.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.apollo_stages is not None)],
    )
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise OptionError(  # (accelerate's own choice: it makes no fp16 autocast or gradient scaler on a CPU)
            "mixed_precision",
            "mixed precision fp16 on a CPU: accelerate trains in float32 there, which grow.json would record as fp16; "
            "use --mixed-precision bf16 (autocast on the CPU) or no, or train on a GPU",
        )
    return accelerator


def make_budget(config: TrainConfig, accelerator: Accelerator, start_step: int = 0) -> Budget:
    """Set the accumulation on the accelerator and derive the tokens per step and the final step: the budget is what
    this run trains, from `start_step` (where a continued run's schedule starts) on, made and checked before the
    data is read (`plan_budget`)."""
    # Accumulation left unset follows the launcher (ACCELERATE_GRADIENT_ACCUMULATION_STEPS), else 1.
    budget = plan_budget(config, accelerator.num_processes, accelerator.gradient_accumulation_steps, start_step)
    accelerator.gradient_accumulation_steps = budget.grad_accum
    return budget


def load_data(config: TrainConfig, checked: Checked, accelerator: Accelerator) -> TokenData:
    """The packed token blocks: the main process tokenizes (or reads its cache) first, the others then read it."""
    with accelerator.main_process_first():
        data = prepare_tokens(
            checked.sources,
            checked.tokenizer,
            text_field=config.text_field,
            seq_len=config.seq_len,
            eval_fraction=config.eval_fraction,
            vocab_size=checked.model_config.get_text_config().vocab_size,
            eos_id=checked.eos_id,
            cache_dir=Path(config.cache_dir or token_cache_dir(Path(config.out).resolve().parent)),
            dtype_name=config.token_dtype,
        )
    check_same_tokens(accelerator, data)
    return data


def check_same_tokens(accelerator: Accelerator, data: TokenData) -> None:
    """Every process reads the token stream the main process made: a file that changed while the main process read
    it gives the others another fingerprint, and they tokenized their own (different) stream without a word."""
    if accelerator.num_processes < 2:
        return
    from accelerate.utils import gather_object

    if len(set(gather_object([data.fingerprint]))) > 1:
        raise DataError(
            "the data changed while the processes read it, so their token streams differ; run again once the "
            "files no longer change (a copy that nothing writes to, for example)"
        )


def describe_data(config: TrainConfig, data: TokenData, accelerator: Accelerator) -> None:
    """Say what the data holds, and name the files read with replaced bytes."""
    say(
        accelerator,
        config.quiet,
        f"data: {data.num_tokens:,} tokens in {counted(data.num_documents, 'document')}, "
        f"{len(data.train_ids):,} train / {len(data.eval_ids):,} eval blocks of {config.seq_len}"
        f"{' (cached)' if data.from_cache else ''}",
    )
    for path, count in data.undecodable.items():
        say(accelerator, False, undecodable_note(path, count))


def load_trainable_model(
    config: TrainConfig, checked: Checked, accelerator: Accelerator
) -> tuple[LoadedModel, list[str]]:
    """The model in float32 with the objective's head (and, for an Apollo stage plan, all its final layers), and the
    names of the parameters left trainable (all, or the tensors grow added and a head created here); with
    activation checkpointing when asked. Says which objective it trains and what loading created or carries."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # for the run (loop.py puts it back): our own progress speaks
    torch.manual_seed(config.seed)
    loaded = load_model(Path(config.model), checked.objective, config.attn_implementation)
    if checked.resume_from is None:  # a resumed run trains the checkpoint's weights, restored later
        refuse_non_finite_weights(loaded.model, Path(config.model))
    for note in objective_notes(checked, loaded):
        say(accelerator, config.quiet, note)
    if checked.apollo:
        loaded.model = allocate(checked.apollo, loaded.model)
        say(accelerator, config.quiet, describe_apollo(checked.apollo))
    model = loaded.model
    if checked.trainable_names:
        trainable = freeze_all_but(model, [*checked.trainable_names, *loaded.created])
    else:
        trainable = [name for name, _ in model.named_parameters()]
    if config.gradient_checkpointing:
        checkpoint_activations(model)
    # Training never reuses keys and values: without this, every forward fills a KV cache it throws away (and a
    # compiled block would be recompiled once per layer on the cache's state). save_model turns it back on.
    model.config.use_cache = False
    return loaded, trainable


def checkpoint_activations(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass (--gradient-checkpointing). transformers after 5.17
    (grow's floor, which has only the old name) renamed the call `activation_checkpointing_enable`, and the old name
    warns on every run, through --quiet, that v6 removes it."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def refuse_non_finite_weights(model: PreTrainedModel, folder: Path) -> None:
    """Refuse a model whose weights hold NaN or infinities before any step, naming the first such tensor: its first
    loss would be NaN, and the divergence it reports would blame the learning rate. One pass over weights already
    in memory."""
    from grow_cli.checkpoint.finite import refuse_non_finite

    for name, weight in model.named_parameters():
        refuse_non_finite(weight.detach(), str(folder), name, "train from a checkpoint saved before the run diverged")


def speed_up(
    model: PreTrainedModel, config: TrainConfig, accelerator: Accelerator, *, liger: bool, compiled: bool
) -> dict[str, Any]:
    """Liger Kernel where it applies (its fused loss only, where the blocks are compiled), then each repeated block
    compiled in place (`kernels.py`); says what was done and returns it, with the attention the model runs, for
    grow.json."""
    fused = apply_liger(model, loss_only=compiled) if liger else []
    blocks = compile_repeated_blocks(model) if compiled else 0
    if fused:
        say(accelerator, config.quiet, f"Liger Kernel: {', '.join(fused)}")
    if blocks:
        say(
            accelerator,
            config.quiet,
            f"compiling {blocks} repeated blocks in place (one graph, reused; --no-compile runs eager)",
        )
    return {"liger": fused, "compiled_blocks": blocks, "attention": model.config._attn_implementation}


def resolve_max_lr(
    config: TrainConfig, num_parameters: int, accelerator: Accelerator, continuation: Continuation | None = None
) -> tuple[float, str | None]:
    """`--max-lr` as a number; `auto` follows the size rule in `lr_rule` and says so — or, continuing a grown
    training state, the source run's peak (its per-tensor multipliers already carry the size change). Returns the
    peak LR and where `auto` took it from (grow.json's `max_lr_rule`; None for a number given)."""
    if config.max_lr != "auto":
        return float(config.max_lr), None
    if continuation is not None and continuation.max_lr is not None:
        say(accelerator, config.quiet, f"max LR {continuation.max_lr:.3g} (--max-lr auto: {GROWN_STATE_LR})")
        return continuation.max_lr, GROWN_STATE_LR
    max_lr = auto_max_lr(num_parameters)
    say(
        accelerator,
        config.quiet,
        f"max LR {max_lr:.3g} for {format_count(num_parameters)} parameters (--max-lr auto: {LR_RULE_SOURCE})",
    )
    return max_lr, LR_RULE_SOURCE


def make_schedule(config: TrainConfig, max_steps: int, continuation: Continuation | None = None) -> Schedule:
    warmup = warmup_steps_for(max_steps, config.warmup_steps, config.warmup_ratio)
    restart = (continuation.start_step, continuation.restart_warmup_steps) if continuation else (0, 0)
    return Schedule(
        config.schedule, max_steps, warmup, config.min_lr_ratio, config.decay_ratio, config.decay_type, *restart
    )


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, start: int):
    """The LR scheduler over `schedule`, positioned at step `start` (a continued run's first step; a resumed
    checkpoint then restores its own position)."""
    if start:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor, last_epoch=start - 1)


def param_groups(
    model: PreTrainedModel, weight_decay: float, max_lr: float, eps: float, continuation: Continuation | None = None
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups over the trainable parameters, each with its parameters' `names`.

    No weight decay on gains and biases (1-D tensors), as in GPT-2/LLaMA training. A run continuing a grown
    training state also gives each parameter its LR, eps and weight-decay multipliers (train/continuation.py), one
    group per combination. Settings that differ per group are decided here.
    """
    groups: dict[tuple[bool, float, float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        m = continuation.multiplier(name) if continuation else {"lr": 1.0, "eps": 1.0, "weight_decay": 1.0}
        matrix = full_ndim(param) >= 2
        group = groups.setdefault(
            (matrix, m["lr"], m["eps"], m["weight_decay"]),
            {
                "params": [],
                "names": [],
                "lr": max_lr * m["lr"],
                "eps": eps * m["eps"],
                "weight_decay": (weight_decay if matrix else 0.0) * m["weight_decay"],
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def make_optimizer(
    model: PreTrainedModel,
    config: TrainConfig,
    max_lr: float,
    accelerator: Accelerator,
    continuation: Continuation | None = None,
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW over `param_groups`, fused where torch's fused kernel applies; and its parameters' names in order."""
    groups = param_groups(model, config.weight_decay, max_lr, config.eps, continuation)
    names = [name for group in groups for name in group.pop("names")]
    optimizer = torch.optim.AdamW(
        groups,
        lr=max_lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=accelerator.distributed_type in FUSED_ADAMW_TYPES and accelerator.device.type in ("cpu", "cuda"),
    )
    return optimizer, names


def make_batches(
    config: TrainConfig, data: TokenData, budget: Budget, accelerator: Accelerator, offset: int = 0
) -> tuple[StepBatches, list[tuple[torch.Tensor, bool]]]:
    """This process's training batches (indexed by optimizer step, `offset` blocks on) and its held-out blocks."""
    batches = StepBatches(
        data.blocks,
        data.train_ids,
        micro_batch_size=config.micro_batch_size,
        grad_accum=budget.grad_accum,
        num_processes=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=config.seed,
        offset=offset,
    )
    held_out = eval_batches(
        data.blocks,
        data.eval_ids,
        micro_batch_size=config.micro_batch_size,
        max_batches=config.eval_batches,
        num_processes=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    return batches, held_out


def run_keys(
    config: TrainConfig,
    data: TokenData,
    budget: Budget,
    accelerator: Accelerator,
    objective: Objective,
    apollo: ApolloPlan | None,
    continuation: Continuation | None = None,
    data_offset: int | None = None,
) -> dict[str, Any]:
    """What a checkpoint records and a resume must match for the run to continue exactly where it stopped, and the
    model folder its weights came from (`model`: a moved folder resumes, so its path is not compared; `grow expand`
    of a checkpoint finds the config and tokenizer there)."""
    keys = {
        "model": str(Path(config.model).resolve()),
        "model_weights": weights_fingerprint(Path(config.model)),
        "objective": objective.describe(),
        "apollo": apollo.describe() if apollo else None,
        "data_fingerprint": data.fingerprint,
        "seq_len": config.seq_len,
        "eval_fraction": config.eval_fraction,  # which blocks train: the permutation orders the rest
        "global_batch": budget.global_batch,
        "max_steps": budget.max_steps,
        "seed": config.seed,
        "train_only": config.train_only,
        "num_processes": accelerator.num_processes,
        "engine": state_engine(accelerator),
    }
    if continuation is not None:
        keys["start_step"] = continuation.start_step
    if data_offset is not None:  # the first step's block under --data-offset (absent without one, as before it)
        keys["data_offset"] = data_offset
    return keys


def state_engine(accelerator: Accelerator) -> str:
    """How a checkpoint holds the training state: FSDP's sharded files, DeepSpeed's, or one whole copy ("plain": one
    process or DDP). A checkpoint loads only under the engine that saved it."""
    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(
        accelerator.distributed_type, "plain"
    )


def resume(run: Run, checkpoint: Path) -> None:
    """Restore the model, optimizer, scheduler and RNG states from `checkpoint` and move the run to its step."""
    resumed = load_checkpoint(run.accelerator, checkpoint, run.run_keys, run.settings())
    refuse_non_finite_state(run, checkpoint)
    fresh_scaler = starts_fresh_scaler(run.accelerator, checkpoint)
    if change := precision_change(resumed, run.accelerator.mixed_precision, fresh_scaler):
        run.say(f"note: {change}")
    run.step, run.tokens = resumed["step"], resumed["tokens"] - (run.continuation.tokens if run.continuation else 0)
    if run.router is not None and "router" in resumed:
        run.router.restore(resumed["router"], run.accelerator)
    if run.accelerator.is_main_process:  # a run killed between a save and its pruning left one checkpoint too many
        prune(Path(run.config.out), run.config.keep_last, run.step)
    if run.apollo:
        run.apollo.resume_at(run.step)
    run.tracker.resume_step = run.step  # the metrics file drops lines from after the checkpoint
    run.say(f"resumed from {checkpoint} at step {run.step}")


def refuse_non_finite_state(run: Run, checkpoint: Path) -> None:
    """Refuse a resumed state whose weights or AdamW moments hold NaN or infinities, naming the first such tensor and
    an earlier checkpoint: resumed as it is, its first loss is NaN and the divergence reported blames the learning
    rate (non-finite weights), or the loss turns NaN a step later (a NaN first moment) or some weights silently stop
    training (an infinite second moment). One pass over what was just loaded; each process checks its own shards and
    all refuse together."""
    from accelerate.utils import gather_object

    from grow_cli.checkpoint.finite import non_finite_count, non_finite_moment, non_finite_weights

    local = next(((n, w, c) for n, w, t in _resumed_tensors(run) if (c := non_finite_count(t))), None)
    found = next((f for f in gather_object([local]) if f is not None), None)
    if found is None:
        return
    name, what, count = found
    where, instead = f"--resume {checkpoint}", earlier_checkpoint_advice(checkpoint, Path(run.config.out))
    if what is None:
        raise non_finite_weights(where, name, count, instead)
    raise non_finite_moment(where, f"{what} of {name}", count, instead)


def _resumed_tensors(run: Run) -> Iterator[tuple[str, str | None, torch.Tensor]]:
    """(parameter name, None for its weight or the AdamW moment's key, tensor) of what a resume restored, as this
    process holds it."""
    state = getattr(run.optimizer, "state", {})  # (DeepSpeed's is keyed by its own partitions: no moment is found)
    for name, weight in run.accelerator.unwrap_model(run.model).named_parameters():
        yield name, None, weight.detach()
        moments = state.get(weight, {})
        yield from ((name, key, moments[key]) for key in ("exp_avg", "exp_avg_sq") if key in moments)
