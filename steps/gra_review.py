"""GRA's Reviewers and Adjudicator (section 3.3-3.4).

- :class:`ReviewInstructions`: every Reviewer answers three yes/no criteria; one "no"
  rejects the sample.
- :class:`ReviewResponses`: every Reviewer scores six dimensions 0-10 with feedback;
  the committee accepts, rejects or sends the sample to adjudication
  (:mod:`synthalign.steps.committee`).
- :class:`Adjudicate`: only disputed samples reach the Adjudicator, which rescores
  them with the reviewers' written feedback in view (their scores too with
  ``sees_scores``); kept iff its score >= ``min_mean_score``.

``ReviewResponses(rule="majority_vote")`` is the paper's no-Adjudicator ablation (section
4.3): a Reviewer approves when its own score is >= ``min_mean_score``, and the sample is
kept iff more than half of the valid reviews approve; nothing goes to adjudication.

A review that is not valid JSON, lacks a field or has a score out of range keeps its
``error`` and ``raw`` output in the row and counts as an abstention.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model

from synthalign.steps.base import Call, CallResult
from synthalign.steps.committee import (
    INSTRUCTION_CRITERIA,
    RESPONSE_DIMENSIONS,
    CommitteeVerdict,
    adjudication_passes,
    committee_stats,
    committee_verdict,
    instruction_verdict,
    reviewer_score,
)
from synthalign.steps.gra import TEMPLATES, GRATask, in_play, with_templates
from synthalign.steps.publish import DROP_COLUMNS, dropped

Score = Annotated[int, Field(ge=0, le=10)]
YesNo = Literal["yes", "no"]


class InstructionReview(BaseModel):
    reasonableness: YesNo
    completeness: YesNo
    clarity: YesNo


def _scored_review(name: str, text_field: str, doc: str | None = None) -> type[BaseModel]:
    """A review schema: one text field (bounded by the prompt's "under 30 words", never
    cut by the schema), then a 0-10 score per dimension of :data:`RESPONSE_DIMENSIONS`
    (the six the committee averages), in that order."""
    text = (str, ...)
    scores: dict[str, Any] = {dim: (Score, ...) for dim in RESPONSE_DIMENSIONS}
    return create_model(name, __doc__=doc, **{text_field: text}, **scores)


ResponseReview = _scored_review(
    "ResponseReview",
    "feedback",
    "Feedback comes first so the scores follow from it (a cheap form of reasoning\n"
    "first); the paper's prompt lists the scores first.",
)
AdjudicationReview = _scored_review("AdjudicationReview", "reason")


def _scores(record: Any) -> dict[str, int | None]:
    return {
        dim: getattr(record, dim) if record is not None else None for dim in RESPONSE_DIMENSIONS
    }


def instruction_review_entry(result: CallResult) -> dict[str, Any]:
    """One reviewer's instruction review as stored in ``instruction_reviews``."""
    entry: dict[str, Any] = {"model": result.model, "error": result.error, "raw": result.raw}
    for criterion in INSTRUCTION_CRITERIA:
        value = getattr(result.record, criterion) if result.record is not None else None
        entry[criterion] = None if value is None else value == "yes"
    return entry


def response_review_entry(result: CallResult) -> dict[str, Any]:
    """One reviewer's response review: six scores, their mean, feedback, failure."""
    record = result.record
    entry: dict[str, Any] = {"model": result.model, **_scores(record)}
    entry["score"] = (
        float(reviewer_score([entry[d] for d in RESPONSE_DIMENSIONS]))
        if record is not None
        else None
    )
    entry["feedback"] = record.feedback if record is not None else None
    entry["error"] = result.error
    entry["raw"] = result.raw
    return entry


def majority_verdict(
    reviews: Sequence[Sequence[float] | None], min_mean: float, min_valid: int
) -> CommitteeVerdict:
    """Majority vote instead of mean and spread: accept iff more than half of the valid
    reviews score at least ``min_mean`` (abstentions, and too few valid reviews, as in
    :func:`~synthalign.steps.committee.committee_verdict`)."""
    valid = [r for r in reviews if r is not None]
    if len(valid) < min_valid:  # rejected for too few valid reviews, whatever the rule
        return committee_verdict(reviews, min_mean=min_mean, min_valid=min_valid)
    approve = sum(1 for r in valid if reviewer_score(r) >= min_mean)
    mean, std = committee_stats(valid)
    return CommitteeVerdict(
        decision="accept" if 2 * approve > len(valid) else "reject",
        mean=mean,
        std=std,
        reviewer_scores=[None if r is None else float(reviewer_score(r)) for r in reviews],
        n_valid=len(valid),
        reason=f"majority vote: {approve} of {len(valid)} reviews >= min_mean_score {min_mean:g}",
    )


class _ReviewTask(GRATask):
    """One call per Reviewer of an in-play row."""

    min_valid_reviews: int = Field(
        default=2, ge=1, description="fewer valid reviews reject the sample"
    )

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"instruction": row["instruction"]}

    def calls(self, row: dict[str, Any]) -> list[Call]:
        if not in_play(row):
            return []
        return [Call(self.values(row), member=member) for member in row["roles"]["reviewers"]]


class ReviewInstructions(_ReviewTask):
    """Every Reviewer judges the instruction on three yes/no criteria.

    One "no" from any Reviewer rejects the sample (section 3.3); unusable reviews are
    abstentions, and fewer than ``min_valid_reviews`` valid ones also reject.
    """

    template: ClassVar[str] = TEMPLATES["instruction_review"]
    output_model: ClassVar[type[InstructionReview]] = InstructionReview
    stage: ClassVar[str] = "instruction_review"
    input_columns: ClassVar[tuple[str, ...]] = ("instruction", "roles")
    output_columns: ClassVar[tuple[str, ...]] = (
        "instruction_reviews", "instruction_accepted", "prompt_templates", *DROP_COLUMNS,
    )  # fmt: skip

    def merge(self, row: dict[str, Any], results: Sequence[CallResult]) -> dict[str, Any]:
        entries = [instruction_review_entry(r) for r in results]
        verdict = instruction_verdict(
            [None if e["error"] else {c: e[c] for c in INSTRUCTION_CRITERIA} for e in entries],
            min_valid=self.min_valid_reviews,
        )
        columns = {
            **self.passthrough(row),
            "instruction_reviews": entries,
            "instruction_accepted": verdict.accepted,
            "prompt_templates": with_templates(row, instruction_review=results[0].prompt),
        }
        return columns if verdict.accepted else {**columns, **dropped(self.stage, verdict.reason)}


class ReviewResponses(_ReviewTask):
    """Every Reviewer scores the response; the committee decides (section 3.3).

    accept: still in play (goes on to dedup); reject: dropped at ``response_review``;
    adjudicate: still in play with ``review_decision`` "adjudicate" (only those rows
    reach the Adjudicator).
    """

    template: ClassVar[str] = TEMPLATES["response_review"]
    output_model: ClassVar[type[BaseModel]] = ResponseReview
    allow_cut: ClassVar[frozenset[str]] = frozenset({"feedback"})  # the scores still count
    stage: ClassVar[str] = "response_review"
    input_columns: ClassVar[tuple[str, ...]] = ("instruction", "response", "roles")
    output_columns: ClassVar[tuple[str, ...]] = (
        "response_reviews", "review_mean", "review_std", "review_decision", "review_reason",
        "prompt_templates", *DROP_COLUMNS,
    )  # fmt: skip
    min_mean_score: float = Field(default=8.0, ge=0, le=10, description="the paper's tau")
    max_score_std: float = Field(default=1.5, ge=0, description="the paper's delta")
    rule: Literal["mean_std", "majority_vote"] = Field(
        default="mean_std", description="the paper's mean/std rule, or its majority-vote ablation"
    )

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"instruction": row["instruction"], "response": row["response"]}

    def verdict(self, entries: list[dict[str, Any]]) -> CommitteeVerdict:
        scores = [None if e["error"] else [e[d] for d in RESPONSE_DIMENSIONS] for e in entries]
        if self.rule == "majority_vote":
            return majority_verdict(scores, self.min_mean_score, self.min_valid_reviews)
        return committee_verdict(
            scores,
            min_mean=self.min_mean_score,
            max_std=self.max_score_std,
            min_valid=self.min_valid_reviews,
        )

    def merge(self, row: dict[str, Any], results: Sequence[CallResult]) -> dict[str, Any]:
        entries = [response_review_entry(r) for r in results]
        verdict = self.verdict(entries)
        columns = {
            **self.passthrough(row),
            "response_reviews": entries,
            "review_mean": verdict.mean,
            "review_std": verdict.std,
            "review_decision": verdict.decision,
            "review_reason": verdict.reason,
            "prompt_templates": with_templates(row, response_review=results[0].prompt),
        }
        return (
            {**columns, **dropped(self.stage, verdict.reason)}
            if verdict.decision == "reject"
            else columns
        )


class Adjudicate(GRATask):
    """The Adjudicator rescores disputed samples with every review in view (section 3.4).

    It sees the Reviewers' written feedback (Prompt 9's "prior evaluation"); their scores
    only with ``sees_scores``, since numbers shown beside the sample anchor its own.
    Kept iff its own score (mean of six) >= ``min_mean_score``; an unusable adjudication
    discards the sample, because the committee could not settle it either.
    """

    template: ClassVar[str] = TEMPLATES["adjudication"]
    output_model: ClassVar[type[BaseModel]] = AdjudicationReview
    allow_cut: ClassVar[frozenset[str]] = frozenset({"reason"})  # the scores still count
    stage: ClassVar[str] = "adjudication"
    input_columns: ClassVar[tuple[str, ...]] = (
        "instruction", "response", "response_reviews", "review_decision", "roles",
    )  # fmt: skip
    output_columns: ClassVar[tuple[str, ...]] = (
        "adjudication", "adjudication_score", "adjudication_reason", "adjudication_kept",
        "prompt_templates", *DROP_COLUMNS,
    )  # fmt: skip
    min_mean_score: float = Field(default=8.0, ge=0, le=10, description="the paper's tau")
    sees_scores: bool = Field(default=False, description="show the reviewers' scores too")

    def calls(self, row: dict[str, Any]) -> list[Call]:
        if not in_play(row) or row.get("review_decision") != "adjudicate":
            return []
        reviews = [
            {
                "scores": [e[d] for d in RESPONSE_DIMENSIONS] if self.sees_scores else None,
                "feedback": e["feedback"],
            }
            for e in row["response_reviews"]
            if not e["error"]
        ]
        values = {
            "instruction": row["instruction"],
            "response": row["response"],
            "reviews": reviews,
        }
        return [Call(values, member=row["roles"]["adjudicator"])]

    def merge(self, row: dict[str, Any], results: Sequence[CallResult]) -> dict[str, Any]:
        (result,) = results
        record = result.record
        entry = {
            "model": result.model,
            **_scores(record),
            "reason": record.reason if record is not None else None,
        }
        columns = {
            **self.passthrough(row),
            "adjudication": {**entry, "error": result.error, "raw": result.raw},
            "prompt_templates": with_templates(row, adjudication=result.prompt),
        }
        if record is None:
            reason = f"adjudication unusable: {result.error}"
            return {**columns, "adjudication_kept": False, **dropped(self.stage, reason)}
        scores = [entry[d] for d in RESPONSE_DIMENSIONS]
        score = float(reviewer_score(scores))
        kept = adjudication_passes(scores, self.min_mean_score)
        columns.update(
            adjudication_score=score, adjudication_reason=record.reason, adjudication_kept=kept
        )
        if kept:
            return columns
        return {
            **columns,
            **dropped(
                self.stage,
                f"adjudicator score {score:.4g} < min_mean_score {self.min_mean_score:g}",
            ),
        }
