"""How a simulated shopper reacts to one result list: a position-based click model with an
ESMM-style funnel behind it.

Each shown product is examined with ``P = 1 / rank ** eta`` and, if examined, clicked with
``P = sigmoid(u)`` (``u`` the hidden utility); a click is the only way into the funnel —
add-to-cart is drawn given a click, purchase given add-to-cart — and every click has a
log-normal dwell time that grows with ``u``. Random draws are taken for every position in a
fixed order, so one session's draws never depend on another's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from training.truth import SimConfig

SCAN_S = 1.5  # seconds to look at one more position
CHECKOUT_S = 20.0  # seconds from the end of browsing to the purchase


@dataclass(frozen=True)
class Parts:
    """The terms of the hidden utility for a list of shown products (one value each)."""

    intent: np.ndarray
    target: np.ndarray
    preference: np.ndarray
    price: np.ndarray
    score: np.ndarray


def utilities(config: SimConfig, parts: Parts) -> np.ndarray:
    """The hidden utility ``u`` of each product (see :class:`training.truth.Utility`)."""
    c = config.utility
    return (c.bias + c.intent * parts.intent + c.target * parts.target
            + c.preference * parts.preference + c.price * parts.price + c.score * parts.score)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow


@dataclass(frozen=True)
class Reactions:
    """What the shopper did with each shown position (arrays in shown order)."""

    examined: np.ndarray
    clicked: np.ndarray
    carted: np.ndarray
    purchased: np.ndarray
    dwell_ms: np.ndarray  # 0 where not clicked


def react(rng: np.random.Generator, u: np.ndarray, config: SimConfig) -> Reactions:
    """Draws examination, clicks, add-to-cart, purchases and dwell for one list.

    Args:
        rng: The session's generator.
        u: Hidden utility per shown position (rank 1 first).
        config: The behaviour settings.

    Returns:
        The reactions; ``purchased`` implies ``carted`` implies ``clicked`` implies
        ``examined``.
    """
    n = len(u)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    draws = rng.random((4, n))
    noise = rng.normal(size=n)
    examined = draws[0] < ranks ** -config.eta
    clicked = examined & (draws[1] < _sigmoid(u))
    cart, buy, dwell = config.cart, config.purchase, config.dwell
    carted = clicked & (draws[2] < _sigmoid(cart.bias + cart.utility * u))
    purchased = carted & (draws[3] < _sigmoid(buy.bias + buy.utility * u))
    dwell_ms = np.where(clicked, np.exp(dwell.log_ms + dwell.utility * u + dwell.sd * noise),
                        0.0)
    return Reactions(examined, clicked, carted, purchased, np.round(dwell_ms, 1))


@dataclass(frozen=True)
class Timeline:
    """When each reaction happened (``None`` where it did not), and when browsing ended."""

    click: list[datetime | None]
    cart: list[datetime | None]
    dwell: list[datetime | None]
    purchase: list[datetime | None]
    end: datetime


def timeline(shown_at: datetime, reactions: Reactions) -> Timeline:
    """Times the reactions: the shopper scans down the list, reads each product clicked
    (adding it to the cart while reading), then checks out the cart."""
    t = shown_at
    n = len(reactions.clicked)
    click: list[datetime | None] = [None] * n
    cart: list[datetime | None] = [None] * n
    dwell: list[datetime | None] = [None] * n
    purchase: list[datetime | None] = [None] * n
    last = int(np.flatnonzero(reactions.examined).max()) + 1 if reactions.examined.any() else 0
    for i in range(last):
        t += timedelta(seconds=SCAN_S)
        if reactions.clicked[i]:
            read = timedelta(milliseconds=float(reactions.dwell_ms[i]))
            click[i] = t
            if reactions.carted[i]:
                cart[i] = t + read * 0.8
            dwell[i] = t + read
            t += read
    for i in np.flatnonzero(reactions.purchased):
        t += timedelta(seconds=CHECKOUT_S)
        purchase[int(i)] = t
    return Timeline(click, cart, dwell, purchase, t)
