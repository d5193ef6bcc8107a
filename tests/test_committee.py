"""GRA's committee rule: the paper's Case 1, exact boundaries, abstentions."""

from __future__ import annotations

import pytest

from synthalign.steps.committee import (
    adjudication_passes,
    committee_decision,
    committee_stats,
    committee_verdict,
    instruction_verdict,
)

CASE_1 = [[9, 10, 10, 10, 10, 10], [9, 9, 10, 10, 10, 10], [6, 4, 5, 4, 5, 3]]


def test_paper_case_1_is_sent_to_the_adjudicator() -> None:
    mean, std = committee_stats(CASE_1)
    assert round(mean, 4) == 8.0
    assert round(std, 4) == 2.4758  # population std, as the paper reports it
    assert committee_decision(CASE_1) == "adjudicate"
    assert committee_decision(CASE_1, min_mean=8.0, max_std=2.5) == "accept"


def test_mean_exactly_min_mean_score_is_accepted() -> None:
    assert committee_decision([[8] * 6, [8] * 6, [8] * 6]) == "accept"
    # 49/6 and 47/6 are not binary fractions; their exact mean is 8
    assert committee_decision([[8, 8, 8, 8, 8, 9], [8, 8, 8, 8, 8, 7]]) == "accept"
    # 42/6, 55/6, 47/6: the naive float mean is 7.999999999999999, the exact mean 8
    reviews = [[7] * 6, [9, 9, 9, 9, 9, 10], [8, 8, 8, 8, 8, 7]]
    assert (42 / 6 + 55 / 6 + 47 / 6) / 3 < 8
    assert committee_decision(reviews) == "accept"


def test_mean_just_below_min_mean_score_is_rejected() -> None:
    assert committee_decision([[8, 8, 8, 8, 8, 7], [8] * 6]) == "reject"
    assert committee_decision([[10] * 6, [10] * 6, [0] * 6]) == "reject"


def test_std_exactly_max_score_std_is_accepted_and_just_above_is_adjudicated() -> None:
    at_delta = [[9, 10, 9, 10, 9, 10], [6, 7, 6, 7, 6, 7]]  # 9.5 and 6.5: std 1.5
    assert committee_stats(at_delta) == (8.0, 1.5)
    assert committee_decision(at_delta) == "accept"
    above = [[10, 10, 9, 10, 9, 10], [6, 7, 6, 7, 6, 6]]  # 58/6 and 38/6: std 5/3
    assert committee_decision(above) == "adjudicate"
    assert committee_decision(at_delta, max_std=1.4999) == "adjudicate"


def test_thresholds_are_parameters() -> None:
    scores = [[7] * 6, [7] * 6]
    assert committee_decision(scores) == "reject"
    assert committee_decision(scores, min_mean=7.0) == "accept"
    with pytest.raises(ValueError):
        committee_decision([])
    with pytest.raises(ValueError):
        committee_decision(scores, max_std=-1)


def test_abstentions_do_not_count_and_too_few_reviews_reject() -> None:
    verdict = committee_verdict([[9] * 6, None, [9] * 6])
    assert verdict.decision == "accept"
    assert verdict.n_valid == 2
    assert verdict.reviewer_scores == [9.0, None, 9.0]

    lonely = committee_verdict([[10] * 6, None, None])
    assert lonely.decision == "reject"
    assert lonely.mean is None
    assert lonely.reason == "too few valid reviews: 1 of 3 (need 2)"

    case = committee_verdict(CASE_1)
    assert case.decision == "adjudicate"
    assert (
        case.reason == "mean 8 >= min_mean_score 8 but std 2.476 > max_score_std 1.5"
    )  # the recipe's names


def test_adjudicator_keeps_at_min_mean_score_or_above() -> None:
    assert adjudication_passes([8] * 6)
    assert adjudication_passes([8, 8, 8, 8, 8, 9], min_mean=8.1)
    assert not adjudication_passes([4, 2, 5, 5, 5, 1])  # the paper's discarded case


def test_instruction_gate_one_no_rejects() -> None:
    yes = {"reasonableness": True, "completeness": True, "clarity": True}
    no = {"reasonableness": True, "completeness": False, "clarity": True}
    assert instruction_verdict([yes, yes, yes]).accepted
    rejected = instruction_verdict([yes, no, yes])
    assert not rejected.accepted
    assert rejected.reason == "reviewer 2 says no to completeness"
    thin = instruction_verdict([yes, None, None])
    assert not thin.accepted and thin.reason.startswith("too few valid reviews")
