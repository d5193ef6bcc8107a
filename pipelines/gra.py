"""GRA (``shared/seeds/001_*``): a pool of small LLMs as Generator, Reviewers, Adjudicator.

One round is one distilabel pipeline::

    load_pool ─► describe_pool ─┬─► seeds (leaf)
                                ├─► embed_pool ───────────────────────────────┐
                                └─► draw_candidates ─► generate_keywords       │
        ─► generate_instructions ─► clean_instructions ─► review_instructions  │
        ─► generate_responses ─► clean_responses ─► review_responses           │
        ─► adjudicate ─► embed_samples ─► deduplicate ◄────────────────────────┘
        ─► enrich_samples ─┬─► all, round-1 ... round-r, rejected (leaves)
    load_earlier_rounds ───┘   (rounds > 1)

Each candidate draws a Generator, ``n_reviewers`` Reviewers and an Adjudicator from the
pool (seeded; at least ``n_reviewers + 2`` models, checked before anything loads).
Round ``r`` (``State.iteration``) writes the output folder itself; after round 1 it reads
the previous round's folder (``state.inputs["previous"]``): its seeds and kept samples
are the example pool and dedup's reference, and its candidates are published again as
they are, so the folder's ``pipeline.yaml`` reruns to every config.

The recipe's ``gra`` block (:class:`Variant`) selects the paper's ablations: no review,
a single Reviewer, majority vote instead of the Adjudicator (section 4.3), fixed roles
(section 5.1); and GRA-Refined (section 5.3), one round whose candidates are the seeds
(``draw_seeds`` replaces ``draw_candidates`` .. ``review_instructions``, and dedup
compares the refined seeds with each other only). Steps a variant has no seat for are
left out of the pipeline, so its ``pipeline.yaml`` reruns the variant.

Defaults follow the paper: temperature 0.2, top_p 0.9, 4096 new tokens (Appendix A);
``min_mean_score`` 8 and ``max_score_std`` 1.5 (its tau and delta), cosine 0.9 (section
4.1); 2-4 examples; 5 rounds. ``samples_per_round`` (unstated in the paper) is ours.
Every LLM step holds the whole pool; with ``vllm:`` members the steps load one at a
time, and production serves each model once (``openai:`` specs, ``recipes/gra.yaml``).
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from typing import Any, ClassVar, Literal

from distilabel.pipeline import Pipeline
from pydantic import Field, model_validator

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.cards.gra import build_card
from synthalign.contract import Method, Progress, State
from synthalign.errors import RecipeError
from synthalign.llms.pool import PoolLLM, PoolMember, pool_members
from synthalign.recipes import Dedup, LLMRole, Recipe, SeedData, StrictModel
from synthalign.steps.clean import CleanOutputs
from synthalign.steps.decontaminate import decontaminated
from synthalign.steps.embeddings import EmbedTexts
from synthalign.steps.gra import (
    DEFAULT_CONFIG,
    INSTRUCTION_CLEAN,
    REJECTED_CONFIG,
    RESPONSE_CLEAN,
    SEEDS_CONFIG,
    round_config,
)
from synthalign.steps.gra_generate import (
    DrawCandidates,
    DrawSeedCandidates,
    GenerateInstructions,
    GenerateKeywords,
    GenerateResponses,
)
from synthalign.steps.gra_pool import DescribeExamples, LoadPool
from synthalign.steps.gra_publish import (
    DeduplicateSamples,
    LoadEarlierRounds,
    PublishCandidates,
    PublishSeeds,
)
from synthalign.steps.gra_review import Adjudicate, ReviewInstructions, ReviewResponses
from synthalign.steps.seeds import seed_rows

# ------------------------------------------------------------------ recipe


class PoolEntry(StrictModel):
    """One pool model; unset options follow ``generation`` (seed: recipe seed + position)."""

    spec: str = Field(description="vllm:..., openai:URL#MODEL, transformers:..., builtin:...")
    name: str | None = Field(default=None, description="recorded in rows (default: the spec)")
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class GRASeedData(SeedData):
    """The seed SFT data D(0): an instruction and a response column."""

    renamed: ClassVar[dict[str, str]] = {"hub_config": "config"}
    instruction_column: str = "instruction"
    response_column: str = "response"
    input_column: str | None = Field(default=None, description="context added (Alpaca: input)")


class Generation(LLMRole):
    """Decoding of every pool model (Appendix A: temperature 0.2, top_p 0.9, 4096 tokens)."""

    temperature: float = Field(default=0.2, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_new_tokens: int = Field(default=4096, ge=1, description="instructions and responses")
    structured_max_new_tokens: int = Field(default=512, ge=16, description="labels and reviews")
    truncated_is_error: bool = Field(default=True, description="cut-off text counts as failed")

    @model_validator(mode="after")
    def _no_own_llm(self) -> Generation:
        if self.llm is not None:
            raise ValueError("GRA's models are its `pool`: remove generation.llm")
        return self


class Variant(StrictModel):
    """GRA's ablations and GRA-Refined; the defaults are GRA itself.

    ``mode``: ``full`` (the committee and the Adjudicator), ``no_review`` (the Generator's
    output is kept without any review; section 4.3), ``single_reviewer`` (one Reviewer
    decides alone; section 4.3), ``majority_vote`` (no Adjudicator: a sample is kept when
    most Reviewers score it >= ``min_mean_score``; section 4.3). ``fixed_roles``: the same
    members hold the same seats for every sample instead of a fresh draw (section 5.1).
    ``refine_seeds``: GRA-Refined (section 5.3), one pass in which the Generator answers
    every seed instruction anew and the committee curates the answers.
    """

    mode: Literal["full", "no_review", "single_reviewer", "majority_vote"] = "full"
    fixed_roles: bool = False
    refine_seeds: bool = False


class GRARecipe(Recipe):
    """A GRA run: the model pool, the seed data, the committee thresholds, the rounds."""

    renamed: ClassVar[dict[str, str]] = {"tau": "min_mean_score", "delta": "max_score_std"}
    name: str = "gra"
    pool: list[str | PoolEntry] = Field(min_length=1, description="paper: five 7-8B models")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="for every member")
    seed_data: GRASeedData
    n_reviewers: int = Field(default=3, ge=1, description="N_R reviewers per sample")
    min_mean_score: float = Field(default=8.0, ge=0, le=10, description="paper's tau")
    max_score_std: float = Field(default=1.5, ge=0, description="paper's delta")
    min_valid_reviews: int = Field(default=2, ge=1, description="fewer reject the sample")
    rounds: int = Field(default=5, ge=1, description="`loop` rounds without --iterations")
    samples_per_round: int = Field(default=20_000, ge=1, description="candidates per round")
    min_examples: int = Field(default=2, ge=1, description="few-shot examples (paper: 2-4)")
    max_examples: int = Field(default=4, ge=1)
    domain_sampling: Literal["pool", "uniform"] = "pool"
    adjudicator_sees_scores: bool = Field(
        default=False, description="paper: the Adjudicator weighs the written feedback only"
    )
    gra: Variant = Field(default_factory=Variant, description="ablations and GRA-Refined")
    generation: Generation = Field(default_factory=Generation)
    dedup: Dedup = Field(default_factory=Dedup)
    load_stages: Literal["auto", "sequential", "concurrent"] = "auto"
    license: str = "apache-2.0"

    @model_validator(mode="after")
    def _ranges(self) -> GRARecipe:
        if self.max_examples < self.min_examples:
            raise ValueError("max_examples must be >= min_examples")
        if self.gra.mode in ("full", "majority_vote") and self.min_valid_reviews > self.n_reviewers:
            raise ValueError(f"min_valid_reviews cannot exceed n_reviewers ({self.n_reviewers})")
        return self

    def reviewers(self) -> int:
        """Reviewers per sample: ``n_reviewers``, one (single_reviewer) or none (no_review)."""
        return {"no_review": 0, "single_reviewer": 1}.get(self.gra.mode, self.n_reviewers)

    def valid_reviews(self) -> int:
        """``min_valid_reviews``, at most the Reviewers a sample has."""
        return min(self.min_valid_reviews, self.reviewers())

    def adjudicated(self) -> bool:
        """Whether disputed samples go to an Adjudicator (only the full method has one)."""
        return self.gra.mode == "full"

    def seats(self) -> int:
        """Distinct members one sample needs: Generator, Reviewers, Adjudicator."""
        return 1 + self.reviewers() + int(self.adjudicated())

    def members(self) -> list[PoolMember]:
        """The pool as named members with their decoding (distinct seeds for repeated specs)."""
        g, engine = self.generation, {**self.engine_kwargs, **self.generation.engine_kwargs}
        entries = [e if isinstance(e, str) else e.model_dump() for e in self.pool]
        return pool_members(
            entries, seed=self.seed, temperature=g.temperature, top_p=g.top_p, engine_kwargs=engine
        )

    def llm_specs(self) -> list[str]:
        return list(dict.fromkeys(m.spec for m in self.members()))

    def sequential(self) -> bool:
        """One step loaded at a time: asked for, or (auto) when a member is an in-process vLLM."""
        if self.load_stages != "auto":
            return self.load_stages == "sequential"
        return any(spec.startswith("vllm:") for spec in self.llm_specs())


def check_pool(recipe: GRARecipe) -> None:
    """The pool must seat one Generator, N_R Reviewers and one Adjudicator, all distinct
    (fewer seats in the ablations without Reviewers or Adjudicator)."""
    need, mode = recipe.seats(), recipe.gra.mode
    if len(recipe.pool) < need and mode == "full":
        plural = "s" if recipe.n_reviewers != 1 else ""
        raise RecipeError(
            f"GRA needs a pool of at least n_reviewers + 2 = {need} models (1 generator, "
            f"{recipe.n_reviewers} reviewer{plural}, 1 adjudicator); the recipe lists "
            f"{len(recipe.pool)}: add models to `pool` or lower `n_reviewers`"
        )
    if len(recipe.pool) < need:
        raise RecipeError(
            f"GRA with gra.mode {mode} needs a pool of at least {need} models (1 generator, "
            f"{recipe.reviewers()} reviewer(s)); the recipe lists {len(recipe.pool)}"
        )
    dupes = sorted(n for n, c in Counter(m.name for m in recipe.members()).items() if c > 1)
    if dupes:
        raise RecipeError(f"pool member name {dupes[0]!r} is used twice: give each entry a `name`")


def preflight(recipe: GRARecipe) -> None:
    """Pool size and names, and the seed data (one line on failure), before any model loads."""
    check_pool(recipe)
    s = recipe.seed_data
    seed_rows(s, [s.instruction_column, s.response_column])


def override_llms(recipe: GRARecipe, llms: list[str]) -> GRARecipe:
    """``--llm SPEC`` (repeatable) replaces the pool."""
    updated = GRARecipe.model_validate({**recipe.model_dump(), "pool": list(llms)})
    check_pool(updated)
    return updated


# ------------------------------------------------------------------ one round


def configs(recipe: GRARecipe, state: State) -> list[str]:
    """Round r publishes ``all``, ``round-1`` ... ``round-r``, ``rejected`` and ``seeds``."""
    rounds = [round_config(k) for k in range(1, state.iteration + 1)]
    return [DEFAULT_CONFIG, *rounds, REJECTED_CONFIG, SEEDS_CONFIG]


def _llm_step(recipe: GRARecipe) -> dict[str, Any]:
    """What every LLM step takes: its own copy of the pool, budgets, batch size, resources."""
    g = recipe.generation
    return {
        "llm": PoolLLM(members=recipe.members(), api_key=g.api_key or recipe.api_key),
        "input_batch_size": g.batch_size,
        "max_new_tokens": g.max_new_tokens,
        "structured_max_new_tokens": g.structured_max_new_tokens,
        "truncated_is_error": g.truncated_is_error,
        "resources": g.resources.step_resources(),
    }


def _embedder(recipe: GRARecipe, name: str, **where: Any) -> EmbedTexts:
    d, batch = recipe.dedup, max(recipe.generation.batch_size, recipe.dedup.batch_size)
    options = d.model_dump(include={"model", "text_columns", "device", "backend"})
    sizes = {"encode_batch_size": d.batch_size, "input_batch_size": batch}
    return EmbedTexts(name=name, **options, **sizes, where=where or None)


def _draw(recipe: GRARecipe, r: int) -> DrawCandidates:
    """Round ``r``'s candidates: new ones from few-shot examples, or (GRA-Refined) the seeds."""
    members = [m.name for m in recipe.members()]
    draw = DrawSeedCandidates if recipe.gra.refine_seeds else DrawCandidates
    return draw(
        name="draw_seeds" if recipe.gra.refine_seeds else "draw_candidates", round_index=r,
        seed=recipe.seed, member_names=members, num_candidates=recipe.samples_per_round,
        n_reviewers=recipe.reviewers(), adjudicator=recipe.adjudicated(),
        fixed_roles=recipe.gra.fixed_roles, min_examples=recipe.min_examples,
        max_examples=recipe.max_examples, domain_sampling=recipe.domain_sampling,
    )  # fmt: skip


def _review_steps(recipe: GRARecipe) -> list[Any]:
    """Response review and adjudication as ``gra.mode`` has them (none for no_review)."""
    if not recipe.reviewers():
        return []
    reviews = {"min_valid_reviews": recipe.valid_reviews()}
    rule = "majority_vote" if recipe.gra.mode == "majority_vote" else "mean_std"
    review = ReviewResponses(
        name="review_responses", **reviews, min_mean_score=recipe.min_mean_score,
        max_score_std=recipe.max_score_std, rule=rule, **_llm_step(recipe),
    )  # fmt: skip
    if not recipe.adjudicated():
        return [review]
    adjudicate = Adjudicate(
        name="adjudicate", min_mean_score=recipe.min_mean_score,
        sees_scores=recipe.adjudicator_sees_scores, **_llm_step(recipe),
    )  # fmt: skip
    return [review, adjudicate]


def _candidate_steps(recipe: GRARecipe, r: int) -> list[Any]:
    """Draw -> Generator -> Reviewers -> Adjudicator -> embeddings, in pipeline order."""
    batch = {"input_batch_size": recipe.generation.batch_size}
    reviews = {"min_valid_reviews": recipe.valid_reviews()}
    instruction: list[Any] = []
    if not recipe.gra.refine_seeds:  # GRA-Refined keeps the seed instructions as they are
        instruction = [
            GenerateKeywords(name="generate_keywords", **_llm_step(recipe)),
            GenerateInstructions(name="generate_instructions", **_llm_step(recipe)),
            CleanOutputs(
                name="clean_instructions", columns=[INSTRUCTION_CLEAN], set_drop=True, **batch
            ),
        ]
        if recipe.reviewers():
            instruction.append(
                ReviewInstructions(name="review_instructions", **reviews, **_llm_step(recipe))
            )
    return [
        _draw(recipe, r),
        *instruction,
        GenerateResponses(name="generate_responses", **_llm_step(recipe)),
        CleanOutputs(name="clean_responses", columns=[RESPONSE_CLEAN], set_drop=True, **batch),
        *_review_steps(recipe),
        _embedder(recipe, "embed_samples", kept=None),
    ]


def _leaves(r: int) -> list[PublishCandidates]:
    rounds = [PublishCandidates(name=round_config(k), round_index=k) for k in range(1, r + 1)]
    rejected = PublishCandidates(name=REJECTED_CONFIG, select="rejected")
    return [PublishCandidates(name=DEFAULT_CONFIG), *rounds, rejected]


def build_pipeline(recipe: GRARecipe, state: State | None = None) -> Pipeline:
    """The pipeline of round ``state.iteration`` (see the module docstring for its shape)."""
    state = state or State(stage="round")
    r, previous, batch = state.iteration, state.inputs.get("previous"), recipe.generation.batch_size
    check_pool(recipe)
    if r > 1 and recipe.gra.refine_seeds:
        raise RecipeError("GRA-Refined (gra.refine_seeds) is one pass over the seeds: one round")
    if r > 1 and not previous:
        raise RecipeError(f"GRA round {r} reads round {r - 1}'s folder: use `synthalign loop gra`")
    name, cache = f"{recipe.name}-round-{r}", recipe.cache_dir
    with Pipeline(name=name, description=f"GRA round {r}", cache_dir=cache) as pipeline:
        load = LoadPool(
            name="load_pool", **recipe.seed_data.model_dump(), round_index=r, previous=previous,
            n_members=len(recipe.pool), seed=recipe.seed, batch_size=batch,
        )  # fmt: skip
        describe = DescribeExamples(name="describe_pool", **_llm_step(recipe))
        embed_pool = None if recipe.gra.refine_seeds else _embedder(recipe, "embed_pool")
        candidates = _candidate_steps(recipe, r)
        dedup = DeduplicateSamples(name="deduplicate", threshold=recipe.dedup.threshold)
        enrich = DescribeExamples(name="enrich_samples", where={"kept": True}, **_llm_step(recipe))
        leaves = _leaves(r)
        seeds = PublishSeeds(name=SEEDS_CONFIG)
        for before, after in pairwise(candidates):
            before >> after
        if recipe.gra.refine_seeds:  # a refined seed is no duplicate of its own original
            load >> describe >> [seeds, candidates[0]]
            deduped = candidates[-1] >> dedup
        else:
            load >> describe >> [seeds, candidates[0], embed_pool]
            deduped = [candidates[-1], embed_pool] >> dedup
        checked = decontaminated(
            deduped,
            recipe.decontaminate,
            ["instruction", "response"],
            set_drop=True,
            input_batch_size=batch,
        )
        checked >> enrich >> leaves
        if previous:
            earlier = LoadEarlierRounds(
                name="load_earlier_rounds", previous=previous, round_index=r, batch_size=batch
            )
            earlier >> leaves
    return pipeline


def first_state(recipe: GRARecipe, loop: bool) -> State:
    """Round 1 publishes the output folder itself; so does every later round."""
    return State(iteration=1, stage="round", folder=".")


def next_state(recipe: GRARecipe, state: State, progress: Progress) -> State:
    """Round r + 1 reads the folder round r wrote."""
    previous = progress.folder(state.key)
    inputs = {"previous": previous} if previous else {}
    return State(iteration=state.iteration + 1, stage="round", folder=".", inputs=inputs)


METHOD = Method(
    name="gra",
    recipe_cls=GRARecipe,
    build_pipeline=build_pipeline,
    configs=configs,
    default_config=DEFAULT_CONFIG,
    card_section=build_card,
    override_llms=override_llms,
    preflight=preflight,
    first_state=first_state,
    next_state=next_state,
    sequential=GRARecipe.sequential,
    funnel_configs=(DEFAULT_CONFIG, REJECTED_CONFIG),
    loops=True,
    default_iterations=lambda recipe: 1 if recipe.gra.refine_seeds else recipe.rounds,
)
