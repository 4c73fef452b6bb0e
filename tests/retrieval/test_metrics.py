"""Ranking metrics on hand-computed cases; chunked ranking equals the full computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.metrics import (
    binary_report,
    mrr,
    ndcg_at_k,
    precision_at_k,
    rank_in_chunks,
    recall_at_k,
    top_k,
)


def test_hand_computed_cases():
    # Query 1: relevant at ranks 1 and 3 (2 relevant); query 2: relevant at rank 2 (1).
    hits = np.array([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=bool)
    n_rel = np.array([2, 1])
    assert recall_at_k(hits, n_rel, 1) == pytest.approx((1 / 1 + 0 / 1) / 2)
    assert recall_at_k(hits, n_rel, 3) == pytest.approx((2 / 2 + 1 / 1) / 2)
    assert precision_at_k(hits, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert mrr(hits) == pytest.approx((1 + 1 / 2) / 2)
    ideal = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=float)
    dcg1 = 1 + 1 / math.log2(4)
    idcg1 = 1 + 1 / math.log2(3)
    dcg2 = 1 / math.log2(3)
    assert ndcg_at_k(hits.astype(float), ideal, 4) == pytest.approx((dcg1 / idcg1 + dcg2) / 2)
    report = binary_report(np.pad(hits, ((0, 0), (0, 6))), n_rel)
    assert report["R@1"] == pytest.approx(0.5) and report["MRR"] == pytest.approx(0.75)


def test_no_relevant_item_scores_zero():
    hits = np.zeros((3, 10), dtype=bool)
    report = binary_report(hits, np.array([1, 5, 0]))
    assert all(v == 0 for v in report.values())


def test_top_k_orders_best_first_with_stable_ties():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3, 2, 1, 0]], dtype=np.float32)
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 3, 2], [0, 1, 2]])


def test_chunked_ranking_equals_full(seeded_rng):
    items = seeded_rng.standard_normal((300, 16)).astype(np.float16)
    query = seeded_rng.standard_normal((70, 16)).astype(np.float32)
    full = top_k(query @ items.astype(np.float32).T, 10)
    np.testing.assert_array_equal(rank_in_chunks(query, items, 10, chunk=16), full)
    allowed = seeded_rng.random((70, 300)) < 0.3
    masked = np.where(allowed, query @ items.astype(np.float32).T, -np.inf)
    np.testing.assert_array_equal(
        rank_in_chunks(query, items, 5, chunk=9, mask=lambda part: allowed[part]),
        top_k(masked, 5))
