"""`grow inspect SRC`: describe a checkpoint and which growth methods apply."""

from __future__ import annotations

from typing import Annotated

import typer

EXAMPLES = """
**Examples**

    grow inspect ./SmolLM2-135M
    grow inspect HuggingFaceTB/SmolLM2-135M --revision main
    grow inspect ./my-model --json | jq .num_parameters
"""


def inspect(
    source: Annotated[str, typer.Argument(help="A model folder, or a Hub id such as org/name.")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit of a Hub id.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Hub token (default: HF_TOKEN or the saved login).", show_default=False)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON document on stdout.")] = False,
) -> None:
    """Describe a checkpoint: architecture, parameters, shape, dtypes, shards, and which growth methods apply."""
    from grow_cli.console import format_bytes, out, print_json
    from grow_cli.growth.describe import inspect as run

    info = run(source, revision=revision, token=token)
    if json_out:
        print_json(info)
        return
    from rich.table import Table

    table = Table(title=f"{source}", show_header=False, title_justify="left")
    rows = [
        ("architecture", f"{info['architecture']} — {info['description']}"),
        ("parameters", f"{info['num_parameters']:,} ({info['num_parameters'] / 1e6:.1f}M)"),
        ("layers", info["layers"]),
        ("hidden / ffn", f"{info['hidden_size']} / {info['intermediate_size']}"),
        ("heads / kv heads / head_dim", f"{info['num_heads']} / {info['num_kv_heads']} / {info['head_dim']}"),
        ("vocabulary", info["vocab_size"]),
        ("positions", f"{info['positions']} ({info['max_positions']})"),
        ("tied embeddings", "yes" if info["tie_word_embeddings"] else "no"),
        ("norm", info["norm"]),
        ("dtypes", ", ".join(f"{k} ×{v}" for k, v in info["dtypes"].items())),
        (
            "files",
            f"{info['format']}: " + ", ".join(f"{f['name']} ({format_bytes(f['bytes'])})" for f in info["files"]),
        ),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    for part in ("depth", "width"):
        methods = info["methods"][part]
        table.add_row(
            f"{part} methods",
            ", ".join(m["method"] if m["applies"] else f"[dim]{m['method']} (no: {m['why']})[/dim]" for m in methods),
        )
    out.print(table)
