"""Writing Hub-layout folders atomically, and rewriting their cards.

Users run pipelines for hours, so a folder must never look finished when it is not: it
is assembled in a hidden sibling and renamed into place only when complete, with
``synthalign.json`` written last. A crash mid-way leaves no folder that looks finished,
and an existing folder is replaced only on request (and never one synthalign did not
write). Run records and copied configs are scrubbed of credentials on the way out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthalign.cards.base import CardContent
from synthalign.errors import OutputError
from synthalign.hub_layout import (
    DEFAULT_MAX_SHARD_BYTES,
    RUN_INFO_FILENAME,
    SPLIT,
    card_text,
    check_name,
    dataset_info_yaml,
    front_matter,
    shard_name,
)
from synthalign.hub_read import config_shards, load_run_info, read_hub_folder
from synthalign.secrets import known_secret_values, scrub, scrub_text

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["update_card", "write_hub_folder"]

# The name users configure logging by; it stayed the same when hub.py was split up.
logger = logging.getLogger("synthalign.hub")


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse to clobber anything the user did not ask us to replace."""
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise OutputError(
            f"output folder {out} already exists: pass --overwrite or choose another folder"
        )
    if out.is_symlink() or not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder: choose another output folder")
    if any(out.iterdir()) and not (out / RUN_INFO_FILENAME).is_file():
        raise OutputError(
            f"refusing to overwrite {out}: it is not a synthalign output folder "
            f"(no {RUN_INFO_FILENAME}); choose another folder"
        )


def _read_pipeline_yaml(pipeline_yaml: str | Path | None) -> str | None:
    """The config to copy, read up front so a missing file fails before any writing."""
    if pipeline_yaml is None:
        return None
    source = Path(pipeline_yaml)
    if not source.is_file():
        raise OutputError(f"pipeline config {source} not found: cannot copy it into the output")
    return source.read_text(encoding="utf-8")


def _num_shards(dataset: Dataset, max_shard_bytes: int) -> int:
    """Shards needed to keep each parquet file under ``max_shard_bytes`` of Arrow data."""
    n = len(dataset)
    if n == 0:
        return 1
    table_rows = max(1, dataset.data.num_rows)
    nbytes = dataset.data.nbytes * n / table_rows  # selected rows only, if indexed
    return max(1, min(n, math.ceil(nbytes / max_shard_bytes)))


def _write_config(folder: Path, config: str, dataset: Dataset, max_shard_bytes: int) -> int:
    """Write one config's parquet shards; return the Arrow size of the rows written."""
    config_dir = folder / "data" / config
    config_dir.mkdir(parents=True)
    total = _num_shards(dataset, max_shard_bytes)
    written = 0
    for index in range(total):
        shard = (
            dataset.shard(num_shards=total, index=index, contiguous=True) if total > 1 else dataset
        )
        written += shard.to_parquet(str(config_dir / shard_name(index, total)))
    return written


def _write_text(path: Path, text: str) -> None:
    """UTF-8 with ``\\n`` line ends on every platform, so pushes are byte-identical."""
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_figures(folder: Path, figures: Mapping[str, bytes]) -> None:
    """Write ``figures/*.png``; names are checked since they become paths on the Hub."""
    figures_dir = folder / "figures"
    figures_dir.mkdir()
    for name, data in figures.items():
        file_name = name if name.endswith(".png") else f"{name}.png"
        check_name("figure", file_name)
        if not isinstance(data, (bytes, bytearray)):
            raise OutputError(f"figure {name!r} must be PNG bytes, got {type(data).__name__}")
        (figures_dir / file_name).write_bytes(bytes(data))


def _swap_into_place(staging: Path, out: Path) -> None:
    """Move a finished staging folder to ``out``, replacing an existing one last."""
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, trash)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(trash, out)
            raise
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.replace(staging, out)
    except OSError as error:
        raise OutputError(
            f"cannot move the finished output into {out} ({error.strerror}): "
            "pass --overwrite or choose another folder"
        ) from None


def _check_request(
    out: Path, datasets: Mapping[str, Dataset], default_config: str | None, max_shard_bytes: int
) -> None:
    """Refuse a bad request before anything is written."""
    if not datasets:
        raise OutputError(f"nothing to write to {out}: no dataset configs were produced")
    configs = list(datasets)
    for name in configs:
        check_name("config", name)
    if default_config is not None and default_config not in datasets:
        raise OutputError(f"default config {default_config!r} is not one of {configs}")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")


def _warn_about_leftovers(out: Path) -> None:
    """Point at staging folders of interrupted runs: they are never reused or removed."""
    leftovers = sorted(out.parent.glob(f".{out.name}.partial-*"))
    if leftovers:
        logger.warning(
            "found %d unfinished output(s) of an interrupted run next to %s (%s); "
            "they are not used and can be deleted",
            len(leftovers),
            out,
            leftovers[0].name,
        )


def _fill_staging(
    staging: Path,
    datasets: Mapping[str, Dataset],
    card: CardContent,
    *,
    pipeline_text: str | None,
    run_info: Mapping[str, Any],
    default_config: str | None,
    max_shard_bytes: int,
    secrets: list[str],
) -> dict[str, dict[str, int]]:
    """Write every file of the folder into ``staging``, the run record last.

    Returns the rows per config and split, as recorded in ``synthalign.json``.
    """
    configs = list(datasets)
    dataset_info = []
    rows: dict[str, dict[str, int]] = {}
    for name in configs:
        dataset = datasets[name]
        num_bytes = _write_config(staging, name, dataset, max_shard_bytes)
        download_size = sum(p.stat().st_size for p in (staging / "data" / name).iterdir())
        dataset_info.append(dataset_info_yaml(name, dataset, num_bytes, download_size))
        rows[name] = {SPLIT: len(dataset)}
    _write_figures(staging, card.figures)
    if pipeline_text is not None:
        scrubbed = scrub_text(pipeline_text, secrets)
        if scrubbed != pipeline_text:
            logger.warning("pipeline.yaml contained a credential; it was redacted in the copy")
        _write_text(staging / "pipeline.yaml", scrubbed)
    record = scrub(dict(run_info), secrets)
    record["rows"] = rows
    _write_text(
        staging / "README.md",
        card_text(card, configs, default_config, dataset_info, secrets, run_info=record),
    )
    _write_text(
        staging / RUN_INFO_FILENAME,
        json.dumps(record, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
    )
    return rows


def write_hub_folder(
    out_dir: str | Path,
    datasets: Mapping[str, Dataset],
    card: CardContent,
    *,
    pipeline_yaml: str | Path | None,
    run_info: Mapping[str, Any],
    default_config: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write ``datasets`` (one per config) as a Hub dataset repo folder at ``out_dir``.

    ``pipeline_yaml`` is the path of the distilabel config to copy (``None`` when the
    data did not come from a pipeline; such a folder loads but does not validate for a
    push). ``run_info`` is recorded in ``synthalign.json`` after scrubbing secrets,
    together with ``rows``: the row count per config and split, which
    :func:`validate_hub_folder` checks against the parquet files. ``default_config``
    (first config if ``None``) is what ``load_dataset(DIR)`` returns without a config.

    The folder is built in a hidden sibling and renamed into place when complete. An
    existing ``out_dir`` is refused unless ``overwrite`` is true, and even then only
    replaced if it is empty or an earlier synthalign output. Returns the folder path.
    """
    out = Path(out_dir).expanduser().absolute()
    _check_request(out, datasets, default_config, max_shard_bytes)
    _check_target(out, overwrite)
    pipeline_text = _read_pipeline_yaml(pipeline_yaml)

    secrets = known_secret_values()
    out.parent.mkdir(parents=True, exist_ok=True)
    _warn_about_leftovers(out)
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        rows = _fill_staging(
            staging,
            datasets,
            card,
            pipeline_text=pipeline_text,
            run_info=run_info,
            default_config=default_config,
            max_shard_bytes=max_shard_bytes,
            secrets=secrets,
        )
        if overwrite:
            _check_target(out, overwrite)  # it may have changed while we were writing
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s (%s)", out, ", ".join(f"{c}: {rows[c][SPLIT]} rows" for c in datasets))
    return out


def _kept_default_config(folder: Path, shards: Mapping[str, list[Path]]) -> str | None:
    """The default config of the old card, if it is readable and names a config we have."""
    if not (folder / "README.md").is_file():
        return None
    try:
        declared = front_matter(folder / "README.md").get("configs") or []
        default_config = next(
            (c.get("config_name") for c in declared if isinstance(c, dict) and c.get("default")),
            None,
        )
    except OutputError:
        return None
    return default_config if default_config in shards else None


def _written_sizes(folder: Path) -> dict[tuple[str, int], int]:
    """``num_bytes`` per (config, rows) as the writer recorded them in the old card: the
    Arrow size of the rows written, which reading the parquet back does not reproduce."""
    try:
        declared = front_matter(folder / "README.md").get("dataset_info") or []
    except (OSError, OutputError):
        return {}
    sizes = {}
    for entry in declared if isinstance(declared, list) else [declared]:
        for split in (entry.get("splits") or []) if isinstance(entry, dict) else []:
            if isinstance(split, dict) and split.get("name") == SPLIT:
                key = (str(entry.get("config_name", "default")), int(split["num_examples"]))
                sizes[key] = int(split["num_bytes"])
    return sizes


def _replace_card_files(folder: Path, figures: Mapping[str, bytes], text: str) -> None:
    """Swap in new ``figures/`` and ``README.md``, each complete before its rename."""
    tag = uuid.uuid4().hex[:8]
    staging_figures = folder / f".figures.partial-{tag}"
    staging_readme = folder / f".README.md.partial-{tag}"
    try:
        staging_figures.mkdir()
        _write_figures(staging_figures, figures)
        _write_text(staging_readme, text)
        old_figures = folder / "figures"
        if old_figures.exists():
            trash = folder / f".figures.old-{tag}"
            os.replace(old_figures, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging_figures / "figures", old_figures)
        os.replace(staging_readme, folder / "README.md")
    finally:
        shutil.rmtree(staging_figures, ignore_errors=True)
        staging_readme.unlink(missing_ok=True)


def update_card(path: str | Path, card: CardContent, *, default_config: str | None = None) -> None:
    """Rewrite ``README.md`` and ``figures/`` of an existing folder, leaving data as is.

    Used by ``synthalign card DIR``. The config list and ``dataset_info`` are rebuilt from
    the parquet files. The default config is kept from the old card unless given. The
    new figures and README are written completely before they replace the old ones by
    rename, so an interruption never leaves a truncated card or figure.
    """
    folder = Path(path).expanduser().absolute()
    load_run_info(folder)
    shards = config_shards(folder)
    if default_config is None:
        default_config = _kept_default_config(folder, shards)
    if default_config is not None and default_config not in shards:
        raise OutputError(f"default config {default_config!r} is not one of {sorted(shards)}")

    loaded, record = read_hub_folder(folder)
    written = _written_sizes(folder)
    dataset_info = []
    for name, dataset in loaded.items():
        download_size = sum(f.stat().st_size for f in shards[name])
        num_bytes = written.get((name, len(dataset)), dataset.data.nbytes)
        dataset_info.append(dataset_info_yaml(name, dataset, num_bytes, download_size))

    secrets = known_secret_values()
    text = card_text(card, list(shards), default_config, dataset_info, secrets, run_info=record)
    _replace_card_files(folder, card.figures, text)
