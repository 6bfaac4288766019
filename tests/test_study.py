"""The study harness (docs/study): every preset's arms expand into `grow family` recipes that load, share one
baselines folder and differ from the template only where the arm says; the aggregator's arithmetic and wording.
No training here: the harness runs real families, which is the study itself (and its smoke run)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from grow_cli.errors import UsageError
from grow_cli.family.quality import member_saving
from grow_cli.family.recipe import load_recipe

STUDY = Path(__file__).resolve().parent.parent / "docs" / "study"
sys.path.insert(0, str(STUDY))

import aggregate  # noqa: E402
import study  # noqa: E402

PRESETS = sorted(p.stem for p in (STUDY / "presets").glob("*.yaml"))


def _data(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("text")
    return {"corpus": str(tmp_path / "corpus"), "tokenizer": str(tmp_path / "tok"), "token_cache": str(tmp_path / "t")}


@pytest.mark.parametrize("name", PRESETS)
def test_every_arm_is_a_valid_recipe_sharing_one_baselines_folder(name, tmp_path):
    preset = study.load_preset(name)
    assert {"cpu", "gpu"} <= set(PRESETS)
    data, run_dir = _data(tmp_path), tmp_path / "run"
    runs = study.planned_runs(preset, None)
    assert runs[0] == (next(iter(preset["arms"])), 0)
    assert [seed for _, seed in runs] == sorted(seed for _, seed in runs)  # every arm's first seed first
    for arm, seed in runs:
        recipe = study.arm_recipe(preset, arm, seed, data, run_dir, 1.0)
        path = tmp_path / f"{arm}-s{seed}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        loaded = load_recipe(path)
        assert loaded.seed == seed and loaded.baselines and loaded.baselines_dir == run_dir / "baselines"
        assert loaded.out == run_dir / f"{arm}-s{seed}" and loaded.train["data"] == [data["corpus"]]
        assert [m.name for m in loaded.members] == [m["name"] for m in preset["family"]["members"]]
    # main arms run with at least two seeds
    assert all(len(preset["arms"][arm]["seeds"]) >= 2 for arm in ("auto-lr", "fixed-lr"))


def test_an_arm_overlays_only_what_it_names(tmp_path):
    preset = study.load_preset("cpu")
    data, run_dir = _data(tmp_path), tmp_path / "run"
    base = study.arm_recipe(preset, "auto-lr", 0, data, run_dir, 1.0)
    fpi = study.arm_recipe(preset, "fpi-width", 0, data, run_dir, 1.0)
    assert fpi["members"][2]["grow"] == {"width_factor": 2, "width_method": "fpi"}  # null removed the noise
    assert fpi["members"][:2] == base["members"][:2] and fpi["train"] == base["train"]
    fixed = study.arm_recipe(preset, "fixed-lr", 1, data, run_dir, 1.0)
    assert fixed["train"]["max_lr"] == 3e-3 and fixed["seed"] == 1
    smoke = study.arm_recipe(preset, "auto-lr", 0, data, run_dir, 0.05)
    assert smoke["members"][0]["train"]["max_tokens"] == round(base["members"][0]["train"]["max_tokens"] * 0.05)
    assert study.run_dir_for(preset, tmp_path, 0.05).name == "cpu-x0.05"


def test_overlay_merges_replaces_and_removes():
    base = {"a": {"x": 1, "y": 2}, "b": [1], "c": 3}
    assert study.overlay(base, {"a": {"y": None, "z": 3}, "b": [2]}) == {"a": {"x": 1, "z": 3}, "b": [2], "c": 3}
    assert base == {"a": {"x": 1, "y": 2}, "b": [1], "c": 3}  # not modified


def test_a_bad_preset_is_one_clear_error(tmp_path):
    path = tmp_path / "p.yaml"
    head = {"name": "p", "description": "d", "data": {"sources": [], "vocab_size": 8}}
    path.write_text(yaml.safe_dump({**head, "family": {"members": [{"name": "m1"}]}, "arms": {"a": {}}}))
    with pytest.raises(UsageError, match="arm 'a' needs `seeds"):
        study.load_preset(str(path))
    path.write_text(
        yaml.safe_dump(
            {**head, "family": {"members": [{"name": "m1"}]}, "arms": {"a": {"seeds": [0], "members": {"m9": {}}}}}
        )
    )
    with pytest.raises(UsageError, match="unknown member 'm9'"):
        study.load_preset(str(path))
    with pytest.raises(UsageError, match="no preset 'tpu'"):
        study.load_preset("tpu")
    # a malformed preset file was a traceback (KeyError, yaml's ParserError, TypeError); now one line each
    for text, says in [
        ("name: p\n", r"missing key\(s\) arms, data, description, family"),
        ("name: p\narms: {a: {seeds: [0]}\n", r"not valid YAML \(line 3\)"),
        ("- 1\n", "expected a mapping"),
        (yaml.safe_dump({**head, "family": {"members": "m1"}, "arms": {"a": {"seeds": [0]}}}), "list of `members:`"),
        (yaml.safe_dump({**head, "family": {"members": [{"name": "m1"}]}, "arms": ["a"]}), "`arms:` must map"),
    ]:
        path.write_text(text)
        with pytest.raises(UsageError, match=says):
            study.load_preset(str(path))


def test_spread_over_seeds_and_the_measured_reason():
    curve = [(1e12, 6.0), (2e12, 5.0), (3e12, 4.5)]
    exact = [member_saving(1.5e12, 5.0, curve), member_saving(1.0e12, 5.0, curve)]
    assert aggregate._spread(exact) == "37.5% (25.0% to 50.0%; 2 seeds)"
    assert (
        aggregate._spread([exact[0], member_saving(1e12, 4.0, curve)]) == "25.0%, > 66.6%"
    )  # a lower bound of 66.67%, shown as one
    dearer = member_saving(3e12, 5.0, curve)
    copies = {"duplicated_ffn_units": 0.5, "loss_before_growth": 5.5, "loss_after_growth": 5.5, "epochs": 0.1}
    assert "exact copies" in aggregate._reason(dearer, copies)
    jump = {"duplicated_ffn_units": 0.0, "loss_before_growth": 5.5, "loss_after_growth": 6.5, "epochs": 0.1}
    assert "lost 1.00 nats" in aggregate._reason(dearer, jump)
    shock = {**jump, "loss_after_growth": 5.5, "first_eval_loss": 5.8}
    assert "optimizer restarts" in aggregate._reason(dearer, shock) and "undid 0.30 nats" in aggregate._reason(
        dearer, shock
    )
    tail = {**jump, "loss_after_growth": 5.5, "start_step": 245, "mean_lr_share": 0.2}
    assert "continued the previous member's schedule from step 245" in aggregate._reason(dearer, tail)
    assert "no single cause" in aggregate._reason(dearer, {**tail, "start_step": 0})  # a fresh schedule's stage


def test_duplicated_ffn_units_counts_units_that_copy_another(tmp_path):
    import torch
    from safetensors.torch import save_file

    w = torch.randn(8, 4)
    w[6:] = w[:2]  # units 6 and 7 copy 0 and 1: four of eight units have a twin
    save_file(
        {"model.layers.0.mlp.up_proj.weight": w, "model.layers.0.mlp.down_proj.weight": w.T.contiguous()},
        tmp_path / "model.safetensors",
    )
    assert aggregate.duplicated_ffn_units(tmp_path) == 0.5
    assert aggregate.duplicated_ffn_units(tmp_path / "nothing") is None


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "inf", ""])
def test_a_scale_that_trains_nothing_is_one_clear_error(text, monkeypatch, capsys, tmp_path):
    # 0 and -1 ran every stage on one token (budgets are clamped to 1) into runs/cpu-x0 or cpu-x-1; abc printed
    # argparse's usage block
    monkeypatch.setattr(sys, "argv", ["study.py", "run", "--scale", text, "--work", str(tmp_path)])
    with pytest.raises(SystemExit) as stopped:
        study.main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --scale {text}: expected a positive number, such as 0.02 for a smoke run"]
    assert study.checked_scale("0.02") == 0.02 and study.checked_scale("1") == 1.0


OPTIONS = {
    "prepare": {"--preset", "--work", "--text"},
    "run": {"--preset", "--work", "--arms", "--scale", "--quiet"},
    "report": {"--preset", "--work", "--arms", "--scale"},
}


@pytest.mark.parametrize("command", OPTIONS)
def test_each_subcommand_shows_and_accepts_only_the_options_it_uses(command, capsys):
    # every option was shown and accepted under every subcommand: `prepare --help` listed --arms, --scale and
    # --quiet, which prepare ignored, and `run --text DIR` ran on without the text
    with pytest.raises(SystemExit) as shown:
        study.arguments([command, "--help"])
    assert shown.value.code == 0
    assert set(re.findall(r"--[a-z]+", capsys.readouterr().out)) - {"--help"} == OPTIONS[command]
    for other in set().union(*OPTIONS.values()) - OPTIONS[command]:
        with pytest.raises(SystemExit) as refused:
            study.arguments([command, other, "x"])
        assert refused.value.code == 2
        assert f" {command}: error: unrecognized arguments: {other}" in capsys.readouterr().err


def test_every_documented_command_line_parses():
    documents = [study.__doc__, (STUDY / "README.md").read_text(), (STUDY / "results" / "cpu" / "study.md").read_text()]
    lines = [line for text in documents for line in re.findall(r"python docs/study/study\.py ([^#`\n]+)", text)]
    assert len(lines) >= 10
    for line in lines:
        args = study.arguments(shlex.split(line))
        assert args.command in OPTIONS


@pytest.mark.parametrize(
    ("stop", "code", "line"),
    [
        (KeyboardInterrupt, 130, "interrupted (Ctrl-C); run the same study.py command again"),
        ("terminated", 143, "terminated (SIGTERM); run the same study.py command again"),
        ("interrupted", 130, "interrupted (Ctrl-C) training m2, checkpoint saved; run the same study.py command"),
    ],
)
def test_an_interrupted_run_says_in_one_line_how_to_continue(stop, code, line, monkeypatch, capsys, tmp_path):
    # a Ctrl-C outside a training stage (the family's plots) printed a 30-line traceback and exited 1; SIGTERM
    # killed the harness without unwinding; a stopped stage's advice named `grow family`, not the study's command
    import signal

    from grow_cli.errors import Interrupted
    from grow_cli.signals import Terminated

    raised = {
        KeyboardInterrupt: KeyboardInterrupt(),
        "terminated": Terminated(),
        "interrupted": Interrupted(signal.SIGINT, "training m2, checkpoint saved", "Run grow family again"),
    }[stop]

    def stopped(*_, **__):
        raise raised

    monkeypatch.setattr(study, "run", stopped)
    monkeypatch.setattr(sys, "argv", ["study.py", "run", "--work", str(tmp_path)])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exited:
            study.main()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL or handler is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert exited.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line) and "grow family" not in err[0]


def _finished_family(run_dir: Path, arm: str, seed: int, saving: float, members=("m1", "m2")) -> Path:
    """A family folder as `grow family` leaves it finished (family.json, member.json) with cached diagnostics: enough
    for the study's whole report (its members were never trained, so their curves are empty)."""
    import json

    out = run_dir / f"{arm}-s{seed}"
    (run_dir / "recipes").mkdir(parents=True, exist_ok=True)
    (run_dir / "recipes" / f"{arm}-s{seed}.yaml").write_text(
        yaml.safe_dump({"members": [{"name": m} for m in members]})
    )
    for m in members:
        (out / m).mkdir(parents=True)
        (out / m / "member.json").write_text(json.dumps({"name": m, "train": {"tokens": 100, "step": seed}}))
    final = {m: str(out / m / "trained") for m in members}
    entry = {"saving": saving, "bound": "="}
    family = {
        "equal_quality": {
            "family": entry,
            "members": [{**entry, "name": m, "scratch_final_loss": 5.0 - i} for i, m in enumerate(members[1:])],
        },
        "members": [{"name": m, "train": {"tokens": 100, "step": seed}, "final": final[m]} for m in members],
        "ledger": {
            "progressive_flops": 2e12,
            "members": [
                {"name": m, "final_eval_loss": 6.0 - i, "progressive_flops": 1e12} for i, m in enumerate(members)
            ],
        },
        "consistency": [
            {"pair": f"{a}→{b}", "grown": {"a": final[a], "b": final[b], "kl_a_b": 0.1}, "independent": None}
            for a, b in zip(members, members[1:], strict=False)
        ],
    }
    (out / "family.json").write_text(json.dumps(family))
    made = [[m, {"tokens": 100, "step": seed}] for m in members]
    rows = [{"name": m, "max_lr": 1e-3} for m in members]
    diag = {"format": aggregate.DIAGNOSTICS_FORMAT, "made": made, "members": rows}
    (out / "study-diagnostics.json").write_text(json.dumps(diag))
    return out


PREPARED = {
    "tokens": 1,
    "documents": 1,
    "corpus": "c",
    "vocab_size": 8,
    "train_tokens": 1,
    "eval_tokens": 1,
    "seq_len": 8,
    "missing": [],
}


def _preset() -> dict:
    """A preset of two arms, `a` (its headline: the first) and `b`, over a two-member family."""
    return {
        "name": "p",
        "description": "d",
        "family": {"members": [{"name": "m1"}, {"name": "m2"}]},
        "path": "p.yaml",
        "arms": {"a": {"seeds": [0, 1]}, "b": {"seeds": [0]}},
    }


def test_unfinished_runs_are_named_never_counted_and_a_report_needs_one_finished(tmp_path):
    # an interrupted run, or one finished once and now being re-trained, counted as finished from its stale
    # family.json; the headline gave one seed's figure as the arm's without a word; a report before any run
    # wrote an empty report and exited 0
    import json

    preset = _preset()
    planned = [("a", 0), ("a", 1), ("b", 0)]
    with pytest.raises(UsageError, match=r"no finished run in .* run `python docs/study/study.py run --preset p"):
        aggregate.write_study_report(preset, tmp_path, planned, PREPARED, 1.0)
    assert not (tmp_path / "report").exists()

    _finished_family(tmp_path, "a", 0, 0.3)
    stale = _finished_family(tmp_path, "a", 1, 0.5)
    (stale / "m2" / "member.json").write_text(json.dumps({"name": "m2", "train": {"tokens": 100, "step": 9}}))
    started = _finished_family(tmp_path, "b", 0, 0.4)
    (started / "family.json").unlink()
    runs = aggregate.collect(tmp_path, planned + [("c", 0)])
    assert [r.get("state") for r in runs] == [None, "incomplete", "incomplete", "not run"]
    headline = aggregate._headline(preset, runs, ["a", "b"])
    assert "30.0% (finished seeds only: seed 1 incomplete)" in headline
    table = aggregate._results_table(preset, runs, ["a", "b", "c"])
    assert table[2] == "| a | 30.0% | 30.0% | 0 (seed 1 incomplete: not counted) |"
    assert table[3].startswith("| b | seed 0 incomplete | —") and table[4].startswith("| c | seed 0 not run | —")


def test_diagnostics_of_a_member_trained_again_are_measured_again(tmp_path, monkeypatch):
    # the cache held the first making's measurements (loss before/after growth, copies, epochs) for good, so a
    # member deleted and re-trained (as the README's re-run did) was reported with its old diagnostics
    import json

    import grow_cli.family.recipe

    out = _finished_family(tmp_path, "a", 0, 0.3)
    cached = [{"name": "m1", "max_lr": 1e-3}, {"name": "m2", "max_lr": 1e-3}]
    assert aggregate.diagnostics(out, tmp_path / "recipes" / "a-s0.yaml") == cached

    class Measured(Exception):
        pass

    def measure(*_):
        raise Measured

    monkeypatch.setattr(grow_cli.family.recipe, "load_recipe", measure)
    family = json.loads((out / "family.json").read_text())
    family["members"][1]["train"] = {"tokens": 100, "step": 7}  # m2 trained again, its report written again
    (out / "family.json").write_text(json.dumps(family))
    with pytest.raises(Measured):
        aggregate.diagnostics(out, tmp_path / "recipes" / "a-s0.yaml")


def _killed_writing(monkeypatch, name: str) -> None:
    """From now on, writing a file named `name` (or a temporary file beside it for it) writes half its text, then
    the process is interrupted — as a kill mid-write would leave it."""
    write_text = Path.write_text

    def half(self, text, *args, **kwargs):
        if name in self.name:
            write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise KeyboardInterrupt
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half)


@pytest.mark.parametrize("name", ["study.md", "study.json"])
def test_a_report_killed_mid_write_leaves_the_previous_one_whole(name, tmp_path, monkeypatch):
    # study.md and study.json were written in place: a run killed mid-write left half a report
    _finished_family(tmp_path, "a", 0, 0.3)
    planned = [("a", 0)]
    aggregate.write_study_report(_preset(), tmp_path, planned, PREPARED, 1.0)
    report = tmp_path / "report"
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    _killed_writing(monkeypatch, name)
    with pytest.raises(KeyboardInterrupt):
        aggregate.write_study_report(_preset(), tmp_path, planned, PREPARED, 1.0)
    assert {p.name: p.read_bytes() for p in report.iterdir()}[name] == before[name]
    assert sorted(p.name for p in report.iterdir()) == sorted(before)  # no temporary file left either


def test_timings_killed_mid_write_are_left_whole(tmp_path, monkeypatch):
    # timings.json was written in place after every family: a kill then left it truncated, and every later run and
    # report stopped on a JSONDecodeError traceback
    import json

    import grow_cli.family.recipe
    import grow_cli.family.run

    preset = study.load_preset("cpu")
    monkeypatch.setattr(study, "_prepared", lambda *_: _data(tmp_path))
    monkeypatch.setattr(grow_cli.family.recipe, "load_recipe", lambda path: path)
    monkeypatch.setattr(grow_cli.family.run, "run_family", lambda *_, **__: {"status": "done"})
    run_dir = study.run_dir_for(preset, tmp_path, 1.0)
    run_dir.mkdir(parents=True)
    (run_dir / "timings.json").write_text(json.dumps({"auto-lr-s0": 60.0}))
    _killed_writing(monkeypatch, "timings.json")
    with pytest.raises(KeyboardInterrupt):
        study.run(preset, tmp_path, arms=["auto-lr"], scale=1.0, quiet=True)
    assert json.loads((run_dir / "timings.json").read_text()) == {"auto-lr-s0": 60.0}
    assert sorted(p.name for p in run_dir.iterdir()) == ["recipes", "timings.json"]


def test_the_headline_arm_is_the_presets_first_and_no_other_arm_is_called_so(tmp_path):
    # with --arms b the report said "In the headline arm (b)", b being merely the first arm asked for; with
    # --arms b,a it gave b's figure as the headline, not a's
    import json

    _finished_family(tmp_path, "a", 0, 0.3)
    _finished_family(tmp_path, "b", 0, 0.4)
    preset = _preset()
    assert aggregate.headline_arm(preset) == "a"
    runs = aggregate.collect(tmp_path, [("b", 0), ("a", 0)])
    assert aggregate._headline(preset, runs, ["b", "a"]).startswith(
        "In the headline arm (a), growing the family cost 30.0%"
    )
    path = aggregate.write_study_report(preset, tmp_path, [("b", 0)], PREPARED, 1.0)
    said = "In arm b (the preset's headline arm, a, is not in this report), growing the family cost 40.0%"
    assert f"**{said}" in path.read_text() and "headline arm (b)" not in path.read_text()
    assert json.loads((path.parent / "study.json").read_text())["headline"].startswith(said)
    runs = aggregate.collect(tmp_path, [("c", 0)])
    assert aggregate._headline(preset, runs, ["c"]).startswith("No run of arm c (the preset's headline arm, a,")


def test_an_error_about_the_text_names_the_option_given(tmp_path, monkeypatch, capsys):
    # prepare's errors about its --text folder named `--data`, and about the preset's text field `--text-field`:
    # options of grow train-stage that the study does not have
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "a.jsonl").write_text('{"body": "words"}\n')
    for text, says in [
        ("absent", f"error: --text {str(tmp_path / 'absent')!r}: no such file or folder"),
        ("records", f"error: {tmp_path / 'records' / 'a.jsonl'}:1: no text field 'text'; set the preset's text_field"),
    ]:
        argv = ["study.py", "prepare", "--text", str(tmp_path / text), "--work", str(tmp_path / "work")]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as refused:
            study.main()
        assert refused.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(says) and "--data" not in err[-1]


def test_the_report_writes_paths_relative_to_the_checkout(tmp_path, monkeypatch):
    # study.md and study.json held the absolute paths of the machine that ran the study (/work/main/docs/study/work/…)
    import json

    monkeypatch.setattr(aggregate, "CHECKOUT", tmp_path)
    run_dir, data = tmp_path / "work" / "runs" / "p", tmp_path / "work" / "data"
    _finished_family(run_dir, "a", 0, 0.3)
    prepared = {**PREPARED, "corpus": str(data / "corpus"), "written": {"folder": "/elsewhere/text"}}
    path = aggregate.write_study_report(_preset(), run_dir, [("a", 0)], prepared, 1.0)
    report, document = path.read_text(), (path.parent / "study.json").read_text()
    assert str(tmp_path) not in report and str(tmp_path) not in document
    assert "documents (work/data/corpus)" in report and "- recipes: `work/runs/p/recipes`" in report
    run = json.loads(document)["runs"][0]
    assert run["out"] == "work/runs/p/a-s0" and run["consistency"][0]["grown"]["a"] == "work/runs/p/a-s0/m1/trained"
    assert json.loads(document)["prepared"]["written"] == {"folder": "/elsewhere/text"}  # outside the checkout


@pytest.mark.parametrize("folder", sorted(p.name for p in (STUDY / "results").iterdir()))
def test_the_committed_report_holds_no_absolute_path(folder):
    import json

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    results = STUDY / "results" / folder
    assert not [s for s in strings(json.loads((results / "study.json").read_text())) if Path(s).is_absolute()]
    assert not re.findall(r"[\s(`](?:/[\w.-]+){2,}", (results / "study.md").read_text())


def test_prepare_fits_the_tokenizer_again_when_the_text_changes(tmp_path, monkeypatch, capsys):
    # prepare says which corpora are missing and how to install them; once installed, the next prepare wrote them
    # into the corpus but kept the tokenizer fitted without them (it was fitted again only for another corpus folder
    # or vocabulary): 13.5M tokens where a tokenizer fitted on all of it gives 11.2M
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    argv = ["study.py", "prepare", "--text", str(text), "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    vocab = tmp_path / "work" / "data" / "tokenizer" / "tokenizer.json"

    def prepared_vocab() -> dict[str, int]:
        study.main()
        return json.loads(vocab.read_text())["model"]["vocab"]

    assert "Ġzyxwvut" not in prepared_vocab()
    assert prepared_vocab() == prepared_vocab()  # nothing changed: kept (the token cache stays valid)
    (text / "b.txt").write_text("zyxwvut qponm zyxwvut qponm\n" * 500)
    assert "Ġzyxwvut" in prepared_vocab()


def test_a_report_of_some_arms_gives_the_command_that_ran_them(tmp_path):
    # a report of `run --arms auto-lr` said its command was `run --preset cpu`, which runs every arm
    _finished_family(tmp_path, "b", 0, 0.4)
    some = aggregate.write_study_report(_preset(), tmp_path, [("b", 0)], PREPARED, 1.0).read_text()
    assert "then `python docs/study/study.py run --preset p --arms b`" in some
    _finished_family(tmp_path, "a", 0, 0.3)
    every = aggregate.write_study_report(_preset(), tmp_path, [("a", 0), ("b", 0)], PREPARED, 0.5).read_text()
    assert "then `python docs/study/study.py run --preset p --scale 0.5`" in every


def test_the_pages_quote_the_committed_headline_figures():
    """README.md and docs/study/README.md quote the CPU study's headline arm — its family saving and its largest
    member's, each with its range over seeds — from the committed report (results/cpu/study.md): a study run again
    without the pages following fails here, as a stale figure would otherwise stand in the README's first paragraph."""
    row = next(
        line
        for line in (STUDY / "results" / "cpu" / "study.md").read_text().splitlines()
        if line.startswith("| auto-lr |")
    )
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    family, largest = cells[1], cells[-2]  # the family figure and the last (largest) member's
    figures = [re.findall(r"-?\d+\.\d+%", cell) for cell in (family, largest)]
    assert all(len(f) == 3 for f in figures), row  # a figure and its range over seeds
    for page in (STUDY.parent.parent / "README.md", STUDY / "README.md"):
        text = page.read_text().replace("−", "-").replace("+", "")
        quoted = [figures[0][0], *figures[1]]  # (the README rounds the family's range)
        assert all(figure in text for figure in quoted), (page.name, quoted)


def test_the_study_page_quotes_every_arms_committed_figures():
    """docs/study/README.md's results table gives, for every arm of the committed CPU report (results/cpu/study.md),
    its family saving and its largest member's, each with its range over seeds or its bound: a study run again
    without the table following fails here, as only the headline arm's figures were checked before."""
    report = (STUDY / "results" / "cpu" / "study.md").read_text().split("## Saving at equal quality")[1]
    table = report.split("\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| arm ")]
    page = [line for line in (STUDY / "README.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 7
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        arm, family, largest = cells[0], cells[1], cells[-2]
        quoted = next(line for line in page if re.search(rf"(?<![\w-]){re.escape(arm)}(?![\w-])", line.split("|")[1]))
        quoted = quoted.replace("−", "-").replace("+", "")
        figures = re.findall(r"(?:[>≤] )?-?\d+\.\d+%", family) + re.findall(r"-?\d+\.\d+%", largest)
        assert all(figure in quoted for figure in figures), (arm, figures, quoted)
