"""Which Hub dataset a `--data` path was downloaded from, when its path says so for sure.

`hf download --repo-type dataset ORG/NAME` (and `datasets.load_dataset`'s downloads) keep the files in the Hub cache
as ``<cache>/datasets--ORG--NAME/snapshots/<commit>/<file>`` (huggingface_hub's `repo_folder_name`: the repo type,
then the id with "--" for "/", which no Hub id contains). A path inside such a snapshot names its dataset; no other
path does: a `--local-dir` download records only the commit and etag of each file (``.cache/huggingface/download/
*.metadata``), a `datasets.save_to_disk` folder only the dataset's name without its namespace (dataset_info.json's
`dataset_name`), and a plain file nothing, so grow names no dataset for them rather than guess one.

The path is read as written, not resolved (a snapshot's files are links into the cache's ``blobs/``, whose paths
name no repo) and without the file system, so that the model card can ask it of grow.json's recorded paths; the
training run asks it of absolute paths and records what it finds in grow.json's `data.datasets`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from grow_cli.checkpoint.source import is_repo_id

REPO_FOLDER_PREFIX = "datasets--"  # a dataset repo's folder in the Hub cache
ID_SEPARATOR = "--"  # stands for "/" in that folder's name (huggingface_hub's REPO_ID_SEPARATOR)
SNAPSHOTS = "snapshots"  # the repo folder's checked-out revisions, one folder per commit


def hub_dataset(path: str | os.PathLike[str]) -> str | None:
    """The id of the Hub dataset whose cached snapshot holds `path` (a file, a folder or a glob), else None."""
    parts = Path(path).parts
    for folder, below in zip(parts, parts[1:], strict=False):
        if folder.startswith(REPO_FOLDER_PREFIX) and below == SNAPSHOTS:
            repo_id = "/".join(folder.removeprefix(REPO_FOLDER_PREFIX).split(ID_SEPARATOR))
            return repo_id if is_repo_id(repo_id) else None
    return None


def hub_datasets(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The Hub datasets `paths` came from (`hub_dataset`), each once, in the order first met."""
    return list(dict.fromkeys(repo_id for repo_id in map(hub_dataset, paths) if repo_id))
