"""Keyword extraction, noise injection and corpus sampling for SynPO (fixed texts, seeded)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from synthalign.errors import SeedDataError
from synthalign.steps.keywords import (
    KeywordExtractor,
    build_generator_examples,
    keyword_list_reject_reason,
    name_words,
    pick_disjoint,
    read_paragraphs,
    sample_keyword_lists,
    split_paragraphs,
    stopwords,
)

PROMPTS = [
    "Write a short poem about the ocean at night, mentioning lighthouses and sailors.",
    "How do I sort a list of dictionaries by a key in Python?",
    "Explain photosynthesis to a child using a garden metaphor.",
    "Suggest a weeknight dinner recipe with chickpeas, spinach and garlic.",
    "John Smith asked Mary about the history of Renaissance painting in Florence.",
]

PARAGRAPHS = [
    "Glaciers move slowly downhill under their own weight, carving valleys, pushing rocks and leaving moraines behind.",
    "Coral reefs shelter about a quarter of marine species although they cover a tiny fraction of the ocean floor.",
    "Modern wind turbines use long blades shaped like aircraft wings to turn a generator that feeds the electricity grid.",
    "Composting turns kitchen scraps and garden waste into rich soil when green and brown material are balanced.",
    "Telescopes gather light with lenses or mirrors, and larger apertures reveal fainter galaxies in the night sky.",
    "Fermented foods like kimchi, yogurt and miso rely on microbes that transform sugars into acids and gases.",
    "Yesterday Will Turner and Sarah Connor toured the observatory with visiting astronomers and students.",
    "Hydroponic farms grow lettuce and herbs in nutrient solutions under lights, saving water near supermarkets.",
]


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)}


def test_extraction_drops_stopwords_and_personal_names() -> None:
    extractor = KeywordExtractor()
    keywords = extractor.extract(PROMPTS[4])
    assert keywords, "a content-rich sentence must give keywords"
    for keyword in keywords:
        assert not (_words(keyword) & {"john", "smith", "mary"}), keyword
        assert not (_words(keyword) & stopwords("en")), keyword
    assert any("renaissance" in k.lower() or "painting" in k.lower() for k in keywords)
    kept, dropped = extractor.extract_with_reasons(PROMPTS[4])
    assert kept == keywords and dropped.get("personal name", 0) >= 1


def test_name_words_use_capitalized_runs_and_sentence_starts() -> None:
    assert {"john", "smith", "mary"} <= name_words(PROMPTS[4])
    # a sentence-initial capital is no evidence of a name, and the first word of a run
    # that starts a sentence is not part of the name that follows it
    found = name_words("Art history is fun. Yesterday Will Turner met the NASA team.")
    assert found == {"will", "turner"}
    assert name_words("the rose garden and the art museum") == set()


def test_keyword_case_follows_the_text() -> None:
    keywords = KeywordExtractor().extract("Write a poem. I love the Python language and its NASA heritage.")
    assert "write" in keywords or "poem" in keywords
    assert "Write" not in keywords  # capitalized only because it starts the sentence
    assert "Python" in keywords or "Python language" in keywords


def test_pick_disjoint_never_picks_overlapping_keywords() -> None:
    import random

    picked = pick_disjoint(random.Random(0), ["short poem", "poem", "short", "ocean", "night"], 3)
    assert picked is not None and len(picked) == 3
    words = [w for k in picked for w in k.split()]
    assert len(words) == len(set(words))
    assert pick_disjoint(random.Random(0), ["short poem", "poem", "short"], 3) is None


def test_generator_examples_mix_two_own_keywords_and_one_noise_keyword() -> None:
    rows, stats = build_generator_examples(PROMPTS, seed=3)
    assert stats["examples"] == len(rows) >= 4
    for row in rows:
        prompt = PROMPTS[row["source_index"]]
        assert row["completion"] == prompt
        assert len(row["keywords"]) == 3 and len(row["prompt_keywords"]) == 2 and len(row["noise_keywords"]) == 1
        assert sorted(row["keywords"]) == sorted(row["prompt_keywords"] + row["noise_keywords"])
        for keyword in row["prompt_keywords"]:
            assert _words(keyword) <= _words(prompt), (keyword, prompt)
        noise = row["noise_keywords"][0]
        assert not _words(noise) <= _words(prompt), (noise, prompt)  # noise really is foreign
        assert any(_words(noise) <= _words(p) for i, p in enumerate(PROMPTS) if i != row["source_index"])
    again, _ = build_generator_examples(PROMPTS, seed=3)
    assert again == rows
    other, _ = build_generator_examples(PROMPTS, seed=4)
    assert other != rows


def test_generator_examples_count_prompts_without_enough_keywords() -> None:
    rows, stats = build_generator_examples(["Hi.", *PROMPTS[:3]], seed=0)
    assert stats["too_few_keywords"] == 1
    assert all(r["source_index"] != 0 for r in rows)


def test_keyword_sampling_is_seeded_and_uses_each_paragraph_once() -> None:
    rows, stats = sample_keyword_lists(PARAGRAPHS, 5, seed=7)
    assert len(rows) == stats.lists == 5
    assert len({r["paragraph_index"] for r in rows}) == 5
    for row in rows:
        assert len(row["keywords"]) == 3
        text_words = _words(PARAGRAPHS[row["paragraph_index"]])
        assert all(_words(k) <= text_words for k in row["keywords"]), row
        assert keyword_list_reject_reason(row["keywords"], PARAGRAPHS[row["paragraph_index"]]) is None
    same, _ = sample_keyword_lists(PARAGRAPHS, 5, seed=7)
    assert same == rows
    different, _ = sample_keyword_lists(PARAGRAPHS, 5, seed=8)
    assert different != rows
    # a later call skipping what the first consumed never reuses a paragraph
    rest, rest_stats = sample_keyword_lists(PARAGRAPHS, 5, seed=7, skip=stats.paragraphs_seen)
    assert not {r["paragraph_index"] for r in rest} & {r["paragraph_index"] for r in rows}
    assert rest_stats.exhausted  # only 3 paragraphs were left


def test_keyword_lists_never_contain_names_or_stopwords() -> None:
    rows, _ = sample_keyword_lists(PARAGRAPHS, len(PARAGRAPHS), seed=1)
    for row in rows:
        assert not any(_words(k) & {"will", "turner", "sarah", "connor"} for k in row["keywords"])
        assert not any(_words(k) & stopwords("en") for k in row["keywords"])
    assert keyword_list_reject_reason(["ocean", "the"]) == "stopword"
    assert keyword_list_reject_reason(["ocean", "Mary"]) == "personal name"
    assert keyword_list_reject_reason(["ocean", "Smith visited"], "John Smith visited Rome.") == "personal name"
    assert keyword_list_reject_reason(["ocean", "rose garden"]) is None


def test_read_paragraphs_from_text_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join([*PARAGRAPHS[:3], "too short"]) + "\n", encoding="utf-8")
    assert read_paragraphs(str(txt), min_words=10) == PARAGRAPHS[:3]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(json.dumps({"content": PARAGRAPHS[0] + "\n\n" + PARAGRAPHS[1]}) + "\n", encoding="utf-8")
    assert read_paragraphs(str(jsonl), text_column="content", min_words=10) == PARAGRAPHS[:2]
    with pytest.raises(SeedDataError, match="no paragraph"):
        read_paragraphs(str(txt), min_words=500)
    assert split_paragraphs("one two three\n\nfour five six seven", min_words=4) == ["four five six seven"]
