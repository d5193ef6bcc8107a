"""Scoring responses, and turning two scores into a soft preference label.

rDPO (and SynPO's filters) need a number per response from something stronger than
the generator: a sequence-classification reward model or an LLM judge. Two scores of
a pair become the preference probability ``tau = sigmoid((s_chosen - s_rejected) / T)``
that the rDPO loss uses as a per-example soft label.

Names here are shared with other methods; keep them stable:

- :func:`preference_probability`: the score -> tau map (clip and tie policies);
  :func:`calibrated_temperature` (T from a run's own score gaps) and
  :func:`coarse_tau` (a binary or three-level judge's map, which does not tie).
- :class:`RewardModelScorer`: a plain reward-model wrapper whose batched scores
  equal its one-at-a-time scores (padding side chosen by probing the model).
- :class:`ScoreWithRewardModel`: a distilabel step scoring response columns with it
  (:meth:`ScoreWithRewardModel.from_reward_model` builds it from a recipe's shared
  ``reward_model`` block).
- :class:`ScoreWithJudge`: an LLM judge with a rubric and a declared integer scale,
  its score read from a schema-forced field, never scraped from text.
- :class:`ScoreResponses`: what both scorers share (which columns they read and write).
- :data:`JUDGE_SCALES`, :class:`JudgeVerdict`, :func:`as_conversation`.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from distilabel.steps import Step, StepInput
from pydantic import BaseModel, Field, PrivateAttr

from synthalign.errors import BackendError
from synthalign.models import resolve_model
from synthalign.parsing import parse_model
from synthalign.recipes import RewardModel
from synthalign.steps.base import SchemaTask, provenance_columns
from synthalign.steps.prompts import template_id

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, StepColumns, StepOutput

Chat = list[dict[str, str]]

__all__ = [
    "JUDGE_SCALES",
    "JudgeVerdict",
    "RewardModelScorer",
    "ScoreResponses",
    "ScoreWithJudge",
    "ScoreWithRewardModel",
    "as_conversation",
    "calibrated_temperature",
    "coarse_tau",
    "preference_probability",
]


# --------------------------------------------------------------------------- tau


def preference_probability(
    score_chosen: float | None,
    score_rejected: float | None,
    temperature: float = 1.0,
    clip: tuple[float, float] = (0.0, 1.0),
    tie: Literal["keep", "drop"] = "keep",
) -> float | None:
    """Probability that ``chosen`` is the better response: ``sigmoid((s_c - s_r) / T)``.

    This is the Bradley-Terry reading of two reward scores, which is how rDPO turns an
    external scorer into the soft label ``tau`` of its loss. ``temperature`` rescales
    the score difference: judge scales are coarse integers (a 0/1 safety verdict gives
    differences of only -1, 0, 1), so a temperature below 1 sharpens them. ``clip``
    bounds tau away from 0 and 1 when a scorer's confidence should not be trusted
    fully (``(0.05, 0.95)`` keeps every pair slightly soft). ``tie="drop"`` returns
    None when the scores are equal (no preference signal; the caller drops the pair),
    ``"keep"`` gives 0.5 (clipped), which pulls the two log-ratios together.

    Returns None when either score is missing or not finite, so a failed scoring
    call never becomes a made-up label.
    """
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    lo, hi = clip
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"clip must satisfy 0 <= lo <= hi <= 1, got {clip}")
    if tie not in ("keep", "drop"):
        raise ValueError(f"tie must be 'keep' or 'drop', got {tie!r}")
    if score_chosen is None or score_rejected is None:
        return None
    s_c, s_r = float(score_chosen), float(score_rejected)
    if not (math.isfinite(s_c) and math.isfinite(s_r)):
        return None
    if s_c == s_r and tie == "drop":
        return None
    z = (s_c - s_r) / temperature
    # numerically stable logistic for large |z|
    tau = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return min(max(tau, lo), hi)


def calibrated_temperature(gaps: Sequence[float | None]) -> float:
    """The T that makes ``sigmoid(gap / T)`` use its range on this run's score gaps.

    T is the population standard deviation of the finite gaps (``s_revised -
    s_original`` of every kept pair). A reward model's raw scale is arbitrary:
    ArmoRM-style gaps of a few hundredths give tau 0.50-0.53 with T = 1, which leaves
    the rDPO loss almost no gradient. Dividing by the gaps' own spread makes tau
    invariant to shifting every score by a constant (gaps unchanged) or scaling every
    score by c > 0 (gaps and T both times c), and spreads it over most of (0, 1)
    whatever the scorer's units. Gaps without spread fall back to their mean absolute
    value (every pair equally sure: tau = sigmoid(+-1)); no gaps or all-zero gaps to 1.0.
    """
    finite = [float(g) for g in gaps if g is not None and math.isfinite(float(g))]
    if not finite:
        return 1.0
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((g - mean) ** 2 for g in finite) / len(finite))
    if len(finite) >= 2 and std > 1e-9 * max(abs(g) for g in finite):
        return std
    return abs(mean) if mean != 0 else 1.0


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def coarse_tau(steps: float, tie_tau: float = 0.6, step_tau: float = 0.9) -> float:
    """tau of a pair scored on a binary or three-level judge scale, ``steps`` levels apart.

    On such a scale most pairs tie (a 0/1 judge calls both responses safe), and
    ``sigmoid(0) = 0.5`` would make every tie a pair with no preference at all. A tie is
    absence of evidence, not evidence of equality: the revision was written to follow the
    principle, so a tie keeps that prior, ``tie_tau``. Each level the revision gains
    (loses) moves the log-odds by ``logit(step_tau) - logit(tie_tau)``: with the
    defaults, a tie gives 0.6, one level up 0.9, one down 0.2, two up 0.98, two down 0.04.
    """
    if not (0.0 < tie_tau < 1.0 and 0.0 < step_tau < 1.0):
        raise ValueError("tie_tau and step_tau must lie strictly between 0 and 1")
    z = _logit(tie_tau) + steps * (_logit(step_tau) - _logit(tie_tau))
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


# --------------------------------------------------------------- reward models


def as_conversation(prompt: str | Chat, response: str, system: str | None = None) -> Chat:
    """A ``[system?, user..., assistant]`` chat from a prompt (text or chat) and a response."""
    if isinstance(prompt, str):
        messages: Chat = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return [*messages, {"role": "assistant", "content": response}]


_PROBE = [
    [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}],
    [
        {
            "role": "user",
            "content": "Explain, in a few sentences, why the sky looks blue in daytime. " * 4,
        },
        {
            "role": "assistant",
            "content": "Sunlight scatters off air molecules; shorter wavelengths scatter more. "
            * 4,
        },
    ],
]


class RewardModelScorer:
    """A transformers sequence-classification reward model that scores chats.

    The model's own chat template formats each (prompt, response) conversation, as
    the reward model was trained on that format. Batches are padded so that a row's
    score does not depend on its neighbours: how a classification head pools (the
    last non-pad token, the token before the first pad, or simply position -1) and
    whether positions are absolute differs between models, so on load the scorer
    *probes* the model: it scores a short and a long chat alone and together, with
    right then left padding, and keeps the first side that reproduces the solo
    scores (``padding_side="auto"``). If neither does, it scores one row at a time.

    Args:
        model: a path, Hub id, or built-in spec (``builtin:tiny-reward``).
        batch_size: rows per forward pass (rows are sorted by length first).
        device: torch device; default CUDA when available.
        torch_dtype: ``"auto"``, ``"float32"``, ``"bfloat16"``...
        padding_side: ``"auto"`` (probe), ``"left"`` or ``"right"``.
        max_length: truncate longer inputs from the left (keeps the response end,
            where the score is pooled); None means no truncation.
        output_index: which logit is the reward when the head has several.
        trust_remote_code: for custom reward models (e.g. ArmoRM).
    """

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        device: str | None = None,
        torch_dtype: str = "float32",
        padding_side: Literal["auto", "left", "right"] = "auto",
        max_length: int | None = None,
        output_index: int = 0,
        trust_remote_code: bool = False,
    ) -> None:
        import torch  # heavy: torch
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )  # heavy: transformers

        self.model_id = model
        self.batch_size = max(1, batch_size)
        self.max_length = max_length
        self.output_index = output_index
        path = resolve_model(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch_dtype if torch_dtype == "auto" else getattr(torch, torch_dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.chat_template is None:
            raise BackendError(
                f"reward model {model} has no chat template: "
                "use a reward model whose tokenizer defines one"
            )
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            # heads that find the last token through pad ids need one to batch at all
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.pad_id: int = self.model.config.pad_token_id
        self.padding_side: str | None = (
            padding_side if padding_side != "auto" else self._probe_padding_side()
        )

    # -- tokenization and forward ------------------------------------------------

    def encode(self, conversation: Chat) -> list[int]:
        """Token ids for one chat, exactly as the reward model was trained to see it."""
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[-self.max_length :]
        return ids

    def _forward(self, batch: list[list[int]], side: str) -> list[float]:
        import torch  # heavy: torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            span = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
            input_ids[i, span] = torch.tensor(ids, dtype=torch.long)
            attention[i, span] = 1
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
            )
        scores = getattr(out, "score", None)  # ArmoRM-style heads expose a preference score
        if scores is None:
            scores = out.logits[:, self.output_index]
        return [float(s) for s in scores.reshape(len(batch), -1)[:, 0].float().cpu()]

    def _probe_padding_side(self) -> str | None:
        encoded = [self.encode(c) for c in _PROBE]
        solo = [self._forward([ids], "right")[0] for ids in encoded]
        for side in ("right", "left"):
            together = self._forward(encoded, side)
            if all(
                abs(a - b) <= 1e-4 * max(1.0, abs(a)) for a, b in zip(solo, together, strict=True)
            ):
                return side
        return None  # the model cannot batch reproducibly: score one row at a time

    def score(self, conversations: list[Chat]) -> list[float]:
        """One reward per conversation (each ends with the assistant response)."""
        encoded = [self.encode(c) for c in conversations]
        scores: list[float] = [0.0] * len(encoded)
        side = self.padding_side or "right"
        step = self.batch_size if self.padding_side else 1
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            for i, s in zip(chunk, self._forward([encoded[i] for i in chunk], side), strict=True):
                scores[i] = s
        return scores


def _default_score_column(response_column: str) -> str:
    if response_column.startswith("response"):
        return "score" + response_column[len("response") :]
    return f"{response_column}_score"


REWARD_MODEL_OPTIONS = {"torch_dtype", "padding_side", "max_length", "trust_remote_code"}
"""Reward-model settings that pass unchanged from a recipe's ``reward_model`` block to the
step and from the step to :class:`RewardModelScorer`."""


class ScoreResponses(Step):
    """What every scorer reads and writes: response columns of a row, each judged in the
    conversation it answers (the row's prompt, with its system message if any), into
    one score column per response (``response_X`` -> ``score_X`` by default)."""

    prompt_column: str = "prompt"
    system_column: str | None = Field(
        default=None, description="optional column holding a system message"
    )
    response_columns: list[str] = Field(
        default_factory=lambda: ["response_original", "response_revised"]
    )
    score_columns: list[str] | None = Field(
        default=None, description="one per response column; default response_X -> score_X"
    )

    @property
    def resolved_score_columns(self) -> list[str]:
        cols = self.score_columns or [_default_score_column(c) for c in self.response_columns]
        if len(cols) != len(self.response_columns):
            raise ValueError("score_columns must have one name per response column")
        return cols

    @property
    def inputs(self) -> "StepColumns":
        cols = [self.prompt_column, *self.response_columns]
        return [*cols, self.system_column] if self.system_column else cols

    def system(self, row: dict[str, Any]) -> str | None:
        return row.get(self.system_column) if self.system_column else None


class ScoreWithRewardModel(ScoreResponses):
    """Scores response columns of each row with a reward model.

    Each response is scored in the conversation it answers, so persona instructions
    count. Rows whose response is missing get a None score and a reason in
    ``scoring_error``; the method's filter drops them.
    """

    model: str = Field(
        default="builtin:tiny-reward", description="reward model path, Hub id or builtin spec"
    )
    scoring_batch_size: int = 8
    device: str | None = None
    torch_dtype: str = "float32"
    padding_side: Literal["auto", "left", "right"] = "auto"
    max_length: int | None = None
    trust_remote_code: bool = False

    _scorer: RewardModelScorer | None = PrivateAttr(default=None)

    @classmethod
    def from_reward_model(cls, section: RewardModel, **kwargs: Any) -> "ScoreWithRewardModel":
        """The step for a recipe's shared ``reward_model`` block; ``kwargs`` are step arguments."""
        options = section.model_dump(include=REWARD_MODEL_OPTIONS)
        return cls(model=section.model, scoring_batch_size=section.batch_size, **options, **kwargs)

    @property
    def outputs(self) -> "StepColumns":
        return [*self.resolved_score_columns, "scorer", "scoring_error"]

    def load(self) -> None:
        super().load()
        options = self.model_dump(include=REWARD_MODEL_OPTIONS)
        self._scorer = RewardModelScorer(
            self.model, batch_size=self.scoring_batch_size, device=self.device, **options
        )

    def unload(self) -> None:
        self._scorer = None
        super().unload()

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        assert self._scorer is not None, "load() was not called"
        jobs: list[tuple[int, str, Chat]] = []
        for i, row in enumerate(inputs):
            row["scorer"] = f"reward_model:{self.model}"
            row["scoring_error"] = None
            system = self.system(row)
            for response_col, score_col in zip(
                self.response_columns, self.resolved_score_columns, strict=True
            ):
                row[score_col] = None
                response = row.get(response_col)
                if not response:
                    row["scoring_error"] = f"no {response_col} to score"
                    continue
                jobs.append(
                    (i, score_col, as_conversation(row[self.prompt_column], response, system))
                )
        if jobs:
            scores = self._scorer.score([chat for _, _, chat in jobs])
            for (i, score_col, _), s in zip(jobs, scores, strict=True):
                inputs[i][score_col] = s
        yield inputs


# ----------------------------------------------------------------------- judge

JUDGE_SCALES: dict[str, tuple[int, int]] = {
    "0/1": (0, 1),
    "0-5": (0, 5),
    "-5..5": (-5, 5),
}
"""The scales the rDPO paper's public code uses: a 0/1 safety verdict, a 0-5 persona
score and a -5..5 sycophancy score (negative = the response sides with the user
against the facts)."""


class JudgeVerdict(BaseModel):
    """What the judge must return: a short rationale, then the score.

    The rationale comes first so the model decides after reasoning; the score is a
    labelled field, so a negative score or a number inside the rationale is never
    confused with the verdict.
    """

    rationale: str
    score: int


class ScoreWithJudge(ScoreResponses, SchemaTask):
    """An LLM judge scoring response columns against a rubric on a declared integer scale.

    Every response of a batch is judged in one engine call (one engine serves all
    columns, so a large judge is loaded once). The judge sees the conversation (system
    message and prompt) and the reply, and must answer with :class:`JudgeVerdict`; the
    JSON schema sent to the engine carries the scale's bounds, so a compliant engine
    cannot leave it. A score that still falls outside (a server that ignores schemas,
    an engine without range support) is recorded as an ``out of scale`` error, and a
    reply that is not the schema as a ``schema``/``not JSON`` error, in
    ``<prefix>_error``; the score stays None, so the pair is dropped and the reason
    counted, never clamped or scraped from the text.

    Columns per response column ``response_X``: ``score_X``, ``judge_X_rationale`` and
    ``judge_X_error``/``_raw``/``_model``/``_prompt``; plus ``scorer`` (``judge:MODEL``).
    """

    template: ClassVar[str] = "rdpo_judge.jinja2"
    system_template: ClassVar[str | None] = "rdpo_judge_system.jinja2"
    column_prefix: ClassVar[str] = "judge"
    output_model: ClassVar[type[BaseModel]] = JudgeVerdict

    rubric: str = Field(description="what a high score means, in the judge's words")
    scale_min: int = 0
    scale_max: int = 5
    scale_labels: str | None = Field(
        default=None, description="optional meaning of the ends of the scale, shown to the judge"
    )

    def prefix_for(self, score_column: str) -> str:
        """``score_revised`` -> ``judge_revised``: the column prefix of one judged response."""
        if score_column.startswith("score"):
            return "judge" + score_column[len("score") :]
        return f"{score_column}_judge"

    @property
    def prefixes(self) -> list[str]:
        """The column prefix of every judged response, in response-column order."""
        return [self.prefix_for(c) for c in self.resolved_score_columns]

    @property
    def outputs(self) -> "StepColumns":
        columns: list[str] = []
        for score_column in self.resolved_score_columns:
            prefix = self.prefix_for(score_column)
            columns += [score_column, f"{prefix}_rationale", *provenance_columns(prefix)]
        return [*columns, "scorer"]

    def schema(self) -> dict[str, Any]:
        """The verdict schema with this judge's scale as the score's bounds."""
        schema = JudgeVerdict.model_json_schema()
        schema["properties"]["score"].update({"minimum": self.scale_min, "maximum": self.scale_max})
        return schema

    def template_values(self, input: dict[str, Any]) -> dict[str, Any]:
        response = input.get("response") or ""
        turns = as_conversation(input.get(self.prompt_column) or "", response, self.system(input))[
            :-1
        ]
        return {
            "rubric": self.rubric,
            "scale_min": self.scale_min,
            "scale_max": self.scale_max,
            "scale_labels": self.scale_labels,
            "turns": turns,
            "response": response,
        }

    def format_input(self, input: dict[str, Any]) -> "FormattedInput":
        """A judge input for a row that carries the reply to judge under ``response``."""
        return (self.messages(input), {"format": "json", "schema": self.schema()})

    def judge_columns(
        self, score_column: str, output: str | None, error: str | None = None
    ) -> dict[str, Any]:
        """Parse one verdict into its columns; failures become an error, never a score."""
        prefix = self.prefix_for(score_column)
        columns: dict[str, Any] = {score_column: None, f"{prefix}_rationale": None}
        if error is None:
            record, error = parse_model(output, JudgeVerdict, frozenset({"rationale"}))
            if record is not None:
                columns[f"{prefix}_rationale"] = record.rationale
                if self.scale_min <= record.score <= self.scale_max:
                    columns[score_column] = record.score
                else:
                    error = (
                        f"out of scale: {record.score} not in [{self.scale_min}, {self.scale_max}]"
                    )
        return {
            **columns,
            f"{prefix}_error": error,
            f"{prefix}_raw": output if error else None,
            f"{prefix}_model": self.llm.model_name,
            f"{prefix}_prompt": template_id(self.template),
        }

    def format_output(
        self, output: str | None, input: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self.judge_columns(self.resolved_score_columns[0], output)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(row) for row in inputs]
        jobs: list[tuple[int, str, FormattedInput]] = []
        for i, row in enumerate(rows):
            row["scorer"] = f"judge:{self.llm.model_name}"
            for response_column, score_column in zip(
                self.response_columns, self.resolved_score_columns, strict=True
            ):
                response = row.get(response_column)
                if not response:
                    row.update(
                        self.judge_columns(score_column, None, f"no {response_column} to judge")
                    )
                    continue
                jobs.append((i, score_column, self.format_input({**row, "response": response})))
        if jobs:
            outputs = self.llm.generate_outputs(
                inputs=[job[2] for job in jobs],
                num_generations=1,
                **(self.llm.get_generation_kwargs() or {}),
            )
            for (i, score_column, _), out in zip(jobs, outputs, strict=True):
                generations = out.get("generations") or [None]
                rows[i].update(self.judge_columns(score_column, generations[0]))
        yield rows

    def impute_step_outputs(self, step_output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The engine failed for the whole batch: every judged column records it."""
        rows = []
        for row in step_output:
            data = {**row, "scorer": f"judge:{self.llm.model_name}"}
            for score_column in self.resolved_score_columns:
                data.update(
                    self.judge_columns(score_column, None, "generation failed (see pipeline log)")
                )
            rows.append(data)
        return rows
