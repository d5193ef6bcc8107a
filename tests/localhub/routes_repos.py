"""Account and repo administration: ``whoami``, creating and deleting repos, YAML checks.

These are the calls ``HfApi.create_repo`` and ``upload_folder`` make before any file
moves; they need a token the store accepts, as on the Hub.
"""

from __future__ import annotations

import re

import yaml

from .request import Request, Response, Route, route
from .routes_read import parse_front_matter
from .store import URL_PREFIX, USER, HttpError, repo_url

__all__ = ["ROUTES"]


def whoami(req: Request) -> Response:
    """The account behind the token: every accepted token is :data:`USER` with write role."""
    req.require_token()
    return Response(
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


def create_repo(req: Request) -> Response:
    """Create a repo; an existing one is a 409 carrying its URL (``exist_ok`` relies on it)."""
    req.require_token()
    payload = req.json() or {}
    name = payload.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise HttpError(400, f"invalid repo name {name!r}")
    repo_type = payload.get("type") or "model"
    if repo_type not in URL_PREFIX:
        raise HttpError(400, f"invalid repo type {repo_type!r}")
    repo_id = f"{payload.get('organization') or USER}/{name}"
    if "visibility" in payload or payload.get("private") is not None:
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
    else:  # left to the Hub: the namespace's default
        private = req.store.default_private
    url = repo_url(req.hub.endpoint, repo_id, repo_type)
    store = req.store
    with store.lock:
        if (repo_type, repo_id) in store.repos:
            raise HttpError(409, "You already created this repo", extra={"url": url})
        store.create_repo(repo_type, repo_id, private)
    return Response(200, {"url": url, "name": repo_id, "id": repo_id})


def delete_repo(req: Request) -> Response:
    """Delete a repo and everything in it."""
    req.require_token()
    payload = req.json() or {}
    repo_id = f"{payload.get('organization') or USER}/{payload.get('name')}"
    with req.store.lock:
        if req.store.repos.pop((payload.get("type") or "model", repo_id), None) is None:
            raise HttpError(404, "Repository not found", "RepoNotFound")
    return Response(200, {})


def validate_yaml(req: Request) -> Response:
    """Check a card's front matter, as the Hub does before a README is committed."""
    req.token()
    content = (req.json() or {}).get("content", "")
    try:
        parse_front_matter(content)
    except yaml.YAMLError as error:
        return Response(400, {"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []})
    return Response(200, {"errors": [], "warnings": []})


ROUTES: tuple[Route, ...] = (
    route("POST", r"^/api/repos/create$", create_repo),
    route("DELETE", r"^/api/repos/delete$", delete_repo),
    route("POST", r"^/api/validate-yaml$", validate_yaml),
    route("GET", r"^/api/whoami-v2$", whoami),
)
