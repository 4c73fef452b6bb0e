"""What a simulated shopper asks for, and how they say it.

A :class:`Intent` is the hidden meaning of one query (attributes wanted, a price cap, the
product photographed); :func:`new_intent` draws a fresh one from the shopper's tastes and
what the catalog offers, :func:`refine` turns the previous one into "cheaper" or "in another
colour". Phrasing varies (templates, gender words, price words) so the logged texts look
like shoppers', while the engine's parser still reads the same constraints from them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from training.shoppers import CatalogStats
from training.truth import Shopper, SimConfig

TEXT, PHOTO, PHOTO_TEXT = "text", "photo", "photo+text"

GENDER_FOR = {"Men": ["for men", "for him", "for guys"], "Women": ["for women", "for her",
              "for ladies"], "Boys": ["for boys"], "Girls": ["for girls"]}
GENDER_OF = {"Men": ["men's", "mens"], "Women": ["women's", "ladies"], "Boys": ["boys'"],
             "Girls": ["girls'"]}
TEMPLATES = ("{adj}{colour}{category} {for}", "{of} {adj}{colour}{category}",
             "looking for {adj}{colour}{category} {for}", "show me {adj}{category} {in}{for}",
             "{adj}{colour}{category}", "need some {adj}{colour}{category} {for}")
PRICE_WORDS = ("under", "below", "less than", "up to", "max")
PHOTO_MESSAGES = ("do you have this?", "find me something like this", "", "this one please",
                  "similar to this")
SEASON_WORDS = {"Fall": "autumn"}


@dataclass(frozen=True)
class Intent:
    """The hidden meaning of one query and the words (and photo) that carry it.

    Attributes:
        kind: ``text``, ``photo`` or ``photo+text``.
        attrs: Attribute -> wanted value (gender, category, colour, usage, season).
        price_cap: The most the shopper will pay, when they said so.
        target: Row of the product photographed (photo queries).
        text: The words searched (``None`` for a photo alone).
        message: What the shopper typed in the chat.
        base: The words without a price cap (what a "cheaper" refinement extends).
        refinement: ``cheaper`` or ``colour`` when this refines the previous query.
    """

    kind: str
    attrs: dict[str, str]
    price_cap: float | None = None
    target: int | None = None
    text: str | None = None
    message: str = ""
    base: str = ""
    refinement: str | None = None


def _pick(rng: np.random.Generator, counts: Counter[str], affinity: dict[str, float],
          config: SimConfig, exclude: str = "") -> str | None:
    """A value weighted by popularity ** 0.5 and the shopper's taste."""
    values = [v for v in counts if v != exclude]
    if not values:
        return None
    logits = np.array([0.5 * math.log(counts[v]) + affinity.get(v, 0.0)
                       / config.taste_temperature for v in values])
    p = np.exp(logits - logits.max())
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def nice_cap(value: float, *, up: bool = True) -> float:
    """A round price near ``value``: 1,234 -> 1,500 (up) or 1,000 (down); 87 -> 90 / 85."""
    if not value > 0:
        return 0.0
    step = 10 ** math.floor(math.log10(value)) / 2
    rounded = (math.ceil if up else math.floor)(value / step) * step
    return float(max(rounded, step))


def _money(value: float) -> str:
    return f"{value:g}"


def _phrase(rng: np.random.Generator, attrs: dict[str, str]) -> str:
    gender, colour = attrs.get("gender", ""), attrs.get("colour", "")
    adj = " ".join(SEASON_WORDS.get(attrs[a], attrs[a]).lower()
                   for a in ("usage", "season") if attrs.get(a))
    template = str(rng.choice(TEMPLATES))
    words = template.format(
        adj=f"{adj} " if adj else "", colour=f"{colour.lower()} " if colour else "",
        category=attrs["category"].lower(),
        **{"for": str(rng.choice(GENDER_FOR.get(gender, [""]))),
           "of": str(rng.choice(GENDER_OF.get(gender, [""]))),
           "in": f"in {colour.lower()} " if colour else ""})
    return " ".join(words.split())


def _with_cap(rng: np.random.Generator, base: str, cap: float | None) -> str:
    return f"{base} {rng.choice(PRICE_WORDS)} {_money(cap)}" if cap else base


def _photo_words(rng: np.random.Generator, stats: CatalogStats, intent: Intent) -> str:
    """The words sent with a photo: "this but in black", "under 800", or both."""
    colour = intent.attrs.get("colour", "")
    parts = []
    if intent.target is not None and colour and colour != stats.values["colour"][intent.target]:
        parts.append(f"this but in {colour.lower()}")
    if intent.price_cap:
        parts.append(f"{rng.choice(PRICE_WORDS)} {_money(intent.price_cap)}")
    return " ".join(parts)


def _wanted(rng: np.random.Generator, shopper: Shopper, stats: CatalogStats,
            config: SimConfig) -> dict[str, str] | None:
    category = _pick(rng, stats.categories(shopper.gender), shopper.affinity["category"],
                     config)
    if category is None:
        return None
    attrs = {"gender": shopper.gender, "category": category}
    for attr, chance in (("colour", config.colour_rate), ("usage", config.style_rate),
                         ("season", config.style_rate)):
        draw = rng.random()
        value = _pick(rng, stats.attribute_values(shopper.gender, category, attr),
                      shopper.affinity[attr], config)
        if value is not None and draw < chance:
            attrs[attr] = value
    return attrs


def new_intent(rng: np.random.Generator, shopper: Shopper, stats: CatalogStats,
               config: SimConfig) -> Intent | None:
    """A fresh query: a photo of a product they like, or words naming what they want.

    Returns:
        The intent, or ``None`` when the catalog offers nothing for this shopper.
    """
    photo = rng.random() < shopper.photo_rate
    attrs = _wanted(rng, shopper, stats, config)
    if attrs is None:
        return None
    if photo:
        match = stats.suits(shopper.gender) & (stats.values["category"] == attrs["category"])
        if attrs.get("colour"):
            same = match & (stats.values["colour"] == attrs["colour"])
            match = same if same.any() else match
        rows = np.flatnonzero(match)
        target = int(rows[int(rng.integers(len(rows)))])
        wanted = {"gender": shopper.gender, "category": attrs["category"],
                  "colour": str(stats.values["colour"][target])}
        return Intent(PHOTO, wanted, target=target, message=str(rng.choice(PHOTO_MESSAGES)))
    cap = None
    if rng.random() < min(1.0, config.price_cap_rate * shopper.price_sensitivity):
        cap = nice_cap(stats.budget(shopper, attrs["category"]))
    base = _phrase(rng, attrs)
    text = _with_cap(rng, base, cap)
    return Intent(TEXT, attrs, price_cap=cap, text=text, message=text, base=base)


def refine(rng: np.random.Generator, shopper: Shopper, stats: CatalogStats, config: SimConfig,
           previous: Intent, shown_prices: Sequence[float]) -> Intent | None:
    """Refines the previous query: "anything cheaper?" or "do you have it in blue?".

    Returns:
        The refined intent, or ``None`` when neither refinement applies.
    """
    prices = [p for p in shown_prices if math.isfinite(p) and p > 0]
    colours = stats.attribute_values(shopper.gender, previous.attrs.get("category", ""),
                                     "colour")
    options = (["cheaper"] if prices else []) + (["colour"] if len(colours) > 1 else [])
    if not options:
        return None
    how = str(rng.choice(options))
    photo = previous.target is not None
    if how == "cheaper":
        cap = nice_cap(0.8 * float(np.median(prices)), up=False)
        if previous.price_cap:
            cap = min(cap, nice_cap(0.8 * previous.price_cap, up=False))
        word = str(rng.choice(PRICE_WORDS))
        message = f"anything cheaper? {word} {_money(cap)}"
        if photo:
            refined = replace(previous, kind=PHOTO_TEXT, price_cap=cap, message=message,
                              refinement="cheaper")
            return replace(refined, text=_photo_words(rng, stats, refined))
        return replace(previous, price_cap=cap, message=message, refinement="cheaper",
                       text=f"{previous.base} {word} {_money(cap)}")
    colour = _pick(rng, colours, shopper.affinity["colour"], config,
                   exclude=previous.attrs.get("colour", ""))
    if colour is None:
        return None
    attrs = {**previous.attrs, "colour": colour}
    message = f"do you have it in {colour.lower()}?"
    if photo:
        refined = replace(previous, kind=PHOTO_TEXT, attrs=attrs, message=message,
                          refinement="colour")
        return replace(refined, text=_photo_words(rng, stats, refined))
    base = _phrase(rng, attrs)
    return replace(previous, attrs=attrs, base=base, message=message, refinement="colour",
                   text=_with_cap(rng, base, previous.price_cap))
