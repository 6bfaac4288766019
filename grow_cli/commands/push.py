"""`grow push DIR REPO_ID`: publish a finished output folder to a Hub model repo, with its model card."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from grow_cli.commands import JSON_HELP

EPILOG = """\
**Examples**

    # create a private repo and upload the folder
    grow push out/llama-16l me/llama-16l --private

    # one branch per stage (created when missing)
    grow push out/stage-2 me/llama-16l --revision stage-2

    # a pull request against main instead of a commit to it
    grow push out/llama-16l org/llama-16l --create-pr \\
        --commit-message "Add the grown model"

    HF_TOKEN=hf_... grow push out/llama-16l me/llama-16l --json

The token comes from `--token`, `HF_TOKEN` or `hf auth login`; grow never prints or saves it. An upload that
fails halfway is resumed by running the same command again: files that already arrived are not sent again.

With `--json`, `files` lists the files the push sent (path and size), `unchanged` counts the folder's other files,
which the revision already held as they are, and `removed` the revision's weight files of another layout, which
the push removed; a push with nothing new sends none (`changed` is false). When the commit is made but cannot be
read back, these are null and a note on stderr says so: the push still succeeded.
"""


def push(
    folder: Annotated[
        Path, typer.Argument(help="Output folder of `grow expand` or `grow train-stage`.", show_default=False)
    ],
    repo_id: Annotated[
        str,
        typer.Argument(help="Model repo `namespace/name` (or `name` for your own namespace).", show_default=False),
    ],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (an existing public repo is refused).")
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            help="Branch to push to (created from main when missing), or an open pull request's refs/pr/N.",
            show_default=False,
        ),
    ] = None,
    commit_message: Annotated[
        str | None,
        typer.Option("--commit-message", help="Commit summary (default: made from grow.json).", show_default=False),
    ] = None,
    create_pr: Annotated[
        bool,
        typer.Option("--create-pr", help="Open a pull request against main instead of committing to it."),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Hub write token (default: HF_TOKEN, then the saved login).", show_default=False),
    ] = None,
    replace_card: Annotated[
        bool,
        typer.Option(
            "--replace-card",
            help="Replace the repo's README.md with grow's card even where grow did not write it (or it was edited on "
            "the Hub); by default such a card is kept.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Upload a grown or trained model folder to the Hugging Face Hub, with a model card made from grow.json."""
    from grow_cli.commands.push_options import note_if_card_kept, note_if_unread, pushed_where
    from grow_cli.console import format_bytes, out, print_json
    from grow_cli.errors import counted
    from grow_cli.hub import push_folder

    result = push_folder(
        folder,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        create_pr=create_pr,
        token=token,
        replace_card=replace_card,
    )
    where = pushed_where(result)
    note_if_unread(result)  # files: null, said on stderr beside --json's document too
    note_if_card_kept(result, folder)
    if as_json:
        print_json(result)
        return
    if not result["changed"]:
        out.print(
            f"nothing to push: {where} already holds these {counted(result['unchanged'], 'file')}"
            + ("; no pull request was opened" if create_pr else "")
        )
    elif result["files"] is not None:  # None: the note above said so
        size = sum(f["size"] for f in result["files"])
        out.print(
            f"pushed {counted(len(result['files']), 'file')} ({format_bytes(size)}) to {where}"
            + (f"; {result['unchanged']} more were there already, unchanged" if result["unchanged"] else "")
        )
    if result["removed"]:
        out.print(f"removed the old weights of another layout: {', '.join(result['removed'])}", soft_wrap=True)
    out.print(f"commit: {result['commit_url']}")
    if result["pr_url"]:
        out.print(f"pull request: {result['pr_url']}")
    if result["card"] == "kept":
        out.print("model card: README.md was edited by hand, so it was uploaded as it is")
    out.print(
        f"pull it with: grow inspect {result['repo_id']}"
        + (f" --revision {shlex.quote(result['revision'])}" if result["revision"] != "main" else "")  # a command
    )
