"""Placeholder: being written (foundation issue)."""


def inspect() -> None:
    """Not yet available."""
