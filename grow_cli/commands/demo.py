"""Placeholder: being written (foundation issue)."""


def demo() -> None:
    """Not yet available."""
