"""What every synthalign trainer shares: the recipe, data and model loading, saving.

The trainers are thin layers over TRL. A recipe (YAML, like the alignment-handbook's)
names a model, a dataset folder or Hub id, and the usual knobs; this module turns it
into TRL's own config object, loads the model (``builtin:tiny-random``, a path or a Hub
id, via :func:`synthalign.models.resolve_model`) and the data (``load_dataset`` on a
Hub-layout folder, with no column mapping: synthalign's datasets already carry TRL's
columns), and saves a folder that ``from_pretrained`` loads back: the full model, or
the LoRA adapter, plus the tokenizer, ``train_results.json`` and the recipe used.

Each method-specific trainer (``sft.py``, ``simpo.py``, ``rdpo.py``) supplies its
recipe subclass, the columns it needs, and the TRL config/trainer classes.

An output folder belongs to one kind of training (``synthalign-train-run.json``, written
before the first checkpoint): ``train dpo`` into a folder holding ``rdpo`` checkpoints
would resume from them and train zero steps, so it refuses in one line, or starts
afresh with ``--overwrite``. A resume is announced with the step it resumes from.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import Field, PrivateAttr, model_validator

from synthalign.cards.base import versions
from synthalign.errors import RecipeError
from synthalign.models import resolve_model
from synthalign.recipes import RecipePath, StrictModel, load_recipe, parse_recipe
from synthalign.trainers.data import load_training_splits
from synthalign.trainers.mixture import DatasetMixture
from synthalign.trainers.trl_keys import from_trl_keys

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

logger = logging.getLogger(__name__)


def _accepted_keys(cls: type[StrictModel]) -> set[str]:
    """Field names and their alias choices: a recipe key we read stays ours, even when TRL
    has a config field of the same name (``completion_only_loss`` on SFT)."""
    keys = set(cls.model_fields)
    for field in cls.model_fields.values():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
        keys.update(c for c in choices if isinstance(c, str))
    return keys


T = TypeVar("T", bound="TrainRecipe")

RECIPE_FILENAME = "synthalign-train.json"
"""Written into every saved model folder: the recipe, dataset and metrics that made it."""
RUN_FILENAME = "synthalign-train-run.json"
"""Written when a training starts in a folder: which kind of training its checkpoints are."""
HEARTBEAT_ENV = "SYNTHALIGN_HEARTBEAT"
"""A file the training touches at every optimizer step (the run driver's stall check)."""


class LoraOptions(StrictModel):
    """LoRA through peft. Absent (or ``enabled: false``) means full fine-tuning."""

    enabled: bool = True
    r: int = Field(default=16, ge=1, description="adapter rank")
    alpha: int = Field(default=32, ge=1, description="scaling numerator (lora_alpha)")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        default="all-linear", description="module names, or 'all-linear' (peft's shortcut)"
    )
    merge: bool = Field(
        default=False,
        description=(
            "save the merged full model instead of the adapter alone (the adapter then goes to "
            "OUTPUT/adapter); every backend, vLLM included, loads a merged folder directly"
        ),
    )

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


class TrainRecipe(StrictModel):
    """Fields every trainer recipe has (alignment-handbook style, flat).

    ``trainer_args`` passes anything else straight to TRL's config class (checked
    against its fields), so a recipe never needs a code change to reach a TRL knob.
    """

    model: str = Field(description="model to train: builtin:NAME, a local folder or a Hub id")
    dataset: RecipePath | None = Field(
        default=None, description="Hub-layout folder (relative to the recipe) or Hub dataset id"
    )
    dataset_config: str | None = Field(
        default=None, description="config (subset) of the dataset, e.g. 'refined'"
    )
    dataset_split: str = "train"
    max_samples: int | None = Field(
        default=None, ge=1, description="train on the first N rows only"
    )
    output_dir: str = Field(
        default="outputs/model", description="where the model and checkpoints go"
    )
    seed: int = 42
    learning_rate: float = Field(default=2e-5, gt=0)
    num_train_epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(
        default=-1, description="stop after this many optimizer steps (-1: use epochs)"
    )
    per_device_train_batch_size: int = Field(default=8, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="share of steps spent warming up"
    )
    lr_scheduler_type: str = "cosine"
    max_length: int | None = Field(
        default=2048, ge=8, description="tokens per example; longer ones are truncated"
    )
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto", description="auto: bf16 on a GPU that supports it, else fp32 (CPU)"
    )
    lora: LoraOptions | None = None
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int | None = Field(
        default=None, ge=1, description="checkpoint every N steps (default: once per epoch)"
    )
    save_total_limit: int | None = Field(default=1, ge=1, description="checkpoints kept on disk")
    resume_from_checkpoint: bool | str = Field(
        default=True,
        description=(
            "true: continue from the last checkpoint in output_dir when there is one; "
            "a path: continue from that checkpoint; false: start over"
        ),
    )
    delete_checkpoints: bool = Field(
        default=False, description="remove checkpoint-* folders once the final model is saved"
    )
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for TRL's config class"
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="from_pretrained arguments (revision, dtype, attn_implementation, ...)",
    )
    tokenizer: str | None = Field(default=None, description="tokenizer, when not the model's")
    chat_template: str | None = Field(default=None, description="Jinja chat template to use")
    dataset_mixture: DatasetMixture | None = Field(
        default=None, description="the handbook's mixture of datasets (instead of dataset)"
    )
    eval_split: str | None = Field(
        default=None, description="split of dataset to evaluate on (TRL's dataset_test_split)"
    )
    overwrite: bool = Field(
        default=False, description="start afresh in output_dir (like --overwrite)"
    )

    trl_config: ClassVar[str | None] = None
    """TRL's config class (``module:Class``) whose fields a recipe may use directly."""
    _eval_dataset: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _ecosystem_keys(cls, data: Any) -> Any:
        """TRL's and the alignment-handbook's keys, rewritten into ours (see trl_keys)."""
        if not isinstance(data, dict):
            return data
        return from_trl_keys(data, _accepted_keys(cls), cls.trl_config)

    @model_validator(mode="after")
    def _check_length(self) -> TrainRecipe:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                "max_steps must be -1 (train for num_train_epochs) or a positive number"
            )
        return self

    def trainer_kwargs(self, model: Any, tokenizer: Any, dataset: Any, args: Any) -> dict[str, Any]:
        """What every TRL trainer takes: model, config, data, tokenizer, LoRA when set."""
        peft_config = self.lora.peft_config() if self.lora and self.lora.enabled else None
        return {
            "model": model,
            "args": args,
            "train_dataset": dataset,
            "eval_dataset": self._eval_dataset,
            "processing_class": tokenizer,
            "peft_config": peft_config,
        }


def load_train_recipe(
    config: str | Path | dict[str, Any] | TrainRecipe,
    cls: type[T],
    *,
    dataset: str | None = None,
    model: str | None = None,
    output: str | Path | None = None,
    dataset_config: str | None = None,
) -> T:
    """Read a recipe (YAML path, dict or instance) and apply the CLI overrides."""
    if isinstance(config, cls):
        recipe = config
    elif isinstance(config, dict):
        recipe = parse_recipe(config, cls)
    elif isinstance(config, TrainRecipe):
        recipe = parse_recipe(config.model_dump(), cls)
    else:
        recipe = load_recipe(config, cls)
    updates: dict[str, Any] = {}
    if dataset:
        updates["dataset"] = dataset
    if model:
        updates["model"] = model
    if output:
        updates["output_dir"] = str(output)
    if dataset_config:
        updates["dataset_config"] = dataset_config
    if updates:
        recipe = parse_recipe({**recipe.model_dump(), **updates}, cls)
    if recipe.dataset and recipe.dataset_mixture:
        raise RecipeError("set dataset or dataset_mixture, not both")
    if not recipe.dataset and not recipe.dataset_mixture:
        raise RecipeError(
            "no training dataset: set 'dataset' in the recipe or pass --dataset DIR_OR_REPO_ID"
        )
    return recipe


def precision_flags(precision: str) -> dict[str, bool]:
    """TRL defaults to bf16, which fails on a CPU; choose what the hardware can do."""
    import torch

    if precision == "auto":
        precision = (
            "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        )
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def load_model_and_tokenizer(
    spec: str, recipe: TrainRecipe | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer; a chat template is required (the data is chats).

    The recipe's ``model_kwargs`` go to ``from_pretrained`` (``dtype`` defaults to
    ``auto``); its ``tokenizer`` and ``chat_template`` replace the model's own.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: transformers

    path = resolve_model(spec)
    model_kwargs = {"dtype": "auto", **(recipe.model_kwargs if recipe else {})}
    tokenizer_path = resolve_model(recipe.tokenizer) if recipe and recipe.tokenizer else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise RecipeError(f"cannot load model {spec!r}: {str(exc).splitlines()[0]}") from None
    if recipe and recipe.chat_template:
        tokenizer.chat_template = recipe.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise RecipeError(
            f"model {spec!r} has no chat template: "
            "start from an instruct/SFT model or add one to its tokenizer"
        )
    return model, tokenizer


def trl_config_kwargs(recipe: TrainRecipe, config_cls: type, output_dir: Path) -> dict[str, Any]:
    """The common TrainingArguments, plus ``trainer_args`` checked against ``config_cls``."""
    known = set(getattr(config_cls, "__dataclass_fields__", {}))
    unknown = sorted(set(recipe.trainer_args) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RecipeError(f"trainer_args: {config_cls.__name__} has no field '{unknown[0]}'{hint}")
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "seed": recipe.seed,
        "learning_rate": recipe.learning_rate,
        "num_train_epochs": recipe.num_train_epochs,
        "max_steps": recipe.max_steps,
        "per_device_train_batch_size": recipe.per_device_train_batch_size,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        # transformers 5 folds the ratio into warmup_steps: a float in [0, 1) is a ratio
        "warmup_steps": recipe.warmup_ratio if recipe.warmup_ratio < 1 else 0,
        "lr_scheduler_type": recipe.lr_scheduler_type,
        "max_length": recipe.max_length,
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "logging_steps": recipe.logging_steps,
        "save_strategy": "steps" if recipe.save_steps else "epoch",
        "save_total_limit": recipe.save_total_limit,
        "report_to": "none",
        "dataloader_num_workers": 0,
        **precision_flags(recipe.precision),
    }
    if recipe.save_steps:
        kwargs["save_steps"] = recipe.save_steps
    kwargs.update(recipe.trainer_args)
    return kwargs


def checkpoint_to_resume(recipe: TrainRecipe, output_dir: Path) -> str | None:
    """Resolve ``resume_from_checkpoint`` to a checkpoint folder, or None to start fresh."""
    if recipe.resume_from_checkpoint is False:
        return None
    if isinstance(recipe.resume_from_checkpoint, str):
        path = Path(recipe.resume_from_checkpoint).expanduser()
        if not path.is_dir():
            raise RecipeError(f"resume_from_checkpoint: {path} is not a checkpoint folder")
        return str(path)
    if not output_dir.is_dir():
        return None
    last = last_complete_checkpoint(output_dir)
    if last:
        step = _checkpoint_step(last)
        print(f"resuming training from {last} (step {step})", file=sys.stderr, flush=True)
    return last


def _checkpoint_step(checkpoint: str) -> int | None:
    try:
        return int(
            json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))[
                "global_step"
            ]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_owner(output_dir: Path) -> str | None:
    """The kind of training whose checkpoints or model ``output_dir`` holds, if any."""
    for name in (RUN_FILENAME, RECIPE_FILENAME):
        try:
            kind = json.loads((output_dir / name).read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            continue
        if kind:
            return str(kind)
    return None


def claim_output(output_dir: Path, kind: str, *, overwrite: bool) -> bool:
    """Make ``output_dir`` this training's; returns whether it starts afresh.

    Another kind's checkpoints are refused (they would be resumed as this kind's),
    unless ``overwrite``: then they, and every earlier training file, are removed.
    """
    owner = training_owner(output_dir)
    if owner is not None and owner != kind and not overwrite:
        raise RecipeError(
            f"{output_dir} holds a {owner} training: "
            f"choose another --output, or pass --overwrite to train {kind} afresh"
        )
    if overwrite and output_dir.is_dir():
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
        for name in (RUN_FILENAME, RECIPE_FILENAME):
            (output_dir / name).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_FILENAME).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    return overwrite


def heartbeat_callback() -> Any:
    """A TrainerCallback rewriting :data:`HEARTBEAT_ENV`'s file at every step, when set."""
    from transformers import TrainerCallback  # heavy: transformers

    path = os.environ.get(HEARTBEAT_ENV)
    if not path:
        return None

    def beat(step: int, max_steps: int | None) -> None:
        """The step and the total (the driver's bar reads them; the mtime is the stall check)."""
        target = Path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps({"step": step, "max_steps": max_steps}), encoding="utf-8")
        os.replace(tmp, target)

    class Heartbeat(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            beat(state.global_step, state.max_steps or None)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            beat(state.global_step, state.max_steps or None)

    Path(path).touch()
    return Heartbeat()


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` folder that was written to the end, or None.

    transformers' ``get_last_checkpoint`` returns the highest-numbered folder even when a
    kill interrupted its writing, and resuming from it then fails. The Trainer writes
    ``trainer_state.json`` last, so a checkpoint counts as complete when that file parses;
    incomplete ones are skipped (and overwritten when training reaches that step again).
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("skipping %s: an interrupted run left it incomplete", path)
            continue
        return str(path)
    return None


def save_trained(
    trainer: Trainer, recipe: TrainRecipe, output_dir: Path, info: dict[str, Any]
) -> Path:
    """Save what ``from_pretrained`` loads back: model or adapter (or merged), tokenizer, record.

    A LoRA run saves the adapter (peft's layout; ``from_pretrained`` on the folder loads
    base + adapter); with ``lora.merge`` it saves the merged full model instead, so
    backends without adapter support (vLLM, llama.cpp conversion) use it directly.
    """
    tokenizer = trainer.processing_class
    model = trainer.model
    is_peft = hasattr(model, "peft_config")
    if is_peft and recipe.lora is not None and recipe.lora.merge:
        model.save_pretrained(output_dir / "adapter")
        merged = model.merge_and_unload()
        merged.save_pretrained(output_dir, safe_serialization=True)
    else:
        trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(output_dir)
    (output_dir / RECIPE_FILENAME).write_text(
        json.dumps({"recipe": recipe.model_dump(mode="json"), **info}, indent=2, default=str)
        + "\n",
        encoding="utf-8",
    )
    if recipe.delete_checkpoints:
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    return output_dir


def run_training(
    recipe: TrainRecipe,
    *,
    kind: str,
    required_columns: list[str],
    build_trainer: Callable[[Any, Any, Dataset, Path], Trainer],
    overwrite: bool = False,
) -> Path:
    """Shared body of every ``train_from_recipe``: data, model, train (resumable), save.

    ``build_trainer(model, tokenizer, dataset, output_dir)`` returns the TRL trainer.
    """
    from transformers import set_seed  # heavy: transformers

    output_dir = Path(recipe.output_dir).expanduser()
    overwrite = overwrite or recipe.overwrite
    owner = training_owner(output_dir)
    if owner is not None and owner != kind and not overwrite:
        claim_output(output_dir, kind, overwrite=False)  # one line, before any data or model loads
    dataset, recipe._eval_dataset = load_training_splits(recipe, required_columns)
    set_seed(recipe.seed)
    model, tokenizer = load_model_and_tokenizer(recipe.model, recipe)
    fresh = claim_output(output_dir, kind, overwrite=overwrite)
    trainer = build_trainer(model, tokenizer, dataset, output_dir)
    beat = heartbeat_callback()
    if beat is not None:
        trainer.add_callback(beat)
    resume = None if fresh else checkpoint_to_resume(recipe, output_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    metrics["train_samples"] = len(dataset)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    info = {
        "kind": kind,
        "base_model": recipe.model,
        "dataset": recipe.dataset,
        "dataset_config": recipe.dataset_config,
        "rows": len(dataset),
        "resumed_from": resume,
        "metrics": metrics,
        "versions": versions(),
    }
    return save_trained(trainer, recipe, output_dir, info)


TrainerBuilder = Callable[[Any, Any, Any, Any, Path], "Trainer"]


def recipe_trainer(
    recipe_cls: type[T], required_columns: list[str], build_trainer: TrainerBuilder
) -> Callable[..., Path]:
    """A trainer module's ``train_from_recipe``: read the recipe, then :func:`run_training`.

    ``build_trainer(recipe, model, tokenizer, dataset, output_dir)`` returns the TRL trainer.
    """

    def train_from_recipe(
        config: str | Path | dict[str, Any] | TrainRecipe,
        *,
        kind: str,
        dataset: str | None = None,
        model: str | None = None,
        output: str | Path | None = None,
        overwrite: bool = False,
        dataset_config: str | None = None,
    ) -> Path:
        recipe = load_train_recipe(
            config, recipe_cls, dataset=dataset, model=model, output=output,
            dataset_config=dataset_config,
        )  # fmt: skip
        return run_training(
            recipe,
            kind=kind,
            required_columns=required_columns,
            build_trainer=lambda m, t, d, o: build_trainer(recipe, m, t, d, o),
            overwrite=overwrite,
        )

    train_from_recipe.__doc__ = (
        f"Train from a {recipe_cls.__name__} and return the saved model folder."
    )
    return train_from_recipe


def read_training_record(folder: str | Path) -> dict[str, Any]:
    """The record :func:`save_trained` wrote (recipe, metrics), or {} for foreign folders."""
    path = Path(folder) / RECIPE_FILENAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
