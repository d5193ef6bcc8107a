"""SynPO's LLM steps and its filters.

The steps, in pipeline order (``pipelines/synpo.py`` wires them):

- :class:`GeneratePromptFromKeywords`: the trained self-prompt generator turns a
  keyword list into a user prompt (section 2.1).
- :class:`FlagInvalidPrompts`: a global step that marks every prompt with the drop
  convention (``kept``; ``drop_stage`` ``"prompt"`` and ``drop_reason`` = empty, too
  short, echoing the keywords, repeated, generation failed); :class:`KeepValidPrompts`
  passes on the usable ones. The flagged rows stay in the published ``prompts`` and
  ``candidates`` configs so the card counts each reason.
- :class:`AnswerPrompt` / :class:`AnswerPromptInitial`: the current policy (and, for the
  paper's rejected response, the initial model) answers each prompt.
- :class:`ImproveResponse`: the response improver rewrites the policy's answer into
  the chosen response (section 2.2, Appendix B).

The filters are pure functions so their boundaries are testable without a model:
:func:`score_gap_passes` (keep a pair only when chosen beats rejected by more than the
threshold: PairRM 0.20, ArmoRM 0.02 in Appendix C), :func:`repeated_ngram_fraction` /
:func:`too_repetitive` (drop text with more than 50% repeated n-grams, Appendix C.3),
and :func:`prompt_invalid_reason`.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import math
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from distilabel.steps import GlobalStep, Step, StepInput
from pydantic import Field

from synthalign.steps.base import TextTask
from synthalign.steps.clean import CleanColumn
from synthalign.steps.columns import FixedColumns
from synthalign.steps.keywords import stopwords
from synthalign.steps.publish import DROP_COLUMNS, dropped, kept
from synthalign.steps.seeds import read_seed_rows

if TYPE_CHECKING:
    from distilabel.typing import StepOutput

__all__ = [
    "PROMPT_CLEAN",
    "AnswerPrompt",
    "AnswerPromptInitial",
    "FlagInvalidPrompts",
    "GeneratePromptFromKeywords",
    "ImproveResponse",
    "KeepValidPrompts",
    "flag_prompts",
    "normalize_prompt",
    "prompt_invalid_reason",
    "repeated_ngram_fraction",
    "response_clean",
    "score_gap",
    "score_gap_passes",
    "too_repetitive",
]

_WORD = re.compile(r"\w+", re.UNICODE)
_PUNCT = str.maketrans("", "", string.punctuation)

# ----------------------------------------------------------------- filters


def score_gap(score_high: float | None, score_low: float | None) -> float | None:
    """``score_high - score_low``, or None when a score is missing or not finite."""
    if score_high is None or score_low is None:
        return None
    high, low = float(score_high), float(score_low)
    if not (math.isfinite(high) and math.isfinite(low)):
        return None
    return high - low


def score_gap_passes(score_high: float | None, score_low: float | None, threshold: float) -> bool:
    """True when ``score_high`` beats ``score_low`` by *more than* ``threshold``.

    SynPO keeps a pair only with "a significant preference difference", and trains the
    improver only where the gold answer's score "exceeds" the policy's by the threshold:
    a gap exactly at the threshold is not enough. A missing score never passes.
    """
    gap = score_gap(score_high, score_low)
    return gap is not None and gap > threshold


def repeated_ngram_fraction(text: str | None, n: int = 3) -> float:
    """Share of the word ``n``-grams of ``text`` that repeat an earlier one (0 to 1).

    ``1 - distinct / total``: a text saying one thing once scores 0, a loop that says
    the same phrase over and over approaches 1. Texts with fewer than ``n`` words have
    no n-gram and score 0. Words are lower-cased, punctuation ignored.
    """
    words = [w.lower() for w in _WORD.findall(text or "")]
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def too_repetitive(text: str | None, max_fraction: float = 0.5, n: int = 3) -> bool:
    """True when more than ``max_fraction`` of the n-grams repeat (exactly 50% passes).

    Appendix C.3 drops "all the data that contain over 50% repetition patterns", which
    guards the self-trained model against collapsing into loops.
    """
    return repeated_ngram_fraction(text, n) > max_fraction


def normalize_prompt(text: str) -> str:
    """Lower-case, punctuation dropped, whitespace collapsed: how repeats are recognized."""
    return " ".join(text.lower().translate(_PUNCT).split())


def prompt_invalid_reason(
    prompt: str | None,
    keywords: Sequence[str],
    *,
    min_words: int = 3,
    min_chars: int = 10,
    language: str = "en",
) -> str | None:
    """Why a generated prompt is unusable, or None when it is fine.

    - ``empty``: nothing but whitespace (or no output at all);
    - ``too short``: under ``min_chars`` characters or ``min_words`` words;
    - ``echoes keywords``: every content word is one of the keywords (the generator just
      listed them back), or the text opens with a "Keywords:" line.
    Repeats need the whole batch: see :func:`flag_prompts`.
    """
    text = (prompt or "").strip()
    if not text:
        return "empty"
    words = _WORD.findall(text.lower())
    if len(text) < min_chars or len(words) < min_words:
        return "too short"
    keyword_words = {w for k in keywords for w in _WORD.findall(k.lower())}
    content = [w for w in words if w not in stopwords(language) and not w.isdigit()]
    if text.lower().startswith(("keywords:", "keyword:")):
        return "echoes keywords"
    if keyword_words and content and set(content) <= keyword_words:
        return "echoes keywords"
    return None


def flag_prompts(
    prompts: Sequence[str | None],
    keyword_lists: Sequence[Sequence[str]],
    *,
    errors: Sequence[str | None] | None = None,
    min_words: int = 3,
    min_chars: int = 10,
    language: str = "en",
) -> list[str | None]:
    """One reason (or None) per prompt; the second and later copies of a prompt are ``repeated``.

    A generation error wins over every other reason. Copies are recognized after
    :func:`normalize_prompt`; the first copy keeps its own verdict.
    """
    seen: set[str] = set()
    reasons: list[str | None] = []
    for i, (prompt, keywords) in enumerate(zip(prompts, keyword_lists, strict=True)):
        if errors is not None and errors[i]:
            reasons.append("generation failed")
            continue
        reason = prompt_invalid_reason(
            prompt, keywords, min_words=min_words, min_chars=min_chars, language=language
        )
        if reason is None:
            key = normalize_prompt(prompt or "")
            if key in seen:
                reason = "repeated"
            seen.add(key)
        reasons.append(reason)
    return reasons


# ------------------------------------------------------------------- cleaning

PROMPT_CLEAN = CleanColumn(column="prompt", templates=["synpo_keywords_to_prompt.jinja2"])
"""A generated prompt must not repeat the keywords-to-prompt template."""


def response_clean(rejected_column: str) -> list[CleanColumn]:
    """The chosen (improved) and rejected responses of a pair, against the prompt."""
    return [
        CleanColumn(
            column="response_improved", templates=["synpo_improve.jinja2"], prompt_column="prompt"
        ),
        CleanColumn(
            column=rejected_column, templates=["synpo_answer.jinja2"], prompt_column="prompt"
        ),
    ]


# ------------------------------------------------------------------- steps


class GeneratePromptFromKeywords(TextTask):
    """The self-prompt generator: three keywords in, one user prompt out."""

    template: ClassVar[str] = "synpo_keywords_to_prompt.jinja2"
    column_prefix: ClassVar[str] = "prompt_gen"
    output_column: ClassVar[str] = "prompt"
    input_columns: ClassVar[tuple[str, ...]] = ("keywords",)

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"keywords": list(input["keywords"])}


class FlagInvalidPrompts(FixedColumns, GlobalStep):
    """Marks every generated prompt kept, or dropped at stage ``prompt`` with the reason.

    Global, because "repeated" needs to see all prompts of the iteration at once. A
    prompt the cleaning step could not clean (``clean_error``: it echoes the template)
    is dropped at stage ``clean`` with that reason.
    """

    input_columns: ClassVar[tuple[str, ...]] = ("keywords", "prompt", "prompt_gen_error")
    output_columns: ClassVar[tuple[str, ...]] = DROP_COLUMNS

    min_words: int = Field(default=3, description="fewer words: too short")
    min_chars: int = Field(default=10, description="fewer characters: too short")
    language: str = "en"

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        reasons = flag_prompts(
            [row.get("prompt") for row in inputs],
            [row.get("keywords") or [] for row in inputs],
            errors=[row.get("prompt_gen_error") for row in inputs],
            min_words=self.min_words,
            min_chars=self.min_chars,
            language=self.language,
        )
        for row, reason in zip(inputs, reasons, strict=True):
            if row.get("clean_error") and not row.get("prompt_gen_error"):
                row.update(dropped("clean", row["clean_error"]))
            else:
                row.update(kept() if reason is None else dropped("prompt", reason))
        yield inputs


class MixManualPrompts(FixedColumns, GlobalStep):
    """The paper's "SynPO Mix." (section 4.1, Table 7): manually collected prompts go
    through the same pipeline as the synthetic ones.

    Each prompt of ``source`` (its ``prompt_column``, or the first user turn of its
    ``messages_column``) becomes a row beside the generator's: no keywords, a negative
    ``paragraph_position`` (so it never counts as a corpus paragraph used),
    ``prompt_gen_model`` = ``manual:<file>``. From here on both kinds are flagged,
    answered, improved, scored and sampled alike.
    """

    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "keywords", "paragraph_position")
    output_columns: ClassVar[tuple[str, ...]] = ()

    source: str = Field(description="file or Hub id of the manually collected prompts")
    split: str = "train"
    config: str | None = None
    limit: int | None = Field(default=None, description="the first N prompts")
    prompt_column: str | None = Field(default=None, description="the prompt column, or")
    messages_column: str | None = Field(default="messages", description="the first user turn")

    def manual_prompts(self) -> list[str]:
        column = self.prompt_column or self.messages_column or "prompt"
        rows = read_seed_rows(
            self.source, [column], limit=self.limit, split=self.split, config=self.config
        )
        if self.prompt_column:
            return [str(row[column]).strip() for row in rows]
        firsts = (
            next((m.get("content") for m in row[column] or [] if m.get("role") == "user"), "")
            for row in rows
        )
        return [str(text or "").strip() for text in firsts]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = list(inputs)
        keys = list(rows[0]) if rows else ["prompt", "keywords", "paragraph_position"]
        name = f"manual:{self.source.rsplit('/', 1)[-1]}"
        manual = [
            {**dict.fromkeys(keys), "prompt": prompt, "keywords": [], "prompt_gen_model": name}
            | {"paragraph_position": -(i + 1)}
            for i, prompt in enumerate(self.manual_prompts())
        ]
        yield [*rows, *manual]


class KeepValidPrompts(FixedColumns, Step):
    """Passes on only the prompts :class:`FlagInvalidPrompts` kept: no model sees the rest."""

    input_columns: ClassVar[tuple[str, ...]] = ("kept",)
    output_columns: ClassVar[tuple[str, ...]] = ()

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield [row for row in inputs if row.get("kept")]


class AnswerPrompt(TextTask):
    """The current policy answers a prompt as it is (the prompt is the whole user turn)."""

    template: ClassVar[str] = "synpo_answer.jinja2"
    column_prefix: ClassVar[str] = "policy"
    output_column: ClassVar[str] = "response_policy"
    input_columns: ClassVar[tuple[str, ...]] = ("prompt",)


class AnswerPromptInitial(AnswerPrompt):
    """The initial model's answer: the paper's rejected response y0 (section 2.2)."""

    column_prefix: ClassVar[str] = "initial"
    output_column: ClassVar[str] = "response_initial"


class ImproveResponse(TextTask):
    """The response improver rewrites the policy's answer; the result is the chosen response."""

    template: ClassVar[str] = "synpo_improve.jinja2"
    column_prefix: ClassVar[str] = "improver"
    output_column: ClassVar[str] = "response_improved"
    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "response_policy")

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": input["prompt"], "response": input.get("response_policy") or ""}
