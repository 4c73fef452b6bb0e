"""Filter chips: which constraint a chip stands for, and the last search without it.

A search's filters come from two places: explicit tool arguments (``filters``) and
constraints the engine reads from the words ("in red", "under 80"). Removing a chip
therefore drops the key from the explicit filters *and* takes the phrases that expressed
it out of the words, so the engine does not read it again. Pure functions: the page calls
``Conversation.act`` with the arguments they return.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

SEARCH_TOOLS = ("text_search", "visual_search")
WORDS_ARG = {"text_search": "query", "visual_search": "refine"}
# "shoes" (category) and "sports shoes" (subcategory) are one chip to the shopper.
GROUPS = {"subcategory": "category"}
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")
_LEAD = {"for", "in", "with", "not", "no", "non", "except", "without", "excluding", "under",
         "below", "over", "above"}
FILTER_FIELDS = {"colour": "colour", "category": "category", "gender": "gender"}


class Match(Protocol):
    phrase: str
    key: str


class Parser(Protocol):
    def parse(self, text: str) -> Any: ...


def chip_key(chip: str) -> str:
    """The filter key a chip shows: ``colour: Red`` → ``colour``; ``price ≤ 80`` →
    ``price``; ``in stock`` / ``out of stock`` → ``in_stock``."""
    text = chip.strip()
    if text.startswith("price"):
        return "price"
    if text in ("in stock", "out of stock"):
        return "in_stock"
    key, sep, _ = text.partition(":")
    return key.strip() if sep else text


def _group(key: str) -> str:
    return GROUPS.get(key, key)


def _drop_explicit(filters: Mapping[str, Any], key: str) -> dict[str, Any]:
    out = dict(filters)
    if key == "price":
        out.pop("price_min", None)
        out.pop("price_max", None)
    elif key == "in_stock":
        out.pop("in_stock", None)
    elif key in FILTER_FIELDS:
        out.pop(FILTER_FIELDS[key], None)
    if key not in ("price", "in_stock") and isinstance(out.get("attributes"), Mapping):
        attributes = {k: v for k, v in out["attributes"].items() if _group(k) != _group(key)}
        if attributes:
            out["attributes"] = attributes
        else:
            out.pop("attributes")
    return {k: v for k, v in out.items() if v not in (None, [], {})}


def _drop_phrase(tokens: list[str], phrase: list[str]) -> list[str]:
    n = len(phrase)
    for i in range(len(tokens) - n + 1):
        if tokens[i:i + n] == phrase:
            start = i - 1 if i > 0 and tokens[i - 1] in _LEAD else i
            return tokens[:start] + tokens[i + n:]
    return tokens


def drop_words(text: str, key: str, parser: Parser) -> str:
    """``text`` without the phrases the parser reads as a constraint on ``key``."""
    if not text.strip():
        return ""
    parsed = parser.parse(text)
    matches = [m for m in getattr(parsed, "matches", ()) if _group(m.key) == _group(key)]
    low = text.lower()
    for m in matches:
        if m.key == "price" and m.phrase in low:  # price phrases hold symbols ("$80")
            low = low.replace(m.phrase, " ", 1)
    tokens = _WORD.findall(low)
    for m in matches:
        if m.key != "price":
            tokens = _drop_phrase(tokens, _WORD.findall(m.phrase.lower()))
    return " ".join(tokens)


def without_chip(tool: str, arguments: Mapping[str, Any], chip: str, parser: Parser
                 ) -> dict[str, Any] | None:
    """The arguments that re-run a search without one chip's constraint.

    Args:
        tool: The last search's tool (``text_search`` or ``visual_search``).
        arguments: Its arguments.
        chip: The chip to remove, as shown.
        parser: The engine's query parser (``engine.parser``).

    Returns:
        The new arguments, or ``None`` when nothing would be left to search by.
    """
    if tool not in SEARCH_TOOLS:
        return None
    key = chip_key(chip)
    args = dict(arguments)
    filters = _drop_explicit(args.get("filters") or {}, key)
    if filters:
        args["filters"] = filters
    else:
        args.pop("filters", None)
    field = WORDS_ARG[tool]
    words = drop_words(str(args.get(field) or ""), key, parser)
    if words:
        args[field] = words
    else:
        args.pop(field, None)
    if tool == "text_search" and "query" not in args:
        return None  # "dresses" without the category chip leaves nothing to look for
    return args
