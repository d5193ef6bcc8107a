"""One output-cleaning step for every method: the scaffolding goes, or the row does.

Small models copy their prompt's structure into their answers: a refined answer opens
with ``[Question]`` and the question, a revision talks about "my critique", a generated
prompt repeats the template's instructions, a reply starts with "Here is the improved
answer:" or a role tag. :class:`CleanOutputs` runs in every method's pipeline, after
the LLM steps whose text is published and before the leaves, so ``pipeline.yaml``
reruns it and the card's funnel counts what it dropped.

What counts as scaffolding comes from the method's own templates
(:func:`template_scaffold`): their section headers (``[Question]``, ``## Goal``,
``Principle:``), the input each header introduces (``[Question]`` -> ``{{ question }}``),
their fixed instruction sentences, and the names they give the method's artifacts (the
critique, the original answer). A changed template changes the patterns with it.

Per text (:func:`clean_text`): the method's markers are unwrapped (GRA's
``<boi>...<eoi>``), role tags and chat tokens removed, a preamble line ("Here is the
improved answer:") or a label line dropped, an echoed ``header + input`` section and a
leading copy of the prompt cut. What is left is dropped, with ``drop_reason``:

- ``empty``: nothing is left;
- ``echo``: it still carries scaffolding (a template header, a template sentence, or
  talk about the method's artifacts such as "my critique");
- ``repeats_prompt``: it is the prompt again.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from distilabel.steps import Step, StepInput
from pydantic import BaseModel, Field

from synthalign.steps.prompts import PROMPTS_DIR
from synthalign.steps.publish import dropped

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

__all__ = [
    "CLEAN_REASONS",
    "CleanColumn",
    "CleanOutputs",
    "Scaffold",
    "clean_text",
    "template_headers",
    "template_scaffold",
]

CLEAN_REASONS: tuple[str, ...] = ("echo", "empty", "repeats_prompt")
"""The ``drop_reason`` of a row the cleaning step drops (its ``drop_stage`` is ``clean``)."""

ARTIFACT_NOUNS: tuple[str, ...] = (
    "critique", "original answer", "original reply", "original response", "draft answer",
    "improved answer", "revised answer", "revised response", "revised reply", "earlier version",
    "previous answer", "previous reply", "reference summaries", "example topics",
)  # fmt: skip
"""Things a method's prompt shows the model; an answer that mentions one (``my critique``,
``the original answer``) is talking about the method, not to the user. Only the nouns a
template actually uses count for it."""

_HEADER = re.compile(
    r"""^\s*(?:
        \[(?P<bracket>[^\]\n{}]{1,40})\]\s*$
      | \#{1,6}\s*(?P<hash>[^\n#{}]{1,40}?)\s*$
      | (?P<colon>[A-Z][A-Za-z' ]{0,30}):\s*(?P<rest>\{[{%].*)?$
    )""",
    re.VERBOSE,
)
_VAR = re.compile(r"^\s*\{\{\s*([A-Za-z_]\w*)[^}]*\}\}\s*$")
_INLINE_VAR = re.compile(r"^\{\{\s*([A-Za-z_]\w*)")
_JINJA = re.compile(r"\{[{%#].*?[}%#]\}")
_SENTENCE_SPLIT = re.compile(r"(?<=[.;:!?])\s+|\s+-\s+|^\s*-\s+")
_CHAT_TOKENS = re.compile(r"<\|(?:im_start|im_end|endoftext|eot_id|end)\|>|</?s>")
_ASSISTANT_TURN = re.compile(r"^\s*<\|im_start\|>\s*assistant\s*\n?", re.I)
_ROLE_TAG = re.compile(r"^\s*(?:\*\*)?(?:assistant|ai|bot|gpt|answer)(?:\*\*)?\s*:\s*", re.I)
_TURN = re.compile(r"^\s*(?:\*\*)?(?:user|human|system)(?:\*\*)?\s*:", re.I | re.M)
_OUTPUT_LABEL = re.compile(
    r"""^\W*(?:(?:the|my|your)\s+)?
    (?:improved|refined|revised|rewritten|updated|final|new|better|generated)?\s*
    (?:answer|response|reply|version|instruction|prompt|message|rewrite)
    (?:\s+(?:start|begins?))?\W*$""",
    re.I | re.VERBOSE,
)
_PREAMBLE = re.compile(
    r"""^\W*(?:(?:sure|certainly|of\s+course|okay|ok|absolutely)\b[!,.]?\s*)?
    (?:here(?:'s|\s+is|\s+are)|below\s+is|this\s+is|i\s+have\s+(?:rewritten|revised|improved))\b
    [^\n]{0,100}?
    (?:answer|response|reply|version|instruction|prompt|message|question|rewrite|text)\b
    [^\n:]{0,60}:\s*""",
    re.I | re.VERBOSE,
)
_END_BLOCK = re.compile(r"\[\s*(?:improved\s+)?answer\s+end\s*\]", re.I)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019"}


def _label(text: str) -> str:
    """A header's comparable form: ``**[Original Answer]:**`` -> ``original answer``."""
    return " ".join(re.sub(r"[\[\]#*_:>`]", " ", text).lower().split())


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def template_headers(name: str) -> dict[str, str | None]:
    """Section headers of a template (by label) and the variable each introduces, if any."""
    lines = (PROMPTS_DIR / name).read_text(encoding="utf-8").splitlines()
    headers: dict[str, str | None] = {}
    for i, line in enumerate(lines):
        match = _HEADER.match(line)
        if match is None:
            continue
        label = _label(match.group("bracket") or match.group("hash") or match.group("colon"))
        var = None
        rest = match.group("rest")
        if rest:
            inline = _INLINE_VAR.match(rest)
            var = inline.group(1) if inline else None
        else:
            following = next((ln for ln in lines[i + 1 :] if ln.strip()), "")
            inline = _VAR.match(following)
            var = inline.group(1) if inline else None
        headers.setdefault(label, var)
    return headers


@dataclass(frozen=True)
class Scaffold:
    """What a template shows the model that a clean answer never repeats."""

    headers: dict[str, str | None]
    sentences: tuple[str, ...]
    nouns: tuple[str, ...]


@cache
def template_scaffold(name: str) -> Scaffold:
    text = (PROMPTS_DIR / name).read_text(encoding="utf-8")
    sentences = []
    for line in text.splitlines():
        if _HEADER.match(line) or "{" in line:
            continue
        for part in _SENTENCE_SPLIT.split(line):
            words = _norm(part)
            if len(words.split()) >= 6:
                sentences.append(words)
    plain = _norm(_JINJA.sub(" ", text))
    nouns = tuple(n for n in ARTIFACT_NOUNS if re.search(rf"\b{n}", plain))
    return Scaffold(template_headers(name), tuple(sentences), nouns)


class CleanColumn(BaseModel):
    """One text column to clean: the templates its text came from, the prompt it answers,
    and the method's own markers around it (GRA: ``["<boi>", "<eoi>"]``)."""

    column: str
    templates: list[str] = Field(default_factory=list)
    prompt_column: str | None = None
    markers: list[str] | None = Field(default=None, min_length=2, max_length=2)


# ------------------------------------------------------------------ one text


def _unwrap_markers(text: str, markers: list[str] | None) -> str:
    if not markers:
        return text
    begin, end = markers
    if begin in text:
        text = text.split(begin, 1)[1]
    if end in text:
        text = text.split(end, 1)[0]
    return text.replace(begin, "").replace(end, "")


def _strip_wrapping(text: str) -> str:
    """Chat tokens, a leading role tag, a continued conversation, wrapping quotes."""
    text = _ASSISTANT_TURN.sub("", text, count=1)
    text = _CHAT_TOKENS.split(text, maxsplit=1)[0].strip()  # a later token: another turn began
    text = _ROLE_TAG.sub("", text, count=1).strip()
    turn = _TURN.search(text)
    if turn is not None and turn.start() > 0:
        text = text[: turn.start()].strip()
    close = _QUOTES.get(text[:1])
    if close and len(text) > 2 and text.endswith(close) and close not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def _header_of(line: str, labels: set[str]) -> str | None:
    """The template label ``line`` is a header for (alone, or ``label:`` with text after)."""
    label = _label(line)
    if label in labels:
        return label
    head = line.strip().lstrip("#*[ ").split(":", 1)
    if len(head) == 2 and _label(head[0]) in labels:
        return _label(head[0])
    return None


def _drop_echoed_sections(text: str, scaffold: Scaffold, row: dict[str, Any]) -> str:
    """Remove ``header`` + the row's own value for it, wherever the model copied them."""
    for label, var in scaffold.headers.items():
        value = row.get(var) if var else None
        if not isinstance(value, str) or not value.strip():
            continue
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if _header_of(line, {label}) is None:
                continue
            inline = line.split(":", 1)[1] if ":" in line else ""
            rest = _cut_after("\n".join([inline, *lines[i + 1 :]]), value)
            if rest is not None:
                text = "\n".join([*lines[:i], rest]).strip()
                break
    return text


def _cut_after(body: str, value: str) -> str | None:
    """``body`` after its leading copy of ``value`` (word by word, ending a line), or None."""
    if not _norm(body).startswith(_norm(value)):
        return None
    want = len(_norm(value).split())
    for seen, match in enumerate(re.finditer(r"\w+", body.lower()), start=1):
        if seen == want:
            rest = body[match.end() :]
            line_end = rest.split("\n", 1)[0]
            if re.search(r"\w", line_end):  # the copy goes on differently: not the input
                return None
            return rest[len(line_end) :].strip()
    return None


def _after_output_label(text: str, headers: set[str]) -> str:
    """The text after the last label line ("Improved answer:") or answer block, if any.
    A template's own header (``## Instruction`` of an answer prompt) is not one."""
    lines = text.splitlines()
    labels = [
        i
        for i, line in enumerate(lines)
        if line.strip() and _OUTPUT_LABEL.match(line) and _header_of(line, headers) is None
    ]
    if labels:
        text = "\n".join(lines[labels[-1] + 1 :]).strip()
    return _END_BLOCK.split(text, maxsplit=1)[0].strip()


def _residue(text: str, scaffolds: list[Scaffold]) -> bool:
    """Scaffolding still in the text: a header line, a template sentence, artifact talk."""
    labels = {label for s in scaffolds for label in s.headers}
    if any(_header_of(line, labels) for line in text.splitlines() if line.strip()):
        return True
    plain = _norm(text)
    if any(sentence in plain for s in scaffolds for sentence in s.sentences):
        return True
    nouns = {n for s in scaffolds for n in s.nouns}
    return any(
        re.search(rf"\b(?:my|the|your|this|that|above|previous)\s+{n}s?\b", plain) for n in nouns
    )


def clean_text(
    text: str, spec: CleanColumn, row: dict[str, Any] | None = None
) -> tuple[str, str | None]:
    """``(cleaned, None)``, or ``(cleaned, reason)`` with a reason of :data:`CLEAN_REASONS`."""
    row = row or {}
    scaffolds = [template_scaffold(t) for t in spec.templates]
    out = _strip_wrapping(_unwrap_markers(text, spec.markers))
    before = out
    for scaffold in scaffolds:
        out = _drop_echoed_sections(out, scaffold, row)
    if before and not out:
        return out, "echo"  # nothing but copied prompt sections
    out = _after_output_label(out, {label for s in scaffolds for label in s.headers})
    out = _PREAMBLE.sub("", out, count=1).strip()
    out = _strip_wrapping(out)
    prompt = row.get(spec.prompt_column) if spec.prompt_column else None
    if isinstance(prompt, str) and prompt.strip():
        if _norm(out) == _norm(prompt):
            return out, "repeats_prompt"
        if out.startswith(prompt.strip()):
            out = out[len(prompt.strip()) :].lstrip(" \n:")
            if not out:
                return out, "repeats_prompt"
    if not _norm(out):
        return out, "empty"
    if _residue(out, scaffolds):
        return out, "echo"
    return out, None


# ------------------------------------------------------------------ the step


class CleanOutputs(Step):
    """Cleans text columns in place; a row whose text cannot be cleaned gets ``clean_error``.

    ``clean_error`` is the first reason (``echo``, ``empty``, ``repeats_prompt``) and
    ``clean_changed`` lists the columns whose text the step changed. A dropped row keeps
    its text as the model wrote it, so the all-rows config shows what was dropped.
    Rows already out (``kept`` False) and empty columns (an earlier stage failed) are left
    alone. With ``set_drop``, a failing row also gets ``kept`` False, ``drop_stage``
    ``clean`` and ``drop_reason`` (methods whose rows carry the drop columns while in
    play); other methods map ``clean_error`` into their own drop logic. Several cleaning
    steps in one pipeline accumulate: an earlier ``clean_error`` is never cleared.
    """

    columns: list[CleanColumn] = Field(min_length=1)
    set_drop: bool = False

    @property
    def inputs(self) -> "StepColumns":
        return [c.column for c in self.columns]

    @property
    def outputs(self) -> "StepColumns":
        extra = ["kept", "drop_stage", "drop_reason"] if self.set_drop else []
        return ["clean_error", "clean_changed", *extra]

    def clean_row(self, row: dict[str, Any]) -> dict[str, Any]:
        error, changed = row.get("clean_error"), list(row.get("clean_changed") or [])
        if row.get("kept") is False or error:
            return {**row, "clean_error": error, "clean_changed": changed or None}
        cleaned: dict[str, str] = {}
        for spec in self.columns:
            text = row.get(spec.column)
            if not isinstance(text, str) or not text.strip():
                continue
            out, reason = clean_text(text, spec, row)
            if reason is not None:
                error = error or reason
            elif out != text.strip():
                cleaned[spec.column] = out
        if error:
            fate = dropped("clean", error) if self.set_drop else {}
            return {**row, **fate, "clean_error": error, "clean_changed": changed or None}
        changed += [c for c in cleaned if c not in changed]
        return {**row, **cleaned, "clean_error": None, "clean_changed": changed or None}

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield [self.clean_row(row) for row in inputs]
