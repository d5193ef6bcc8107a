"""Any OpenAI-compatible chat server (``vllm serve``, llama.cpp server, TGI) as a distilabel LLM.

Why our own class: distilabel's ``OpenAILLM.response_format`` takes no JSON schema, and it
sends one request per prompt through its async client in a way we cannot bound. Here all
prompts of a batch are in flight at once (up to ``concurrency``), so the server's own
continuous batching sees them as one batch. A hosted API that throttles us (HTTP 429)
is obeyed: its ``Retry-After`` sets the wait, and the number of requests in flight
adapts to its quota (:mod:`synthalign.llms.ratelimit`); retries are counted per row.

Structured output uses the standard
``response_format: {"type": "json_schema", ...}`` body; when the server is vLLM (its
``/models`` says ``owned_by: vllm``) it gets vLLM's ``structured_outputs: {"grammar": ...}``
instead, with the same compact, JSON-valid EBNF the in-process backend uses (vLLM's own
schema compiler allows free whitespace and raw control characters in bounded strings).

Spec: ``openai:http://HOST:PORT/v1#MODEL``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, PrivateAttr, SecretStr, field_validator

from synthalign.errors import BackendError
from synthalign.llms.base import ChatType, Completion, Decoding, JSONSchema, SynthLLM
from synthalign.llms.ratelimit import AdaptiveConcurrency, SlotTimeout, retry_after_seconds

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

logger = logging.getLogger(__name__)

API_KEY_ENV_VAR = "OPENAI_API_KEY"
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def parse_openai_spec(spec: str) -> tuple[str, str]:
    """Split ``openai:http://HOST:PORT/v1#MODEL`` (scheme optional) into (base_url, model)."""
    rest = spec.removeprefix("openai:")
    url, sep, model = rest.partition("#")
    url = url.rstrip("/")
    if not sep or not model or not re.match(r"^https?://[^/\s]+", url):
        raise BackendError(
            f"bad OpenAI-compatible spec {spec!r}: expected openai:http://HOST:PORT/v1#MODEL"
        )
    return url, model


class _ServerError(Exception):
    """An HTTP answer worth retrying (overloaded, gateway, rate limit)."""

    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.retry_after = retry_after


class _Attempts:
    """How many times one request was sent (its retries go to the accounting)."""

    def __init__(self) -> None:
        self.count = 0


def _schema_name(schema: JSONSchema) -> str:
    """OpenAI requires ``json_schema.name`` to match ``^[a-zA-Z0-9_-]{1,64}$``."""
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title") or "output"))
    return name[:64] or "output"


class OpenAICompatLLM(SynthLLM):
    """Chat completions against an OpenAI-compatible server, all prompts of a batch concurrently.

    ``api_key`` defaults to ``$OPENAI_API_KEY`` at ``load()`` and is never serialized:
    it is excluded from ``model_dump`` (and distilabel drops ``api_key`` from
    ``pipeline.yaml`` too), so a rerun reads it from the environment again.
    """

    base_url: str = Field(description="Server root including /v1, e.g. http://127.0.0.1:8000/v1.")
    api_key: SecretStr | None = Field(
        default=None,
        exclude=True,
        description=f"Bearer token; defaults to ${API_KEY_ENV_VAR} at load time. Never serialized.",
    )
    timeout: float = Field(default=300.0, description="Seconds to wait for one completion.")
    max_retries: int = Field(
        default=3, ge=0, description="Retries on connection errors and 429/5xx, with backoff."
    )
    backoff_s: float = Field(
        default=0.5, gt=0, description="First retry delay; doubles each retry."
    )
    concurrency: int = Field(
        default=64,
        ge=1,
        description="Most requests in flight at once; halved on each wave of HTTP 429s and"
        " grown back one at a time (AIMD).",
    )
    max_throttle_retries: int = Field(
        default=8, ge=0, description="Retries of one request the server throttled (HTTP 429)."
    )
    max_retry_after_s: float = Field(
        default=120.0,
        gt=0,
        description="Longest Retry-After we wait; a server that asks for more fails the row.",
    )
    structured_output_mode: Literal["auto", "json_schema", "vllm_grammar"] = Field(
        default="auto",
        description=(
            "How a schema is sent: json_schema = OpenAI response_format; vllm_grammar ="
            " vLLM's structured_outputs.grammar (exact JSON); auto = vllm_grammar when the"
            " server is vLLM, else json_schema."
        ),
    )

    _client: httpx.Client | None = PrivateAttr(default=None)
    _server_is_vllm: bool = PrivateAttr(default=False)
    _grammars: dict[str, str] = PrivateAttr(default_factory=dict)
    _flow: AdaptiveConcurrency | None = PrivateAttr(default=None)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> OpenAICompatLLM:
        """Build from ``openai:http://HOST:PORT/v1#MODEL``."""
        base_url, model = parse_openai_spec(spec)
        return cls(base_url=base_url, model=model, **kwargs)

    def load(self) -> None:
        """Open the connection pool and fail fast, in one line, if the server is not there."""
        import httpx

        super().load()
        if self.api_key is None and os.environ.get(API_KEY_ENV_VAR):
            self.api_key = SecretStr(os.environ[API_KEY_ENV_VAR])
        self._flow = AdaptiveConcurrency(self.concurrency)
        self._client = httpx.Client(
            headers=self._headers(),
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
        )
        self.check_reachable()

    def unload(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().unload()

    def _headers(self) -> dict[str, str]:
        if self.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.api_key.get_secret_value()}"}

    def check_reachable(self) -> list[str]:
        """GET ``/models`` with short timeouts; returns the served model ids.

        Cheap enough to run at every ``load()``: a wrong URL or a server that is not up
        yet becomes one line before any step runs, not a failed batch later.
        """
        import httpx

        url = f"{self.base_url}/models"
        quick = min(self.timeout, 5.0)

        def probe() -> httpx.Response:
            response = httpx.get(url, headers=self._headers(), timeout=quick)
            if response.status_code in _RETRY_STATUS:
                raise _ServerError(response.status_code, response.text)
            return response

        response = self._with_retries(probe, backoff_s=min(self.backoff_s, 0.2))
        if response.status_code in (401, 403):
            raise BackendError(
                f"server at {self.base_url} rejected the API key (HTTP {response.status_code}):"
                f" set {API_KEY_ENV_VAR} or api_key"
            )
        if response.status_code >= 400:
            raise BackendError(
                f"server at {self.base_url} answered GET /models with HTTP {response.status_code}:"
                f" {_one_line(response.text)}"
            )
        try:
            listed = response.json().get("data", [])
            served = [str(m.get("id")) for m in listed]
            self._server_is_vllm = any(m.get("owned_by") == "vllm" for m in listed)
        except (ValueError, AttributeError):
            served = []
        if served and self.model not in served:
            # llama.cpp and some proxies accept any model name, so only warn.
            (self._logger or logger).warning(  # no distilabel logger before load() (preflight)
                f"model {self.model!r} is not listed by {self.base_url}/models (served: {served})"
            )
        return served

    def _with_retries(
        self,
        call: Callable[[], T],
        backoff_s: float | None = None,
        attempts: _Attempts | None = None,
    ) -> T:
        """Run ``call`` with bounded retries; the last failure becomes one BackendError line.

        An HTTP 429 waits what the server's ``Retry-After`` says (our backoff when it says
        nothing) and has its own retry budget, ``max_throttle_retries``: being throttled
        is the server pacing us, not failing.
        """
        import httpx

        delay = self.backoff_s if backoff_s is None else backoff_s
        attempts = attempts or _Attempts()
        failures = throttles = 0
        while True:
            attempts.count += 1
            wait = delay * 2**failures
            try:
                return call()
            except _ServerError as e:
                if e.status == 429 and throttles < self.max_throttle_retries:
                    throttles += 1
                    time.sleep(self._throttle_wait(e, delay * 2 ** min(throttles - 1, 6)))
                    continue
                if e.status == 429:
                    raise BackendError(
                        f"server at {self.base_url} still throttled the request (HTTP 429)"
                        f" after {throttles} retries: lower concurrency or raise"
                        " max_throttle_retries, then rerun to resume"
                    ) from e
                if failures < self.max_retries:  # a 503 may say when to come back too
                    wait = self._throttle_wait(e, wait)
                error: BackendError = BackendError(
                    f"server at {self.base_url} failed ({_one_line(str(e))}): "
                    "check the server and its log"
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                error = BackendError(
                    f"server not reachable at URL: {self.base_url} "
                    f"({_one_line(str(e)) or type(e).__name__});"
                    " start it or fix the URL"
                )
            except httpx.TimeoutException as e:
                error = BackendError(
                    f"server at {self.base_url} did not answer within {self.timeout:g}s"
                    f" ({type(e).__name__}); raise timeout or lower concurrency"
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                error = BackendError(
                    f"server at {self.base_url} dropped the connection ({_one_line(str(e))})"
                )
            if failures >= self.max_retries:
                raise error
            time.sleep(wait)
            failures += 1

    def _throttle_wait(self, error: _ServerError, fallback_s: float) -> float:
        """The server's Retry-After if it gave one (bounded by ``max_retry_after_s``)."""
        if error.retry_after is None:
            return fallback_s
        if error.retry_after > self.max_retry_after_s:
            raise BackendError(
                f"server at {self.base_url} asked to wait {error.retry_after:g}s before retrying"
                f" (Retry-After), over max_retry_after_s={self.max_retry_after_s:g}:"
                " raise it, or lower concurrency and rerun to resume"
            )
        return error.retry_after

    def _request_body(
        self, conversation: ChatType, schema: JSONSchema | None, decoding: Decoding
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": conversation,
            **decoding.openai_params(),
        }
        if schema is not None and self._use_vllm_grammar():
            body["structured_outputs"] = {"grammar": self._grammar(schema)}
        elif schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(schema), "schema": schema, "strict": True},
            }
        return body

    def _use_vllm_grammar(self) -> bool:
        if self.structured_output_mode == "auto":
            return self._server_is_vllm
        return self.structured_output_mode == "vllm_grammar"

    def _grammar(self, schema: JSONSchema) -> str:
        from synthalign.llms.grammar import json_schema_ebnf

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = json_schema_ebnf(schema)
        return self._grammars[key]

    def _complete(self, body: dict[str, Any], attempts: _Attempts | None = None) -> Completion:
        assert self._client is not None and self._flow is not None, "call load() first"
        client, flow = self._client, self._flow
        slot_deadline = self.timeout * (self.max_retries + 2)

        def post() -> dict[str, Any]:
            try:
                with flow.slot(slot_deadline) as wave:
                    response = client.post(f"{self.base_url}/chat/completions", json=body)
            except SlotTimeout as e:
                raise BackendError(f"server at {self.base_url}: {e}") from e
            if response.status_code == 429:
                self._slow_down(flow, wave)
            if response.status_code in _RETRY_STATUS:
                raise _ServerError(
                    response.status_code, response.text, retry_after_seconds(response.headers)
                )
            if response.status_code >= 400:
                raise BackendError(
                    f"server at {self.base_url} rejected the request (HTTP {response.status_code}):"
                    f" {_one_line(response.text)}"
                )
            flow.succeeded()
            return response.json()

        payload = self._with_retries(post, attempts=attempts)
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
            retries=(attempts.count - 1) if attempts else 0,
        )

    def _slow_down(self, flow: AdaptiveConcurrency, wave: int) -> None:
        halved = flow.throttled(wave)
        if halved is not None:
            (self._logger or logger).warning(
                f"HTTP 429 from {self.base_url}: requests in flight {halved[0]} -> {halved[1]}"
            )

    def _complete_or_record(self, body: dict[str, Any]) -> Completion:
        """One request; a failure (after the retries) is this row's recorded error, not the
        whole batch's: the run goes on and its outcome counts the failed rows."""
        attempts = _Attempts()
        try:
            return self._complete(body, attempts)
        except BackendError as exc:
            return Completion(
                text=None,
                input_tokens=0,
                output_tokens=0,
                error=f"request failed: {exc}",
                retries=max(0, attempts.count - 1),
            )

    def _generate_batch(
        self, conversations: list[ChatType], schemas: list[JSONSchema | None], *, decoding: Decoding
    ) -> list[Completion]:
        """Send every prompt at once (bounded by ``concurrency``), answers in input order;
        prompt ``i`` samples with ``seed + i``."""
        if self._client is None:
            self.load()
        bodies = [
            self._request_body(conv, schema, decoding.for_prompt(i))
            for i, (conv, schema) in enumerate(zip(conversations, schemas, strict=True))
        ]
        workers = max(1, min(self.concurrency, len(bodies)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-compat") as pool:
            completions = list(pool.map(self._complete_or_record, bodies))
        failed = [c.error for c in completions if c.error]
        if failed:
            self._logger.warning(
                f"{len(failed)} of {len(completions)} requests failed; first: {failed[0]}"
            )
        return completions


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
