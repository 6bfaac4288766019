"""What every Hub call shares: the endpoint, offline mode, the token, and one translation of client errors.

`huggingface_hub` reads `HF_ENDPOINT` and `HF_HUB_OFFLINE` once, when it is imported; grow reads them again at call
time (falling back to the client's values), so a process that sets them later is still obeyed.

Tokens come from `--token`, then what `huggingface_hub.get_token()` finds (`HF_TOKEN`, then the saved login). They
are passed to the client and nowhere else: no message grow builds contains one, and grow never writes one to disk.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from urllib.parse import unquote

from huggingface_hub import HfApi, constants, errors, get_token
from huggingface_hub import utils as hub_utils

from grow_cli.errors import HubError

TOKEN_HELP = "pass --token, set HF_TOKEN, or run `hf auth login`"

# The network failure of the HTTP client huggingface_hub uses. Hub 1.31 added `huggingface_hub.utils.httpx`, the
# client's module (httpx in 1.x, httpx2 from 2.0); hub 1.5-1.30, which grow's range and transformers 5.17 allow, use
# httpx itself and do not export it.
http_client = getattr(hub_utils, "httpx", None) or importlib.import_module("httpx")
TransportError: type[Exception] = http_client.TransportError


def endpoint() -> str:
    """The Hub's base URL: `HF_ENDPOINT` as it is now, else the client's default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_client(token: str | None) -> HfApi:
    """The Hub client grow talks through: `HF_ENDPOINT` as it is now, grow named as the library."""
    from grow_cli import __version__

    return HfApi(endpoint=endpoint(), token=token or None, library_name="grow", library_version=__version__)


def is_offline() -> bool:
    """True when `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set now or was set when the client was imported."""
    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any((v or "").upper() in {"1", "ON", "YES", "TRUE"} for v in values)


def check_cache_folders(*, hub_cache: bool = True) -> None:
    """Refuse, before any request, an `HF_HOME` (and, with `hub_cache`, a Hub cache `HF_HUB_CACHE`, which a push
    does not use) that is a file or lies inside one, as the client sees them: it would fail on its first file
    there (the saved login, a download) with a bare NotADirectoryError."""
    folders = [
        (constants.HF_HOME, "HF_HOME ({})", "it holds the Hub cache and the saved login; point HF_HOME at a folder")
    ]
    if hub_cache:
        folders.append(
            (
                constants.HF_HUB_CACHE,
                "the Hub cache ({}: HF_HUB_CACHE, by default HF_HOME/hub)",
                "point HF_HUB_CACHE or HF_HOME at a folder",
            )
        )
    for path, named, advice in folders:
        folder = Path(path)
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or existing.is_dir():
            continue
        where = "is a file" if existing == folder else f"lies inside {existing}, a file"
        raise HubError(f"{named.format(folder)} {where}, not a folder; {advice}")


def resolve_token(token: str | None) -> str:
    """The token to write with: `token`, else `HF_TOKEN`, else the saved login; HubError when there is none."""
    token = (token or "").strip() or get_token()
    if not token:
        raise HubError(f"no Hugging Face token found: pushing needs a write token; {TOKEN_HELP}")
    return token


RERUN = "re-run the same command"  # what a transient failure says to do to resume, unless told otherwise


def translate(exc: BaseException, action: str, repo_id: str, rerun: str = RERUN) -> HubError:
    """One line that says what failed while `action` on `repo_id`, why, and what to run next (`rerun`: how to
    resume, e.g. "re-run the same command").

    Never includes the token: messages are built from the status code, the server's message and the repo id.
    The client wraps a failed file upload in `RuntimeError("Error while uploading 'NAME' ...")`; the HTTP error
    underneath decides the message, and the file name is kept. It wraps what went wrong while locating a file to
    download (a 5xx, a 403, a timeout) in a `LocalEntryNotFoundError` that blames the connection and the cache;
    the error underneath decides the message there too.
    """
    chain, cause = [exc], exc
    while cause.__cause__ is not None and len(chain) < 8:
        cause = cause.__cause__
        chain.append(cause)
    if len(chain) > 1 and isinstance(exc, RuntimeError | errors.LocalEntryNotFoundError):
        found = re.search(r"uploading '([^']+)'", str(exc))
        if found:
            action = f"uploading {found.group(1)} to"
        exc = next((e for e in chain if isinstance(e, errors.HfHubHTTPError | TransportError)), chain[-1])
    reading = action.startswith("downloading")
    resume = f"{rerun} to resume: " + (
        "files already downloaded stay in the cache" if reading else "files that already arrived are not sent again"
    )
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError(f"{action} {repo_id} needs the network, but HF_HUB_OFFLINE=1 is set; unset it and re-run")
    if isinstance(exc, errors.GatedRepoError):
        return HubError(f"{repo_id} is gated: accept its terms on the Hub, then {TOKEN_HELP}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"repository {repo_id} not found on {endpoint()} (or it is private and the token cannot see it); "
            f"check the name, or {TOKEN_HELP}"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"revision not found in {repo_id}: {_server_message(exc)}; check --revision")
    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = _server_message(exc)
        if status in (401, 403) and reading:
            return HubError(
                f"authentication failed while {action} {repo_id} (HTTP {status}: {detail}): the token was refused "
                f"or cannot read {repo_id}; {TOKEN_HELP} with a token that can read it"
            )
        if status in (401, 403):
            return HubError(
                f"authentication failed while {action} {repo_id} (HTTP {status}: {detail}): the token was refused "
                f"or cannot write to '{repo_id.split('/')[0]}'; {TOKEN_HELP} with a write token"
            )
        if status == 429:
            return HubError(
                f"the Hub is rate-limiting requests while {action} {repo_id} (HTTP 429: {detail}); wait a few "
                f"minutes, then {resume}"
            )
        if status >= 500:
            return HubError(f"the Hub failed while {action} {repo_id} (HTTP {status}: {detail}); {resume}")
        if status == 404 and (name := file_of(exc.response)):
            return HubError(
                f"the Hub answered 'not found' (HTTP 404: {detail}) for {name}, a file {repo_id} lists; {resume}"
            )
        if status == 404:
            return HubError(
                f"the Hub answered 'not found' while {action} {repo_id} (HTTP 404: {detail}); check the repo id, "
                f"and that {endpoint()} is a Hugging Face Hub (HF_ENDPOINT; unset it for huggingface.co)"
            )
        if status in (409, 412) and not reading:
            return HubError(
                f"{repo_id} changed on the Hub while grow was {action.split(' ')[0]} (HTTP {status}: {detail}); "
                f"{resume}"
            )
        return HubError(f"the Hub refused {action} {repo_id} (HTTP {status}: {detail}); its message says what to fix")
    if isinstance(exc, TransportError):
        return HubError(
            f"{lost_connection(exc)} while {action} {repo_id}; check the network or HF_ENDPOINT, then {resume}"
        )
    if isinstance(exc, http_client.TooManyRedirects):
        return HubError(
            f"the Hub at {endpoint()} redirected in a loop while {action} {repo_id} (TooManyRedirects); check "
            "HF_ENDPOINT, and any proxy between grow and the Hub"
        )
    if isinstance(exc, OSError) and (short := re.search(r"size (\d+) but has size (\d+) \((.*)\)\.", str(exc))):
        # huggingface_hub's "Consistency check failed": a file that arrived whole by HTTP but shorter than listed
        return HubError(
            f"the Hub sent {int(short.group(2)):,} of the {int(short.group(1)):,} bytes of "
            f"{short.group(3).rsplit('/', 1)[-1]} while {action} {repo_id}; {resume}"
        )
    if isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc):
        return HubError(f"the Hub rejected the model card of {repo_id}: {_one_line(str(exc))}")
    return HubError(f"{action} {repo_id} failed: {type(exc).__name__}: {_one_line(str(exc))}")


def lost_connection(exc: BaseException) -> str:
    """What a network failure was: the Hub could not be reached, stopped answering, or the connection broke."""
    if isinstance(exc, http_client.ConnectError | http_client.ConnectTimeout):
        return f"cannot reach the Hub at {endpoint()} ({type(exc).__name__})"
    if isinstance(exc, http_client.TimeoutException):
        return (
            f"the Hub at {endpoint()} did not answer in time ({type(exc).__name__}: no answer within "
            f"{_wait_setting(exc)}; raise it for a slow Hub)"
        )
    return f"the connection to the Hub at {endpoint()} broke ({type(exc).__name__})"


def _wait_setting(exc: BaseException) -> str:
    """The setting that bounded the wait which timed out in `exc`, as a message names it: HF_HUB_ETAG_TIMEOUT for
    metadata (a HEAD, an API call), HF_HUB_DOWNLOAD_TIMEOUT for file bytes, both when the request is not known."""
    metadata = f"HF_HUB_ETAG_TIMEOUT={constants.HF_HUB_ETAG_TIMEOUT} s, the wait for metadata"
    file_bytes = f"HF_HUB_DOWNLOAD_TIMEOUT={constants.HF_HUB_DOWNLOAD_TIMEOUT} s, the wait for file bytes"
    try:
        request = exc.request  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # an error raised before its request was built
        return f"{metadata}, or {file_bytes}"
    return metadata if request.method == "HEAD" or "/api/" in request.url.path else file_bytes


def file_of(failed) -> str | None:
    """The repo file the request of a response or of a client error asked for (`…/resolve/REVISION/PATH`), or None
    for an API call."""
    try:
        path = failed.request.url.path
    except (AttributeError, RuntimeError):  # a response built without its request, an error raised before one
        return None
    rest = path.split("/resolve/", 1)[1] if "/resolve/" in path else ""
    return unquote(rest.split("/", 1)[1]) if "/" in rest else None


def _server_message(exc: errors.HfHubHTTPError) -> str:
    message = exc.server_message or exc.response.reason_phrase or ""
    return _one_line(message) or "no details"


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
