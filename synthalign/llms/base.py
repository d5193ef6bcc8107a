"""The one contract every synthalign backend keeps.

distilabel's ``LLM.generate`` receives a list of formatted inputs, each either a chat
(list of messages) or a ``(chat, structured_output)`` tuple. Our backends accept both:
a per-input schema wins over the LLM-wide ``structured_output``, so one LLM can serve
tasks with different schemas. Subclasses implement a single batched call,
:meth:`SynthLLM._generate_batch`, which must hand *all* prompts to the engine at once
(the engine, not Python, decides how to schedule them).
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from distilabel.models.llms.base import LLM
from pydantic import BaseModel, Field, PrivateAttr

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign import accounting

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, GenerateOutput

ChatType = list[dict[str, str]]
JSONSchema = dict[str, Any]

DEFAULT_GENERATION_KWARGS: dict[str, Any] = {
    "max_new_tokens": 512,
    "temperature": 0.7,
    "top_p": 0.95,
    "seed": 0,
}


@dataclass
class Completion:
    """One generated text with its token counts; ``text`` is None when the engine could
    not generate for this row, and ``error`` says why (the prompt is longer than the
    model's context, the server refused the request)."""

    text: str | None
    input_tokens: int
    output_tokens: int
    error: str | None = None
    retries: int = 0


def context_overflow(prompt_tokens: int, context: int) -> str:
    """The per-row reason of a prompt that leaves no room for an answer."""
    return f"prompt exceeds the model's context ({prompt_tokens} tokens > {context - 1})"


@dataclass(frozen=True)
class Decoding:
    """The settings of one engine call, the same for every backend.

    ``temperature == 0`` means greedy decoding; ``seed`` makes sampling repeatable;
    ``extra`` holds backend-specific sampling options passed through as they are.
    """

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def for_prompt(self, index: int) -> Decoding:
        """Prompt ``index`` of a batch samples with ``seed + index``: repeated prompts
        (``num_generations > 1``) differ while the whole batch stays repeatable."""
        return replace(self, seed=self.seed + index)

    def openai_params(self) -> dict[str, Any]:
        """The OpenAI-style sampling fields (vLLM's ``SamplingParams`` takes the same)."""
        return {
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": 1.0 if self.greedy else self.top_p,
            "seed": self.seed,
            **self.extra,
        }


def to_json_schema(schema: type[BaseModel] | JSONSchema | str | None) -> JSONSchema | None:
    """Normalize a pydantic model, a schema dict or a JSON string to a schema dict."""
    if schema is None:
        return None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    if isinstance(schema, str):
        return json.loads(schema)
    if isinstance(schema, dict):
        # distilabel's structured-output dicts wrap the schema: {"format": "json", "schema": ...}
        if "schema" in schema and ("format" in schema or "type" not in schema):
            return to_json_schema(schema["schema"])
        return schema
    raise TypeError(
        f"structured_output must be a pydantic model or a JSON schema, got {type(schema)}"
    )


class SynthLLM(LLM):
    """Base class of synthalign's distilabel LLMs.

    ``model`` keeps the spec the user wrote (``builtin:tiny-random``, a path, a repo
    id): it is what ``pipeline.yaml`` records, so a rerun resolves it again on the
    machine that reruns it instead of baking in a local cache path.
    """

    model: str
    structured_output: JSONSchema | None = Field(
        default=None,
        description="JSON schema the engine enforces on every generation whose input carries none.",
    )
    generation_kwargs: dict[str, Any] | None = Field(
        default_factory=lambda: dict(DEFAULT_GENERATION_KWARGS),
        description="max_new_tokens, temperature (0 = greedy), top_p, seed.",
    )
    _loaded: bool = PrivateAttr(default=False)

    @property
    def model_name(self) -> str:
        return self.model

    def generate_outputs(
        self, inputs: list[FormattedInput], num_generations: int = 1, **kwargs: Any
    ) -> list[GenerateOutput]:
        """Like distilabel's, but the LLM's own ``generation_kwargs`` are the defaults.

        distilabel's tasks pass ``generation_kwargs`` in; a user calling the LLM directly
        (``load_llm(spec, temperature=0).generate_outputs(...)``) would otherwise get the
        method defaults and sample where they asked for greedy decoding.
        """
        settings = {**(self.generation_kwargs or {}), **kwargs}
        return super().generate_outputs(inputs, num_generations, **settings)

    def generate(
        self,
        inputs: list[FormattedInput],
        num_generations: int = 1,
        max_new_tokens: int = DEFAULT_GENERATION_KWARGS["max_new_tokens"],
        temperature: float = DEFAULT_GENERATION_KWARGS["temperature"],
        top_p: float = DEFAULT_GENERATION_KWARGS["top_p"],
        seed: int = DEFAULT_GENERATION_KWARGS["seed"],
    ) -> list[GenerateOutput]:
        """Generate ``num_generations`` completions per input, all in one engine call.

        Args:
            inputs: chats, or ``(chat, structured_output)`` tuples.
            num_generations: completions per input.
            max_new_tokens: the most tokens a completion may have.
            temperature: sampling temperature; 0 means greedy decoding.
            top_p: nucleus sampling mass.
            seed: makes sampling repeatable.
        """
        conversations: list[ChatType] = []
        schemas: list[JSONSchema | None] = []
        for item in inputs:
            chat, schema = self._split_input(item)
            for _ in range(num_generations):
                conversations.append(chat)
                schemas.append(schema)
        decoding = Decoding(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        started = time.perf_counter()
        completions = (
            self._generate_batch(conversations, schemas, decoding=decoding) if conversations else []
        )
        if completions:
            accounting.record(
                self.model_name,
                calls=len(completions),
                input_tokens=sum(c.input_tokens or 0 for c in completions),
                output_tokens=sum(c.output_tokens or 0 for c in completions),
                failures=sum(c.text is None for c in completions),
                retries=sum(c.retries for c in completions),
                seconds=time.perf_counter() - started,
            )
        outputs: list[GenerateOutput] = []
        for i in range(len(inputs)):
            group = completions[i * num_generations : (i + 1) * num_generations]
            outputs.append(
                {
                    "generations": [c.text for c in group],
                    "statistics": {
                        "input_tokens": [c.input_tokens for c in group],
                        "output_tokens": [c.output_tokens for c in group],
                    },
                }
            )
        return outputs

    def _split_input(self, item: FormattedInput) -> tuple[ChatType, JSONSchema | None]:
        if isinstance(item, str):
            return [{"role": "user", "content": item}], self.structured_output
        if isinstance(item, tuple):
            chat, structured = item
            return list(chat), to_json_schema(structured) or self.structured_output
        return list(item), self.structured_output

    @abstractmethod
    def _generate_batch(
        self, conversations: list[ChatType], schemas: list[JSONSchema | None], *, decoding: Decoding
    ) -> list[Completion]:
        """Generate one completion per conversation in a single engine call.

        ``schemas[i]`` (when not None) is a JSON schema the engine must enforce on
        completion ``i``.
        """
