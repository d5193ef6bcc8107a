"""The OpenAI-compatible backend without a real model: error lines, secrets, request bodies.

A real ``vllm serve`` round trip lives in tests/test_vllm_backend.py (needs .venv-vllm);
here a stub server on 127.0.0.1 checks what we send and that answers come back in order.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from synthalign.errors import BackendError
from synthalign.llms.openai import OpenAICompatLLM, parse_openai_spec

SECRET = "sk-test-do-not-leak-1234567890"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Verdict(BaseModel):
    label: str
    confidence: int


class _StubHandler(BaseHTTPRequestHandler):
    """Answers /models and /chat/completions; records every request body."""

    bodies: list[dict[str, Any]]
    auth: list[str | None]
    reply: str | None = None  # a plain answer (numbered per request) instead of the JSON echo
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "stub-model"}]})

    def do_POST(self) -> None:
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.bodies.append(body)
            cls.auth.append(self.headers.get("Authorization"))
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        time.sleep(0.05)  # long enough that concurrent requests overlap
        with cls.lock:
            cls.in_flight -= 1
        if cls.reply:
            text = f"{cls.reply} (reply {len(cls.bodies)})"
        else:
            text = json.dumps({"label": body["messages"][-1]["content"], "confidence": 3})
        self._send(
            {
                "choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7},
            }
        )


@pytest.fixture()
def stub_server() -> Iterator[tuple[str, type[_StubHandler]]]:
    handler = type("Handler", (_StubHandler,), {"bodies": [], "auth": [], "peak": 0})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_port}/v1", handler
        server.shutdown()  # a fixture's teardown runs this even when the test failed


def test_spec_parsing() -> None:
    assert parse_openai_spec("openai:http://127.0.0.1:8000/v1/#org/model-1") == (
        "http://127.0.0.1:8000/v1",
        "org/model-1",
    )
    with pytest.raises(BackendError, match="expected openai:http"):
        parse_openai_spec("openai:127.0.0.1:8000#m")
    with pytest.raises(BackendError, match="expected openai:http"):
        parse_openai_spec("openai:http://127.0.0.1:8000/v1")


def test_unreachable_server_is_one_quick_line() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    llm = OpenAICompatLLM(base_url=url, model="m", max_retries=2)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        llm.load()
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert message.startswith(f"server not reachable at URL: {url}")
    assert "start it or fix the URL" in message
    assert "\n" not in message
    assert elapsed < 5, f"took {elapsed:.1f}s to give up"


def test_api_key_never_serialized(
    stub_server: tuple[str, type[_StubHandler]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from distilabel.steps.tasks import TextGeneration

    url, _ = stub_server
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    llm = OpenAICompatLLM(base_url=url, model="stub-model")
    llm.load()  # picks the key up from the environment
    try:
        assert llm.api_key is not None and llm.api_key.get_secret_value() == SECRET
        assert SECRET not in repr(llm)
        assert SECRET not in json.dumps(llm.dump(), default=str)
        assert SECRET not in llm.model_dump_json()
        llm.save(tmp_path / "llm.yaml", format="yaml")
        task = TextGeneration(llm=llm, name="gen")
        task.save(tmp_path / "task.yaml", format="yaml")
    finally:
        llm.unload()
    for name in ("llm.yaml", "task.yaml"):
        text = (tmp_path / name).read_text()
        assert "stub-model" in text and SECRET not in text
        assert "api_key" not in yaml.safe_load(text).get("llm", yaml.safe_load(text))


def test_batch_goes_out_concurrently_with_schema(
    stub_server: tuple[str, type[_StubHandler]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = stub_server
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    llm = OpenAICompatLLM.from_spec(
        f"openai:{url}#stub-model", structured_output=Verdict.model_json_schema()
    )
    llm.load()
    try:
        prompts = [[{"role": "user", "content": f"p{i}"}] for i in range(16)]
        outputs = llm.generate_outputs(inputs=prompts, max_new_tokens=32, temperature=0.0, seed=5)
    finally:
        llm.unload()
    assert [Verdict.model_validate_json(o["generations"][0]).label for o in outputs] == [
        f"p{i}" for i in range(16)
    ]
    assert outputs[0]["statistics"] == {"input_tokens": [11], "output_tokens": [7]}
    assert handler.peak > 1, "prompts were sent one at a time"
    body = handler.bodies[0]
    assert body["model"] == "stub-model"
    assert body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["properties"]["confidence"]
    assert sorted(b["seed"] for b in handler.bodies) == list(range(5, 21))
    assert set(handler.auth) == {f"Bearer {SECRET}"}
