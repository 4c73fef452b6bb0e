"""Held-out simulated sessions: how each system would have served the logged queries, judged
by the simulator's hidden truth.

``shopassist eval --sessions LOG`` replays every query of a simulated event log (one the
models were not trained on: other shoppers, another seed) through each system — the
training-free fusion, a trained fusion head, the head plus a ranking head — with the
engine's own query understanding (filters read from the words, boosts, the shopper's photo
regenerated from the truth's seed) and exact scoring of every product the filters allow.
A ranker re-orders its fusion's top candidates with the shopper's history as serving would
pass it: what they were shown and did earlier in the log.

Each system's top 10 is judged by the hidden chance that the shopper buys a product they
examine (:func:`training.ranker_recovery.expected_gains` of the hidden utility). The
utility's engine-score term is the *reference* engine's score (the index as simulated), so
the gains do not depend on which system is judged. Reported per system:

- ``NDCG@10``: with the pool of every system's top 10 as the ideal (a pooled judgement,
  as in TREC: a product no system found cannot be ranked by any);
- ``purchases/100``: expected purchases per 100 queries, each product's chance weighted by
  the examination curve of the truth (``1 / rank ** eta``): what the shop would sell;
- the same NDCG split by query kind (photo, words).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retrieval.search import SearchEngine
from training.batched_search import BatchedSearch
from training.ranker_data import history_keys
from training.ranker_recovery import expected_gains, hidden_utility
from training.ranker_replay import query_photo
from training.shoppers import CatalogStats
from training.truth import SimulationTruth

logger = logging.getLogger(__name__)

WAVE = 64  # queries encoded per batch
K = 10  # results judged per query
NO_SESSIONS = ("{log} holds no search sessions to judge (no query with results shown; "
               "purged?): simulate some with `shopassist simulate --db LOG --seed N` (a seed "
               "the models were not trained on) and pass that log.")


@dataclass(frozen=True)
class SessionReport:
    """Per system, the figures; and how many queries were judged."""

    systems: dict[str, dict[str, float]]
    queries: int
    kinds: dict[str, int]


def evaluate_sessions(reference: SearchEngine, systems: Mapping[str, SearchEngine],
                      frame: pd.DataFrame, truth: SimulationTruth, *,
                      history: str = "user", max_queries: int | None = None,
                      progress: Callable[[int], None] | None = None) -> SessionReport:
    """Serves every logged query the truth knows with each system and judges the top 10.

    A logged query with neither words nor a photo (filters only) is not judged; its list
    still joins the shopper's history.

    Args:
        reference: The engine the log was simulated against (its score is the utility's
            engine-score term, as the simulator saw it).
        systems: Name -> an engine variant (:meth:`SearchEngine.variant`): its fusion
            and, if any, its ranker.
        frame: Impressions of the log (:func:`training.datasets.impressions_table`), query
            rows contiguous, in the order the queries happened.
        truth: The simulation's saved ground truth.
        history: Whose earlier lists a ranker sees: ``user``, ``session`` or ``none``.
        max_queries: Judge only the first this many queries (``None``: all).
        progress: Called with the number of queries done after each wave.

    Raises:
        ValueError: The log holds no search sessions (``frame`` is empty: a purged log), or
            no query the truth knows (not the simulation's log).
    """
    if frame.empty:
        raise ValueError(NO_SESSIONS.format(log="The event log"))
    qids = frame["query_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, qids[1:] != qids[:-1]])
    ends = np.r_[starts[1:], len(frame)]
    known = [(s, e) for s, e in zip(starts, ends, strict=True) if qids[s] in truth.queries]
    if not known:
        raise ValueError("None of the log's queries is in the truth file: pass the truth "
                         "saved by the `shopassist simulate` run that wrote this log.")
    if max_queries is not None:
        known = known[:max_queries]
    keys = history_keys(frame, history).to_numpy()
    sessions: dict[Any, list[dict[str, Any]]] = {}
    searcher = BatchedSearch(reference)
    names = list(systems)
    served: dict[str, list[np.ndarray]] = {n: [] for n in names}
    pool_rows: list[np.ndarray] = []
    pool_scores: list[np.ndarray] = []
    pool_qid: list[str] = []
    kinds: list[str] = []
    done = offset = 0
    for wave in range(0, len(known), WAVE):
        batch = known[wave:wave + WAVE]
        asks = []
        for s, _ in batch:
            text = frame["query_text"].iat[s]
            photo = query_photo(truth, qids[s]) if frame["has_image"].iat[s] else None
            asks.append((photo, text if isinstance(text, str) and text.strip() else None))
        searcher.prime(asks)
        for (s, e), (photo, text) in zip(batch, asks, strict=True):
            session = [] if history == "none" else sessions.setdefault(keys[s], [])
            if history != "none":
                earlier = list(session)
                session.extend({"product_id": frame["product_id"].iat[i],
                                "clicked": bool(frame["clicked"].iat[i]),
                                "added_to_cart": bool(frame["added_to_cart"].iat[i]),
                                "purchased": bool(frame["purchased"].iat[i])}
                               for i in range(s, e))
            else:
                earlier = []
            if photo is None and text is None:
                continue
            plan = searcher.shadow.understand(photo, text)
            tops = {}
            for name in names:
                hits, _ = systems[name].serve(plan, K, session=earlier)
                tops[name] = np.array([reference.row_of[h.product.product_id] for h in hits],
                                      dtype=np.int64)
            pool = np.unique(np.concatenate(list(tops.values())))
            for name in names:
                served[name].append(offset + np.searchsorted(pool, tops[name]))
            offset += len(pool)
            score = reference.score_rows(plan.query, plan.boosts, pool)[1] if plan.query \
                else np.zeros(len(pool))
            pool_rows.append(pool)
            pool_scores.append(np.asarray(score, dtype=np.float64))
            pool_qid.append(str(qids[s]))
            kinds.append("photo" if photo is not None else "words")
            done += 1
        if progress is not None:
            progress(done)
    rows = np.concatenate(pool_rows)
    candidates = pd.DataFrame({
        "query_id": np.repeat(pool_qid, [len(p) for p in pool_rows]),
        "product_id": [reference.products[r].product_id for r in rows],
        "score": np.concatenate(pool_scores)})
    hidden = hidden_utility(candidates, rows, truth, CatalogStats(reference.table),
                            reference.row_of)
    gains = expected_gains(hidden["u"].to_numpy(), truth)["purchased"]
    offsets = np.cumsum([0] + [len(p) for p in pool_rows])
    return SessionReport(
        systems={n: figures(served[n], gains, offsets, kinds, truth) for n in names},
        queries=done, kinds={kind: kinds.count(kind) for kind in sorted(set(kinds))})


def figures(served: list[np.ndarray], gains: np.ndarray, offsets: np.ndarray,
            kinds: list[str], truth: SimulationTruth, k: int = K) -> dict[str, float]:
    """One system's figures.

    Args:
        served: Per query, the positions in ``gains`` of the system's top ``k`` (10: the
            figures are named for it), in order.
        gains: The hidden chance of a purchase of every pooled candidate, query by query.
        offsets: Query ``q``'s pool is ``gains[offsets[q]:offsets[q + 1]]``.
        kinds: ``photo`` or ``words`` per query.
        truth: Gives the examination curve's ``eta``.
    """
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    examine = np.array([1.0 / r ** truth.config.eta for r in range(1, k + 1)])
    ndcg, bought = [], []
    for q, picks in enumerate(served):
        pool = gains[offsets[q]:offsets[q + 1]]
        got = gains[picks]
        ideal = np.sort(pool)[::-1][:k]
        best = float((ideal * discount[:len(ideal)]).sum())
        ndcg.append(float((got * discount[:len(got)]).sum()) / best if best > 0 else math.nan)
        bought.append(float((got * examine[:len(got)]).sum()))
    values = np.array(ndcg)
    out = {"NDCG@10": float(np.nanmean(values)) if np.isfinite(values).any() else 0.0,
           "purchases/100": 100.0 * float(np.mean(bought)) if bought else 0.0}
    for kind in ("photo", "words"):
        mask = np.array([x == kind for x in kinds]) & np.isfinite(values)
        if mask.any():
            out[f"NDCG@10 {kind}"] = float(values[mask].mean())
    return out
