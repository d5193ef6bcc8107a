"""The Hub folder layout: file names, shard names and the card's front matter.

Writing, validating and reading a folder must agree byte for byte on where things
live and how the README's YAML declares them, or a folder that one of them produces
is rejected by another (or, worse, by the Hub). That shared vocabulary lives here and
nowhere else::

    README.md                                  card; YAML ``configs:`` lists data files
    pipeline.yaml                              distilabel config; reruns the pipeline
    data/<config>/train-00000-of-00001.parquet one folder per config, sharded if large
    figures/*.png                              plots the card shows
    synthalign.json                            run record: method, recipe, seed, versions, rows
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from synthalign.cards.base import (
    REPRODUCIBILITY_KEY,
    CardContent,
    render_readme,
    reproducibility_metadata,
)
from synthalign.errors import OutputError
from synthalign.secrets import scrub_text

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "NAME_RE",
    "RUN_INFO_FILENAME",
    "SHARD_RE",
    "SPLIT",
    "card_configs",
    "card_text",
    "check_name",
    "dataset_info_yaml",
    "front_matter",
    "shard_name",
]

SPLIT = "train"
"""The one split synthalign writes: generated data has no held-out part by default."""

RUN_INFO_FILENAME = "synthalign.json"
"""Run record; written last, so its presence marks a complete folder."""

DEFAULT_MAX_SHARD_BYTES = 500 * 1000 * 1000
"""Shard size of ``datasets.push_to_hub`` (500 MB): parquet files the Hub handles well."""

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""Config, figure and repo-id part names: safe as a path part and on the Hub."""

SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
"""Parquet shard file names, as :func:`shard_name` writes them."""

_FRONT_MATTER_RE = re.compile(r"\A---\r?\n(?P<yaml>.*?)(?:\r?\n)?^---[ \t]*\r?$", re.S | re.M)


def check_name(kind: str, name: str) -> None:
    """Refuse a name that could escape its folder or that the Hub would reject."""
    if not NAME_RE.match(name):
        raise OutputError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )


def shard_name(index: int, total: int) -> str:
    """The file name of shard ``index`` of ``total``, named as ``datasets`` names them."""
    return f"{SPLIT}-{index:05d}-of-{total:05d}.parquet"


def front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a card, or a one-line :class:`OutputError` saying why not."""
    text = readme.read_text(encoding="utf-8")
    match = _FRONT_MATTER_RE.match(text)
    if match is None:
        raise OutputError(f"{readme} has no YAML front matter: rewrite it with `synthalign card`")
    try:
        meta = yaml.safe_load(match.group("yaml")) or {}
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" (line {line + 2})" if line is not None else ""
        raise OutputError(
            f"{readme} front matter is not valid YAML{where}: rewrite it with `synthalign card`"
        ) from None
    if not isinstance(meta, dict):
        raise OutputError(
            f"{readme} front matter is not a mapping: rewrite it with `synthalign card`"
        )
    return meta


def card_configs(folder: Path, meta: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Map each card config to ``{split: [patterns]}``, checking the declared shape."""
    readme = folder / "README.md"
    declared = meta.get("configs")
    if not isinstance(declared, list) or not declared:
        raise OutputError(f"{readme} declares no `configs:`: rewrite it with `synthalign card`")
    configs: dict[str, dict[str, list[str]]] = {}
    for entry in declared:
        name = entry.get("config_name") if isinstance(entry, dict) else None
        files = entry.get("data_files") if isinstance(entry, dict) else None
        if not isinstance(name, str) or files is None:
            raise OutputError(f"{readme} has a config without config_name or data_files")
        if name in configs:
            raise OutputError(f"{readme} declares config {name!r} twice")
        configs[name] = _config_splits(readme, name, files)
    return configs


def _config_splits(readme: Path, name: str, files: Any) -> dict[str, list[str]]:
    """One config's ``data_files`` (a pattern, a list, or split/path entries) per split."""
    splits: dict[str, list[str]] = {}
    for item in files if isinstance(files, list) else [files]:
        split, paths = (
            (item.get("split", SPLIT), item.get("path"))
            if isinstance(item, dict)
            else (SPLIT, item)
        )
        paths = paths if isinstance(paths, list) else [paths]
        if not all(isinstance(p, str) and p for p in paths):
            raise OutputError(f"{readme}: config {name!r} has an empty data_files path")
        splits.setdefault(str(split), []).extend(paths)
    return splits


def dataset_info_yaml(config: str, dataset: Dataset, num_bytes: int, download_size: int) -> dict:
    """The card's ``dataset_info`` entry, written by ``datasets``' public card writer."""
    from datasets import DatasetInfo, SplitDict, SplitInfo  # heavy: keeps hub imports light
    from datasets.info import DatasetInfosDict  # heavy: as above
    from huggingface_hub import DatasetCardData  # heavy: as above

    splits = SplitDict()
    splits.add(SplitInfo(name=SPLIT, num_bytes=num_bytes, num_examples=len(dataset)))
    info = DatasetInfo(
        features=dataset.features,
        splits=splits,
        download_size=download_size,
        dataset_size=num_bytes,
        config_name=config,
    )
    data = DatasetCardData()
    DatasetInfosDict({config: info}).to_dataset_card_data(data)
    entry = dict(data["dataset_info"])
    return {"config_name": config, **{k: v for k, v in entry.items() if k != "config_name"}}


def card_text(
    card: CardContent,
    configs: list[str],
    default_config: str | None,
    dataset_info: list[dict] | None,
    secrets: list[str],
    run_info: Mapping[str, Any] | None = None,
) -> str:
    """The README text. With ``run_info``, the front matter records the seed, method and
    package versions of the run (``reproducibility:``), whatever the method's card shows."""
    if run_info is not None:
        metadata = {**card.metadata, REPRODUCIBILITY_KEY: reproducibility_metadata(run_info)}
        card = CardContent(metadata=metadata, body=card.body, figures=card.figures)
    patterns = {name: {SPLIT: f"data/{name}/{SPLIT}-*"} for name in configs}
    text = render_readme(card, patterns, default_config or configs[0], dataset_info=dataset_info)
    return scrub_text(text, secrets)
