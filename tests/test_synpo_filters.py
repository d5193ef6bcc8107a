"""SynPO without a model: filters at their boundaries, the steps that keep rows, recipes, states, cards."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from synthalign.cards.synpo import PAIR_LABELS, build_card, stage_funnel
from synthalign.contract import Progress, State
from synthalign.errors import RecipeError
from synthalign.pipelines.synpo import SynPORecipe, first_state, next_state
from synthalign.recipes import load_recipe, parse_recipe
from synthalign.steps.synpo import (
    FlagInvalidPrompts,
    flag_prompts,
    normalize_prompt,
    prompt_invalid_reason,
    repeated_ngram_fraction,
    score_gap,
    score_gap_passes,
    too_repetitive,
)
from synthalign.steps.synpo_publish import (
    PAIR_STAGES,
    ImproverCandidates,
    ImproverRows,
    JudgeImproverRows,
    PairCandidates,
    PairRows,
    PromptRows,
    SelectPairs,
)

RECIPES = Path(__file__).resolve().parents[1] / "pipelines" / "recipes"

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
def test_score_gap_passes_only_strictly_above_threshold(
    high: Any, low: Any, threshold: float, passes: bool
) -> None:
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
    assert repeated_ngram_fraction("Go on. go, on; GO ON! go on") == repeated_ngram_fraction(
        "go on go on go on go on"
    )
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
    assert flag_prompts(prompts, keywords, errors=errors) == [
        None,
        "repeated",
        "generation failed",
        None,
        "too short",
    ]
    assert normalize_prompt(" Write  a poem!") == "write a poem"


def test_flag_step_marks_prompts_with_the_drop_convention() -> None:
    rows = [
        {"keywords": ["sea"], "prompt": "Write a poem about the sea.", "prompt_gen_error": None},
        {"keywords": ["sea"], "prompt": "write a poem about the SEA!", "prompt_gen_error": None},
        {"keywords": ["sea"], "prompt": None, "prompt_gen_error": "no output (generation failed)"},
    ]
    flagged = next(FlagInvalidPrompts(name="flag").process(rows))
    fates = [(r["kept"], r["drop_stage"], r["drop_reason"]) for r in flagged]
    assert fates == [
        (True, None, None),
        (False, "prompt", "repeated"),
        (False, "prompt", "generation failed"),
    ]


# ------------------------------------------------- steps that keep rows (no model)


def _features_hold(step: Any, rows: list[dict[str, Any]]) -> None:
    """The leaf's rows fit the schema it declares (what the driver casts them to)."""
    from datasets import Dataset

    data = Dataset.from_list(rows, features=step.features())
    assert len(data) == len(rows) and data.column_names == step.outputs


def _prompt(position: int, reason: str | None = None) -> dict[str, Any]:
    fate = {"kept": True, "drop_stage": None, "drop_reason": None}
    if reason:
        fate = {"kept": False, "drop_stage": "prompt", "drop_reason": reason}
    return {
        "keywords": ["a", "b", "c"], "paragraph_index": 100 + position, "paragraph_position": position,
        "prompt": f"prompt {position} about things", "prompt_gen_error": None, "prompt_gen_model": "g",
        "prompt_gen_prompt": "t@1", **fate,
    }  # fmt: skip


def _scored(
    position: int,
    chosen: str | None,
    rejected: str,
    s_c: float | None,
    s_r: float | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        **_prompt(position), "response_policy": rejected, "response_improved": chosen, "score_chosen": s_c,
        "score_rejected": s_r, "policy_error": None, "improver_error": None, "scoring_error": None,
        "scorer": "reward_model:x", **extra,
    }  # fmt: skip


PROMPTS = [*(_prompt(i) for i in range(7)), _prompt(7, "empty"), _prompt(8, "repeated")]
LOOP = "again and again " * 6
SCORED = [
    _scored(0, "a fine improved answer here", "a plain answer", 0.9, 0.5),  # passes
    _scored(1, "another improved answer text", "plain", 0.6, 0.5),  # gap exactly 0.1: dropped
    _scored(2, LOOP, "plain answer words", 0.9, 0.1),  # repetitive chosen: dropped
    _scored(3, "improved once more text", "plain answer", None, 0.1),  # not scored
    _scored(4, None, "plain answer", None, None, improver_error="empty output"),
    _scored(5, "improved answer number five", "plain answer five", 0.95, 0.2),  # passes
    _scored(6, "improved answer number six", "plain answer six", 0.99, 0.1),  # passes
]


def _select(**overrides: Any) -> list[dict[str, Any]]:
    options = {
        "rejected_column": "response_policy",
        "threshold": 0.1,
        "num_pairs": 2,
        "seed": 0,
        "iteration": 3,
        **overrides,
    }
    # the scored rows arrive first and out of order: the result must not depend on it
    return next(SelectPairs(name="select_pairs", **options).process(SCORED[::-1], PROMPTS))


def test_select_pairs_filters_counts_and_samples_every_keyword_list() -> None:
    judged = _select()
    assert [r["paragraph_position"] for r in judged] == list(range(9))  # keyword-list order
    fates = [(r["drop_stage"], r["drop_reason"]) for r in judged]
    assert fates[1] == ("score gap", "score gap <= 0.1") and fates[2][0] == "repetition"
    assert fates[2][1].startswith("over 50%") and fates[3] == ("score", "not scored")
    assert fates[4] == ("improve", "improvement failed")
    assert fates[7] == ("prompt", "empty") and fates[8] == ("prompt", "repeated")
    assert sorted(fates[i][1] or "kept" for i in (0, 5, 6)).count("not sampled") == 1
    funnel = stage_funnel([r["drop_stage"] for r in judged], PAIR_STAGES, PAIR_LABELS)
    assert funnel == {
        "keyword lists": 9, "free of scaffolding": 9, "valid prompts": 7, "answered": 7, "improved": 6, "scored": 5,
        "score gap passed": 4, "repetition passed": 3, "pairs sampled": 2,
    }  # fmt: skip
    assert _select() == judged  # a seeded sample

    models = {"generator": "g", "policy": "p", "initial": "i", "improver": "m"}
    leaf = PairRows(name="pairs", iteration=3, rejected_from="policy", models=models)
    pairs = next(leaf.process(judged))
    assert len(pairs) == 2
    for pair in pairs:
        assert pair["prompt"] == [{"role": "user", "content": pair["prompt"][0]["content"]}]
        assert (
            pair["chosen"][0]["role"] == "assistant" and pair["rejected"][0]["role"] == "assistant"
        )
        assert pair["score_gap"] > 0.1 and pair["iteration"] == 3 and pair["rejected_model"] == "p"
        assert pair["prompt_template"].startswith("synpo_keywords_to_prompt.jinja2@")
    _features_hold(leaf, pairs)
    candidates = next(PairCandidates(name="candidates", iteration=3).process(judged))
    assert len(candidates) == 9 and sum(r["kept"] for r in candidates) == 2
    _features_hold(PairCandidates(name="candidates"), candidates)
    prompts = next(PromptRows(name="prompts", iteration=3).process(PROMPTS))
    _features_hold(PromptRows(name="prompts"), prompts)


def test_select_pairs_rejects_with_the_initial_answer_when_asked() -> None:
    scored = [{**row, "response_initial": "y0 answer", "initial_error": None} for row in SCORED]
    scored[0]["initial_error"] = "empty output"
    judged = next(
        SelectPairs(name="s", rejected_column="response_initial", threshold=0.1).process(
            PROMPTS, scored
        )
    )
    assert (judged[0]["drop_stage"], judged[0]["drop_reason"]) == ("answer", "answer failed")
    models = {"generator": "g", "policy": "p", "initial": "i", "improver": "m"}
    pairs = next(
        PairRows(name="pairs", rejected_column="response_initial", models=models).process(judged)
    )
    assert pairs and all(
        p["rejected"][0]["content"] == "y0 answer" and p["rejected_model"] == "i" for p in pairs
    )


def test_select_pairs_with_nothing_generated_publishes_nothing() -> None:
    judged = next(SelectPairs(name="s").process([], []))
    assert judged == [] and next(PairRows(name="pairs").process(judged)) == []


def test_improver_set_keeps_gold_only_when_it_wins_by_more_than_the_threshold() -> None:
    rows = [
        {"prompt": "p1", "response": "gold one", "response_policy": "mine one", "score_gold": 0.9, "score_policy": 0.5,
         "policy_error": None, "scoring_error": None, "policy_model": "pol", "scorer": "rm"},
        {"prompt": "p2", "response": "gold two", "response_policy": "mine two", "score_gold": 0.7, "score_policy": 0.5,
         "policy_error": None, "scoring_error": None, "policy_model": "pol", "scorer": "rm"},
        {"prompt": "p3", "response": "gold three", "response_policy": None, "score_gold": 0.7, "score_policy": None,
         "policy_error": "empty output", "scoring_error": "no response_policy to score", "policy_model": "pol", "scorer": "rm"},
    ]  # fmt: skip
    judged = next(JudgeImproverRows(name="judge", threshold=0.2).process(rows))
    reasons = Counter(r["drop_reason"] or "kept" for r in judged)
    assert reasons == {"kept": 1, "gold - policy <= 0.2": 1, "policy answer failed": 1}
    kept = next(ImproverRows(name="improver", iteration=1).process(judged))
    candidates = next(ImproverCandidates(name="candidates", iteration=1).process(judged))
    assert len(kept) == 1 and len(candidates) == 3 and candidates[0]["response_gold"] == "gold one"
    example = kept[0]["messages"]
    assert (
        example[0]["role"] == "user"
        and "mine one" in example[0]["content"]
        and "p1" in example[0]["content"]
    )
    assert example[1] == {"role": "assistant", "content": "gold one"}
    _features_hold(ImproverRows(name="improver"), kept)
    _features_hold(ImproverCandidates(name="candidates"), candidates)


# ------------------------------------------------------------------- recipes


def _recipe(**overrides: Any) -> SynPORecipe:
    data = {
        "policy": "builtin:tiny-random",
        "seed_data": {"source": "seed.jsonl"},
        "corpus": {"source": "corpus.txt"},
        "pairs_per_iteration": 2,
        "scorer": {"pair_threshold": 0.1, "improver_threshold": 0.2},
        **overrides,
    }
    return parse_recipe(data, SynPORecipe)


def test_recipe_sections_reject_loop_owned_keys_and_double_gamma() -> None:
    with pytest.raises(RecipeError, match="set by the synpo loop"):
        _recipe(generator_training={"model": "x"})
    with pytest.raises(RecipeError, match="simpo_gamma"):
        _recipe(simpo_training={"simpo_gamma": 1.0, "gamma_beta_ratio": 0.5})
    with pytest.raises(RecipeError, match="did you mean 'pair_threshold'"):
        _recipe(scorer={"pair_treshold": 0.1})
    with pytest.raises(RecipeError, match="remove `llm` here"):
        _recipe(prompt_decoding={"llm": "builtin:tiny-random"})
    recipe = _recipe(simpo_training={"beta": 2.0, "gamma_beta_ratio": 0.8})
    assert recipe.simpo_training.gamma == pytest.approx(1.6)  # TRL's absolute gamma
    assert _recipe().simpo_training.gamma == pytest.approx(1.0)  # SimPO default: 0.5 * beta 2.0


@pytest.mark.parametrize(
    ("section", "old", "new"),
    [
        ("scorer", {"model": "builtin:tiny-reward"}, "scorer.reward_model.model"),
        ("scorer", {"batch_size": 4}, "scorer.reward_model.batch_size"),
        ("seed_data", {"source": "seed.jsonl", "hub_config": "default"}, "config"),
        ("corpus", {"source": "corpus.txt", "hub_config": "default"}, "config"),
    ],
)
def test_renamed_keys_fail_with_one_line_naming_the_new_key(
    section: str, old: dict[str, Any], new: str
) -> None:
    with pytest.raises(RecipeError) as info:
        _recipe(**{section: old})
    message = str(info.value)
    assert f"was renamed to '{new}'" in message and "\n" not in message


def test_shipped_recipes_load() -> None:
    paper = load_recipe(RECIPES / "synpo.yaml", SynPORecipe)
    assert paper.prompts_per_iteration == 50_000 and paper.pairs_per_iteration == 10_000
    assert paper.seed_data.limit == 18_000 and paper.scorer.pair_threshold == 0.02
    assert paper.scorer.reward_model.model == "RLHFlow/ArmoRM-Llama3-8B-v0.1"
    assert paper.simpo_training.beta == 2.0 and paper.simpo_training.gamma == 1.0
    assert paper.filters.max_repetition == 0.5
    quick = load_recipe(RECIPES / "synpo-quickstart.yaml", SynPORecipe)
    assert (
        quick.policy == "builtin:tiny-random"
        and quick.scorer.reward_model.model == "builtin:tiny-reward"
    )


# -------------------------------------------------------------------- states


def _done(
    key: str, folder: Path, counts: dict[str, int], models: dict[str, str] | None = None
) -> dict[str, Any]:
    iteration, stage = key.split(":")
    return {"key": key, "iteration": int(iteration), "stage": stage, "path": str(folder), "counts": counts,
            "models": models or {}, "complete": True}  # fmt: skip


def _prompts_folder(folder: Path, positions: list[int]) -> Path:
    from datasets import Dataset

    (folder / "data" / "prompts").mkdir(parents=True)
    Dataset.from_dict({"paragraph_position": positions}).to_parquet(
        str(folder / "data/prompts/train-00000-of-00001.parquet")
    )
    return folder


def test_states_wire_models_and_the_corpus_offset_through_the_loop(tmp_path: Path) -> None:
    recipe = _recipe()
    m0 = "builtin:tiny-random"
    generate = first_state(recipe, False)
    assert (generate.stage, generate.folder, generate.data["rejected_column"]) == (
        "pairs",
        ".",
        "response_policy",
    )
    assert set(generate.data["models"].values()) == {m0}

    states = [
        _done("1:generator-set", tmp_path, {"generator": 5}, {"generator": "/run/iter-1/generator"})
    ]
    state = next_state(recipe, first_state(recipe, True), Progress(states))
    assert (state.stage, state.data["models"]["policy"], [j.model for j in state.train]) == (
        "improver-set",
        m0,
        [m0],
    )
    states.append(
        _done("1:improver-set", tmp_path, {"improver": 0, "candidates": 4})
    )  # nothing passed: no improver
    state = next_state(recipe, state, Progress(states))
    models = state.data["models"]
    assert models["improver"] == m0 and models["generator"] == "transformers:/run/iter-1/generator"
    assert state.data["paragraph_skip"] == 0 and state.data["rejected_column"] == "response_policy"

    pairs_1 = _prompts_folder(tmp_path / "pairs-1", [0, 1, 4])
    states.append(
        _done("1:pairs", pairs_1, {"candidates": 3, "prompts": 3})
    )  # no pair: no preference set
    state = next_state(recipe, state, Progress(states))
    assert (state.iteration, state.stage) == (2, "improver-set")  # the generator is trained once
    assert state.data["models"]["policy"] == m0  # no SimPO model yet: P_2 = M0
    states.append(
        _done("2:improver-set", tmp_path, {"improver": 3}, {"improver": "/run/iter-2/improver"})
    )
    state = next_state(recipe, state, Progress(states))
    assert state.data["paragraph_skip"] == 5  # after the last paragraph iteration 1 used
    assert state.data["rejected_column"] == "response_initial"  # y0 of M0, iteration 2 on
    assert state.data["models"]["improver"] == "transformers:/run/iter-2/improver"

    states.append(_done("2:pairs", _prompts_folder(tmp_path / "pairs-2", [5, 6]), {"pairs": 2}))
    state = next_state(recipe, state, Progress(states))
    assert state.stage == "preferences" and list(state.inputs) == ["pairs-2"]
    assert [(j.kind, j.model, j.config, j.output) for j in state.train] == [
        ("simpo", m0, "preferences", "iter-2/policy")
    ]
    states.append(
        _done("2:preferences", tmp_path, {"preferences": 2}, {"policy": "/run/iter-2/policy"})
    )
    state = next_state(recipe, state, Progress(states))
    assert (state.iteration, state.data["models"]["policy"]) == (
        3,
        "transformers:/run/iter-2/policy",
    )
    retrain = _recipe(retrain_generator=True)
    after = next_state(retrain, State(iteration=2, stage="preferences"), Progress(states))
    assert (after.iteration, after.stage) == (3, "generator-set")  # retrained every iteration


# --------------------------------------------------------------------- cards


def test_cards_render_funnel_and_gap_histogram() -> None:
    from datasets import Dataset

    pair = {
        "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}], "keywords": ["a", "b", "c"], "score_gap": 0.3,
        "iteration": 1,
    }  # fmt: skip
    leaf = PairRows(name="pairs")
    prefs = Dataset.from_list(
        [
            {c: row.get(c) for c in leaf.outputs}
            for row in (pair, {**pair, "iteration": 2, "score_gap": 0.5})
        ],
        features=leaf.features(),
    )
    funnels = {
        "1": {"keyword lists": 10, "pairs sampled": 1},
        "2": {"keyword lists": 10, "pairs sampled": 1},
    }
    card = build_card(
        {"preferences": prefs}, {"stage": "preferences", "iteration": 2, "funnels": funnels}
    )
    assert set(card.figures) == {"funnel.png", "score_gap_histogram.png"}
    assert all(png.startswith(b"\x89PNG") for png in card.figures.values())
    assert "iteration 2" in card.body and card.metadata["tags"][:3] == [
        "synthetic",
        "synthalign",
        "synpo",
    ]
    candidates = Dataset.from_list(
        [{c: r.get(c) for c in PairCandidates(name="c").outputs} for r in _select()],
        features=PairCandidates(name="c").features(),
    )
    pairs_card = build_card({"pairs": prefs, "candidates": candidates}, {"stage": "pairs"})
    assert set(pairs_card.figures) == {"funnel.png", "score_gap_histogram.png"}
