"""The GRA review committee: how reviewer scores become accept / reject / adjudicate.

GRA (section 3.3) has every Reviewer score a response on six dimensions; a Reviewer's
score is the mean of its six, and the committee looks at the mean ``mu`` and the
*population* standard deviation ``sigma`` of the Reviewers' scores:

- reject if ``mu < tau``;
- accept if ``mu >= tau`` and ``sigma <= delta``;
- adjudicate otherwise (the Reviewers agree it is good on average but disagree).

The paper's ``tau`` and ``delta`` are the recipe's ``min_mean_score`` and
``max_score_std`` (``min_mean`` / ``max_std`` here); recorded reasons use the recipe's
names, since ``tau`` means rDPO's soft label elsewhere in synthalign.

The paper's Case 1 (reviewers ``[9,10,10,10,10,10]``, ``[9,9,10,10,10,10]``,
``[6,4,5,4,5,3]``) has ``mu = 8.0`` and ``sigma = 2.4758``: that figure is the
population deviation, so that is what we use.

Comparisons are exact. Scores are small integers, and a mean such as ``49/6`` is not
representable in binary floating point, so ``mean >= 8`` computed in floats can fail
for a committee whose exact mean is 8. We compare with :class:`fractions.Fraction`
and test ``variance <= max_std**2`` instead of taking a square root, so a committee
sitting exactly on a threshold always lands on the side the paper's inequalities say.

A review that could not be parsed is an *abstention*: it neither supports nor sinks
the sample. A committee with fewer than ``min_valid`` (default 2) valid reviews has
no meaningful spread, so the sample is rejected and the reason says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

Decision = Literal["accept", "reject", "adjudicate"]

RESPONSE_DIMENSIONS: tuple[str, ...] = (
    "correctness",
    "clarity",
    "completeness",
    "relevance",
    "coherence",
    "ethicality",
)
"""The six response-review dimensions of GRA, in the paper's order."""

INSTRUCTION_CRITERIA: tuple[str, ...] = ("reasonableness", "completeness", "clarity")
"""The three yes/no instruction-review criteria of GRA, in the paper's order."""

DEFAULT_MIN_MEAN = 8.0
DEFAULT_MAX_STD = 1.5
DEFAULT_MIN_VALID = 2


def _exact(value: float | int) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction):
        raise TypeError(f"a score must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a score must be finite, got {value!r}")
    return Fraction(value)


def reviewer_score(dimension_scores: Sequence[float]) -> Fraction:
    """One reviewer's score: the exact mean of its dimension scores."""
    if not dimension_scores:
        raise ValueError("a review needs at least one dimension score")
    return sum((_exact(s) for s in dimension_scores), Fraction(0)) / len(dimension_scores)


def _moments(scores: Sequence[Sequence[float]]) -> tuple[Fraction, Fraction]:
    """Exact mean and population variance of the reviewers' scores."""
    if not scores:
        raise ValueError("a committee needs at least one review")
    per_reviewer = [reviewer_score(s) for s in scores]
    mean = sum(per_reviewer, Fraction(0)) / len(per_reviewer)
    variance = sum(((s - mean) ** 2 for s in per_reviewer), Fraction(0)) / len(per_reviewer)
    return mean, variance


def committee_stats(scores: Sequence[Sequence[float]]) -> tuple[float, float]:
    """``(mean, population std)`` of the reviewers' scores, as floats for recording."""
    mean, variance = _moments(scores)
    return float(mean), math.sqrt(variance)


def committee_decision(
    scores: Sequence[Sequence[float]],
    min_mean: float = DEFAULT_MIN_MEAN,
    max_std: float = DEFAULT_MAX_STD,
) -> Decision:
    """GRA's committee rule on one list of dimension scores per reviewer.

    ``reject`` if the mean reviewer score is below ``min_mean`` (the paper's tau);
    ``accept`` if it is at least ``min_mean`` and the population std is at most
    ``max_std`` (the paper's delta);
    ``adjudicate`` otherwise. Boundaries are compared exactly (see the module docs).
    """
    if max_std < 0:
        raise ValueError(f"max_std must be >= 0, got {max_std}")
    mean, variance = _moments(scores)
    if mean < _exact(min_mean):
        return "reject"
    if variance <= _exact(max_std) ** 2:
        return "accept"
    return "adjudicate"


@dataclass(frozen=True)
class CommitteeVerdict:
    """What the committee decided about one response, with the numbers behind it."""

    decision: Decision
    mean: float | None
    std: float | None
    reviewer_scores: list[float | None]
    n_valid: int
    reason: str


def committee_verdict(
    reviews: Sequence[Sequence[float] | None],
    min_mean: float = DEFAULT_MIN_MEAN,
    max_std: float = DEFAULT_MAX_STD,
    min_valid: int = DEFAULT_MIN_VALID,
) -> CommitteeVerdict:
    """Decide on one response from its reviews, where ``None`` is an abstention.

    Abstentions (unparseable reviews) are left out of the mean and std; with fewer than
    ``min_valid`` valid reviews the sample is rejected, because one voice is not a
    committee and its spread says nothing about agreement.
    """
    per_reviewer = [None if r is None else float(reviewer_score(r)) for r in reviews]
    valid = [list(r) for r in reviews if r is not None]
    if len(valid) < min_valid:
        return CommitteeVerdict(
            decision="reject",
            mean=None,
            std=None,
            reviewer_scores=per_reviewer,
            n_valid=len(valid),
            reason=f"too few valid reviews: {len(valid)} of {len(reviews)} (need {min_valid})",
        )
    decision = committee_decision(valid, min_mean=min_mean, max_std=max_std)
    mean, std = committee_stats(valid)
    spread = f"max_score_std {max_std:g}"
    if decision == "reject":
        reason = f"mean {mean:.4g} < min_mean_score {min_mean:g}"
    elif decision == "accept":
        reason = f"mean {mean:.4g} >= min_mean_score {min_mean:g} and std {std:.4g} <= {spread}"
    else:
        reason = f"mean {mean:.4g} >= min_mean_score {min_mean:g} but std {std:.4g} > {spread}"
    return CommitteeVerdict(
        decision=decision,
        mean=mean,
        std=std,
        reviewer_scores=per_reviewer,
        n_valid=len(valid),
        reason=reason,
    )


def adjudication_passes(
    dimension_scores: Sequence[float], min_mean: float = DEFAULT_MIN_MEAN
) -> bool:
    """The Adjudicator keeps a sample iff its own score (mean of six) is >= ``min_mean``."""
    return reviewer_score(dimension_scores) >= _exact(min_mean)


@dataclass(frozen=True)
class InstructionVerdict:
    """Outcome of the instruction review: accepted, or rejected and why."""

    accepted: bool
    n_valid: int
    reason: str


def instruction_verdict(
    reviews: Sequence[Mapping[str, bool] | None],
    min_valid: int = DEFAULT_MIN_VALID,
) -> InstructionVerdict:
    """GRA's instruction gate: a single failed criterion from any reviewer rejects.

    ``reviews`` holds one ``{criterion: passed}`` mapping per reviewer, or ``None`` for
    an abstention. Too few valid reviews also reject, as for responses.
    """
    valid = [r for r in reviews if r is not None]
    for i, review in enumerate(reviews):
        if review is None:
            continue
        failed = [c for c in INSTRUCTION_CRITERIA if not review.get(c, False)]
        if failed:
            return InstructionVerdict(
                accepted=False,
                n_valid=len(valid),
                reason=f"reviewer {i + 1} says no to {', '.join(failed)}",
            )
    if len(valid) < min_valid:
        return InstructionVerdict(
            accepted=False,
            n_valid=len(valid),
            reason=f"too few valid reviews: {len(valid)} of {len(reviews)} (need {min_valid})",
        )
    return InstructionVerdict(accepted=True, n_valid=len(valid), reason="all criteria met")
