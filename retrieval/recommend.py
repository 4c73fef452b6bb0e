"""Recommendations from a product: similar items and items that go with it.

``similar`` searches with the product's own stored vectors (no re-encoding), excluding the
product and its exact duplicates (same photo bytes, or same photo and same text).
``complementary`` follows category rules (``rules/complements.toml``, or a shop's own file)
within the product's gender, prefers the same usage and season, ranks by text similarity
and interleaves categories so the list is an outfit, not ten belts. The learning loop adds
co-interaction from the event log on top: a promoted ranker's table of products carted or
bought together (``training/cointeraction.py``) is blended with the rules.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.filters import Filters
from retrieval.ranker_features import QueryFacts
from retrieval.search import SearchEngine, SearchHit, SearchResult, check_k

DUPLICATE_COSINE = 0.999
CO_BONUS = 0.5  # added to a complement's score at the strongest co-interaction
CO_PARTNERS = 50  # co-interacted products considered per product
TOGETHER = "bought together"


def similar(engine: SearchEngine, product_id: str, k: int = 10,
            filters: Filters | None = None, *, session: Sequence[Mapping[str, Any]] = (),
            rerank: bool = True) -> SearchResult:
    """Products most like ``product_id`` (photo, colour and text), itself excluded.

    With a ranker promoted for the index (and ``rerank``), the candidates are re-ordered by
    its expected utility, using the shopper's ``session`` when given (see
    :meth:`SearchEngine.search`).

    Raises:
        KeyError: Unknown product id.
        ValueError: ``k`` outside 1..200.
    """
    check_k(k)
    product = engine.product(product_id)
    query = engine.vectors_of(product.product_id)
    row = engine.row_of[product.product_id]
    key = engine.records.image_keys[row]
    # Rank a few extra, then drop exact duplicates: the same photo bytes, or the same
    # vectors in every slot (the same product listed twice).
    reranking = rerank and engine.ranker is not None
    want = max(k, engine.ranker.candidates) if reranking and engine.ranker else k
    hits, exact = engine.rank(query, filters or Filters(), {}, min(want + 16, 200),
                              {product.product_id})
    kept = []
    for hit in hits:
        other = engine.row_of[hit.product.product_id]
        same_photo = bool(key) and engine.records.image_keys[other] == key
        if same_photo or min(hit.scores.values(), default=0.0) >= DUPLICATE_COSINE:
            continue
        kept.append(hit)
    if reranking:
        kept = engine.rerank(kept, QueryFacts("photo+text", filters or Filters()), session)
    hits = [replace(h, rank=rank, why=(f"similar to {product.title}", *h.why))
            for rank, h in enumerate(kept[:k], start=1)]
    return SearchResult(hits=hits, filters=filters or Filters(), index_version=engine.version,
                        exact=exact, model_version=engine.model_version(reranking))


@lru_cache(maxsize=8)
def load_rules(path: str | None = None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Category and subcategory rules (``[categories]`` and ``[subcategories]`` tables)."""
    if path is None:
        text = resources.files("retrieval.rules").joinpath("complements.toml").read_text(
            encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    data = tomllib.loads(text)
    return dict(data.get("categories", {})), dict(data.get("subcategories", {}))


def complementary(engine: SearchEngine, product_id: str, k: int = 10,
                  rules_file: str | None = None) -> SearchResult:
    """Products that go with ``product_id``: complementary categories, same gender.

    When the index's promoted ranker carries a co-interaction table (products shoppers
    carted or bought together), it is blended in: rule candidates bought together with the
    product rise within their category (up to ``CO_BONUS``), and partners outside the rules
    lead the list as their own "bought together" group.

    Raises:
        KeyError: Unknown product id.
        ValueError: ``k`` outside 1..200.
    """
    check_k(k)
    product = engine.product(product_id)
    me = engine.row_of[product.product_id]
    by_category, by_subcategory = load_rules(rules_file)
    targets = _targets(engine, product.category, product.attributes, by_category, by_subcategory)
    co = _co_partners(engine, product.product_id)
    if not targets and not co:
        return SearchResult(hits=[], filters=Filters(), index_version=engine.version,
                            model_version=engine.model_version())
    key, values = targets or ("category", [])
    include: dict[str, tuple[str, ...]] = {key: tuple(values)} if values else {}
    gender = product.attributes.get("gender")
    if gender:
        genders = [g for g in (gender, "Unisex") if g in engine.vocabulary.values.get("gender", [])]
        include["gender"] = tuple(genders or [gender])
    filters = Filters(include=include, in_stock=True)
    mask = filters.mask(engine.table) if values else np.zeros(len(engine), dtype=bool)
    mask[me] = False
    extra = [r for r in co if not mask[r] and r != me and engine.table.in_stock[r]]
    rows = np.r_[np.flatnonzero(mask), np.array(extra, dtype=np.int64)].astype(np.int64)
    if rows.size == 0:
        return SearchResult(hits=[], filters=filters, index_version=engine.version,
                            model_version=engine.model_version())
    mine = engine.vectors_of(product.product_id)
    text_slots = [s.name for s in engine.profile.profile.slots if s.source == "text"]
    score = np.zeros(rows.size, dtype=np.float32)
    for slot in text_slots:
        score += engine.vectors[slot][rows].astype(np.float32) @ mine[slot]
    score /= max(len(text_slots), 1)
    for attr, bonus in (("usage", 0.15), ("season", 0.05)):
        value = product.attributes.get(attr)
        if value:
            score += bonus * (engine.table.column(attr)[rows] == value)
    together = np.array([co.get(int(r), 0.0) for r in rows], dtype=np.float32)
    score += CO_BONUS * together
    groups = engine.table.column(key)[rows].astype(object)
    groups[len(rows) - len(extra):] = TOGETHER
    picked = _interleave(rows, score, groups, [TOGETHER, *values] if extra else values, k)
    hits = []
    for rank, (r, s) in enumerate(picked, start=1):
        why = [f"goes with {product.title}"]
        if co.get(r):
            why.append(f"bought together with {product.title}")
        if groups[np.flatnonzero(rows == r)[0]] != TOGETHER:
            why.append(f"{key}: {engine.table.column(key)[r]}")
        scores = {"text": float(s - CO_BONUS * co.get(r, 0.0))}
        if co.get(r):
            scores["together"] = co[r]
        hits.append(SearchHit(engine.products[r], rank, float(s), scores, tuple(why)))
    # the co-interaction table is the ranker's: it ordered this list too when it was used
    return SearchResult(hits=hits, filters=filters, index_version=engine.version, exact=True,
                        model_version=engine.model_version(bool(co)))


def _co_partners(engine: SearchEngine, product_id: str) -> dict[int, float]:
    """Row -> co-interaction weight relative to the strongest partner (0..1], from the
    promoted ranker's table; empty without one."""
    table = engine.ranker.cointeraction if engine.ranker is not None else None
    if table is None:
        return {}
    found = [(engine.row_of[p], w) for p, w in table.partners(product_id, CO_PARTNERS)
             if p in engine.row_of]
    top = max((w for _, w in found), default=0.0)
    return {r: float(w / top) for r, w in found} if top > 0 else {}


def _targets(engine: SearchEngine, category: str, attributes: Mapping[str, str],
             by_category: Mapping[str, list[str]], by_subcategory: Mapping[str, list[str]]
             ) -> tuple[str, list[str]] | None:
    known = set(engine.vocabulary.values.get("category", []))
    wanted = [c for c in by_category.get(category, []) if c in known]
    if wanted:
        return "category", wanted
    sub = attributes.get("subcategory")
    known_sub = set(engine.vocabulary.values.get("subcategory", []))
    wanted = [s for s in by_subcategory.get(sub or "", []) if s in known_sub]
    return ("subcategory", wanted) if wanted else None


def _interleave(rows: np.ndarray, score: np.ndarray, groups: np.ndarray,
                order: Sequence[str], k: int) -> list[tuple[int, float]]:
    """Rounds of one product per group (so the list is an outfit), best first within each
    group; within a round, a "bought together" pick leads and the others follow by score,
    so scores fall within each round."""
    queues = []
    for value in order:
        idx = np.flatnonzero(groups == value)
        idx = idx[np.argsort(-score[idx], kind="stable")]
        queues.append([(int(rows[i]), float(score[i])) for i in idx[:k]])
    lead = 1 if order and order[0] == TOGETHER else 0
    out: list[tuple[int, float]] = []
    while len(out) < k and any(queues):
        together = [queues[0].pop(0)] if lead and queues[0] else []
        rest = [queue.pop(0) for queue in queues[lead:] if queue]
        rest.sort(key=lambda pick: -pick[1])  # stable: ties keep the rules' order
        out.extend([*together, *rest][:k - len(out)])
    return out
