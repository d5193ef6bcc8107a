"""GRA as a method: recipes and the pool, seeded draws, the api key of pool members, and
generate / loop end to end with their pipeline.yaml reruns (steps: tests/test_gra_steps.py).

Real models only: ``builtin:tiny-random`` instances, and a loopback HTTP server for the
``openai:`` members.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from datasets import load_dataset
from gra_recipe import tiny_gra_recipe
from loopback_llm import loopback_llm
from pydantic import SecretStr
from rerun import assert_rerun_reproduces

from synthalign.cards.gra import funnel
from synthalign.contract import State, get_method
from synthalign.errors import RecipeError
from synthalign.hub import read_hub_folder, validate_hub_folder
from synthalign.llms import apply_api_key
from synthalign.llms.pool import PoolLLM, PoolMember
from synthalign.pipelines.gra import GRARecipe, build_pipeline, check_pool, configs
from synthalign.recipes import load_recipe, parse_recipe
from synthalign.steps.gra import STAGES
from synthalign.steps.gra_generate import draw_roles
from synthalign.steps.gra_pool import DescribeExamples, rotation
from synthalign.steps.gra_review import ReviewResponses

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "pipelines" / "recipes" / "gra-quickstart.yaml"
PAPER = ROOT / "pipelines" / "recipes" / "gra.yaml"
TINY = "builtin:tiny-random"


def _recipe(**overrides: Any) -> GRARecipe:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["seed_data"]["source"] = str(ROOT / data["seed_data"]["source"])
    data.update(overrides)
    return parse_recipe(data, GRARecipe)


# ------------------------------------------------------------------ recipes and the pool


def test_recipes_load_and_follow_the_paper() -> None:
    paper = load_recipe(PAPER, GRARecipe)
    assert (paper.min_mean_score, paper.max_score_std, paper.dedup.threshold, paper.rounds) == (
        8.0,
        1.5,
        0.9,
        5,
    )
    assert len(paper.pool) == 5 and paper.n_reviewers == 3
    assert (
        paper.generation.temperature,
        paper.generation.top_p,
        paper.generation.max_new_tokens,
    ) == (0.2, 0.9, 4096)
    check_pool(paper)
    quick = load_recipe(QUICKSTART, GRARecipe)
    check_pool(quick)
    assert all(spec.startswith("builtin:") for spec in quick.llm_specs())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("tau: 8.0", "min_mean_score"),
        ("delta: 1.5", "max_score_std"),
        ("seed_data: {source: s.jsonl, hub_config: x}", "config"),
    ],
)
def test_old_recipe_keys_fail_in_one_line_naming_the_new_key(
    tmp_path: Path, old: str, new: str
) -> None:
    recipe = tmp_path / "old.yaml"
    body = f"pool: [{TINY}, {TINY}, {TINY}]\nn_reviewers: 1\n{old}\n"
    recipe.write_text(body if "seed_data" in old else body + "seed_data: {source: s.jsonl}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, GRARecipe)
    assert "\n" not in str(err.value) and f"renamed to '{new}'" in str(err.value)


def test_an_old_recipe_is_refused_by_the_cli_before_anything_loads(tmp_path: Path) -> None:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["tau"] = data.pop("min_mean_score")
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump(data))
    args = ["generate", "gra", "--config", str(recipe), "--output", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "-m", "synthalign.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "key 'tau' was renamed to 'min_mean_score'" in lines[0], proc.stderr[
        -2000:
    ]
    assert not (tmp_path / "o").exists()


def test_gra_is_a_looping_method_whose_rounds_read_the_previous_folder() -> None:
    method = get_method("gra")
    recipe = _recipe()
    assert (
        method.loops
        and method.default_config == "all"
        and method.default_iterations(recipe) == recipe.rounds
    )
    assert method.funnel_configs == ("all", "rejected")
    first = method.first_state(recipe, True)
    assert (first.iteration, first.folder, dict(first.inputs)) == (1, ".", {})
    assert configs(recipe, State(iteration=3)) == [
        "all",
        "round-1",
        "round-2",
        "round-3",
        "rejected",
        "seeds",
    ]
    with pytest.raises(RecipeError, match="at least n_reviewers"):
        method.override_llms(recipe, [TINY, TINY])
    with pytest.raises(RecipeError, match="round 2 reads round 1's folder"):
        build_pipeline(recipe, State(iteration=2))


def test_a_pool_too_small_for_the_roles_is_a_one_line_error() -> None:
    recipe = _recipe(pool=[TINY, TINY, TINY], n_reviewers=2)
    with pytest.raises(RecipeError) as err:
        build_pipeline(recipe)
    message = str(err.value)
    assert "\n" not in message
    assert "at least n_reviewers + 2 = 4 models" in message and "lists 3" in message
    with pytest.raises(RecipeError, match="used twice"):
        check_pool(
            _recipe(pool=[{"spec": TINY, "name": "a"}, {"spec": TINY, "name": "a"}, TINY, TINY])
        )


def test_repeated_specs_become_distinct_named_instances() -> None:
    members = _recipe(
        pool=[TINY, TINY, {"spec": TINY, "seed": 42, "temperature": 1.0}, "builtin:smollm2-135m"]
    ).members()
    assert [m.name for m in members] == [
        f"{TINY}#1",
        f"{TINY}#2",
        f"{TINY}#3",
        "builtin:smollm2-135m",
    ]
    seeds = [m.generation_kwargs["seed"] for m in members]
    assert len(set(seeds)) == 4 and seeds[2] == 42
    assert members[2].generation_kwargs["temperature"] == 1.0
    assert members[0].generation_kwargs["temperature"] == 0.7  # the recipe's generation.temperature


def test_role_draws_are_seeded_and_the_roles_distinct() -> None:
    draws = draw_roles(200, 5, 3, seed=7, round_index=1)
    assert draws == draw_roles(200, 5, 3, seed=7, round_index=1)
    assert draws != draw_roles(200, 5, 3, seed=8, round_index=1)
    assert draws != draw_roles(200, 5, 3, seed=7, round_index=2)
    for d in draws:
        seated = [d["generator"], *d["reviewers"], d["adjudicator"]]
        assert len(set(seated)) == 5
    generators = {d["generator"] for d in draws}
    assert generators == set(range(5))  # every model gets to generate
    with pytest.raises(ValueError):
        draw_roles(1, 4, 3, seed=0, round_index=1)


def test_seed_labelling_rotates_over_the_pool() -> None:
    members = rotation(8, 4, seed=3)
    assert members == rotation(8, 4, seed=3)
    assert all(len(set(m)) == 3 for m in members)  # three different labellers per row
    counts = np.bincount([x for m in members for x in m], minlength=4)
    assert counts.min() == counts.max() == 6


# ------------------------------------------------------------------ the api key of pool members


def test_openai_pool_members_get_the_recipe_api_key_and_send_it(tmp_path: Path) -> None:
    secret = "sk-gra-pool-test-0123456789"
    with loopback_llm() as (url, server):
        pool = [f"openai:{url}#m{i}" for i in range(3)]
        recipe = _recipe(
            pool=pool, n_reviewers=1, api_key=secret, cache_dir=str(tmp_path / "cache")
        )
        pipeline = build_pipeline(recipe)
        pools = [
            step.llm
            for name in pipeline.dag
            if isinstance(
                step := pipeline.dag.get_step(name)["step"], DescribeExamples | ReviewResponses
            )
        ]
        assert pools and all(isinstance(p, PoolLLM) for p in pools)
        for p in pools:  # every member, created whenever, has the key
            assert [m.api_key.get_secret_value() for m in p.openai_members()] == [secret] * 3
        assert secret not in json.dumps(pipeline.dump(), default=str)  # never in pipeline.yaml
        pools[0].load()
        answers = pools[0].generate_routed(
            [(m, ([{"role": "user", "content": f"hi {m}"}], None), 8) for m in (0, 1, 2)]
        )
        assert [a.error for a in answers] == [None] * 3
    assert server.chats == 3 and set(server.auth) == {f"Bearer {secret}"}


def test_the_driver_api_key_reaches_members_of_a_pool_without_one() -> None:
    pool = PoolLLM(
        members=[
            PoolMember(name=f"m{i}", spec=f"openai:http://127.0.0.1:9/v1#m{i}") for i in range(2)
        ]
    )
    recipe = _recipe(pool=[f"openai:http://127.0.0.1:9/v1#m{i}" for i in range(3)], n_reviewers=1)
    pipeline = build_pipeline(recipe)  # the recipe has no key: the driver's run_pipeline brings it
    given = apply_api_key(pipeline, SecretStr("sk-driver"))
    assert given == 3 * sum(
        1
        for n in pipeline.dag
        if isinstance(getattr(pipeline.dag.get_step(n)["step"], "llm", None), PoolLLM)
    )
    step = pipeline.dag.get_step("adjudicate")["step"]
    assert {m.api_key.get_secret_value() for m in step.llm.openai_members()} == {"sk-driver"}
    assert all(
        m.api_key is None for m in pool.openai_members()
    )  # no key anywhere: $OPENAI_API_KEY at load


# ------------------------------------------------------------------ generate and loop, end to end


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    env.setdefault("SYNTHALIGN_CACHE", str(Path.home() / ".cache" / "synthalign"))
    return subprocess.run(
        [sys.executable, "-m", "synthalign.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )


N_CANDIDATES = 40


def _tiny_recipe(tmp_path: Path) -> Path:
    # Random reviewers say "yes" to a criterion about half the time, so with the paper's
    # rule (any "no" rejects) almost nothing passes a committee of random models. One
    # reviewer per sample and min_mean_score 0 let some samples through so that every
    # stage after the reviews (dedup, enrichment, the next round's pool) runs on real rows.
    return tiny_gra_recipe(
        tmp_path,
        limit=10,
        samples=N_CANDIDATES,
        n_reviewers=1,
        min_valid_reviews=1,
        min_mean_score=0.0,
    )


def _load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    validate_hub_folder(folder)
    return read_hub_folder(folder)


@pytest.mark.slow
def test_generate_writes_round_one_and_its_pipeline_yaml_reruns_to_the_same_configs(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    proc = _run(
        ["generate", "gra", "--config", str(_tiny_recipe(tmp_path)), "--output", str(out)], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, info = _load(out)
    assert [s["key"] for s in info["states"]] == ["1:round"]
    assert set(loaded) <= {"all", "round-1", "rejected", "seeds"} and {"rejected", "seeds"} <= set(
        loaded
    )
    everything = [
        *(loaded["all"].to_list() if "all" in loaded else []),
        *loaded["rejected"].to_list(),
    ]
    assert len(everything) == N_CANDIDATES and {c["round"] for c in everything} == {1}
    assert all(c["kept"] is (c["drop_stage"] is None) for c in everything)
    readme = (out / "README.md").read_text()
    assert readme.count("## Funnel") == 1 and "| candidates | 40 |" in readme
    counts = assert_rerun_reproduces(out, tmp_path / "rerun")
    assert counts["seeds"] == 10 and counts["rejected"] == sum(
        1 for c in everything if not c["kept"]
    )


def _check_round(cands: list[dict[str, Any]], r: int, names: list[str]) -> None:
    assert len(cands) == N_CANDIDATES
    # the published roles are exactly the seeded draws: the same seed gives the same roles
    draws = draw_roles(N_CANDIDATES, 4, 1, seed=0, round_index=r)
    assert [c["generator_model"] for c in cands] == [names[d["generator"]] for d in draws]
    assert [c["reviewer_models"] for c in cands] == [
        [names[m] for m in d["reviewers"]] for d in draws
    ]
    assert [c["adjudicator_model"] for c in cands] == [names[d["adjudicator"]] for d in draws]
    for c in cands:
        assert c["kept"] is (c["drop_stage"] is None) and (c["drop_reason"] is None) is c["kept"]
        if c["drop_stage"] not in ("generation", "instruction_review"):
            assert c["instruction_reviews"] and c["response"] is not None and c["response_reviews"]
        if c["drop_stage"] == "instruction_review":
            assert (
                c["response"] is None and c["response_reviews"] is None
            )  # never answered nor reviewed
        if c["review_decision"] != "adjudicate":
            assert c["adjudication"] is None
        if c["kept"]:
            assert c["messages"][1]["content"] == c["response"]
            assert c["metadata_models"]["summary"] == c["enricher_model"]
            assert c["dedup_match"] is None
        if c["drop_stage"] == "dedup":
            assert c["dedup_match"] and c["dedup_similarity"] >= 0.9


@pytest.mark.slow
def test_loop_two_rounds_resumes_republishes_and_round_two_reruns(tmp_path: Path) -> None:
    recipe, out = _tiny_recipe(tmp_path), tmp_path / "out"
    cli = ["loop", "gra", "--config", str(recipe), "--output", str(out)]
    first = _run([*cli, "--iterations", "1"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    round_one, _ = _load(out)
    second = _run([*cli, "--iterations", "2"], tmp_path)  # resumes at round 2
    assert second.returncode == 0, second.stderr[-3000:]
    loaded, info = _load(out)
    assert [s["key"] for s in info["states"]] == ["1:round", "2:round"]

    everything = loaded["all"].to_list() + loaded["rejected"].to_list()
    kept = {r: sum(1 for c in everything if c["round"] == r and c["kept"]) for r in (1, 2)}
    assert sum(kept.values()) > 0, kept
    assert set(loaded) == {"all", "seeds", "rejected"} | {
        f"round-{r}" for r, k in kept.items() if k
    }
    # round 2 republished round 1's rows and the seeds exactly as round 1 wrote them
    assert loaded["seeds"].to_list() == round_one["seeds"].to_list()
    for config in ("all", "rejected"):
        assert [c for c in loaded[config].to_list() if c["round"] == 1] == round_one[
            config
        ].to_list()
    seeds = load_dataset(str(out), "seeds", split="train")
    assert len(seeds) == 10 and set(seeds["origin"]) == {"seed"}
    assert sum(1 for r in seeds if r["domain"] and r["keywords"] and r["summary"]) >= 8
    assert len(load_dataset(str(out), split="train")) == sum(
        kept.values()
    )  # `all`, the default config
    names = [f"{TINY}#{i}" for i in (1, 2, 3, 4)]
    for r in (1, 2):
        cands = sorted((c for c in everything if c["round"] == r), key=lambda c: c["candidate_id"])
        _check_round(cands, r, names)
        counts = funnel(cands)
        assert counts["candidates"] == N_CANDIDATES and counts["kept"] == kept[r]
        assert sum(counts[s] for s in (*STAGES, "kept")) == N_CANDIDATES
    # round 2 drew its examples from the seeds and round 1's kept samples that have a summary
    usable = {c["candidate_id"] for c in loaded["all"] if c["round"] == 1 and c["summary"]}
    round2_examples = {e["pool_id"] for c in everything if c["round"] == 2 for e in c["examples"]}
    assert round2_examples <= set(seeds["pool_id"]) | usable
    readme = (out / "README.md").read_text()
    assert "Funnel per round" in readme and "| round 1 | round 2 |" in readme
    assert {p.name for p in (out / "figures").iterdir()} >= {
        "funnel.png",
        "score_histogram.png",
        "role_counts.png",
    }
    # the folder's pipeline.yaml is round 2's; distilabel's own CLI reruns it to the same configs
    assert assert_rerun_reproduces(out, tmp_path / "rerun") == {
        k: len(v) for k, v in loaded.items()
    }
