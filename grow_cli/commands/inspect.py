"""`grow inspect SRC`: describe a checkpoint and which growth methods apply."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grow_cli.commands import JSON_HELP

EXAMPLES = """
**Examples**

    grow inspect ./SmolLM2-135M
    grow inspect HuggingFaceTB/SmolLM2-135M --revision main
    grow inspect ./my-model --json | jq .num_parameters

    # write a derived definition out, to review it
    grow inspect ./an-exaone4-model --write-definition exaone4.json
"""


def inspect(
    source: Annotated[str, typer.Argument(help="A model folder, or a Hub id such as org/name.")],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit of a Hub id.")] = None,
    token: Annotated[
        str | None, typer.Option(help="Hub token (default: HF_TOKEN or the saved login).", show_default=False)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    write_definition: Annotated[
        Path | None,
        typer.Option(
            "--write-definition",
            help="Write the architecture definition grow uses (curated, or derived from transformers) to this "
            "JSON file, for review.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --write-definition file.")] = False,
) -> None:
    """Describe a checkpoint: architecture, parameters, shape, dtypes, shards, and which growth methods apply.

    Architectures without a curated definition get one derived from the transformers model class (checked on tiny
    random instances); the report says which, and why width growth is refused where it is.
    """
    from grow_cli.console import print_json
    from grow_cli.growth.describe import inspect as run

    info = run(source, revision=revision, token=token, write_definition_to=write_definition, force=force)
    if json_out:
        print_json(info)
    else:
        _print_table(source, info)
    if info["config_problem"]:  # reported above; the run still fails, as `grow expand` of this source does
        from grow_cli.growth.config import source_config_refused

        raise source_config_refused(info["config_problem"])


def _print_table(source: str, info: dict) -> None:
    """The human report: one row per fact, then the growth methods that apply (and why the others do not)."""
    from rich.table import Table

    from grow_cli.console import format_bytes, out
    from grow_cli.quantities import format_count

    table = Table(title=f"{source}", show_header=False, title_justify="left")
    definition = info["definition"]
    if definition["kind"] == "curated":
        origin = f"curated ({definition['file']})"
    else:
        origin = (
            f"derived from transformers {definition['transformers']}'s {definition['model_class']}; "
            f"every growth that claims exactness is verified"
        )
    rows = [
        ("architecture", f"{info['architecture']} — {info['description']}"),
        ("definition", origin),
        ("parameters", f"{info['num_parameters']:,} ({format_count(info['num_parameters'])})"),
        ("layers", info["layers"]),
        ("hidden / ffn", f"{info['hidden_size']} / {info['intermediate_size']}"),
        ("heads / kv heads / head_dim", f"{info['num_heads']} / {info['num_kv_heads']} / {info['head_dim']}"),
        ("vocabulary", info["vocab_size"]),
        ("positions", f"{info['positions']} ({info['max_positions']})"),
        ("tied embeddings", _tied(info)),
        ("norm", info["norm"]),
        ("dtypes", ", ".join(f"{k} ×{v}" for k, v in info["dtypes"].items())),
        (
            "files",
            f"{info['format']}: " + ", ".join(f"{f['path']} ({format_bytes(f['size'])})" for f in info["files"]),
        ),
    ]
    if info["placeholders"]:  # an Apollo stage plan's checkpoint: its files hold more than its model
        held = info["placeholders"]
        rows.append(
            (
                "placeholders",
                f"{held['num_tensors']} tensors ({format_bytes(held['bytes'])} of the files above): the layers an "
                "Apollo stage plan holds for a later stage, not yet in use; left out of the parameters, layers and "
                "dtypes",
            )
        )
    if info.get("num_experts"):
        rows[3:3] = _moe_rows(info)
    for m in info["st_modules"]:  # a sentence-transformers model's modules with weights of their own
        rows.append((f"module {m['path']}/", f"{m['type']}: depth: {m['depth']}; width: {m['width']}"))
    if info["config_problem"]:
        rows.insert(0, ("problem", f"[red]config.json does not load in transformers: {info['config_problem']}[/red]"))
    for key, value in rows:
        table.add_row(key, str(value))
    for part in ("depth", "width", "moe"):
        methods = info["methods"][part]
        listed = _methods(methods)
        if part == "moe" and info["upcycles_to"] and any(m["applies"] for m in methods):
            listed += f" (--experts N makes a {info['upcycles_to']})"
        table.add_row("upcycling methods" if part == "moe" else f"{part} methods", listed)
    if info["definition_written"]:
        table.add_row("definition written", info["definition_written"])
    out.print(table)


def _methods(methods: list[dict]) -> str:
    """The methods that apply, then those that do not, named together under each reason: BERT's identity and
    staged-identity share one, which the row gave twice, word for word."""
    refused: dict[str, list[str]] = {}
    for m in methods:
        if not m["applies"]:
            refused.setdefault(m["why"], []).append(m["method"])
    if len(refused) == 1 and not any(m["applies"] for m in methods):
        return f"[dim]none ({next(iter(refused))})[/dim]"
    listed = [
        ", ".join(m["method"] + (f" (only {m['only']})" if m.get("only") else "") for m in methods if m["applies"])
    ]
    for why, names in refused.items():
        either = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        listed.append(f"[dim]not {either} ({why})[/dim]")
    return "; ".join(part for part in listed if part)


def _tied(info: dict) -> str:
    """Whether the model transformers loads has its head tied to its embedding, and why not when config.json says
    so but the checkpoint stores a head of its own; a headless checkpoint has no head to tie."""
    from grow_cli.arch.binding import untie_choices

    if info["headless"]:
        return "no output head (headless: the base model saved alone)"
    differing = [c for c in info["tied_copies"] if not c["same_values"]]
    if differing:
        c = differing[0]
        return (
            f"no: config.json ties them, but {c['tensor']} is stored with values that differ from {c['tied_to']}, "
            f"so transformers uses it untied (grow expand refuses this; {untie_choices(c['tensor'])})"
        )
    if not info["embeddings_tied"]:
        return "no"
    equal = [c["tensor"] for c in info["tied_copies"]]
    return f"yes ({', '.join(equal)} also stored, an equal copy)" if equal else "yes"


def _moe_rows(info: dict) -> list[tuple[str, str]]:
    """The rows of a mixture-of-experts checkpoint: experts and top-k, active against total parameters, layout."""
    dense = info["dense_layers"]
    shared = info["shared_intermediate_size"]
    return [
        (
            "experts",
            f"{info['num_experts']} routed, {info['experts_per_token']} per token, "
            f"FFN {info['expert_intermediate_size']}"
            + (f", shared expert FFN {shared}" if shared else "")
            + f"; top-k weights sum to 1: {'yes' if info['topk_weights_sum_to_1'] else 'no'}",
        ),
        (
            "active parameters",
            f"{info['active_parameters']:,} of {info['num_parameters']:,} "
            f"({info['active_parameters'] / info['num_parameters']:.0%}) per token",
        ),
        (
            "MoE layers",
            f"{len(info['sparse_layers'])} of {info['layers']}"
            + (f" (dense MLP in layers {', '.join(map(str, dense))})" if dense else "")
            + (f"; experts stored {info['expert_layout'].replace('_', ' ')}" if info["expert_layout"] else ""),
        ),
    ]
