"""Placeholder: being written (foundation issue)."""


def expand() -> None:
    """Not yet available."""
