"""Embedding throughput of the dedup step: sentences/s per backend, and what sorting buys.

On the same texts (instruction-like sentences plus responses of 10-250 words, the mix
GRA embeds), one run prints:

* sentences/s of ``embed_texts`` with the default torch backend, length-sorted batches
  (what ``EmbedTexts`` does) and in the callers' order, and their ratio;
* sentences/s of every other sentence-transformers backend that is installed (ONNX
  Runtime, OpenVINO) and its cosine agreement with torch per text (min and mean;
  target >= 0.99); a backend that is not installed is reported with its pip extra.

    python benchmarks/embed_throughput.py                 # 1,000 texts, builtin:minilm
    python benchmarks/embed_throughput.py --texts 5000 --batch-size 128 --model sentence-transformers/all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from synthalign.steps.embeddings import check_backend, embed_texts, load_sentence_model

PARAGRAPHS = (
    Path(__file__).resolve().parents[1] / "pipelines" / "recipes" / "data" / "synpo-paragraphs.txt"
)
OPENERS = [
    "Explain",
    "Summarize",
    "Describe",
    "Give three facts about",
    "Write a short note on",
    "Compare the history and the present of",
    "What should a beginner know about",
]


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of very different lengths: an instruction, then a response of 10-250
    words cut from the SynPO seed paragraphs (one in four texts is the instruction only)."""
    rng = np.random.default_rng(seed)
    words = " ".join(PARAGRAPHS.read_text().split()).split(" ")
    out = []
    for _ in range(n):
        start = int(rng.integers(0, len(words) - 300))
        topic = " ".join(words[start : start + int(rng.integers(2, 6))])
        instruction = f"{OPENERS[int(rng.integers(0, len(OPENERS)))]} {topic}."
        if rng.random() < 0.25:
            out.append(instruction)
            continue
        length = int(rng.integers(10, 250))
        out.append(instruction + "\n\n" + " ".join(words[start : start + length]))
    return out


def rate(
    encoder: object, batch: list[str], batch_size: int, sort: bool, repeats: int
) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` sentences/s (the machine is shared: the best run is the least disturbed)."""
    best = float("inf")
    vectors = np.zeros(0)
    for _ in range(repeats):
        start = time.perf_counter()
        vectors = embed_texts(encoder, batch, batch_size, sort_by_length=sort)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best, vectors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="builtin:minilm")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import torch

    batch = texts(args.texts)
    words = [len(t.split()) for t in batch]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {args.device}",
        flush=True,
    )
    print(
        f"{len(batch):,} texts, {min(words)}-{max(words)} words (median {int(np.median(words))}), "
        f"model {args.model}, batch size {args.batch_size}",
        flush=True,
    )
    encoder = load_sentence_model(args.model, device=args.device)
    embed_texts(encoder, batch[:64], args.batch_size)  # warm-up
    sorted_rate, reference = rate(encoder, batch, args.batch_size, True, args.repeats)
    unsorted_rate, unsorted_vectors = rate(encoder, batch, args.batch_size, False, args.repeats)
    agree = np.einsum("ij,ij->i", reference, unsorted_vectors)
    print(
        f"torch, length-sorted batches: {sorted_rate:8.1f} sentences/s  (the default)", flush=True
    )
    print(
        f"torch, callers' order:        {unsorted_rate:8.1f} sentences/s  "
        f"sorted/unsorted {sorted_rate / unsorted_rate:.2f}x  (cosine min {agree.min():.5f})",
        flush=True,
    )
    for backend in ("onnx", "openvino"):
        try:
            check_backend(backend)
        except ImportError as exc:
            print(f"{backend + ':':30s}  not installed here ({exc}); skipped", flush=True)
            continue
        try:
            other = load_sentence_model(args.model, device=args.device, backend=backend)
            embed_texts(other, batch[:64], args.batch_size)
            other_rate, vectors = rate(other, batch, args.batch_size, True, args.repeats)
        except Exception as exc:  # a backend that cannot run this model: report it, go on
            print(f"{backend + ':':30s}  failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        cos = np.einsum("ij,ij->i", reference, vectors)
        print(
            f"{backend + ', length-sorted:':30s}{other_rate:8.1f} sentences/s  "
            f"{other_rate / sorted_rate:.2f}x torch  cosine vs torch min {cos.min():.5f} mean {cos.mean():.5f} "
            f"({'ok' if cos.min() >= 0.99 else 'BELOW 0.99'})",
            flush=True,
        )


if __name__ == "__main__":
    main()
