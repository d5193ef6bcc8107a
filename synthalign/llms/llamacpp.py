"""llama.cpp backend (``llama-cpp-python``), for GGUF models on CPU.

The Python bindings serve one sequence at a time, so prompts are issued in order;
JSON schemas are enforced by llama.cpp's grammar sampler (``response_format`` with a
schema). Its schema converter (llama-cpp-python 0.3) ignores ``minimum``/``maximum``,
so a bounded integer is handed over as the enum of its values, which the grammar does
enforce (a 0-10 score can then never come back as 12). A schema-forced answer cut by
``max_tokens`` is closed into valid JSON (:func:`synthalign.llms.closing.close_json`), so
the cut field fails alone. Install with
``pip install 'synthalign[llamacpp]'``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr

from synthalign.errors import BackendError
from synthalign.llms.base import ChatType, Completion, Decoding, JSONSchema, SynthLLM
from synthalign.llms.closing import close_json
from synthalign.models import is_builtin, resolve_model, smollm2_gguf_path

MAX_ENUM_RANGE = 1000


def bounded_ints_as_enums(schema: Any) -> Any:
    """A copy of ``schema`` where every integer with both bounds (at most
    ``MAX_ENUM_RANGE`` values) is an ``enum`` of the integers it allows."""
    if isinstance(schema, list):
        return [bounded_ints_as_enums(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_ints_as_enums(value) for key, value in schema.items()}
    if out.get("type") == "integer":
        low = out.get("minimum", out["exclusiveMinimum"] + 1 if "exclusiveMinimum" in out else None)
        high = out.get(
            "maximum", out["exclusiveMaximum"] - 1 if "exclusiveMaximum" in out else None
        )
        if isinstance(low, int) and isinstance(high, int) and 0 <= high - low < MAX_ENUM_RANGE:
            for key in ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                out.pop(key, None)
            out["enum"] = list(range(low, high + 1))
    return out


class LlamaCppLLM(SynthLLM):
    """A GGUF model run by llama.cpp."""

    n_ctx: int = Field(default=4096, description="context window in tokens")
    n_threads: int | None = Field(default=None, description="CPU threads; default all cores")
    n_gpu_layers: int = 0
    repeat_penalty: float | None = Field(
        default=None,
        gt=0,
        description="llama.cpp's repeat_penalty; None: 1.1 for the built-in model, its default otherwise",
    )

    _llm: Any = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendError(
                "the llamacpp backend needs llama-cpp-python: pip install 'synthalign[llamacpp]'"
            ) from exc
        path = str(smollm2_gguf_path()) if self.model == "builtin:smollm2-135m" else self.model
        if is_builtin(path):
            raise BackendError(
                f"{self.model} has no GGUF file: use the transformers backend for it"
            )
        path = resolve_model(path)
        self._llm = Llama(
            model_path=path,
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            verbose=False,
        )

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()  # frees the model now, not in __del__ at interpreter exit
        self._llm = None

    def _generate_batch(
        self, conversations: list[ChatType], schemas: list[JSONSchema | None], *, decoding: Decoding
    ) -> list[Completion]:
        completions = []
        extra = dict(decoding.extra)
        penalty = self.repeat_penalty or (1.1 if is_builtin(self.model) else None)
        if penalty is not None:
            extra.setdefault("repeat_penalty", penalty)
        for conversation, schema in zip(conversations, schemas, strict=True):
            response_format = (
                {"type": "json_object", "schema": bounded_ints_as_enums(schema)} if schema else None
            )
            out = self._llm.create_chat_completion(
                messages=conversation,
                max_tokens=decoding.max_new_tokens,
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                seed=decoding.seed,
                response_format=response_format,
                **extra,
            )
            usage = out.get("usage") or {}
            text = out["choices"][0]["message"]["content"] or ""
            completions.append(
                Completion(
                    text=close_json(text, schema) if schema else text,
                    input_tokens=int(usage.get("prompt_tokens", 0)),
                    output_tokens=int(usage.get("completion_tokens", 0)),
                )
            )
        return completions
