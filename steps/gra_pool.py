"""GRA's example pool: the rows a round draws its few-shot examples from, and their labels.

- :class:`LoadPool` yields the pool of round ``r``: the seed data in round 1; the
  labelled ``seeds`` config and the kept samples of rounds ``< r``, read back from the
  previous round's published folder, afterwards.
- :class:`DescribeExamples` labels each row that lacks them with a domain (one of the
  paper's seven), at most three keywords and a summary (Appendix A), one call per
  missing label, each by the pool member ``describe_with`` names. The same step writes
  the summary of each kept sample at the end of a round (metadata enrichment), so it
  can serve as an example in the next one.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from distilabel.steps import GeneratorStep
from pydantic import BaseModel, Field, StringConstraints

from synthalign.steps.base import Call, CallResult, RoutedTask
from synthalign.steps.columns import FixedColumns
from synthalign.steps.gra import (
    DEFAULT_CONFIG,
    DOMAINS,
    ECHOED_LABEL,
    METADATA_FIELDS,
    SEEDS_CONFIG,
    TEMPLATES,
    published_rows,
    real_keywords,
    real_summary,
    with_templates,
)
from synthalign.steps.seeds import generator_batches, read_seed_rows

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput

# The paper bounds summaries and reviews in the prompt ("under 30 words", Prompts 2, 8,
# 9), not by cutting them: their schemas carry no maxLength (a bounded string would
# also cost xgrammar far more per token than an unbounded one), and the token budget
# `structured_max_new_tokens` is the only backstop. A keyword is a word or a phrase.
MAX_KEYWORD_CHARS = 40

Keyword = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_KEYWORD_CHARS)
]


class DomainLabel(BaseModel):
    domain: Literal["Coding", "Math", "QA", "Reasoning", "Role Play", "Language", "Creation"]


class KeywordSet(BaseModel):
    keywords: list[Keyword] = Field(min_length=1, max_length=3)


class ExampleSummary(BaseModel):
    summary: str = Field(min_length=1)


METADATA_RECORDS: dict[str, type[BaseModel]] = {
    "domain": DomainLabel,
    "keywords": KeywordSet,
    "summary": ExampleSummary,
}

POOL_COLUMNS: tuple[str, ...] = (
    "pool_id", "origin", "instruction", "response", "domain", "keywords", "summary",
    "metadata_models", "metadata_error", "prompt_templates", "describe_with",
)  # fmt: skip


def metadata_complete(row: dict[str, Any]) -> bool:
    """Can this row serve as a few-shot example (domain, keywords and summary known)?"""
    return not any(missing_label(row, field) for field in METADATA_FIELDS)


def missing_label(row: dict[str, Any], field: str) -> bool:
    value = row.get(field)
    if field == "domain":
        return value not in DOMAINS
    if field == "keywords":
        return not value
    return not (isinstance(value, str) and value.strip())


def rotation(n_rows: int, n_members: int, seed: int, offset: int = 0) -> list[list[int]]:
    """Members that label row i's domain, keywords and summary: a seeded rotation.

    The pool order is shuffled once with ``seed``; row i then takes the members at
    positions i, i+1, i+2 (mod pool size), so every member labels about as many rows
    and each row's three labels come from different members when the pool allows.
    """
    perm = np.random.default_rng([seed, 0x5EED]).permutation(n_members)
    return [
        [int(perm[(offset + i + j) % n_members]) for j in range(len(METADATA_FIELDS))]
        for i in range(n_rows)
    ]


def seed_pool_row(
    index: int, seed: dict[str, Any], text: str, response: str, members: list[int]
) -> dict[str, Any]:
    """A seed as a pool row; labels the seed file already carries are kept."""
    keywords = seed.get("keywords")
    return {
        "pool_id": f"seed-{index:06d}",
        "origin": "seed",
        "instruction": text,
        "response": response,
        "domain": seed.get("domain") if seed.get("domain") in DOMAINS else None,
        "keywords": [str(k) for k in keywords][:3]
        if isinstance(keywords, list) and keywords
        else None,
        "summary": seed.get("summary") if isinstance(seed.get("summary"), str) else None,
        "metadata_models": None,
        "metadata_error": None,
        "prompt_templates": None,  # never {}: parquet cannot store an empty struct
        "describe_with": members,
    }


def sample_pool_row(sample: dict[str, Any]) -> dict[str, Any]:
    """A kept sample of an earlier round as a pool row (labelled when it was made; not again)."""
    return {
        "pool_id": sample["candidate_id"],
        "origin": f"round-{sample['round']}",
        **{
            c: sample.get(c)
            for c in (
                "instruction",
                "response",
                *METADATA_FIELDS,
                "metadata_models",
                "metadata_error",
            )
        },
        "prompt_templates": None,
        "describe_with": None,
    }


class LoadPool(FixedColumns, GeneratorStep):
    """Yields the example pool of round ``round_index``.

    Round 1 reads the seed data and marks each row with the pool members that will
    label it. Later rounds read the ``previous`` round's published folder instead: its
    ``seeds`` config as it is (labelled once, in round 1) and its kept samples of
    earlier rounds, so round ``r`` reads only rows that round ``r`` never rewrites and
    ``pipeline.yaml`` reruns it from the folder it wrote.
    """

    output_columns: ClassVar[tuple[str, ...]] = POOL_COLUMNS

    round_index: int = Field(default=1, ge=1)
    previous: str | None = Field(default=None, description="the previous round's folder (r > 1)")
    source: str = Field(description="seed file or Hub id (read in round 1)")
    instruction_column: str = "instruction"
    response_column: str = "response"
    input_column: str | None = Field(default=None, description="context added to the instruction")
    limit: int | None = None
    split: str = "train"
    config: str | None = None
    n_members: int = Field(ge=1, description="pool size, for the labelling rotation")
    seed: int = 0

    def seed_rows(self) -> list[dict[str, Any]]:
        columns = [self.instruction_column, self.response_column]
        where = {"limit": self.limit, "split": self.split, "config": self.config}
        seeds = read_seed_rows(self.source, columns, **where)
        members = rotation(len(seeds), self.n_members, self.seed)
        rows = []
        for i, seed in enumerate(seeds):
            text = str(seed[self.instruction_column]).strip()
            extra = seed.get(self.input_column) if self.input_column else None
            if isinstance(extra, str) and extra.strip():
                text = f"{text}\n\n{extra.strip()}"
            rows.append(
                seed_pool_row(i, seed, text, str(seed[self.response_column]).strip(), members[i])
            )
        return rows

    def earlier_rows(self, previous: str) -> list[dict[str, Any]]:
        seeds = [{**row, "describe_with": None} for row in published_rows(previous, SEEDS_CONFIG)]
        kept = [
            r for r in published_rows(previous, DEFAULT_CONFIG) if r["round"] < self.round_index
        ]
        return seeds + [sample_pool_row(r) for r in sorted(kept, key=lambda r: r["candidate_id"])]

    def process(self, offset: int = 0) -> "GeneratorStepOutput":  # type: ignore[override]
        rows = self.earlier_rows(self.previous) if self.previous else self.seed_rows()
        yield from generator_batches(rows, self.batch_size, offset)


class DescribeExamples(RoutedTask):
    """Domain, keywords and summary for rows that lack them (Appendix A; enrichment).

    Each missing label is one call, to the member that ``describe_with`` names for it
    (domain, keywords, summary). ``where`` limits the step to some rows (enrichment:
    ``{"kept": True}``); rows without ``describe_with`` pass through unchanged.
    """

    template: ClassVar[str] = TEMPLATES["summary"]
    input_columns: ClassVar[tuple[str, ...]] = ("instruction", "describe_with")
    output_columns: ClassVar[tuple[str, ...]] = (
        *METADATA_FIELDS, "metadata_models", "metadata_error", "prompt_templates",
    )  # fmt: skip
    where: dict[str, Any] | None = Field(
        default=None, description="only rows with these column values"
    )

    def _selected(self, row: dict[str, Any]) -> bool:
        if self.where and any(row.get(k) != v for k, v in self.where.items()):
            return False
        return bool(row.get("describe_with")) and isinstance(row.get("instruction"), str)

    def calls(self, row: dict[str, Any]) -> list[Call]:
        if not self._selected(row):
            return []
        return [
            Call(
                {"instruction": row["instruction"]},
                member=row["describe_with"][j],
                key=field,
                template=TEMPLATES[field],
                output_model=METADATA_RECORDS[field],
            )
            for j, field in enumerate(METADATA_FIELDS)
            if missing_label(row, field)
        ]

    def merge(self, row: dict[str, Any], results: Sequence[CallResult]) -> dict[str, Any]:
        labels = {field: row.get(field) for field in METADATA_FIELDS}
        models = dict(row.get("metadata_models") or {})
        errors = []
        for result in results:
            models[result.key] = result.model
            if result.error:
                errors.append(f"{result.key}: {result.error}")
                continue
            value = getattr(result.record, result.key)
            if result.key == "keywords":
                value = real_keywords(value) or None
            elif result.key == "summary":
                value = real_summary(value)
            if value is None:
                errors.append(f"{result.key}: {ECHOED_LABEL}")
            labels[result.key] = value
        return {
            **labels,
            "metadata_models": {field: models.get(field) for field in METADATA_FIELDS},
            "metadata_error": "; ".join(errors) if errors else row.get("metadata_error"),
            "prompt_templates": with_templates(row, **{r.key: r.prompt for r in results}),
        }
