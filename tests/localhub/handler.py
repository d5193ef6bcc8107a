"""The HTTP side of the local hub: read a request, find its route, write the response.

The route table is the list of URLs the local hub implements, in one place; a request
no route matches is recorded in ``hub.problems`` so a test can fail when the clients
start using something this stand-in lacks. The request log keeps method, path and
status only, never headers, so a token sent to the server cannot leak through it.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .request import HubLike, Request, Response, Route
from .routes_read import ROUTES as READ_ROUTES
from .routes_repos import ROUTES as REPO_ROUTES
from .routes_write import ROUTES as WRITE_ROUTES
from .store import HttpError

__all__ = ["ROUTES", "Handler"]

ROUTES: tuple[Route, ...] = (*REPO_ROUTES, *READ_ROUTES, *WRITE_ROUTES)
"""Every URL the local hub answers; the first row whose method and pattern match wins."""


def _find_route(method: str, path: str) -> tuple[Route, dict[str, str | None]] | None:
    """The route for a request and its URL parameters, unquoted."""
    for row in ROUTES:
        if row.method != method:
            continue
        match = row.pattern.match(path)
        if match is not None:
            params = {
                k: unquote(v) if v is not None else None for k, v in match.groupdict().items()
            }
            return row, params
    return None


class Handler(BaseHTTPRequestHandler):
    """Serves the :class:`~localhub.server.LocalHub` attached to the HTTP server."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 60

    @property
    def hub(self) -> HubLike:
        return self.server.hub  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ logging
    def log_message(self, format: str, *args: Any) -> None:
        """Keep a request log in memory instead of printing it (no headers, ever)."""
        self.hub.requests.append(format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path
        self.hub.requests.append(f"{self.command} {path} {code}")

    # ------------------------------------------------------------------ methods
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

    # ------------------------------------------------------------------ plumbing
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
        body = self._read_body() if self.command in ("POST", "PUT", "DELETE") else b""
        split = urlsplit(self.path)
        found = _find_route(self.command, split.path)
        if found is None:
            self.hub.problems.append(f"unhandled {self.command} {split.path}")
            message = f"local hub has no route for {self.command} {split.path}"
            self._send(_error(HttpError(404, message)))
            return
        row, params = found
        request = Request(
            hub=self.hub,
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers=self.headers,
            body=body,
        )
        try:
            response = row.handle(request, **params)
        except HttpError as error:
            response = _error(error)
        except Exception as error:  # a bug here must fail the test, not hang it
            self.hub.problems.append(
                f"{self.command} {split.path}: {type(error).__name__}: {error}"
            )
            response = _error(HttpError(500, f"local hub error: {type(error).__name__}"))
        self._send(response)

    def _send(self, response: Response) -> None:
        """Write a response; JSON bodies are encoded here, ``HEAD`` gets headers only."""
        content_type = response.content_type
        if isinstance(response.body, (dict, list)):
            payload = json.dumps(response.body).encode()
            content_type = content_type or "application/json; charset=utf-8"
        else:
            payload = response.body or b""
        self.send_response(response.status)
        self.send_header("Content-Type", content_type or "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _error(error: HttpError) -> Response:
    """The Hub's error shape: ``{"error": message}`` plus its ``X-Error-*`` headers."""
    return Response(error.status, {"error": error.message, **error.extra}, headers=error.headers)
