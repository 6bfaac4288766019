"""CLI commands: each module holds one thin Typer command over one library call."""
