"""Counterfactual evaluation of re-ranking on simulated sessions: replay each held-out query
through the engine for its top candidates, and judge orderings by the simulator's truth.

A logged list holds the ten products shown; the engine re-ranks its top ``k`` (50) when
serving. :func:`replay` searches again with each held-out query's very words and photo (the
photo regenerated from the truth's seed), takes the top ``k`` in similarity order, computes
the ranker's features for them exactly as serving does — the shopper's history being what
the log shows they did earlier — and the hidden utility of every candidate
(:func:`training.ranker_recovery.hidden_utility`). Orderings are then compared by NDCG@10
with the hidden chance of a purchase as the gain, or with purchases drawn from it as if the
shopper had examined every candidate (:func:`sampled_ndcg`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retrieval.images import load_image
from retrieval.ranker_features import (
    History,
    ProductFacts,
    QueryFacts,
    candidate_features,
    filters_from_dict,
    modality,
)
from retrieval.search import SearchEngine
from training.batched_search import BatchedSearch
from training.photos import shopper_photo
from training.ranker_data import history_keys
from training.ranker_eval import grouped_ndcg
from training.ranker_recovery import expected_gains, hidden_utility
from training.shoppers import CatalogStats
from training.truth import SimulationTruth

logger = logging.getLogger(__name__)

WAVE = 64


@dataclass
class Replayed:
    """The top-``k`` candidates of replayed queries, with features and hidden truth.

    Attributes:
        dense: Features of each candidate (the serving path's).
        cats: Hashed attributes.
        rows: Product rows.
        fused: The engine's fused score.
        group: Query of each candidate.
        hidden: Hidden utility terms and ``u`` (:func:`hidden_utility`).
        gains: ``clicked`` / ``purchased``: hidden chances if examined.
        queries: Queries replayed; ``matched``: of them, those whose logged list is the
            replayed top 10.
    """

    dense: np.ndarray
    cats: np.ndarray
    rows: np.ndarray
    fused: np.ndarray
    group: np.ndarray
    hidden: pd.DataFrame
    gains: dict[str, np.ndarray]
    queries: int
    matched: int


def query_photo(truth: SimulationTruth, query_id: str) -> Any:
    """The photo a simulated query was made with, regenerated from the truth's seed."""
    info = truth.photos[f"{query_id}photo"]
    return shopper_photo(load_image(info["source"]), np.random.default_rng(info["seed"]))


def replay(engine: SearchEngine, frame: pd.DataFrame, truth: SimulationTruth, *,
           slots: tuple[str, ...], buckets: int, list_size: int = 10, k: int = 50,
           history: str = "session", progress: Callable[[int], None] | None = None
           ) -> Replayed:
    """Replays the logged queries of ``frame`` for their top ``k`` candidates.

    Args:
        engine: The index the log was written against (with no ranker promoted).
        frame: Impressions (:func:`training.datasets.impressions_table`), query rows
            contiguous, in the order the queries happened.
        truth: The simulation's ground truth (queries, shoppers, photos).
        slots: The ranker's slots; ``buckets``: its hash buckets.
        list_size: The ranker's list size.
        k: Candidates per query.
        history: ``session``, ``user`` or ``none`` (as the ranker was trained).
        progress: Called with the number of queries done after each wave.

    Returns:
        The candidates of every query the truth knows.
    """
    facts = ProductFacts(engine.table)
    stats = CatalogStats(engine.table)
    searcher = BatchedSearch(engine)
    qids = frame["query_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
    ends = np.r_[starts[1:], len(frame)]
    keys = history_keys(frame, history).to_numpy()
    row_of = engine.row_of
    shown_rows = frame["product_id"].map(row_of).to_numpy()
    clicked = frame["clicked"].to_numpy(dtype=bool)
    carted = (frame["added_to_cart"] | frame["purchased"]).to_numpy(dtype=bool)
    histories: dict[Any, History] = {}
    parts: dict[str, list[Any]] = {"dense": [], "cats": [], "rows": [], "fused": [],
                                   "group": [], "qid": []}
    matched = done = 0
    for wave in range(0, len(starts), WAVE):
        batch = [(s, e) for s, e in zip(starts[wave:wave + WAVE], ends[wave:wave + WAVE],
                                        strict=True) if qids[s] in truth.queries]
        asks = []
        for s, _ in batch:
            text = frame["query_text"].iat[s]
            photo = query_photo(truth, qids[s]) if frame["has_image"].iat[s] else None
            asks.append((photo, text if isinstance(text, str) else None))
        searcher.prime(asks)
        for (s, e), (photo, text) in zip(batch, asks, strict=True):
            found = searcher.search(image=photo, text=text, k=k, rerank=False)
            hits = found.hits
            rows = np.array([row_of[h.product.product_id] for h in hits], dtype=np.int64)
            matched += set(rows[:list_size].tolist()) == set(shown_rows[s:e].tolist())
            boosts = found.parsed.boosts if found.parsed else {}
            query = QueryFacts(modality(photo is not None, bool(text)),
                               filters_from_dict(frame["filters"].iat[s]), boosts)
            hist = None if history == "none" else histories.setdefault(keys[s], History())
            fused = np.array([h.score for h in hits])
            parts["dense"].append(candidate_features(
                facts, query, rows, fused,
                {sl: np.array([h.scores.get(sl, np.nan) for h in hits]) for sl in slots},
                slots, hist, list_size))
            parts["cats"].append(facts.buckets(rows, buckets))
            parts["rows"].append(rows)
            parts["fused"].append(fused)
            parts["group"].append(np.full(len(rows), done))
            parts["qid"].append(np.full(len(rows), qids[s], dtype=object))
            if hist is not None:
                hist.add(facts, shown_rows[s:e], clicked[s:e], carted[s:e])
            done += 1
        if progress is not None:
            progress(done)
    cat = {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()}
    candidates = pd.DataFrame({"query_id": cat["qid"],
                               "product_id": [engine.products[r].product_id
                                              for r in cat["rows"]],
                               "score": cat["fused"]})
    hidden = hidden_utility(candidates, cat["rows"], truth, stats, row_of)
    return Replayed(dense=cat["dense"].astype(np.float32), cats=cat["cats"].astype(np.int64),
                    rows=cat["rows"].astype(np.int64), fused=cat["fused"],
                    group=cat["group"].astype(np.int64), hidden=hidden,
                    gains=expected_gains(hidden["u"].to_numpy(), truth), queries=done,
                    matched=matched)


def sampled_ndcg(scores: Mapping[str, np.ndarray], chance: np.ndarray, group: np.ndarray,
                 draws: int = 20, seed: int = 0) -> dict[str, float]:
    """Mean NDCG@10 of each ordering over ``draws`` sets of labels drawn from ``chance``
    (the same draws for every ordering), over queries with a positive in the draw."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {name: [] for name in scores}
    for _ in range(draws):
        labels = rng.random(len(chance)) < chance
        for name, score in scores.items():
            out[name].append(grouped_ndcg(score, labels, group)[0])
    return {name: float(np.mean(v)) for name, v in out.items()}
