"""`check_may_push`: before a long run that ends in `--push-to-hub`, ask the Hub whether the token may write there.

`check_can_push` needs no request: a repo id, a token, the network allowed. But a mistyped, revoked or read-only
token, or a namespace the account does not belong to, would only be found when the push runs — after hours of
training — so the commands that end in a push first ask the Hub who the token is (`whoami`, one request from the
first process). Only a definite answer refuses: the Hub refused the token (401), the token is read-only, a
fine-grained token holds no write permission for the repo or its namespace, or the namespace is neither the
account's nor one of its organizations' (or one it may only read). When the Hub cannot be asked (no connection, a
rate limit, a server error), the run goes on with a note: the push at its end may still work, and when it fails the
output is kept and the message gives the `grow push` command.
"""

from __future__ import annotations

from typing import Any

from grow_cli.console import err
from grow_cli.errors import HubError, failure
from grow_cli.hub.client import TOKEN_HELP, endpoint, hub_client
from grow_cli.hub.push import check_can_push
from grow_cli.launch import main_process

WRITE_TOKEN_HELP = f"{TOKEN_HELP} with a write token (https://huggingface.co/settings/tokens)"


def check_may_push(repo_id: str, token: str | None, *, quiet: bool = False) -> None:
    """`check_can_push`, then (first process only) the Hub's answer about the token; raises HubError when the push at
    the end of the run cannot succeed. `quiet`: no note when the Hub cannot be asked."""
    token = check_can_push(repo_id, token)
    if not main_process():  # one request per launch: the whoami endpoint is rate-limited
        return
    from huggingface_hub.errors import HfHubHTTPError

    try:
        me = hub_client(token).whoami()
    except HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 401:
            raise HubError(
                f"the Hub at {endpoint()} refused the token (HTTP 401: invalid or revoked), so the push to {repo_id} "
                f"at the end of this run would fail; {WRITE_TOKEN_HELP}"
            ) from None
        _cannot_tell(repo_id, exc, quiet)
        return
    except Exception as exc:  # no connection, a timeout: the push may still work at the end
        _cannot_tell(repo_id, exc, quiet)
        return
    if why := why_not_writable(me, repo_id):
        raise HubError(f"the push to {repo_id} at the end of this run would fail: {why}")


def why_not_writable(me: dict[str, Any], repo_id: str) -> str | None:
    """Why the account and token `me` (the Hub's whoami-v2 answer) cannot write to `repo_id`, or None when nothing
    in the answer says so (fields it lacks are not held against it)."""
    user = me.get("name")
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    full_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    access = (me.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        return f"the token{_named(access)} is read-only; {WRITE_TOKEN_HELP}"
    if role == "fineGrained" and not _fine_grained_may_write(access.get("fineGrained") or {}, namespace, full_id):
        return (
            f"the fine-grained token{_named(access)} has no write permission for {full_id} or '{namespace}'; give it "
            f"'Write access to contents/settings of all repos' under '{namespace}' at "
            "https://huggingface.co/settings/tokens, or pass another token"
        )
    if not user or namespace == user:
        return None
    orgs = {org.get("name"): org for org in me.get("orgs") or [] if isinstance(org, dict)}
    if namespace not in orgs:
        return (
            f"'{namespace}' is neither the account {user} nor one of its organizations; push to {user}/"
            f"{repo_id.split('/')[-1]}, or join '{namespace}' on the Hub"
        )
    if orgs[namespace].get("roleInOrg") == "read":
        return f"{user} may only read in the organization '{namespace}'; ask its admins for the write role"
    return None


def _fine_grained_may_write(grants: dict[str, Any], namespace: str | None, repo_id: str) -> bool:
    """Whether a fine-grained token's grants hold `repo.write` for the namespace (user or organization) or for the
    repo itself."""
    for scope in grants.get("scoped") or []:
        entity = scope.get("entity") or {}
        if "repo.write" in (scope.get("permissions") or []) and entity.get("name") in (namespace, repo_id):
            return True
    return False


def _named(access: dict[str, Any]) -> str:
    name = access.get("displayName")
    return f" '{name}'" if isinstance(name, str) and name else ""


def _cannot_tell(repo_id: str, exc: BaseException, quiet: bool) -> None:
    if quiet:
        return
    err.print(
        f"note: could not ask the Hub whether the token may push to {repo_id} ({failure(exc)}); the run goes on, and "
        "if the push at its end fails, the output is kept and the message gives the `grow push` command",
        soft_wrap=True,
    )
