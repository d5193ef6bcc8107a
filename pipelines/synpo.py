"""SynPO: self-boosting with synthetic preference data (arXiv 2410.06961; ``shared/seeds/002_*``).

One iteration k, with M0 the initial (SFT) model and P_k the current policy (P_1 = M0,
P_k = the SimPO model of iteration k-1):

1. **Self-prompt generator** (once, or every iteration with ``retrain_generator``): from
   each seed prompt, two of its keywords plus one noise keyword from another prompt
   go into the keywords-to-prompt template; the prompt is the completion. M0 is
   fine-tuned on that set (SFT).
2. **Response improver set**: P_k answers the seed prompts; a (prompt, P_k answer) ->
   gold answer example is kept only where the scorer rates gold above P_k's answer by
   more than the threshold (Appendix C.2). M0 is fine-tuned on it: the improver I_k.
3. **Preference pairs**: keyword lists sampled from corpus paragraphs; the generator
   writes prompts; unusable prompts are flagged and counted; P_k answers; I_k improves
   P_k's answer into the chosen response; the rejected response is the initial model's
   answer y0 (section 2.2; ``rejected_from: initial``) or P_k's own
   (``rejected_from: policy``). Pairs with a reward gap not above the threshold, or
   with more than 50% repeated n-grams, are dropped (Appendix C.3); a fixed number is
   sampled into the growing preference set.
4. **SimPO** on the whole preference set trains the next policy, starting again from
   M0 (section 3.1: "preference optimize the initial models again"; ``simpo_from``).

``synthalign loop synpo --config R --iterations N --output DIR`` runs this; every
dataset is a Hub-layout folder and ``DIR/manifest.json`` records counts, thresholds,
model paths and metrics. A rerun resumes: finished iterations and finished stages of
an unfinished one are reused. ``synthalign generate synpo`` runs step 3 alone with
given models (``prompt_generator``, ``improver``; default: the policy itself).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.recipes import StageResources
from synthalign.errors import OutputError, RecipeError, SeedDataError
from synthalign.methods import Method
from synthalign.recipes import Recipe, RecipePath, StrictModel, load_recipe
from synthalign.trainers.sft import SFTRecipe
from synthalign.trainers.simpo import SimPORecipe

if TYPE_CHECKING:
    from datasets import Dataset, Features
    from distilabel.distiset import Distiset
    from distilabel.pipeline import Pipeline

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"

# ------------------------------------------------------------------ recipe


class SeedSection(StrictModel):
    """Seed SFT data: a ``messages`` column (TRL SFT format) or prompt/response columns.

    Only the first user turn and the assistant turn after it are used.
    """

    source: RecipePath = Field(description="local JSONL/JSON/CSV/Parquet file (relative to the recipe) or Hub dataset id")
    messages_column: str | None = "messages"
    prompt_column: str | None = Field(default=None, description="instead of messages_column")
    response_column: str | None = Field(default=None, description="instead of messages_column")
    split: str = "train"
    hub_config: str | None = None
    limit: int | None = Field(default=None, ge=1, description="first N rows (the paper uses 18K)")

    @model_validator(mode="after")
    def _columns(self) -> SeedSection:
        if bool(self.prompt_column) != bool(self.response_column):
            raise ValueError("set both prompt_column and response_column, or neither (then messages_column is used)")
        if not self.prompt_column and not self.messages_column:
            raise ValueError("set messages_column, or prompt_column and response_column")
        return self


class CorpusSection(StrictModel):
    """Paragraphs to sample keyword lists from (the paper: RefinedWeb)."""

    source: RecipePath = Field(
        description="local .txt (a paragraph per line) / JSONL (relative to the recipe), or a Hub dataset id (streamed)"
    )
    text_column: str = "text"
    split: str = "train"
    hub_config: str | None = None
    max_documents: int | None = Field(default=None, ge=1, description="documents read (the paper samples 1M paragraphs)")
    min_words: int = Field(default=20, ge=1, description="shorter paragraphs are skipped")


class KeywordSection(StrictModel):
    """Keyword extraction (YAKE, minus stopwords and personal names) and list shapes."""

    language: str = "en"
    max_ngram: int = Field(default=2, ge=1, le=3)
    top: int = Field(default=12, ge=3)
    from_prompt: int = Field(default=2, ge=1, description="keywords drawn from the seed prompt itself")
    noise: int = Field(default=1, ge=0, description="noise keywords drawn from another seed prompt")
    per_list: int = Field(default=3, ge=1, description="keywords per list sampled from one paragraph")


class DecodingSection(StrictModel):
    """Sampling settings for one role (the paper samples at temperature 0.7)."""

    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_new_tokens: int = Field(default=1024, ge=1)
    batch_size: int = Field(
        default=512, ge=1, description="rows per LLM call (distilabel input_batch_size); large keeps the engine busy"
    )
    resources: StageResources = Field(
        default_factory=StageResources, description="replicas / GPUs of this role's step (see docs/perf-ray.md)"
    )


class ScorerSection(StrictModel):
    """The small scoring model and the two gap thresholds (Appendix C.2, C.3).

    The paper uses PairRM with 0.20 (Mistral) and ArmoRM-Llama3-8B with 0.02 (Llama-3);
    any sequence-classification reward model works here, with its own scale: tune the
    threshold to it.
    """

    model: str = Field(default="builtin:tiny-reward", description="reward model: builtin:NAME, path or Hub id")
    improver_threshold: float = Field(default=0.02, description="keep seed rows where gold - policy score > this")
    pair_threshold: float = Field(default=0.02, description="keep pairs where chosen - rejected score > this")
    batch_size: int = Field(default=8, ge=1)
    max_length: int | None = Field(default=None, ge=8)
    torch_dtype: str = "float32"
    trust_remote_code: bool = False


class FilterSection(StrictModel):
    """Prompt validity and the repetition filter (Appendix C.3: over 50% repetition is dropped)."""

    prompt_min_words: int = Field(default=3, ge=1)
    prompt_min_chars: int = Field(default=10, ge=1)
    max_repetition: float = Field(default=0.5, ge=0, le=1, description="largest allowed share of repeated n-grams")
    repetition_ngram: int = Field(default=3, ge=1)


def _loop_owns_paths(section: StrictModel) -> None:
    """Training sections name no model or data: the loop sets them for each stage."""
    for key in ("model", "dataset", "dataset_config"):
        if getattr(section, key):
            raise ValueError(f"'{key}' is set by the SynPO loop; remove it from this section")


class SFTStage(SFTRecipe):
    """SFT settings for the generator or the improver (Appendix C.1/C.2: 3 epochs, warmup 0.1)."""

    model: str = ""
    num_train_epochs: float = 3.0
    delete_checkpoints: bool = True

    @model_validator(mode="after")
    def _paths(self) -> SFTStage:
        _loop_owns_paths(self)
        return self


class SimPOStage(SimPORecipe):
    """SimPO settings for each iteration's policy (published SimPO defaults)."""

    model: str = ""
    delete_checkpoints: bool = True

    @model_validator(mode="after")
    def _paths(self) -> SimPOStage:
        _loop_owns_paths(self)
        return self


class SynPORecipe(Recipe):
    """A SynPO run: the initial model, seed data, corpus, thresholds and training settings."""

    name: str = "synpo"
    policy: str = Field(description="the initial SFT model M0: builtin:NAME, a local folder or a Hub id")
    backend: Literal["transformers", "vllm"] = Field(
        default="transformers", description="engine that generates with M0 and the trained models"
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="backend options for every LLM (e.g. gpu_memory_utilization)"
    )
    seed_data: SeedSection
    corpus: CorpusSection
    keywords: KeywordSection = Field(default_factory=KeywordSection)
    prompts_per_iteration: int = Field(default=50_000, ge=1, description="keyword lists -> prompts per iteration")
    pairs_per_iteration: int = Field(default=10_000, ge=1, description="pairs sampled into the preference set")
    rejected_from: Literal["initial", "policy"] = Field(
        default="initial", description="rejected = the initial model's answer y0 (paper) or the current policy's"
    )
    simpo_from: Literal["initial", "policy"] = Field(
        default="initial", description="SimPO starts from M0 each iteration (paper) or from the current policy"
    )
    retrain_generator: bool = Field(default=False, description="retrain the prompt generator every iteration")
    prompt_decoding: DecodingSection = Field(default_factory=lambda: DecodingSection(max_new_tokens=256))
    response_decoding: DecodingSection = Field(default_factory=DecodingSection)
    improver_decoding: DecodingSection = Field(default_factory=DecodingSection)
    scorer: ScorerSection = Field(default_factory=ScorerSection)
    filters: FilterSection = Field(default_factory=FilterSection)
    generator_training: SFTStage = Field(default_factory=SFTStage)
    improver_training: SFTStage = Field(default_factory=SFTStage)
    simpo_training: SimPOStage = Field(default_factory=SimPOStage)
    prompt_generator: str | None = Field(
        default=None, description="`generate synpo` only: a trained generator (default: the policy, prompted)"
    )
    improver: str | None = Field(
        default=None, description="`generate synpo` only: a trained improver (default: the policy, prompted)"
    )
    work_dir: str | None = Field(
        default=None, description="`generate synpo` only: where keyword lists are written (default: the synthalign cache)"
    )

    def llm_specs(self) -> list[str]:
        specs = [llm_spec(self, self.policy)]
        specs += [llm_spec(self, m) for m in (self.prompt_generator, self.improver) if m]
        return specs


def llm_spec(recipe: SynPORecipe, model: str) -> str:
    """The backend spec that generates with ``model`` (a built-in, a folder or a Hub id)."""
    if model.startswith("builtin:") and recipe.backend == "transformers":
        return model
    if ":" in model.split("/")[0] and not model.startswith("builtin:"):
        return model  # already a spec (transformers:..., vllm:..., openai:...)
    return f"{recipe.backend}:{model}"


# ---------------------------------------------------------------- data in


def seed_examples(recipe: SynPORecipe) -> list[dict[str, str]]:
    """Seed rows as ``{"prompt", "response"}`` (first user turn, the answer after it)."""
    from synthalign.steps.seeds import read_seed_rows

    section = recipe.seed_data
    columns = [section.prompt_column, section.response_column] if section.prompt_column else [section.messages_column]
    rows = read_seed_rows(
        section.source, [c for c in columns if c], limit=section.limit, split=section.split, config=section.hub_config
    )
    out: list[dict[str, str]] = []
    for row in rows:
        if section.prompt_column:
            prompt, response = row.get(section.prompt_column), row.get(section.response_column)
        else:
            prompt, response = _first_exchange(row.get(section.messages_column))
        if isinstance(prompt, str) and isinstance(response, str) and prompt.strip() and response.strip():
            out.append({"prompt": prompt.strip(), "response": response.strip()})
    if not out:
        raise SeedDataError(f"seed data {section.source}: no row has a user prompt and an assistant answer")
    return out


def _first_exchange(messages: Any) -> tuple[str | None, str | None]:
    if not isinstance(messages, list):
        return None, None
    for i, message in enumerate(messages[:-1]):
        if isinstance(message, dict) and message.get("role") == "user":
            reply = messages[i + 1]
            if isinstance(reply, dict) and reply.get("role") == "assistant":
                return message.get("content"), reply.get("content")
            return None, None
    return None, None


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows atomically (a pipeline.yaml names this file; it must never be half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def _extractor(recipe: SynPORecipe) -> Any:
    from synthalign.steps.keywords import KeywordExtractor

    k = recipe.keywords
    return KeywordExtractor(language=k.language, max_ngram=k.max_ngram, top=k.top)


def keyword_lists(recipe: SynPORecipe, n: int, *, skip: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``n`` keyword lists from the corpus, skipping paragraphs earlier iterations used."""
    from synthalign.steps.keywords import read_paragraphs, sample_keyword_lists

    c = recipe.corpus
    paragraphs = read_paragraphs(
        c.source,
        text_column=c.text_column,
        split=c.split,
        config=c.hub_config,
        max_documents=c.max_documents,
        min_words=c.min_words,
        seed=recipe.seed,
    )
    rows, stats = sample_keyword_lists(
        paragraphs, n, seed=recipe.seed, skip=skip, per_list=recipe.keywords.per_list, extractor=_extractor(recipe)
    )
    if not rows and skip:
        # the corpus is used up: start over from its first paragraph rather than stop
        logger.warning("corpus %s exhausted after %d paragraphs; reusing paragraphs", c.source, skip)
        rows, stats = sample_keyword_lists(
            paragraphs, n, seed=seed, skip=0, per_list=recipe.keywords.per_list, extractor=_extractor(recipe)
        )
    info = {**stats.__dict__, "paragraphs": len(paragraphs), "skip": skip}
    return [{"keywords": r["keywords"], "paragraph_index": r["paragraph_index"]} for r in rows], info


# ---------------------------------------------------------------- pipelines


def _llm(recipe: SynPORecipe, model: str, decoding: DecodingSection, seed: int) -> Any:
    from synthalign.llms import load_llm

    return load_llm(
        llm_spec(recipe, model),
        max_new_tokens=decoding.max_new_tokens,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        seed=seed,
        engine_kwargs=dict(recipe.engine_kwargs),
    )


def _scorer_step(recipe: SynPORecipe, name: str, responses: list[str], scores: list[str]) -> Any:
    from synthalign.steps.scoring import ScoreWithRewardModel

    s = recipe.scorer
    return ScoreWithRewardModel(
        name=name,
        model=s.model,
        response_columns=responses,
        score_columns=scores,
        scoring_batch_size=s.batch_size,
        max_length=s.max_length,
        torch_dtype=s.torch_dtype,
        trust_remote_code=s.trust_remote_code,
    )


def build_improver_set_pipeline(
    recipe: SynPORecipe, *, seed_file: Path, policy: str, name: str, cache_dir: str | None, seed: int
) -> Pipeline:
    """The current policy answers the seed prompts; gold and policy answers are scored."""
    from distilabel.pipeline import Pipeline

    from synthalign.steps.seeds import LoadSeeds
    from synthalign.steps.synpo import AnswerPrompt

    d = recipe.response_decoding
    with Pipeline(name=name, cache_dir=cache_dir) as pipeline:
        load = LoadSeeds(name="load_seed_prompts", source=str(seed_file), columns=["prompt", "response"], batch_size=d.batch_size)
        answer = AnswerPrompt(name="answer_seed_prompts", llm=_llm(recipe, policy, d, seed), input_batch_size=d.batch_size, resources=d.resources.step_resources())
        score = _scorer_step(recipe, "score_gold_and_policy", ["response", "response_policy"], ["score_gold", "score_policy"])
        load >> answer >> score
    return pipeline


def build_pairs_pipeline(
    recipe: SynPORecipe,
    *,
    keywords_file: Path,
    generator: str,
    policy: str,
    initial: str | None,
    improver: str,
    name: str,
    cache_dir: str | None,
    seed: int,
) -> Pipeline:
    """Keywords -> prompts (flagged) -> policy answer (+ initial answer) -> improved -> scored.

    Two leaves: ``all_prompts`` (every generated prompt with ``prompt_invalid``) and
    ``score_pairs`` (the candidates). ``initial`` is None when the rejected response is
    the policy's own answer.
    """
    from distilabel.pipeline import Pipeline
    from distilabel.steps import KeepColumns

    from synthalign.steps.seeds import LoadSeeds
    from synthalign.steps.synpo import (
        AnswerPrompt,
        AnswerPromptInitial,
        FlagInvalidPrompts,
        GeneratePromptFromKeywords,
        ImproveResponse,
        KeepValidPrompts,
    )

    f = recipe.filters
    pd, rd, idec = recipe.prompt_decoding, recipe.response_decoding, recipe.improver_decoding
    rejected = "response_initial" if initial else "response_policy"
    with Pipeline(name=name, cache_dir=cache_dir) as pipeline:
        load = LoadSeeds(name="load_keyword_lists", source=str(keywords_file), columns=["keywords", "paragraph_index"], batch_size=pd.batch_size)
        write = GeneratePromptFromKeywords(name="generate_prompts", llm=_llm(recipe, generator, pd, seed), input_batch_size=pd.batch_size, resources=pd.resources.step_resources())
        flag = FlagInvalidPrompts(
            name="flag_invalid_prompts", min_words=f.prompt_min_words, min_chars=f.prompt_min_chars, language=recipe.keywords.language
        )
        record = KeepColumns(
            name="all_prompts",
            columns=["keywords", "paragraph_index", "prompt", "prompt_invalid", "prompt_gen_error", "prompt_gen_model", "prompt_gen_prompt"],
        )
        keep = KeepValidPrompts(name="keep_valid_prompts", input_batch_size=rd.batch_size)
        answer = AnswerPrompt(name="answer_prompts", llm=_llm(recipe, policy, rd, seed), input_batch_size=rd.batch_size, resources=rd.resources.step_resources())
        improve = ImproveResponse(name="improve_responses", llm=_llm(recipe, improver, idec, seed), input_batch_size=idec.batch_size, resources=idec.resources.step_resources())
        score = _scorer_step(recipe, "score_pairs", ["response_improved", rejected], ["score_chosen", "score_rejected"])
        load >> write >> flag >> [record, keep]
        if initial:
            first = AnswerPromptInitial(name="answer_prompts_initial", llm=_llm(recipe, initial, rd, seed), input_batch_size=rd.batch_size, resources=rd.resources.step_resources())
            keep >> answer >> first >> improve >> score
        else:
            keep >> answer >> improve >> score
    return pipeline


def _work_dir(recipe: SynPORecipe) -> Path:
    if recipe.work_dir:
        return Path(recipe.work_dir).expanduser()
    from synthalign.models import cache_dir

    digest = hashlib.sha256(recipe.model_dump_json().encode()).hexdigest()[:12]
    return cache_dir() / "synpo" / digest


def build_pipeline(recipe: SynPORecipe) -> Pipeline:
    """`synthalign generate synpo`: one round of preference pairs with the recipe's models."""
    keywords_file = _work_dir(recipe) / "keyword_lists.jsonl"
    if not keywords_file.is_file():
        rows, _ = keyword_lists(recipe, recipe.prompts_per_iteration, skip=0, seed=recipe.seed)
        write_jsonl(keywords_file, rows)
    initial = None  # one round: the policy is the initial model
    return build_pairs_pipeline(
        recipe,
        keywords_file=keywords_file,
        generator=recipe.prompt_generator or recipe.policy,
        policy=recipe.policy,
        initial=initial,
        improver=recipe.improver or recipe.policy,
        name=f"{recipe.name}-pairs",
        cache_dir=recipe.cache_dir,
        seed=recipe.seed,
    )


# ---------------------------------------------------------------- data out


def _chat_features() -> Any:
    from datasets import List, Value

    return List({"role": Value("string"), "content": Value("string")})


def features(kind: str) -> Features:
    """The schema of each published config (explicit, so columns of all-None stay typed)."""
    from datasets import Features, List, Value

    s, f, i = Value("string"), Value("float64"), Value("int64")
    chat = _chat_features()
    common = {"iteration": i}
    table: dict[str, dict[str, Any]] = {
        "generator": {
            "messages": chat, "keywords": List(s), "prompt_keywords": List(s), "noise_keywords": List(s),
            "source_index": i, "prompt_template": s, **common,
        },
        "improver": {
            "messages": chat, "prompt": s, "response_gold": s, "response_policy": s, "score_gold": f,
            "score_policy": f, "score_gap": f, "policy_model": s, "scorer": s, "improver_template": s, **common,
        },
        "improver_candidates": {
            "prompt": s, "response_gold": s, "response_policy": s, "score_gold": f, "score_policy": f,
            "score_gap": f, "filter_reason": s, "policy_error": s, "scoring_error": s, **common,
        },
        "prompts": {
            "keywords": List(s), "paragraph_index": i, "prompt": s, "prompt_invalid": s,
            "prompt_gen_error": s, "prompt_gen_model": s, "prompt_gen_prompt": s, **common,
        },
        "candidates": {
            "prompt": s, "keywords": List(s), "paragraph_index": i, "response_policy": s, "response_initial": s,
            "response_improved": s, "score_chosen": f, "score_rejected": f, "score_gap": f,
            "repetition_chosen": f, "repetition_rejected": f, "filter_reason": s, "policy_error": s,
            "initial_error": s, "improver_error": s, "scoring_error": s, **common,
        },
        "pairs": {
            "prompt": chat, "chosen": chat, "rejected": chat, "keywords": List(s), "paragraph_index": i,
            "score_chosen": f, "score_rejected": f, "score_gap": f, "repetition_chosen": f,
            "repetition_rejected": f, "rejected_from": s, "generator_model": s, "policy_model": s,
            "rejected_model": s, "improver_model": s, "scorer": s, "prompt_template": s,
            "improver_template": s, **common,
        },
    }  # fmt: skip
    return Features(table[kind])


def make_dataset(rows: list[dict[str, Any]], kind: str) -> Dataset:
    from datasets import Dataset

    feats = features(kind)
    return Dataset.from_dict({k: [r.get(k) for r in rows] for k in feats}, features=feats)


def _leaf_rows(distiset: Distiset, name: str) -> list[dict[str, Any]]:
    """Rows of one leaf step ("default" when the pipeline has a single leaf); [] if it made none."""
    for key in (name, "default"):
        if key in distiset:
            return distiset[key]["train"].to_list()
    return []


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def generator_set(recipe: SynPORecipe, seeds: list[dict[str, str]], *, iteration: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The self-prompt generator's SFT rows (keywords prompt -> original seed prompt)."""
    from synthalign.steps.keywords import build_generator_examples
    from synthalign.steps.prompts import render, template_id

    template = "synpo_keywords_to_prompt.jinja2"
    examples, stats = build_generator_examples(
        [s["prompt"] for s in seeds],
        seed=recipe.seed + iteration,
        extractor=_extractor(recipe),
        keywords_from_prompt=recipe.keywords.from_prompt,
        noise_keywords=recipe.keywords.noise,
    )
    rows = [
        {
            "messages": _user(render(template, keywords=e["keywords"])) + _assistant(e["completion"]),
            "keywords": e["keywords"],
            "prompt_keywords": e["prompt_keywords"],
            "noise_keywords": e["noise_keywords"],
            "source_index": e["source_index"],
            "prompt_template": template_id(template),
            "iteration": iteration,
        }
        for e in examples
    ]
    return rows, stats


def improver_sets(
    distiset: Distiset, recipe: SynPORecipe, *, iteration: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Kept improver examples, all candidates with their filter reason, and the funnel."""
    from synthalign.steps.prompts import render, template_id
    from synthalign.steps.synpo import score_gap, score_gap_passes

    template = "synpo_improve.jinja2"
    threshold = recipe.scorer.improver_threshold
    kept, candidates = [], []
    funnel: Counter[str] = Counter()
    for row in _leaf_rows(distiset, "score_gold_and_policy"):
        funnel["seed prompts"] += 1
        gap = score_gap(row.get("score_gold"), row.get("score_policy"))
        if row.get("policy_error") or not row.get("response_policy"):
            reason = "policy answer failed"
        elif gap is None:
            reason = "not scored"
        elif not score_gap_passes(row["score_gold"], row["score_policy"], threshold):
            reason = f"gold - policy <= {threshold}"
        else:
            reason = None
        funnel[reason or "kept"] += 1
        candidates.append(
            {
                "prompt": row["prompt"], "response_gold": row["response"], "response_policy": row.get("response_policy"),
                "score_gold": row.get("score_gold"), "score_policy": row.get("score_policy"), "score_gap": gap,
                "filter_reason": reason, "policy_error": row.get("policy_error"),
                "scoring_error": row.get("scoring_error"), "iteration": iteration,
            }
        )  # fmt: skip
        if reason is None:
            kept.append(
                {
                    "messages": _user(render(template, prompt=row["prompt"], response=row["response_policy"]))
                    + _assistant(row["response"]),
                    "prompt": row["prompt"], "response_gold": row["response"],
                    "response_policy": row["response_policy"], "score_gold": row["score_gold"],
                    "score_policy": row["score_policy"], "score_gap": gap, "policy_model": row.get("policy_model"),
                    "scorer": row.get("scorer"), "improver_template": template_id(template), "iteration": iteration,
                }
            )  # fmt: skip
    return kept, candidates, dict(funnel)


def pair_sets(
    distiset: Distiset,
    recipe: SynPORecipe,
    *,
    iteration: int,
    rejected_from: str,
    rejected_column: str,
    models: dict[str, str],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Prompts (all, flagged), candidates (with filter reasons), and sampled pairs; the funnel.

    The funnel counts, in order: keyword lists, prompts generated, invalid prompts by
    reason, valid prompts, candidates lost to each filter, pairs that pass, pairs sampled.
    """
    from synthalign.steps.prompts import template_id
    from synthalign.steps.synpo import repeated_ngram_fraction, score_gap, score_gap_passes

    f = recipe.filters
    threshold = recipe.scorer.pair_threshold
    prompts = []
    invalid: Counter[str] = Counter()
    for row in _leaf_rows(distiset, "all_prompts"):
        prompts.append({**{k: row.get(k) for k in features("prompts")}, "iteration": iteration})
        invalid[row.get("prompt_invalid") or "valid"] += 1
    rejected_col = rejected_column
    error_col = f"{rejected_col.removeprefix('response_')}_error"
    candidates, passing = [], []
    lost: Counter[str] = Counter()
    for row in _leaf_rows(distiset, "score_pairs"):
        chosen, rejected = row.get("response_improved"), row.get(rejected_col)
        gap = score_gap(row.get("score_chosen"), row.get("score_rejected"))
        rep_c, rep_r = repeated_ngram_fraction(chosen, f.repetition_ngram), repeated_ngram_fraction(rejected, f.repetition_ngram)
        if row.get("policy_error") or row.get(error_col) or not rejected:
            reason = "answer failed"
        elif row.get("improver_error") or not chosen:
            reason = "improvement failed"
        elif gap is None:
            reason = "not scored"
        elif not score_gap_passes(row["score_chosen"], row["score_rejected"], threshold):
            reason = f"score gap <= {threshold}"
        elif rep_c > f.max_repetition or rep_r > f.max_repetition:
            reason = f"over {f.max_repetition:.0%} repeated {f.repetition_ngram}-grams"
        else:
            reason = None
        lost[reason or "passed"] += 1
        candidate = {
            "prompt": row["prompt"], "keywords": row.get("keywords"), "paragraph_index": row.get("paragraph_index"),
            "response_policy": row.get("response_policy"), "response_initial": row.get("response_initial"),
            "response_improved": chosen, "score_chosen": row.get("score_chosen"),
            "score_rejected": row.get("score_rejected"), "score_gap": gap, "repetition_chosen": rep_c,
            "repetition_rejected": rep_r, "filter_reason": reason, "policy_error": row.get("policy_error"),
            "initial_error": row.get("initial_error"), "improver_error": row.get("improver_error"),
            "scoring_error": row.get("scoring_error"), "iteration": iteration,
        }  # fmt: skip
        candidates.append(candidate)
        if reason is None:
            passing.append((candidate, row))
    rng = random.Random(f"{recipe.seed}:{iteration}:pairs")
    picked = sorted(rng.sample(range(len(passing)), min(recipe.pairs_per_iteration, len(passing))))
    picked_set = set(picked)
    for index, (candidate, _) in enumerate(passing):
        if index not in picked_set:
            candidate["filter_reason"] = "not sampled"
    pairs = []
    for index in picked:
        candidate, row = passing[index]
        pairs.append(
            {
                "prompt": _user(row["prompt"]), "chosen": _assistant(candidate["response_improved"]),
                "rejected": _assistant(row[rejected_col]), "keywords": row.get("keywords"),
                "paragraph_index": row.get("paragraph_index"), "score_chosen": candidate["score_chosen"],
                "score_rejected": candidate["score_rejected"], "score_gap": candidate["score_gap"],
                "repetition_chosen": candidate["repetition_chosen"],
                "repetition_rejected": candidate["repetition_rejected"], "rejected_from": rejected_from,
                "generator_model": models["generator"], "policy_model": models["policy"],
                "rejected_model": models["initial"] if rejected_from == "initial" else models["policy"],
                "improver_model": models["improver"], "scorer": row.get("scorer"),
                "prompt_template": template_id("synpo_keywords_to_prompt.jinja2"),
                "improver_template": template_id("synpo_improve.jinja2"), "iteration": iteration,
            }
        )  # fmt: skip
    n_prompts = len(prompts)
    funnel = {
        "keyword lists": n_prompts,
        "prompts generated": n_prompts - invalid.get("generation failed", 0),
        "valid prompts": invalid.get("valid", 0),
        "candidates scored": len(candidates),
        "score gap passed": len(candidates) - sum(v for k, v in lost.items() if k.startswith(("answer", "improvement", "not scored", "score gap"))),
        "repetition passed": lost.get("passed", 0),
        "pairs sampled": len(pairs),
    }
    stats = {
        "funnel": funnel,
        "invalid_prompts": {k: v for k, v in invalid.items() if k != "valid"},
        "dropped": {k: v for k, v in lost.items() if k != "passed"},
        "pair_threshold": threshold,
        "max_repetition": f.max_repetition,
    }
    return {"prompts": prompts, "candidates": candidates, "pairs": pairs}, stats


def to_datasets(distiset: Distiset, recipe: SynPORecipe) -> dict[str, Dataset]:
    """`generate synpo`: the pairs, the scored candidates and the prompts (non-empty configs only)."""
    policy = llm_spec(recipe, recipe.policy)
    models = {
        "generator": llm_spec(recipe, recipe.prompt_generator or recipe.policy),
        "policy": policy,
        "initial": policy,
        "improver": llm_spec(recipe, recipe.improver or recipe.policy),
    }
    # one round: the policy is the initial model, so its answer is y0 under either setting
    sets, _ = pair_sets(
        distiset, recipe, iteration=1, rejected_from=recipe.rejected_from, rejected_column="response_policy", models=models
    )
    return {name: make_dataset(rows, name) for name, rows in sets.items() if rows}


def build_card(datasets: dict[str, Dataset], info: dict[str, Any]) -> Any:
    from synthalign.cards.synpo import build_card as card

    return card(datasets, info)


# -------------------------------------------------------------------- loop


def _hash(recipe: SynPORecipe) -> str:
    """What must not change between a run and its resume (everything but the cache and
    the steps' resources, which only say where and on how many GPUs to run)."""
    no_resources = {"resources": True}
    exclude = {"cache_dir": True, **{k: no_resources for k in ("prompt_decoding", "response_decoding", "improver_decoding")}}
    data = recipe.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _folder_done(path: Path) -> bool:
    from synthalign.hub import RUN_INFO_FILENAME

    return (path / RUN_INFO_FILENAME).is_file()


def _model_done(path: Path) -> bool:
    from synthalign.trainers.common import RECIPE_FILENAME

    return (path / RECIPE_FILENAME).is_file()


def _run_info(path: Path) -> dict[str, Any]:
    from synthalign.hub import RUN_INFO_FILENAME

    return json.loads((path / RUN_INFO_FILENAME).read_text(encoding="utf-8"))


def _run(pipeline: Pipeline, recipe: SynPORecipe) -> Distiset:
    """Run a pipeline through the shared path (resumable, the recipe's api_key applied)."""
    from synthalign.methods import run_pipeline

    return run_pipeline(pipeline, api_key=recipe.api_key)


def _preload_engines() -> None:
    """Import torch and transformers once here, before distilabel forks its step workers.

    Forked workers then share the imported modules instead of each importing them again
    (seconds of CPU per LLM step). Importing is fork-safe; running torch ops here is not,
    which is why training happens in a separate process.
    """
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401



class Loop:
    """State and stages of one ``synthalign loop synpo`` run (see the module docstring)."""

    def __init__(self, recipe: SynPORecipe, output: Path) -> None:
        self.recipe = recipe
        self.out = output
        self.work = output / "work"
        self.cache_dir = recipe.cache_dir or str(self.work / "distilabel-cache")
        self.manifest_path = output / MANIFEST
        self.manifest = self._load_manifest()

    # -- bookkeeping -----------------------------------------------------------

    def _load_manifest(self) -> dict[str, Any]:
        from synthalign.cards.base import versions

        if self.manifest_path.is_file():
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if manifest.get("recipe_hash") != _hash(self.recipe):
                raise OutputError(
                    f"{self.out} was made with a different recipe: rerun with --overwrite, "
                    "or choose another --output to keep both"
                )
            return manifest
        return {
            "method": "synpo",
            "recipe_hash": _hash(self.recipe),
            "recipe": self.recipe.model_dump(mode="json"),
            "initial_model": self.recipe.policy,
            "thresholds": {
                "improver_score_gap": self.recipe.scorer.improver_threshold,
                "pair_score_gap": self.recipe.scorer.pair_threshold,
                "max_repetition": self.recipe.filters.max_repetition,
                "repetition_ngram": self.recipe.filters.repetition_ngram,
            },
            "scorer": self.recipe.scorer.model,
            "versions": versions(),
            "iterations": [],
        }

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(self.manifest_path, self.manifest)

    def entry(self, k: int) -> dict[str, Any]:
        for item in self.manifest["iterations"]:
            if item["iteration"] == k:
                return item
        item = {"iteration": k, "status": "running", "stages": {}}
        self.manifest["iterations"].append(item)
        return item

    def done(self, k: int) -> bool:
        return any(i["iteration"] == k and i["status"] == "done" for i in self.manifest["iterations"])

    def iter_dir(self, k: int) -> Path:
        return self.out / f"iter-{k}"

    def policy_for(self, k: int) -> str:
        """P_k: the initial model for iteration 1, else iteration k-1's SimPO model."""
        if k == 1:
            return self.recipe.policy
        return self.entry(k - 1)["policy_out"]

    # -- stages ------------------------------------------------------------------

    def seed_file(self) -> tuple[Path, list[dict[str, str]]]:
        path = self.work / "seed.jsonl"
        seeds = seed_examples(self.recipe)
        if not path.is_file():
            write_jsonl(path, seeds)
        return path, seeds

    def write_folder(self, path: Path, rows: dict[str, list[dict[str, Any]]], info: dict[str, Any], *, default: str, pipeline_yaml: Any = None) -> Path | None:
        """A Hub-layout folder of the non-empty configs; None (and no folder) when all are empty."""
        from synthalign.hub import write_hub_folder

        datasets = {name: make_dataset(r, kind) for name, (r, kind) in rows.items() if r}
        if not datasets:
            return None
        info = {"method": "synpo", **info, "counts": {n: len(r) for n, (r, _) in rows.items()}}
        card = build_card(datasets, info)
        return write_hub_folder(
            path, datasets, card, pipeline_yaml=pipeline_yaml, run_info=info,
            default_config=default if default in datasets else None, overwrite=True,
        )  # fmt: skip

    def train(self, kind: str, stage: SFTStage | SimPOStage, *, model: str, dataset: Path, config: str, output: Path) -> dict[str, Any]:
        """Train one model with ``synthalign train KIND`` in a fresh process, unless already saved.

        The recipe is written beside the model (``OUTPUT.recipe.yaml``), so the exact
        training can be rerun by hand. A separate process is not only tidy: distilabel
        forks its step workers from this process, and a process that has run torch
        threads (training) hangs forked children on their first torch call.
        """
        import subprocess
        import sys

        import yaml

        from synthalign.trainers.common import read_training_record

        data = stage.model_dump(mode="json", exclude={"model", "dataset", "dataset_config", "output_dir"})
        if data.get("lora"):
            data["lora"]["merge"] = True  # every backend (vLLM too) must load the result directly
        data["seed"] = self.recipe.seed
        data.update(model=model, dataset=str(dataset), dataset_config=config, output_dir=str(output))
        if not _model_done(output):
            recipe_file = output.with_name(f"{output.name}.recipe.yaml")
            recipe_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            code = "import sys; from synthalign.cli import app; sys.exit(app())"
            proc = subprocess.run([sys.executable, "-c", code, "train", kind, "--config", str(recipe_file)], check=False)
            if proc.returncode != 0 or not _model_done(output):
                raise OutputError(
                    f"{kind} training for {output} failed (exit {proc.returncode}; see the log above): "
                    "fix the cause and rerun the same command to resume"
                )
        record = read_training_record(output)
        return {"model": str(output), "base_model": model, "rows": record.get("rows"), "metrics": record.get("metrics", {})}

    def generator(self, k: int, seeds: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        """The prompt generator for iteration k: trained once (or every iteration)."""
        if k > 1 and not self.recipe.retrain_generator:
            first = self.entry(1)["stages"]["generator"]
            return first["model"], {**first, "reused_from_iteration": 1}
        folder = self.iter_dir(k) / "generator-set"
        if not _folder_done(folder):
            rows, stats = generator_set(self.recipe, seeds, iteration=k)
            info = {"stage": "generator-set", "iteration": k, "stats": stats, "seed_data": self.recipe.seed_data.source}
            if self.write_folder(folder, {"generator": (rows, "generator")}, info, default="generator") is None:
                raise SeedDataError(
                    "no seed prompt gave enough keywords for the generator set: use longer seed prompts or lower keywords.from_prompt"
                )
        stats = _run_info(folder).get("stats", {})
        trained = self.train("sft", self.recipe.generator_training, model=self.recipe.policy, dataset=folder, config="generator", output=self.iter_dir(k) / "generator")
        return trained["model"], {**trained, "dataset": str(folder), "counts": stats}

    def improver(self, k: int, policy: str, seed_file: Path) -> tuple[str, dict[str, Any]]:
        """I_k: M0 fine-tuned on (prompt, P_k answer) -> gold where gold wins by the threshold."""
        folder = self.iter_dir(k) / "improver-set"
        if not _folder_done(folder):
            pipeline = build_improver_set_pipeline(
                self.recipe, seed_file=seed_file, policy=policy, name=f"synpo-{self.tag}-iter{k}-improver-set",
                cache_dir=self.cache_dir, seed=self.recipe.seed + k,
            )  # fmt: skip
            distiset = _run(pipeline, self.recipe)
            kept, candidates, funnel = improver_sets(distiset, self.recipe, iteration=k)
            info = {"stage": "improver-set", "iteration": k, "funnel": funnel, "threshold": self.recipe.scorer.improver_threshold, "policy_model": policy}
            rows = {"improver": (kept, "improver"), "candidates": (candidates, "improver_candidates")}
            if self.write_folder(folder, rows, info, default="improver", pipeline_yaml=distiset.pipeline_path) is None:
                raise SeedDataError("the policy answered no seed prompt: check the policy model and seed data")
        info = _run_info(folder)
        if not info["counts"].get("improver"):
            # nothing to learn this iteration: the improver is the initial model, prompted
            return self.recipe.policy, {"skipped": "no seed row passed the score gap", "dataset": str(folder), "funnel": info["funnel"]}
        trained = self.train("sft", self.recipe.improver_training, model=self.recipe.policy, dataset=folder, config="improver", output=self.iter_dir(k) / "improver")
        return trained["model"], {**trained, "dataset": str(folder), "funnel": info["funnel"]}

    def pairs(self, k: int, *, generator: str, policy: str, improver: str) -> dict[str, Any]:
        """Keyword lists -> prompts -> pairs; this iteration's sample is written to ``pairs/``."""
        folder = self.iter_dir(k) / "pairs"
        if _folder_done(folder):
            info = _run_info(folder)
            return {"dataset": str(folder), **{key: info[key] for key in ("funnel", "keywords", "stats") if key in info}}
        keywords_file = self.work / f"iter-{k}-keyword-lists.jsonl"
        stats_file = keywords_file.with_suffix(".json")
        if keywords_file.is_file() and stats_file.is_file():  # an interrupted run sampled them already
            kw_stats = json.loads(stats_file.read_text(encoding="utf-8"))
        else:
            skip = sum(
                i["stages"].get("pairs", {}).get("keywords", {}).get("paragraphs_seen", 0)
                for i in self.manifest["iterations"]
                if i["iteration"] < k
            )
            lists, kw_stats = keyword_lists(self.recipe, self.recipe.prompts_per_iteration, skip=skip, seed=self.recipe.seed)
            if not lists:
                raise SeedDataError(
                    f"corpus {self.recipe.corpus.source} gave no keyword list: use a larger corpus or lower keywords.per_list"
                )
            write_jsonl(keywords_file, lists)
            _write_json(stats_file, kw_stats)
        # rejected = y0 of the initial model (paper) or the policy's own answer; in
        # iteration 1 the policy is the initial model, so one answer serves both
        initial = self.recipe.policy if (self.recipe.rejected_from == "initial" and k > 1) else None
        pipeline = build_pairs_pipeline(
            self.recipe, keywords_file=keywords_file, generator=generator, policy=policy, initial=initial,
            improver=improver, name=f"synpo-{self.tag}-iter{k}-pairs", cache_dir=self.cache_dir, seed=self.recipe.seed + k,
        )  # fmt: skip
        distiset = _run(pipeline, self.recipe)
        models = {
            "generator": llm_spec(self.recipe, generator), "policy": llm_spec(self.recipe, policy),
            "initial": llm_spec(self.recipe, self.recipe.policy), "improver": llm_spec(self.recipe, improver),
        }  # fmt: skip
        sets, stats = pair_sets(
            distiset, self.recipe, iteration=k, rejected_from=self.recipe.rejected_from,
            rejected_column="response_initial" if initial else "response_policy", models=models,
        )  # fmt: skip
        info = {"stage": "pairs", "iteration": k, "funnel": stats["funnel"], "stats": stats, "keywords": kw_stats, "models": models}
        rows = {"pairs": (sets["pairs"], "pairs"), "candidates": (sets["candidates"], "candidates"), "prompts": (sets["prompts"], "prompts")}
        written = self.write_folder(folder, rows, info, default="pairs", pipeline_yaml=distiset.pipeline_path)
        return {"dataset": str(written) if written else None, "funnel": stats["funnel"], "keywords": kw_stats, "stats": stats}

    def preferences(self, k: int) -> tuple[Path | None, int, dict[str, int]]:
        """The growing preference set: this iteration's sample added to all earlier ones."""
        from datasets import concatenate_datasets, load_dataset

        folder = self.iter_dir(k) / "preferences"
        parts, per_iteration = [], {}
        for j in range(1, k + 1):
            pairs_dir = self.iter_dir(j) / "pairs"
            if _folder_done(pairs_dir) and _run_info(pairs_dir)["counts"].get("pairs"):
                part = load_dataset(str(pairs_dir), "pairs", split="train")
                parts.append(part)
                per_iteration[str(j)] = len(part)
        if not parts:
            return None, 0, per_iteration
        if not _folder_done(folder):
            from synthalign.hub import write_hub_folder

            data = concatenate_datasets(parts)
            funnels = {str(i["iteration"]): i["stages"].get("pairs", {}).get("funnel", {}) for i in self.manifest["iterations"] if i["iteration"] <= k}
            info = {"method": "synpo", "stage": "preferences", "iteration": k, "per_iteration": per_iteration, "funnels": funnels,
                    "pair_threshold": self.recipe.scorer.pair_threshold, "counts": {"preferences": len(data)}}  # fmt: skip
            write_hub_folder(folder, {"preferences": data}, build_card({"preferences": data}, info), pipeline_yaml=None, run_info=info, default_config="preferences", overwrite=True)
        return folder, sum(per_iteration.values()), per_iteration

    def simpo(self, k: int, policy: str, preferences: Path | None) -> dict[str, Any]:
        if preferences is None:
            return {"skipped": "no preference pairs yet", "model": policy}
        base = self.recipe.policy if self.recipe.simpo_from == "initial" else policy
        return self.train("simpo", self.recipe.simpo_training, model=base, dataset=preferences, config="preferences", output=self.iter_dir(k) / "policy")

    # -- driver ------------------------------------------------------------------

    @property
    def tag(self) -> str:
        return hashlib.sha256(str(self.out.resolve()).encode()).hexdigest()[:8]

    def run(self, iterations: int) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        self.save()
        seed_file, seeds = self.seed_file()
        _preload_engines()
        for k in range(1, iterations + 1):
            if self.done(k):
                logger.info("iteration %d already finished; skipping", k)
                continue
            entry = self.entry(k)
            stages = entry["stages"]
            policy = self.policy_for(k)
            entry["policy_in"] = policy
            generator, stages["generator"] = self.generator(k, seeds)
            self.save()
            improver, stages["improver"] = self.improver(k, policy, seed_file)
            self.save()
            stages["pairs"] = self.pairs(k, generator=generator, policy=policy, improver=improver)
            self.save()
            prefs, total, per_iteration = self.preferences(k)
            stages["preferences"] = {"dataset": str(prefs) if prefs else None, "rows": total, "per_iteration": per_iteration}
            self.save()
            stages["simpo"] = self.simpo(k, policy, prefs)
            entry.update(
                policy_out=stages["simpo"]["model"],
                generator_model=generator,
                improver_model=improver,
                status="done",
            )
            self.save()
        return self.out


def run_loop(config_path: str | Path, *, iterations: int, output: str | Path, overwrite: bool = False) -> Path:
    """``synthalign loop synpo``: run (or resume) ``iterations`` SynPO iterations into ``output``."""
    from synthalign.llms import check_spec

    recipe = load_recipe(config_path, SynPORecipe)  # local data paths resolve against the recipe's folder
    if iterations < 1:
        raise RecipeError("--iterations must be at least 1")
    out = Path(output).expanduser().absolute()
    if overwrite and out.exists():
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise OutputError(f"{out} is not a SynPO loop output; refusing to delete it: choose another --output")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(f"{out} exists and is not a SynPO loop output: choose another --output")
    for spec in recipe.llm_specs():
        check_spec(spec)
    return Loop(recipe, out).run(iterations)


METHOD = Method(
    name="synpo",
    recipe_cls=SynPORecipe,
    build_pipeline=build_pipeline,
    to_datasets=to_datasets,
    build_card=build_card,
    default_config="pairs",
    loop=run_loop,
)
