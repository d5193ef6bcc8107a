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
from synthalign.steps.synpo_data import (
    BuildGeneratorExamples,
    LoadPairs,
    SampleKeywordLists,
    read_seed_examples,
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
    keywords = KeywordExtractor().extract(
        "Write a poem. I love the Python language and its NASA heritage."
    )
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
        assert (
            len(row["keywords"]) == 3
            and len(row["prompt_keywords"]) == 2
            and len(row["noise_keywords"]) == 1
        )
        assert sorted(row["keywords"]) == sorted(row["prompt_keywords"] + row["noise_keywords"])
        for keyword in row["prompt_keywords"]:
            assert _words(keyword) <= _words(prompt), (keyword, prompt)
        noise = row["noise_keywords"][0]
        assert not _words(noise) <= _words(prompt), (noise, prompt)  # noise really is foreign
        assert any(
            _words(noise) <= _words(p) for i, p in enumerate(PROMPTS) if i != row["source_index"]
        )
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
        assert (
            keyword_list_reject_reason(row["keywords"], PARAGRAPHS[row["paragraph_index"]]) is None
        )
    same, _ = sample_keyword_lists(PARAGRAPHS, 5, seed=7)
    assert same == rows
    different, _ = sample_keyword_lists(PARAGRAPHS, 5, seed=8)
    assert different != rows
    positions = [r["paragraph_position"] for r in rows]
    assert positions == sorted(positions) and positions[-1] + 1 == stats.paragraphs_seen
    # a later call skipping what the first consumed never reuses a paragraph
    rest, rest_stats = sample_keyword_lists(PARAGRAPHS, 5, seed=7, skip=positions[-1] + 1)
    assert not {r["paragraph_index"] for r in rest} & {r["paragraph_index"] for r in rows}
    assert rest_stats.exhausted  # only 3 paragraphs were left


def test_keyword_lists_never_contain_names_or_stopwords() -> None:
    rows, _ = sample_keyword_lists(PARAGRAPHS, len(PARAGRAPHS), seed=1)
    for row in rows:
        assert not any(_words(k) & {"will", "turner", "sarah", "connor"} for k in row["keywords"])
        assert not any(_words(k) & stopwords("en") for k in row["keywords"])
    assert keyword_list_reject_reason(["ocean", "the"]) == "stopword"
    assert keyword_list_reject_reason(["ocean", "Mary"]) == "personal name"
    assert (
        keyword_list_reject_reason(["ocean", "Smith visited"], "John Smith visited Rome.")
        == "personal name"
    )
    assert keyword_list_reject_reason(["ocean", "rose garden"]) is None


def test_read_paragraphs_from_text_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n".join([*PARAGRAPHS[:3], "too short"]) + "\n", encoding="utf-8")
    assert read_paragraphs(str(txt), min_words=10) == PARAGRAPHS[:3]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(
        json.dumps({"content": PARAGRAPHS[0] + "\n\n" + PARAGRAPHS[1]}) + "\n", encoding="utf-8"
    )
    assert read_paragraphs(str(jsonl), text_column="content", min_words=10) == PARAGRAPHS[:2]
    with pytest.raises(SeedDataError, match="no paragraph"):
        read_paragraphs(str(txt), min_words=500)
    assert split_paragraphs("one two three\n\nfour five six seven", min_words=4) == [
        "four five six seven"
    ]


# ------------------------------------------------- the steps that read SynPO's sources


def test_sample_keyword_lists_step_skips_consumed_paragraphs_and_starts_over(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(PARAGRAPHS) + "\n", encoding="utf-8")
    options = {"source": str(corpus), "min_words": 10, "num_lists": 4, "seed": 7, "batch_size": 3}
    first = SampleKeywordLists(name="sample", **options)
    batches = list(first.process())
    assert [len(b) for b, _ in batches] == [3, 1] and [last for _, last in batches] == [False, True]
    rows = [r for b, _ in batches for r in b]
    assert set(rows[0]) == {"keywords", "paragraph_index", "paragraph_position"}
    skip = rows[-1]["paragraph_position"] + 1
    rest = SampleKeywordLists(name="sample", **options, skip=skip).sample()
    assert not {r["paragraph_index"] for r in rest} & {r["paragraph_index"] for r in rows}
    # the corpus is used up: sampling starts over rather than stopping
    assert (
        SampleKeywordLists(name="sample", **options, skip=len(PARAGRAPHS)).sample()
        == first.sample()
    )
    with pytest.raises(SeedDataError, match="no keyword list"):
        SampleKeywordLists(name="sample", **{**options, "per_list": 12}).sample()


def test_seed_examples_take_the_first_exchange_or_two_columns(tmp_path: Path) -> None:
    chats = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": " Hi? "}, {"role": "assistant", "content": "Hello."}]},
        {"messages": [{"role": "user", "content": "No answer"}]},
        {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}, {"role": "user", "content": "more"}]},
    ]  # fmt: skip
    chats.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert read_seed_examples(str(chats)) == [
        {"prompt": "Hi?", "response": "Hello.", "seed_index": 0},
        {"prompt": "Q2", "response": "A2", "seed_index": 1},
    ]
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"q": "Why?", "a": "Because."}) + "\n", encoding="utf-8")
    assert (
        read_seed_examples(str(flat), prompt_column="q", response_column="a")[0]["response"]
        == "Because."
    )
    unanswered = tmp_path / "unanswered.jsonl"
    unanswered.write_text(json.dumps(rows[1]) + "\n", encoding="utf-8")
    with pytest.raises(SeedDataError, match="no row has a user prompt"):
        read_seed_examples(str(unanswered))


def test_generator_examples_step_keeps_the_seed_index() -> None:
    rows = [{"prompt": p, "seed_index": i} for i, p in enumerate(PROMPTS)]
    examples = next(BuildGeneratorExamples(name="build", seed=3).process(rows[::-1]))
    expected, _ = build_generator_examples(PROMPTS, seed=3)
    assert examples == expected  # arrival order does not matter


def test_load_pairs_reads_a_config_of_each_folder(tmp_path: Path) -> None:
    from datasets import Dataset

    for k in (1, 2):
        folder = tmp_path / f"iter-{k}" / "pairs" / "data" / "pairs"
        folder.mkdir(parents=True)
        Dataset.from_dict({"prompt": [f"p{k}"] * k, "iteration": [k] * k}).to_parquet(
            str(folder / "train-00000-of-00001.parquet")
        )
    folders = [str(tmp_path / f"iter-{k}" / "pairs") for k in (1, 2)]
    batches = list(
        LoadPairs(name="load", folders=folders, columns=["iteration"], batch_size=2).process()
    )
    assert [b for b, _ in batches] == [[{"iteration": 1}, {"iteration": 2}], [{"iteration": 2}]]
    assert list(LoadPairs(name="load", folders=[], columns=["iteration"]).process()) == [([], True)]
