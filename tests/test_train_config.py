"""`TrainConfig` (grow_cli/train/config.py) as a Python caller builds it: every field's type checked at construction
(a string for a count, `"no"` for a switch, `None` for a number), each refusal an `OptionError` naming its field,
paths given as text or `os.PathLike` and held as `Path`s, and a frozen instance whose changed copies are checked
again."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path

import pytest
import yaml

from grow_cli.errors import OptionError, UsageError
from grow_cli.family.recipe import load_recipe
from grow_cli.field_types import field_types
from grow_cli.limits import MAX_STEPS
from grow_cli.train.config import TrainConfig

BASE = {"model": "m", "data": ["d"], "out": "o", "max_steps": 1}


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("model", None, "str or path"),
        ("out", 5, "str or path"),
        ("seq_len", "64", "int"),
        ("seq_len", 64.0, "int"),
        ("seq_len", None, "int"),
        ("max_steps", 1.5, "int"),
        ("max_steps", True, "int"),  # True is no count of steps
        ("micro_batch_size", None, "int"),
        ("seed", "0", "int"),
        ("beta1", "0.9", "int or float"),
        ("max_lr", None, "int, float or str"),
        ("compile", "no", "bool"),  # a non-empty string is true to Python: it compiled
        ("quiet", "yes", "bool"),
        ("overwrite", 1, "bool"),
        ("report_to", "tensorboard", "list"),
        ("apollo_stages", 5, "str"),
        ("text_field", 5, "str"),
        ("restart_warmup_steps", None, "int"),
        ("tokenizer", 5, "str or path"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(field, value, expected):
    """Before the old checks compared it (a TypeError from `<`), read it as true, or carried it into the run."""
    with pytest.raises(OptionError) as info:
        TrainConfig(**{**BASE, field: value})
    assert info.value.option == field
    assert str(info.value) == f"TrainConfig.{field}: expected {expected}, found {value!r} ({type(value).__name__})"


def test_a_misspelt_or_missing_field_is_an_option_error():
    with pytest.raises(OptionError, match="TrainConfig has no option 'seq_lenn'; did you mean 'seq_len'"):
        TrainConfig(**BASE, seq_lenn=64)
    with pytest.raises(OptionError, match="TrainConfig needs model, data, out"):
        TrainConfig()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"seq_len": 1}, "seq_len"),
        ({"schedule": "step"}, "schedule"),
        ({"max_lr": -1.0}, "max_lr"),
        ({"beta2": 1.0}, "beta2"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"max_tokens": 100}, "max_tokens"),  # and max_steps: two budgets
        ({"decay_ratio": 0.5}, "decay_ratio"),  # only with --schedule wsd
        ({"apollo_stages": "3,2@5"}, "apollo_stages"),
        ({"data": []}, "data"),
        ({"data_offset": 10**23}, "data_offset"),  # beyond int64 block positions: was the catch-all
        ({"schedule_offset": 10**26}, "schedule_offset"),  # beyond int64 block positions: was the catch-all
        ({"resume": "auto", "overwrite": True}, "overwrite"),  # continue or start again: --overwrite was ignored
    ],
)
def test_each_impossible_setting_names_its_field(changes, field):
    """The message names the flag (as the command line prints it); `.option` is the field, for programs and for
    the recipe reader, which names the key."""
    with pytest.raises(OptionError) as info:
        TrainConfig(**{**BASE, **changes})
    assert info.value.option == field and "\n" not in str(info.value)


@pytest.mark.parametrize("field", ["min_lr_ratio", "decay_ratio"])
def test_a_ratio_out_of_range_is_named_alone_with_its_value(field):
    """The line named both ratios and neither value ('--min-lr-ratio and --decay-ratio must lie in [0, 1]')."""
    with pytest.raises(OptionError, match=rf"^--{field.replace('_', '-')} must lie in \[0, 1\], got nan$"):
        TrainConfig(**{**BASE, "schedule": "wsd", field: float("nan")})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"apollo_target_layers": 10**8}, "--apollo-target-layers asks for 100,000,000 layers"),
        ({"apollo_stages": "2,4@1,100000000@2"}, "--apollo-stages asks for 100,000,000 layers"),
    ],
)
def test_an_apollo_depth_beyond_grows_layer_bound_is_refused_with_the_settings(changes, message):
    """It was taken: the run trained, then its final evaluation at that depth built a 10**8-entry layer list and ran
    it for hours (expand's --layers has the same bound)."""
    with pytest.raises(OptionError, match=f"^{message}, beyond grow's bound of 1,024; the deepest released"):
        TrainConfig(**{**BASE, **changes})
    TrainConfig(**{**BASE, "apollo_target_layers": 1024, "apollo_stages": "2,1024@1"})  # the bound itself is fine


def test_a_step_budget_has_a_bound_as_the_token_budget_has():
    """--max-steps 10**20 was taken (and trained, its warmup alone 10**18 steps at an LR near 0); --max-tokens has
    always had its bound."""
    with pytest.raises(OptionError, match=r"^--max-steps must be a finite number ≥ 1 and ≤ 1e\+12, got "):
        TrainConfig(**{**BASE, "max_steps": 10**12 + 1})
    assert TrainConfig(**{**BASE, "max_steps": 10**12}).max_steps == 10**12  # the bound itself is fine


@pytest.mark.parametrize("max_tokens, refused", [(2 * MAX_STEPS, False), (2 * MAX_STEPS + 1, True), (10**18, True)])
def test_a_token_budget_is_bounded_in_steps_as_max_steps_is(max_tokens, refused):
    """One sequence of 2 tokens a step made --max-tokens 1e18 5e17 steps, which trained (--max-steps is bounded by
    `MAX_STEPS`); the step count a token budget makes is refused past the same bound, naming the batch."""
    from types import SimpleNamespace

    from grow_cli.train.build import make_budget

    config = TrainConfig(**{**BASE, "max_steps": None, "max_tokens": max_tokens, "seq_len": 2, "micro_batch_size": 1})
    accelerator = SimpleNamespace(num_processes=1, gradient_accumulation_steps=1)
    if not refused:
        assert make_budget(config, accelerator).max_steps == MAX_STEPS  # type: ignore[arg-type]
        return
    with pytest.raises(OptionError, match=r"^--max-tokens .* over a global batch of 1 × 2 tokens .* beyond grow's"):
        make_budget(config, accelerator)  # type: ignore[arg-type]


WARMUP_INTO_DECAY = {"schedule": "wsd", "max_steps": 10, "warmup_steps": 8, "decay_ratio": 0.5}


def test_a_wsd_warmup_that_reaches_into_the_decay_is_refused_as_the_config_is_built():
    """--max-steps 10 --warmup-steps 8 --decay-ratio 0.5 was taken: the warmup climbed to the peak at step 7 and the
    decay, which starts at step 5, dropped it to 0.28 of the peak at step 8. Refused in one line naming the numbers
    and what to change; a warmup that ends where the decay starts is taken, as is one from --warmup-ratio that fits."""
    from grow_cli.train.schedule import Schedule

    jump = Schedule("wsd", 10, warmup_steps=8, decay_ratio=0.5)
    assert (jump.lr_factor(7), round(jump.lr_factor(8), 2)) == (1.0, 0.28)  # the premise
    with pytest.raises(OptionError) as info:
        TrainConfig(**{**BASE, **WARMUP_INTO_DECAY})
    assert info.value.option == "warmup_steps" and str(info.value) == (
        "--warmup-steps 8 reaches into the decay, which starts at step 5 of 10: use at most 5 warmup steps or a "
        "smaller --decay-ratio"
    )
    with pytest.raises(OptionError, match=r"^--warmup-ratio 0.9 \(9 warmup steps\) reaches into the decay, which"):
        TrainConfig(**{**BASE, **WARMUP_INTO_DECAY, "warmup_steps": None, "warmup_ratio": 0.9})
    TrainConfig(**{**BASE, **WARMUP_INTO_DECAY, "warmup_steps": 5})
    TrainConfig(**{**BASE, **WARMUP_INTO_DECAY, "warmup_steps": None, "warmup_ratio": 0.5})
    TrainConfig(**{**BASE, **WARMUP_INTO_DECAY, "schedule": "cosine", "decay_ratio": 0.2})  # no final decay


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_a_warmup_longer_than_the_run_is_refused_as_the_config_is_built(schedule):
    """--max-steps 10 --warmup-steps 100 was cut to 10 warmup steps without a word: the LR peaked at the last step
    and never decayed. Refused in one line naming the run's steps and what to change; a warmup as long as the run is
    taken (the LR reaches the peak at the last step, as asked), and a --warmup-ratio never outlasts the run."""
    with pytest.raises(OptionError) as info:
        TrainConfig(**{**BASE, "schedule": schedule, "max_steps": 10, "warmup_steps": 100})
    assert info.value.option == "warmup_steps" and str(info.value) == (
        "--warmup-steps 100 outlasts the run, which ends at step 10, so the LR would never reach its peak: use at "
        "most 10 warmup steps or a larger --max-steps"
    )
    TrainConfig(**{**BASE, "schedule": schedule, "max_steps": 10, "warmup_steps": 10})
    TrainConfig(**{**BASE, "schedule": schedule, "max_steps": 10, "warmup_ratio": 1.0})


WARMUP_PAST_THE_RUN = {"schedule": "cosine", "warmup_steps": 11}


@pytest.mark.parametrize(
    "warmup, changes, start_step, expected",
    [
        (  # --max-tokens: 10 steps of 8 × 32 tokens, known once the batch is
            WARMUP_INTO_DECAY,
            {"max_steps": None, "max_tokens": 2560},
            0,
            "--warmup-steps 8 reaches into the decay, which starts at step 5 of 10 (what --max-tokens 2,560 makes): "
            "use at most 5 warmup steps or a smaller --decay-ratio",
        ),
        (  # a run that starts at step 2 of its schedule (--schedule-offset, --resume): 8 steps end at step 10
            WARMUP_INTO_DECAY,
            {"max_steps": 8, "schedule_offset": 2},
            2,
            "--warmup-steps 8 reaches into the decay, which starts at step 5 of 10 (this run's 8 steps from step 2, "
            "where it starts): use at most 5 warmup steps or a smaller --decay-ratio",
        ),
        (WARMUP_INTO_DECAY, {"resume": "auto"}, 100, 110),  # its checkpoint started at step 100: decay from step 55
        (WARMUP_INTO_DECAY, {"schedule_offset": 100}, 100, 110),
        (
            WARMUP_PAST_THE_RUN,
            {"max_steps": None, "max_tokens": 2560},
            0,
            "--warmup-steps 11 outlasts the run, which ends at step 10 (what --max-tokens 2,560 makes), so the LR "
            "would never reach its peak: use at most 10 warmup steps or a larger --max-tokens",
        ),
        (
            WARMUP_PAST_THE_RUN,
            {"max_steps": 8, "schedule_offset": 2},
            2,
            "--warmup-steps 11 outlasts the run, which ends at step 10 (this run's 8 steps from step 2, where it "
            "starts), so the LR would never reach its peak: use at most 10 warmup steps or a larger --max-steps",
        ),
        (WARMUP_PAST_THE_RUN, {"max_steps": 8, "schedule_offset": 3}, 3, 11),  # steps 3 to 10, warmed up over 11
        (WARMUP_PAST_THE_RUN, {"max_steps": 1, "resume": "grown", "restart_warmup_steps": 1}, 10, 11),  # of step 10
    ],
)
def test_a_warmup_is_checked_against_the_schedule_wherever_its_final_step_becomes_known(
    warmup, changes, start_step, expected
):
    """Where the schedule's final step is not known as the config is built (--max-tokens; a run that starts later in
    its schedule, as --schedule-offset and --resume make it), the budget checks the warmup — a WSD one against its
    decay, any other against the run — in the same line, saying where the steps came from; a horizon stretched by
    the start step is not refused for the budget's own steps (`expected`: the final step then)."""
    from types import SimpleNamespace

    from grow_cli.train.build import make_budget

    config = TrainConfig(**{**BASE, **warmup, "seq_len": 32, **changes})  # not refused: not known yet
    accelerator = SimpleNamespace(num_processes=1, gradient_accumulation_steps=1)
    if isinstance(expected, int):
        assert make_budget(config, accelerator, start_step).max_steps == expected  # type: ignore[arg-type]
        return
    with pytest.raises(OptionError) as info:
        make_budget(config, accelerator, start_step)  # type: ignore[arg-type]
    assert info.value.option == "warmup_steps" and str(info.value) == expected


def test_a_restart_warmup_longer_than_the_run_is_refused_wherever_the_runs_length_becomes_known():
    """--max-steps 10 --restart-warmup-steps 11 was taken: the ramp, aimed at the schedule's value at the last step,
    climbed through the whole run and never met the schedule. Refused in one line as the config is built (and before
    the data is read, where --max-tokens makes the steps); the run's own length counts, wherever it starts in its
    schedule, and a ramp as long as the run is taken."""
    from types import SimpleNamespace

    from grow_cli.train.build import make_budget
    from grow_cli.train.schedule import Schedule

    ramp = Schedule("cosine", 50, warmup_steps=0, restart_step=40, restart_warmup_steps=11)
    schedule = Schedule("cosine", 50, warmup_steps=0)
    assert ramp.lr_factor(49) == pytest.approx(schedule.lr_factor(49) * 10 / 11)  # the premise: below it to the end
    with pytest.raises(OptionError) as info:
        TrainConfig(**{**BASE, "max_steps": 10, "schedule_offset": 40, "restart_warmup_steps": 11})
    assert info.value.option == "restart_warmup_steps" and str(info.value) == (
        "--restart-warmup-steps 11 outlasts this run of 10 steps, so the LR would never reach the schedule it ramps "
        "to: use at most 10 restart warmup steps or a larger --max-steps"
    )
    accelerator = SimpleNamespace(num_processes=1, gradient_accumulation_steps=1)
    tokens = {"max_steps": None, "max_tokens": 2560, "seq_len": 32, "schedule_offset": 40}  # 10 steps of 8 × 32
    config = TrainConfig(**{**BASE, **tokens, "restart_warmup_steps": 11})  # not known yet: not refused
    with pytest.raises(OptionError, match=r"^--restart-warmup-steps 11 outlasts this run of 10 steps \(what "):
        make_budget(config, accelerator, 40)  # type: ignore[arg-type]
    fits = TrainConfig(**{**BASE, **tokens, "restart_warmup_steps": 10})
    assert make_budget(fits, accelerator, 40).max_steps == 50  # type: ignore[arg-type]
    TrainConfig(**{**BASE, "max_steps": 10, "schedule_offset": 40, "restart_warmup_steps": 10})


def test_a_launcher_accumulation_below_one_is_refused_in_one_line():
    """ACCELERATE_GRADIENT_ACCUMULATION_STEPS=0, which accelerate's Accelerator takes as it is, made train-stage
    fail with a ZeroDivisionError in the catch-all line; `--grad-accum` set by the user still wins over it."""
    from types import SimpleNamespace

    from grow_cli.train.build import make_budget

    config = TrainConfig(**{**BASE, "seq_len": 32})
    with pytest.raises(UsageError, match=r"^ACCELERATE_GRADIENT_ACCUMULATION_STEPS=0: a run without --grad-accum "):
        make_budget(config, SimpleNamespace(num_processes=1, gradient_accumulation_steps=0))  # type: ignore[arg-type]
    given = TrainConfig(**{**BASE, "seq_len": 32, "grad_accum": 2})
    accelerator = SimpleNamespace(num_processes=1, gradient_accumulation_steps=0)
    assert make_budget(given, accelerator).grad_accum == 2  # type: ignore[arg-type]


def test_paths_are_text_or_path_like_and_held_as_paths():
    """What the annotations say (a type checker accepts `model="tiny"`) is what the class takes; `~` is the home
    folder, as in a shell."""
    hints = typing.get_type_hints(TrainConfig)
    for name in ("model", "out", "tokenizer", "cache_dir", "data", "resume"):
        assert str in typing.get_args(hints[name]) and os.PathLike[str] in typing.get_args(hints[name]), name
        assert {str, os.PathLike} <= set(field_types(TrainConfig)[name]), name
    config = TrainConfig(model=Path("m"), data=Path("d"), out="~/o", max_steps=1, tokenizer="t", cache_dir=Path("c"))
    assert (config.model, config.out, config.tokenizer, config.cache_dir) == (
        Path("m"),
        Path.home() / "o",
        Path("t"),
        Path("c"),
    )
    assert config.data == ["d"] and TrainConfig(**{**BASE, "data": ("a", Path("~/b"))}).data == [
        "a",
        f"{Path.home()}/b",
    ]


def test_a_config_is_frozen_and_its_copies_are_checked_again(tmp_path):
    """Assigning a field skipped every check (seq_len=1 trained into a NaN loss, out="x" failed deep inside);
    `dataclasses.replace` makes a checked copy instead."""
    config = TrainConfig(**BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seq_len = 1  # type: ignore[misc]
    assert dataclasses.replace(config, max_steps=7).max_steps == 7
    with pytest.raises(OptionError) as info:
        dataclasses.replace(config, seq_len=1)
    assert info.value.option == "seq_len"
    resumed = TrainConfig(**BASE, resume=tmp_path)  # a checkpoint folder as a Path
    assert resumed.resume == str(tmp_path)


def test_a_recipe_names_the_train_key_at_fault(tmp_path):
    (tmp_path / "m").mkdir()
    recipe = {
        "train": {"data": ["d"], "max_steps": 2},
        "members": [{"name": "a", "source": "m"}, {"name": "b", "grow": {"layers": 4}, "train": {"seq_len": 1}}],
    }
    (tmp_path / "family.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(UsageError, match=r"^recipe: members\[1\]\.train\.seq_len: --seq-len must be at least 2"):
        load_recipe(tmp_path / "family.yaml")


def test_a_report_to_name_that_is_no_tracker_is_named_as_such(monkeypatch):
    """`--report-to tensorbord` is a typo, not a package to install: the refusal lists the trackers accelerate knows
    instead of suggesting `pip install`; a known tracker that is not installed still says to install it."""
    from grow_cli.errors import GrowError
    from grow_cli.train.preflight import check_trackers

    with pytest.raises(
        GrowError, match=r"--report-to tensorbord: not a tracker accelerate knows \(one of .*tensorboard"
    ):
        check_trackers(["tensorbord"])
    monkeypatch.setattr("accelerate.tracking.get_available_trackers", lambda: [])
    with pytest.raises(GrowError, match=r"--report-to wandb: not installed here.*; pip install wandb,"):
        check_trackers(["wandb"])  # the package asked for, not another tracker's


def test_a_resume_path_that_is_a_file_is_named_as_a_file(tmp_path):
    """`--resume FILE` said "no such checkpoint folder" of a file that exists; a missing path still says so."""
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(OptionError, match=r"model.safetensors': is a file, not a checkpoint folder; give a folder "):
        TrainConfig(**{**BASE, "resume": str(file)})
    with pytest.raises(OptionError, match=r"missing': no such checkpoint folder; give a folder such as OUT/"):
        TrainConfig(**{**BASE, "resume": str(tmp_path / "missing")})


@pytest.mark.parametrize("resume", [" ", "step_10 "])
def test_a_missing_resume_folder_is_named_quoted(tmp_path, monkeypatch, resume):
    """A blank or a trailing space hid in the refusal: `--resume ' '` said "--resume  : no such checkpoint folder"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "step_10").mkdir()
    with pytest.raises(OptionError, match=f"^--resume {re.escape(repr(resume))}: no such checkpoint folder; give"):
        TrainConfig(**{**BASE, "resume": resume})


def test_apollo_sampling_named_at_its_default_without_apollo_is_refused():
    """`--apollo-sampling lvps` (its default) without Apollo did nothing without a word, where another value was
    refused; with Apollo it is taken."""
    with pytest.raises(OptionError, match=r"^--apollo-sampling needs --apollo-target-layers"):
        TrainConfig(**BASE).check_given({"apollo_sampling"})
    TrainConfig(**BASE, apollo_target_layers=2).check_given({"apollo_sampling"})
    TrainConfig(**BASE).check_given({"seq_len"})


@pytest.mark.parametrize("name, hint", [("seq_lenn", "; did you mean 'seq_len'?"), ("json_output", "")])
def test_check_given_refuses_a_name_that_is_no_field(name, hint):
    """A misspelt name passed its check unseen (`check_given({"apollo_samplin"})` refused nothing) and was kept in
    `given`, as the command's own options (--json) were, which are no setting of the run."""
    message = f"TrainConfig.check_given: {name!r} is no field of TrainConfig{hint}"
    with pytest.raises(OptionError, match=f"^{re.escape(message)}$"):
        TrainConfig(**BASE).check_given({name})


def test_a_tracker_named_twice_is_one_tracker():
    """`--report-to tensorboard,tensorboard` asked to install it twice (`pip install tensorboard tensorboard`)."""
    assert TrainConfig(**BASE, report_to=["tensorboard", "wandb", "tensorboard"]).report_to == ["tensorboard", "wandb"]
