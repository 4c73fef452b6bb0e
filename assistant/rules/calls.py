"""From an intent to tool calls: the arguments of the five tools, stage by stage.

Searches pass the shopper's words as the query, so the engine reads their constraints
itself (and may relax them, saying so) and embeds the words; only what words cannot say
("cheaper than the second one") travels as an explicit filter. A refinement rewrites the
previous query: the phrases of the constraints the new words replace are taken out ("blue"
when the shopper now says "in black"), the new ones appended. Multi-step intents ("what
goes with blue jeans?", "is the linen shirt for summer?") search first and act on the top
hit once its result is back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from assistant.rules import cues
from assistant.rules.intent import Intent
from assistant.rules.state import Context, ToolOutcome
from retrieval.catalog import Product
from retrieval.query import Match, ParsedQuery, QueryParser

DEFAULT_K = 5  # what the answer lists, so "the fifth one" is the fifth shown
MAX_PHOTOS = 3
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")  # the parser's notion of a word
_POSSESSIVE = re.compile(r"(?<=[a-z])['’]s\b|(?<=s)['’](?!\w)")
_LEADING = re.compile(
    r"^(?:(?:hi|hello|hey|ok|okay|so|and|also|now|please|pls|kindly|can you|could you|"
    r"would you|will you|i'?m|i am|we'?re|looking for|searching for|i want|i need|"
    r"i'?d like|i would like|i wanna|want|need|show me|show|find me|find|get me|get|"
    r"give me|do you have|do you sell|have you got|got any|any|search for|search|"
    r"recommend|suggest|some|a|an|me)(?![\w'])[\s,!.:-]*)+")
_GROUPS = {"subcategory": "category"}  # "shoes" and "sports shoes" replace each other


class CatalogView(Protocol):
    """What the planner reads from the catalog (a :class:`~retrieval.search.SearchEngine`
    has it): the query parser and product lookup."""

    parser: QueryParser

    def product(self, product_id: str) -> Product: ...


@dataclass(frozen=True)
class PlannedCall:
    """One tool call to make."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


def first_calls(intent: Intent, context: Context, catalog: CatalogView,
                k: int = DEFAULT_K) -> list[PlannedCall]:
    """The tool calls that start a turn; empty when the answer needs no tool.

    Args:
        intent: What the message asks for.
        context: The conversation before this turn.
        catalog: Parser and product lookup.
        k: Results per search.
    """
    if intent.missing:
        return []
    kind, ids = intent.kind, intent.product_ids
    if kind == "search_text":
        return [PlannedCall("text_search", {"query": clean_query(intent.text), "k": k})]
    if kind == "search_photo":
        photos = intent.uploads[-MAX_PHOTOS:]
        each = max(1, math.ceil(k / len(photos)))
        refine = described(intent.parsed)
        return [PlannedCall("visual_search", _drop_empty(
            {"upload_id": u, "refine": refine, "k": each})) for u in photos]
    if kind == "refine":
        return [refine_call(intent, context, catalog, k)]
    if kind == "similar" and ids:
        return [PlannedCall("recommend", {"product_id": ids[0], "mode": "similar", "k": k})]
    if kind == "goes_with":
        return _goes_with(intent, context, catalog, k)
    if kind == "details":
        if ids:
            return [PlannedCall("product_details", {"product_id": pid}) for pid in ids]
        return [PlannedCall("text_search", {"query": described(intent.parsed) or
                                            clean_query(intent.text), "k": 3})]
    if kind == "compare" and len(ids) >= 2:
        return [PlannedCall("compare", {"product_ids": list(ids)})]
    return []


def next_calls(intent: Intent, done: Sequence[Sequence[ToolOutcome]], catalog: CatalogView,
               k: int = DEFAULT_K) -> list[PlannedCall]:
    """The calls that follow the first batch: act on the top hit of a search made to find
    the product a goes-with or details question describes."""
    if len(done) != 1 or intent.product_ids or intent.kind not in ("goes_with", "details"):
        return []
    results = [r for o in done[0] if o.ok and o.name in ("text_search", "visual_search")
               for r in (o.artifact or {}).get("results", [])]
    if not results:
        return []
    top = results[0]
    if intent.kind == "details":
        return [PlannedCall("product_details", {"product_id": str(top["id"])})]
    wanted, _ = goes_with_parts(intent, catalog.parser)
    if _names_category(wanted):
        return [PlannedCall("text_search", {"query": _wanted_query(wanted, top), "k": k})]
    return [PlannedCall("recommend", {"product_id": str(top["id"]), "mode": "complementary",
                                      "k": k})]


def goes_with_parts(intent: Intent, parser: QueryParser) -> tuple[ParsedQuery, ParsedQuery]:
    """"what shoes go with a black dress?": what is wanted ("shoes") and what it should go
    with ("a black dress"), each parsed."""
    m = cues.GOES_WITH.search(intent.text.lower())
    if m is None:
        return ParsedQuery(text=""), intent.parsed
    return parser.parse(intent.text[:m.start()]), parser.parse(intent.text[m.end():])


# -- queries --------------------------------------------------------------------------------


def clean_query(text: str) -> str:
    """The words of a request without its conversational opening ("can you show me"), or
    the text itself when nothing else would be left."""
    words = " ".join(text.split())
    opening = _LEADING.match(words.lower())
    out = words[opening.end():] if opening else words
    out = re.sub(r"[\s,]*\b(?:please|pls|thanks|thank you)\b[\s!.?]*$", "", out,
                 flags=re.IGNORECASE).strip(" ?!.,")
    if not out:
        out = words.strip(" ?!.,") or words
    return out[:300]


def described(parsed: ParsedQuery) -> str:
    """The constraint phrases and content words of a message, without its chatter."""
    parts = _phrases(parsed.matches)
    if parsed.filters.in_stock:
        parts.append("in stock")
    parts += [w for w in parsed.free_text.split()
              if w not in cues.CHATTER and w not in cues.ORDINALS and not w.isdigit()]
    return " ".join(parts)[:300]


def refine_call(intent: Intent, context: Context, catalog: CatalogView,
                k: int = DEFAULT_K) -> PlannedCall:
    """The search that refines the last one (or one product) with the new words.

    "like the second one but cheaper" searches the second product's category, colour and
    gender below its price; "in black" re-runs the last search with black instead of its
    colour; after a photo search, the photo is searched again with the new words.
    """
    tool, base_text, filters, upload = _base(intent, context, catalog)
    new = intent.parsed
    text = _rewrite(base_text, catalog.parser.parse(base_text), new,
                    drop_price=intent.relative is not None)
    replaced = {_GROUPS.get(m.key, m.key) for m in new.matches}
    for key in ("colour", "category", "gender"):
        if key in replaced:
            filters.pop(key, None)
    if any(m.key == "price" for m in new.matches) or intent.relative:
        filters.pop("price_min", None)
        filters.pop("price_max", None)
    if intent.relative:
        old = catalog.parser.parse(base_text).filters
        if intent.price_max is not None:
            filters["price_max"] = intent.price_max
            if old.price_min is not None and old.price_min <= intent.price_max:
                filters["price_min"] = old.price_min
        if intent.price_min is not None:
            filters["price_min"] = intent.price_min
            if old.price_max is not None and old.price_max >= intent.price_min:
                filters["price_max"] = old.price_max
    args: dict[str, Any] = {"k": k}
    if tool == "visual_search":
        args.update(upload_id=upload, refine=text[:300])
    else:
        args["query"] = text[:300] or clean_query(intent.text)
    if filters:
        args["filters"] = filters
    return PlannedCall(tool, _drop_empty(args))


def anchor_text(product: Mapping[str, Any], *, other_colours: bool = False) -> str:
    """A query for products like ``product``: its colour, category and gender, in the
    catalog's own words (so the engine reads them back as constraints)."""
    colour, category, gender = (product.get("colour"), product.get("category"),
                                product.get("gender"))
    parts = [str(colour)] if colour and not other_colours else []
    parts += [str(category)] if category else [str(product.get("title", ""))]
    if gender:
        parts.append(f"for {gender}")
    if colour and other_colours:
        parts.append(f"not {colour}")
    return " ".join(p for p in parts if p)


def product_facts(product_id: str, context: Context, catalog: CatalogView
                  ) -> dict[str, Any]:
    """What is known of a product: its catalog record, else what the tools showed."""
    try:
        product = catalog.product(product_id)
    except KeyError:
        return dict(context.products.get(product_id, {"id": product_id}))
    return {"id": product.product_id, "title": product.title, "category": product.category,
            "price": product.price, "currency": product.currency, **product.attributes}


# -- helpers ------------------------------------------------------------------------------


def _goes_with(intent: Intent, context: Context, catalog: CatalogView, k: int
               ) -> list[PlannedCall]:
    ids = intent.product_ids
    if intent.uploads:
        return [PlannedCall("visual_search", {"upload_id": intent.uploads[-1], "k": 3})]
    wanted, anchor = goes_with_parts(intent, catalog.parser)
    if not ids:
        return [PlannedCall("text_search", {"query": described(anchor) or
                                            clean_query(intent.text), "k": 3})]
    if _names_category(wanted):  # "what shoes go with it?": that category, same gender
        facts = product_facts(ids[0], context, catalog)
        return [PlannedCall("text_search", {"query": _wanted_query(wanted, facts), "k": k})]
    return [PlannedCall("recommend", {"product_id": ids[0], "mode": "complementary", "k": k})]


def _names_category(parsed: ParsedQuery) -> bool:
    return any(m.key in ("category", "subcategory") and not m.negated for m in parsed.matches)


def _wanted_query(wanted: ParsedQuery, anchor: Mapping[str, Any]) -> str:
    """"shoes" to go with a women's dress: "shoes for Women" (the wanted words' own
    gender, if any, wins)."""
    query = described(wanted)
    gender = anchor.get("gender")
    if gender and not any(m.key == "gender" for m in wanted.matches):
        query = f"{query} for {gender}"
    return query[:300]


def _base(intent: Intent, context: Context, catalog: CatalogView
          ) -> tuple[str, str, dict[str, Any], str | None]:
    """(tool, query words, explicit filters, upload id) of what is being refined."""
    if intent.anchored and intent.product_ids:
        facts = product_facts(intent.product_ids[0], context, catalog)
        return "text_search", anchor_text(facts, other_colours=intent.other_colours), {}, None
    last = context.last_search
    if last is None:
        return "text_search", "", {}, None
    args = dict(last.arguments)
    filters = dict(args.get("filters") or {})
    if last.name == "visual_search":
        return "visual_search", str(args.get("refine", "")), filters, args.get("upload_id")
    if last.name == "text_search":
        return "text_search", str(args.get("query", "")), filters, None
    anchor = product_facts(str(args.get("product_id", "")), context, catalog)
    if args.get("mode") == "complementary":
        categories = [str(context.products.get(i, {}).get("category", "")) for i in context.shown]
        words = " or ".join(dict.fromkeys(c for c in categories if c))
        gender = anchor.get("gender")
        return "text_search", f"{words} for {gender}" if gender else words, {}, None
    return "text_search", anchor_text(anchor, other_colours=intent.other_colours), {}, None


def _rewrite(base_text: str, base: ParsedQuery, new: ParsedQuery, *, drop_price: bool) -> str:
    """``base_text`` with the constraints ``new`` replaces taken out and ``new``'s added."""
    included = {_GROUPS.get(m.key, m.key) for m in new.matches if not m.negated}
    excluded: dict[str, set[str]] = {}
    for m in new.matches:
        if m.negated:
            excluded.setdefault(m.key, set()).update(m.values)
    new_price = drop_price or any(m.key == "price" for m in new.matches)
    low = _POSSESSIVE.sub("", base_text.lower())
    drop: list[Match] = []
    for m in base.matches:
        if m.key == "price":
            if new_price:
                low = low.replace(m.phrase, " ", 1)
        elif _GROUPS.get(m.key, m.key) in included or \
                (not m.negated and set(m.values) & excluded.get(m.key, set())):
            drop.append(m)
    tokens = _WORD.findall(low)
    for m in drop:
        tokens = _remove(tokens, m.phrase.split(), negated=m.negated)
    if new.filters.in_stock and "stock" not in tokens:
        tokens += ["in", "stock"]
    content = [w for w in new.free_text.split()
               if w not in cues.CHATTER and w not in cues.ORDINALS and not w.isdigit()]
    return " ".join([*tokens, *_phrases(new.matches), *content]).strip()


def _phrases(matches: Any) -> list[str]:
    out = []
    for m in matches:
        phrase = m.phrase
        if m.key == "gender" and not m.negated:
            phrase = f"for {phrase}"
        out.append(f"not {phrase}" if m.negated else phrase)
    return out


def _remove(tokens: list[str], phrase: list[str], *, negated: bool) -> list[str]:
    n = len(phrase)
    for i in range(len(tokens) - n + 1):
        if tokens[i:i + n] == phrase:
            start = i
            if start > 0 and (tokens[start - 1] in ("for", "in", "with")
                              or (negated and tokens[start - 1] in
                                  ("not", "no", "non", "except", "without", "excluding"))):
                start -= 1
            return tokens[:start] + tokens[i + n:]
    return tokens


def _drop_empty(args: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in args.items() if value not in (None, "", {}, [])}
