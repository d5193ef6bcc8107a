"""The diversity report every card carries (cards/diversity.py), on real MiniLM embeddings."""

from __future__ import annotations

import json
import re
from pathlib import Path

from datasets import Dataset

from synthalign.cards.diversity import distinct_n, diversity_section, prompts_and_answers

CHAT = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in [
        (
            "How do vaccines train the immune system?",
            "They show it a harmless piece of a pathogen.",
        ),
        (
            "How do vaccines train the immune system?",
            "They show it a harmless piece of a pathogen.",
        ),
        ("Write a haiku about autumn rain.", "Cold rain on red leaves."),
        ("What is the capital of Australia?", "Canberra."),
    ]
]


def test_distinct_n_counts_unique_ngrams() -> None:
    assert distinct_n(["a b a b"], 1) == 0.5  # {a, b} of 4 words
    assert distinct_n(["a b a b"], 2) == 2 / 3  # {ab, ba} of 3 bigrams
    assert distinct_n([], 2) == 0.0


def test_prompts_and_answers_read_every_trl_format() -> None:
    sft = Dataset.from_list(CHAT[:1])
    pref = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "p"}],
                "chosen": [{"role": "assistant", "content": "c"}],
                "rejected": [],
            }
        ]
    )
    plain = Dataset.from_list([{"instruction": "i", "response": "r"}])
    assert prompts_and_answers(sft) == (
        ["How do vaccines train the immune system?"],
        ["They show it a harmless piece of a pathogen."],
    )
    assert prompts_and_answers(pref) == (["p"], ["c"])
    assert prompts_and_answers(plain) == (["i"], ["r"])


def test_section_reports_duplicates_seed_coverage_and_category_spread(tmp_path: Path) -> None:
    rows = [
        {**row, "domain": d}
        for row, d in zip(CHAT, ["Science", "Science", "Creation", "QA"], strict=True)
    ]
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "\n".join(
            json.dumps({"prompt": p})
            for p in ["How do vaccines work?", "Explain quantum tunnelling to a child."]
        )
    )
    info = {"seed": 0, "recipe": {"seed_data": {"source": str(seeds), "prompt_column": "prompt"}}}
    body, figures = diversity_section({"train": Dataset.from_list(rows)}, "train", info)
    assert "| rows measured | 4 of 4 (config `train`) |" in body
    table = dict(re.findall(r"^\| (.+?) \| (.+?) \|$", body, re.M))
    assert (
        float(table["output: median nearest-neighbour cosine"]) > 0.5
    )  # the planted duplicate pair
    assert (
        table["seed prompts with an output prompt within cosine 0.5"] == "50.0%"
    )  # vaccines, not tunnelling
    assert "spread over domain (normalized entropy, 3 values)" in body
    assert list(figures) == ["diversity_nearest.png", "diversity_spread.png"]
    assert all(png.startswith(b"\x89PNG") for png in figures.values())
    assert "![rows per category](figures/diversity_spread.png)" in body


def test_section_without_prompts_says_so() -> None:
    body, figures = diversity_section({"x": Dataset.from_list([{"a": 1}])}, "x", {})
    assert "Not measured" in body and figures == {}
