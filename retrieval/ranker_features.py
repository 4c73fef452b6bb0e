"""Features of the ranking head: one code path for training rows and for serving.

A candidate product is described, without its rank, by

- the query: its modality (photo, words, both), how many filters it carries, a price cap;
- the product: hashed attribute values (category, colour, gender, usage, season), its log
  price, and its price relative to its category's median and to the result list's median;
- the engine's similarity: the fused score and each modality's score, each also relative
  to the best in the list (a list's scores shift with the query; the gap to the best does
  not);
- what the query asked: per attribute, whether the words or filters named it and whether
  the product has the value named; and whether the product shares each attribute with the
  most similar product of the list (for a photo, usually the very product photographed);
- the shopper's history (:class:`History`): per attribute, the share of their earlier
  clicks and carts that had this product's value, a smoothed click-rate lift of the value,
  how often it was shown; and how the price compares with what they clicked before.

``training/`` builds its rows with :func:`candidate_features` from the event log; the engine
calls the same function on its candidates, so the two cannot drift apart. The "result list"
is the top ``list_size`` candidates by similarity: the logged list when training, the
engine's best candidates when serving a longer candidate list.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.filters import ColumnTable, Filters

# Product attributes the head sees (hashed) and compares with the query and the history.
ATTRIBUTES = ("category", "colour", "gender", "usage", "season")
MODALITIES = ("photo", "text", "photo+text")
EMPTY_BUCKET = 0  # an attribute a product lacks


def modality(has_image: bool, has_text: bool) -> str:
    """``photo``, ``text`` or ``photo+text`` (a query with neither counts as text)."""
    if has_image:
        return "photo+text" if has_text else "photo"
    return "text"


def filters_from_dict(data: Mapping[str, Any] | str | None) -> Filters:
    """The :class:`Filters` of a logged ``filters`` value (a dict or its JSON)."""
    if not data:
        return Filters()
    if isinstance(data, str):
        data = json.loads(data)
    assert isinstance(data, Mapping)
    return Filters(include={k: tuple(v) for k, v in (data.get("include") or {}).items()},
                   exclude={k: tuple(v) for k, v in (data.get("exclude") or {}).items()},
                   price_min=data.get("price_min"), price_max=data.get("price_max"),
                   in_stock=data.get("in_stock"))


@dataclass(frozen=True)
class QueryFacts:
    """What the head knows of a query.

    Attributes:
        modality: ``photo``, ``text`` or ``photo+text``.
        filters: The filters the search applied (explicit and read from the words).
        boosts: Soft preferences read from the words (usage, season).
    """

    modality: str
    filters: Filters = field(default_factory=Filters)
    boosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality is one of {', '.join(MODALITIES)} (got "
                             f"{self.modality!r}).")

    def wanted(self) -> dict[str, set[str]]:
        """Attribute -> the values the query named (filters and boosts together)."""
        out: dict[str, set[str]] = {}
        for source in (self.filters.include, self.boosts):
            for key, values in source.items():
                out.setdefault(key, set()).update(values)
        return out


def bucket(attribute: str, value: str, buckets: int) -> int:
    """A stable hash bucket of ``attribute=value`` in ``1..buckets-1`` (0: no value)."""
    if not value:
        return EMPTY_BUCKET
    return 1 + zlib.crc32(f"{attribute}={value}".encode()) % (buckets - 1)


class ProductFacts:
    """Per-product columns the features need, computed once per index version.

    Args:
        table: The index's columns (``SearchEngine.table``).
    """

    def __init__(self, table: ColumnTable) -> None:
        self.n = table.n
        self.values = {a: np.asarray(table.column(a), dtype=object).astype(str)
                       for a in ATTRIBUTES}
        price = np.asarray(table.price, dtype=np.float64)
        self.has_price = np.isfinite(price) & (price > 0)
        self.log_price = np.where(self.has_price, np.log(np.where(self.has_price, price, 1.0)),
                                  0.0)
        categories = self.values["category"]
        median = np.zeros(self.n)
        overall = float(np.median(self.log_price[self.has_price])) if self.has_price.any() \
            else 0.0
        for category in np.unique(categories):
            rows = categories == category
            priced = rows & self.has_price
            median[rows] = float(np.median(self.log_price[priced])) if priced.any() else overall
        # log(price / median price of the product's category): what a budget is relative to
        self.relative_price = np.where(self.has_price, self.log_price - median, 0.0)

    def buckets(self, rows: np.ndarray, buckets: int) -> np.ndarray:
        """``(len(rows), len(ATTRIBUTES))`` hashed attribute values."""
        out = np.empty((len(rows), len(ATTRIBUTES)), dtype=np.int64)
        for j, attr in enumerate(ATTRIBUTES):
            column = self.values[attr]
            out[:, j] = [bucket(attr, column[r], buckets) for r in rows]
        return out


class History:
    """What one shopper did before the current query: counts per attribute value.

    Fed with every earlier result list (shown rows and what was clicked, carted, bought),
    it describes new candidates by how their attribute values fared with this shopper.
    """

    def __init__(self) -> None:
        self.shown = 0
        self.clicks = 0
        self.carts = 0
        self.price_sum = 0.0
        self.by_value: dict[str, dict[str, Counter[str]]] = {
            a: {"shown": Counter(), "clicked": Counter(), "carted": Counter()}
            for a in ATTRIBUTES}

    def add(self, facts: ProductFacts, rows: Sequence[int], clicked: Sequence[bool],
            carted: Sequence[bool]) -> None:
        """Records one result list (``carted`` counts carts and purchases)."""
        for r, c, k in zip(rows, clicked, carted, strict=True):
            self.shown += 1
            self.clicks += bool(c)
            self.carts += bool(k)
            if c:
                self.price_sum += float(facts.relative_price[r])
            for attr in ATTRIBUTES:
                value = facts.values[attr][r]
                if not value:
                    continue
                counts = self.by_value[attr]
                counts["shown"][value] += 1
                if c:
                    counts["clicked"][value] += 1
                if k:
                    counts["carted"][value] += 1

    def features(self, facts: ProductFacts, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), len(HISTORY_NAMES))`` features of candidates given this history."""
        out = np.zeros((len(rows), len(HISTORY_NAMES)), dtype=np.float64)
        if self.shown == 0:
            return out
        out[:, 0] = math.log1p(self.shown)
        out[:, 1] = math.log1p(self.clicks)
        base = (self.clicks + 0.5) / (self.shown + 1.0)
        if self.clicks:
            gap = facts.relative_price[rows] - self.price_sum / self.clicks
            out[:, 2] = gap
            out[:, 3] = np.maximum(gap, 0.0)
        col = 4
        for attr in ATTRIBUTES:
            counts = self.by_value[attr]
            values = facts.values[attr][rows]
            shown = np.array([counts["shown"][v] for v in values], dtype=np.float64)
            clicked = np.array([counts["clicked"][v] for v in values], dtype=np.float64)
            carted = np.array([counts["carted"][v] for v in values], dtype=np.float64)
            out[:, col] = clicked / self.clicks if self.clicks else 0.0
            out[:, col + 1] = carted / self.carts if self.carts else 0.0
            # smoothed click rate of the value minus the shopper's overall click rate
            out[:, col + 2] = (clicked + base) / (shown + 1.0) - base
            out[:, col + 3] = np.log1p(shown)
            col += 4
        return out


HISTORY_NAMES = ("hist_shown", "hist_clicks", "hist_price_gap", "hist_price_over",
                 *(f"hist_{a}_{k}" for a in ATTRIBUTES
                   for k in ("click_share", "cart_share", "lift", "seen")))


def dense_names(slots: Sequence[str]) -> tuple[str, ...]:
    """Names of the dense features, in column order, for an index with ``slots``."""
    return (*(f"query_{m}" for m in MODALITIES), "query_filters", "query_price_cap",
            "fused", "fused_gap",
            *(f"{kind}_{s}" for s in slots for kind in ("slot", "slot_present", "slot_gap")),
            "log_price", "price_vs_category", "price_vs_list", "price_vs_cap",
            *(f"{kind}_{a}" for a in ATTRIBUTES for kind in ("asked", "match", "agree_top")),
            *HISTORY_NAMES)


def candidate_features(facts: ProductFacts, query: QueryFacts, rows: np.ndarray,
                       fused: np.ndarray, slot_scores: Mapping[str, np.ndarray],
                       slots: Sequence[str], history: History | None = None,
                       list_size: int = 10) -> np.ndarray:
    """Dense features ``(len(rows), len(dense_names(slots)))`` of one query's candidates.

    Args:
        facts: The index's product columns.
        query: The query's modality, filters and boosts.
        rows: Product rows of the candidates.
        fused: The engine's fused score of each candidate.
        slot_scores: Slot -> score of each candidate (a slot the query did not fill is
            absent, or NaN per candidate).
        slots: The slots the head was trained with (others are ignored).
        history: The shopper's earlier lists (``None``: no history).
        list_size: The result list is the top ``list_size`` candidates by ``fused``.

    Returns:
        float32 features; no rank or position enters them.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    fused = np.asarray(fused, dtype=np.float64)
    ref = np.argsort(-fused, kind="stable")[:max(1, list_size)] if n else np.zeros(0, int)
    cols: list[np.ndarray | float] = []
    cols += [float(query.modality == m) for m in MODALITIES]
    cols += [float(len(query.filters.constrained())),
             float(query.filters.price_max is not None)]
    best = fused[ref].max() if n else 0.0
    cols += [fused, fused - best]
    for slot in slots:
        values = np.asarray(slot_scores.get(slot, np.full(n, np.nan)), dtype=np.float64)
        present = np.isfinite(values)
        filled = np.where(present, values, 0.0)
        top = filled[ref][present[ref]].max() if present[ref].any() else 0.0
        cols += [filled, present.astype(np.float64), np.where(present, filled - top, 0.0)]
    log_price = facts.log_price[rows]
    priced = facts.has_price[rows]
    ref_prices = log_price[ref][priced[ref]]
    list_median = float(np.median(ref_prices)) if len(ref_prices) else 0.0
    cap = query.filters.price_max
    cols += [log_price, facts.relative_price[rows],
             np.where(priced, log_price - list_median, 0.0),
             np.where(priced, log_price - math.log(cap), 0.0) if cap and cap > 0 else 0.0]
    wanted = query.wanted()
    top_row = rows[ref[0]] if n else -1
    for attr in ATTRIBUTES:
        values = facts.values[attr][rows]
        asked = wanted.get(attr, set())
        cols += [float(bool(asked)),
                 np.array([v in asked for v in values], dtype=np.float64),
                 (values == facts.values[attr][top_row]).astype(np.float64)
                 if n and facts.values[attr][top_row] else 0.0]
    out = np.zeros((n, len(dense_names(slots))), dtype=np.float32)
    for j, col in enumerate(cols):
        out[:, j] = col
    hist = (history or History()).features(facts, rows)
    out[:, len(cols):] = hist
    return out


def interactions_history(facts: ProductFacts, row_of: Mapping[str, int],
                         interactions: Iterable[Mapping[str, Any]]) -> History:
    """A :class:`History` from earlier impressions given as mappings with ``product_id``
    and optional ``clicked``, ``added_to_cart``, ``purchased`` (unknown products are
    skipped): how a caller hands a shopper's session to the engine."""
    history = History()
    rows, clicked, carted = [], [], []
    for item in interactions:
        row = row_of.get(str(item.get("product_id")))
        if row is None:
            continue
        rows.append(row)
        bought = bool(item.get("purchased")) or bool(item.get("added_to_cart"))
        clicked.append(bool(item.get("clicked")) or bought)
        carted.append(bought)
    if rows:
        history.add(facts, rows, clicked, carted)
    return history
