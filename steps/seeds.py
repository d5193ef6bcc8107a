"""Seed data: read, checked, and fed into a pipeline.

Seeds come from a local file (JSONL, JSON, CSV, Parquet, plain text: one row per
line) or a Hub dataset id, as a recipe's shared ``seed_data`` block
(:class:`synthalign.recipes.SeedData`: ``source``, ``split``, ``config``, ``limit``)
names them. They are read through :class:`LoadSeeds` rather than
``LoadDataFromDicts`` because the rows then live in a file that ``pipeline.yaml``
names, so ``distilabel pipeline run --config pipeline.yaml`` can rerun the job.
:func:`read_seed_rows` (or :func:`seed_rows`, for a ``seed_data`` block) is also
called before the run to fail fast, with the line number of a malformed JSONL line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distilabel.steps import GeneratorStep
from pydantic import AliasChoices, Field

from synthalign.errors import SeedDataError
from synthalign.recipes import SeedData

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput, StepColumns

LOCAL_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".txt"}


def generator_batches(
    rows: list[dict[str, Any]], size: int, offset: int = 0
) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """A generator step's ``(batch, last)`` pairs from ``offset`` on (where a resumed run
    starts); an empty source still yields one empty last batch, so the stream ends."""
    rows = rows[offset:]
    if not rows:
        yield [], True
    while rows:
        batch, rows = rows[:size], rows[size:]
        yield batch, not rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise SeedDataError(
                    f"{path}:{number}: not UTF-8 text; re-encode the file as UTF-8"
                ) from None
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SeedDataError(
                    f"{path}:{number}: malformed JSON line ({exc.msg}); fix or delete that line"
                ) from None
            if not isinstance(row, dict):
                raise SeedDataError(
                    f"{path}:{number}: each JSONL line must be an object, got {type(row).__name__}"
                )
            rows.append(row)
    return rows


def _read_local(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    try:
        if suffix == ".txt":
            return [
                {"text": line.strip()}
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise SeedDataError(f"{path}: a JSON seed file must hold a list of objects")
            return data
    except UnicodeDecodeError:
        raise SeedDataError(f"{path}: not UTF-8 text; re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise SeedDataError(f"{path}: malformed JSON at line {exc.lineno} ({exc.msg})") from None
    from datasets import Dataset  # heavy: datasets (CSV and Parquet seeds only)

    try:
        ds = Dataset.from_csv(str(path)) if suffix == ".csv" else Dataset.from_parquet(str(path))
    except Exception as exc:  # pyarrow's errors are many; one line is what the user needs
        raise SeedDataError(
            f"{path}: cannot read as {suffix[1:]}: {str(exc).splitlines()[0]}"
        ) from None
    return ds.to_list()


def read_seed_rows(
    source: str,
    required: list[str] | None = None,
    *,
    types: dict[str, type] | None = None,
    limit: int | None = None,
    split: str = "train",
    config: str | None = None,
) -> list[dict[str, Any]]:
    """Read seed rows and check them; raise :class:`SeedDataError` with one line."""
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists() or source.startswith((".", "/", "~")):
        if not path.is_file():
            raise SeedDataError(f"seed file {source} not found: check the recipe's seed path")
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise SeedDataError(
                f"{source}: unsupported seed format; use one of {sorted(LOCAL_SUFFIXES)}"
            )
        rows = _read_local(path)
    else:
        from datasets import load_dataset  # heavy: datasets (Hub seeds only)

        try:
            rows = load_dataset(source, config, split=split).to_list()
        except Exception as exc:
            raise SeedDataError(
                f"cannot load seed dataset {source!r}: {str(exc).splitlines()[0]}"
            ) from None
    if not rows:
        raise SeedDataError(f"seed data {source} is empty: it needs at least one row")
    missing = [c for c in (required or []) if c not in rows[0]]
    if missing:
        raise SeedDataError(
            f"seed data {source} lacks column(s) {missing}; it has {sorted(rows[0])}: "
            "rename them or set the recipe's column names"
        )
    for column, expected in (types or {}).items():
        for i, row in enumerate(rows, start=1):
            if not isinstance(row.get(column), expected):
                raise SeedDataError(
                    f"seed data {source} row {i}: column '{column}' must be {expected.__name__}, "
                    f"got {type(row.get(column)).__name__}"
                )
    return rows[:limit] if limit is not None else rows


def seed_rows(
    data: SeedData, required: list[str] | None = None, *, types: dict[str, type] | None = None
) -> list[dict[str, Any]]:
    """:func:`read_seed_rows` for a recipe's ``seed_data`` block (the preflight check)."""
    return read_seed_rows(
        data.source, required, types=types, limit=data.limit, split=data.split, config=data.config
    )


class LoadSeeds(GeneratorStep):
    """Yields seed rows from a file or Hub dataset, keeping only the listed columns.

    Its arguments mean what the shared ``seed_data`` block's keys mean
    (:meth:`from_seed_data` builds it from one); ``hub_config`` is still accepted for
    ``config``, so older ``pipeline.yaml`` files rerun.
    """

    source: str = Field(description="local file (jsonl/json/csv/parquet/txt) or Hub dataset id")
    columns: list[str] = Field(default_factory=list, description="columns to keep (all when empty)")
    limit: int | None = Field(default=None, description="use the first N rows")
    split: str = Field(default="train", description="Hub split")
    config: str | None = Field(
        default=None,
        validation_alias=AliasChoices("config", "hub_config"),
        description="Hub dataset config",
    )

    @classmethod
    def from_seed_data(cls, data: SeedData, columns: list[str], **kwargs: Any) -> LoadSeeds:
        """The step for a recipe's ``seed_data`` block; ``kwargs`` are step arguments."""
        return cls(
            source=data.source,
            columns=columns,
            limit=data.limit,
            split=data.split,
            config=data.config,
            **kwargs,
        )

    @property
    def outputs(self) -> StepColumns:
        return self.columns

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        rows = read_seed_rows(
            self.source, self.columns, limit=self.limit, split=self.split, config=self.config
        )
        if self.columns:
            rows = [{c: r[c] for c in self.columns} for r in rows]
        rows = rows[offset:]
        while rows:
            batch, rows = rows[: self.batch_size], rows[self.batch_size :]
            yield batch, not rows
