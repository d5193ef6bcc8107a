"""The local hub itself: a store served over HTTP from a background thread.

:class:`LocalHub` is what tests hold: it starts and stops the server and answers the
questions a test asks afterwards (which files a repo holds, what was requested, which
bytes were stored), without a test reaching into the store or the handler.
"""

from __future__ import annotations

import secrets
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import quote

from .handler import Handler
from .store import Store, repo_url

__all__ = ["LocalHub"]


class LocalHub:
    """An in-memory Hub on 127.0.0.1, served from a background thread.

    ``endpoint`` and ``token`` are what a client needs. ``requests`` lists every
    request as ``"METHOD /path STATUS"`` (never headers), and ``problems`` collects
    requests the server could not handle, so a test can assert the clients used
    nothing this stand-in does not implement. ``page_size`` and ``page_size_expanded``
    are the tree listing's page sizes; a test lowers them to exercise pagination.
    """

    def __init__(self, token: str | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token or f"hf_local{secrets.token_hex(16)}"
        self.store = Store(self.token)
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page_size = 1000
        self.page_size_expanded = 50
        self._server = ThreadingHTTPServer((host, port), Handler)
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
        self.store.accept_token(token)

    def accepts(self, token: str | None) -> bool:
        return self.store.accepts(token)

    def repo_url(self, repo_id: str, repo_type: str = "dataset") -> str:
        return repo_url(self.endpoint, repo_id, repo_type)

    def raw_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        """Where ``distilabel pipeline run --config URL`` finds a file of a dataset repo."""
        return f"{self.repo_url(repo_id)}/raw/{quote(revision, safe='')}/{quote(path)}"

    def repo_exists(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self.store.lock:
            return (repo_type, repo_id) in self.store.repos

    def files(
        self, repo_id: str, repo_type: str = "dataset", revision: str = "main"
    ) -> dict[str, bytes]:
        """Every file of a repo at ``revision``, as stored (LFS content, not pointers)."""
        with self.store.lock:
            repo = self.store.repos[(repo_type, repo_id)]
            return {p: b.data for p, b in self.store.commit(repo, revision).files.items()}

    def stored_bytes(self) -> list[bytes]:
        """Everything the server holds: files of every commit and uploaded LFS objects."""
        return self.store.stored_bytes()
