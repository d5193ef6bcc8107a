"""Exact, score-ordered greedy semantic deduplication (GRA section 3.5).

The rule (DESIGN.md): visit rows in descending score, ties broken by the earlier row;
a row is kept iff its cosine similarity to every row kept so far, and to every
``reference`` row, is below ``threshold``. The result must equal a brute-force loop
on every input, so nothing here is approximate: every shortcut is a proof that some
comparison cannot change the answer, never a guess.

One exact engine, three knobs that it sets from what a sample of the data shows:

* **Blocked products against the kept pool.** Rows are taken in blocks in visiting
  order; a block is compared with the reference rows and the kept pool in
  cache-sized tiles of one matrix product each, then with itself, and only rows that
  really conflict inside a block are resolved one after the other.
* **Bounding keys** (``dims``). Rotated onto the principal directions of a sample, a
  unit vector splits into a head (the first ``dims`` coordinates) and a tail; by
  Cauchy-Schwarz ``cos(x, y) <= head(x) . head(y) + |tail(x)| |tail(y)|``, a product
  of ``dims + 1`` numbers (:class:`~synthalign.steps.dedup_kernels.Keys`). Pairs whose
  bound is below the threshold cannot collide; the few that are not are decided with
  full products. On data whose energy is spread over many directions (sentence
  embeddings; many small clusters) a quarter of the dimensions screens out almost every
  pair, so the tile products cost a third.
* **Cluster bounds** (``clusters``). Rows are partitioned around pivots (spherical
  k-means on a sample); angles are a metric, so a row at angle ``a`` from pivot ``p``
  cannot reach the threshold angle ``b`` with any member of ``p``'s cluster if
  ``a - r > b``, ``r`` the cluster's radius. On data made of well separated topics
  almost every (row, cluster) pair is skipped; on many small clusters nothing is, and
  the pivots are overhead. The planner measures both on a sample and chooses
  (``stats.plan`` says why). Details and measurements: ``docs/perf-dedup.md``.

Shared by all of them:

* **float32 with a proven margin.** The float32 error of a dot product of two unit
  vectors of dimension ``d`` is at most about ``(d + 2) * 2**-24``
  (:func:`float32_margin`); any similarity that float32 puts within that margin of the
  threshold is recomputed in float64, so every decision is the float64 decision and a
  float64 brute-force loop agrees row for row. Bounds (keys, pivots) are only ever
  used to skip pairs, with their own proven slack.
* **Witnesses.** Every dropped row reports its nearest kept-before-it row or reference
  row (see :class:`DedupResult`); every pair that can reach the threshold is found
  anyway, so this costs almost nothing. Kept rows report -1.
* **Streamed input.** ``embeddings`` may be a ``numpy.memmap``: norms and blocks are
  read in chunks; the only n-sized arrays are the kept pool's vectors and keys.
* **torch.** ``device="cuda"`` (the default when CUDA is available) runs the products
  in torch with TF32 off (it would break the margin); ``device="cpu"`` runs the same
  code on the CPU, which is how the tests prove the torch path equal to numpy.

Rows with a zero embedding have no direction: their similarity to everything is 0.
A score that is NaN sorts after every real score.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from synthalign.steps.dedup_kernels import (
    Keys,
    NumpyOps,
    Pairs,
    Searcher,
    SegmentPool,
    Unit,
    assign,
    cache_bytes,
    cos_bound,
    default_clusters,
    float32_margin,
    make_ops,
    one_blas_thread,
    pivots,
    resolve_device,
    true_float32,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DedupResult",
    "DedupStats",
    "float32_margin",
    "greedy_semantic_dedup",
    "greedy_semantic_dedup_details",
    "rows_to_matrix",
]

DEFAULT_THRESHOLD = 0.9
Method = Literal["auto", "blocked", "projected", "pruned"]


@dataclass
class DedupStats:
    """How the work was done; ``pairs_compared / pairs_brute_force`` is what pruning saved.

    ``pairs_brute_force``: the similarities blocked brute force computes (every visited
    row against the kept pool and the reference rows, plus the in-block pairs).
    ``pairs_compared``: the products actually taken (key products when ``dims`` < the
    embedding dimension; pivot products excluded, ``pivot_products`` counts those).
    ``screened``: pairs the keys could not rule out, decided with full products.
    ``exact_rechecks``: pairs recomputed in float64 because float32 could not decide them.
    ``plan``: why the planner chose this method.
    """

    method: str
    device: str
    clusters: int = 1
    dims: int = 0
    block_rows: int = 0
    pairs_brute_force: int = 0
    pairs_compared: int = 0
    screened: int = 0
    pivot_products: int = 0
    exact_rechecks: int = 0
    seconds: float = 0.0
    plan: str = ""

    @property
    def pruned_fraction(self) -> float:
        """Share of the brute-force pairs that were proven irrelevant and skipped."""
        if self.pairs_brute_force == 0:
            return 0.0
        return max(0.0, 1.0 - self.pairs_compared / self.pairs_brute_force)


@dataclass
class DedupResult:
    """Per-row outcome of :func:`greedy_semantic_dedup_details`.

    ``keep[i]``: row ``i`` is kept. For a dropped row, ``match[i]`` is its witness: its
    nearest neighbour among the rows kept before it was visited and the reference rows
    (the highest float64 cosine; ties: reference rows first, then the lower index);
    ``match_is_reference[i]`` says which array ``match[i]`` indexes, and
    ``similarity[i]`` is that cosine, always ``>= threshold`` (float64 where float32
    could not decide, else the float32 value, within :func:`float32_margin` of it).
    Kept rows have ``match == -1`` and ``similarity == nan`` (their nearest earlier
    neighbour is not searched for). ``order``: the visiting order.
    """

    keep: np.ndarray
    match: np.ndarray
    match_is_reference: np.ndarray
    similarity: np.ndarray
    order: np.ndarray
    stats: DedupStats = field(default_factory=lambda: DedupStats("blocked", "numpy"))


def greedy_semantic_dedup(
    embeddings: Any,
    scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    reference: Any = None,
    **kwargs: Any,
) -> np.ndarray:
    """Boolean keep-mask of GRA's score-ordered greedy semantic deduplication.

    Rows are visited in descending ``scores`` (ties: the earlier row first; NaN last); a
    row is kept iff its cosine similarity to every row kept before it and to every
    ``reference`` row is below ``threshold``. ``embeddings`` (n x d; may be a
    ``numpy.memmap``) and ``reference`` (m x d) need not be normalized. The result
    equals a float64 brute-force loop. Keyword arguments: as
    :func:`greedy_semantic_dedup_details`, whose fast path this is.
    """
    return greedy_semantic_dedup_details(embeddings, scores, threshold, reference, **kwargs).keep


def greedy_semantic_dedup_details(
    embeddings: Any,
    scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    reference: Any = None,
    *,
    method: Method = "auto",
    device: str | None = None,
    dims: int | None = None,
    clusters: int | None = None,
    block_size: int | None = None,
    seed: int = 0,
) -> DedupResult:
    """:func:`greedy_semantic_dedup` with each dropped row's witness (see :class:`DedupResult`).

    ``method``: ``"auto"`` lets a sample of the data choose; ``"blocked"`` is plain
    blocked brute force (full products); ``"projected"`` screens with bounding keys of
    ``dims`` dimensions; ``"pruned"`` skips clusters with pivot bounds (``clusters``
    pivots, about ``1.5 sqrt(n)`` by default; ``dims`` keys inside them if given).
    ``device``: ``None`` (CUDA if available, else numpy), ``"numpy"``, or a torch device
    such as ``"cuda"`` or ``"cpu"``. ``seed`` seeds the samples (the result never depends
    on it, only the speed does). ``stats`` says what was done.
    """
    if method not in ("auto", "blocked", "projected", "pruned"):
        raise ValueError(
            f"method must be 'auto', 'blocked', 'projected' or 'pruned', got {method!r}"
        )
    start = time.perf_counter()
    ops = make_ops(resolve_device(device))
    cand = Unit(embeddings)
    order = _visit_order(scores, len(cand))
    ref = None
    if reference is not None and len(reference):
        ref = Unit(reference)
        if ref.dim != cand.dim:
            raise ValueError(f"reference has {ref.dim} dims, embeddings have {cand.dim}")
    threshold = float(threshold)
    n = len(cand)
    result = DedupResult(
        np.zeros(n, dtype=bool),
        np.full(n, -1, dtype=np.int64),
        np.zeros(n, dtype=bool),
        np.full(n, np.nan),
        order,
        DedupStats(method, ops.name, dims=cand.dim),
    )
    if threshold > 0.0:
        # a zero row has cosine 0 with everything: kept, and it removes nothing
        result.keep[cand.inv == 0] = True
        order = order[cand.inv[order] > 0]
    if len(order):
        with true_float32(ops):
            plan = _Plan.choose(
                cand, order, threshold, ops, method, dims, clusters, block_size, seed
            )
            run = _Run(cand, ref, threshold, ops, plan, result)
            run.prepare(order)
            for first in range(0, len(order), plan.block):
                run.block(order[first : first + plan.block])
    result.stats.seconds = time.perf_counter() - start
    return result


def rows_to_matrix(rows: Iterable[Mapping[str, Any]], column: str) -> np.ndarray:
    """The ``column`` of every row (each a sequence of numbers) as one float32 matrix.

    What a pipeline step calls before :func:`greedy_semantic_dedup_details`: rows hold
    embeddings as Python lists, and filling a preallocated float32 matrix row by row is
    the fastest plain-numpy conversion measured here (0.7 s for 100K x 384, against
    1.0 s for ``np.asarray`` on the list of lists and 2 s through pyarrow); it also
    names the first row whose length differs.
    """
    vectors = [row[column] for row in rows]
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    dim = len(vectors[0])
    out = np.empty((len(vectors), dim), dtype=np.float32)
    for i, vector in enumerate(vectors):
        if len(vector) != dim:
            raise ValueError(f"row {i} has a {len(vector)}-d {column!r}, row 0 has {dim}")
        out[i] = vector
    return out


def _visit_order(scores: np.ndarray, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != n:
        raise ValueError(f"got {len(s)} scores for {n} embeddings")
    key = np.where(np.isnan(s), np.inf, -s)  # descending score; NaN last
    return np.lexsort((np.arange(n), key))


# ---------------------------------------------------------------- planning

_SMALL = 4096
"""Inputs with fewer rows to visit run blocked brute force: planning would cost more."""
_CLUSTERED_MIN = 20_000
"""Below this, the pivot products and per-cluster loop cost more than they can save."""
_COST_OUT = 40.0
"""Per-pair cost of writing and testing one similarity, in units of one multiply-add
of a large float32 product (measured: a 97-column tile costs as much as 137 columns)."""
_COST_SCREENED = 40000.0
"""Per-pair cost, same units, of deciding a pair the keys let through (gather + full product)."""
_COST_SEGMENT = 4e6
"""Per (block, cluster) cost, same units, of the Python loop around a cluster's products."""


@dataclass
class _Plan:
    """What a run does: the method, key dimensions, pivots, block rows and tile columns."""

    method: str
    keys: Keys
    pivots: np.ndarray | None
    block: int
    tile: int
    why: str

    @classmethod
    def choose(
        cls,
        cand: Unit,
        rows: np.ndarray,
        threshold: float,
        ops: NumpyOps,
        method: str,
        dims: int | None,
        clusters: int | None,
        block_size: int | None,
        seed: int,
    ) -> _Plan:
        """Measure on a sample what each strategy would cost per pair and take the cheapest.

        A sample of rows is compared with another: the share of pairs that keys of each
        width let through, and (at scale) the share of pool rows whose clusters the
        pivot bound cannot rule out, give the cost per pair of each plan in units of
        one float32 multiply-add (the constants above were measured on BLAS here).
        """
        d, n = cand.dim, len(rows)
        exact = Keys(d)
        if method == "blocked" or threshold <= 0.0 or (method == "auto" and n < _SMALL):
            why = (
                "forced"
                if method == "blocked"
                else "small input or threshold <= 0: nothing to prune"
            )
            return cls._flat("blocked", exact, n, ops, block_size, why)
        rng = np.random.default_rng(seed)
        sample = cand.f64(rng.choice(rows, size=min(n, 6144), replace=False))
        # the basis comes from one half, the estimate from the other: principal directions
        # fit to the very rows they are tested on would promise more than they deliver
        half = len(sample) // 2
        basis = Keys.principal_basis(sample[:half])
        queries, pool = sample[half : half + half // 6], sample[half + half // 6 :]
        costs = {
            m: _key_cost(Keys(d, basis, m), queries, pool, threshold) for m in _dims_grid(d, dims)
        }
        best = min(costs, key=costs.__getitem__)
        keys = Keys(d, basis, best)
        flat = cls._flat("projected" if best < d else "blocked", keys, n, ops, block_size, "")
        flat.why = (
            f"key dims {best}: {costs[best]:.0f} per pair vs {d + _COST_OUT:.0f} for full products"
        )
        if (
            method == "projected"
            or (method == "auto" and n < _CLUSTERED_MIN)
            or (ops.gpu and method == "auto")
        ):
            return flat
        k = clusters or default_clusters(n)
        centres = pivots(cand, rows, k, seed)
        share = _cluster_share(
            centres, queries.astype(np.float32), pool.astype(np.float32), threshold
        )
        blocks = max(1, n // _pruned_block(n, block_size))
        inner = d + _COST_OUT if dims is None else costs.get(best, d + _COST_OUT)
        per_pair = share * inner + (k * d + blocks * k * _COST_SEGMENT / n) / max(1.0, n / 4)
        why = (
            f"{len(centres)} pivots leave {100 * share:.1f}% of pool rows: {per_pair:.0f} per pair"
        )
        if method == "auto" and per_pair >= costs[best]:
            flat.why += f"; {why}"
            return flat
        keys = keys if dims is not None else exact
        return cls("pruned", keys, centres, _pruned_block(n, block_size), 1 << 16, why)

    @classmethod
    def _flat(
        cls, method: str, keys: Keys, n: int, ops: NumpyOps, block_size: int | None, why: str
    ) -> _Plan:
        block = block_size or (8192 if ops.gpu else 2048)
        # a tile of similarities (block x tile float32) and its threshold test fit in cache
        tile = (1 << 16) if ops.gpu else int(max(256, cache_bytes() // (4 * block)))
        return cls(method, keys, None, block, tile, why)


def _dims_grid(d: int, dims: int | None) -> list[int]:
    if dims is not None:
        return [min(int(dims), d)]
    grid = {d} | {m for m in (d // 8, d // 6, d // 4, d // 3, d // 2) if m >= 8}
    return sorted(grid)


def _key_cost(keys: Keys, queries: np.ndarray, pool: np.ndarray, threshold: float) -> float:
    """Per-pair cost of screening with ``keys``: the product, the test, and deciding what passes."""
    if keys.exact or len(queries) == 0 or len(pool) == 0:
        return keys.dim + _COST_OUT
    bound = keys.of(queries) @ keys.of(pool).T
    # pairs that really collide are decided whatever the method; what keys cost is the
    # pairs they let through in vain (in a deduplicated pool nearly every pair is such)
    false = (bound >= np.float32(threshold - keys.slack)) & (
        queries.astype(np.float32) @ pool.astype(np.float32).T < threshold
    )
    passed = float(np.mean(false))
    return keys.width + _COST_OUT + passed * _COST_SCREENED


def _cluster_share(
    centres: np.ndarray, queries: np.ndarray, pool: np.ndarray, threshold: float
) -> float:
    """Share of pool rows in clusters that the pivot bound cannot rule out, on the sample."""
    centres32 = centres.astype(np.float32)
    own = (pool @ centres32.T).argmax(axis=1)
    cos_own = np.einsum("ij,ij->i", pool.astype(np.float64), centres[own])
    radius = np.ones(len(centres))
    np.minimum.at(radius, own, cos_own)
    sizes = np.bincount(own, minlength=len(centres))
    bound = cos_bound(radius, math.acos(min(1.0, threshold))) - float32_margin(pool.shape[1])
    near = (queries @ centres32.T) >= bound.astype(np.float32)
    return float((near @ sizes).mean() / len(pool)) if len(queries) and len(pool) else 1.0


def _pruned_block(n: int, block_size: int | None) -> int:
    """Rows per block with pivots: every block visits each cluster's kept rows once, so
    about 64 blocks keep that traffic low, while the (block x pivots) products stay small."""
    return block_size or int(min(16384, max(4096, n // 64)))


# ---------------------------------------------------------------- the run


class _Run:
    """State of one deduplication: the pools, the bounds and the result being filled."""

    def __init__(
        self, cand: Unit, ref: Unit | None, t: float, ops: NumpyOps, plan: _Plan, res: DedupResult
    ) -> None:
        self.cand, self.ref, self.t, self.ops, self.plan, self.result = cand, ref, t, ops, plan, res
        self.keys = plan.keys
        self._key_width = None if plan.keys.exact else plan.keys.width
        self.margin = float32_margin(cand.dim)
        self.beta = math.acos(max(-1.0, min(1.0, t)))
        self.searcher = Searcher(ops, plan.keys, t, plan.tile)
        stats = res.stats
        stats.method, stats.dims, stats.plan = plan.method, plan.keys.dims, plan.why
        stats.block_rows = plan.block
        stats.clusters = 1 if plan.pivots is None else len(plan.pivots)
        self.pivots = None if plan.pivots is None else ops.put(plan.pivots.astype(np.float32))

    def prepare(self, rows: np.ndarray) -> None:
        """Cluster every row to visit, size the kept pool, and store the reference rows."""
        n, k = len(self.cand), self.result.stats.clusters
        self.cluster = np.zeros(n, dtype=np.int64)
        self.cos_own = np.ones(n)
        if self.pivots is not None:
            self.cluster[rows], self.cos_own[rows] = assign(
                self.ops, self.cand, rows, self.plan.pivots, self.pivots
            )
            self.result.stats.pivot_products += len(rows) * k
        capacity = np.bincount(self.cluster[rows], minlength=k)
        self.pool = SegmentPool(self.ops, capacity, self.cand.dim, self._key_width)
        self.ref_pool = None
        if self.ref is not None:
            directed = self.ref.inv > 0 if self.t > 0 else np.ones(len(self.ref), dtype=bool)
            self.ref_pool = self._pool_of(self.ref, np.flatnonzero(directed))

    def _pool_of(self, unit: Unit, rows: np.ndarray) -> SegmentPool | None:
        if len(rows) == 0:
            return None
        k = self.result.stats.clusters
        cluster, cos_own = np.zeros(len(rows), dtype=np.int64), np.ones(len(rows))
        if self.pivots is not None:
            cluster, cos_own = assign(self.ops, unit, rows, self.plan.pivots, self.pivots)
            self.result.stats.pivot_products += len(rows) * k
        pool = SegmentPool(self.ops, np.bincount(cluster, minlength=k), unit.dim, self._key_width)
        at = 0
        for part, x64 in unit.chunks(rows):
            keys, full = self.ops.put(self.keys.of(x64)), self.ops.put(x64.astype(np.float32))
            pool.add(part, keys, full, cluster[at : at + len(part)], cos_own[at : at + len(part)])
            at += len(part)
        return pool

    def _near(self, upper: Any, pool: SegmentPool) -> np.ndarray | None:
        """Clusters of ``pool`` each block row may collide with (``None``: no pivots, all)."""
        if upper is None:
            return None
        return self.ops.above(upper, pool.bound(self.beta, self.margin))

    def block(self, rows: np.ndarray) -> None:
        """Visit one block: reference and pool hits, the in-block greedy, witnesses, growth."""
        ops, stats, n = self.ops, self.result.stats, len(rows)
        x64 = self.cand.f64(rows)
        full = ops.put(x64.astype(np.float32))
        keys = full if self.keys.exact else ops.put(self.keys.of(x64))
        upper = None if self.pivots is None else ops.mm(full, self.pivots)
        stats.pivot_products += 0 if upper is None else n * len(self.plan.pivots)
        n_ref = 0 if self.ref_pool is None else self.ref_pool.size
        stats.pairs_brute_force += n * (n_ref + self.pool.size) + n * (n - 1) // 2
        hits: list[Pairs] = []
        with one_blas_thread() if upper is not None else contextlib.nullcontext():
            for pool, unit, is_ref in (
                (self.ref_pool, self.ref, True),
                (self.pool, self.cand, False),
            ):
                if pool is not None and pool.size:
                    found = self.searcher.search(pool, keys, full, self._near(upper, pool))
                    hits.append(self._decide(found, pool, unit.f64, x64, is_ref))
            free = np.ones(n, dtype=bool)
            for h in hits:
                free[h.row] = False
            edges = self._in_block(rows, x64, keys, full, upper, free)
        live = _resolve(free, edges)
        edges = edges.take(np.flatnonzero(live[edges.partner]))  # only kept rows remove others
        edges.partner = rows[edges.partner]  # block position -> row index
        self._witness(rows, x64, Pairs.concat([*hits, edges]))
        kept = np.flatnonzero(live)
        ids = rows[kept]
        self.pool.add(
            ids, ops.take(keys, kept), ops.take(full, kept), self.cluster[ids], self.cos_own[ids]
        )
        self.result.keep[ids] = True
        stats.pairs_compared, stats.screened = self.searcher.compared, self.searcher.screened

    def _in_block(
        self, rows: np.ndarray, x64: np.ndarray, keys: Any, full: Any, upper: Any, free: np.ndarray
    ) -> Pairs:
        """Exact collisions (earlier ``partner`` -> later ``row``, block positions) inside
        the block, from rows the pool left free (only they can be kept, so only they can
        remove a row)."""
        sources = np.flatnonzero(free)
        if len(sources) == 0 or len(rows) < 2:
            return Pairs.concat([])
        cluster = self.cluster[rows[sources]]
        capacity = np.bincount(cluster, minlength=self.result.stats.clusters)
        tmp = SegmentPool(self.ops, capacity, self.cand.dim, self._key_width)
        src_keys, src_full = self.ops.take(keys, sources), self.ops.take(full, sources)
        tmp.add(sources, src_keys, src_full, cluster, self.cos_own[rows[sources]])
        found = self.searcher.search(tmp, keys, full, self._near(upper, tmp))
        found = found.take(np.flatnonzero(tmp.ids[found.partner] < found.row))
        return self._decide(found, tmp, x64.__getitem__, x64, False)

    def _decide(
        self,
        found: Pairs,
        pool: SegmentPool,
        f64: Callable[[np.ndarray], np.ndarray],
        x64: np.ndarray,
        is_ref: bool,
    ) -> Pairs:
        """The pairs whose exact cosine is >= threshold, partners named by their ``ids``;
        float64 (partner rows from ``f64``) where float32 cannot tell."""
        found.partner = pool.ids[found.partner]
        found.is_ref[:] = is_ref
        band = np.flatnonzero(found.value < self.t + self.margin)
        if len(band):
            other = f64(found.partner[band])
            found.exact[band] = np.einsum("ij,ij->i", x64[found.row[band]], other)
            self.result.stats.exact_rechecks += len(band)
        real = (found.value >= self.t + self.margin) | (found.exact >= self.t)
        return found.take(np.flatnonzero(real))

    def _witness(self, rows: np.ndarray, x64: np.ndarray, hits: Pairs) -> None:
        """For each dropped row, its nearest hit: float32 values within the margin of each
        other are the only contenders, and float64 decides among them where there are several."""
        if len(hits.row) == 0:
            return
        h = hits.take(np.lexsort((-hits.value, hits.row)))
        first = np.r_[True, h.row[1:] != h.row[:-1]]
        group = np.cumsum(first) - 1
        h = h.take(np.flatnonzero(h.value >= h.value[first][group] - 2 * self.margin))
        first = np.r_[True, h.row[1:] != h.row[:-1]]
        contested = np.flatnonzero(np.diff(np.r_[np.flatnonzero(first), len(h.row)]) > 1)
        todo = np.flatnonzero(np.isin(h.row, h.row[first][contested]) & np.isnan(h.exact))
        for is_ref, unit in ((True, self.ref), (False, self.cand)):
            sel = todo[h.is_ref[todo] == is_ref]
            if len(sel):
                h.exact[sel] = np.einsum("ij,ij->i", x64[h.row[sel]], unit.f64(h.partner[sel]))
                self.result.stats.exact_rechecks += len(sel)
        value = np.where(np.isnan(h.exact), h.value, h.exact)
        order = np.lexsort((h.partner, ~h.is_ref, -value, h.row))
        h, value = h.take(order), value[order]
        first = np.r_[True, h.row[1:] != h.row[:-1]]
        target = rows[h.row[first]]
        res = self.result
        res.match[target], res.match_is_reference[target] = h.partner[first], h.is_ref[first]
        res.similarity[target] = value[first]


def _resolve(free: np.ndarray, edges: Pairs) -> np.ndarray:
    """Greedy inside a block: each kept row, in order, removes the later rows it collides with.

    A row's own fate is settled before it acts (all its incoming edges come from
    earlier rows), so visiting sources in ascending order is the greedy loop; rows
    without in-block collisions are never visited.
    """
    live = free.copy()
    if len(edges.row) == 0:
        return live
    by = np.argsort(edges.partner, kind="stable")
    sources, first = np.unique(edges.partner[by], return_index=True)
    for src, targets in zip(sources, np.split(edges.row[by], first[1:]), strict=True):
        if live[src]:
            live[targets] = False
    return live
