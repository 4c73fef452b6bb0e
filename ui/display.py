"""How products look on screen: display photos, prices, attributes, safe Markdown.

Pure functions (no Streamlit), so the cards' content is tested without a browser.

Display photos: a shop often has larger photos than the ones it indexes. When
``SHOPASSIST_DISPLAY_IMAGES_DIR`` names a folder (default: the demo's
``../shared/data/fashion_300px/images`` beside this checkout, when it exists), a card
shows ``<folder>/<product id>.jpg`` if that file exists, else the product's own image.
This lookup is display-only: search never sees those files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

DISPLAY_DIR_ENV = "SHOPASSIST_DISPLAY_IMAGES_DIR"
DEMO_DISPLAY_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                    / "fashion_300px" / "images")
# Attributes worth a line on a card, in this order (the rest are on the details).
CARD_ATTRIBUTES = ("colour", "gender", "material", "season", "usage", "size")
FEEDBACK_LABELS = {"click": "clicked", "add_to_cart": "added to cart", "purchase": "bought",
                   "dwell": "looked", "thumbs_up": "👍", "thumbs_down": "👎"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def display_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of larger display photos, or ``None``.

    ``SHOPASSIST_DISPLAY_IMAGES_DIR`` wins (empty: no display folder); otherwise the demo
    folder when it exists.
    """
    env = os.environ if environ is None else environ
    if DISPLAY_DIR_ENV in env:
        value = env[DISPLAY_DIR_ENV].strip()
        return Path(value).expanduser() if value else None
    return DEMO_DISPLAY_DIR if DEMO_DISPLAY_DIR.is_dir() else None


@lru_cache(maxsize=4096)
def _larger(folder: str, product_id: str) -> str | None:
    candidate = Path(folder) / f"{product_id}.jpg"
    return str(candidate) if candidate.is_file() else None


def display_image(product_id: str, own_image: str | None, folder: Path | None) -> str | None:
    """The photo to show for a product: the larger display photo, else its own.

    Args:
        product_id: The product id (ids that are not plain file names never reach the
            file system).
        own_image: The product's image (a local path or an http(s) URL).
        folder: The display folder (:func:`display_dir`).

    Returns:
        A local path or URL, or ``None`` when there is nothing to show.
    """
    if folder is not None and _SAFE_ID.match(product_id) and ".." not in product_id:
        found = _larger(str(folder), product_id)
        if found:
            return found
    if not own_image:
        return None
    if own_image.lower().startswith(("http://", "https://")):
        return own_image
    return own_image if Path(own_image).is_file() else None


def md_escape(text: Any) -> str:
    """Catalog text as literal Markdown: no links, emphasis, headings or HTML from it."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def price_label(price: float | None, currency: str | None, *, synthetic: bool = False
                ) -> str:
    """``1,299 INR`` (``…, demo price`` when the catalog marks the price synthetic)."""
    if price is None:
        return "price on request"
    amount = f"{price:,.2f}".removesuffix(".00")
    label = f"{amount} {currency or ''}".strip()
    return f"{label} (demo price)" if synthetic else label


def card_facts(product: Mapping[str, Any]) -> list[str]:
    """The short facts under a card's title: category, key attributes, stock."""
    facts = [str(product["category"])] if product.get("category") else []
    facts += [str(product[key]) for key in CARD_ATTRIBUTES if product.get(key)]
    if product.get("in_stock") is False:
        facts.append("out of stock")
    return facts


def why_label(why: Any) -> str:
    """"why it matched" as one line."""
    reasons = [str(w) for w in (why or []) if w]
    return "; ".join(reasons[:4])
