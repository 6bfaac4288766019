"""How long grow waits for the Hub when it reads from it, and which failures it tries again.

Waits. huggingface_hub bounds the bytes of a file (HF_HUB_DOWNLOAD_TIMEOUT) and the first HEAD of a file
(HF_HUB_ETAG_TIMEOUT), but not the rest of a download: `snapshot_download` lists the repo (`repo_info`,
`list_repo_tree`) with no timeout at all, so a Hub that stalled there held grow until Ctrl-C; and a HEAD that failed
once is tried 6 more times (`http_backoff`, 1 to 8 s apart) with 60 s for each try whatever HF_HUB_ETAG_TIMEOUT
says, so a Hub that stalled on a HEAD held a download about 6.4 minutes. `bounded_waits` gives the client's shared
session, while grow reads from the Hub, a request hook that lets each HEAD, and each GET sent without a timeout,
wait at most HF_HUB_ETAG_TIMEOUT seconds for each answer. Uploads and commits (POST, PUT) keep the
client's own waits: the Hub may take minutes over a large commit.

Retries. The client tries again itself a file's HEAD (6 more times, above) and its own listing of the repo's tree (5
more), resumes a file's bytes that stall or break mid-way (5 times), and waits out a 429 as its Retry-After says; it
does not try again a 5xx or a connection reset on a file's bytes, nor any failure of grow's listing of the repo or
of grow's header ranges, so one 503 on one shard failed a whole download. `retrying` runs such a step of a download
again, after 1, 2, 4… s (the waits of huggingface_hub's `http_backoff`, which retries one request it sends itself,
not a step of `snapshot_download`), when it failed for one of those reasons: at most GROW_HUB_RETRIES times (default
3), with a line on stderr each time. A step run again downloads only what it had not finished: what arrived is in
the cache. A 4xx is an answer, not a failure of the network, and a Hub that cannot be reached at all is not a
moment's failure: neither is tried again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from huggingface_hub import constants, errors
from huggingface_hub.utils import get_session

from grow_cli.console import err
from grow_cli.errors import HubError
from grow_cli.hub.client import TransportError, file_of, http_client, lost_connection

T = TypeVar("T")

RETRIES_VARIABLE = "GROW_HUB_RETRIES"
DEFAULT_RETRIES = 3
MOST_RETRIES = 10
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
FIRST_WAIT_S, LONGEST_WAIT_S = 1.0, 8.0  # doubling between: huggingface_hub's http_backoff defaults


@contextmanager
def bounded_waits() -> Iterator[None]:
    """While the block runs, every HEAD of huggingface_hub's client, and every GET it sends without a timeout, waits
    at most HF_HUB_ETAG_TIMEOUT seconds for each answer: `_cap_metadata_wait` is one of its shared session's request
    hooks, taken off again after, so that a Python caller's session (from a client factory of their own: a proxy,
    certificates) is used as it is and left as grow found it. Blocks may nest or run in several threads: the hook
    is added once and taken off when the last block ends."""
    session = get_session()
    with _hooking:
        if not _holders.get(id(session)):
            hooks = session.event_hooks
            session.event_hooks = {**hooks, "request": [*hooks["request"], _cap_metadata_wait]}
        _holders[id(session)] = _holders.get(id(session), 0) + 1
    try:
        yield
    finally:
        with _hooking:
            _holders[id(session)] -= 1
            if not _holders[id(session)]:
                del _holders[id(session)]
                hooks = session.event_hooks
                session.event_hooks = {**hooks, "request": [h for h in hooks["request"] if h is not _cap_metadata_wait]}


_hooking = threading.Lock()
_holders: dict[int, int] = {}  # sessions that carry the hook: how many `bounded_waits` blocks use each


def _cap_metadata_wait(request: Any) -> None:
    """A request for metadata (a HEAD; a GET without a timeout: the API's listings) waits at most
    HF_HUB_ETAG_TIMEOUT seconds to connect and for each answer; file bytes (a GET with a timeout) are left as the
    client sent them, under HF_HUB_DOWNLOAD_TIMEOUT."""
    waits = dict(request.extensions.get("timeout") or {})
    metadata = request.method == "HEAD" or (request.method == "GET" and not any(waits.values()))
    if not metadata:
        return
    cap = float(constants.HF_HUB_ETAG_TIMEOUT)
    request.extensions["timeout"] = {
        name: cap if waits.get(name) is None else min(waits[name], cap) for name in ("connect", "read", "write", "pool")
    }


def hub_retries() -> int:
    """How many times a step that failed for a transient reason runs again: GROW_HUB_RETRIES, else 3."""
    text = os.environ.get(RETRIES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_RETRIES
    if not text.isdigit() or int(text) > MOST_RETRIES:
        raise HubError(
            f"{RETRIES_VARIABLE}={text!r} is not a number of retries from 0 to {MOST_RETRIES}; set it to 0 to try "
            f"each request once, or unset it for {DEFAULT_RETRIES}"
        )
    return int(text)


def retrying(step: Callable[[], T], what: str, *, client_resumes_bytes: bool = True) -> T:
    """`step()`, run again (at most `hub_retries()` times, 1, 2, 4… s apart, a line on stderr each time) while it
    fails for a transient reason (`transient`); `what` names the step in that line ("downloading acme/x").
    `client_resumes_bytes`: the file bytes the step reads come through huggingface_hub's `http_get`, which resumes a
    transfer that stalls or breaks by itself; grow's own range reads pass False."""
    retries = hub_retries()
    wait, done = FIRST_WAIT_S, 0
    while True:
        try:
            return step()
        except Exception as exc:
            why = transient(exc, client_resumes_bytes=client_resumes_bytes)
            if why is None or done == retries:
                raise
        done += 1
        err.print(
            f"note: {why} while {what}; trying again in {wait:g} s (retry {done} of {retries}, {RETRIES_VARIABLE})",
            soft_wrap=True,
            markup=False,  # file names and URLs are printed as they are
        )
        time.sleep(wait)
        wait = min(2 * wait, LONGEST_WAIT_S)


def transient(exc: BaseException, *, client_resumes_bytes: bool = True) -> str | None:
    """What made `exc` worth another try ("the Hub answered HTTP 503 for NAME", …), or None: an answer the Hub meant
    (a 4xx), no network failure at all, a Hub that cannot be reached (no network, a wrong HF_ENDPOINT: the cached
    copy serves at once, or the line says so), or a request the client already tried again itself
    (`_client_tried_again`)."""
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            return None
        if isinstance(cause, errors.HfHubHTTPError):
            response = cause.response
            if response is None or response.status_code not in TRANSIENT_STATUS:
                return None
            if _client_tried_again(response, cause, client_resumes_bytes):
                return None
            return f"the Hub answered HTTP {response.status_code}{_for_file(response)}"
        if isinstance(cause, TransportError):
            unreachable = isinstance(cause, http_client.ConnectError | http_client.ConnectTimeout)
            if unreachable or _client_tried_again(cause, cause, client_resumes_bytes):
                return None
            return f"{lost_connection(cause)}{_for_file(cause)}"
        cause = cause.__cause__
    return None


def lists_the_tree(failed: Any) -> bool:
    """Whether a response or a client error belongs to a request listing a repo's tree (`list_repo_tree`)."""
    return "/tree/" in _path(failed)


def _client_tried_again(failed: Any, cause: BaseException, client_resumes_bytes: bool) -> bool:
    """Whether huggingface_hub tried the request that `failed` (a response, or a client error) again itself, and
    another try by grow would multiply its tries: a file's HEAD and a paginated listing (the repo's tree) go through
    its `http_backoff` (5 more tries), and with `client_resumes_bytes`, a file's bytes that stalled or broke off
    through its `http_get` (5 resumes)."""
    method, path = _method(failed), _path(failed)
    if method == "HEAD" or lists_the_tree(failed):
        return True
    broke = isinstance(cause, http_client.ConnectError | http_client.TimeoutException | http_client.RemoteProtocolError)
    return client_resumes_bytes and broke and "/resolve/" in path


def _method(failed: Any) -> str:
    """The HTTP method of the request a response or a client error belongs to ("" when it is not known)."""
    try:
        return str(failed.request.method)
    except (AttributeError, RuntimeError):  # an error raised before its request was built
        return ""


def _path(failed: Any) -> str:
    """The URL path of the request a response or a client error belongs to ("" when it is not known)."""
    try:
        return str(failed.request.url.path)
    except (AttributeError, RuntimeError):
        return ""


def _for_file(failed: Any) -> str:
    """The words naming the repo file that the request of a response or a client error asked for (" for NAME"), or
    "" when it asked for none."""
    name = file_of(failed)
    return f" for {name}" if name else ""
