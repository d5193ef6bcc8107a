"""Tree entries: how files and folders of a commit are described to the clients.

``list_repo_tree``, ``get_paths_info`` and ``HfFileSystem`` all parse these dicts, so
their fields follow the Hub's JSON (``lfs`` with ``pointerSize``, ``lastCommit`` and
``securityFileStatus`` when expanded). Folders are implicit in git; they are derived
from file paths here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from .store import Blob, Commit, Repo, Store

__all__ = ["file_entry", "folder_entry", "folders"]


def _last_commit(repo: Repo, commit: Commit, path: str) -> dict[str, str]:
    """The newest commit that changed ``path`` (a file, or anything under a folder)."""

    def snapshot(c: Commit) -> list[tuple[str, str]]:
        return sorted(
            (p, b.oid) for p, b in c.files.items() if p == path or p.startswith(path + "/")
        )

    newest = commit
    current = snapshot(commit)
    for older in itertools.islice(Store.history(repo, commit), 1, None):
        if snapshot(older) != current:
            break
        newest = older
    return {"id": newest.oid, "title": newest.title, "date": newest.date}


def file_entry(repo: Repo, commit: Commit, path: str, blob: Blob, expand: bool) -> dict[str, Any]:
    """A file's entry; LFS files also describe their pointer."""
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
        entry["lastCommit"] = _last_commit(repo, commit, path)
        entry["securityFileStatus"] = {
            "status": "safe",
            "avScan": {"virusFound": False, "virusNames": None},
            "pickleImportScan": None,
        }
    return entry


def folder_entry(repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
    """A folder's entry; its oid changes whenever anything under it changes."""
    inside = sorted((p, b.oid) for p, b in commit.files.items() if p.startswith(path + "/"))
    entry: dict[str, Any] = {
        "type": "directory",
        "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(),
        "size": 0,
        "path": path,
    }
    if expand:
        entry["lastCommit"] = _last_commit(repo, commit, path)
    return entry


def folders(files: dict[str, Blob]) -> set[str]:
    """Every folder that holds a file, at any depth."""
    found: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        found.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return found
