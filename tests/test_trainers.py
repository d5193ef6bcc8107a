"""`synthalign train sft|simpo`: a few steps on builtin:tiny-random, saved models load back.

Training runs through the real CLI in a child process, which keeps torch's threads out
of the pytest process (distilabel pipelines that other tests run in-process fork it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthalign.errors import RecipeError, SeedDataError

CLI = "import sys; from synthalign.cli import app; sys.exit(app())"


def _hub_folder(path: Path, rows: list[dict[str, Any]], config: str) -> Path:
    """A Hub-layout folder, as every synthalign run writes it."""
    from datasets import Dataset

    from synthalign.cards.base import CardContent
    from synthalign.hub import write_hub_folder

    card = CardContent(metadata={"license": "apache-2.0"}, body="# test data\n")
    return write_hub_folder(
        path,
        {config: Dataset.from_list(rows)},
        card,
        pipeline_yaml=None,
        run_info={"method": "test"},
    )


def _sft_rows(n: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"question {i} about science"},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
        for i in range(n)
    ]


def _pref_rows(n: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": f"question {i} about art"}],
            "chosen": [{"role": "assistant", "content": f"a careful answer {i}"}],
            "rejected": [{"role": "assistant", "content": "no"}],
            "score_gap": 0.5,
        }
        for i in range(n)
    ]


def _train(
    kind: str, recipe: dict[str, Any], tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess:
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return subprocess.run(
        [sys.executable, "-c", CLI, "train", kind, "--config", str(path), *extra],
        capture_output=True, text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"},
    )  # fmt: skip


def _load(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.slow
def test_sft_with_lora_saves_an_adapter_that_loads_back(tmp_path: Path) -> None:
    data = _hub_folder(tmp_path / "sft-data", _sft_rows(), "refined")
    recipe = {
        "model": "builtin:tiny-random", "dataset_config": "refined", "max_steps": 2,
        "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_length": 64, "logging_steps": 1,
        "lora": {"r": 4, "alpha": 8},
    }  # fmt: skip
    out = tmp_path / "sft-model"
    proc = _train("sft", recipe, tmp_path, "--dataset", str(data), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    record = json.loads((out / "synthalign-train.json").read_text())
    assert (
        record["kind"] == "sft" and record["rows"] == 8 and record["metrics"]["train_samples"] == 8
    )
    # the default loss covers the answer only, and the saved record says so
    assert record["recipe"]["completion_only"] is True
    model = _load(out)
    assert model.config.model_type == "llama"


@pytest.mark.slow
def test_simpo_trains_saves_and_resumes_from_checkpoint(tmp_path: Path) -> None:
    data = _hub_folder(tmp_path / "pref-data", _pref_rows(), "pairs")
    out = tmp_path / "simpo-model"
    recipe = {
        "model": "builtin:tiny-random", "dataset": str(data), "dataset_config": "pairs", "output_dir": str(out),
        "max_steps": 1, "save_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-4,
        "max_length": 64, "max_prompt_length": 32, "beta": 2.0, "gamma_beta_ratio": 0.5, "logging_steps": 1,
        "lora": {"r": 4, "alpha": 8, "merge": True},
    }  # fmt: skip
    proc = _train("simpo", recipe, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (
        out / "adapter" / "adapter_config.json"
    ).is_file()
    record = json.loads((out / "synthalign-train.json").read_text())
    assert record["kind"] == "simpo" and record["resumed_from"] is None
    args = json.loads((out / "trainer_state.json").read_text())
    assert args["global_step"] == 1
    _load(out)

    # a longer run in the same folder continues from the checkpoint instead of starting over
    proc = _train("simpo", {**recipe, "max_steps": 2}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "synthalign-train.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-1")
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_recipe_errors_are_one_line(tmp_path: Path) -> None:
    from synthalign.trainers.common import (
        load_train_recipe,
        trl_config_kwargs,
    )
    from synthalign.trainers.data import load_training_dataset
    from synthalign.trainers.sft import SFTRecipe
    from synthalign.trainers.simpo import SimPORecipe

    with pytest.raises(RecipeError, match="--dataset"):
        load_train_recipe({"model": "builtin:tiny-random"}, SFTRecipe)
    with pytest.raises(RecipeError, match="did you mean 'learning_rate'"):
        load_train_recipe({"model": "m", "dataset": "d", "learning_rat": 1.0}, SFTRecipe)
    with pytest.raises(RecipeError, match="simpo_gamma"):
        load_train_recipe(
            {"model": "m", "dataset": "d", "simpo_gamma": 1, "gamma_beta_ratio": 0.5}, SimPORecipe
        )
    recipe = load_train_recipe(
        {"model": "m", "dataset": "d", "trainer_args": {"warmup_stepz": 3}}, SFTRecipe
    )
    from trl import SFTConfig

    with pytest.raises(RecipeError, match="did you mean 'warmup_steps'"):
        trl_config_kwargs(recipe, SFTConfig, tmp_path)
    data = _hub_folder(tmp_path / "wrong", _pref_rows(2), "pairs")
    recipe = load_train_recipe({"model": "m"}, SFTRecipe, dataset=str(data), output=tmp_path / "o")
    with pytest.raises(SeedDataError, match=r"lacks column\(s\) \['messages'\]"):
        load_training_dataset(recipe, ["messages"])
    assert recipe.output_dir == str(tmp_path / "o")
    # published SimPO defaults: beta 2.0, gamma/beta 0.5, and TRL gets the absolute gamma
    simpo = load_train_recipe({"model": "m", "dataset": "d"}, SimPORecipe)
    assert (simpo.beta, simpo.gamma, simpo.cpo_alpha, simpo.learning_rate) == (2.0, 1.0, 0.0, 6e-7)
