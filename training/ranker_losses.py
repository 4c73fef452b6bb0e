"""Losses of the ranking head, as pure functions: ESMM's click and conversion terms with
inverse-propensity weights, the dwell regression, and their weighted sum.

Position bias: a logged click at a rarely examined rank stands for ``1 / propensity``
examinations' worth of interest, so each positive counts with its (clipped) inverse
propensity while each negative counts once — the weighting the fusion head's logged pairs
use too (:func:`training.losses.match_bce`). Per-row losses are summed and divided by the
number of rows.

ESMM (Ma et al., SIGIR 2018): a conversion is only observed after a click, so training pCVR
on clicked rows alone is biased towards what gets clicked. Instead ``pCTCVR = pCTR * pCVR``
is fitted to the conversion label over *every* impression, and pCVR is learned implicitly
through the product.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and far below it."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def positive_weights(labels: torch.Tensor, ipw: torch.Tensor | None) -> torch.Tensor:
    """Per-row weights: the inverse propensity for positives, 1 for negatives."""
    if ipw is None:
        return torch.ones_like(labels, dtype=torch.float32)
    return torch.where(labels > 0, ipw.float(), torch.ones_like(ipw, dtype=torch.float32))


def click_loss(click_logit: torch.Tensor, click: torch.Tensor,
               ipw: torch.Tensor | None = None) -> torch.Tensor:
    """IPS-weighted binary cross-entropy of pCTR against clicks, over every impression."""
    if click.numel() == 0:
        return click_logit.sum() * 0.0
    losses = F.binary_cross_entropy_with_logits(click_logit.float(), click.float(),
                                                reduction="none")
    return (losses * positive_weights(click, ipw)).sum() / len(click)


def ctcvr_loss(click_logit: torch.Tensor, convert_logit: torch.Tensor, convert: torch.Tensor,
               ipw: torch.Tensor | None = None) -> torch.Tensor:
    """ESMM's conversion term: IPS-weighted cross-entropy of ``pCTR * pCVR`` against the
    conversion label, over every impression (computed in log space)."""
    if convert.numel() == 0:
        return click_logit.sum() * 0.0
    log_p = F.logsigmoid(click_logit.float()) + F.logsigmoid(convert_logit.float())
    y = convert.float()
    losses = -(y * log_p + (1 - y) * _log1mexp(log_p))
    return (losses * positive_weights(convert, ipw)).sum() / len(convert)


def dwell_loss(dwell_pred: torch.Tensor, log_dwell: torch.Tensor, click: torch.Tensor,
               ipw: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared error of the predicted log dwell over clicked rows (0 when
    none was clicked)."""
    mask = click > 0
    if not bool(mask.any()):
        return dwell_pred.sum() * 0.0
    w = ipw.float()[mask] if ipw is not None else torch.ones_like(dwell_pred[mask])
    se = (dwell_pred.float()[mask] - log_dwell.float()[mask]) ** 2
    return (se * w).sum() / w.sum()


def list_loss(click_logit: torch.Tensor, click: torch.Tensor, group: torch.Tensor,
              ipw: torch.Tensor | None = None) -> torch.Tensor:
    """Listwise click term: per result list, the IPS-weighted softmax cross-entropy of its
    clicked rows among all its rows, ``sum_i w_i (logsumexp_list(l) - l_i)``, averaged
    over the lists with a click (0 when none has one).

    Pointwise terms spend most of their effort on what differs between queries (a photo
    query draws more clicks than a vague one); this one only sees which product of a list
    won, which is what re-ranking needs.

    Args:
        click_logit: ``(n,)`` click logits.
        click: ``(n,)`` click labels.
        group: ``(n,)`` list of each row, ``0..G-1``.
        ipw: Inverse-propensity weights (``None``: all 1).
    """
    clicked = click > 0
    if not bool(clicked.any()):
        return click_logit.sum() * 0.0
    logit = click_logit.float()
    n = int(group.max()) + 1
    top = torch.full((n,), float("-inf"), device=logit.device).scatter_reduce(
        0, group, logit.detach(), reduce="amax", include_self=True)
    sums = torch.zeros(n, device=logit.device).index_add(0, group, torch.exp(logit - top[group]))
    lse = top + torch.log(sums)
    w = click.float() * (ipw.float() if ipw is not None else 1.0)
    lists = torch.unique(group[clicked]).numel()
    return (w * (lse[group] - logit)).sum() / lists


def ranker_losses(out: dict[str, torch.Tensor], click: torch.Tensor, convert: torch.Tensor,
                  log_dwell: torch.Tensor, ipw: torch.Tensor | None,
                  lambdas: tuple[float, float, float], group: torch.Tensor | None = None,
                  lambda_list: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = λ1 L_click + λ2 L_convert + λ3 L_stay (+ λ4 L_list)`` and its parts.

    Args:
        out: The head's ``click`` and ``convert`` logits and ``dwell`` prediction.
        click: Click labels.
        convert: Conversion labels (a conversion implies a click).
        log_dwell: Log dwell of clicked rows.
        ipw: Inverse-propensity weights (``None``: all 1).
        lambdas: ``(λ1, λ2, λ3)``.
        group: Result list of each row (for the listwise term).
        lambda_list: λ4, weight of :func:`list_loss` (0: left out).

    Returns:
        The joint loss and ``{"click", "convert", "stay"}`` (and ``"list"``), detached.
    """
    parts = {"click": click_loss(out["click"], click, ipw),
             "convert": ctcvr_loss(out["click"], out["convert"], convert, ipw),
             "stay": dwell_loss(out["dwell"], log_dwell, click, ipw)}
    total = (lambdas[0] * parts["click"] + lambdas[1] * parts["convert"]
             + lambdas[2] * parts["stay"])
    if group is not None and lambda_list > 0:
        parts["list"] = list_loss(out["click"], click, group, ipw)
        total = total + lambda_list * parts["list"]
    return total, {k: v.detach() for k, v in parts.items()}
