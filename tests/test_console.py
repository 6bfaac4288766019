"""What grow writes to the terminal: the one byte-size formatter every command prints with (decimal units, as
`--shard-size 5GB` and the Hub count), the one way a message counts things ("1 document", "2 documents"), and the
spinner that covers a wait without a total."""

from __future__ import annotations

import pytest

from grow_cli.console import format_bytes
from grow_cli.errors import counted


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 kB"),
        (20_480, "20.5 kB"),
        (999_499, "999 kB"),
        (999_500, "1 MB"),  # rounds into the next unit rather than printing "1e+03 kB"
        (1_300_000, "1.3 MB"),
        (5 * 10**9, "5 GB"),
        (4_970_000_000, "4.97 GB"),
        (123_456_789_012, "123 GB"),
        (5 * 10**15, "5000 TB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 documents"), (1, "1 document"), (2, "2 documents"), (1_207_909, "1,207,909 documents")],
)
def test_a_count_agrees_with_its_noun(n, text):
    """train-stage's data line said "1,207,909 tokens in 1 documents"; every count-based message goes through
    `counted`, which also separates thousands as the numbers beside it do."""
    assert counted(n, "document") == text


@pytest.mark.parametrize("quiet", [False, True])
def test_verify_says_what_it_is_doing_on_a_terminal(tiny_checkpoints, tmp_path, monkeypatch, quiet):
    """After the growing bar reaches 100%, --verify runs two models with no total to show: a spinner says so on a
    terminal (once nothing did, and the wait looked like a hang); --quiet keeps stderr silent."""
    import io

    from rich.console import Console

    import grow_cli.console as console
    from grow_cli.growth.expand import expand
    from grow_cli.growth.spec import GrowthSpec

    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    monkeypatch.setattr(console, "err", terminal)
    expand(
        tiny_checkpoints("llama"),
        tmp_path / "out",
        GrowthSpec(layers=6, depth_method="identity"),
        verify=True,
        quiet=quiet,
    )
    shown = terminal.file.getvalue()
    assert ("verifying: the source, then the grown model" in shown) is not quiet
    assert ("growing" in shown) is not quiet


@pytest.mark.parametrize("stream", ["out", "err"])
def test_a_long_line_stays_one_line_when_piped(stream, capsys):
    """Piped or logged, a report line longer than rich's default 80 columns is written whole: a reader greps the
    verdict on the line of its figures, and a terminal wraps long lines itself."""
    from grow_cli import console

    line = "  verify on 64 random tokens: max |Δ| 0, mean KL 0, top-1 agreement 100.0% — " + "passed " * 8
    getattr(console, stream).print(line)
    captured = capsys.readouterr()
    assert (captured.out if stream == "out" else captured.err) == line + "\n"


def test_with_json_stdout_holds_the_json_document_alone_whatever_else_prints():
    """`--json` promises one JSON document on stdout, but libraries print there: DeepSpeed's logger and its op
    builders write to stdout, from Python and from C. The `grow` script with `--json` sends them to stderr. Here a
    stand-in library prints both ways just before the document; `cli.main` (in-process callers' entry, which leaves
    their streams alone) is the negative control: there its lines break the document."""
    import json
    import subprocess
    import sys

    code = """
import os, sys
import grow_cli.console as console
real = console.print_json
def chatty(payload):
    print("a library's print")
    os.write(1, b"a library's write to fd 1\\n")
    real(payload)
console.print_json = chatty
entry = sys.argv[1]
sys.argv = ["grow", "plan", "--target", "1B", "--tokens", "20B", "--json"]
from grow_cli import cli
getattr(cli, entry)()
"""

    def run(entry: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-c", code, entry], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    script = run("script")
    assert json.loads(script.stdout)["target"]["num_parameters"] == 1e9  # the whole of stdout is one document
    assert "a library's print" in script.stderr and "a library's write to fd 1" in script.stderr

    main = run("main")
    assert "a library's print" in main.stdout and "a library's write to fd 1" in main.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(main.stdout)


def test_json_output_writes_a_number_json_cannot_hold_as_null(capsys):
    """A diverged run's `--json` held bare `NaN`, which strict JSON parsers (jq, JavaScript's, Go's) refuse."""
    import json

    from grow_cli.console import print_json

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    print_json({"loss": float("nan"), "curve": [float("inf"), 1.5, (-float("inf"),)], "steps": 3})
    assert json.loads(capsys.readouterr().out, parse_constant=refuse) == {
        "loss": None,
        "curve": [None, 1.5, [None]],
        "steps": 3,
    }
