"""Supervised fine-tuning on a synthalign ``messages`` dataset, with TRL's SFTTrainer.

``synthalign train sft --config R.yaml [--dataset DIR_OR_ID] [--model SPEC] [--output DIR]``.
The dataset is read as it is (``load_dataset(DIR, dataset_config)``) and must hold a
``messages`` column of ``{role, content}`` lists: TRL applies the model's chat template
itself, so there is no column mapping to get wrong. Condor/GRA data, SynPO's prompt
generator and response improver sets all train through here.

Example recipe (``pipelines/recipes/*-sft.yaml`` style)::

    model: builtin:tiny-random
    dataset: outputs/condor
    dataset_config: refined
    learning_rate: 2.0e-5
    num_train_epochs: 3
    lora: {r: 16, alpha: 32}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from synthalign.trainers.common import TrainRecipe, recipe_trainer, trl_config_kwargs

REQUIRED_COLUMNS = ["messages"]


class SFTRecipe(TrainRecipe):
    """An SFT run. ``assistant_only_loss`` needs a chat template with generation markers."""

    assistant_only_loss: bool = Field(
        default=False,
        description="learn only the assistant turns (the template must mark them with {% generation %})",
    )
    packing: bool = False

    trl_config: ClassVar[str | None] = "trl:SFTConfig"


def build_trainer(
    recipe: SFTRecipe, model: Any, tokenizer: Any, dataset: Any, output_dir: Path
) -> Any:
    """TRL's SFTTrainer configured from the recipe (LoRA when ``lora`` is set)."""
    from trl import SFTConfig, SFTTrainer  # heavy: TRL

    kwargs = trl_config_kwargs(recipe, SFTConfig, output_dir)
    kwargs.setdefault("assistant_only_loss", recipe.assistant_only_loss)
    kwargs.setdefault("packing", recipe.packing)
    return SFTTrainer(**recipe.trainer_kwargs(model, tokenizer, dataset, SFTConfig(**kwargs)))


train_from_recipe = recipe_trainer(SFTRecipe, REQUIRED_COLUMNS, build_trainer)
