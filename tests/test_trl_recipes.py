"""`synthalign train` reads TRL's and the alignment-handbook's recipe keys unchanged.

The handbook recipe below has the shape of the handbook's SFT configs (model arguments,
``dataset_mixture``, ``chat_template``, SFTConfig keys with evaluation); only its model,
dataset and hardware values are ours (tiny offline model, a local synthalign folder,
fp32 and eager attention on a CPU, no tracking service or Hub push offline). It trains
through the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_trainers import _hub_folder, _load, _pref_rows, _sft_rows, _train

from synthalign.errors import RecipeError
from synthalign.trainers.common import load_train_recipe
from synthalign.trainers.rdpo import RDPOTrainRecipe
from synthalign.trainers.sft import SFTRecipe

TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
    "{% endif %}"
)


def _handbook_sft(data: Path, out: Path) -> dict[str, object]:
    return {
        # Model arguments
        "model_name_or_path": "builtin:tiny-random",
        "model_revision": "main",
        "torch_dtype": "float32",
        "attn_implementation": "eager",
        # Data training arguments
        "chat_template": TEMPLATE,
        "dataset_mixture": {
            "datasets": [
                {
                    "id": str(data),
                    "config": "sft",
                    "split": "train",
                    "columns": ["messages"],
                    "weight": 1.0,
                },
                {
                    "id": str(data),
                    "config": "sft",
                    "split": "train",
                    "columns": ["messages"],
                    "weight": 0.5,
                },
            ],
            "test_split_size": 0.25,
            "seed": 0,
        },
        "dataset_num_proc": 1,
        # SFT trainer config
        "bf16": False,
        "do_eval": True,
        "eval_strategy": "epoch",
        "gradient_accumulation_steps": 1,
        "gradient_checkpointing": False,
        "learning_rate": 1.0e-3,
        "log_level": "info",
        "logging_steps": 1,
        "logging_strategy": "steps",
        "lr_scheduler_type": "cosine",
        "max_length": 128,
        "max_steps": -1,
        "num_train_epochs": 1,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "per_device_eval_batch_size": 2,
        "per_device_train_batch_size": 4,
        "push_to_hub": False,
        "remove_unused_columns": True,
        "report_to": "none",
        "save_strategy": "no",
        "seed": 42,
        "warmup_ratio": 0.1,
    }


def test_handbook_keys_map_onto_the_recipe(tmp_path: Path) -> None:
    raw = {
        **_handbook_sft(tmp_path, tmp_path / "o"),
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
    }
    recipe = load_train_recipe(raw, SFTRecipe)
    assert recipe.model == "builtin:tiny-random"
    assert recipe.model_kwargs == {
        "revision": "main",
        "dtype": "float32",
        "attn_implementation": "eager",
    }
    assert recipe.lora is not None and (recipe.lora.r, recipe.lora.alpha) == (8, 16)
    assert recipe.dataset_mixture is not None and recipe.dataset_mixture.test_split_size == 0.25
    assert recipe.chat_template == TEMPLATE and recipe.overwrite is True
    assert {
        "bf16",
        "do_eval",
        "eval_strategy",
        "report_to",
        "push_to_hub",
        "dataset_num_proc",
    } <= set(recipe.trainer_args)
    assert recipe.learning_rate == 1.0e-3, "a key both vocabularies share stays ours"


def test_trl_script_keys_map_onto_the_recipe() -> None:
    recipe = load_train_recipe(
        {
            "model_name_or_path": "m",
            "dataset_name": "org/prefs",
            "dataset_config": "dpo",
            "dataset_train_split": "train_prefs",
            "dataset_test_split": "test_prefs",
            "use_peft": False,
            "lora_r": 4,
            "beta": 0.05,
            "loss_type": ["sigmoid"],
        },
        RDPOTrainRecipe,
    )
    assert (recipe.dataset, recipe.dataset_split, recipe.eval_split) == (
        "org/prefs",
        "train_prefs",
        "test_prefs",
    )
    assert recipe.lora is None, "use_peft: false means full fine-tuning"
    assert recipe.beta == 0.05 and recipe.trainer_args == {"loss_type": ["sigmoid"]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"load_in_4bit": True}, "load_in_4bit: 4-bit loading needs bitsandbytes and a CUDA GPU"),
        ({"dataset_mixer": {"d": 1.0}}, "old mixer format: write dataset_mixture"),
        ({"model": "m2"}, "model_name_or_path and model mean the same: keep one"),
        ({"max_seq_length": 512}, "max_seq_length"),
        ({"dataset": "x"}, "set dataset or dataset_mixture, not both"),
    ],
)
def test_ecosystem_keys_that_cannot_work_are_one_line_errors(
    tmp_path: Path, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        load_train_recipe({**_handbook_sft(tmp_path, tmp_path / "o"), **extra}, SFTRecipe)


def test_a_handbook_recipe_trains_as_is(tmp_path: Path) -> None:
    data = _hub_folder(tmp_path / "data", _sft_rows(8), "sft")
    out = tmp_path / "model"
    proc = _train("sft", _handbook_sft(data, out), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("eval_loss" in entry for entry in state["log_history"]), "no evaluation ran"
    record = json.loads((out / "synthalign-train.json").read_text())
    assert record["rows"] == 9, "8 + half of 8 rows mixed, a quarter held out: 12 -> 9 + 3"
    assert _load(out).config.model_type


def test_a_trl_script_dpo_recipe_trains_as_is(tmp_path: Path) -> None:
    data = _hub_folder(tmp_path / "data", _pref_rows(8), "dpo")
    out = tmp_path / "model"
    recipe = {
        "model_name_or_path": "builtin:tiny-random",
        "dataset_name": str(data),
        "dataset_config": "dpo",
        "dataset_train_split": "train",
        "use_peft": True,
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_target_modules": "all-linear",
        "beta": 0.1,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 5.0e-4,
        "logging_steps": 1,
        "report_to": "none",
        "bf16": False,
        "output_dir": str(out),
    }
    proc = _train("dpo", recipe, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_config.json").is_file(), "use_peft with lora_* keys trained no adapter"
