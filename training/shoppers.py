"""Simulated shoppers: what the catalog offers each of them, their hidden tastes, and the
utility a shown product has for them.

:class:`CatalogStats` summarises an index's products once (attribute values per product,
value counts per gender and category, median prices); :func:`draw_shopper` draws a shopper's
hidden traits from priors over those values; :func:`preference_match`, :func:`price_fit` and
:func:`intent_match` are the terms of the hidden utility (:mod:`training.behaviour`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from retrieval.filters import ColumnTable
from training.truth import ATTRIBUTES, Shopper, SimConfig

# Catalog genders a shopper can be; "Unisex" products suit everyone.
SHOPPER_GENDERS = ("Men", "Women", "Boys", "Girls")
UNISEX = "Unisex"


class CatalogStats:
    """The catalog as the simulator needs it: per-product attribute values, value counts
    per (gender, category), and each category's median price.

    Args:
        table: The index's columns (``SearchEngine.table``).
    """

    def __init__(self, table: ColumnTable) -> None:
        self.n = table.n
        self.values: dict[str, np.ndarray] = {
            a: np.asarray(table.column(a), dtype=object).astype(str)
            for a in (*ATTRIBUTES, "gender")}
        self.price = np.asarray(table.price, dtype=np.float64)
        genders = Counter(g for g in self.values["gender"] if g in SHOPPER_GENDERS)
        self.genders: dict[str, int] = dict(genders.most_common())
        self._counts: dict[tuple[str, ...], Counter[str]] = {}
        self._vocabulary: dict[str, list[str]] = {}
        cats = self.values["category"]
        columns = {a: self.values[a].tolist() for a in ("gender", "colour", "usage", "season")}
        for row, category in enumerate(cats.tolist()):
            if not category:
                continue
            for g in self._shoppers_of(columns["gender"][row]):
                self._counts.setdefault((g,), Counter())[category] += 1
                for attr in ("colour", "usage", "season"):
                    value = columns[attr][row]
                    if value:
                        self._counts.setdefault((g, category, attr), Counter())[value] += 1
        self.median_price: dict[str, float] = {}
        overall = np.nanmedian(self.price) if np.isfinite(self.price).any() else math.nan
        self.overall_median_price = float(overall)
        for category in np.unique(cats):
            prices = self.price[(cats == category) & np.isfinite(self.price)]
            self.median_price[str(category)] = float(np.median(prices)) if len(prices) else \
                self.overall_median_price

    def _shoppers_of(self, gender: str) -> tuple[str, ...]:
        # A product of no stated gender, or a unisex one, is offered to every shopper.
        if gender in SHOPPER_GENDERS:
            return (gender,)
        return (*self.genders, "") if gender in ("", UNISEX) else ()

    def suits(self, gender: str) -> np.ndarray:
        """Which products a shopper of ``gender`` would wear (theirs, unisex, or unstated)."""
        g = self.values["gender"]
        return (g == gender) | (g == UNISEX) | (g == "") if gender else np.ones(self.n, bool)

    def categories(self, gender: str) -> Counter[str]:
        """Category -> number of products for ``gender``."""
        return self._counts.get((gender,), Counter())

    def attribute_values(self, gender: str, category: str, attr: str) -> Counter[str]:
        """Values of ``attr`` (colour, usage, season) among ``gender``'s ``category``."""
        return self._counts.get((gender, category, attr), Counter())

    def vocabulary(self, attr: str) -> list[str]:
        """Every non-empty value of ``attr`` in the catalog, sorted."""
        if attr not in self._vocabulary:
            self._vocabulary[attr] = sorted(v for v in set(self.values[attr].tolist()) if v)
        return self._vocabulary[attr]

    def budget(self, shopper: Shopper, category: str) -> float:
        """The shopper's budget for one product of ``category``."""
        return shopper.budget_ratio * self.median_price.get(category, self.overall_median_price)


def draw_shopper(rng: np.random.Generator, stats: CatalogStats, config: SimConfig,
                 shopper_id: str) -> Shopper:
    """Draws one shopper's hidden traits.

    Gender follows the catalog's mix; attribute importances are a Dirichlet draw (so some
    shoppers care mostly about colour, others about category); the affinity to each value
    is Gaussian; budget ratio and price sensitivity are log-normal; patience and photo rate
    are Beta draws around the configured means.
    """
    if stats.genders:
        names = list(stats.genders)
        weights = np.array([stats.genders[g] for g in names], dtype=float)
        gender = str(names[int(rng.choice(len(names), p=weights / weights.sum()))])
    else:
        gender = ""
    importance = rng.dirichlet(np.full(len(ATTRIBUTES), config.importance_alpha))
    affinity = {}
    for attr in ATTRIBUTES:
        vocab = stats.vocabulary(attr)
        draws = rng.normal(0.0, config.affinity_sd, size=len(vocab))
        affinity[attr] = {v: round(float(d), 4) for v, d in zip(vocab, draws, strict=True)}
    return Shopper(
        shopper_id=shopper_id, gender=gender,
        importance={a: round(float(w), 4) for a, w in zip(ATTRIBUTES, importance, strict=True)},
        affinity=affinity,
        budget_ratio=round(float(rng.lognormal(0.0, 0.5)), 4),
        price_sensitivity=round(float(rng.lognormal(0.0, 0.5)), 4),
        patience=round(_beta_around(rng, config.patience), 4),
        photo_rate=round(_beta_around(rng, config.photo_rate), 4))


def _beta_around(rng: np.random.Generator, mean: float, strength: float = 8.0) -> float:
    if mean <= 0.0 or mean >= 1.0:
        return float(mean)
    return float(rng.beta(mean * strength, (1.0 - mean) * strength))


def preference_match(shopper: Shopper, stats: CatalogStats, rows: Sequence[int]) -> np.ndarray:
    """Importance-weighted affinity of the shopper to each product's attribute values."""
    out = np.zeros(len(rows), dtype=np.float64)
    for attr in ATTRIBUTES:
        weight, affinity = shopper.importance[attr], shopper.affinity[attr]
        column = stats.values[attr]
        out += weight * np.array([affinity.get(column[r], 0.0) for r in rows])
    return out


def price_fit(shopper: Shopper, stats: CatalogStats, rows: Sequence[int]) -> np.ndarray:
    """``-sensitivity * max(0, ln(price / budget))`` per product (0 when the price is unknown)."""
    out = np.zeros(len(rows), dtype=np.float64)
    for i, r in enumerate(rows):
        price = stats.price[r]
        budget = stats.budget(shopper, stats.values["category"][r])
        if np.isfinite(price) and price > 0 and budget > 0:
            out[i] = -shopper.price_sensitivity * max(0.0, math.log(price / budget))
    return out


def intent_match(stats: CatalogStats, rows: Sequence[int], intent: Mapping[str, str],
                 price_cap: float | None) -> np.ndarray:
    """Share of the intended attributes (and the price cap) each product satisfies.

    Gender matches when the product is the shopper's gender, unisex or unstated.
    """
    checks = [k for k, v in intent.items() if v] + (["price"] if price_cap else [])
    if not checks:
        return np.ones(len(rows), dtype=np.float64)
    out = np.zeros(len(rows), dtype=np.float64)
    for attr in checks:
        if attr == "price":
            prices = stats.price[list(rows)]
            out += np.isfinite(prices) & (prices <= float(price_cap or 0))
        elif attr == "gender":
            out += stats.suits(intent[attr])[list(rows)]
        else:
            out += stats.values[attr][list(rows)] == intent[attr]
    return out / len(checks)
