"""The benchmark scripts (benchmarks/) as docs/benchmarks.md and the other pages describe them: every command line a
page or a script's docstring shows parses with that script's own options, bench_memory.py reads the checkpoint
real_smollm2.py converts, and bench_expand.py's 70B-shaped index and its warm runs are what the page says. Nothing is
benchmarked here: a script's command line is parsed and its run replaced, and the index's shards are sparse."""

from __future__ import annotations

import argparse
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
from test_docs_commands import DOCS, FENCE, ROOT

BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_expand  # noqa: E402
import bench_memory  # noqa: E402
import real_smollm2  # noqa: E402

# `python benchmarks/NAME.py ARGS`, or with a checkout in front (`$CHECKOUT/benchmarks/…`): ARGS end at a comment,
# a backtick, the end of the line or the next command of a chain.
COMMAND = re.compile(r"python3? (?:\S*/)?benchmarks/(\w+\.py)([^\n`#;|&]*)")


def _commands(text: str) -> list[tuple[str, str]]:
    """(script, arguments) of the benchmark commands in `text`: its code blocks line by line, and its prose, where an
    inline code span may wrap onto the next line (Markdown renders the break as a space)."""
    prose = re.sub(r"`[^`]+`", lambda span: span.group(0).replace("\n", " "), FENCE.sub("", text))
    return [
        (script, words.strip()) for part in [*FENCE.findall(text), prose] for script, words in COMMAND.findall(part)
    ]


def _documented() -> list[tuple[str, str, str]]:
    """(where, script, arguments) of every benchmark command the pages and the scripts' docstrings show."""
    texts = [(str(page.relative_to(ROOT)), page.read_text()) for page in DOCS]
    texts += [(f"benchmarks/{path.name}", path.read_text()) for path in sorted(BENCHMARKS.glob("*.py"))]
    return [(where, script, words) for where, text in texts for script, words in _commands(text)]


class _Parsed(Exception):
    """Raised in place of running a benchmark, once its command line has parsed."""


def _parse(script: str, words: str, monkeypatch, capsys) -> argparse.Namespace:
    """`python benchmarks/SCRIPT WORDS` parsed by the script's own parser, its run replaced; fails the test with
    argparse's message where the shell would print one."""

    def parse_args(parser, args=None, namespace=None):
        parsed, unknown = parser.parse_known_args(args, namespace)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        raise _Parsed(parsed)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", [script, *shlex.split(words)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # a script may put its folder first
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    except _Parsed as parsed:
        return parsed.args[0]
    except SystemExit:
        pytest.fail(f"python benchmarks/{script} {words}: {capsys.readouterr().err.strip()}")
    pytest.fail(f"python benchmarks/{script} {words}: never parsed its command line")


@pytest.mark.parametrize("where, script, words", _documented())
def test_a_documented_benchmark_command_parses(where, script, words, monkeypatch, capsys):
    assert (BENCHMARKS / script).is_file(), f"{where}: no benchmarks/{script}"
    _parse(script, words, monkeypatch, capsys)


def test_the_pages_show_every_benchmark_that_times_grow():
    shown = {script for _, script, _ in _documented()}
    assert {"bench_expand.py", "bench_writes.py", "bench_memory.py", "bench_train.py", "bench_train_gpu.py"} <= shown


@pytest.mark.parametrize("words", ["--mode nosuch", "--repeats x", "--no-such-option"])
def test_a_wrong_benchmark_command_fails_the_check(words, monkeypatch, capsys):
    """The negative control: each of these fails in the shell, so the check must fail too."""
    with pytest.raises(pytest.fail.Exception):
        _parse("bench_expand.py", words, monkeypatch, capsys)


def test_bench_memory_reads_the_checkpoint_real_smollm2_converts(tmp_path, monkeypatch):
    # bench_memory.py read /tmp/ru/SmolLM2-135M unless told, which real_smollm2.py (converting into
    # bench-out/smollm2-135m) never writes: the page's `python benchmarks/bench_memory.py` stopped on "not a model
    # folder" after the conversion its message asked for
    class Past(Exception):
        """bench_memory went on past its source check, to generate its big model."""

    def generate(*_):
        raise Past

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bench_memory.py", "--work", str(tmp_path / "work")])
    with pytest.raises(SystemExit, match=r"run `python benchmarks/real_smollm2.py` here first"):
        bench_memory.main()
    converted = tmp_path / real_smollm2.WORK / real_smollm2.CONVERTED  # where real_smollm2.main converts into
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    monkeypatch.setattr(bench_memory, "generate_in_a_child", generate)
    with pytest.raises(Past):
        bench_memory.main()


def test_the_70b_shaped_index_is_the_one_the_page_describes(tmp_path):
    # docs/benchmarks.md: 80 layers, 70.6B parameters, 30 sparse shards, 141 GB apparent
    apparent = bench_expand.generate_sparse_70b(tmp_path)
    shards = sorted(tmp_path.glob("*.safetensors"))
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(shards) == 30 and round(apparent / 1e9) == 141 and round(apparent / 2 / 1e9, 1) == 70.6
    assert len({name.split(".")[2] for name in weight_map if name.startswith("model.layers.")}) == 80
    assert sum(p.stat().st_blocks * 512 for p in shards) < 10**7  # headers only: sparse


def test_every_timed_warm_run_of_the_index_finds_the_cache_filled(tmp_path, monkeypatch):
    # with --repeats 1 the "warm" figure was a first run into an empty warm cache, as cold as the cold one; with 3 its
    # runs listed one cold run among the warm ones (the page's "0.42, 0.44 s (a first 1.36 s)")
    asked: set[tuple[str, str]] = set()

    def run_child(command, env=None, **_):
        """1 s for a command's first run in a cache folder (cold), 0.1 s for any later one (warm)."""
        key = (env["GROW_CACHE_DIR"], " ".join(command))
        cold = key not in asked or not Path(env["GROW_CACHE_DIR"]).is_dir()
        asked.add(key)
        Path(env["GROW_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
        return (1.0 if cold else 0.1), 0

    monkeypatch.setattr(bench_expand, "run_child", run_child)
    result = bench_expand.bench_index(tmp_path, argparse.Namespace(repeats=1))
    assert result["inspect_cold_seconds"] == result["dry_run_cold_seconds"] == 1.0
    assert result["inspect_warm_seconds"] == result["dry_run_warm_seconds"] == 0.1
