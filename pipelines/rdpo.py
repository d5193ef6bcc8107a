"""rDPO data: self-critique preference pairs scored into a soft label ``tau``.

Pipeline (arXiv 2402.08005, with the public code's one-conversation generation)::

    LoadSeeds -> AttachPrinciple -> SelfCritiqueRevision (teacher: answer, critique, revision)
      -> ScoreWithJudge | ScoreWithRewardModel (both responses)
      -> PairWithPreferenceProbability (tau, chosen/rejected, drop reasons)
      -> SelectPreferencePairs "rdpo" | SelectPreferencePairs "dpo" | SelectSFTMessages "sft"
         | SelectAllRows "all"

Published configs (leaf steps of the pipeline, so a rerun of ``pipeline.yaml`` yields
them too):

- ``rdpo`` (default): ``prompt``, ``chosen``, ``rejected`` (TRL conversational lists),
  ``tau``, ``score_chosen``/``score_rejected`` (and original/revised), ``scorer``,
  ``critique``, ``principle`` and provenance. Train with ``synthalign train rdpo``.
- ``dpo``: the same pairs without ``tau``, for the paper's DPO baseline
  (``synthalign train dpo``); its ``chosen`` column also feeds an SFT baseline.
- ``sft``: the kept pairs as ``messages`` (prompt + chosen), the paper's SFT baseline
  (``synthalign train sft`` with ``dataset_config: sft``).
- ``all``: every row, failures included, with ``drop_reason`` (what the card counts).

Chosen = the revision, by default: the paper treats the revised response as the
intended preferred one and lets ``tau`` carry how much the external scorer agrees (a
worse revision gets tau < 0.5, so the loss leans the other way). ``chosen:
higher_score`` orders each pair by score instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.recipes import StageResources
from synthalign.errors import RecipeError
from synthalign.methods import Method
from synthalign.recipes import Recipe, RecipePath, StrictModel

if TYPE_CHECKING:
    from datasets import Dataset
    from distilabel.distiset import Distiset
    from distilabel.pipeline import Pipeline

CONFIGS = ("rdpo", "dpo", "sft", "all")


class SeedOptions(StrictModel):
    """Where the prompts come from. Persona seeds also carry the assigned persona."""

    source: RecipePath = Field(description="JSONL/JSON/CSV/Parquet/TXT file (relative to the recipe) or Hub dataset id")
    prompt_column: str = "prompt"
    system_column: str | None = Field(
        default=None, description="column with a system message (the assigned persona for 'persona')"
    )
    limit: int | None = Field(default=None, ge=1)
    split: str = "train"


class TeacherOptions(StrictModel):
    """The teacher that answers, critiques and revises (the paper: Mixtral-8x7B)."""

    llm: str = "vllm:mistralai/Mixtral-8x7B-Instruct-v0.1"
    max_new_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="backend options (vLLM: tensor_parallel_size...)")
    resources: StageResources = Field(
        default_factory=StageResources, description="replicas / GPUs of this LLM's step (see docs/perf-ray.md)"
    )
    fold_system: bool = Field(
        default=False,
        description="send the persona system message as the top of the first user turn (teachers whose chat template has no system role)",
    )


class BehaviourOptions(StrictModel):
    """Which principle the critique enforces: a preset or your own statement."""

    principle: str = Field(default="safety", description="safety | persona | sycophancy, or a name for principle_text")
    principle_text: str | None = Field(default=None, description="your own principle (overrides the preset's)")


class JudgeOptions(StrictModel):
    """An LLM judge. Rubric and scale default to the principle's preset."""

    llm: str
    rubric: str | None = None
    scale: tuple[int, int] | None = Field(default=None, description="[min, max]; presets: 0/1, 0-5, -5..5")
    scale_labels: str | None = None
    max_new_tokens: int = Field(default=256, ge=16)
    temperature: float = Field(default=0.0, ge=0)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    resources: StageResources = Field(
        default_factory=StageResources, description="replicas / GPUs of this LLM's step (see docs/perf-ray.md)"
    )

    @field_validator("scale", mode="before")
    @classmethod
    def _named_scale(cls, value: Any) -> Any:
        from synthalign.steps.scoring import JUDGE_SCALES

        if isinstance(value, str):
            if value not in JUDGE_SCALES:
                raise ValueError(f"unknown scale {value!r}: use one of {list(JUDGE_SCALES)} or [min, max]")
            return JUDGE_SCALES[value]
        return value

    @field_validator("scale")
    @classmethod
    def _ordered(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and value[0] >= value[1]:
            raise ValueError("scale must be [min, max] with min < max")
        return value


class RewardModelOptions(StrictModel):
    """A transformers sequence-classification reward model (Skywork/ArmoRM-style)."""

    model: str = "builtin:tiny-reward"
    batch_size: int = Field(default=8, ge=1)
    max_length: int | None = Field(default=None, ge=8)
    padding_side: Literal["auto", "left", "right"] = "auto"
    torch_dtype: str = "float32"
    trust_remote_code: bool = False


class ScoringOptions(StrictModel):
    """How both responses are scored, and how the scores become tau.

    ``temperature`` (T in sigmoid((s_rev - s_orig) / T)) defaults by scorer: 1 for a
    reward model (Bradley-Terry scores are already log-odds), and a quarter of the
    scale's range for a judge, so a full-scale jump gives tau = sigmoid(4) ~ 0.98 on
    any scale and one step of 0-5 about 0.69. The paper gives no value; this keeps the
    three judge scales comparable.
    """

    kind: Literal["judge", "reward_model"] = "judge"
    judge: JudgeOptions | None = None
    reward_model: RewardModelOptions | None = None
    temperature: float | None = Field(default=None, gt=0)
    clip: tuple[float, float] = (0.0, 1.0)
    tie: Literal["keep", "drop"] = "keep"

    @model_validator(mode="after")
    def _check_kind(self) -> ScoringOptions:
        if self.kind == "judge" and self.judge is None:
            raise ValueError("scoring.kind is 'judge' but scoring.judge (with llm) is missing")
        lo, hi = self.clip
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("scoring.clip must be [lo, hi] with 0 <= lo <= hi <= 1")
        return self


class RDPORecipe(Recipe):
    """A ``synthalign generate rdpo`` run: seeds, teacher, principle, scorer, pairing."""

    name: str = "rdpo"
    seeds: SeedOptions
    teacher: TeacherOptions = Field(default_factory=TeacherOptions)
    behaviour: BehaviourOptions = Field(default_factory=BehaviourOptions)
    scoring: ScoringOptions = Field(default_factory=lambda: ScoringOptions(kind="reward_model"))
    chosen: Literal["revised", "higher_score"] = "revised"
    input_batch_size: int = Field(default=512, ge=1, description="rows per engine call; large keeps the engine busy")

    def llm_specs(self) -> list[str]:
        specs = [self.teacher.llm]
        if self.scoring.kind == "judge" and self.scoring.judge is not None:
            specs.append(self.scoring.judge.llm)
        return specs

    def judge_settings(self) -> tuple[str, tuple[int, int], str | None]:
        """Rubric, scale and scale labels: the recipe's, else the principle preset's."""
        from synthalign.steps.rdpo import PRINCIPLES

        judge = self.scoring.judge
        preset = PRINCIPLES.get(self.behaviour.principle)
        rubric = (judge.rubric if judge else None) or (preset.rubric if preset else None)
        scale = (judge.scale if judge else None) or (preset.scale if preset else None)
        if rubric is None or scale is None:
            raise RecipeError(
                f"principle {self.behaviour.principle!r} has no preset rubric/scale: set scoring.judge.rubric and scoring.judge.scale"
            )
        labels = judge.scale_labels if judge else None
        if labels is None and preset is not None and scale == preset.scale:
            labels = preset.scale_labels  # the preset's words only fit the preset's scale
        return rubric, scale, labels

    def tau_temperature(self) -> float:
        if self.scoring.temperature is not None:
            return self.scoring.temperature
        if self.scoring.kind == "reward_model":
            return 1.0
        lo, hi = self.judge_settings()[1]
        return (hi - lo) / 4.0


def preflight(recipe: RDPORecipe) -> None:
    """Seeds readable with the named columns, principle known, judge settings complete."""
    from synthalign.steps.rdpo import resolve_principle
    from synthalign.steps.seeds import read_seed_rows

    try:
        resolve_principle(recipe.behaviour.principle, recipe.behaviour.principle_text)
    except ValueError as exc:
        raise RecipeError(f"behaviour.principle: {exc}") from None
    if recipe.scoring.kind == "judge":
        recipe.judge_settings()
    columns = [recipe.seeds.prompt_column] + ([recipe.seeds.system_column] if recipe.seeds.system_column else [])
    read_seed_rows(
        recipe.seeds.source, columns, types=dict.fromkeys(columns, str), limit=recipe.seeds.limit, split=recipe.seeds.split
    )


def build_pipeline(config: RDPORecipe) -> Pipeline:
    """The distilabel pipeline for a recipe (see the module docstring for its shape)."""
    from distilabel.pipeline import Pipeline

    from synthalign.llms import load_llm
    from synthalign.steps.rdpo import (
        AttachPrinciple,
        PairWithPreferenceProbability,
        SelectAllRows,
        SelectPreferencePairs,
        SelectSFTMessages,
        SelfCritiqueRevision,
    )
    from synthalign.steps.scoring import ScoreWithJudge, ScoreWithRewardModel
    from synthalign.steps.seeds import LoadSeeds

    seeds = config.seeds
    system = "system" if seeds.system_column else None
    columns = [seeds.prompt_column] + ([seeds.system_column] if seeds.system_column else [])
    mappings = {seeds.prompt_column: "prompt"} if seeds.prompt_column != "prompt" else {}
    if seeds.system_column and seeds.system_column != "system":
        mappings[seeds.system_column] = "system"
    teacher = config.teacher
    generation: dict[str, Any] = {
        "teacher": teacher.llm,
        "teacher_kwargs": {"max_new_tokens": teacher.max_new_tokens, "temperature": teacher.temperature, "top_p": teacher.top_p, "seed": config.seed},
        "tau_temperature": config.tau_temperature(),
        "clip": list(config.scoring.clip),
        "tie": config.scoring.tie,
        "chosen": config.chosen,
    }

    with Pipeline(name=config.name, description="rDPO self-critique preference pairs", cache_dir=config.cache_dir) as pipeline:
        load = LoadSeeds(
            name="load_seeds",
            source=seeds.source,
            columns=columns,
            limit=seeds.limit,
            split=seeds.split,
            output_mappings=mappings,
            batch_size=config.input_batch_size,
        )
        attach = AttachPrinciple(
            name="attach_principle",
            principle=config.behaviour.principle,
            principle_text=config.behaviour.principle_text,
            input_batch_size=config.input_batch_size,
        )
        converse = SelfCritiqueRevision(
            name="self_critique_revision",
            llm=load_llm(
                teacher.llm,
                max_new_tokens=teacher.max_new_tokens,
                temperature=teacher.temperature,
                top_p=teacher.top_p,
                seed=config.seed,
                engine_kwargs=teacher.engine_kwargs,
            ),
            system_column=system,
            fold_system=teacher.fold_system,
            input_batch_size=config.input_batch_size,
            resources=teacher.resources.step_resources(),
        )
        judge_prefixes: list[str] = []
        if config.scoring.kind == "reward_model":
            rm = config.scoring.reward_model or RewardModelOptions()
            score = ScoreWithRewardModel(
                name="score_with_reward_model",
                model=rm.model,
                system_column=system,
                scoring_batch_size=rm.batch_size,
                max_length=rm.max_length,
                padding_side=rm.padding_side,
                torch_dtype=rm.torch_dtype,
                trust_remote_code=rm.trust_remote_code,
                input_batch_size=config.input_batch_size,
            )
            generation["scorer"] = {"kind": "reward_model", "model": rm.model}
        else:
            judge = config.scoring.judge
            assert judge is not None
            rubric, (lo, hi), labels = config.judge_settings()
            score = ScoreWithJudge(
                name="score_with_judge",
                llm=load_llm(
                    judge.llm,
                    max_new_tokens=judge.max_new_tokens,
                    temperature=judge.temperature,
                    seed=config.seed,
                    engine_kwargs=judge.engine_kwargs,
                ),
                rubric=rubric,
                scale_min=lo,
                scale_max=hi,
                scale_labels=labels,
                system_column=system,
                input_batch_size=config.input_batch_size,
                resources=judge.resources.step_resources(),
            )
            judge_prefixes = [score.prefix_for(c) for c in score.resolved_score_columns]
            generation["scorer"] = {"kind": "judge", "llm": judge.llm, "scale": [lo, hi], "max_new_tokens": judge.max_new_tokens, "temperature": judge.temperature}
        pair = PairWithPreferenceProbability(
            name="pair_with_preference_probability",
            chosen=config.chosen,
            temperature=config.tau_temperature(),
            clip=list(config.scoring.clip),
            tie=config.scoring.tie,
            system_column=system,
            judge_prefixes=judge_prefixes,
            generation=generation,
            input_batch_size=config.input_batch_size,
        )
        judge_columns = [f"{p}_{suffix}" for p in judge_prefixes for suffix in ("model", "prompt", "rationale")]
        rdpo = SelectPreferencePairs(name="rdpo", with_tau=True, extra_columns=judge_columns, input_batch_size=config.input_batch_size)
        dpo = SelectPreferencePairs(name="dpo", with_tau=False, extra_columns=judge_columns, input_batch_size=config.input_batch_size)
        sft = SelectSFTMessages(name="sft", input_batch_size=config.input_batch_size)
        everything = SelectAllRows(name="all", input_batch_size=config.input_batch_size)
        load >> attach >> converse >> score >> pair >> [rdpo, dpo, sft, everything]
    return pipeline


def to_datasets(distiset: Distiset, config: RDPORecipe) -> dict[str, Dataset]:
    """The three published configs from the pipeline's leaf steps (empty when nothing survived)."""
    from datasets import Dataset

    from synthalign.steps.rdpo import RDPO_COLUMNS

    out: dict[str, Dataset] = {}
    for name in CONFIGS:
        data = distiset[name]["train"] if name in distiset else None
        if data is None or len(data) == 0:
            columns = {
                "rdpo": RDPO_COLUMNS,
                "dpo": [c for c in RDPO_COLUMNS if c != "tau"],
                "sft": ["messages", "principle"],
                "all": ["prompt", "drop_reason", "kept"],
            }[name]
            data = Dataset.from_dict({c: [] for c in columns})
        if "distilabel_metadata" in data.column_names:
            data = data.remove_columns("distilabel_metadata")
        out[name] = data
    return out


def override_llms(config: RDPORecipe, llms: list[str]) -> RDPORecipe:
    """``--llm TEACHER [JUDGE]``: one spec serves as teacher (and judge, when judging)."""
    if len(llms) > 2:
        raise RecipeError("rdpo takes at most two --llm specs: the teacher, then the judge")
    data = config.model_dump()
    data["teacher"]["llm"] = llms[0]
    if config.scoring.kind == "judge":
        data["scoring"]["judge"]["llm"] = llms[-1]
    elif len(llms) == 2:
        raise RecipeError("a second --llm is the judge, but this recipe scores with a reward model")
    return RDPORecipe.model_validate(data)


def _build_card(datasets: dict[str, Dataset], info: dict[str, Any]) -> Any:
    from synthalign.cards.rdpo import build_card

    return build_card(datasets, info)


METHOD = Method(
    name="rdpo",
    recipe_cls=RDPORecipe,
    build_pipeline=build_pipeline,
    to_datasets=to_datasets,
    build_card=_build_card,
    default_config="rdpo",
    override_llms=override_llms,
    preflight=preflight,
)
