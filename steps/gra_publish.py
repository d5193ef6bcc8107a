"""GRA's post-processing and published configs: dedup, and the leaves that are the configs.

- :class:`DeduplicateSamples`: score-ordered semantic dedup of the surviving
  candidates against the example pool and each other (section 3.5), through
  :func:`synthalign.steps.dedup.greedy_semantic_dedup_details`, the function the
  benchmarks measure.
- :class:`LoadEarlierRounds` yields the candidates of rounds ``< r`` from the previous
  round's published folder, so round ``r`` republishes them unchanged.
- :class:`PublishCandidates` (``all``, ``round-k``, ``rejected``) and
  :class:`PublishSeeds` (``seeds``) are the pipeline's leaves: every published config
  is made by the pipeline, with its schema declared here, once.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from datasets import Features, List, Value
from distilabel.steps import GeneratorStep, GlobalStep, StepInput
from pydantic import Field

from synthalign.steps.columns import FixedColumns
from synthalign.steps.committee import INSTRUCTION_CRITERIA, RESPONSE_DIMENSIONS
from synthalign.steps.decontaminate import CONTAMINATION_COLUMNS, contamination_features
from synthalign.steps.dedup import greedy_semantic_dedup_details, rows_to_matrix
from synthalign.steps.gra import (
    DEFAULT_CONFIG,
    METADATA_FIELDS,
    REJECTED_CONFIG,
    TEMPLATES,
    in_play,
    published_rows,
)
from synthalign.steps.gra_pool import POOL_COLUMNS
from synthalign.steps.publish import (
    DROP_COLUMNS,
    PublishConfig,
    chat_feature,
    drop_features,
    dropped,
    kept,
)
from synthalign.steps.seeds import generator_batches

if TYPE_CHECKING:
    from distilabel.typing import GeneratorStepOutput, StepColumns, StepOutput

SAMPLE_COLUMNS: tuple[str, ...] = (
    "messages", "candidate_id", "round", *DROP_COLUMNS, "domain", "keywords", "instruction",
    "response", "summary", "examples", "generator_model", "reviewer_models", "adjudicator_model",
    "enricher_model", "instruction_reviews", "instruction_accepted", "response_reviews",
    "review_mean", "review_std", "review_decision", "review_reason", "adjudication",
    "adjudication_score", "adjudication_reason", "adjudication_kept", "dedup_match",
    "dedup_similarity", "generation_error", "generation_raw", "response_error", "response_raw",
    "clean_changed", "metadata_models", "metadata_error", "prompt_templates", *CONTAMINATION_COLUMNS,
)  # fmt: skip
"""Columns of the published candidate rows, in order."""

SEED_COLUMNS: tuple[str, ...] = tuple(c for c in POOL_COLUMNS if c != "describe_with")


def sample_features() -> Features:
    """The schema of ``all``, ``round-k`` and ``rejected`` (declared once, here)."""
    s, f, i, b = Value("string"), Value("float64"), Value("int64"), Value("bool")
    scores = dict.fromkeys(RESPONSE_DIMENSIONS, i)
    failure, criteria = {"error": s, "raw": s}, dict.fromkeys(INSTRUCTION_CRITERIA, b)
    columns = {
        "messages": chat_feature(), "candidate_id": s, "round": i, **drop_features(), "domain": s,
        "keywords": List(s), "instruction": s, "response": s, "summary": s,
        "examples": List({"pool_id": s, "keywords": List(s), "summary": s}),
        "generator_model": s, "reviewer_models": List(s), "adjudicator_model": s,
        "enricher_model": s,
        "instruction_reviews": List({"model": s, **criteria, **failure}),
        "instruction_accepted": b,
        "response_reviews": List({"model": s, **scores, "score": f, "feedback": s, **failure}),
        "review_mean": f, "review_std": f, "review_decision": s, "review_reason": s,
        "adjudication": {"model": s, **scores, "reason": s, **failure},
        "adjudication_score": f, "adjudication_reason": s, "adjudication_kept": b,
        "dedup_match": s, "dedup_similarity": f, "generation_error": s, "generation_raw": s,
        "response_error": s, "response_raw": s, "clean_changed": List(s),
        "metadata_models": dict.fromkeys(METADATA_FIELDS, s), "metadata_error": s,
        "prompt_templates": dict.fromkeys(TEMPLATES, s), **contamination_features(),
    }  # fmt: skip
    return Features({c: columns[c] for c in SAMPLE_COLUMNS})


def seed_features() -> Features:
    """The schema of ``seeds``, the labelled seed pool."""
    s = Value("string")
    return Features(
        {
            "pool_id": s, "origin": s, "instruction": s, "response": s, "domain": s,
            "keywords": List(s), "summary": s, "metadata_models": dict.fromkeys(METADATA_FIELDS, s),
            "metadata_error": s, "prompt_templates": dict.fromkeys(METADATA_FIELDS, s),
        }
    )  # fmt: skip


def conform(value: Any, feature: Any) -> Any:
    """``value`` with every struct key of ``feature`` present (None when missing), recursively,
    so rows made at different stages share one parquet schema."""
    if value is None:
        return None
    if isinstance(feature, dict):
        return {
            k: conform(value.get(k) if isinstance(value, dict) else None, sub)
            for k, sub in feature.items()
        }
    if isinstance(feature, List) and isinstance(value, list):
        return [conform(v, feature.feature) for v in value]
    return value


def sft_messages(instruction: str | None, response: str | None) -> list[dict[str, str]] | None:
    """TRL's conversational SFT format for one instruction-response pair."""
    if not instruction or not response:
        return None
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]


class DeduplicateSamples(FixedColumns, GlobalStep):
    """Exact score-ordered semantic dedup of the surviving candidates (section 3.5).

    Predecessors: the embedded candidates and the embedded example pool (seeds and
    earlier rounds' kept samples), told apart by ``candidate_id``. Survivors are visited
    by committee mean score ``review_mean`` (descending, ties: earlier candidate); a
    candidate is kept iff its cosine similarity to every pool row and every candidate
    kept before it is below ``threshold``. Outputs the candidates only, without their
    embeddings; a duplicate records its witness: ``dedup_match`` (the kept candidate or
    pool row it collided with) and ``dedup_similarity``.
    """

    output_columns: ClassVar[tuple[str, ...]] = (*DROP_COLUMNS, "dedup_match", "dedup_similarity")

    threshold: float = Field(default=0.9, gt=-1, le=1)
    score_column: str = "review_mean"
    embedding_column: str = "embedding"

    @property
    def inputs(self) -> "StepColumns":
        return [self.embedding_column]

    def _judge(self, live: list[dict[str, Any]], pool: list[dict[str, Any]]) -> None:
        emb = rows_to_matrix(live, self.embedding_column)
        scores = np.asarray(
            [np.nan if r.get(self.score_column) is None else r[self.score_column] for r in live],
            dtype=np.float64,
        )
        ref = rows_to_matrix(pool, self.embedding_column) if pool else None
        result = greedy_semantic_dedup_details(emb, scores, self.threshold, ref)
        for k, row in enumerate(live):
            if result.keep[k]:
                row.update(kept())
                continue
            j = int(result.match[k])
            partner = (
                pool[j]["pool_id"] if result.match_is_reference[k] else live[j]["candidate_id"]
            )
            similarity = float(result.similarity[k])
            row.update(dedup_match=partner, dedup_similarity=similarity)
            row.update(
                dropped("dedup", f"cosine {similarity:.4f} >= {self.threshold:g} with {partner}")
            )

    def process(self, *inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for batch in inputs for r in batch]
        candidates = [r for r in rows if r.get("candidate_id")]
        pool = [
            r
            for r in rows
            if not r.get("candidate_id") and r.get(self.embedding_column) is not None
        ]
        for row in candidates:
            row.update(dedup_match=None, dedup_similarity=None)
        live = [r for r in candidates if in_play(r) and r.get(self.embedding_column) is not None]
        for row in candidates:
            if in_play(row) and row.get(self.embedding_column) is None:
                row.update(
                    kept()
                )  # no text to embed (cannot happen after a response): nothing to compare
        if live:
            self._judge(live, pool)
        for row in candidates:
            row.pop(self.embedding_column, None)
        yield candidates


class LoadEarlierRounds(FixedColumns, GeneratorStep):
    """Yields every candidate of rounds ``< round_index`` from the previous round's folder."""

    output_columns: ClassVar[tuple[str, ...]] = SAMPLE_COLUMNS

    previous: str = Field(description="the previous round's published folder")
    round_index: int = Field(ge=2)

    def process(self, offset: int = 0) -> "GeneratorStepOutput":  # type: ignore[override]
        rows = [
            row
            for config in (DEFAULT_CONFIG, REJECTED_CONFIG)
            for row in published_rows(self.previous, config)
            if row["round"] < self.round_index
        ]
        yield from generator_batches(rows, self.batch_size, offset)


class PublishCandidates(PublishConfig, GlobalStep):
    """Leaf: ``all`` (kept samples of every round), ``round-k`` (kept samples of round k)
    or ``rejected`` (every other candidate, with where and why it left).

    Its predecessors are this round's candidates and, after round 1, the earlier
    rounds' (:class:`LoadEarlierRounds`); rows come out ordered by round and candidate,
    with ``messages`` (TRL SFT) wherever both texts exist.
    """

    input_columns: ClassVar[tuple[str, ...]] = ("candidate_id", "round", "kept")
    output_columns: ClassVar[tuple[str, ...]] = SAMPLE_COLUMNS

    select: Literal["kept", "rejected"] = "kept"
    round_index: int | None = Field(
        default=None, description="only this round's rows (a round-k config)"
    )

    def features(self) -> Features:
        return sample_features()

    def _selected(self, row: dict[str, Any]) -> bool:
        if self.round_index is not None and row["round"] != self.round_index:
            return False
        return (row.get("kept") is True) == (self.select == "kept")

    def process(self, *inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        features = sample_features()
        rows = sorted(
            (r for batch in inputs for r in batch if self._selected(r)),
            key=lambda r: (r["round"], r["candidate_id"]),
        )
        out = []
        for row in rows:
            row = {**row, "messages": sft_messages(row.get("instruction"), row.get("response"))}
            out.append({c: conform(row.get(c), features[c]) for c in SAMPLE_COLUMNS})
        yield out


class PublishSeeds(PublishConfig, GlobalStep):
    """Leaf: ``seeds``, the labelled seed pool (the examples every round starts from)."""

    input_columns: ClassVar[tuple[str, ...]] = ("pool_id", "origin")
    output_columns: ClassVar[tuple[str, ...]] = SEED_COLUMNS

    def features(self) -> Features:
        return seed_features()

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        features = seed_features()
        seeds = sorted((r for r in inputs if r.get("origin") == "seed"), key=lambda r: r["pool_id"])
        yield [{c: conform(row.get(c), features[c]) for c in SEED_COLUMNS} for row in seeds]
