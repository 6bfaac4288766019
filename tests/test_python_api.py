"""grow's Python API (`grow_cli/__init__.py`): every public name resolves to the library object it names, `import
grow_cli` stays cheap (no torch, transformers, typer or rich), a tiny model is grown and trained using top-level
names only, `expand` returns what `grow expand --json` prints, and docs/python.md's examples run as written."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from fake_hub import TOKEN, client_env, fake_hub_fixture  # noqa: F401 (fixture)
from tinylm import tiny_config, tiny_tokenizer, write_plays

import grow_cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "typer", "rich")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}


def _type_checking_imports() -> dict[str, str]:
    """{name: module} of the `if TYPE_CHECKING:` block in grow_cli/__init__.py: what type checkers and IDEs see."""
    tree = ast.parse((ROOT / "grow_cli" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    return {
        alias.asname or alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


def test_every_public_name_resolves_to_the_library_object():
    exports = grow_cli._EXPORTS
    assert len(grow_cli.__all__) == len(set(grow_cli.__all__)) == len(exports)
    assert set(grow_cli.__all__) == set(exports)
    assert _type_checking_imports() == exports  # the runtime table and the type checkers' view agree
    for name in grow_cli.__all__:
        value, library = getattr(grow_cli, name), getattr(importlib.import_module(exports[name]), name)
        if isinstance(library, type):
            assert value is library, name
        else:  # a function is served through process_state.public, which keeps what help() and IDEs show
            assert value.__wrapped__ is library and value is not library, name
            assert inspect.signature(value) == inspect.signature(library) and value.__doc__ == library.__doc__
        assert value.__doc__, f"{name} has no docstring"
    assert set(grow_cli.__all__) <= set(dir(grow_cli))
    errors = [n for n, module in exports.items() if module == "grow_cli.errors"]
    assert all(issubclass(getattr(grow_cli, n), grow_cli.GrowError) for n in errors)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        grow_cli.no_such_name  # noqa: B018
    from grow_cli import cache  # submodules still import through the package

    assert cache.__name__ == "grow_cli.cache"


def test_import_grow_cli_imports_nothing_heavy():
    """The CLI imports the package on every command: it loads none of its names, nor what they import."""
    code = (
        "import json, sys; import grow_cli; dir(grow_cli); grow_cli.GrowthSpec; grow_cli.inspect; grow_cli.plan; "
        f"grow_cli.GrowError; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert json.loads(out.stdout) == []


@pytest.fixture
def tiny_llama(tmp_path):
    """A 2-layer Llama with a real tokenizer, saved in several shards."""
    torch.manual_seed(0)
    folder = tmp_path / "tiny"
    tf.LlamaForCausalLM(tiny_config()).save_pretrained(folder, max_shard_size="20KB")
    tiny_tokenizer().save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 1
    return folder


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def test_grow_and_train_from_python(tiny_llama, tmp_path, monkeypatch):
    """`expand` with verify and `train_stage`, through top-level names only; the grown model loads in transformers
    and computes the source's logits (identity: exact), unlike a stacked copy (the negative control). Both report
    their output folder as an absolute path, whatever path they were given."""
    from accelerate.state import AcceleratorState

    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    source = _logits(tiny_llama, ids)
    report = grow_cli.expand(
        tiny_llama, tmp_path / "grown", grow_cli.GrowthSpec(layers=4, depth_method="identity"), verify=True
    )
    assert json.loads(json.dumps(report)) == report  # plain JSON: what `grow expand --json` prints
    assert report["out"] == str((tmp_path / "grown").resolve()) and report["target"]["layers"] == 4
    assert report["function_preserving"] and report["verify"]["passed"]
    torch.testing.assert_close(_logits(tmp_path / "grown", ids), source, rtol=1e-5, atol=1e-5)
    grow_cli.expand(str(tiny_llama), str(tmp_path / "stacked"), grow_cli.GrowthSpec(layers=4), quiet=True)
    assert not torch.allclose(_logits(tmp_path / "stacked", ids), source, atol=1e-3)

    AcceleratorState._reset_state(True)  # a fresh accelerate state, as a new Python process has
    config = grow_cli.TrainConfig(
        model=tmp_path / "grown",
        data=[str(write_plays(tmp_path / "plays", count=1, chars=20_000))],
        out="trained",  # relative to the working folder
        max_steps=2,
        seq_len=32,
        micro_batch_size=2,
        eval_batches=1,
        quiet=True,
    )
    monkeypatch.chdir(tmp_path)
    result = grow_cli.train_stage(config)
    assert json.loads(json.dumps(result)) == result
    assert result["out"] == str((tmp_path / "trained").resolve())
    assert result["record"] == str((tmp_path / "trained" / "grow.json").resolve())
    assert result["status"] == "done" and result["steps"] == 2 and result["final_eval_loss"] > 0
    trained = _logits(tmp_path / "trained", ids)
    assert trained.shape == source.shape and not torch.allclose(trained, source)
    assert [s["kind"] for s in json.loads((tmp_path / "trained" / "grow.json").read_text())["stages"]][-2:] == [
        "expand",
        "train",
    ]


def test_a_training_run_called_from_another_thread_trains(tiny_llama, tmp_path):
    """A web app's worker or a notebook's background thread may train: only the main thread may set signal
    handlers, and the run's stop-on-Ctrl-C handler made every such call a ValueError before its first step. The
    main thread's handlers are left as they were."""
    import signal
    import threading

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    config = grow_cli.TrainConfig(
        model=tiny_llama,
        data=write_plays(tmp_path / "plays", count=1, chars=20_000),
        out=tmp_path / "trained",
        max_steps=2,
        seq_len=32,
        micro_batch_size=2,
        eval_batches=1,
        quiet=True,
    )
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(_returned_or_raised(grow_cli.train_stage, config)))
    worker.start()
    worker.join()
    assert [r["status"] for r in results if isinstance(r, dict)] == ["done"], results
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def _returned_or_raised(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # a thread's exception would only be printed; the test reports it
        return exc


def test_a_spec_reused_after_its_mergekit_config_changed_grows_the_new_map(tiny_llama, tmp_path):
    """A `GrowthSpec` may be reused for any number of calls; one naming a mergekit config kept the layer map it
    read on its first call, so a notebook that edited the config and grew again got the old map, silently."""
    config, spec = tmp_path / "merge.yaml", grow_cli.GrowthSpec(mergekit_config=str(tmp_path / "merge.yaml"))

    def grown_layers(copies: int) -> int:
        one = f"{{sources: [{{model: {tiny_llama}, layer_range: [0, 2]}}]}}"  # the source's 2 layers, once
        config.write_text(f"merge_method: passthrough\nslices: [{', '.join([one] * copies)}]\n")
        return grow_cli.expand(tiny_llama, None, spec, dry_run=True)["target"]["layers"]

    assert [grown_layers(2), grown_layers(3)] == [4, 6]


def _less_place_and_time(report: dict) -> dict:
    return {key: value for key, value in report.items() if key not in ("out", "seconds", "write_seconds")}


def test_a_public_function_takes_its_commands_options_and_no_internal_ones():
    """docs/python.md: a keyword argument is its command's flag without the dashes. `expand(command=…)` (the command
    line grow.json records) and `push_folder(rerun=…)` (what a failed push says to run) were public keywords no
    command has: the commands set them around the call now (`lineage.command_line.recording`, `push_output`). The
    rest are docs/python.md's exceptions."""
    from grow_cli.commands import compare, expand, plan, push
    from grow_cli.commands import inspect as inspect_command

    documented = {"expand": {"spec"}, "inspect": {"write_definition_to"}, "push_folder": {"quiet"}}
    for function, command in [
        (grow_cli.expand, expand.expand),
        (grow_cli.inspect, inspect_command.inspect),
        (grow_cli.compare, compare.compare),
        (grow_cli.plan, plan.plan),
        (grow_cli.push_folder, push.push),
    ]:
        extra = set(inspect.signature(function).parameters) - set(inspect.signature(command).parameters)
        assert extra == documented.get(function.__name__, set()), function.__name__


def test_expand_returns_the_document_the_command_prints_and_writes_the_same_model(cli, tiny_llama, tmp_path):
    """docs/python.md: `grow_cli.expand(…)` is `grow expand … --json`, the options the flags under their Python
    names. One growth that exercises most of them — width, depth and upcycling in one pass, a seed, verified — and
    its dry run, both ways: the same report (less the output path and timings), byte-identical weights and config,
    and the same card and grow.json less the time and the command line a run from one records."""
    spec = grow_cli.GrowthSpec(width_factor=2, layers=4, depth_method="identity", experts=4, top_k=2, seed=3)
    flags = ["--width-factor", "2", "--layers", "4", "--depth-method", "identity", "--experts", "4", "--top-k", "2"]
    flags += ["--seed", "3"]
    via_cli, via_python = tmp_path / "cli" / "grown", tmp_path / "python" / "grown"
    printed = cli("expand", tiny_llama, via_cli, *flags, "--verify", "--json")
    assert printed.code == 0, printed.stderr
    returned = grow_cli.expand(tiny_llama, via_python, spec, verify=True, quiet=True)
    shown = json.loads(printed.stdout)
    assert (shown["out"], returned["out"]) == (str(via_cli), str(via_python))
    assert _less_place_and_time(shown) == _less_place_and_time(returned)
    assert shown["verify"]["passed"] is True and shown["moe"]["method"] == "upcycle"
    written = sorted(p.name for p in via_cli.iterdir())
    assert written == sorted(p.name for p in via_python.iterdir())
    for name in set(written) - {"grow.json", "README.md"}:
        assert (via_cli / name).read_bytes() == (via_python / name).read_bytes(), name
    cards = [(out / "README.md").read_text().splitlines() for out in (via_cli, via_python)]
    assert [line for line in cards[0] if "- command: `grow expand " not in line] == cards[1]
    stages = [json.loads((out / "grow.json").read_text())["stages"] for out in (via_cli, via_python)]
    for stage in (stages[0][-1], stages[1][-1]):
        del stage["created"]
    assert stages[0][-1].pop("command")[:2] == ["grow", "expand"] and stages[1][-1].pop("command") is None
    assert stages[0] == stages[1]

    planned = cli("expand", tiny_llama, tmp_path / "never", *flags, "--dry-run", "--json")
    assert planned.code == 0, planned.stderr
    assert json.loads(planned.stdout) == grow_cli.expand(tiny_llama, None, spec, dry_run=True)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("dry_run", [False, True])
def test_weights_only_on_a_model_folder_is_refused_alike_by_the_command_and_the_call(
    cli, tiny_llama, tmp_path, monkeypatch, dry_run
):
    """--weights-only leaves out a training checkpoint's optimizer state; a model folder has none, and the option
    did nothing there, silently. The command and the Python call refuse it in the same one line, writing nothing."""
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "out"
    result = cli("expand", tiny_llama, out, "--layers", "4", "--weights-only", *(["--dry-run"] if dry_run else []))
    assert result.code == 2 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: --weights-only applies only to a train-stage checkpoint")
    spec = grow_cli.GrowthSpec(layers=4, weights_only=True)
    with pytest.raises(grow_cli.OptionError) as info:
        grow_cli.expand(tiny_llama, out, spec, dry_run=dry_run)
    assert info.value.option == "weights_only" and result.stderr.strip() == f"error: {info.value}"
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("dry_run", [False, True], ids=["written", "dry-run"])
def test_weights_only_with_a_hub_id_is_refused_before_anything_is_downloaded(tmp_path, monkeypatch, dry_run):
    """grow downloads no training state from the Hub, so --weights-only with a Hub id can only be refused: before the
    weights (or the headers) are fetched, not after a download of many gigabytes."""
    from grow_cli.checkpoint import source
    from grow_cli.hub import headers

    def fetched(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(source, "_download", fetched)
    monkeypatch.setattr(headers, "mirror_headers", fetched)
    spec = grow_cli.GrowthSpec(layers=4, weights_only=True)
    with pytest.raises(grow_cli.OptionError, match="org/model has no training state") as info:
        grow_cli.expand("org/model", tmp_path / "out", spec, dry_run=dry_run)
    assert info.value.option == "weights_only" and not (tmp_path / "out").exists()


def test_a_missing_source_is_a_grow_error_for_a_path_too(tmp_path):
    """Python callers pass `Path`s: a missing one is refused in words, as a string is, not with an AttributeError."""
    for source in (tmp_path / "missing", str(tmp_path / "missing")):
        with pytest.raises(grow_cli.CheckpointError, match="does not exist"):
            grow_cli.inspect(source)
        with pytest.raises(grow_cli.CheckpointError, match="does not exist"):
            grow_cli.expand(source, tmp_path / "out", grow_cli.GrowthSpec(layers=4))


def test_train_data_given_as_one_path_is_that_path_not_its_letters():
    """`data="corpus"` or `data=Path("corpus")` is one path (as a recipe's `data: corpus` is), never the paths "c",
    "o", …; a list of `Path`s is a list of paths; anything else is refused in words."""
    for data in ("corpus", Path("corpus"), [Path("corpus")], ["corpus"]):
        assert grow_cli.TrainConfig(model="m", data=data, out="o", max_steps=1).data == ["corpus"]
    with pytest.raises(grow_cli.OptionError, match=r"TrainConfig.data: expected str, path or list, found 5 \(int\)"):
        grow_cli.TrainConfig(model="m", data=5, out="o", max_steps=1)
    with pytest.raises(grow_cli.OptionError, match=r"data: expected a path or a list of paths, found \[5\]"):
        grow_cli.TrainConfig(model="m", data=[5], out="o", max_steps=1)


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.slow
def test_the_python_docs_run_as_written(fake_hub, tmp_path):
    """docs/python.md's code blocks, in order, in an empty folder of a fresh process, with the Hub a local fake."""
    blocks = PYTHON_BLOCK.findall((ROOT / "docs" / "python.md").read_text())
    assert len(blocks) >= 9
    script = tmp_path / "docs_python.py"
    script.write_text("\n".join(blocks))
    work = tmp_path / "work"
    work.mkdir()
    env = {**client_env(fake_hub, fake_hub.home), "HF_TOKEN": TOKEN, "PYTHONPATH": _env()["PYTHONPATH"]}
    proc = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("llama 2 ")
    assert lines[2].startswith("4 ") and lines[2].endswith(" True")  # verified exact
    assert lines[4].startswith("done 10 ")
    assert lines[7] == "[]" and lines[8].startswith("done ") and lines[8].endswith("family.md")  # as the page says
    assert lines[-2].startswith("error: ") and "exists" in lines[-2]
    assert lines[-1].startswith("depth_factor 2 ")
    assert json.loads((work / "tiny-4L" / "config.json").read_text())["num_hidden_layers"] == 4
    assert (work / "family" / "family.md").is_file()
    assert "config.json" in fake_hub.files("me/tiny-4L-trained")
    made = ["tiny", "tiny-4L", "tiny-4L-trained", "family.yaml", "family", ".grow-cache"]  # the cache: as the page says
    assert sorted(p.name for p in work.iterdir()) == sorted(["plays", *made])


@pytest.mark.parametrize(
    "call, option, message",
    [
        (lambda t: grow_cli.inspect(None), "source", "inspect(source=…): expected str or path, found None"),
        (lambda t: grow_cli.inspect("m", foo=1), "foo", "inspect() has no option 'foo'"),
        (lambda t: grow_cli.expand("m", "o", None), "spec", "expand(spec=…): expected GrowthSpec, found None"),
        (lambda t: grow_cli.expand("m", "o", {"layers": 4}), "spec", "make one with grow_cli.GrowthSpec(layers=…"),
        (lambda t: grow_cli.expand("m", "o", layers=4), "layers", "expand() has no option 'layers'"),
        (lambda t: grow_cli.expand("m", None, SPEC), "out", "expand needs an output folder (out) unless dry_run"),
        (lambda t: grow_cli.expand("m", None, SPEC, dry_run="no"), "dry_run", "expected bool, found 'no' (str)"),
        (lambda t: grow_cli.expand("m", "o", SPEC, verfy=True), "verfy", "did you mean 'verify'?"),
        (lambda t: grow_cli.train_stage("m"), "config", "train_stage(config=…): expected TrainConfig, found 'm'"),
        (lambda t: grow_cli.compare("a", "b", ["d"], seq_len="64"), "seq_len", "expected int, found '64' (str)"),
        (lambda t: grow_cli.compare("a", "b", ["d"], batch_size=None), "batch_size", "expected int, found None"),
        (lambda t: grow_cli.compare("a", "b", None), "data", "compare(data=…): expected str, path or list"),
        (lambda t: grow_cli.plan("7B", "2T", seq_len="2048"), "seq_len", "plan(seq_len=…): expected int"),
        (lambda t: grow_cli.plan(True, "2T"), "target", "plan(target=…): expected int, float, str, path or dict"),
        (lambda t: grow_cli.plan("7B", "2T", familly=["1B"]), "familly", "did you mean 'family'?"),
        (lambda t: grow_cli.load_recipe(None), "path", "load_recipe(path=…): expected str or path, found None"),
        (lambda t: grow_cli.check_recipe("family.yaml"), "recipe", "make one with grow_cli.load_recipe(path)"),
        (lambda t: grow_cli.run_family(str(t / "f.yaml")), "recipe", "expected Recipe, found '"),
        (lambda t: grow_cli.run_family(grow_cli.load_recipe(t / "f.yaml"), quiet="yes"), "quiet", "found 'yes'"),
        (lambda t: grow_cli.push_folder("m", "me/m", token=5), "token", "push_folder(token=…): expected str"),
        (lambda t: grow_cli.push_folder(None, "me/m"), "folder", "push_folder(folder=…): expected str or path"),
    ],
)
def test_a_wrong_argument_to_a_public_function_is_one_option_error(call, option, message, tmp_path, monkeypatch):
    """Each was a TypeError, AttributeError or ValueError from inside (or, for `dry_run="no"`, a dry run): now one
    `OptionError` naming the argument, before anything is read or written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.yaml").write_text("train: {data: [d], max_steps: 1}\nmembers: [{name: a, source: m}]\n")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(grow_cli.OptionError) as info:
        call(tmp_path)
    assert info.value.option == option and message in str(info.value) and "\n" not in str(info.value)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "call, option, flag",
    [
        (lambda: grow_cli.compare("a", "b", ["d"], seq_len=1), "seq_len", "--seq-len must be at least 2"),
        (lambda: grow_cli.compare("a", "b", ["d"], batch_size=0), "batch_size", "--batch-size must be at least 1"),
        (lambda: grow_cli.compare("a", "b", ["d"], max_blocks=-1), "max_blocks", "--max-blocks must be 0 (all)"),
        (lambda: grow_cli.compare("a", "b", ["d"], eval_fraction=0.6), "eval_fraction", "--eval-fraction must be"),
        (lambda: grow_cli.plan("7B", "2T", seq_len=0), "seq_len", "--seq-len must be between 1 and"),
        (lambda: grow_cli.plan("7B", "2T", new_token_fraction=2.0), "new_token_fraction", "got 2.0"),
    ],
)
def test_an_option_out_of_its_range_is_an_option_error_naming_it(call, option, flag):
    """docs/python.md's own example, `--seq-len must be at least 2`, is compare's: it and compare's and plan's other
    range checks were plain `UsageError`s, with no `.option` to say which argument was wrong."""
    with pytest.raises(grow_cli.OptionError) as info:
        call()
    assert info.value.option == option and flag in str(info.value) and info.value.exit_code == 2


def test_a_recipes_compare_setting_out_of_range_is_named_by_its_key(tmp_path):
    """As a member's `train.seq_len` is named `members[1].train.seq_len`, the recipe's `compare:` names the key."""
    (tmp_path / "f.yaml").write_text("compare: {max_blocks: -1}\nmembers: [{name: a, source: m}]\n")
    with pytest.raises(grow_cli.UsageError, match=r"^recipe: compare\.max_blocks: --max-blocks must be 0 \(all\)"):
        grow_cli.load_recipe(tmp_path / "f.yaml")


SPEC = grow_cli.GrowthSpec(layers=4)


@pytest.mark.parametrize(
    "call, option",
    [
        (lambda src: grow_cli.expand(src, "", SPEC, force=True), "out"),
        (lambda src: grow_cli.inspect(""), "source"),
        (lambda src: grow_cli.compare(src, src, ""), "data"),
        (lambda src: grow_cli.compare(src, src, [src, ""]), "data"),
        (lambda src: grow_cli.compare(src, src, [src], cache_dir=""), "cache_dir"),
        (lambda src: grow_cli.TrainConfig(model=src, data=[src], out=""), "out"),
        (lambda src: grow_cli.TrainConfig(model=src, data=[""], out="o"), "data"),
    ],
)
def test_an_empty_path_is_refused_not_read_as_the_working_folder(call, option, tiny_llama, tmp_path, monkeypatch):
    """`""` is the working folder to the OS: `expand(src, os.environ.get("OUT", ""), spec, force=True)` replaced the
    folder the script ran in with the grown model, and `compare(a, b, "")` tokenized everything under it as data.
    The command line refuses an empty argument for this reason; the Python API now refuses it as well."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(grow_cli.OptionError) as info:
        call(str(tiny_llama))
    assert info.value.option == option and "found '' (an empty string, which names the working folder)" in str(
        info.value
    )
    assert [p.name for p in work.iterdir()] == ["notes.txt"]


def test_a_plan_target_given_as_a_config_dict_names_what_it_lacks():
    """`plan` documents a config dict with `num_parameters`; one without the shape keys the plan reads was a
    KeyError, a zero layer count a ZeroDivisionError."""
    for target, lacks in [
        ({"num_parameters": 7e9}, "num_hidden_layers, hidden_size, vocab_size"),
        (
            {"num_parameters": 7e9, "num_hidden_layers": 0, "hidden_size": 4096, "vocab_size": 32000},
            "num_hidden_layers",
        ),
        ({"num_parameters": "7B", "num_hidden_layers": 32, "hidden_size": 4096, "vocab_size": 32000}, "num_parameters"),
    ]:
        with pytest.raises(grow_cli.UsageError, match=f"it lacks a valid {lacks}"):
            grow_cli.plan(target, "2T")
    shape = {"num_parameters": 7e9, "num_hidden_layers": 32, "hidden_size": 4096, "vocab_size": 32000}
    assert grow_cli.plan(shape, "2T")["stacking"]["small_model"]["num_hidden_layers"] == 8


def test_a_path_beginning_with_a_tilde_is_in_the_home_folder_for_every_function(tiny_llama, tmp_path, monkeypatch):
    """docs/python.md: `~` is the home folder, as in a shell. `compare("~/a", …)`, `push_folder("~/out", …)` and
    `load_recipe("~/family.yaml")` were refused as missing, and `compare(…, cache_dir="~/cache")` and
    `load_recipe(path, "~/family")` made a folder named `~` in the working folder."""
    home, work = tmp_path, tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the push stops at the network, after finding the folder
    monkeypatch.chdir(work)
    write_plays(home / "plays")
    metrics = grow_cli.compare("~/tiny", "~/tiny", ["~/plays"], seq_len=16, max_blocks=2, cache_dir="~/cache")
    assert metrics["a"] == str(tiny_llama) and (home / "cache").is_dir()
    (home / "f.yaml").write_text("train: {data: [plays], max_steps: 1}\nmembers: [{name: a, source: tiny}]\n")
    assert grow_cli.load_recipe("~/f.yaml").out == home / "f"
    assert grow_cli.load_recipe(home / "f.yaml", "~/family").out == home / "family"
    with pytest.raises(grow_cli.HubError, match="needs the network"):
        grow_cli.push_folder("~/tiny", "me/tiny", token=TOKEN)
    assert list(work.iterdir()) == []
