"""Building the co-interaction table (:class:`retrieval.cointeraction.CoInteraction`) from
logged impressions or from plain purchase baskets.

A basket is what one conversation added to the cart or bought. Every pair of products in a
basket gains 1, or 2 when both were bought; baskets larger than ``max_basket`` are left out
(a shopper filling a cart with thirty items says little about which two go together).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import combinations

import pandas as pd

from retrieval.cointeraction import CoInteraction


def baskets_of(frame: pd.DataFrame) -> list[dict[str, bool]]:
    """Per conversation: product id -> whether it was bought (else only carted)."""
    taken = frame[frame["added_to_cart"].astype(bool) | frame["purchased"].astype(bool)]
    groups = taken["conversation_id"].fillna("query:" + taken["query_id"])
    out: dict[str, dict[str, bool]] = {}
    for group, product, bought in zip(groups, taken["product_id"],
                                      taken["purchased"].astype(bool), strict=True):
        basket = out.setdefault(group, {})
        basket[str(product)] = basket.get(str(product), False) or bool(bought)
    return list(out.values())


def pair_weights(baskets: Iterable[Mapping[str, bool]], max_basket: int = 20
                 ) -> Counter[tuple[str, str]]:
    """Unordered pair -> summed weight over baskets (see the module docstring)."""
    pairs: Counter[tuple[str, str]] = Counter()
    for basket in baskets:
        if len(basket) < 2 or len(basket) > max_basket:
            continue
        for a, b in combinations(sorted(basket), 2):
            pairs[(a, b)] += 2 if (basket[a] and basket[b]) else 1
    return pairs


def build_cointeraction(frame: pd.DataFrame, *, min_weight: float = 1.0,
                        max_basket: int = 20) -> CoInteraction:
    """The table from an impressions table (only its training split, when it has one).

    Args:
        frame: Impressions with ``conversation_id``, ``query_id``, ``product_id``,
            ``added_to_cart``, ``purchased`` (and ``split``).
        min_weight: Pairs lighter than this are dropped.
        max_basket: Larger baskets are left out.
    """
    if "split" in frame:
        frame = frame[frame["split"] == "train"]
    pairs = pair_weights(baskets_of(frame), max_basket)
    return CoInteraction.from_pairs({p: w for p, w in pairs.items() if w >= min_weight})
