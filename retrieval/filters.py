"""Structured filters: one spec, two evaluators (Chroma ``where`` and an in-memory mask).

The store evaluates filters for approximate search; the in-memory mask serves the exact
path for selective filters (where filtered HNSW loses recall) and tells how selective a
filter is. Both are built from the same :class:`Filters`, and the tests check they agree.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# Keys that are columns of every product; any other key is an attribute.
PRODUCT_KEYS = ("category", "currency", "in_stock", "price")
MAX_VALUES = 64


class FilterError(ValueError):
    """A filter that cannot be applied; the message says what is accepted."""


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Constraints on products. Empty means "everything".

    Attributes:
        include: Key -> accepted values (any of them); keys are ``category`` or attributes.
        exclude: Key -> rejected values.
        price_min: Lowest price accepted (inclusive).
        price_max: Highest price accepted (inclusive).
        in_stock: Only in-stock (True) or only out-of-stock (False) products.
    """

    include: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    exclude: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    price_min: float | None = None
    price_max: float | None = None
    in_stock: bool | None = None

    def __post_init__(self) -> None:
        for key, values in [*self.include.items(), *self.exclude.items()]:
            if key in ("price", "in_stock"):
                how = "price_min / price_max" if key == "price" else "in_stock=True / False"
                raise FilterError(f"Filter {key} with {how}, not as a list of values "
                                  f"(got {key}: {values!r}).")
            if isinstance(values, str):
                # A bare string would be read as a list of its letters.
                raise FilterError(f"Filter {key!r} takes a tuple of values, e.g. "
                                  f"({values!r},), not the string {values!r}.")
            if not values:
                raise FilterError(f"Filter {key!r} has no values.")
            if len(values) > MAX_VALUES:
                raise FilterError(f"Filter {key!r} has {len(values)} values; at most "
                                  f"{MAX_VALUES} are accepted.")
            bad = [v for v in values if not isinstance(v, str) or not v]
            if bad:
                raise FilterError(f"Filter {key!r} values must be non-empty strings "
                                  f"(got {bad[0]!r}).")
        for name in ("price_min", "price_max"):
            bound = getattr(self, name)
            if bound is not None and not math.isfinite(bound):
                raise FilterError(f"{name} must be a finite number (got {bound!r}).")
        if (self.price_min is not None and self.price_max is not None
                and self.price_min > self.price_max):
            raise FilterError(f"price_min {self.price_min:g} is above price_max "
                              f"{self.price_max:g}.")

    def is_empty(self) -> bool:
        return not (self.include or self.exclude or self.price_min is not None
                    or self.price_max is not None or self.in_stock is not None)

    def merged(self, other: Filters) -> Filters:
        """``other``'s constraints added to these; ``other`` wins on the same key, and a
        price bound in ``other`` replaces this price range as a whole (so "under 100" read
        from words cannot clash with an explicit minimum of 200)."""
        price = other if (other.price_min is not None or other.price_max is not None) \
            else self
        return Filters(
            include={**self.include, **other.include},
            exclude={**self.exclude, **other.exclude},
            price_min=price.price_min,
            price_max=price.price_max,
            in_stock=other.in_stock if other.in_stock is not None else self.in_stock,
        )

    def without(self, key: str) -> Filters:
        """A copy without the constraint on ``key`` (``price`` drops both bounds)."""
        if key == "price":
            return replace(self, price_min=None, price_max=None)
        if key == "in_stock":
            return replace(self, in_stock=None)
        return replace(self, include={k: v for k, v in self.include.items() if k != key},
                       exclude={k: v for k, v in self.exclude.items() if k != key})

    def constrained(self) -> list[str]:
        """The constrained keys, most specific first (the order to relax them in reverse)."""
        out = list(dict.fromkeys([*self.include, *self.exclude]))
        if self.price_min is not None or self.price_max is not None:
            out.append("price")
        if self.in_stock is not None:
            out.append("in_stock")
        return out

    def describe(self) -> list[str]:
        """Human-readable chips: ``colour: Red``, ``price ≤ 1500``."""
        chips = [f"{k}: {' or '.join(v)}" for k, v in self.include.items()]
        chips += [f"{k}: not {' or '.join(v)}" for k, v in self.exclude.items()]
        if self.price_min is not None and self.price_max is not None:
            chips.append(f"price {self.price_min:g}–{self.price_max:g}")
        elif self.price_max is not None:
            chips.append(f"price ≤ {self.price_max:g}")
        elif self.price_min is not None:
            chips.append(f"price ≥ {self.price_min:g}")
        if self.in_stock is not None:
            chips.append("in stock" if self.in_stock else "out of stock")
        return chips

    def to_dict(self) -> dict[str, Any]:
        return {"include": {k: list(v) for k, v in self.include.items()},
                "exclude": {k: list(v) for k, v in self.exclude.items()},
                "price_min": self.price_min, "price_max": self.price_max,
                "in_stock": self.in_stock}

    def to_where(self) -> dict[str, Any] | None:
        """The Chroma ``where`` clause, or ``None`` for no constraint."""
        clauses: list[dict[str, Any]] = []
        for key, values in self.include.items():
            clauses.append({key: {"$in": list(values)}} if len(values) > 1
                           else {key: {"$eq": values[0]}})
        for key, values in self.exclude.items():
            clauses.append({key: {"$nin": list(values)}} if len(values) > 1
                           else {key: {"$ne": values[0]}})
        if self.price_min is not None:
            clauses.append({"price": {"$gte": float(self.price_min)}})
        if self.price_max is not None:
            clauses.append({"price": {"$lte": float(self.price_max)}})
        if self.in_stock is not None:
            clauses.append({"in_stock": {"$eq": bool(self.in_stock)}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def check_keys(self, table: ColumnTable) -> None:
        """Refuses keys the catalog has no column for (a typo such as ``colr=Red`` would
        otherwise match nothing and look like an empty catalog).

        Raises:
            FilterError: A key is unknown; the message names the close and the known keys.
        """
        known = table.keys()
        for key in sorted({*self.include, *self.exclude} - set(known)):
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise FilterError(f"Unknown filter {key!r}{hint}: this catalog's filters are "
                              f"{', '.join(sorted(known))}, price and in_stock.")

    def mask(self, table: ColumnTable) -> np.ndarray:
        """Boolean mask over the rows of ``table`` that pass every constraint."""
        ok = np.ones(table.n, dtype=bool)
        for key, values in self.include.items():
            ok &= np.isin(table.column(key), list(values))
        for key, values in self.exclude.items():
            # Chroma's $ne / $nin keep records that lack the key ("not red" keeps products
            # without a colour); a missing value is "" here and "" is never a filter value.
            ok &= ~np.isin(table.column(key), list(values))
        if self.price_min is not None:
            ok &= table.price >= self.price_min  # NaN (no price) compares False
        if self.price_max is not None:
            ok &= table.price <= self.price_max
        if self.in_stock is not None:
            ok &= table.in_stock == self.in_stock
        return ok


class ColumnTable:
    """Products as columns of numpy arrays, for fast masks and vocabularies."""

    def __init__(self, columns: Mapping[str, Sequence[str]], price: Sequence[float | None],
                 in_stock: Sequence[bool]) -> None:
        self.n = len(price)
        self._columns = {k: np.asarray(v, dtype=object) for k, v in columns.items()}
        self.price = np.asarray([np.nan if p is None else p for p in price], dtype=np.float64)
        self.in_stock = np.asarray(in_stock, dtype=bool)

    def column(self, key: str) -> np.ndarray:
        """The string values of ``key`` ("" where a product lacks it)."""
        if key not in self._columns:
            return np.full(self.n, "", dtype=object)
        return self._columns[key]

    def keys(self) -> list[str]:
        return list(self._columns)

    def vocabulary(self, key: str) -> list[str]:
        """The distinct non-empty values of ``key``, most frequent first."""
        values, counts = np.unique(self.column(key).astype(str), return_counts=True)
        order = np.argsort(-counts, kind="stable")
        return [str(values[i]) for i in order if values[i]]


def parse_filter_args(pairs: Iterable[str]) -> Filters:
    """Parses CLI-style ``KEY=VALUE`` pairs into :class:`Filters`.

    Accepted: ``colour=Red`` (repeat or use ``|`` for "any of": ``colour=Red|Blue``),
    ``colour!=Red``, ``price<=80``, ``price>=20``, ``price=20..80``, ``in_stock=true``
    (``in_stock!=true`` means out of stock).

    Raises:
        FilterError: A pair is malformed (the message shows the accepted forms).
    """
    include: dict[str, list[str]] = {}
    exclude: dict[str, list[str]] = {}
    price_min = price_max = None
    in_stock = None
    forms = "KEY=VALUE, KEY!=VALUE, price<=N, price>=N, price=MIN..MAX, in_stock=true|false"
    for pair in pairs:
        for op in ("!=", "<=", ">=", "="):
            if op in pair:
                key, value = (s.strip() for s in pair.split(op, 1))
                break
        else:
            raise FilterError(f"Cannot read filter {pair!r}; use {forms}.")
        if not key or not value:
            raise FilterError(f"Cannot read filter {pair!r}; use {forms}.")
        key = key.lower()
        if key == "price" and op == "!=":
            raise FilterError(f"price does not take != (got {pair!r}); use {forms}.")
        try:
            if key == "price":
                if op == "<=":
                    price_max = float(value)
                elif op == ">=":
                    price_min = float(value)
                elif op == "=" and ".." in value:
                    low, high = value.split("..", 1)
                    price_min = float(low) if low else None
                    price_max = float(high) if high else None
                else:
                    price_min = price_max = float(value)
                continue
        except ValueError:
            raise FilterError(f"Price in {pair!r} is not a number; use {forms}.") from None
        if op in ("<=", ">="):
            raise FilterError(f"Only price takes <= or >= (got {pair!r}).")
        if key == "in_stock":
            if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise FilterError(f"in_stock takes true or false (got {value!r}).")
            in_stock = (value.lower() in {"true", "1", "yes"}) != (op == "!=")
            continue
        target = exclude if op == "!=" else include
        target.setdefault(key, []).extend(v.strip() for v in value.split("|") if v.strip())
    return Filters(include={k: tuple(v) for k, v in include.items()},
                   exclude={k: tuple(v) for k, v in exclude.items()},
                   price_min=price_min, price_max=price_max, in_stock=in_stock)
