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
final filter drops and counts it. Nothing here raises on bad model output.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

from distilabel.steps.tasks import Task
from pydantic import BaseModel

import synthalign.compat  # distilabel fixes: a filter that drops every row
import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.parsing import NO_OUTPUT, parse_model
from synthalign.steps.prompts import render, template_id

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, StepColumns


@cache
def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def provenance_columns(prefix: str) -> list[str]:
    return [f"{prefix}_error", f"{prefix}_raw", f"{prefix}_model", f"{prefix}_prompt"]


class _PromptTask(Task):
    """Shared prompt rendering and failure bookkeeping."""

    template: ClassVar[str]
    column_prefix: ClassVar[str]
    system_template: ClassVar[str | None] = None

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        """Values the template sees; override to derive them from the row."""
        return input

    def messages(self, input: dict[str, Any]) -> list[dict[str, str]]:
        values = self.template_values(input)
        chat = []
        if self.system_template:
            chat.append({"role": "system", "content": render(self.system_template, **values)})
        chat.append({"role": "user", "content": render(self.template, **values)})
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
        return {name: None for name in self.get_outputs() if name not in provenance_columns(self.column_prefix)}

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
        output = super()._create_metadata(output, raw_output, input, add_raw_output, False, statistics)
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
    """A task whose output is a pydantic record enforced by the backend's grammar."""

    output_model: ClassVar[type[BaseModel]]

    def format_input(self, input: dict[str, Any]) -> FormattedInput:
        return (self.messages(input), {"format": "json", "schema": _schema_of(self.output_model)})

    def record_columns(self, record: Any, input: dict[str, Any]) -> dict[str, Any]:
        """Map a parsed record to output columns (default: its fields as they are)."""
        return record.model_dump()

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:
        record, error = parse_model(output, self.output_model)
        columns = self.empty_columns()
        if record is not None:
            columns.update(self.record_columns(record, input or {}))
        return {**columns, **self._provenance(output, error)}


class TextTask(_PromptTask):
    """A task whose output is free text in one column (an answer, a revision)."""

    output_column: ClassVar[str]
    min_chars: ClassVar[int] = 1

    @property
    def outputs(self) -> StepColumns:
        return [self.output_column, *provenance_columns(self.column_prefix)]

    def format_input(self, input: dict[str, Any]) -> FormattedInput:
        return (self.messages(input), None)

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:
        text = (output or "").strip()
        error = None
        if output is None:
            error = NO_OUTPUT
        elif len(text) < self.min_chars:
            error = "empty output" if not text else f"too short ({len(text)} chars)"
        return {self.output_column: text if not error else None, **self._provenance(output, error)}
