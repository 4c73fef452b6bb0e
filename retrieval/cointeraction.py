"""Products bought together: a co-interaction table learned from the event log.

Two products are co-interacted when one shopper added both to the cart (or bought both) in
the same conversation; the weight of a pair counts such conversations (purchases count
double). ``training/`` builds the table and ships it inside a ranker artifact; once that
ranker is promoted, :func:`retrieval.recommend.complementary` blends it with the category
rules. Stored as compressed rows (CSR): per product, its partners sorted by weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


class CoInteraction:
    """Product -> partners with weights.

    Args:
        products: Product ids, in row order.
        offsets: ``(n + 1,)`` start of each product's partners.
        partners: Row of each partner.
        weights: Weight of each partner (descending within a product).
    """

    def __init__(self, products: Sequence[str], offsets: np.ndarray, partners: np.ndarray,
                 weights: np.ndarray) -> None:
        if len(offsets) != len(products) + 1 or len(partners) != len(weights):
            raise ValueError(f"A co-interaction table needs {len(products) + 1} offsets and "
                             f"one weight per partner (got {len(offsets)} offsets, "
                             f"{len(partners)} partners, {len(weights)} weights).")
        self.products = list(products)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.partner_rows = np.asarray(partners, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.row_of = {p: i for i, p in enumerate(self.products)}

    @classmethod
    def from_pairs(cls, pairs: Mapping[tuple[str, str], float]) -> CoInteraction:
        """From the weight of each unordered pair (given once, in either order)."""
        both: dict[str, dict[str, float]] = {}
        for (a, b), w in pairs.items():
            if a == b or w <= 0:
                continue
            both.setdefault(a, {})[b] = both.setdefault(a, {}).get(b, 0.0) + w
            both.setdefault(b, {})[a] = both.setdefault(b, {}).get(a, 0.0) + w
        products = sorted(both)
        row_of = {p: i for i, p in enumerate(products)}
        offsets, partners, weights = [0], [], []
        for p in products:
            ranked = sorted(both[p].items(), key=lambda kv: (-kv[1], kv[0]))
            partners += [row_of[q] for q, _ in ranked]
            weights += [w for _, w in ranked]
            offsets.append(len(partners))
        return cls(products, np.array(offsets), np.array(partners, dtype=np.int64),
                   np.array(weights, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.partner_rows) // 2

    def partners(self, product_id: str, k: int | None = None) -> list[tuple[str, float]]:
        """The products co-interacted with ``product_id``, heaviest first."""
        row = self.row_of.get(str(product_id))
        if row is None:
            return []
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if k is not None:
            end = min(end, start + k)
        return [(self.products[int(j)], float(w))
                for j, w in zip(self.partner_rows[start:end], self.weights[start:end],
                                strict=True)]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays, for a safetensors file (ids go in :meth:`describe`)."""
        return {"co.offsets": torch.from_numpy(self.offsets.copy()),
                "co.partners": torch.from_numpy(self.partner_rows.copy()),
                "co.weights": torch.from_numpy(self.weights.copy())}

    def describe(self) -> dict[str, Any]:
        return {"products": self.products, "pairs": len(self)}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]
                     ) -> CoInteraction:
        return cls(list(info["products"]), tensors["co.offsets"].numpy(),
                   tensors["co.partners"].numpy(), tensors["co.weights"].numpy())
