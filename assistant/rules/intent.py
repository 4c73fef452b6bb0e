"""A shopper's message, read into an intent: what to do, about which products, under which
constraints.

Pure functions over the message, the photos attached to it and the conversation so far
(:class:`~assistant.rules.state.Context`). Catalog constraints come from the search
engine's own :class:`~retrieval.query.QueryParser`, so the planner and the engine read
"red dress for women under 1500" the same way; this module adds the conversation around
them: which product "the second one" or "it" is, what "cheaper" means here, which catalog
field a question asks about.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from assistant.rules import cues
from assistant.rules.state import Context, split_photos
from retrieval.query import ParsedQuery, QueryParser

INTENTS = ("search_photo", "search_text", "refine", "similar", "goes_with", "details",
           "compare", "greeting", "help", "out_of_scope")
SEARCH_INTENTS = ("search_photo", "search_text", "refine")
MAX_COMPARED = 4
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")  # the parser's notion of a word


@dataclass(frozen=True)
class Intent:
    """What a message asks for.

    Attributes:
        kind: One of :data:`INTENTS`.
        text: The shopper's words (photo lines removed).
        uploads: Upload ids of the photos attached to this message.
        product_ids: The products referred to, in the order named ("compare 1 and 3").
        fields: Catalog fields a details question asks about (empty: all of them).
        asked: (field, value) pairs a details question asks about ("is it cotton?" ->
            ``("material", "cotton")``).
        price_min: A lower bound relative to the products shown ("pricier").
        price_max: An upper bound relative to the products shown ("cheaper").
        relative: ``cheaper`` or ``pricier`` when a bound is relative.
        other_colours: "does it come in other colours?": exclude the product's colour.
        anchored: A refinement of one product ("the second one but cheaper") rather than
            of the last search.
        parsed: The constraints read from the words.
        missing: Why a reference could not be resolved (the answer asks the shopper).
    """

    kind: str
    text: str
    uploads: tuple[str, ...] = ()
    product_ids: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    asked: tuple[tuple[str, str], ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    relative: str | None = None
    other_colours: bool = False
    anchored: bool = False
    parsed: ParsedQuery = field(default_factory=lambda: ParsedQuery(text=""))
    missing: str | None = None


@dataclass(frozen=True)
class References:
    """Products a message points at, resolved against the last list shown."""

    ids: tuple[str, ...] = ()
    explicit: bool = False  # by position or id, not only by pronoun
    plural: bool = False
    unresolved: str | None = None


def parse_intent(text: str, *, parser: QueryParser, context: Context | None = None,
                 uploads: tuple[str, ...] = (),
                 product_id: Callable[[str], str | None] | None = None) -> Intent:
    """Reads a shopper's message into an :class:`Intent`.

    Args:
        text: The message; ``[photo: upload-1]`` lines in it count as attached photos.
        parser: The catalog's query parser (``engine.parser``).
        context: The conversation so far (default: a fresh conversation).
        uploads: Upload ids attached to the message, besides those in ``text``.
        product_id: The catalog id a typed token stands for, or ``None`` (default: no
            typed ids are recognised).

    Returns:
        The intent, with references resolved and constraints read.
    """
    context = context or Context()
    words, inline = split_photos(text)
    uploads = tuple(dict.fromkeys((*uploads, *inline)))
    low = " ".join(words.lower().split())
    parsed = parser.parse(words)
    base = Intent(kind="search_text", text=words, uploads=uploads, parsed=parsed)
    if uploads:
        kind = "goes_with" if cues.GOES_WITH.search(low) else "search_photo"
        return _with(base, kind=kind)
    if not low or cues.HELP.search(low):
        return _with(base, kind="help")
    content = content_words(low, parsed)
    if cues.GREETING.search(low) and not parsed.matches and not content:
        return _with(base, kind="greeting")
    if cues.OUT_OF_SCOPE.search(low):
        return _with(base, kind="out_of_scope")
    if cues.COMPARE.search(low):
        refs = find_references(words, low, context, parsed, product_id, bare_positions=True)
        return _compare(base, refs, context)
    refs = find_references(words, low, context, parsed, product_id)
    if cues.GOES_WITH.search(low):
        return _about_one(base, "goes_with", refs, context, allow_description=True)
    if _is_details_question(low, refs, parsed, context):
        intent = _about_one(base, "details", refs, context, allow_description=True)
        # "is the navy blue shirt cotton?": the colour describes the product, not the ask.
        described = not intent.product_ids and not intent.missing
        fields, asked = asked_fields(low, ParsedQuery(text="") if described else parsed)
        return _with(intent, fields=fields, asked=asked)
    return _search_or_refine(base, low, refs, context, content)


def content_words(low: str, parsed: ParsedQuery) -> list[str]:
    """Words beyond the constraints read and the conversation's own words."""
    return [w for w in parsed.free_text.split()
            if w not in cues.CHATTER and w not in cues.ORDINALS and not w.isdigit()
            and not re.fullmatch(r"\d{1,2}(?:st|nd|rd|th)", w)]


def find_references(words: str, low: str, context: Context, parsed: ParsedQuery,
                    product_id: Callable[[str], str | None] | None = None, *,
                    bare_positions: bool = False) -> References:
    """The products a message points at: positions, typed ids and pronouns, in text order.

    Positions ("the second one", "#3", "the first two", "the last one") index the last
    list shown; a singular pronoun ("it", "that one") means the focus product; a plural
    one ("them", "both") the whole list. With ``bare_positions`` ("compare 1 and 3"),
    small bare numbers are positions too.
    """
    found: list[tuple[int, list[str], bool]] = []  # (offset, ids, explicit)
    taken: list[tuple[int, int]] = _price_spans(low, parsed)
    problems: list[str] = []

    def free(span: tuple[int, int]) -> bool:
        return not any(a < span[1] and span[0] < b for a, b in taken)

    def at(position: int, label: str) -> list[str]:
        pid = context.at(position)
        if pid is None:
            problems.append(label)
            return []
        return [pid]

    for m in cues.COUNTED.finditer(low):
        n = cues.COUNTS[m.group(2)]
        positions = range(-n, 0) if m.group(1) == "last" else range(1, n + 1)
        found.append((m.start(), [i for p in positions for i in at(p, m.group(0))], True))
        taken.append(m.span())
    for m in cues.NUMBERED.finditer(low):
        if not free(m.span()):
            continue
        token = m.group(1)
        if token.isdigit() and int(token) <= max(len(context.shown), 10):
            found.append((m.start(), at(int(token), m.group(0)), True))
            taken.append(m.span())
        elif product_id is not None and (pid := product_id(token)):
            found.append((m.start(), [pid], True))
            taken.append(m.span())
    for m in cues.ORDINAL.finditer(low):
        if not free(m.span()):
            continue
        word = m.group(1).replace("-", " ")
        position = cues.ORDINALS.get(word, 1 if word == "top" else None)
        if position is None:
            position = int(re.sub(r"\D", "", word))
        if word == "top" and not re.match(r"top\s+(?:one|pick|result|item)\b", low[m.start():]):
            continue
        found.append((m.start(), at(position, m.group(0)), True))
        taken.append(m.span())
    if product_id is not None:
        for m in cues.ID_TOKEN.finditer(words):
            token = m.group(0)
            if not free(m.span()) or (token.isdigit() and len(token) < 4):
                continue
            pid = product_id(token)
            if pid:
                found.append((m.start(), [pid], True))
                taken.append(m.span())
    if bare_positions:  # "compare 1 and 9" with five shown: say so, do not guess
        for m in cues.BARE_NUMBER.finditer(low):
            if free(m.span()) and 1 <= int(m.group(1)) <= 20:
                found.append((m.start(), at(int(m.group(1)), m.group(0)), True))
                taken.append(m.span())
    plural = False
    for m in cues.PLURAL.finditer(low):
        if free(m.span()):
            plural = True
            found.append((m.start(), list(context.shown[:MAX_COMPARED]), False))
            if not context.shown:
                problems.append(m.group(0))
    for m in cues.SINGULAR.finditer(low):
        if free(m.span()):
            focus = context.focus or (context.shown[0] if context.shown else None)
            found.append((m.start(), [focus] if focus else [], False))
            if focus is None:
                problems.append(m.group(0))
            break  # "is it ... it" names one product
    found.sort(key=lambda item: item[0])
    ids = tuple(dict.fromkeys(pid for _, pids, _ in found for pid in pids))
    explicit = any(e for _, _, e in found)
    unresolved = None
    if problems:
        unresolved = (f"only {len(context.shown)} products are shown" if context.shown
                      else "no products have been shown yet")
    return References(ids, explicit, plural, unresolved)


def asked_fields(low: str, parsed: ParsedQuery
                 ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The catalog fields a question asks about, and the (field, value) pairs it asks
    about ("is it red?" -> colour, (colour, Red)), in the order they are named."""
    hits: list[tuple[int, str, str | None]] = []
    phrases = set()
    for match in parsed.matches:
        if match.key in ("colour", "gender", "season", "usage") and not match.negated:
            m = re.search(rf"\b{re.escape(match.phrase)}\b", low)
            hits.append((m.start() if m else len(low), match.key, match.values[0]))
            phrases.add(match.phrase)
    for name, words in cues.FIELD_WORDS.items():
        for word in words:
            for m in re.finditer(rf"\b{re.escape(word)}\b", low):
                value = word if word in cues.VALUE_WORDS and word not in phrases else None
                hits.append((m.start(), name, value))
    hits.sort(key=lambda h: h[0])
    fields = tuple(dict.fromkeys(name for _, name, _ in hits))
    asked = tuple(dict.fromkeys((name, v) for _, name, v in hits if v))
    return fields, asked


# -- the decisions --------------------------------------------------------------------------


def _with(intent: Intent, **changes: Any) -> Intent:
    return replace(intent, **changes)


def _price_spans(low: str, parsed: ParsedQuery) -> list[tuple[int, int]]:
    spans = []
    for match in parsed.matches:
        if match.key == "price":
            start = low.find(match.phrase)
            if start >= 0:
                spans.append((start, start + len(match.phrase)))
    return spans


def _compare(base: Intent, refs: References, context: Context) -> Intent:
    ids = list(refs.ids)
    if len(ids) < 2 and not refs.unresolved:
        extra = [i for i in context.shown if i not in ids]
        ids += extra[:max(0, MAX_COMPARED - len(ids))] if not ids else extra[:1]
    if re.search(r"\bthe two\b|\bboth\b", base.text.lower()):
        ids = ids[:2]
    missing = refs.unresolved
    if len(ids) < 2 and missing is None:
        missing = ("no products have been shown yet" if not context.shown
                   else "compare needs two products")
    return _with(base, kind="compare", product_ids=tuple(ids[:MAX_COMPARED]), missing=missing)


def _about_one(base: Intent, kind: str, refs: References, context: Context, *,
               allow_description: bool) -> Intent:
    """An intent about one product: the one named, else the focus, else (when the words
    describe a product, "what goes with blue jeans?") none: the planner searches first."""
    if refs.ids:
        return _with(base, kind=kind, product_ids=refs.ids[:3], missing=refs.unresolved)
    described = any(m.key in ("category", "subcategory") for m in base.parsed.matches)
    if allow_description and described:
        return _with(base, kind=kind)
    if refs.unresolved:
        return _with(base, kind=kind, missing=refs.unresolved)
    focus = context.focus or (context.shown[0] if context.shown else None)
    if focus is None:
        return _with(base, kind=kind, missing="no products have been shown yet")
    return _with(base, kind=kind, product_ids=(focus,))


def _is_details_question(low: str, refs: References, parsed: ParsedQuery,
                         context: Context) -> bool:
    if cues.SIMILAR.search(low) or cues.CHEAPER.search(low):
        return False
    if cues.REFINE.search(low):
        # "does it come in black?" asks for other products; "does it come in cotton?"
        # asks about a field the catalog has no filter for.
        _, asked = asked_fields(low, parsed)
        if parsed.matches or not any(f == "material" for f, _ in asked):
            return False
        return bool(refs.ids or refs.unresolved or context.focus)
    if cues.DETAILS_ALL.search(low) and (refs.ids or refs.unresolved or context.shown):
        return True
    if not cues.QUESTION.search(low):
        return False
    fields, _ = asked_fields(low, parsed)
    if not fields:
        return False
    if refs.ids or refs.unresolved:
        return True
    # "how much?", "what material?": about the product in focus, unless the words
    # describe products to find ("do you have red dresses?"); "is the linen shirt for
    # summer?" names one product by its description (found by a search first).
    describes = any(m.key in ("category", "subcategory") for m in parsed.matches)
    if describes:
        return bool(re.match(r"(?:is|are|does|was) the\b", low))
    return bool(context.focus)


def _relative_bounds(low: str, parsed: ParsedQuery, refs: References, context: Context
                     ) -> tuple[str | None, float | None, float | None]:
    """"cheaper" / "pricier": the bound below (above) the product named, or below the
    cheapest (above the dearest) shown for "cheaper ones"; none when the words name a
    price themselves."""
    has_price = any(m.key == "price" for m in parsed.matches)
    cheaper = bool(cues.CHEAPER.search(low))
    pricier = bool(cues.PRICIER.search(low))
    if has_price or cheaper == pricier:
        return None, None, None
    relative = "cheaper" if cheaper else "pricier"
    one = bool(refs.ids) and (refs.explicit or not refs.plural) and \
        not re.search(r"\bones\b", low)
    prices = [context.price(refs.ids[0])] if one else list(context.shown_prices())
    known = [p for p in prices if p is not None]
    if not known:
        return relative, None, None
    if cheaper:
        return relative, None, round(min(known) - 0.01, 2)
    return relative, round(max(known) + 0.01, 2), None


def _search_or_refine(base: Intent, low: str, refs: References, context: Context,
                      content: list[str]) -> Intent:
    parsed = base.parsed
    keys = {m.key for m in parsed.matches}
    relative, low_bound, high_bound = _relative_bounds(low, parsed, refs, context)
    bounds = {"relative": relative, "price_min": low_bound, "price_max": high_bound}
    similar = bool(cues.SIMILAR.search(low))
    strong = bool(cues.REFINE.search(low))
    other_colours = bool(re.search(r"\b(?:other|different|more) colou?rs?\b", low))
    has_context = bool(context.shown or context.last_search)
    new_category = bool(keys & {"category", "subcategory"})
    changes = bool(keys or relative or other_colours)
    named = bool(refs.ids) and (refs.explicit or (not refs.plural and not new_category))
    if named:
        if similar and not changes:
            return _with(base, kind="similar", product_ids=refs.ids[:1])
        if changes:
            return _with(base, kind="refine", product_ids=refs.ids[:1], anchored=True,
                         other_colours=other_colours, **bounds)
        if refs.explicit and not content:  # "the second one": what is it?
            return _with(base, kind="details", product_ids=refs.ids[:3])
    if similar and not new_category:
        focus = context.focus or (context.shown[0] if context.shown else None)
        if changes and focus and not refs.unresolved:
            return _with(base, kind="refine", product_ids=(focus,), anchored=True,
                         other_colours=other_colours, **bounds)
        return _about_one(base, "similar", refs, context, allow_description=False)
    if refs.unresolved and (relative or strong):
        return _with(base, kind="refine", missing=refs.unresolved)
    if relative and has_context and low_bound is None and high_bound is None:
        return _with(base, kind="refine", relative=relative,
                     missing="the products shown have no price in the catalog")
    leading = bool(cues.LEADING_REFINE.match(low))
    if has_context and not new_category and (relative or other_colours or leading
                                             or (keys and not content)):
        return _with(base, kind="refine", other_colours=other_colours, **bounds)
    if has_context and strong and (keys or content):
        return _with(base, kind="refine", other_colours=other_colours, **bounds)
    return base
