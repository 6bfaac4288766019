"""CLI commands: each module holds one thin Typer command over one library call."""

# Every command's --json: its documents are listed key by key in one page
JSON_HELP = "Print one JSON document on stdout (every key: docs/json-output.md)."
