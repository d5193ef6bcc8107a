"""Hub-layout output folders: write, validate, read back and push.

Every synthalign run ends in a folder holding exactly the files a Hugging Face Hub
dataset repo holds, so that ``load_dataset(DIR)`` and ``load_dataset(REPO_ID)`` give the
same rows and a push is a plain folder upload with nothing left to convert::

    README.md                                  card; YAML ``configs:`` lists data files
    pipeline.yaml                              distilabel config; reruns the pipeline
    data/<config>/train-00000-of-00001.parquet one folder per config, sharded if large
    figures/*.png                              plots the card shows
    synthalign.json                            run record: method, recipe, seed, versions, rows

Two guarantees matter to users who run pipelines for hours:

* **Atomic.** A folder is assembled in a hidden sibling and renamed into place only
  when complete; ``synthalign.json`` is the last file written. A crash mid-way leaves
  no folder that looks finished, and an existing folder is replaced only on request.
* **No secrets.** Run records and copied configs are scrubbed of anything that looks
  like a credential, and tokens are read from the environment or login cache at push
  time, never stored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, SecretBytes, SecretStr

from synthalign.cards.base import (
    REPRODUCIBILITY_KEY,
    CardContent,
    render_readme,
    reproducibility_metadata,
)
from synthalign.errors import OutputError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "RUN_INFO_FILENAME",
    "SPLIT",
    "push_hub_folder",
    "read_hub_folder",
    "update_card",
    "validate_hub_folder",
    "write_hub_folder",
]

logger = logging.getLogger(__name__)

SPLIT = "train"
"""The one split synthalign writes: generated data has no held-out part by default."""

RUN_INFO_FILENAME = "synthalign.json"
"""Run record; written last, so its presence marks a complete folder."""

DEFAULT_MAX_SHARD_BYTES = 500 * 1000 * 1000
"""Shard size of ``datasets.push_to_hub`` (500 MB): parquet files the Hub handles well."""

REDACTED = "<redacted>"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
_FRONT_MATTER_RE = re.compile(r"\A---\r?\n(?P<yaml>.*?)(?:\r?\n)?^---[ \t]*\r?$", re.S | re.M)

# Keys whose values are credentials. Tokenizer special tokens ("eos_token") share the
# suffix but are configuration, not secrets, so they are exempt.
_SECRET_KEY_RE = re.compile(
    r"(?:^|[_\-.])(?:api[_\-]?key|secret(?:[_\-]?key)?|token|access[_\-]?key|password|passwd|"
    r"authorization|credentials?|private[_\-]?key)$|^(?:api[_\-]?key|token|secret|password|"
    r"authorization|credentials?)$",
    re.I,
)
_NOT_SECRET_KEYS = {
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "chat_token",
}
# Credential shapes worth catching even under an innocent key or inside free text.
_SECRET_VALUE_RES = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}\b"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-.=:/+]{8,}"),
)
_SECRET_ENV_RE = re.compile(r"(TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
# ...except variables that name where a secret lives or how it is used (HF_TOKEN_PATH,
# TOKENIZERS_PARALLELISM): their values are ordinary text worth keeping in records.
_NOT_SECRET_ENV_RE = re.compile(r"(_PATH|_FILE|_DIR|_URL|_ENDPOINT|TOKENIZERS_PARALLELISM)$", re.I)
_MIN_SECRET_LEN = 8


# --------------------------------------------------------------------------- secrets


def _known_secret_values() -> list[str]:
    """Secret values present in this process: credential-like env vars and the HF token.

    Longest first, so that a secret containing another is replaced whole.
    """
    values = {
        value
        for name, value in os.environ.items()
        if _SECRET_ENV_RE.search(name)
        and not _NOT_SECRET_ENV_RE.search(name)
        and len(value) >= _MIN_SECRET_LEN
    }
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # a broken login cache must not stop a write
        token = None
    if token and len(token) >= _MIN_SECRET_LEN:
        values.add(token)
    return sorted(values, key=len, reverse=True)


def _scrub_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_VALUE_RES:
        text = pattern.sub(REDACTED, text)
    return text


def _is_secret_key(key: str) -> bool:
    return key.lower() not in _NOT_SECRET_KEYS and bool(_SECRET_KEY_RE.search(key))


def _scrub(value: Any, secrets: list[str]) -> Any:
    """A JSON-ready copy of ``value`` with credentials replaced by ``<redacted>``.

    Values under credential-named keys are replaced whatever they look like; known
    secret values and token-shaped strings are replaced anywhere. Objects JSON cannot
    hold (paths, dates, pydantic models, numpy scalars) are converted, not rejected,
    because a run record that fails to save would lose the whole run.
    """
    if isinstance(value, (SecretStr, SecretBytes)):
        return REDACTED
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _scrub_text(value, secrets)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _is_secret_key(name) and item not in (None, "", False):
                out[name] = REDACTED
            else:
                out[name] = _scrub(item, secrets)
        return out
    if isinstance(value, (list, tuple)):
        return [_scrub(item, secrets) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_scrub(item, secrets) for item in value), key=repr)
    if isinstance(value, BaseModel):
        return _scrub(value.model_dump(mode="python"), secrets)
    if is_dataclass(value) and not isinstance(value, type):
        return _scrub(asdict(value), secrets)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, os.PathLike):
        return _scrub_text(os.fspath(value), secrets)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return _scrub(value.item(), secrets)
        except (TypeError, ValueError):
            pass
    return _scrub_text(str(value), secrets)


# --------------------------------------------------------------------------- writing


def _check_name(kind: str, name: str) -> None:
    if not _NAME_RE.match(name):
        raise OutputError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )


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
        written += shard.to_parquet(str(config_dir / f"{SPLIT}-{index:05d}-of-{total:05d}.parquet"))
    return written


def _dataset_info_yaml(config: str, dataset: Dataset, num_bytes: int, download_size: int) -> dict:
    """The card's ``dataset_info`` entry, serialized exactly as ``datasets`` does it."""
    from datasets import DatasetInfo, SplitDict, SplitInfo

    splits = SplitDict()
    splits.add(SplitInfo(name=SPLIT, num_bytes=num_bytes, num_examples=len(dataset)))
    info = DatasetInfo(
        features=dataset.features,
        splits=splits,
        download_size=download_size,
        dataset_size=num_bytes,
        config_name=config,
    )
    return info._to_yaml_dict()


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def _write_figures(folder: Path, figures: Mapping[str, bytes]) -> None:
    figures_dir = folder / "figures"
    figures_dir.mkdir()
    for name, data in figures.items():
        file_name = name if name.endswith(".png") else f"{name}.png"
        _check_name("figure", file_name)
        if not isinstance(data, (bytes, bytearray)):
            raise OutputError(f"figure {name!r} must be PNG bytes, got {type(data).__name__}")
        (figures_dir / file_name).write_bytes(bytes(data))


def _card_text(
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
    return _scrub_text(text, secrets)


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
    if not datasets:
        raise OutputError(f"nothing to write to {out}: no dataset configs were produced")
    configs = list(datasets)
    for name in configs:
        _check_name("config", name)
    if default_config is not None and default_config not in datasets:
        raise OutputError(f"default config {default_config!r} is not one of {configs}")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    _check_target(out, overwrite)
    pipeline_text = _read_pipeline_yaml(pipeline_yaml)

    secrets = _known_secret_values()
    out.parent.mkdir(parents=True, exist_ok=True)
    leftovers = sorted(out.parent.glob(f".{out.name}.partial-*"))
    if leftovers:
        logger.warning(
            "found %d unfinished output(s) of an interrupted run next to %s (%s); "
            "they are not used and can be deleted",
            len(leftovers),
            out,
            leftovers[0].name,
        )
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        dataset_info = []
        rows: dict[str, dict[str, int]] = {}
        for name in configs:
            dataset = datasets[name]
            num_bytes = _write_config(staging, name, dataset, max_shard_bytes)
            download_size = sum(p.stat().st_size for p in (staging / "data" / name).iterdir())
            dataset_info.append(_dataset_info_yaml(name, dataset, num_bytes, download_size))
            rows[name] = {SPLIT: len(dataset)}
        _write_figures(staging, card.figures)
        if pipeline_text is not None:
            scrubbed = _scrub_text(pipeline_text, secrets)
            if scrubbed != pipeline_text:
                logger.warning("pipeline.yaml contained a credential; it was redacted in the copy")
            _write_text(staging / "pipeline.yaml", scrubbed)
        record = _scrub(dict(run_info), secrets)
        record["rows"] = rows
        _write_text(
            staging / "README.md",
            _card_text(card, configs, default_config, dataset_info, secrets, run_info=record),
        )
        _write_text(
            staging / RUN_INFO_FILENAME,
            json.dumps(record, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
        )
        if overwrite:
            _check_target(out, overwrite)  # it may have changed while we were writing
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote %s (%s)", out, ", ".join(f"{c}: {rows[c][SPLIT]} rows" for c in configs))
    return out


# --------------------------------------------------------------------------- reading


def _front_matter(readme: Path) -> dict[str, Any]:
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


def _card_configs(folder: Path, meta: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
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
        configs[name] = splits
    return configs


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception as error:
        raise OutputError(f"{path} is not a readable parquet file ({error})") from None


def _load_run_info(folder: Path) -> dict[str, Any]:
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
    record = _load_run_info(folder)
    readme = folder / "README.md"
    if not readme.is_file():
        raise OutputError(f"{folder} has no README.md card: run `synthalign card {folder}`")
    configs = _card_configs(folder, _front_matter(readme))

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
                    f"{RUN_INFO_FILENAME} records {expected}: the folder is incomplete; run it again"
                )

    if require_pipeline:
        pipeline = folder / "pipeline.yaml"
        if not pipeline.is_file():
            raise OutputError(f"{folder} has no pipeline.yaml: it cannot be rerun from the Hub")
        try:
            parsed = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise OutputError(f"{pipeline} is not valid YAML") from None
        if not isinstance(parsed, dict):
            raise OutputError(f"{pipeline} is not a distilabel pipeline config (not a mapping)")


def _config_shards(folder: Path) -> dict[str, list[Path]]:
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
            if (m := _SHARD_RE.match(f.name)) and m["split"] == SPLIT
        )
        if files:
            shards[config_dir.name] = files
    if not shards:
        raise OutputError(f"{data} holds no parquet files")
    # Keep the card's config order (default first, as written) when the card is readable.
    try:
        declared = list(_card_configs(folder, _front_matter(folder / "README.md")))
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
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder: pass the output folder of a synthalign run")
    record = _load_run_info(folder)
    loaded: dict[str, Dataset] = {}
    for name, files in _config_shards(folder).items():
        tables = [pq.read_table(f) for f in files]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        loaded[name] = Dataset(table, split=SPLIT)
    return loaded, record


def update_card(path: str | Path, card: CardContent, *, default_config: str | None = None) -> None:
    """Rewrite ``README.md`` and ``figures/`` of an existing folder, leaving data as is.

    Used by ``synthalign card DIR``. The config list and ``dataset_info`` are rebuilt from
    the parquet files. The default config is kept from the old card unless given. The
    new figures and README are written completely before they replace the old ones by
    rename, so an interruption never leaves a truncated card or figure.
    """
    folder = Path(path).expanduser().absolute()
    _load_run_info(folder)
    shards = _config_shards(folder)
    if default_config is None and (folder / "README.md").is_file():
        try:
            declared = _front_matter(folder / "README.md").get("configs") or []
            default_config = next(
                (
                    c.get("config_name")
                    for c in declared
                    if isinstance(c, dict) and c.get("default")
                ),
                None,
            )
        except OutputError:
            default_config = None
        if default_config not in shards:
            default_config = None
    if default_config is not None and default_config not in shards:
        raise OutputError(f"default config {default_config!r} is not one of {sorted(shards)}")

    loaded, record = read_hub_folder(folder)
    dataset_info = []
    for name, dataset in loaded.items():
        download_size = sum(f.stat().st_size for f in shards[name])
        dataset_info.append(_dataset_info_yaml(name, dataset, dataset.data.nbytes, download_size))

    secrets = _known_secret_values()
    text = _card_text(card, list(shards), default_config, dataset_info, secrets, run_info=record)
    tag = uuid.uuid4().hex[:8]
    staging_figures = folder / f".figures.partial-{tag}"
    staging_readme = folder / f".README.md.partial-{tag}"
    try:
        staging_figures.mkdir()
        _write_figures(staging_figures, card.figures)
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


# --------------------------------------------------------------------------- pushing


def _one_line(text: str, secrets: Iterable[str]) -> str:
    return " ".join(_scrub_text(text, secrets).split())


def push_hub_folder(
    path: str | Path, repo_id: str, *, private: bool = False, token: str | None = None
) -> str:
    """Upload a validated Hub-layout folder to the dataset repo ``repo_id``.

    The folder is validated first, so nothing incomplete is ever pushed. The token is
    ``token``, else ``HF_TOKEN``, else the ``hf auth login`` cache; without one this
    fails before any network call. Data shards and figures that the folder no longer
    has are deleted from the repo in the same commit, so the repo ends up holding
    exactly the folder. Returns the dataset's URL.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(path).expanduser().absolute()
    validate_hub_folder(folder)
    if repo_id.count("/") != 1 or not all(_NAME_RE.match(part) for part in repo_id.split("/")):
        raise OutputError(f"invalid Hub repo id {repo_id!r}: use the form namespace/name")
    token = token or get_token()
    if not token:
        raise OutputError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")

    secrets = [token, *_known_secret_values()]
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            commit_message=f"Upload {folder.name} with synthalign",
            delete_patterns=["data/*", "figures/*"],
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        detail = error.server_message or next(
            (line for line in str(error).splitlines() if line.strip()), ""
        )
        hint = (
            f"; check that the token has write access to {repo_id.split('/')[0]}"
            if status in (401, 403)
            else ""
        )
        raise OutputError(
            f"push to {repo_id} failed (HTTP {status}): {_one_line(detail, secrets)}{hint}"
        ) from None
    except OSError as error:  # includes connection errors surfaced as OSError
        raise OutputError(
            f"push to {repo_id} failed: {_one_line(str(error), secrets)}; check the network "
            "and HF_ENDPOINT"
        ) from None
    except (RuntimeError, ValueError) as error:  # LFS and commit failures inside the client
        raise OutputError(
            f"push to {repo_id} failed: {_one_line(str(error), secrets) or type(error).__name__}"
        ) from None
    except Exception as error:
        if type(error).__module__.startswith(("httpx", "httpcore")):
            raise OutputError(
                f"cannot reach the Hugging Face Hub at {api.endpoint} to push {repo_id}: "
                f"{_one_line(str(error), secrets) or type(error).__name__}"
            ) from None
        raise
    logger.info("pushed %s to %s (commit %s)", folder, url, getattr(commit, "oid", "?"))
    return str(url)
