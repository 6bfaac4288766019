"""The `grow` command line (`grow_cli.cli`): every command documents examples in `--help`, and `--version` works."""

from __future__ import annotations

import pytest

from grow_cli.cli import app


def _commands():
    return [c.name for c in app.registered_commands]


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented_with_examples(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "Examples" in result.stdout, f"`grow {command} --help` has no examples"


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.startswith("grow ")


def test_ctrl_c_exits_130_with_one_line(cli, monkeypatch, tmp_path):
    """Typer turns a KeyboardInterrupt into a silent exit 130; grow says what happened, in one line."""
    import grow_cli.growth.describe as describe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(describe, "inspect", interrupted)
    result = cli("inspect", tmp_path)
    assert result.code == 130 and result.stderr.strip().splitlines() == ["interrupted (Ctrl-C)"]
