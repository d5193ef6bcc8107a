"""A real OpenAI-compatible HTTP server on 127.0.0.1 that misbehaves on purpose.

``/models`` and ``/chat/completions`` answer with the status codes a test sets (an HTTP
500 at ``/models``, every chat call failing, a key that must be sent), and the server
records the ``Authorization`` header of every request. A chat call that succeeds
answers ``{}``: valid JSON that no synthalign schema accepts, so every row records a
parse failure and the run's outcome, not the server, decides.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Behaviour:
    models_status: int = 200
    chat_status: int = 200
    key: str | None = None
    auth: list[str | None] = field(default_factory=list)
    chats: int = 0


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refused(self) -> bool:
        b = self.behaviour
        b.auth.append(self.headers.get("Authorization"))
        if b.key is not None and self.headers.get("Authorization") != f"Bearer {b.key}":
            self._answer(401, {"error": {"message": "invalid api key"}})
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
        status = self.behaviour.models_status
        body = (
            {"object": "list", "data": [{"id": "loopback"}]} if status == 200 else {"error": "boom"}
        )
        self._answer(status, body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self._refused():
            return
        self.behaviour.chats += 1
        status = self.behaviour.chat_status
        if status != 200:
            self._answer(status, {"error": {"message": "internal error"}})
            return
        message = {"role": "assistant", "content": "{}"}
        self._answer(
            200,
            {
                "choices": [{"message": message}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
        )


@contextmanager
def loopback_llm(**settings: Any) -> Iterator[tuple[str, Behaviour]]:
    """``(base_url, behaviour)`` of a server running for the ``with`` block."""
    behaviour = Behaviour(**settings)
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", behaviour
    finally:
        server.shutdown()
        server.server_close()
