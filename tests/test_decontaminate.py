"""Decontamination: planted evaluation items are caught, by n-gram and by embedding.

The evaluation sets are small files shipped in ``tests/data/evalsets`` (written for
these tests); the embedding check runs the built-in MiniLM for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from pydantic import ValidationError

from synthalign.cards.decontamination import decontamination_section
from synthalign.errors import RecipeError
from synthalign.recipes import Decontaminate, EvalSet
from synthalign.steps.decontaminate import DecontaminateRows, EvalIndex, load_eval_items

EVALSETS = Path(__file__).parent / "data" / "evalsets"
ARITH = EVALSETS / "mini_arith.jsonl"
FACTS = EVALSETS / "mini_facts.jsonl"


def _items(path: Path, column: str) -> list[str]:
    return [json.loads(line)[column] for line in path.read_text().splitlines()]


def test_a_shared_13_gram_matches_and_12_words_do_not() -> None:
    index = EvalIndex(13)
    item = _items(ARITH, "question")[0]
    index.add("mini_arith", [item])
    words = item.split()
    planted = "Here is a puzzle for you. " + " ".join(words[2:15]) + " Think it through."
    assert index.match(planted) == (0, 0)
    assert index.match("Consider: " + " ".join(words[2:14]) + " and more.") is None


def test_a_short_item_must_appear_whole_and_a_tiny_one_never_matches() -> None:
    index = EvalIndex(13)
    short = "Why does ice float on liquid water?"  # 7 words: below MIN_WORDS, ignored
    medium = "Name the largest ocean on Earth and describe its floor"  # 10 words
    index.add("facts", [short, medium])
    assert index.match(f"Quiz: {medium.lower()}, please.") == (0, 1)
    assert index.match("Name the largest ocean on Earth and describe it") is None
    assert index.match(short) is None


def test_recipe_block_reads_source_split_column_strings() -> None:
    block = Decontaminate.model_validate(
        {"against": [f"{ARITH}:test:question", "org/bench", {"source": str(FACTS)}]}
    )
    arith, hub, facts = block.against
    assert (arith.source, arith.split, arith.column) == (str(ARITH), "test", "question")
    assert (hub.source, hub.split, hub.column, hub.name) == (
        "org/bench",
        "test",
        None,
        "org/bench:test",
    )
    assert (facts.name, block.ngram, block.action, block.embedding_threshold) == (
        "mini_facts",
        13,
        "drop",
        0.9,
    )
    with pytest.raises(ValidationError, match="'drop' or 'flag'"):
        Decontaminate.model_validate({"against": [str(ARITH)], "action": "remove"})
    with pytest.raises(ValidationError, match="at least 1 item"):
        Decontaminate.model_validate({"against": []})


def test_unreadable_sets_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"decontaminate.against nowhere: seed file .* not found"):
        load_eval_items(EvalSet(source=str(tmp_path / "nowhere.jsonl")))
    with pytest.raises(
        RecipeError, match=r"no text column answer_text; it has \['answer', 'question'\]"
    ):
        load_eval_items(EvalSet(source=str(ARITH), column="answer_text"))
    assert len(load_eval_items(EvalSet(source=str(ARITH)))) == 8  # `question` found by itself


def _rows() -> list[dict[str, object]]:
    arith = _items(ARITH, "question")
    return [
        {"instruction": "Write a haiku about autumn leaves.", "response": "Red leaves drift down."},
        {"instruction": arith[3], "response": "Twelve hours."},  # verbatim
        {
            "instruction": "Give me a short fact.",
            "response": [
                {"role": "assistant", "content": "In total, how many legs does a spider have?"}
            ],
        },  # a paraphrase of a mini_facts item, inside a chat column
        {"instruction": "Explain tides.", "response": "The Moon pulls the oceans.", "kept": False},
    ]


@pytest.mark.parametrize("action", ["drop", "flag"])
def test_planted_rows_are_caught_and_dropped_or_flagged(action: str) -> None:
    step = DecontaminateRows(
        name="decontaminate",
        columns=["instruction", "response"],
        against=[EvalSet(source=str(ARITH)), EvalSet(source=str(FACTS))],
        embedding_threshold=0.8,
        action=action,
        set_drop=True,
    )
    step.load()
    try:
        clean, verbatim, paraphrase, already_out = next(step.process(_rows()))
    finally:
        step.unload()
    assert clean["contamination"] is None and clean["kept"] is True
    assert (verbatim["contamination"], verbatim["contamination_kind"]) == ("mini_arith", "ngram")
    assert verbatim["contamination_item"].startswith("A water tank holds 840 litres")
    assert (paraphrase["contamination"], paraphrase["contamination_kind"]) == (
        "mini_facts",
        "embedding",
    )
    assert 0.8 <= paraphrase["contamination_score"] <= 1.0
    if action == "drop":
        assert (verbatim["kept"], verbatim["drop_stage"], verbatim["drop_reason"]) == (
            False,
            "decontaminate",
            "contaminated: mini_arith",
        )
    else:
        assert verbatim["kept"] is True and paraphrase["kept"] is True
    assert already_out["kept"] is False and already_out["drop_stage"] is None


def test_embedding_check_can_be_turned_off() -> None:
    step = DecontaminateRows(
        name="decontaminate",
        columns=["instruction", "response"],
        against=[EvalSet(source=str(FACTS))],
        embedding_threshold=None,
    )
    step.load()
    rows = next(step.process(_rows()))
    assert [r["contamination"] for r in rows] == [None] * 4
    assert "kept" not in rows[0], "without set_drop the step leaves the drop columns alone"


def test_card_section_counts_matches_per_set_or_says_not_checked() -> None:
    rows = Dataset.from_list(
        [
            {"contamination": "mini_arith", "contamination_kind": "ngram"},
            {"contamination": "mini_arith", "contamination_kind": "embedding"},
            {"contamination": "mini_facts", "contamination_kind": "ngram"},
            {"contamination": None, "contamination_kind": None},
        ]
    )
    recipe = {"decontaminate": {"against": [str(ARITH), str(FACTS)], "action": "flag"}}
    text = decontamination_section({"all": rows}, ["all"], {"recipe": recipe})
    assert "of the 4 rows considered was checked against 2 evaluation set(s)" in text
    assert "| mini_arith | 1 | 1 |" in text and "| mini_facts | 1 | 0 |" in text
    assert "3 row(s) matched and were published, flagged" in text
    assert "Not checked" in decontamination_section({"all": rows}, ["all"], {"recipe": {}})
