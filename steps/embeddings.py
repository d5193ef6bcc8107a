"""Sentence embeddings as a distilabel step (GRA post-processing, section 3.5).

GRA embeds every surviving sample with all-MiniLM-L6-v2 before deduplication;
``builtin:minilm`` is that model from an offline wheel, and any sentence-transformers
model id or folder works too. Texts are encoded in batches sorted by length (so a
batch pads to similar lengths and short texts do not pay for long ones); rows that
need no embedding (e.g. samples the review rejected) pass through with ``None``, so
the model only sees the work that matters.

``backend="onnx"`` (or ``"openvino"``) runs the model through sentence-transformers'
ONNX Runtime / OpenVINO backends, often faster on CPUs than torch; they need the
``sentence-transformers[onnx]`` (``[onnx-gpu]``, ``[openvino]``) extra, and asking for
one without it fails at once with the pip command instead of deep inside a worker.
``benchmarks/embed_throughput.py`` measures each backend that is installed.
"""

# No `from __future__ import annotations`: distilabel finds the batch argument of
# `process` by its runtime `StepInput` annotation.
import importlib.util
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from distilabel.steps import Step, StepInput
from pydantic import Field, PrivateAttr

from synthalign.models import resolve_model

if TYPE_CHECKING:
    from distilabel.typing import StepColumns, StepOutput

DEFAULT_EMBEDDING_MODEL = "builtin:minilm"

Backend = Literal["torch", "onnx", "openvino"]
BACKEND_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "torch": ((), ""),
    "onnx": (("onnxruntime", "optimum"), "sentence-transformers[onnx]"),
    "openvino": (("openvino", "optimum"), "sentence-transformers[openvino]"),
}
"""Per backend: the modules sentence-transformers imports for it, and the pip extra with them."""


def check_backend(backend: str) -> None:
    """Fail with one actionable line if ``backend`` is unknown or its packages are missing.

    sentence-transformers only notices a missing ONNX Runtime when the model loads, in a
    pipeline worker, with a long traceback; checking when the step is built says which
    extra to install before any generation has run.
    """
    if backend not in BACKEND_NEEDS:
        raise ValueError(
            f"unknown embedding backend {backend!r}: use one of {', '.join(BACKEND_NEEDS)}"
        )
    modules, extra = BACKEND_NEEDS[backend]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"embedding backend {backend!r} needs {' and '.join(missing)}: pip install '{extra}'"
        )


def load_sentence_model(model: str, device: str | None = None, backend: str = "torch") -> Any:
    """A SentenceTransformer for ``model`` (``builtin:minilm``, a folder or a Hub id).

    ``backend``: ``torch`` (default), ``onnx`` or ``openvino`` (see :func:`check_backend`).
    """
    check_backend(backend)
    from sentence_transformers import SentenceTransformer  # heavy: torch, only where a step embeds

    return SentenceTransformer(resolve_model(model), device=device, backend=backend)


def embed_texts(
    encoder: Any, texts: list[str], batch_size: int = 64, sort_by_length: bool = True
) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``, encoded in length-sorted batches.

    Sorting here (longest first) makes the batching explicit instead of relying on the
    encoder's internal order: each forward pass pads to the longest text of its batch,
    so mixing short and long texts wastes most of the work. The rows come back in the
    caller's order. ``sort_by_length=False`` keeps the caller's order in the batches
    (only to measure what sorting buys; see ``benchmarks/embed_throughput.py``).
    """
    if not texts:
        size = (
            getattr(encoder, "get_embedding_dimension", None)
            or encoder.get_sentence_embedding_dimension
        )
        dim = size() or 0
        return np.zeros((0, dim), dtype=np.float32)
    if sort_by_length:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    else:
        order = list(range(len(texts)))
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
    where: dict[str, Any] | None = Field(
        default=None, description="only embed rows with these column values"
    )
    encode_batch_size: int = Field(default=64, ge=1, description="texts per encoder forward pass")
    device: str | None = Field(
        default=None, description="torch device (default: cuda if available)"
    )
    backend: Backend = Field(
        default="torch", description="sentence-transformers backend: torch, onnx or openvino"
    )

    _encoder: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        check_backend(self.backend)  # at pipeline build time, not in the worker
        import sentence_transformers  # noqa: F401  # heavy: once in the parent, so forked workers need not

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
