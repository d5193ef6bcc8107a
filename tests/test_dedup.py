"""greedy_semantic_dedup must equal a brute-force greedy loop on every input, and every
dropped row must name its nearest kept-before-it (or reference) row."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from synthalign.steps.dedup import (
    float32_margin,
    greedy_semantic_dedup,
    greedy_semantic_dedup_details,
    rows_to_matrix,
)

METHODS = ["auto", "blocked", "projected", "pruned"]


def _unit64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def brute_force_details(
    embeddings: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The definition, one row at a time, in float64: the keep mask, and for each dropped
    row the highest cosine among the rows kept before it and the reference rows."""
    x = _unit64(embeddings)
    ref = (
        _unit64(reference)
        if reference is not None and len(reference)
        else np.zeros((0, x.shape[1]))
    )
    s = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isnan(s), np.inf, -s)
    order = sorted(range(len(x)), key=lambda i: (key[i], i))
    kept = np.empty_like(x)
    n_kept = 0
    keep = np.zeros(len(x), dtype=bool)
    best = np.full(len(x), np.nan)
    for i in order:
        sims = np.concatenate([ref @ x[i], kept[:n_kept] @ x[i]])
        if len(sims) and sims.max() >= threshold:
            best[i] = sims.max()
            continue
        kept[n_kept] = x[i]
        n_kept += 1
        keep[i] = True
    return keep, best


def brute_force(
    embeddings: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    return brute_force_details(embeddings, scores, threshold, reference)[0]


def _check(
    embeddings: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    reference: np.ndarray | None = None,
    **kwargs: Any,
) -> Any:
    """Mask equal to brute force; every dropped row names a kept-before-it or reference row
    at the highest cosine among them; kept rows name nothing."""
    result = greedy_semantic_dedup_details(embeddings, scores, threshold, reference, **kwargs)
    keep, best = brute_force_details(embeddings, scores, threshold, reference)
    np.testing.assert_array_equal(result.keep, keep)
    x = _unit64(embeddings)
    ref = _unit64(reference) if reference is not None and len(reference) else None
    dup = np.flatnonzero(~keep)
    assert np.all(result.match[dup] >= 0)
    from_ref = result.match_is_reference[dup]
    if ref is None:
        assert not from_ref.any()
    # a candidate witness was kept, and visited before the row it removed
    rank = np.empty(len(x), dtype=np.int64)
    rank[result.order] = np.arange(len(x))
    partners = dup[~from_ref]
    assert np.all(keep[result.match[partners]])
    assert np.all(rank[result.match[partners]] < rank[partners])
    # the witness is the nearest one (exact float64 cosine equal to the maximum), and the
    # reported similarity is that cosine to float32 accuracy at worst
    vectors = np.where(
        from_ref[:, None],
        ref[np.where(from_ref, result.match[dup], 0)] if ref is not None else 0.0,
        x[np.where(from_ref, 0, result.match[dup])],
    )
    witness = np.einsum("ij,ij->i", vectors, x[dup])
    np.testing.assert_allclose(witness, best[dup], rtol=0, atol=1e-12)
    margin = float32_margin(x.shape[1])
    np.testing.assert_allclose(result.similarity[dup], best[dup], rtol=0, atol=margin)
    assert np.all(result.similarity[dup] >= threshold)
    assert np.all(result.match[keep] == -1) and np.all(np.isnan(result.similarity[keep]))
    return result


def _clustered(
    rng: np.random.Generator, n: int, dim: int, clusters: int, noise: float
) -> np.ndarray:
    centers = rng.normal(size=(clusters, dim))
    return centers[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))


def _planted(
    rng: np.random.Generator, n: int, dim: int, topics: int, share: float = 0.25
) -> np.ndarray:
    """Topic clusters (members at cosine ~0.5) plus near-duplicates of earlier rows at
    cosine uniform in [0.90, 0.99]: the data cluster bounds are made for."""
    centres = _unit64(rng.normal(size=(topics, dim)))
    x = _unit64(centres[rng.integers(0, topics, n)] + rng.normal(size=(n, dim)) / np.sqrt(dim))
    for i in np.flatnonzero(rng.random(n) < share):
        if i == 0:
            continue
        src = x[rng.integers(0, i)]
        z = rng.normal(size=dim)
        z -= (z @ src) * src
        c = rng.uniform(0.90, 0.99)
        x[i] = c * src + np.sqrt(1 - c * c) * z / np.linalg.norm(z)
    return x


def _regime(rng: np.random.Generator, n: int, dim: int, kept: str) -> np.ndarray:
    """Many small clusters whose pairwise cosine is spread around 0.9: few, half or most kept."""
    clusters, lo, hi = {
        "few": (n // 20 + 1, 0.93, 0.99),
        "half": (n // 3 + 1, 0.80, 0.99),
        "most": (n, 0.80, 0.99),
    }[kept]
    centres = _unit64(rng.normal(size=(clusters, dim)) * (1.0 + np.arange(dim)) ** -0.5)
    c = np.sqrt(rng.uniform(lo, hi, size=(n, 1)))
    noise = _unit64(rng.normal(size=(n, dim)) * (1.0 + np.arange(dim)) ** -0.5)
    return c * centres[rng.integers(0, clusters, n)] + np.sqrt(1 - c * c) * noise


def _at_threshold(threshold: float, dim: int, deltas: list[float]) -> np.ndarray:
    """Pairs at cosine ``threshold + delta``, each pair in its own plane, not normalized."""
    rows = []
    for k, delta in enumerate(deltas):
        e1, e2 = np.zeros(dim), np.zeros(dim)
        e1[2 * k], e2[2 * k + 1] = 1.0, 1.0
        c = threshold + delta
        rows += [e1, c * e1 + np.sqrt(1 - c * c) * e2]
    return np.array(rows) * np.random.default_rng(3).uniform(0.5, 3.0, size=(len(rows), 1))


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_on_random_inputs_with_every_method(seed: int) -> None:
    rng = np.random.default_rng(seed)
    method = METHODS[seed % 4]
    n = int(rng.integers(1, 500))
    dim = int(rng.choice([2, 5, 16, 64]))
    kind = seed % 3
    if kind == 0:
        emb = rng.normal(size=(n, dim))
    elif kind == 1:
        emb = _clustered(
            rng, n, dim, clusters=max(1, n // 8), noise=float(rng.choice([0.02, 0.05, 0.3]))
        )
    else:
        emb = _regime(rng, n, dim, str(rng.choice(["few", "half", "most"])))
    if seed % 5 == 0:
        emb[: min(3, n)] = 0.0  # zero rows: kept, never remove anything
    if seed % 6 == 0:
        emb[n // 2 :] = emb[: n - n // 2]  # exact duplicates
    scores = rng.integers(0, 3, size=n).astype(float)  # many exact ties
    if seed % 7 == 0:
        scores[rng.random(n) < 0.3] = np.nan  # visited last
    reference = rng.normal(size=(int(rng.integers(0, 30)), dim)) if seed % 3 else None
    kwargs: dict[str, Any] = {
        "method": method,
        "device": "numpy",
        "block_size": int(rng.choice([1, 3, 64, 4096])),
    }
    if method == "projected":
        kwargs["dims"] = int(rng.integers(1, dim + 1))
    if method == "pruned":
        kwargs["clusters"] = int(rng.choice([1, 3, 20]))
    _check(
        emb, scores, float(rng.choice([-0.2, 0.0, 0.3, 0.8, 0.9, 0.97, 1.0])), reference, **kwargs
    )


@pytest.mark.parametrize("kept", ["few", "half", "most"])
def test_regimes_at_scale_take_the_fast_path_and_stay_exact(kept: str) -> None:
    rng = np.random.default_rng({"few": 1, "half": 2, "most": 3}[kept])
    emb = _regime(rng, 6_000, 96, kept).astype(np.float32)
    scores = np.round(rng.normal(size=len(emb)), 1)  # ties too
    reference = _regime(rng, 100, 96, "most")
    result = _check(emb, scores, 0.9, reference, device="numpy")
    assert result.stats.method in ("projected", "pruned"), result.stats
    share = result.keep.mean()
    assert {"few": share < 0.2, "half": 0.3 < share < 0.8, "most": share > 0.8}[kept], share


@pytest.mark.parametrize("method", ["projected", "pruned"])
def test_planted_near_duplicates_are_pruned_exactly(method: str) -> None:
    rng = np.random.default_rng(42)
    emb = _planted(rng, 5_000, 96, topics=40)
    scores = np.round(rng.normal(size=len(emb)), 1)
    reference = _planted(rng, 200, 96, topics=10)
    result = _check(emb, scores, 0.9, reference, method=method, device="numpy", block_size=512)
    assert result.stats.method == method
    if method == "pruned":
        assert result.stats.clusters > 1 and result.stats.pruned_fraction > 0.5, result.stats


@pytest.mark.parametrize("method", METHODS)
def test_pairs_within_float32_error_of_the_threshold_are_decided_exactly(method: str) -> None:
    # pairs at cos = 0.9 +- 1e-9 (far below float32 resolution), in a 384-d space
    emb = _at_threshold(0.9, 384, [-1e-9, 1e-9, -3e-8, 3e-8, 0.0, 2e-6, -2e-6])
    scores = np.tile([1.0, 0.0], len(emb) // 2)
    for block_size in (1, 2, 64):
        kwargs: dict[str, Any] = {"method": method, "device": "numpy", "block_size": block_size}
        if method == "pruned":
            kwargs["clusters"] = 3
        if method == "projected":
            kwargs["dims"] = 8
        _check(emb, scores, 0.9, **kwargs)
    assert float32_margin(384) > 1e-6


def test_duplicates_of_reference_rows_exactly_at_the_threshold() -> None:
    emb = _at_threshold(0.9, 16, [0.0, 1e-12, -1e-12])
    reference, candidates = emb[0::2], emb[1::2]
    for method in METHODS:
        result = _check(
            candidates, np.zeros(len(candidates)), 0.9, reference, method=method, device="numpy"
        )
        assert result.match_is_reference[~result.keep].all()


def test_ties_keep_the_earlier_row_and_scores_order_the_visit() -> None:
    emb = np.array([[1.0, 0.0], [1.0, 0.001], [1.0, 0.002]])
    assert greedy_semantic_dedup(emb, np.array([1.0, 1.0, 1.0])).tolist() == [True, False, False]
    assert greedy_semantic_dedup(emb, np.array([0.0, 0.0, 5.0])).tolist() == [False, False, True]
    result = greedy_semantic_dedup_details(emb, np.array([0.0, 0.0, 5.0]))
    assert result.order.tolist() == [2, 0, 1]
    assert result.match.tolist() == [2, 2, -1]
    nan_last = greedy_semantic_dedup(emb, np.array([np.nan, 0.0, np.nan]))
    assert nan_last.tolist() == [False, True, False]


def test_witness_is_the_nearest_of_several_kept_rows_and_reference_rows() -> None:
    # row 3 collides with kept rows 0 and 1 and with reference row 0; row 1 is nearest
    angle = np.deg2rad([0.0, 20.0, 60.0, 12.0])
    emb = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    reference = np.array([[np.cos(np.deg2rad(-10.0)), np.sin(np.deg2rad(-10.0))], [0.0, 1.0]])
    result = greedy_semantic_dedup_details(emb, np.array([3.0, 2.0, 1.0, 0.0]), 0.9, reference)
    assert result.keep.tolist() == [False, True, True, False]
    assert (result.match[3], result.match_is_reference[3]) == (1, False)
    assert result.similarity[3] == pytest.approx(np.cos(np.deg2rad(8.0)))
    assert (result.match[0], result.match_is_reference[0]) == (
        0,
        True,
    )  # only the reference was there


def test_reference_rows_block_candidates_but_are_never_kept() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    reference = np.array([[5.0, 0.01]])
    result = greedy_semantic_dedup_details(emb, np.zeros(3), 0.9, reference)
    assert result.keep.tolist() == [False, True, False]
    assert result.match_is_reference.tolist() == [True, False, False]
    assert result.match.tolist() == [0, -1, 1]
    assert greedy_semantic_dedup(emb, np.zeros(3), 0.9, np.zeros((0, 2))).tolist() == [
        True,
        True,
        False,
    ]


def test_scaling_rows_changes_nothing_and_zero_rows_are_kept() -> None:
    rng = np.random.default_rng(11)
    emb = _clustered(rng, 300, 8, clusters=20, noise=0.1)
    scores = rng.normal(size=300)
    scaled = emb * rng.uniform(0.01, 100.0, size=(300, 1))
    np.testing.assert_array_equal(
        greedy_semantic_dedup(emb, scores), greedy_semantic_dedup(scaled, scores)
    )
    with_zero = np.vstack([emb[:5], np.zeros((2, 8))])
    keep = greedy_semantic_dedup(with_zero, np.arange(7.0))
    assert keep[-2:].tolist() == [True, True]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        greedy_semantic_dedup(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="scores"):
        greedy_semantic_dedup(np.ones((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        greedy_semantic_dedup(np.array([[1.0, np.nan]]), np.zeros(1))
    with pytest.raises(ValueError, match="dims"):
        greedy_semantic_dedup(np.ones((2, 2)), np.zeros(2), reference=np.ones((1, 3)))
    with pytest.raises(ValueError, match="method"):
        greedy_semantic_dedup(np.eye(3), np.zeros(3), method="fast")
    assert greedy_semantic_dedup(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_memory_mapped_input_is_read_in_chunks_not_copied(tmp_path: Any) -> None:
    rng = np.random.default_rng(5)
    emb = _regime(rng, 100_000, 128, "few").astype(np.float32) * 3.0  # not normalized on disk
    scores = rng.normal(size=len(emb))
    np.save(tmp_path / "emb.npy", emb)
    mm = np.load(tmp_path / "emb.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap)
    expected = greedy_semantic_dedup(emb, scores, 0.9, device="numpy")
    tracemalloc.start()
    try:
        keep = greedy_semantic_dedup(mm, scores, 0.9, device="numpy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(keep, expected)
    assert keep.mean() < 0.2
    assert peak < 0.75 * emb.nbytes, (peak, emb.nbytes)  # a float32 copy alone would be 1x


def test_memory_mapped_input_and_reference_match_brute_force(tmp_path: Any) -> None:
    rng = np.random.default_rng(6)
    emb = _planted(rng, 1_500, 48, topics=15).astype(np.float32)
    scores = rng.normal(size=len(emb))
    reference = _planted(rng, 50, 48, topics=5)
    np.save(tmp_path / "emb.npy", emb * 3.0)
    np.save(tmp_path / "ref.npy", reference)
    mm = np.load(tmp_path / "emb.npy", mmap_mode="r")
    ref_mm = np.load(tmp_path / "ref.npy", mmap_mode="r")
    expected = brute_force(emb, scores, 0.9, reference)
    for method in METHODS:
        keep = greedy_semantic_dedup(mm, scores, 0.9, ref_mm, method=method, device="numpy")
        np.testing.assert_array_equal(keep, expected)


@pytest.mark.parametrize("method", METHODS)
def test_torch_path_on_cpu_tensors_equals_numpy(method: str) -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    emb = _planted(rng, 2_000, 64, topics=20)
    scores = rng.integers(0, 5, size=len(emb)).astype(float)
    reference = _planted(rng, 80, 64, topics=8)
    kwargs: dict[str, Any] = {"method": method, "block_size": 300}
    if method == "projected":
        kwargs["dims"] = 16
    a = greedy_semantic_dedup_details(emb, scores, 0.9, reference, device="numpy", **kwargs)
    b = greedy_semantic_dedup_details(emb, scores, 0.9, reference, device="cpu", **kwargs)
    assert a.stats.device == "numpy" and b.stats.device == "torch:cpu"
    assert a.stats.method == b.stats.method
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.match, b.match)
    np.testing.assert_array_equal(a.match_is_reference, b.match_is_reference)
    dup = ~a.keep
    np.testing.assert_allclose(a.similarity[dup], b.similarity[dup], atol=float32_margin(64))
    np.testing.assert_array_equal(a.keep, brute_force(emb, scores, 0.9, reference))


def test_the_gra_step_call_shape_and_rows_to_matrix() -> None:
    rng = np.random.default_rng(12)
    emb = _planted(rng, 300, 32, topics=5)
    rows = [{"embedding": [float(v) for v in row], "other": i} for i, row in enumerate(emb)]
    matrix = rows_to_matrix(rows, "embedding")
    assert matrix.dtype == np.float32 and matrix.shape == (300, 32)
    np.testing.assert_array_equal(matrix, emb.astype(np.float32))
    assert rows_to_matrix([], "embedding").shape[0] == 0
    with pytest.raises(ValueError, match="row 1"):
        rows_to_matrix([{"e": [1.0, 2.0]}, {"e": [1.0]}], "e")
    scores = rng.normal(size=300).astype(np.float64)
    result = _check(matrix, scores, 0.9, matrix[:20].copy())
    assert result.match.dtype == np.int64 and result.similarity.dtype == np.float64
