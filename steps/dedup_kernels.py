"""Exact building blocks of :mod:`synthalign.steps.dedup`: array backends, the rows of the
input, bounding keys, cluster bounds, the kept pool and the candidate search.

Everything here either computes a similarity with a proven error bound or proves that a
pair cannot reach the threshold; nothing is approximate. The driver in
:mod:`synthalign.steps.dedup` decides which of these to combine for a given input.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it BLAS keeps its own setting
    threadpool_limits = None

STREAM_ROWS = 4096
"""Rows read from the input at a time in streaming passes (a 384-d float64 chunk is 12 MiB)."""
_U32 = 2.0**-24
"""Unit roundoff of float32."""
_TRIG_SLACK = 1e-9
"""Subtracted from every float64 pruning bound: covers the rounding of arccos/cos (~1e-15)."""


def _gamma(n: int) -> float:
    """Higham's gamma_n for float32: the relative error bound of an n-term sum of products."""
    return n * _U32 / (1.0 - n * _U32)


def float32_margin(dim: int) -> float:
    """A bound on |float32 cosine - exact cosine| for unit vectors of dimension ``dim``.

    Rounding the unit vectors to float32 moves their dot product by at most ~2u, and
    a float32 dot product of length ``dim`` accumulates at most ``dim * u / (1 - dim*u)``
    (u = 2**-24) whatever the summation order; doubling the sum keeps a safe distance.
    """
    return 2.0 * _gamma(dim + 2)


def key_slack(dims: int) -> float:
    """A bound on |float32 key product - exact key product| for keys of ``dims`` head
    coordinates (see :class:`Keys`): keys are computed in float64 and rounded once, so
    they are unit vectors of ``dims + 1`` numbers within float32 rounding, and the
    margin of such a product applies (plus 1e-9 for the float64 rotation itself)."""
    return float32_margin(dims + 1) + 1e-9


# ---------------------------------------------------------------- array backends


def cache_bytes() -> int:
    """Bytes of the largest per-core cache below the last level (L2), times the usable cores.

    Tiles of similarities are sized to it, so a product and the threshold test that
    reads it back stay in cache. Falls back to 1 MiB a core where sysfs does not say.
    """
    size = 1 << 20
    with contextlib.suppress(OSError, ValueError):
        text = open("/sys/devices/system/cpu/cpu0/cache/index2/size").read().strip()  # noqa: SIM115
        size = (
            int(text[:-1]) * (1024 if text.endswith("K") else 1 << 20)
            if text[-1] in "KM"
            else int(text)
        )
    return size * cores()


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class NumpyOps:
    """Products and reductions on host numpy arrays (float32 BLAS)."""

    name = "numpy"
    gpu = False

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

    def argmax_rows(self, sims: Any) -> np.ndarray:
        return np.asarray(sims.argmax(axis=1), dtype=np.int64)

    def at_least(self, sims: Any, lo: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, col, value) of the entries ``>= lo``.

        On the flattened array: numpy's 2-D ``nonzero`` is several times slower than the
        product that filled the tile, the 1-D one a fraction of it.
        """
        flat = np.ascontiguousarray(sims).reshape(-1)
        hit = np.flatnonzero(flat >= np.float32(lo))
        r, c = np.divmod(hit, sims.shape[1])
        return r, c, flat[hit]

    def above(self, sims: Any, lo: Any) -> np.ndarray:
        """Host boolean mask ``sims >= lo`` (``lo`` broadcast along rows)."""
        return np.asarray(sims >= lo)

    def dots(self, a: Any, ai: np.ndarray, b: Any, bi: np.ndarray) -> np.ndarray:
        """float32 ``a[ai[k]] . b[bi[k]]`` for every k."""
        return np.einsum("ij,ij->i", a[ai], b[bi])


class TorchOps(NumpyOps):
    """The same operations with torch on ``device``; only small results come back to the host."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch:{self.device}"
        self.gpu = self.device.type != "cpu"

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

    def argmax_rows(self, sims: Any) -> np.ndarray:
        return self.host(sims.argmax(dim=1)).astype(np.int64)

    def at_least(self, sims: Any, lo: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, c = self.torch.nonzero(sims >= lo, as_tuple=True)
        return self.host(r), self.host(c), self.host(sims[r, c])

    def above(self, sims: Any, lo: Any) -> np.ndarray:
        bound = self.torch.from_numpy(np.asarray(lo, dtype=np.float32)).to(self.device)
        return self.host(sims >= bound)

    def dots(self, a: Any, ai: np.ndarray, b: Any, bi: np.ndarray) -> np.ndarray:
        return self.host((a[self._index(ai)] * b[self._index(bi)]).sum(dim=1))


def resolve_device(device: str | None) -> str:
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


def make_ops(device: str) -> NumpyOps:
    return NumpyOps() if device == "numpy" else TorchOps(device)


@contextlib.contextmanager
def true_float32(ops: NumpyOps) -> Iterator[None]:
    """TF32 products carry ~1e-3 error, far beyond the margin: force full float32 for the call."""
    if not isinstance(ops, TorchOps):
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


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Small products on one BLAS thread: waking the others costs more than they save
    (ten times more on a busy machine), and the caller runs its own threads instead."""
    if threadpool_limits is None:  # optional: without it BLAS keeps its own setting
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# ---------------------------------------------------------------- rows of the input


class Unit:
    """Unit vectors of the caller's rows, computed on demand from the (possibly memory-mapped) input.

    Only the float64 norms (8 bytes a row) are held; float64 rows for exact checks and
    float32 rows for products are gathered and normalized when asked for, so a
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
        self.norms = norms
        self.inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)

    def __len__(self) -> int:
        return self.raw.shape[0]

    @property
    def dim(self) -> int:
        return int(self.raw.shape[1])

    def f64(self, rows: np.ndarray) -> np.ndarray:
        """float64 unit rows, ``x / |x|`` (division, as a plain float64 loop would; zero rows stay 0)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) > 1 and isinstance(self.raw, np.memmap):
            # sorted reads are sequential on disk; put the rows back in the asked order
            perm = np.argsort(rows, kind="stable")
            got = np.empty((len(rows), self.dim))
            got[perm] = self.raw[rows[perm]]
        else:
            got = np.asarray(self.raw[rows], dtype=np.float64)
        norms = self.norms[rows, None]
        return np.divide(got, norms, out=np.zeros_like(got), where=norms > 0)

    def f32(self, rows: np.ndarray) -> np.ndarray:
        return self.f64(rows).astype(np.float32)

    def chunks(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, float64 unit vectors) in streaming chunks."""
        for start in range(0, len(rows), STREAM_ROWS):
            part = rows[start : start + STREAM_ROWS]
            yield part, self.f64(part)


def exact_pairs(a: Unit, ai: np.ndarray, b: Unit, bi: np.ndarray) -> np.ndarray:
    """float64 cosine of the pairs ``(a[ai[k]], b[bi[k]])``."""
    if len(ai) == 0:
        return np.zeros(0)
    return np.einsum("ij,ij->i", a.f64(ai), b.f64(bi))


# ---------------------------------------------------------------- bounding keys


class Keys:
    """Short vectors whose products bound the cosine from above (``dims < d``), or the
    unit vectors themselves (``dims == d``).

    With ``V`` an orthonormal basis (the principal directions of a sample, so that the
    first ``dims`` coordinates carry most of the energy), ``x . y = h(x) . h(y) +
    t(x) . t(y) <= h(x) . h(y) + |t(x)| |t(y)|`` for the head ``h`` (first ``dims``
    coordinates of ``V^T x``) and tail ``t`` (Cauchy-Schwarz), and ``|t(x)|^2 = 1 -
    |h(x)|^2`` for a unit ``x``. So the key ``[h(x), |t(x)|]`` (``dims + 1`` numbers, a
    unit vector again) of two rows has a product that is never below their cosine: a
    pair whose key product is below the threshold (minus :func:`key_slack`) cannot
    collide, and one matrix product with a fraction of the columns screens the pairs
    that full products then decide. Keys are computed in float64 from the float64 unit
    rows (only the head columns of ``V`` are multiplied) and rounded once.
    """

    def __init__(self, dim: int, basis: np.ndarray | None = None, dims: int | None = None) -> None:
        self.dim = dim
        self.dims = dim if basis is None or dims is None or dims >= dim else max(1, int(dims))
        self.head = (
            None
            if self.dims == dim
            else np.ascontiguousarray(np.asarray(basis)[:, : self.dims], dtype=np.float64)
        )
        self.width = dim if self.head is None else self.dims + 1
        self.slack = float32_margin(dim) if self.head is None else key_slack(self.dims)

    @property
    def exact(self) -> bool:
        """Key products are the float32 cosines themselves."""
        return self.head is None

    @staticmethod
    def principal_basis(sample: np.ndarray) -> np.ndarray:
        """Eigenvectors of the (uncentred) second moment of ``sample``, largest first."""
        x = np.asarray(sample, dtype=np.float64)
        _, vectors = np.linalg.eigh(x.T @ x)
        return vectors[:, ::-1]

    def of(self, x64: np.ndarray) -> np.ndarray:
        """float32 keys of float64 unit rows (host arrays); zero rows get zero keys."""
        if self.head is None:
            return x64.astype(np.float32)
        out = np.empty((len(x64), self.width), dtype=np.float32)
        head = x64 @ self.head
        out[:, : self.dims] = head
        energy = np.einsum("ij,ij->i", x64, x64)  # 1 for unit rows, 0 for zero rows
        out[:, self.dims] = np.sqrt(np.maximum(0.0, energy - np.einsum("ij,ij->i", head, head)))
        return out


# ---------------------------------------------------------------- cluster bounds


def default_clusters(n: int) -> int:
    """About ``1.5 sqrt(n)`` pivots: the (block x k) pivot products cost ``n k d`` and
    the surviving pairs about ``n (n / k) d`` on clustered data; this balances the two."""
    return int(min(4096, max(1, round(1.5 * math.sqrt(max(n, 1))))))


def pivots(unit: Unit, rows: np.ndarray, k: int, seed: int, iterations: int = 6) -> np.ndarray:
    """``k`` unit pivots from spherical k-means on a sample of ``rows`` (float64).

    Any pivots give exact bounds; good ones (cluster centres) give tight ones, and a
    sample of ~20 rows a pivot finds them about as well as the whole input would.
    Cluster sums are (k x chunk) one-hot products, chunked to keep memory small.
    """
    rng = np.random.default_rng(seed)
    size = min(len(rows), max(20 * k, 2000))
    x = unit.f32(np.sort(rng.choice(rows, size=size, replace=False)))
    k = min(k, len(x))
    centres = x[rng.choice(len(x), size=k, replace=False)]
    for _ in range(iterations):
        sums = np.zeros_like(centres)
        for start in range(0, len(x), 2048):
            part = x[start : start + 2048]
            onehot = np.zeros((k, len(part)), dtype=np.float32)
            onehot[(part @ centres.T).argmax(axis=1), np.arange(len(part))] = 1.0
            sums += onehot @ part
        norms = np.linalg.norm(sums, axis=1)
        empty = norms == 0
        if empty.any():  # reseed empty clusters with random sample rows
            sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
            norms[empty] = np.linalg.norm(sums[empty], axis=1)
        centres = sums / norms[:, None]
    centres64 = centres.astype(np.float64)
    return centres64 / np.linalg.norm(centres64, axis=1, keepdims=True)


def assign(
    ops: NumpyOps, unit: Unit, rows: np.ndarray, pivots64: np.ndarray, pivots32: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of each row (its float32-nearest pivot) and the exact float64 cosine to it.

    The assignment need not be optimal for the bounds to hold (the radius is measured on
    the actual members); only the cosine must be exact.
    """
    cluster = np.empty(len(rows), dtype=np.int64)
    cos_own = np.empty(len(rows))
    at = 0
    for part, x64 in unit.chunks(rows):
        arg = ops.argmax_rows(ops.mm(ops.put(x64.astype(np.float32)), pivots32))
        cluster[at : at + len(part)] = arg
        cos_own[at : at + len(part)] = np.einsum("ij,ij->i", x64, pivots64[arg])
        at += len(part)
    return cluster, cos_own


def cos_bound(cos_radius: np.ndarray, beta: float) -> np.ndarray:
    """Per cluster: the pivot cosine below which no member can reach ``cos(beta)``.

    A member is within angle ``r = arccos(cos_radius)`` of the pivot, so a row at angle
    ``a`` from the pivot is at least ``a - r`` from it; it can only reach the threshold
    angle ``beta`` if ``a <= r + beta``, i.e. ``cos a >= cos(min(pi, r + beta))``.
    """
    radius = np.arccos(np.clip(cos_radius, -1.0, 1.0))
    return np.cos(np.minimum(np.pi, radius + beta)) - _TRIG_SLACK


# ---------------------------------------------------------------- the kept pool


class SegmentPool:
    """Rows stored cluster by cluster (contiguous per cluster), on the ops' device.

    ``keys`` are what the search multiplies; ``full`` the float32 unit vectors that
    decide its candidates (the same array when the keys are exact). ``cos_radius[c]``:
    the smallest exact cosine between pivot ``c`` and a stored member. With several
    clusters the segments are preallocated (``capacity`` rows each; untouched pages of
    ``zeros`` cost no memory); a single segment grows by doubling, so a pool that keeps
    5% of a million rows holds 5%, not the million.
    """

    def __init__(self, ops: NumpyOps, capacity: np.ndarray, dim: int, width: int | None) -> None:
        """``width``: key columns, or ``None`` when the keys are the unit vectors themselves."""
        self.ops, self.dim, self.width = ops, dim, width
        self.capacity = np.asarray(capacity, dtype=np.int64)
        self.offset = np.concatenate([[0], np.cumsum(capacity)]).astype(np.int64)
        self.count = np.zeros(len(capacity), dtype=np.int64)
        self.cos_radius = np.ones(len(capacity))
        self._allocate(
            int(self.offset[-1]) if len(capacity) > 1 else min(int(self.offset[-1]), 1024)
        )

    def _allocate(self, rows: int) -> None:
        old = None if not hasattr(self, "ids") else (self.full, self.keys, self.ids)
        self.full = self.ops.zeros(rows, self.dim)
        self.keys = self.full if self.width is None else self.ops.zeros(rows, self.width)
        self.ids = np.full(rows, -1, dtype=np.int64)
        if old is not None:
            used = int(self.count.sum())
            self.full[:used] = old[0][:used]
            if self.width is not None:
                self.keys[:used] = old[1][:used]
            self.ids[:used] = old[2][:used]

    @property
    def size(self) -> int:
        return int(self.count.sum())

    def add(
        self, ids: np.ndarray, keys: Any, full: Any, cluster: np.ndarray, cos_own: np.ndarray
    ) -> None:
        """Append rows (``keys``/``full`` already on the device) to their clusters."""
        if len(ids) == 0:
            return
        if len(self.count) == 1:  # one segment: append as a slice, growing by doubling
            at = int(self.count[0])
            if at + len(ids) > len(self.ids):
                self._allocate(int(min(self.capacity[0], max(at + len(ids), 2 * len(self.ids)))))
            self.full[at : at + len(ids)] = full
            if self.width is not None:
                self.keys[at : at + len(ids)] = keys
            self.ids[at : at + len(ids)] = ids
            self.count[0] += len(ids)
            self.cos_radius[0] = min(self.cos_radius[0], float(np.min(cos_own)))
            return
        by = np.argsort(cluster, kind="stable")
        c = cluster[by]
        first = np.searchsorted(c, c, side="left")
        pos = self.offset[c] + self.count[c] + (np.arange(len(c)) - first)
        self.ops.assign(self.full, pos, self.ops.take(full, by))
        if self.width is not None:
            self.ops.assign(self.keys, pos, self.ops.take(keys, by))
        self.ids[pos] = ids[by]
        self.count += np.bincount(c, minlength=len(self.count))
        np.minimum.at(self.cos_radius, c, cos_own[by])

    def bound(self, beta: float, margin: float) -> np.ndarray:
        """float32 pivot-cosine bound per cluster (``inf`` for empty ones), margin included."""
        out = cos_bound(self.cos_radius, beta) - margin
        out[self.count == 0] = np.inf
        return out.astype(np.float32)


@dataclass
class Pairs:
    """Pairs of a block row (``row``, its position in the block) and a ``partner`` (a
    position in the pool searched, or a row index once resolved), with their float32
    cosine ``value``, the float64 one in ``exact`` where computed (else nan), and
    whether the partner is a reference row."""

    row: np.ndarray
    partner: np.ndarray
    value: np.ndarray
    exact: np.ndarray = field(default_factory=lambda: np.zeros(0))
    is_ref: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if len(self.exact) != len(self.row):
            self.exact = np.full(len(self.row), np.nan)
        if len(self.is_ref) != len(self.row):
            self.is_ref = np.zeros(len(self.row), dtype=bool)

    def take(self, idx: np.ndarray) -> Pairs:
        return Pairs(*(getattr(self, f)[idx] for f in _PAIR_FIELDS))

    @classmethod
    def concat(cls, parts: list[Pairs]) -> Pairs:
        if not parts:
            return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _PAIR_FIELDS))


_PAIR_FIELDS = ("row", "partner", "value", "exact", "is_ref")


class Searcher:
    """Finds every (query, pool row) pair whose float32 cosine is within ``margin`` of
    ``threshold`` or above, comparing only where the cluster bound (``near``) allows,
    screening with key products and deciding the survivors with full products.

    Products are taken in tiles of ``tile`` pool rows so that the similarities and the
    threshold test over them stay in cache.
    """

    def __init__(self, ops: NumpyOps, keys: Keys, threshold: float, tile: int) -> None:
        self.ops, self.keys, self.tile = ops, keys, max(1, tile)
        self.margin = float32_margin(keys.dim)
        self.key_lo = float(threshold - keys.slack)
        self.lo = float(threshold - self.margin)
        self.compared = 0
        self.screened = 0

    def search(self, pool: SegmentPool, qkeys: Any, qfull: Any, near: np.ndarray | None) -> Pairs:
        """``near``: (queries x clusters) mask of clusters the bound cannot rule out, or
        ``None`` for all of them."""
        parts: list[Pairs] = []
        filled = pool.count > 0
        clusters = np.flatnonzero(filled if near is None else filled & near.any(axis=0))
        all_rows = None
        for c in clusters:
            rows = all_rows if near is None else np.flatnonzero(near[:, c])
            if rows is None:
                rows = all_rows = np.arange(len(qfull))
            lo, hi = int(pool.offset[c]), int(pool.offset[c] + pool.count[c])
            qk = qkeys if near is None else self.ops.take(qkeys, rows)
            qf = qfull if near is None else self.ops.take(qfull, rows)
            for start in range(lo, hi, self.tile):
                stop = min(hi, start + self.tile)
                found = self._tile(pool, qk, qf, start, stop)
                if found is not None:
                    parts.append(Pairs(rows[found.row], found.partner, found.value))
            self.compared += len(rows) * (hi - lo)
        return Pairs.concat(parts)

    def _tile(self, pool: SegmentPool, qk: Any, qf: Any, start: int, stop: int) -> Pairs | None:
        ops = self.ops
        r, c, v = ops.at_least(
            ops.mm(qk, pool.keys[start:stop]), self.key_lo if not self.keys.exact else self.lo
        )
        if len(r) == 0:
            return None
        if not self.keys.exact:  # screened pairs: decide them with the full product
            self.screened += len(r)
            if len(r) > 8 * len(qk) or len(r) * 64 > (stop - start) * len(qk):
                rows = np.unique(r)  # dense survivors: one full product is cheaper than gathers
                dense = ops.host(ops.mm(ops.take(qf, rows), pool.full[start:stop]))
                v = dense[np.searchsorted(rows, r), c]
            else:
                v = ops.dots(qf, r, pool.full[start:stop], c)
            ok = v >= self.lo
            r, c, v = r[ok], c[ok], v[ok]
        return Pairs(r, c + start, v)
