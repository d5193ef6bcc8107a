"""Scoring: the tau map, reward-model batching, and judge verdicts that fail loudly."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import Field

from synthalign.llms.base import Completion, SynthLLM
from synthalign.steps.scoring import (
    JUDGE_SCALES,
    RewardModelScorer,
    ScoreWithJudge,
    as_conversation,
    preference_probability,
)

# ----------------------------------------------------------------------------- tau


def test_tau_is_the_logistic_of_the_score_gap() -> None:
    assert preference_probability(1.0, 1.0) == 0.5
    assert preference_probability(2.0, 0.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert preference_probability(0.0, 2.0) == pytest.approx(1 / (1 + math.exp(2)))
    # symmetric: swapping the pair gives the complement
    assert preference_probability(3.0, 1.5) + preference_probability(1.5, 3.0) == pytest.approx(1.0)


def test_tau_is_monotone_and_bounded_even_for_huge_gaps() -> None:
    gaps = [-1e6, -50.0, -3.0, -0.5, 0.0, 0.5, 3.0, 50.0, 1e6]
    taus = [preference_probability(g, 0.0) for g in gaps]
    assert all(0.0 <= t <= 1.0 for t in taus)
    assert taus == sorted(taus)
    assert taus[0] == 0.0 and taus[-1] == 1.0  # no overflow


def test_temperature_softens_and_sharpens() -> None:
    base = preference_probability(1.0, 0.0)
    assert (
        preference_probability(1.0, 0.0, temperature=4.0)
        < base
        < preference_probability(1.0, 0.0, temperature=0.25)
    )
    assert preference_probability(2.0, 0.0, temperature=2.0) == pytest.approx(base)
    with pytest.raises(ValueError):
        preference_probability(1.0, 0.0, temperature=0.0)


def test_clip_bounds_tau() -> None:
    assert preference_probability(100.0, 0.0, clip=(0.05, 0.95)) == 0.95
    assert preference_probability(-100.0, 0.0, clip=(0.05, 0.95)) == 0.05
    assert preference_probability(0.3, 0.0, clip=(0.05, 0.95)) == pytest.approx(
        1 / (1 + math.exp(-0.3))
    )
    with pytest.raises(ValueError):
        preference_probability(1.0, 0.0, clip=(0.6, 0.4))


def test_tie_policies_and_missing_scores() -> None:
    assert preference_probability(2.0, 2.0, tie="keep") == 0.5
    assert preference_probability(2.0, 2.0, tie="drop") is None
    assert preference_probability(2.0, 1.0, tie="drop") == pytest.approx(1 / (1 + math.exp(-1)))
    assert preference_probability(None, 1.0) is None
    assert preference_probability(1.0, float("nan")) is None
    with pytest.raises(ValueError):
        preference_probability(1.0, 0.0, tie="maybe")  # type: ignore[arg-type]


# ------------------------------------------------------------------ reward model


@pytest.fixture(scope="module")
def tiny_scorer() -> RewardModelScorer:
    return RewardModelScorer("builtin:tiny-reward", batch_size=8)


def _varied_conversations() -> list[list[dict[str, str]]]:
    return [
        as_conversation("Hi.", "Hello."),
        as_conversation(
            "Explain the history of science and music in detail. " * 30, "A long answer. " * 40
        ),
        as_conversation("What is 2 + 2?", "4", system="Answer tersely."),
        as_conversation([{"role": "user", "content": "a question about code"}], "some code " * 12),
        as_conversation("Tell me a story. " * 8, "Once upon a time."),
    ]


def test_batched_reward_scores_equal_one_at_a_time(tiny_scorer: RewardModelScorer) -> None:
    conversations = _varied_conversations()
    lengths = [len(tiny_scorer.encode(c)) for c in conversations]
    assert max(lengths) > 10 * min(lengths)  # the batch really mixes very different lengths
    batched = tiny_scorer.score(conversations)
    alone = [tiny_scorer.score([c])[0] for c in conversations]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert len(set(round(s, 6) for s in batched)) > 1  # the scores are not all the same number


@pytest.mark.parametrize("side", ["left", "right"])
def test_forced_padding_sides_also_agree_on_a_last_non_pad_head(
    side: str, tiny_scorer: RewardModelScorer
) -> None:
    """Llama's head pools the rightmost non-pad token, so both sides are valid for it."""
    conversations = _varied_conversations()
    alone = [tiny_scorer.score([c])[0] for c in conversations]
    tiny_scorer.padding_side, probed = side, tiny_scorer.padding_side
    try:
        assert tiny_scorer.score(conversations) == pytest.approx(alone, abs=1e-4)
    finally:
        tiny_scorer.padding_side = probed


def test_probe_picks_a_side_that_reproduces_solo_scores(tiny_scorer: RewardModelScorer) -> None:
    assert tiny_scorer.padding_side in ("left", "right")
    assert tiny_scorer._probe_padding_side() == tiny_scorer.padding_side


# ------------------------------------------------------------------------- judge


class CannedLLM(SynthLLM):
    """Returns fixed replies in order: a judge whose output the test controls."""

    replies: list[str]
    seen: list[tuple[Any, Any]] = Field(default_factory=list)

    def load(self) -> None:
        super().load()

    def _generate_batch(
        self, conversations: list, schemas: list, **kwargs: Any
    ) -> list[Completion]:
        self.seen.extend(zip(conversations, schemas, strict=True))
        return [
            Completion(self.replies[i % len(self.replies)], 1, 1) for i in range(len(conversations))
        ]


def _judge(replies: list[str], scale: str = "0-5", **kwargs: Any) -> ScoreWithJudge:
    lo, hi = JUDGE_SCALES[scale]
    llm = CannedLLM(model="canned-judge", replies=replies)
    judge = ScoreWithJudge(
        name="judge", llm=llm, rubric="Be objective.", scale_min=lo, scale_max=hi, **kwargs
    )
    judge.load()
    return judge


def test_judge_reads_the_labelled_field_and_keeps_negative_scores() -> None:
    judge = _judge(
        ['{"rationale": "It cites 3 studies and scores 5 on clarity.", "score": -4}'], scale="-5..5"
    )
    cols = judge.judge_columns("score_revised", judge.llm.replies[0])
    assert cols["score_revised"] == -4  # not the 3 or the 5 in the rationale
    assert cols["judge_revised_error"] is None and cols["judge_revised_raw"] is None
    assert cols["judge_revised_rationale"].startswith("It cites")
    assert cols["judge_revised_prompt"].startswith("rdpo_judge.jinja2@")


@pytest.mark.parametrize(
    ("raw", "scale", "expected"),
    [
        ('{"rationale": "fine", "score": 7}', "0-5", "out of scale: 7 not in [0, 5]"),
        ('{"rationale": "fine", "score": -1}', "0/1", "out of scale: -1 not in [0, 1]"),
        ('{"rationale": "fine"}', "0-5", "schema: score"),
        ('{"rationale": "fine", "score": "high"}', "0-5", "schema: score"),
        ("I would give it a 4.", "0-5", "not JSON"),
        ('{"rationale": "fine", "sco', "0-5", "truncated JSON"),
        ("", "0-5", "empty output"),
    ],
)
def test_bad_verdicts_are_recorded_errors_not_scores(raw: str, scale: str, expected: str) -> None:
    judge = _judge([raw], scale=scale)
    cols = judge.judge_columns("score_original", raw)
    assert cols["score_original"] is None
    assert cols["judge_original_error"].startswith(expected)
    assert cols["judge_original_raw"] == raw


def test_judge_step_scores_both_responses_in_one_call_with_the_scale_in_the_schema() -> None:
    replies = ['{"rationale": "ok", "score": 1}', '{"rationale": "bad", "score": 9}']
    judge = _judge(replies, scale="0/1", system_column="system")
    rows = [
        {
            "prompt": "q1",
            "system": "You are Ada.",
            "response_original": "a",
            "response_revised": "b",
        },
        {"prompt": "q2", "system": None, "response_original": None, "response_revised": "c"},
    ]
    (out,) = list(judge.process(rows))
    assert len(judge.llm.seen) == 3  # the missing response was never sent
    chat, schema = judge.llm.seen[0]
    assert (
        schema["properties"]["score"]["minimum"] == 0
        and schema["properties"]["score"]["maximum"] == 1
    )
    assert "You are Ada." in chat[-1]["content"] and "Be objective." in chat[0]["content"]
    assert out[0]["score_original"] == 1 and out[0]["judge_original_error"] is None
    assert out[0]["score_revised"] is None and out[0]["judge_revised_error"].startswith(
        "out of scale"
    )
    assert out[1]["judge_original_error"] == "no response_original to judge"
    assert out[1]["score_revised"] == 1
    assert out[0]["scorer"] == "judge:canned-judge"
    assert set(judge.outputs) <= set(out[0])
