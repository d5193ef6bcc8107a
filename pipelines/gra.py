"""GRA (``shared/seeds/001_*``): a pool of small LLMs as Generator, Reviewers, Adjudicator.

One round is one distilabel pipeline::

    load_pool ─► describe_pool ─┬─► pool (leaf: the labelled example pool)
                                ├─► embed_pool ─────────────────────────────────────┐
                                └─► draw_candidates ─► generate_instructions         │
          ─► review_instructions ─► generate_responses ─► review_responses          │
          ─► adjudicate ─► embed_samples ─► deduplicate ◄───────────────────────────┘
          ─► enrich_samples ─► samples (leaf: every candidate with its status)

Every candidate draws its roles from the pool (seeded: the same seed gives the same
draws): the Generator, ``n_reviewers`` Reviewers from the others, the Adjudicator from
the rest. The pool must hold at least ``n_reviewers + 2`` models; this is checked
before anything loads. A pool entry is a spec string, or a mapping with ``spec`` and
optional ``name`` / ``seed`` / ``temperature`` / ``top_p`` / ``engine_kwargs``; the
same spec may appear more than once (each instance decodes with its own seed and is
recorded under its own name).

``synthalign generate gra`` runs round 1. ``synthalign loop gra --iterations N`` runs
N rounds: round r's example pool is the labelled seeds plus the kept samples of
rounds < r, read back from the output folder itself (its ``seeds`` and ``round-k``
configs), and deduplication compares against that pool too. After each round the
folder is rewritten with configs ``all`` (every kept sample, the default),
``round-1`` ... ``round-N``, ``rejected`` (every other candidate, with the stage and
reason it left at) and ``seeds`` (the labelled seed pool); ``synthalign.json`` holds
the manifest (``gra_loop``) the loop resumes from. ``pipeline.yaml`` is the last
round's pipeline and reruns it with ``distilabel pipeline run --config``.

Paper settings that the defaults follow: temperature 0.2, top_p 0.9, max 4096 new
tokens (Appendix A); tau 8, delta 1.5, cosine threshold 0.9 (section 4.1); 2-4
few-shot examples; 5 rounds. The paper does not say how many candidates it draws
per round (it keeps ~10K); ``samples_per_round`` sets it.

GPU note: every LLM step holds the whole pool. With in-process ``vllm:`` engines the
steps run one at a time (``load_stages: auto``), each loading the pool's members it
uses; the realistic production setup is one ``vllm serve`` per model and ``openai:``
specs (see ``pipelines/recipes/gra.yaml``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from distilabel.pipeline import Pipeline
from pydantic import Field, model_validator

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.recipes import StageResources
from synthalign.errors import OutputError, RecipeError
from synthalign.methods import Method, check_push_token, run_info, run_pipeline
from synthalign.recipes import Recipe, StrictModel, load_recipe

if TYPE_CHECKING:
    from datasets import Dataset, Features
    from distilabel.distiset import Distiset

    from synthalign.cards.base import CardContent
    from synthalign.steps.gra import PoolMember

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "all"
SEEDS_CONFIG = "seeds"
REJECTED_CONFIG = "rejected"
MANIFEST_KEY = "gra_loop"

# ------------------------------------------------------------------ recipe


class PoolEntry(StrictModel):
    """One pool model with optional per-instance settings."""

    spec: str = Field(description="LLM spec: vllm:..., openai:URL#MODEL, transformers:..., builtin:...")
    name: str | None = Field(default=None, description="label recorded in rows (default: the spec, numbered if repeated)")
    seed: int | None = Field(default=None, description="decoding seed (default: recipe seed + position in the pool)")
    temperature: float | None = Field(default=None, ge=0, description="overrides generation.temperature")
    top_p: float | None = Field(default=None, gt=0, le=1, description="overrides generation.top_p")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="backend options for this model")


class SeedSection(StrictModel):
    """The seed SFT data D(0): an instruction and a response column."""

    source: str = Field(description="local JSONL/JSON/CSV/Parquet file or Hub dataset id")
    instruction_column: str = "instruction"
    response_column: str = "response"
    input_column: str | None = Field(default=None, description="extra context appended to the instruction (Alpaca: input)")
    split: str = "train"
    hub_config: str | None = None
    limit: int | None = Field(default=None, ge=1, description="use the first N rows")


class GenerationSection(StrictModel):
    """Decoding for every pool model (Appendix A: temperature 0.2, top_p 0.9, 4096 tokens)."""

    temperature: float = Field(default=0.2, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_new_tokens: int = Field(default=4096, ge=1, description="instructions and responses")
    structured_max_new_tokens: int = Field(default=512, ge=16, description="labels, keywords and reviews (JSON)")
    truncated_is_error: bool = Field(default=True, description="text that used up max_new_tokens counts as failed")
    batch_size: int = Field(default=256, ge=1, description="rows per step batch (each member gets its share)")
    resources: StageResources = Field(
        default_factory=StageResources, description="replicas / GPUs of every LLM step (see docs/perf-ray.md)"
    )


class DedupSection(StrictModel):
    """Post-processing: embedding model and the cosine threshold (paper: MiniLM, 0.9)."""

    threshold: float = Field(default=0.9, gt=-1, le=1, description="a sample is a duplicate at cosine >= this")
    model: str = Field(default="builtin:minilm", description="sentence-transformers model (all-MiniLM-L6-v2)")
    text_columns: list[str] = Field(default_factory=lambda: ["instruction", "response"])
    batch_size: int = Field(default=64, ge=1)
    device: str | None = None
    backend: Literal["torch", "onnx", "openvino"] = Field(
        default="torch", description="sentence-transformers backend; onnx/openvino need their pip extra"
    )


class GRARecipe(Recipe):
    """A GRA run: the model pool, the seed data, the committee thresholds, the rounds."""

    name: str = "gra"
    pool: list[str | PoolEntry] = Field(min_length=1, description="the small LLMs (paper: five 7-8B models)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="backend options for every pool model")
    seed_data: SeedSection
    n_reviewers: int = Field(default=3, ge=1, description="N_R reviewers per sample")
    tau: float = Field(default=8.0, ge=0, le=10, description="minimum committee mean (and adjudicator score)")
    delta: float = Field(default=1.5, ge=0, description="maximum committee std before adjudication")
    min_valid_reviews: int = Field(default=2, ge=1, description="fewer valid reviews reject the sample")
    rounds: int = Field(default=5, ge=1, description="rounds for `loop` when --iterations is not given")
    samples_per_round: int = Field(default=20_000, ge=1, description="candidates drawn per round")
    min_examples: int = Field(default=2, ge=1, description="few-shot examples per candidate (paper: 2-4)")
    max_examples: int = Field(default=4, ge=1)
    domain_sampling: Literal["pool", "uniform"] = Field(
        default="pool", description="candidate domains in proportion to the pool's domains, or uniform"
    )
    generation: GenerationSection = Field(default_factory=GenerationSection)
    dedup: DedupSection = Field(default_factory=DedupSection)
    load_stages: Literal["auto", "sequential", "concurrent"] = Field(
        default="auto",
        description="sequential: one step loaded at a time; auto: sequential iff a pool model uses vllm:",
    )
    license: str = Field(default="apache-2.0", description="license written into the dataset card")

    @model_validator(mode="after")
    def _ranges(self) -> GRARecipe:
        if self.max_examples < self.min_examples:
            raise ValueError("max_examples must be >= min_examples")
        if self.min_valid_reviews > self.n_reviewers:
            raise ValueError(f"min_valid_reviews ({self.min_valid_reviews}) cannot exceed n_reviewers ({self.n_reviewers})")
        return self

    def entries(self) -> list[PoolEntry]:
        return [PoolEntry(spec=e) if isinstance(e, str) else e for e in self.pool]

    def llm_specs(self) -> list[str]:
        return list(dict.fromkeys(e.spec for e in self.entries()))

    def sequential(self) -> bool:
        if self.load_stages != "auto":
            return self.load_stages == "sequential"
        return any(spec.startswith("vllm:") for spec in self.llm_specs())


def check_pool(recipe: GRARecipe) -> None:
    """The pool must seat one Generator, N_R Reviewers and one Adjudicator, all distinct."""
    need = recipe.n_reviewers + 2
    if len(recipe.pool) < need:
        raise RecipeError(
            f"GRA needs a pool of at least n_reviewers + 2 = {need} models (1 generator, "
            f"{recipe.n_reviewers} reviewer{'s' if recipe.n_reviewers != 1 else ''}, 1 adjudicator); the recipe lists {len(recipe.pool)}: "
            "add models to `pool` or lower `n_reviewers`"
        )
    names = [m.name for m in pool_members(recipe)]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise RecipeError(f"pool member name {dupes[0]!r} is used twice: give each pool entry its own `name`")


def pool_members(recipe: GRARecipe) -> list[PoolMember]:
    """The pool as named members with their decoding (distinct seeds for repeated specs)."""
    from synthalign.steps.gra import PoolMember

    entries = recipe.entries()
    totals = Counter(e.spec for e in entries)
    seen: Counter[str] = Counter()
    members = []
    g = recipe.generation
    for index, entry in enumerate(entries):
        seen[entry.spec] += 1
        name = entry.name or (entry.spec if totals[entry.spec] == 1 else f"{entry.spec}#{seen[entry.spec]}")
        members.append(
            PoolMember(
                name=name,
                spec=entry.spec,
                generation_kwargs={
                    "temperature": g.temperature if entry.temperature is None else entry.temperature,
                    "top_p": g.top_p if entry.top_p is None else entry.top_p,
                    "seed": recipe.seed + index if entry.seed is None else entry.seed,
                },
                engine_kwargs={**recipe.engine_kwargs, **entry.engine_kwargs},
            )
        )
    return members


def preflight(recipe: GRARecipe) -> None:
    """Pool size and names, and the seed data (one line on failure), before any model loads."""
    from synthalign.steps.seeds import read_seed_rows

    check_pool(recipe)
    s = recipe.seed_data
    read_seed_rows(s.source, [s.instruction_column, s.response_column], limit=1, split=s.split, config=s.hub_config)


def override_llms(recipe: GRARecipe, llms: list[str]) -> GRARecipe:
    """``--llm SPEC`` (repeatable) replaces the pool."""
    data = recipe.model_dump()
    data["pool"] = list(llms)
    updated = GRARecipe.model_validate(data)
    check_pool(updated)
    return updated


# ------------------------------------------------------------------ pipeline


class GRAPipeline(Pipeline):
    """distilabel's Pipeline, run one step at a time when the recipe asks for it."""

    sequential_stages: bool = False

    def run(self, *args: Any, **kwargs: Any) -> Distiset:  # type: ignore[override]
        if self.sequential_stages and kwargs.get("load_groups") is None:
            kwargs["load_groups"] = "sequential_step_execution"
        return super().run(*args, **kwargs)


def build_round_pipeline(recipe: GRARecipe, round_index: int, prepared_sources: list[str]) -> GRAPipeline:
    """The pipeline of one round. Round 1 reads the seed data; later rounds read the
    labelled pool from ``prepared_sources`` (parquet folders of the output folder)."""
    from synthalign.steps.embeddings import EmbedTexts
    from synthalign.steps.gra import (
        Adjudicate,
        CollectPool,
        DeduplicateSamples,
        DescribeExamples,
        DrawCandidates,
        FinalizeSamples,
        GenerateInstructions,
        GenerateResponses,
        LoadPool,
        PoolLLM,
        ReviewInstructions,
        ReviewResponses,
        sources_digest,
    )

    check_pool(recipe)
    members = pool_members(recipe)
    g, s, d = recipe.generation, recipe.seed_data, recipe.dedup
    llm_steps = {
        "input_batch_size": g.batch_size,
        "max_new_tokens": g.max_new_tokens,
        "structured_max_new_tokens": g.structured_max_new_tokens,
        "truncated_is_error": g.truncated_is_error,
        "resources": g.resources.step_resources(),
    }

    def pool() -> PoolLLM:
        return PoolLLM(members=[m.model_copy(deep=True) for m in members])

    first = round_index == 1
    with GRAPipeline(
        name=f"{recipe.name}-round-{round_index}",
        description=f"GRA round {round_index}: generator, reviewers, adjudicator from a pool of {len(members)} LLMs",
        cache_dir=recipe.cache_dir,
    ) as pipeline:
        load = LoadPool(
            name="load_pool",
            seed_source=s.source if first else None,
            instruction_column=s.instruction_column,
            response_column=s.response_column,
            input_column=s.input_column,
            seed_limit=s.limit,
            seed_split=s.split,
            seed_hub_config=s.hub_config,
            prepared_sources=list(prepared_sources),
            prepared_digest=sources_digest(prepared_sources) if prepared_sources else None,
            n_members=len(members),
            seed=recipe.seed,
            batch_size=g.batch_size,
        )
        describe = DescribeExamples(name="describe_pool", llm=pool(), **llm_steps)
        collect = CollectPool(name="pool")
        draw = DrawCandidates(
            name="draw_candidates",
            round_index=round_index,
            seed=recipe.seed,
            num_candidates=recipe.samples_per_round,
            member_names=[m.name for m in members],
            n_reviewers=recipe.n_reviewers,
            min_examples=recipe.min_examples,
            max_examples=recipe.max_examples,
            domain_sampling=recipe.domain_sampling,
        )
        instructions = GenerateInstructions(name="generate_instructions", llm=pool(), **llm_steps)
        review_instructions = ReviewInstructions(
            name="review_instructions", llm=pool(), min_valid_reviews=recipe.min_valid_reviews, **llm_steps
        )
        responses = GenerateResponses(name="generate_responses", llm=pool(), **llm_steps)
        review_responses = ReviewResponses(
            name="review_responses",
            llm=pool(),
            min_mean=recipe.tau,
            max_std=recipe.delta,
            min_valid_reviews=recipe.min_valid_reviews,
            **llm_steps,
        )
        adjudicate = Adjudicate(name="adjudicate", llm=pool(), min_mean=recipe.tau, **llm_steps)
        embedder = {
            "model": d.model,
            "text_columns": list(d.text_columns),
            "encode_batch_size": d.batch_size,
            "device": d.device,
            "backend": d.backend,
            "input_batch_size": max(g.batch_size, d.batch_size),
        }
        embed_samples = EmbedTexts(name="embed_samples", where={"status": "pending"}, **embedder)
        embed_pool = EmbedTexts(name="embed_pool", **embedder)
        dedup = DeduplicateSamples(name="deduplicate", threshold=d.threshold)
        enrich = DescribeExamples(name="enrich_samples", llm=pool(), where={"status": "kept"}, **llm_steps)
        samples = FinalizeSamples(name="samples")

        load >> describe >> [collect, draw, embed_pool]
        draw >> instructions >> review_instructions >> responses >> review_responses >> adjudicate >> embed_samples
        [embed_samples, embed_pool] >> dedup >> enrich >> samples
    pipeline.sequential_stages = recipe.sequential()
    return pipeline


def build_pipeline(recipe: GRARecipe) -> GRAPipeline:
    """``synthalign generate gra``: round 1 from the seed data."""
    return build_round_pipeline(recipe, 1, [])


# ------------------------------------------------------------------ datasets


def _features(kind: str) -> Features:
    """Explicit schemas, so all-None columns stay typed and rounds concatenate."""
    from datasets import Features, List, Value

    from synthalign.steps.committee import INSTRUCTION_CRITERIA, RESPONSE_DIMENSIONS
    from synthalign.steps.gra import METADATA_FIELDS, TEMPLATES

    s, f, i, b = Value("string"), Value("float64"), Value("int64"), Value("bool")
    chat = List({"role": s, "content": s})
    metadata_models = {k: s for k in METADATA_FIELDS}
    if kind == "pool":
        return Features(
            {
                "pool_id": s, "origin": s, "instruction": s, "response": s, "domain": s,
                "keywords": List(s), "summary": s, "metadata_models": metadata_models,
                "metadata_error": s, "prompt_templates": {k: s for k in METADATA_FIELDS},
            }
        )  # fmt: skip
    scores = {d: i for d in RESPONSE_DIMENSIONS}
    return Features(
        {
            "messages": chat, "candidate_id": s, "round": i, "status": s, "status_reason": s,
            "domain": s, "keywords": List(s), "instruction": s, "response": s, "summary": s,
            "examples": List({"pool_id": s, "keywords": List(s), "summary": s}),
            "generator_model": s, "reviewer_models": List(s), "adjudicator_model": s, "enricher_model": s,
            "instruction_reviews": List({"model": s, **{c: b for c in INSTRUCTION_CRITERIA}, "error": s, "raw": s}),
            "instruction_accepted": b,
            "response_reviews": List({"model": s, **scores, "score": f, "feedback": s, "error": s, "raw": s}),
            "review_mean": f, "review_std": f, "review_decision": s, "review_reason": s,
            "adjudication": {"model": s, **scores, "reason": s, "error": s, "raw": s},
            "adjudication_score": f, "adjudication_reason": s, "adjudication_kept": b,
            "dedup_match": s, "dedup_similarity": f, "generation_error": s, "generation_raw": s,
            "response_error": s, "response_raw": s, "metadata_models": metadata_models,
            "metadata_error": s, "prompt_templates": {k: s for k in TEMPLATES},
        }
    )  # fmt: skip


def _conform(value: Any, feature: Any) -> Any:
    """Fill missing struct keys with None (recursively) so a row matches ``feature``."""
    from datasets import List

    if value is None:
        return None
    if isinstance(feature, dict):
        return {k: _conform(value.get(k) if isinstance(value, dict) else None, sub) for k, sub in feature.items()}
    if isinstance(feature, List) and isinstance(value, list):
        return [_conform(v, feature.feature) for v in value]
    return value


def make_dataset(rows: list[dict[str, Any]], kind: str) -> Dataset:
    """Rows as a Dataset with the published schema of ``kind`` ("pool" or "samples")."""
    from datasets import Dataset

    feats = _features(kind)
    columns = {k: [_conform(r.get(k), feat) for r in rows] for k, feat in feats.items()}
    return Dataset.from_dict(columns, features=feats)


def _leaf_rows(distiset: Distiset, name: str) -> list[dict[str, Any]]:
    if name in distiset:
        return distiset[name]["train"].to_list()
    return []


def round_rows(distiset: Distiset) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(seed pool rows, candidate rows)`` of one round's run."""
    pool = [r for r in _leaf_rows(distiset, "pool") if r.get("origin") == "seed"]
    return pool, _leaf_rows(distiset, "samples")


def assemble(
    seeds: list[dict[str, Any]], rounds: dict[int, list[dict[str, Any]]]
) -> dict[str, Dataset]:
    """The published configs from the seed pool and every round's candidates.

    ``datasets.load_dataset`` cannot load a config with zero rows, so a round that kept
    nothing gets no ``round-k`` config (and ``rejected`` only exists when something was
    rejected). ``all`` is always written, as the default config, even when it is empty:
    a run that kept nothing still publishes its funnel and rejected candidates.
    """
    kept = {r: [row for row in rows if row.get("status") == "kept"] for r, rows in sorted(rounds.items())}
    rejected = [row for _, rows in sorted(rounds.items()) for row in rows if row.get("status") != "kept"]
    out = {DEFAULT_CONFIG: make_dataset([row for rows in kept.values() for row in rows], "samples")}
    for r, rows in kept.items():
        if rows:
            out[f"round-{r}"] = make_dataset(rows, "samples")
    if rejected:
        out[REJECTED_CONFIG] = make_dataset(rejected, "samples")
    out[SEEDS_CONFIG] = make_dataset(seeds, "pool")
    return out


def to_datasets(distiset: Distiset, recipe: GRARecipe) -> dict[str, Dataset]:
    """``synthalign generate gra``: configs all, round-1, rejected, seeds."""
    seeds, candidates = round_rows(distiset)
    return assemble(seeds, {1: candidates})


def funnel(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Counts along GRA's funnel for one round's candidates."""
    status = Counter(r.get("status") for r in rows)
    adjudicated = [r for r in rows if r.get("review_decision") == "adjudicate"]
    return {
        "candidates": len(rows),
        "generation_failed": status["generation_failed"],
        "instruction_rejected": status["instruction_rejected"],
        "response_failed": status["response_failed"],
        "response_rejected": status["response_rejected"],
        "adjudicated": len(adjudicated),
        "adjudication_kept": sum(1 for r in adjudicated if r.get("adjudication_kept")),
        "adjudication_discarded": status["adjudication_discarded"],
        "duplicate": status["duplicate"],
        "kept": status["kept"],
    }


def build_card(datasets: dict[str, Dataset], info: dict[str, Any]) -> CardContent:
    from synthalign.cards.gra import build_card as _build

    return _build(datasets, info)


# ------------------------------------------------------------------ the loop


def recipe_fingerprint(recipe: GRARecipe) -> str:
    """What must not change between the rounds of one loop folder (not `rounds`, the
    cache folder nor `generation.resources`, which only say how far, where and on
    how many GPUs to run)."""
    data = recipe.model_dump(mode="json", exclude={"rounds": True, "cache_dir": True, "generation": {"resources"}})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _read_manifest(output: Path, recipe: GRARecipe) -> list[dict[str, Any]]:
    """Finished rounds recorded in an existing loop folder (checked against the recipe)."""
    from synthalign.hub import RUN_INFO_FILENAME

    record_path = output / RUN_INFO_FILENAME
    if not record_path.is_file():
        raise OutputError(
            f"output folder {output} exists but is not a finished GRA loop folder (no {RUN_INFO_FILENAME}): "
            "pass --overwrite or choose another --output"
        )
    record = json.loads(record_path.read_text(encoding="utf-8"))
    manifest = record.get(MANIFEST_KEY)
    if not isinstance(manifest, dict):
        raise OutputError(
            f"output folder {output} was not written by `synthalign loop gra`: pass --overwrite or choose another --output"
        )
    if manifest.get("fingerprint") != recipe_fingerprint(recipe):
        raise OutputError(
            f"output folder {output} was made with a different GRA recipe: use that recipe to resume, "
            "or pass --overwrite to start over"
        )
    return list(manifest.get("rounds") or [])


def run_loop(
    config_path: str | Path,
    *,
    iterations: int | None = None,
    output: str | Path,
    overwrite: bool = False,
    push_to_hub: str | None = None,
) -> Path:
    """Run GRA rounds 1..N into ``output``, resuming after the last finished round.

    After every round the folder is rewritten in full (atomically), so an interrupted
    loop leaves the last finished round's folder; the next call picks up from there,
    and distilabel's cache resumes the interrupted round itself.
    """
    from synthalign.hub import push_hub_folder, read_hub_folder, write_hub_folder
    from synthalign.methods import preflight as shared_preflight

    recipe = load_recipe(config_path, GRARecipe)
    shared_preflight(METHOD, recipe)
    check_push_token(push_to_hub)
    total = iterations or recipe.rounds
    output = Path(output).expanduser().absolute()
    exists = output.exists() and any(output.iterdir())
    done = [] if overwrite or not exists else _read_manifest(output, recipe)
    if len(done) >= total:
        logger.info("all %d rounds already in %s", total, output)
        return output
    seeds: list[dict[str, Any]] = []
    rounds: dict[int, list[dict[str, Any]]] = {}
    if done:
        loaded, _ = read_hub_folder(output)
        seeds = loaded[SEEDS_CONFIG].to_list()
        everything = [row for c in (DEFAULT_CONFIG, REJECTED_CONFIG) if c in loaded for row in loaded[c].to_list()]
        for entry in done:
            rounds[entry["round"]] = [r for r in everything if r["round"] == entry["round"]]
    for r in range(len(done) + 1, total + 1):
        prepared = [] if r == 1 else [str(output / "data" / SEEDS_CONFIG)] + [
            str(output / "data" / f"round-{k}") for k in range(1, r) if (output / "data" / f"round-{k}").is_dir()
        ]
        distiset = run_pipeline(build_round_pipeline(recipe, r, prepared), api_key=recipe.api_key)
        round_seeds, candidates = round_rows(distiset)
        if r == 1:
            seeds = round_seeds
        rounds[r] = candidates
        counts = funnel(candidates)
        earlier_kept = sum(1 for k in range(1, r) for c in rounds[k] if c.get("status") == "kept")
        done.append({"round": r, **counts, "pool_rows": len(seeds) + earlier_kept})
        datasets = assemble(seeds, rounds)
        info = run_info(
            METHOD,
            recipe,
            counts={k: len(v) for k, v in datasets.items()},
            **{MANIFEST_KEY: {"fingerprint": recipe_fingerprint(recipe), "rounds": done}},
        )
        card = build_card(datasets, info)
        write_hub_folder(
            output,
            datasets,
            card,
            pipeline_yaml=distiset.pipeline_path,
            run_info=info,
            default_config=DEFAULT_CONFIG,
            overwrite=output.exists(),
        )
        logger.info("GRA round %d: %d candidates, %d kept", r, counts["candidates"], counts["kept"])
    if push_to_hub:
        push_hub_folder(output, push_to_hub)
    return output


METHOD = Method(
    name="gra",
    recipe_cls=GRARecipe,
    build_pipeline=build_pipeline,
    to_datasets=to_datasets,
    build_card=build_card,
    default_config=DEFAULT_CONFIG,
    override_llms=override_llms,
    preflight=preflight,
    loop=run_loop,
)
