"""`download_checkpoint`: fetch from the Hub only the files grow needs to read a checkpoint, through the cache.

What grow needs: config.json, ONE weight format (model.safetensors, else the shards named by
model.safetensors.index.json, else pytorch_model.bin or its index and shards), the tokenizer, generation_config.json,
grow.json and the other small top-level files (under 50 MB: README, licence, chat template...), and a
sentence-transformers model's module folders that modules.json lists (their small files and weights). Other weight
formats (a repo often carries .bin and .safetensors copies, ONNX, GGUF, `original/` folders) are left on the Hub.

Files land in the standard `huggingface_hub` cache, so a second run downloads nothing. With `HF_HUB_OFFLINE=1` the
cache is used alone, and a clear error says when the checkpoint is not in it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from grow_cli.background import interruptible
from grow_cli.checkpoint.files import (
    BIN_SINGLE,
    SAFETENSORS_SINGLE,
    SENTENCE_TRANSFORMERS_MODULES,
    WEIGHT_LAYOUTS,
    WEIGHT_SUFFIXES,
)
from grow_cli.checkpoint.kinds import other_framework_files, what_else_on_hub
from grow_cli.console import hub_bars_only_on_a_terminal
from grow_cli.errors import HubError, counted
from grow_cli.hub.client import (
    TransportError,
    check_cache_folders,
    endpoint,
    hub_client,
    is_offline,
    lost_connection,
    translate,
)
from grow_cli.hub.network import bounded_waits, hub_retries, lists_the_tree, retrying

SMALL_FILE_BYTES = 50 * 1024 * 1024
MOVED_RETRIES = 3  # downloads of a revision that moved meanwhile, before giving up


def download_checkpoint(
    repo_id: str, *, revision: str | None = None, token: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Download what grow needs from `repo_id` at `revision` (default: main); return (snapshot folder, source).

    `source` is `{"repo_id", "revision" (as requested, or None), "commit" (the resolved commit sha), "files"}`.
    """
    where = where_of(repo_id, revision)
    check_cache_folders()
    if is_offline():
        return _from_cache(repo_id, revision, where)

    hub_retries()  # a GROW_HUB_RETRIES that is not a number is refused before any request
    with bounded_waits():
        try:
            for _ in range(MOVED_RETRIES):
                info = repo_listing(repo_id, revision, token)
                _, files = needed_files(repo_id, revision, info, token)
                # By name, not by sha, so the cache records the ref and HF_HUB_OFFLINE=1 finds it later. The name is
                # resolved again: when a push moved it since `model_info`, the files chosen belong to another commit.
                folder = fetch_files(repo_id, revision, files, token, commit=info.sha)
                if Path(folder).name == info.sha:
                    break
            else:
                raise HubError(
                    f"{where} moved to a new commit {MOVED_RETRIES} times while it was downloaded (someone is pushing "
                    "to it); re-run later, or pass --revision with a commit sha"
                )
        except HubError:
            raise
        except TransportError as exc:
            return cached_copy(repo_id, revision, exc)
        except Exception as exc:
            raise translate(exc, "downloading", repo_id) from None
    # snapshot_download falls back to a partial cached snapshot when the Hub fails mid-way: refuse that.
    missing = [name for name in files if not (Path(folder) / name).is_file()]
    if missing:
        raise HubError(
            f"download of {where} is incomplete ({counted(len(missing), 'file')} missing, e.g. {missing[0]}); the Hub "
            "did not answer every request: re-run the same command to finish it"
        )
    return Path(folder), {"repo_id": repo_id, "revision": revision, "commit": info.sha, "files": files}


def fetch_files(repo_id: str, revision: str | None, files: list[str], token: str | None, *, commit: str) -> str:
    """`snapshot_download` of `files` from `repo_id` at `revision` into the cache, a Ctrl-C away from stopping
    (`interruptible`: the client's download threads would hold it); the snapshot folder. Run again after a transient
    failure (`retrying`): the files that arrived are in the cache, and only the others are downloaded.

    When the repo's own listing fails (a Hub that stalls or fails there after answering grow's), `snapshot_download`
    hands back the snapshot folder as the cache holds it, without a word: the files it lacks are then asked for one by
    one, which downloads them or fails with the reason (the line then names it, e.g. the timeout to raise). By the
    revision's name, as `snapshot_download` asks, so that the cache records the name and HF_HUB_OFFLINE=1 finds the
    snapshot later; and only into the snapshot of `commit`, the one listed: a revision that moved since holds other
    files, and is downloaded again whole (`download_checkpoint`).

    huggingface_hub before 2.0 lets a network failure of that listing (`list_repo_tree`) out of `snapshot_download`
    instead: the files are then asked for one by one all the same, the first of them telling the snapshot folder."""
    with hub_bars_only_on_a_terminal():
        return _fetch_files(repo_id, revision, files, token, commit=commit)


def _fetch_files(repo_id: str, revision: str | None, files: list[str], token: str | None, *, commit: str) -> str:
    try:
        folder = retrying(
            lambda: interruptible(
                lambda: snapshot_download(repo_id, revision=revision, allow_patterns=files, **file_options(token)),
                "grow-hub-download",
            ),
            f"downloading {repo_id}",
        )
    except TransportError as exc:
        if not lists_the_tree(exc):
            raise
        first = fetch_file(repo_id, revision, files[0], token)
        folder = str(Path(first).parents[len(Path(files[0]).parts) - 1])
    if Path(folder).name == commit:
        for name in [name for name in files if not (Path(folder) / name).is_file()]:
            fetch_file(repo_id, revision, name, token)
    return folder


def fetch_file(repo_id: str, revision: str | None, name: str, token: str | None) -> str:
    """`hf_hub_download` of the file `name` of `repo_id` at `revision` into the cache (`retrying`); its path there."""
    return retrying(
        lambda: hf_hub_download(repo_id, name, revision=revision, **file_options(token)),
        f"downloading {name} of {repo_id}",
    )


def cached_copy(repo_id: str, revision: str | None, exc: BaseException) -> tuple[Path, dict[str, Any]]:
    """What a download of `repo_id` falls back on when the Hub cannot be reached (`exc`, a TransportError): the
    complete copy of the revision in the local cache, as good as a download; else a HubError that says so."""
    where = where_of(repo_id, revision)
    try:
        return _from_cache(repo_id, revision, where)
    except HubError:
        raise HubError(
            f"{lost_connection(exc)} while downloading {where}, and no complete copy is in the local cache; "
            "check the network or HF_ENDPOINT, then re-run the same command to resume: files already "
            "downloaded stay in the cache"
        ) from None


def where_of(repo_id: str, revision: str | None) -> str:
    """A repo as messages name it: `org/name`, with the revision where one was asked for."""
    return repo_id + (f" (revision {revision})" if revision else "")


def file_options(token: str | None) -> dict[str, Any]:
    """What `hf_hub_download` and `snapshot_download` are given besides the repo: the endpoint and the token."""
    return {"endpoint": endpoint(), "token": token or None}


def repo_listing(repo_id: str, revision: str | None, token: str | None) -> Any:
    """`model_info` of `repo_id` at `revision` with each file's size and hashes, what grow chooses its downloads from.

    It waits for the Hub at most HF_HUB_ETAG_TIMEOUT seconds, as huggingface_hub waits for a file's metadata before
    a download; the client gives this call no timeout of its own, and a server that took the connection and never
    answered held grow forever (a TransportError now, which falls back on the cache). Asked again after a transient
    failure (`retrying`)."""
    return retrying(
        lambda: hub_client(token).model_info(
            repo_id, revision=revision, files_metadata=True, timeout=constants.HF_HUB_ETAG_TIMEOUT
        ),
        f"listing the files of {repo_id}",
    )


def needed_files(
    repo_id: str, revision: str | None, info: Any, token: str | None
) -> tuple[dict[str, int | None], list[str]]:
    """The size of each file `info` (`model_info` of `repo_id` at `revision`, with files metadata) lists, and the
    files grow needs of them (`select_files`: a weight index is downloaded, at the listed commit, to read the shards
    it names)."""
    sizes = {s.rfilename: s.size for s in info.siblings or []}

    def read_index(name: str) -> Any:
        return json.loads(Path(fetch_file(repo_id, info.sha, name, token)).read_text())

    return sizes, select_files(sizes, read_index, where_of(repo_id, revision))


def select_files(sizes: dict[str, int | None], read_index, where: str) -> list[str]:
    """The files to download from a repo listing `{path: size}`; `read_index(name)` fetches a weight index."""
    if "config.json" not in sizes:
        instead = what_else_on_hub(list(sizes))
        raise HubError(f"{where} has no config.json: {instead or 'it is not a transformers checkpoint'}")
    weights: list[str] = []
    for single, index in WEIGHT_LAYOUTS:
        if single in sizes:
            weights = [single]
            break
        if index in sizes:
            shards = sorted(set(read_index(index).get("weight_map", {}).values()))
            missing = [s for s in shards if s not in sizes]
            if missing:
                raise HubError(
                    f"{where}: {index} names {counted(len(missing), 'shard')} missing from the repo, e.g. {missing[0]}"
                )
            weights = [index, *shards]
            break
    if not weights:
        other = other_framework_files(sizes)
        if other:
            raise HubError(f"{where} has no PyTorch weights: {other}")
        raise HubError(
            f"{where} has no transformers weights (looked for model.safetensors, model.safetensors.index.json, "
            "pytorch_model.bin and its index)"
        )
    small = [
        name
        for name, size in sizes.items()
        if "/" not in name
        and not name.endswith(WEIGHT_SUFFIXES)
        and name != ".gitattributes"
        and (size is None or size < SMALL_FILE_BYTES)
    ]
    modules = module_files(sizes, read_index) if SENTENCE_TRANSFORMERS_MODULES in sizes else []
    return sorted(set(small) | set(weights) | set(modules))


def module_files(sizes: dict[str, int | None], read_json) -> list[str]:
    """A sentence-transformers model's module folders (`1_Pooling/`, `2_Dense/`, … as modules.json lists them): their
    small files and their weights in one format, model.safetensors else pytorch_model.bin — what the output needs to
    load as the model modules.json names (grow_cli/growth/st_modules.py)."""
    entries = read_json(SENTENCE_TRANSFORMERS_MODULES)
    paths = (
        {str(e["path"]).strip("/") for e in entries if isinstance(e, dict) and e.get("path")}
        if isinstance(entries, list)
        else set()
    )
    files = []
    for path in paths - {"", "."}:
        inside = {name: size for name, size in sizes.items() if name.startswith(f"{path}/")}
        weights = next((f"{path}/{w}" for w in (SAFETENSORS_SINGLE, BIN_SINGLE) if f"{path}/{w}" in inside), None)
        files += [
            name
            for name, size in inside.items()
            if name == weights or (not name.endswith(WEIGHT_SUFFIXES) and (size is None or size < SMALL_FILE_BYTES))
        ]
    return files


def _from_cache(repo_id: str, revision: str | None, where: str) -> tuple[Path, dict[str, Any]]:
    """The cached snapshot of `repo_id` at `revision`, checked for config and weights, without any request."""
    try:
        # Only config.json is asked for: the cache need not hold the whole repo, only what grow downloaded.
        folder = Path(
            snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=["config.json"])
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        folder = None
    if folder is None or not (folder / "config.json").is_file():
        raise HubError(
            f"HF_HUB_OFFLINE=1 is set and {where} is not in the local cache; download it once online "
            "(unset HF_HUB_OFFLINE), or pass a local folder"
        )
    missing = _missing_weights(folder)
    if missing:
        raise HubError(
            f"HF_HUB_OFFLINE=1 is set and {where} is only partly in the local cache (missing {missing}); finish the "
            "download online (unset HF_HUB_OFFLINE and re-run), or pass a local folder"
        )
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
    return folder, {"repo_id": repo_id, "revision": revision, "commit": commit, "files": files}


def _missing_weights(folder: Path) -> str | None:
    """What the cached snapshot lacks of its weights (None when they are all there): a download cut short leaves
    config.json and some shards."""
    for single, index in WEIGHT_LAYOUTS:
        if (folder / single).is_file():
            return None
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text()).get("weight_map", {}).values()))
            absent = [s for s in shards if not (folder / s).is_file()]
            return f"{len(absent)} of {len(shards)} shards, e.g. {absent[0]}" if absent else None
    return "the weights"
