"""`push_folder`: publish a finished grow (or plain transformers) output folder to a Hub model repo.

The order matters for the user: first the local checks that need no network (the folder is complete, the flags
agree, a token exists), then that a `refs/pr/N` revision exists (a push never makes one), then create the repo (409
"already exists" is fine), refresh the model card with the repo id, create the branch when missing, and upload the
folder with `upload_folder`. Large files go through LFS (or xet); the Hub keeps what already arrived, so re-running
the same push after a failure sends only what is missing. Last, the new commit is read back to say which files the
push sent (the client sends no file the revision already holds, and does not say which those were); when that read
fails, the push has still succeeded, and the result says the files are not known (`files` and `unchanged` None).
"""

from __future__ import annotations

import os
import re
import shlex
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelInfo

from grow_cli import __version__
from grow_cli.background import interruptible
from grow_cli.checkpoint.files import (
    CHECKPOINTS_DIR,
    TRAINING_STATE_DIR,
    WEIGHT_INDEXES,
    WEIGHT_LAYOUTS,
)
from grow_cli.checkpoint.kinds import what_else
from grow_cli.checkpoint.model_config import load_config
from grow_cli.checkpoint.reader import load_weight_map, not_a_file, read_safetensors_header
from grow_cli.checkpoint.source import is_repo_id
from grow_cli.console import hub_bars_only_on_a_terminal
from grow_cli.errors import CheckpointError, GrowError, HubError, UsageError, counted
from grow_cli.hub.client import (
    RERUN,
    check_cache_folders,
    endpoint,
    hub_client,
    is_offline,
    resolve_token,
    translate,
)
from grow_cli.hub.hub_card import hub_card_is_owned
from grow_cli.lineage.card import is_grow_card, render_card
from grow_cli.lineage.record import load_record
from grow_cli.whole_file import write_whole

# A user access token as the Hub issues them ("hf_" and 34 letters); older and test tokens are found by value.
HUB_TOKEN = re.compile(rb"\bhf_[A-Za-z0-9]{34}\b")
# What git's check-ref-format refuses anywhere in a branch name: control characters, space, ~ ^ : ? * [ and \.
BAD_REF_CHARACTERS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
SCAN_CHUNK = 8 << 20

# Besides huggingface_hub's own (.git/, .cache/huggingface/): editor and OS litter, and unfinished writes.
IGNORE_PATTERNS = [
    ".git",
    ".git/*",
    "**/.git/**",
    ".cache/*",
    "**/.cache/**",
    ".grow-cache/*",  # grow's token cache, where a run's --cache-dir put it inside the folder
    "**/.grow-cache/**",
    "*.tmp",
    "*.partial",
    ".DS_Store",
    "**/.DS_Store",
    "__pycache__/*",
    "**/__pycache__/**",
    # train-stage's resume state and a grown training state (optimizer moments, RNG): large, and not part of a
    # model repo
    f"{CHECKPOINTS_DIR}/*",
    f"{CHECKPOINTS_DIR}/**",
    f"{TRAINING_STATE_DIR}/*",
    f"{TRAINING_STATE_DIR}/**",
]

# The repo's own weight files, of every layout transformers loads (single file, index, shards). A push removes those
# the folder does not hold: a repo that held the model as one `model.safetensors` and is pushed a sharded one (a
# grown model, larger; a branch created from main) would otherwise keep the old file, which transformers and grow
# load before the index, so the repo would serve the old weights under the new config.
STALE_WEIGHT_PATTERNS = [
    pattern
    for single, index in WEIGHT_LAYOUTS
    for pattern in (single, index, "{}-*-of-*{}".format(*os.path.splitext(single)))
]


# What a transient failure's message says to do to resume: `push_output` names the `grow push` that does, where
# re-running the command that wrote the folder would redo its work.
_resume: ContextVar[str] = ContextVar("push_resume", default=RERUN)


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    quiet: bool = False,
    replace_card: bool = False,
) -> dict[str, Any]:
    """Upload `folder` to the model repo `repo_id` and return what happened.

    Returns `repo_id` (with its namespace), `revision`, `private`, `commit`, `commit_url`, `pr_url`, `url`, `card`
    ("regenerated", "kept", "hub" or "none": `refresh_card`, and "hub" where the revision's own README.md is not grow's
    card, so the push kept it, `hub_card.py`; `replace_card` replaces it all the same), `files` (each `{"path",
    "size"}`: the files the push sent, those its commit added or changed), `unchanged` (how many of the folder's other
    files to upload the revision already held as they are: not sent), `removed` (the revision's weight files of another
    layout, `STALE_WEIGHT_PATTERNS`, that the commit removed) — all three None when the commit was made but reading it
    back failed, so which files it changed is not known (the push succeeded all the same) — and `changed` (False when
    the revision already held every file: the client then makes no commit, and opens no pull request, so `commit` is the
    revision's head and `files` is empty). Raises CheckpointError for an incomplete folder or a README.md that cannot be
    a card, UsageError for contradictory options and HubError for everything the Hub refuses; a transient failure's
    message says to re-run the same command to resume (`push_output`'s, to run the `grow push` that does). `quiet`: no
    upload progress bars on stderr.
    """
    folder = Path(folder).expanduser()  # `~` is the home folder, as in a shell
    weights = check_complete(folder)
    check_card(folder)
    if revision:
        check_branch_name(revision)
    if create_pr and revision not in (None, "main"):
        raise UsageError(
            f"--create-pr opens a pull request against main; it cannot be combined with --revision {revision}"
        )
    token = check_can_push(repo_id, token)
    _refuse_leaked_token(folder, token, skip=set(weights))

    api = hub_client(token)
    action = "creating"
    try:
        if revision and revision.startswith("refs/"):
            action = f"looking up {revision} in"
            _check_ref_exists(api, repo_id, revision)
        action = "creating"
        repo_id = api.create_repo(repo_id, private=True if private else None, exist_ok=True).repo_id
        on_main = revision in (None, "main")
        main = api.model_info(repo_id, files_metadata=on_main)  # its files: what a push to main is compared with
        is_private = bool(main.private)  # the repo's own, reported: it may have been so before
        if private and not is_private:
            raise HubError(
                f"{repo_id} already exists and is public; --private cannot change that. Make it private in its "
                "settings on the Hub, or push without --private"
            )
        card = refresh_card(folder, repo_id)
        if revision and revision != "main" and not revision.startswith("refs/"):
            action = "creating branch " + revision + " in"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        action = "uploading to"
        head = main if on_main else api.model_info(repo_id, revision=revision, files_metadata=True)
        if card == "regenerated" and not replace_card and hub_card_is_owned(repo_id, head, folder, token):
            card = "hub"
        keep = ["README.md"] if card == "hub" else []
        with _quiet_about_no_commit(), hub_bars_only_on_a_terminal(quiet=quiet):
            info = interruptible(  # a Ctrl-C away from stopping: the client's upload threads would hold it
                lambda: api.upload_folder(
                    repo_id=repo_id,
                    folder_path=folder,
                    revision=revision,
                    commit_message=commit_message or default_commit_message(folder),
                    create_pr=create_pr,
                    ignore_patterns=[*IGNORE_PATTERNS, *keep],
                    delete_patterns=list(STALE_WEIGHT_PATTERNS),
                ),
                "grow-hub-upload",
            )
        local = [entry for entry in upload_files(folder) if entry["path"] not in keep]
        sent, removed = _changes(api, repo_id, head, info.oid, local)  # None: made, but its files not read back
    except HubError:
        raise
    except Exception as exc:  # the client's errors, translated once, without the token
        raise translate(exc, action, repo_id, _resume.get()) from None

    branch = (info.pr_revision if create_pr else None) or revision or "main"  # a pull request's refs/pr/N
    return {
        "repo_id": repo_id,
        "revision": branch,
        "private": is_private,
        "commit": info.oid,
        "commit_url": info.commit_url,
        "pr_url": info.pr_url,
        "url": f"{endpoint()}/{repo_id}" + ("" if branch == "main" or create_pr else f"/tree/{branch}"),
        "card": card,
        "files": sent,
        "unchanged": None if sent is None else len(local) - len(sent),
        "removed": removed,
        "changed": info.oid != head.sha,  # a push with nothing new returns the head it found (no commit, no PR)
    }


def _quiet_about_no_commit():
    """Drop the client's warning when the revision already holds every file ("No files have been modified since last
    commit. Skipping to prevent empty commit."): `changed` is then false and the command says so in its own words
    ("nothing to push: …"), so the client's line only doubled it, in another voice, above it."""
    from grow_cli.console import dropped_log_lines

    return dropped_log_lines(
        "No files have been modified since last commit", "huggingface_hub.hf_api", "huggingface_hub._upload_pipeline"
    )


def _changes(
    api: HfApi, repo_id: str, head: ModelInfo, commit: str, local: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]] | None, list[str] | None]:
    """The files of `local` that the push sent, and the paths it removed (`STALE_WEIGHT_PATTERNS`): those whose
    content differs between `head`, the revision it pushed onto, and its `commit`, and those `head` held that the
    commit does not (the client sends no file the revision already holds as it is, and reports none of this; with
    hf_xet a large folder may be committed in parts, which the comparison with `head` covers too). None for both
    when the commit cannot be read back: it is made, so the push succeeded, and a re-run would send nothing."""
    if commit == head.sha:
        return [], []
    try:
        after = api.model_info(repo_id, revision=commit, files_metadata=True)
    except Exception:  # any failure of the client (HTTP, network, an answer it cannot parse) leaves the commit made
        return None, None
    before, now = _content_ids(head), _content_ids(after)
    sent = [entry for entry in local if now.get(entry["path"]) != before.get(entry["path"])]
    return sent, sorted(before.keys() - now.keys())


def _content_ids(info: ModelInfo) -> dict[str, str | None]:
    """Each file of a revision (read with `files_metadata`) by what names its content: the LFS sha256, else the git
    blob id."""
    return {s.rfilename: s.lfs.sha256 if s.lfs else s.blob_id for s in info.siblings or []}


def _check_ref_exists(api: HfApi, repo_id: str, revision: str) -> None:
    """A `refs/…` revision (a pull request's `refs/pr/N`) is never made by a push: it must exist before anything is
    created, so that pushing to a missing one leaves no empty repo (nor a rewritten card) behind."""
    from huggingface_hub import errors

    what = f"pull request {revision}" if revision.startswith("refs/pr/") else revision
    instead = "open a pull request with --create-pr, or push to a branch with --revision NAME (created when missing)"
    try:
        api.repo_info(repo_id, revision=revision)
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"{repo_id} does not exist (or the token cannot see it), so it has no {what}; {instead}"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo_id} has no {what}; {instead}") from None


def check_repo_id(repo_id: str) -> None:
    """Refuse a `repo_id` the Hub would refuse, with no request: a dry run checks it too, so that the real run
    does not stop on it."""
    if not is_repo_id(repo_id):
        raise UsageError(
            f"'{repo_id}' is not a repo id: expected 'name' or 'namespace/name' (letters, digits, '-', '_' and '.', "
            "not starting or ending with '-' or '.', without '--' or '..', up to 96 characters each)"
        )


def check_branch_name(revision: str) -> None:
    """Refuse, with no request, a `--revision` that git (and so the Hub) cannot name a branch: the Hub refused it only
    once the repo was created and the card rewritten."""
    parts = revision.split("/")
    if (
        BAD_REF_CHARACTERS.search(revision)
        or ".." in revision
        or "@{" in revision
        or revision == "@"
        or revision.startswith("-")
        or revision.endswith(".")
        or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)
    ):
        raise UsageError(
            f"--revision {revision!r} is not a branch name git accepts: no spaces, control characters or any of "
            "~^:?*[\\, no '..' or '@{', no empty part or part starting with '.' or ending with '.lock', not starting "
            "with '-' or ending with '.'; e.g. stage-2"
        )


def check_can_push(repo_id: str, token: str | None) -> str:
    """What a push needs before any request (and before a long run that ends in one): a repo id, a token (returned)
    and the network."""
    check_repo_id(repo_id)
    check_cache_folders(hub_cache=False)  # the client reads the saved login there, even beside a given token
    token = resolve_token(token)
    if is_offline():
        raise HubError(f"pushing to {repo_id} needs the network, but HF_HUB_OFFLINE=1 is set; unset it and re-run")
    return token


def push_output(folder: Path, repo_id: str, *, made_by: str, private: bool = False, **options: Any) -> dict[str, Any]:
    """`push_folder` at the end of a command that wrote `folder` (`--push-to-hub`): when the push fails, the output
    stays complete on disk, and the one line says so and gives the `grow push` command that resumes the upload
    (re-running `made_by` itself would refuse the existing folder or redo the work)."""
    command = f"grow push {shlex.quote(str(folder))} {repo_id}" + (" --private" if private else "")
    resume = _resume.set(f"run `{command}`")
    try:
        return push_folder(folder, repo_id, private=private, **options)
    except GrowError as exc:
        text = str(exc) if command in str(exc) else f"{exc}; then run `{command}`"
        raise HubError(
            f"{made_by} finished and {folder} is complete, but pushing it to {repo_id} failed: {text}"
        ) from None
    finally:
        _resume.reset(resume)


def check_complete(folder: Path) -> list[str]:
    """Check `folder` is a complete checkpoint (config, every weight file, untruncated); return the weight files."""
    if not folder.is_dir():
        state = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise CheckpointError(f"{folder} {state}; pass the output folder of `grow expand` or `grow train-stage`")
    if not os.path.lexists(folder / "config.json"):  # named as what it holds instead (a model in a subfolder, …)
        instead = what_else(folder) or "not a finished checkpoint (did the run complete?)"
        raise CheckpointError(f"{folder} has no config.json: {instead}")
    load_config(folder)
    load_record(folder)  # a grow.json, when present, must be a valid record

    weights: list[str] = []
    for index_name in WEIGHT_INDEXES:
        if (folder / index_name).is_file():
            weights = sorted(set(load_weight_map(folder, index_name).values()))
            break
    else:
        weights = [single for single, _ in WEIGHT_LAYOUTS if (folder / single).is_file()][:1]
    if not weights:
        raise CheckpointError(
            f"{folder} has no weights (expected model.safetensors, a sharded model.safetensors.index.json, or "
            "pytorch_model.bin): not a finished checkpoint"
        )
    unread = [(name, problem) for name in weights if (problem := not_a_file(folder / name))]
    missing = [name for name, _ in unread if not os.path.lexists(folder / name)]
    if missing:
        raise CheckpointError(
            f"{folder} is incomplete: {counted(len(missing), 'weight file')} missing, e.g. {missing[0]}"
        )
    if unread:
        raise CheckpointError(f"{folder} is not a finished checkpoint: its weight file {unread[0][0]} {unread[0][1]}")
    for name in weights:
        if name.endswith(".safetensors"):
            read_safetensors_header(folder / name)  # the reader's strict check: complete, untruncated, consistent
    return weights


def check_card(folder: Path) -> None:
    """Refuse, before any request, a README.md that cannot be a model card: the client reads it as UTF-8 text (to
    have the Hub check its metadata) and `refresh_card` compares it with grow's rendering. A folder or other bytes
    there failed only once the repo was made, and were named as the Hub's failure (a UnicodeDecodeError)."""
    readme = folder / "README.md"
    if not os.path.lexists(readme):
        return
    problem = not_a_file(readme)
    if problem:
        raise CheckpointError(f"{readme} {problem}, where the model card goes; remove or rename it")
    try:
        readme.read_bytes().decode()
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{readme} is not UTF-8 text (at byte {exc.start:,}), as a model card must be; save it as UTF-8, or "
            "remove it"
        ) from None


def _refuse_leaked_token(folder: Path, token: str, skip: set[str]) -> None:
    """Refuse to publish a folder in which a file to upload holds the token, or anything shaped like a Hub token
    (a `.env`, a training log, a pickled `training_args.bin`, a command line recorded with --token). Only the
    checked weight files (`skip`) are not read; the rest is read in chunks, as logs can be large."""
    needles = re.compile(re.escape(token.encode()) + rb"|" + HUB_TOKEN.pattern)
    overlap = max(len(token), 64)
    for entry in upload_files(folder):
        if entry["path"] in skip:
            continue
        with open(folder / entry["path"], "rb") as f:
            tail = b""
            while chunk := f.read(SCAN_CHUNK):
                found = needles.search(tail + chunk)
                if found:
                    what = "the Hub token" if found.group() == token.encode() else "a Hugging Face token (hf_…)"
                    raise HubError(
                        f"refusing to push: {entry['path']} contains {what}; remove it from the file (and revoke "
                        "the token if the file was shared)"
                    )
                tail = chunk[-overlap:]


def refresh_card(folder: Path, repo_id: str) -> str:
    """Re-render README.md from grow.json with `repo_id` as title, unless the user edited the card.

    The card is regenerated when it is missing or is exactly what grow rendered (under any title). A card that
    differs was edited by hand and is kept. Returns "regenerated", "kept" or "none" (no grow.json).
    """
    record = load_record(folder)
    if record is None:
        return "none"
    readme = folder / "README.md"
    if readme.is_file() and not is_grow_card(readme.read_text(), record):
        return "kept"
    write_whole(readme, render_card(record, title=repo_id))
    return "regenerated"


def default_commit_message(folder: Path) -> str:
    """A summary of the newest stage in grow.json, e.g. 'grow: expand (stack, interleave)'."""
    record = load_record(folder)
    if not record or not record["stages"]:
        return f"Upload model with grow {__version__}"
    stage = record["stages"][-1]
    if stage.get("kind") == "expand":
        methods = [stage[p]["method"] for p in ("width", "depth") if (stage.get(p) or {}).get("method")]
        layers = (stage.get("target") or {}).get("layers")
        what = f"grown to {layers} layers" if layers else "grown"
        return f"grow expand: {what}" + (f" ({', '.join(methods)})" if methods else "")
    tokens = stage.get("tokens")
    return "grow train-stage" + (f": {tokens:,} tokens" if isinstance(tokens, int) else "")


def upload_files(folder: Path) -> list[dict[str, Any]]:
    """The files `upload_folder` sends from `folder` (after the ignore patterns), with their sizes."""
    from huggingface_hub.utils import filter_repo_objects

    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    kept = filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS + [".git/**", ".cache/huggingface/**"])
    return [{"path": p, "size": (folder / p).stat().st_size} for p in kept]
