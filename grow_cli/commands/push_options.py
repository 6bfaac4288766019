"""The `--push-to-hub` options that `grow expand` and `grow train-stage` share: refused when given without
`--push-to-hub`, since they would do nothing (as `--top-k` without `--experts` is refused)."""

from __future__ import annotations

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
