"""A hosted API that throttles us: Retry-After is obeyed, concurrency adapts, retries counted.

The server is real HTTP on 127.0.0.1 (``ThreadingHTTPServer``) with a quota: it admits
at most ``capacity`` requests at once and answers the rest HTTP 429, as a hosted
endpoint does, with the ``Retry-After`` header the test sets.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from synthalign.llms import load_llm
from synthalign.llms.base import Completion, Decoding
from synthalign.llms.openai import OpenAICompatLLM
from synthalign.llms.ratelimit import AdaptiveConcurrency, SlotTimeout, retry_after_seconds


@dataclass
class Quota:
    capacity: int = 1_000
    retry_after: dict[str, str] = field(default_factory=dict)
    throttle_first: int = 0  # answer the first N requests 429 whatever the load
    in_flight: int = 0
    posts: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    quota: Quota

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "hosted"}]}, {})

    def do_POST(self) -> None:
        q = self.quota
        self.rfile.read(int(self.headers["Content-Length"]))
        with q.lock:
            throttled = q.in_flight >= q.capacity or len(q.posts) < q.throttle_first
            q.posts.append((time.monotonic(), 429 if throttled else 200))
            if not throttled:
                q.in_flight += 1
        if throttled:
            self._send(429, {"error": {"message": "rate limit"}}, q.retry_after)
            return
        time.sleep(0.05)  # long enough that the batch's requests overlap
        with q.lock:
            q.in_flight -= 1
        answer = {"role": "assistant", "content": "ok"}
        usage = {"prompt_tokens": 5, "completion_tokens": 1}
        self._send(200, {"choices": [{"message": answer}], "usage": usage}, {})


class _Server(ThreadingHTTPServer):
    # the default listen backlog (5) resets some of 32 simultaneous connects: those retries
    # would never reach the quota's count, and the test compares retries with 429s
    request_queue_size = 128


@pytest.fixture()
def hosted() -> Iterator[tuple[str, Quota]]:
    quota = Quota()
    handler = type("Handler", (_Handler,), {"quota": quota})
    with _Server(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_port}/v1", quota
        server.shutdown()


def _send(url: str, prompts: int, **llm: Any) -> tuple[list[Completion], OpenAICompatLLM]:
    model = OpenAICompatLLM.from_spec(f"openai:{url}#hosted", backoff_s=0.01, **llm)
    model.load()
    try:
        conversations = [[{"role": "user", "content": f"p{i}"}] for i in range(prompts)]
        completions = model._generate_batch(
            conversations,
            [None] * prompts,
            decoding=Decoding(max_new_tokens=4, temperature=0.0, top_p=1.0, seed=0),
        )
    finally:
        model.unload()
    return completions, model


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "soon"}, None),
        ({}, None),
        ({"Retry-After": "-3"}, 0.0),
    ],
)
def test_retry_after_header_forms(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


def test_retry_after_as_http_date() -> None:
    now = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds({"Retry-After": later}, now=now) == 30.0
    assert retry_after_seconds({"Retry-After": earlier}, now=now) == 0.0


def test_the_wait_is_the_servers_retry_after(hosted: tuple[str, Quota]) -> None:
    url, quota = hosted
    quota.throttle_first, quota.retry_after = 1, {"Retry-After": "1"}
    (completion,), _ = _send(url, 1)
    assert completion.text == "ok" and completion.retries == 1
    (first, status), (second, _) = quota.posts
    assert status == 429
    # our own backoff is 0.01 s: only the server's header explains a one-second gap
    assert second - first >= 0.9


def test_concurrency_halves_on_429_and_every_row_still_arrives(hosted: tuple[str, Quota]) -> None:
    url, quota = hosted
    quota.capacity, quota.retry_after = 3, {"retry-after-ms": "20"}
    completions, model = _send(url, 40, concurrency=32)
    assert [c.text for c in completions] == ["ok"] * 40
    assert sum(c.retries for c in completions) == sum(s == 429 for _, s in quota.posts) > 0
    assert model._flow is not None and model._flow.decreases >= 2
    assert model._flow.limit < 32, "the limit never came down from the recipe's concurrency"


def test_a_retry_after_beyond_the_cap_fails_the_row_at_once(hosted: tuple[str, Quota]) -> None:
    url, quota = hosted
    quota.throttle_first, quota.retry_after = 10, {"Retry-After": "3600"}
    started = time.monotonic()
    (completion,), _ = _send(url, 1, max_retry_after_s=60)
    assert time.monotonic() - started < 30, "waited for an hour-long Retry-After"
    assert completion.text is None
    assert "asked to wait 3600s before retrying (Retry-After), over max_retry_after_s=60" in (
        completion.error or ""
    )


def test_throttling_without_end_gives_up_after_its_own_budget(hosted: tuple[str, Quota]) -> None:
    url, quota = hosted
    quota.throttle_first = 1_000
    (completion,), _ = _send(url, 1, max_throttle_retries=3)
    assert len(quota.posts) == 4 and completion.retries == 3
    assert "still throttled the request (HTTP 429) after 3 retries" in (completion.error or "")


def test_aimd_one_decrease_per_wave_and_additive_growth() -> None:
    flow = AdaptiveConcurrency(16)
    with flow.slot(1.0) as wave_a, flow.slot(1.0) as wave_b:
        assert flow.throttled(wave_a) == (16, 8)
        assert flow.throttled(wave_b) is None, "a second 429 of the same wave halved again"
    for _ in range(9):  # about one window of successes at limit 8 adds one slot
        flow.succeeded()
    assert flow.limit == 9
    for _ in range(500):
        flow.succeeded()
    assert flow.limit == 16, "grew past the recipe's concurrency"


def test_a_full_limit_waits_with_a_deadline() -> None:
    flow = AdaptiveConcurrency(1)
    with flow.slot(1.0):
        second = flow.slot(0.05)
        with pytest.raises(SlotTimeout, match="no request slot came free"):
            second.__enter__()


def test_the_knobs_come_from_the_roles_engine_kwargs() -> None:
    llm = load_llm(
        "openai:http://127.0.0.1:9/v1#hosted",
        engine_kwargs={"concurrency": 4, "max_throttle_retries": 2, "max_retry_after_s": 30},
    )
    assert (llm.concurrency, llm.max_throttle_retries, llm.max_retry_after_s) == (4, 2, 30.0)
