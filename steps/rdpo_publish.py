"""rDPO's published configs, each a leaf step declaring its schema.

Kept apart from the self-critique steps (:mod:`synthalign.steps.rdpo`) so that each
module has one job: :class:`SelectPreferencePairs` (``rdpo``, ``dpo``),
:class:`SelectSFTMessages` (``sft``), :class:`SelectDSCMessages` (``dsc``) and
:class:`SelectAllRows` (``all``) turn the paired rows into what ``load_dataset`` reads,
from inside the pipeline, so ``distilabel pipeline run --config pipeline.yaml``
reproduces them.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from distilabel.steps import StepInput
from pydantic import Field

from synthalign.steps.base import provenance_columns
from synthalign.steps.decontaminate import CONTAMINATION_COLUMNS
from synthalign.steps.publish import PublishConfig, chat_feature, drop_features
from synthalign.steps.rdpo import PAIR_COLUMNS, TURNS

if TYPE_CHECKING:
    from datasets import Features
    from distilabel.typing import StepColumns, StepOutput


RDPO_COLUMNS: tuple[str, ...] = (
    "prompt",
    "chosen",
    "rejected",
    "tau",
    "tau_temperature",
    "score_chosen",
    "score_rejected",
    "score_original",
    "score_revised",
    "chosen_is",
    "scorer",
    "principle",
    "critique",
    "answer_model",
    "critique_model",
    "revision_model",
    "answer_prompt",
    "critique_prompt",
    "revision_prompt",
    "generation",
)
"""The ``rdpo`` config, TRL's columns first (``dpo`` is the same without ``tau``)."""

SFT_COLUMNS: tuple[str, ...] = (
    "messages",
    "principle",
    "chosen_is",
    "tau",
    "answer_model",
    "revision_model",
    "revision_prompt",
)

FLOAT_COLUMNS = frozenset(
    {"tau", "tau_t1", "tau_temperature", "score_chosen", "score_rejected", "score_original",
     "score_revised", "contamination_score"}
)  # fmt: skip
TAU_COLUMNS: tuple[str, ...] = ("tau", "tau_temperature")
"""What the ``dpo`` view leaves out (hard labels)."""
CHAT_COLUMNS = frozenset({"chosen", "rejected", "messages"})
LIST_COLUMNS = frozenset({"clean_changed"})


def config_features(columns: Iterable[str], chats: Iterable[str] = ()) -> "Features":
    """One schema for every rDPO config: chats, float scores (a judge's integer scores
    too, so every scorer's configs concatenate), the drop columns, strings otherwise."""
    from datasets import Features, List, Value  # heavy: datasets

    chat_columns = CHAT_COLUMNS | set(chats)
    drops = drop_features()
    features = {}
    for name in columns:
        if name in chat_columns:
            features[name] = chat_feature()
        elif name in drops:
            features[name] = drops[name]
        elif name in LIST_COLUMNS:
            features[name] = List(Value("string"))
        else:
            features[name] = Value("float64" if name in FLOAT_COLUMNS else "string")
    return Features(features)


def judge_columns(prefixes: Iterable[str], *, provenance: bool) -> list[str]:
    """A judge's columns per judged response: its rationale, model and prompt, and with
    ``provenance`` its error and raw output too (see :class:`ScoreWithJudge`)."""
    suffixes = (
        ("rationale", "error", "raw", "model", "prompt")
        if provenance
        else ("rationale", "model", "prompt")
    )
    return [f"{prefix}_{suffix}" for prefix in prefixes for suffix in suffixes]


class SelectPreferencePairs(PublishConfig):
    """Publishes the kept pairs as ``rdpo`` (with ``tau``) or ``dpo`` (``with_tau=False``).

    ``prompt`` becomes the conversational prompt (system + user), as TRL expects; the
    seed's plain text prompt stays in the ``all`` config. The ``dpo`` view holds the
    same pairs with hard labels, for the paper's DPO baseline.
    """

    input_columns: ClassVar[tuple[str, ...]] = (
        "prompt_messages", "chosen", "rejected", "tau", "kept",
    )  # fmt: skip

    with_tau: bool = True
    judge_prefixes: list[str] = Field(
        default_factory=list, description="judge column prefixes, when judged"
    )

    @property
    def outputs(self) -> "StepColumns":
        columns = [c for c in RDPO_COLUMNS if self.with_tau or c not in TAU_COLUMNS]
        return [*columns, *judge_columns(self.judge_prefixes, provenance=False)]

    def features(self) -> "Features":
        return config_features(self.outputs, chats=["prompt"])

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        columns = self.outputs
        yield [
            {**{c: row.get(c) for c in columns}, "prompt": row["prompt_messages"]}
            for row in inputs
            if row.get("kept")
        ]


class SelectSFTMessages(PublishConfig):
    """Publishes the kept pairs as SFT conversations (prompt + chosen): ``sft``.

    This is the paper's SFT baseline (fine-tuning on the revised responses), in the
    ``messages`` format ``synthalign train sft`` reads with no column mapping.
    """

    input_columns: ClassVar[tuple[str, ...]] = ("prompt_messages", "chosen", "kept")
    output_columns: ClassVar[tuple[str, ...]] = SFT_COLUMNS

    def features(self) -> "Features":
        return config_features(SFT_COLUMNS)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield [
            {
                **{c: row.get(c) for c in SFT_COLUMNS},
                "messages": [*row["prompt_messages"], *row["chosen"]],
            }
            for row in inputs
            if row.get("kept")
        ]


DSC_COLUMNS: tuple[str, ...] = (
    "messages", "principle", "tau", "score_original", "score_revised", "revision_model",
    "revision_prompt",
)  # fmt: skip


class SelectDSCMessages(PublishConfig):
    """Publishes ``dsc``: the rDPO paper's distilled self-critique baseline, SFT on the
    revisions the scorer prefers to their originals (``score_revised >
    score_original``), as ``messages`` (prompt + revision) for ``synthalign train sft``."""

    input_columns: ClassVar[tuple[str, ...]] = (
        "prompt_messages", "response_revised", "score_original", "score_revised", "kept",
    )  # fmt: skip
    output_columns: ClassVar[tuple[str, ...]] = DSC_COLUMNS

    def features(self) -> "Features":
        return config_features(DSC_COLUMNS)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        yield [
            {
                **{c: row.get(c) for c in DSC_COLUMNS},
                "messages": [
                    *row["prompt_messages"],
                    {"role": "assistant", "content": row["response_revised"]},
                ],
            }
            for row in inputs
            if row.get("kept") and float(row["score_revised"]) > float(row["score_original"])
        ]


class SelectAllRows(PublishConfig):
    """Publishes every row, failures included, with its drop columns: ``all``, the
    config the card's funnel counts and the place to read failed rows' raw outputs."""

    input_columns: ClassVar[tuple[str, ...]] = ("kept", "drop_stage", "drop_reason")

    system_column: str | None = Field(
        default=None, description="the seeds' system column, when they have one"
    )
    judge_prefixes: list[str] = Field(
        default_factory=list, description="judge column prefixes, when judged"
    )

    @property
    def outputs(self) -> "StepColumns":
        turns = [c for prefix, column, _ in TURNS for c in (column, *provenance_columns(prefix))]
        scoring = (
            judge_columns(self.judge_prefixes, provenance=True)
            if self.judge_prefixes
            else ["scoring_error"]
        )
        return [
            "prompt",
            *([self.system_column] if self.system_column else []),
            "principle",
            "principle_text",
            *turns,
            "clean_error",
            "clean_changed",
            "score_original",
            "score_revised",
            "scorer",
            *scoring,
            *PAIR_COLUMNS,
            "tau_t1",
            "tau_temperature",
            "tau_calibration",
            "generation",
            "kept",
            "drop_stage",
            "drop_reason",
            "drop_detail",
            *CONTAMINATION_COLUMNS,
        ]

    def features(self) -> "Features":
        return config_features(self.outputs)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        columns = self.outputs
        yield [{c: row.get(c) for c in columns} for row in inputs]
