"""`synthalign train sft` learns the answer only by default; the full sequence on request.

The trainer is built (not run) on builtin:tiny-random, the model of the SFT training test,
and its collator's labels are read back: -100 wherever the loss must not look. The
recipe keys resolve to one mask, TRL's key names included, and contradictions fail in
one line when the recipe is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synthalign.errors import RecipeError, SeedDataError
from synthalign.trainers.common import load_model_and_tokenizer, load_train_recipe
from synthalign.trainers.sft import SFTRecipe, build_trainer

IGNORE = -100
MARKED_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The tiny model's own template with TRL's ``{% generation %}`` markers added."""


def _chat(*turns: str) -> list[dict[str, str]]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]


ROWS = [
    {"messages": _chat("question zero about science", "answer zero")},
    {"messages": _chat("first question here", "first reply", "second question", "final reply")},
]


def _recipe(**keys: Any) -> SFTRecipe:
    return load_train_recipe({"model": "builtin:tiny-random", "dataset": "d", **keys}, SFTRecipe)


def _labels(tmp_path: Path, recipe: SFTRecipe, template: str | None = None) -> list[dict]:
    """Each row's tokens and labels as the trainer's collator gives them."""
    from datasets import Dataset

    model, tokenizer = load_model_and_tokenizer(recipe.model)
    if template:
        tokenizer.chat_template = template
    trainer = build_trainer(recipe, model, tokenizer, Dataset.from_list(ROWS), tmp_path / "o")
    out = []
    for i in range(len(ROWS)):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        learned = tokenizer.decode(
            [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
        )
        prompt = ROWS[i]["messages"][:-1]
        out.append(
            {
                "ids": ids,
                "labels": labels,
                "learned": learned,
                "prompt_len": len(_prompt_ids(tokenizer, prompt)),
            }
        )
    return out


def _prompt_ids(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    """The prompt's tokens up to the assistant header, as TRL renders the prompt part."""
    rendered = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)
    return list(rendered["input_ids"])


@pytest.mark.parametrize(
    ("keys", "loss_on"),
    [
        ({}, "completion"),
        ({"completion_only": False}, "full"),
        ({"completion_only_loss": False}, "full"),
        ({"assistant_only_loss": False}, "full"),
        ({"assistant_only_loss": True}, "assistant"),
        ({"completion_only_loss": True, "assistant_only_loss": True}, "assistant"),
    ],
)
def test_recipe_keys_resolve_to_one_mask_and_survive_a_dump(keys: dict, loss_on: str) -> None:
    recipe = _recipe(**keys)
    assert recipe.loss_on == loss_on
    # the SynPO loop and the CLI write the recipe out and read it back
    assert load_train_recipe(recipe.model_dump(mode="json"), SFTRecipe).loss_on == loss_on


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"completion_only": False, "assistant_only_loss": True}, "keep one of them"),
        ({"completion_only": True, "assistant_only_loss": False}, "keep one of them"),
        ({"trainer_args": {"completion_only_loss": False}}, "not in trainer_args"),
        ({"completion_only": "sometimes"}, "valid boolean"),
    ],
)
def test_contradicting_or_bad_keys_fail_in_one_line(keys: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as error:
        _recipe(**keys)
    assert "\n" not in str(error.value)


def test_default_masks_the_prompt_and_learns_the_final_answer(tmp_path: Path) -> None:
    for row in _labels(tmp_path, _recipe(max_length=128)):
        n = row["prompt_len"]
        assert n > 0 and all(label == IGNORE for label in row["labels"][:n])
        assert row["labels"][n:] == row["ids"][n:] and len(row["ids"]) > n
    single, multi = _labels(tmp_path, _recipe(max_length=128))
    assert single["learned"].startswith("answer zero") and "question" not in single["learned"]
    assert multi["learned"].startswith("final reply") and "first reply" not in multi["learned"]


def test_full_sequence_learns_every_token(tmp_path: Path) -> None:
    for row in _labels(tmp_path, _recipe(max_length=128, completion_only=False)):
        assert row["labels"] == row["ids"]
        assert "question" in row["learned"]


def test_assistant_only_learns_every_assistant_turn_with_a_marked_template(tmp_path: Path) -> None:
    recipe = _recipe(max_length=128, assistant_only_loss=True)
    _, multi = _labels(tmp_path, recipe, MARKED_TEMPLATE)
    assert "first reply" in multi["learned"] and "final reply" in multi["learned"]
    assert "question" not in multi["learned"]
    # the tiny model's own template has no markers and TRL cannot patch it: one line
    with pytest.raises(RecipeError, match="no \\{% generation %\\} markers") as error:
        _labels(tmp_path, recipe)
    assert "\n" not in str(error.value)


def test_a_chat_without_a_final_answer_fails_in_one_line(tmp_path: Path) -> None:
    from datasets import Dataset

    recipe = _recipe(max_length=64)
    model, tokenizer = load_model_and_tokenizer(recipe.model)
    data = Dataset.from_list([*ROWS, {"messages": _chat("a question left unanswered")}])
    with pytest.raises(SeedDataError, match=r"training row 2: .* completion_only: false"):
        build_trainer(recipe, model, tokenizer, data, tmp_path / "o")


def test_a_max_length_that_cuts_every_answer_fails_in_one_line(tmp_path: Path) -> None:
    """TRL drops an example whose answer lies wholly past max_length; when that is every
    example, the run says so instead of failing inside the sampler on an empty dataset."""
    from datasets import Dataset

    recipe = _recipe(max_length=8)
    model, tokenizer = load_model_and_tokenizer(recipe.model)
    long_prompt = _chat("a question that runs on " + "and on " * 20, "a short answer")
    with pytest.raises(RecipeError, match="max_length 8 cuts every one of the 1 examples") as e:
        build_trainer(
            recipe, model, tokenizer, Dataset.from_list([{"messages": long_prompt}]), tmp_path / "o"
        )
    assert "\n" not in str(e.value)
