"""`grow train-stage`: continue pretraining a (grown) model folder — options in, `train_stage(config)` out.

The library call is `grow_cli.train_stage(grow_cli.TrainConfig(...))`; this module only maps flags onto the
config, renders the result, and pushes to the Hub when asked. Every option named like a `TrainConfig` field goes
into the config under that name (`train_config`), so a new training setting is a field plus an option here; the
rest (`--push-to-hub`, `--private`, `--token`, `--json`) belong to the command. torch/transformers/accelerate load
inside the body.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from grow_cli.commands import JSON_HELP
from grow_cli.commands.masking_options import MaskReplaceProb, MlmProbability, RandomReplaceProb, WholeWordMask
from grow_cli.data.masking_settings import MASK_REPLACE_PROB, MLM_PROBABILITY, RANDOM_REPLACE_PROB
from grow_cli.data.sources import TEXT_FIELD

if TYPE_CHECKING:
    from grow_cli.train.config import TrainConfig

EXAMPLES = """\
**Examples**

Train a grown model on text files for 1,000 steps (one process, best device):

    grow train-stage grown/ --data corpus/ --out grown-trained/ --max-steps 1000

JSON Lines with a `content` field, a token budget, WSD schedule, only the layers grow added:

    grow train-stage grown/ --data 'shards/*.jsonl' --text-field content \\
        --max-tokens 2e9 --schedule wsd --train-only new --out stage1/

Eight GPUs with FSDP (see docs/training.md and docs/accelerate/):

    accelerate launch --config_file docs/accelerate/fsdp2.yaml \\
        -m grow_cli train-stage grown/ --data data/ --out stage1/ \\
        --max-steps 20000 --mixed-precision bf16

Continue the masked-LM pretraining of a widened BERT (the objective follows the architecture):

    grow train-stage minilm-768/ --data corpus/ --out minilm-768-mlm/ \\
        --max-steps 2000 --whole-word-mask

Apollo: train a 3-layer model with its layers shared over sampled depths up to 12, then grow it by interpolation:

    grow train-stage small/ --data corpus/ --out small-apollo/ \\
        --max-steps 1000 --apollo-target-layers 12

    grow expand small-apollo/ deep/ --layers 12 --depth-method interpolate

…or in one run that grows in place at the stage boundaries (3 → 6 unique layers at step 300, 12 at step 600):

    grow train-stage small/ --data corpus/ --out deep/ --max-steps 2000 \\
        --apollo-stages 3,6@300,12@600

Packed documents that attend only to themselves, through flash attention's variable-length kernels on a GPU
(pip install flash-attn):

    grow train-stage grown/ --data corpus/ --out stage1/ --max-steps 1000 \\
        --document-masking --attn-implementation flash_attention_2 \\
        --mixed-precision bf16

Resume after Ctrl-C or a time limit: run the same command with `--resume auto`.

Continue a grown training run (grow expand of a checkpoint, or of an output trained with `--save-final-state`):
its AdamW moments, step, schedule position and per-tensor LR multipliers carry on; 1,000 more steps:

    grow train-stage wide/ --resume grown --data corpus/ --out wide-run/ \\
        --max-steps 1000

A grown model with a fresh optimizer, reading the data on after the blocks its lineage trained on (same data, seq
length and seed), as the same model trained from scratch on as many tokens would:

    grow train-stage grown/ --data corpus/ --out grown-run/ --max-steps 1000 \\
        --data-offset lineage

Staged training's restart: jump back to the step R its rule suggests and warm the LR up over 200 steps:

    grow train-stage wide/ --resume grown --schedule-offset auto \\
        --restart-warmup-steps 200 ...
"""

Opt = typer.Option


def _panel(title: str) -> Any:
    """typer.Option for the options --help shows together under `title`: grouped, the options panel of a command
    with some fifty options reads by topic, and each panel's table sizes its columns to its own names, so no option
    name is cut short in an 80-column terminal."""
    return functools.partial(typer.Option, rich_help_panel=title)


DataOpt = _panel("Data")
BatchOpt = _panel("Batch")
LrOpt = _panel("Learning rate and optimizer")
ObjectiveOpt = _panel("Objective")
ApolloOpt = _panel("Apollo")
SpeedOpt = _panel("Speed and memory")
RunOpt = _panel("Evaluation, checkpoints and logs")
HubOpt = _panel("Hub")
# The options that say what to do with the result rather than how to train; every other one is a `TrainConfig` field.
COMMAND_ONLY = ("context", "push_to_hub", "private", "token", "json_output")


def train_stage(
    context: typer.Context,
    model: Annotated[Path, typer.Argument(help="Model folder to train (HF safetensors + config + tokenizer).")],
    data: Annotated[
        list[str],
        Opt(
            "--data",
            help="Training data: file, folder or glob (repeat for several). "
            ".txt/.md, .jsonl, .parquet, `datasets.save_to_disk` folders, .bin tokens.",
        ),
    ],
    out: Annotated[Path, Opt("--out", help="Output folder for the trained model, checkpoints and metrics.")],
    max_steps: Annotated[int | None, Opt(help="Budget in optimizer steps.")] = None,
    max_tokens: Annotated[
        str | None, Opt(help="Budget in training tokens (e.g. 50M, 2B or 2e9); steps are derived.")
    ] = None,
    text_field: Annotated[
        str | None,
        DataOpt(help=f"Field of JSON Lines / column of Parquet and datasets holding text (default: {TEXT_FIELD})."),
    ] = None,
    micro_batch_size: Annotated[int, BatchOpt(help="Blocks per forward pass per process.")] = 8,
    grad_accum: Annotated[
        int | None, BatchOpt(help="Micro-batches per optimizer step (default: accelerate launch's, else 1).")
    ] = None,
    global_batch_tokens: Annotated[int | None, BatchOpt(help="Tokens per optimizer step; sets --grad-accum.")] = None,
    seq_len: Annotated[int, BatchOpt(help="Tokens per packed block.")] = 512,
    max_lr: Annotated[str, LrOpt(help="Peak LR, or 'auto' for the size rule of Yano et al. 2025.")] = "auto",
    min_lr_ratio: Annotated[float, LrOpt(help="Final LR as a fraction of the peak.")] = 0.1,
    schedule: Annotated[str, LrOpt(help="cosine | linear | constant | wsd.")] = "cosine",
    warmup_steps: Annotated[int | None, LrOpt(help="Warmup steps (default: --warmup-ratio of the run).")] = None,
    warmup_ratio: Annotated[float, LrOpt(help="Warmup as a fraction of all steps.")] = 0.01,
    decay_ratio: Annotated[float, LrOpt(help="wsd: fraction of steps in the final decay.")] = 0.2,
    decay_type: Annotated[str, LrOpt(help="wsd: linear | cosine | sqrt decay.")] = "linear",
    beta1: Annotated[float, LrOpt(help="AdamW beta1.")] = 0.9,
    beta2: Annotated[float, LrOpt(help="AdamW beta2.")] = 0.95,
    eps: Annotated[float, LrOpt(help="AdamW epsilon.")] = 1e-8,
    weight_decay: Annotated[float, LrOpt(help="AdamW weight decay (matrices only).")] = 0.1,
    grad_clip: Annotated[float, LrOpt(help="Clip the gradient norm to this (0: off).")] = 1.0,
    train_only: Annotated[str, ObjectiveOpt(help="'all', or 'new': only the tensors grow added (LLaMA-Pro).")] = "all",
    schedule_offset: Annotated[
        str | None,
        LrOpt(
            help="Start at this step of the LR schedule (staged training's restart step R); with --resume grown "
            "'auto' takes the step the grown state suggests (default there: the step it was grown at)."
        ),
    ] = None,
    restart_warmup_steps: Annotated[
        int,
        LrOpt(help="Ramp the LR from 0 to the schedule over this many steps after the start step (at most the run's)."),
    ] = 0,
    data_offset: Annotated[
        str | None,
        DataOpt(
            help="Start reading the data order at this block; 'lineage' reads on after the blocks the model's "
            "lineage read from the same data (a grown model trained with a fresh optimizer sees new data, as a "
            "from-scratch run would)."
        ),
    ] = None,
    objective: Annotated[
        str,
        ObjectiveOpt(
            help="auto (from the architecture: causal LM for decoders, masked LM for encoders) | causal | masked."
        ),
    ] = "auto",
    mlm_probability: MlmProbability = MLM_PROBABILITY,
    mask_replace_prob: MaskReplaceProb = MASK_REPLACE_PROB,
    random_replace_prob: RandomReplaceProb = RANDOM_REPLACE_PROB,
    whole_word_mask: WholeWordMask = False,
    document_masking: Annotated[
        bool,
        ObjectiveOpt(
            "--document-masking",
            help="Causal LM: each document packed into a block attends only to itself, at positions from 0 "
            "(positions restart after every end-of-document token; checked on the model before training).",
        ),
    ] = False,
    apollo_target_layers: Annotated[
        int | None, ApolloOpt(help="Share the layers over sampled depths up to this many (Pan et al. 2024).")
    ] = None,
    apollo_stages: Annotated[
        str | None, ApolloOpt(help="Grow the unique layers in place, e.g. '3,6@200,12@500' (LAYERS@STEP).")
    ] = None,
    apollo_sampling: Annotated[str, ApolloOpt(help="Depth sampling, lvps | uniform.")] = "lvps",
    mixed_precision: Annotated[str | None, SpeedOpt(help="no | fp16 | bf16 (default: accelerate's config).")] = None,
    gradient_checkpointing: Annotated[
        bool, SpeedOpt("--gradient-checkpointing", help="Recompute activations to save memory.")
    ] = False,
    compile: Annotated[
        bool | None,
        SpeedOpt(
            "--compile/--no-compile",
            help="torch.compile each decoder layer in place, one compiled block reused (default: on CUDA GPUs for "
            "dense models, except under FSDP, DeepSpeed or Apollo).",
            show_default=False,
        ),
    ] = None,
    attn_implementation: Annotated[
        str | None,
        SpeedOpt(
            help="transformers' attention: sdpa (its default where the model has it), eager, flex_attention, "
            "flash_attention_2, … (with --document-masking, flash attention's variable-length kernels).",
            show_default=False,
        ),
    ] = None,
    liger: Annotated[
        bool | None,
        SpeedOpt(
            "--liger/--no-liger",
            help="Liger Kernel's fused kernels (default: used on CUDA GPUs when liger-kernel is installed and "
            "supports the model; under FSDP or DeepSpeed only with --liger).",
            show_default=False,
        ),
    ] = None,
    eval_every: Annotated[int | None, RunOpt(help="Evaluate every N steps (always at the end).")] = None,
    eval_batches: Annotated[
        int,
        RunOpt(help="Micro-batches of held-out blocks per evaluation (at most: fewer held-out blocks are all read)."),
    ] = 16,
    eval_fraction: Annotated[float, RunOpt(help="Fraction of blocks held out for evaluation.")] = 0.01,
    save_every: Annotated[int | None, RunOpt(help="Save a checkpoint every N steps.")] = None,
    keep_last: Annotated[
        int,
        RunOpt(
            help="Checkpoints to keep: the newest N, and the newest one a finite loss vouched for, which a diverged "
            "run names to resume from (with 1, the one before the newest is kept too)."
        ),
    ] = 2,
    resume: Annotated[
        str | None,
        RunOpt(
            help="'auto' (newest checkpoint in --out), 'grown' (the training state grow expand grew into MODEL) "
            "or a checkpoint folder."
        ),
    ] = None,
    save_final_state: Annotated[
        bool,
        RunOpt(
            "--save-final-state",
            help="Also save the final training state (a checkpoint), so grow expand can grow the run on.",
        ),
    ] = False,
    exit_interval: Annotated[int | None, RunOpt(help="Save and exit after N steps (for time-limited jobs).")] = None,
    log_every: Annotated[
        int, RunOpt(help="Throughput and progress every N steps (every step's loss is logged regardless).")
    ] = 10,
    report_to: Annotated[str, RunOpt(help="Extra trackers, comma-separated: tensorboard, wandb, mlflow, ….")] = "",
    peak_tflops: Annotated[float | None, RunOpt(help="Device peak TFLOP/s for MFU when not known.")] = None,
    tokenizer: Annotated[Path | None, DataOpt(help="Tokenizer folder (default: the model folder).")] = None,
    token_dtype: Annotated[str | None, DataOpt(help="uint16 | uint32 for .bin token files.")] = None,
    cache_dir: Annotated[
        Path | None,
        DataOpt(
            help="Token cache folder (default: .grow-cache/tokens beside --out, shared with runs that write there)."
        ),
    ] = None,
    seed: Annotated[int, Opt(help="Seed for data order and initialisation.")] = 0,
    overwrite: Annotated[bool, Opt("--overwrite", help="Start again in a non-empty --out.")] = False,
    push_to_hub: Annotated[str | None, HubOpt(help="Upload the result to this Hub repo id.")] = None,
    private: Annotated[bool, HubOpt("--private", help="With --push-to-hub: create the repo private.")] = False,
    token: Annotated[
        str | None,
        HubOpt(help="Hub token for --push-to-hub (default: HF_TOKEN or the saved login).", show_default=False),
    ] = None,
    quiet: Annotated[
        bool, Opt("--quiet", "-q", help="No progress or notes on stderr, but warnings about the data (non-UTF-8 text).")
    ] = False,
    json_output: Annotated[bool, Opt("--json", help=JSON_HELP)] = False,
) -> None:
    """Continue pretraining MODEL on your data with accelerate (one CPU to many GPUs); write a trained model,
    checkpoints, metrics.jsonl, an updated grow.json and model card to --out."""
    options = dict(locals())  # every option above by name; first, so that nothing else is in it yet
    from grow_cli.commands.given import given_on_the_command_line
    from grow_cli.commands.push_options import check_push_options
    from grow_cli.console import out as stdout
    from grow_cli.console import print_json
    from grow_cli.errors import counted
    from grow_cli.train.loop import train_stage as run

    check_push_options(push_to_hub, private=private, token=token)
    if push_to_hub:  # a push that cannot happen is refused before hours of training, not after them
        from grow_cli.hub.access import check_may_push

        check_may_push(push_to_hub, token, quiet=quiet)
    config = train_config(options)
    config.check_given(given_on_the_command_line(context, (name for name in options if name not in COMMAND_ONLY)))
    result = run(config)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one process speaks
        return
    if push_to_hub and result["status"] in ("done", "finished"):  # finished earlier: e.g. a failed push retried
        from grow_cli.commands.push_options import note_if_card_kept, note_if_unread
        from grow_cli.hub.push import push_output

        result["push"] = push_output(
            out,
            push_to_hub,
            made_by="grow train-stage",
            private=private,
            token=token,
            commit_message=f"grow train-stage: {counted(result['steps'], 'step')}",
            quiet=quiet,
        )
        if not quiet:
            note_if_unread(result["push"])
            note_if_card_kept(result["push"], out)
    if json_output:
        print_json(result)
    elif result["status"] == "done":
        stdout.print(
            f"{_trained(result)}: eval loss {result['final_eval_loss']:.4f} (ppl {result['final_eval_ppl']:.2f}) "
            f"→ {out}",
            soft_wrap=True,
        )
    elif result["status"] == "paused":
        stdout.print(
            f"paused at step {result['end_step']} of {result['max_steps']} (--exit-interval), checkpoint saved in "
            f"{result['checkpoint']}: run the same command with --resume auto to continue",
            soft_wrap=True,
        )
    elif result["status"] == "finished":
        stdout.print(
            f"{out} holds the finished run (step {result['end_step']} of {result['max_steps']}): nothing to do; "
            "drop --resume auto and pass --overwrite to train again",
            soft_wrap=True,
        )


def _trained(result: dict[str, Any]) -> str:
    """What a finished run trained, for its result line: a resumed run names the steps this invocation trained and
    where the stage stands ("trained 20 steps" after a resume at step 10 claimed the first 10 as well)."""
    from grow_cli.errors import counted

    steps, end, resumed = result["steps"], result["end_step"], result["resumed_from"]
    if resumed is None:
        return f"trained {counted(steps, 'step')} on {result['tokens']:,} tokens"
    stage = f"{counted(steps, 'step')}, {result['tokens']:,} tokens in this stage"
    if resumed == end:  # resumed from a checkpoint of the last step: nothing was left to train
        return f"resumed at step {end} of {end}, the last: trained no step ({stage})"
    trained = f"step {end}" if end - resumed == 1 else f"steps {resumed + 1}–{end}"
    return f"trained {trained} of {end} (resumed from step {resumed}; {stage})"


def train_config(options: dict[str, Any]) -> TrainConfig:
    """The `TrainConfig` of the command's options: each goes in under its own name, except `COMMAND_ONLY`. The two
    that the command line spells differently are converted here: --report-to is one comma-separated string, and
    --max-tokens is read as a count so that 50M, 2B and 2e9 work (`parse_max_tokens`)."""
    from grow_cli.errors import OptionError
    from grow_cli.train.config import TrainConfig, parse_max_tokens

    settings = {name: value for name, value in options.items() if name not in COMMAND_ONLY}
    settings["max_tokens"] = parse_max_tokens(settings["max_tokens"])
    settings["report_to"] = [name.strip() for name in settings["report_to"].split(",") if name.strip()]
    if options["report_to"] and not settings["report_to"]:  # `--report-to ' '` or ',': given, naming no tracker
        raise OptionError(
            "report_to",
            f"--report-to {options['report_to']!r} names no tracker; name one (e.g. tensorboard) or drop it",
        )
    return TrainConfig(**settings)
