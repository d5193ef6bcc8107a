"""GRA's Generator: each candidate's roles and examples, new keywords, an instruction, a response.

- :class:`DrawCandidates` turns the labelled pool into the round's candidates: the
  roles (Generator, Reviewers, Adjudicator, enricher; seeded) and 2-4 few-shot
  examples of one domain.
- :class:`GenerateKeywords`: the Generator invents new keywords from the examples'
  keywords and summaries; :class:`GenerateInstructions`: then an instruction from them.
- :class:`GenerateResponses`: the Generator answers the instructions the Reviewers
  accepted (and only those: a rejected instruction never costs a response).
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from distilabel.steps import GlobalStep, StepInput
from pydantic import Field

from synthalign.steps.base import Call, CallResult
from synthalign.steps.columns import FixedColumns
from synthalign.steps.gra import (
    DOMAINS,
    ECHOED_LABEL,
    METADATA_FIELDS,
    TEMPLATES,
    GRATask,
    in_play,
    real_keywords,
    with_templates,
)
from synthalign.steps.gra_pool import KeywordSet, metadata_complete
from synthalign.steps.publish import DROP_COLUMNS, dropped

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

logger = logging.getLogger(__name__)


def draw_roles(
    n_candidates: int,
    n_members: int,
    n_reviewers: int,
    seed: int,
    round_index: int,
    adjudicator: bool = True,
    fixed: bool = False,
) -> list[dict[str, Any]]:
    """Seeded role draws: Generator from the pool, Reviewers from the rest, then the
    Adjudicator from what is left; the enricher (metadata writer) from the whole pool.

    Drawn from their own random stream, so the same seed gives the same roles whatever
    the pool of examples holds. ``fixed`` seats the same members every time (the paper's
    fixed-assignment ablation, section 5.1): Generator (and enricher) member 0, Reviewers
    1..N_R, Adjudicator N_R + 1. Without an ``adjudicator`` seat its value is None.
    """
    seats = n_reviewers + 1 + int(adjudicator)
    if n_members < seats:
        raise ValueError(f"a pool of {n_members} cannot seat {seats} distinct roles")
    if fixed:
        role = {
            "generator": 0,
            "reviewers": list(range(1, n_reviewers + 1)),
            "adjudicator": n_reviewers + 1 if adjudicator else None,
            "enricher": 0,
        }
        return [{**role, "reviewers": list(role["reviewers"])} for _ in range(n_candidates)]
    rng = np.random.default_rng([seed, round_index, 0xA55])
    draws = []
    for _ in range(n_candidates):
        generator = int(rng.integers(n_members))
        rest = [m for m in range(n_members) if m != generator]
        reviewers = [int(m) for m in rng.choice(rest, size=n_reviewers, replace=False)]
        left = [m for m in rest if m not in reviewers]
        judge = int(rng.choice(left)) if adjudicator else None
        enricher = int(rng.integers(n_members))
        draws.append(
            {
                "generator": generator,
                "reviewers": reviewers,
                "adjudicator": judge,
                "enricher": enricher,
            }
        )
    return draws


class DrawCandidates(FixedColumns, GlobalStep):
    """Turn the labelled pool into this round's candidates: roles and few-shot examples.

    Each candidate gets a domain (drawn in proportion to the domain's share of usable
    pool rows, or uniformly over the domains present) and 2-4 examples of that domain
    (Appendix A: "2 to 4"), whose keywords and summaries the Generator will see.
    """

    input_columns: ClassVar[tuple[str, ...]] = ("pool_id", *METADATA_FIELDS)
    output_columns: ClassVar[tuple[str, ...]] = (
        "candidate_id", "round", *DROP_COLUMNS, "domain", "examples", "roles", "generator_model",
        "reviewer_models", "adjudicator_model", "enricher_model", "describe_with",
        "prompt_templates",
    )  # fmt: skip

    round_index: int = Field(ge=1)
    seed: int = 0
    num_candidates: int = Field(ge=1)
    member_names: list[str] = Field(min_length=1)
    n_reviewers: int = Field(default=3, ge=0, description="0: no review (the ablation)")
    adjudicator: bool = Field(default=True, description="seat an Adjudicator")
    fixed_roles: bool = Field(default=False, description="same seats every candidate")
    min_examples: int = Field(default=2, ge=1)
    max_examples: int = Field(default=4, ge=1)
    domain_sampling: Literal["pool", "uniform"] = "pool"

    def _domains(
        self, usable: list[dict[str, Any]]
    ) -> tuple[dict[str, list[dict[str, Any]]], list[str], np.ndarray]:
        by_domain: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in usable:
            by_domain[row["domain"]].append(row)
        domains = [d for d in DOMAINS if d in by_domain]
        weights = np.array([len(by_domain[d]) for d in domains], dtype=float)
        if self.domain_sampling == "uniform":
            weights = np.ones(len(domains))
        return by_domain, domains, weights / weights.sum()

    def candidate(
        self, i: int, role: dict[str, Any], domain: str, examples: list[dict[str, Any]]
    ) -> dict[str, Any]:
        names = self.member_names
        return {
            "candidate_id": f"r{self.round_index}-{i:06d}",
            "round": self.round_index,
            "kept": None,  # in play
            "drop_stage": None,
            "drop_reason": None,
            "domain": domain,
            "examples": examples,
            "roles": role,
            "generator_model": names[role["generator"]],
            "reviewer_models": [names[m] for m in role["reviewers"]],
            "adjudicator_model": None
            if role["adjudicator"] is None
            else names[role["adjudicator"]],
            "enricher_model": names[role["enricher"]],
            "describe_with": [role["enricher"]] * len(METADATA_FIELDS),
            "prompt_templates": None,  # never {}: parquet cannot store an empty struct
        }

    def roles(self, n: int) -> list[dict[str, Any]]:
        """The seats of ``n`` candidates (see :func:`draw_roles`)."""
        return draw_roles(
            n,
            len(self.member_names),
            self.n_reviewers,
            self.seed,
            self.round_index,
            adjudicator=self.adjudicator,
            fixed=self.fixed_roles,
        )

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        usable = [r for r in inputs if metadata_complete(r)]
        roles = self.roles(self.num_candidates)
        if not usable:
            logger.warning(
                "round %d: no pool row has a domain, keywords and a summary; nothing to generate",
                self.round_index,
            )
            yield []
            return
        by_domain, domains, weights = self._domains(usable)
        rng = np.random.default_rng([self.seed, self.round_index, 0xE8A])
        out = []
        for i, role in enumerate(roles):
            domain = domains[int(rng.choice(len(domains), p=weights))]
            pool = by_domain[domain]
            k = int(rng.integers(self.min_examples, max(self.min_examples, self.max_examples) + 1))
            picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
            examples = [
                {
                    "pool_id": pool[j]["pool_id"],
                    "keywords": list(pool[j]["keywords"]),
                    "summary": pool[j]["summary"],
                }
                for j in sorted(int(p) for p in picks)
            ]
            out.append(self.candidate(i, role, domain, examples))
        yield out


class DrawSeedCandidates(DrawCandidates):
    """GRA-Refined (section 5.3): the labelled seeds themselves are the candidates.

    Each seed (at most ``num_candidates``, in pool order) keeps its instruction, domain
    and keywords, records itself as its one ``examples`` entry (its ``pool_id`` links the
    refined row to the original in ``seeds``), and gets seats like any candidate; the
    Generator then answers it anew and the committee curates the answer.
    """

    input_columns: ClassVar[tuple[str, ...]] = (
        "pool_id",
        "origin",
        "instruction",
        *METADATA_FIELDS,
    )
    output_columns: ClassVar[tuple[str, ...]] = (
        *DrawCandidates.output_columns, "instruction", "keywords",
    )  # fmt: skip

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        seeds = sorted((r for r in inputs if r.get("origin") == "seed"), key=lambda r: r["pool_id"])
        seeds = seeds[: self.num_candidates]
        out = []
        for i, (row, role) in enumerate(zip(seeds, self.roles(len(seeds)), strict=True)):
            keywords = list(row.get("keywords") or [])
            example = {
                "pool_id": row["pool_id"],
                "keywords": keywords,
                "summary": row.get("summary"),
            }
            candidate = self.candidate(i, role, row.get("domain"), [example])
            out.append({**candidate, "instruction": row["instruction"], "keywords": keywords})
        yield out


class _GeneratorTask(GRATask):
    """One call per row in play, to the candidate's Generator, with the prompt ``role``
    of ``prompt_templates``. Its answer fills ``column``; a failed call records
    ``<stage>_error`` and ``<stage>_raw`` and drops the row at ``stage``."""

    role: ClassVar[str]
    column: ClassVar[str]

    @property
    def outputs(self) -> "StepColumns":
        stage = self.stage
        return [self.column, f"{stage}_error", f"{stage}_raw", "prompt_templates", *DROP_COLUMNS]

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        """What the prompt template sees."""
        raise NotImplementedError

    def answer(self, result: CallResult) -> Any:
        return result.text

    def call_failed(self, result: CallResult) -> dict[str, Any]:
        """The generation stage: the error names the call (new keywords, instruction)."""
        error = f"{self.role.replace('_', ' ')}: {result.error}"
        return {
            "generation_error": error,
            "generation_raw": result.raw,
            **dropped("generation", error),
        }

    def calls(self, row: dict[str, Any]) -> list[Call]:
        return [Call(self.values(row), member=row["roles"]["generator"])] if in_play(row) else []

    def merge(self, row: dict[str, Any], results: Sequence[CallResult]) -> dict[str, Any]:
        (result,) = results
        prompts = with_templates(row, **{self.role: result.prompt})
        columns = {**self.passthrough(row), "prompt_templates": prompts}
        if result.error:
            return {**columns, **self.call_failed(result)}
        return {**columns, self.column: self.answer(result)}


class GenerateKeywords(_GeneratorTask):
    """The Generator's new keywords, from its examples' keywords and summaries."""

    template: ClassVar[str] = TEMPLATES["new_keywords"]
    output_model: ClassVar[type[KeywordSet]] = KeywordSet
    stage: ClassVar[str] = "generation"
    role: ClassVar[str] = "new_keywords"
    column: ClassVar[str] = "keywords"
    input_columns: ClassVar[tuple[str, ...]] = ("domain", "examples", "roles")

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"domain": row["domain"], "examples": row["examples"]}

    def merge(self, row: dict[str, Any], results: Sequence[CallResult]) -> dict[str, Any]:
        (result,) = results
        if result.error is None and not real_keywords(result.record.keywords):
            result = replace(result, error=ECHOED_LABEL)  # ['keywords', 'keywords', ...]
        return super().merge(row, [result])

    def answer(self, result: CallResult) -> Any:
        return real_keywords(result.record.keywords)


class GenerateInstructions(_GeneratorTask):
    """The Generator's instruction, written from its new keywords and the examples' summaries."""

    template: ClassVar[str] = TEMPLATES["instruction"]
    stage: ClassVar[str] = "generation"
    role: ClassVar[str] = "instruction"
    column: ClassVar[str] = "instruction"
    input_columns: ClassVar[tuple[str, ...]] = ("domain", "keywords", "examples", "roles")

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        summaries = [e["summary"] for e in row["examples"]]
        return {"domain": row["domain"], "keywords": row["keywords"], "summaries": summaries}


class GenerateResponses(_GeneratorTask):
    """The Generator answers the instructions the Reviewers accepted (and only those)."""

    template: ClassVar[str] = TEMPLATES["response"]
    stage: ClassVar[str] = "response"
    role: ClassVar[str] = "response"
    column: ClassVar[str] = "response"
    input_columns: ClassVar[tuple[str, ...]] = ("instruction", "roles")

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"instruction": row["instruction"]}

    def call_failed(self, result: CallResult) -> dict[str, Any]:
        failed = {"response_error": result.error, "response_raw": result.raw}
        return {**failed, **dropped("response", f"response: {result.error}")}
