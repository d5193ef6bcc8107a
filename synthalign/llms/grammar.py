"""Schema-forced decoding for transformers with xgrammar.

xgrammar's own ``contrib.hf.LogitsProcessor`` needs a grammar for every row; our
batches mix constrained and free rows (one LLM serves several tasks), and a row whose
grammar has terminated must only be able to end. This processor handles both, and
compiled grammars are cached per schema because pipelines send the same schema for
every row of a step.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import torch
import transformers
import xgrammar as xgr

from synthalign.llms.closing import TRUNCATED, FieldBudget, FieldPlan, plan_fields

# xgrammar (0.2.x) compiles a string with ``maxLength`` to a character class that lets
# raw control characters through and forbids escapes, so a schema-forced output can
# be invalid JSON. We compile the schema to EBNF and replace that class with the one
# the unbounded JSON string uses (no control characters, escapes allowed).
_BOUNDED_STRING_CHARS = '(([^\\"\\\\\\r\\n]))'
_JSON_STRING_CHARS = '(([^\\0-\\x1f\\"\\\\\\uD800-\\uDFFF]) | ("\\\\" basic_escape))'
# xgrammar's unbounded JSON string also admits UTF-16 surrogates (U+D800-U+DFFF), whose
# 3-byte encodings are not valid UTF-8: they decode to three U+FFFD and break maxLength.
_UNBOUNDED_STRING_CHARS = '[^\\0-\\x1f\\"\\\\\\r\\n]'
_UNBOUNDED_STRING_CHARS_FIXED = '[^\\0-\\x1f\\"\\\\\\uD800-\\uDFFF]'
_BASIC_ESCAPE = (
    'basic_escape ::= (([\\"\\\\/bfnrt]) | ("u" [A-Fa-f0-9] [A-Fa-f0-9] [A-Fa-f0-9] [A-Fa-f0-9]))'
)


def json_schema_ebnf(schema: dict[str, Any]) -> str:
    """EBNF grammar for a JSON schema, compact (no free whitespace), valid JSON only.

    Engines that take an EBNF grammar (xgrammar here, vLLM's ``grammar=``) get this
    instead of the raw schema so bounded strings stay valid JSON.
    """
    ebnf = str(xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False))
    if _BOUNDED_STRING_CHARS in ebnf:
        ebnf = ebnf.replace(_BOUNDED_STRING_CHARS, _JSON_STRING_CHARS)
        if "basic_escape ::=" not in ebnf:
            ebnf += "\n" + _BASIC_ESCAPE + "\n"
    return ebnf.replace(_UNBOUNDED_STRING_CHARS, _UNBOUNDED_STRING_CHARS_FIXED)


class GrammarCache:
    """Compiles JSON schemas once per tokenizer, with each schema's field-budget plan."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(self.info)
        self._cache: dict[str, xgr.CompiledGrammar] = {}
        self._plans: dict[str, FieldPlan | None] = {}
        self._texts: list[str] | None = None
        self.close_ids: list[int] = tokenizer.encode(TRUNCATED + '"', add_special_tokens=False)

    def get(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._cache:
            self._cache[key] = self.compiler.compile_grammar(json_schema_ebnf(schema))
        return self._cache[key]

    def budget(self, schema: dict[str, Any], max_new_tokens: int) -> FieldBudget | None:
        """A fresh :class:`~synthalign.llms.closing.FieldBudget` for one row of ``schema``."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._plans:
            self._plans[key] = plan_fields(schema)
        plan = self._plans[key]
        if plan is None:
            return None
        return FieldBudget(plan, budget=max_new_tokens, close_tokens=len(self.close_ids))

    @property
    def token_texts(self) -> list[str]:
        """The text of every token alone (what :class:`FieldBudget` reads)."""
        if self._texts is None:
            size = self.info.vocab_size
            self._texts = self.tokenizer.batch_decode([[i] for i in range(size)])
        return self._texts


class BatchGrammarProcessor(transformers.LogitsProcessor):
    """Masks logits row by row; rows with ``None`` grammar are left free.

    With ``budgets`` (one :class:`~synthalign.llms.closing.FieldBudget` or None per
    row), a top-level string that has used its share of the token budget is closed by
    forcing ``close_ids`` (the tokens of ``TRUNCATED + '"'``) through the grammar, so
    the properties after it still get written.
    """

    def __init__(
        self,
        grammars: list[xgr.CompiledGrammar | None],
        vocab_size: int,
        suppress_tokens: list[int] | None = None,
        special_tokens: list[int] | None = None,
        budgets: list[FieldBudget | None] | None = None,
        token_texts: list[str] | None = None,
        close_ids: list[int] | None = None,
    ) -> None:
        # The model's own ``suppress_tokens`` are applied here, after the grammar, and
        # only where the grammar leaves another choice: run as a separate processor
        # they could mask the only tokens the grammar allows.
        self.suppress = torch.tensor(suppress_tokens or [], dtype=torch.long)
        # xgrammar sees a special token such as <|endoftext|> as its literal text, which
        # is valid inside a JSON string; decoding then drops it and the JSON breaks.
        self.special = torch.tensor(special_tokens or [], dtype=torch.long)
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.budgets = budgets or [None] * len(grammars)
        self.token_texts = token_texts or []
        self.close_ids = close_ids or []
        self.forcing: list[deque[int]] = [deque() for _ in grammars]
        self._started = False

    def _accept(self, i: int, token: int) -> None:
        matcher = self.matchers[i]
        if matcher is None or matcher.is_terminated():
            return
        matcher.accept_token(token)
        if self.forcing[i]:
            self.forcing[i].popleft()
        budget = self.budgets[i]
        if budget is not None and budget.feed(self.token_texts[token]) and not self.forcing[i]:
            self.forcing[i].extend(self.close_ids)

    def _force(self, work: torch.Tensor) -> None:
        """Rows closing a string: only the next closing token, if the grammar allows it."""
        for i, queue in enumerate(self.forcing):
            if not queue:
                continue
            token = queue[0]
            if not torch.isfinite(work[i, token]):
                queue.clear()  # the grammar does not allow it here: let the row go on
                continue
            keep = work[i, token].clone()
            work[i, :] = float("-inf")
            work[i, token] = keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._started:
            for i in range(len(self.matchers)):
                self._accept(i, int(input_ids[i, -1]))
        self._started = True
        constrained = [i for i, m in enumerate(self.matchers) if m is not None]
        if constrained:
            self.bitmask.fill_(-1)  # all tokens allowed
            for i in constrained:
                matcher = self.matchers[i]
                if not matcher.is_terminated():
                    matcher.fill_next_token_bitmask(self.bitmask, i)
            work = scores[:, : self.vocab_size].float().cpu()
            xgr.apply_token_bitmask_inplace(work, self.bitmask)
            self._force(work)
            scores[:, : self.vocab_size] = work.to(scores.device, scores.dtype)
            rows = torch.tensor(constrained, dtype=torch.long, device=scores.device)
            if len(self.special):
                scores[rows.unsqueeze(1), self.special.to(scores.device).unsqueeze(0)] = float(
                    "-inf"
                )
            if scores.shape[1] > self.vocab_size:  # padded embedding rows are never valid
                scores[rows, self.vocab_size :] = float("-inf")
        if len(self.suppress):
            suppress = self.suppress.to(scores.device)
            trial = scores.clone()
            trial[:, suppress] = float("-inf")
            keep = torch.isfinite(trial).any(dim=1)
            scores[keep] = trial[keep]
        return scores
