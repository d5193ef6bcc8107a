"""rDPO (arXiv 2402.08005; ``shared/seeds/003_*``) as a distilabel pipeline.

Shape (the public code's one-conversation generation)::

    load_seeds ─► attach_principle ─► self_critique_revision (teacher: answer, critique, revision)
        ─► clean_outputs (scaffolding out, or the row out)
        ─► score_with_judge | score_with_reward_model (both responses)
            | compare_pairwise (both responses at once, in both orders)
        ─► pair_with_preference_probability (chosen/rejected, drop columns)
        ─► calibrate_tau (a global step: T from all of the run's score gaps)
        ─► {rdpo, dpo, sft, dsc, all}

Published configs (leaf steps of the pipeline, so a rerun of ``pipeline.yaml`` yields
them too; each declares its schema):

- ``rdpo`` (default): ``prompt``, ``chosen``, ``rejected`` (TRL conversational lists),
  ``tau``, ``score_chosen``/``score_rejected`` (and original/revised), ``scorer``,
  ``critique``, ``principle`` and provenance. Train with ``synthalign train rdpo``.
- ``dpo``: the same pairs without ``tau``, for the paper's DPO baseline
  (``synthalign train dpo``).
- ``sft``: the kept pairs as ``messages`` (prompt + chosen), the paper's SFT baseline
  (``synthalign train sft`` with ``dataset_config: sft``).
- ``dsc``: the revisions the scorer prefers to their originals as ``messages``, the
  paper's distilled self-critique baseline (``synthalign train sft`` with
  ``dataset_config: dsc``).
- ``all``: every row, failures included, with ``kept`` / ``drop_stage`` /
  ``drop_reason`` (the card's funnel) and ``drop_detail``.

A config no row reached is not published (the card says it is empty).

Chosen = the revision, by default: the paper treats the revised response as the
intended preferred one and lets ``tau`` carry how much the external scorer agrees (a
worse revision gets tau < 0.5, so the loss leans the other way). ``chosen:
higher_score`` orders each pair by score instead.

Nothing here runs: an rDPO run is one state of the method contract
(:mod:`synthalign.contract`), and the driver (:mod:`synthalign.run`) checks, runs,
writes, records and pushes it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from distilabel.pipeline import Pipeline
from pydantic import Field, field_validator, model_validator

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.cards.rdpo import build_card
from synthalign.contract import Method, State
from synthalign.errors import RecipeError
from synthalign.llms import OpenAICompatLLM, SynthLLM, load_llm
from synthalign.recipes import LLMRole, PairwiseModel, Recipe, RewardModel, SeedData, StrictModel
from synthalign.steps.clean import CleanOutputs
from synthalign.steps.decontaminate import decontaminated
from synthalign.steps.pairwise import CompareWithLLM, response_scorer
from synthalign.steps.rdpo import (
    CLEAN_COLUMNS,
    PRINCIPLES,
    AttachPrinciple,
    PairWithPreferenceProbability,
    SelfCritiqueRevision,
    resolve_principle,
)
from synthalign.steps.rdpo_publish import (
    SelectAllRows,
    SelectDSCMessages,
    SelectPreferencePairs,
    SelectSFTMessages,
)
from synthalign.steps.scoring import JUDGE_SCALES, ScoreWithJudge, ScoreWithRewardModel
from synthalign.steps.seeds import LoadSeeds, seed_rows
from synthalign.steps.tau import COARSE_SCALE_RANGE, CalibrateTau, tau_record

CONFIGS: tuple[str, ...] = ("rdpo", "dpo", "sft", "dsc", "all")

# ------------------------------------------------------------------ recipe


class PromptSeeds(SeedData):
    """Where the prompts come from. Persona seeds also carry the assigned persona."""

    prompt_column: str = "prompt"
    system_column: str | None = Field(
        default=None,
        description="column with a system message (the assigned persona for 'persona')",
    )

    @property
    def columns(self) -> list[str]:
        return [self.prompt_column, *([self.system_column] if self.system_column else [])]

    def mappings(self) -> dict[str, str]:
        """Seed columns renamed to the ``prompt`` / ``system`` the steps read."""
        names = {self.prompt_column: "prompt", self.system_column: "system"}
        return {column: name for column, name in names.items() if column and column != name}


class TeacherRole(LLMRole):
    """The teacher that answers, critiques and revises (the paper: Mixtral-8x7B)."""

    llm: str = Field(
        default="vllm:mistralai/Mixtral-8x7B-Instruct-v0.1", description="LLM spec of the teacher"
    )
    max_new_tokens: int = Field(default=512, ge=1)
    batch_size: int = Field(
        default=512,
        ge=1,
        description="rows per engine call; also the batch of the steps around the LLMs",
    )
    fold_system: bool = Field(
        default=False,
        description=(
            "send the persona system message as the top of the first user turn "
            "(teachers whose chat template has no system role)"
        ),
    )


class JudgeRole(LLMRole):
    """An LLM judge. Rubric and scale default to the principle's preset; decoding is
    greedy by default (a verdict, not a sample)."""

    llm: str = Field(description="LLM spec of the judge")
    max_new_tokens: int = Field(default=256, ge=16)
    temperature: float = Field(
        default=0.0, ge=0, description="decoding temperature of the judge (0 = greedy)"
    )
    batch_size: int = Field(default=512, ge=1, description="responses per engine call")
    rubric: str | None = None
    scale: tuple[int, int] | None = Field(
        default=None, description="[min, max]; presets: 0/1, 0-5, -5..5"
    )
    scale_labels: str | None = None

    @field_validator("scale", mode="before")
    @classmethod
    def _named_scale(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in JUDGE_SCALES:
                raise ValueError(
                    f"unknown scale {value!r}: use one of {list(JUDGE_SCALES)} or [min, max]"
                )
            return JUDGE_SCALES[value]
        return value

    @field_validator("scale")
    @classmethod
    def _ordered(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and value[0] >= value[1]:
            raise ValueError("scale must be [min, max] with min < max")
        return value


class BehaviourSection(StrictModel):
    """Which principle the critique enforces: a preset or your own statement."""

    principle: str = Field(
        default="safety", description="safety | persona | sycophancy, or a name for principle_text"
    )
    principle_text: str | None = Field(
        default=None, description="your own principle (overrides the preset's)"
    )


class ScoringSection(StrictModel):
    """How both responses are scored, and how the scores become tau.

    ``tau_temperature`` is T in tau = sigmoid((s_chosen - s_rejected) / T). ``auto`` (the
    default) sets T from the run's own score gaps, the standard deviation of s_revised -
    s_original over the kept pairs (:class:`~synthalign.steps.tau.CalibrateTau`), so
    tau uses its range whatever the scorer's units; a 0/1 or three-level judge gets a
    level map that does not tie at 0.5 instead (tie 0.6, one level up 0.9, one down
    0.2). A positive number fixes T.
    """

    renamed: ClassVar[dict[str, str]] = {"temperature": "tau_temperature"}

    kind: Literal["judge", "reward_model", "pairwise"] = "judge"
    judge: JudgeRole | None = None
    reward_model: RewardModel | None = None
    pairwise: PairwiseModel | None = Field(
        default=None, description="kind pairwise: the model comparing original and revision"
    )
    tau_temperature: float | Literal["auto"] = Field(
        default="auto",
        description="T of tau = sigmoid(score gap / T): 'auto' (from the run's gaps) or T > 0",
    )

    @field_validator("tau_temperature", mode="before")
    @classmethod
    def _auto_or_positive(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"must be 'auto' or a positive number, got {value!r}")
        return float(value)

    clip: tuple[float, float] = (0.0, 1.0)
    tie: Literal["keep", "drop"] = "keep"

    @model_validator(mode="after")
    def _check_kind(self) -> ScoringSection:
        if self.kind == "judge" and self.judge is None:
            raise ValueError("scoring.kind is 'judge' but scoring.judge (with llm) is missing")
        if self.kind == "pairwise" and self.pairwise is None:
            raise ValueError(
                "scoring.kind is 'pairwise' but scoring.pairwise (with llm) is missing"
            )
        lo, hi = self.clip
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("scoring.clip must be [lo, hi] with 0 <= lo <= hi <= 1")
        return self


class RDPORecipe(Recipe):
    """A ``synthalign generate rdpo`` run: seed prompts, teacher, principle, scorer, pairing."""

    renamed: ClassVar[dict[str, str]] = {
        "seeds": "seed_data",
        "input_batch_size": "teacher.batch_size",
    }

    name: str = "rdpo"
    seed_data: PromptSeeds
    teacher: TeacherRole = Field(default_factory=TeacherRole)
    behaviour: BehaviourSection = Field(default_factory=BehaviourSection)
    scoring: ScoringSection = Field(default_factory=lambda: ScoringSection(kind="reward_model"))
    chosen: Literal["revised", "higher_score"] = "revised"

    def scorer_role(self) -> JudgeRole | PairwiseModel | None:
        """The LLM that scores (judge or pairwise), None for a reward model."""
        return {"judge": self.scoring.judge, "pairwise": self.scoring.pairwise}.get(
            self.scoring.kind
        )

    def llm_specs(self) -> list[str]:
        role = self.scorer_role()
        return [self.teacher.llm, *([role.llm] if role else [])]

    def judge_settings(self) -> tuple[str, tuple[int, int], str | None]:
        """Rubric, scale and scale labels: the recipe's, else the principle preset's."""
        judge = self.scoring.judge
        preset = PRINCIPLES.get(self.behaviour.principle)
        rubric = (judge.rubric if judge else None) or (preset.rubric if preset else None)
        scale = (judge.scale if judge else None) or (preset.scale if preset else None)
        if rubric is None or scale is None:
            raise RecipeError(
                f"principle {self.behaviour.principle!r} has no preset rubric/scale: "
                "set scoring.judge.rubric and scoring.judge.scale"
            )
        labels = judge.scale_labels if judge else None
        if labels is None and preset is not None and scale == preset.scale:
            labels = preset.scale_labels  # the preset's words only fit the preset's scale
        return rubric, scale, labels

    def tau_temperature(self) -> float | Literal["auto"]:
        """The recipe's T: ``"auto"`` (calibrated over the run) or a fixed number."""
        return self.scoring.tau_temperature

    def tau_scorer(self) -> Literal["reward_model", "judge", "coarse_judge", "pairwise"]:
        """How :class:`CalibrateTau` reads the scores: a 0/1 or three-level judge is coarse."""
        if self.scoring.kind != "judge":
            return self.scoring.kind
        lo, hi = self.judge_settings()[1]
        return "coarse_judge" if hi - lo <= COARSE_SCALE_RANGE else "judge"

    def reward_model(self) -> RewardModel:
        return self.scoring.reward_model or RewardModel()


def preflight(recipe: RDPORecipe) -> None:
    """Seeds readable with the named columns, principle known, judge settings complete."""
    try:
        resolve_principle(recipe.behaviour.principle, recipe.behaviour.principle_text)
    except ValueError as exc:
        raise RecipeError(f"behaviour.principle: {exc}") from None
    if recipe.scoring.kind == "judge":
        recipe.judge_settings()
    columns = recipe.seed_data.columns
    seed_rows(recipe.seed_data, columns, types=dict.fromkeys(columns, str))


def override_llms(recipe: RDPORecipe, llms: list[str]) -> RDPORecipe:
    """``--llm TEACHER [JUDGE]``: one spec serves as teacher (and judge, when judging)."""
    if len(llms) > 2:
        raise RecipeError("rdpo takes at most two --llm specs: the teacher, then the judge")
    role = recipe.scorer_role()
    if role is None and len(llms) == 2:
        raise RecipeError("a second --llm is the judge, but this recipe scores with a reward model")
    teacher = recipe.teacher.model_copy(update={"llm": llms[0]})
    scoring = recipe.scoring
    if role is not None:
        kind = scoring.kind
        scoring = scoring.model_copy(update={kind: role.model_copy(update={"llm": llms[-1]})})
    return recipe.model_copy(update={"teacher": teacher, "scoring": scoring})


# ------------------------------------------------------------------ pipeline


def role_llm(role: LLMRole, seed: int) -> SynthLLM:
    """A role's LLM with its decoding; the role's own ``api_key`` reaches its ``openai:``
    server (the driver gives the recipe's key to every openai: LLM still without one)."""
    llm = load_llm(role.spec(None), engine_kwargs=role.engine_kwargs, **role.decoding(seed))
    if role.api_key is not None and isinstance(llm, OpenAICompatLLM):
        llm.api_key = role.api_key
    return llm


def scorer_record(recipe: RDPORecipe) -> dict[str, Any]:
    """Which scorer made the scores, as each row's ``generation`` records it."""
    if recipe.scoring.kind == "reward_model":
        return {"kind": "reward_model", "model": recipe.reward_model().model}
    if recipe.scoring.pairwise is not None and recipe.scoring.kind == "pairwise":
        role = recipe.scoring.pairwise
        return {"kind": "pairwise", "llm": role.llm, "criterion": pairwise_criterion(recipe)}
    judge = recipe.scoring.judge
    assert judge is not None  # the recipe validates it
    scale = list(recipe.judge_settings()[1])
    return {
        "kind": "judge",
        "llm": judge.llm,
        "scale": scale,
        "max_new_tokens": judge.max_new_tokens,
        "temperature": judge.temperature,
    }


def generation_record(recipe: RDPORecipe) -> dict[str, Any]:
    """Models and settings of the run, written into every row (``generation``)."""
    return {
        "teacher": recipe.teacher.llm,
        "teacher_kwargs": recipe.teacher.decoding(recipe.seed),
        "tau_temperature": recipe.tau_temperature(),
        "clip": list(recipe.scoring.clip),
        "tie": recipe.scoring.tie,
        "chosen": recipe.chosen,
        "scorer": scorer_record(recipe),
    }


def pairwise_criterion(recipe: RDPORecipe) -> str:
    """What the pairwise judge compares on: the recipe's criterion, else the principle
    preset's rubric, else the principle statement itself."""
    role = recipe.scoring.pairwise
    preset = PRINCIPLES.get(recipe.behaviour.principle)
    if role is not None and role.criterion:
        return role.criterion
    if preset is not None and not recipe.behaviour.principle_text:
        return preset.rubric
    return resolve_principle(recipe.behaviour.principle, recipe.behaviour.principle_text)[1]


Scorer = ScoreWithJudge | ScoreWithRewardModel | CompareWithLLM


def score_step(recipe: RDPORecipe, system: str | None) -> Scorer:
    """The scorer of both responses: the recipe's reward model, LLM judge or pairwise model."""
    if recipe.scoring.kind == "pairwise":
        return response_scorer(
            "pairwise",
            recipe.reward_model(),
            recipe.scoring.pairwise,
            seed=recipe.seed,
            criterion=pairwise_criterion(recipe),
            name="compare_pairwise",
            system_column=system,
        )
    if recipe.scoring.kind == "reward_model":
        return ScoreWithRewardModel.from_reward_model(
            recipe.reward_model(),
            name="score_with_reward_model",
            system_column=system,
            input_batch_size=recipe.teacher.batch_size,
        )
    judge = recipe.scoring.judge
    assert judge is not None  # the recipe validates it
    rubric, (lo, hi), labels = recipe.judge_settings()
    return ScoreWithJudge(
        name="score_with_judge",
        llm=role_llm(judge, recipe.seed),
        rubric=rubric,
        scale_min=lo,
        scale_max=hi,
        scale_labels=labels,
        system_column=system,
        input_batch_size=judge.batch_size,
        resources=judge.resources.step_resources(),
    )


def build_pipeline(recipe: RDPORecipe, state: State | None = None) -> Pipeline:
    """The distilabel pipeline for a recipe (see the module docstring for its shape)."""
    seeds, teacher = recipe.seed_data, recipe.teacher
    system = "system" if seeds.system_column else None
    batch = teacher.batch_size
    fixed = recipe.tau_temperature()
    with Pipeline(
        name=recipe.name,
        description="rDPO self-critique preference pairs",
        cache_dir=recipe.cache_dir,
    ) as pipeline:
        load = LoadSeeds.from_seed_data(
            seeds,
            seeds.columns,
            name="load_seeds",
            output_mappings=seeds.mappings(),
            batch_size=batch,
        )
        attach = AttachPrinciple(
            name="attach_principle",
            principle=recipe.behaviour.principle,
            principle_text=recipe.behaviour.principle_text,
            input_batch_size=batch,
        )
        converse = SelfCritiqueRevision(
            name="self_critique_revision",
            llm=role_llm(teacher, recipe.seed),
            system_column=system,
            fold_system=teacher.fold_system,
            input_batch_size=batch,
            resources=teacher.resources.step_resources(),
        )
        clean = CleanOutputs(
            name="clean_outputs", columns=list(CLEAN_COLUMNS), input_batch_size=batch
        )
        score = score_step(recipe, system)
        judged = score.prefixes if isinstance(score, ScoreWithJudge) else []
        if isinstance(score, CompareWithLLM):
            judged = [score.column_prefix]
        pair = PairWithPreferenceProbability(
            name="pair_with_preference_probability",
            chosen=recipe.chosen,
            tau_temperature=fixed if isinstance(fixed, float) else 1.0,
            clip=list(recipe.scoring.clip),
            tie=recipe.scoring.tie,
            system_column=system,
            judge_prefixes=judged,
            generation=generation_record(recipe),
            input_batch_size=batch,
        )
        calibrate = CalibrateTau(
            name="calibrate_tau",
            tau_temperature=fixed,
            clip=list(recipe.scoring.clip),
            scorer=recipe.tau_scorer(),
        )
        leaves = [
            SelectPreferencePairs(
                name="rdpo", with_tau=True, judge_prefixes=judged, input_batch_size=batch
            ),
            SelectPreferencePairs(
                name="dpo", with_tau=False, judge_prefixes=judged, input_batch_size=batch
            ),
            SelectSFTMessages(name="sft", input_batch_size=batch),
            SelectDSCMessages(name="dsc", input_batch_size=batch),
            SelectAllRows(
                name="all", system_column=system, judge_prefixes=judged, input_batch_size=batch
            ),
        ]
        texts = ["prompt", "response_original", "response_revised"]
        last = decontaminated(
            load >> attach >> converse >> clean >> score >> pair,
            recipe.decontaminate,
            texts,
            set_drop=True,
            input_batch_size=batch,
        )
        last >> calibrate >> leaves
    return pipeline


METHOD = Method(
    name="rdpo",
    recipe_cls=RDPORecipe,
    build_pipeline=build_pipeline,
    configs=lambda recipe, state: list(CONFIGS),
    default_config="rdpo",
    card_section=build_card,
    override_llms=override_llms,
    preflight=preflight,
    funnel_configs=("all",),
    record_fields=tau_record,
)
