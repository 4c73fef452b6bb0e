"""Ranking metrics: Recall@K, Precision@K, MRR, NDCG@K — pure functions over rankings.

A ranking is an ``(n_queries, k)`` array of item indices, best first; relevance is given as
a boolean matrix ``(n_queries, k)`` saying whether each ranked item is relevant, plus the
number of relevant items per query (for recall and the ideal DCG). The benchmarks and
``training/`` evaluation reports share these, so their figures are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> float:
    """Mean over queries of (relevant in the top k) / min(k, number relevant)."""
    found = hits[:, :k].sum(axis=1)
    return float(np.mean(found / np.maximum(np.minimum(n_relevant, k), 1)))


def precision_at_k(hits: np.ndarray, k: int) -> float:
    """Mean over queries of the share of the top k that is relevant."""
    return float(np.mean(hits[:, :k].sum(axis=1) / k))


def mrr(hits: np.ndarray) -> float:
    """Mean reciprocal rank of the first relevant item (0 when none is ranked)."""
    first = np.argmax(hits, axis=1)
    found = hits[np.arange(len(hits)), first]
    return float(np.mean(np.where(found, 1.0 / (first + 1), 0.0)))


def ndcg_at_k(gains: np.ndarray, ideal_gains: np.ndarray, k: int) -> float:
    """Mean NDCG@k.

    Args:
        gains: ``(n, >=k)`` gain of each ranked item (binary relevance: 0/1).
        ideal_gains: ``(n, >=k)`` gains of the best possible ranking, sorted descending.
        k: Cut-off.
    """
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (gains[:, :k] * discounts[: gains[:, :k].shape[1]]).sum(axis=1)
    idcg = (ideal_gains[:, :k] * discounts[: ideal_gains[:, :k].shape[1]]).sum(axis=1)
    return float(np.mean(np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)))


def binary_report(hits: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, ...] = (1, 10)
                  ) -> dict[str, float]:
    """Recall@k for each k, P@10, MRR and NDCG@10 for binary relevance."""
    ideal = (np.arange(hits.shape[1])[None, :] < n_relevant[:, None]).astype(np.float64)
    report = {f"R@{k}": recall_at_k(hits, n_relevant, k) for k in ks}
    report["P@10"] = precision_at_k(hits, 10)
    report["MRR"] = mrr(hits)
    report["NDCG@10"] = ndcg_at_k(hits.astype(np.float64), ideal, 10)
    return report


def rank_in_chunks(query: np.ndarray, items: np.ndarray, k: int, chunk: int = 256,
                   mask: Callable[[slice], np.ndarray | None] | None = None) -> np.ndarray:
    """Exact top-k of ``query @ items.T``, computed a chunk of queries at a time.

    Args:
        query: ``(n, d)`` float32 query vectors.
        items: ``(m, d)`` item vectors (float16 is converted per chunk).
        k: Cut-off.
        chunk: Queries per matrix product (bounds memory at ``chunk * m`` floats).
        mask: Optional function of the query slice returning a boolean ``(len, m)`` array of
            allowed items (disallowed score -inf).

    Returns:
        ``(n, k)`` item indices, best first.
    """
    items32 = items.astype(np.float32, copy=False)
    out = np.empty((len(query), min(k, len(items))), dtype=np.int64)
    for start in range(0, len(query), chunk):
        part = slice(start, min(len(query), start + chunk))
        scores = query[part].astype(np.float32) @ items32.T
        if mask is not None:
            allowed = mask(part)
            if allowed is not None:
                scores = np.where(allowed, scores, -np.inf)
        out[part] = top_k(scores, k)
    return out


def mean_report(reports: list[Mapping[str, float]]) -> dict[str, float]:
    """Averages reports key by key (for per-category breakdowns)."""
    keys = reports[0].keys() if reports else []
    return {k: float(np.mean([r[k] for r in reports])) for k in keys}
