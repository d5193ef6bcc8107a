"""GRA's steps: a pool of small LLMs as Generator, Reviewers and Adjudicator.

GRA (``shared/seeds/001_*``, section 3) draws, for every sample, a Generator ``M_G``
from the model pool, ``N_R`` Reviewers from the rest and an Adjudicator from what is
left. distilabel gives each task one LLM, so here the whole pool is one
:class:`PoolLLM` and every row names the member that must answer it: a step groups
its batch by member and hands each member all of its prompts in one engine call.
Members load lazily, so a step never loads a model it does not use.

Rows flow through these steps (``pipelines/gra.py`` wires them):

- :class:`LoadPool` yields the example pool: seed rows (round 1) or the published
  seeds and kept samples of earlier rounds (later rounds).
- :class:`DescribeExamples` labels pool rows that lack them with a domain (one of the
  paper's seven), at most three keywords and a summary, each by a pool member in a
  seeded rotation (Appendix A); at the end of a round the same step writes the
  summary of each kept sample (metadata enrichment).
- :class:`DrawCandidates` draws each candidate's roles and its few-shot examples.
- :class:`GenerateInstructions`: the Generator invents new keywords from the
  examples' keywords and summaries, then an instruction from them.
- :class:`ReviewInstructions`: every Reviewer answers three yes/no criteria; one "no"
  rejects the sample.
- :class:`GenerateResponses`: the Generator answers the instructions that passed; a
  rejected instruction never costs a response or a response review.
- :class:`ReviewResponses`: every Reviewer scores six dimensions 0-10 with feedback;
  the committee accepts, rejects or sends the sample to adjudication
  (:mod:`synthalign.steps.committee`).
- :class:`Adjudicate`: only disputed samples reach the Adjudicator, which rescores
  them with the reviews in view; kept iff its score >= tau.
- :class:`DeduplicateSamples`: exact score-ordered semantic dedup against the example
  pool and each other (:mod:`synthalign.steps.dedup`).
- :class:`FinalizeSamples` / :class:`CollectPool`: global leaves that publish every
  candidate (with its ``status``) and the pool in one batch each.

A candidate's ``status`` records where it left the funnel: ``generation_failed``,
``instruction_rejected``, ``response_failed``, ``response_rejected``,
``adjudication_discarded``, ``duplicate`` or ``kept``; ``status_reason`` says why.
Unparseable model output is recorded (``error`` / ``raw`` fields) and counted, never
a crash; an unusable review is an abstention.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import logging
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from distilabel.models.llms.base import LLM
from distilabel.steps import GeneratorStep, GlobalStep, StepInput
from distilabel.steps.tasks import Task
from pydantic import BaseModel, Field, PrivateAttr, StringConstraints

import synthalign.offline  # noqa: F401  (no citation fetches)
from synthalign.parsing import parse_model
from synthalign.steps.committee import (
    INSTRUCTION_CRITERIA,
    RESPONSE_DIMENSIONS,
    adjudication_passes,
    committee_verdict,
    instruction_verdict,
    reviewer_score,
)
from synthalign.steps.dedup import greedy_semantic_dedup_details
from synthalign.steps.prompts import render, template_id

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, GeneratorStepOutput, StepColumns, StepOutput

logger = logging.getLogger(__name__)

DOMAINS: tuple[str, ...] = ("Coding", "Math", "QA", "Reasoning", "Role Play", "Language", "Creation")
"""The paper's seven domains (section 3, Appendix A)."""

STATUSES: tuple[str, ...] = (
    "generation_failed",
    "instruction_rejected",
    "response_failed",
    "response_rejected",
    "adjudication_discarded",
    "duplicate",
    "kept",
)
"""Where a candidate leaves the funnel, in pipeline order."""

TEMPLATES: dict[str, str] = {
    "domain": "gra_domain.jinja2",
    "keywords": "gra_keywords.jinja2",
    "summary": "gra_summary.jinja2",
    "new_keywords": "gra_new_keywords.jinja2",
    "instruction": "gra_instruction.jinja2",
    "instruction_review": "gra_review_instruction.jinja2",
    "response": "gra_response.jinja2",
    "response_review": "gra_review_response.jinja2",
    "adjudication": "gra_adjudicate.jinja2",
}
"""The nine prompts of Appendix E, by role."""

METADATA_FIELDS: tuple[str, ...] = ("domain", "keywords", "summary")

# The paper asks for summaries and reviews under 30 words. The caps are a little tighter
# (about 20 words) because schema-forced decoding of a length-bounded string costs
# xgrammar ~40 ms per token and row on a 50K-token vocabulary up to 128 characters, and
# six times that above 128 (measured with xgrammar 0.2.8 and SmolLM2's tokenizer).
MAX_KEYWORD_CHARS = 40
MAX_SUMMARY_CHARS = 128
MAX_FEEDBACK_CHARS = 128

# ---------------------------------------------------------------- output records
# Every free-text field has max_length: a weak or random model must still end its JSON.

Keyword = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_KEYWORD_CHARS)]
Score = Annotated[int, Field(ge=0, le=10)]
YesNo = Literal["yes", "no"]


class DomainLabel(BaseModel):
    domain: Literal["Coding", "Math", "QA", "Reasoning", "Role Play", "Language", "Creation"]


class KeywordSet(BaseModel):
    keywords: list[Keyword] = Field(min_length=1, max_length=3)


class ExampleSummary(BaseModel):
    summary: str = Field(min_length=1, max_length=MAX_SUMMARY_CHARS)


class InstructionReview(BaseModel):
    reasonableness: YesNo
    completeness: YesNo
    clarity: YesNo


class ResponseReview(BaseModel):
    """Feedback comes first so the scores follow from it (a cheap form of reasoning
    first); the paper's prompt lists the scores first."""

    feedback: str = Field(max_length=MAX_FEEDBACK_CHARS)
    correctness: Score
    clarity: Score
    completeness: Score
    relevance: Score
    coherence: Score
    ethicality: Score


class AdjudicationReview(BaseModel):
    reason: str = Field(max_length=MAX_FEEDBACK_CHARS)
    correctness: Score
    clarity: Score
    completeness: Score
    relevance: Score
    coherence: Score
    ethicality: Score


METADATA_RECORDS: dict[str, type[BaseModel]] = {
    "domain": DomainLabel,
    "keywords": KeywordSet,
    "summary": ExampleSummary,
}


@cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


# ---------------------------------------------------------------- the pool


class PoolMember(BaseModel):
    """One model of the pool: a unique name (what rows record), its spec and decoding.

    The same spec may appear several times with different seeds or temperatures; the
    name tells the instances apart.
    """

    name: str
    spec: str
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


def warm_engine_imports(specs: Sequence[str]) -> None:
    """Import the local engines' Python modules in this (parent) process.

    distilabel forks one worker per step, and every LLM step may load every local pool
    model. Workers forked from a parent that already imported torch, transformers and
    xgrammar skip seconds of imports each. Importing starts no thread pool and touches
    no GPU, so forking afterwards is safe. Remote (``openai:``) and vLLM members need
    nothing here.
    """
    import importlib

    if not any(spec.split(":", 1)[0] in ("builtin", "transformers") for spec in specs):
        return
    for name in (
        "torch",
        "transformers",
        "xgrammar",
        "synthalign.llms.transformers",
        "synthalign.llms.grammar",
        "transformers.models.llama.modeling_llama",
    ):
        try:
            importlib.import_module(name)
        except Exception:  # a missing engine fails later, in its step, with its own message
            logger.debug("could not pre-import %s", name, exc_info=True)


@dataclass
class Generation:
    """One routed generation: the text (None if the call failed) and why it failed."""

    text: str | None
    error: str | None
    output_tokens: int | None


class PoolLLM(LLM):
    """The model pool as one distilabel LLM; each prompt names the member that answers.

    Members are created with :func:`synthalign.llms.load_llm` on first use, so the
    pool serializes as plain specs (``pipeline.yaml`` reruns it) and a process loads
    only the members its rows need. Members served over HTTP (``openai:``) are called
    concurrently; local engines one after the other.
    """

    members: list[PoolMember] = Field(min_length=1)

    _llms: dict[int, Any] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        # built in the parent, both by build_pipeline and when pipeline.yaml is loaded
        warm_engine_imports([m.spec for m in self.members])

    @property
    def model_name(self) -> str:
        return "pool:" + ",".join(m.name for m in self.members)

    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    def member_llm(self, index: int) -> Any:
        """The loaded LLM of member ``index`` (loaded on first use)."""
        if index not in self._llms:
            from synthalign.llms import load_llm

            member = self.members[index]
            llm = load_llm(
                member.spec, **member.generation_kwargs, engine_kwargs=dict(member.engine_kwargs)
            )
            llm.load()
            self._llms[index] = llm
        return self._llms[index]

    def unload(self) -> None:
        for llm in self._llms.values():
            llm.unload()
        self._llms.clear()

    def generate(  # type: ignore[override]
        self, inputs: list["FormattedInput"], num_generations: int = 1
    ) -> list[Any]:
        """distilabel's plain path: every input goes to the first member.

        GRA's steps never use it; they route with :meth:`generate_routed`. (No
        ``**kwargs`` here: distilabel would take it for a required runtime parameter.)
        """
        llm = self.member_llm(0)
        return llm.generate_outputs(inputs, num_generations, **(llm.get_generation_kwargs() or {}))

    def generate_routed(
        self, requests: Sequence[tuple[int, "FormattedInput", int]]
    ) -> list[Generation]:
        """Answer ``(member, formatted input, max_new_tokens)`` requests, in order.

        Requests are grouped per member (and token budget) so each engine gets all of
        its prompts at once. A member whose call raises fails only its own requests.
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (member, _, max_new_tokens) in enumerate(requests):
            groups[(member, max_new_tokens)].append(i)
        results: list[Generation | None] = [None] * len(requests)

        def run(key: tuple[int, int]) -> None:
            member, max_new_tokens = key
            idx = groups[key]
            try:
                llm = self.member_llm(member)
                settings = {**(llm.get_generation_kwargs() or {}), "max_new_tokens": max_new_tokens}
                outputs = llm.generate_outputs([requests[i][1] for i in idx], 1, **settings)
                for i, out in zip(idx, outputs, strict=True):
                    text = (out.get("generations") or [None])[0]
                    tokens = ((out.get("statistics") or {}).get("output_tokens") or [None])[0]
                    results[i] = Generation(text, None if text is not None else "no output", tokens)
            except Exception as exc:  # one member failing must not sink the others
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                logger.warning("pool member %s failed: %s", self.members[member].name, first)
                for i in idx:
                    results[i] = Generation(None, f"generation failed: {type(exc).__name__}: {first}", None)

        remote = all(self.members[m].spec.startswith("openai:") for m, _ in groups)
        if remote and len(groups) > 1:
            with ThreadPoolExecutor(max_workers=len(groups)) as executor:
                list(executor.map(run, list(groups)))
        else:
            for key in groups:
                run(key)
        return [r if r is not None else Generation(None, "no output", None) for r in results]


# ---------------------------------------------------------------- routed calls


@dataclass
class Call:
    """One prompt for one pool member."""

    member: int
    role: str  # key of TEMPLATES
    values: dict[str, Any]
    record: type[BaseModel] | None  # None: free text
    max_new_tokens: int


@dataclass
class CallResult:
    """A call's outcome: parsed record or text, or an error (with the raw output)."""

    model: str
    prompt: str
    text: str | None
    record: Any
    error: str | None

    @property
    def raw(self) -> str | None:
        return self.text if self.error else None


class PoolTask(Task):
    """A task whose rows name the pool member(s) that answer them.

    Subclasses build :class:`Call` objects from rows and turn :class:`CallResult` back
    into columns; :meth:`run_calls` renders the prompts (Jinja, static part first so
    prefix caches hit), attaches the JSON schema when the call expects a record, routes
    the batch through the pool and parses the outputs with
    :func:`synthalign.parsing.parse_model`, so failures become error strings.
    """

    llm: PoolLLM
    max_new_tokens: int = Field(default=2048, ge=1, description="token budget of free-text outputs")
    structured_max_new_tokens: int = Field(
        default=512, ge=1, description="token budget of JSON outputs (labels, keywords, reviews)"
    )
    truncated_is_error: bool = Field(
        default=True, description="free text that used up max_new_tokens counts as failed (cut off)"
    )

    def format_input(self, input: dict[str, Any]) -> "FormattedInput":
        raise NotImplementedError(f"{type(self).__name__} builds its prompts per call (see run_calls)")

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} parses its outputs per call (see run_calls)")

    def call(self, member: int, role: str, values: dict[str, Any], record: type[BaseModel] | None) -> Call:
        budget = self.structured_max_new_tokens if record is not None else self.max_new_tokens
        return Call(member=member, role=role, values=values, record=record, max_new_tokens=budget)

    def run_calls(self, calls: Sequence[Call]) -> list[CallResult]:
        requests = []
        for c in calls:
            chat = [{"role": "user", "content": render(TEMPLATES[c.role], **c.values)}]
            structured = {"format": "json", "schema": _schema(c.record)} if c.record else None
            requests.append((c.member, (chat, structured), c.max_new_tokens))
        generations = self.llm.generate_routed(requests) if requests else []
        results = []
        for c, g in zip(calls, generations, strict=True):
            model, prompt = self.llm.members[c.member].name, template_id(TEMPLATES[c.role])
            if g.error is not None:
                results.append(CallResult(model, prompt, g.text, None, g.error))
            elif c.record is not None:
                record, error = parse_model(g.text, c.record)
                results.append(CallResult(model, prompt, g.text, record, error))
            else:
                text = (g.text or "").strip()
                error = None if text else "empty output"
                if error is None and self.truncated_is_error and (g.output_tokens or 0) >= c.max_new_tokens:
                    error = f"truncated: reached max_new_tokens={c.max_new_tokens}"
                results.append(CallResult(model, prompt, g.text if error else text, None, error))
        return results


def _templates(row: dict[str, Any], **ids: str) -> dict[str, Any]:
    """The row's ``prompt_templates`` with ``ids`` added (role -> ``name@hash``)."""
    merged = dict(row.get("prompt_templates") or {})
    merged.update(ids)
    return merged


def _pending(row: dict[str, Any]) -> bool:
    return row.get("status") == "pending"


# ---------------------------------------------------------------- the example pool

POOL_COLUMNS: list[str] = [
    "pool_id",
    "origin",
    "instruction",
    "response",
    "domain",
    "keywords",
    "summary",
    "metadata_models",
    "metadata_error",
    "prompt_templates",
    "describe_with",
]


def metadata_complete(row: dict[str, Any]) -> bool:
    """Can this row serve as a few-shot example (domain, keywords and summary known)?"""
    return (
        row.get("domain") in DOMAINS
        and bool(row.get("keywords"))
        and isinstance(row.get("summary"), str)
        and bool(row["summary"].strip())
    )


def _missing(row: dict[str, Any], field: str) -> bool:
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


def _parquet_files(folder: str) -> list[Path]:
    path = Path(folder).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"prepared pool source {path} does not exist")
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def sources_digest(folders: Sequence[str]) -> str:
    """A hash of the bytes of the prepared sources: part of the round's pipeline
    signature, so distilabel's cache never serves a round computed from another pool."""
    import hashlib

    digest = hashlib.sha256()
    for folder in folders:
        for f in _parquet_files(folder):
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def _read_parquet_rows(folder: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for f in _parquet_files(folder):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


class LoadPool(GeneratorStep):
    """Yields the example pool of this round.

    Round 1 reads the raw seed data (``seed_source``) and marks each row with the pool
    members that will label it. Later rounds read ``prepared_sources`` instead: parquet
    folders of a published run (its ``seeds`` config and the kept samples of earlier
    rounds), whose rows are already labelled and are never labelled again. Rows that
    carry ``domain`` / ``keywords`` / ``summary`` in the seed file keep them.
    """

    seed_source: str | None = Field(default=None, description="seed file or Hub id (round 1)")
    instruction_column: str = "instruction"
    response_column: str = "response"
    input_column: str | None = Field(
        default=None, description="optional extra context appended to the instruction (Alpaca's `input`)"
    )
    seed_limit: int | None = None
    seed_split: str = "train"
    seed_hub_config: str | None = None
    prepared_sources: list[str] = Field(default_factory=list, description="parquet folders (later rounds)")
    prepared_digest: str | None = Field(default=None, description="sources_digest() of prepared_sources when built")
    n_members: int = Field(ge=1, description="pool size, for the labelling rotation")
    seed: int = 0

    @property
    def outputs(self) -> "StepColumns":
        return POOL_COLUMNS

    def pool_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.seed_source:
            from synthalign.steps.seeds import read_seed_rows

            seeds = read_seed_rows(
                self.seed_source,
                [self.instruction_column, self.response_column],
                limit=self.seed_limit,
                split=self.seed_split,
                config=self.seed_hub_config,
            )
            members = rotation(len(seeds), self.n_members, self.seed)
            for i, seed in enumerate(seeds):
                keywords = seed.get("keywords")
                instruction = str(seed[self.instruction_column]).strip()
                extra = seed.get(self.input_column) if self.input_column else None
                if isinstance(extra, str) and extra.strip():
                    instruction = f"{instruction}\n\n{extra.strip()}"
                rows.append(
                    {
                        "pool_id": f"seed-{i:06d}",
                        "origin": "seed",
                        "instruction": instruction,
                        "response": str(seed[self.response_column]).strip(),
                        "domain": seed.get("domain") if seed.get("domain") in DOMAINS else None,
                        "keywords": [str(k) for k in keywords][:3] if isinstance(keywords, list) and keywords else None,
                        "summary": seed.get("summary") if isinstance(seed.get("summary"), str) else None,
                        "metadata_models": None,
                        "metadata_error": None,
                        "prompt_templates": None,  # never {}: parquet cannot store an empty struct
                        "describe_with": members[i],
                    }
                )
        if self.prepared_sources and self.prepared_digest:
            found = sources_digest(self.prepared_sources)
            if found != self.prepared_digest:
                logger.warning(
                    "the prepared pool files changed since this pipeline was built (%s != %s); "
                    "this run uses the files as they are now",
                    found,
                    self.prepared_digest,
                )
        for source in self.prepared_sources:
            for row in _read_parquet_rows(source):
                pool_id = row.get("pool_id") or row.get("candidate_id")
                origin = row.get("origin") or (f"round-{row['round']}" if row.get("round") else "seed")
                rows.append(
                    {
                        "pool_id": pool_id,
                        "origin": origin,
                        "instruction": row.get("instruction"),
                        "response": row.get("response"),
                        "domain": row.get("domain"),
                        "keywords": row.get("keywords"),
                        "summary": row.get("summary"),
                        "metadata_models": row.get("metadata_models"),
                        "metadata_error": row.get("metadata_error"),
                        "prompt_templates": None,  # never {}: parquet cannot store an empty struct
                        "describe_with": None,  # labelled when it was made; not again
                    }
                )
        return rows

    def process(self, offset: int = 0) -> "GeneratorStepOutput":  # type: ignore[override]
        rows = self.pool_rows()[offset:]
        if not rows:
            yield [], True
            return
        while rows:
            batch, rows = rows[: self.batch_size], rows[self.batch_size :]
            yield batch, not rows


class DescribeExamples(PoolTask):
    """Domain, keywords and summary for rows that lack them (Appendix A; enrichment).

    Each missing field is one call, to the member that ``describe_with`` names for it
    (domain, keywords, summary). ``where`` limits the step to some rows (enrichment:
    ``{"status": "kept"}``); rows without ``describe_with`` are passed on unchanged.
    """

    where: dict[str, Any] | None = Field(default=None, description="only rows with these column values")

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction", "describe_with"]

    @property
    def outputs(self) -> "StepColumns":
        return ["domain", "keywords", "summary", "metadata_models", "metadata_error", "prompt_templates"]

    def _selected(self, row: dict[str, Any]) -> bool:
        if self.where and any(row.get(k) != v for k, v in self.where.items()):
            return False
        return bool(row.get("describe_with")) and isinstance(row.get("instruction"), str)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for r in inputs]
        calls: list[Call] = []
        owners: list[tuple[int, str]] = []
        for i, row in enumerate(rows):
            for field in ("domain", "keywords", "summary", "metadata_models", "metadata_error"):
                row.setdefault(field, None)
            row.setdefault("prompt_templates", None)
            if not self._selected(row):
                continue
            for j, field in enumerate(METADATA_FIELDS):
                if _missing(row, field):
                    member = row["describe_with"][j]
                    calls.append(self.call(member, field, {"instruction": row["instruction"]}, METADATA_RECORDS[field]))
                    owners.append((i, field))
        results = self.run_calls(calls)
        errors: dict[int, list[str]] = defaultdict(list)
        for (i, field), result in zip(owners, results, strict=True):
            row = rows[i]
            models = dict(row.get("metadata_models") or {})
            models[field] = result.model
            row["metadata_models"] = models
            row["prompt_templates"] = _templates(row, **{field: result.prompt})
            if result.error:
                errors[i].append(f"{field}: {result.error}")
                continue
            value = getattr(result.record, field)
            row[field] = [k for k in value if k][:3] if field == "keywords" else value
        for i, messages in errors.items():
            rows[i]["metadata_error"] = "; ".join(messages)
        for row in rows:
            models = row.get("metadata_models")
            if models is not None:
                row["metadata_models"] = {f: models.get(f) for f in METADATA_FIELDS}
        yield rows


class CollectPool(GlobalStep):
    """Leaf: the labelled example pool in one batch (one parquet schema for all rows)."""

    @property
    def inputs(self) -> "StepColumns":
        return ["pool_id"]

    @property
    def outputs(self) -> "StepColumns":
        return [c for c in POOL_COLUMNS if c != "describe_with"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield [{c: row.get(c) for c in self.outputs} for row in inputs]


# ---------------------------------------------------------------- drawing candidates


def draw_roles(
    n_candidates: int, n_members: int, n_reviewers: int, seed: int, round_index: int
) -> list[dict[str, Any]]:
    """Seeded role draws: Generator from the pool, Reviewers from the rest, then the
    Adjudicator from what is left; the enricher (metadata writer) from the whole pool.

    Drawn from their own random stream, so the same seed gives the same roles whatever
    the pool of examples holds.
    """
    if n_members < n_reviewers + 2:
        raise ValueError(f"a pool of {n_members} cannot seat 1 generator, {n_reviewers} reviewers and 1 adjudicator")
    rng = np.random.default_rng([seed, round_index, 0xA55])
    draws = []
    for _ in range(n_candidates):
        generator = int(rng.integers(n_members))
        rest = [m for m in range(n_members) if m != generator]
        reviewers = [int(m) for m in rng.choice(rest, size=n_reviewers, replace=False)]
        left = [m for m in rest if m not in reviewers]
        adjudicator = int(rng.choice(left))
        enricher = int(rng.integers(n_members))
        draws.append(
            {"generator": generator, "reviewers": reviewers, "adjudicator": adjudicator, "enricher": enricher}
        )
    return draws


class DrawCandidates(GlobalStep):
    """Turn the labelled pool into this round's candidates: roles and few-shot examples.

    Each candidate gets a domain (drawn in proportion to the domain's share of usable
    pool rows, or uniformly over the domains present) and 2-4 examples of that domain
    (Appendix A: "2 to 4"), whose keywords and summaries the Generator will see.
    """

    round_index: int = Field(ge=1)
    seed: int = 0
    num_candidates: int = Field(ge=1)
    member_names: list[str] = Field(min_length=1)
    n_reviewers: int = Field(default=3, ge=1)
    min_examples: int = Field(default=2, ge=1)
    max_examples: int = Field(default=4, ge=1)
    domain_sampling: Literal["pool", "uniform"] = "pool"

    @property
    def inputs(self) -> "StepColumns":
        return ["pool_id", "domain", "keywords", "summary"]

    @property
    def outputs(self) -> "StepColumns":
        return [
            "candidate_id", "round", "status", "status_reason", "domain", "examples", "roles",
            "generator_model", "reviewer_models", "adjudicator_model", "enricher_model",
            "describe_with", "prompt_templates",
        ]  # fmt: skip

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        usable = [r for r in inputs if metadata_complete(r)]
        roles = draw_roles(self.num_candidates, len(self.member_names), self.n_reviewers, self.seed, self.round_index)
        if not usable:
            logger.warning("round %d: no pool row has a domain, keywords and a summary; nothing to generate", self.round_index)
            yield []
            return
        by_domain: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in usable:
            by_domain[row["domain"]].append(row)
        domains = [d for d in DOMAINS if d in by_domain]
        weights = np.array([len(by_domain[d]) for d in domains], dtype=float)
        if self.domain_sampling == "uniform":
            weights = np.ones(len(domains))
        weights /= weights.sum()
        rng = np.random.default_rng([self.seed, self.round_index, 0xE8A])
        names = self.member_names
        out = []
        for i, role in enumerate(roles):
            domain = domains[int(rng.choice(len(domains), p=weights))]
            pool = by_domain[domain]
            k = int(rng.integers(self.min_examples, max(self.min_examples, self.max_examples) + 1))
            picks = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
            examples = [
                {"pool_id": pool[j]["pool_id"], "keywords": list(pool[j]["keywords"]), "summary": pool[j]["summary"]}
                for j in sorted(int(p) for p in picks)
            ]
            out.append(
                {
                    "candidate_id": f"r{self.round_index}-{i:06d}",
                    "round": self.round_index,
                    "status": "pending",
                    "status_reason": None,
                    "domain": domain,
                    "examples": examples,
                    "roles": role,
                    "generator_model": names[role["generator"]],
                    "reviewer_models": [names[m] for m in role["reviewers"]],
                    "adjudicator_model": names[role["adjudicator"]],
                    "enricher_model": names[role["enricher"]],
                    "describe_with": [role["enricher"]] * len(METADATA_FIELDS),
                    "prompt_templates": None,  # never {}: parquet cannot store an empty struct
                }
            )
        yield out


# ---------------------------------------------------------------- generator


class GenerateInstructions(PoolTask):
    """The Generator: new keywords from the examples, then an instruction from them.

    Two dependent calls to the same member; a candidate whose keywords fail never
    gets an instruction call.
    """

    @property
    def inputs(self) -> "StepColumns":
        return ["domain", "examples", "roles", "status"]

    @property
    def outputs(self) -> "StepColumns":
        return ["keywords", "instruction", "generation_error", "generation_raw", "status", "status_reason", "prompt_templates"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for r in inputs]
        for row in rows:
            row.update({"keywords": None, "instruction": None, "generation_error": None, "generation_raw": None})
        todo = [i for i, r in enumerate(rows) if _pending(r)]
        first = self.run_calls(
            [
                self.call(rows[i]["roles"]["generator"], "new_keywords", {"domain": rows[i]["domain"], "examples": rows[i]["examples"]}, KeywordSet)
                for i in todo
            ]
        )
        second_rows = []
        for i, result in zip(todo, first, strict=True):
            row = rows[i]
            row["prompt_templates"] = _templates(row, new_keywords=result.prompt)
            if result.error:
                self._fail(row, f"new keywords: {result.error}", result.raw)
                continue
            row["keywords"] = [k for k in result.record.keywords if k][:3]
            second_rows.append(i)
        second = self.run_calls(
            [
                self.call(
                    rows[i]["roles"]["generator"],
                    "instruction",
                    {"domain": rows[i]["domain"], "keywords": rows[i]["keywords"], "summaries": [e["summary"] for e in rows[i]["examples"]]},
                    None,
                )
                for i in second_rows
            ]
        )
        for i, result in zip(second_rows, second, strict=True):
            row = rows[i]
            row["prompt_templates"] = _templates(row, instruction=result.prompt)
            if result.error:
                self._fail(row, f"instruction: {result.error}", result.raw)
            else:
                row["instruction"] = result.text
        yield rows

    @staticmethod
    def _fail(row: dict[str, Any], error: str, raw: str | None) -> None:
        row.update(
            {"generation_error": error, "generation_raw": raw, "status": "generation_failed", "status_reason": error}
        )


class GenerateResponses(PoolTask):
    """The Generator answers the instructions the Reviewers accepted (and only those)."""

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction", "roles", "status"]

    @property
    def outputs(self) -> "StepColumns":
        return ["response", "response_error", "response_raw", "status", "status_reason", "prompt_templates"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for r in inputs]
        for row in rows:
            row.update({"response": None, "response_error": None, "response_raw": None})
        todo = [i for i, r in enumerate(rows) if _pending(r)]
        results = self.run_calls(
            [self.call(rows[i]["roles"]["generator"], "response", {"instruction": rows[i]["instruction"]}, None) for i in todo]
        )
        for i, result in zip(todo, results, strict=True):
            row = rows[i]
            row["prompt_templates"] = _templates(row, response=result.prompt)
            if result.error:
                row.update(
                    {
                        "response_error": result.error,
                        "response_raw": result.raw,
                        "status": "response_failed",
                        "status_reason": f"response: {result.error}",
                    }
                )
            else:
                row["response"] = result.text
        yield rows


# ---------------------------------------------------------------- reviewers


def instruction_review_entry(result: CallResult) -> dict[str, Any]:
    """One reviewer's instruction review as stored in ``instruction_reviews``."""
    entry: dict[str, Any] = {"model": result.model, "error": result.error, "raw": result.raw}
    for criterion in INSTRUCTION_CRITERIA:
        value = getattr(result.record, criterion) if result.record is not None else None
        entry[criterion] = None if value is None else value == "yes"
    return entry


def response_review_entry(result: CallResult) -> dict[str, Any]:
    """One reviewer's response review: six scores, their mean, feedback, failure."""
    record = result.record
    entry: dict[str, Any] = {"model": result.model}
    for dim in RESPONSE_DIMENSIONS:
        entry[dim] = getattr(record, dim) if record is not None else None
    entry["score"] = float(reviewer_score([entry[d] for d in RESPONSE_DIMENSIONS])) if record is not None else None
    entry["feedback"] = record.feedback if record is not None else None
    entry["error"] = result.error
    entry["raw"] = result.raw
    return entry


class ReviewInstructions(PoolTask):
    """Every Reviewer judges the instruction on three yes/no criteria.

    One "no" from any Reviewer rejects the sample (section 3.3); unusable reviews are
    abstentions, and fewer than ``min_valid_reviews`` valid ones also reject.
    """

    min_valid_reviews: int = Field(default=2, ge=1)

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction", "roles", "status"]

    @property
    def outputs(self) -> "StepColumns":
        return ["instruction_reviews", "instruction_accepted", "status", "status_reason", "prompt_templates"]

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for r in inputs]
        for row in rows:
            row.update({"instruction_reviews": None, "instruction_accepted": None})
        todo = [i for i, r in enumerate(rows) if _pending(r)]
        calls = [
            self.call(member, "instruction_review", {"instruction": rows[i]["instruction"]}, InstructionReview)
            for i in todo
            for member in rows[i]["roles"]["reviewers"]
        ]
        results = iter(self.run_calls(calls))
        for i in todo:
            row = rows[i]
            mine = [next(results) for _ in row["roles"]["reviewers"]]
            entries = [instruction_review_entry(r) for r in mine]
            verdict = instruction_verdict(
                [None if e["error"] else {c: e[c] for c in INSTRUCTION_CRITERIA} for e in entries],
                min_valid=self.min_valid_reviews,
            )
            row["instruction_reviews"] = entries
            row["instruction_accepted"] = verdict.accepted
            row["prompt_templates"] = _templates(row, instruction_review=mine[0].prompt)
            if not verdict.accepted:
                row.update({"status": "instruction_rejected", "status_reason": verdict.reason})
        yield rows


class ReviewResponses(PoolTask):
    """Every Reviewer scores the response; the committee decides (section 3.3).

    accept -> still pending (goes on to dedup); reject -> ``response_rejected``;
    adjudicate -> ``disputed`` (only those rows reach the Adjudicator).
    """

    min_mean: float = Field(default=8.0, description="tau")
    max_std: float = Field(default=1.5, ge=0, description="delta")
    min_valid_reviews: int = Field(default=2, ge=1)

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction", "response", "roles", "status"]

    @property
    def outputs(self) -> "StepColumns":
        return [
            "response_reviews", "review_mean", "review_std", "review_decision", "review_reason",
            "status", "status_reason", "prompt_templates",
        ]  # fmt: skip

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for r in inputs]
        for row in rows:
            row.update(
                {"response_reviews": None, "review_mean": None, "review_std": None, "review_decision": None, "review_reason": None}
            )
        todo = [i for i, r in enumerate(rows) if _pending(r)]
        calls = [
            self.call(
                member,
                "response_review",
                {"instruction": rows[i]["instruction"], "response": rows[i]["response"]},
                ResponseReview,
            )
            for i in todo
            for member in rows[i]["roles"]["reviewers"]
        ]
        results = iter(self.run_calls(calls))
        for i in todo:
            row = rows[i]
            mine = [next(results) for _ in row["roles"]["reviewers"]]
            entries = [response_review_entry(r) for r in mine]
            verdict = committee_verdict(
                [None if e["error"] else [e[d] for d in RESPONSE_DIMENSIONS] for e in entries],
                min_mean=self.min_mean,
                max_std=self.max_std,
                min_valid=self.min_valid_reviews,
            )
            row.update(
                {
                    "response_reviews": entries,
                    "review_mean": verdict.mean,
                    "review_std": verdict.std,
                    "review_decision": verdict.decision,
                    "review_reason": verdict.reason,
                    "prompt_templates": _templates(row, response_review=mine[0].prompt),
                }
            )
            if verdict.decision == "reject":
                row.update({"status": "response_rejected", "status_reason": verdict.reason})
            elif verdict.decision == "adjudicate":
                row["status"] = "disputed"
        yield rows


class Adjudicate(PoolTask):
    """The Adjudicator rescores disputed samples with every review in view (section 3.4).

    Kept iff its own score (mean of six) >= tau; an unusable adjudication discards the
    sample, because the committee could not settle it either.
    """

    min_mean: float = Field(default=8.0, description="tau")

    @property
    def inputs(self) -> "StepColumns":
        return ["instruction", "response", "response_reviews", "roles", "status"]

    @property
    def outputs(self) -> "StepColumns":
        return [
            "adjudication", "adjudication_score", "adjudication_reason", "adjudication_kept",
            "status", "status_reason", "prompt_templates",
        ]  # fmt: skip

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for r in inputs]
        for row in rows:
            row.update({"adjudication": None, "adjudication_score": None, "adjudication_reason": None, "adjudication_kept": None})
        todo = [i for i, r in enumerate(rows) if r.get("status") == "disputed"]
        calls = []
        for i in todo:
            row = rows[i]
            reviews = [
                {"scores": [e[d] for d in RESPONSE_DIMENSIONS], "feedback": e["feedback"]}
                for e in row["response_reviews"]
                if not e["error"]
            ]
            values = {"instruction": row["instruction"], "response": row["response"], "reviews": reviews}
            calls.append(self.call(row["roles"]["adjudicator"], "adjudication", values, AdjudicationReview))
        for i, result in zip(todo, self.run_calls(calls), strict=True):
            row = rows[i]
            row["prompt_templates"] = _templates(row, adjudication=result.prompt)
            record = result.record
            entry: dict[str, Any] = {"model": result.model}
            for dim in RESPONSE_DIMENSIONS:
                entry[dim] = getattr(record, dim) if record is not None else None
            entry.update({"reason": record.reason if record is not None else None, "error": result.error, "raw": result.raw})
            row["adjudication"] = entry
            if record is None:
                reason = f"adjudication unusable: {result.error}"
                row.update({"adjudication_kept": False, "status": "adjudication_discarded", "status_reason": reason})
                continue
            scores = [entry[d] for d in RESPONSE_DIMENSIONS]
            score = float(reviewer_score(scores))
            kept = adjudication_passes(scores, self.min_mean)
            row.update(
                {
                    "adjudication_score": score,
                    "adjudication_reason": record.reason,
                    "adjudication_kept": kept,
                    "status": "pending" if kept else "adjudication_discarded",
                    "status_reason": None if kept else f"adjudicator score {score:.4g} < tau {self.min_mean:g}",
                }
            )
        yield rows


# ---------------------------------------------------------------- post-processing


class DeduplicateSamples(GlobalStep):
    """Exact score-ordered semantic dedup of the surviving candidates (section 3.5).

    Predecessors: the embedded candidates and the embedded example pool (seeds and
    earlier rounds' kept samples), told apart by ``candidate_id``. Survivors are visited
    by committee mean score ``review_mean`` (descending, ties: earlier candidate); a
    candidate is kept iff its cosine similarity to every pool row and every candidate
    kept before it is below ``threshold``. Outputs the candidates only, without their
    embeddings, with ``dedup_match`` (the row it collided with, or its nearest earlier
    neighbour when kept) and ``dedup_similarity``.
    """

    threshold: float = Field(default=0.9, gt=-1, le=1)
    score_column: str = "review_mean"
    embedding_column: str = "embedding"

    @property
    def inputs(self) -> "StepColumns":
        return [self.embedding_column]

    @property
    def outputs(self) -> "StepColumns":
        return ["status", "status_reason", "dedup_match", "dedup_similarity"]

    def process(self, *inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(r) for batch in inputs for r in batch]
        candidates = [r for r in rows if r.get("candidate_id")]
        pool = [r for r in rows if not r.get("candidate_id") and r.get(self.embedding_column) is not None]
        for row in candidates:
            row.update({"dedup_match": None, "dedup_similarity": None})
        live = [r for r in candidates if _pending(r) and r.get(self.embedding_column) is not None]
        for r in candidates:
            if _pending(r) and r.get(self.embedding_column) is None:
                r.update({"status": "kept", "status_reason": "not embedded (no text); not deduplicated"})
        if live:
            emb = np.asarray([r[self.embedding_column] for r in live], dtype=np.float32)
            scores = np.asarray(
                [np.nan if r.get(self.score_column) is None else r[self.score_column] for r in live], dtype=np.float64
            )
            ref = np.asarray([r[self.embedding_column] for r in pool], dtype=np.float32) if pool else None
            result = greedy_semantic_dedup_details(emb, scores, self.threshold, ref)
            for k, row in enumerate(live):
                j = int(result.match[k])
                if j >= 0:
                    partner = pool[j]["pool_id"] if result.match_is_reference[k] else live[j]["candidate_id"]
                    row["dedup_match"] = partner
                    row["dedup_similarity"] = float(result.similarity[k])
                if result.keep[k]:
                    row.update({"status": "kept", "status_reason": None})
                else:
                    row.update(
                        {
                            "status": "duplicate",
                            "status_reason": f"cosine {result.similarity[k]:.4f} >= {self.threshold:g} with {row['dedup_match']}",
                        }
                    )
        for row in candidates:
            row.pop(self.embedding_column, None)
        yield candidates


SAMPLE_COLUMNS: list[str] = [
    "messages", "candidate_id", "round", "status", "status_reason", "domain", "keywords",
    "instruction", "response", "summary", "examples", "generator_model", "reviewer_models",
    "adjudicator_model", "enricher_model", "instruction_reviews", "instruction_accepted",
    "response_reviews", "review_mean", "review_std", "review_decision", "review_reason",
    "adjudication", "adjudication_score", "adjudication_reason", "adjudication_kept",
    "dedup_match", "dedup_similarity", "generation_error", "generation_raw", "response_error",
    "response_raw", "metadata_models", "metadata_error", "prompt_templates",
]  # fmt: skip
"""Columns of the published candidate rows, in order."""


def sft_messages(instruction: str | None, response: str | None) -> list[dict[str, str]] | None:
    """TRL's conversational SFT format for one instruction-response pair."""
    if not instruction or not response:
        return None
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]


class FinalizeSamples(GlobalStep):
    """Leaf: every candidate of the round, in one batch, in the published column order.

    Adds ``messages`` (TRL SFT) for every candidate that has both texts; the kept ones
    are the training data, the others stay for the funnel and for analysis.
    """

    @property
    def inputs(self) -> "StepColumns":
        return ["candidate_id", "status"]

    @property
    def outputs(self) -> "StepColumns":
        return SAMPLE_COLUMNS

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        out = []
        for row in inputs:
            row = {**row, "messages": sft_messages(row.get("instruction"), row.get("response"))}
            out.append({c: row.get(c) for c in SAMPLE_COLUMNS})
        yield out
