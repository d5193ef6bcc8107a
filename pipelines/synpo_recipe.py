"""The SynPO recipe: one YAML, validated before anything loads (``pipelines/synpo.py`` runs it).

Built from the shared blocks (:mod:`synthalign.recipes`): ``seed_data`` is a
:class:`~synthalign.recipes.SeedData` with SynPO's column names, each decoding section
an :class:`~synthalign.recipes.LLMRole` (its models come from the loop, not from
``llm``), and ``scorer.reward_model`` the :class:`~synthalign.recipes.RewardModel` block
rDPO uses too. Keys an older recipe used say what they were renamed to.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from synthalign.recipes import (
    LLMRole,
    PairwiseModel,
    Recipe,
    RecipePath,
    RewardModel,
    SeedData,
    StrictModel,
)
from synthalign.trainers.sft import SFTRecipe
from synthalign.trainers.simpo import SimPORecipe

__all__ = [
    "LOOP_KEYS",
    "CorpusSection",
    "DecodingSection",
    "FilterSection",
    "KeywordSection",
    "SFTStage",
    "ScorerSection",
    "SeedSection",
    "SimPOStage",
    "SynPORecipe",
    "llm_spec",
]


class SeedSection(SeedData):
    """Seed SFT data: a ``messages`` column (TRL SFT format) or prompt/response columns.

    Only the first user turn and the assistant turn after it are used (the paper: 18K).
    """

    renamed: ClassVar[dict[str, str]] = {"hub_config": "config"}
    messages_column: str | None = "messages"
    prompt_column: str | None = Field(default=None, description="instead of messages_column")
    response_column: str | None = Field(default=None, description="instead of messages_column")

    @model_validator(mode="after")
    def _columns(self) -> SeedSection:
        if bool(self.prompt_column) != bool(self.response_column):
            raise ValueError(
                "set both prompt_column and response_column, or neither (messages_column is used)"
            )
        if not self.prompt_column and not self.messages_column:
            raise ValueError("set messages_column, or prompt_column and response_column")
        return self


class CorpusSection(StrictModel):
    """Paragraphs to sample keyword lists from (the paper: RefinedWeb)."""

    renamed: ClassVar[dict[str, str]] = {"hub_config": "config"}
    source: RecipePath = Field(
        description="local .txt (a paragraph per line) / JSONL (relative to the recipe), "
        "or a Hub dataset id (streamed)"
    )
    text_column: str = "text"
    split: str = "train"
    config: str | None = Field(default=None, description="Hub dataset config")
    max_documents: int | None = Field(
        default=None, ge=1, description="documents read (the paper samples 1M paragraphs)"
    )
    min_words: int = Field(default=20, ge=1, description="shorter paragraphs are skipped")


class KeywordSection(StrictModel):
    """Keyword extraction (YAKE, minus stopwords and personal names) and list shapes."""

    language: str = "en"
    max_ngram: int = Field(default=2, ge=1, le=3)
    top: int = Field(default=12, ge=3)
    from_prompt: int = Field(
        default=2, ge=1, description="keywords drawn from the seed prompt itself"
    )
    noise: int = Field(default=1, ge=0, description="noise keywords drawn from another seed prompt")
    per_list: int = Field(
        default=3, ge=1, description="keywords per list sampled from one paragraph"
    )


class DecodingSection(LLMRole):
    """One role's decoding (the paper samples at temperature 0.7). SynPO's roles have no
    ``llm``: their models are ``policy``, the trained generator and improver."""

    batch_size: int = Field(
        default=512,
        ge=1,
        description="rows per LLM call (distilabel input_batch_size); large keeps the engine busy",
    )

    @model_validator(mode="after")
    def _no_llm(self) -> DecodingSection:
        if self.llm:
            raise ValueError(
                "SynPO's models are `policy`, `prompt_generator` and `improver`: remove `llm` here"
            )
        return self


class ScorerSection(StrictModel):
    """The reward model (the shared ``reward_model`` block) and the two gap thresholds.

    The paper uses PairRM with 0.20 (Mistral) and ArmoRM-Llama3-8B with 0.02 (Llama-3);
    any sequence-classification reward model works here, with its own scale: tune the
    thresholds to it (Appendix C.2, C.3).
    """

    renamed: ClassVar[dict[str, str]] = {
        key: f"scorer.reward_model.{key}"
        for key in ("model", "batch_size", "max_length", "torch_dtype", "trust_remote_code")
    }
    kind: Literal["reward_model", "pairwise"] = "reward_model"
    reward_model: RewardModel = Field(default_factory=RewardModel)
    pairwise: PairwiseModel | None = Field(
        default=None,
        description="kind pairwise: an LLM comparing the two responses (the gaps become "
        "log-odds of P(first preferred), so a threshold of 0.2 means P > 0.55)",
    )
    improver_threshold: float = Field(
        default=0.02, description="keep seed rows where gold - policy score > this"
    )
    pair_threshold: float = Field(
        default=0.02, description="keep pairs where chosen - rejected score > this"
    )

    @model_validator(mode="after")
    def _pairwise_model(self) -> Self:
        if self.kind == "pairwise" and self.pairwise is None:
            raise ValueError("scorer.kind is 'pairwise' but scorer.pairwise (with llm) is missing")
        return self


class FilterSection(StrictModel):
    """Prompt validity and the repetition filter (Appendix C.3: over 50% repetition is dropped)."""

    prompt_min_words: int = Field(default=3, ge=1)
    prompt_min_chars: int = Field(default=10, ge=1)
    max_repetition: float = Field(
        default=0.5, ge=0, le=1, description="largest allowed share of repeated n-grams"
    )
    repetition_ngram: int = Field(default=3, ge=1)


LOOP_KEYS = frozenset({"model", "dataset", "dataset_config", "output_dir"})


class _LoopStage(StrictModel):
    """A training section of the loop: no model or data of its own (the loop sets them for
    each stage), and checkpoints deleted once the stage's model is saved."""

    model: str = ""
    delete_checkpoints: bool = True

    @model_validator(mode="after")
    def _loop_owns_paths(self) -> Self:
        for key in ("model", "dataset", "dataset_config"):
            if getattr(self, key):
                raise ValueError(f"'{key}' is set by the SynPO loop; remove it from this section")
        return self


class SFTStage(_LoopStage, SFTRecipe):
    """SFT settings for the generator or the improver (Appendix C.1/C.2: 3 epochs, warmup 0.1)."""

    num_train_epochs: float = 3.0


class SimPOStage(_LoopStage, SimPORecipe):
    """SimPO settings for each iteration's policy (published SimPO defaults)."""


class MixPromptsSection(SeedData):
    """Manually collected prompts mixed with the synthetic ones (the paper's "SynPO Mix.",
    section 4.1, Table 7): a ``prompt_column``, or the first user turn of ``messages_column``."""

    prompt_column: str | None = Field(default=None, description="instead of messages_column")
    messages_column: str | None = "messages"


class SynPORecipe(Recipe):
    """A SynPO run: the initial model, seed data, corpus, thresholds and training settings."""

    name: str = "synpo"
    policy: str = Field(
        description="the initial SFT model M0: builtin:NAME, a local folder or a Hub id"
    )
    backend: Literal["transformers", "vllm"] = Field(
        default="transformers", description="engine that generates with M0 and the trained models"
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="backend options for every LLM (e.g. gpu_memory_utilization)",
    )
    seed_data: SeedSection
    corpus: CorpusSection
    keywords: KeywordSection = Field(default_factory=KeywordSection)
    prompts_per_iteration: int = Field(
        default=50_000, ge=1, description="keyword lists -> prompts per iteration"
    )
    pairs_per_iteration: int = Field(
        default=10_000, ge=1, description="pairs sampled into the preference set"
    )
    rejected_from: Literal["initial", "policy"] = Field(
        default="initial",
        description="rejected = the initial model's answer y0 (paper) or the current policy's",
    )
    simpo_from: Literal["initial", "policy"] = Field(
        default="initial",
        description="SimPO starts from M0 each iteration (paper) or from the current policy",
    )
    retrain_generator: bool = Field(
        default=False, description="retrain the prompt generator every iteration"
    )
    mix_iterations: bool = Field(
        default=True,
        description="SimPO of iteration k trains on the pairs of iterations 1..k together "
        "(section 2.3, Appendix C.3); false: on iteration k's own pairs alone",
    )
    mix_prompts: MixPromptsSection | None = Field(
        default=None,
        description="manual prompts answered, improved and scored beside the synthetic ones "
        "in every pairs stage (section 4.1, Table 7 'SynPO Mix.'); None: synthetic only",
    )
    prompt_decoding: DecodingSection = Field(
        default_factory=lambda: DecodingSection(max_new_tokens=256)
    )
    response_decoding: DecodingSection = Field(default_factory=DecodingSection)
    improver_decoding: DecodingSection = Field(default_factory=DecodingSection)
    scorer: ScorerSection = Field(default_factory=ScorerSection)
    filters: FilterSection = Field(default_factory=FilterSection)
    generator_training: SFTStage = Field(default_factory=SFTStage)
    improver_training: SFTStage = Field(default_factory=SFTStage)
    simpo_training: SimPOStage = Field(default_factory=SimPOStage)
    prompt_generator: str | None = Field(
        default=None,
        description="`generate synpo` only: a trained generator (default: the policy, prompted)",
    )
    improver: str | None = Field(
        default=None,
        description="`generate synpo` only: a trained improver (default: the policy, prompted)",
    )

    def llm_specs(self) -> list[str]:
        return [llm_spec(self, m) for m in (self.policy, self.prompt_generator, self.improver) if m]


def llm_spec(recipe: SynPORecipe, model: str) -> str:
    """The backend spec that generates with ``model`` (a built-in, a folder or a Hub id)."""
    if model.startswith("builtin:") and recipe.backend == "transformers":
        return model
    if ":" in model.split("/")[0] and not model.startswith("builtin:"):
        return model  # already a spec (transformers:..., vllm:..., openai:...)
    return f"{recipe.backend}:{model}"
