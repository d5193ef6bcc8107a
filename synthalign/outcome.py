"""Honest outcomes: a run that failed says so, in one line, and publishes nothing.

When every chat call fails (a server answering HTTP 500, a rejected key) a pipeline
still finishes: each row records its failure and is dropped, and the run used to exit
0 with an empty dataset. The driver reads the funnel of every state instead (the drop
convention of :mod:`synthalign.steps.publish`: ``kept``, ``drop_stage``,
``drop_reason``) and refuses to publish when

- the state publishes the method's default config and it came out empty, or
- more than the recipe's ``max_failed_fraction`` of the rows it considered *failed*.

A row failed when a model gave no usable output: no output at all (an engine or
server error, a prompt over the context), empty, or text that did not parse into
its schema (the reasons of :mod:`synthalign.parsing`). A row a method filtered or
rejected on purpose (a committee's reject, a dedup hit, a score gap) did not fail.
A run that passes but lost rows says how many each stage lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from synthalign.steps.publish import DROP_COLUMNS

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["FAILURE_MARKERS", "Funnel", "is_failure"]

FAILURE_MARKERS = (
    "no output",
    "empty output",
    "not JSON",
    "truncated JSON",
    "schema:",
    "exceeds the model's context",
    "generation failed",
    "step failed",
    "request failed",
)
"""Drop reasons that mean a model gave no usable output (not a method's own decision)."""


def is_failure(reason: str | None) -> bool:
    return bool(reason) and any(marker in str(reason) for marker in FAILURE_MARKERS)


@dataclass
class Funnel:
    """Rows considered, kept, lost and failed per stage, over a state's funnel configs."""

    considered: int = 0
    kept: int = 0
    lost: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def of(cls, datasets: Mapping[str, Dataset], configs: Sequence[str]) -> Funnel:
        funnel = cls()
        for name in configs:
            data = datasets.get(name)
            if data is None or not set(DROP_COLUMNS) <= set(data.column_names):
                continue
            for is_kept, stage, reason in zip(
                data["kept"], data["drop_stage"], data["drop_reason"], strict=True
            ):
                funnel.add(bool(is_kept), stage, reason)
        return funnel

    def add(self, is_kept: bool, stage: str | None, reason: str | None) -> None:
        self.considered += 1
        if is_kept:
            self.kept += 1
            return
        where = stage or "unknown"
        self.lost[where] += 1
        self.dropped[(where, reason or "unknown")] += 1
        if is_failure(reason):
            self.failed[where] += 1
            self.reasons.setdefault(where, _short(str(reason)))

    @property
    def failed_fraction(self) -> float:
        return sum(self.failed.values()) / self.considered if self.considered else 0.0

    def stages(self) -> str:
        """``question -11 (9 failed: truncated JSON ...)`` per stage that lost rows."""
        parts = []
        for stage, n in self.lost.most_common():
            failed = self.failed.get(stage, 0)
            detail = f" ({failed} failed: {self.reasons[stage]})" if failed else ""
            parts.append(f"{stage} -{n}{detail}")
        return ", ".join(parts)

    def line(self) -> str:
        """The funnel in one line: considered, per-stage losses, kept."""
        if not self.considered:
            return "no rows considered"
        lost = f", {self.stages()}" if self.lost else ""
        return f"{self.considered} considered{lost}, {self.kept} kept"


def _short(reason: str, limit: int = 90) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
