"""`TrainConfig`: every setting of one `grow train-stage` run, validated before anything heavy is loaded.

The CLI builds one from its flags; Python users build one directly and call `grow_cli.train_stage`.
Settings that accelerate also owns (mixed precision, compilation) default to None so that `accelerate config` and
`accelerate launch` flags decide unless the user says otherwise here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grow_cli.data.masking_settings import MASK_REPLACE_PROB, MLM_PROBABILITY, RANDOM_REPLACE_PROB, check_masking
from grow_cli.data.sources import TOKEN_DTYPES, data_paths
from grow_cli.errors import OptionError, UsageError, counted, shown
from grow_cli.field_types import check_given_names, checked_init, flag
from grow_cli.limits import MAX_STEPS, MAX_TOKENS, check_layer_option, check_seed
from grow_cli.train.apollo_plan import SAMPLINGS, parse_stages
from grow_cli.train.schedule import Schedule, warmup_steps_for

SCHEDULES = ("cosine", "linear", "constant", "wsd")
DECAY_TYPES = ("linear", "cosine", "sqrt")
MIXED_PRECISION = ("no", "fp16", "bf16")
TRAIN_ONLY = ("all", "new")
OBJECTIVES = ("auto", "causal", "masked")  # auto: decided from the architecture (train/objective.py)


@checked_init
@dataclass(frozen=True)
class TrainConfig:
    """One training stage. Exactly one of `max_steps` / `max_tokens` sets the budget.

    Each field is the `grow train-stage` flag of the same name (`seq_len` is `--seq-len`; `report_to` is a list
    here). Paths may be strings or `os.PathLike`s and are held as `Path`s (`resume` as text), `data` may be one path
    (held as a list of one). A value of the wrong type, and contradictory or impossible settings, raise
    `OptionError` naming the field at construction, before anything heavy is loaded. Frozen, like `GrowthSpec`:
    `dataclasses.replace(config, max_steps=…)` is a checked copy, where assigning a field would skip the checks.
    """

    model: str | os.PathLike[str]
    data: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
    out: str | os.PathLike[str]
    # data
    text_field: str | None = None  # of JSON Lines, Parquet, datasets; None: not given (`TEXT_FIELD` is read)
    seq_len: int = 512
    eval_fraction: float = 0.01
    token_dtype: str | None = None  # for pre-tokenized .bin files; None: uint16 if the vocab fits, else uint32
    tokenizer: str | os.PathLike[str] | None = None  # default: the model folder
    cache_dir: str | os.PathLike[str] | None = None  # default: <out's parent>/.grow-cache/tokens
    seed: int = 0
    # budget and batch
    max_steps: int | None = None
    max_tokens: int | None = None
    micro_batch_size: int = 8
    grad_accum: int | None = None
    global_batch_tokens: int | None = None
    # optimiser
    max_lr: float | str = "auto"
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.01
    decay_ratio: float = 0.2
    decay_type: str = "linear"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # growth-aware
    train_only: str = "all"
    schedule_offset: int | str | None = None  # start at this step of the schedule (R); "auto": the grown state's rule
    restart_warmup_steps: int = 0  # ramp the LR up again over this many steps from the start step
    data_offset: int | str | None = None  # the first step's block in the data order; "lineage": after those it read
    save_final_state: bool = False  # leave the final training state, to grow the model from where it finished
    # objective (train/objective.py): auto follows the architecture
    objective: str = "auto"
    mlm_probability: float = MLM_PROBABILITY  # masking (data/masking_settings.py), as grow compare takes it too
    mask_replace_prob: float = MASK_REPLACE_PROB
    random_replace_prob: float = RANDOM_REPLACE_PROB
    whole_word_mask: bool = False
    document_masking: bool = False  # each packed document attends only to itself (train/documents.py)
    # Apollo (train/apollo.py): shared layers toward a deeper target, optionally growing in place
    apollo_target_layers: int | None = None
    apollo_stages: str | None = None  # "3,6@200,12@500": unique layers, and the step each stage starts at
    apollo_sampling: str = "lvps"
    # efficiency (None: accelerate's config decides)
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    compile: bool | None = None  # torch.compile each repeated block: None on CUDA GPUs (train/kernels.py)
    attn_implementation: str | None = None  # transformers' attention, e.g. flash_attention_2 (train/attention.py)
    liger: bool | None = None  # Liger Kernel: None uses it where installed and applicable (train/kernels.py)
    # checkpoints, eval, logs
    save_every: int | None = None
    keep_last: int = 2
    resume: str | os.PathLike[str] | None = None  # "auto", "grown" (the grown state in --model) or a checkpoint
    exit_interval: int | None = None
    eval_every: int | None = None
    eval_batches: int = 16
    log_every: int = 10  # throughput and progress; the loop waits for the device only at such steps (step_log.py)
    report_to: list[str] = field(default_factory=list)
    peak_tflops: float | None = None
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        for name in ("model", "out", "tokenizer", "cache_dir"):  # `~` is the home folder here too, as in a shell
            if getattr(self, name) is not None:
                if not str(getattr(self, name)).strip():  # Path("") is the working folder: never meant
                    what = "MODEL" if name == "model" else f"--{name.replace('_', '-')}"
                    raise OptionError(name, f"{what} is empty; give a folder")
                self._set(name, Path(getattr(self, name)).expanduser())
        if self.resume is not None:
            self._set("resume", os.path.expanduser(self.resume))
        self._set("data", data_paths(self.data))  # one path (the Python API) is a list of one
        self._set("report_to", list(dict.fromkeys(self.report_to)))  # a tracker named twice is one tracker
        if not self.data:
            raise OptionError("data", "no training data: pass --data PATH (files, folders or globs)")
        if (self.max_steps is None) == (self.max_tokens is None):
            raise OptionError(
                "max_tokens" if self.max_steps is not None else "max_steps",
                "give exactly one budget: --max-steps N or --max-tokens N",
            )
        if self.grad_accum is not None and self.global_batch_tokens is not None:
            raise OptionError(
                "global_batch_tokens", "--grad-accum and --global-batch-tokens both set the accumulation; give one"
            )
        choices = {
            "schedule": SCHEDULES,
            "decay_type": DECAY_TYPES,
            "train_only": TRAIN_ONLY,
            "mixed_precision": (None, *MIXED_PRECISION),
            "token_dtype": (None, *TOKEN_DTYPES),
            "objective": OBJECTIVES,
            "apollo_sampling": SAMPLINGS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise OptionError(
                    name, f"{flag(name)} {getattr(self, name)!r} is not one of {', '.join(a for a in allowed if a)}"
                )
        if isinstance(self.max_lr, str) and self.max_lr != "auto":
            try:
                self._set("max_lr", float(self.max_lr))
            except ValueError:
                raise OptionError("max_lr", f"--max-lr must be a number or 'auto', got {self.max_lr!r}") from None
        check_seed(self.seed)
        if self.seq_len < 2:  # one token has no next token to predict: the loss would be 0/0
            raise OptionError(
                "seq_len", f"--seq-len must be at least 2 (a token and the next one to predict), got {self.seq_len}"
            )
        if self.attn_implementation is not None and not self.attn_implementation.strip():
            raise OptionError("attn_implementation", "--attn-implementation is empty; name one (e.g. sdpa) or drop it")
        positive = (
            "micro_batch_size",
            "max_steps",
            "max_tokens",
            "grad_accum",
            "save_every",
            "keep_last",
            "eval_every",
            "eval_batches",
            "log_every",
            "exit_interval",
            "global_batch_tokens",
            "apollo_target_layers",
        )
        for name in positive:
            number = getattr(self, name)
            if number is not None and number < 1:
                raise OptionError(name, f"{flag(name)} must be at least 1, got {number}")
        self._check_numbers()
        if not 0.0 < self.eval_fraction < 0.5:
            raise OptionError("eval_fraction", f"--eval-fraction must be in (0, 0.5), got {self.eval_fraction}")
        for name in ("min_lr_ratio", "decay_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise OptionError(name, f"{flag(name)} must lie in [0, 1], got {getattr(self, name)}")
        if self.resume not in (None, "auto", "grown") and not Path(self.resume).is_dir():
            what = "is a file, not a checkpoint folder" if Path(self.resume).exists() else "no such checkpoint folder"
            raise OptionError(
                "resume",
                f"--resume {self.resume!r}: {what}; give a folder such as OUT/checkpoints/step_00000100 "
                "(or --resume auto)",
            )
        if self.resume == "auto" and self.overwrite:  # one would be ignored: which, the user should say
            raise OptionError(
                "overwrite", "--resume auto continues the run in --out and --overwrite starts it again; give one"
            )
        self._check_schedule_options()
        self._check_schedule_offset()
        if self.max_steps is not None and self.resume is None and not self.schedule_offset:
            check_warmup_fits(self, self.max_steps)  # the schedule's horizon, known now (else: make_budget)
        if self.max_steps is not None:
            check_restart_warmup_fits(self, self.max_steps)  # this run's steps, wherever it starts
        self._check_data_offset()
        check_masking(self.mlm_probability, self.mask_replace_prob, self.random_replace_prob)
        self._check_apollo()

    def check_given(self, given: Collection[str]) -> None:
        """Refuse a schedule option the user named at its default value where the schedule ignores it
        (`--decay-type linear` with cosine), or --apollo-sampling without Apollo, as construction refuses any other
        value: a command line or a recipe knows which options were given, where the fields only hold values. The
        names are kept (`given`) for the checks that need the model first (masking options on a causal LM, in
        preflight). A name that is no field is the caller's mistake, refused too (a misspelt one would pass unseen)."""
        check_given_names(TrainConfig, given)
        self._check_schedule_options(named=given)
        self._check_apollo(named=given)
        object.__setattr__(self, "_given", frozenset(given))  # (no field: a resume compares the fields)

    @property
    def given(self) -> frozenset[str]:
        """The options the user named, as `check_given` was told (empty where it was not called)."""
        return getattr(self, "_given", frozenset())

    def _check_schedule_options(self, named: Collection[str] = ()) -> None:
        """Refuse a schedule option that the chosen schedule would silently ignore (one with a value other than its
        default, or `named`): --decay-ratio and --decay-type shape WSD's final decay only, --min-lr-ratio is the
        floor of a decay that `constant` never makes, and --warmup-steps replaces --warmup-ratio."""

        def set_(name: str) -> bool:
            return getattr(self, name) != DEFAULTS[name] or name in named

        if self.schedule != "wsd":
            for name in ("decay_ratio", "decay_type"):
                if set_(name):
                    decays = "never decays" if self.schedule == "constant" else "decays over every step after warmup"
                    raise OptionError(
                        name,
                        f"{flag(name)} applies only with --schedule wsd (--schedule {self.schedule} {decays}); add "
                        "--schedule wsd or drop it",
                    )
        if self.schedule == "constant" and set_("min_lr_ratio"):
            raise OptionError(
                "min_lr_ratio", "--min-lr-ratio does not apply to --schedule constant (it never decays); drop it"
            )
        if self.warmup_steps is not None and set_("warmup_ratio"):
            raise OptionError(
                "warmup_ratio", "--warmup-ratio applies only without --warmup-steps (which sets the warmup); give one"
            )

    def _check_schedule_offset(self) -> None:
        self._set("schedule_offset", _count_or(self.schedule_offset, "auto", "schedule_offset", "a step number"))
        if isinstance(self.schedule_offset, int) and self.schedule_offset > MAX_STEPS:  # a step, as --max-steps
            raise OptionError(
                "schedule_offset",
                f"--schedule-offset must be a step ≤ {MAX_STEPS:g} (grow's bound on steps), got "
                f"{shown(self.schedule_offset)}",
            )
        if self.restart_warmup_steps < 0:
            raise OptionError(
                "restart_warmup_steps", f"--restart-warmup-steps must be at least 0, got {self.restart_warmup_steps}"
            )

    def _check_data_offset(self) -> None:
        self._set("data_offset", _count_or(self.data_offset, "lineage", "data_offset", "a number of blocks"))
        if isinstance(self.data_offset, int) and self.data_offset > 2**53:  # block positions stay exact int64s
            raise OptionError(
                "data_offset",
                f"--data-offset {shown(self.data_offset)} is more blocks than any data holds (at most 2**53)",
            )
        if self.data_offset and self.resume == "grown":
            raise OptionError(
                "data_offset",
                "--data-offset: --resume grown reads on after the blocks its source read already; drop --data-offset",
            )

    def _check_apollo(self, named: Collection[str] = ()) -> None:
        """Apollo's settings, and --apollo-sampling refused without Apollo (set away from its default, or `named`)."""
        if self.apollo_stages is not None:
            check_layer_option("apollo_stages", parse_stages(self.apollo_stages)[-1][0])  # (stages only grow)
        elif self.apollo_target_layers is None:
            if self.apollo_sampling != DEFAULTS["apollo_sampling"] or "apollo_sampling" in named:
                raise OptionError(
                    "apollo_sampling", "--apollo-sampling needs --apollo-target-layers (or --apollo-stages)"
                )
            return
        if self.apollo_target_layers is not None:
            check_layer_option("apollo_target_layers", self.apollo_target_layers)
        if self.train_only != "all":
            raise OptionError(
                "train_only",
                "Apollo trains every layer (each is shared across positions); --train-only new contradicts it",
            )

    def _check_numbers(self) -> None:
        """Optimizer and budget numbers in their ranges (NaN and infinity never are): refused here, in one line,
        rather than by torch's optimizer mid-run or as a loss that turns NaN."""
        max_lr = None if isinstance(self.max_lr, str) else self.max_lr  # "auto" (other strings: refused above)
        ranges: dict[str, tuple[float | None, float, float, bool]] = {  # field: (value, lowest, highest, lowest ok)
            "max_lr": (max_lr, 0.0, math.inf, False),
            "max_steps": (self.max_steps, 1, MAX_STEPS, True),
            "max_tokens": (self.max_tokens, 1, MAX_TOKENS, True),
            "beta1": (self.beta1, 0.0, 1.0, True),
            "beta2": (self.beta2, 0.0, 1.0, True),
            "eps": (self.eps, 0.0, math.inf, False),
            "weight_decay": (self.weight_decay, 0.0, math.inf, True),
            "grad_clip": (self.grad_clip, 0.0, math.inf, True),
            "warmup_steps": (self.warmup_steps, 0, math.inf, True),
            "warmup_ratio": (self.warmup_ratio, 0.0, 1.0, True),
            "peak_tflops": (self.peak_tflops, 0.0, math.inf, False),
        }
        for name, (value, low, high, low_ok) in ranges.items():
            if value is None:
                continue
            if not (math.isfinite(value) and (value >= low if low_ok else value > low) and value <= high):
                bound = f"{'≥' if low_ok else '>'} {low:g}" + (f" and ≤ {high:g}" if math.isfinite(high) else "")
                raise OptionError(name, f"{flag(name)} must be a finite number {bound}, got {shown(value)}")
        for name in ("beta1", "beta2"):
            if getattr(self, name) == 1.0:
                raise OptionError(
                    name, "--beta1 and --beta2 must be below 1 (AdamW's moving averages would never move)"
                )

    def _set(self, name: str, value: Any) -> None:
        """Store a field's checked, normalised value (a `Path` for a path given as text) in the frozen instance."""
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, for the checkpoint (resume checks) and the trackers' hyperparameters."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


# Each field's default, for the checks of an option given where it would do nothing (a list's default is MISSING).
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def check_warmup_fits(config: TrainConfig, max_steps: int, start_step: int = 0) -> None:
    """Refuse a warmup that ends after the step by which its schedule needs the peak LR. Cosine, linear and constant
    need it by the run's last step, or the LR never reaches the peak asked for (`--max-steps 10 --warmup-steps 100`
    was cut to 10 warmup steps without a word: the LR peaked at the last step and never decayed). WSD needs it by its
    final decay's start, or the LR climbs to the peak and falls at once to where the decay already is (`--max-steps 10
    --warmup-steps 8 --decay-ratio 0.5`: 1.0 × the peak at step 7, 0.28 at step 8). A `--warmup-ratio` (at most 1)
    always fits the run; under WSD it may reach into the decay. `max_steps` is the schedule's last step: `--max-steps`
    for a run from step 0, checked as the config is built; else known once the budget is (`make_budget`: what
    `--max-tokens` makes, `start_step` plus the budget for a run that starts later, as --resume and --schedule-offset
    do)."""
    warmup = warmup_steps_for(max_steps, config.warmup_steps, config.warmup_ratio)
    wsd = config.schedule == "wsd"
    end = Schedule("wsd", max_steps, warmup, decay_ratio=config.decay_ratio).decay_start if wsd else max_steps
    if warmup <= end:
        return
    option, given = _warmup_given(config, warmup)
    made = _steps_made(config, max_steps, start_step)
    if wsd:
        fewer = f"at most {counted(end, 'warmup step')}" if end else "--warmup-steps 0"
        raise OptionError(
            option,
            f"{given} reaches into the decay, which starts at step {shown(end)} of {shown(max_steps)}{made}: "
            f"use {fewer} or a smaller --decay-ratio",
        )
    budget = "--max-steps" if config.max_steps else "--max-tokens"
    raise OptionError(
        option,
        f"{given} outlasts the run, which ends at step {shown(max_steps)}{made}, so the LR would never reach its peak: "
        f"use at most {counted(max_steps, 'warmup step')} or a larger {budget}",
    )


def check_restart_warmup_fits(config: TrainConfig, steps: int) -> None:
    """Refuse a restart warmup longer than this run's `steps`: its ramp would end after the last step, so the LR
    would climb throughout and never reach the schedule it ramps to (the ramp's target would quietly become the
    schedule's value at the last step). A continued run's ramp starts at its first step, wherever that lies in the
    schedule, so only the run's own length matters: `--max-steps` as the config is built, else what `--max-tokens`
    makes (`make_budget`)."""
    if config.restart_warmup_steps <= steps:
        return
    budget = "--max-steps" if config.max_steps else "--max-tokens"
    raise OptionError(
        "restart_warmup_steps",
        f"--restart-warmup-steps {shown(config.restart_warmup_steps)} outlasts this run of "
        f"{counted(steps, 'step')}{_steps_made(config, steps, 0)}, so the LR would never reach the schedule it ramps "
        f"to: use at most {counted(steps, 'restart warmup step')} or a larger {budget}",
    )


def _warmup_given(config: TrainConfig, warmup: int) -> tuple[str, str]:
    """The warmup option as the user gave it, for a refusal: its field and its flag (a ratio with its steps)."""
    if config.warmup_steps is not None:
        return "warmup_steps", f"--warmup-steps {shown(config.warmup_steps)}"
    return "warmup_ratio", f"--warmup-ratio {config.warmup_ratio:g} ({counted(warmup, 'warmup step')})"


def _steps_made(config: TrainConfig, max_steps: int, start_step: int) -> str:
    """Where a refusal's final step came from, where `--max-steps` alone does not say it: a token budget, or a run
    that starts later in its schedule."""
    if start_step:
        return f" (this run's {counted(max_steps - start_step, 'step')} from step {shown(start_step)}, where it starts)"
    if config.max_tokens:
        return f" (what --max-tokens {shown(config.max_tokens)} makes)"
    return ""


def parse_max_tokens(value: str | float | None) -> int | None:
    """A token budget as the command line and a recipe may spell it (50M, 2B, 2e9, 2000000.0), as a whole count; a
    plain number out of range (0, -5) is left to `TrainConfig`'s checks, which name it."""
    from grow_cli.quantities import parse_count

    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str | float):
        raise UsageError(f"--max-tokens must be a count such as 50M, 2B or 2e9, got {value!r}")
    try:
        count = float(value)  # a plain number, in range or not (0, -5, inf): the range checks name it
    except ValueError:  # 50M, 2B; a negative one (-1B) is refused as not positive, as -1 is, not as unreadable
        count = parse_count(value, "--max-tokens")
    if not (math.isfinite(count) and count == int(count)):
        raise UsageError(f"--max-tokens must be a whole number, got {value}")
    return int(count)


def _count_or(value: int | str | None, keyword: str, name: str, what: str) -> int | str | None:
    """An option that takes a count ≥ 0 or one keyword (e.g. `--schedule-offset N|auto`), its count as an int."""
    if isinstance(value, str) and value != keyword:
        try:
            value = int(value)
        except ValueError:
            raise OptionError(name, f"{flag(name)} must be {what} or '{keyword}', got {value!r}") from None
    if isinstance(value, int) and value < 0:
        raise OptionError(name, f"{flag(name)} must be at least 0, got {value}")
    return value
