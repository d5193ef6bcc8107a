"""greedy_semantic_dedup must equal a brute-force greedy loop on every input."""

from __future__ import annotations

import numpy as np
import pytest

from synthalign.steps.dedup import (
    float32_margin,
    greedy_semantic_dedup,
    greedy_semantic_dedup_details,
)


def _unit64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def brute_force(
    embeddings: np.ndarray, scores: np.ndarray, threshold: float, reference: np.ndarray | None = None
) -> np.ndarray:
    """The definition, one row at a time, in float64."""
    x = _unit64(embeddings)
    ref = _unit64(reference) if reference is not None and len(reference) else None
    s = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isnan(s), np.inf, -s)
    order = sorted(range(len(x)), key=lambda i: (key[i], i))
    kept = np.empty_like(x)
    n_kept = 0
    keep = np.zeros(len(x), dtype=bool)
    for i in order:
        if ref is not None and (ref @ x[i]).max() >= threshold:
            continue
        if n_kept and (kept[:n_kept] @ x[i]).max() >= threshold:
            continue
        kept[n_kept] = x[i]
        n_kept += 1
        keep[i] = True
    return keep


def _clustered(rng: np.random.Generator, n: int, dim: int, clusters: int, noise: float) -> np.ndarray:
    centers = rng.normal(size=(clusters, dim))
    return centers[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))


def _check(embeddings, scores, threshold, reference=None, **kwargs) -> None:
    result = greedy_semantic_dedup_details(embeddings, scores, threshold, reference, **kwargs)
    expected = brute_force(embeddings, scores, threshold, reference)
    np.testing.assert_array_equal(result.keep, expected)
    # every duplicate names a partner it really collides with
    x = _unit64(embeddings)
    ref = _unit64(reference) if reference is not None and len(reference) else None
    dup = np.flatnonzero(~result.keep)
    assert np.all(result.match[dup] >= 0)
    from_ref = result.match_is_reference[dup]
    assert np.all(result.keep[result.match[dup[~from_ref]]])
    partners = np.where(
        from_ref[:, None],
        ref[np.where(from_ref, result.match[dup], 0)] if ref is not None else 0.0,
        x[np.where(from_ref, 0, result.match[dup])],
    )
    np.testing.assert_allclose(np.einsum("ij,ij->i", partners, x[dup]), result.similarity[dup])
    assert np.all(result.similarity[dup] >= threshold)
    kept_sims = result.similarity[result.keep]
    assert np.all(np.isnan(kept_sims) | (kept_sims < threshold))


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_small_random_and_clustered_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    dim = int(rng.choice([2, 5, 16, 64]))
    if seed % 2:
        emb = _clustered(rng, n, dim, clusters=max(1, n // 8), noise=float(rng.choice([0.05, 0.3])))
    else:
        emb = rng.normal(size=(n, dim))
    scores = rng.integers(0, 3, size=n).astype(float)  # many exact ties
    reference = rng.normal(size=(int(rng.integers(0, 30)), dim)) if seed % 3 else None
    _check(
        emb,
        scores,
        float(rng.choice([0.3, 0.8, 0.9, 0.97])),
        reference,
        block_size=int(rng.choice([1, 3, 32, 256])),
        pool_chunk=int(rng.choice([1, 7, 4096])),
    )


def test_matches_brute_force_at_20k_clustered_with_ties() -> None:
    rng = np.random.default_rng(20_000)
    emb = _clustered(rng, 20_000, 128, clusters=250, noise=0.3).astype(np.float32)
    scores = rng.integers(0, 11, size=len(emb)).astype(float)
    reference = _clustered(rng, 300, 128, clusters=50, noise=0.3)
    _check(emb, scores, 0.9, reference)


def test_matches_brute_force_on_random_vectors_where_most_are_kept() -> None:
    rng = np.random.default_rng(7)
    emb = rng.normal(size=(2_500, 24))  # low dimension: a real spread of similarities
    scores = np.round(rng.normal(size=len(emb)), 1)
    _check(emb, scores, 0.9)


def test_pairs_within_float32_error_of_the_threshold_are_decided_exactly() -> None:
    # pairs at cos = 0.9 +- 1e-9 (far below float32 resolution), in a 384-d space
    dim, threshold = 384, 0.9
    rng = np.random.default_rng(3)
    rows = []
    for k, delta in enumerate([-1e-9, 1e-9, -3e-8, 3e-8, 0.0, 2e-6, -2e-6]):
        e1, e2 = np.zeros(dim), np.zeros(dim)
        e1[2 * k], e2[2 * k + 1] = 1.0, 1.0
        c = threshold + delta
        rows += [e1, c * e1 + np.sqrt(1 - c * c) * e2]
    emb = np.array(rows) * rng.uniform(0.5, 3.0, size=(len(rows), 1))  # not normalized
    scores = np.tile([1.0, 0.0], len(rows) // 2)
    result = greedy_semantic_dedup_details(emb, scores, threshold)
    np.testing.assert_array_equal(result.keep, brute_force(emb, scores, threshold))
    assert float32_margin(dim) > 1e-6


def test_ties_keep_the_earlier_row_and_scores_order_the_visit() -> None:
    emb = np.array([[1.0, 0.0], [1.0, 0.001], [1.0, 0.002]])
    assert greedy_semantic_dedup(emb, np.array([1.0, 1.0, 1.0])).tolist() == [True, False, False]
    assert greedy_semantic_dedup(emb, np.array([0.0, 0.0, 5.0])).tolist() == [False, False, True]
    result = greedy_semantic_dedup_details(emb, np.array([0.0, 0.0, 5.0]))
    assert result.order.tolist() == [2, 0, 1]
    assert result.match.tolist() == [2, 2, -1]


def test_reference_rows_block_candidates_but_are_never_kept() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    reference = np.array([[5.0, 0.01]])
    result = greedy_semantic_dedup_details(emb, np.zeros(3), 0.9, reference)
    assert result.keep.tolist() == [False, True, False]
    # row 1 is kept; its nearest earlier neighbour is the reference row
    assert result.match_is_reference.tolist() == [True, True, False]
    assert result.match.tolist() == [0, 0, 1]
    assert greedy_semantic_dedup(emb, np.zeros(3), 0.9, np.zeros((0, 2))).tolist() == [True, True, False]


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
    assert greedy_semantic_dedup(np.zeros((0, 4)), np.zeros(0)).tolist() == []


# ---------------------------------------------------------------- pruned method, memmap, torch


def _planted(rng: np.random.Generator, n: int, dim: int, topics: int, share: float = 0.25) -> np.ndarray:
    """Topic clusters (members at cosine ~0.5) plus near-duplicates of earlier rows at
    cosine uniform in [0.90, 0.99]: the data the pruning bounds are made for."""
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


@pytest.mark.parametrize("seed", range(16))
def test_pruned_matches_brute_force_on_small_inputs(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 500))
    dim = int(rng.choice([2, 5, 16, 64]))
    if seed % 2:
        emb = _clustered(rng, n, dim, clusters=max(1, n // 8), noise=float(rng.choice([0.02, 0.05, 0.3])))
    else:
        emb = rng.normal(size=(n, dim))
    if seed % 5 == 0:
        emb[: min(3, n)] = 0.0  # zero rows: kept, never remove anything
    scores = rng.integers(0, 3, size=n).astype(float)
    reference = rng.normal(size=(int(rng.integers(0, 30)), dim)) if seed % 3 else None
    _check(
        emb,
        scores,
        float(rng.choice([-0.2, 0.3, 0.8, 0.9, 0.97])),  # <= 0 falls back to blocked
        reference,
        nearest=False,
        method="auto",
        device="numpy",
        block_size=int(rng.choice([1, 7, 64, 4096])),
        clusters=int(rng.choice([1, 3, 20])),
    )


def test_pruning_skips_most_pairs_and_stays_exact_on_planted_near_duplicates() -> None:
    rng = np.random.default_rng(42)
    emb = _planted(rng, 4_000, 96, topics=40)
    scores = np.round(rng.normal(size=len(emb)), 1)  # ties too
    reference = _planted(rng, 200, 96, topics=10)
    result = greedy_semantic_dedup_details(
        emb, scores, 0.9, reference, nearest=False, device="numpy", block_size=512
    )
    np.testing.assert_array_equal(result.keep, brute_force(emb, scores, 0.9, reference))
    assert result.stats.method == "pruned" and result.stats.clusters > 1
    assert result.stats.pruned_fraction > 0.5, result.stats
    assert 0 < result.keep.sum() < len(emb)
    # the mask-only entry point prunes by default on the CPU and agrees
    np.testing.assert_array_equal(greedy_semantic_dedup(emb, scores, 0.9, reference, device="numpy"), result.keep)


def test_pruned_decides_pairs_within_float32_error_of_the_threshold_exactly() -> None:
    dim, threshold = 384, 0.9
    rows = []
    for k, delta in enumerate([-1e-9, 1e-9, -3e-8, 3e-8, 0.0, 2e-6, -2e-6]):
        e1, e2 = np.zeros(dim), np.zeros(dim)
        e1[2 * k], e2[2 * k + 1] = 1.0, 1.0
        c = threshold + delta
        rows += [e1, c * e1 + np.sqrt(1 - c * c) * e2]
    emb = np.array(rows) * np.random.default_rng(3).uniform(0.5, 3.0, size=(len(rows), 1))
    scores = np.tile([1.0, 0.0], len(rows) // 2)
    for clusters in (1, 3, 14):
        for block_size in (1, 2, 64):
            keep = greedy_semantic_dedup(
                emb, scores, threshold, method="pruned", device="numpy", clusters=clusters, block_size=block_size
            )
            np.testing.assert_array_equal(keep, brute_force(emb, scores, threshold))


def test_memory_mapped_input_gives_the_same_result(tmp_path) -> None:
    rng = np.random.default_rng(5)
    emb = _planted(rng, 1_500, 48, topics=15).astype(np.float32)
    scores = rng.normal(size=len(emb))
    reference = _planted(rng, 50, 48, topics=5)
    np.save(tmp_path / "emb.npy", emb * 3.0)  # not normalized on disk
    np.save(tmp_path / "ref.npy", reference)
    mm = np.load(tmp_path / "emb.npy", mmap_mode="r")
    ref_mm = np.load(tmp_path / "ref.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap)
    expected = brute_force(emb, scores, 0.9, reference)
    for nearest in (False, True):
        result = greedy_semantic_dedup_details(mm, scores, 0.9, ref_mm, nearest=nearest, device="numpy")
        np.testing.assert_array_equal(result.keep, expected)


def test_torch_path_on_cpu_tensors_equals_numpy() -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    emb = _planted(rng, 2_000, 64, topics=20)
    scores = rng.integers(0, 5, size=len(emb)).astype(float)
    reference = _planted(rng, 80, 64, topics=8)
    for method, nearest in (("pruned", False), ("blocked", True)):
        a = greedy_semantic_dedup_details(
            emb, scores, 0.9, reference, nearest=nearest, method=method, device="numpy", block_size=300
        )
        b = greedy_semantic_dedup_details(
            emb, scores, 0.9, reference, nearest=nearest, method=method, device="cpu", block_size=300
        )
        assert b.stats.device == "torch:cpu" and b.stats.method == method
        np.testing.assert_array_equal(a.keep, b.keep)
        np.testing.assert_array_equal(a.match_is_reference, b.match_is_reference)
        dup = ~a.keep
        np.testing.assert_allclose(a.similarity[dup], b.similarity[dup])
        assert np.all(b.similarity[dup] >= 0.9)
    np.testing.assert_array_equal(a.keep, brute_force(emb, scores, 0.9, reference))


def test_pruned_cannot_report_nearest_neighbours() -> None:
    with pytest.raises(ValueError, match="nearest"):
        greedy_semantic_dedup_details(np.eye(3), np.zeros(3), method="pruned", nearest=True)
    with pytest.raises(ValueError, match="method"):
        greedy_semantic_dedup_details(np.eye(3), np.zeros(3), method="fast")  # type: ignore[arg-type]
