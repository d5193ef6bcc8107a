"""Condor's steps: questions from tags, answers, self-critique, refinement, configs.

Condor (arXiv 2501.12273) synthesises SFT data in two stages with one model:

- *Condor Void*: for a (tag path, task type) pair from the World Knowledge Tree, one
  call writes three questions, Easy / Medium / Hard (:class:`GenerateQuestions`); each
  becomes its own row (:class:`SplitQuestionsByDifficulty`) and is answered
  (:class:`AnswerQuestion`). Question + answer is the paper's D_V.
- *Condor Refine*: the model critiques its own answer as strengths, weaknesses and
  suggestions (:class:`CritiqueResponse`) and then rewrites it from question, answer
  and critique (:class:`RefineResponse`). Question + refined answer is D_R.

Every LLM step is gated: a row whose earlier stage failed passes through without a
call, its own ``*_error`` saying it was skipped, so no tokens go to broken rows and
the all-rows config can still count what failed where. :class:`FormatCondorRows` is
the pipeline's leaf: it publishes the ``generations`` (all rows, with errors), ``void``
and ``refined`` configs from inside the pipeline, so a ``pipeline.yaml`` rerun yields
the same configs.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from distilabel.steps import Step, StepInput
from pydantic import BaseModel, Field, StringConstraints, create_model

from synthalign.parsing import Parsed
from synthalign.steps.base import SchemaTask, TextTask, provenance_columns
from synthalign.steps.clean import CleanColumn
from synthalign.steps.columns import FixedColumns
from synthalign.steps.decontaminate import CONTAMINATION_COLUMNS, contamination_features
from synthalign.steps.knowledge_tree import TASK_TYPES, normalize_tag
from synthalign.steps.prompts import template_id
from synthalign.steps.publish import PublishConfig, chat_feature, drop_features, dropped, kept

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

DIFFICULTIES: tuple[str, ...] = ("Easy", "Medium", "Hard")
QUESTION_COLUMNS: tuple[str, ...] = tuple(f"question_{d.lower()}" for d in DIFFICULTIES)
"""A question call's row: one question per difficulty."""
STAGES: tuple[str, ...] = ("question", "response", "critique", "refine")
"""Column prefixes of the four LLM stages, in pipeline order."""

DISTILABEL_METADATA = "distilabel_metadata"

# ------------------------------------------------------------------ output models


def _text(max_chars: int | None) -> Any:
    """A non-blank string, capped at ``max_chars`` when given.

    A cap (JSON schema ``maxLength``) is what lets a schema-forced *random* model close
    its strings, so tests set one. Real models end their strings on their own, and with
    xgrammar 0.2.x a bounded string that admits JSON escapes costs ~0.3 s of CPU per
    token per row at 150 chars (vs ~0.02 ms unbounded), so the default is no cap:
    ``max_new_tokens`` bounds the output and a cut-off JSON is a recorded parse failure.
    """
    return Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=max_chars)
    ]


@cache
def questions_model(max_chars: int | None = None) -> type[BaseModel]:
    """The schema of one question call: three non-blank questions (see :func:`_text`)."""
    text = _text(max_chars)
    return create_model(
        "GeneratedQuestions",
        __doc__="Three questions on one tag and task type, by difficulty.",
        easy=(text, ...),
        medium=(text, ...),
        hard=(text, ...),
    )


@cache
def critique_model(max_chars: int | None = None) -> type[BaseModel]:
    """The schema of one critique: strengths, weaknesses, suggestions (non-blank)."""
    text = _text(max_chars)
    return create_model(
        "Critique",
        __doc__="A self-reflection critique of one answer.",
        strengths=(text, ...),
        weaknesses=(text, ...),
        suggestions=(text, ...),
    )


# ------------------------------------------------------------------ gating


class _GatedMixin:
    """Runs the LLM only on rows whose ``input_columns`` are all filled.

    Other rows get this stage's columns empty and ``<prefix>_error`` set to a
    ``skipped: ...`` reason (no model, no raw text), so the card can tell a stage's own
    failures from rows an earlier stage had already lost. Text outputs that used up
    ``max_new_tokens`` are marked truncated when ``truncated_is_error`` is set: a cut-off
    answer is not SFT data.
    """

    def _missing(self, row: dict[str, Any]) -> str | None:
        for column in self.input_columns:  # type: ignore[attr-defined]
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                return column
        return None

    def _skipped(self, row: dict[str, Any], missing: str) -> dict[str, Any]:
        p = self.column_prefix  # type: ignore[attr-defined]
        return {
            **row,
            **self.empty_columns(),  # type: ignore[attr-defined]
            f"{p}_error": f"skipped: no {missing} (an earlier stage failed)",
            f"{p}_raw": None,
            f"{p}_model": None,
            f"{p}_prompt": template_id(self.template),  # type: ignore[attr-defined]
        }

    def _output_tokens(self, row: dict[str, Any]) -> int | None:
        stats = (row.get(DISTILABEL_METADATA) or {}).get(f"statistics_{self.name}")  # type: ignore[attr-defined]
        tokens = (stats or {}).get("output_tokens")
        if isinstance(tokens, list):
            tokens = tokens[0] if tokens else None
        return tokens if isinstance(tokens, int) else None

    def _gated(self, inputs: list[dict[str, Any]], run: Any) -> list[dict[str, Any]]:
        missing = [self._missing(row) for row in inputs]
        ready = [i for i, m in enumerate(missing) if m is None]
        done: dict[int, dict[str, Any]] = {}
        if ready:
            for batch in run([inputs[i] for i in ready]):
                if len(batch) != len(ready):
                    raise RuntimeError(
                        f"{type(self).__name__} must return one row per input (num_generations=1)"
                    )
                done.update(zip(ready, batch, strict=True))
        return [
            done[i] if i in done else self._skipped(row, missing[i]) for i, row in enumerate(inputs)
        ]


class _GatedSchemaTask(_GatedMixin, SchemaTask):
    num_generations: Literal[1] = 1

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield self._gated(inputs, super().process)


class _GatedTextTask(_GatedMixin, TextTask):
    num_generations: Literal[1] = 1
    truncated_is_error: bool = Field(
        default=True, description="an output that reached max_new_tokens counts as failed (cut off)"
    )

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = self._gated(inputs, super().process)
        limit = (self.llm.generation_kwargs or {}).get("max_new_tokens")
        if self.truncated_is_error and limit:
            p = self.column_prefix
            for row in rows:
                tokens = self._output_tokens(row)
                if row.get(f"{p}_error") is None and tokens is not None and tokens >= limit:
                    raw = row.get(self.output_column)
                    row.update(
                        {
                            self.output_column: None,
                            f"{p}_error": f"truncated: reached max_new_tokens={limit}",
                            f"{p}_raw": raw,
                        }
                    )
        yield rows


# ------------------------------------------------------------------ stage 1: questions


class GenerateQuestions(_GatedSchemaTask):
    """One call per (tag path, task type): an Easy, a Medium and a Hard question.

    Asking for all three difficulties in one call (as Condor's public prompts do) lets
    the model grade them against each other. The schema is a JSON object with keys
    ``easy`` / ``medium`` / ``hard`` (strings capped at ``max_question_chars`` when set).
    """

    template: ClassVar[str] = "condor_question.jinja2"
    column_prefix: ClassVar[str] = "question"
    input_columns: ClassVar[tuple[str, ...]] = ("tag_path", "task_type")
    max_question_chars: int | None = Field(
        default=None, ge=16, description="maxLength of each question (None: no cap)"
    )

    @property
    def output_model(self) -> type[BaseModel]:  # type: ignore[override]
        return questions_model(self.max_question_chars)

    @property
    def outputs(self) -> "StepColumns":
        return [*QUESTION_COLUMNS, "question_errors", *provenance_columns(self.column_prefix)]

    def partial_columns(self, parsed: Parsed[Any], input: dict[str, Any]) -> dict[str, Any]:
        """A call whose budget ran out in one question keeps the others: the cut one is
        None with its reason in ``question_errors`` (one entry per difficulty)."""
        errors = [parsed.field_errors.get(d.lower()) for d in DIFFICULTIES]
        columns = {
            f"question_{d.lower()}": None if error else parsed.values.get(d.lower())
            for d, error in zip(DIFFICULTIES, errors, strict=True)
        }
        return {**columns, "question_errors": errors}

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        task_type = input["task_type"]
        return {
            "tag_path": list(input["tag_path"]),
            "task_type": task_type,
            "task_description": TASK_TYPES.get(task_type, task_type),
        }

    def record_columns(self, record: Any, input: dict[str, Any]) -> dict[str, Any]:
        columns = {f"question_{d.lower()}": getattr(record, d.lower()) for d in DIFFICULTIES}
        return {**columns, "question_errors": None}


def question_problem(
    text: str | None, tag_path: list[str] | None, seen: set[str], min_words: int = 3
) -> str | None:
    """Why a generated question is unusable, or None.

    Cheap checks that catch what weak models do with this prompt: an empty string, a
    label instead of a question ("Hard"), the topic path copied back, or the same
    question twice in one call.
    """
    if not text:
        return "empty question"
    if len(text.split()) < min_words:
        return f"too short ({len(text.split())} words)"
    lowered = text.casefold()
    if any(
        f"{p} >".casefold() in lowered or f"> {p}".casefold() in lowered
        for p in tag_path or []
        if p
    ):
        return "echoes the topic path"
    if normalize_tag(text) in seen:
        return "duplicate question (same as an easier one of the call)"
    return None


def split_question_row(row: dict[str, Any], min_words: int = 3) -> list[dict[str, Any]]:
    """Three rows (Easy, Medium, Hard) from one question-call row.

    A failed call gives three rows that carry its error. A question that fails
    :func:`question_problem`, or that the token budget cut (``question_errors``), gets
    its own error, so only that row drops.
    """
    base = {
        k: v
        for k, v in row.items()
        if k != "question_errors"
        and not (
            k.startswith("question_") and k.removeprefix("question_").capitalize() in DIFFICULTIES
        )
    }
    cut = row.get("question_errors") or [None] * len(DIFFICULTIES)
    seen: set[str] = set()
    out = []
    for difficulty, cut_error in zip(DIFFICULTIES, cut, strict=True):
        text = row.get(f"question_{difficulty.lower()}")
        text = text.strip() if isinstance(text, str) else None
        error = row.get("question_error") or cut_error
        if error is None:
            error = question_problem(text, row.get("tag_path"), seen, min_words)
            if error is None:
                seen.add(normalize_tag(text))
        out.append(
            {
                **base,
                "difficulty": difficulty,
                "question": text if error is None else None,
                "question_error": error,
            }
        )
    return out


class SplitQuestionsByDifficulty(FixedColumns, Step):
    """Turns each question call into three rows with ``difficulty`` and ``question``."""

    input_columns: ClassVar[tuple[str, ...]] = (*QUESTION_COLUMNS, "question_error")
    output_columns: ClassVar[tuple[str, ...]] = ("difficulty", "question", "question_error")
    rows_per_input: ClassVar[int] = 3  # what `--dry-run` expects downstream

    min_words: int = Field(
        default=3, ge=1, description="shorter questions are rejected (labels, fragments)"
    )

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield [out for row in inputs for out in split_question_row(row, self.min_words)]


# ------------------------------------------------------------------ stage 2: answer


class AnswerQuestion(_GatedTextTask):
    """The model's own answer to the question, sent as the only user message.

    No system prompt or extra instruction: D_V is meant to be what the model says
    unprompted, the baseline that refinement improves on.
    """

    template: ClassVar[str] = "condor_answer.jinja2"
    column_prefix: ClassVar[str] = "response"
    output_column: ClassVar[str] = "response"
    input_columns: ClassVar[tuple[str, ...]] = ("question",)


# ------------------------------------------------------------------ stage 3: critique


class CritiqueResponse(_GatedSchemaTask):
    """Self-reflection: strengths, weaknesses and suggestions for one answer, as columns.

    A field that reached its share of the token budget keeps the text written so far
    (``allow_cut``) and is named in ``critique_cut``: a critique's last words matter
    little to the refinement, so the row goes on rather than failing. A field the budget
    left unwritten, or cut to nothing, still fails the row with its reason.
    """

    template: ClassVar[str] = "condor_critique.jinja2"
    column_prefix: ClassVar[str] = "critique"
    cut_column: ClassVar[str | None] = "critique_cut"
    input_columns: ClassVar[tuple[str, ...]] = ("question", "response")
    max_field_chars: int | None = Field(
        default=None, ge=16, description="maxLength of each critique field (None: no cap)"
    )
    keep_cut_fields: bool = Field(
        default=True,
        description="a field cut at the token budget keeps its text (named in critique_cut)",
    )  # a field, not a ClassVar: it is part of the step's signature, so the batch store
    # of a run made without it is not reused

    @property
    def allow_cut(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.output_model.model_fields) if self.keep_cut_fields else frozenset()

    @property
    def output_model(self) -> type[BaseModel]:  # type: ignore[override]
        return critique_model(self.max_field_chars)

    @property
    def outputs(self) -> "StepColumns":
        return [
            "critique_strengths",
            "critique_weaknesses",
            "critique_suggestions",
            "critique_cut",
            *provenance_columns(self.column_prefix),
        ]

    def record_columns(self, record: Any, input: dict[str, Any]) -> dict[str, Any]:
        return {
            "critique_strengths": record.strengths,
            "critique_weaknesses": record.weaknesses,
            "critique_suggestions": record.suggestions,
            "critique_cut": None,
        }


# ------------------------------------------------------------------ stage 4: refine


class RefineResponse(_GatedTextTask):
    """An improved answer written from the question, the original answer and the critique.

    The original answer stays in ``response``; the improvement goes to
    ``refined_response`` as written: :data:`CLEAN_COLUMNS` (the pipeline's
    ``clean_outputs`` step) removes labels, echoed sections and the like.
    """

    template: ClassVar[str] = "condor_refine.jinja2"
    column_prefix: ClassVar[str] = "refine"
    output_column: ClassVar[str] = "refined_response"
    input_columns: ClassVar[tuple[str, ...]] = (
        "question", "response", "critique_strengths", "critique_weaknesses", "critique_suggestions",
    )  # fmt: skip


CLEAN_COLUMNS: tuple[CleanColumn, ...] = (
    CleanColumn(column="response", templates=["condor_answer.jinja2"], prompt_column="question"),
    CleanColumn(
        column="refined_response", templates=["condor_refine.jinja2"], prompt_column="question"
    ),
)
"""What the cleaning step checks: both published answers, against the prompts they came from."""


# ------------------------------------------------------------------ published configs

ROW_COLUMNS = [
    "question",
    "response",
    "refined_response",
    "difficulty",
    "task_type",
    "root_domain",
    "sub_domain",
    "tag",
    "tag_path",
    "sample_index",
    "critique_strengths",
    "critique_weaknesses",
    "critique_suggestions",
]
# what the draw says about the tree (``knowledge_tree.tree_stats``), in the generations config
TREE_STATS = [
    "base_leaf_tags", "leaf_tags", "added_tags", "rejected_tags", "failed_calls",
    "sampled_leaf_tags",
]  # fmt: skip
MODEL_COLUMNS = [f"{stage}_{kind}" for stage in STAGES for kind in ("model", "prompt")]
ERROR_COLUMNS = [f"{stage}_{kind}" for stage in STAGES for kind in ("error", "raw")]
TRAIN_COLUMNS = ["messages", *ROW_COLUMNS, *MODEL_COLUMNS, "knowledge_tree", "generation_settings"]
GENERATIONS_COLUMNS = [
    *ROW_COLUMNS,
    *MODEL_COLUMNS,
    "knowledge_tree",
    "knowledge_tree_stats",
    "generation_settings",
    *ERROR_COLUMNS,
    *CONTAMINATION_COLUMNS,
    "critique_cut",
    "clean_error",
    "clean_changed",
    "kept",
    "drop_stage",
    "drop_reason",
]


def drop_reason(row: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(stage, reason)`` of the first stage that failed this row, or ``(None, None)``;
    the cleaning step (stage ``clean``) comes after the four LLM stages."""
    for stage in STAGES:
        error = row.get(f"{stage}_error")
        if error:
            return stage, error
    if row.get("decontaminate_error"):
        return "decontaminate", row["decontaminate_error"]
    for stage, column in zip(
        STAGES, ("question", "response", "critique_strengths", "refined_response"), strict=True
    ):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            return stage, f"empty {column}"
    if row.get("clean_error"):
        return "clean", row["clean_error"]
    return None, None


def format_row(row: dict[str, Any], config: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """One published row of ``config``, or None when the row is dropped from it.

    ``generations`` keeps every row with its errors and why it was dropped; ``void``
    and ``refined`` keep the same rows (those that passed every stage), with TRL's
    ``messages`` built from the original or the refined answer.
    """
    stage, reason = drop_reason(row)
    values = {c: row.get(c) for c in [*ROW_COLUMNS, *MODEL_COLUMNS, "knowledge_tree"]}
    values["generation_settings"] = settings
    if config == "generations":
        errors = {
            c: row.get(c)
            for c in [*ERROR_COLUMNS, *CONTAMINATION_COLUMNS, "critique_cut", "clean_error"]
        }
        errors["clean_changed"] = row.get("clean_changed")
        errors["knowledge_tree_stats"] = row.get("knowledge_tree_stats")
        return {**values, **errors, **(kept() if reason is None else dropped(stage, reason))}
    if reason is not None:
        return None
    answer = row["response"] if config == "void" else row["refined_response"]
    messages = [
        {"role": "user", "content": row["question"]},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": messages, **values}


def _settings_feature(settings: dict[str, dict[str, Any]]) -> Any:
    from datasets import Value  # heavy: datasets

    kinds = {
        "max_new_tokens": Value("int64"),
        "temperature": Value("float64"),
        "top_p": Value("float64"),
        "seed": Value("int64"),
    }
    return {
        role: {k: kinds.get(k, Value("string")) for k in values}
        for role, values in settings.items()
    }


def config_features(config: str, settings: dict[str, dict[str, Any]]) -> Any:
    """The schema of a published Condor config (declared once, here)."""
    from datasets import Features, List, Value  # heavy: datasets

    text = Value("string")
    columns: dict[str, Any] = {c: text for c in [*ROW_COLUMNS, *MODEL_COLUMNS, "knowledge_tree"]}
    columns.update(
        tag_path=List(text),
        sample_index=Value("int64"),
        generation_settings=_settings_feature(settings),
    )
    if config != "generations":
        columns["messages"] = chat_feature()
        return Features({c: columns[c] for c in TRAIN_COLUMNS})
    columns.update(
        {c: text for c in [*ERROR_COLUMNS, "clean_error"]},
        **contamination_features(),
        **drop_features(),
    )
    columns["clean_changed"] = List(text)
    columns["critique_cut"] = List(text)  # critique fields the token budget cut (kept)
    columns["knowledge_tree_stats"] = {k: Value("int64") for k in TREE_STATS}
    return Features({c: columns[c] for c in GENERATIONS_COLUMNS})


class FormatCondorRows(PublishConfig):
    """Leaf step that publishes one config: ``generations``, ``void`` or ``refined``.

    ``generation_settings`` (decoding settings per role) is written into every row so a
    row alone says how it was made.
    """

    input_columns: ClassVar[tuple[str, ...]] = (
        "question", "response", "refined_response", *[f"{s}_error" for s in STAGES],
    )  # fmt: skip

    config: Literal["generations", "void", "refined"] = "refined"
    generation_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def outputs(self) -> "StepColumns":
        return GENERATIONS_COLUMNS if self.config == "generations" else TRAIN_COLUMNS

    def features(self) -> Any:
        return config_features(self.config, self.generation_settings)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [format_row(row, self.config, self.generation_settings) for row in inputs]
        yield [row for row in rows if row is not None]
