"""A Hub checkpoint's config and safetensors headers without its weights, for the commands that read nothing else.

`grow inspect`, `grow expand --dry-run` and `grow family --check` read config.json and each shard's header, and no
more; a whole download first would be 140 GB for a 70B model, to print a plan. `mirror_headers` fetches the
small files (into the standard cache, where a later download finds them) and, from each safetensors shard, only its
header, by HTTP range requests as `huggingface_hub.HfApi.get_safetensors_metadata` does (the first 100 kB, then the
rest of a longer header) — through the client's own session, URLs and headers, but not that call, which returns the
header already parsed, a repeated key silently merged, where grow's validator needs its bytes. Each shard becomes a
sparse file in a temporary folder: the real header, then a hole up to the shard's true size. The ordinary reader and
its strict header validator then read the folder as they read any checkpoint, so a plan made this way is the plan a
full download gives.

The few commands that read tensor bytes while planning (comparing a tied head that is stored anyway with its
embedding) get them through `RemoteBytes`, which fetches exactly those byte ranges into the sparse files before the
reader reads them. Weights in `pytorch_model.bin` files have no header to read apart, so they are downloaded whole
(`mirror_headers` answers None). Offline, or when the Hub cannot be reached or stops answering, a checkpoint is
read from a complete copy in the cache, or not at all: never downloaded whole because the Hub answered again.

Each request waits for the Hub at most as long as huggingface_hub's own: HF_HUB_ETAG_TIMEOUT seconds for the repo's
listing, HF_HUB_DOWNLOAD_TIMEOUT for file bytes (`repo_listing`, `read_range`).
"""

from __future__ import annotations

import os
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from huggingface_hub import constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from grow_cli import __version__
from grow_cli.checkpoint.header import MAX_HEADER
from grow_cli.errors import HubError
from grow_cli.hub.client import TransportError, check_cache_folders, endpoint, is_offline, translate
from grow_cli.hub.download import cached_copy, fetch_files, needed_files, repo_listing
from grow_cli.hub.network import bounded_waits, hub_retries, retrying

FIRST_READ = 100_000  # bytes read from a shard's start: huggingface_hub's guess, which holds 97% of headers whole
PARALLEL = 8  # shards whose headers are read at once


class RemoteBytes:
    """Fills byte ranges of the sparse shard files from the Hub, once each, before the reader reads them."""

    def __init__(self, urls: dict[Path, str], headers: dict[str, str], repo_id: str) -> None:
        self._urls = urls  # by the shard's resolved path: a reader may see it through a link
        self._headers = headers
        self._repo_id = repo_id
        self._present: set[tuple[Path, int, int]] = set()
        self._lock = threading.Lock()

    def __call__(self, path: Path, start: int, end: int) -> None:
        """Make bytes [start, end) of the mirrored shard `path` its real bytes."""
        with self._lock:
            if (path, start, end) in self._present or start >= end:
                return
            try:
                data = read_range(
                    self._urls[path.resolve()], self._headers, start, end, f"{path.name} of {self._repo_id}"
                )
            except HubError:
                raise
            except Exception as exc:
                raise translate(exc, "downloading tensor bytes of", self._repo_id) from None
            fd = os.open(path, os.O_WRONLY)
            try:
                os.pwrite(fd, data, start)
            finally:
                os.close(fd)
            self._present.add((path, start, end))


def mirror_headers(
    repo_id: str, *, revision: str | None, token: str | None, into: Path
) -> tuple[str, RemoteBytes] | None:
    """Write `repo_id`'s small files (links into the cache) and the headers of its safetensors shards (sparse files)
    into the empty folder `into`; return (the commit read, a `RemoteBytes` for tensor bytes), or None where the
    weights must be downloaded instead (`.bin` weights) or read from the cache (offline, or the Hub unreachable with
    the revision cached whole; unreachable without it, a HubError)."""
    check_cache_folders()
    if is_offline():
        return None
    hub_retries()  # a GROW_HUB_RETRIES that is not a number is refused before any request
    with bounded_waits():
        try:
            info = repo_listing(repo_id, revision, token)
        except TransportError as exc:
            # The Hub cannot be reached, or stopped answering: a complete cached copy serves (the download path finds
            # it), else this says so. Not a download: the Hub answering again moments later would fetch every weight.
            cached_copy(repo_id, revision, exc)
            return None
        except Exception as exc:
            raise translate(exc, "downloading", repo_id) from None
        try:
            sizes, files = needed_files(repo_id, revision, info, token)
            shards = [name for name in files if name.endswith(".safetensors") and "/" not in name]
            if not shards:
                return None
            small = [name for name in files if name not in shards]  # a sentence-transformers module's weights too
            cached = Path(fetch_files(repo_id, info.sha, small, token, commit=info.sha))
            for name in small:
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                (into / name).symlink_to((cached / name).resolve())
            headers = build_hf_headers(token=token or None, library_name="grow", library_version=__version__)
            urls = {into / name: hf_hub_url(repo_id, name, revision=info.sha, endpoint=endpoint()) for name in shards}
            with ThreadPoolExecutor(PARALLEL, thread_name_prefix="grow-headers") as pool:
                jobs = [
                    pool.submit(_mirror_shard, path, url, headers, sizes[path.name], f"{path.name} of {repo_id}")
                    for path, url in urls.items()
                ]
                for job in jobs:
                    job.result()
        except HubError:
            raise
        except Exception as exc:
            raise translate(exc, "downloading the shard headers of", repo_id) from None
    return str(info.sha), RemoteBytes({path.resolve(): url for path, url in urls.items()}, headers, repo_id)


def _mirror_shard(path: Path, url: str, headers: dict[str, str], size: int | None, what: str) -> None:
    """The shard at `url` (`what`, as messages name it) as a sparse file at `path`: its header bytes, then a hole up
    to its size (a size the Hub did not list is taken from the header: the validator then cannot find the file
    truncated, only the download)."""
    head = read_range(url, headers, 0, min(FIRST_READ, size) if size else FIRST_READ, what)
    if len(head) >= 8:
        (length,) = struct.unpack("<Q", head[:8])
        wanted = 8 + length
        if len(head) < wanted <= 8 + MAX_HEADER and (size is None or wanted <= size):
            head += read_range(url, headers, len(head), wanted, what)  # a longer header: the rest of it
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size if size is not None else len(head))


def read_range(url: str, headers: dict[str, str], start: int, end: int, what: str) -> bytes:
    """Bytes [start, end) of the file at `url` (`what`, as messages name it), fewer only where the file ends sooner;
    each wait for the Hub lasts at most HF_HUB_DOWNLOAD_TIMEOUT seconds, as huggingface_hub's own downloads do.

    A server that ignores the range and sends the whole file is read only as far as the range reaches. One that
    answers another range, or sends fewer bytes than the file holds there, is refused (HubError): what it sent would
    be read as the header or the tensor bytes asked for, a header then refused as a corrupted file and a tensor
    compared wrongly. Asked again after a transient failure, a stall or a broken connection included (`retrying`)."""
    return retrying(lambda: _read_range(url, headers, start, end, what), f"reading {what}", client_resumes_bytes=False)


def _read_range(url: str, headers: dict[str, str], start: int, end: int, what: str) -> bytes:
    """One try of `read_range`."""
    wanted = end - start
    parts: list[bytes] = []
    got = 0
    with get_session().stream(
        "GET", url, headers={**headers, "Range": f"bytes={start}-{end - 1}"}, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    ) as response:
        hf_raise_for_status(response)
        skip, file_end = start, None  # a whole file (200), read to its end
        if response.status_code == 206:
            sent = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
            if sent is None or int(sent.group(1)) != start:
                raise HubError(
                    f"the Hub sent {what} from the wrong place (Content-Range "
                    f"{response.headers.get('Content-Range', 'missing')!r}, asked for bytes {start}-{end - 1}); re-run "
                    "the same command, and check any proxy between grow and the Hub"
                )
            skip, file_end = 0, None if sent.group(3) == "*" else int(sent.group(3))
        for chunk in response.iter_bytes():
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            parts.append(chunk[: wanted - got])
            got += len(parts[-1])
            if got >= wanted:
                break
        else:  # the answer ended before the range did: a whole file (200) ends there
            if response.status_code == 200:
                file_end = start + got
    expected = wanted if file_end is None else max(0, min(end, file_end) - start)
    if got < expected:
        raise HubError(
            f"the Hub sent {got:,} of the {expected:,} bytes asked for from {what} (bytes {start:,}-{end - 1:,}); "
            "re-run the same command"
        )
    return b"".join(parts)
