"""Turning LLM text into validated records, never raising.

Schema-forced decoding makes parse failures rare, but not impossible: generation can
hit ``max_new_tokens`` mid-JSON, an OpenAI-compatible server may ignore the schema, a
value can be out of range. Every failure becomes a short reason string that the
steps store in a ``*_error`` column and the cards count.
"""

from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

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


def parse_model(text: str | None, model: type[M]) -> tuple[M | None, str | None]:
    """Parse ``text`` into ``model``; return ``(record, None)`` or ``(None, reason)``."""
    if text is None:
        return None, NO_OUTPUT
    stripped = text.strip()
    if not stripped:
        return None, "empty output"
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        candidate = _first_json_object(stripped)
        if candidate is None:
            kind = "truncated JSON" if stripped.startswith("{") else "not JSON"
            return None, f"{kind}: {exc.msg} at char {exc.pos}"
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError as exc2:
            return None, f"not JSON: {exc2.msg} at char {exc2.pos}"
    try:
        return model.model_validate(data), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        return None, f"schema: {where}: {first['msg']}"
