"""SynPO's filters on constructed rows, at their boundaries; the pair/improver set builders; cards."""

from __future__ import annotations

import math
from typing import Any

import pytest

from synthalign.errors import RecipeError
from synthalign.recipes import parse_recipe
from synthalign.steps.synpo import (
    flag_prompts,
    normalize_prompt,
    prompt_invalid_reason,
    repeated_ngram_fraction,
    score_gap,
    score_gap_passes,
    too_repetitive,
)

# ----------------------------------------------------------------- score gap


@pytest.mark.parametrize(
    ("high", "low", "threshold", "passes"),
    [
        # values exact in binary, so the gap equals the threshold exactly
        (0.75, 0.5, 0.25, False),  # a gap exactly at the threshold is not "more than" it
        (0.75 + 2**-20, 0.5, 0.25, True),
        (0.5 + 2**-6, 0.5, 2**-6, False),  # ~0.0156, the ArmoRM scale (0.02)
        (0.53, 0.50, 0.02, True),
        (0.51, 0.50, 0.02, False),
        (0.0, 0.0, 0.0, False),  # a tie never passes, even at threshold 0
        (0.0, -1e-9, 0.0, True),
        (0.1, 0.5, -1.0, True),  # a negative threshold lets worse chosen responses through
        (None, 0.5, 0.0, False),
        (0.5, None, 0.0, False),
        (math.nan, 0.5, 0.0, False),
        (math.inf, 0.5, 0.0, False),
    ],
)
def test_score_gap_passes_only_strictly_above_threshold(high: Any, low: Any, threshold: float, passes: bool) -> None:
    assert score_gap_passes(high, low, threshold) is passes


def test_score_gap_value() -> None:
    assert score_gap(0.75, 0.25) == 0.5
    assert score_gap(None, 1.0) is None


# ----------------------------------------------------------------- repetition


def test_repetition_fraction_at_the_fifty_percent_boundary() -> None:
    # 6 words -> 4 trigrams (a b a, b a b, a b a, b a b): 2 distinct, exactly 50% repeated
    assert repeated_ngram_fraction("a b a b a b") == 0.5
    assert not too_repetitive("a b a b a b")  # "over 50%" is dropped; 50% is kept
    # 7 words -> 5 trigrams, 2 distinct: 60% repeated
    assert repeated_ngram_fraction("a b a b a b a") == pytest.approx(0.6)
    assert too_repetitive("a b a b a b a")
    assert repeated_ngram_fraction("the cat sat on the mat today") == 0.0
    assert repeated_ngram_fraction("too short") == 0.0 and not too_repetitive(None)
    # case and punctuation do not hide a loop
    assert repeated_ngram_fraction("Go on. go, on; GO ON! go on") == repeated_ngram_fraction("go on go on go on go on")
    assert too_repetitive("x y z " * 10)
    assert not too_repetitive("x y z " * 10, max_fraction=0.95)


# -------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (None, "empty"),
        ("Why?", "too short"),
        ("Tell me now", None),
        ("ocean, lighthouse, sailors", "echoes keywords"),
        ("Keywords: ocean, lighthouse, sailors", "echoes keywords"),
        ("The ocean and the lighthouse and sailors", "echoes keywords"),
        ("Write a poem about sailors who keep an ocean lighthouse.", None),
    ],
)
def test_prompt_invalid_reason(prompt: str | None, reason: str | None) -> None:
    assert prompt_invalid_reason(prompt, ["ocean", "lighthouse", "sailors"]) == reason


def test_flag_prompts_marks_repeats_and_failures() -> None:
    prompts = [
        "Write a poem about the sea.",
        "write a poem about the SEA!",
        None,
        "Explain how tides work, please.",
        "x",
    ]
    keywords = [["sea"]] * len(prompts)
    errors = [None, None, "no output (generation failed)", None, None]
    assert flag_prompts(prompts, keywords, errors=errors) == [None, "repeated", "generation failed", None, "too short"]
    assert normalize_prompt(" Write  a poem!") == "write a poem"


# ------------------------------------------------------- set builders (no model)


def _distiset(leaves: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from datasets import Dataset

    return {name: {"train": Dataset.from_list(rows)} for name, rows in leaves.items()}


def _recipe(**overrides: Any) -> Any:
    from synthalign.pipelines.synpo import SynPORecipe

    data = {
        "policy": "builtin:tiny-random",
        "seed_data": {"source": "seed.jsonl"},
        "corpus": {"source": "corpus.txt"},
        "pairs_per_iteration": 2,
        "scorer": {"pair_threshold": 0.1, "improver_threshold": 0.2},
        **overrides,
    }
    return parse_recipe(data, SynPORecipe)


def _pair_row(i: int, chosen: str, rejected: str, s_c: float | None, s_r: float | None, **extra: Any) -> dict[str, Any]:
    return {
        "keywords": ["a", "b", "c"], "paragraph_index": i, "prompt": f"prompt {i} about things",
        "response_policy": rejected, "response_improved": chosen, "score_chosen": s_c, "score_rejected": s_r,
        "policy_error": None, "improver_error": None, "scoring_error": None, "scorer": "reward_model:x", **extra,
    }  # fmt: skip


def test_pair_sets_filter_count_and_sample() -> None:
    from synthalign.pipelines.synpo import make_dataset, pair_sets

    prompts = [
        {"keywords": ["a"], "paragraph_index": i, "prompt": p, "prompt_invalid": r, "prompt_gen_error": None,
         "prompt_gen_model": "g", "prompt_gen_prompt": "t@1"}
        for i, (p, r) in enumerate([("ok one two", None), ("", "empty"), ("dup", "repeated"), ("ok three four", None)])
    ]  # fmt: skip
    loop = "again and again " * 6
    scored = [
        _pair_row(0, "a fine improved answer here", "a plain answer", 0.9, 0.5),  # passes
        _pair_row(1, "another improved answer text", "plain", 0.6, 0.5),  # gap exactly 0.1: dropped
        _pair_row(2, loop, "plain answer words", 0.9, 0.1),  # repetitive chosen: dropped
        _pair_row(3, "improved once more text", "plain answer", None, 0.1),  # not scored
        _pair_row(4, None, "plain answer", None, None, improver_error="empty output"),
        _pair_row(5, "improved answer number five", "plain answer five", 0.95, 0.2),  # passes
        _pair_row(6, "improved answer number six", "plain answer six", 0.99, 0.1),  # passes
    ]
    models = {"generator": "g", "policy": "p", "initial": "i", "improver": "m"}
    sets, stats = pair_sets(
        _distiset({"all_prompts": prompts, "score_pairs": scored}), _recipe(), iteration=3,
        rejected_from="policy", rejected_column="response_policy", models=models,
    )  # fmt: skip
    funnel = stats["funnel"]
    assert funnel == {
        "keyword lists": 4, "prompts generated": 4, "valid prompts": 2, "candidates scored": 7,
        "score gap passed": 4, "repetition passed": 3, "pairs sampled": 2,
    }  # fmt: skip
    assert stats["invalid_prompts"] == {"empty": 1, "repeated": 1}
    reasons = [c["filter_reason"] for c in sets["candidates"]]
    assert reasons[1] == "score gap <= 0.1" and reasons[2].startswith("over 50%")
    assert reasons[3] == "not scored" and reasons[4] == "improvement failed"
    assert sorted(reasons[i] or "kept" for i in (0, 5, 6)).count("not sampled") == 1
    pairs = sets["pairs"]
    assert len(pairs) == 2
    for pair in pairs:
        assert pair["prompt"] == [{"role": "user", "content": pair["prompt"][0]["content"]}]
        assert pair["chosen"][0]["role"] == "assistant" and pair["rejected"][0]["role"] == "assistant"
        assert pair["score_gap"] > 0.1 and pair["iteration"] == 3 and pair["rejected_model"] == "p"
        assert pair["prompt_template"].startswith("synpo_keywords_to_prompt.jinja2@")
    again, _ = pair_sets(
        _distiset({"all_prompts": prompts, "score_pairs": scored}), _recipe(), iteration=3,
        rejected_from="policy", rejected_column="response_policy", models=models,
    )  # fmt: skip
    assert again["pairs"] == pairs  # seeded sample
    for name, kind in (("pairs", "pairs"), ("candidates", "candidates"), ("prompts", "prompts")):
        assert len(make_dataset(sets[name], kind)) == len(sets[name])


def test_pair_sets_with_nothing_generated_is_an_empty_outcome() -> None:
    from synthalign.pipelines.synpo import pair_sets

    sets, stats = pair_sets(
        _distiset({}), _recipe(), iteration=1, rejected_from="initial", rejected_column="response_policy",
        models={"generator": "g", "policy": "p", "initial": "i", "improver": "m"},
    )  # fmt: skip
    assert sets == {"prompts": [], "candidates": [], "pairs": []}
    assert stats["funnel"]["pairs sampled"] == 0


def test_improver_set_keeps_gold_only_when_it_wins_by_more_than_the_threshold() -> None:
    from synthalign.pipelines.synpo import improver_sets

    rows = [
        {"prompt": "p1", "response": "gold one", "response_policy": "mine one", "score_gold": 0.9, "score_policy": 0.5,
         "policy_error": None, "scoring_error": None, "policy_model": "pol", "scorer": "rm"},
        {"prompt": "p2", "response": "gold two", "response_policy": "mine two", "score_gold": 0.7, "score_policy": 0.5,
         "policy_error": None, "scoring_error": None, "policy_model": "pol", "scorer": "rm"},
        {"prompt": "p3", "response": "gold three", "response_policy": None, "score_gold": 0.7, "score_policy": None,
         "policy_error": "empty output", "scoring_error": "no response_policy to score", "policy_model": "pol", "scorer": "rm"},
    ]  # fmt: skip
    kept, candidates, funnel = improver_sets(_distiset({"default": rows}), _recipe(), iteration=1)
    assert funnel == {"seed prompts": 3, "kept": 1, "gold - policy <= 0.2": 1, "policy answer failed": 1}
    assert len(kept) == 1 and len(candidates) == 3
    example = kept[0]["messages"]
    assert example[0]["role"] == "user" and "mine one" in example[0]["content"] and "p1" in example[0]["content"]
    assert example[1] == {"role": "assistant", "content": "gold one"}


# ------------------------------------------------------------------- recipes


def test_recipe_sections_reject_loop_owned_keys_and_double_gamma() -> None:
    with pytest.raises(RecipeError, match="set by the synpo loop"):
        _recipe(generator_training={"model": "x"})
    with pytest.raises(RecipeError, match="simpo_gamma"):
        _recipe(simpo_training={"simpo_gamma": 1.0, "gamma_beta_ratio": 0.5})
    with pytest.raises(RecipeError, match="did you mean 'pair_threshold'"):
        _recipe(scorer={"pair_treshold": 0.1})
    recipe = _recipe(simpo_training={"beta": 2.0, "gamma_beta_ratio": 0.8})
    assert recipe.simpo_training.gamma == pytest.approx(1.6)  # TRL's absolute gamma
    assert _recipe().simpo_training.gamma == pytest.approx(1.0)  # SimPO default: 0.5 * beta 2.0


def test_shipped_recipes_load() -> None:
    from pathlib import Path

    from synthalign.pipelines.synpo import SynPORecipe
    from synthalign.recipes import load_recipe

    recipes = Path(__file__).resolve().parents[1] / "pipelines" / "recipes"
    paper = load_recipe(recipes / "synpo.yaml", SynPORecipe)
    assert paper.prompts_per_iteration == 50_000 and paper.pairs_per_iteration == 10_000
    assert paper.seed_data.limit == 18_000 and paper.scorer.pair_threshold == 0.02
    assert paper.simpo_training.beta == 2.0 and paper.simpo_training.gamma == 1.0
    assert paper.filters.max_repetition == 0.5
    quick = load_recipe(recipes / "synpo-quickstart.yaml", SynPORecipe)
    assert quick.policy == "builtin:tiny-random" and quick.scorer.model == "builtin:tiny-reward"


# --------------------------------------------------------------------- cards


def test_cards_render_funnel_and_gap_histogram() -> None:
    from synthalign.cards.synpo import build_card
    from synthalign.pipelines.synpo import make_dataset

    pair = {
        "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}], "keywords": ["a", "b", "c"], "score_gap": 0.3,
        "iteration": 1,
    }  # fmt: skip
    prefs = make_dataset([pair, {**pair, "iteration": 2, "score_gap": 0.5}], "pairs")
    funnels = {"1": {"keyword lists": 10, "pairs sampled": 1}, "2": {"keyword lists": 10, "pairs sampled": 1}}
    card = build_card({"preferences": prefs}, {"stage": "preferences", "iteration": 2, "funnels": funnels,
                                              "per_iteration": {"1": 1, "2": 1}, "pair_threshold": 0.02})  # fmt: skip
    assert set(card.figures) == {"funnel.png", "score_gap_histogram.png"}
    assert all(png.startswith(b"\x89PNG") for png in card.figures.values())
    assert "iteration 2" in card.body and card.metadata["tags"][:3] == ["synthetic", "synthalign", "synpo"]
    candidates = make_dataset([{"score_gap": 0.1, "filter_reason": None}, {"score_gap": None, "filter_reason": "x"}], "candidates")
    pairs_card = build_card({"pairs": prefs, "candidates": candidates}, {"stage": "pairs"})
    assert set(pairs_card.figures) == {"funnel.png", "score_gap_histogram.png"}
