"""SimPO preference optimization over TRL's CPO trainer.

``synthalign train simpo --config R.yaml [--dataset DIR_OR_ID] [--model SPEC] [--output DIR]``.

SimPO (Meng et al., 2024) is TRL's ``trl.experimental.cpo.CPOTrainer`` with
``loss_type="simpo"`` and ``cpo_alpha=0`` (no behaviour-cloning term): a length-normalized
log-likelihood margin, no reference model. Two things differ from the SimPO paper's
notation and are easy to get wrong:

- TRL's ``simpo_gamma`` is the *absolute* target margin gamma, whereas SimPO's public
  recipes give ``gamma_beta_ratio``. A recipe may give either; ``gamma_beta_ratio: 0.5``
  with ``beta: 2.0`` is ``simpo_gamma: 1.0``.
- The dataset holds conversational ``prompt``/``chosen``/``rejected`` lists (TRL's
  preference format); TRL applies the chat template.

Defaults are SimPO's published Llama-3-Base setting (beta 2.0, gamma/beta 0.5, lr 6e-7,
one epoch, warmup 0.1); its Mistral-Base setting is gamma/beta 0.8, lr 3e-7.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from synthalign.trainers.common import TrainRecipe, recipe_trainer, trl_config_kwargs

REQUIRED_COLUMNS = ["prompt", "chosen", "rejected"]


class SimPORecipe(TrainRecipe):
    """A SimPO run (published defaults; see the module docstring)."""

    learning_rate: float = Field(default=6e-7, gt=0)
    beta: float = Field(default=2.0, gt=0, description="reward scale (SimPO's beta)")
    simpo_gamma: float | None = Field(
        default=None, ge=0, description="absolute target reward margin gamma (TRL's simpo_gamma)"
    )
    gamma_beta_ratio: float | None = Field(
        default=None,
        ge=0,
        description="gamma / beta as SimPO's recipes give it (0.5-0.8); used when simpo_gamma is unset",
    )
    cpo_alpha: float = Field(
        default=0.0, ge=0, description="behaviour-cloning weight; 0 is pure SimPO"
    )
    max_prompt_length: int | None = Field(
        default=None,
        ge=1,
        description="prompts longer than this keep their last tokens (None: only max_length applies)",
    )

    trl_config: ClassVar[str | None] = "trl.experimental.cpo:CPOConfig"

    @model_validator(mode="after")
    def _one_gamma(self) -> SimPORecipe:
        if self.simpo_gamma is not None and self.gamma_beta_ratio is not None:
            raise ValueError("set simpo_gamma (absolute) or gamma_beta_ratio, not both")
        return self

    @property
    def gamma(self) -> float:
        """The absolute margin TRL wants: explicit, else ratio * beta, else SimPO's 0.5 * beta."""
        if self.simpo_gamma is not None:
            return self.simpo_gamma
        return (self.gamma_beta_ratio if self.gamma_beta_ratio is not None else 0.5) * self.beta


def truncate_prompt(row: dict[str, Any], tokenizer: Any, max_prompt_length: int) -> dict[str, Any]:
    """Drop the oldest prompt turns until the rendered prompt fits (the last turn is kept).

    CPOTrainer truncates only the completion, so an overlong prompt would leave nothing to
    learn from; dropping whole early turns keeps the chat well-formed.
    """
    prompt = list(row["prompt"])
    while len(prompt) > 1:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_prompt_length:
            break
        prompt = prompt[1:]
    return {"prompt": prompt}


def build_trainer(
    recipe: SimPORecipe, model: Any, tokenizer: Any, dataset: Any, output_dir: Path
) -> Any:
    """TRL's CPOTrainer set to the SimPO loss."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo import CPOConfig, CPOTrainer  # heavy: TRL

    kwargs = trl_config_kwargs(recipe, CPOConfig, output_dir)
    kwargs.update(
        loss_type="simpo", beta=recipe.beta, simpo_gamma=recipe.gamma, cpo_alpha=recipe.cpo_alpha
    )
    if recipe.max_prompt_length and dataset and isinstance(dataset[0]["prompt"], list):
        dataset = dataset.map(
            truncate_prompt,
            fn_kwargs={"tokenizer": tokenizer, "max_prompt_length": recipe.max_prompt_length},
        )
    return CPOTrainer(**recipe.trainer_kwargs(model, tokenizer, dataset, CPOConfig(**kwargs)))


train_from_recipe = recipe_trainer(SimPORecipe, REQUIRED_COLUMNS, build_trainer)
