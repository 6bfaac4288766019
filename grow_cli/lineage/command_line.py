"""The grow command line that an output records (grow.json's `command`, shown on the model card).

A grow command (`grow expand`, `grow demo`, `grow family`) runs the same `expand` a Python caller does; the command
line is set around that call with `recording` and read where the record is written, so the library function has
one parameter list and a Python caller, who has no command line, records None.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_command: ContextVar[list[str] | None] = ContextVar("grow_command", default=None)


@contextmanager
def recording(command: list[str]) -> Iterator[None]:
    """Within the block, outputs record `command` as the command line that made them."""
    token = _command.set(command)
    try:
        yield
    finally:
        _command.reset(token)


def recorded_command() -> list[str] | None:
    """The command line set by the innermost `recording`, or None (a Python caller)."""
    return _command.get()
