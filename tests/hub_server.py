"""A local stand-in for the Hugging Face Hub, so push and load round trips run offline.

The real ``huggingface_hub`` and ``datasets`` clients talk to it over HTTP exactly as
they talk to huggingface.co; only ``HF_ENDPOINT`` differs. It implements the slice of
the Hub API those clients use for a dataset repo, following their code in
``huggingface_hub`` (``hf_api``, ``_commit_api``, ``lfs``, ``file_download``,
``hf_file_system``):

* writing: ``POST /api/repos/create``, ``/api/validate-yaml``, the ``preupload`` and
  NDJSON ``commit`` endpoints, and the git-LFS batch API with presigned-style ``PUT``
  upload URLs and a ``verify`` step. Parquet and PNG files are declared LFS, as on the
  Hub, so the LFS path is what ``upload_folder`` exercises.
* reading: repo info (``/api/datasets/{id}[/revision/{rev}]``), tree listings
  (recursive, paginated with ``Link`` headers), ``paths-info``, commit lists, and file
  downloads from ``/resolve/`` (``HEAD``, ``GET``, byte ranges, ``ETag`` and
  ``X-Repo-Commit`` headers) and ``/raw/`` (what ``distilabel pipeline run --config
  URL`` fetches).

Errors carry the Hub's ``X-Error-Code`` headers so the clients raise the same
exceptions they raise against the Hub (``RepositoryNotFoundError``,
``EntryNotFoundError``, ...). Writes need a bearer token the server accepts; public
repos are readable without one. The server never records request headers, so a token
sent to it cannot leak through its logs.

Importing this module (tests/conftest.py does it first) starts one server on a free
127.0.0.1 port and points the Hugging Face libraries at it by setting ``HF_ENDPOINT``,
``HF_TOKEN`` (a fake token the server accepts), ``HF_HUB_DISABLE_XET=1`` and a temporary
``HF_HOME``. Those variables are read when the libraries are imported, hence the import
side effect: it must happen before any test module imports ``datasets``,
``huggingface_hub``, ``transformers`` or ``distilabel``. It also means no test can reach
huggingface.co by accident. The ``local_hub`` fixture hands out that server.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest

__all__ = ["LocalHub", "hub_environment", "local_hub", "session_hub"]

USER = "local-user"
"""The account every accepted token belongs to."""

_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}

# Files the Hub stores through LFS: binary data formats (its default .gitattributes),
# anything over 10 MB, and anything that looks binary.
_LFS_SUFFIXES = (
    ".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bin", ".safetensors",
    ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".npz", ".pkl",
    ".pickle", ".zip", ".gz", ".tar", ".tgz", ".zst", ".xz", ".bz2", ".7z", ".mp3", ".wav",
)  # fmt: skip
_LFS_MIN_SIZE = 10 * 1024 * 1024
_PAGE_SIZE = 1000
_PAGE_SIZE_EXPANDED = 50

_GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in _LFS_SUFFIXES
).encode()

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = r"^/api/(?P<api_type>models|datasets|spaces)/" + _REPO
_REPO_URL = r"^/(?:(?P<url_type>datasets|spaces)/)?" + _REPO


def _now() -> str:
    """A timestamp in the Hub's format (``parse_datetime`` accepts exactly this)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    """The git blob id, which the Hub reports as a file's ``oid``."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class _Blob:
    """One file's content at one commit."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        """The git-LFS pointer file that git stores instead of an LFS file's content."""
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
            f"size {len(self.data)}\n"
        ).encode()

    @property
    def oid(self) -> str:
        return _git_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        """The Hub's ETag: the sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.oid


@dataclass
class _Commit:
    oid: str
    title: str
    message: str
    date: str
    files: dict[str, _Blob]
    parent: str | None


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    """LFS content by sha256; per repo, as on the Hub, so each repo uploads its own."""


class _HttpError(Exception):
    """An error response, with the Hub's error headers when it has one."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}
        # Header values must be latin-1; paths in messages may not be.
        ascii_message = message.encode("ascii", "backslashreplace").decode()
        self.headers = {"X-Error-Message": ascii_message, **(headers or {})}
        if code:
            self.headers["X-Error-Code"] = code


def _parse_front_matter(text: str) -> dict[str, Any] | None:
    import yaml

    match = re.match(r"\A---\r?\n(.*?)(?:\r?\n)?^---[ \t]*\r?$", text, re.S | re.M)
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


class LocalHub:
    """An in-memory Hub on 127.0.0.1, served from a background thread.

    ``endpoint`` and ``token`` are what a client needs. ``requests`` lists every
    request as ``"METHOD /path STATUS"`` (never headers), and ``problems`` collects
    requests the server could not handle, so a test can assert the clients used
    nothing this stand-in does not implement.
    """

    def __init__(self, token: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.token = token or f"hf_local{secrets.token_hex(16)}"
        self._tokens = {self.token}
        self._repos: dict[tuple[str, str], _Repo] = {}
        # upload URL ticket -> (repo key, oid, size), like the claims of a presigned URL
        self._upload_tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self.requests: list[str] = []
        self.problems: list[str] = []
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LocalHub:
        if not self.running:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="local-hub", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self.running:
            self._server.shutdown()
            assert self._thread is not None
            self._thread.join(timeout=10)
        self._server.server_close()
        self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers
    def accept_token(self, token: str) -> None:
        """Also accept ``token`` (e.g. a canary value a test puts in ``HF_TOKEN``)."""
        with self._lock:
            self._tokens.add(token)

    def accepts(self, token: str | None) -> bool:
        with self._lock:
            return token is not None and token in self._tokens

    def repo_url(self, repo_id: str, repo_type: str = "dataset") -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"

    def raw_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        """Where ``distilabel pipeline run --config URL`` finds a file of a dataset repo."""
        return f"{self.repo_url(repo_id)}/raw/{quote(revision, safe='')}/{quote(path)}"

    def repo_exists(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def files(
        self, repo_id: str, repo_type: str = "dataset", revision: str = "main"
    ) -> dict[str, bytes]:
        """Every file of a repo at ``revision``, as stored (LFS content, not pointers)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            return {p: b.data for p, b in self._commit(repo, revision).files.items()}

    def stored_bytes(self) -> list[bytes]:
        """Everything the server holds: files of every commit and uploaded LFS objects."""
        with self._lock:
            return [
                *(
                    b.data
                    for r in self._repos.values()
                    for c in r.commits.values()
                    for b in c.files.values()
                ),
                *(data for r in self._repos.values() for data in r.lfs_objects.values()),
            ]

    # ------------------------------------------------------------------ state
    def _new_commit(
        self, repo: _Repo, parent: _Commit | None, files: dict[str, _Blob], title: str, message: str
    ) -> _Commit:
        seed = json.dumps(
            [parent.oid if parent else None, sorted((p, b.oid) for p, b in files.items()), title,
             next(self._counter)]
        ).encode()  # fmt: skip
        commit = _Commit(
            oid=hashlib.sha1(seed).hexdigest(),
            title=title,
            message=message,
            date=_now(),
            files=files,
            parent=parent.oid if parent else None,
        )
        repo.commits[commit.oid] = commit
        return commit

    def _repo(self, repo_type: str, repo_id: str, token: str | None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        if repo.private and not self.accepts(token):
            raise _HttpError(401, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: _Repo, revision: str) -> _Commit:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for oid, c in repo.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _history(self, repo: _Repo, commit: _Commit) -> Iterator[_Commit]:
        current: _Commit | None = commit
        while current is not None:
            yield current
            current = repo.commits.get(current.parent) if current.parent else None

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str) -> dict[str, str]:
        """The newest commit that changed ``path`` (a file, or anything under a folder)."""

        def snapshot(c: _Commit) -> list[tuple[str, str]]:
            return sorted(
                (p, b.oid) for p, b in c.files.items() if p == path or p.startswith(path + "/")
            )

        newest = commit
        current = snapshot(commit)
        for older in itertools.islice(self._history(repo, commit), 1, None):
            if snapshot(older) != current:
                break
            newest = older
        return {"id": newest.oid, "title": newest.title, "date": newest.date}

    def _file_entry(
        self, repo: _Repo, commit: _Commit, path: str, blob: _Blob, expand: bool
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": blob.oid,
            "size": len(blob.data),
            "path": path,
        }
        if blob.lfs:
            entry["lfs"] = {
                "oid": blob.sha256,
                "size": len(blob.data),
                "pointerSize": len(blob.pointer),
            }
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path)
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry

    def _folder_entry(
        self, repo: _Repo, commit: _Commit, path: str, expand: bool
    ) -> dict[str, Any]:
        inside = sorted((p, b.oid) for p, b in commit.files.items() if p.startswith(path + "/"))
        entry: dict[str, Any] = {
            "type": "directory",
            "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(),
            "size": 0,
            "path": path,
        }
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path)
        return entry

    @staticmethod
    def _folders(files: dict[str, _Blob]) -> set[str]:
        folders: set[str] = set()
        for path in files:
            parts = path.split("/")[:-1]
            folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return folders


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the :class:`LocalHub` attached to the server."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 60

    ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
        (method, re.compile(pattern), name)
        for method, pattern, name in (
            ("POST", r"^/api/repos/create$", "create_repo"),
            ("DELETE", r"^/api/repos/delete$", "delete_repo"),
            ("POST", r"^/api/validate-yaml$", "validate_yaml"),
            ("GET", r"^/api/whoami-v2$", "whoami"),
            ("GET", _API_REPO + r"$", "repo_info"),
            ("GET", _API_REPO + r"/revision/(?P<rev>[^/]+)$", "repo_info"),
            ("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
            ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),
            ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)$", "commits"),
            ("GET", _API_REPO + r"/refs$", "refs"),
            ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
            ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)$", "commit"),
            ("POST", _REPO_URL + r"\.git/info/lfs/objects/batch$", "lfs_batch"),
            ("PUT", r"^/__lfs/upload/(?P<ticket>[0-9a-f]+)$", "lfs_put"),
            ("POST", r"^/__lfs/verify/(?P<ticket>[0-9a-f]+)$", "lfs_verify"),
            ("GET", _REPO_URL + r"/(?P<kind>resolve|raw)/(?P<rev>[^/]+)/(?P<path>.+)$", "download"),
            (
                "HEAD",
                _REPO_URL + r"/(?P<kind>resolve|raw)/(?P<rev>[^/]+)/(?P<path>.+)$",
                "download",
            ),
        )
    )

    @property
    def hub(self) -> LocalHub:
        return self.server.hub  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:
        """Keep a request log in memory instead of printing it (no headers, ever)."""
        self.hub.requests.append(format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path
        self.hub.requests.append(f"{self.command} {path} {code}")

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        """The request body, from ``Content-Length`` or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        self.body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        for method, pattern, name in self.ROUTES:
            if method != self.command:
                continue
            match = pattern.match(split.path)
            if match is None:
                continue
            params = {
                k: unquote(v) if v is not None else None for k, v in match.groupdict().items()
            }
            try:
                getattr(self, f"_{name}")(**params)
            except _HttpError as error:
                self._error(error)
            except Exception as error:  # a bug here must fail the test, not hang it
                self.hub.problems.append(
                    f"{self.command} {split.path}: {type(error).__name__}: {error}"
                )
                self._error(_HttpError(500, f"local hub error: {type(error).__name__}"))
            return
        self.hub.problems.append(f"unhandled {self.command} {split.path}")
        self._error(_HttpError(404, f"local hub has no route for {self.command} {split.path}"))

    def _send(
        self,
        status: int,
        body: bytes | dict | list | None = None,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        if isinstance(body, (dict, list)):
            payload = json.dumps(body).encode()
            content_type = content_type or "application/json; charset=utf-8"
        else:
            payload = body or b""
        self.send_response(status)
        self.send_header("Content-Type", content_type or "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _error(self, error: _HttpError) -> None:
        self._send(error.status, {"error": error.message, **error.extra}, headers=error.headers)

    def _token(self) -> str | None:
        """The bearer token; a wrong one is refused like the Hub refuses it."""
        value = self.headers.get("Authorization", "")
        token = value[7:].strip() if value.lower().startswith("bearer ") else None
        if token and not self.hub.accepts(token):
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return token or None

    def _require_token(self) -> str:
        token = self._token()
        if token is None:
            raise _HttpError(401, "You must be authenticated to access this resource")
        return token

    def _json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except json.JSONDecodeError as error:
            raise _HttpError(400, f"invalid JSON body: {error}") from None

    @staticmethod
    def _repo_type(api_type: str | None = None, url_type: str | None = None) -> str:
        if api_type is not None:
            return _API_TYPES[api_type]
        return {"datasets": "dataset", "spaces": "space", None: "model"}[url_type]

    def _flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")

    # ------------------------------------------------------------------ account
    def _whoami(self) -> None:
        self._require_token()
        self._send(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER,
                "fullname": "Local Hub user",
                "email": None,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "local", "role": "write"},
                },
            },
        )

    def _create_repo(self) -> None:
        self._require_token()
        payload = self._json() or {}
        name = payload.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise _HttpError(400, f"invalid repo name {name!r}")
        repo_type = payload.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HttpError(400, f"invalid repo type {repo_type!r}")
        repo_id = f"{payload.get('organization') or USER}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = self.hub.repo_url(repo_id, repo_type)
        hub = self.hub
        with hub._lock:
            if (repo_type, repo_id) in hub._repos:
                raise _HttpError(409, "You already created this repo", extra={"url": url})
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            first = hub._new_commit(
                repo,
                None,
                {".gitattributes": _Blob(_GITATTRIBUTES, lfs=False)},
                "initial commit",
                "",
            )
            repo.branches["main"] = first.oid
            hub._repos[(repo_type, repo_id)] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self._require_token()
        payload = self._json() or {}
        repo_id = f"{payload.get('organization') or USER}/{payload.get('name')}"
        with self.hub._lock:
            if self.hub._repos.pop((payload.get("type") or "model", repo_id), None) is None:
                raise _HttpError(404, "Repository not found", "RepoNotFound")
        self._send(200, {})

    def _validate_yaml(self) -> None:
        import yaml

        self._token()
        content = (self._json() or {}).get("content", "")
        try:
            _parse_front_matter(content)
        except yaml.YAMLError as error:
            self._send(400, {"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []})
            return
        self._send(200, {"errors": [], "warnings": []})

    # ------------------------------------------------------------------ reading
    def _repo_info(self, api_type: str, ns: str, name: str, rev: str | None = None) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._repo(_API_TYPES[api_type], f"{ns}/{name}", self._token())
            commit = hub._commit(repo, rev or "main")
            blobs = self._flag("blobs")
            siblings = []
            for path, blob in sorted(commit.files.items()):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=len(blob.data), blobId=blob.oid)
                    if blob.lfs:
                        sibling["lfs"] = {
                            "sha256": blob.sha256,
                            "size": len(blob.data),
                            "pointerSize": len(blob.pointer),
                        }
                siblings.append(sibling)
            card_data = None
            if "README.md" in commit.files:
                try:
                    card_data = _parse_front_matter(commit.files["README.md"].data.decode())
                except Exception:
                    card_data = None
            info = {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": ns,
                "sha": commit.oid,
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": list((card_data or {}).get("tags") or []),
                "cardData": card_data,
                "siblings": siblings,
                "usedStorage": sum(len(b.data) for b in commit.files.values()),
            }
        self._send(200, info)

    def _tree(self, api_type: str, ns: str, name: str, rev: str, path: str | None = None) -> None:
        hub = self.hub
        recursive, expand = self._flag("recursive"), self._flag("expand")
        path = (path or "").strip("/")
        with hub._lock:
            repo = hub._repo(_API_TYPES[api_type], f"{ns}/{name}", self._token())
            commit = hub._commit(repo, rev)
            folders = hub._folders(commit.files)
            if path and path not in folders:
                raise _HttpError(404, f"{path} does not exist on {rev}", "EntryNotFound")
            prefix = f"{path}/" if path else ""

            def wanted(candidate: str) -> bool:
                if not candidate.startswith(prefix) or candidate == path:
                    return False
                return recursive or "/" not in candidate[len(prefix) :]

            entries = [
                hub._folder_entry(repo, commit, p, expand) for p in sorted(folders) if wanted(p)
            ]
            entries += [
                hub._file_entry(repo, commit, p, b, expand)
                for p, b in sorted(commit.files.items())
                if wanted(p)
            ]
        page_size = _PAGE_SIZE_EXPANDED if expand else _PAGE_SIZE
        start = int(self.query.get("cursor", ["0"])[-1])
        page = entries[start : start + page_size]
        headers = {}
        if start + page_size < len(entries):
            query = urlencode(
                {
                    "recursive": str(recursive).lower(),
                    "expand": str(expand).lower(),
                    "cursor": start + page_size,
                }
            )
            headers["Link"] = f'<{hub.endpoint}{urlsplit(self.path).path}?{query}>; rel="next"'
        self._send(200, page, headers=headers)

    def _paths_info(self, api_type: str, ns: str, name: str, rev: str) -> None:
        hub = self.hub
        form = parse_qs(self.body.decode())
        paths = [p.strip("/") for p in form.get("paths", [])]
        expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        with hub._lock:
            repo = hub._repo(_API_TYPES[api_type], f"{ns}/{name}", self._token())
            commit = hub._commit(repo, rev)
            folders = hub._folders(commit.files)
            out = []
            for path in paths:
                if path in commit.files:
                    out.append(hub._file_entry(repo, commit, path, commit.files[path], expand))
                elif path in folders:
                    out.append(hub._folder_entry(repo, commit, path, expand))
        self._send(200, out)

    def _commits(self, api_type: str, ns: str, name: str, rev: str) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._repo(_API_TYPES[api_type], f"{ns}/{name}", self._token())
            history = [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": USER}],
                    "date": c.date,
                }
                for c in hub._history(repo, hub._commit(repo, rev))
            ]
        self._send(200, history)

    def _refs(self, api_type: str, ns: str, name: str) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._repo(_API_TYPES[api_type], f"{ns}/{name}", self._token())
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                for b, oid in repo.branches.items()
            ]
        self._send(200, {"branches": branches, "converts": [], "tags": []})

    def _download(
        self, ns: str, name: str, kind: str, rev: str, path: str, url_type: str | None = None
    ) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._repo(self._repo_type(url_type=url_type), f"{ns}/{name}", self._token())
            commit = hub._commit(repo, rev)
            blob = commit.files.get(path)
        if blob is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = blob.pointer if kind == "raw" and blob.lfs else blob.data
        headers = {
            "ETag": f'"{blob.etag if kind == "resolve" else _git_oid(data)}"',
            "X-Repo-Commit": commit.oid,
            "Accept-Ranges": "bytes",
        }
        if kind == "resolve" and blob.lfs:
            headers["X-Linked-Size"] = str(len(blob.data))
            headers["X-Linked-ETag"] = f'"{blob.sha256}"'
        text = (
            path.endswith((".md", ".yaml", ".yml", ".json", ".txt", ".jsonl", ".py"))
            or kind == "raw"
        )
        content_type = "text/plain; charset=utf-8" if text else "application/octet-stream"
        status = 200
        byte_range = self.headers.get("Range")
        if byte_range and self.command == "GET":
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range.strip())
            if match is None or match.group(1) == match.group(2) == "":
                raise _HttpError(416, f"unsupported range {byte_range}")
            size = len(data)
            if match.group(1) == "":
                start, end = max(0, size - int(match.group(2))), size - 1
            else:
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size or start > end:
                raise _HttpError(
                    416,
                    "Requested range not satisfiable",
                    headers={"Content-Range": f"bytes */{size}"},
                )
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            data, status = data[start : end + 1], 206
        self._send(status, data, headers=headers, content_type=content_type)

    # ------------------------------------------------------------------ writing
    def _writable_repo(self, repo_type: str, repo_id: str) -> _Repo:
        token = self._require_token()
        return self.hub._repo(repo_type, repo_id, token)

    def _preupload(self, api_type: str, ns: str, name: str, rev: str) -> None:
        hub = self.hub
        files = (self._json() or {}).get("files") or []
        with hub._lock:
            repo = self._writable_repo(_API_TYPES[api_type], f"{ns}/{name}")
            commit = hub._commit(repo, rev)
            out = []
            for item in files:
                path, size = item["path"], int(item["size"])
                sample = base64.b64decode(item.get("sample") or "")
                lfs = (
                    path.lower().endswith(_LFS_SUFFIXES)
                    or size >= _LFS_MIN_SIZE
                    or b"\x00" in sample
                )
                existing = commit.files.get(path)
                remote_oid = None
                if existing is not None:
                    remote_oid = existing.sha256 if lfs else _git_oid(existing.data)
                out.append(
                    {
                        "path": path,
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                        "oid": remote_oid,
                    }
                )
        self._send(200, {"files": out, "commitOid": commit.oid})

    def _lfs_batch(self, ns: str, name: str, url_type: str | None = None) -> None:
        hub = self.hub
        payload = self._json() or {}
        if payload.get("operation") != "upload":
            raise _HttpError(400, "the local hub only implements LFS uploads")
        objects = []
        with hub._lock:
            repo = self._writable_repo(self._repo_type(url_type=url_type), f"{ns}/{name}")
            for obj in payload.get("objects") or []:
                oid, size = str(obj["oid"]), int(obj["size"])
                if not re.fullmatch(r"[0-9a-f]{64}", oid):
                    objects.append(
                        {"oid": oid, "size": size, "error": {"code": 422, "message": "bad oid"}}
                    )
                    continue
                if oid in repo.lfs_objects:
                    objects.append({"oid": oid, "size": size})
                    continue
                ticket = secrets.token_hex(16)
                hub._upload_tickets[ticket] = ((repo.repo_type, repo.repo_id), oid, size)
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{hub.endpoint}/__lfs/upload/{ticket}"},
                            "verify": {"href": f"{hub.endpoint}/__lfs/verify/{ticket}"},
                        },
                    }
                )
        self._send(
            200,
            {"transfer": "basic", "objects": objects},
            content_type="application/vnd.git-lfs+json",
        )

    def _lfs_put(self, ticket: str) -> None:
        """A presigned-style upload URL: the ticket authorizes it, like an S3 signature."""
        hub = self.hub
        with hub._lock:
            expected = hub._upload_tickets.get(ticket)
        if expected is None:
            raise _HttpError(403, "unknown upload URL")
        key, oid, size = expected
        if len(self.body) != size or hashlib.sha256(self.body).hexdigest() != oid:
            raise _HttpError(400, "uploaded content does not match the announced oid and size")
        with hub._lock:
            repo = hub._repos.get(key)
            if repo is None:
                raise _HttpError(404, "the repo of this upload URL is gone")
            repo.lfs_objects[oid] = self.body
        self._send(200, b"", headers={"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def _lfs_verify(self, ticket: str) -> None:
        self._require_token()
        payload = self._json() or {}
        hub = self.hub
        with hub._lock:
            key, _, _ = hub._upload_tickets.get(ticket, (("", ""), "", 0))
            repo = hub._repos.get(key)
            data = repo.lfs_objects.get(str(payload.get("oid"))) if repo else None
        if data is None or len(data) != int(payload.get("size", -1)):
            raise _HttpError(404, "object not uploaded")
        self._send(200, {})

    def _commit(self, api_type: str, ns: str, name: str, rev: str) -> None:
        hub = self.hub
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "a commit starts with a header line")
        header = lines[0]["value"]
        if self._flag("create_pr"):
            raise _HttpError(400, "the local hub does not implement pull requests")
        with hub._lock:
            repo = self._writable_repo(_API_TYPES[api_type], f"{ns}/{name}")
            branch = unquote(rev)
            if branch not in repo.branches:
                raise _HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise _HttpError(412, "A commit has happened since the parent commit")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = str(value.get("path", "")).strip("/")
                if not path or ".." in path.split("/") or path.startswith(".git/"):
                    raise _HttpError(400, f"invalid path {path!r}")
                if key == "file":
                    files[path] = _Blob(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = repo.lfs_objects.get(value.get("oid", ""))
                    if data is None:
                        raise _HttpError(422, f"LFS object for {path} was not uploaded")
                    files[path] = _Blob(data, lfs=True)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise _HttpError(
                            404, "A file with this name doesn't exist", "EntryNotFound"
                        )
                elif key == "deletedFolder":
                    for candidate in [p for p in files if p.startswith(path + "/")]:
                        del files[candidate]
                else:
                    raise _HttpError(400, f"unknown commit operation {key!r}")
            commit = hub._new_commit(
                repo,
                head,
                files,
                header.get("summary") or "update",
                header.get("description") or "",
            )
            repo.branches[branch] = commit.oid
        url = f"{hub.repo_url(repo.repo_id, repo.repo_type)}/commit/{commit.oid}"
        self._send(
            200,
            {"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None},
        )


# ---------------------------------------------------------------------- environment


def hub_environment(endpoint: str, token: str, home: str | Path) -> dict[str, str]:
    """Variables that point the Hugging Face libraries at a local hub.

    Pass them to subprocesses (``distilabel pipeline run``, ``synthalign`` CLI) as is;
    in-process they must be set before any Hugging Face library is imported.
    """
    return {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # ``datasets`` pings s3.amazonaws.com to count each Hub load unless told not to.
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    }


_HERMETIC_UNSET = (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_ASSETS_CACHE",
    "HF_XET_CACHE",
    "HF_TOKEN_PATH",
    "HF_STORED_TOKENS_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
)

_SESSION: tuple[LocalHub, Path] | None = None


def session_hub() -> LocalHub:
    """The process-wide hub, started (and the environment pointed at it) on first use."""
    global _SESSION
    if _SESSION is None:
        late = sorted(
            m
            for m in ("huggingface_hub", "datasets", "transformers", "distilabel")
            if m in sys.modules
        )
        if late:
            warnings.warn(
                f"{', '.join(late)} imported before tests.hub_server: HF_ENDPOINT may not apply; "
                "import tests.hub_server first in tests/conftest.py",
                stacklevel=2,
            )
        hub = LocalHub().start()
        home = Path(tempfile.mkdtemp(prefix="synthalign-test-hf-home-"))
        # Locations that would otherwise override HF_HOME and reach the user's own caches
        # or login; the test session gets none of them.
        for name in _HERMETIC_UNSET:
            os.environ.pop(name, None)
        os.environ.update(hub_environment(hub.endpoint, hub.token, home))
        _SESSION = (hub, home)

        def cleanup() -> None:
            hub.stop()
            shutil.rmtree(home, ignore_errors=True)

        atexit.register(cleanup)
    return _SESSION[0]


session_hub()


@pytest.fixture(scope="session")
def local_hub() -> Iterator[LocalHub]:
    """The local Hub the environment points at; stopped at the end of the session.

    Fails early if a Hugging Face library captured another endpoint at import time.
    """
    hub = session_hub()
    from huggingface_hub import constants

    if hub.endpoint != constants.ENDPOINT or not constants.HF_HUB_DISABLE_XET:
        pytest.fail(
            "huggingface_hub was imported before tests/hub_server.py set HF_ENDPOINT; "
            "keep `from hub_server import local_hub` first in tests/conftest.py"
        )
    if constants.HF_HUB_OFFLINE:
        pytest.fail(
            "HF_HUB_OFFLINE is set, so the Hub clients refuse to talk to the local test hub; "
            "unset it (HF_ENDPOINT already points at 127.0.0.1)"
        )
    # ``datasets`` first asks the dataset viewer for a parquet export, at a host derived
    # from HF_ENDPOINT ("datasets-server.127.0.0.1"): a DNS query that would leave the
    # machine. The local hub has no viewer, so skipping that look-up changes nothing but
    # the query: ``datasets`` takes the same path as for a repo the viewer has not seen.
    import datasets.config

    use_export = datasets.config.USE_PARQUET_EXPORT
    datasets.config.USE_PARQUET_EXPORT = False
    try:
        yield hub
    finally:
        datasets.config.USE_PARQUET_EXPORT = use_export
        hub.stop()
