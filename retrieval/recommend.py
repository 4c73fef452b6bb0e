"""Recommendations from a product: similar items and items that go with it.

``similar`` searches with the product's own stored vectors (no re-encoding), excluding the
product and its exact duplicates (same photo bytes, or same photo and same text).
``complementary`` follows category rules (``rules/complements.toml``, or a shop's own file)
within the product's gender, prefers the same usage and season, ranks by text similarity
and interleaves categories so the list is an outfit, not ten belts. The learning loop adds
co-interaction from the event log on top (``training/``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from retrieval.filters import Filters
from retrieval.search import SearchEngine, SearchHit, SearchResult

DUPLICATE_COSINE = 0.999


def similar(engine: SearchEngine, product_id: str, k: int = 10,
            filters: Filters | None = None) -> SearchResult:
    """Products most like ``product_id`` (photo, colour and text), itself excluded.

    Raises:
        KeyError: Unknown product id.
    """
    product = engine.product(product_id)
    query = engine.vectors_of(product.product_id)
    row = engine.row_of[product.product_id]
    key = engine.records.image_keys[row]
    # Rank a few extra, then drop exact duplicates: the same photo bytes, or the same
    # vectors in every slot (the same product listed twice).
    hits, exact = engine.rank(query, filters or Filters(), {}, min(k + 16, 200),
                              {product.product_id})
    kept = []
    for hit in hits:
        other = engine.row_of[hit.product.product_id]
        same_photo = bool(key) and engine.records.image_keys[other] == key
        if same_photo or min(hit.scores.values(), default=0.0) >= DUPLICATE_COSINE:
            continue
        kept.append(hit)
    hits = [SearchHit(h.product, rank, h.score, h.scores, (f"similar to {product.title}", *h.why))
            for rank, h in enumerate(kept[:k], start=1)]
    return SearchResult(hits=hits, filters=filters or Filters(), index_version=engine.version,
                        exact=exact)


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

    Raises:
        KeyError: Unknown product id.
    """
    product = engine.product(product_id)
    by_category, by_subcategory = load_rules(rules_file)
    targets = _targets(engine, product.category, product.attributes, by_category, by_subcategory)
    if not targets:
        return SearchResult(hits=[], filters=Filters(), index_version=engine.version)
    key, values = targets
    include: dict[str, tuple[str, ...]] = {key: tuple(values)}
    gender = product.attributes.get("gender")
    if gender:
        genders = [g for g in (gender, "Unisex") if g in engine.vocabulary.values.get("gender", [])]
        include["gender"] = tuple(genders or [gender])
    filters = Filters(include=include, in_stock=True)
    mask = filters.mask(engine.table)
    mask[engine.row_of[product.product_id]] = False
    rows = np.flatnonzero(mask)
    if rows.size == 0:
        return SearchResult(hits=[], filters=filters, index_version=engine.version)
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
    groups = engine.table.column(key)[rows]
    picked = _interleave(rows, score, groups, values, k)
    hits = [SearchHit(engine.products[r], rank, float(s), {"text": float(s)},
                      (f"goes with {product.title}", f"{key}: {engine.table.column(key)[r]}"))
            for rank, (r, s) in enumerate(picked, start=1)]
    return SearchResult(hits=hits, filters=filters, index_version=engine.version, exact=True)


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
    """Round-robin over groups in rule order, best first within each group."""
    queues = []
    for value in order:
        idx = np.flatnonzero(groups == value)
        idx = idx[np.argsort(-score[idx], kind="stable")]
        queues.append([(int(rows[i]), float(score[i])) for i in idx[:k]])
    out: list[tuple[int, float]] = []
    while len(out) < k and any(queues):
        for queue in queues:
            if queue and len(out) < k:
                out.append(queue.pop(0))
    return out
