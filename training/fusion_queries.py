"""Shopper-style text queries built from a product's attributes, for catalog self-supervision.

"red dresses for women", "women's red dress", "casual shirts", "summer dresses for girls":
each phrasing constrains some attributes (:data:`QUERY_ATTRIBUTES`), and every product that
has those values answers it. A query's constraint is kept as one code per attribute (``-1``
where the words leave it open), so a batch knows all of each query's positives, not just the
product it was drawn from. Price words ("under 1500") are added to some phrasings without
constraining anything: a photo does not show a price, and the head must learn to ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

QUERY_ATTRIBUTES = ("category", "colour", "gender", "subcategory", "usage", "season")

GENDER_FOR = {"Men": ("for men", "for him"), "Women": ("for women", "for her", "for ladies"),
              "Boys": ("for boys",), "Girls": ("for girls",), "Unisex": ("unisex",)}
GENDER_OF = {"Men": ("men's", "mens"), "Women": ("women's", "ladies"), "Boys": ("boys'",),
             "Girls": ("girls'",), "Unisex": ("unisex",)}
SEASON_WORDS = {"Fall": "autumn"}
PRICE_WORDS = ("under", "below", "less than", "up to")
# Plural nouns that have no singular a shopper would type.
PLURAL_ONLY = {"jeans", "shorts", "trousers", "leggings", "sunglasses", "capris", "pants",
               "tights", "jeggings", "briefs", "boxers", "trunks", "glasses", "flats", "heels",
               "sports", "pyjamas", "innerwear", "accessories", "bottomwear", "topwear",
               "footwear", "eyewear", "loungewear", "sleepwear", "nightwear"}

# (attributes the words constrain, templates, weight). ``{cat1}`` is the singular.
TEMPLATES: tuple[tuple[tuple[str, ...], tuple[str, ...], float], ...] = (
    (("colour", "category", "gender"),
     ("{colour} {cat} {gfor}", "{gof} {colour} {cat}", "{colour} {cat1} {gfor}",
      "{gof} {colour} {cat1}", "looking for {colour} {cat} {gfor}"), 4.0),
    (("colour", "category"), ("{colour} {cat}", "{colour} {cat1}", "{cat} in {colour}"), 2.0),
    (("category", "gender"), ("{cat} {gfor}", "{gof} {cat}"), 1.0),
    (("category",), ("{cat}", "{cat1}"), 0.5),
    (("colour", "subcategory", "gender"), ("{colour} {sub} {gfor}",), 0.5),
    (("usage", "category"), ("{usage} {cat}",), 0.5),
    (("season", "category", "gender"), ("{season} {cat} {gfor}",), 0.5),
    (("usage", "colour", "category"), ("{usage} {colour} {cat}",), 0.5),
)


def singular(noun: str) -> str:
    """A shopper's singular of a lower-case category ("dresses" -> "dress"), or the noun."""
    words = noun.split()
    last = words[-1] if words else noun
    if last in PLURAL_ONLY or not last.endswith("s") or last.endswith("ss"):
        return noun
    last = last[:-2] if last.endswith(("ches", "shes", "sses", "xes")) else last[:-1]
    return " ".join([*words[:-1], last])


@dataclass(frozen=True)
class AttributeCodes:
    """Products' attribute values as integer codes (``-1``: empty), one column per attribute."""

    names: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]  # per attribute, the value of each code
    codes: np.ndarray  # (n_products, n_attributes) int32

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[str]],
                     names: Sequence[str] = QUERY_ATTRIBUTES) -> AttributeCodes:
        n = len(next(iter(columns.values())))
        codes = np.full((n, len(names)), -1, dtype=np.int32)
        values = []
        for a, name in enumerate(names):
            column = np.asarray(columns.get(name, [""] * n), dtype=object)
            vocab = sorted({str(v) for v in column if v})
            index = {v: i for i, v in enumerate(vocab)}
            codes[:, a] = [index.get(str(v), -1) if v else -1 for v in column]
            values.append(tuple(vocab))
        return cls(tuple(names), tuple(values), codes)

    def code_of(self, attribute: str, value: str) -> int:
        a = self.names.index(attribute)
        try:
            return self.values[a].index(value)
        except ValueError:
            return -1

    def value(self, row: int, attribute: str) -> str:
        code = int(self.codes[row, self.names.index(attribute)])
        return self.values[self.names.index(attribute)][code] if code >= 0 else ""


def matches(query_codes: np.ndarray, product_codes: np.ndarray) -> np.ndarray:
    """``(n_queries, n_products)`` mask: every attribute a query constrains has its value."""
    q = query_codes[:, None, :]
    return ((q < 0) | (q == product_codes[None, :, :])).all(axis=2)


def phrase(template: str, values: Mapping[str, str], rng: np.random.Generator) -> str:
    """Fills a template with lower-case attribute words (gender words drawn from ``rng``)."""
    gender = values.get("gender", "")
    cat = values.get("category", "").lower()
    fields = {"cat": cat, "cat1": singular(cat), "colour": values.get("colour", "").lower(),
              "sub": values.get("subcategory", "").lower(),
              "usage": values.get("usage", "").lower(),
              "season": SEASON_WORDS.get(values.get("season", ""),
                                         values.get("season", "")).lower(),
              "gfor": str(rng.choice(GENDER_FOR.get(gender, (f"for {gender.lower()}",)))),
              "gof": str(rng.choice(GENDER_OF.get(gender, (gender.lower(),))))}
    return " ".join(template.format(**fields).split())


def price_words(price: float | None, rng: np.random.Generator) -> str:
    """" under 1500"-style words above the product's price (empty without a price)."""
    if price is None or not np.isfinite(price) or price <= 0:
        return ""
    step = 500 if price >= 500 else 50
    cap = float(np.ceil(price / step) * step) + step * int(rng.integers(0, 3))
    return f" {rng.choice(PRICE_WORDS)} {cap:g}"


def product_queries(codes: AttributeCodes, row: int, price: float | None, count: int,
                    rng: np.random.Generator, price_share: float = 0.2
                    ) -> list[tuple[str, np.ndarray]]:
    """Up to ``count`` distinct phrasings for one product, with their constraint codes.

    Templates whose attributes the product lacks are skipped; templates are drawn by weight.
    """
    have = {name: codes.value(row, name) for name in codes.names}
    usable = [(attrs, texts, w) for attrs, texts, w in TEMPLATES
              if all(have.get(a) for a in attrs) and all(a in codes.names for a in attrs)]
    if not usable:
        return []
    weights = np.array([w for *_, w in usable])
    out: dict[str, np.ndarray] = {}
    for _ in range(count * 4):
        if len(out) >= count:
            break
        attrs, texts, _w = usable[int(rng.choice(len(usable), p=weights / weights.sum()))]
        text = phrase(str(rng.choice(texts)), have, rng)
        if rng.random() < price_share:
            text += price_words(price, rng)
        constraint = np.full(len(codes.names), -1, dtype=np.int32)
        for a in attrs:
            constraint[codes.names.index(a)] = codes.codes[row, codes.names.index(a)]
        out.setdefault(text, constraint)
    return list(out.items())


def evaluation_queries(codes: AttributeCodes, rows: np.ndarray, n: int, seed: int,
                       min_relevant: int = 3) -> list[tuple[str, np.ndarray]]:
    """Held-out attribute queries ("navy blue tshirts for men", "women's red dresses") over
    the products ``rows``: one per (colour, category, gender) they hold at least
    ``min_relevant`` of, phrased like a shopper, at most ``n``, in a seeded order."""
    rng = np.random.default_rng(seed)
    idx = [codes.names.index(a) for a in ("colour", "category", "gender")]
    triples = codes.codes[np.asarray(rows)][:, idx]
    triples = triples[(triples >= 0).all(axis=1)]
    if len(triples) == 0:
        return []
    unique, counts = np.unique(triples, axis=0, return_counts=True)
    unique = unique[counts >= min_relevant]
    order = rng.permutation(len(unique))[:n]
    out = []
    for triple in unique[order]:
        values = {a: codes.values[i][c] for a, i, c in zip(("colour", "category", "gender"),
                                                             idx, triple, strict=True)}
        template = "{colour} {cat} {gfor}" if rng.random() < 0.5 else "{gof} {colour} {cat}"
        constraint = np.full(len(codes.names), -1, dtype=np.int32)
        constraint[idx] = triple
        out.append((phrase(template, values, rng), constraint))
    return out
