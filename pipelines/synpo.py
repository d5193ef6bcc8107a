"""SynPO: self-boosting with synthetic preference data (arXiv 2410.06961; ``shared/seeds/002_*``).

One iteration k, with M0 the initial (SFT) model and P_k the current policy (P_1 = M0,
P_k = the SimPO model of iteration k-1), is four states of the run, each one pipeline
and one Hub folder ``iter-k/<stage>``:

1. ``generator-set`` (iteration 1 only, or every iteration with ``retrain_generator``):
   from each seed prompt, two of its keywords plus one noise keyword from another
   prompt go into the keywords-to-prompt template; the prompt is the completion
   (config ``generator``). M0 is fine-tuned on it (SFT): the self-prompt generator.
2. ``improver-set``: P_k answers the seed prompts; a (prompt, P_k answer) -> gold
   answer example is kept only where the scorer rates gold above P_k's answer by more
   than the threshold (Appendix C.2; configs ``improver`` and ``candidates``). M0 is
   fine-tuned on it: the improver I_k. When no row passes, no improver is trained and
   the pairs stage uses M0, prompted.
3. ``pairs``: keyword lists sampled from corpus paragraphs (skipping those earlier
   iterations used); the generator writes prompts; unusable prompts are dropped with
   their reason; P_k answers; I_k improves P_k's answer into the chosen response; the
   rejected response is the initial model's answer y0 (section 2.2;
   ``rejected_from: initial``) or P_k's own (``rejected_from: policy``). Pairs with a
   reward gap not above the threshold, or with more than 50% repeated n-grams, are
   dropped (Appendix C.3); a fixed number is sampled (configs ``pairs``,
   ``candidates``, ``prompts``).
4. ``preferences``: the pairs of iterations 1..k, read from their folders
   (``mix_iterations: false``: iteration k's alone). SimPO on them trains the next
   policy, from M0 again (section 3.1: "preference optimize the initial models again";
   ``simpo_from``).

This module is declarative (see :mod:`synthalign.contract`): the recipe, the pipeline
of each state, the states' order and what is trained between them. The driver
(:mod:`synthalign.run`) runs them, writes the folders, trains, records every state in
``DIR/synthalign.json`` and resumes after the last finished one.
``synthalign generate synpo`` is stage 3 alone, in the output folder itself, with the
recipe's models (``prompt_generator``, ``improver``; default: the policy, prompted).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilabel.pipeline import Pipeline

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.cards.synpo import PAIR_LABELS, build_card, stage_funnel
from synthalign.contract import Method, Progress, State, TrainJob
from synthalign.llms import load_llm
from synthalign.pipelines.synpo_recipe import (
    LOOP_KEYS,
    DecodingSection,
    SynPORecipe,
    llm_spec,
)
from synthalign.steps.clean import CleanOutputs
from synthalign.steps.decontaminate import decontaminated
from synthalign.steps.keywords import read_paragraphs
from synthalign.steps.pairwise import CompareWithLLM, response_scorer
from synthalign.steps.scoring import ScoreWithRewardModel
from synthalign.steps.seeds import LOCAL_SUFFIXES
from synthalign.steps.synpo import (
    PROMPT_CLEAN,
    AnswerPrompt,
    AnswerPromptInitial,
    FlagInvalidPrompts,
    GeneratePromptFromKeywords,
    ImproveResponse,
    KeepValidPrompts,
    MixManualPrompts,
    response_clean,
)
from synthalign.steps.synpo_data import (
    BuildGeneratorExamples,
    LoadPairs,
    LoadSeedExamples,
    SampleKeywordLists,
    read_config,
    read_seed_examples,
)
from synthalign.steps.synpo_publish import (
    PAIR_COLUMNS,
    PAIR_STAGES,
    GeneratorRows,
    ImproverCandidates,
    ImproverRows,
    JudgeImproverRows,
    PairCandidates,
    PairRows,
    PreferenceRows,
    PromptRows,
    SelectPairs,
)

__all__ = ["CONFIGS", "METHOD", "SynPORecipe", "build_pipeline", "first_state", "next_state"]

CONFIGS: dict[str, list[str]] = {
    "generator-set": ["generator"],
    "improver-set": ["improver", "candidates"],
    "pairs": ["pairs", "candidates", "prompts"],
    "preferences": ["preferences"],
}
"""The published configs (leaf steps) of each stage's folder, in order."""


def _is_local(source: str) -> bool:
    path = Path(source).expanduser()
    return (
        path.suffix.lower() in LOCAL_SUFFIXES or path.exists() or source.startswith((".", "/", "~"))
    )


def preflight(recipe: SynPORecipe) -> None:
    """Read the seed data and a local corpus before any model loads (a streamed Hub
    corpus is read by the pipeline itself)."""
    read_seed_examples(**recipe.seed_data.model_dump())
    if recipe.mix_prompts is not None and _is_local(recipe.mix_prompts.source):
        _mix_prompts(recipe)[0].manual_prompts()  # the file and its column exist
    c = recipe.corpus
    if _is_local(c.source):
        read_paragraphs(
            c.source,
            text_column=c.text_column,
            max_documents=c.max_documents,
            min_words=c.min_words,
        )


# ------------------------------------------------------------------ states


def _folder(k: int, stage: str) -> str:
    return f"iter-{k}/{stage}"


def _trained(progress: Progress, name: str, before: int) -> str | None:
    """The last model called ``name`` trained in an iteration before ``before``."""
    found = None
    for state in progress.states:
        if state["iteration"] < before and name in (state.get("models") or {}):
            found = state["models"][name]
    return found


def _policy(recipe: SynPORecipe, progress: Progress, k: int) -> str:
    """P_k: iteration k-1's SimPO model (or the last one trained), else M0."""
    return _trained(progress, "policy", k) or recipe.policy


def _column(folder: str, config: str, column: str) -> list[Any]:
    """One column of a config an earlier state published ([] when it has no rows)."""
    return [row[column] for row in read_config(folder, config, [column])]


def _paragraphs_used(progress: Progress, k: int) -> int:
    """Corpus paragraphs (of the seeded order) consumed through iteration k-1."""
    folder = progress.folder(f"{k - 1}:pairs") if k > 1 else None
    positions = _column(folder, "prompts", "paragraph_position") if folder else []
    return max(positions) + 1 if positions else 0


def _job(recipe: SynPORecipe, kind: str, name: str, config: str, k: int, model: str) -> TrainJob:
    """Train ``name`` (from ``model``) on this state's ``config``, into ``iter-k/name``."""
    section = {"generator": recipe.generator_training, "improver": recipe.improver_training}
    keys = section.get(name, recipe.simpo_training).model_dump(mode="json", exclude=set(LOOP_KEYS))
    recipe_keys = {**keys, "seed": recipe.seed}
    return TrainJob(
        kind=kind,
        name=name,
        model=model,
        config=config,
        output=f"iter-{k}/{name}",
        recipe=recipe_keys,
    )


def generator_state(recipe: SynPORecipe, k: int) -> State:
    job = _job(recipe, "sft", "generator", "generator", k, recipe.policy)
    return State(
        iteration=k, stage="generator-set", folder=_folder(k, "generator-set"), train=(job,)
    )


def improver_state(recipe: SynPORecipe, k: int, progress: Progress) -> State:
    job = _job(recipe, "sft", "improver", "improver", k, recipe.policy)
    data = {
        "models": {"policy": llm_spec(recipe, _policy(recipe, progress, k))},
        "generation_seed": recipe.seed + k,
    }
    return State(
        iteration=k,
        stage="improver-set",
        folder=_folder(k, "improver-set"),
        train=(job,),
        data=data,
    )


def pairs_state(recipe: SynPORecipe, k: int, progress: Progress) -> State:
    """Stage 3 of iteration k: the models wired from earlier states, the corpus offset."""
    improver_record = progress.record(f"{k}:improver-set") or {}
    models = {
        "generator": _trained(progress, "generator", k + 1) or recipe.policy,
        "policy": _policy(recipe, progress, k),
        "initial": recipe.policy,
        "improver": (improver_record.get("models") or {}).get("improver") or recipe.policy,
    }
    # rejected = y0 of the initial model (paper) or the policy's own answer; in iteration
    # 1 the policy is the initial model, so one answer serves both
    from_initial = recipe.rejected_from == "initial" and k > 1
    data = {
        "models": {role: llm_spec(recipe, model) for role, model in models.items()},
        "rejected_column": "response_initial" if from_initial else "response_policy",
        "paragraph_skip": _paragraphs_used(progress, k),
        "generation_seed": recipe.seed + k,
    }
    return State(iteration=k, stage="pairs", folder=_folder(k, "pairs"), data=data)


def preferences_state(recipe: SynPORecipe, k: int, progress: Progress) -> State | None:
    """The preference set and the SimPO job; None while it has no pair.

    With ``mix_iterations`` (default) the set holds the pairs of iterations 1..k
    together, each row with its ``iteration``; without it, iteration k's pairs alone.
    """
    first = 1 if recipe.mix_iterations else k
    folders = {
        j: progress.folder(f"{j}:pairs")
        for j in range(first, k + 1)
        if progress.counts(f"{j}:pairs").get("pairs")
    }
    if not folders:
        return None
    base = recipe.policy if recipe.simpo_from == "initial" else _policy(recipe, progress, k)
    job = _job(recipe, "simpo", "policy", "preferences", k, base)
    funnels = {
        str(j): stage_funnel(_column(folder, "candidates", "drop_stage"), PAIR_STAGES, PAIR_LABELS)
        for j, folder in folders.items()
    }
    return State(
        iteration=k,
        stage="preferences",
        folder=_folder(k, "preferences"),
        inputs={f"pairs-{j}": folder for j, folder in folders.items()},
        train=(job,),
        data={"funnels": funnels, "mix_iterations": recipe.mix_iterations},
    )


def iteration_start(recipe: SynPORecipe, k: int, progress: Progress) -> State:
    if k == 1 or recipe.retrain_generator:
        return generator_state(recipe, k)
    return improver_state(recipe, k, progress)


def first_state(recipe: SynPORecipe, loop: bool) -> State:
    """``loop``: iteration 1 from the generator set; ``generate``: one pairs stage in the
    output folder with the recipe's models."""
    if loop:
        return generator_state(recipe, 1)
    models = {
        "generator": recipe.prompt_generator or recipe.policy,
        "policy": recipe.policy,
        "initial": recipe.policy,
        "improver": recipe.improver or recipe.policy,
    }
    data = {
        "models": {role: llm_spec(recipe, model) for role, model in models.items()},
        "rejected_column": "response_policy",  # one round: the policy is the initial model
        "paragraph_skip": 0,
        "generation_seed": recipe.seed,
    }
    return State(iteration=1, stage="pairs", folder=".", data=data)


def next_state(recipe: SynPORecipe, state: State, progress: Progress) -> State:
    k = state.iteration
    if state.stage == "generator-set":
        return improver_state(recipe, k, progress)
    if state.stage == "improver-set":
        return pairs_state(recipe, k, progress)
    if (
        state.stage == "pairs"
        and (preferences := preferences_state(recipe, k, progress)) is not None
    ):
        return preferences
    return iteration_start(recipe, k + 1, progress)


# ------------------------------------------------------------------ pipelines


def _role(recipe: SynPORecipe, role: DecodingSection, spec: str, seed: int) -> dict[str, Any]:
    """What an LLM step of a role takes: its LLM (decoding, engine options, api key),
    batch size and resources."""
    engine_kwargs = {**recipe.engine_kwargs, **role.engine_kwargs}
    if role.api_key is not None and spec.startswith("openai:"):
        engine_kwargs["api_key"] = role.api_key
    llm = load_llm(
        spec,
        max_new_tokens=role.max_new_tokens,
        temperature=role.temperature,
        top_p=role.top_p,
        seed=seed,
        engine_kwargs=engine_kwargs,
    )
    return {
        "llm": llm,
        "input_batch_size": role.batch_size,
        "resources": role.resources.step_resources(),
        "add_raw_output": False,
        "add_raw_input": False,
    }


def _pipeline(recipe: SynPORecipe, state: State, description: str) -> Pipeline:
    name = (
        f"{recipe.name}-pairs"
        if state.folder == "."
        else f"{recipe.name}-iter{state.iteration}-{state.stage}"
    )
    return Pipeline(name=name, description=description, cache_dir=recipe.cache_dir)


def _keywords(recipe: SynPORecipe) -> dict[str, Any]:
    k = recipe.keywords
    return {"language": k.language, "max_ngram": k.max_ngram, "top": k.top}


def generator_set_pipeline(recipe: SynPORecipe, state: State) -> Pipeline:
    """Seed prompts -> keyword lists with a noise keyword -> the ``generator`` SFT rows."""
    k = recipe.keywords
    with _pipeline(recipe, state, "SynPO self-prompt generator set") as pipeline:
        load = LoadSeedExamples(name="load_seed_examples", **recipe.seed_data.model_dump())
        build = BuildGeneratorExamples(
            name="build_generator_examples",
            seed=recipe.seed + state.iteration,
            from_prompt=k.from_prompt,
            noise=k.noise,
            **_keywords(recipe),
        )
        load >> build >> GeneratorRows(name="generator", iteration=state.iteration)
    return pipeline


def _scorer(
    recipe: SynPORecipe, name: str, responses: list[str], scores: list[str]
) -> ScoreWithRewardModel | CompareWithLLM:
    """The recipe's scorer (reward model or pairwise) over two response columns."""
    return response_scorer(
        recipe.scorer.kind,
        recipe.scorer.reward_model,
        recipe.scorer.pairwise,
        seed=recipe.seed,
        name=name,
        response_columns=responses,
        score_columns=scores,
    )


def improver_set_pipeline(recipe: SynPORecipe, state: State) -> Pipeline:
    """The current policy answers the seed prompts; gold and policy answers are scored."""
    decoding = recipe.response_decoding
    policy = state.data["models"]["policy"]
    with _pipeline(recipe, state, "SynPO response improver set") as pipeline:
        load = LoadSeedExamples(
            name="load_seed_examples",
            batch_size=decoding.batch_size,
            **recipe.seed_data.model_dump(),
        )
        answer = AnswerPrompt(
            name="answer_seed_prompts",
            **_role(recipe, decoding, policy, state.data["generation_seed"]),
        )
        score = _scorer(
            recipe,
            "score_gold_and_policy",
            ["response", "response_policy"],
            ["score_gold", "score_policy"],
        )
        judge = JudgeImproverRows(
            name="judge_improver_rows", threshold=recipe.scorer.improver_threshold
        )
        leaves = [
            ImproverRows(name="improver", iteration=state.iteration),
            ImproverCandidates(name="candidates", iteration=state.iteration),
        ]
        load >> answer >> score >> judge >> leaves
    return pipeline


def _mix_prompts(recipe: SynPORecipe) -> list[MixManualPrompts]:
    """The manual-prompt step of ``mix_prompts`` (SynPO Mix.), or none."""
    mix = recipe.mix_prompts
    if mix is None:
        return []
    return [MixManualPrompts(name="mix_manual_prompts", **mix.model_dump(mode="json"))]


def pairs_pipeline(recipe: SynPORecipe, state: State) -> Pipeline:
    """Keywords -> prompts (flagged) -> policy answer (+ initial answer) -> improved -> scored
    -> selected; leaves ``prompts``, ``candidates`` and ``pairs``."""
    models, rejected, seed = (
        state.data["models"],
        state.data["rejected_column"],
        state.data["generation_seed"],
    )
    f, k = recipe.filters, state.iteration
    with _pipeline(recipe, state, "SynPO synthetic preference pairs") as pipeline:
        sample = SampleKeywordLists(
            name="sample_keyword_lists",
            num_lists=recipe.prompts_per_iteration,
            skip=state.data["paragraph_skip"],
            per_list=recipe.keywords.per_list,
            seed=recipe.seed,
            batch_size=recipe.prompt_decoding.batch_size,
            **recipe.corpus.model_dump(),
            **_keywords(recipe),
        )
        write = GeneratePromptFromKeywords(
            name="generate_prompts",
            **_role(recipe, recipe.prompt_decoding, models["generator"], seed),
        )
        clean_prompts = CleanOutputs(
            name="clean_prompts",
            columns=[PROMPT_CLEAN],
            input_batch_size=recipe.prompt_decoding.batch_size,
        )
        flag = FlagInvalidPrompts(
            name="flag_invalid_prompts",
            min_words=f.prompt_min_words,
            min_chars=f.prompt_min_chars,
            language=recipe.keywords.language,
        )
        keep = KeepValidPrompts(
            name="keep_valid_prompts", input_batch_size=recipe.response_decoding.batch_size
        )
        answers = [
            AnswerPrompt(
                name="answer_prompts",
                **_role(recipe, recipe.response_decoding, models["policy"], seed),
            )
        ]
        if rejected == "response_initial":
            role = _role(recipe, recipe.response_decoding, models["initial"], seed)
            answers.append(AnswerPromptInitial(name="answer_prompts_initial", **role))
        improve = ImproveResponse(
            name="improve_responses",
            **_role(recipe, recipe.improver_decoding, models["improver"], seed),
        )
        clean_responses = CleanOutputs(
            name="clean_responses",
            columns=response_clean(rejected),
            input_batch_size=recipe.improver_decoding.batch_size,
        )
        score = _scorer(
            recipe,
            "score_pairs",
            ["response_improved", rejected],
            ["score_chosen", "score_rejected"],
        )
        select = SelectPairs(
            name="select_pairs",
            rejected_column=rejected,
            threshold=recipe.scorer.pair_threshold,
            max_repetition=f.max_repetition,
            repetition_ngram=f.repetition_ngram,
            num_pairs=recipe.pairs_per_iteration,
            seed=recipe.seed,
            iteration=k,
        )
        prompts = PromptRows(name="prompts", iteration=k)
        candidates = PairCandidates(name="candidates", iteration=k)
        pairs = PairRows(
            name="pairs",
            iteration=k,
            rejected_column=rejected,
            rejected_from=recipe.rejected_from,
            models=models,
        )
        prompt_steps = [sample, write, clean_prompts, *_mix_prompts(recipe), flag]
        for before, after in itertools.pairwise(prompt_steps):
            before >> after
        flag >> [prompts, keep, select]
        chain = keep
        for step in [*answers, improve, clean_responses, score]:
            chain = chain >> step
        texts = ["prompt", "response_improved", rejected]
        decontaminated(chain, recipe.decontaminate, texts) >> select >> [candidates, pairs]
    return pipeline


def preferences_pipeline(recipe: SynPORecipe, state: State) -> Pipeline:
    """The ``pairs`` configs of iterations 1..k (or k alone), read from their folders, as
    one config."""
    folders = [
        state.inputs[key] for key in sorted(state.inputs, key=lambda key: int(key.split("-")[1]))
    ]
    what = "growing" if recipe.mix_iterations else "one iteration's"
    with _pipeline(recipe, state, f"SynPO {what} preference set") as pipeline:
        load = LoadPairs(
            name="load_pairs", folders=folders, config="pairs", columns=list(PAIR_COLUMNS)
        )
        load >> PreferenceRows(name="preferences")
    return pipeline


BUILDERS: dict[str, Callable[[SynPORecipe, State], Pipeline]] = {
    "generator-set": generator_set_pipeline,
    "improver-set": improver_set_pipeline,
    "pairs": pairs_pipeline,
    "preferences": preferences_pipeline,
}


def build_pipeline(recipe: SynPORecipe, state: State) -> Pipeline:
    """The distilabel pipeline of one state (see the module docstring)."""
    return BUILDERS[state.stage](recipe, state)


METHOD = Method(
    name="synpo",
    recipe_cls=SynPORecipe,
    build_pipeline=build_pipeline,
    configs=lambda recipe, state: list(CONFIGS[state.stage]),
    default_config="pairs",
    card_section=build_card,
    preflight=preflight,
    first_state=first_state,
    next_state=next_state,
    funnel_configs=("candidates",),
    loops=True,
)
