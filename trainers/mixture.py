"""The alignment-handbook's ``dataset_mixture``: several datasets, each a share, one split.

Shape (the handbook's own keys)::

    dataset_mixture:
      datasets:
        - {id: outputs/condor, config: refined, split: train, columns: [messages], weight: 1.0}
        - {id: org/other-sft, split: train_sft, columns: [messages], weight: 0.25}
      seed: 0
      test_split_size: 0.05

``weight`` is the share of that dataset's rows kept (a seeded sample); the parts are
concatenated and shuffled with ``seed``; ``test_split_size`` holds out that share as
the evaluation set. An ``id`` is a Hub id or a local folder (a synthalign output
folder included), so a handbook recipe trains on a synthalign dataset unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from synthalign.errors import SeedDataError
from synthalign.recipes import RecipePath, StrictModel

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["DatasetMixture", "MixtureEntry", "load_mixture"]


class MixtureEntry(StrictModel):
    id: RecipePath = Field(description="Hub dataset id or local folder")
    config: str | None = None
    split: str = "train"
    columns: list[str] | None = Field(default=None, description="columns kept (default: all)")
    weight: float = Field(default=1.0, gt=0, le=1, description="share of its rows kept")


class DatasetMixture(StrictModel):
    datasets: list[MixtureEntry] = Field(min_length=1)
    seed: int = 0
    test_split_size: float | None = Field(default=None, gt=0, lt=1)


def _load_part(entry: MixtureEntry, seed: int) -> Dataset:
    from datasets import load_dataset  # heavy: datasets

    try:
        data = load_dataset(entry.id, entry.config, split=entry.split)
    except Exception as exc:  # datasets raises many types; the first line says what happened
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SeedDataError(
            f"dataset_mixture: cannot load {entry.id!r} (config {entry.config!r},"
            f" split {entry.split!r}): {first}"
        ) from None
    if entry.columns:
        missing = [c for c in entry.columns if c not in data.column_names]
        if missing:
            raise SeedDataError(
                f"dataset_mixture: {entry.id!r} lacks column(s) {missing}; it has"
                f" {data.column_names}"
            )
        data = data.select_columns(entry.columns)
    if entry.weight < 1:
        keep = max(1, math.ceil(entry.weight * len(data)))
        data = data.shuffle(seed=seed).select(range(keep))
    return data


def load_mixture(mixture: DatasetMixture) -> tuple[Dataset, Dataset | None]:
    """The mixed training rows and, with ``test_split_size``, the held-out evaluation rows."""
    from datasets import concatenate_datasets  # heavy: datasets

    parts = [_load_part(entry, mixture.seed) for entry in mixture.datasets]
    columns = [set(p.column_names) for p in parts]
    if any(c != columns[0] for c in columns):
        raise SeedDataError(
            "dataset_mixture: the datasets have different columns"
            f" ({[sorted(c) for c in columns]}): list the shared ones in each entry's columns"
        )
    mixed = concatenate_datasets(parts).shuffle(seed=mixture.seed)
    if mixture.test_split_size is None:
        return mixed, None
    split = mixed.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
    return split["train"], split["test"]
