"""Batched transformers backend with schema-forced JSON.

distilabel's ``TransformersLLM`` generates one prompt at a time on this stack; this
one left-pads the whole batch (sorted by length to waste little padding) and calls
``model.generate`` once per micro-batch, with an xgrammar logits processor when any
row carries a schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr

from synthalign.llms.base import (
    ChatType,
    Completion,
    Decoding,
    JSONSchema,
    SynthLLM,
    context_overflow,
)
from synthalign.llms.closing import close_json
from synthalign.models import is_builtin, resolve_model

BUILTIN_REPETITION_PENALTY = 1.1
"""Mild: enough to pull a small model out of a loop, without bending the grammar's choices
(a penalty only rescales logits; the grammar mask still decides what is allowed)."""


class TransformersLLM(SynthLLM):
    """A causal LM loaded with ``transformers`` (CPU or GPU)."""

    device: str | None = Field(default=None, description="torch device; default cuda if available")
    torch_dtype: str = Field(default="auto", description="'auto', 'float32', 'bfloat16', ...")
    max_batch_size: int | None = Field(
        default=None, description="micro-batch size handed to generate(); None = the whole batch"
    )
    trust_remote_code: bool = False
    repetition_penalty: float | None = Field(
        default=None,
        gt=0,
        description=(
            "transformers' repetition_penalty; None: 1.1 for the built-in models (a 135M model "
            "otherwise loops inside a string until its budget runs out), off for others"
        ),
    )

    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _grammars: Any = PrivateAttr(default=None)

    def load(self) -> None:
        super().load()
        import torch  # heavy: torch
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers

        from synthalign.llms.grammar import GrammarCache  # heavy: imports torch and xgrammar

        path = resolve_model(self.model)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.torch_dtype if self.torch_dtype == "auto" else getattr(torch, self.torch_dtype)
        self._tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=self.trust_remote_code
        )
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=self.trust_remote_code
        ).to(device)
        self._model.eval()
        self._grammars = GrammarCache(self._tokenizer, self._model.config.vocab_size)

    def unload(self) -> None:
        self._model = self._tokenizer = self._grammars = None

    def _repetition_penalty(self) -> float:
        if self.repetition_penalty is not None:
            return self.repetition_penalty
        return BUILTIN_REPETITION_PENALTY if is_builtin(self.model) else 1.0

    def context_length(self) -> int:
        """Tokens the model can attend to (prompt + completion)."""
        config = self._model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(min(self._tokenizer.model_max_length, 1 << 20))

    def prompt_text(self, conversation: ChatType) -> str:
        """The exact text the model sees for a conversation (chat template applied)."""
        return self._tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )

    def _generate_batch(
        self, conversations: list[ChatType], schemas: list[JSONSchema | None], *, decoding: Decoding
    ) -> list[Completion]:
        import torch

        texts = [self.prompt_text(c) for c in conversations]
        encoded = [self._tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        context = self.context_length()
        results: dict[int, Completion] = {}
        for i, ids in enumerate(encoded):
            if len(ids) >= context:  # recorded per row (no output), never a crash
                reason = context_overflow(len(ids), context)
                self._logger.warning(f"{reason}; row skipped")
                results[i] = Completion(
                    text=None, input_tokens=len(ids), output_tokens=0, error=reason
                )
        order = sorted(
            (i for i in range(len(texts)) if i not in results), key=lambda i: len(encoded[i])
        )
        step = self.max_batch_size or max(len(order), 1)
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            torch.manual_seed(decoding.seed + start)
            completions = self._generate_chunk(
                [encoded[i] for i in chunk], [schemas[i] for i in chunk], decoding
            )
            for i, completion in zip(chunk, completions, strict=True):
                results[i] = completion
        return [results[i] for i in range(len(texts))]

    def _generate_chunk(
        self, ids: list[list[int]], schemas: list[JSONSchema | None], decoding: Decoding
    ) -> list[Completion]:
        import torch

        from synthalign.llms.grammar import BatchGrammarProcessor

        batch = self._tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True)
        batch = {k: v.to(self._model.device) for k, v in batch.items()}
        grammars = [self._grammars.get(s) if s is not None else None for s in schemas]
        room = self.context_length() - batch["input_ids"].shape[1]
        max_new = max(1, min(decoding.max_new_tokens, room))
        suppress = self._model.generation_config.suppress_tokens
        processors = []
        if suppress or any(g is not None for g in grammars):
            eos = self._tokenizer.eos_token_id
            special = [t for t in self._tokenizer.all_special_ids if t != eos]
            cache = self._grammars
            budgets = [cache.budget(s, max_new) if s is not None else None for s in schemas]
            processors.append(
                BatchGrammarProcessor(
                    grammars,
                    cache.info.vocab_size,
                    suppress,
                    special,
                    budgets=budgets,
                    token_texts=cache.token_texts if any(budgets) else None,
                    close_ids=cache.close_ids,
                )
            )
        sampling: dict[str, Any] = {"do_sample": False}
        if not decoding.greedy:
            sampling = {
                "do_sample": True,
                "temperature": decoding.temperature,
                "top_p": decoding.top_p,
            }
        if self._repetition_penalty() != 1.0:
            sampling["repetition_penalty"] = self._repetition_penalty()
        with torch.inference_mode():
            out = self._model.generate(
                **batch,
                max_new_tokens=max_new,
                logits_processor=processors or None,
                pad_token_id=self._tokenizer.pad_token_id,
                eos_token_id=self._tokenizer.eos_token_id,
                top_k=None,
                suppress_tokens=None,  # applied by BatchGrammarProcessor, after the grammar
                **sampling,
                **decoding.extra,
            )
        prompt_len = batch["input_ids"].shape[1]
        completions = []
        for row, prompt, schema in zip(out, ids, schemas, strict=True):
            new = row[prompt_len:].tolist()
            n_out = len(new)
            for j, tok in enumerate(new):
                if tok in (self._tokenizer.eos_token_id, self._tokenizer.pad_token_id):
                    n_out = j + 1 if tok == self._tokenizer.eos_token_id else j
                    break
            text = self._tokenizer.decode(new[:n_out], skip_special_tokens=True)
            if schema is not None:  # a JSON cut by the budget still parses
                text = close_json(text, schema)
            completions.append(Completion(text=text, input_tokens=len(prompt), output_tokens=n_out))
        return completions
