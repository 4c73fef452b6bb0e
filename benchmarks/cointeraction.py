"""Co-interaction on real purchase sessions (CIKM Cup 2016, ``../shared/data/diginetica``):
does "bought together before" find what a shopper buys with a product?

Sessions with purchases are split by date (the last fifth of the days held out). The table
is built from the earlier baskets by :mod:`training.cointeraction`, as the ranker's
training builds it from an event log. For every product of a held-out basket of two or
more, ten recommendations are judged by whether another product of the same basket is among
them (hit@10), for: the co-interaction table alone; the best sellers of the product's own
category (what category rules can do on a catalog whose categories are only numbers); and
the blend ``complementary()`` serves (table first, then the category's best sellers).

    python -m benchmarks.cointeraction [--data ../shared/data/diginetica]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from retrieval.cointeraction import CoInteraction
from training.cointeraction import pair_weights

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "diginetica"


def evaluate(data: Path, k: int = 10, test_share: float = 0.2) -> list[str]:
    """The comparison as printable lines."""
    purchases = pd.read_csv(data / "train-purchases.csv", sep=";")
    categories = pd.read_csv(data / "product-categories.csv", sep=";")
    category_of = dict(zip(categories["itemId"].astype(str),
                           categories["categoryId"].astype(str), strict=True))
    purchases["itemId"] = purchases["itemId"].astype(str)
    days = sorted(purchases["eventdate"].unique())
    cut = days[int(len(days) * (1 - test_share))]
    baskets = purchases.groupby("sessionId").agg(items=("itemId", lambda s: sorted(set(s))),
                                                 day=("eventdate", "min"))
    train = baskets[baskets["day"] < cut]
    test = baskets[(baskets["day"] >= cut) & (baskets["items"].map(len) >= 2)]
    table = CoInteraction.from_pairs(pair_weights(
        ({item: True for item in items} for items in train["items"]), max_basket=20))
    sold = Counter(i for items in train["items"] for i in items)
    best: dict[str, list[str]] = {}
    for item, _ in sold.most_common():
        best.setdefault(category_of.get(item, "?"), []).append(item)

    def by_category(item: str) -> list[str]:
        return [i for i in best.get(category_of.get(item, "?"), [])[:k + 1] if i != item][:k]

    def co(item: str) -> list[str]:
        return [p for p, _ in table.partners(item, k)]

    def blend(item: str) -> list[str]:
        out = co(item)
        return (out + [i for i in by_category(item) if i not in out])[:k]

    systems: dict[str, Callable[[str], list[str]]] = {
        "co-interaction table": co, "category best sellers": by_category,
        "blend (table, then category)": blend}
    hits = dict.fromkeys(systems, 0)
    queries = covered = 0
    for items in test["items"]:
        for item in items:
            others = set(items) - {item}
            queries += 1
            covered += bool(table.partners(item, 1))
            for name, recommend in systems.items():
                hits[name] += bool(others & set(recommend(item)))
    lines = [f"diginetica: {len(train):,} earlier baskets -> {len(table):,} product pairs; "
             f"{len(test):,} held-out baskets of 2+ from {cut} on, {queries:,} queries "
             f"({covered / max(queries, 1):.1%} of them have a partner in the table)",
             f"{'hit@' + str(k) + ' of another product of the same basket':<52} "
             f"{'value':>7}"]
    lines += [f"  {name:<50} {hits[name] / max(queries, 1):>7.3f}" for name in systems]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    for line in evaluate(args.data):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
