"""Exact dedup against blocked brute force, regime by regime, side by side in one process.

For each regime (100K x 384 by default) the same vectors and scores go to:

* **blocked brute force**, as the issue describes it: normalize; for each block of
  2048 rows in score order, one float32 GEMM against the kept pool (row maxima) and a
  greedy pass inside the block (one block x block GEMM, then each surviving row drops
  the later rows it collides with). The few maxima within float32 error of the
  threshold are re-decided in float64, so that it is exact too;
* **ours**: ``greedy_semantic_dedup_details`` with its defaults (the GRA step's call).

The two runs alternate ``--repeats`` times (brute, ours, brute, ours, ...) so both see
the same machine load; each column is the best of its runs, the masks must be
identical (asserted), and the ratio is printed.

Regimes: many small clusters whose member-member cosine is spread around the 0.9
threshold (c * centre + sqrt(1 - c^2) * noise, c^2 uniform in a range), sized so that
about 5%, 50% and 90% of the rows are kept. Centres and noise are Gaussian with
eigenvalues ~ 1/i (as sentence embeddings: most energy in the leading directions),
randomly rotated. "isotropic 50%" is the same with a flat spectrum, the worst case for
any bound (reported, not a target). "own" is ``dedup_scale.synthetic``: sqrt(n) topics
plus 20% planted near-duplicates.

Then the GRA pipeline step, simulated: 100K rows as dicts holding a list-of-float
``embedding``, converted with ``rows_to_matrix``, deduplicated, witness fields written
back into the rows, against the function alone on the same arrays (target <= 1.3x).

    python benchmarks/dedup_regimes.py                        # 4 regimes + step, ~6 min here
    python benchmarks/dedup_regimes.py --rows 1000000 --regimes own   # the 1M claim, ~2-4 min
    python benchmarks/dedup_regimes.py --rows 1000000 --device cuda   # on a GPU (not for CI)

Above 200K rows brute force is not run (hours on 2 cores) unless ``--brute``. With
``--device cuda`` (or ``cpu``) the baseline runs its products in torch on that device too.
Timings here: the default run takes about 6 minutes on the 2-core machine; ``--rows
1000000 --regimes own`` about 2 minutes (113 s for ours).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from synthalign.steps.dedup import greedy_semantic_dedup_details, rows_to_matrix
from synthalign.steps.dedup_kernels import cache_bytes, cores, float32_margin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_scale import synthetic

THRESHOLD = 0.9
DIM = 384
# name: (clusters per row, c^2 low, c^2 high, spectrum power)
REGIMES: dict[str, tuple[float, float, float, float]] = {
    "5% kept": (0.05, 0.90, 0.99, 1.0),
    "50% kept": (0.25, 0.80, 0.99, 1.0),
    "90% kept": (2.5, 0.80, 0.99, 1.0),
    "isotropic 50%": (0.25, 0.80, 0.99, 0.0),
}


def clustered(
    n: int, spec: tuple[float, float, float, float], seed: int = 3, dim: int = DIM
) -> np.ndarray:
    """``n`` unit rows in ``spec[0] * n`` clusters, member = c * centre + sqrt(1 - c^2) * noise."""
    per_row, lo, hi, power = spec
    rng = np.random.default_rng(seed)
    scale = ((1.0 + np.arange(dim)) ** (-power / 2)).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)

    def draw(m: int) -> np.ndarray:
        v = (rng.normal(size=(m, dim)).astype(np.float32) * scale) @ rotation
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    centres = draw(max(1, int(per_row * n)))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        m = min(65536, n - start)
        c = np.sqrt(rng.uniform(lo, hi, size=(m, 1))).astype(np.float32)
        x = c * centres[rng.integers(0, len(centres), m)] + np.sqrt(1 - c * c) * draw(m)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def visit_order(scores: np.ndarray) -> np.ndarray:
    key = np.where(np.isnan(scores), np.inf, -scores)
    return np.lexsort((np.arange(len(scores)), key))


def _array_backend(device: str | None) -> tuple[Any, Any, Any]:
    """``(xp, put, get)``: numpy in place, or torch on ``device`` (TF32 off) with copies."""
    if device is None:
        return np, (lambda a: a), (lambda a: a)
    import torch  # heavy: only the GPU runs need it

    torch.backends.cuda.matmul.allow_tf32 = False
    return torch, (lambda a: torch.from_numpy(a).to(device)), (lambda t: t.cpu().numpy())


def blocked_brute_force(
    x: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    device: str | None = None,
    block: int = 2048,
) -> np.ndarray:
    """The issue's baseline: per block of 2048 rows in score order, one GEMM against the
    kept pool and a greedy pass inside the block; float64 only where float32 cannot tell.
    With ``device``, the products run in torch there (for GPU runs)."""
    xp, put, get = _array_backend(device)
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = put(np.divide(x, norms, out=np.zeros_like(x), where=norms > 0))
    margin = float32_margin(x.shape[1])
    order = visit_order(scores)
    pool = xp.empty_like(unit)
    pool_ids = np.empty(len(x), dtype=np.int64)
    k = 0
    keep = np.zeros(len(x), dtype=bool)
    exact = _Exact(x)
    for start in range(0, len(order), block):
        rows = order[start : start + block]
        xb = unit[put(rows)]
        alive = np.ones(len(rows), dtype=bool)
        if k:
            sims = xb @ pool[:k].T
            best = get(xp.amax(sims, 1))
            alive = best < threshold
            for i in np.flatnonzero(np.abs(best - threshold) < margin):  # rare
                near = np.flatnonzero(get(sims[i] >= threshold - margin))
                alive[i] = not (exact.pairs(rows[i], pool_ids[near]) >= threshold).any()
        inner = get(xb @ xb.T)
        conflict = np.triu(inner >= threshold, 1)
        for i, j in zip(*np.nonzero(np.triu(np.abs(inner - threshold) < margin, 1)), strict=True):
            conflict[i, j] = exact.pairs(rows[i], rows[j : j + 1])[0] >= threshold
        for i in np.flatnonzero(conflict.any(axis=1)):
            if alive[i]:
                alive[conflict[i]] = False
        kept = rows[alive]
        pool[k : k + len(kept)] = unit[put(kept)]
        pool_ids[k : k + len(kept)] = kept
        k += len(kept)
        keep[kept] = True
    return keep


class _Exact:
    """float64 cosines of a few pairs, normalized the way the library does (x / |x|)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.norms = np.linalg.norm(x.astype(np.float64), axis=1)

    def pairs(self, i: int, js: np.ndarray) -> np.ndarray:
        a = self.x[i].astype(np.float64) / self.norms[i]
        b = self.x[js].astype(np.float64) / self.norms[js, None]
        return b @ a


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run_regime(
    name: str, x: np.ndarray, scores: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """Alternate brute force and ours; best time of each; identical masks."""
    brute_times: list[float] = []
    ours_times: list[float] = []
    brute = None
    ours = None
    run_brute = args.brute or len(x) <= 200_000
    for _ in range(args.repeats):
        if run_brute:
            device = None if args.device in (None, "numpy") else args.device
            brute, t = timed(blocked_brute_force, x, scores, THRESHOLD, device)
            brute_times.append(t)
        ours, t = timed(greedy_semantic_dedup_details, x, scores, THRESHOLD, device=args.device)
        ours_times.append(t)
    assert ours is not None
    same = None
    if brute is not None:
        same = int((brute != ours.keep).sum())
        assert same == 0, f"{name}: {same} rows differ from brute force"
    row = {
        "regime": name,
        "rows": len(x),
        "kept": float(ours.keep.mean()),
        "brute": min(brute_times) if brute_times else None,
        "ours": min(ours_times),
        "method": f"{ours.stats.method} (dims {ours.stats.dims}, {ours.stats.clusters} clusters)",
        "plan": ours.stats.plan,
        "differ": same,
    }
    brute_s = "not run" if row["brute"] is None else f"{row['brute']:.2f} s"
    ratio = "" if row["brute"] is None else f"  ratio {row['brute'] / row['ours']:.2f}x"
    print(
        f"{name:>14}: kept {100 * row['kept']:5.1f}%  brute {brute_s:>9}"
        f"  ours {row['ours']:7.2f} s{ratio}"
        f"  [{row['method']}; {row['plan']}]",
        flush=True,
    )
    return row


def gra_step(rows: list[dict[str, Any]], pool: list[dict[str, Any]], threshold: float) -> None:
    """What GRA's DeduplicateSamples does around the call: rows in, witness fields out."""
    emb = rows_to_matrix(rows, "embedding")
    scores = np.array([np.nan if r["review_mean"] is None else r["review_mean"] for r in rows])
    ref = rows_to_matrix(pool, "embedding") if pool else None
    result = greedy_semantic_dedup_details(emb, scores, threshold, ref)
    match, is_ref, sim, keep = (
        result.match.tolist(),
        result.match_is_reference.tolist(),
        result.similarity.tolist(),
        result.keep.tolist(),
    )
    for k, row in enumerate(rows):
        j = match[k]
        row["dedup_match"] = (
            None if j < 0 else (pool[j]["pool_id"] if is_ref[k] else rows[j]["candidate_id"])
        )
        row["dedup_similarity"] = None if j < 0 else sim[k]
        if keep[k]:
            row.update({"status": "kept", "status_reason": None})
        else:
            reason = f"cosine {sim[k]:.4f} >= {threshold:g} with {row['dedup_match']}"
            row.update({"status": "duplicate", "status_reason": reason})


def run_step(x: np.ndarray, scores: np.ndarray, args: argparse.Namespace) -> float:
    """The simulated pipeline step against the function alone, alternating; best of each."""
    ref = clustered(1000, REGIMES["50% kept"], seed=11)
    step_times, alone_times, convert_times = [], [], []
    for _ in range(args.repeats):
        rows = [
            {"candidate_id": f"c{i}", "review_mean": float(s), "embedding": e, "instruction": "..."}
            for i, (s, e) in enumerate(zip(scores, x.tolist(), strict=True))
        ]
        pool = [{"pool_id": f"seed-{i}", "embedding": e} for i, e in enumerate(ref.tolist())]
        _, t = timed(np.asarray, [r["embedding"] for r in rows], dtype=np.float32)
        convert_times.append(t)
        _, t = timed(gra_step, rows, pool, THRESHOLD)
        step_times.append(t)
        del rows, pool
        _, t = timed(greedy_semantic_dedup_details, x, scores, THRESHOLD, ref)
        alone_times.append(t)
    step, alone = min(step_times), min(alone_times)
    print(
        f"\nGRA step (rows -> rows_to_matrix -> dedup -> witness fields): {step:.2f} s; "
        f"function alone {alone:.2f} s; ratio {step / alone:.2f}x (target <= 1.3); "
        f"np.asarray on the list of lists alone: {min(convert_times):.2f} s",
        flush=True,
    )
    return step / alone


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--regimes", default="5% kept,50% kept,90% kept,own,isotropic 50%")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per method")
    parser.add_argument(
        "--device", default=None, help="numpy, cpu or cuda (default: cuda if available)"
    )
    parser.add_argument("--brute", action="store_true", help="run brute force above 200K rows too")
    parser.add_argument("--no-step", action="store_true", help="skip the GRA step measurement")
    args = parser.parse_args()

    import threadpoolctl

    blas = ", ".join(sorted({b.get("internal_api", "?") for b in threadpoolctl.threadpool_info()}))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {cores()} cores usable, "
        f"{cache_bytes() >> 20} MiB L2 in all, numpy {np.__version__} ({blas}); "
        f"load average {os.getloadavg()[0]:.1f}; {args.rows:,} x {DIM}, threshold {THRESHOLD}",
        flush=True,
    )
    rng = np.random.default_rng(1)
    table = []
    fifty = None
    for name in [r.strip() for r in args.regimes.split(",") if r.strip()]:
        x = (
            synthetic(args.rows, seed=args.rows)
            if name == "own"
            else clustered(args.rows, REGIMES[name])
        )
        scores = np.round(rng.normal(size=args.rows), 2)  # some ties
        table.append(run_regime(name, x, scores, args))
        if name == "50% kept":
            fifty = (x, scores)
    print("\n| regime | rows | kept | blocked brute force | ours | ratio | ours chose |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in table:
        brute = "not run" if r["brute"] is None else f"{r['brute']:.2f} s"
        ratio = "-" if r["brute"] is None else f"**{r['brute'] / r['ours']:.2f}x**"
        print(
            f"| {r['regime']} | {r['rows']:,} | {100 * r['kept']:.1f}% | {brute}"
            f" | {r['ours']:.2f} s | {ratio} | {r['method']} |"
        )
    if fifty is not None and not args.no_step:
        run_step(*fifty, args)


if __name__ == "__main__":
    main()
