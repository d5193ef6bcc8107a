"""Supervised fine-tuning on a synthalign ``messages`` dataset, with TRL's SFTTrainer.

``synthalign train sft --config R.yaml [--dataset DIR_OR_ID] [--model SPEC] [--output DIR]``.
The dataset is read as it is (``load_dataset(DIR, dataset_config)``) and must hold a
``messages`` column of ``{role, content}`` lists: TRL applies the model's chat template
itself, so there is no column mapping to get wrong. Condor/GRA data, SynPO's prompt
generator and response improver sets all train through here.

**What the loss covers.** By default only the answer (``completion_only: true``): each
chat is split into TRL's conversational prompt-completion format (every turn before the
last is the prompt, the final assistant turn the completion) and TRL's
``completion_only_loss`` masks the prompt's tokens out of the labels. That works with any
chat template. ``assistant_only_loss: true`` keeps the chats whole and learns every
assistant turn (TRL's assistant mask; the template needs ``{% generation %}`` markers,
which TRL adds for the templates it knows). ``completion_only: false`` (or TRL's names:
``completion_only_loss: false``, ``assistant_only_loss: false``) learns the full
sequence, prompt included.

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
from typing import Any, ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator

from synthalign.errors import RecipeError, SeedDataError
from synthalign.trainers.common import TrainRecipe, recipe_trainer, trl_config_kwargs

REQUIRED_COLUMNS = ["messages"]
MASK_KEYS = ("completion_only_loss", "assistant_only_loss")
"""TRL's own names for what the loss covers: recipe keys here, never ``trainer_args``."""

LossOn = Literal["completion", "assistant", "full"]


class SFTRecipe(TrainRecipe):
    """An SFT run; by default the loss covers the final assistant turn only."""

    completion_only: bool = Field(
        default=True,
        validation_alias=AliasChoices("completion_only", "completion_only_loss"),
        description=(
            "learn only the final assistant turn (TRL prompt-completion format with "
            "completion_only_loss); false: the full sequence. TRL's name completion_only_loss "
            "is accepted"
        ),
    )
    assistant_only_loss: bool | None = Field(
        default=None,
        description=(
            "true: keep the chats whole and learn every assistant turn (TRL's assistant mask; "
            "the template needs {% generation %} markers); false: the full sequence"
        ),
    )
    packing: bool = False

    trl_config: ClassVar[str | None] = "trl:SFTConfig"

    @model_validator(mode="after")
    def _one_loss_mask(self) -> SFTRecipe:
        for key in MASK_KEYS:
            if key in self.trainer_args:
                raise ValueError(f"set '{key}' at the top of the recipe, not in trainer_args")
        given = "completion_only" in self.model_fields_set
        if self.assistant_only_loss is True and given and not self.completion_only:
            raise ValueError(
                "assistant_only_loss: true learns the assistant turns only, completion_only: false "
                "the full sequence: keep one of them"
            )
        if self.assistant_only_loss is False:
            if given and self.completion_only:
                raise ValueError(
                    "assistant_only_loss: false asks for the full sequence, completion_only: true "
                    "for the answer only: keep one of them"
                )
            self.completion_only = False
        return self

    @property
    def loss_on(self) -> LossOn:
        """Which tokens the loss covers."""
        if self.assistant_only_loss:
            return "assistant"
        return "completion" if self.completion_only else "full"


def split_final_turn(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A chat as TRL's conversational prompt-completion row: the final assistant turn is
    the completion, every turn before it the prompt."""
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def completion_dataset(dataset: Any) -> Any:
    """``messages`` -> ``prompt`` / ``completion``; one line naming a chat that cannot split."""
    for index, messages in enumerate(dataset["messages"]):
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise SeedDataError(
                f"training row {index}: its chat does not end with an assistant turn after a "
                "prompt, so there is no completion to learn: fix the data, or set "
                "completion_only: false to learn the full sequence"
            )
    return dataset.map(split_final_turn, input_columns="messages", remove_columns=["messages"])


def check_assistant_template(tokenizer: Any, model: str) -> None:
    """``assistant_only_loss`` needs ``{% generation %}`` markers, in the model's template or
    in TRL's training copy of it; say so in one line instead of TRL's error mid-setup."""
    from trl.chat_template_utils import get_training_chat_template  # heavy: TRL

    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        raise RecipeError(
            f"assistant_only_loss: the chat template of {model!r} has no {{% generation %}} "
            "markers and TRL has no training version of it: use completion_only (the default), "
            "which works with any template"
        ) from None


def build_trainer(
    recipe: SFTRecipe, model: Any, tokenizer: Any, dataset: Any, output_dir: Path
) -> Any:
    """TRL's SFTTrainer configured from the recipe (LoRA when ``lora`` is set)."""
    from trl import SFTConfig, SFTTrainer  # heavy: TRL

    kwargs = trl_config_kwargs(recipe, SFTConfig, output_dir)
    kwargs["completion_only_loss"] = recipe.loss_on == "completion"
    kwargs["assistant_only_loss"] = recipe.loss_on == "assistant"
    kwargs.setdefault("packing", recipe.packing)
    if recipe.loss_on == "completion":
        dataset = completion_dataset(dataset)
    elif recipe.loss_on == "assistant":
        check_assistant_template(tokenizer, recipe.model)
    trainer = SFTTrainer(**recipe.trainer_kwargs(model, tokenizer, dataset, SFTConfig(**kwargs)))
    if len(dataset) and not len(trainer.train_dataset):
        # TRL drops an example whose every answer token lies past max_length (fully masked):
        # with all of them gone, training would fail deep in the sampler instead
        raise RecipeError(
            f"max_length {recipe.max_length} cuts every one of the {len(dataset)} examples "
            "before its answer starts: raise max_length, or set completion_only: false"
        )
    return trainer


train_from_recipe = recipe_trainer(SFTRecipe, REQUIRED_COLUMNS, build_trainer)
