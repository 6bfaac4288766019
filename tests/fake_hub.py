"""A fake Hugging Face Hub on 127.0.0.1 for grow's push and download tests: real HTTP, real `huggingface_hub`.

`FakeHub` is an in-process `ThreadingHTTPServer` that answers the endpoints `huggingface_hub` 2.4 calls to create a
repo and a branch, validate a model card, upload a folder (preupload, LFS batch, LFS PUT, ndjson commit) and to
download files (model_info, HEAD/GET resolve, with byte ranges: each request records the `range` asked and the bytes
`sent`). See docs/reference ecosystem.md §2.6 for the payloads.

It keeps repos in memory as commits of `{path: bytes}` trees, stores LFS objects per repo (so a re-run of an upload
is told which objects already arrived, as the real Hub does), records every request, and has switches to make it
misbehave: `fail` (any endpoint answers an HTTP status, with headers such as Retry-After, drops the connection, cuts
or resets it mid-body, never answers, redirects to itself; a file is sent whole despite a Range, from the wrong
offset, short, or with its bytes changed), `create_status` (e.g. 409 on repo creation), `fail_lfs_put_after` (HTTP
500 on every LFS PUT after the first N), `reject_tokens` (HTTP 401 for any token), `force_regular` (answer "regular"
to every preupload, the path the xet pipeline takes without talking to a xet server). Its `whoami` answers as the
Hub's does for `user`, with `orgs` (acme, where the user may write) and the token's `access_token` (a write token).

The tokens it accepts never leave this process: tests check that they appear in no output and no file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import fnmatch
import hashlib
import itertools
import json
import os
import re
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

# The patterns the Hub's default .gitattributes stores in LFS (a subset); files of 10 MB or more go to LFS too.
LFS_PATTERNS = [
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.gguf",
    "*.model",
    "*.npz",
    "*.zip",
    "*.tar.gz",
]
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()

# What the Hub's metadata validation accepts for the keys grow writes (hub-docs model-cards.md).
BASE_MODEL_RELATIONS = {"adapter", "merge", "quantized", "finetune"}
PIPELINE_TAGS = {
    "text-generation",
    "fill-mask",
    "feature-extraction",
    "text-classification",
    "token-classification",
    "question-answering",
    "summarization",
    "translation",
    "sentence-similarity",
    "text2text-generation",
}
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def validate_card(content: str) -> list[str]:
    """The errors the Hub's `/api/validate-yaml` reports for a README's front matter (for the keys grow uses)."""
    if not content.startswith("---\n"):
        return []  # no metadata block: nothing to validate
    end = content.find("\n---", 4)
    if end < 0:
        return ["metadata block is not closed by '---'"]
    try:
        meta = yaml.safe_load(content[4:end])
    except yaml.YAMLError as exc:
        return [f"YAML parse error: {exc}"]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return ["metadata must be a YAML mapping"]
    errors = []

    def str_list(key: str, *, ids: bool = False) -> list[str] | None:
        value = meta.get(key)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            errors.append(f'"{key}" must be a string or a list of strings')
            return None
        if ids:
            errors.extend(f'"{key}": "{v}" is not a valid repo id' for v in values if not REPO_ID.match(v))
        return values

    if "base_model" in meta:
        str_list("base_model", ids=True)
    if "base_model_relation" in meta:
        if meta["base_model_relation"] not in BASE_MODEL_RELATIONS:
            errors.append(f'"base_model_relation" must be one of {sorted(BASE_MODEL_RELATIONS)}')
        if "base_model" not in meta:
            errors.append('"base_model_relation" needs "base_model"')
    if "library_name" in meta and not isinstance(meta["library_name"], str):
        errors.append('"library_name" must be a string')
    if "pipeline_tag" in meta and meta["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" "{meta["pipeline_tag"]}" is not a known task')
    for key in ("tags", "language"):
        if key in meta:
            str_list(key)
    if "datasets" in meta:
        str_list("datasets", ids=True)
    return errors


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    description: str
    tree: dict[str, bytes]  # path -> content (LFS files resolved to their bytes)
    lfs: dict[str, str]  # path -> sha256 of the LFS files in this tree


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid ("refs/pr/N" for PRs)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes received

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class Request:
    method: str
    path: str
    status: int = 0
    body_size: int = 0
    range: str = ""  # the Range header asked for
    sent: int = 0  # bytes of file content answered (GET of a file)


class FakeHub:
    """The server and its state. Use as a context manager, or call `start()` / `stop()`."""

    def __init__(self, *, token: str = "hf_fakeWriteToken0123456789", user: str = "tester") -> None:
        self.token = token
        self.user = user
        self.orgs = [{"name": "acme", "roleInOrg": "write"}]  # whoami's organizations of `user`
        self.access_token: dict = {"displayName": "grow tests", "role": "write"}  # whoami's auth.accessToken
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.lfs_puts: list[tuple[str, int]] = []  # (sha256 oid, status) of every LFS PUT, in order
        self.validated: list[str] = []  # README texts sent to /api/validate-yaml
        self.create_status: int | None = None  # answer repo creation with this status (409: already exists)
        self.fail_lfs_put_after: int | None = None  # every LFS PUT after this many successful ones gets a 500
        self.reject_tokens = False  # every token is refused with 401
        self.force_regular = False  # preupload answers "regular" for every file
        self.faults: list[list] = []  # [method, path substring, action, times left, headers]: see `fail`
        self._stopping = threading.Event()  # set by `stop`: "hang" faults end
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- state helpers for tests -------------------------------------------------------------------------

    def create_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        with self._lock:
            repo = Repo(repo_id, private)
            first = self._commit(repo, None, "initial commit", "", {".gitattributes": GITATTRIBUTES})
            repo.branches["main"] = first.oid
            self.repos[repo_id] = repo
            return repo

    def add_files(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", message: str = "add") -> str:
        """Commit `files` onto `branch` (created from main when missing); return the commit oid."""
        with self._lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            head = repo.resolve(branch) or repo.resolve("main")
            tree = {**head.tree, **files}
            commit = self._commit(repo, head.oid, message, "", tree)
            repo.branches[branch] = commit.oid
            return commit.oid

    def add_folder(self, repo_id: str, folder: Path, **kwargs) -> str:
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()
        }
        return self.add_files(repo_id, files, **kwargs)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].resolve(revision).tree)

    def head(self, repo_id: str, revision: str = "main") -> Commit:
        return self.repos[repo_id].resolve(revision)

    def fail(
        self, method: str, contains: str, action: int | str, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Misbehave on the next `times` requests `method` whose path contains `contains`. `action` is one of:

        - an HTTP status (an int), with `headers` (e.g. Retry-After) in the answer;
        - "drop": close the connection before handling the request; "hang": accept it and never answer (until the
          server stops); "cut": handle it and close the connection halfway through the response body (a download
          that breaks mid-file; a commit whose answer is lost); "reset": the same, the connection reset (an RST, the
          client's ECONNRESET) instead of closed; "loop": redirect to the same URL;
        - for a file: "whole" (ignore a Range: 200 and every byte), "misplaced" (a Range answered from byte 0, its
          Content-Range saying so), "short" (half the body, its Content-Length saying so), "corrupt" (every byte
          sent, one of them changed: the etag and sha256 no longer match)."""
        with self._lock:
            self.faults.append([method, contains, action, times, headers or {}])

    def _take_fault(self, method: str, path: str) -> tuple[int | str | None, dict[str, str]]:
        with self._lock:
            for fault in self.faults:
                if fault[0] == method and fault[1] in path and fault[3] > 0:
                    fault[3] -= 1
                    return fault[2], fault[4]
        return None, {}

    def paths_requested(self, method: str, contains: str = "") -> list[str]:
        return [r.path for r in self.requests if r.method == method and contains in r.path]

    # ---- internals -----------------------------------------------------------------------------------------

    def _commit(
        self,
        repo: Repo,
        parent: str | None,
        message: str,
        description: str,
        tree: dict[str, bytes],
        lfs: dict[str, str] | None = None,
    ) -> Commit:
        n = next(self._counter)
        oid = hashlib.sha1(f"{repo.repo_id}:{n}:{parent}:{message}".encode()).hexdigest()
        lfs = dict(lfs or {})
        for path, data in tree.items():
            if path not in lfs and _is_lfs(path, len(data)):
                lfs[path] = hashlib.sha256(data).hexdigest()
        commit = Commit(oid, parent, message, description, tree, {p: o for p, o in lfs.items() if p in tree})
        repo.commits[oid] = commit
        return commit


def _is_lfs(path: str, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_MIN_SIZE or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except ConnectionError:  # the client left before the answer ended (a range read whole: it stops early)
                self.close_connection = True

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        # -- plumbing --

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            record = Request(method, parts.path, body_size=len(body), range=self.headers.get("Range", ""))
            with hub._lock:
                hub.requests.append(record)
            self.query = parse_qs(parts.query)
            segments = [unquote(s) for s in parts.path.strip("/").split("/")]
            fault, fault_headers = hub._take_fault(method, parts.path)
            if fault in ("drop", "hang"):
                record.status = -1
                self.close_connection = True
                if fault == "hang":
                    hub._stopping.wait()
                return
            if fault == "whole":
                del self.headers["Range"]
            elif fault == "misplaced" and (asked := re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))):
                self.headers.replace_header("Range", f"bytes=0-{int(asked.group(2)) - int(asked.group(1))}")
            try:
                if isinstance(fault, int):
                    message = {401: "Invalid credentials", 403: "Forbidden", 429: "Too Many Requests"}
                    raise HubHTTPError(fault, message.get(fault, f"fake hub: injected HTTP {fault}"))
                if fault == "loop":
                    raise HubHTTPError(302, "Found")
                status, payload, headers = self._route(method, segments, body)
            except HubHTTPError as exc:
                headers = {"X-Error-Message": exc.message}
                if exc.code:
                    headers["X-Error-Code"] = exc.code
                status, payload = exc.status, {"error": exc.message}
            headers.update(fault_headers)
            if fault == "loop":
                headers["Location"] = self.path
            if isinstance(payload, bytes | bytearray) and fault == "short":
                payload = payload[: len(payload) // 2]
            elif isinstance(payload, bytes | bytearray) and fault == "corrupt" and payload:
                middle = len(payload) // 2
                payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
            record.status = status
            if method == "GET" and isinstance(payload, bytes | bytearray):
                record.sent = len(payload)
            self._send(status, payload, headers, head=method == "HEAD", cut=fault in ("cut", "reset"))
            if fault == "reset":  # closed with an RST, not a FIN: the client reads ECONNRESET (once the handler ends)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

        def _send(self, status: int, payload, headers: dict, *, head: bool = False, cut: bool = False) -> None:
            if isinstance(payload, bytes | bytearray):
                data, ctype = bytes(payload), "application/octet-stream"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            headers = dict(headers)
            headers.setdefault("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if cut:  # the promised Content-Length, then half of it, then the connection closes
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif not head:
                self.wfile.write(data)

        def _auth(self, *, required: bool) -> bool:
            """True when a valid token was sent; raises 401 for a bad token, or for none when `required`."""
            header = self.headers.get("Authorization", "")
            if header:
                token = header.removeprefix("Bearer ").strip()
                if hub.reject_tokens or token != hub.token:
                    raise HubHTTPError(401, "Invalid credentials in Authorization header")
                return True
            if required:
                raise HubHTTPError(401, "You must be authenticated to access this endpoint")
            return False

        def _repo(self, repo_id: str, *, write: bool) -> Repo:
            authed = self._auth(required=write)
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not authed):
                raise HubHTTPError(404, f"Repository Not Found for url: {repo_id}", "RepoNotFound")
            return repo

        def _commit_of(self, repo: Repo, revision: str) -> Commit:
            commit = repo.resolve(revision)
            if commit is None:
                raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return commit

        # -- routes --

        def _route(self, method: str, seg: list[str], body: bytes):
            if seg[:2] == ["api", "agent-harnesses"]:
                return 200, {"standardEnvVars": [], "harnesses": {}}, {}
            if seg[:2] == ["api", "whoami-v2"]:
                self._auth(required=True)
                return (
                    200,
                    {
                        "type": "user",
                        "name": hub.user,
                        "orgs": hub.orgs,
                        "auth": {"type": "access_token", "accessToken": hub.access_token},
                    },
                    {},
                )
            if seg[:3] == ["api", "repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body))
            if seg[:2] == ["api", "validate-yaml"] and method == "POST":
                content = json.loads(body)["content"]
                hub.validated.append(content)
                errors = [{"message": m} for m in validate_card(content)]
                return (400 if errors else 200), {"errors": errors, "warnings": []}, {}
            if seg[:2] == ["api", "models"] and len(seg) >= 4:
                repo_id, rest = f"{seg[2]}/{seg[3]}", seg[4:]
                if not rest and method == "GET":
                    return self._model_info(repo_id, "main")
                if rest[:1] == ["revision"] and method == "GET":
                    return self._model_info(repo_id, "/".join(rest[1:]))
                if rest[:1] == ["branch"] and method == "POST":
                    return self._create_branch(repo_id, "/".join(rest[1:]), body)
                if rest[:1] == ["tree"] and len(rest) >= 2 and method == "GET":
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]))
                if rest[:1] == ["refs"] and method == "GET":
                    return self._refs(repo_id)
                if rest[:1] == ["preupload"] and method == "POST":
                    return self._preupload(repo_id, "/".join(rest[1:]), json.loads(body))
                if rest[:1] == ["commit"] and method == "POST":
                    return self._create_commit(repo_id, "/".join(rest[1:]), body)
            if len(seg) == 6 and seg[2:] == ["info", "lfs", "objects", "batch"] and seg[1].endswith(".git"):
                return self._lfs_batch(f"{seg[0]}/{seg[1][:-4]}", json.loads(body))
            if seg[:1] == ["_lfs"] and method == "PUT" and len(seg) == 4:
                return self._lfs_put(f"{seg[1]}/{seg[2]}", seg[3], body)
            if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
            raise HubHTTPError(404, f"fake hub: no route for {method} {self.path}")

        def _create_repo(self, payload: dict):
            self._auth(required=True)
            namespace = payload.get("organization") or hub.user
            repo_id = f"{namespace}/{payload['name']}"
            url = f"{hub.url}/{repo_id}"
            if hub.create_status:
                return hub.create_status, {"error": "create_status switch", "url": url}, {}
            with hub._lock:
                if repo_id in hub.repos:
                    return 409, {"error": "You already created this model repo", "url": url}, {}
                hub.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
            return 200, {"url": url, "name": repo_id}, {}

        def _model_info(self, repo_id: str, revision: str):
            repo = self._repo(repo_id, write=False)
            commit = self._commit_of(repo, revision)
            blobs = self.query.get("blobs") == ["true"]
            siblings = []
            for path, data in sorted(commit.tree.items()):
                entry: dict = {"rfilename": path}
                if blobs:
                    entry["size"] = len(data)
                    entry["blobId"] = git_sha1(data)
                    if path in commit.lfs:
                        entry["lfs"] = {"sha256": commit.lfs[path], "size": len(data), "pointerSize": 134}
                siblings.append(entry)
            now = _dt.datetime.now(_dt.UTC).isoformat().replace("+00:00", "Z")
            info = {
                "_id": repo_id,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "lastModified": now,
                "createdAt": now,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
            }
            return 200, info, {}

        def _create_branch(self, repo_id: str, branch: str, body: bytes):
            repo = self._repo(repo_id, write=True)
            payload = json.loads(body or b"{}")
            with hub._lock:
                if branch in repo.branches:
                    return 409, {"error": f"Reference already exists: refs/heads/{branch}"}, {}
                start = self._commit_of(repo, payload.get("startingPoint") or "main")
                repo.branches[branch] = start.oid
            return 200, {}, {}

        def _tree(self, repo_id: str, revision: str, folder: str):
            repo = self._repo(repo_id, write=False)
            commit = self._commit_of(repo, revision)
            recursive = self.query.get("recursive") == ["true"]
            prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
            entries, folders = [], set()
            for path, data in sorted(commit.tree.items()):
                if not path.startswith(prefix):
                    continue
                parts = path[len(prefix) :].split("/")
                for depth in range(1, len(parts)):
                    folders.add(prefix + "/".join(parts[:depth]))
                if len(parts) > 1 and not recursive:
                    continue
                entry = {"type": "file", "oid": git_sha1(data), "size": len(data), "path": path}
                if path in commit.lfs:
                    entry["lfs"] = {"oid": commit.lfs[path], "size": len(data), "pointerSize": 134}
                entries.append(entry)
            if not recursive:
                folders = {f for f in folders if "/" not in f[len(prefix) :]}
            entries += [
                {"type": "directory", "oid": git_sha1(f.encode()), "size": 0, "path": f} for f in sorted(folders)
            ]
            return 200, entries, {}

        def _refs(self, repo_id: str):
            repo = self._repo(repo_id, write=False)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                for n, o in repo.branches.items()
                if not n.startswith("refs/")
            ]
            return 200, {"branches": branches, "tags": [], "converts": []}, {}

        def _preupload(self, repo_id: str, revision: str, payload: dict):
            repo = self._repo(repo_id, write=True)
            commit = repo.resolve(revision) or self._commit_of(repo, "main")  # a PR starts from main
            files = []
            for f in payload["files"]:
                path, size = f["path"], f["size"]
                lfs = not hub.force_regular and size > 0 and _is_lfs(path, size)
                oid = None
                if path in commit.tree:
                    data = commit.tree[path]
                    oid = hashlib.sha256(data).hexdigest() if lfs else git_sha1(data)
                files.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": oid,
                    }
                )
            return 200, {"files": files, "commitOid": commit.oid}, {}

        def _lfs_batch(self, repo_id: str, payload: dict):
            repo = self._repo(repo_id, write=True)
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in repo.lfs_objects:  # already uploaded: no actions, the client skips it
                    entry["actions"] = {"upload": {"href": f"{hub.url}/_lfs/{repo_id}/{obj['oid']}"}}
                objects.append(entry)
            return (
                200,
                {"transfer": "basic", "objects": objects},
                {"Content-Type": "application/vnd.git-lfs+json"},
            )

        def _lfs_put(self, repo_id: str, oid: str, body: bytes):
            if self.headers.get("Authorization"):
                raise HubHTTPError(400, "LFS uploads go to storage, which must not receive the Hub token")
            repo = hub.repos[repo_id]
            with hub._lock:
                ok = sum(1 for _, s in hub.lfs_puts if s == 200)
                if hub.fail_lfs_put_after is not None and ok >= hub.fail_lfs_put_after:
                    hub.lfs_puts.append((oid, 500))
                    raise HubHTTPError(500, "Internal Server Error (fake storage outage)")
                if hashlib.sha256(body).hexdigest() != oid:
                    hub.lfs_puts.append((oid, 400))
                    raise HubHTTPError(400, "sha256 of the body does not match the LFS oid")
                repo.lfs_objects[oid] = body
                hub.lfs_puts.append((oid, 200))
            return 200, {}, {}

        def _create_commit(self, repo_id: str, revision: str, body: bytes):
            repo = self._repo(repo_id, write=True)
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = lines[0]["value"]
            if not header.get("summary"):
                raise HubHTTPError(400, "commit summary must not be empty")
            create_pr = self.query.get("create_pr") == ["1"]
            with hub._lock:
                base = self._commit_of(repo, "main" if create_pr else revision)
                tree, lfs = dict(base.tree), dict(base.lfs)
                for line in lines[1:]:
                    key, value = line["key"], line["value"]
                    path = value["path"]
                    if key == "file":
                        tree[path] = base64.b64decode(value["content"])
                        lfs.pop(path, None)
                    elif key == "lfsFile":
                        if value["oid"] not in repo.lfs_objects:
                            raise HubHTTPError(422, f"LFS file {path} was never uploaded ({value['oid']})")
                        tree[path], lfs[path] = repo.lfs_objects[value["oid"]], value["oid"]
                    elif key == "deletedFile":
                        tree.pop(path, None)
                if "README.md" in tree and (errors := validate_card(tree["README.md"].decode())):
                    raise HubHTTPError(400, f"Invalid metadata in README.md: {errors[0]}")
                commit = hub._commit(repo, base.oid, header["summary"], header.get("description", ""), tree, lfs)
                result = {
                    "success": True,
                    "commitOid": commit.oid,
                    "commitUrl": f"{hub.url}/{repo_id}/commit/{commit.oid}",
                }
                if create_pr:
                    number = 1 + sum(1 for b in repo.branches if b.startswith("refs/pr/"))
                    repo.branches[f"refs/pr/{number}"] = commit.oid
                    result["pullRequestUrl"] = f"{hub.url}/{repo_id}/discussions/{number}"
                else:
                    repo.branches[revision] = commit.oid
            return 200, result, {}

        def _resolve(self, repo_id: str, revision: str, path: str):
            repo = self._repo(repo_id, write=False)
            commit = self._commit_of(repo, revision)
            if path not in commit.tree:
                raise HubHTTPError(404, f"Entry not found: {path}", "EntryNotFound")
            data = commit.tree[path]
            etag = commit.lfs.get(path) or git_sha1(data)
            headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            if path in commit.lfs:
                headers["X-Linked-Etag"] = f'"{etag}"'
                headers["X-Linked-Size"] = str(len(data))
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2) or len(data) - 1), len(data) - 1)  # inclusive, as HTTP counts
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return 206, data[start : end + 1], headers
            return 200, data, headers

    return Handler


# ---- pytest fixtures for tests/test_hub*.py (import `fake_hub_fixture`, `no_backoff_fixture`) -------------

TOKEN = "hf_fakeWriteToken0123456789"


def client_env(hub: FakeHub, home: Path) -> dict[str, str]:
    """Environment for a `grow` subprocess that talks to `hub` only (set before huggingface_hub is imported)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_HUB_CACHE",
        )
    }
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_COLOR="1",
        COLUMNS="200",
    )
    return env


def interrupt_grow(
    args: list[str], env: dict[str, str], cwd: Path, signum: int, when
) -> subprocess.CompletedProcess[str]:
    """Run `grow ARGS…` as the console script does, send it `signum` once `when()` is true, and return what it did
    by 30 s later (killed past that, with returncode None: a run the signal did not stop)."""
    program = textwrap.dedent(
        f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts ignoring it
        from grow_cli import __main__ as entry
        sys.argv = ["grow", *{[str(a) for a in args]!r}]
        entry.script()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not when() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into the wait that `when` announced
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, None, out, err)  # type: ignore[arg-type]


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(tmp_path, monkeypatch):
    """A running FakeHub, with this process's huggingface_hub pointed at it and at a fresh HF_HOME.

    huggingface_hub reads its settings when first imported, so the fixture sets both the environment (for code
    that reads it at call time, like grow) and the client's `constants`. Xet is disabled so large files take the
    LFS path (basic transfer) that the fake server implements. `hub.home` is the HF_HOME used.
    """
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    home.mkdir()
    with FakeHub(token=TOKEN) as hub:
        hub.home = home
        for name in (
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_HUB_CACHE",
        ):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(home))
        settings = {
            "ENDPOINT": hub.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_OFFLINE": False,
        }
        for name, value in settings.items():
            if hasattr(constants, name):  # AGENT_HARNESSES_PATH: newer clients only
                monkeypatch.setattr(constants, name, value)
        yield hub


@pytest.fixture(name="no_backoff")
def no_backoff_fixture(monkeypatch):
    """huggingface_hub retries a 5xx five times with 1-8 s waits; skip the waits (the retries still happen)."""
    import huggingface_hub.utils._http as http

    real_sleep = time.sleep
    monkeypatch.setattr(http.time, "sleep", lambda seconds: real_sleep(min(seconds, 0.01)))


def make_grown_folder(folder: Path, *, base: str | None = "acme/tiny-llama", arch: str = "llama") -> Path:
    """A tiny sharded checkpoint with the grow.json and README.md that `grow expand` + `train-stage` write."""
    from tiny_models import save_tiny

    from grow_cli.lineage.card import write_card
    from grow_cli.lineage.record import append_stage, write_record

    save_tiny(arch, folder)
    shape = {
        "layers": 2,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_heads": 4,
        "num_kv_heads": 2,
        "num_parameters": 30_000,
    }
    expand = {
        "kind": "expand",
        "source": {
            "repo_id": base,
            "revision": None,
            "commit": "c0ffee" * 6 + "abcd",
            "files": {},
            "architecture": arch,
            "shape": shape,
        }
        if base
        else {"path": "/data/models/tiny", "files": {}, "architecture": arch, "shape": shape},
        "target": {**shape, "layers": 4, "num_parameters": 52_000},
        "depth": {
            "method": "stack",
            "layer_map": [0, 1, 0, 1],
            "new_layers": [2, 3],
            "function_preserving": False,
            "parameters": {"factor": 2},
        },
        "width": None,
        "function_preserving": False,
        "seed": 0,
        "dtype": "F32",
        "added_tensors": [],
        "verify": {
            "probe": "random",
            "tokens": 64,
            "max_abs_logit_diff": 0.42,
            "output_scale": 3.0,
            "mean_kl": 0.013,
            "top1_agreement": 0.95,
            "tolerance": 3e-4,
            "exact_claimed": False,
            "passed": None,
        },
        "command": ["grow", "expand", base or "/data/models/tiny", "out", "--layers", "4"],
    }
    record = append_stage(None, expand, {"architecture": arch, "model_type": arch, "num_parameters": 52_000})
    train = {
        "kind": "train",
        "data": {
            "paths": ["/data/corpus.jsonl"],
            "fingerprint": "9f8e7d",
            "datasets": ["HuggingFaceFW/fineweb-edu", "/data/corpus.jsonl"],
        },
        "tokens": 1_234_567,
        "steps": 300,
        "schedule": {"name": "wsd"},
        "max_lr": 3e-4,
        "train_only": "new",
        "final_eval_loss": 3.21,
    }
    record = append_stage(record, train, record["model"])
    write_record(folder, record)
    write_card(folder, record)
    return folder
