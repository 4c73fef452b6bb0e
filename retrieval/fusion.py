"""Fusing per-modality vectors into the one vector the vector store searches.

Every fusion maps named per-slot vectors (``{"image": (n, 1280), "text": (n, 384), ...}``)
to one L2-normalised vector per row, for products and for queries. A query may fill only
some slots (a photo fills the image slots, words fill the text slots): missing slots are
zeros and the fused score ranks by the slots the query has.

The training-free default, :class:`WeightedConcatFusion`, concatenates ``sqrt(w_s) * v_s``.
The inner product of a fused query and a fused product is then proportional to
``sum_s w_s * cos(q_s, p_s)`` over the slots the query fills, which is also the score
:func:`slot_scores` and :func:`weighted_score` compute exactly for re-ranking. A learned
fusion head (``training/``) implements the same :class:`Fusion` protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from retrieval.encoders.base import l2_normalise

MATVEC_CHUNK_BYTES = 4 << 20  # float32 rows widened at a time by matvec (in cache)
MATVEC_ALIGN = 64  # matvec multiplies whole multiples of this many rows (see there)


class Fusion(Protocol):
    """Maps per-slot vectors to fused vectors (products and queries alike)."""

    version: str
    dim: int

    def fuse(self, slots: Mapping[str, np.ndarray | None], n: int, *, query: bool = False
             ) -> np.ndarray:
        """Fused ``(n, dim)`` float32 vectors; ``None`` slots are missing. Products'
        are L2-normalised.

        ``query``: the rows are shoppers' queries, not products. The training-free fusion
        treats both alike; a learned head may not (its tag block carries only the tags a
        query's words name, and such a query is scaled so that its dot product with a
        product is a cosine plus a penalty, not unit length: see
        :mod:`retrieval.fusion_head`). Rank by the dot product.
        """
        ...

    def to_dict(self) -> dict[str, object]:
        """What the manifest records about this fusion."""
        ...


@dataclass(frozen=True)
class SlotSpec:
    """A slot of the fused vector: its name, width and training-free weight."""

    name: str
    dim: int
    weight: float


class WeightedConcatFusion:
    """Training-free fusion: the weighted, normalised concatenation of the slots."""

    def __init__(self, slots: list[SlotSpec]) -> None:
        if not slots:
            raise ValueError("A fusion needs at least one slot.")
        if any(s.weight < 0 for s in slots):
            raise ValueError("Slot weights must be non-negative.")
        self.slots = slots
        self.dim = sum(s.dim for s in slots)
        weights = ",".join(f"{s.name}={s.weight:g}" for s in slots)
        self.version = f"concat-v1[{weights}]"

    def fuse(self, slots: Mapping[str, np.ndarray | None], n: int, *, query: bool = False
             ) -> np.ndarray:
        unknown = set(slots) - {s.name for s in self.slots}
        if unknown:
            raise ValueError(f"Unknown slot(s) {sorted(unknown)}; fusion slots are "
                             f"{[s.name for s in self.slots]}.")
        parts = []
        for spec in self.slots:
            vectors = slots.get(spec.name)
            if vectors is None:
                parts.append(np.zeros((n, spec.dim), dtype=np.float32))
                continue
            if vectors.shape != (n, spec.dim):
                raise ValueError(f"Slot {spec.name!r} has shape {vectors.shape}, "
                                 f"expected {(n, spec.dim)}.")
            parts.append(np.sqrt(spec.weight, dtype=np.float32) * vectors.astype(np.float32))
        return l2_normalise(np.concatenate(parts, axis=1))

    def weights(self) -> dict[str, float]:
        return {s.name: s.weight for s in self.slots}

    def to_dict(self) -> dict[str, object]:
        return {"kind": "weighted-concat", "version": self.version,
                "slots": [{"name": s.name, "dim": s.dim, "weight": s.weight}
                          for s in self.slots]}


def slot_scores(query: Mapping[str, np.ndarray], products: Mapping[str, np.ndarray],
                rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cosine of one query with many products, per slot the query fills.

    Args:
        query: Slot name -> ``(dim,)`` unit vector (only the slots the query fills).
        products: Slot name -> ``(m, dim)`` unit vectors of the products.
        rows: Score only these products (all by default), gathered piece by piece.

    Returns:
        Slot name -> float32 cosines, one per product scored.
    """
    return {name: matvec(products[name], vec, rows) for name, vec in query.items()}


def matvec(matrix: np.ndarray, vec: np.ndarray, rows: np.ndarray | None = None
           ) -> np.ndarray:
    """``matrix[rows] @ vec`` (all rows by default) in float32, computed by torch: in the
    encoders' thread pool. numpy's OpenBLAS keeps its own threads spinning for a while
    after a large product, and on 2 cores the next query's torch encoder ran at a third of
    its speed beside them (words under a broad filter at 44k: 45 → 26 ms p50, 138 → 31 ms
    p99).

    A float16 matrix is gathered and widened ``MATVEC_CHUNK_BYTES`` at a time, so each
    piece is multiplied while still in cache: 18k of 44k rows × 1,790 took 54 ms as one
    gather and conversion, 15 ms in pieces (2 cores), with the same result.
    """
    query = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32))
    if rows is None and matrix.dtype == np.float32 and len(matrix) % MATVEC_ALIGN == 0:
        return (torch.from_numpy(np.ascontiguousarray(matrix)) @ query).numpy()
    n = len(matrix) if rows is None else len(rows)
    out = np.empty(n, dtype=np.float32)
    width = max(1, int(query.numel()))
    step = max(1, MATVEC_CHUNK_BYTES // (4 * width) // MATVEC_ALIGN) * MATVEC_ALIGN
    step = max(MATVEC_ALIGN, min(step, -(-n // MATVEC_ALIGN) * MATVEC_ALIGN))
    block, scores = torch.empty(step, width), torch.empty(step)  # reused by every piece
    for start in range(0, n, step):
        part = matrix[start:start + step] if rows is None else matrix[rows[start:start + step]]
        m = len(part)
        # Every piece a whole number of MATVEC_ALIGN rows (the last one padded): torch's
        # kernel sums a few rows of a ragged piece in another order, and equal products
        # (one photo listed twice) must score exactly equal to keep their catalog order.
        whole = -(-m // MATVEC_ALIGN) * MATVEC_ALIGN
        block[:m].copy_(torch.from_numpy(np.ascontiguousarray(part)))
        block[m:whole].zero_()
        torch.mv(block[:whole], query, out=scores[:whole])
        out[start:start + m] = scores[:m].numpy()
    return out


def weighted_score(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]
                   ) -> np.ndarray:
    """The fused score: the weight-averaged cosine over the slots present in ``scores``.

    Raises:
        ValueError: A slot has no weight, or the slots present have no positive weight.
    """
    unknown = set(scores) - set(weights)
    if unknown:
        raise ValueError(f"No weight for slot(s) {sorted(unknown)}; weights are given for "
                         f"{sorted(weights)}.")
    total = sum(weights[name] for name in scores)
    if total <= 0:
        raise ValueError("The query fills no slot with a positive weight.")
    return sum(weights[name] * s for name, s in scores.items()) / total
