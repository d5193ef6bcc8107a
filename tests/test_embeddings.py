"""The embedding step: length-sorted batches in the caller's order, backend checks up front."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from synthalign.steps import embeddings
from synthalign.steps.embeddings import EmbedTexts, check_backend, embed_texts


class RecordingEncoder:
    """Encodes a text as (length, first char code, 1) normalized; records every batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def get_sentence_embedding_dimension(self) -> int:
        return 3

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        self.batches.append(list(texts))
        x = np.array([[len(t), ord(t[0]) if t else 0, 1.0] for t in texts])
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_batches_are_sorted_by_length_and_rows_come_back_in_order() -> None:
    texts = ["a" * n for n in (3, 50, 1, 20, 7, 33, 2)]
    encoder = RecordingEncoder()
    out = embed_texts(encoder, texts, batch_size=3)
    lengths = [[len(t) for t in batch] for batch in encoder.batches]
    assert lengths == [[50, 33, 20], [7, 3, 2], [1]]
    expected = RecordingEncoder().encode(texts)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.dtype == np.float32

    unsorted = RecordingEncoder()
    np.testing.assert_allclose(
        embed_texts(unsorted, texts, batch_size=3, sort_by_length=False), out
    )
    assert [[len(t) for t in b] for b in unsorted.batches] == [[3, 50, 1], [20, 7, 33], [2]]


def test_no_texts_give_an_empty_matrix_of_the_model_dimension() -> None:
    assert embed_texts(RecordingEncoder(), []).shape == (0, 3)


def test_missing_onnx_runtime_fails_at_step_build_with_the_pip_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without_onnx(name: str, *args: Any) -> Any:
        return None if name in ("onnxruntime", "optimum") else real(name, *args)

    monkeypatch.setattr(embeddings.importlib.util, "find_spec", without_onnx)
    with pytest.raises(ImportError, match=r"pip install 'sentence-transformers\[onnx\]'"):
        check_backend("onnx")
    with pytest.raises(ImportError, match="onnxruntime and optimum"):
        EmbedTexts(name="embed", backend="onnx")
    check_backend("torch")  # needs nothing beyond sentence-transformers
    with pytest.raises(ValueError, match="unknown embedding backend"):
        check_backend("tensorrt")


@pytest.mark.slow
def test_minilm_sorted_and_unsorted_batches_agree() -> None:
    pytest.importorskip("sentence_transformers")
    texts = [
        "short",
        "a somewhat longer sentence about honey bees in cities",
        "x" * 300,
        "what is 2+2?",
    ] * 3
    encoder = embeddings.load_sentence_model("builtin:minilm", device="cpu")
    a = embed_texts(encoder, texts, batch_size=4)
    b = embed_texts(encoder, texts, batch_size=4, sort_by_length=False)
    np.testing.assert_allclose(np.einsum("ij,ij->i", a, b), 1.0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_step_embeds_only_rows_in_play_and_keeps_the_others() -> None:
    """GRA embeds candidates still in play (``kept`` None); dropped rows cost no encoding."""
    step = EmbedTexts(name="embed", text_columns=["instruction", "response"], where={"kept": None})
    step._encoder = encoder = RecordingEncoder()
    rows = [
        {"instruction": "a", "response": "bb", "kept": None},
        {"instruction": "c", "response": "dd", "kept": False},
        {"instruction": None, "response": "ee", "kept": None},  # no text: nothing to embed
    ]
    out = next(step.process(rows))
    assert encoder.batches == [["a\n\nbb"]]
    assert (
        len(out[0]["embedding"]) == 3
        and out[1]["embedding"] is None
        and out[2]["embedding"] is None
    )
    assert [r["kept"] for r in out] == [None, False, None]
