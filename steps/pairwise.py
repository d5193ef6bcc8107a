"""A pairwise scorer: compare two responses, output P(second preferred over first).

Pointwise scorers (a reward model, a rubric judge) rate each response alone; a
pairwise model (PairRM-style) sees both and says which is better, which is what a
preference label is about. :class:`PairwiseScores` is the interface every pairwise
scorer fills: per row, the probability that the second response column (the
revision) beats the first (the original). It writes the pair's log-odds as
``score_<second> = logit(p)`` beside ``score_<first> = 0``, so the Bradley-Terry map
``sigmoid((s_chosen - s_rejected) / 1)`` gives back exactly ``p`` and everything that
reads two scores (rDPO's pairing, its ``dsc`` rule ``score_revised > score_original``)
works unchanged. A real PairRM plugs in as another subclass that implements
:meth:`PairwiseScores.probabilities`.

:class:`CompareWithLLM` is the pairwise model made of an LLM judge: it is asked to
compare A with B in both orders (the original as A, then the revision as A), each
verdict is a schema-forced letter and a confidence from 50 to 100, and P(revised
preferred) is the mean of the two orders' probabilities, which cancels a judge's
position bias (a judge that always answers "A" with the same confidence gives 0.5).
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from distilabel.steps import StepInput
from pydantic import BaseModel, Field

from synthalign.llms import OpenAICompatLLM, load_llm
from synthalign.parsing import parse_model
from synthalign.recipes import PairwiseModel, RewardModel
from synthalign.steps.base import SchemaTask, provenance_columns
from synthalign.steps.prompts import template_id
from synthalign.steps.scoring import ScoreResponses, ScoreWithRewardModel, as_conversation

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, StepColumns, StepOutput

__all__ = [
    "DEFAULT_CRITERION",
    "PROBABILITY_BOUNDS",
    "CompareWithLLM",
    "PairwiseScores",
    "PairwiseVerdict",
    "response_scorer",
]

DEFAULT_CRITERION = (
    "The better reply answers the user's request more helpfully: correct, complete, clear "
    "and to the point."
)
"""What a pairwise judge compares on when neither the recipe nor the method says."""

PROBABILITY_BOUNDS = (0.01, 0.99)
"""A pairwise probability is held inside these bounds so its log-odds stay finite."""

Outcome = tuple[float | None, str | None, str | None, str | None]
"""Per row: P(second preferred), rationale, error, raw output (kept when it failed)."""


class PairwiseScores(ScoreResponses):
    """The pairwise scorer interface: ``probabilities(rows)`` -> P(second > first) per row.

    Reads the first two ``response_columns`` (default ``response_original``,
    ``response_revised``) and writes ``score_<first> = 0`` and ``score_<second> =
    logit(p)``, ``scorer`` and the ``pairwise_*`` columns (rationale, error, raw,
    model, prompt). A row whose comparison failed keeps None scores and its error, so
    the method drops it with a counted reason.
    """

    column_prefix: ClassVar[str] = "pairwise"

    @property
    def outputs(self) -> "StepColumns":
        prefix = self.column_prefix
        return [
            *self.resolved_score_columns,
            "scorer",
            f"{prefix}_rationale",
            *provenance_columns(prefix),
        ]

    @property
    def scorer_name(self) -> str:
        return "pairwise"

    @property
    def model_id(self) -> str:
        return "?"

    @property
    def prompt_id(self) -> str | None:
        return None

    def probabilities(self, rows: list[dict[str, Any]]) -> list[Outcome]:
        raise NotImplementedError

    def _columns(self, outcome: Outcome) -> dict[str, Any]:
        p, rationale, error, raw = outcome
        first, second = self.resolved_score_columns[:2]
        scores: dict[str, Any] = {first: None, second: None}
        if p is not None and error is None:
            lo, hi = PROBABILITY_BOUNDS
            p = min(max(p, lo), hi)
            scores = {first: 0.0, second: math.log(p / (1.0 - p))}
        prefix = self.column_prefix
        return {
            **scores,
            "scorer": f"{self.scorer_name}:{self.model_id}",
            f"{prefix}_rationale": rationale,
            f"{prefix}_error": error,
            f"{prefix}_raw": raw if error else None,
            f"{prefix}_model": self.model_id,
            f"{prefix}_prompt": self.prompt_id,
        }

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(row) for row in inputs]
        first, second = self.response_columns[:2]
        live = [i for i, row in enumerate(rows) if row.get(first) and row.get(second)]
        for i, row in enumerate(rows):
            if i not in live:
                row.update(self._columns((None, None, f"no {first} or {second} to compare", None)))
        if live:
            outcomes = self.probabilities([rows[i] for i in live])
            for i, outcome in zip(live, outcomes, strict=True):
                rows[i].update(self._columns(outcome))
        yield rows


class PairwiseVerdict(BaseModel):
    """One comparison: a short rationale, the better reply's letter, how sure (50-100)."""

    rationale: str
    better: Literal["A", "B"]
    confidence: int = Field(ge=50, le=100)


class CompareWithLLM(PairwiseScores, SchemaTask):
    """An LLM asked which of two replies better meets a criterion, in both orders.

    Both orders of every row of a batch go to the engine in one call. A verdict that
    does not parse (or a confidence outside 50-100) is recorded in
    ``pairwise_error`` with the raw output, never guessed.
    """

    template: ClassVar[str] = "pairwise_compare.jinja2"
    system_template: ClassVar[str | None] = "pairwise_compare_system.jinja2"
    output_model: ClassVar[type[BaseModel]] = PairwiseVerdict

    criterion: str = Field(description="what makes a reply better, in the judge's words")

    @property
    def scorer_name(self) -> str:
        return "pairwise_llm"

    @property
    def model_id(self) -> str:
        return self.llm.model_name

    @property
    def prompt_id(self) -> str | None:
        return template_id(self.template)

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        turns = as_conversation(input.get(self.prompt_column) or "", "", self.system(input))[:-1]
        return {
            "criterion": self.criterion,
            "turns": turns,
            "response_a": input["response_a"],
            "response_b": input["response_b"],
        }

    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self._columns(self._one(output))

    def _one(self, output: str | None) -> Outcome:
        record, error = parse_model(output, PairwiseVerdict, frozenset({"rationale"}))
        if record is None:
            return None, None, error or "no output (generation failed)", output
        sure = record.confidence / 100.0
        return (sure if record.better == "B" else 1.0 - sure), record.rationale, None, output

    def probabilities(self, rows: list[dict[str, Any]]) -> list[Outcome]:
        """Order 1 shows (original, revised) as (A, B), order 2 (revised, original)."""
        first, second = self.response_columns[:2]
        jobs: list[FormattedInput] = []
        for row in rows:
            for a, b in ((first, second), (second, first)):
                jobs.append(self.format_input({**row, "response_a": row[a], "response_b": row[b]}))
        outputs = self.llm.generate_outputs(
            inputs=jobs, num_generations=1, **(self.llm.get_generation_kwargs() or {})
        )
        texts = [(out.get("generations") or [None])[0] for out in outputs]
        return [self._combine(texts[2 * k], texts[2 * k + 1]) for k in range(len(rows))]

    def _combine(self, shown_in_order: str | None, shown_reversed: str | None) -> Outcome:
        p1, why1, err1, raw1 = self._one(shown_in_order)
        p2, why2, err2, raw2 = self._one(shown_reversed)
        if err1 or err2 or p1 is None or p2 is None:
            raw = f"[order A=first]\n{raw1}\n[order A=second]\n{raw2}"
            return None, None, f"pairwise verdict: {err1 or err2}", raw
        return (p1 + (1.0 - p2)) / 2.0, f"{why1} | reversed: {why2}", None, None

    def impute_step_outputs(self, step_output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The engine failed for the whole batch: every row records it."""
        failed = (None, None, "generation failed (see pipeline log)", None)
        return [{**row, **self._columns(failed)} for row in step_output]


def response_scorer(
    kind: Literal["reward_model", "pairwise"],
    reward_model: RewardModel,
    pairwise: PairwiseModel | None,
    *,
    seed: int,
    criterion: str | None = None,
    **kwargs: Any,
) -> ScoreWithRewardModel | CompareWithLLM:
    """The step that scores two response columns: the recipe's reward model, or its
    pairwise model (then ``score_<first> - score_<second>`` is the log-odds that the
    first response is preferred). ``kwargs`` are step arguments (name, columns)."""
    if kind != "pairwise":
        return ScoreWithRewardModel.from_reward_model(reward_model, **kwargs)
    if pairwise is None:
        raise ValueError("scoring kind 'pairwise' needs its pairwise block (with llm)")
    llm = load_llm(
        pairwise.spec(None), engine_kwargs=pairwise.engine_kwargs, **pairwise.decoding(seed)
    )
    if pairwise.api_key is not None and isinstance(llm, OpenAICompatLLM):
        llm.api_key = pairwise.api_key
    return CompareWithLLM(
        llm=llm,
        criterion=pairwise.criterion or criterion or DEFAULT_CRITERION,
        input_batch_size=pairwise.batch_size,
        resources=pairwise.resources.step_resources(),
        **kwargs,
    )
