"""Writing a repo: preupload, the git-LFS batch API with its upload URLs, and commits.

``upload_folder`` first asks ``preupload`` which files go through LFS, uploads those
through the LFS batch API (a presigned-style ``PUT`` URL and a ``verify`` call per
object), then sends one NDJSON commit naming regular files inline and LFS files by
sha256. Parquet and PNG files are declared LFS, as on the Hub, so that is the path an
upload of a synthalign folder takes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from typing import Any
from urllib.parse import unquote

from .request import API_REPO, REPO_URL, Request, Response, Route, route
from .store import (
    API_TYPES,
    LFS_MIN_SIZE,
    LFS_SUFFIXES,
    Blob,
    HttpError,
    Repo,
    git_oid,
    repo_type_of_url,
    repo_url,
)

__all__ = ["ROUTES"]


def _writable_repo(req: Request, repo_type: str, repo_id: str) -> Repo:
    """A repo the request may write: it needs an accepted token."""
    token = req.require_token()
    return req.store.repo(repo_type, repo_id, token)


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    """The Hub's rule: binary formats, anything over 10 MB, anything that looks binary."""
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\x00" in sample


def preupload(req: Request, api_type: str, ns: str, name: str, rev: str) -> Response:
    """Say per file whether it goes through LFS, and the oid the repo has for it now."""
    store = req.store
    files = (req.json() or {}).get("files") or []
    with store.lock:
        repo = _writable_repo(req, API_TYPES[api_type], f"{ns}/{name}")
        commit = store.commit(repo, rev)
        out = []
        for item in files:
            path, size = item["path"], int(item["size"])
            lfs = _is_lfs(path, size, base64.b64decode(item.get("sample") or ""))
            existing = commit.files.get(path)
            remote_oid = None
            if existing is not None:
                remote_oid = existing.sha256 if lfs else git_oid(existing.data)
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": remote_oid,
                }
            )
    return Response(200, {"files": out, "commitOid": commit.oid})


def _batch_object(req: Request, repo: Repo, obj: dict[str, Any]) -> dict[str, Any]:
    """One object's answer: an error, "already there", or upload and verify URLs."""
    oid, size = str(obj["oid"]), int(obj["size"])
    if not re.fullmatch(r"[0-9a-f]{64}", oid):
        return {"oid": oid, "size": size, "error": {"code": 422, "message": "bad oid"}}
    if oid in repo.lfs_objects:
        return {"oid": oid, "size": size}
    ticket = secrets.token_hex(16)
    req.store.upload_tickets[ticket] = ((repo.repo_type, repo.repo_id), oid, size)
    endpoint = req.hub.endpoint
    return {
        "oid": oid,
        "size": size,
        "authenticated": True,
        "actions": {
            "upload": {"href": f"{endpoint}/__lfs/upload/{ticket}"},
            "verify": {"href": f"{endpoint}/__lfs/verify/{ticket}"},
        },
    }


def lfs_batch(req: Request, ns: str, name: str, url_type: str | None = None) -> Response:
    """The git-LFS batch API, uploads only: where to send each object not yet stored."""
    payload = req.json() or {}
    if payload.get("operation") != "upload":
        raise HttpError(400, "the local hub only implements LFS uploads")
    with req.store.lock:
        repo = _writable_repo(req, repo_type_of_url(url_type), f"{ns}/{name}")
        objects = [_batch_object(req, repo, obj) for obj in payload.get("objects") or []]
    return Response(
        200,
        {"transfer": "basic", "objects": objects},
        content_type="application/vnd.git-lfs+json",
    )


def lfs_put(req: Request, ticket: str) -> Response:
    """A presigned-style upload URL: the ticket authorizes it, like an S3 signature."""
    store = req.store
    with store.lock:
        expected = store.upload_tickets.get(ticket)
    if expected is None:
        raise HttpError(403, "unknown upload URL")
    key, oid, size = expected
    if len(req.body) != size or hashlib.sha256(req.body).hexdigest() != oid:
        raise HttpError(400, "uploaded content does not match the announced oid and size")
    with store.lock:
        repo = store.repos.get(key)
        if repo is None:
            raise HttpError(404, "the repo of this upload URL is gone")
        repo.lfs_objects[oid] = req.body
    return Response(200, b"", headers={"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})


def lfs_verify(req: Request, ticket: str) -> Response:
    """Confirm an upload arrived whole; the client calls it after each ``PUT``."""
    req.require_token()
    payload = req.json() or {}
    store = req.store
    with store.lock:
        key, _, _ = store.upload_tickets.get(ticket, (("", ""), "", 0))
        repo = store.repos.get(key)
        data = repo.lfs_objects.get(str(payload.get("oid"))) if repo else None
    if data is None or len(data) != int(payload.get("size", -1)):
        raise HttpError(404, "object not uploaded")
    return Response(200, {})


def _apply(files: dict[str, Blob], repo: Repo, line: dict[str, Any]) -> None:
    """Apply one operation line of an NDJSON commit to the new snapshot ``files``."""
    key, value = line.get("key"), line.get("value") or {}
    path = str(value.get("path", "")).strip("/")
    if not path or ".." in path.split("/") or path.startswith(".git/"):
        raise HttpError(400, f"invalid path {path!r}")
    if key == "file":
        files[path] = Blob(base64.b64decode(value["content"]), lfs=False)
    elif key == "lfsFile":
        data = repo.lfs_objects.get(value.get("oid", ""))
        if data is None:
            raise HttpError(422, f"LFS object for {path} was not uploaded")
        files[path] = Blob(data, lfs=True)
    elif key == "deletedFile":
        if files.pop(path, None) is None:
            raise HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
    elif key == "deletedFolder":
        for candidate in [p for p in files if p.startswith(path + "/")]:
            del files[candidate]
    else:
        raise HttpError(400, f"unknown commit operation {key!r}")


def commit(req: Request, api_type: str, ns: str, name: str, rev: str) -> Response:
    """An NDJSON commit: a header line, then one line per added or deleted file."""
    store = req.store
    lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise HttpError(400, "a commit starts with a header line")
    header = lines[0]["value"]
    with store.lock:
        repo = _writable_repo(req, API_TYPES[api_type], f"{ns}/{name}")
        branch = unquote(rev)
        if branch not in repo.branches:
            raise HttpError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        if header.get("parentCommit") and header["parentCommit"] != head.oid:
            raise HttpError(412, "A commit has happened since the parent commit")
        files = dict(head.files)
        for line in lines[1:]:
            _apply(files, repo, line)
        new = store.new_commit(
            repo, head, files, header.get("summary") or "update", header.get("description") or ""
        )
        pr_url = None
        base = repo_url(req.hub.endpoint, repo.repo_id, repo.repo_type)
        if req.flag("create_pr"):  # as the Hub: the commit goes to refs/pr/N, the branch stays
            number = 1 + sum(b.startswith("refs/pr/") for b in repo.branches)
            repo.branches[f"refs/pr/{number}"] = new.oid
            pr_url = f"{base}/discussions/{number}"
        else:
            repo.branches[branch] = new.oid
    return Response(
        200,
        {
            "success": True,
            "commitOid": new.oid,
            "commitUrl": f"{base}/commit/{new.oid}",
            "pullRequestUrl": pr_url,
        },
    )


def create_branch(req: Request, api_type: str, ns: str, name: str, branch: str) -> Response:
    """A new branch at the head of the default branch (or of ``startingPoint``)."""
    store = req.store
    payload = req.json() or {}
    with store.lock:
        repo = _writable_repo(req, API_TYPES[api_type], f"{ns}/{name}")
        branch = unquote(branch)
        if branch in repo.branches:
            raise HttpError(409, f"Reference already exists: {branch}")
        start = store.commit(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
    return Response(200, {})


ROUTES: tuple[Route, ...] = (
    route("POST", API_REPO + r"/preupload/(?P<rev>[^/]+)$", preupload),
    route("POST", API_REPO + r"/commit/(?P<rev>[^/]+)$", commit),
    route("POST", API_REPO + r"/branch/(?P<branch>.+)$", create_branch),
    route("POST", REPO_URL + r"\.git/info/lfs/objects/batch$", lfs_batch),
    route("PUT", r"^/__lfs/upload/(?P<ticket>[0-9a-f]+)$", lfs_put),
    route("POST", r"^/__lfs/verify/(?P<ticket>[0-9a-f]+)$", lfs_verify),
)
