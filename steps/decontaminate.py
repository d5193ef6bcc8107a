"""Decontamination: no published prompt or answer is an evaluation item in disguise.

Synthetic data drawn from a strong model's memory can reproduce benchmark questions
word for word, and a model trained on it then scores what it memorized. The step
checks every row's text against the evaluation sets of the recipe's ``decontaminate``
block in two ways:

- **word n-grams** (13 by default, the usual contamination check): a row that shares
  one n-gram with an item matches it; an item shorter than ``n`` words must appear whole
  (at least :data:`MIN_WORDS` words, so "What is 2+2" alone does not match everything);
- **embeddings** (MiniLM, cosine >= ``embedding_threshold``): a paraphrase of an item.

A match records the set, the item's index and text, how it matched and the score.
With ``action: drop`` the row leaves (``drop_stage`` ``decontaminate``, ``drop_reason``
``contaminated: SET``); with ``flag`` it is published with the match recorded. The card
counts matches per set (:mod:`synthalign.cards.decontamination`).
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from distilabel.steps import Step, StepInput
from pydantic import Field, PrivateAttr

from synthalign.errors import RecipeError
from synthalign.recipes import Decontaminate, EvalSet
from synthalign.steps.embeddings import embed_texts, load_sentence_model
from synthalign.steps.publish import dropped
from synthalign.steps.seeds import SeedDataError, read_seed_rows

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

__all__ = [
    "CONTAMINATION_COLUMNS",
    "DecontaminateRows",
    "EvalIndex",
    "load_eval_items",
    "row_text",
]

MIN_WORDS = 8
"""An evaluation item shorter than the n-gram must have this many words to be matched whole."""

TEXT_COLUMNS: tuple[str, ...] = ("prompt", "question", "instruction", "problem", "text", "input")
"""Where an evaluation set's text is when its spec names no column."""

CONTAMINATION_COLUMNS: tuple[str, ...] = (
    "contamination",
    "contamination_kind",
    "contamination_item",
    "contamination_score",
)
"""What the step adds to every row: the matched set (``None`` if clean), ``ngram`` or
``embedding``, the matched item's text, and the score (n-gram: 1.0; embedding: cosine)."""

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def row_text(value: Any) -> str:
    """A column's text: a string, or the contents of a chat (list of ``{role, content}``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(
            str(m.get("content") or "") if isinstance(m, dict) else str(m) for m in value
        )
    return ""


def load_eval_items(spec: EvalSet) -> list[str]:
    """The texts of one evaluation set; one line naming the fix when it cannot be read."""
    try:
        rows = read_seed_rows(spec.source, split=spec.split, config=spec.config)
    except SeedDataError as exc:
        raise RecipeError(f"decontaminate.against {spec.name}: {exc}") from None
    column = spec.column or next((c for c in TEXT_COLUMNS if c in rows[0]), None)
    if column is None or column not in rows[0]:
        raise RecipeError(
            f"decontaminate.against {spec.name}: no text column "
            f"{spec.column or ' / '.join(TEXT_COLUMNS)}; it has {sorted(rows[0])}:"
            " write SOURCE:split:column"
        )
    return [text for row in rows if (text := row_text(row.get(column)).strip())]


@dataclass
class EvalIndex:
    """Every n-gram of every evaluation item, by length, pointing at ``(set, item)``."""

    n: int
    sets: list[str] = field(default_factory=list)
    items: list[list[str]] = field(default_factory=list)
    grams: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)

    def add(self, name: str, texts: list[str]) -> None:
        s = len(self.sets)
        self.sets.append(name)
        self.items.append(texts)
        for i, text in enumerate(texts):
            tokens = words(text)
            if len(tokens) < min(self.n, MIN_WORDS):
                continue
            size = min(self.n, len(tokens))
            table = self.grams.setdefault(size, {})
            for gram in _ngrams(tokens, size):
                table.setdefault(gram, (s, i))

    def match(self, text: str) -> tuple[int, int] | None:
        """The first ``(set, item)`` sharing an n-gram with ``text``, or None."""
        tokens = words(text)
        for size, table in self.grams.items():
            for gram in _ngrams(tokens, size):
                hit = table.get(gram)
                if hit is not None:
                    return hit
        return None


def _ngrams(tokens: list[str], size: int) -> Iterable[str]:
    return (" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1))


class DecontaminateRows(Step):
    """Match each row's ``columns`` against the evaluation sets; drop or flag matches.

    Rows already out (``kept`` False) are checked too (the card counts every match) but
    their drop columns stay as they were. With ``set_drop`` (methods whose rows carry
    the drop columns while in play) a matching kept row is dropped here; other methods
    read ``contamination`` in their publishing step.
    """

    columns: list[str] = Field(min_length=1, description="text columns to check")
    against: list[EvalSet] = Field(min_length=1)
    ngram: int = 13
    embedding_threshold: float | None = 0.9
    action: Literal["drop", "flag"] = "drop"
    model: str = "builtin:minilm"
    encode_batch_size: int = 64
    set_drop: bool = False

    _index: EvalIndex | None = PrivateAttr(default=None)
    _encoder: Any = PrivateAttr(default=None)
    _item_vectors: list[np.ndarray] = PrivateAttr(default_factory=list)

    @classmethod
    def from_recipe(
        cls, block: Decontaminate, columns: list[str], **kwargs: Any
    ) -> "DecontaminateRows":
        return cls(
            columns=columns,
            against=block.against,
            ngram=block.ngram,
            embedding_threshold=block.embedding_threshold,
            action=block.action,
            model=block.model,
            encode_batch_size=block.batch_size,
            **kwargs,
        )

    @property
    def inputs(self) -> "StepColumns":
        return {c: False for c in self.columns}

    @property
    def outputs(self) -> "StepColumns":
        extra = ["kept", "drop_stage", "drop_reason"] if self.set_drop else []
        return [*CONTAMINATION_COLUMNS, *extra]

    def load(self) -> None:
        super().load()
        index = EvalIndex(self.ngram)
        for spec in self.against:
            index.add(spec.name, load_eval_items(spec))
        self._index = index
        if self.embedding_threshold is not None:
            self._encoder = load_sentence_model(self.model)
            self._item_vectors = [
                embed_texts(self._encoder, texts, self.encode_batch_size) for texts in index.items
            ]

    def unload(self) -> None:
        self._encoder = None
        super().unload()

    def _nearest(self, texts: list[str]) -> list[tuple[int, int, float] | None]:
        """Per text, the most similar item over all sets if it reaches the threshold."""
        if self._encoder is None or self.embedding_threshold is None or not texts:
            return [None] * len(texts)
        vectors = embed_texts(self._encoder, texts, self.encode_batch_size)
        best: list[tuple[int, int, float] | None] = [None] * len(texts)
        for s, items in enumerate(self._item_vectors):
            if not len(items):
                continue
            sims = vectors @ items.T
            for t, i in enumerate(sims.argmax(axis=1)):
                score = float(sims[t, i])
                current = best[t]
                if score >= self.embedding_threshold and (current is None or score > current[2]):
                    best[t] = (s, int(i), score)
        return best

    def _verdicts(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._index is not None, "call load() first"
        index = self._index
        texts = [[row_text(row.get(c)) for c in self.columns] for row in rows]
        flat = [t for per_row in texts for t in per_row if t.strip()]
        nearest = iter(self._nearest(flat))
        verdicts = []
        for per_row in texts:
            found: dict[str, Any] = dict.fromkeys(CONTAMINATION_COLUMNS)
            for text in per_row:
                if not text.strip():
                    continue
                close = next(nearest)
                hit = index.match(text)
                if found["contamination"] is not None:
                    continue
                if hit is not None:
                    found.update(_found(index, hit, "ngram", 1.0))
                elif close is not None:
                    found.update(_found(index, close[:2], "embedding", close[2]))
            verdicts.append(found)
        return verdicts

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        out = []
        for row, found in zip(inputs, self._verdicts(inputs), strict=True):
            row = {**row, **found}
            if self.set_drop and found["contamination"] and self.action == "drop":
                if row.get("kept", True) is not False:
                    row.update(dropped("decontaminate", f"contaminated: {found['contamination']}"))
            elif self.set_drop:
                row.setdefault("kept", True)
                row.setdefault("drop_stage", None)
                row.setdefault("drop_reason", None)
            out.append(row)
        yield out


def _found(index: EvalIndex, hit: tuple[int, int], kind: str, score: float) -> dict[str, Any]:
    s, i = hit
    return {
        "contamination": index.sets[s],
        "contamination_kind": kind,
        "contamination_item": index.items[s][i][:300],
        "contamination_score": round(score, 4),
    }
