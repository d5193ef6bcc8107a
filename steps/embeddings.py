"""Sentence embeddings as a distilabel step (GRA post-processing, section 3.5).

GRA embeds every surviving sample with all-MiniLM-L6-v2 before deduplication;
``builtin:minilm`` is that model from an offline wheel, and any sentence-transformers
model id or folder works too. Texts are encoded in batches sorted by length (so a
batch pads to similar lengths and short texts do not pay for long ones); rows that
need no embedding (e.g. samples the review rejected) pass through with ``None``, so
the model only sees the work that matters.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
from typing import TYPE_CHECKING, Any

import numpy as np
from distilabel.steps import Step, StepInput
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

DEFAULT_EMBEDDING_MODEL = "builtin:minilm"


def load_sentence_model(model: str, device: str | None = None, backend: str = "torch") -> Any:
    """A SentenceTransformer for ``model`` (``builtin:minilm``, a folder or a Hub id)."""
    from sentence_transformers import SentenceTransformer

    from synthalign.models import resolve_model

    return SentenceTransformer(resolve_model(model), device=device, backend=backend)


def embed_texts(encoder: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``, encoded in length-sorted batches.

    Sorting here (longest first) makes the batching explicit instead of relying on the
    encoder's internal order, and the rows come back in the caller's order.
    """
    if not texts:
        size = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        dim = size() or 0
        return np.zeros((0, dim), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        vectors = encoder.encode(
            [texts[i] for i in chunk],
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[chunk] = vectors
    assert out is not None
    return out


class EmbedTexts(Step):
    """Embed the text of each row (its ``text_columns`` joined by blank lines).

    ``where`` restricts the work to rows whose columns equal the given values; other
    rows get ``None``. The vector is stored as a list of floats in ``output_column``.
    """

    model: str = Field(default=DEFAULT_EMBEDDING_MODEL, description="sentence-transformers model")
    text_columns: list[str] = Field(default_factory=lambda: ["instruction", "response"])
    output_column: str = "embedding"
    where: dict[str, Any] | None = Field(default=None, description="only embed rows with these column values")
    encode_batch_size: int = Field(default=64, ge=1, description="texts per encoder forward pass")
    device: str | None = Field(default=None, description="torch device (default: cuda if available)")
    backend: str = Field(default="torch", description="sentence-transformers backend: torch, onnx or openvino")

    _encoder: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        # imported once in the parent process, so the forked step worker need not
        import sentence_transformers  # noqa: F401

    @property
    def inputs(self) -> "StepColumns":
        return list(self.text_columns)

    @property
    def outputs(self) -> "StepColumns":
        return [self.output_column]

    def load(self) -> None:
        super().load()
        self._encoder = load_sentence_model(self.model, self.device, self.backend)

    def unload(self) -> None:
        self._encoder = None

    def _selected(self, row: dict[str, Any]) -> bool:
        if self.where and any(row.get(k) != v for k, v in self.where.items()):
            return False
        return all(isinstance(row.get(c), str) for c in self.text_columns)

    def process(self, inputs: StepInput) -> "StepOutput":  # type: ignore[override]
        rows = [dict(row) for row in inputs]
        chosen = [i for i, row in enumerate(rows) if self._selected(row)]
        texts = ["\n\n".join(rows[i][c] for c in self.text_columns) for i in chosen]
        vectors = embed_texts(self._encoder, texts, self.encode_batch_size)
        for row in rows:
            row[self.output_column] = None
        for i, vector in zip(chosen, vectors, strict=True):
            rows[i][self.output_column] = vector.tolist()
        yield rows
