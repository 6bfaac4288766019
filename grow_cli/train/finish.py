"""Step 4 of `grow train-stage`: what the run leaves behind once the loop ends.

A finished run is evaluated once more and written as an ordinary Hugging Face model folder in the checkpoint's own
dtype, with grow.json (the lineage, this stage appended) and the model card; with `--save-final-state` also a
checkpoint of its last step, from which `grow expand` grows the training run on. A run stopped early (Ctrl-C or
`--exit-interval`), or by a Ctrl-C during its final evaluation, saves a checkpoint instead, to be continued with
`--resume auto`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grow_cli.checkpoint.files import CHECKPOINTS_DIR, checkpoint_name
from grow_cli.data.hub_origin import hub_datasets
from grow_cli.data.sources import data_paths, field_read
from grow_cli.divergence import perplexity
from grow_cli.lineage.card import write_card
from grow_cli.lineage.record import append_stage, load_record, write_record
from grow_cli.process_state import end_run
from grow_cli.train.build import Run
from grow_cli.train.checkpoints import save_checkpoint
from grow_cli.train.diverged import diverged
from grow_cli.train.model_io import carried_tensors, save_model
from grow_cli.train.step import evaluate

if TYPE_CHECKING:
    from grow_cli.train.loop import Ending


def eval_metrics(eval_loss: float) -> dict[str, float]:
    """The held-out loss and its perplexity."""
    return {"eval_loss": eval_loss, "eval_ppl": perplexity(eval_loss)}


def evaluation(run: Run) -> dict[str, float]:
    """The held-out metrics of the model as it is written; under Apollo also `eval_loss_at_target`, the loss at
    the target depth with shared layers — that of the model `grow expand --depth-method interpolate` makes of it.
    A non-finite loss means the weights diverged: the run stops without saving or writing them (diverged.py)."""
    metrics = eval_metrics(evaluate(run))
    if not math.isfinite(metrics["eval_loss"]):
        raise diverged(run, f"the held-out loss became {metrics['eval_loss']} after step {run.step}", run.step)
    if run.apollo is not None and run.apollo.unique < run.apollo.plan.target:
        metrics["eval_loss_at_target"] = evaluate(run, run.apollo.plan.target)
    return metrics


def pause(run: Run, saved: Path | None = None) -> dict[str, Any]:
    """Save a checkpoint at the current step and end tracking; the run continues with `--resume auto`. `saved`: the
    checkpoint --save-every made at this very step, kept as it is (it was removed and saved again: twice the time
    of a save, for the same state)."""
    path = saved or save_checkpoint(run.accelerator, Path(run.config.out), run.state(), run.config.keep_last)
    end_run(run.accelerator)
    return {
        "status": "paused",
        "end_step": run.step,
        "max_steps": run.budget.max_steps,
        "checkpoint": str(path.resolve()),
        "out": str(Path(run.config.out).resolve()),
    }


def finish(run: Run, ending: Ending, stopping: Callable[[], bool]) -> dict[str, Any]:
    """Evaluate, write the model, grow.json and the card to --out, and return the run's summary — unless `stopping`
    (every process asks it, after the evaluation) says a Ctrl-C came since the last step: then `pause`, as the loop
    would have, and the steps trained are kept. Writing the model is cheaper than a checkpoint, so a Ctrl-C that
    comes after that point lets it finish."""
    accelerator, out, model = run.accelerator, Path(run.config.out).resolve(), Path(run.config.model)
    evaluated = evaluation(run)
    if stopping():
        return pause(run)
    eval_loss = evaluated["eval_loss"]
    accelerator.log(evaluated, step=run.step)
    final_state = None
    if run.config.save_final_state:  # the whole training state at the last step, for grow expand to grow on
        final_state = save_checkpoint(accelerator, out, run.state(), run.config.keep_last)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(run.model)  # every process takes part (gathers FSDP/ZeRO-3 shards)
    num_parameters = run.num_parameters
    if run.apollo is not None:  # the unique layers in use (the model holds its last stage's layers)
        num_parameters -= run.apollo.unused_parameters()
        state_dict = run.apollo.written_state(state_dict)
    trained = run.step - ending.first_step  # steps this process trained: none after a resume from the last step
    summary = {
        "status": "done",
        "out": str(out),
        "steps": run.step - run.start_step,
        "end_step": run.step,
        "resumed_from": ending.first_step if ending.first_step > run.start_step else None,
        "tokens": run.tokens,
        "max_lr": run.max_lr,
        "final_train_loss": ending.last_loss if trained else run.tracker.loss_at(run.step),
        "final_eval_loss": eval_loss,
        "final_eval_ppl": eval_metrics(eval_loss)["eval_ppl"],
        "tokens_per_s": trained * run.budget.tokens_per_step / max(ending.elapsed, 1e-9) if trained else None,
        "num_parameters": num_parameters,
        "trainable_tensors": len(run.trainable),
        "final_state": str(final_state) if final_state else None,
    }
    if run.router is not None:  # mixture of experts: auxiliary loss and expert load over the whole run
        summary["router"] = run.router.summary(accelerator)
    if "eval_loss_at_target" in evaluated:
        summary["final_eval_loss_at_target"] = evaluated["eval_loss_at_target"]
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model)
        if run.loaded.carried:
            state_dict.update(carried_tensors(model, run.loaded.carried, set(state_dict), unwrapped.base_model_prefix))
        modules = {name: model / name for name in run.loaded.modules}  # sentence-transformers: carried unchanged
        save_model(unwrapped, state_dict, run.tokenizer, out, run.saved_dtype, run.loaded.stored_dtypes, modules)
        stage = stage_record(run, evaluated)
        if "router" in summary:
            stage["router"] = summary["router"]
        record = append_stage(load_record(model), stage, model_summary(run, unwrapped, num_parameters))
        write_card(out, record)  # before grow.json, the mark of a finished run (`finished_run`): a kill between the
        write_record(out, record)  # two left a run that `--resume auto` called finished, its card never written
        summary["record"] = str(out / "grow.json")
    accelerator.wait_for_everyone()
    end_run(accelerator)
    return summary


def stage_record(run: Run, evaluated: dict[str, float]) -> dict[str, Any]:
    """This stage's entry in grow.json: data, objective, Apollo, budget, schedule, optimizer, batch and the final
    evaluation."""
    config, data, paths = run.config, run.data, data_paths(run.config.data)
    eval_loss = evaluated["eval_loss"]
    return {
        "kind": "train",
        "source": {"path": str(config.model)},
        "data": {
            "paths": paths,
            "fingerprint": data.fingerprint,
            "datasets": hub_datasets(os.path.abspath(path) for path in paths),  # those in the Hub cache
            "text_field": field_read(config.text_field),
            "documents": data.num_documents,
            "available_tokens": data.num_tokens,
        },
        "data_blocks": run.data_blocks,  # how far into the data order it read (where --data-offset lineage goes on)
        "objective": {
            **run.objective.describe(),
            "created_tensors": run.loaded.created,
            "carried_tensors": run.loaded.carried,
        },
        "apollo": apollo_record(run, evaluated),
        "tokens": run.tokens,
        # The model's own training FLOPs per token (as written), and what this stage spent: under Apollo the
        # sampled, shallower depths cost less than the model's per-token figure times the tokens.
        "flops_per_token": run.flops_per_token,
        "train_flops": spent_flops(run),
        "steps": run.step - run.start_step,
        "end_step": run.step,
        "schedule": run.schedule.describe(run.max_lr),
        "max_lr": run.max_lr,
        "max_lr_rule": run.max_lr_rule,
        "optimizer": {
            "name": "adamw",
            "betas": [config.beta1, config.beta2],
            "eps": config.eps,
            "weight_decay": config.weight_decay,
            "grad_clip": config.grad_clip,
        },
        "train_only": config.train_only,
        "trainable_tensors": run.trainable if config.train_only == "new" else "all",
        "seq_len": config.seq_len,
        "batch": {
            "micro_batch_size": config.micro_batch_size,
            "grad_accum": run.budget.grad_accum,
            "num_processes": run.accelerator.num_processes,
            "global_batch_tokens": run.budget.tokens_per_step,
        },
        "mixed_precision": run.accelerator.mixed_precision,
        "kernels": run.kernels,
        "seed": config.seed,
        "run_key": run.run_keys,  # what makes a later `--resume auto` this same run (checkpoints.finished_run)
        "continued": _continued(run),
        "final_state": f"{CHECKPOINTS_DIR}/{checkpoint_name(run.step)}" if config.save_final_state else None,
        "final_eval_loss": eval_loss,
        "final_eval_ppl": eval_metrics(eval_loss)["eval_ppl"],
    }


def _continued(run: Run) -> dict[str, Any] | None:
    """How this stage continued a grown training state (or a schedule offset), with its multiplier groups."""
    if run.continuation is None:
        return None
    from grow_cli.growth.grown_state import multiplier_groups

    groups = (
        multiplier_groups({name: run.continuation.multiplier(name) for name in run.parameter_names})
        if run.continuation.multipliers
        else []
    )
    return {**run.continuation.record(), "multipliers": groups}


def spent_flops(run: Run) -> float:
    """The training FLOPs of this stage: the depths Apollo ran at, or the model's FLOPs per token × tokens."""
    if run.apollo is None:
        return run.flops_per_token * run.tokens
    budget = run.budget
    return run.apollo.compute(
        run.step, budget.grad_accum, budget.tokens_per_step // budget.grad_accum, run.config.seq_len
    )["train_flops"]


def apollo_record(run: Run, evaluated: dict[str, float]) -> dict[str, Any] | None:
    """Apollo's part of the stage: the plan, the unique layers written, the depths run and the loss at the target."""
    if run.apollo is None:
        return None
    budget = run.budget
    spent = run.apollo.compute(
        run.step, budget.grad_accum, budget.tokens_per_step // budget.grad_accum, run.config.seq_len
    )
    return {
        **run.apollo.plan.describe(),
        "unique_layers_written": run.apollo.unique,
        **spent,
        "final_eval_loss_at_target": evaluated.get("eval_loss_at_target"),
        "paper": "Pan et al., AAAI 2024, Preparing Lessons for Progressive Training",
    }


def model_summary(run: Run, unwrapped: Any, num_parameters: int) -> dict[str, Any]:
    """The trained model's architecture, size, dtype and shape, and its library (a sentence-transformers model keeps
    its modules), for grow.json and the card."""
    text = unwrapped.config.get_text_config()
    return {
        "architecture": unwrapped.config.model_type,
        "library": "sentence-transformers" if run.loaded.modules else "transformers",
        "num_parameters": num_parameters,
        "dtype": str(run.saved_dtype).removeprefix("torch."),
        "shape": {
            "layers": text.num_hidden_layers,
            "hidden_size": text.hidden_size,
            "intermediate_size": getattr(text, "intermediate_size", None),
            "num_heads": getattr(text, "num_attention_heads", None),
            "num_kv_heads": getattr(text, "num_key_value_heads", None),
            "num_parameters": num_parameters,
        },
    }
