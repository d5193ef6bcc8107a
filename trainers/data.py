"""The rows a training run learns from (and evaluates on): one dataset or a mixture.

``dataset`` + ``dataset_config`` is ``load_dataset(DIR_OR_ID, config)`` with one-line
errors and a column check; ``dataset_mixture`` is the alignment-handbook's mixture
(:mod:`synthalign.trainers.mixture`). The evaluation rows come from ``eval_split`` of
the dataset or from the mixture's ``test_split_size``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from synthalign.errors import SeedDataError
from synthalign.trainers.mixture import load_mixture

if TYPE_CHECKING:
    from datasets import Dataset

    from synthalign.trainers.common import TrainRecipe

__all__ = ["load_training_dataset", "load_training_splits"]


def load_training_splits(
    recipe: TrainRecipe, required: list[str]
) -> tuple[Dataset, Dataset | None]:
    """The training rows and the evaluation rows (None when the recipe asks for none)."""
    if recipe.dataset_mixture is not None:
        train, held_out = load_mixture(recipe.dataset_mixture)
        return _checked(train, "dataset_mixture", required, recipe.max_samples), (
            _checked(held_out, "dataset_mixture (test split)", required, None)
            if held_out is not None
            else None
        )
    train = load_training_dataset(recipe, required)
    if recipe.eval_split is None:
        return train, None
    held_out = load_training_dataset(recipe, required, split=recipe.eval_split, limit=False)
    return train, held_out


def load_training_dataset(
    recipe: TrainRecipe, required: list[str], *, split: str | None = None, limit: bool = True
) -> Dataset:
    """``load_dataset(DIR_OR_ID, config)`` with one-line errors and a column check."""
    from datasets import load_dataset  # heavy: datasets

    source = recipe.dataset or ""
    path = Path(source).expanduser()
    target = str(path) if path.exists() else source
    if source.startswith((".", "/", "~")) and not path.exists():
        raise SeedDataError(
            f"training dataset {source} not found: pass a Hub-layout folder or a Hub dataset id"
        )
    if path.is_dir() and recipe.dataset_config:
        _check_config_has_rows(path, recipe.dataset_config)
    split = split or recipe.dataset_split
    try:
        data = load_dataset(target, recipe.dataset_config, split=split)
    except Exception as exc:  # datasets raises many types; the first line says what happened
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SeedDataError(
            f"cannot load training dataset {source!r} (config {recipe.dataset_config!r},"
            f" split {split!r}): {message}"
        ) from None
    where = f"training dataset {source!r} (config {recipe.dataset_config!r})"
    return _checked(data, where, required, recipe.max_samples if limit else None)


def _checked(data: Dataset, where: str, required: list[str], limit: int | None) -> Dataset:
    """The required columns of ``data`` (at most ``limit`` rows); one line if it has none."""
    missing = [c for c in required if c not in data.column_names]
    if missing:
        raise SeedDataError(
            f"{where} lacks column(s) {missing}; it has {data.column_names}: "
            "pick the config that holds TRL-format columns (dataset_config)"
        )
    if len(data) == 0:
        raise SeedDataError(f"{where} has no rows to train on")
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return data.select_columns(required)


def _check_config_has_rows(folder: Path, config: str) -> None:
    """A config the run published no rows for is absent from its folder (a zero-row
    config cannot load): say so, instead of datasets' "BuilderConfig not found"."""
    record_path = folder / "synthalign.json"
    if (folder / "data" / config).is_dir() or not record_path.is_file():
        return
    try:
        counts = json.loads(record_path.read_text(encoding="utf-8")).get("counts") or {}
    except (OSError, ValueError):
        counts = {}
    with_rows = sorted(name for name, n in counts.items() if n) or sorted(
        p.name for p in (folder / "data").iterdir() if p.is_dir()
    )
    raise SeedDataError(
        f"training dataset {folder} has no rows in config '{config}' (the run published none; "
        f"configs with rows: {', '.join(with_rows) or 'none'}): "
        "see its card's funnel, or set dataset_config"
    )
