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
