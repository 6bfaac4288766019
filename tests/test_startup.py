"""What `grow` commands import: `inspect`, `expand --dry-run`, a depth expand that only copies bytes and a width expand
that draws nothing at random never import torch or transformers in grow's process (they cost seconds), and still give
the same answers as the planner does with transformers loaded. Each command runs in a fresh process, as a user runs
it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grow_cli.checkpoint.model_config import load_config
from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.growth.plan import build_plan, plan_summary
from grow_cli.growth.spec import GrowthSpec

# Runs `grow ARGS…` and then records which heavy modules the process imported.
RUN = """
import json, sys
from grow_cli.cli import main
report, sys.argv = sys.argv[1], ["grow", *sys.argv[2:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
with open(report, "w") as f:
    json.dump({"code": code, "imported": [m for m in ("torch", "transformers", "accelerate") if m in sys.modules]}, f)
"""


def grow(tmp_path: Path, *args) -> tuple[dict, str, str]:
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(report), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )
    return json.loads(report.read_text()), proc.stdout, proc.stderr


def test_inspect_imports_no_torch(tiny_checkpoints, tmp_path):
    result, stdout, _ = grow(tmp_path, "inspect", tiny_checkpoints("llama"), "--json")
    assert result == {"code": 0, "imported": []}
    assert json.loads(stdout)["num_parameters"] > 0


@pytest.mark.parametrize("method", ["stack", "identity"])
def test_dry_run_and_depth_expand_import_no_torch(tiny_checkpoints, tmp_path, method):
    src = tiny_checkpoints("llama")
    args = ("--layers", "6", "--depth-method", method)
    result, stdout, _ = grow(tmp_path, "expand", src, tmp_path / "never", *args, "--dry-run", "--json")
    assert result == {"code": 0, "imported": []}
    with CheckpointReader(src) as reader:  # the same plan, with transformers loaded here
        here = plan_summary(
            build_plan(load_config(src), reader.tensor_infos(), GrowthSpec(layers=6, depth_method=method)),
            with_tensors=True,
        )
    dry_run, here = json.loads(stdout), json.loads(json.dumps(here))
    assert dry_run.pop("estimated_peak_memory_bytes") > 0  # the run's, which the plan alone does not hold
    assert dry_run.pop("source")["shape"] == here.pop("source")  # the document's names for the plan's
    assert dry_run.pop("files") == {"bytes": here.pop("output_bytes"), "shards": here.pop("shards")}
    assert {key: dry_run[key] for key in here} == here
    result, _, _ = grow(tmp_path, "expand", src, tmp_path / "out", *args, "-q")
    assert result == {"code": 0, "imported": []}
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 6


WIDTHS = [("fpi", ()), ("aki", ("--dtype", "bf16")), ("hypercloning", ("--dtype", "fp16")), ("staged", ())]


@pytest.mark.parametrize(("method", "flags"), WIDTHS)
def test_a_width_expand_without_random_draws_imports_no_torch(tiny_checkpoints, tmp_path, method, flags):
    """Width maps, their float32 arithmetic and the casts to bf16 and fp16 run in NumPy (`checkpoint/arrays.py`):
    torch's import took a second before the first byte was written. (G_zero and HyperCloning's noise draw from
    torch's seeded generators, and import it.) The output is the one this process makes with torch loaded."""
    from grow_cli.growth.expand import expand

    src, args = tiny_checkpoints("llama"), ("--width-factor", "2", "--width-method", method, *flags)
    result, _, _ = grow(tmp_path, "expand", src, tmp_path / "out", *args, "-q")
    assert result == {"code": 0, "imported": []}
    spec = GrowthSpec(width_factor=2, width_method=method, dtype=flags[1] if flags else None)
    expand(src, tmp_path / "here", spec, quiet=True)
    shards = sorted((tmp_path / "here").glob("*.safetensors"))
    assert shards and all((tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes() for shard in shards)


def test_an_upcycling_dry_run_imports_no_torch(tiny_checkpoints, tmp_path):
    """The MoE config is built from transformers' answers through the torch-free child too (it imported torch and
    transformers' model registry in grow's process: ~3 s and ~250 MB for a dry run); the same config as here."""
    src = tiny_checkpoints("llama")
    result, stdout, _ = grow(tmp_path, "expand", src, tmp_path / "never", "--experts", "4", "--dry-run", "--json")
    assert result == {"code": 0, "imported": []}
    with CheckpointReader(src) as reader:
        here = build_plan(load_config(src), reader.tensor_infos(), GrowthSpec(experts=4))
    there = json.loads(stdout)["target_config"]
    assert there == json.loads(json.dumps(here.target_config)) and there["architectures"] == ["MixtralForCausalLM"]


def test_a_refused_config_is_refused_without_torch_too(tiny_copy, tmp_path):
    """transformers' validation still runs (in the child): a grown config it would refuse is one clear line, naming
    the source's config.json when the value at fault is the source's."""
    src = tiny_copy("llama")
    config = json.loads((src / "config.json").read_text())
    config["hidden_act"] = 5
    (src / "config.json").write_text(json.dumps(config))
    result, _, stderr = grow(tmp_path, "expand", src, tmp_path / "out", "--layers", "6", "--dry-run")
    assert result == {"code": 1, "imported": []}
    assert "source's config.json does not load in transformers: Field 'hidden_act' expected str" in stderr
    assert "Traceback" not in stderr
    # A real run checks the config while it writes the tensors: the same line, and nothing written or left behind.
    before = set(tmp_path.iterdir())
    result, _, stderr = grow(tmp_path, "expand", src, tmp_path / "out", "--layers", "6")
    assert result == {"code": 1, "imported": []}
    assert "source's config.json does not load in transformers: Field 'hidden_act' expected str" in stderr
    assert "Traceback" not in stderr
    assert {p.name for p in set(tmp_path.iterdir()) - before} == {"report-1.json"}


@pytest.mark.parametrize(
    ("argv", "starts"),
    [
        (["grow", "expand", "SRC", "OUT", "--layers", "8"], "background"),
        (["grow", "--debug", "expand", "SRC", "OUT", "--dry-run"], "urgent"),
        (["grow", "expand", "--help"], None),
        (["grow", "inspect", "expand"], "urgent"),  # a folder named expand
        (["grow", "inspect", "--help"], None),
        (["grow", "train-stage", "MODEL", "--data", "d", "--out", "o"], None),
        (["grow", "plan", "--target", "expand"], None),
    ],
)
def test_only_expand_and_inspect_start_the_transformers_child_before_parsing(monkeypatch, argv, starts):
    """`grow expand` and `grow inspect` start the config child before Typer parses their options
    (`__main__.start_config_child_early`), so that on a first run the child's import of transformers overlaps that
    parsing; no other command, and not `--help`. It is urgent (grow's own priority) where the command only waits
    for its answer, and background work beside a real expand's writing."""
    from grow_cli import __main__ as entry
    from grow_cli.arch import hf_config

    started = []
    monkeypatch.setattr(hf_config, "start_early", lambda urgent: started.append("urgent" if urgent else "background"))
    monkeypatch.setattr(sys, "argv", argv)
    entry.start_config_child_early()
    assert started == ([starts] if starts else [])
