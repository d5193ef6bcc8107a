"""GRA: pool checks, seeded role draws, the review steps, dedup step, the loop end to end.

Real models only (``builtin:tiny-random`` instances), except the parser tests, which
script a member's raw outputs to feed the review steps malformed JSON on purpose.
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

from synthalign.errors import RecipeError
from synthalign.llms.base import Completion, SynthLLM
from synthalign.pipelines.gra import (
    GRARecipe,
    assemble,
    build_pipeline,
    check_pool,
    funnel,
    pool_members,
)
from synthalign.recipes import load_recipe, parse_recipe
from synthalign.steps.gra import (
    Adjudicate,
    DeduplicateSamples,
    DescribeExamples,
    GenerateResponses,
    PoolLLM,
    PoolMember,
    ReviewInstructions,
    ReviewResponses,
    draw_roles,
    rotation,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "pipelines" / "recipes" / "gra-quickstart.yaml"
PAPER = ROOT / "pipelines" / "recipes" / "gra.yaml"
BIN = Path(sys.executable).parent
TINY = "builtin:tiny-random"


def _recipe(**overrides: Any) -> GRARecipe:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["seed_data"]["source"] = str(ROOT / data["seed_data"]["source"])
    data.update(overrides)
    return parse_recipe(data, GRARecipe)


def _pool(n: int, **kwargs: Any) -> PoolLLM:
    return PoolLLM(
        members=[PoolMember(name=f"tiny#{i}", spec=TINY, generation_kwargs={"temperature": 0.7, "seed": i}) for i in range(n)],
        **kwargs,
    )


# ------------------------------------------------------------------ recipes and the pool


def test_recipes_load_and_follow_the_paper() -> None:
    paper = load_recipe(PAPER, GRARecipe)
    assert (paper.tau, paper.delta, paper.dedup.threshold, paper.rounds) == (8.0, 1.5, 0.9, 5)
    assert len(paper.pool) == 5 and paper.n_reviewers == 3
    assert (paper.generation.temperature, paper.generation.top_p, paper.generation.max_new_tokens) == (0.2, 0.9, 4096)
    check_pool(paper)
    quick = load_recipe(QUICKSTART, GRARecipe)
    check_pool(quick)
    assert all(spec.startswith("builtin:") for spec in quick.llm_specs())


def test_gra_is_a_registered_method_with_a_loop() -> None:
    from synthalign.methods import get_method
    from synthalign.pipelines.gra import run_loop

    method = get_method("gra")
    assert method.loop is run_loop and method.default_config == "all"
    with pytest.raises(RecipeError, match="at least n_reviewers"):
        method.override_llms(_recipe(), [TINY, TINY])


def test_a_pool_too_small_for_the_roles_is_a_one_line_error() -> None:
    recipe = _recipe(pool=[TINY, TINY, TINY], n_reviewers=2)
    with pytest.raises(RecipeError) as err:
        build_pipeline(recipe)
    message = str(err.value)
    assert "\n" not in message
    assert "at least n_reviewers + 2 = 4 models" in message and "lists 3" in message
    with pytest.raises(RecipeError, match="used twice"):
        check_pool(_recipe(pool=[{"spec": TINY, "name": "a"}, {"spec": TINY, "name": "a"}, TINY, TINY]))


def test_repeated_specs_become_distinct_named_instances() -> None:
    members = pool_members(_recipe(pool=[TINY, TINY, {"spec": TINY, "seed": 42, "temperature": 1.0}, "builtin:smollm2-135m"]))
    assert [m.name for m in members] == [f"{TINY}#1", f"{TINY}#2", f"{TINY}#3", "builtin:smollm2-135m"]
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


# ------------------------------------------------------------------ parsers (scripted member)


class ScriptedLLM(SynthLLM):
    """Replays fixed raw outputs (parser tests only: real models cannot be told to fail)."""

    replies: list[str]

    def load(self) -> None:
        super().load()

    def _generate_batch(self, conversations, schemas, **settings) -> list[Completion]:
        assert all(s is not None for s in schemas), "review calls must carry a JSON schema"
        out = [Completion(self.replies.pop(0), 10, 10) for _ in conversations]
        return out


def _scripted_pool(replies: dict[int, list[str]]) -> PoolLLM:
    pool = _pool(5)
    pool.load()
    for member, texts in replies.items():
        pool._llms[member] = ScriptedLLM(model=f"scripted-{member}", replies=list(texts))
    return pool


def _review_row(**extra: Any) -> dict[str, Any]:
    row = {
        "candidate_id": "r1-000000",
        "instruction": "Add 2 and 3.",
        "response": "5",
        "roles": {"generator": 0, "reviewers": [1, 2, 3], "adjudicator": 4, "enricher": 0},
        "status": "pending",
        "prompt_templates": None,
    }
    row.update(extra)
    return row


def _good(score: int) -> str:
    dims = ["correctness", "clarity", "completeness", "relevance", "coherence", "ethicality"]
    return json.dumps({"feedback": "fine", **dict.fromkeys(dims, score)})


def test_malformed_reviews_are_recorded_and_abstain() -> None:
    missing = json.dumps({"feedback": "x", "correctness": 9, "clarity": 9, "completeness": 9, "relevance": 9, "coherence": 9})
    eleven = _good(9).replace('"ethicality": 9', '"ethicality": 11')
    pool = _scripted_pool({1: ["this is not JSON at all"], 2: [missing], 3: [eleven]})
    step = ReviewResponses(name="rr", llm=pool, min_mean=8.0, max_std=1.5)
    step.load()
    (row,) = next(step.process([_review_row()]))
    errors = [r["error"] for r in row["response_reviews"]]
    assert errors[0].startswith("not JSON")
    assert errors[1] == "schema: ethicality: Field required"
    assert "ethicality" in errors[2] and "10" in errors[2]
    assert row["response_reviews"][0]["raw"] == "this is not JSON at all"
    assert all(r["score"] is None for r in row["response_reviews"])
    assert row["review_decision"] == "reject" and row["status"] == "response_rejected"
    assert row["status_reason"] == "too few valid reviews: 0 of 3 (need 2)"

    # one abstention, two valid reviews: the committee decides on the two
    pool = _scripted_pool({1: ["{broken"], 2: [_good(9)], 3: [_good(8)]})
    step = ReviewResponses(name="rr", llm=pool, min_mean=8.0, max_std=1.5)
    step.load()
    (row,) = next(step.process([_review_row()]))
    assert row["review_decision"] == "accept" and row["status"] == "pending"
    assert row["review_mean"] == 8.5 and row["review_std"] == 0.5
    assert [r["model"] for r in row["response_reviews"]] == ["tiny#1", "tiny#2", "tiny#3"]


def test_malformed_instruction_reviews_abstain_and_one_no_rejects() -> None:
    yes = json.dumps({"reasonableness": "yes", "completeness": "yes", "clarity": "yes"})
    no = json.dumps({"reasonableness": "yes", "completeness": "no", "clarity": "yes"})
    pool = _scripted_pool({1: [yes, yes, yes], 2: ['{"reasonableness": "maybe"}', yes, no], 3: ["", "nope", yes]})
    step = ReviewInstructions(name="ri", llm=pool, min_valid_reviews=2)
    step.load()
    rows = [_review_row(candidate_id=f"r1-{i}") for i in range(3)]
    out = next(step.process(rows))
    assert out[0]["status"] == "instruction_rejected"
    assert out[0]["status_reason"].startswith("too few valid reviews: 1 of 3")
    assert out[0]["instruction_reviews"][2]["error"] == "empty output"
    assert out[1]["instruction_accepted"] and out[1]["status"] == "pending"  # 2 valid, 1 abstention
    assert out[2]["status"] == "instruction_rejected"
    assert out[2]["status_reason"] == "reviewer 2 says no to completeness"


# ------------------------------------------------------------------ steps on a real pool


@pytest.fixture(scope="module")
def tiny_pool() -> PoolLLM:
    pool = _pool(5)
    pool.load()
    return pool


def test_rejected_rows_cost_no_calls(tiny_pool: PoolLLM) -> None:
    rows = [
        _review_row(candidate_id="a", status="instruction_rejected", response=None),
        _review_row(candidate_id="b", status="generation_failed", instruction=None, response=None),
        _review_row(candidate_id="c"),
    ]
    responses = GenerateResponses(name="gr", llm=tiny_pool, max_new_tokens=8, truncated_is_error=False)
    responses.load()
    out = next(responses.process(rows))
    assert [r["response"] is not None for r in out] == [False, False, True]
    assert out[0]["prompt_templates"] is None and out[1]["prompt_templates"] is None
    assert out[2]["prompt_templates"]["response"].startswith("gra_response.jinja2@")
    reviews = ReviewResponses(name="rr", llm=tiny_pool, structured_max_new_tokens=200)
    reviews.load()
    out = next(reviews.process(out))
    assert out[0]["response_reviews"] is None and out[1]["response_reviews"] is None
    assert len(out[2]["response_reviews"]) == 3


def test_only_disputed_rows_reach_the_adjudicator(tiny_pool: PoolLLM) -> None:
    review = {"model": "tiny#1", **dict.fromkeys(["correctness", "clarity", "completeness", "relevance", "coherence", "ethicality"], 9),
              "score": 9.0, "feedback": "good", "error": None, "raw": None}  # fmt: skip
    bad = {**review, "model": "tiny#2", "error": "not JSON", "raw": "??"}
    rows = [
        _review_row(candidate_id="a", status="disputed", response_reviews=[review, bad, review]),
        _review_row(candidate_id="b", status="pending", response_reviews=[review, review, review]),
    ]
    step = Adjudicate(name="adj", llm=tiny_pool, min_mean=0.0, structured_max_new_tokens=200)
    step.load()
    out = next(step.process(rows))
    judged, untouched = out
    assert untouched["adjudication"] is None and untouched["status"] == "pending"
    assert judged["adjudication"]["model"] == "tiny#4"  # the row's adjudicator
    if judged["adjudication"]["error"] is None:  # tau 0: any valid adjudication keeps it
        assert judged["adjudication_kept"] and judged["status"] == "pending"
        assert 0 <= judged["adjudication_score"] <= 10
    else:
        assert judged["status"] == "adjudication_discarded"


def test_enrichment_writes_a_summary_for_kept_rows_only(tiny_pool: PoolLLM) -> None:
    base = {"instruction": "Name a prime.", "domain": "Math", "keywords": ["prime"], "summary": None, "describe_with": [2, 2, 2]}
    rows = [{**base, "candidate_id": "k", "status": "kept"}, {**base, "candidate_id": "d", "status": "duplicate"}]
    step = DescribeExamples(name="enrich", llm=tiny_pool, where={"status": "kept"}, structured_max_new_tokens=200)
    step.load()
    kept, dup = next(step.process(rows))
    assert kept["metadata_models"] == {"domain": None, "keywords": None, "summary": "tiny#2"}
    assert kept["summary"] or kept["metadata_error"]
    assert dup["metadata_models"] is None and dup["summary"] is None
    assert kept["keywords"] == ["prime"] and kept["domain"] == "Math"  # not relabelled


def test_dedup_step_orders_by_score_and_compares_with_the_pool() -> None:
    e = np.eye(4)
    near = (e[0] + 0.05 * e[1]).tolist()
    rows = [
        {"candidate_id": "c0", "status": "pending", "review_mean": 8.0, "embedding": e[0].tolist()},
        {"candidate_id": "c1", "status": "pending", "review_mean": 9.0, "embedding": near},
        {"candidate_id": "c2", "status": "pending", "review_mean": 9.5, "embedding": e[2].tolist()},
        {"candidate_id": "c3", "status": "response_rejected", "review_mean": 2.0, "embedding": None},
    ]
    pool = [{"pool_id": "seed-000001", "embedding": (e[2] + 0.01 * e[3]).tolist()}]
    step = DeduplicateSamples(name="dedup", threshold=0.9)
    step.load()
    out = {r["candidate_id"]: r for r in next(step.process(rows, pool))}
    assert [out[c]["status"] for c in ("c0", "c1", "c2", "c3")] == ["duplicate", "kept", "duplicate", "response_rejected"]
    assert out["c0"]["dedup_match"] == "c1" and out["c0"]["dedup_similarity"] >= 0.9
    assert out["c2"]["dedup_match"] == "seed-000001"
    assert all("embedding" not in r for r in out.values())


def test_assemble_publishes_rounds_all_rejected_and_seeds() -> None:
    def row(cid: str, r: int, status: str) -> dict[str, Any]:
        return {"candidate_id": cid, "round": r, "status": status, "instruction": "i", "response": "o",
                "messages": [{"role": "user", "content": "i"}, {"role": "assistant", "content": "o"}],
                "prompt_templates": {"response": "gra_response.jinja2@x"}}  # fmt: skip

    rounds = {1: [row("a", 1, "kept"), row("b", 1, "duplicate")], 2: [row("c", 2, "kept")]}
    data = assemble([{"pool_id": "seed-0", "origin": "seed", "instruction": "i", "response": "o"}], rounds)
    assert list(data) == ["all", "round-1", "round-2", "rejected", "seeds"]
    assert data["all"]["candidate_id"] == ["a", "c"] and data["rejected"]["candidate_id"] == ["b"]
    assert data["all"].features == data["rejected"].features  # all-None columns stay typed
    assert data["all"][0]["prompt_templates"]["adjudication"] is None
    assert (funnel(rounds[1])["kept"], funnel(rounds[1])["duplicate"]) == (1, 1)


# ------------------------------------------------------------------ the loop, end to end


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        SYNTHALIGN_CACHE=os.environ.get("SYNTHALIGN_CACHE", str(Path.home() / ".cache" / "synthalign")),
        # tiny models on a small shared CPU: one thread per process avoids OpenMP spin-waits
        OMP_NUM_THREADS="1",
    )
    return env


def _run(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=_env(home), capture_output=True, text=True, timeout=1200, cwd=cwd)


N_CANDIDATES = 48


@pytest.mark.slow
def test_quickstart_loop_two_rounds_resume_load_and_rerun(tmp_path: Path) -> None:
    from datasets import load_dataset

    from synthalign.hub import read_hub_folder, validate_hub_folder

    data = yaml.safe_load(QUICKSTART.read_text())
    # Random reviewers say "yes" to a criterion about half the time, so with the paper's
    # rule (any "no" rejects) almost nothing passes a committee of random models. One
    # reviewer per sample and tau 0 let some samples through so that every stage after
    # the reviews (dedup, enrichment, the next round's pool) runs on real rows.
    data.update(
        pool=[{"spec": TINY, "seed": s} for s in (1, 2, 3, 4)],  # the quickstart pool minus SmolLM2, for speed
        seed_data={**data["seed_data"], "source": str(ROOT / data["seed_data"]["source"]), "limit": 10},
        samples_per_round=N_CANDIDATES,
        n_reviewers=1,
        min_valid_reviews=1,
        tau=0.0,
        cache_dir=str(tmp_path / "cache"),
    )
    data["generation"].update(max_new_tokens=24, structured_max_new_tokens=200)
    recipe_path = tmp_path / "gra.yaml"
    recipe_path.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    cli = [str(BIN / "synthalign"), "loop", "gra", "--config", str(recipe_path), "--output", str(out)]

    first = _run([*cli, "--iterations", "1"], tmp_path / "home", tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    record = json.loads((out / "synthalign.json").read_text())
    assert [r["round"] for r in record["gra_loop"]["rounds"]] == [1]

    second = _run([*cli, "--iterations", "2"], tmp_path / "home", tmp_path)  # resumes at round 2
    assert second.returncode == 0, second.stderr[-3000:]
    validate_hub_folder(out)
    record = json.loads((out / "synthalign.json").read_text())
    rounds = record["gra_loop"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["pool_rows"] == 10 + rounds[0]["kept"]

    loaded, _ = read_hub_folder(out)
    kept = {r["round"]: r["kept"] for r in rounds}
    assert sum(kept.values()) > 0, rounds
    expected = {"all", "seeds", "rejected"} | {f"round-{r}" for r, k in kept.items() if k}
    assert set(loaded) == expected
    seeds = load_dataset(str(out), "seeds", split="train")
    assert len(seeds) == 10 and set(seeds["origin"]) == {"seed"}
    assert sum(1 for r in seeds if r["domain"] and r["keywords"] and r["summary"]) >= 8
    default = load_dataset(str(out), split="train")  # `all`, the default config
    assert len(default) == sum(kept.values())
    everything = loaded["all"].to_list() + loaded["rejected"].to_list()
    names = [f"{TINY}#{i}" for i in (1, 2, 3, 4)]
    for r in (1, 2):
        cands = sorted((c for c in everything if c["round"] == r), key=lambda c: c["candidate_id"])
        assert len(cands) == N_CANDIDATES
        counts = funnel(cands)
        exits = ("generation_failed", "instruction_rejected", "response_failed", "response_rejected",
                 "adjudication_discarded", "duplicate", "kept")  # fmt: skip
        assert sum(counts[s] for s in exits) == N_CANDIDATES
        assert counts == {k: v for k, v in rounds[r - 1].items() if k in counts}
        # the published roles are exactly the seeded draws: the same seed gives the same roles
        draws = draw_roles(N_CANDIDATES, 4, 1, seed=0, round_index=r)
        assert [c["generator_model"] for c in cands] == [names[d["generator"]] for d in draws]
        assert [c["reviewer_models"] for c in cands] == [[names[m] for m in d["reviewers"]] for d in draws]
        assert [c["adjudicator_model"] for c in cands] == [names[d["adjudicator"]] for d in draws]
        for c in cands:
            if c["status"] not in ("generation_failed", "instruction_rejected"):
                assert c["instruction_reviews"] and c["response"] is not None and c["response_reviews"]
            if c["status"] == "instruction_rejected":
                assert c["response"] is None and c["response_reviews"] is None  # never answered nor reviewed
            if c["review_decision"] != "adjudicate":
                assert c["adjudication"] is None
            if c["status"] == "kept":
                assert c["messages"][1]["content"] == c["response"]
                assert c["metadata_models"]["summary"] == c["enricher_model"]
                assert c["dedup_match"] is None or c["dedup_similarity"] < 0.9
    # round 2 drew its examples from the seeds and round 1's kept samples that have a summary
    usable = {c["candidate_id"] for c in loaded["all"] if c["round"] == 1 and c["summary"]}
    round2_examples = {e["pool_id"] for c in everything if c["round"] == 2 for e in c["examples"]}
    assert round2_examples <= set(seeds["pool_id"]) | usable
    readme = (out / "README.md").read_text()
    assert "Funnel per round" in readme
    assert {p.name for p in (out / "figures").iterdir()} == {"funnel.png", "score_histogram.png", "role_counts.png"}

    # the folder's pipeline.yaml (round 2) reruns with distilabel's own CLI
    rerun = _run([str(BIN / "distilabel"), "pipeline", "run", "--config", str(out / "pipeline.yaml")], tmp_path / "home2", tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    caches = list((tmp_path / "home2" / ".cache" / "distilabel" / "pipelines").rglob("*.parquet"))
    assert any("samples" in p.parts for p in caches)
