"""Training recipes in TRL's and the alignment-handbook's own keys, read unchanged.

A user who has a handbook or TRL-script YAML should not have to rename twenty keys to
train with synthalign. Before a training recipe is validated, :func:`from_trl_keys`
rewrites the ecosystem's vocabulary into synthalign's:

- TRL's ``ModelConfig``: ``model_name_or_path`` -> ``model``; ``model_revision``,
  ``dtype`` / ``torch_dtype``, ``attn_implementation``, ``trust_remote_code`` ->
  ``model_kwargs`` (given to ``from_pretrained``); ``use_peft`` with ``lora_r``,
  ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``, ``lora_modules_to_save``
  -> the ``lora`` block; the handbook's ``tokenizer_name_or_path`` -> ``tokenizer``.
- TRL's ``ScriptArguments``: ``dataset_name`` -> ``dataset``, ``dataset_train_split`` ->
  ``dataset_split``, ``dataset_test_split`` -> ``eval_split``; ``dataset_config`` is
  already ours.
- The handbook's ``dataset_mixture`` (``datasets: [{id, config, split, columns,
  weight}]``, ``seed``, ``test_split_size``) and ``chat_template`` are synthalign keys
  of the same shape (see :mod:`synthalign.trainers.mixture`).
- ``overwrite_output_dir`` (gone from transformers 5) means what ``--overwrite`` means.
- Every other key that is a field of the trainer's TRL config class (``SFTConfig``,
  ``DPOConfig``, ``CPOConfig``: ``bf16``, ``eval_strategy``, ``report_to``, ...) goes to
  ``trainer_args`` unchanged, so TRL validates it.

What is left is an unknown key, and the recipe's one-line error names it.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterable
from typing import Any

from synthalign.errors import RecipeError

__all__ = ["from_trl_keys", "trl_config_fields"]

_MODEL_KWARGS = {
    "model_revision": "revision",
    "dtype": "dtype",
    "torch_dtype": "dtype",
    "attn_implementation": "attn_implementation",
    "trust_remote_code": "trust_remote_code",
}
_RENAMED = {
    "model_name_or_path": "model",
    "tokenizer_name_or_path": "tokenizer",
    "dataset_name": "dataset",
    "dataset_train_split": "dataset_split",
    "dataset_test_split": "eval_split",
    "overwrite_output_dir": "overwrite",
}
_LORA = {
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lora_target_modules": "target_modules",
    "lora_modules_to_save": "modules_to_save",
}
_UNSUPPORTED = {
    "load_in_4bit": "4-bit loading needs bitsandbytes and a CUDA GPU",
    "load_in_8bit": "8-bit loading needs bitsandbytes and a CUDA GPU",
    "dataset_mixer": "this is the handbook's old mixer format: write dataset_mixture instead",
    "dataset_streaming": "streaming datasets are not supported: train on a loaded split",
}
_IGNORED_LORA = {"lora_task_type", "lora_target_parameters", "use_rslora", "use_dora"}


def trl_config_fields(path: str) -> set[str]:
    """The fields of TRL's config class at ``module:Class`` (imports TRL: heavy)."""
    module, _, name = path.partition(":")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental warns on import
    cls = getattr(importlib.import_module(module), name)
    return {f.name for f in dataclasses.fields(cls)}


def _lora_block(data: dict[str, Any]) -> dict[str, Any] | None:
    use_peft = data.pop("use_peft", None)
    block = {ours: data.pop(theirs) for theirs, ours in _LORA.items() if theirs in data}
    for key in _IGNORED_LORA & set(data):
        value = data.pop(key)
        if value not in (None, False, "CAUSAL_LM"):
            raise RecipeError(f"{key}: {value!r} is not supported by synthalign's LoRA; remove it")
    if use_peft is False or (use_peft is None and not block):
        return None
    return block


def _check_supported(data: dict[str, Any]) -> None:
    for key, why in _UNSUPPORTED.items():
        if data.get(key):
            raise RecipeError(f"{key}: {why}")
        data.pop(key, None)


def _gather_model_kwargs(data: dict[str, Any]) -> None:
    model_kwargs = dict(data.pop("model_kwargs", None) or {})
    for theirs, ours in _MODEL_KWARGS.items():
        value = data.pop(theirs, None)
        if value is not None:
            model_kwargs[ours] = value
    if model_kwargs:
        data["model_kwargs"] = model_kwargs


def from_trl_keys(
    raw: dict[str, Any], own_fields: Iterable[str], trl_config: str | None
) -> dict[str, Any]:
    """``raw`` with TRL's and the handbook's keys rewritten into synthalign's (see module)."""
    data = dict(raw)
    own = set(own_fields)
    _check_supported(data)
    for theirs, ours in _RENAMED.items():
        if theirs in data:
            if ours in data:
                raise RecipeError(f"{theirs} and {ours} mean the same: keep one of them")
            data[ours] = data.pop(theirs)
    _gather_model_kwargs(data)
    lora = _lora_block(data)
    if lora is not None:
        if data.get("lora"):
            raise RecipeError("use_peft/lora_* and a lora block mean the same: keep one of them")
        data["lora"] = lora
    foreign = [k for k in data if k not in own]
    if foreign and trl_config:
        theirs = trl_config_fields(trl_config)
        trainer_args = dict(data.pop("trainer_args", None) or {})
        for key in foreign:
            if key in theirs:
                trainer_args[key] = data.pop(key)
        if trainer_args:
            data["trainer_args"] = trainer_args
    return data
