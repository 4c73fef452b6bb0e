"""Training rows of the ranking head: logged impressions turned into feature matrices.

The impressions of an event log (or of a ``shopassist dataset`` folder) are read with their
labels, inverse-propensity weights and session split (:mod:`training.datasets`); each
query's shown products get the features the engine computes when it serves
(:func:`retrieval.ranker_features.candidate_features`), in the order the queries happened,
so the history features of a query see only what its shopper did before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from retrieval.query import QueryParser, Vocabulary
from retrieval.ranker_features import (
    History,
    ProductFacts,
    QueryFacts,
    candidate_features,
    dense_names,
    filters_from_dict,
    modality,
)
from retrieval.search import SHUFFLED
from training.datasets import SPLITS, read_impressions, split_of
from training.fusion_encode import IndexView
from training.ranker_config import RankerConfig

logger = logging.getLogger(__name__)

TRAIN, VALID, TEST = 0, 1, 2
# More of the logged impressions than this of products the index lacks: the log (or
# dataset) is of another catalog or index, and what is left would train a poor ranker.
MAX_DROPPED_SHARE = 0.5


@dataclass
class RankerData:
    """Feature matrices and labels of logged impressions, grouped by query.

    Attributes:
        dense: ``(n, d)`` float32 dense features (``names``).
        cats: ``(n, len(ATTRIBUTES))`` int64 hashed attribute values.
        click: Clicked (0/1).
        convert: Converted (the configured label; implies a click).
        log_dwell: Log dwell (ms) of clicked impressions (0 elsewhere).
        ipw: Clipped inverse-propensity weight.
        split: 0 train, 1 valid, 2 test (by session).
        group: Query index of each row (rows of a query are contiguous, shown order).
        fused: The engine's fused score (the similarity-only ranking).
        rank: The logged position.
        purchased, carted: Labels for evaluation.
        shuffled: Whether the row's list was shown in a random order (exploration).
        rows: Product row in the index.
        frame: The impressions kept (ids, sessions, users), aligned with the arrays.
        slots: The index's slots (score features).
        names: Dense feature names.
        snapshot: The dataset's snapshot id.
        info: Counts and sources.
    """

    dense: np.ndarray
    cats: np.ndarray
    click: np.ndarray
    convert: np.ndarray
    log_dwell: np.ndarray
    ipw: np.ndarray
    split: np.ndarray
    group: np.ndarray
    fused: np.ndarray
    rank: np.ndarray
    purchased: np.ndarray
    carted: np.ndarray
    shuffled: np.ndarray
    rows: np.ndarray
    frame: pd.DataFrame
    slots: tuple[str, ...]
    names: tuple[str, ...]
    snapshot: str
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.click)

    def where(self, split: int) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def load_impressions(source: str, config: RankerConfig) -> tuple[pd.DataFrame, str]:
    """The impressions table of an event log (URL or SQLite path) or a ``shopassist
    dataset`` folder, with its snapshot id (:func:`training.datasets.read_impressions`
    with the config's weight clip and split)."""
    return read_impressions(source, max_weight=config.max_weight,
                            fractions=config.fractions)


def built_with(config: RankerConfig) -> dict[str, Any]:
    """The settings that shape the rows (rows built with others do not fit a config)."""
    return {k: config.to_dict()[k] for k in ("history", "list_size", "buckets", "conversion",
                                             "max_weight", "fractions")}


def history_keys(frame: pd.DataFrame, scope: str) -> pd.Series:
    """Whose history each impression belongs to: the user (``scope`` ``user``; the
    conversation when the log has no user id) or the conversation (a query without one
    is its own)."""
    conversation = frame["conversation_id"].fillna("query:" + frame["query_id"])
    if scope == "user" and "user_id" in frame:
        return frame["user_id"].fillna(conversation)
    return conversation


def build_ranker_data(frame: pd.DataFrame, view: IndexView, config: RankerConfig,
                      snapshot: str) -> RankerData:
    """Features and labels of every impression of a product the index still has.

    Args:
        frame: An impressions table (:func:`training.datasets.impressions_table`, with
            ``split`` and ``ipw`` when built by :func:`training.datasets.build_dataset`).
        view: The index (product attributes and prices, slots, vocabulary).
        config: History scope, list size, hash buckets, conversion label, split fractions.
        snapshot: The dataset's snapshot id.

    Returns:
        The rows, in query order.

    Raises:
        ValueError: No impression, or most of them (over ``MAX_DROPPED_SHARE``), of a
            product in the index: the log is of another catalog or index.
    """
    row_of = {p.product_id: i for i, p in enumerate(view.products)}
    keep = frame["product_id"].isin(row_of).to_numpy()
    dropped = int((~keep).sum())
    if frame.empty:
        raise ValueError("The dataset holds no impressions; log searches first (the app, or "
                         "`shopassist simulate`) and rebuild it with `shopassist dataset`.")
    if dropped > MAX_DROPPED_SHARE * len(frame):
        raise ValueError(f"{dropped:,} of the {len(frame):,} logged impressions are of "
                         f"products {view.folder} does not have: the dataset or log is "
                         "likely of another catalog or index. Pass --index of the index "
                         "the log was recorded against, or a log of this one.")
    if dropped:
        logger.warning("%d of %d logged impressions are of products no longer in %s; "
                       "training without them", dropped, len(frame), view.folder)
    frame = frame[keep].reset_index(drop=True)
    codes, _ = pd.factorize(frame["query_id"])
    order = np.argsort(codes, kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    codes = codes[order]
    slots = tuple(c["slot"] for c in view.manifest["slots"])
    names = dense_names(slots)
    facts = ProductFacts(view.table)
    parser = QueryParser(Vocabulary(view.manifest.get("vocabulary", {})))
    rows = frame["product_id"].map(row_of).to_numpy(dtype=np.int64)
    fused = frame["score"].fillna(0.0).to_numpy(dtype=np.float64)
    slot_values = {s: frame[f"score_{s}"].to_numpy(dtype=np.float64)
                   for s in slots if f"score_{s}" in frame}
    clicked = frame["clicked"].to_numpy(dtype=bool)
    carted = (frame["added_to_cart"] | frame["purchased"]).to_numpy(dtype=bool)
    keys = history_keys(frame, config.history).to_numpy()
    texts = frame["query_text"].to_numpy(dtype=object)
    images = frame["has_image"].to_numpy(dtype=bool)
    filters = frame["filters"].to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(frame)]
    dense = np.zeros((len(frame), len(names)), dtype=np.float32)
    histories: dict[Any, History] = {}
    boosts: dict[str, dict[str, tuple[str, ...]]] = {}
    for start, end in zip(starts, ends, strict=True):
        part = slice(start, end)
        text = texts[start] if isinstance(texts[start], str) else ""
        if text and text not in boosts:
            boosts[text] = dict(parser.parse(text).boosts)
        query = QueryFacts(modality(bool(images[start]), bool(text)),
                           filters_from_dict(filters[start]), boosts.get(text, {}))
        history = None if config.history == "none" else \
            histories.setdefault(keys[start], History())
        dense[part] = candidate_features(facts, query, rows[part], fused[part],
                                         {s: v[part] for s, v in slot_values.items()}, slots,
                                         history, config.list_size)
        if history is not None:
            history.add(facts, rows[part], clicked[part], carted[part])
    if "split" in frame:
        split_names = frame["split"].to_numpy(dtype=object)
    else:
        groups = frame["conversation_id"].fillna("query:" + frame["query_id"])
        split_names = groups.map(lambda g: split_of(g, config.fractions)).to_numpy(dtype=object)
    split = np.array([SPLITS.index(s) for s in split_names], dtype=np.int8)
    dwell = frame["dwell_ms"].fillna(0.0).to_numpy(dtype=np.float64)
    log_dwell = np.where(clicked & (dwell > 0), np.log(np.maximum(dwell, 1.0)), 0.0)
    ipw = frame["ipw"].to_numpy(dtype=np.float32) if "ipw" in frame else \
        np.ones(len(frame), np.float32)
    shuffled = frame["model_version"].fillna("").str.endswith(SHUFFLED).to_numpy()
    info = {"snapshot": snapshot, "rows": len(frame), "dropped_unknown_products": dropped,
            "queries": len(starts), "splits": {n: int((split == i).sum())
                                                for i, n in enumerate(SPLITS)},
            "labels": {"clicked": int(clicked.sum()), "added_to_cart": int(carted.sum()),
                       "purchased": int(frame["purchased"].sum())},
            "built_with": built_with(config), "features": len(names),
            "index": {"folder": str(view.folder), "version": view.manifest.get("version"),
                      "fusion": view.manifest.get("fusion", {}).get("version")}}
    logger.info("ranker data %s: %d impressions of %d queries, %d features", snapshot,
                len(frame), len(starts), len(names))
    return RankerData(
        dense=dense, cats=facts.buckets(rows, config.buckets),
        click=clicked.astype(np.float32),
        convert=frame[config.conversion].to_numpy(dtype=np.float32),
        log_dwell=log_dwell.astype(np.float32), ipw=ipw, split=split,
        group=codes.astype(np.int64), fused=fused, rank=frame["rank"].to_numpy(dtype=np.int64),
        purchased=frame["purchased"].to_numpy(dtype=bool), carted=carted, shuffled=shuffled,
        rows=rows, frame=frame[["impression_id", "query_id", "conversation_id", "user_id",
                                "query_text", "has_image", "product_id", "rank",
                                "model_version"]],
        slots=slots, names=names, snapshot=snapshot, info=info)
