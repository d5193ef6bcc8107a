"""Exact, score-ordered greedy semantic deduplication (GRA section 3.5).

The rule (DESIGN.md): visit rows in descending score, ties broken by the earlier row;
a row is kept iff its cosine similarity to every row kept so far, and to every
``reference`` row, is below ``threshold``. The result must equal a brute-force loop
on every input, so nothing here is approximate: every shortcut below is a proof that
some comparison cannot change the answer, never a guess.

Two exact strategies share the same float32-with-proven-margin products:

* **blocked** (``method="blocked"``; what :func:`greedy_semantic_dedup_details` uses
  by default because it also finds every kept row's nearest earlier neighbour).
  Candidates are taken in blocks of a few hundred rows in visiting order; one matrix
  product compares a block with the (chunked) kept pool, a second one with itself, and
  only rows that really conflict inside a block are resolved one after the other.
  This is brute force, O(n x kept) products, done at BLAS speed.
* **pruned** (``method="pruned"``; what :func:`greedy_semantic_dedup` uses on CPU).
  The rows are partitioned around ``k`` pivots (spherical k-means on a sample). Angles
  between unit vectors are a metric, so a row at angle ``a`` from pivot ``p`` cannot
  reach cosine ``t`` with any member of ``p``'s cluster if ``a - r > arccos(t)``, where
  ``r`` is the largest angle between ``p`` and a member. Equivalently: the cluster is
  skipped when ``cos a < cos(r + arccos t)``. One (block x k) product per block gives
  ``cos a`` for every row and pivot, and only the surviving (row, cluster) pairs are
  multiplied. On clustered data (real sentence embeddings of generated text, planted
  paraphrases) almost every pair is skipped; on structureless data nothing is, and the
  cost falls back to brute force plus the pivot products. The kept pool stores its
  vectors cluster by cluster and tracks the radius of its *kept* members, which is
  tighter than the radius of all members early in the run.

Shared by both:

* **float32 with a proven margin.** The float32 error of a dot product of two unit
  vectors of dimension ``d`` is at most about ``(d + 2) * 2**-24``
  (:func:`float32_margin`); any similarity that float32 puts within that margin of the
  threshold is recomputed in float64, so every decision is the float64 decision and a
  float64 brute-force loop agrees row for row. Pruning bounds add the same margin to
  the float32 pivot products, so a cluster is only skipped when float64 would skip it.
* **Reference rows.** A row too close to a reference row can never be kept, and a row
  that is not kept never removes anything, so reference checks never interact with the
  greedy order.
* **Bounded memory, streamed input.** ``embeddings`` may be a ``numpy.memmap`` (or
  ``np.load(path, mmap_mode="r")``): norms, the partition and the candidate blocks are
  read in chunks, and the only n-sized float32 array is the kept pool (kept rows x d;
  1M x 384 is 1.5 GiB at most). The input is never copied or converted as a whole.
* **torch.** ``device="cuda"`` (the default when CUDA is available) runs the products
  with torch in true float32 (TF32 is switched off for the call: it would break the
  margin); ``device="cpu"`` runs the same torch code on the CPU, which is how the
  tests prove the torch path equal to numpy without a GPU.

Rows with a zero embedding have no direction: their similarity to everything is 0.
A score that is NaN sorts after every real score.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DEFAULT_THRESHOLD = 0.9
DEFAULT_BLOCK = 256
DEFAULT_PRUNED_BLOCK = 4096
DEFAULT_POOL_CHUNK = 16384
STREAM_ROWS = 16384
"""Rows read from the input at a time in the streaming passes (a 384-d float64 chunk is 48 MiB)."""
_TRIG_SLACK = 1e-9
"""Subtracted from every float64 pruning bound: covers the rounding of arccos/cos (~1e-15)."""

Method = Literal["auto", "pruned", "blocked"]


@dataclass
class DedupStats:
    """How the work was done; ``pairs_compared / pairs_brute_force`` is what pruning saved.

    ``pairs_brute_force``: the similarities the blocked method computes (every visited
    row against the kept pool and the reference rows, plus the in-block pairs).
    ``pairs_compared``: the similarities actually computed (pivot products excluded;
    ``pivot_products`` counts those). ``exact_rechecks``: pairs recomputed in float64
    because float32 could not decide them.
    """

    method: str
    device: str
    clusters: int = 0
    pairs_brute_force: int = 0
    pairs_compared: int = 0
    pivot_products: int = 0
    exact_rechecks: int = 0
    seconds: float = 0.0

    @property
    def pruned_fraction(self) -> float:
        """Share of the brute-force pairs that were proven irrelevant and skipped."""
        if self.pairs_brute_force == 0:
            return 0.0
        return max(0.0, 1.0 - self.pairs_compared / self.pairs_brute_force)


@dataclass
class DedupResult:
    """Per-row outcome of :func:`greedy_semantic_dedup_details`.

    ``keep[i]``: row ``i`` is kept. ``match[i]``: the most similar row among those
    that were kept before ``i`` was visited, or the reference row it collided with
    (-1 if there was none); ``match_is_reference[i]`` says which of the two arrays
    ``match[i]`` indexes. ``similarity[i]``: the cosine similarity to ``match[i]``
    (float64; ``nan`` when there was no earlier row). For a duplicate, ``match[i]`` is
    a row it collided with; for a kept row, its nearest neighbour so far (only with
    ``nearest=True``; the pruned method never looks at rows that are provably too far,
    so it reports kept rows with ``-1`` / ``nan``). ``order``: the visiting order.
    """

    keep: np.ndarray
    match: np.ndarray
    match_is_reference: np.ndarray
    similarity: np.ndarray
    order: np.ndarray
    stats: DedupStats = field(default_factory=lambda: DedupStats("blocked", "numpy"))


def float32_margin(dim: int) -> float:
    """A bound on |float32 cosine - exact cosine| for unit vectors of dimension ``dim``.

    Rounding the unit vectors to float32 moves their dot product by at most ~2u, and
    a float32 dot product of length ``dim`` accumulates at most ``dim * u / (1 - dim*u)``
    (u = 2**-24) whatever the summation order; doubling the sum keeps a safe distance.
    """
    u = 2.0**-24
    return 2.0 * ((dim + 2) * u / (1.0 - (dim + 2) * u))


# ---------------------------------------------------------------- array backends


class _NumpyOps:
    """Products and reductions on host numpy arrays (float32 BLAS)."""

    name = "numpy"

    def put(self, x: np.ndarray) -> Any:
        return np.ascontiguousarray(x, dtype=np.float32)

    def zeros(self, rows: int, dim: int) -> Any:
        return np.zeros((rows, dim), dtype=np.float32)

    def take(self, x: Any, idx: np.ndarray) -> Any:
        return x[idx]

    def assign(self, x: Any, idx: np.ndarray, values: Any) -> None:
        x[idx] = values

    def host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def mm(self, a: Any, b: Any) -> Any:
        """``a @ b.T`` (float32)."""
        return a @ b.T

    def row_max(self, sims: Any) -> tuple[np.ndarray, np.ndarray]:
        arg = sims.argmax(axis=1)
        return sims[np.arange(len(arg)), arg], arg

    def pairs_at_least(self, sims: Any, rows: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, value) of the entries ``>= lo`` among ``rows`` of ``sims``."""
        sub = sims[rows]
        r, c = np.nonzero(sub >= lo)
        return rows[r], c, sub[r, c]

    def at_least(self, sims: Any, lo: Any) -> np.ndarray:
        return np.asarray(sims >= lo)


class _TorchOps(_NumpyOps):
    """The same operations with torch on ``device``; only small results come back to the host."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch:{self.device}"

    def put(self, x: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)

    def zeros(self, rows: int, dim: int) -> Any:
        return self.torch.zeros((rows, dim), dtype=self.torch.float32, device=self.device)

    def _index(self, idx: np.ndarray) -> Any:
        return self.torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(self.device)

    def take(self, x: Any, idx: np.ndarray) -> Any:
        return x[self._index(idx)]

    def assign(self, x: Any, idx: np.ndarray, values: Any) -> None:
        x[self._index(idx)] = values

    def host(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def mm(self, a: Any, b: Any) -> Any:
        return a @ b.T

    def row_max(self, sims: Any) -> tuple[np.ndarray, np.ndarray]:
        value, arg = sims.max(dim=1)
        return self.host(value), self.host(arg).astype(np.int64)

    def pairs_at_least(self, sims: Any, rows: np.ndarray, lo: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sub = sims[self._index(rows)]
        r, c = self.torch.nonzero(sub >= lo, as_tuple=True)
        values = self.host(sub[r, c])
        return rows[self.host(r)], self.host(c), values

    def at_least(self, sims: Any, lo: Any) -> np.ndarray:
        bound = self.torch.from_numpy(np.asarray(lo, dtype=np.float32)).to(self.device)
        return self.host(sims >= bound)


def _resolve_device(device: str | None) -> str:
    """``None`` means CUDA when torch sees one, else numpy; ``"numpy"`` forces numpy.

    Importing torch takes seconds; without an NVIDIA device node it cannot find CUDA, so
    it is only imported when one exists (or torch is loaded already).
    """
    if device is None:
        if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
            return "numpy"
        try:
            import torch
        except ImportError:  # torch is optional for dedup
            return "numpy"
        return "cuda" if torch.cuda.is_available() else "numpy"
    return device


def _make_ops(device: str) -> _NumpyOps:
    return _NumpyOps() if device == "numpy" else _TorchOps(device)


@contextlib.contextmanager
def _true_float32(ops: _NumpyOps) -> Iterator[None]:
    """TF32 products carry ~1e-3 error, far beyond the margin: force full float32 for the call."""
    if not isinstance(ops, _TorchOps):
        yield
        return
    torch = ops.torch
    old_precision = torch.get_float32_matmul_precision()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_precision)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


# ---------------------------------------------------------------- rows of the input


class _Unit:
    """Unit vectors of the caller's rows, computed on demand from the (possibly memory-mapped) input.

    Only the float64 norms (8 bytes a row) are held; float32 rows for products and
    float64 rows for exact checks are gathered and normalized when asked for, so a
    memory-mapped input is never loaded as a whole.
    """

    def __init__(self, embeddings: Any) -> None:
        raw = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
        if raw.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array (rows x dims), got shape {raw.shape}")
        if raw.dtype.kind not in "fiu":
            raise TypeError(f"embeddings must be numeric, got dtype {raw.dtype}")
        self.raw = raw
        norms = np.empty(raw.shape[0])
        for start in range(0, raw.shape[0], STREAM_ROWS):
            chunk = np.asarray(raw[start : start + STREAM_ROWS], dtype=np.float64)
            norms[start : start + len(chunk)] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        if not np.all(np.isfinite(norms)):
            bad = int(np.flatnonzero(~np.isfinite(norms))[0])
            raise ValueError(f"embedding row {bad} contains NaN or infinity")
        self.inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self._all32: np.ndarray | None = None

    def __len__(self) -> int:
        return self.raw.shape[0]

    @property
    def dim(self) -> int:
        return int(self.raw.shape[1])

    def f64(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and isinstance(self.raw, np.memmap):
            # sorted reads are sequential on disk; put the rows back in the asked order
            perm = np.argsort(rows, kind="stable")
            got = np.empty((len(rows), self.dim))
            got[perm] = np.asarray(self.raw[rows[perm]], dtype=np.float64)
            return got * self.inv[rows, None]
        return np.asarray(self.raw[rows], dtype=np.float64) * self.inv[rows, None]

    def f32(self, rows: np.ndarray) -> np.ndarray:
        return self.f64(rows).astype(np.float32)

    def all32(self) -> np.ndarray:
        """Every row as float32 (for small inputs, e.g. the reference pool)."""
        if self._all32 is None:
            out = np.empty((len(self), self.dim), dtype=np.float32)
            for start in range(0, len(self), STREAM_ROWS):
                stop = min(len(self), start + STREAM_ROWS)
                out[start:stop] = self.f32(np.arange(start, stop))
            self._all32 = out
        return self._all32


def _exact_pairs(a: _Unit, ai: np.ndarray, b: _Unit, bi: np.ndarray) -> np.ndarray:
    """float64 cosine of the pairs ``(a[ai[k]], b[bi[k]])``."""
    if len(ai) == 0:
        return np.zeros(0)
    return np.einsum("ij,ij->i", a.f64(ai), b.f64(bi))


class _Best:
    """Per query row: the float32-best partner and the exact ``some partner >= threshold`` flag.

    Fed one (rows x partners) product at a time. Rows whose float32 maximum is within
    ``margin`` of the threshold have their near-threshold entries recomputed in float64,
    so ``hit`` is exact. The reported partner is the float32 argmax unless that pair is
    below the threshold while another pair is not (then the best float64 pair near the
    threshold).
    """

    def __init__(self, n: int, threshold: float, margin: float) -> None:
        self.threshold, self.lo, self.hi = threshold, threshold - margin, threshold + margin
        self.best32 = np.full(n, -np.inf, dtype=np.float32)
        self.arg = np.full(n, -1, dtype=np.int64)
        self.hit = np.zeros(n, dtype=bool)
        self.band_best = np.full(n, -np.inf)
        self.band_arg = np.full(n, -1, dtype=np.int64)
        self.rechecks = 0

    def update(
        self,
        ops: _NumpyOps,
        sims: Any,
        local: np.ndarray,
        cols: np.ndarray,
        a: _Unit,
        a_rows: np.ndarray,
        b: _Unit,
    ) -> None:
        """``sims[i, j]``: row ``local[i]`` (global ``a_rows[i]``) against ``b`` row ``cols[j]``."""
        local_max, arg = ops.row_max(sims)
        better = local_max > self.best32[local]
        self.best32[local[better]] = local_max[better]
        self.arg[local[better]] = cols[arg[better]]
        self.hit[local] |= local_max >= self.hi
        unsure = np.flatnonzero((local_max >= self.lo) & (local_max < self.hi))
        if len(unsure) == 0:
            return
        rr, cc, _ = ops.pairs_at_least(sims, unsure, self.lo)  # all below hi: these are maxima
        exact = _exact_pairs(a, a_rows[rr], b, cols[cc])
        self.rechecks += len(rr)
        rl = local[rr]
        self.hit[rl[exact >= self.threshold]] = True
        for k in np.argsort(exact, kind="stable"):  # best float64 value per row
            if exact[k] > self.band_best[rl[k]]:
                self.band_best[rl[k]] = exact[k]
                self.band_arg[rl[k]] = cols[cc[k]]

    def finish(self, a: _Unit, rows: np.ndarray, b: _Unit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(float64 similarity of the reported partner, partner, exact hit) per row."""
        has = self.arg >= 0
        sim = np.full(len(rows), np.nan)
        sim[has] = _exact_pairs(a, rows[has], b, self.arg[has])
        # an exact hit found only near the threshold: report that pair, which is >= threshold
        fix = self.hit & ~(sim >= self.threshold) & (self.band_arg >= 0)
        sim[fix] = self.band_best[fix]
        arg = self.arg.copy()
        arg[fix] = self.band_arg[fix]
        return sim, arg, self.hit


def _visit_order(scores: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != n:
        raise ValueError(f"got {len(s)} scores for {n} embeddings")
    key = np.where(np.isnan(s), np.inf, -s)  # descending score; NaN last
    return np.lexsort((np.arange(n), key))


def _blocks(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


# ---------------------------------------------------------------- public entry points


def greedy_semantic_dedup(
    embeddings: Any,
    scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    reference: Any = None,
    *,
    method: Method = "auto",
    device: str | None = None,
    clusters: int | None = None,
    block_size: int | None = None,
) -> np.ndarray:
    """Boolean keep-mask of GRA's score-ordered greedy semantic deduplication.

    Rows are visited in descending ``scores`` (ties: the earlier row first); a row is
    kept iff its cosine similarity to every row kept before it and to every
    ``reference`` row is below ``threshold``. ``embeddings`` (n x d; may be a
    ``numpy.memmap``) and ``reference`` (m x d) need not be normalized. The result
    equals a float64 brute-force loop. ``method="auto"`` prunes with cluster bounds on
    the CPU and runs blocked brute force on CUDA, where products are cheap and many
    small ones are not; ``device``: ``None`` (CUDA if available, else numpy),
    ``"numpy"``, or a torch device such as ``"cuda"`` or ``"cpu"``.
    """
    return greedy_semantic_dedup_details(
        embeddings,
        scores,
        threshold,
        reference,
        nearest=False,
        method=method,
        device=device,
        clusters=clusters,
        block_size=block_size,
    ).keep


def greedy_semantic_dedup_details(
    embeddings: Any,
    scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    reference: Any = None,
    *,
    nearest: bool = True,
    method: Method = "auto",
    device: str | None = None,
    clusters: int | None = None,
    block_size: int | None = None,
    pool_chunk: int = DEFAULT_POOL_CHUNK,
    seed: int = 0,
) -> DedupResult:
    """:func:`greedy_semantic_dedup` with the matched row and similarity of every row.

    ``nearest=True`` (the default) also finds every kept row's nearest earlier
    neighbour, which needs every pair and therefore the blocked method; with
    ``nearest=False`` each duplicate still reports a kept (or reference) row it collides
    with and that exact similarity, kept rows report ``-1`` / ``nan``, and the pruned
    method may skip pairs (``stats`` says how many). ``clusters``: pivots
    of the pruned method (default about ``1.5 * sqrt(n)``); ``seed`` seeds their
    k-means (the result never depends on it, only the speed does).
    """
    start = time.perf_counter()
    dev = _resolve_device(device)
    if method == "auto":
        method = "blocked" if nearest or dev.startswith("cuda") else "pruned"
    if method == "pruned" and nearest:
        raise ValueError("method='pruned' cannot report kept rows' nearest neighbours; pass nearest=False")
    if method not in ("pruned", "blocked"):
        raise ValueError(f"method must be 'auto', 'pruned' or 'blocked', got {method!r}")
    threshold = float(threshold)
    if method == "pruned" and threshold <= 0.0:
        method = "blocked"  # zero rows would collide with everything: no bound to prune with
    ops = _make_ops(dev)
    with _true_float32(ops):
        if method == "pruned":
            size = _default_pruned_block(len(embeddings)) if block_size is None else block_size
            result = _pruned(embeddings, scores, threshold, reference, ops, size, clusters, seed)
        else:
            # on a GPU, bigger blocks mean fewer kernel launches and host round trips
            default = 4 * DEFAULT_BLOCK if dev.startswith("cuda") else DEFAULT_BLOCK
            size = default if block_size is None else block_size
            result = _blocked(embeddings, scores, threshold, reference, ops, size, pool_chunk)
    result.stats.seconds = time.perf_counter() - start
    return result


def _prepare(
    embeddings: Any, scores: np.ndarray, reference: Any
) -> tuple[_Unit, np.ndarray, _Unit | None]:
    cand = _Unit(embeddings)
    order = _visit_order(scores, len(cand))
    ref = None
    if reference is not None and len(reference):
        ref = _Unit(reference)
        if ref.dim != cand.dim:
            raise ValueError(f"reference has {ref.dim} dims, embeddings have {cand.dim}")
    return cand, order, ref


def _empty_result(n: int, order: np.ndarray, stats: DedupStats) -> DedupResult:
    return DedupResult(
        np.zeros(n, dtype=bool),
        np.full(n, -1, dtype=np.int64),
        np.zeros(n, dtype=bool),
        np.full(n, np.nan),
        order,
        stats,
    )


# ---------------------------------------------------------------- blocked brute force


def _best_partners(
    ops: _NumpyOps,
    a: _Unit,
    rows: np.ndarray,
    b: _Unit,
    pool: np.ndarray,
    pool_vectors: Any,
    threshold: float,
    margin: float,
    chunk: int,
    stats: DedupStats,
    row_block: int = DEFAULT_BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each ``a`` row in ``rows``: its most similar ``b`` row in ``pool``, exactly decided.

    ``pool`` holds row indices into ``b`` and ``pool_vectors`` their float32 unit vectors
    (on the ops' device), stored contiguously (the kept pool grows in place, so no
    gather per block). Rows and pool are taken in blocks, so memory stays at
    ``row_block x chunk`` similarities.
    """
    n = len(rows)
    best = _Best(n, threshold, margin)
    if n == 0 or len(pool) == 0:
        return np.full(n, np.nan), best.arg, best.hit
    for r0 in range(0, n, row_block):
        block_rows = rows[r0 : r0 + row_block]
        block = ops.put(a.f32(block_rows))
        local = np.arange(r0, r0 + len(block_rows))
        for start in range(0, len(pool), chunk):
            cols = pool[start : start + chunk]
            sims = ops.mm(block, pool_vectors[start : start + chunk])
            stats.pairs_compared += len(block_rows) * len(cols)
            best.update(ops, sims, local, cols, a, block_rows, b)
    stats.exact_rechecks += best.rechecks
    return best.finish(a, rows, b)


def _blocked(
    embeddings: Any,
    scores: np.ndarray,
    threshold: float,
    reference: Any,
    ops: _NumpyOps,
    block_size: int,
    pool_chunk: int,
) -> DedupResult:
    cand, order, ref = _prepare(embeddings, scores, reference)
    n, dim = len(cand), cand.dim
    stats = DedupStats("blocked", ops.name)
    result = _empty_result(n, order, stats)
    keep, match, match_ref, similarity = result.keep, result.match, result.match_is_reference, result.similarity
    if n == 0:
        return result
    margin = float32_margin(dim)

    alive = np.ones(n, dtype=bool)
    if ref is not None:
        every = np.arange(n)
        stats.pairs_brute_force += n * len(ref)
        sim, arg, hit = _best_partners(
            ops, cand, every, ref, np.arange(len(ref)), ops.put(ref.all32()), threshold, margin,
            pool_chunk, stats, block_size,
        )
        has = arg >= 0
        match[has], similarity[has], match_ref[has] = arg[has], sim[has], True
        alive &= ~hit

    kept_ids = np.empty(n, dtype=np.int64)
    kept_vectors = ops.zeros(int(alive.sum()), dim)
    n_kept = 0
    for block in _blocks(order[alive[order]], block_size):
        live = np.ones(len(block), dtype=bool)
        stats.pairs_brute_force += len(block) * n_kept + len(block) * (len(block) - 1) // 2
        if n_kept:
            sim, arg, hit = _best_partners(
                ops, cand, block, cand, kept_ids[:n_kept], kept_vectors[:n_kept], threshold, margin,
                pool_chunk, stats, block_size,
            )
            _offer(block, arg, sim, match, match_ref, similarity)
            live &= ~hit
        # only rows that survived the pool take part in the in-block greedy
        sub = block[live]
        sub_live = np.ones(len(sub), dtype=bool)
        vectors = ops.put(cand.f32(sub))
        sims, conflict = _block_conflicts(ops, cand, sub, vectors, threshold, margin, stats)
        _resolve_block(conflict, sub_live)
        _offer_block_partners(
            cand, sub, sub_live, sims, conflict, threshold, match, match_ref, similarity
        )
        live[live] = sub_live
        kept = block[live]
        kept_ids[n_kept : n_kept + len(kept)] = kept
        ops.assign(
            kept_vectors, np.arange(n_kept, n_kept + len(kept)), ops.take(vectors, np.flatnonzero(sub_live))
        )
        n_kept += len(kept)
        keep[kept] = True
    return result


def _offer(
    rows: np.ndarray,
    partners: np.ndarray,
    sims: np.ndarray,
    match: np.ndarray,
    match_ref: np.ndarray,
    similarity: np.ndarray,
) -> None:
    """Record ``partners`` (kept candidate rows) where they are closer than what is noted."""
    current = similarity[rows]
    take = (partners >= 0) & (np.isnan(current) | (sims > current))
    match[rows[take]] = partners[take]
    similarity[rows[take]] = sims[take]
    match_ref[rows[take]] = False


def _block_conflicts(
    ops: _NumpyOps,
    cand: _Unit,
    block: np.ndarray,
    vectors: Any,
    threshold: float,
    margin: float,
    stats: DedupStats,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 similarities within the block (host), and the exact ``sim >= threshold``
    mask between earlier (row) and later (column) members."""
    sims = ops.host(ops.mm(vectors, vectors))
    stats.pairs_compared += len(block) * (len(block) - 1) // 2
    upper = np.triu(np.ones(sims.shape, dtype=bool), k=1)
    conflict = (sims >= threshold + margin) & upper
    r, c = np.nonzero((sims >= threshold - margin) & (sims < threshold + margin) & upper)
    if len(r):
        exact = _exact_pairs(cand, block[r], cand, block[c])
        stats.exact_rechecks += len(r)
        conflict[r, c] = exact >= threshold
    return sims, conflict


def _resolve_block(conflict: np.ndarray, live: np.ndarray) -> None:
    """Greedy inside a block: each surviving row, in order, removes the later rows it hits.

    Rows without any in-block conflict keep their state; only the (usually few) rows
    that take part in a conflict are visited one by one, reading the precomputed matrix.
    """
    for i in np.flatnonzero(conflict.any(axis=1)):
        if live[i]:
            live[conflict[i]] = False


def _offer_block_partners(
    cand: _Unit,
    block: np.ndarray,
    live: np.ndarray,
    sims: np.ndarray,
    conflict: np.ndarray,
    threshold: float,
    match: np.ndarray,
    match_ref: np.ndarray,
    similarity: np.ndarray,
) -> None:
    """Offer each block row its closest earlier kept row of the same block.

    A row removed inside the block must end up reporting a partner it really collides
    with; the float32 argmax almost always is one, and when rounding picked a pair just
    below the threshold, the first kept row that removed it is reported instead.
    """
    kept_pos = np.flatnonzero(live)
    if len(kept_pos) == 0 or len(block) < 2:
        return
    earlier = kept_pos[None, :] < np.arange(len(block))[:, None]
    sims = np.where(earlier, sims[:, kept_pos], -np.inf)  # (block rows, kept rows of the block)
    best = sims.argmax(axis=1)
    rows = np.flatnonzero(np.isfinite(sims[np.arange(len(block)), best]))
    if len(rows):
        partners = block[kept_pos[best[rows]]]
        exact = _exact_pairs(cand, block[rows], cand, partners)
        _offer(block[rows], partners, exact, match, match_ref, similarity)
    removed = np.flatnonzero(~live)
    unsure = removed[~(similarity[block[removed]] >= threshold)]  # nan counts as unsure
    for j in unsure:
        killer = kept_pos[conflict[kept_pos, j]][0]
        row, partner = block[j], block[killer]
        match[row], match_ref[row] = partner, False
        similarity[row] = _exact_pairs(cand, np.array([row]), cand, np.array([partner]))[0]


# ---------------------------------------------------------------- pruned (cluster bounds)


def _default_pruned_block(n: int) -> int:
    """Rows per block of the pruned method: every block reads each cluster's kept rows
    once, so that traffic is (blocks x kept pool); about 64 blocks keep it near 64 pool
    reads at 1M rows, while the (block x pivots) products stay at ~100 MiB."""
    return int(min(16384, max(DEFAULT_PRUNED_BLOCK, n // 64)))


def _default_clusters(n: int) -> int:
    """About ``1.5 sqrt(n)`` pivots: the (block x k) pivot products cost ``n k d`` and
    the surviving pairs about ``n (n / k) d`` on clustered data; this balances the two."""
    return int(min(4096, max(1, round(1.5 * math.sqrt(max(n, 1))))))


def _pivots(
    unit: _Unit, rows: np.ndarray, k: int, seed: int, iterations: int = 6
) -> np.ndarray:
    """``k`` unit pivots from spherical k-means on a sample of ``rows`` (float64).

    Any pivots give exact bounds; good ones (cluster centres) give tight ones, and a
    sample of ~20 rows a pivot finds them about as well as the whole input would.
    """
    rng = np.random.default_rng(seed)
    size = min(len(rows), max(20 * k, 2000))
    sample = np.sort(rng.choice(rows, size=size, replace=False))
    x = unit.f32(sample)
    k = min(k, len(sample))
    centres = x[rng.choice(len(x), size=k, replace=False)].astype(np.float64)
    for _ in range(iterations):
        assign = (x @ centres.astype(np.float32).T).argmax(axis=1)
        by = np.argsort(assign, kind="stable")
        groups, starts = np.unique(assign[by], return_index=True)
        sums = np.zeros_like(centres)
        sums[groups] = np.add.reduceat(x[by].astype(np.float64), starts, axis=0)
        norms = np.linalg.norm(sums, axis=1)
        empty = norms == 0
        if empty.any():  # reseed empty clusters with random sample rows
            sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
            norms[empty] = np.linalg.norm(sums[empty], axis=1)
        centres = sums / norms[:, None]
    return centres


def _assign(
    ops: _NumpyOps, unit: _Unit, rows: np.ndarray, pivots64: np.ndarray, pivots: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of each row (its float32-nearest pivot) and the exact float64 cosine to it.

    Streams the rows; the assignment need not be optimal for the bounds to hold (the
    radius is measured on the actual members), only the cosine must be exact.
    """
    cluster = np.empty(len(rows), dtype=np.int64)
    cos_own = np.empty(len(rows))
    for start in range(0, len(rows), STREAM_ROWS):
        part = rows[start : start + STREAM_ROWS]
        x64 = unit.f64(part)
        _, arg = ops.row_max(ops.mm(ops.put(x64.astype(np.float32)), pivots))
        cluster[start : start + len(part)] = arg
        cos_own[start : start + len(part)] = np.einsum("ij,ij->i", x64, pivots64[arg])
    return cluster, cos_own


def _cos_bound(cos_radius: np.ndarray, beta: float) -> np.ndarray:
    """Per cluster: the pivot cosine below which no member can reach ``cos(beta)``.

    A member is within angle ``r = arccos(cos_radius)`` of the pivot, so a row at angle
    ``a`` from the pivot is at least ``a - r`` from it; it can only reach the threshold
    angle ``beta`` if ``a <= r + beta``, i.e. ``cos a >= cos(min(pi, r + beta))``.
    """
    radius = np.arccos(np.clip(cos_radius, -1.0, 1.0))
    return np.cos(np.minimum(np.pi, radius + beta)) - _TRIG_SLACK


class _ClusterPool:
    """Rows stored cluster by cluster (contiguous per cluster, preallocated), on the ops' device.

    ``cos_radius[c]``: the smallest exact cosine between pivot ``c`` and a stored member.
    """

    def __init__(self, ops: _NumpyOps, capacity: np.ndarray, dim: int) -> None:
        self.ops = ops
        self.offset = np.concatenate([[0], np.cumsum(capacity)]).astype(np.int64)
        self.vectors = ops.zeros(int(self.offset[-1]), dim)
        self.ids = np.full(int(self.offset[-1]), -1, dtype=np.int64)
        self.count = np.zeros(len(capacity), dtype=np.int64)
        self.cos_radius = np.ones(len(capacity))

    def add(self, ids: np.ndarray, vectors: Any, cluster: np.ndarray, cos_own: np.ndarray) -> None:
        if len(ids) == 0:
            return
        by = np.argsort(cluster, kind="stable")
        c = cluster[by]
        first = np.searchsorted(c, c, side="left")
        pos = self.offset[c] + self.count[c] + (np.arange(len(c)) - first)
        self.ops.assign(self.vectors, pos, self.ops.take(vectors, by))
        self.ids[pos] = ids[by]
        self.count += np.bincount(c, minlength=len(self.count))
        np.minimum.at(self.cos_radius, c, cos_own[by])

    def members(self, c: int) -> tuple[Any, np.ndarray]:
        lo, hi = int(self.offset[c]), int(self.offset[c] + self.count[c])
        return self.vectors[lo:hi], self.ids[lo:hi]


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Per-cluster products are small; multi-threaded BLAS spends more on waking its
    threads than on them (ten times more on a busy machine), so they run on one."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own setting
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _pool_search(
    ops: _NumpyOps,
    pool: _ClusterPool,
    near: np.ndarray,
    x: Any,
    a: _Unit,
    rows: np.ndarray,
    b: _Unit,
    threshold: float,
    margin: float,
    stats: DedupStats,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact pool hits of the block ``rows`` (vectors ``x``), comparing only the
    (row, cluster) pairs in ``near`` (a block x k mask of clusters the bound cannot rule out)."""
    best = _Best(len(rows), threshold, margin)
    clusters, local = np.nonzero(near.T)  # sorted by cluster, then row
    bounds = np.flatnonzero(np.diff(clusters)) + 1
    for seg_c, seg_rows in zip(
        np.split(clusters, bounds), np.split(local, bounds), strict=True
    ):
        if len(seg_c) == 0:
            continue
        vectors, ids = pool.members(int(seg_c[0]))
        sims = ops.mm(ops.take(x, seg_rows), vectors)
        stats.pairs_compared += len(seg_rows) * len(ids)
        best.update(ops, sims, seg_rows, ids, a, rows[seg_rows], b)
    stats.exact_rechecks += best.rechecks
    return best.finish(a, rows, b)


def _block_edges(
    ops: _NumpyOps,
    near: np.ndarray,
    own: np.ndarray,
    x: Any,
    cand: _Unit,
    rows: np.ndarray,
    threshold: float,
    margin: float,
    stats: DedupStats,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All in-block pairs (earlier i, later j) with exact cosine >= threshold, and that cosine.

    Row ``j`` is compared with the block members of cluster ``c`` only where ``near[j, c]``
    (the bound uses the radius over all of ``c``'s members, so it covers these).
    """
    lo = threshold - margin
    empty = np.zeros(0, dtype=np.int64)
    if len(own) < 2:
        return empty, empty, np.zeros(0)
    by = np.argsort(own, kind="stable")
    groups = own[by]
    bounds = np.flatnonzero(np.diff(groups)) + 1
    ei: list[np.ndarray] = []
    ej: list[np.ndarray] = []
    for members in np.split(by, bounds):
        c = int(own[members[0]])
        queries = np.flatnonzero(near[:, c])
        queries = queries[queries > members[0]]  # only later rows can be removed by a member
        if len(queries) == 0:
            continue
        sims = ops.mm(ops.take(x, queries), ops.take(x, members))
        stats.pairs_compared += len(queries) * len(members)
        r, k, _ = ops.pairs_at_least(sims, np.arange(len(queries)), lo)
        i, j = members[k], queries[r]
        later = i < j
        if later.any():
            ei.append(i[later])
            ej.append(j[later])
    if not ei:
        return empty, empty, np.zeros(0)
    i, j = np.concatenate(ei), np.concatenate(ej)
    exact = _exact_pairs(cand, rows[i], cand, rows[j])  # few pairs: decide them all in float64
    stats.exact_rechecks += len(i)
    real = exact >= threshold
    return i[real], j[real], exact[real]


def _pruned(
    embeddings: Any,
    scores: np.ndarray,
    threshold: float,
    reference: Any,
    ops: _NumpyOps,
    block_size: int,
    clusters: int | None,
    seed: int,
) -> DedupResult:
    cand, order, ref = _prepare(embeddings, scores, reference)
    n, dim = len(cand), cand.dim
    stats = DedupStats("pruned", ops.name)
    result = _empty_result(n, order, stats)
    keep, match, match_ref, similarity = result.keep, result.match, result.match_is_reference, result.similarity
    # threshold > 0 here: a zero row has cosine 0 with everything, so it is kept and removes nothing
    directed = cand.inv > 0
    keep[~directed] = True
    live_rows = np.flatnonzero(directed)
    if len(live_rows) == 0:
        return result
    margin = float32_margin(dim)
    beta = math.acos(min(1.0, threshold))

    k = clusters if clusters is not None else _default_clusters(len(live_rows))
    pivots64 = _pivots(cand, live_rows, max(1, k), seed)
    pivots = ops.put(pivots64.astype(np.float32))
    k = len(pivots64)
    stats.clusters = k
    cluster = np.full(n, -1, dtype=np.int64)
    cos_own = np.full(n, np.nan)
    cluster[live_rows], cos_own[live_rows] = _assign(ops, cand, live_rows, pivots64, pivots)
    stats.pivot_products += len(live_rows) * k
    all_radius = np.ones(k)
    np.minimum.at(all_radius, cluster[live_rows], cos_own[live_rows])
    block_bound = _cos_bound(all_radius, beta).astype(np.float32)

    ref_pool = None
    if ref is not None:
        ref_rows = np.flatnonzero(ref.inv > 0)
        if len(ref_rows):
            ref_cluster, ref_cos = _assign(ops, ref, ref_rows, pivots64, pivots)
            stats.pivot_products += len(ref_rows) * k
            ref_pool = _ClusterPool(ops, np.bincount(ref_cluster, minlength=k), dim)
            for start in range(0, len(ref_rows), STREAM_ROWS):
                part = slice(start, start + STREAM_ROWS)
                ref_pool.add(
                    ref_rows[part], ops.put(ref.f32(ref_rows[part])), ref_cluster[part], ref_cos[part]
                )
            ref_bound = _cos_bound(ref_pool.cos_radius, beta)
            ref_bound[ref_pool.count == 0] = np.inf
            ref_bound = ref_bound.astype(np.float32)

    pool = _ClusterPool(ops, np.bincount(cluster[live_rows], minlength=k), dim)
    n_ref = 0 if ref is None else len(ref)
    visit = order[directed[order]]
    for block in _blocks(visit, block_size):
        m = len(block)
        x = ops.put(cand.f32(block))
        # cos(row, pivot) <= float32 value + margin / 2; a cluster is skipped only when the
        # float32 value is below its bound minus the full margin (the other half absorbs
        # rounding the bound itself to float32, <= 6e-8, as in _Best)
        upper = ops.mm(x, pivots)
        stats.pivot_products += m * k
        stats.pairs_brute_force += m * (n_ref + int(pool.count.sum())) + m * (m - 1) // 2
        live = np.ones(m, dtype=bool)
        with _one_blas_thread():  # the pivot product above keeps every BLAS thread
            if ref_pool is not None:
                near = ops.at_least(upper, ref_bound - np.float32(margin))
                sim, arg, hit = _pool_search(ops, ref_pool, near, x, cand, block, ref, threshold, margin, stats)
                dup = np.flatnonzero(hit)
                match[block[dup]], similarity[block[dup]], match_ref[block[dup]] = arg[dup], sim[dup], True
                live &= ~hit
            if pool.count.any():
                bound = _cos_bound(pool.cos_radius, beta)
                bound[pool.count == 0] = np.inf
                near = ops.at_least(upper, bound.astype(np.float32) - np.float32(margin))
                near &= live[:, None]
                sim, arg, hit = _pool_search(ops, pool, near, x, cand, block, cand, threshold, margin, stats)
                dup = np.flatnonzero(hit)
                match[block[dup]], similarity[block[dup]], match_ref[block[dup]] = arg[dup], sim[dup], False
                live &= ~hit
            # in-block greedy among the rows that survived reference and pool
            own = cluster[block]
            candidates = np.flatnonzero(live)
            near = ops.at_least(upper, block_bound - np.float32(margin))[candidates]
            i, j, exact = _block_edges(
                ops, near, own[candidates], ops.take(x, candidates), cand, block[candidates],
                threshold, margin, stats,
            )
        i, j = candidates[i], candidates[j]
        if len(i):
            by = np.argsort(i, kind="stable")
            sources, first = np.unique(i[by], return_index=True)
            for src, targets in zip(sources, np.split(j[by], first[1:]), strict=True):
                if live[src]:  # ascending: a source's own fate is settled before it acts
                    live[targets] = False
        # a row removed in the block reports its most similar kept block row
        from_kept = live[i] & ~live[j]
        for src, dst, value in zip(i[from_kept], j[from_kept], exact[from_kept], strict=True):
            row = block[dst]
            if not (similarity[row] >= value):  # nan (no partner yet) or a less similar one
                match[row], similarity[row], match_ref[row] = block[src], value, False
        kept = np.flatnonzero(live)
        pool.add(block[kept], ops.take(x, kept), own[kept], cos_own[block[kept]])
        keep[block[kept]] = True
    return result
