"""The training loop of `grow train-stage`, in the shape of accelerate's examples: check, build, `prepare` once,
loop with `accumulate`, `save_state`/`load_state` for resume, then write the model and its record.

Everything a user can get wrong is checked before the first weight is loaded. The loop itself is plain:
each optimizer step reads its blocks from `StepBatches` (the step is the data position), accumulates
gradients over micro-batches, clips, steps, and then logs, evaluates, checkpoints and stops as asked.
A first Ctrl-C finishes the current step, saves a checkpoint and exits with status 130; a non-finite loss
stops the run without saving, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType

from grow_cli.checkpoint.output import check_not_overlapping, remove_previous_run
from grow_cli.data.batches import StepBatches, eval_batches
from grow_cli.data.sources import check_sources, find_sources
from grow_cli.data.tokens import prepare_tokens, token_cache_dir
from grow_cli.errors import OutputError, TrainingError, UsageError
from grow_cli.lineage.card import write_card
from grow_cli.lineage.record import append_stage, load_record, write_record
from grow_cli.train.checkpoints import complete_checkpoints, load_checkpoint, resolve_resume, save_checkpoint
from grow_cli.train.config import TrainConfig
from grow_cli.train.freeze import added_tensors, freeze_all_but
from grow_cli.train.lr_rule import SOURCE as LR_RULE_SOURCE
from grow_cli.train.lr_rule import auto_max_lr
from grow_cli.train.metrics import JsonlTracker, flops_per_token, peak_flops, training_progress
from grow_cli.train.model_io import check_seq_len, load_model, load_model_config, load_tokenizer, save_model
from grow_cli.train.schedule import Schedule, warmup_steps_for

# Where torch's fused AdamW kernel (one kernel for all tensors, much faster than the per-tensor loop) applies:
# plain and DDP training; FSDP and DeepSpeed bring their own optimizer handling.
FUSED_ADAMW_TYPES = {DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU}


class Interrupted(TrainingError):
    """Ctrl-C: a checkpoint was saved; `--resume auto` continues. Exit status 130, like the shell's."""

    exit_code = 130


def _say(accelerator: Accelerator, quiet: bool, message: str) -> None:
    if accelerator.is_main_process and not quiet:
        from grow_cli.console import err

        err.print(message, soft_wrap=True)  # logs keep whole lines (and paths) intact


def _grad_accum(config: TrainConfig, num_processes: int, launcher_default: int) -> int:
    if config.global_batch_tokens is None:
        return config.grad_accum or launcher_default
    per_pass = config.micro_batch_size * config.seq_len * num_processes
    if config.global_batch_tokens % per_pass:
        raise UsageError(
            f"--global-batch-tokens {config.global_batch_tokens} is not a multiple of micro-batch × "
            f"seq-len × processes = {per_pass}"
        )
    return config.global_batch_tokens // per_pass


def evaluate(accelerator: Accelerator, model, batches: list[torch.Tensor]) -> float:
    """Mean next-token loss over the held-out blocks of all processes."""
    model.eval()
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    with torch.no_grad():
        for ids in batches:
            ids = ids.to(accelerator.device)
            total[0] += model(input_ids=ids, labels=ids).loss.double() * len(ids)
            total[1] += len(ids)
    total = accelerator.reduce(total, "sum")
    model.train()
    return (total[0] / total[1]).item()


class _StopFlag:
    """A first SIGINT or SIGTERM asks the loop to stop at the end of the current step (and save a checkpoint);
    a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def train_stage(config: TrainConfig) -> dict[str, Any]:
    """Train the model in `config.model` on `config.data`; write it, grow.json and the card to `config.out`."""
    # 1. Checks that need no weights and no tokenization.
    sources = find_sources(config.data)
    check_sources(sources, config.text_field)
    model_config = load_model_config(config.model)
    check_seq_len(model_config, config.seq_len)
    tokenizer, eos_id = load_tokenizer(config.tokenizer or config.model, model_config)
    trainable_names = added_tensors(config.model) if config.train_only == "new" else None
    out = config.out
    check_not_overlapping(out, config.model)  # --overwrite would otherwise delete the model being trained
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder")
    resume_from, resume_notes = resolve_resume(config.resume, out)
    if resume_from is None and out.exists() and any(out.iterdir()) and not config.overwrite:
        raise OutputError(
            f"{out} exists and is not empty; pass --resume auto to continue it, --overwrite to "
            "start again, or another --out"
        )

    from accelerate.tracking import get_available_trackers

    available = {str(t.value if hasattr(t, "value") else t) for t in get_available_trackers()}
    missing = [name for name in config.report_to if name not in available]
    if missing:
        raise UsageError(
            f"--report-to {', '.join(missing)}: not installed here (available: "
            f"{', '.join(sorted(available)) or 'none'}); e.g. pip install tensorboard"
        )

    # 2. The accelerator: flags left unset (None) fall through to `accelerate config` / `accelerate launch`.
    trackers: list[Any] = [JsonlTracker(out / "metrics.jsonl", resume_step=0 if resume_from else None)]
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        dynamo_backend="inductor" if config.compile else None,
        log_with=trackers + list(config.report_to),
        project_dir=str(out),
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, whatever the process count
    )
    # Accumulation left unset follows the launcher (ACCELERATE_GRADIENT_ACCUMULATION_STEPS), else 1.
    grad_accum = _grad_accum(config, accelerator.num_processes, accelerator.gradient_accumulation_steps)
    accelerator.gradient_accumulation_steps = grad_accum
    if config.overwrite and resume_from is None and accelerator.is_main_process:
        remove_previous_run(out)  # a fresh start: no stale shard, index or checkpoint of the old run may survive
    accelerator.wait_for_everyone()
    for note in resume_notes:
        _say(accelerator, False, f"note: {note}")
    with accelerator.main_process_first():  # the main process tokenizes; the others then read its cache
        data = prepare_tokens(
            sources,
            tokenizer,
            text_field=config.text_field,
            seq_len=config.seq_len,
            eval_fraction=config.eval_fraction,
            vocab_size=model_config.get_text_config().vocab_size,
            eos_id=eos_id,
            cache_dir=config.cache_dir or token_cache_dir(out.resolve().parent),
            dtype_name=config.token_dtype,
        )
    out.mkdir(parents=True, exist_ok=True)  # only now: data that cannot be read leaves no empty output behind
    _say(
        accelerator,
        config.quiet,
        f"data: {data.num_tokens:,} tokens in {data.num_documents:,} documents, "
        f"{len(data.train_ids):,} train / {len(data.eval_ids):,} eval blocks of {config.seq_len}"
        f"{' (cached)' if data.from_cache else ''}",
    )

    # 3. Model, budget, optimizer and schedule.
    import transformers

    transformers.utils.logging.disable_progress_bar()  # our own progress and notes say what is happening
    torch.manual_seed(config.seed)
    model, saved_dtype = load_model(config.model)
    num_parameters = sum(p.numel() for p in model.parameters())
    trainable = freeze_all_but(model, trainable_names) if trainable_names else [n for n, _ in model.named_parameters()]
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    max_lr = auto_max_lr(num_parameters) if config.max_lr == "auto" else float(config.max_lr)
    if config.max_lr == "auto":
        _say(
            accelerator,
            config.quiet,
            f"max LR {max_lr:.3g} for {num_parameters / 1e6:.1f}M parameters (--max-lr auto: {LR_RULE_SOURCE})",
        )
    global_batch = config.micro_batch_size * grad_accum * accelerator.num_processes
    tokens_per_step = global_batch * config.seq_len
    max_steps = config.max_steps or math.ceil(config.max_tokens / tokens_per_step)
    if config.max_tokens:
        _say(
            accelerator,
            config.quiet,
            f"--max-tokens {config.max_tokens:,} / {tokens_per_step:,} tokens per step = {max_steps:,} steps",
        )
    schedule = Schedule(
        config.schedule,
        max_steps,
        warmup_steps_for(max_steps, config.warmup_steps, config.warmup_ratio),
        config.min_lr_ratio,
        config.decay_ratio,
        config.decay_type,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay on gains and biases (1-D tensors), as in GPT-2/LLaMA training.
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=max_lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        fused=accelerator.distributed_type in FUSED_ADAMW_TYPES and accelerator.device.type in ("cpu", "cuda"),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)
    flops_token = flops_per_token(model, config.seq_len)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    peak = peak_flops(accelerator.device, accelerator.mixed_precision, config.peak_tflops)

    batches = StepBatches(
        data.blocks,
        data.train_ids,
        micro_batch_size=config.micro_batch_size,
        grad_accum=grad_accum,
        num_processes=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=config.seed,
    )
    held_out = eval_batches(
        data.blocks,
        data.eval_ids,
        micro_batch_size=config.micro_batch_size,
        max_batches=config.eval_batches,
        num_processes=accelerator.num_processes,
        rank=accelerator.process_index,
    )
    run_keys = {
        "data_fingerprint": data.fingerprint,
        "seq_len": config.seq_len,
        "global_batch": global_batch,
        "max_steps": max_steps,
        "seed": config.seed,
        "train_only": config.train_only,
        "num_processes": accelerator.num_processes,
    }
    step, tokens = 0, 0
    if resume_from is not None:
        resumed = load_checkpoint(accelerator, resume_from, run_keys)
        step, tokens = resumed["step"], resumed["tokens"]
        trackers[0].resume_step = step
        _say(accelerator, config.quiet, f"resumed from {resume_from} at step {step}")
    accelerator.init_trackers(
        "grow-train-stage",
        config={k: v for k, v in config.to_dict().items() if isinstance(v, int | float | str | bool)},
    )

    # 4. The loop.
    first_step, eval_loss, stop_reason = step, None, "done"
    progress, task = training_progress(max_steps, step, enabled=accelerator.is_main_process and not config.quiet)
    started = time.perf_counter()
    window_start, window_tokens = started, 0
    with progress, _StopFlag() as stop:
        while step < max_steps:
            model.train()
            loss_sum = torch.zeros((), device=accelerator.device)
            grad_norm = None
            for ids in batches.micro_batches(step):
                with accelerator.accumulate(model):
                    ids = ids.to(accelerator.device)
                    loss = model(input_ids=ids, labels=ids).loss
                    accelerator.backward(loss)
                    loss_sum += loss.detach()
                    if accelerator.sync_gradients and config.grad_clip > 0:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                    optimizer.step()  # accelerate only really steps on the last micro-batch
                    optimizer.zero_grad()
            lr = scheduler.get_last_lr()[0]  # the LR this step used
            if not optimizer.step_was_skipped:  # fp16's scaler skips steps with inf gradients
                scheduler.step()
            train_loss = accelerator.reduce(loss_sum / grad_accum, "mean").item()
            step += 1
            tokens += tokens_per_step
            window_tokens += tokens_per_step
            if not math.isfinite(train_loss):
                last = complete_checkpoints(out)
                raise TrainingError(
                    f"the training loss became {train_loss} at step {step}; stopped without saving. "
                    f"Last good checkpoint: {last[-1] if last else 'none'} (lower --max-lr, or "
                    "resume from it with --resume auto)"
                )
            metrics: dict[str, Any] = {"loss": train_loss, "lr": lr, "tokens": tokens}
            if step % config.log_every == 0 or step == max_steps:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                metrics.update({"tokens_per_s": tps, "flops_per_token": flops_token, "epoch": batches.epoch_of(step)})
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if peak:
                    metrics["mfu"] = tps * flops_token / (peak * accelerator.num_processes)
                progress.update(task, completed=step, loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", tps=f"{tps:,.0f}")
            if config.eval_every and step % config.eval_every == 0 and step < max_steps:
                eval_loss = evaluate(accelerator, model, held_out)
                metrics.update({"eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50))})
            accelerator.log(metrics, step=step)
            if step < max_steps and config.save_every and step % config.save_every == 0:
                save_checkpoint(accelerator, out, {**run_keys, "step": step, "tokens": tokens}, config.keep_last)
            stopping = stop.requested
            if accelerator.num_processes > 1:  # every process must agree, or the next collective hangs
                stopping = accelerator.reduce(torch.tensor(float(stopping), device=accelerator.device), "sum") > 0
            if stopping or (config.exit_interval and step - first_step >= config.exit_interval and step < max_steps):
                stop_reason = "interrupted" if stopping else "exit-interval"
                break

    if stop_reason != "done":
        path = save_checkpoint(accelerator, out, {**run_keys, "step": step, "tokens": tokens}, config.keep_last)
        accelerator.end_training()
        if stop_reason == "interrupted":
            raise Interrupted(f"interrupted at step {step}/{max_steps}; saved {path}. Continue with --resume auto")
        _say(
            accelerator,
            config.quiet,
            f"stopped after {step - first_step} steps (--exit-interval); saved {path}",
        )
        return {
            "status": "paused",
            "step": step,
            "max_steps": max_steps,
            "checkpoint": str(path),
            "out": str(out),
        }

    # 5. Final eval, the model, grow.json and the card.
    elapsed = time.perf_counter() - started
    eval_loss = evaluate(accelerator, model, held_out)
    accelerator.log({"eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50))}, step=step)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # every process takes part (gathers FSDP/ZeRO-3 shards)
    summary = {
        "status": "done",
        "out": str(out),
        "steps": step,
        "tokens": tokens,
        "max_lr": max_lr,
        "final_train_loss": train_loss if step > first_step else None,
        "final_eval_loss": eval_loss,
        "final_eval_ppl": math.exp(min(eval_loss, 50)),
        "tokens_per_s": (step - first_step) * tokens_per_step / max(elapsed, 1e-9),
        "num_parameters": num_parameters,
        "trainable_tensors": len(trainable),
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_model(unwrapped, state_dict, tokenizer, out, saved_dtype)
        stage = {
            "kind": "train",
            "source": {"path": str(config.model)},
            "data": {
                "paths": list(config.data),
                "fingerprint": data.fingerprint,
                "datasets": [],
                "text_field": config.text_field,
                "documents": data.num_documents,
                "available_tokens": data.num_tokens,
            },
            "tokens": tokens,
            "steps": step,
            "schedule": schedule.describe(max_lr),
            "max_lr": max_lr,
            "max_lr_rule": LR_RULE_SOURCE if config.max_lr == "auto" else None,
            "optimizer": {
                "name": "adamw",
                "betas": [config.beta1, config.beta2],
                "eps": config.eps,
                "weight_decay": config.weight_decay,
                "grad_clip": config.grad_clip,
            },
            "train_only": config.train_only,
            "trainable_tensors": trainable if config.train_only == "new" else "all",
            "seq_len": config.seq_len,
            "batch": {
                "micro_batch_size": config.micro_batch_size,
                "grad_accum": grad_accum,
                "num_processes": accelerator.num_processes,
                "global_batch_tokens": tokens_per_step,
            },
            "mixed_precision": accelerator.mixed_precision,
            "seed": config.seed,
            "final_eval_loss": eval_loss,
            "final_eval_ppl": summary["final_eval_ppl"],
        }
        text = unwrapped.config.get_text_config()
        model_summary = {
            "architecture": unwrapped.config.model_type,
            "num_parameters": num_parameters,
            "dtype": str(saved_dtype).removeprefix("torch."),
            "shape": {
                "layers": text.num_hidden_layers,
                "hidden_size": text.hidden_size,
                "intermediate_size": getattr(text, "intermediate_size", None),
                "num_heads": getattr(text, "num_attention_heads", None),
                "num_kv_heads": getattr(text, "num_key_value_heads", None),
                "num_parameters": num_parameters,
            },
        }
        record = append_stage(load_record(config.model), stage, model_summary)
        write_record(out, record)
        write_card(out, record)
        summary["record"] = str(Path(out) / "grow.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
