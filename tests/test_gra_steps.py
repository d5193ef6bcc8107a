"""GRA's steps on their own: the review committee's parsing, the routed calls on a real
pool, dedup's witnesses, and the leaves that publish the configs.

Real models only (``builtin:tiny-random`` instances), except the parser tests, which
script a member's raw outputs to feed the review steps malformed JSON on purpose.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from synthalign.llms.base import Completion, Decoding, SynthLLM
from synthalign.llms.pool import PoolLLM, PoolMember
from synthalign.steps.gra_generate import GenerateResponses
from synthalign.steps.gra_pool import DescribeExamples
from synthalign.steps.gra_publish import DeduplicateSamples, PublishCandidates, sample_features
from synthalign.steps.gra_review import Adjudicate, ReviewInstructions, ReviewResponses
from synthalign.steps.publish import dropped
from synthalign.steps.publish import kept as kept_columns

TINY = "builtin:tiny-random"


class ScriptedLLM(SynthLLM):
    """Replays fixed raw outputs (parser tests only: real models cannot be told to fail)."""

    replies: list[str]

    def _generate_batch(
        self, conversations: list, schemas: list, *, decoding: Decoding
    ) -> list[Completion]:
        assert all(s is not None for s in schemas), "review calls must carry a JSON schema"
        return [Completion(self.replies.pop(0), 10, 10) for _ in conversations]


def review_row(**extra: Any) -> dict[str, Any]:
    """A candidate in play, as the review steps see it."""
    row = {
        "candidate_id": "r1-000000",
        "instruction": "Add 2 and 3.",
        "response": "5",
        "roles": {"generator": 0, "reviewers": [1, 2, 3], "adjudicator": 4, "enricher": 0},
        "kept": None,
        "drop_stage": None,
        "drop_reason": None,
        "prompt_templates": None,
    }
    return {**row, **extra}


def scores_json(score: int) -> str:
    dims = ["correctness", "clarity", "completeness", "relevance", "coherence", "ethicality"]
    return json.dumps({"feedback": "fine", **dict.fromkeys(dims, score)})


def _pool(n: int, **kwargs: Any) -> PoolLLM:
    return PoolLLM(
        members=[
            PoolMember(
                name=f"tiny#{i}", spec=TINY, generation_kwargs={"temperature": 0.7, "seed": i}
            )
            for i in range(n)
        ],
        **kwargs,
    )


# ------------------------------------------------------------------ parsers (scripted member)


def _scripted_pool(replies: dict[int, list[str]]) -> PoolLLM:
    pool = _pool(5)
    pool.load()
    for member, texts in replies.items():
        pool._llms[member] = ScriptedLLM(model=f"scripted-{member}", replies=list(texts))
    return pool


def test_malformed_reviews_are_recorded_and_abstain() -> None:
    missing = json.dumps(
        {
            "feedback": "x",
            "correctness": 9,
            "clarity": 9,
            "completeness": 9,
            "relevance": 9,
            "coherence": 9,
        }
    )
    eleven = scores_json(9).replace('"ethicality": 9', '"ethicality": 11')
    pool = _scripted_pool({1: ["this is not JSON at all"], 2: [missing], 3: [eleven]})
    step = ReviewResponses(name="rr", llm=pool, min_mean_score=8.0, max_score_std=1.5)
    step.load()
    (row,) = next(step.process([review_row()]))
    errors = [r["error"] for r in row["response_reviews"]]
    assert errors[0].startswith("not JSON")
    assert errors[1] == "schema: ethicality: Field required"
    assert "ethicality" in errors[2] and "10" in errors[2]
    assert row["response_reviews"][0]["raw"] == "this is not JSON at all"
    assert all(r["score"] is None for r in row["response_reviews"])
    assert row["review_decision"] == "reject"
    assert (row["kept"], row["drop_stage"]) == (False, "response_review")
    assert row["drop_reason"] == "too few valid reviews: 0 of 3 (need 2)"

    # one abstention, two valid reviews: the committee decides on the two
    pool = _scripted_pool({1: ["{broken"], 2: [scores_json(9)], 3: [scores_json(8)]})
    step = ReviewResponses(name="rr", llm=pool, min_mean_score=8.0, max_score_std=1.5)
    step.load()
    (row,) = next(step.process([review_row()]))
    assert (
        row["review_decision"] == "accept" and row["kept"] is None and row["drop_stage"] is None
    )  # still in play
    assert row["review_mean"] == 8.5 and row["review_std"] == 0.5
    assert row["review_reason"] == "mean 8.5 >= min_mean_score 8 and std 0.5 <= max_score_std 1.5"
    assert [r["model"] for r in row["response_reviews"]] == ["tiny#1", "tiny#2", "tiny#3"]


def test_malformed_instruction_reviews_abstain_and_one_no_rejects() -> None:
    yes = json.dumps({"reasonableness": "yes", "completeness": "yes", "clarity": "yes"})
    no = json.dumps({"reasonableness": "yes", "completeness": "no", "clarity": "yes"})
    pool = _scripted_pool(
        {1: [yes, yes, yes], 2: ['{"reasonableness": "maybe"}', yes, no], 3: ["", "nope", yes]}
    )
    step = ReviewInstructions(name="ri", llm=pool, min_valid_reviews=2)
    step.load()
    rows = [review_row(candidate_id=f"r1-{i}") for i in range(3)]
    out = next(step.process(rows))
    assert (out[0]["kept"], out[0]["drop_stage"]) == (False, "instruction_review")
    assert out[0]["drop_reason"].startswith("too few valid reviews: 1 of 3")
    assert out[0]["instruction_reviews"][2]["error"] == "empty output"
    assert out[1]["instruction_accepted"] and out[1]["kept"] is None  # 2 valid, 1 abstention
    assert out[2]["drop_stage"] == "instruction_review"
    assert out[2]["drop_reason"] == "reviewer 2 says no to completeness"
    assert all(
        r["prompt_templates"]["instruction_review"].startswith("gra_review_instruction.jinja2@")
        for r in out
    )


# ------------------------------------------------------------------ steps on a real pool


@pytest.fixture(scope="module")
def tiny_pool() -> PoolLLM:
    pool = _pool(5)
    pool.load()
    return pool


def test_dropped_rows_cost_no_calls(tiny_pool: PoolLLM) -> None:
    rows = [
        review_row(
            candidate_id="a",
            kept=False,
            drop_stage="instruction_review",
            drop_reason="no",
            response=None,
        ),
        review_row(
            candidate_id="b",
            kept=False,
            drop_stage="generation",
            drop_reason="x",
            instruction=None,
            response=None,
        ),
        review_row(candidate_id="c"),
    ]
    responses = GenerateResponses(
        name="gr", llm=tiny_pool, max_new_tokens=8, truncated_is_error=False
    )
    responses.load()
    out = next(responses.process(rows))
    assert [r["response"] is not None for r in out] == [False, False, True]
    assert out[0]["prompt_templates"] is None and out[1]["prompt_templates"] is None
    assert [r["drop_stage"] for r in out] == [
        "instruction_review",
        "generation",
        None,
    ]  # passed through
    assert out[2]["prompt_templates"]["response"].startswith("gra_response.jinja2@")
    reviews = ReviewResponses(name="rr", llm=tiny_pool, structured_max_new_tokens=200)
    reviews.load()
    out = next(reviews.process(out))
    assert out[0]["response_reviews"] is None and out[1]["response_reviews"] is None
    assert len(out[2]["response_reviews"]) == 3


def test_only_disputed_rows_reach_the_adjudicator(tiny_pool: PoolLLM) -> None:
    dims = ["correctness", "clarity", "completeness", "relevance", "coherence", "ethicality"]
    review = {"model": "tiny#1", **dict.fromkeys(dims, 9), "score": 9.0, "feedback": "good"}
    review.update(error=None, raw=None)
    bad = {**review, "model": "tiny#2", "error": "not JSON", "raw": "??"}
    rows = [
        review_row(
            candidate_id="a", review_decision="adjudicate", response_reviews=[review, bad, review]
        ),
        review_row(
            candidate_id="b", review_decision="accept", response_reviews=[review, review, review]
        ),
    ]
    step = Adjudicate(name="adj", llm=tiny_pool, min_mean_score=0.0, structured_max_new_tokens=200)
    step.load()
    judged, untouched = next(step.process(rows))
    assert untouched["adjudication"] is None and untouched["kept"] is None
    assert judged["adjudication"]["model"] == "tiny#4"  # the row's adjudicator
    if judged["adjudication"]["error"] is None:  # min_mean_score 0: any valid adjudication keeps it
        assert judged["adjudication_kept"] and judged["kept"] is None
        assert 0 <= judged["adjudication_score"] <= 10
    else:
        assert judged["drop_stage"] == "adjudication"


def test_enrichment_writes_a_summary_for_kept_rows_only(tiny_pool: PoolLLM) -> None:
    base = {
        "instruction": "Name a prime.",
        "domain": "Math",
        "keywords": ["prime"],
        "summary": None,
        "describe_with": [2, 2, 2],
    }
    rows = [
        {**base, "candidate_id": "k", "kept": True},
        {**base, "candidate_id": "d", "kept": False},
    ]
    step = DescribeExamples(
        name="enrich", llm=tiny_pool, where={"kept": True}, structured_max_new_tokens=200
    )
    step.load()
    kept, dup = next(step.process(rows))
    assert kept["metadata_models"] == {"domain": None, "keywords": None, "summary": "tiny#2"}
    assert kept["summary"] or kept["metadata_error"]
    assert dup["metadata_models"] is None and dup["summary"] is None
    assert kept["keywords"] == ["prime"] and kept["domain"] == "Math"  # not relabelled


def test_dedup_step_orders_by_score_and_compares_with_the_pool() -> None:
    e = np.eye(4)
    near = (e[0] + 0.05 * e[1]).tolist()
    rows = [
        {"candidate_id": "c0", "kept": None, "review_mean": 8.0, "embedding": e[0].tolist()},
        {"candidate_id": "c1", "kept": None, "review_mean": 9.0, "embedding": near},
        {"candidate_id": "c2", "kept": None, "review_mean": 9.5, "embedding": e[2].tolist()},
        {
            "candidate_id": "c3",
            "kept": False,
            "drop_stage": "response_review",
            "review_mean": 2.0,
            "embedding": None,
        },
    ]
    pool = [{"pool_id": "seed-000001", "embedding": (e[2] + 0.01 * e[3]).tolist()}]
    step = DeduplicateSamples(name="dedup", threshold=0.9)
    step.load()
    out = {r["candidate_id"]: r for r in next(step.process(rows, pool))}
    assert [out[c]["kept"] for c in ("c0", "c1", "c2", "c3")] == [False, True, False, False]
    assert [out[c]["drop_stage"] for c in ("c0", "c1", "c2", "c3")] == [
        "dedup",
        None,
        "dedup",
        "response_review",
    ]
    assert out["c0"]["dedup_match"] == "c1" and out["c0"]["dedup_similarity"] >= 0.9
    assert out["c0"]["drop_reason"] == f"cosine {out['c0']['dedup_similarity']:.4f} >= 0.9 with c1"
    assert out["c2"]["dedup_match"] == "seed-000001"
    assert (
        out["c1"]["dedup_match"] is None and out["c1"]["dedup_similarity"] is None
    )  # witnesses for duplicates only
    assert all("embedding" not in r for r in out.values())


def test_publish_leaves_select_order_and_type_every_round() -> None:
    from datasets import Dataset

    def row(cid: str, r: int, kept: bool) -> dict[str, Any]:
        fate = kept_columns() if kept else dropped("dedup", "dup")
        templates = {"response": "gra_response.jinja2@x"}
        texts = {"instruction": "i", "response": "o"}
        return {
            "candidate_id": cid,
            "round": r,
            **fate,
            **texts,
            "roles": {},
            "prompt_templates": templates,
        }

    this_round = [row("r2-1", 2, True), row("r2-0", 2, False)]
    earlier = [row("r1-1", 1, True), row("r1-0", 1, True), row("r1-2", 1, False)]

    def publish(**kwargs: Any) -> list[dict[str, Any]]:
        step = PublishCandidates(name="leaf", **kwargs)
        step.load()
        return next(step.process(this_round, earlier))

    every = publish(select="kept")
    assert [r["candidate_id"] for r in every] == ["r1-0", "r1-1", "r2-1"]
    assert [r["candidate_id"] for r in publish(select="kept", round_index=2)] == ["r2-1"]
    rejected = publish(select="rejected")
    assert [r["candidate_id"] for r in rejected] == ["r1-2", "r2-0"]
    assert every[0]["messages"] == [
        {"role": "user", "content": "i"},
        {"role": "assistant", "content": "o"},
    ]
    assert "roles" not in every[0]  # working columns stay inside the pipeline
    data = Dataset.from_list(
        every + rejected, features=sample_features()
    )  # conformed: one schema for all
    assert (
        data[0]["prompt_templates"]["adjudication"] is None
        and data[0]["prompt_templates"]["response"]
    )


def test_a_routed_task_on_a_single_llm_sends_every_call_to_it() -> None:
    """The base does not need a pool: one model answers every Reviewer's call, in order."""
    yes = json.dumps({"reasonableness": "yes", "completeness": "yes", "clarity": "yes"})
    no = json.dumps({"reasonableness": "no", "completeness": "yes", "clarity": "yes"})
    step = ReviewInstructions(name="ri", llm=ScriptedLLM(model="one", replies=[yes, yes, no]))
    step.load()
    (row,) = next(step.process([review_row()]))
    assert [r["model"] for r in row["instruction_reviews"]] == ["one"] * 3
    assert row["drop_reason"] == "reviewer 3 says no to reasonableness"
