"""What a route sees of a request and what it answers, apart from the HTTP plumbing.

Routes are plain functions ``(request, **url_params) -> Response``, listed in a table
per group (:mod:`.routes_repos`, :mod:`.routes_read`, :mod:`.routes_write`). Keeping
sockets, body framing and header writing in :mod:`.handler` lets each route read as
what the Hub does for that URL, and lets the table say which URLs exist.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Protocol

from .store import HttpError, Store

__all__ = ["API_REPO", "REPO_URL", "HubLike", "Request", "Response", "Route", "route"]

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
API_REPO = r"^/api/(?P<api_type>models|datasets|spaces)/" + _REPO
"""The prefix of a repo's API URLs: ``/api/datasets/{namespace}/{name}``."""
REPO_URL = r"^/(?:(?P<url_type>datasets|spaces)/)?" + _REPO
"""The prefix of a repo's web URLs: ``/datasets/{namespace}/{name}`` (no prefix: model)."""


class HubLike(Protocol):
    """What the handler and the routes need of the hub that serves them."""

    store: Store
    requests: list[str]
    problems: list[str]
    page_size: int
    page_size_expanded: int

    @property
    def endpoint(self) -> str: ...


@dataclass
class Response:
    """A route's answer; dicts and lists are sent as JSON."""

    status: int
    body: bytes | dict | list | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass
class Request:
    """One request: method, path, query, the headers it needs and the whole body."""

    hub: HubLike
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    @property
    def store(self) -> Store:
        return self.hub.store

    def token(self) -> str | None:
        """The bearer token; a wrong one is refused like the Hub refuses it."""
        value = self.headers.get("Authorization", "")
        token = value[7:].strip() if value.lower().startswith("bearer ") else None
        if token and not self.store.accepts(token):
            raise HttpError(401, "Invalid credentials in Authorization header")
        return token or None

    def require_token(self) -> str:
        """The bearer token of a request that writes; anonymous writes are refused."""
        token = self.token()
        if token is None:
            raise HttpError(401, "You must be authenticated to access this resource")
        return token

    def json(self) -> Any:
        """The body as JSON (``None`` when empty); malformed JSON is a 400, as on the Hub."""
        try:
            return json.loads(self.body or b"null")
        except json.JSONDecodeError as error:
            raise HttpError(400, f"invalid JSON body: {error}") from None

    def flag(self, name: str) -> bool:
        """A boolean query parameter (``?recursive=true``)."""
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")


@dataclass(frozen=True)
class Route:
    """One row of the route table: method, path pattern, and the function answering it."""

    method: str
    pattern: re.Pattern[str]
    handle: Callable[..., Response]


def route(method: str, pattern: str, handle: Callable[..., Response]) -> Route:
    """A route table row; named groups of ``pattern`` become keyword arguments."""
    return Route(method, re.compile(pattern), handle)
