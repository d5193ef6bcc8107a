"""GRA per the paper's prompts (Prompts 6, 8, 9) and its variants: the ablations of
sections 4.3 and 5.1 (``gra.mode``, ``gra.fixed_roles``) and GRA-Refined (section 5.3,
``gra.refine_seeds``), each from the CLI on ``builtin:tiny-random`` instances."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_checks import fails_in_one_line, generate_args, recipe_with
from gra_recipe import tiny_gra_recipe

from synthalign.contract import State, get_method
from synthalign.errors import RecipeError
from synthalign.hub import read_hub_folder, validate_hub_folder
from synthalign.pipelines.gra import GRARecipe, build_pipeline, check_pool
from synthalign.recipes import load_recipe, parse_recipe
from synthalign.steps.committee import RESPONSE_DIMENSIONS
from synthalign.steps.gra_generate import draw_roles
from synthalign.steps.gra_pool import ExampleSummary
from synthalign.steps.gra_review import (
    AdjudicationReview,
    ResponseReview,
    majority_verdict,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"
TINY = "builtin:tiny-random"


def _recipe(**overrides: Any) -> GRARecipe:
    data = yaml.safe_load((RECIPES / "gra-quickstart.yaml").read_text())
    data["seed_data"]["source"] = str(ROOT / data["seed_data"]["source"])
    data.update(overrides)
    return parse_recipe(data, GRARecipe)


def _prompt(recipe: GRARecipe, step_name: str, row: dict[str, Any]) -> str:
    """The user prompt ``step_name`` of ``recipe``'s pipeline writes for ``row``."""
    step = build_pipeline(recipe).dag.get_step(step_name)["step"]
    (call,) = step.calls(row)
    return step.chat(call.template or step.template, call.values)[-1]["content"]


# ------------------------------------------------------------------ the paper's prompts


def test_instruction_review_asks_a_rigorous_one_or_zero_without_a_doubt_clause() -> None:
    row = {"instruction": "Sort a list.", "roles": {"reviewers": [1]}, "kept": None}
    prompt = _prompt(_recipe(), "review_instructions", row)
    assert "doubt" not in prompt.lower()
    assert "rigorous" in prompt and "(1)" in prompt and "(0)" in prompt


ADJUDICATED_ROW: dict[str, Any] = {
    "instruction": "Name the capital of France.",
    "response": "Paris.",
    "review_decision": "adjudicate",
    "kept": None,
    "roles": {"adjudicator": 3},
    "response_reviews": [
        {
            "error": None,
            "feedback": "Correct and concise.",
            **dict.fromkeys(RESPONSE_DIMENSIONS, 7),
        },
        {"error": None, "feedback": "Too terse to help.", **dict.fromkeys(RESPONSE_DIMENSIONS, 3)},
        {"error": "bad json", "feedback": None, **dict.fromkeys(RESPONSE_DIMENSIONS, None)},
    ],
}


def test_the_adjudicator_sees_written_feedback_and_scores_only_when_asked() -> None:
    hidden = _prompt(_recipe(), "adjudicate", ADJUDICATED_ROW)
    shown = _prompt(_recipe(adjudicator_sees_scores=True), "adjudicate", ADJUDICATED_ROW)
    for prompt in (hidden, shown):
        assert "Correct and concise." in prompt and "Too terse to help." in prompt
        assert "Reviewer 3" not in prompt  # an unusable review is no prior evaluation
    assert "scores" not in hidden.split("## Prior reviews")[1]
    assert "7, 7, 7, 7, 7, 7" not in hidden and "3, 3, 3, 3, 3, 3" not in hidden
    assert "scores 7, 7, 7, 7, 7, 7" in shown and "scores 3, 3, 3, 3, 3, 3" in shown


def test_summaries_and_reviews_are_bounded_by_the_prompt_not_cut_by_the_schema() -> None:
    for model, field in (
        (ExampleSummary, "summary"),
        (ResponseReview, "feedback"),
        (AdjudicationReview, "reason"),
    ):
        assert "maxLength" not in model.model_json_schema()["properties"][field]
    row = {"instruction": "x", "response": "y", "roles": {"reviewers": [1]}, "kept": None}
    assert "under 30 words" in _prompt(_recipe(), "review_responses", row)
    assert "under 30 words" in _prompt(_recipe(), "adjudicate", ADJUDICATED_ROW)


# ------------------------------------------------------------------ the variants, unit level


def test_majority_vote_counts_approvals_and_ignores_the_spread() -> None:
    high, low = [9] * 6, [2] * 6
    kept = majority_verdict([high, high, low], min_mean=8.0, min_valid=2)
    assert kept.decision == "accept" and kept.std > 1.5  # mean/std would adjudicate
    assert kept.reason == "majority vote: 2 of 3 reviews >= min_mean_score 8"
    assert majority_verdict([high, low, low], 8.0, 2).decision == "reject"
    assert majority_verdict([high, low], 8.0, 2).decision == "reject"  # a tie is no majority
    assert majority_verdict([high, None, high], 8.0, 2).decision == "accept"  # abstention
    too_few = majority_verdict([high, None, None], 8.0, 2)
    assert too_few.decision == "reject" and "too few valid reviews" in too_few.reason


def test_fixed_roles_seat_the_same_members_and_ablations_seat_fewer() -> None:
    fixed = draw_roles(50, 5, 3, seed=0, round_index=2, fixed=True)
    assert all(d == {"generator": 0, "reviewers": [1, 2, 3], "adjudicator": 4, "enricher": 0}
               for d in fixed)  # fmt: skip
    assert draw_roles(3, 5, 3, seed=0, round_index=1) == draw_roles(3, 5, 3, 0, 1, True, False)
    alone = draw_roles(20, 1, 0, seed=0, round_index=1, adjudicator=False)
    assert all(d["reviewers"] == [] and d["adjudicator"] is None for d in alone)
    with pytest.raises(ValueError, match="cannot seat 3"):
        draw_roles(1, 2, 1, seed=0, round_index=1)


@pytest.mark.parametrize(
    ("gra", "pool_size", "steps"),
    [
        ({"mode": "no_review"}, 1, set()),
        ({"mode": "single_reviewer"}, 2, {"review_instructions", "review_responses"}),
        ({"mode": "majority_vote"}, 2, {"review_instructions", "review_responses"}),
        ({"fixed_roles": True}, 3, {"review_instructions", "review_responses", "adjudicate"}),
        ({"refine_seeds": True}, 3, {"review_responses", "adjudicate"}),
    ],
)
def test_each_variant_builds_its_pipeline_and_needs_only_its_seats(
    gra: dict[str, Any], pool_size: int, steps: set[str]
) -> None:
    recipe = _recipe(pool=[{"spec": TINY, "seed": s} for s in range(pool_size)], gra=gra)
    dag = set(build_pipeline(recipe).dag)
    assert dag & {"review_instructions", "review_responses", "adjudicate"} == steps
    assert ("draw_seeds" in dag) is bool(gra.get("refine_seeds"))
    assert ("generate_instructions" in dag) is not bool(gra.get("refine_seeds"))
    too_small = _recipe(pool=[TINY] * (pool_size - 1), gra=gra) if pool_size > 1 else None
    if too_small is not None:
        with pytest.raises(RecipeError, match=f"{pool_size} models \\(1 generator"):
            check_pool(too_small)


def test_gra_refined_is_one_round() -> None:
    recipe = _recipe(gra={"refine_seeds": True}, rounds=5)
    assert get_method("gra").default_iterations(recipe) == 1
    with pytest.raises(RecipeError, match="one pass over the seeds"):
        build_pipeline(recipe, State(iteration=2, inputs={"previous": "x"}))


def test_shipped_variant_recipes_load_with_the_papers_settings() -> None:
    refined = load_recipe(RECIPES / "gra-refined.yaml", GRARecipe)
    ablation = load_recipe(RECIPES / "gra-ablation.yaml", GRARecipe)
    assert refined.gra.refine_seeds and ablation.gra.mode == "majority_vote"
    for recipe in (refined, ablation):
        check_pool(recipe)
        assert (recipe.min_mean_score, recipe.max_score_std, recipe.n_reviewers) == (8.0, 1.5, 3)
        assert not recipe.adjudicator_sees_scores


def test_a_bad_variant_is_one_line_at_recipe_load(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for change, needle in (
        ({"gra.mode": "committee"}, "'gra.mode' input should be 'full'"),
        ({"gra.fixed_role": True}, "gra.fixed_role"),
        ({"adjudicator_sees_scores": "sometimes"}, "adjudicator_sees_scores"),
    ):
        recipe = recipe_with(tmp_path, "gra-quickstart.yaml", **change)
        fails_in_one_line(generate_args("gra", recipe, out), needle)
        assert not out.exists()


# ------------------------------------------------------------------ each variant from the CLI

VARIANTS: dict[str, dict[str, Any]] = {
    "no_review": {"gra": {"mode": "no_review"}},
    "single_reviewer": {"gra": {"mode": "single_reviewer"}, "n_reviewers": 3},
    "majority_vote": {"gra": {"mode": "majority_vote"}, "n_reviewers": 1},
    "fixed_roles": {"gra": {"fixed_roles": True}},
    "refined": {"gra": {"refine_seeds": True}, "n_reviewers": 2, "min_valid_reviews": 2},
}


def _variant_recipe(tmp_path: Path, changes: dict[str, Any]) -> Path:
    return tiny_gra_recipe(tmp_path, limit=7, samples=16, **changes)


def _check_variant(name: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        assert row["kept"] is (row["drop_stage"] is None)
        if name == "no_review":
            assert row["reviewer_models"] == [] and row["adjudicator_model"] is None
            assert row["instruction_reviews"] is None and row["response_reviews"] is None
        if name in ("single_reviewer", "majority_vote"):
            assert len(row["reviewer_models"]) == 1 and row["adjudicator_model"] is None
            assert row["review_decision"] != "adjudicate" and row["adjudication"] is None
        if name == "majority_vote" and row["review_reason"]:
            assert row["review_reason"].startswith(("majority vote: ", "too few"))
        if name == "fixed_roles":
            assert row["generator_model"] == f"{TINY}#1"
            assert (row["reviewer_models"], row["adjudicator_model"]) == (
                [f"{TINY}#2"],
                f"{TINY}#3",
            )
        if name == "refined":
            assert row["drop_stage"] not in ("generation", "instruction_review")
            assert len(row["examples"]) == 1 and row["examples"][0]["pool_id"].startswith("seed-")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_runs_from_the_cli_and_the_card_records_it(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "synthalign.cli",
            *generate_args("gra", _variant_recipe(tmp_path, VARIANTS[name]), out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    validate_hub_folder(out)
    loaded, _ = read_hub_folder(out)
    rows = [row for config in ("all", "rejected") if config in loaded for row in loaded[config]]
    assert loaded["all"].num_rows > 0
    if name == "refined":  # the seeds themselves, each once
        seeds = sorted(e["pool_id"] for row in rows for e in row["examples"])
        assert seeds == sorted(loaded["seeds"]["pool_id"])
    else:
        assert len(rows) == 16
    _check_variant(name, rows)
    readme = (out / "README.md").read_text()
    variant = VARIANTS[name]["gra"]
    for key, value in variant.items():
        assert f"- `gra.{key}`: `{value}`" in readme
