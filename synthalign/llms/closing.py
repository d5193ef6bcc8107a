"""Structured outputs that reach their token budget still parse.

A schema-forced answer that runs out of ``max_new_tokens`` stops mid-JSON: a small
model that loops inside one string spends the whole budget there, and every field of
the record is lost with the one that looped. Two things prevent that:

- :func:`close_json` closes a cut JSON text the way the schema expects (the open string
  ends with :data:`TRUNCATED`, a half-written number, literal or key is dropped, every
  required property not yet written becomes ``null``, open brackets close). Every
  backend applies it to a schema-forced output that stopped without closing its JSON,
  so the text parses and :func:`synthalign.parsing.parse_partial` can tell the one cut
  field from its siblings.
- :class:`FieldBudget` lets a decoder that controls each token (transformers with
  xgrammar) close a top-level string early: a string value may use its share of the
  tokens left, keeping room for the properties after it, so a field that loops is cut
  (and marked) and its siblings still get written.

Pure Python (no engine imports): the parser and every backend use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TRUNCATED",
    "FieldBudget",
    "FieldPlan",
    "close_json",
    "is_truncated",
    "plan_fields",
    "strip_truncated",
]

TRUNCATED = "[truncated]"
"""Ends a string value that the decoder closed because its token budget ran out."""

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def is_truncated(value: Any) -> bool:
    """A string value the decoder cut (it ends with :data:`TRUNCATED`)."""
    return isinstance(value, str) and value.endswith(TRUNCATED)


def strip_truncated(value: str) -> str:
    """The text of a cut string without the mark."""
    return value.removesuffix(TRUNCATED).rstrip()


class _Cut(Exception):
    """The text ended inside a value; ``partial`` is what can be kept of it (or ``_NONE``)."""

    def __init__(self, partial: Any) -> None:
        self.partial = partial


_NONE = object()


class _PrefixParser:
    """Parses the longest usable prefix of a JSON text into Python values."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def _ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in " \t\r\n":
            self.i += 1

    def _at_end(self) -> bool:
        self._ws()
        return self.i >= len(self.text)

    def value(self) -> Any:
        if self._at_end():
            raise _Cut(_NONE)
        ch = self.text[self.i]
        if ch == "{":
            return self._object()
        if ch == "[":
            return self._array()
        if ch == '"':
            return self._string(key=False)
        return self._scalar()

    def _scalar(self) -> Any:
        rest = self.text[self.i :]
        for literal, value in (("true", True), ("false", False), ("null", None)):
            if rest.startswith(literal):
                self.i += len(literal)
                return value
            if literal.startswith(rest):
                raise _Cut(_NONE)
        match = _NUMBER.match(rest)
        if match is None:
            raise ValueError(f"not JSON at char {self.i}")
        self.i += match.end()
        if self.i >= len(self.text):  # the number may go on: not a value to trust
            raise _Cut(_NONE)
        number = match.group()
        return float(number) if any(c in number for c in ".eE") else int(number)

    def _string(self, key: bool) -> str:
        out: list[str] = []
        self.i += 1  # the opening quote
        text = self.text
        while self.i < len(text):
            ch = text[self.i]
            if ch == '"':
                self.i += 1
                return "".join(out)
            if ch == "\\":
                escape = text[self.i + 1 : self.i + 2]
                if escape == "u":
                    digits = text[self.i + 2 : self.i + 6]
                    if len(digits) < 4:
                        break
                    out.append(chr(int(digits, 16)))
                    self.i += 6
                    continue
                if not escape:
                    break
                out.append(_ESCAPES.get(escape, escape))
                self.i += 2
                continue
            out.append(ch)
            self.i += 1
        raise _Cut(_NONE if key else "".join(out).rstrip() + TRUNCATED)

    def _array(self) -> list[Any]:
        items: list[Any] = []
        self.i += 1
        while True:
            if self._at_end():
                raise _Cut(items)
            if self.text[self.i] == "]":
                self.i += 1
                return items
            try:
                items.append(self.value())
            except _Cut as cut:
                if cut.partial is not _NONE:
                    items.append(cut.partial)
                raise _Cut(items) from None
            if self._at_end():
                raise _Cut(items)
            if self.text[self.i] == ",":
                self.i += 1

    def _object(self) -> dict[str, Any]:
        members: dict[str, Any] = {}
        self.i += 1
        while True:
            if self._at_end():
                raise _Cut(members)
            ch = self.text[self.i]
            if ch == "}":
                self.i += 1
                return members
            if ch == ",":
                self.i += 1
                continue
            if ch != '"':
                raise ValueError(f"not JSON at char {self.i}")
            try:
                key = self._string(key=True)
            except _Cut:
                raise _Cut(members) from None
            if self._at_end() or self.text[self.i] != ":":
                raise _Cut(members)
            self.i += 1
            try:
                members[key] = self.value()
            except _Cut as cut:
                if cut.partial is not _NONE:
                    members[key] = cut.partial
                raise _Cut(members) from None


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return _resolve(node, root) if isinstance(node, dict) else {}
    return schema


def _fill_required(value: Any, schema: dict[str, Any] | None, root: dict[str, Any]) -> Any:
    """``value`` with every required property the schema names present (``None`` if unwritten)."""
    if schema is None:
        return value
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or []:
            value.setdefault(name, None)
        return {k: _fill_required(v, properties.get(k), root) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_fill_required(v, schema["items"], root) for v in value]
    return value


def close_json(text: str | None, schema: dict[str, Any] | None = None) -> str | None:
    """``text`` closed into valid JSON when it is a cut JSON value; otherwise ``text``.

    The open string keeps what was written and ends with :data:`TRUNCATED`; a number,
    literal or key cut halfway is dropped; required properties never written are
    ``null``. A text that is already valid JSON, or is not JSON at all, is returned as
    it is (the parser reports it).
    """
    if text is None:
        return None
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return text
    try:
        json.loads(stripped)
        return text
    except json.JSONDecodeError:
        pass
    parser = _PrefixParser(stripped)
    try:
        value = parser.value()
    except _Cut as cut:
        value = cut.partial
    except ValueError:
        return text
    if value is _NONE:
        return text
    closed = _fill_required(value, schema, schema or {})
    return json.dumps(closed, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------ in-decoder budget


def _minimal(schema: dict[str, Any], root: dict[str, Any]) -> str:
    """A short JSON value of ``schema``'s type: what the tokens after a cut must cover."""
    schema = _resolve(schema, root)
    if "enum" in schema:
        return max((json.dumps(v) for v in schema["enum"]), key=len, default="null")
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    return {
        "integer": "10",
        "number": "0.5",
        "boolean": "false",
        "array": "[]",
        "object": "{}",
        "string": '""',
    }.get(kind if isinstance(kind, str) else "", "null")


def _takes_share(schema: dict[str, Any], root: dict[str, Any]) -> bool:
    """Properties whose length the model decides (strings, lists, objects) share the budget."""
    schema = _resolve(schema, root)
    if "enum" in schema or "const" in schema:
        return False
    return schema.get("type") in ("string", "array", "object") or "anyOf" in schema


@dataclass
class FieldPlan:
    """Per top-level property: tokens to keep for the properties after it, and how many of
    them take a share of the budget (itself included)."""

    reserve: dict[str, int]
    sharers: dict[str, int]
    strings: set[str]


def plan_fields(schema: dict[str, Any]) -> FieldPlan | None:
    """The budget plan of an object schema (None when the top level is not an object).

    The room kept for later properties is counted in characters of their shortest
    form (with the grammar's ``", "`` and ``": "`` separators): no token is shorter than
    a character, so this holds for any tokenizer and any sampler.
    """
    schema = _resolve(schema, schema)
    properties = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
        return None
    names = list(properties)
    reserve, sharers = {}, {}
    for i, name in enumerate(names):
        later = names[i + 1 :]
        tail = "".join(f', "{k}": {_minimal(properties[k], schema)}' for k in later) + "}"
        reserve[name] = len(tail) + 1
        sharers[name] = sum(_takes_share(properties[k], schema) for k in names[i:])
    strings = {k for k, v in properties.items() if _resolve(v, schema).get("type") == "string"} - {
        k for k, v in properties.items() if "enum" in _resolve(v, schema)
    }
    return FieldPlan(reserve=reserve, sharers=sharers, strings=strings)


@dataclass
class FieldBudget:
    """Follows one row's JSON as it is decoded and says when a string field must close.

    ``feed`` receives the text of each new token. While the decoder writes the value of
    a top-level string property, the value may use ``(tokens left when it opened -
    tokens the later properties need) / properties still to share the budget`` tokens;
    past that, :meth:`feed` returns True once, and the decoder forces
    ``TRUNCATED + '"'`` so the field closes marked and the later properties are written.
    """

    plan: FieldPlan
    budget: int
    close_tokens: int
    used: int = 0
    stack: list[str] = field(default_factory=list)
    in_string: bool = False
    is_key: bool = False
    escape: bool = False
    expect_key: bool = True
    key_chars: list[str] = field(default_factory=list)
    key: str | None = None
    value_tokens: int = 0
    cap: int | None = None

    def _open_value_string(self) -> None:
        self.value_tokens = 0
        self.cap = None
        if len(self.stack) == 1 and self.key in self.plan.strings:
            left = self.budget - self.used
            share = (left - self.plan.reserve[self.key]) // max(1, self.plan.sharers[self.key])
            self.cap = max(1, share - self.close_tokens)

    def _string_char(self, ch: str) -> None:
        if self.escape:
            self.escape = False
        elif ch == "\\":
            self.escape = True
        elif ch == '"':
            self.in_string = False
            if self.is_key and len(self.stack) == 1:
                self.key = "".join(self.key_chars)
            elif not self.is_key:
                self.cap = None
        elif self.is_key:
            self.key_chars.append(ch)

    def _char(self, ch: str) -> None:
        if self.in_string:
            self._string_char(ch)
        elif ch == '"':
            self.in_string = True
            self.is_key = self.expect_key
            self.key_chars = []
            if not self.is_key:
                self._open_value_string()
        elif ch in "{[":
            self.stack.append(ch)
            self.expect_key = ch == "{"
        elif ch in "}]":
            if self.stack:
                self.stack.pop()
            self.expect_key = False
        elif ch == ":":
            self.expect_key = False
        elif ch == ",":
            self.expect_key = bool(self.stack) and self.stack[-1] == "{"

    def feed(self, piece: str) -> bool:
        """Account one token; True when the string being written has used its share."""
        self.used += 1
        was_value = self.in_string and not self.is_key
        for ch in piece:
            self._char(ch)
        writing = self.in_string and not self.is_key
        if writing and was_value:
            self.value_tokens += 1
        if writing and self.cap is not None and not self.escape and self.value_tokens >= self.cap:
            self.cap = None  # fires once per field
            return True
        return False
