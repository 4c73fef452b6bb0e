"""Losses of the fusion head: contrastive InfoNCE and the match BCE, as pure functions.

Both take similarities of unit vectors (cosines), so they are independent of the head that
produced them. :func:`info_nce` accepts a positive mask instead of assuming the diagonal:
an attribute query ("red dresses for women") has every red women's dress in the batch as a
positive, and counting those as negatives would teach the head to tell identical requests
apart. :func:`match_bce` scores explicit query-product pairs (positives, shown-but-skipped
and mined hard negatives) with a calibrated logit, so the score means "is this a match".
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def multi_positive_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where each row's target is the set of its positive columns.

    ``loss_i = -log(sum_{j in P(i)} exp(l_ij) / sum_j exp(l_ij))``; with one positive per
    row this is ordinary cross-entropy. Rows without any positive are left out.

    Args:
        logits: ``(n, m)`` scores (already divided by the temperature).
        positives: ``(n, m)`` boolean mask of positive pairs.

    Returns:
        The mean over rows that have a positive (0 when none has).
    """
    if logits.shape != positives.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and positives "
                         f"{tuple(positives.shape)} must have the same shape.")
    positives = positives.to(torch.bool)
    has = positives.any(dim=1)
    if not bool(has.any()):
        return logits.sum() * 0.0
    logits = logits.float()
    all_lse = torch.logsumexp(logits, dim=1)
    pos_lse = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (all_lse - pos_lse)[has].mean()


def info_nce(queries: torch.Tensor, items: torch.Tensor, temperature: float = 0.05,
             positives: torch.Tensor | None = None, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE with in-batch negatives.

    Args:
        queries: ``(n, d)`` unit query vectors.
        items: ``(m, d)`` unit item vectors; without ``positives``, ``m == n`` and row ``i``
            of ``items`` is the positive of query ``i``.
        temperature: Softmax temperature (cosines are divided by it).
        positives: Optional ``(n, m)`` boolean mask of positive pairs.
        symmetric: Also the item-to-query direction (the mean of both).

    Returns:
        A scalar loss.

    Raises:
        ValueError: Non-positive temperature, or no mask and ``n != m``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (got {temperature}).")
    if positives is None:
        if len(queries) != len(items):
            raise ValueError(f"Without a positives mask, queries ({len(queries)}) and items "
                             f"({len(items)}) pair up row by row; pass positives=.")
        positives = torch.eye(len(queries), dtype=torch.bool, device=queries.device)
    logits = queries.float() @ items.float().T / temperature
    loss = multi_positive_nce(logits, positives)
    if symmetric:
        loss = 0.5 * (loss + multi_positive_nce(logits.T, positives.T))
    return loss


def match_logits(cosines: torch.Tensor, scale: torch.Tensor | float,
                 bias: torch.Tensor | float) -> torch.Tensor:
    """The calibrated match logit ``scale * cos + bias`` of query-product pairs."""
    return cosines * scale + bias


def match_bce(cosines: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | float = 10.0,
              bias: torch.Tensor | float = -5.0, weights: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Binary cross-entropy of "this product matches this query" on explicit pairs.

    Args:
        cosines: ``(n,)`` cosine of each query-product pair.
        labels: ``(n,)`` 1 for a match (clicked, bought, the photographed product), 0 for a
            negative (shown but skipped, a near-miss).
        scale: Logit scale (learned alongside the head).
        bias: Logit bias.
        weights: Optional ``(n,)`` per-pair weights (inverse-propensity weights of logged
            pairs); the loss is their weighted mean.

    Returns:
        A scalar loss (0 for no pairs).
    """
    if cosines.numel() == 0:
        return cosines.sum() * 0.0
    logits = match_logits(cosines.float(), scale, bias)
    losses = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    if weights is None:
        return losses.mean()
    weights = weights.float()
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def hardest_negatives(similarities: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Column of the most similar non-positive item per row (``-1`` where there is none).

    The choice is made without gradient: mining picks the pair, the loss trains it.
    """
    with torch.no_grad():
        masked = similarities.detach().masked_fill(positives.to(torch.bool), float("-inf"))
        best = masked.argmax(dim=1)
        none = torch.isinf(masked.max(dim=1).values)
        return torch.where(none, torch.full_like(best, -1), best)
