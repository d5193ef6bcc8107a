"""The local hub's state: an in-memory, git-like store of repos, commits and LFS objects.

The Hub clients check what they get against what git would compute (blob ids, LFS
pointers, sha256 ETags), so the store keeps content addressed the way git and git-LFS
address it. It knows nothing about HTTP beyond :class:`HttpError`, the Hub-shaped error
its look-ups raise, so the routes can turn a failed look-up straight into the response
the Hub would send.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

__all__ = [
    "API_TYPES",
    "GITATTRIBUTES",
    "LFS_MIN_SIZE",
    "LFS_SUFFIXES",
    "URL_PREFIX",
    "USER",
    "Blob",
    "Commit",
    "HttpError",
    "Repo",
    "Store",
    "git_oid",
    "now",
    "repo_type_of_url",
    "repo_url",
]

USER = "local-user"
"""The account every accepted token belongs to."""

URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}

# Files the Hub stores through LFS: binary data formats (its default .gitattributes),
# anything over 10 MB, and anything that looks binary.
LFS_SUFFIXES = (
    ".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bin", ".safetensors",
    ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".npy", ".npz", ".pkl",
    ".pickle", ".zip", ".gz", ".tar", ".tgz", ".zst", ".xz", ".bz2", ".7z", ".mp3", ".wav",
)  # fmt: skip
LFS_MIN_SIZE = 10 * 1024 * 1024

GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()
"""The ``.gitattributes`` of a new repo, as the Hub creates it."""


def now() -> str:
    """A timestamp in the Hub's format (``parse_datetime`` accepts exactly this)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_oid(data: bytes) -> str:
    """The git blob id, which the Hub reports as a file's ``oid``."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def repo_url(endpoint: str, repo_id: str, repo_type: str = "dataset") -> str:
    """A repo's web URL, which is also the prefix of its ``resolve`` and ``raw`` URLs."""
    return f"{endpoint}/{URL_PREFIX[repo_type]}{repo_id}"


def repo_type_of_url(url_type: str | None) -> str:
    """The repo type named by a web URL's first part (none for models)."""
    return {"datasets": "dataset", "spaces": "space", None: "model"}[url_type]


@dataclass(frozen=True)
class Blob:
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
        return git_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        """The Hub's ETag: the sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    """A snapshot of every file of a repo; commits chain through ``parent``."""

    oid: str
    title: str
    message: str
    date: str
    files: dict[str, Blob]
    parent: str | None


@dataclass
class Repo:
    """One repo: its commits, branch heads and uploaded LFS objects."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    """LFS content by sha256; per repo, as on the Hub, so each repo uploads its own."""


class HttpError(Exception):
    """An error response, with the Hub's error headers when it has one.

    The clients pick the exception they raise from ``X-Error-Code``, so a test sees the
    same ``RepositoryNotFoundError`` or ``EntryNotFoundError`` as against the Hub.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}
        # Header values must be latin-1; paths in messages may not be.
        ascii_message = message.encode("ascii", "backslashreplace").decode()
        self.headers = {"X-Error-Message": ascii_message, **(headers or {})}
        if code:
            self.headers["X-Error-Code"] = code


class Store:
    """Repos, accepted tokens and pending LFS upload URLs, behind one lock.

    Request threads share one store; routes hold :attr:`lock` across a look-up and the
    change that depends on it, so concurrent uploads see consistent repos.
    """

    def __init__(self, token: str) -> None:
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.default_private = False
        """A new repo's visibility when the request leaves it to the Hub (an org's default)."""
        # upload URL ticket -> (repo key, oid, size), like the claims of a presigned URL
        self.upload_tickets: dict[str, tuple[tuple[str, str], str, int]] = {}
        self._tokens = {token}
        self._counter = itertools.count()

    # ------------------------------------------------------------------ tokens
    def accept_token(self, token: str) -> None:
        with self.lock:
            self._tokens.add(token)

    def accepts(self, token: str | None) -> bool:
        with self.lock:
            return token is not None and token in self._tokens

    # ------------------------------------------------------------------ repos
    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        """A new repo whose ``main`` holds the Hub's default ``.gitattributes``."""
        with self.lock:
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=now())
            first = self.new_commit(
                repo,
                None,
                {".gitattributes": Blob(GITATTRIBUTES, lfs=False)},
                "initial commit",
                "",
            )
            repo.branches["main"] = first.oid
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def repo(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        """A repo the token may read; private repos look missing to others, as on the Hub."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HttpError(404, "Repository not found", "RepoNotFound")
        if repo.private and not self.accepts(token):
            raise HttpError(401, "Repository not found", "RepoNotFound")
        return repo

    # ------------------------------------------------------------------ commits
    def new_commit(
        self, repo: Repo, parent: Commit | None, files: dict[str, Blob], title: str, message: str
    ) -> Commit:
        """Record a commit (not moving any branch); its oid is unique per call."""
        seed = json.dumps(
            [parent.oid if parent else None, sorted((p, b.oid) for p, b in files.items()), title,
             next(self._counter)]
        ).encode()  # fmt: skip
        commit = Commit(
            oid=hashlib.sha1(seed).hexdigest(),
            title=title,
            message=message,
            date=now(),
            files=files,
            parent=parent.oid if parent else None,
        )
        repo.commits[commit.oid] = commit
        return commit

    def commit(self, repo: Repo, revision: str) -> Commit:
        """The commit a branch name or an (abbreviated) commit id names."""
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [c for oid, c in repo.commits.items() if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def history(repo: Repo, commit: Commit) -> Iterator[Commit]:
        """``commit`` and its ancestors, newest first."""
        current: Commit | None = commit
        while current is not None:
            yield current
            current = repo.commits.get(current.parent) if current.parent else None

    def stored_bytes(self) -> list[bytes]:
        """Everything the store holds: files of every commit and uploaded LFS objects."""
        with self.lock:
            return [
                *(
                    b.data
                    for r in self.repos.values()
                    for c in r.commits.values()
                    for b in c.files.values()
                ),
                *(data for r in self.repos.values() for data in r.lfs_objects.values()),
            ]
