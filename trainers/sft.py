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
from typing import Any

from pydantic import Field

from synthalign.trainers.common import (
    TrainRecipe,
    load_train_recipe,
    run_training,
    trl_config_kwargs,
)

REQUIRED_COLUMNS = ["messages"]


class SFTRecipe(TrainRecipe):
    """An SFT run. ``assistant_only_loss`` needs a chat template with generation markers."""

    assistant_only_loss: bool = Field(
        default=False,
        description="learn only the assistant turns (the template must mark them with {% generation %})",
    )
    packing: bool = False


def build_trainer(recipe: SFTRecipe, model: Any, tokenizer: Any, dataset: Any, output_dir: Path) -> Any:
    """TRL's SFTTrainer configured from the recipe (LoRA when ``lora`` is set)."""
    from trl import SFTConfig, SFTTrainer

    kwargs = trl_config_kwargs(recipe, SFTConfig, output_dir)
    kwargs.setdefault("assistant_only_loss", recipe.assistant_only_loss)
    kwargs.setdefault("packing", recipe.packing)
    args = SFTConfig(**kwargs)
    peft_config = recipe.lora.peft_config() if recipe.lora and recipe.lora.enabled else None
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def train_from_recipe(
    config: str | Path | dict[str, Any] | SFTRecipe,
    *,
    kind: str = "sft",
    dataset: str | None = None,
    model: str | None = None,
    output: str | Path | None = None,
) -> Path:
    """Train with SFT and return the saved model folder (loads with ``from_pretrained``)."""
    recipe = load_train_recipe(config, SFTRecipe, dataset=dataset, model=model, output=output)
    return run_training(
        recipe,
        kind=kind,
        required_columns=REQUIRED_COLUMNS,
        build_trainer=lambda m, t, d, o: build_trainer(recipe, m, t, d, o),
    )
