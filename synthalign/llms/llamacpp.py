"""llama.cpp backend (``llama-cpp-python``), for GGUF models on CPU.

The Python bindings serve one sequence at a time, so prompts are issued in order;
JSON schemas are enforced by llama.cpp's grammar sampler (``response_format`` with a
schema). Install with ``pip install 'synthalign[llamacpp]'``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr

from synthalign.errors import BackendError
from synthalign.llms.base import ChatType, Completion, JSONSchema, SynthLLM


class LlamaCppLLM(SynthLLM):
    """A GGUF model run by llama.cpp."""

    n_ctx: int = Field(default=4096, description="context window in tokens")
    n_threads: int | None = Field(default=None, description="CPU threads; default all cores")
    n_gpu_layers: int = 0

    _llm: Any = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendError(
                "the llamacpp backend needs llama-cpp-python: pip install 'synthalign[llamacpp]'"
            ) from exc
        from synthalign.models import is_builtin, resolve_model, smollm2_gguf_path

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
        self._llm = None

    def _generate_batch(
        self,
        conversations: list[ChatType],
        schemas: list[JSONSchema | None],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        **extra: Any,
    ) -> list[Completion]:
        completions = []
        for conversation, schema in zip(conversations, schemas, strict=True):
            response_format = {"type": "json_object", "schema": schema} if schema else None
            out = self._llm.create_chat_completion(
                messages=conversation,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                response_format=response_format,
                **extra,
            )
            usage = out.get("usage") or {}
            completions.append(
                Completion(
                    text=out["choices"][0]["message"]["content"] or "",
                    input_tokens=int(usage.get("prompt_tokens", 0)),
                    output_tokens=int(usage.get("completion_tokens", 0)),
                )
            )
        return completions
