"""Exact, score-ordered greedy semantic deduplication (GRA section 3.5).

The rule (DESIGN.md): visit rows in descending score, ties broken by the earlier row;
a row is kept iff its cosine similarity to every row kept so far, and to every
``reference`` row, is below ``threshold``. The result must equal a brute-force loop
on every input, so nothing here is approximate.

Why it is fast anyway:

* **Blocked.** Candidates are taken in blocks of a few hundred rows in visiting
  order. One matrix product compares a whole block with the kept pool (and the pool
  is itself split into chunks, so memory stays bounded); a second product compares
  the block with itself. Only rows that really conflict inside a block are resolved
  one after the other, by reading the precomputed similarity matrix.
* **Reference rows first.** A row too close to a reference row can never be kept,
  and a row that is not kept never removes anything, so the reference check is one
  pass over all candidates before the greedy part starts.
* **float32 with a proven margin.** Products run in float32 BLAS. The float32 error
  of a dot product of two unit vectors of dimension ``d`` is at most about
  ``(d + 2) * 2**-24``; any similarity that float32 puts within twice that of the
  threshold is recomputed in float64, so every decision is the float64 decision.
  Brute force in float64 therefore agrees row for row.

Rows with a zero embedding have no direction: their similarity to everything is 0.
A score that is NaN sorts after every real score.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.9
DEFAULT_BLOCK = 256
DEFAULT_POOL_CHUNK = 16384


@dataclass
class DedupResult:
    """Per-row outcome of :func:`greedy_semantic_dedup_details`.

    ``keep[i]``: row ``i`` is kept. ``match[i]``: the most similar row among those
    that were kept before ``i`` was visited, or the reference row it collided with
    (-1 if there was none); ``match_is_reference[i]`` says which of the two arrays
    ``match[i]`` indexes. ``similarity[i]``: the cosine similarity to ``match[i]``
    (float64; ``nan`` when there was no earlier row). For a duplicate, ``match[i]`` is
    a row it collided with; for a kept row, its nearest neighbour so far.
    ``order``: the visiting order (row indices).
    """

    keep: np.ndarray
    match: np.ndarray
    match_is_reference: np.ndarray
    similarity: np.ndarray
    order: np.ndarray


def float32_margin(dim: int) -> float:
    """A bound on |float32 cosine - exact cosine| for unit vectors of dimension ``dim``.

    Rounding the unit vectors to float32 moves their dot product by at most ~2u, and
    a float32 dot product of length ``dim`` accumulates at most ``dim * u / (1 - dim*u)``
    (u = 2**-24) whatever the summation order; doubling the sum keeps a safe distance.
    """
    u = 2.0**-24
    return 2.0 * ((dim + 2) * u / (1.0 - (dim + 2) * u))


class _Unit:
    """Unit vectors in float32 (for products) and on-demand float64 rows (for checks)."""

    def __init__(self, embeddings: np.ndarray) -> None:
        raw = np.asarray(embeddings)
        if raw.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D array (rows x dims), got shape {raw.shape}")
        if raw.dtype.kind not in "fiu":
            raise TypeError(f"embeddings must be numeric, got dtype {raw.dtype}")
        self.raw = raw
        norms = np.linalg.norm(raw.astype(np.float64, copy=False), axis=1)
        if not np.all(np.isfinite(norms)):
            bad = int(np.flatnonzero(~np.isfinite(norms))[0])
            raise ValueError(f"embedding row {bad} contains NaN or infinity")
        self.inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self.f32 = (raw * self.inv[:, None]).astype(np.float32)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def f64(self, rows: np.ndarray) -> np.ndarray:
        return self.raw[rows].astype(np.float64) * self.inv[rows, None]


def _exact_pairs(a: _Unit, ai: np.ndarray, b: _Unit, bi: np.ndarray) -> np.ndarray:
    """float64 cosine of the pairs ``(a[ai[k]], b[bi[k]])``."""
    if len(ai) == 0:
        return np.zeros(0)
    return np.einsum("ij,ij->i", a.f64(ai), b.f64(bi))


@dataclass
class _Best:
    sim: np.ndarray  # float64 similarity of the reported partner
    arg: np.ndarray  # partner index (-1: none)
    hit: np.ndarray  # exact decision: some partner has similarity >= threshold


def _best_partners(
    a: _Unit,
    rows: np.ndarray,
    b: _Unit,
    pool: np.ndarray,
    threshold: float,
    margin: float,
    chunk: int,
    row_block: int = DEFAULT_BLOCK,
    pool_vectors: np.ndarray | None = None,
) -> _Best:
    """For each ``a`` row in ``rows``: its most similar ``b`` row in ``pool``, exactly decided.

    ``pool`` holds row indices into ``b``; ``pool_vectors``, when given, are their float32
    unit vectors stored contiguously (the kept pool grows in place, so no gather per
    block). Rows and pool are taken in blocks, so memory
    stays at ``row_block x chunk`` similarities. Float32 products find the maximum; only
    rows whose maximum falls within ``margin`` of the threshold have their near-threshold
    entries recomputed in float64, so that ``hit`` is exact. The reported partner is the
    float32 argmax unless that pair is below the threshold while another pair is not
    (then the best float64 pair found near the threshold).
    """
    n = len(rows)
    best32 = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    hit = np.zeros(n, dtype=bool)
    band_best = np.full(n, -np.inf)
    band_arg = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(pool) == 0:
        return _Best(np.full(n, np.nan), arg, hit)
    lo, hi = threshold - margin, threshold + margin
    vectors = b.f32[pool] if pool_vectors is None else pool_vectors
    for r0 in range(0, n, row_block):
        block = a.f32[rows[r0 : r0 + row_block]]
        m = len(block)
        for start in range(0, len(pool), chunk):
            cols = pool[start : start + chunk]
            sims = block @ vectors[start : start + chunk].T
            local = sims.argmax(axis=1)
            local_max = sims[np.arange(m), local]
            better = np.flatnonzero(local_max > best32[r0 : r0 + m])
            best32[r0 + better] = local_max[better]
            arg[r0 + better] = cols[local[better]]
            hit[r0 : r0 + m] |= local_max >= hi
            unsure = np.flatnonzero((local_max >= lo) & (local_max < hi))
            if len(unsure) == 0:
                continue
            rr, cc = np.nonzero(sims[unsure] >= lo)  # all below hi, since these maxima are
            rr = r0 + unsure[rr]
            exact = _exact_pairs(a, rows[rr], b, cols[cc])
            hit[rr[exact >= threshold]] = True
            for k in np.argsort(exact, kind="stable"):  # best float64 value per row
                if exact[k] > band_best[rr[k]]:
                    band_best[rr[k]] = exact[k]
                    band_arg[rr[k]] = cols[cc[k]]
    has = arg >= 0
    sim = np.full(n, np.nan)
    sim[has] = _exact_pairs(a, rows[has], b, arg[has])
    # an exact hit found only near the threshold: report that pair, which is >= threshold
    fix = hit & (sim < threshold) & (band_arg >= 0)
    sim[fix] = band_best[fix]
    arg[fix] = band_arg[fix]
    return _Best(sim, arg, hit)


def _visit_order(scores: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != n:
        raise ValueError(f"got {len(s)} scores for {n} embeddings")
    key = np.where(np.isnan(s), np.inf, -s)  # descending score; NaN last
    return np.lexsort((np.arange(n), key))


def _blocks(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def greedy_semantic_dedup_details(
    embeddings: np.ndarray,
    scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    reference: np.ndarray | None = None,
    *,
    block_size: int = DEFAULT_BLOCK,
    pool_chunk: int = DEFAULT_POOL_CHUNK,
) -> DedupResult:
    """:func:`greedy_semantic_dedup` with the matched row and similarity of every row."""
    cand = _Unit(embeddings)
    n, dim = cand.raw.shape
    order = _visit_order(scores, n)
    keep = np.zeros(n, dtype=bool)
    match = np.full(n, -1, dtype=np.int64)
    match_ref = np.zeros(n, dtype=bool)
    similarity = np.full(n, np.nan)
    if n == 0:
        return DedupResult(keep, match, match_ref, similarity, order)
    margin = float32_margin(dim)
    threshold = float(threshold)

    alive = np.ones(n, dtype=bool)
    if reference is not None and len(reference):
        ref = _Unit(reference)
        if ref.raw.shape[1] != dim:
            raise ValueError(f"reference has {ref.raw.shape[1]} dims, embeddings have {dim}")
        every = np.arange(n)
        found = _best_partners(
            cand, every, ref, np.arange(len(ref)), threshold, margin, pool_chunk, block_size, ref.f32
        )
        has = found.arg >= 0
        match[has], similarity[has], match_ref[has] = found.arg[has], found.sim[has], True
        alive &= ~found.hit

    kept_ids = np.empty(n, dtype=np.int64)
    kept_vectors = np.empty((int(alive.sum()), dim), dtype=np.float32)
    n_kept = 0
    for block in _blocks(order[alive[order]], block_size):
        live = np.ones(len(block), dtype=bool)
        if n_kept:
            found = _best_partners(
                cand, block, cand, kept_ids[:n_kept], threshold, margin, pool_chunk, block_size,
                kept_vectors[:n_kept],
            )
            _offer(block, found.arg, found.sim, match, match_ref, similarity)
            live &= ~found.hit
        # only rows that survived the pool take part in the in-block greedy
        sub = block[live]
        sub_live = np.ones(len(sub), dtype=bool)
        sims, conflict = _block_conflicts(cand, sub, threshold, margin)
        _resolve_block(conflict, sub_live)
        _offer_block_partners(
            cand, sub, sub_live, sims, conflict, threshold, match, match_ref, similarity
        )
        live[live] = sub_live
        kept = block[live]
        kept_ids[n_kept : n_kept + len(kept)] = kept
        kept_vectors[n_kept : n_kept + len(kept)] = cand.f32[kept]
        n_kept += len(kept)
        keep[kept] = True
    return DedupResult(keep, match, match_ref, similarity, order)


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
    cand: _Unit, block: np.ndarray, threshold: float, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """float32 similarities within the block, and the exact ``sim >= threshold`` mask
    between earlier (row) and later (column) members."""
    vectors = cand.f32[block]
    sims = vectors @ vectors.T
    upper = np.triu(np.ones(sims.shape, dtype=bool), k=1)
    conflict = (sims >= threshold + margin) & upper
    r, c = np.nonzero((sims >= threshold - margin) & (sims < threshold + margin) & upper)
    if len(r):
        exact = _exact_pairs(cand, block[r], cand, block[c])
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


def greedy_semantic_dedup(
    embeddings: np.ndarray,
    scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean keep-mask of GRA's score-ordered greedy semantic deduplication.

    Rows are visited in descending ``scores`` (ties: the earlier row first); a row is
    kept iff its cosine similarity to every row kept before it and to every
    ``reference`` row is below ``threshold``. ``embeddings`` (n x d) and ``reference``
    (m x d) need not be normalized. The result equals a float64 brute-force loop.
    """
    return greedy_semantic_dedup_details(embeddings, scores, threshold, reference).keep
