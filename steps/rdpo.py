"""rDPO's self-critique steps: answer, critique against a principle, revise, pair, publish.

The rDPO paper builds preference pairs without human labels: a teacher answers a
prompt, is asked to critique that answer against a stated principle, and then to
rewrite it following its own critique. Its public generation code does this in *one*
growing conversation per sample, so the critique sees the exact answer in context and
the revision sees both. :class:`SelfCritiqueRevision` runs the three turns with one
teacher engine, each turn one batched call.

:class:`PairWithPreferenceProbability` then turns a scored row into a soft preference
pair (``prompt``/``chosen``/``rejected`` + ``tau``) or a drop (``kept``,
``drop_stage``, ``drop_reason``: the convention of :mod:`synthalign.steps.publish`),
and the leaf steps of :mod:`synthalign.steps.rdpo_publish` publish the configs, each
declaring its schema (so ``distilabel pipeline run --config pipeline.yaml`` reproduces
them): :class:`SelectPreferencePairs` (``rdpo``, ``dpo``), :class:`SelectSFTMessages`
(``sft``) and :class:`SelectAllRows` (``all``).
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from distilabel.steps import Step, StepInput
from pydantic import Field

from synthalign.steps.base import TextTask, provenance_columns
from synthalign.steps.clean import CleanColumn
from synthalign.steps.columns import FixedColumns
from synthalign.steps.prompts import render, template_id
from synthalign.steps.publish import dropped, kept
from synthalign.steps.scoring import preference_probability

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

Chat = list[dict[str, str]]

PRINCIPLES_FILE = Path(__file__).parent / "data" / "rdpo_principles.yaml"


@dataclass(frozen=True)
class Principle:
    """A behaviour to align: the statement the teacher critiques against, and how a
    judge scores it (rubric and integer scale, as in the paper's public code)."""

    name: str
    statement: str
    rubric: str
    scale: tuple[int, int]
    scale_labels: str


def _load_principles(path: Path) -> dict[str, Principle]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {
        name: Principle(name=name, **{**fields, "scale": tuple(fields["scale"])})
        for name, fields in data.items()
    }


PRINCIPLES: dict[str, Principle] = _load_principles(PRINCIPLES_FILE)
"""The three behaviours of the rDPO paper (``steps/data/rdpo_principles.yaml``): safety,
robustness of an assigned persona against role-play pressure, and objectivity instead
of sycophancy."""


def resolve_principle(name: str, statement: str | None = None) -> tuple[str, str]:
    """``(name, statement)``: a preset by name, or the user's own statement under that name."""
    if statement:
        return name, statement.strip()
    if name not in PRINCIPLES:
        raise ValueError(
            f"unknown principle {name!r}: choose {', '.join(PRINCIPLES)} or write principle_text"
        )
    return name, PRINCIPLES[name].statement


class AttachPrinciple(FixedColumns, Step):
    """Adds the principle's name and statement to every row, so the critique and
    revision read it from the row (and the dataset records it)."""

    output_columns: ClassVar[tuple[str, ...]] = ("principle", "principle_text")

    principle: str = Field(
        default="safety", description="preset name, or a name for principle_text"
    )
    principle_text: str | None = Field(default=None, description="your own principle statement")

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        name, statement = resolve_principle(self.principle, self.principle_text)
        for row in inputs:
            row["principle"] = name
            row["principle_text"] = statement
        yield inputs


TURNS: list[tuple[str, str, str]] = [
    # (column prefix, output column, template)
    ("answer", "response_original", "rdpo_answer.jinja2"),
    ("critique", "critique", "rdpo_critique.jinja2"),
    ("revision", "response_revised", "rdpo_revision.jinja2"),
]


class SelfCritiqueRevision(TextTask):
    """One conversation per prompt: answer, critique against the principle, revision.

    Turn 1 sends the prompt verbatim (after an optional persona system message), to
    capture the teacher's default behaviour. Turn 2 appends a critique request naming
    the row's principle; turn 3 appends a revision request, so the revision sees the
    answer and its critique in context, as in the paper's public code. The three turns
    run inside one task so one teacher engine serves them all (three tasks would load
    three copies of a Mixtral-sized model); each turn is still one batched engine call
    over the whole batch. A row whose turn fails skips the later turns, with the
    reason recorded, so no call is spent on a conversation that is already broken.

    Columns: ``response_original``, ``critique``, ``response_revised`` and, per turn,
    ``answer_*``, ``critique_*``, ``revision_*`` provenance (error, raw, model, prompt).
    """

    template: ClassVar[str] = "rdpo_answer.jinja2"
    column_prefix: ClassVar[str] = "answer"
    output_column: ClassVar[str] = "response_original"

    system_column: str | None = Field(
        default=None, description="column with a system message (persona)"
    )
    fold_system: bool = Field(
        default=False,
        description=(
            "put the system message at the top of the first user turn "
            "(for chat templates without a system role)"
        ),
    )

    @property
    def inputs(self) -> "StepColumns":
        base = ["prompt", "principle_text"]
        return [*base, self.system_column] if self.system_column else base

    @property
    def outputs(self) -> "StepColumns":
        columns: list[str] = []
        for prefix, output, _ in TURNS:
            columns += [output, *provenance_columns(prefix)]
        return columns

    def conversation(self, input: dict[str, Any], upto: int) -> Chat:
        """The chat the teacher sees at turn ``upto`` (0: answer, 1: critique, 2: revision)."""
        chat: Chat = []
        system = input.get(self.system_column) if self.system_column else None
        prompt = render(TURNS[0][2], prompt=input.get("prompt") or "")
        if system and self.fold_system:
            prompt = f"{system}\n\n{prompt}"
        elif system:
            chat.append({"role": "system", "content": system})
        chat.append({"role": "user", "content": prompt})
        principle = input.get("principle_text") or ""
        for turn in range(1, upto + 1):
            chat.append({"role": "assistant", "content": input.get(TURNS[turn - 1][1]) or ""})
            chat.append({"role": "user", "content": render(TURNS[turn][2], principle=principle)})
        return chat

    def messages(self, input: dict[str, Any]) -> Chat:
        return self.conversation(input, 0)

    def _turn_columns(self, turn: int, output: str | None, error: str | None) -> dict[str, Any]:
        prefix, column, template = TURNS[turn]
        if error is None:
            text = (output or "").strip()
            if output is None:
                error = "no output (generation failed)"
            elif len(text) < self.min_chars:
                error = "empty output" if not text else f"too short ({len(text)} chars)"
        return {
            column: (output or "").strip() if error is None else None,
            f"{prefix}_error": error,
            f"{prefix}_raw": output if error else None,
            f"{prefix}_model": self.llm.model_name,
            f"{prefix}_prompt": template_id(template),
        }

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(row) for row in inputs]
        kwargs = self.llm.get_generation_kwargs() or {}
        for turn, (prefix, _, _) in enumerate(TURNS):
            live = [
                i
                for i, row in enumerate(rows)
                if turn == 0 or row.get(f"{TURNS[turn - 1][0]}_error") is None
            ]
            for i, row in enumerate(rows):
                if i not in live:
                    row.update(
                        self._turn_columns(turn, None, f"skipped: {TURNS[turn - 1][0]} failed")
                    )
            if not live:
                continue
            outputs = self.llm.generate_outputs(
                inputs=[self.conversation(rows[i], turn) for i in live], num_generations=1, **kwargs
            )
            for i, out in zip(live, outputs, strict=True):
                generations = out.get("generations") or [None]
                rows[i].update(self._turn_columns(turn, generations[0], None))
            self._logger.debug("rdpo %s turn: %d rows", prefix, len(live))
        yield rows

    def impute_step_outputs(self, step_output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The engine failed for the whole batch: every turn of every row records it."""
        rows = []
        for row in step_output:
            data = dict(row)
            for turn in range(len(TURNS)):
                data.update(self._turn_columns(turn, None, "generation failed (see pipeline log)"))
            rows.append(data)
        return rows


CLEAN_COLUMNS: tuple[CleanColumn, ...] = (
    CleanColumn(
        column="response_original", templates=["rdpo_answer.jinja2"], prompt_column="prompt"
    ),
    CleanColumn(
        column="response_revised",
        templates=["rdpo_revision.jinja2", "rdpo_critique.jinja2"],
        prompt_column="prompt",
    ),
)
"""What the cleaning step checks: both responses of a pair; the revision against the two
prompts of the conversation it ends (it must not talk about "my critique")."""

# ---------------------------------------------------------------- pairing and tau

TURN_DROPS: tuple[tuple[str, str, str], ...] = (
    # (error column, drop_stage, drop_reason)
    ("answer_error", "generation", "answer failed"),
    ("critique_error", "critique", "critique failed"),
    ("revision_error", "revision", "revision failed"),
)
Drop = tuple[str, str, str]
"""``(drop_stage, drop_reason, drop_detail)``: where a row left, the counted reason, the
error text."""


def _judge_reason(error: str) -> str:
    if error.startswith("out of scale"):
        return "judge: out of scale"
    if error.startswith("no output") or error.startswith("generation failed"):
        return "judge: no output"
    return "judge: schema"


PAIR_COLUMNS: tuple[str, ...] = (
    "chosen_is",
    "chosen",
    "rejected",
    "tau",
    "score_chosen",
    "score_rejected",
)
"""What :class:`PairWithPreferenceProbability` adds to a kept row (None on a dropped one)."""


class PairWithPreferenceProbability(FixedColumns, Step):
    """Turns a scored row into a soft preference pair, or records why it cannot be one.

    ``chosen="revised"`` (default) follows the paper: the revision is the intended
    preferred response (y_w) and the original the rejected one (y_l); the scorer
    does not reorder them, it only says how sure we are, through
    ``tau = sigmoid((score_revised - score_original) / tau_temperature)``. A revision
    the scorer finds worse gets tau < 0.5 and the rDPO loss then pushes the other way,
    weighted by that confidence: that is the point of the soft label.
    ``chosen="higher_score"`` instead puts the better-scored response first
    (tau >= 0.5), which is what a hard DPO baseline on the ``dpo`` config wants if the
    revisions are often worse.

    Every row gets ``kept``, ``drop_stage`` and ``drop_reason`` (None when kept): the
    first failure among answer (stage ``generation``), ``critique``, ``revision``, output
    cleaning (``clean``: scaffolding left in a response), judge / reward-model
    ``scoring``, and ``pairing`` (identical responses, ties with
    ``tie="drop"``). ``drop_detail`` keeps the underlying error text.
    """

    output_columns: ClassVar[tuple[str, ...]] = (
        *PAIR_COLUMNS, "prompt_messages", "generation", "kept", "drop_stage", "drop_reason",
        "drop_detail",
    )  # fmt: skip

    chosen: Literal["revised", "higher_score"] = "revised"
    tau_temperature: float = Field(
        default=1.0, gt=0, description="T in tau = sigmoid((s_chosen - s_rejected) / T)"
    )
    clip: list[float] = Field(default_factory=lambda: [0.0, 1.0], min_length=2, max_length=2)
    tie: Literal["keep", "drop"] = "keep"
    system_column: str | None = None
    judge_prefixes: list[str] = Field(
        default_factory=list, description="judge column prefixes, when judged"
    )
    generation: dict[str, Any] = Field(
        default_factory=dict, description="models and settings, recorded per row"
    )

    @property
    def inputs(self) -> "StepColumns":
        base = [
            "prompt",
            "response_original",
            "response_revised",
            "score_original",
            "score_revised",
            "scorer",
        ]
        return [*base, self.system_column] if self.system_column else base

    def _failure(self, row: dict[str, Any]) -> Drop | None:
        """The first recorded failure of the row's generation or scoring."""
        for column, stage, reason in TURN_DROPS:
            if row.get(column):
                return stage, reason, str(row[column])
        if row.get("clean_error"):
            return "clean", row["clean_error"], "a response still carries prompt scaffolding"
        for prefix in self.judge_prefixes:
            error = row.get(f"{prefix}_error")
            if error:
                return "scoring", _judge_reason(str(error)), str(error)
        if row.get("scoring_error"):
            return "scoring", "reward model: no score", str(row["scoring_error"])
        if row.get("score_original") is None or row.get("score_revised") is None:
            return "scoring", "missing score", "a score is missing without a recorded error"
        if (row.get("response_original") or "").strip() == (
            row.get("response_revised") or ""
        ).strip():
            return "pairing", "identical responses", "the revision repeats the original"
        return None

    def _pair(self, row: dict[str, Any]) -> Drop | None:
        """Fill the pair columns of a usable row; a tie with ``tie="drop"`` is a drop."""
        s_orig, s_rev = float(row["score_original"]), float(row["score_revised"])
        revised_first = self.chosen == "revised" or s_rev >= s_orig
        order = ("revised", "original") if revised_first else ("original", "revised")
        s_c, s_r = (s_rev, s_orig) if revised_first else (s_orig, s_rev)
        tau = preference_probability(
            s_c, s_r, self.tau_temperature, (self.clip[0], self.clip[1]), self.tie
        )
        if tau is None:
            return "pairing", "tie", f"equal scores ({s_c:g}) and tie='drop'"
        row.update(
            chosen_is=order[0],
            chosen=[{"role": "assistant", "content": row[f"response_{order[0]}"]}],
            rejected=[{"role": "assistant", "content": row[f"response_{order[1]}"]}],
            tau=tau,
            score_chosen=s_c,
            score_rejected=s_r,
        )
        return None

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        generation = json.dumps(self.generation, sort_keys=True) if self.generation else None
        for row in inputs:
            row.update(dict.fromkeys(self.outputs))
            system = row.get(self.system_column) if self.system_column else None
            prompt: Chat = [{"role": "user", "content": row.get("prompt") or ""}]
            row.update(
                generation=generation,
                prompt_messages=([{"role": "system", "content": system}] if system else [])
                + prompt,
            )
            drop = self._failure(row) or self._pair(row)
            if drop is None:
                row.update(kept())
            else:
                row.update(dropped(drop[0], drop[1]), drop_detail=drop[2])
        yield inputs
