"""No row lost to a token budget: a cut JSON closes, the cut field fails alone.

The closing and the parser are pure functions (tested on written text); the decoder
part runs on the real tiny random model, which never closes a string on its own, so
every string field it writes reaches its share of the budget.
"""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field

from synthalign.llms import load_llm
from synthalign.llms.closing import TRUNCATED, FieldBudget, close_json, plan_fields
from synthalign.parsing import CUT, UNWRITTEN, parse_model, parse_partial


class Questions(BaseModel):
    easy: str
    medium: str
    hard: str


class Review(BaseModel):
    feedback: str
    correctness: int = Field(ge=0, le=10)
    clarity: int = Field(ge=0, le=10)


SCHEMA = Questions.model_json_schema()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"easy": "Why is the sky bl', {"easy": "Why is the sky bl" + TRUNCATED, "medium": None, "hard": None}),
        ('{"easy": "a", "medium": "b", "ha', {"easy": "a", "medium": "b", "hard": None}),
        ('{"easy": "a", "medium": "b\\', {"easy": "a", "medium": "b" + TRUNCATED, "hard": None}),
        ('{"easy": "a", "medium": "caf\\u00', {"easy": "a", "medium": "caf" + TRUNCATED, "hard": None}),
        ('{"easy": "a",', {"easy": "a", "medium": None, "hard": None}),
        ('{"easy": "a", "medium": "b", "hard": "c"}', {"easy": "a", "medium": "b", "hard": "c"}),
    ],
)  # fmt: skip
def test_a_cut_json_closes_into_the_schema(text: str, expected: dict) -> None:
    assert json.loads(close_json(text, SCHEMA)) == expected


def test_text_that_is_not_json_is_left_for_the_parser() -> None:
    assert close_json("Sure! Here you go", SCHEMA) == "Sure! Here you go"
    assert parse_model(close_json("Sure!", SCHEMA), Questions)[1].startswith("not JSON")


def test_the_cut_field_fails_alone_and_its_siblings_survive() -> None:
    parsed = parse_partial('{"easy":"What is a loop? What is a loop' + TRUNCATED + '","medium":"Why?","hard":null}', Questions)  # fmt: skip
    assert parsed.record is None
    assert parsed.field_errors == {"easy": CUT, "hard": UNWRITTEN}
    assert parsed.values["medium"] == "Why?"
    assert parsed.values["easy"] == "What is a loop? What is a loop"
    assert "'easy' truncated" in parsed.error and "'hard' not written" in parsed.error


def test_an_allowed_cut_keeps_the_record() -> None:
    text = '{"feedback":"Clear but' + TRUNCATED + '","correctness":7,"clarity":8}'
    assert parse_model(text, Review)[0] is None
    record, error = parse_model(text, Review, frozenset({"feedback"}))
    assert error is None and record.feedback == "Clear but" and record.clarity == 8


def test_field_budget_shares_what_is_left_and_keeps_room_for_later_fields() -> None:
    plan = plan_fields(Review.model_json_schema())
    assert plan is not None and plan.strings == {"feedback"}
    budget = FieldBudget(plan, budget=100, close_tokens=3)
    fired = [budget.feed(piece) for piece in ['{"', "feedback", '": "', *["la "] * 80]]
    at = fired.index(True)  # the feedback must close while the two scores still fit
    assert fired.count(True) == 1
    assert 100 - at - 3 >= len(', "correctness": 10, "clarity": 10}')


def test_tiny_random_outputs_parse_and_keep_siblings_of_a_cut_field() -> None:
    llm = load_llm("builtin:tiny-random", max_new_tokens=64, temperature=1.0)
    llm.load()
    prompts = [
        ([{"role": "user", "content": f"Three questions on topic {i}"}], {"format": "json", "schema": SCHEMA})
        for i in range(6)
    ] + [
        ([{"role": "user", "content": f"Review answer {i}"}], {"format": "json", "schema": Review.model_json_schema()})
        for i in range(6)
    ]  # fmt: skip
    outputs = [out["generations"][0] for out in llm.generate_outputs(prompts)]
    for text in outputs[:6]:
        parsed = parse_partial(text, Questions)
        assert not (parsed.error or "").startswith(("truncated JSON", "not JSON")), text
        assert set(parsed.values) == {"easy", "medium", "hard"}
        # a random model never ends a string: every field was closed by its share, and
        # the later ones were still written
        assert all(v is not None for v in parsed.values.values()), text
    for text in outputs[6:]:
        record, error = parse_model(text, Review, frozenset({"feedback"}))
        assert error is None, text
        assert 0 <= record.correctness <= 10
