"""Checking and reading back a Hub-layout folder.

Validation is what stands between a folder and the Hub: a push runs it first, so a
folder whose card, parquet files and run record disagree never reaches a repo. Every
problem is reported as one line naming the first thing found wrong, because these
messages end up in a terminal at the end of a long run. Reading trusts the folder
layout rather than the card, so a folder whose card is missing or stale can still be
loaded (that is what ``synthalign card`` repairs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from synthalign.errors import OutputError
from synthalign.hub_layout import (
    RUN_INFO_FILENAME,
    SHARD_RE,
    SPLIT,
    card_configs,
    front_matter,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["config_shards", "load_run_info", "read_hub_folder", "validate_hub_folder"]


def load_run_info(folder: Path) -> dict[str, Any]:
    """The run record; its absence means the run that wrote the folder did not finish."""
    record_path = folder / RUN_INFO_FILENAME
    if not record_path.is_file():
        raise OutputError(
            f"{folder} has no {RUN_INFO_FILENAME}: it is not a complete synthalign output "
            "(was the run interrupted?); run it again"
        )
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OutputError(f"{record_path} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise OutputError(f"{record_path} must hold a JSON object")
    return record


def _parquet_rows(path: Path) -> int:
    """Rows of one parquet file, from its footer only (no data is read)."""
    import pyarrow.parquet as pq  # heavy: keeps import synthalign.hub light

    try:
        return pq.read_metadata(path).num_rows
    except Exception as error:
        raise OutputError(f"{path} is not a readable parquet file ({error})") from None


def validate_hub_folder(path: str | Path, *, require_pipeline: bool = True) -> None:
    """Check that ``path`` is a complete folder that the Hub and ``datasets`` will read.

    The card's YAML must declare configs whose data files exist, every parquet file
    under ``data/`` must belong to a config, row counts in the parquet files must equal
    those recorded in ``synthalign.json``, and ``pipeline.yaml`` must be a YAML mapping
    (unless ``require_pipeline`` is false). Raises :class:`OutputError` with one line
    naming the first problem found; a push runs this first so a broken folder never
    reaches the Hub.
    """
    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder: pass the output folder of a synthalign run")
    record = load_run_info(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        raise OutputError(f"{folder} has no README.md card: run `synthalign card {folder}`")
    configs = card_configs(folder, front_matter(readme))
    counted = _count_card_rows(folder, configs)
    _check_recorded_rows(folder, record, counted)
    if require_pipeline:
        _check_pipeline(folder)


def _count_card_rows(
    folder: Path, configs: Mapping[str, Mapping[str, list[str]]]
) -> dict[str, dict[str, int]]:
    """Rows per config and split of the files the card declares.

    Each file must belong to exactly one config and every parquet file under ``data/``
    to some config: a stray shard would be pushed but never loaded.
    """
    readme = folder / "README.md"
    claimed: dict[Path, str] = {}
    counted: dict[str, dict[str, int]] = {}
    for name, splits in configs.items():
        for split, patterns in splits.items():
            files = sorted({f for p in patterns for f in folder.glob(p) if f.is_file()})
            if not files:
                raise OutputError(
                    f"{readme}: config {name!r} split {split!r} matches no file ({patterns[0]})"
                )
            for file in files:
                if file in claimed and claimed[file] != name:
                    raise OutputError(
                        f"{file} is claimed by configs {claimed[file]!r} and {name!r}"
                    )
                claimed[file] = name
            counted.setdefault(name, {})[split] = sum(_parquet_rows(f) for f in files)
    stray = sorted(p for p in (folder / "data").rglob("*.parquet") if p not in claimed)
    if stray:
        raise OutputError(
            f"{stray[0]} belongs to no config in README.md: remove it or rewrite the card"
        )
    return counted


def _check_recorded_rows(
    folder: Path, record: Mapping[str, Any], counted: Mapping[str, Mapping[str, int]]
) -> None:
    """The run record's row counts must match the parquet files: else a shard is missing."""
    recorded = record.get("rows")
    if not isinstance(recorded, dict):
        raise OutputError(f"{folder / RUN_INFO_FILENAME} records no `rows` per config")
    if set(recorded) != set(counted):
        raise OutputError(
            f"configs in README.md {sorted(counted)} differ from those recorded in "
            f"{RUN_INFO_FILENAME} {sorted(recorded)}"
        )
    for name, splits in counted.items():
        for split, n in splits.items():
            expected = recorded[name].get(split) if isinstance(recorded[name], dict) else None
            if expected != n:
                raise OutputError(
                    f"config {name!r} split {split!r} has {n} rows in its parquet files but "
                    f"{RUN_INFO_FILENAME} records {expected}: the folder is incomplete; "
                    "run it again"
                )


def _check_pipeline(folder: Path) -> None:
    """``pipeline.yaml`` must be a distilabel config, so the data can be rerun from the Hub."""
    pipeline = folder / "pipeline.yaml"
    if not pipeline.is_file():
        raise OutputError(f"{folder} has no pipeline.yaml: it cannot be rerun from the Hub")
    try:
        parsed = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise OutputError(f"{pipeline} is not valid YAML") from None
    if not isinstance(parsed, dict):
        raise OutputError(f"{pipeline} is not a distilabel pipeline config (not a mapping)")


def config_shards(folder: Path) -> dict[str, list[Path]]:
    """Parquet shards of the ``train`` split per config, found from the folder layout.

    The layout rather than the card is the source of truth here, so a folder whose card
    is missing or stale can still be read (that is what ``synthalign card`` repairs).
    """
    data = folder / "data"
    if not data.is_dir():
        raise OutputError(f"{folder} has no data/ folder: it is not a synthalign output folder")
    shards: dict[str, list[Path]] = {}
    for config_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        files = sorted(
            f
            for f in config_dir.glob("*.parquet")
            if (m := SHARD_RE.match(f.name)) and m["split"] == SPLIT
        )
        if files:
            shards[config_dir.name] = files
    if not shards:
        raise OutputError(f"{data} holds no parquet files")
    # Keep the card's config order (default first, as written) when the card is readable.
    try:
        declared = list(card_configs(folder, front_matter(folder / "README.md")))
    except (OSError, OutputError):
        declared = []
    order = [c for c in declared if c in shards] + [c for c in shards if c not in declared]
    return {c: shards[c] for c in order}


def read_hub_folder(path: str | Path) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """Load a Hub-layout folder: the ``train`` split per config, and the run record.

    Rows are read straight from the parquet files into memory, with the features
    stored in their schema, so this works without a cache folder and gives the same
    rows and features as ``load_dataset(DIR, config)``.
    """
    import pyarrow as pa  # heavy: keeps import synthalign.hub light
    import pyarrow.parquet as pq  # heavy: as above
    from datasets import Dataset  # heavy: as above

    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder: pass the output folder of a synthalign run")
    record = load_run_info(folder)
    loaded: dict[str, Dataset] = {}
    for name, files in config_shards(folder).items():
        tables = [pq.read_table(f) for f in files]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        loaded[name] = Dataset(table, split=SPLIT)
    return loaded, record
