"""`grow family RECIPE.yaml`: build a model family — expand, train, compare each member — unattended and resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXAMPLES = """
**Examples**

    grow family docs/examples/tiny-family.yaml            # runs every member, then writes the report
    grow family recipe.yaml --out runs/family-1           # same recipe, another output folder
    grow family recipe.yaml --check                       # validate the recipe only
    grow family recipe.yaml                               # after an interruption: skips finished members
"""


def family(
    recipe: Annotated[Path, typer.Argument(help="The family recipe (YAML).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the recipe's `out`).")] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Check everything the run needs (sources, tokenizer, data, every grow step); build nothing."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON document on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run a model family from a recipe: each member grown from the previous one, trained, and compared with it."""
    from grow_cli.console import err, print_json
    from grow_cli.console import out as stdout
    from grow_cli.family.recipe import load_recipe

    parsed = load_recipe(recipe, out)
    if check:
        from grow_cli.family.check import check_recipe

        for note in check_recipe(parsed):
            err.print(f"note: {note}", soft_wrap=True)
        members = [
            {
                "name": m.name,
                "from": m.source or ("config" if m.config else "previous member"),
                "grow": m.grow,
                "train": parsed.train_settings(m),
            }
            for m in parsed.members
        ]
        if json_out:
            print_json({"out": str(parsed.out), "members": members})
        else:
            stdout.print(f"recipe OK: {len(members)} members → {parsed.out}")
            for m in members:
                stdout.print(
                    f"  {m['name']}: from {m['from']}; grow {m['grow'] or '—'}; train {'yes' if m['train'] else 'no'}"
                )
        return
    from grow_cli.family.run import run_family

    result = run_family(parsed, quiet=quiet or json_out)
    if json_out:
        print_json(result)
        return
    if result["status"] != "done":
        stdout.print(f"paused in member {result['member']}; re-run the same command to continue")
        raise typer.Exit(3)
    saving = result["ledger"]["saving"]
    stdout.print(f"[bold green]family done[/bold green]: {result['out']}")
    stdout.print(f"  report {result['report']} (+ {', '.join(result['plots'])})")
    if saving is not None:
        stdout.print(f"  compute saved against training every member from scratch on the same tokens: {saving:.1%}")
    for row in result["ledger"]["members"]:
        b = row.get("baseline")
        if b and b["saving_at_equal_quality"] is not None:
            stdout.print(
                f"  {row['name']}: at equal held-out loss, growing cost {b['saving_at_equal_quality']:.1%} "
                f"less than training it from scratch"
            )
        elif b:
            stdout.print(f"  {row['name']}: training from scratch never reached the grown model's held-out loss")
