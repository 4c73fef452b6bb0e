"""Held-out evaluation of a fusion: text -> photo, text -> product, photo -> same product.

A *system* is anything with the :class:`retrieval.fusion.Fusion` ``fuse`` method: the
training-free weighted concatenation, a trained head (:class:`HeadFusion` over a module in
training, or :class:`retrieval.fusion_head.LearnedFusion` over an artifact), or a baseline
such as :class:`RidgeMap`. Each query kind is scored with :mod:`retrieval.metrics`, the
same functions the search benchmarks use:

- **text -> photo** (titles ignored, as for products with poor titles): held-out attribute
  queries against the held-out products with their text slots left out; relevant = every
  such product with the asked attributes.
- **text -> product**: the same queries against the same products, whole.
- **photo -> same product**: held-out products' shoppers' photos against the whole catalog.

A re-ranking stage (the ranking head) plugs in as ``rerank``: it receives the query's slot
vectors and the candidate rows with the fused scores, and returns the new order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from retrieval.encoders import l2_normalise
from retrieval.metrics import binary_report, rank_in_chunks
from training.fusion_data import FusionData
from training.fusion_queries import matches

K = 10
# Raw photo cosine from which two catalog photos count as the same photo.
NEAR_IDENTICAL = 0.95
# (query slots, candidate rows, fused top-N rows (n, N), their fused scores (n, N), the
# product slots this query kind may see) -> re-ordered rows (n, >=K)
Reranker = Callable[[Mapping[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray,
                     Sequence[str]], np.ndarray]


class FuseFn(Protocol):
    def fuse(self, slots: Mapping[str, np.ndarray | None], n: int, *, query: bool = False
             ) -> np.ndarray: ...


class HeadFusion:
    """The ``fuse`` of a :class:`FusionHead` module (eval mode, no gradient, batched)."""

    def __init__(self, head: torch.nn.Module, device: torch.device | str = "cpu",
                 batch: int = 8192) -> None:
        self.head, self.device, self.batch = head, torch.device(device), batch

    @torch.no_grad()
    def fuse(self, slots: Mapping[str, np.ndarray | None], n: int, *, query: bool = False
             ) -> np.ndarray:
        was = self.head.training
        self.head.eval()
        try:
            out = []
            for s in range(0, n, self.batch):
                part = {k: torch.from_numpy(np.ascontiguousarray(v[s:s + self.batch],
                                                                 dtype=np.float32))
                        .to(self.device) for k, v in slots.items() if v is not None}
                out.append(self.head(part, query=query).float().cpu().numpy())
            return np.concatenate(out) if out else np.zeros((0, 1), np.float32)
        finally:
            self.head.train(was)


class RidgeMap:
    """Baseline: a ridge regression from the image slots into a text slot's space.

    Fitted in closed form on training products (their image slots -> their own stored text
    vector); a product is then represented by its mapped photo and a text query by its own
    vector in that slot. Only for text -> photo (it has nothing to say about photos).
    """

    def __init__(self, image_slots: Sequence[str], text_slot: str, alpha: float = 10.0
                 ) -> None:
        self.image_slots, self.text_slot, self.alpha = list(image_slots), text_slot, alpha
        self.weights: np.ndarray | None = None

    def _x(self, slots: Mapping[str, np.ndarray | None], n: int) -> np.ndarray:
        parts = [np.asarray(slots[s], dtype=np.float64) for s in self.image_slots]
        return np.concatenate([*parts, np.ones((n, 1))], axis=1)

    def fit(self, products: Mapping[str, np.ndarray], rows: np.ndarray) -> RidgeMap:
        x = self._x({s: products[s][rows] for s in self.image_slots}, len(rows))
        y = np.asarray(products[self.text_slot][rows], dtype=np.float64)
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += self.alpha
        self.weights = np.linalg.solve(gram, x.T @ y)
        return self

    def fuse(self, slots: Mapping[str, np.ndarray | None], n: int, *, query: bool = False
             ) -> np.ndarray:
        if self.weights is None:
            raise ValueError("Fit the ridge map first (RidgeMap.fit).")
        if all(slots.get(s) is not None for s in self.image_slots):
            return l2_normalise((self._x(slots, n) @ self.weights).astype(np.float32))
        text = slots.get(self.text_slot)
        if text is None:
            raise ValueError(f"RidgeMap needs the image slots or the {self.text_slot!r} slot.")
        return l2_normalise(np.asarray(text, dtype=np.float32))


def _slots(data: FusionData, rows: np.ndarray, keep: Sequence[str]) -> dict[str, np.ndarray]:
    return {s: data.products[s][rows].astype(np.float32) for s in keep}


def _report(ranking: np.ndarray, relevant: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    hits = np.take_along_axis(relevant, ranking, axis=1)
    n_rel = relevant.sum(axis=1)
    report = binary_report(hits, n_rel, ks=(1, 5, 10))
    discounts = 1.0 / np.log2(np.arange(2, ranking.shape[1] + 2))
    ideal = np.array([discounts[:min(int(r), ranking.shape[1])].sum() for r in n_rel])
    per_query = (hits * discounts).sum(axis=1) / np.maximum(ideal, 1e-12)
    return report, per_query


def text_queries(data: FusionData, split: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ids = data.eval_texts[split]
    return ids, {s: v[ids].astype(np.float32) for s, v in data.text_vectors.items()}


def evaluate(system: FuseFn, data: FusionData, split: int, *, kinds: Sequence[str] =
             ("text_photo", "text_product", "photo"), rerank: Reranker | None = None,
             breakdown: bool = False, photos: Mapping[str, np.ndarray] | None = None
             ) -> dict[str, Any]:
    """Scores one system on one held-out split.

    Args:
        system: What fuses query and product slots.
        data: The pairs (held-out queries, photos, products).
        split: 1 (valid) or 2 (test).
        kinds: Which query kinds to score (``text_photo``, ``text_product``, ``photo``).
        rerank: Optional re-ranking of the fused top 100 (the ranking head's hook).
        breakdown: Also NDCG@10 of text -> photo per category.
        photos: The photo queries' slot vectors as this system encodes them (a head with a
            fine-tuned photo tail); default ``data.photo_vectors``.

    Returns:
        Per kind: ``R@1``, ``R@5``, ``R@10``, ``P@10``, ``MRR``, ``NDCG@10`` and ``n``;
        ``photo_larger`` for the photos made from larger photos; ``photo_misses`` (what
        the photo queries' wrong first results are, :func:`photo_misses`); ``by_category``.
    """
    out: dict[str, Any] = {}
    rows = np.flatnonzero(data.split == split)
    ids, query = text_queries(data, split)
    relevant = matches(data.text_codes[ids], data.codes.codes[rows]) if len(ids) else None

    def ranked(q: Mapping[str, np.ndarray], items: np.ndarray, candidates: np.ndarray,
               visible: Sequence[str]) -> np.ndarray:
        fused_q = system.fuse(q, len(next(iter(q.values()))), query=True)
        depth = 100 if rerank is not None else K
        top = rank_in_chunks(fused_q, items, min(depth, len(items)))
        if rerank is not None:
            scores = np.concatenate([
                np.einsum("nd,nkd->nk", fused_q[i:i + 64], items[top[i:i + 64]])
                for i in range(0, len(top), 64)]) if len(top) else np.zeros(top.shape)
            top = rerank(q, candidates, top, scores, visible)[:, :K]
        return top

    for kind in ("text_photo", "text_product"):
        if kind not in kinds or relevant is None:
            continue
        keep = data.image_slots if kind == "text_photo" else list(data.products)
        items = system.fuse(_slots(data, rows, keep), len(rows))
        top = ranked(query, items, rows, keep)
        report, per_query = _report(top, relevant)
        out[kind] = {**report, "n": len(ids)}
        if breakdown and kind == "text_photo":
            cat = data.codes.names.index("category")
            names = data.codes.values[cat]
            cats = data.text_codes[ids, cat]
            out["by_category"] = {
                names[c]: {"NDCG@10": float(per_query[cats == c].mean()),
                           "n": int((cats == c).sum())}
                for c in np.unique(cats) if c >= 0}
    if "photo" in kinds:
        sel = np.flatnonzero(data.photo_split == split)
        if len(sel):
            everything = np.arange(data.n)
            items = system.fuse(_slots(data, everything, list(data.products)), data.n)
            q = {s: v[sel].astype(np.float32)
                 for s, v in (data.photo_vectors if photos is None else photos).items()}
            top = ranked(q, items, everything, list(data.products))
            target = data.photo_rows[sel]
            hits = top == target[:, None]
            n_rel = np.ones(len(sel), dtype=int)
            out["photo"] = {**binary_report(hits, n_rel, ks=(1, 5, 10)), "n": len(sel)}
            out["photo_misses"] = photo_misses(data, top, target)
            larger = data.photo_larger[sel]
            if larger.any():
                out["photo_larger"] = {**binary_report(hits[larger], n_rel[larger],
                                                       ks=(1, 5, 10)), "n": int(larger.sum())}
    return out


def photo_misses(data: FusionData, top: np.ndarray, target: np.ndarray,
                 near: float = NEAR_IDENTICAL) -> dict[str, float]:
    """What the photo queries whose first result is wrong got instead.

    Args:
        data: The pairs (for the products' categories and raw photo vectors).
        top: Ranked product rows per photo query, ``(n, >=1)``.
        target: The photographed product's row per query.
        near: Raw photo cosine (first image slot) from which two products' catalog photos
            count as near-identical.

    Returns:
        ``misses`` (count), ``n``, and over the misses: ``in top 10`` (the product is
        still on the first page), ``same category`` (the first result is a sibling of the
        same category) and ``near-identical photo`` (its catalog photo is, to the raw
        features, the same photo: no fusion of these features can tell them apart).
    """
    miss = np.flatnonzero(top[:, 0] != target)
    out: dict[str, float] = {"misses": float(len(miss)), "n": float(len(top))}
    if not len(miss):
        return out
    first, want = top[miss, 0], target[miss]
    out["in top 10"] = float((top[miss, :K] == want[:, None]).any(axis=1).mean())
    if "category" in data.codes.names:
        cat = data.codes.names.index("category")
        a, b = data.codes.codes[first, cat], data.codes.codes[want, cat]
        out["same category"] = float(((a == b) & (a >= 0)).mean())
    if data.image_slots:
        vectors = data.products[data.image_slots[0]]
        x = l2_normalise(vectors[first].astype(np.float32))
        y = l2_normalise(vectors[want].astype(np.float32))
        out["near-identical photo"] = float((np.einsum("nd,nd->n", x, y) >= near).mean())
    return out


def monitor_value(metrics: Mapping[str, Any], monitor: str) -> float:
    """The validation figure early stopping watches."""
    text = float(metrics.get("text_photo", {}).get("NDCG@10", 0.0))
    photo = float(metrics.get("photo", {}).get("R@1", 0.0))
    if monitor == "text_photo_ndcg":
        return text
    if monitor == "photo_r1":
        return photo
    present = [v for k, v in (("text_photo", text), ("photo", photo)) if k in metrics]
    return float(np.mean(present)) if present else 0.0


def _pick_blend(candidates: Iterable[tuple[str, Any, torch.nn.Module]], data: FusionData,
                split: int, kinds: Sequence[str]
                ) -> tuple[Any, dict[str, dict[str, float]]]:
    """Scores each ``(label, value, head)`` on ``split`` and returns the value of the one
    with the best sum of its figures (photo R@1, NDCG@10 of the text kinds), and every
    label's figures."""
    tried: dict[str, dict[str, float]] = {}
    best, best_value = None, -np.inf
    for label, value, head in candidates:
        metrics = evaluate(HeadFusion(head), data, split, kinds=kinds)
        figures = {("photo R@1" if k == "photo" else f"{k} NDCG@10"):
                   float(metrics.get(k, {}).get("R@1" if k == "photo" else "NDCG@10", 0.0))
                   for k in kinds}
        tried[label] = figures
        if best is None or sum(figures.values()) > best_value + 1e-9:
            best, best_value = value, sum(figures.values())
    return best, tried


def choose_base_share(head: torch.nn.Module, data: FusionData, shares: Sequence[float],
                      split: int) -> tuple[float, dict[str, dict[str, float]]]:
    """The share of the training-free fusion to blend into a trained head's output.

    Tries each share on ``split`` (validation) and keeps the one with the best photo R@1 +
    text -> product NDCG@10; text -> photo does not depend on it. ``head`` must carry the
    training-free weights (:meth:`retrieval.fusion_head.FusionHead.with_base_share`).

    Returns:
        The chosen share and, per share tried, its two figures.
    """
    best, tried = _pick_blend(((f"{s:g}", float(s), head.with_base_share(s)) for s in shares),
                              data, split, ("photo", "text_product"))
    return best, tried


def choose_tag_share(head: torch.nn.Module, data: FusionData, shares: Sequence[float],
                     split: int, memory_weights: Sequence[float] = (0.0,)
                     ) -> tuple[float, float, dict[str, dict[str, float]]]:
    """The share of the tag block in a trained head's output, and the weight of its tag
    memory's vote (when it has a memory), with the best text -> photo + text -> product
    NDCG@10 on ``split``. Photo queries carry no tags, so photo search does not depend on
    either. A head without tags keeps 0 and 0.

    Returns:
        The chosen share and memory weight, and per pair tried (``"t=0.5 m=1"``) its two
        figures.
    """
    if not head.config.tags:
        return 0.0, 0.0, {}
    weights = memory_weights if head.config.memory else (0.0,)
    pairs = [(float(t), float(w)) for w in weights for t in shares
             if t or w == weights[0]]  # without the tag block, the memory's weight is moot
    (share, weight), tried = _pick_blend(
        ((f"t={t:g} m={w:g}", (t, w), head.with_base_share(
            head.config.base_share, tag_share=t, memory_weight=w)) for t, w in pairs),
        data, split, ("text_photo", "text_product"))
    return share, weight, tried


def choose_photo_share(head: torch.nn.Module, data: FusionData, shares: Sequence[float],
                       split: int) -> tuple[float | None, dict[str, dict[str, float]]]:
    """Photo queries' own share of the training-free cosine (the products keep the head's
    base share): the one with the best photo R@1 on ``split`` among the base share itself
    and ``shares``. ``None`` (the base share) for a head without a base share or when no
    other share does better.

    Returns:
        The chosen share (``None``: the base share) and, per share tried, its photo R@1.
    """
    base = head.config.base_share
    if not base or not shares or not data.image_slots:
        return None, {}
    candidates = [(f"{base:g} (base)", base, head)] + [
        (f"{p:g}", float(p), head.with_base_share(base, photo_share=p,
                                                   photo_slots=data.image_slots))
        for p in shares if p != base]
    best, tried = _pick_blend(candidates, data, split, ("photo",))
    return (None if best == base else best), tried


@torch.no_grad()
def tag_accuracy(head: torch.nn.Module, data: FusionData, split: int,
                 batch: int = 8192) -> dict[str, dict[str, float]]:
    """How often the head reads each tag right on ``split``'s products, from their photo
    alone and from their words alone (top-1 accuracy over products with the attribute).
    """
    if not head.config.tags:
        return {}
    was = head.training
    head.eval()
    rows = np.flatnonzero(data.split == split)
    cols = [data.codes.names.index(name) for name, _k in head.config.tags]
    truth = data.codes.codes[rows][:, cols]
    out: dict[str, dict[str, float]] = {}
    try:
        for label, keep in (("photo", data.image_slots), ("words", data.text_slots)):
            if not keep:
                continue
            guesses = []
            for s in range(0, len(rows), batch):
                part = {k: torch.from_numpy(data.products[k][rows[s:s + batch]]
                                            .astype(np.float32)) for k in keep}
                read = head.product_tags(part)
                guesses.append(torch.stack([x.argmax(dim=1) for x in read.logits], 1).numpy())
            guess = np.concatenate(guesses) if guesses else np.zeros_like(truth)
            for i, (name, _k) in enumerate(head.config.tags):
                ok = truth[:, i] >= 0
                out.setdefault(name, {})[label] = float((guess[ok, i] == truth[ok, i]).mean()) \
                    if ok.any() else float("nan")
    finally:
        head.train(was)
    return out
