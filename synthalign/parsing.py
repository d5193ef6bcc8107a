"""Turning LLM text into validated records, never raising.

Schema-forced decoding makes parse failures rare, but not impossible: generation can
hit ``max_new_tokens`` mid-JSON, an OpenAI-compatible server may ignore the schema, a
value can be out of range. Every failure becomes a short reason string that the
steps store in a ``*_error`` column and the cards count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from synthalign.llms.closing import is_truncated, strip_truncated

M = TypeVar("M", bound=BaseModel)

CUT = "truncated: reached max_new_tokens"
"""Why a field the decoder closed at the token budget (see :mod:`synthalign.llms.closing`)
failed."""
UNWRITTEN = "not written: max_new_tokens ran out before it"

NO_OUTPUT = "no output (prompt longer than the model context, or the engine failed: see the log)"

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _first_json_object(text: str) -> str | None:
    """The first balanced ``{...}`` in text (for servers that wrap JSON in prose)."""
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def _load_json(text: str) -> tuple[Any, str | None]:
    stripped = text.strip()
    if not stripped:
        return None, "empty output"
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        return json.loads(stripped), None
    except json.JSONDecodeError as exc:
        candidate = _first_json_object(stripped)
        if candidate is None:
            kind = "truncated JSON" if stripped.startswith("{") else "not JSON"
            return None, f"{kind}: {exc.msg} at char {exc.pos}"
        try:
            return json.loads(candidate), None
        except json.JSONDecodeError as exc2:
            return None, f"not JSON: {exc2.msg} at char {exc2.pos}"


def _validate(data: Any, model: type[M]) -> tuple[M | None, str | None]:
    try:
        return model.model_validate(data), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        return None, f"schema: {where}: {first['msg']}"


@dataclass
class Parsed(Generic[M]):
    """A record, or why not, and what survived of it field by field.

    ``values`` holds the top-level fields as written (a cut string without its mark);
    ``field_errors`` names the fields the token budget cut (:data:`CUT`) or left
    unwritten (:data:`UNWRITTEN`). A cut field fails alone: its siblings are in
    ``values``, and a caller that can use a partial record reads them there.
    """

    record: M | None
    error: str | None
    values: dict[str, Any] = field(default_factory=dict)
    field_errors: dict[str, str] = field(default_factory=dict)


def _cut_fields(data: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    errors = {}
    for name, info in model.model_fields.items():
        value = data.get(name)
        if is_truncated(value):
            errors[name] = CUT
        elif isinstance(value, list) and value and is_truncated(value[-1]):
            data[name] = value[:-1]  # the list keeps its complete items
            if not data[name]:
                errors[name] = CUT
        elif value is None and name in data and info.is_required():
            errors[name] = UNWRITTEN
    return errors


def parse_partial(
    text: str | None, model: type[M], allow_cut: frozenset[str] = frozenset()
) -> Parsed[M]:
    """Parse ``text`` into ``model``, field by field when the token budget cut it.

    A field in ``allow_cut`` (free text whose end matters little: a review's feedback)
    may be cut: the record is built with the text written so far. Any other cut or
    unwritten field makes the record fail with a reason naming it.
    """
    if text is None:
        return Parsed(None, NO_OUTPUT)
    data, error = _load_json(text)
    if error is not None:
        return Parsed(None, error)
    if not isinstance(data, dict):
        record, error = _validate(data, model)
        return Parsed(record, error)
    field_errors = _cut_fields(data, model)
    values = {k: strip_truncated(v) if is_truncated(v) else v for k, v in data.items()}
    if not field_errors:
        record, error = _validate(data, model)
        return Parsed(record, error, values)
    if all(f in allow_cut and e == CUT for f, e in field_errors.items()):
        record, error = _validate(values, model)
        return Parsed(record, error, values, field_errors)
    named = ", ".join(f"{f!r} {e.split(':')[0]}" for f, e in field_errors.items())
    return Parsed(None, f"{CUT} ({named})", values, field_errors)


def parse_model(
    text: str | None, model: type[M], allow_cut: frozenset[str] = frozenset()
) -> tuple[M | None, str | None]:
    """Parse ``text`` into ``model``; return ``(record, None)`` or ``(None, reason)``."""
    parsed = parse_partial(text, model, allow_cut)
    return parsed.record, parsed.error
