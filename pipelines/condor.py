"""Condor (arXiv 2501.12273; ``shared/seeds/000_*``) as a distilabel pipeline.

Shape::

    [grow_tree ─►] sample_tags ─► generate_questions ─► split_by_difficulty ─► answer_question
        ─► critique_response ─► refine_response ─► clean_outputs
        ─► {generations, void, refined}

- ``grow_tree`` (only with ``knowledge_tree.expand_to``) grows the base tree with an
  LLM to that many leaf tags, deduplicated, and caches the grown tree as a file keyed
  by base tree, size and LLM (a rerun or resume reuses it);
- ``sample_tags`` draws ``ceil(num_samples / 3)`` (tag path, task type) items from the
  World Knowledge Tree (or the ``tag_fraction`` of its leaves the seed picks), every
  leaf tag equally likely (``tag_sampling: proportional``; ``per_root`` gives every
  root domain an equal share), stratified over the seven task types;
- ``generate_questions`` writes an Easy, a Medium and a Hard question per item and
  ``split_by_difficulty`` makes each its own row;
- ``answer_question`` answers (the paper's Condor Void), ``critique_response`` writes
  strengths / weaknesses / suggestions, ``refine_response`` rewrites the answer
  (Condor Refine);
- ``clean_outputs`` strips scaffolding the model copied from its prompts (echoed
  ``[Question]`` sections, "Improved answer:" labels, role tags) from both answers and
  drops a row whose answer is left empty, still carries scaffolding or repeats the
  question (``drop_stage`` ``clean``);
- three leaf steps publish the configs: ``refined`` (D_R: question + refined answer,
  the default), ``void`` (D_V: question + original answer, same rows) and
  ``generations`` (every row with its errors and drop reason, for the card).

The paper uses one model (Qwen2.5-72B-Instruct) for every role; ``llm`` sets it and
each role section may override it. distilabel runs each step in its own process, so
four roles on a local GPU engine would load four engines at once: with ``vllm:`` specs
the steps run one load stage at a time (``load_stages: auto``). A rerun with
``distilabel pipeline run --config pipeline.yaml`` loads all steps together; point
GPU reruns at an ``openai:`` server (``vllm serve``) for that reason.

This module is declarative (see :mod:`synthalign.contract`): the recipe, the pipeline
of the one state a Condor run has, its configs and its card section. The driver
(:mod:`synthalign.run`) does everything else.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from distilabel.pipeline import Pipeline
from pydantic import Field, field_validator, model_validator

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.cards.condor import build_card
from synthalign.contract import Method, State
from synthalign.errors import RecipeError
from synthalign.llms import load_llm
from synthalign.recipes import LLMRole, Recipe, StrictModel
from synthalign.steps.clean import CleanOutputs
from synthalign.steps.condor import (
    CLEAN_COLUMNS,
    AnswerQuestion,
    CritiqueResponse,
    FormatCondorRows,
    GenerateQuestions,
    RefineResponse,
    SplitQuestionsByDifficulty,
)
from synthalign.steps.decontaminate import decontaminated
from synthalign.steps.knowledge_tree import (
    DEFAULT_TREE,
    TASK_TYPES,
    SampleKnowledgeTasks,
    load_tree,
    sampling_tree,
)
from synthalign.steps.tree_expansion import GrowKnowledgeTree, SampleGrownTree, grown_tree_file

CONFIGS: tuple[str, ...] = ("refined", "void", "generations")
CACHE_ROOT = "~/.cache/distilabel"  # distilabel's own default cache folder
ROLES: tuple[str, ...] = ("question", "answer", "critique", "refine")
TREE_ROLE = "knowledge_tree"
QUESTIONS_PER_CALL = 3

# ------------------------------------------------------------------ recipe


class RoleSection(LLMRole):
    """One role's model and decoding (the paper does not state them; these are common
    chat-sampling values with room for long answers)."""

    max_new_tokens: int = Field(default=2048, ge=1)


class QuestionSection(RoleSection):
    max_new_tokens: int = 1024
    max_question_chars: int | None = Field(
        default=None,
        ge=16,
        description="schema maxLength of each question; set it only for random test models",
    )


class CritiqueSection(RoleSection):
    max_new_tokens: int = 1024
    max_field_chars: int | None = Field(
        default=None,
        ge=16,
        description="schema maxLength of strengths / weaknesses / suggestions; for random test models",
    )


class ExpandRole(LLMRole):
    """The model that grows the tree (a short JSON list of names per call)."""

    max_new_tokens: int = 512


class KnowledgeTreeSection(StrictModel):
    """Which tree the tags come from, and whether an LLM grows it first (the paper's
    tree has 8,400+ leaf tags; the shipped one 1,028: ``expand_to: 8400`` closes the gap)."""

    base: str = Field(default=DEFAULT_TREE, description="'default' or a path to a tree YAML file")
    expand_to: int | None = Field(
        default=None,
        ge=1,
        description="grow the base tree with `llm` to this many leaf tags first (default: no growth)",
    )
    llm: ExpandRole = Field(default_factory=ExpandRole, description="the model that grows the tree")
    num_new: int = Field(default=8, ge=1, le=12, description="new leaf tags asked per call")
    max_rounds: int = Field(default=50, ge=1, description="rounds of growth at most")

    @field_validator("llm", mode="before")
    @classmethod
    def _spec_alone(cls, value: Any) -> Any:
        return {"llm": value} if isinstance(value, str) else value

    @field_validator("base")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # pipeline.yaml must rerun from any directory: store the tree path absolute.
        return value if value == DEFAULT_TREE else str(Path(value).expanduser().absolute())


class CondorRecipe(Recipe):
    """A Condor run: the model(s), the knowledge tree, how many samples, decoding per role."""

    name: str = "condor"
    llm: str = Field(description="LLM spec used for every role unless a role sets its own")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="backend options for every LLM (tensor_parallel_size, max_batch_size, ...)",
    )
    knowledge_tree: KnowledgeTreeSection = Field(
        default_factory=KnowledgeTreeSection,
        description="'default', a tree YAML path, or {base, expand_to, llm} to grow the tree first",
    )
    tag_sampling: Literal["proportional", "per_root"] = Field(
        default="proportional",
        description="proportional: every leaf tag equally likely (the paper); per_root: every root domain an equal share",
    )
    tag_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="sample from this seeded fraction of the leaf tags (the paper's 25% / 50% / 100% coverage runs)",
    )
    num_samples: int = Field(
        default=20_000,
        ge=1,
        description="question rows wanted; ceil(n/3) calls write 3 each (the paper trains on 20K)",
    )
    task_types: list[str] = Field(default_factory=lambda: list(TASK_TYPES))
    root_domains: list[str] | None = Field(
        default=None, description="sample only these root domains (default: all)"
    )
    question: QuestionSection = Field(default_factory=QuestionSection)
    answer: RoleSection = Field(default_factory=RoleSection)
    critique: CritiqueSection = Field(default_factory=CritiqueSection)
    refine: RoleSection = Field(default_factory=RoleSection)
    drop_truncated: bool = Field(
        default=True,
        description="drop answers / refinements that used up max_new_tokens (cut off mid-text)",
    )
    load_stages: Literal["auto", "sequential", "concurrent"] = Field(
        default="auto",
        description="sequential: load one step at a time (one GPU engine at a time); auto: sequential iff a role uses vllm:",
    )
    license: str = Field(default="apache-2.0", description="license written into the dataset card")

    @field_validator("task_types")
    @classmethod
    def _known_task_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in TASK_TYPES]
        if unknown:
            raise ValueError(f"unknown task type(s) {unknown}; choose from {list(TASK_TYPES)}")
        if not value:
            raise ValueError("needs at least one task type")
        return value

    @field_validator("knowledge_tree", mode="before")
    @classmethod
    def _tree_name_alone(cls, value: Any) -> Any:
        return {"base": value} if isinstance(value, str | Path) else value

    @model_validator(mode="after")
    def _expansion_has_a_model(self) -> CondorRecipe:
        if self.knowledge_tree.expand_to is not None:
            self.knowledge_tree.llm.spec(self.llm)
        return self

    def role(self, name: str) -> LLMRole:
        return self.knowledge_tree.llm if name == TREE_ROLE else getattr(self, name)

    def role_spec(self, name: str) -> str:
        return self.role(name).spec(self.llm)

    @property
    def roles(self) -> tuple[str, ...]:
        """The LLM roles this run uses (the tree's only when it grows the tree)."""
        grows = self.knowledge_tree.expand_to is not None
        return (TREE_ROLE, *ROLES) if grows else ROLES

    def llm_specs(self) -> list[str]:
        return list(dict.fromkeys(self.role_spec(r) for r in self.roles))

    @property
    def num_calls(self) -> int:
        return math.ceil(self.num_samples / QUESTIONS_PER_CALL)

    def sequential(self) -> bool:
        if self.load_stages != "auto":
            return self.load_stages == "sequential"
        return any(spec.startswith("vllm:") for spec in self.llm_specs())

    def generation_settings(self) -> dict[str, dict[str, Any]]:
        """Decoding per role, as recorded in every row and in the card."""
        return {role: self.role(role).decoding(self.seed) for role in ROLES}


def preflight(recipe: CondorRecipe) -> None:
    """Load the tree and check the domain filter and growth target before any model loads."""
    tree = recipe.knowledge_tree
    sampling_tree(tree.base, recipe.root_domains, recipe.task_types, recipe.tag_fraction)
    leaves = load_tree(tree.base).counts()["leaf_tags"]
    if tree.expand_to is not None and tree.expand_to <= leaves:
        raise RecipeError(
            f"knowledge_tree.expand_to ({tree.expand_to}) must be above the base tree's "
            f"{leaves} leaf tags; leave it out to use the tree as it is"
        )


def override_llms(recipe: CondorRecipe, llms: list[str]) -> CondorRecipe:
    """``--llm SPEC`` serves every role; four specs set question, answer, critique, refine."""
    if len(llms) not in (1, len(ROLES)):
        raise RecipeError(
            "condor takes one --llm (every role) or four (question, answer, critique, refine)"
        )
    data = recipe.model_dump()
    if len(llms) == 1:
        data["llm"] = llms[0]
        for role in ROLES:
            data[role]["llm"] = None
        data["knowledge_tree"]["llm"]["llm"] = None
    else:
        for role, spec in zip(ROLES, llms, strict=True):
            data[role]["llm"] = spec
    return CondorRecipe.model_validate(data)


# ------------------------------------------------------------------ pipeline


def _llm(recipe: CondorRecipe, role: str) -> Any:
    section = recipe.role(role)
    return load_llm(
        recipe.role_spec(role),
        max_new_tokens=section.max_new_tokens,
        temperature=section.temperature,
        top_p=section.top_p,
        seed=recipe.seed,
        engine_kwargs={**recipe.engine_kwargs, **section.engine_kwargs},
    )


def _llm_step(recipe: CondorRecipe, role: str) -> dict[str, Any]:
    """What every LLM step of a role takes: its LLM, batch size and resources."""
    section = recipe.role(role)
    return {
        "llm": _llm(recipe, role),
        "input_batch_size": section.batch_size,
        "resources": section.resources.step_resources(),
        "add_raw_output": False,
        "add_raw_input": False,
    }


def _sample_tags(recipe: CondorRecipe) -> Any:
    """``sample_tags`` over the named tree, or ``grow_tree >> sample_tags`` when the
    recipe grows it (the returned step is the one the questions connect to)."""
    draw = {
        "num_items": recipe.num_calls,
        "task_types": recipe.task_types,
        "root_domains": recipe.root_domains,
        "tag_sampling": recipe.tag_sampling,
        "tag_fraction": recipe.tag_fraction,
        "seed": recipe.seed,
    }
    tree = recipe.knowledge_tree
    if tree.expand_to is None:
        return SampleKnowledgeTasks(
            name="sample_tags", tree=tree.base, batch_size=recipe.question.batch_size, **draw
        )
    key = {"llm": recipe.role_spec(TREE_ROLE), "num_new": tree.num_new}
    key.update(tree.llm.decoding(recipe.seed))
    grow = GrowKnowledgeTree(
        name="grow_tree",
        llm=_llm(recipe, TREE_ROLE),
        base=tree.base,
        expand_to=tree.expand_to,
        tree_file=str(
            grown_tree_file(recipe.cache_dir or CACHE_ROOT, tree.base, tree.expand_to, key)
        ),
        num_new=tree.num_new,
        max_rounds=tree.max_rounds,
        batch_size=tree.llm.batch_size,
        resources=tree.llm.resources.step_resources(),
    )
    sample = SampleGrownTree(
        name="sample_tags", input_batch_size=recipe.question.batch_size, **draw
    )
    grow >> sample
    return sample


def build_pipeline(recipe: CondorRecipe, state: State | None = None) -> Pipeline:
    """The distilabel pipeline for a recipe (see the module docstring for its shape)."""
    with Pipeline(
        name=recipe.name,
        description="Condor: knowledge-tree questions, answers, self-critique and refined answers",
        cache_dir=recipe.cache_dir,
    ) as pipeline:
        sample = _sample_tags(recipe)
        questions = GenerateQuestions(
            name="generate_questions",
            max_question_chars=recipe.question.max_question_chars,
            **_llm_step(recipe, "question"),
        )
        split = SplitQuestionsByDifficulty(
            name="split_by_difficulty", input_batch_size=recipe.question.batch_size
        )
        answer = AnswerQuestion(
            name="answer_question",
            truncated_is_error=recipe.drop_truncated,
            **_llm_step(recipe, "answer"),
        )
        critique = CritiqueResponse(
            name="critique_response",
            max_field_chars=recipe.critique.max_field_chars,
            **_llm_step(recipe, "critique"),
        )
        refine = RefineResponse(
            name="refine_response",
            truncated_is_error=recipe.drop_truncated,
            **_llm_step(recipe, "refine"),
        )
        clean = CleanOutputs(
            name="clean_outputs",
            columns=list(CLEAN_COLUMNS),
            input_batch_size=recipe.refine.batch_size,
        )
        settings = recipe.generation_settings()
        outputs = [
            FormatCondorRows(
                name=config,
                config=config,
                generation_settings=settings,
                input_batch_size=recipe.refine.batch_size,
            )
            for config in CONFIGS
        ]
        checked = decontaminated(
            sample >> questions >> split >> answer >> critique >> refine >> clean,
            recipe.decontaminate,
            ["question", "response", "refined_response"],
            input_batch_size=recipe.refine.batch_size,
        )
        checked >> outputs
    return pipeline


METHOD = Method(
    name="condor",
    recipe_cls=CondorRecipe,
    build_pipeline=build_pipeline,
    configs=lambda recipe, state: list(CONFIGS),
    default_config="refined",
    card_section=build_card,
    override_llms=override_llms,
    preflight=preflight,
    sequential=CondorRecipe.sequential,
    funnel_configs=("generations",),
)
