"""What the commands that push share: the `--push-to-hub` options of `grow expand` and `grow train-stage`, refused
when given without `--push-to-hub`, since they would do nothing (as `--top-k` without `--experts` is refused); and
how `grow push` and both of them name where a push went and say that its commit could not be read back."""

from __future__ import annotations

from typing import Any

from grow_cli.errors import OptionError


def check_push_options(push_to_hub: str | None, *, private: bool, token: str | None = None) -> None:
    """Refuse `--private`, and `--token` where the command's token serves the push alone (train-stage: `grow expand`'s
    token also reads a Hub source, so it passes none), without `--push-to-hub`."""
    if push_to_hub:
        return
    if private:
        raise OptionError(
            "private",
            "--private applies only with --push-to-hub REPO_ID (it creates the pushed repo private); add "
            "--push-to-hub or drop --private",
        )
    if token is not None:
        raise OptionError(
            "token",
            "--token applies only with --push-to-hub REPO_ID (the model is read from a folder); add --push-to-hub "
            "or drop --token",
        )


def pushed_where(result: dict[str, Any]) -> str:
    """Where a push (`push_folder`'s result) went, as grow's messages name it: `me/x (private, branch main)`."""
    return (
        f"{result['repo_id']} ({'private, ' if result['private'] else ''}"
        f"{'pull request' if result['pr_url'] else 'branch'} {result['revision']})"
    )


def note_if_unread(result: dict[str, Any]) -> None:
    """Say on stderr when a push's commit was made but could not be read back (`files` null in its result and in
    --json): the push succeeded, only which files it sent is not known. Every command that pushes says it so, with
    or without --json, since the JSON document alone would show a null without its reason."""
    from grow_cli.console import err

    if result["files"] is None:
        err.print(
            f"note: pushed to {pushed_where(result)}, but which files its commit sent could not be read back from "
            "the Hub (files: null); the push succeeded",
            soft_wrap=True,
        )


def note_if_card_kept(result: dict[str, Any], folder: object) -> None:
    """Say on stderr when a push kept the repo's own model card (`card` "hub": a README.md on the Hub that grow did
    not render, or one edited there), and how to replace it; every command that pushes says it so."""
    import shlex

    from grow_cli.console import err

    if result["card"] == "hub":
        err.print(
            f"note: README.md on {pushed_where(result)} was not written by grow (or was edited on the Hub), so the "
            f"push kept it; `grow push {shlex.quote(str(folder))} {result['repo_id']} --replace-card` replaces it "
            "with grow's card",
            soft_wrap=True,
        )
