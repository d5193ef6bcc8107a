"""SynPO's published configs: which rows are kept, and the leaf step of each config.

Every config a SynPO stage folder holds is made by a leaf step here, which also
declares its schema (:class:`SynPOConfig`), so ``distilabel pipeline run --config
pipeline.yaml`` in a stage folder reproduces every config of it. Rows the method
considered but did not publish say where and why with the drop convention
(``kept``, ``drop_stage``, ``drop_reason``; :mod:`synthalign.steps.publish`):

- **improver set** (Appendix C.2): :class:`JudgeImproverRows` keeps a seed row only
  where the gold answer beats the policy's by more than the threshold;
  ``candidates`` holds every seed row, ``improver`` the SFT rows (prompt and the
  policy's answer in the improvement template -> the gold answer).
- **pairs** (Appendix C.3): :class:`SelectPairs` joins every flagged prompt with its
  scored candidate, drops pairs whose reward gap is not above the threshold or with
  too many repeated n-grams, and samples ``pairs_per_iteration`` of the rest;
  ``prompts`` holds every prompt, ``candidates`` every keyword list's row through the
  stage, ``pairs`` the sampled pairs in TRL's preference format.
- **generator set** (``generator``) and the growing **preference set**
  (``preferences``).
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import random
from typing import TYPE_CHECKING, Any, ClassVar

from distilabel.steps import GlobalStep, Step, StepInput
from pydantic import Field

from synthalign.steps.columns import FixedColumns
from synthalign.steps.prompts import render, template_id
from synthalign.steps.publish import (
    DROP_COLUMNS,
    PublishConfig,
    chat_feature,
    drop_features,
    dropped,
    kept,
)
from synthalign.steps.synpo import repeated_ngram_fraction, score_gap, score_gap_passes

if TYPE_CHECKING:
    from datasets import Features
    from distilabel.typing import StepColumns, StepOutput

__all__ = [
    "IMPROVER_STAGES",
    "PAIR_COLUMNS",
    "PAIR_STAGES",
    "GeneratorRows",
    "ImproverCandidates",
    "ImproverRows",
    "JudgeImproverRows",
    "PairCandidates",
    "PairRows",
    "PreferenceRows",
    "PromptRows",
    "SelectPairs",
    "SynPOConfig",
    "improver_fate",
    "pair_fate",
]

KEYWORDS_TEMPLATE = "synpo_keywords_to_prompt.jinja2"
IMPROVE_TEMPLATE = "synpo_improve.jinja2"

IMPROVER_STAGES: tuple[str, ...] = ("answer", "score", "score gap")
"""Where an improver-set row can leave, in pipeline order (its ``drop_stage``)."""
PAIR_STAGES: tuple[str, ...] = (
    "clean",
    "prompt",
    "answer",
    "improve",
    "score",
    "score gap",
    "repetition",
    "sample",
)
"""Where a keyword list's row can leave the pairs stage, in pipeline order (``clean``: the
generated prompt, or later a response, still carries prompt scaffolding)."""


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------ filters


def improver_fate(row: dict[str, Any], threshold: float) -> dict[str, Any]:
    """``score_gap`` and the drop columns of one seed row of the improver set."""
    gap = score_gap(row.get("score_gold"), row.get("score_policy"))
    if row.get("policy_error") or not row.get("response_policy"):
        fate = dropped("answer", "policy answer failed")
    elif gap is None:
        fate = dropped("score", "not scored")
    elif not score_gap_passes(row["score_gold"], row["score_policy"], threshold):
        fate = dropped("score gap", f"gold - policy <= {threshold}")
    else:
        fate = kept()
    return {"score_gap": gap, **fate}


def pair_fate(
    row: dict[str, Any],
    *,
    rejected_column: str,
    threshold: float,
    max_repetition: float,
    ngram: int,
) -> dict[str, Any]:
    """Score gap, repetition shares and the drop columns of one candidate pair."""
    chosen, rejected = row.get("response_improved"), row.get(rejected_column)
    gap = score_gap(row.get("score_chosen"), row.get("score_rejected"))
    rep_c, rep_r = repeated_ngram_fraction(chosen, ngram), repeated_ngram_fraction(rejected, ngram)
    rejected_error = f"{rejected_column.removeprefix('response_')}_error"
    if row.get("policy_error") or row.get(rejected_error) or not rejected:
        fate = dropped("answer", "answer failed")
    elif row.get("improver_error") or not chosen:
        fate = dropped("improve", "improvement failed")
    elif row.get("clean_error"):
        fate = dropped("clean", row["clean_error"])
    elif gap is None:
        fate = dropped("score", "not scored")
    elif not score_gap_passes(row["score_chosen"], row["score_rejected"], threshold):
        fate = dropped("score gap", f"score gap <= {threshold}")
    elif rep_c > max_repetition or rep_r > max_repetition:
        fate = dropped("repetition", f"over {max_repetition:.0%} repeated {ngram}-grams")
    else:
        fate = kept()
    return {"score_gap": gap, "repetition_chosen": rep_c, "repetition_rejected": rep_r, **fate}


class JudgeImproverRows(FixedColumns, Step):
    """Keeps a seed row where gold beats the policy's answer by more than ``threshold``."""

    input_columns: ClassVar[tuple[str, ...]] = (
        "prompt", "response", "response_policy", "score_gold", "score_policy",
    )  # fmt: skip
    output_columns: ClassVar[tuple[str, ...]] = ("score_gap", *DROP_COLUMNS)

    threshold: float = 0.02

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        for row in inputs:
            row.update(improver_fate(row, self.threshold))
        yield inputs


class SelectPairs(FixedColumns, GlobalStep):
    """Every keyword list's row with its fate: flagged prompts joined with scored pairs.

    It receives two inputs: every flagged prompt (``flag_invalid_prompts``) and the
    scored candidates of the kept ones (``score_pairs``), joined on
    ``paragraph_position``. Passing pairs are sampled (seeded by ``seed`` and
    ``iteration``); the others are dropped at stage ``sample``. Rows come out in
    keyword-list order, so the sample does not depend on batch arrival.
    """

    input_columns: ClassVar[tuple[str, ...]] = (
        "prompt", "keywords", "paragraph_position", *DROP_COLUMNS,
    )  # fmt: skip
    output_columns: ClassVar[tuple[str, ...]] = (
        "score_gap", "repetition_chosen", "repetition_rejected", *DROP_COLUMNS,
    )  # fmt: skip

    rejected_column: str = "response_policy"
    threshold: float = 0.02
    max_repetition: float = 0.5
    repetition_ngram: int = 3
    num_pairs: int = Field(default=10_000, ge=1, description="pairs sampled from those that pass")
    seed: int = 0
    iteration: int = 1

    def judge(self, row: dict[str, Any], scored: dict[int, dict[str, Any]]) -> dict[str, Any]:
        if not row.get("kept"):
            return row
        candidate = scored.get(row["paragraph_position"])
        if candidate is None:  # never reached the scorer
            return {**row, **dropped("answer", "answer failed")}
        if candidate.get("decontaminate_error"):
            return {**candidate, **dropped("decontaminate", candidate["decontaminate_error"])}
        options = {
            "threshold": self.threshold,
            "max_repetition": self.max_repetition,
            "ngram": self.repetition_ngram,
        }
        return {
            **candidate,
            **pair_fate(candidate, rejected_column=self.rejected_column, **options),
        }

    def process(self, *inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [row for batch in inputs for row in batch]
        scored = {row["paragraph_position"]: row for row in rows if "score_chosen" in row}
        prompts = sorted(
            (row for row in rows if "score_chosen" not in row),
            key=lambda row: row["paragraph_position"],
        )
        judged = [self.judge(row, scored) for row in prompts]
        passing = [row for row in judged if row["kept"]]
        rng = random.Random(f"{self.seed}:{self.iteration}:pairs")
        picked = set(rng.sample(range(len(passing)), min(self.num_pairs, len(passing))))
        for index, row in enumerate(passing):
            if index not in picked:
                row.update(dropped("sample", "not sampled"))
        yield judged


# ------------------------------------------------------------------ published configs


def _feature(kind: str) -> Any:
    from datasets import List, Value  # heavy: datasets

    kinds = {
        "text": Value("string"),
        "float": Value("float64"),
        "int": Value("int64"),
        "texts": List(Value("string")),
    }
    return chat_feature() if kind == "chat" else kinds[kind]


class SynPOConfig(PublishConfig):
    """A SynPO config: its columns and their kinds (``schema``), one row per kept input.

    ``iteration`` is stamped into every row (``None`` keeps the row's own, for the
    preference set, whose rows come from several iterations).
    """

    schema: ClassVar[dict[str, str]]
    iteration: int | None = None

    @property
    def outputs(self) -> "StepColumns":
        return list(self.schema)

    def features(self) -> "Features":
        from datasets import Features  # heavy: datasets

        drops = drop_features()
        return Features(
            {c: drops[c] if c in drops else _feature(kind) for c, kind in self.schema.items()}
        )

    def keep(self, row: dict[str, Any]) -> bool:
        return True

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        """Columns computed from the row (the rest are copied by name)."""
        return {}

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = []
        for row in inputs:
            if self.keep(row):
                out = {c: row.get(c) for c in self.schema}
                out.update(self.values(row))
                if self.iteration is not None:
                    out["iteration"] = self.iteration
                rows.append(out)
        yield rows


_DROP = {"kept": "bool", "drop_stage": "text", "drop_reason": "text"}
_GOLD_VS_POLICY = {
    "response_gold": "text",
    "response_policy": "text",
    "score_gold": "float",
    "score_policy": "float",
    "score_gap": "float",
}


class GeneratorRows(SynPOConfig):
    """``generator``: keywords in the keywords-to-prompt template -> the seed prompt (SFT)."""

    schema: ClassVar[dict[str, str]] = {
        "messages": "chat",
        "keywords": "texts",
        "prompt_keywords": "texts",
        "noise_keywords": "texts",
        "source_index": "int",
        "prompt_template": "text",
        "iteration": "int",
    }
    input_columns: ClassVar[tuple[str, ...]] = ("keywords", "completion")

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = render(KEYWORDS_TEMPLATE, keywords=list(row["keywords"]))
        return {
            "messages": _user(prompt) + _assistant(row["completion"]),
            "prompt_template": template_id(KEYWORDS_TEMPLATE),
        }


class ImproverCandidates(SynPOConfig):
    """``candidates`` of the improver set: every seed row, its scores and its fate."""

    schema: ClassVar[dict[str, str]] = {
        "prompt": "text",
        **_GOLD_VS_POLICY,
        "policy_error": "text",
        "scoring_error": "text",
        "iteration": "int",
        **_DROP,
    }
    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "response", "score_gap", *DROP_COLUMNS)

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"response_gold": row["response"]}


class ImproverRows(SynPOConfig):
    """``improver``: (prompt, policy answer) in the improvement template -> the gold answer."""

    schema: ClassVar[dict[str, str]] = {
        "messages": "chat",
        "prompt": "text",
        **_GOLD_VS_POLICY,
        "policy_model": "text",
        "scorer": "text",
        "improver_template": "text",
        "iteration": "int",
    }
    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "response", "response_policy", "kept")

    def keep(self, row: dict[str, Any]) -> bool:
        return bool(row.get("kept"))

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = render(IMPROVE_TEMPLATE, prompt=row["prompt"], response=row["response_policy"])
        return {
            "messages": _user(prompt) + _assistant(row["response"]),
            "response_gold": row["response"],
            "improver_template": template_id(IMPROVE_TEMPLATE),
        }


class PromptRows(SynPOConfig):
    """``prompts``: every generated prompt, kept or dropped at stage ``prompt`` with the reason."""

    schema: ClassVar[dict[str, str]] = {
        "keywords": "texts",
        "paragraph_index": "int",
        "paragraph_position": "int",
        "prompt": "text",
        "prompt_gen_error": "text",
        "prompt_gen_model": "text",
        "prompt_gen_prompt": "text",
        "clean_changed": "texts",
        "iteration": "int",
        **_DROP,
    }
    input_columns: ClassVar[tuple[str, ...]] = ("keywords", "prompt", *DROP_COLUMNS)


class PairCandidates(SynPOConfig):
    """``candidates`` of the pairs stage: every keyword list's row, with where it left and why."""

    schema: ClassVar[dict[str, str]] = {
        "prompt": "text",
        "keywords": "texts",
        "paragraph_index": "int",
        "paragraph_position": "int",
        "response_policy": "text",
        "response_initial": "text",
        "response_improved": "text",
        "score_chosen": "float",
        "score_rejected": "float",
        "score_gap": "float",
        "repetition_chosen": "float",
        "repetition_rejected": "float",
        "policy_error": "text",
        "initial_error": "text",
        "improver_error": "text",
        "scoring_error": "text",
        "contamination": "text",
        "contamination_kind": "text",
        "contamination_item": "text",
        "contamination_score": "float",
        "clean_error": "text",
        "clean_changed": "texts",
        "iteration": "int",
        **_DROP,
    }
    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "keywords", *DROP_COLUMNS)


PAIR_COLUMNS: dict[str, str] = {
    "prompt": "chat",
    "chosen": "chat",
    "rejected": "chat",
    "keywords": "texts",
    "paragraph_index": "int",
    "score_chosen": "float",
    "score_rejected": "float",
    "score_gap": "float",
    "repetition_chosen": "float",
    "repetition_rejected": "float",
    "rejected_from": "text",
    "generator_model": "text",
    "policy_model": "text",
    "rejected_model": "text",
    "improver_model": "text",
    "scorer": "text",
    "prompt_template": "text",
    "improver_template": "text",
    "iteration": "int",
}
"""The TRL preference format with SynPO's provenance: ``pairs`` and ``preferences``."""


class PairRows(SynPOConfig):
    """``pairs``: the sampled pairs; chosen = the improved answer, rejected = y0 or the policy's.

    ``models`` holds the LLM specs of the ``generator``, ``policy``, ``initial`` and
    ``improver`` roles, written into every pair.
    """

    schema: ClassVar[dict[str, str]] = PAIR_COLUMNS
    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "response_improved", "kept")
    rejected_column: str = "response_policy"
    rejected_from: str = "initial"
    models: dict[str, str] = Field(default_factory=dict)

    def keep(self, row: dict[str, Any]) -> bool:
        return bool(row.get("kept"))

    def values(self, row: dict[str, Any]) -> dict[str, Any]:
        rejected_role = "initial" if self.rejected_from == "initial" else "policy"
        return {
            "prompt": _user(row["prompt"]),
            "chosen": _assistant(row["response_improved"]),
            "rejected": _assistant(row[self.rejected_column]),
            "rejected_from": self.rejected_from,
            "generator_model": (
                self.models.get("generator") if row.get("keywords") else row.get("prompt_gen_model")
            ),  # a manual prompt (mix_prompts) names its file: manual:<file>
            "policy_model": self.models.get("policy"),
            "rejected_model": self.models.get(rejected_role),
            "improver_model": self.models.get("improver"),
            "prompt_template": template_id(KEYWORDS_TEMPLATE),
            "improver_template": template_id(IMPROVE_TEMPLATE),
        }


class PreferenceRows(SynPOConfig):
    """``preferences``: the pairs of every iteration so far, as they were published."""

    schema: ClassVar[dict[str, str]] = PAIR_COLUMNS
    input_columns: ClassVar[tuple[str, ...]] = ("prompt", "chosen", "rejected")
