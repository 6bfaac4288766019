"""`grow family RECIPE.yaml`: build a model family — expand, train, compare each member — unattended and resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grow_cli.commands import JSON_HELP

EXAMPLES = """
**Examples**

    # the example's corpus and tokenizer (in a fresh clone), then every
    # member, then the report
    python docs/examples/tiny_family.py --prepare-only
    grow family docs/examples/tiny-family.yaml

    # the same recipe into another output folder
    grow family recipe.yaml --out runs/family-1

    # validate the recipe only
    grow family recipe.yaml --check

    # after an interruption: the same command skips the finished members
    grow family recipe.yaml

On several GPUs (every process trains; the main one grows, compares and reports; see docs/family.md):

    accelerate launch --config_file docs/accelerate/multi_gpu.yaml \\
        -m grow_cli family recipe.yaml
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
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress on stderr (members' headers, progress bars).")
    ] = False,
) -> None:
    """Run a model family from a recipe: each member grown from the previous one, trained, and compared with it."""
    from grow_cli.console import err, print_json
    from grow_cli.console import out as stdout
    from grow_cli.errors import counted
    from grow_cli.family.recipe import load_recipe
    from grow_cli.launch import main_process

    parsed = load_recipe(recipe, out)
    if check:
        import yaml  # (the grow settings as the recipe writes them: {depth_factor: 2}, not Python's dict)

        from grow_cli.family.check import check_recipe

        notes = check_recipe(parsed)
        if not main_process():  # under `accelerate launch` every process checks alike; one speaks
            return
        for note in notes:
            err.print(f"note: {note}", soft_wrap=True)
        members = [
            {
                "name": m.name,
                "source": m.source or ("config" if m.config else "previous member"),
                "grow": m.grow,
                "train": parsed.train_settings(m),
            }
            for m in parsed.members
        ]
        if json_out:
            print_json({"out": str(parsed.out), "members": members})
        else:
            stdout.print(f"recipe OK: {counted(len(members), 'member')} → {parsed.out}")
            for m in members:
                grow = yaml.safe_dump(m["grow"], default_flow_style=True, sort_keys=False).strip() if m["grow"] else "—"
                stdout.print(f"  {m['name']}: from {m['source']}; grow {grow}; train {'yes' if m['train'] else 'no'}")
        return
    from grow_cli.family.run import run_family

    result = run_family(parsed, quiet=quiet)  # --json too shows progress: on stderr, the document on stdout
    if main_process():  # under `accelerate launch` one process speaks; every one ends with the same status
        _print_result(result, json_out)
    status = exit_status(result["status"])
    if status:
        raise typer.Exit(status)


PAUSED = 3  # a paused family's exit status, outside a launcher


def exit_status(status: str) -> int:
    """The exit status of a family run that ended with `status`: 0 when done; `PAUSED` when a member's
    `exit_interval` paused it (with --json too: a script loops on the exit code until the family is done) — but 0
    under a launcher, as train-stage's pause always is. A launcher reports a worker's every other status as a
    failure (exit 1, with its traceback), so the pause's own line and `--json`'s "status" could not be told from a
    crash; they say it there."""
    from grow_cli.launch import started_by_a_launcher

    return 0 if status == "done" or started_by_a_launcher() else PAUSED


def _print_result(result: dict, json_out: bool) -> None:
    from grow_cli.console import out as stdout
    from grow_cli.console import print_json

    if json_out:
        print_json(result)
    elif result["status"] != "done":
        stdout.print(f"paused in member {result['member']}; re-run the same command to continue")
    else:
        _print_summary(result)


def _print_summary(result: dict) -> None:
    """The terminal summary, in the report's order: the saving at equal quality first (per member and for the
    family), the consistency measure, and only then the equal-tokens ratio, labelled as such."""
    from grow_cli.console import out as stdout
    from grow_cli.family.quality import saving_phrase

    quality, book = result["equal_quality"], result["ledger"]
    stdout.print(f"[bold green]family done[/bold green]: {result['out']}")
    stdout.print(f"[bold]at equal quality[/bold]: {result['headline']}", soft_wrap=True)
    for m in quality["members"] if quality["measured"] else []:
        if m.get("status") is None:
            stdout.print(f"  {m['name']}: no from-scratch run to compare with")
            continue
        if m["scratch_flops_needed"] is None:  # its run's metrics file lost or emptied since: no curve to read
            stdout.print(f"  {m['name']}: not measured: {m['explanation']}")
            continue
        how = f"{m['lineage_flops']:.3g} FLOPs against {m['scratch_flops_needed']:.3g}"
        if m["bound"] != "=":
            how += f"; {m['explanation']}"
        stdout.print(
            f"  {m['name']}: growing it cost {saving_phrase(m)} than training it from scratch to the same held-out "
            f"loss, {m['grown_loss']:.4f} nats per token ({how})",
            soft_wrap=True,
        )
    for pair in result["consistency"]:
        grown, independent = pair["grown"], pair["independent"]
        text = f"  KL {pair['pair']}: grown {grown['kl_a_b']:.4f}" if grown else f"  KL {pair['pair']}:"
        if independent:
            text += f", independent {independent['kl_a_b']:.4f}"
        stdout.print(text + " (prev‖next, nats per token)", soft_wrap=True)
    if book["saving"] is not None:
        stdout.print(
            f"equal tokens (not equal quality): {book['saving']:.1%} fewer FLOPs than training every member from "
            "scratch on the tokens it has seen",
            soft_wrap=True,
        )
    stdout.print(f"report: {result['report']} (+ {', '.join(result['plots'])})", soft_wrap=True)
