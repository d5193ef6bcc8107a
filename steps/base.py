"""Base classes for synthalign's LLM steps.

Every LLM step renders one Jinja prompt (``steps/prompts/*.jinja2``) and either
asks the backend for a pydantic record (:class:`SchemaTask`: the schema travels with
each input, so the engine enforces it) or for free text (:class:`TextTask`). Both
record provenance and failures in fixed columns named after ``column_prefix``:

- ``<prefix>_error``: why the output was unusable (None when it was fine);
- ``<prefix>_raw``: the raw output, kept only when it failed;
- ``<prefix>_model``: the model that produced it;
- ``<prefix>_prompt``: the template name and content hash.

A failed row keeps flowing through the pipeline with its error set; the method's
final filter drops and counts it. Nothing here raises on bad model output. A task
names the columns it reads in ``input_columns`` (:mod:`synthalign.steps.columns`).

A row that needs several calls, each to its own model (GRA: one review per Reviewer,
each Reviewer a different member of a model pool), is a :class:`RoutedTask`:
``calls(row)`` lists the row's :class:`Call` s, the task's LLM answers every call of
the batch at once (a :class:`~synthalign.llms.pool.PoolLLM` routes each to the member
it names), each answer is parsed into a :class:`CallResult` (record or text, or an
error with the raw output), and ``merge(row, results)`` turns them into the row's
columns.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from distilabel.steps import StepInput
from distilabel.steps.tasks import Task
from pydantic import BaseModel, Field

import synthalign.compat  # distilabel fixes: a filter that drops every row
import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.llms.pool import Generation
from synthalign.parsing import NO_OUTPUT, Parsed, parse_model, parse_partial
from synthalign.steps.columns import FixedColumns
from synthalign.steps.prompts import render, template_id

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, StepColumns, StepOutput


@cache
def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def provenance_columns(prefix: str) -> list[str]:
    return [f"{prefix}_error", f"{prefix}_raw", f"{prefix}_model", f"{prefix}_prompt"]


class _PromptTask(FixedColumns, Task):
    """Shared prompt rendering and failure bookkeeping."""

    template: ClassVar[str]
    column_prefix: ClassVar[str]
    system_template: ClassVar[str | None] = None

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        """Values the template sees; override to derive them from the row."""
        return input

    def messages(self, input: dict[str, Any]) -> list[dict[str, str]]:
        return self.chat(self.template, self.template_values(input))

    def chat(self, template: str, values: Mapping[str, Any]) -> list[dict[str, str]]:
        """The prompt: the system template (if any) and ``template``, rendered with ``values``."""
        chat = []
        if self.system_template:
            chat.append({"role": "system", "content": render(self.system_template, **values)})
        chat.append({"role": "user", "content": render(template, **values)})
        return chat

    def _provenance(self, output: str | None, error: str | None) -> dict[str, Any]:
        p = self.column_prefix
        return {
            f"{p}_error": error,
            f"{p}_raw": output if error else None,
            f"{p}_model": self.llm.model_name,
            f"{p}_prompt": template_id(self.template),
        }

    def empty_columns(self) -> dict[str, Any]:
        return {
            name: None
            for name in self.get_outputs()
            if name not in provenance_columns(self.column_prefix)
        }

    def _create_metadata(
        self,
        output: dict[str, Any],
        raw_output: str | None,
        input: dict[str, Any] | None = None,
        add_raw_output: bool = True,
        add_raw_input: bool = True,
        statistics: Any = None,
    ) -> dict[str, Any]:
        """As distilabel's, but the raw input is the chat alone: a ``(chat, schema)``
        tuple mixes a list and a dict, which Arrow cannot store."""
        output = super()._create_metadata(
            output, raw_output, input, add_raw_output, False, statistics
        )
        if add_raw_input:
            output.setdefault("distilabel_metadata", {})[f"raw_input_{self.name}"] = (
                self.messages(input) if input else None
            )
        return output

    def impute_step_outputs(self, step_output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The LLM call itself failed for this batch: record it per row, don't drop rows."""
        rows = super().impute_step_outputs(step_output)
        for row in rows:
            row.update(self.empty_columns())
            row.update(self._provenance(None, "generation failed (see pipeline log)"))
        return rows


class SchemaTask(_PromptTask):
    """A task whose output is a pydantic record enforced by the backend's grammar.

    A record the token budget cut (:mod:`synthalign.llms.closing`) fails as a whole
    unless the cut fields are in ``allow_cut`` or :meth:`partial_columns` makes
    columns of what survived. A record kept with cut fields names them in
    ``cut_column`` (when the task declares one among its outputs), so the cut stays
    visible in the data.
    """

    output_model: ClassVar[type[BaseModel]]
    allow_cut: ClassVar[frozenset[str]] = frozenset()
    cut_column: ClassVar[str | None] = None

    def format_input(self, input: dict[str, Any]) -> "FormattedInput":
        return (self.messages(input), {"format": "json", "schema": _schema_of(self.output_model)})

    def record_columns(self, record: Any, input: dict[str, Any]) -> dict[str, Any]:
        """Map a parsed record to output columns (default: its fields as they are)."""
        return record.model_dump()

    def partial_columns(self, parsed: Parsed[Any], input: dict[str, Any]) -> dict[str, Any] | None:
        """Columns of a record whose fields the token budget cut (``parsed.values``,
        ``parsed.field_errors``), or None when the record fails as a whole (default)."""
        return None

    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        parsed = parse_partial(output, self.output_model, self.allow_cut)
        columns = self.empty_columns()
        if parsed.record is not None:
            columns.update(self.record_columns(parsed.record, input or {}))
            if self.cut_column is not None:
                columns[self.cut_column] = sorted(parsed.field_errors) or None
        elif parsed.field_errors:
            partial = self.partial_columns(parsed, input or {})
            if partial is not None:
                raw = {f"{self.column_prefix}_raw": output}  # kept: part of it failed
                return {**columns, **partial, **self._provenance(output, None), **raw}
        return {**columns, **self._provenance(output, parsed.error)}


class TextTask(_PromptTask):
    """A task whose output is free text in one column (an answer, a revision)."""

    output_column: ClassVar[str]
    min_chars: ClassVar[int] = 1

    @property
    def outputs(self) -> "StepColumns":
        return [self.output_column, *provenance_columns(self.column_prefix)]

    def format_input(self, input: dict[str, Any]) -> "FormattedInput":
        return (self.messages(input), None)

    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        text = (output or "").strip()
        error = None
        if output is None:
            error = NO_OUTPUT
        elif len(text) < self.min_chars:
            error = "empty output" if not text else f"too short ({len(text)} chars)"
        return {self.output_column: text if not error else None, **self._provenance(output, error)}


# ------------------------------------------------------------------ several calls per row


@dataclass(frozen=True)
class Call:
    """One prompt of a row: its template values and the pool member that answers it.

    ``template`` and ``output_model`` default to the task's own; a task whose row needs
    prompts of several kinds (a domain, keywords and a summary) sets them per call, and
    ``key`` tells :meth:`RoutedTask.merge` which is which. ``output_model`` None on a
    task without one means free text.
    """

    values: Mapping[str, Any]
    member: int = 0
    key: str = ""
    template: str | None = None
    output_model: type[BaseModel] | None = None


@dataclass(frozen=True)
class CallResult:
    """A call's outcome: the parsed record or the text, or an error with the raw output."""

    key: str
    model: str
    prompt: str
    text: str | None
    record: Any = None
    error: str | None = None

    @property
    def raw(self) -> str | None:
        """The raw output of a failed call (what the card and the row keep to debug it)."""
        return self.text if self.error else None


class RoutedTask(_PromptTask):
    """A task whose rows make their own calls, each to a named member of its LLM.

    Subclasses declare ``template`` (and ``output_model`` for JSON answers),
    ``inputs``/``outputs``, ``calls(row)`` and ``merge(row, results)``. A row with no
    calls passes through with its output columns as they were (new ones None). Every
    call of a batch is sent at once: a pool LLM (``generate_routed``) gives each member
    all of its prompts in one engine call; any other LLM answers all of them itself.
    Parsing is the same for every call: a record is validated against its schema, a
    text must be non-empty and, with ``truncated_is_error``, must not have used up its
    token budget; a failure is an error string on the :class:`CallResult`, never a raise.
    """

    output_model: ClassVar[type[BaseModel] | None] = None
    allow_cut: ClassVar[frozenset[str]] = frozenset()
    column_prefix: ClassVar[str] = ""
    max_new_tokens: int = Field(default=2048, ge=1, description="token budget of free-text outputs")
    structured_max_new_tokens: int = Field(
        default=512, ge=1, description="token budget of JSON outputs (labels, keywords, reviews)"
    )
    truncated_is_error: bool = Field(
        default=True, description="free text that used up max_new_tokens counts as failed (cut off)"
    )

    def calls(self, row: dict[str, Any]) -> list[Call]:
        """The row's calls (default: one, the task's template on the row's values)."""
        return [Call(values=self.template_values(row))]

    def merge(self, row: dict[str, Any], results: Sequence[CallResult]) -> dict[str, Any]:
        """The row's output columns from the results of its calls, in call order."""
        raise NotImplementedError(f"{type(self).__name__} must say how its results become columns")

    def passthrough(self, row: dict[str, Any]) -> dict[str, Any]:
        """Output columns of a row the task makes no call for: as they were, new ones None."""
        return {name: row.get(name) for name in self.get_outputs()}

    def failed(self, row: dict[str, Any], error: str) -> dict[str, Any]:
        """Output columns of a row whose whole batch failed (default: passed through)."""
        return self.passthrough(row)

    # -------------------------------------------------------------- prompts and parsing

    def _model_of(self, call: Call) -> type[BaseModel] | None:
        return call.output_model if call.output_model is not None else self.output_model

    def budget(self, call: Call) -> int:
        return (
            self.structured_max_new_tokens
            if self._model_of(call) is not None
            else self.max_new_tokens
        )

    def format_call(self, call: Call) -> "FormattedInput":
        model = self._model_of(call)
        structured = {"format": "json", "schema": _schema_of(model)} if model is not None else None
        return (self.chat(call.template or self.template, call.values), structured)

    def format_input(self, input: dict[str, Any]) -> "FormattedInput":
        return self.format_call(Call(values=self.template_values(input)))

    def parse(self, call: Call, generation: Generation, model: str) -> CallResult:
        """One call's answer as a :class:`CallResult` (never raises)."""
        prompt = template_id(call.template or self.template)
        base = {"key": call.key, "model": model, "prompt": prompt}
        if generation.error is not None:
            return CallResult(**base, text=generation.text, error=generation.error)
        output_model = self._model_of(call)
        if output_model is not None:
            record, error = parse_model(generation.text, output_model, self.allow_cut)
            return CallResult(**base, text=generation.text, record=record, error=error)
        text = (generation.text or "").strip()
        budget = self.budget(call)
        if not text:
            return CallResult(**base, text=generation.text, error="empty output")
        if self.truncated_is_error and (generation.output_tokens or 0) >= budget:
            return CallResult(
                **base, text=generation.text, error=f"truncated: reached max_new_tokens={budget}"
            )
        return CallResult(**base, text=text)

    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        row = input or {}
        call = Call(values=self.template_values(row))
        generation = Generation(output, None if output is not None else NO_OUTPUT, None)
        return self.merge(row, [self.parse(call, generation, self.llm.model_name)])

    # -------------------------------------------------------------- running

    def _generate(self, calls: Sequence[Call]) -> list[Generation]:
        requests = [(c.member, self.format_call(c), self.budget(c)) for c in calls]
        route = getattr(self.llm, "generate_routed", None)
        if route is not None:
            return route(requests)
        by_budget: dict[int, list[int]] = defaultdict(list)  # one model: one engine call per budget
        for i, (_, _, budget) in enumerate(requests):
            by_budget[budget].append(i)
        answers = [Generation(None, NO_OUTPUT, None)] * len(requests)
        for budget, idx in by_budget.items():
            outputs = self.llm.generate_outputs(
                [requests[i][1] for i in idx], 1, max_new_tokens=budget
            )
            for i, out in zip(idx, outputs, strict=True):
                text = (out.get("generations") or [None])[0]
                tokens = ((out.get("statistics") or {}).get("output_tokens") or [None])[0]
                answers[i] = Generation(text, None if text is not None else NO_OUTPUT, tokens)
        return answers

    def _member_name(self, call: Call) -> str:
        names = getattr(self.llm, "member_names", None)
        return names()[call.member] if callable(names) else self.llm.model_name

    def run_calls(self, calls: Sequence[Call]) -> list[CallResult]:
        """Answer and parse ``calls`` (all at once), in order."""
        generations = self._generate(calls) if calls else []
        return [
            self.parse(c, g, self._member_name(c)) for c, g in zip(calls, generations, strict=True)
        ]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(row) for row in inputs]
        plans = [self.calls(row) for row in rows]
        results = iter(self.run_calls([call for plan in plans for call in plan]))
        out = []
        for row, plan in zip(rows, plans, strict=True):
            columns = (
                self.merge(row, [next(results) for _ in plan]) if plan else self.passthrough(row)
            )
            out.append({**row, **columns})
        yield out

    def impute_step_outputs(self, step_output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The batch raised outside the model calls: record it per row, keep the rows."""
        return [
            {**row, **self.failed(row, "step failed (see pipeline log)")} for row in step_output
        ]
