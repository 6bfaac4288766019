"""Which options the user typed, as opposed to left at their defaults: a command checks an option named at its default
value as it checks any other value (`--depth-method stack` without a depth target does nothing, and is refused).
The settings objects (`GrowthSpec`, `TrainConfig`) hold values only; their `check_given` takes these names."""

from __future__ import annotations

from collections.abc import Iterable

import typer


def given_on_the_command_line(context: typer.Context, names: Iterable[str]) -> set[str]:
    """The `names` whose values came from the command line."""
    return {name for name in names if getattr(context.get_parameter_source(name), "name", None) == "COMMANDLINE"}
