"""Reading a repo: repo info, tree listings, paths-info, commit lists, refs, downloads.

This is what ``load_dataset(REPO_ID)``, ``HfFileSystem`` and ``hf_hub_download`` use.
Listings are paginated with ``Link`` headers like the Hub's, and downloads answer
``HEAD``, byte ranges and the ``ETag`` / ``X-Repo-Commit`` headers the download cache
keys on. Public repos are readable without a token.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import parse_qs, urlencode

import yaml

from .listing import file_entry, folder_entry, folders
from .request import API_REPO, REPO_URL, Request, Response, Route, route
from .store import API_TYPES, USER, Commit, HttpError, git_oid, repo_type_of_url

__all__ = ["ROUTES", "parse_front_matter"]

_FRONT_MATTER_RE = re.compile(r"\A---\r?\n(.*?)(?:\r?\n)?^---[ \t]*\r?$", re.S | re.M)
_TEXT_SUFFIXES = (".md", ".yaml", ".yml", ".json", ".txt", ".jsonl", ".py")


def parse_front_matter(text: str) -> dict[str, Any] | None:
    """A card's YAML front matter as a mapping, ``None`` without one; bad YAML raises."""
    match = _FRONT_MATTER_RE.match(text)
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


def _siblings(commit: Commit, blobs: bool) -> list[dict[str, Any]]:
    """The file list of repo info; sizes and LFS details only when ``?blobs=true``."""
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
    return siblings


def _card_data(commit: Commit) -> dict[str, Any] | None:
    """The README's front matter, which the Hub reports as ``cardData``."""
    if "README.md" not in commit.files:
        return None
    try:
        return parse_front_matter(commit.files["README.md"].data.decode())
    except Exception:
        return None


def repo_info(req: Request, api_type: str, ns: str, name: str, rev: str | None = None) -> Response:
    """Repo metadata at a revision (``main`` by default)."""
    store = req.store
    with store.lock:
        repo = store.repo(API_TYPES[api_type], f"{ns}/{name}", req.token())
        commit = store.commit(repo, rev or "main")
        card_data = _card_data(commit)
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
            "siblings": _siblings(commit, req.flag("blobs")),
            "usedStorage": sum(len(b.data) for b in commit.files.values()),
        }
    return Response(200, info)


def tree(
    req: Request, api_type: str, ns: str, name: str, rev: str, path: str | None = None
) -> Response:
    """The entries under ``path``, one page at a time; ``Link`` points at the next page."""
    store = req.store
    recursive, expand = req.flag("recursive"), req.flag("expand")
    path = (path or "").strip("/")
    with store.lock:
        repo = store.repo(API_TYPES[api_type], f"{ns}/{name}", req.token())
        commit = store.commit(repo, rev)
        all_folders = folders(commit.files)
        if path and path not in all_folders:
            raise HttpError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        prefix = f"{path}/" if path else ""

        def wanted(candidate: str) -> bool:
            if not candidate.startswith(prefix) or candidate == path:
                return False
            return recursive or "/" not in candidate[len(prefix) :]

        entries = [folder_entry(repo, commit, p, expand) for p in sorted(all_folders) if wanted(p)]
        entries += [
            file_entry(repo, commit, p, b, expand)
            for p, b in sorted(commit.files.items())
            if wanted(p)
        ]
    page_size = req.hub.page_size_expanded if expand else req.hub.page_size
    start = int(req.query.get("cursor", ["0"])[-1])
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
        headers["Link"] = f'<{req.hub.endpoint}{req.path}?{query}>; rel="next"'
    return Response(200, page, headers=headers)


def paths_info(req: Request, api_type: str, ns: str, name: str, rev: str) -> Response:
    """Entries for the form's ``paths``; paths that do not exist are left out."""
    store = req.store
    form = parse_qs(req.body.decode())
    paths = [p.strip("/") for p in form.get("paths", [])]
    expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
    with store.lock:
        repo = store.repo(API_TYPES[api_type], f"{ns}/{name}", req.token())
        commit = store.commit(repo, rev)
        all_folders = folders(commit.files)
        out = []
        for path in paths:
            if path in commit.files:
                out.append(file_entry(repo, commit, path, commit.files[path], expand))
            elif path in all_folders:
                out.append(folder_entry(repo, commit, path, expand))
    return Response(200, out)


def commits(req: Request, api_type: str, ns: str, name: str, rev: str) -> Response:
    """The history of a revision, newest first."""
    store = req.store
    with store.lock:
        repo = store.repo(API_TYPES[api_type], f"{ns}/{name}", req.token())
        history = [
            {
                "id": c.oid,
                "title": c.title,
                "message": c.message,
                "authors": [{"user": USER}],
                "date": c.date,
            }
            for c in store.history(repo, store.commit(repo, rev))
        ]
    return Response(200, history)


def refs(req: Request, api_type: str, ns: str, name: str) -> Response:
    """Branches and where they point; the local hub has no tags or converts."""
    store = req.store
    with store.lock:
        repo = store.repo(API_TYPES[api_type], f"{ns}/{name}", req.token())
        branches = [
            {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
            for b, oid in repo.branches.items()
        ]
    return Response(200, {"branches": branches, "converts": [], "tags": []})


def _byte_range(byte_range: str, data: bytes) -> tuple[bytes, str]:
    """The slice a ``Range: bytes=...`` header asks for, and its ``Content-Range``."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise HttpError(416, f"unsupported range {byte_range}")
    size = len(data)
    if match.group(1) == "":
        start, end = max(0, size - int(match.group(2))), size - 1
    else:
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    if start >= size or start > end:
        raise HttpError(
            416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
        )
    return data[start : end + 1], f"bytes {start}-{end}/{size}"


def download(
    req: Request, ns: str, name: str, kind: str, rev: str, path: str, url_type: str | None = None
) -> Response:
    """A file from ``/resolve/`` (content) or ``/raw/`` (LFS files as their pointer)."""
    store = req.store
    with store.lock:
        repo = store.repo(repo_type_of_url(url_type), f"{ns}/{name}", req.token())
        commit = store.commit(repo, rev)
        blob = commit.files.get(path)
    if blob is None:
        raise HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
    data = blob.pointer if kind == "raw" and blob.lfs else blob.data
    headers = {
        "ETag": f'"{blob.etag if kind == "resolve" else git_oid(data)}"',
        "X-Repo-Commit": commit.oid,
        "Accept-Ranges": "bytes",
    }
    if kind == "resolve" and blob.lfs:
        headers["X-Linked-Size"] = str(len(blob.data))
        headers["X-Linked-ETag"] = f'"{blob.sha256}"'
    text = path.endswith(_TEXT_SUFFIXES) or kind == "raw"
    content_type = "text/plain; charset=utf-8" if text else "application/octet-stream"
    status = 200
    byte_range = req.headers.get("Range")
    if byte_range and req.method == "GET":
        data, headers["Content-Range"] = _byte_range(byte_range, data)
        status = 206
    return Response(status, data, headers=headers, content_type=content_type)


_DOWNLOAD = REPO_URL + r"/(?P<kind>resolve|raw)/(?P<rev>[^/]+)/(?P<path>.+)$"

ROUTES: tuple[Route, ...] = (
    route("GET", API_REPO + r"$", repo_info),
    route("GET", API_REPO + r"/revision/(?P<rev>[^/]+)$", repo_info),
    route("GET", API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", tree),
    route("POST", API_REPO + r"/paths-info/(?P<rev>[^/]+)$", paths_info),
    route("GET", API_REPO + r"/commits/(?P<rev>[^/]+)$", commits),
    route("GET", API_REPO + r"/refs$", refs),
    route("GET", _DOWNLOAD, download),
    route("HEAD", _DOWNLOAD, download),
)
