"""Position-bias propensities estimated from a click log itself.

Clicks follow the position-based model ``P(click) = theta[rank] * gamma(query, product)``:
a shopper clicks what they examined (``theta``, which falls with rank) and found relevant
(``gamma``). :func:`regression_em` estimates ``theta`` by regression-EM (Wang et al.,
"Position Bias Estimation for Unbiased Learning to Rank in Personal Search", WSDM 2018):
``gamma`` is a logistic regression on features that do not depend on the position shown
(the engine's scores, whether the query had a photo or words), fitted to soft relevance
labels, and ``theta`` is the mean posterior examination per rank. Propensities are reported
relative to rank 1 (``theta[1] = 1``: only ratios are identifiable), and turned into clipped
inverse-propensity weights by :func:`inverse_propensity_weights`.

:func:`click_ratio` is the naive estimate (CTR by rank over CTR at rank 1) for comparison:
it mixes position bias with the engine putting better products first, so it falls faster
than the true examination curve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

EPS = 1e-6


@dataclass(frozen=True)
class PropensityEstimate:
    """``P(examine | rank) / P(examine | rank 1)`` for ranks ``1..len(propensity)``.

    Attributes:
        propensity: One value per rank, rank 1 first (1.0 at rank 1).
        impressions: Impressions seen at each rank.
        clicks: Clicks at each rank.
        method: ``regression-em`` or ``click-ratio``.
        iterations: EM iterations run (0 for the click ratio).
        converged: Whether EM stopped on its tolerance rather than its iteration cap.
    """

    propensity: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    method: str
    iterations: int = 0
    converged: bool = True

    def at(self, ranks: np.ndarray) -> np.ndarray:
        """The propensity of each given rank (ranks beyond the estimate take the last one)."""
        idx = np.clip(np.asarray(ranks, dtype=np.int64), 1, len(self.propensity)) - 1
        return self.propensity[idx]


def _counts(rank: np.ndarray, clicked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    shown = np.bincount(rank - 1, minlength=k)[:k]
    clicks = np.bincount(rank - 1, weights=clicked.astype(np.float64), minlength=k)[:k]
    return shown, clicks


def _check(rank: np.ndarray, clicked: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    rank = np.asarray(rank, dtype=np.int64)
    clicked = np.asarray(clicked, dtype=bool)
    if rank.shape != clicked.shape or rank.ndim != 1:
        raise ValueError(f"rank and clicked must be 1-d and of one length (got {rank.shape} "
                         f"and {clicked.shape}).")
    if len(rank) == 0:
        raise ValueError("No impressions to estimate propensities from; log some traffic "
                         "first (e.g. `shopassist simulate`).")
    if rank.min() < 1:
        raise ValueError(f"Ranks start at 1 (found {rank.min()}).")
    return rank, clicked, int(rank.max())


def click_ratio(rank: np.ndarray, clicked: np.ndarray) -> PropensityEstimate:
    """The naive estimate: CTR at each rank divided by CTR at rank 1.

    Raises:
        ValueError: No impressions, mismatched arrays, or no click at rank 1.
    """
    rank, clicked, k = _check(rank, clicked)
    shown, clicks = _counts(rank, clicked, k)
    ctr = np.divide(clicks, shown, out=np.zeros(k), where=shown > 0)
    if ctr[0] <= 0:
        raise ValueError("No click at rank 1: the click ratio is undefined.")
    return PropensityEstimate(ctr / ctr[0], shown, clicks, "click-ratio")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-3,
                  steps: int = 3) -> np.ndarray:
    """A few Newton steps of L2-regularised logistic regression on soft labels ``y``."""
    n = len(y)
    for _ in range(steps):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) / n + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / n + ridge * np.eye(len(w))
        w = w - np.linalg.solve(hess, grad)
    return w


def regression_em(rank: np.ndarray, clicked: np.ndarray, features: np.ndarray, *,
                  max_iterations: int = 200, tol: float = 1e-5) -> PropensityEstimate:
    """Estimates examination propensities by regression-EM over the position-based model.

    Args:
        rank: 1-based position of each impression.
        clicked: Whether each impression was clicked.
        features: ``(n, d)`` relevance features that do not depend on the position shown
            (standardised here; a bias column is added).
        max_iterations: EM iteration cap.
        tol: Stop when no propensity moves by more than this.

    Returns:
        Propensities relative to rank 1.

    Raises:
        ValueError: No impressions, mismatched arrays, or no click at rank 1.
    """
    rank, clicked, k = _check(rank, clicked)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(rank):
        raise ValueError(f"features must be (n, d) with n = {len(rank)} (got "
                         f"{features.shape}).")
    shown, clicks = _counts(rank, clicked, k)
    if clicks[0] <= 0:
        raise ValueError("No click at rank 1: position bias cannot be estimated.")
    mean, sd = features.mean(axis=0), features.std(axis=0)
    x = np.hstack([np.ones((len(rank), 1)),
                   (features - mean) / np.where(sd > 0, sd, 1.0)])
    ctr = np.divide(clicks, shown, out=np.zeros(k), where=shown > 0)
    theta = np.clip(ctr / ctr[0], 0.05, 1.0)  # start from the click ratio
    w = np.zeros(x.shape[1])
    w[0] = np.log(ctr[0] / (1 - ctr[0] + EPS) + EPS)
    c = clicked.astype(np.float64)
    idx = rank - 1
    converged, iterations = False, 0
    for iterations in range(1, max_iterations + 1):
        t = theta[idx]
        g = _sigmoid(x @ w)
        denom = np.maximum(1.0 - t * g, EPS)
        # Posteriors given no click: examined-but-irrelevant, relevant-but-unexamined.
        p_exam = c + (1 - c) * t * (1 - g) / denom
        p_rel = c + (1 - c) * (1 - t) * g / denom
        new = np.bincount(idx, weights=p_exam, minlength=k)[:k] / np.maximum(shown, 1)
        new = np.clip(new, EPS, 1.0)
        w = _fit_logistic(x, p_rel, w)
        delta = float(np.abs(new / new[0] - theta / theta[0]).max())
        theta = new
        # The click-ratio start is a fixed point of the first update while gamma is still
        # constant, so the first steps never count as converged.
        if delta < tol and iterations > 2:
            converged = True
            break
    if not converged:
        logger.warning("regression-EM stopped after %d iterations without converging",
                       iterations)
    return PropensityEstimate(theta / theta[0], shown, clicks, "regression-em", iterations,
                              converged)


def inverse_propensity_weights(propensity: np.ndarray, max_weight: float = 10.0
                               ) -> np.ndarray:
    """``1 / propensity`` clipped to ``[1, max_weight]`` (clipping trades a little bias for
    much less variance at deep ranks).

    Raises:
        ValueError: ``max_weight`` < 1.
    """
    if max_weight < 1:
        raise ValueError(f"max_weight must be at least 1 (got {max_weight}).")
    p = np.asarray(propensity, dtype=np.float64)
    return np.clip(1.0 / np.maximum(p, EPS), 1.0, max_weight)
