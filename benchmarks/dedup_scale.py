"""Exact greedy semantic dedup at scale: ours vs brute force, a one-at-a-time loop and faiss.

For each size, on the same vectors (read back memory-mapped from a ``.npy`` file, as a
large run would hold them), one run prints:

* **ours**: ``greedy_semantic_dedup`` (exact; strategy chosen from the data);
* **blocked**: the same greedy rule by blocked brute force (float32 BLAS against the
  whole kept pool, ``method="blocked"``); also exact, so the two masks must agree;
* **loop** (20K only): the definition written one row at a time (a float32 dot
  product of each row with the kept pool so far);
* **faiss**: ``IndexFlatIP`` k=1 search of every row against all rows, i.e. the
  all-pairs work any exact method that does not prune must do;
* rows kept, rows that differ from brute force, the share of pairs pruning skipped,
  and the ratios.

Data: synthetic unit vectors (384-d, like all-MiniLM-L6-v2) with topic clusters whose
members sit at cosine ~0.5 from each other, plus planted near-duplicates of earlier
rows at cosine uniform in [0.90, 0.99]; and real all-MiniLM-L6-v2 embeddings
(``builtin:minilm``) of generated instruction-like sentences, whose template
paraphrases are the near-duplicates. At 1M rows, brute force and faiss would take
hours on a 2-core machine: they are estimated from their measured rate at the largest
smaller size (marked ``est.``).

    python benchmarks/dedup_scale.py                 # 20K and 100K + real text (a few minutes)
    python benchmarks/dedup_scale.py --full          # adds 1M
    python benchmarks/dedup_scale.py --sizes 20000 --real 0
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from synthalign.steps.dedup import greedy_semantic_dedup_details

T = TypeVar("T")
DIM = 384
THRESHOLD = 0.9


def synthetic(
    n: int, seed: int = 0, dim: int = DIM, topics: int | None = None, dup_share: float = 0.2
) -> np.ndarray:
    """``n`` unit vectors: ``topics`` clusters (default ``sqrt(n)``: more data, more topics,
    and more rows a topic) plus planted near-duplicates (cos 0.90-0.99).

    A topic member is its topic centre plus Gaussian noise of the same norm scale, so
    two members of a topic are at cosine ~0.5 and members of different topics ~0; a
    planted duplicate is ``c * x + sqrt(1 - c^2) * z`` for an earlier row ``x``, ``z`` a
    random unit vector orthogonal to it, and ``c`` uniform in [0.90, 0.99]. Generated in
    chunks of float32 so that 1M rows need no more than their own 1.5 GiB.
    """
    rng = np.random.default_rng(seed)
    topics = topics or max(1, round(np.sqrt(n)))
    centres = rng.normal(size=(topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        noise = rng.normal(size=(m, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
        x = centres[rng.integers(0, topics, m)] + noise
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    dups = np.flatnonzero(rng.random(n) < dup_share)
    dups = dups[dups > 0]
    for start in range(0, len(dups), 65536):
        rows = dups[start : start + 65536]
        src = out[(rng.random(len(rows)) * rows).astype(np.int64)].astype(np.float64)
        z = rng.normal(size=src.shape)
        z -= np.einsum("ij,ij->i", z, src)[:, None] * src
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        c = rng.uniform(0.90, 0.99, size=(len(rows), 1))
        out[rows] = (c * src + np.sqrt(1 - c * c) * z).astype(np.float32)
    return out


SUBJECTS = [
    "photosynthesis",
    "the French Revolution",
    "compound interest",
    "black holes",
    "vaccines",
    "the water cycle",
    "machine learning",
    "plate tectonics",
    "the stock market",
    "climate change",
    "the Roman Empire",
    "sourdough bread",
    "electric cars",
    "sleep hygiene",
    "quantum computing",
    "the human heart",
    "recycling plastic",
    "jazz music",
    "volcanoes",
    "the immune system",
    "binary search",
    "supply and demand",
    "honey bees",
    "solar panels",
    "the printing press",
    "meditation",
    "coral reefs",
    "inflation",
    "the Silk Road",
    "public speaking",
]
ASPECTS = [
    "to a ten-year-old",
    "in three sentences",
    "for a job interview",
    "with an everyday analogy",
    "step by step",
    "and its main risks",
    "and common misconceptions",
    "for a beginner",
    "with one concrete example",
    "and why it matters today",
    "in the style of a news report",
    "as a short poem",
    "and list two open questions",
    "compared with its alternatives",
]
TEMPLATES = [
    "Explain {s} {a}.",
    "Can you explain {s} {a}?",
    "Please describe {s} {a}.",
    "Describe {s} {a}, please.",
    "I'd like to understand {s} {a}.",
    "Write an explanation of {s} {a}.",
    "Help me understand {s} {a}.",
    "Give an overview of {s} {a}.",
    "What is {s}? Answer {a}.",
    "Teach me about {s} {a}.",
    "Summarize what you know about {s} {a}.",
    "Tell me about {s} {a}.",
]


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` instruction-like sentences; template variants of one (subject, aspect) are
    the paraphrases a generator produces, and become the near-duplicates."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(TEMPLATES, SUBJECTS, ASPECTS))
    pick = rng.choice(len(combos), size=min(n, len(combos)), replace=False)
    return [combos[i][0].format(s=combos[i][1], a=combos[i][2]) for i in pick]


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """``fn(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def loop_dedup(x: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """The definition, one row at a time: a float32 dot product with every kept row so far."""
    kept = np.empty_like(x)
    n_kept = 0
    keep = np.zeros(len(x), dtype=bool)
    for i in order:
        if n_kept and float((kept[:n_kept] @ x[i]).max()) >= threshold:
            continue
        kept[n_kept] = x[i]
        n_kept += 1
        keep[i] = True
    return keep


def faiss_k1(x: np.ndarray, queries: int | None = None) -> tuple[float, int]:
    """Seconds for an IndexFlatIP k=1 search of ``queries`` rows (default all) against all rows."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    start = time.perf_counter()
    index.add(np.ascontiguousarray(x))
    q = len(x) if queries is None else min(queries, len(x))
    index.search(np.ascontiguousarray(x[:q]), 1)
    return time.perf_counter() - start, q


def fmt_s(seconds: float, estimated: bool = False) -> str:
    text = f"{seconds:8.1f}s" if seconds >= 10 else f"{seconds:8.2f}s"
    return text + (" est." if estimated else "")


def run_one(
    label: str,
    x: np.ndarray,
    scores: np.ndarray,
    args: argparse.Namespace,
    rates: dict[str, float],
    workdir: Path,
) -> None:
    """Time every method on ``x`` (saved and read back memory-mapped) and print one block."""
    n = len(x)
    path = workdir / f"{label}.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    del x
    print(f"\n== {label}: n={n:,} d={mm.shape[1]} threshold={args.threshold} ==", flush=True)
    cpu = time.process_time()
    ours, t_ours = timed(
        greedy_semantic_dedup_details, mm, scores, args.threshold, device=args.device
    )
    cpu = time.process_time() - cpu
    st = ours.stats
    print(
        f"ours ({st.method}, {st.device}):  {fmt_s(t_ours)}  (cpu {cpu:.1f}s)  kept {int(ours.keep.sum()):,}  "
        f"pivots {st.clusters}  pairs compared {st.pairs_compared:,} of {st.pairs_brute_force:,} "
        f"({100 * st.pruned_fraction:.2f}% pruned)",
        flush=True,
    )
    estimate = n > args.max_exhaustive
    if not estimate:
        blocked, t_blocked = timed(
            greedy_semantic_dedup_details,
            mm,
            scores,
            args.threshold,
            method="blocked",
            device=args.device,
        )
        differ = int((blocked.keep != ours.keep).sum())
        rates["blocked"] = blocked.stats.pairs_brute_force / t_blocked
        print(
            f"blocked brute force:    {fmt_s(t_blocked)}  kept {int(blocked.keep.sum()):,}  "
            f"rows differing from ours: {differ}",
            flush=True,
        )
    else:
        if "blocked" not in rates:  # no smaller size ran: measure the rate on a prefix
            part = min(n, 50_000)
            probe, t_probe = timed(
                greedy_semantic_dedup_details,
                mm[:part],
                scores[:part],
                args.threshold,
                method="blocked",
                device=args.device,
            )
            rates["blocked"] = probe.stats.pairs_brute_force / t_probe
        t_blocked = st.pairs_brute_force / rates["blocked"]
        print(
            f"blocked brute force:    {fmt_s(t_blocked, True)}  ({st.pairs_brute_force:,} pairs at the "
            f"{rates['blocked'] / 1e9:.2f} G pairs/s measured at a smaller size; not run)",
            flush=True,
        )
    x32 = np.asarray(mm, dtype=np.float32)
    if n <= args.max_loop:
        keep_loop, t_loop = timed(loop_dedup, x32, ours.order, args.threshold)
        print(
            f"one-at-a-time loop:     {fmt_s(t_loop)}  kept {int(keep_loop.sum()):,}  "
            f"rows differing from ours: {int((keep_loop != ours.keep).sum())}",
            flush=True,
        )
    else:
        t_loop = None
    if estimate:
        t_q, q = faiss_k1(x32, args.faiss_queries)
        t_faiss = t_q * n / q
        rates["faiss"] = n * q / t_q
        print(
            f"faiss IndexFlatIP k=1:  {fmt_s(t_faiss, True)}  ({q:,} of {n:,} queries timed, scaled)",
            flush=True,
        )
    else:
        t_faiss, _ = faiss_k1(x32)
        print(f"faiss IndexFlatIP k=1:  {fmt_s(t_faiss)}  (all {n:,} rows against all)", flush=True)
    ratios = [f"blocked/ours {t_blocked / t_ours:.1f}x", f"faiss/ours {t_faiss / t_ours:.1f}x"]
    if t_loop is not None:
        ratios.insert(0, f"loop/ours {t_loop / t_ours:.1f}x")
    print("ratios:                 " + "   ".join(ratios), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="20000,100000", help="comma-separated synthetic sizes")
    parser.add_argument("--full", action="store_true", help="add 1,000,000 to --sizes")
    parser.add_argument(
        "--real", type=int, default=5000, help="sentences to embed with builtin:minilm (0: skip)"
    )
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument(
        "--device", default=None, help="numpy, cpu, cuda (default: cuda if available)"
    )
    parser.add_argument(
        "--max-loop", type=int, default=20_000, help="largest size for the one-at-a-time loop"
    )
    parser.add_argument(
        "--max-exhaustive",
        type=int,
        default=200_000,
        help="above this size brute force and faiss are estimated from their measured rate",
    )
    parser.add_argument(
        "--faiss-queries", type=int, default=10_000, help="queries timed when faiss is estimated"
    )
    args = parser.parse_args()
    sizes = sorted(
        {int(s) for s in args.sizes.split(",") if s} | ({1_000_000} if args.full else set())
    )

    import faiss
    import threadpoolctl

    blas = threadpoolctl.threadpool_info()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"numpy {np.__version__} ({', '.join(sorted({b.get('internal_api', '?') for b in blas}))}), "
        f"faiss {faiss.__version__}",
        flush=True,
    )
    rates: dict[str, float] = {}
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            from synthalign.steps.embeddings import embed_texts, load_sentence_model

            texts = sentences(args.real)
            encoder = load_sentence_model("builtin:minilm", device="cpu")
            vectors, t_embed = timed(embed_texts, encoder, texts)
            print(
                f"\nembedded {len(texts):,} generated sentences with all-MiniLM-L6-v2 in {t_embed:.1f}s",
                flush=True,
            )
            run_one(
                f"minilm-{len(texts)}", vectors, rng.normal(size=len(texts)), args, rates, Path(tmp)
            )
        for n in sizes:
            x = synthetic(n, seed=n)
            run_one(f"synthetic-{n}", x, rng.normal(size=n), args, rates, Path(tmp))


if __name__ == "__main__":
    main()
