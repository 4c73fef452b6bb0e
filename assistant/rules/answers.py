"""Templated answers from tool results, in plain text.

A one-sentence lead, then at most five products as "title — price currency (id)" with why
each matched; a relaxed constraint is said plainly, an empty result suggests which
constraint to drop. Product questions are answered only from the fields ``product_details``
returned, each fact citing its field, and "That is not in the catalog" when the field is
absent. The wording lives in ``prompts/rules/*.md`` (a shop can reword it); catalog text is
data: tags are stripped and nothing from it is ever read as markup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from assistant.prompts import load_prompt
from assistant.rules.intent import Intent
from assistant.rules.state import Context, ToolOutcome
from retrieval.query import QueryParser
from retrieval.search import RELAX_ORDER

MAX_LISTED = 5
MAX_WHY = 3
_TAG = re.compile(r"<[^>]*>")
_SCORED = re.compile(r"\((-?\d+(?:\.\d+)?)\)$")  # "matches the words (0.61)"
_HIDDEN_FIELDS = ("id", "title", "description", "price_source", "currency")
_SOFT_FIELDS = ("season", "usage")
# Question words -> the catalog values they mean, for yes / no answers.
_MEANS = {"autumn": "fall", "office": "formal", "work": "formal", "gym": "sports",
          "everyday": "casual", "daily wear": "casual", "festive": "ethnic",
          "woollen": "wool", "woolen": "wool"}


def compose(intent: Intent, context: Context, batches: Sequence[Sequence[ToolOutcome]],
            parser: QueryParser) -> str:
    """The final answer of a turn.

    Args:
        intent: What the shopper asked.
        context: The conversation before this turn (for references' names and prices).
        batches: This turn's tool outcomes, batch by batch.
        parser: The catalog's query parser (to say which constraint was relaxed).

    Returns:
        Plain text, no HTML.
    """
    if intent.kind in ("greeting", "help", "out_of_scope"):
        return load_prompt(f"rules/{intent.kind}")
    if intent.missing:
        return load_prompt("rules/missing_reference", reason=_sentence(intent.missing))
    outcomes = [o for batch in batches for o in batch]
    failed = next((o for o in outcomes if not o.ok), None)
    if failed is not None:
        error = re.sub(r"^error:\s*", "", failed.error or "", flags=re.IGNORECASE)
        return load_prompt("rules/tool_error", error=plain(error, 300))
    if not outcomes:
        return load_prompt("rules/help")
    last = list(batches[-1])
    if intent.kind == "details":
        found_by_search = len(batches) > 1 or last[0].name != "product_details"
        return details_answer(intent, last, found_by_search=found_by_search)
    if intent.kind == "compare":
        return compare_answer(intent, last[0].artifact or {})
    anchor = None
    if intent.kind == "goes_with":
        if intent.product_ids:
            anchor = context.products.get(intent.product_ids[0], {"id": intent.product_ids[0]})
        elif len(batches) > 1:
            anchor = next((r for o in batches[0] for r in (o.artifact or {}).get("results", [])),
                          None)
    return listing_answer(intent, context, last, parser, anchor=anchor)


# -- product lists ---------------------------------------------------------------------------


def listing_answer(intent: Intent, context: Context, outcomes: Sequence[ToolOutcome],
                   parser: QueryParser, *, anchor: Mapping[str, Any] | None = None) -> str:
    """Lead plus the products of one batch of search / recommend results.

    Args:
        anchor: For "what goes with it?", the product the results go with.
    """
    results = [r for o in outcomes for r in (o.artifact or {}).get("results", [])]
    first = outcomes[0]
    artifact = first.artifact or {}
    chips = list(artifact.get("filters", []))
    constraints = f" ({', '.join(chips)})" if chips else ""
    if not results:
        return _empty_answer(intent, first, chips)
    count = min(len(results), MAX_LISTED)
    relaxed = list(artifact.get("relaxed", []))
    if relaxed:
        lead = load_prompt("rules/lead_relaxed", count=str(count), constraints=constraints,
                           dropped=_dropped(first, relaxed, parser))
    elif first.name == "recommend":
        anchor = artifact.get("for") or {"id": first.arguments.get("product_id", "")}
        name = "lead_goes_with" if first.arguments.get("mode") == "complementary" \
            else "lead_similar"
        lead = load_prompt(f"rules/{name}", count=str(count), reference=_name(anchor))
    elif anchor is not None:
        lead = load_prompt("rules/lead_goes_with", count=str(count), reference=_name(anchor))
    elif intent.kind == "refine" and intent.relative in ("cheaper", "pricier"):
        lead = load_prompt(f"rules/lead_{intent.relative}", count=str(count),
                           constraints=constraints, reference=_relative_to(intent, context))
    elif first.name == "visual_search":
        photos = "your photo" if len(outcomes) == 1 else f"your {len(outcomes)} photos"
        lead = load_prompt("rules/lead_photo", count=str(count), photos=photos,
                           constraints=constraints)
    elif intent.kind == "search_text":
        lead = load_prompt("rules/lead_search", count=str(count), constraints=constraints,
                           query=plain(str(first.arguments.get("query", "")), 120))
    else:
        lead = load_prompt("rules/lead_refine", count=str(count), constraints=constraints)
    lines = [product_line(rank, r) for rank, r in enumerate(results[:MAX_LISTED], start=1)]
    return "\n".join([lead, *lines])


def product_line(rank: int, result: Mapping[str, Any]) -> str:
    """"1. title — price currency (id) — why": one listed product.

    Why: its best-matching modality when it scored above zero, then the constraints it
    meets; "goes with X" / "similar to X" is left to the lead.
    """
    why = [str(w) for w in result.get("why", [])]
    scored = [w for w in why if _SCORED.search(w)]
    facts = [w for w in why if not _SCORED.search(w)
             and not w.startswith(("goes with ", "similar to "))]
    best = [w for w in scored[:1] if float(_SCORED.search(w).group(1)) > 0]  # type: ignore[union-attr]
    reasons = [plain(w, 60) for w in [*best, *facts][:MAX_WHY]]
    if result.get("in_stock") is False:
        reasons.append("out of stock")
    why = f" — {'; '.join(reasons)}" if reasons else ""
    return load_prompt("rules/product_line", rank=str(rank),
                       title=plain(str(result.get("title", "")), 120),
                       price=price_text(result), id=str(result.get("id", "")), why=why)


def _empty_answer(intent: Intent, outcome: ToolOutcome, chips: list[str]) -> str:
    if outcome.name == "recommend":
        anchor = (outcome.artifact or {}).get("for") or \
            {"id": outcome.arguments.get("product_id", "")}
        return load_prompt("rules/no_complements", reference=_name(anchor))
    if not chips:
        return load_prompt("rules/no_results_open")
    keys = [_chip_key(c) for c in chips]
    order = [k for k in RELAX_ORDER if k in keys] + keys
    suggestion = chips[keys.index(order[0])]
    return load_prompt("rules/no_results", constraints=f" ({', '.join(chips)})",
                       suggestion=f'"{suggestion}"')


def _dropped(outcome: ToolOutcome, relaxed: list[str], parser: QueryParser) -> str:
    words = str(outcome.arguments.get("query") or outcome.arguments.get("refine") or "")
    chips = parser.parse(words).filters.describe() if words else []
    named = [c for c in chips if _chip_key(c) in relaxed]
    return ", ".join(f'"{c}"' for c in named) or ", ".join(relaxed)


def _chip_key(chip: str) -> str:
    if chip.startswith("price"):
        return "price"
    if chip in ("in stock", "out of stock"):
        return "in_stock"
    return chip.split(":", 1)[0]


def _relative_to(intent: Intent, context: Context) -> str:
    bound = intent.price_max if intent.relative == "cheaper" else intent.price_min
    if intent.anchored and intent.product_ids:
        facts = context.products.get(intent.product_ids[0], {"id": intent.product_ids[0]})
        return f"{_name(facts)} at {price_text(facts)}"
    if bound is None:
        return "the ones shown"
    edge = bound + 0.01 if intent.relative == "cheaper" else bound - 0.01
    currency = next((str(context.products[i].get("currency", "")) for i in context.shown
                     if i in context.products), "")
    return f"the ones shown ({_money(edge, currency)})"


# -- product questions ---------------------------------------------------------------------


def details_answer(intent: Intent, outcomes: Sequence[ToolOutcome], *,
                   found_by_search: bool = False) -> str:
    """Answers a question about products from their ``product_details`` fields only."""
    blocks = []
    for outcome in outcomes:
        product = (outcome.artifact or {}).get("product") or {}
        lead = "rules/details_by_search" if found_by_search else "rules/details_lead"
        lines = [load_prompt(lead, reference=_name(product))]
        fields = intent.fields or tuple(k for k in product if k not in _HIDDEN_FIELDS)
        for name in fields:
            lines.append(field_answer(product, name, [v for f, v in intent.asked if f == name],
                                      question=bool(intent.fields)))
        if not intent.fields and product.get("description"):
            lines.append(_fact("description", plain(str(product["description"]), 300)))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def field_answer(product: Mapping[str, Any], name: str, asked: Sequence[str] = (), *,
                 question: bool = True) -> str:
    """One field of a product, cited; "not in the catalog" when the product lacks it.

    Args:
        product: The ``product`` of a ``product_details`` result.
        name: The field.
        asked: The values the question asks about ("is it cotton?": ``["cotton"]``).
        question: Whether the field was asked about (a yes / no on stock) or is listed.
    """
    value = product.get(name)
    if value is None or value == "":
        return load_prompt("rules/not_in_catalog", reference=_name(product), field=name)
    if name == "price":
        fact = _fact("price", price_text(product))
        if product.get("price_source") == "synthetic":
            fact = f"{fact} {load_prompt('rules/synthetic_price')}"
    elif name == "in_stock":
        fact = _fact("in_stock", "yes" if value else "no")
        if not question:
            return fact
        return load_prompt("rules/answer_yes" if value else "rules/answer_no", fact=fact)
    else:
        fact = _fact(name, plain(str(value), 200))
    if len(asked) != 1 or name == "price":  # "for men or women?" asks for the value
        return fact
    if _matches(str(value), asked[0]):
        return load_prompt("rules/answer_yes", fact=fact)
    if name in _SOFT_FIELDS:
        return load_prompt("rules/answer_says", fact=fact)
    return load_prompt("rules/answer_no", fact=fact)


def _matches(value: str, asked: str) -> bool:
    have, want = value.lower(), _MEANS.get(asked.lower(), asked.lower())
    if have == "unisex" and want in ("men", "women"):
        return True
    return bool(re.search(rf"\b{re.escape(want)}\b", have)
                or (len(have) > 2 and re.search(rf"\b{re.escape(have)}\b", want)))


def _fact(name: str, value: str) -> str:
    return load_prompt("rules/field", field=name, value=value)


# -- comparisons ---------------------------------------------------------------------------


def compare_answer(intent: Intent, artifact: Mapping[str, Any]) -> str:
    """The fields where the compared products differ, then what they share."""
    products = list(artifact.get("products", []))
    names = [_name(p) for p in products]
    joined = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
    lines = [load_prompt("rules/compare_lead", names=joined)]
    differences: Mapping[str, Sequence[Any]] = artifact.get("differences", {})
    currency = artifact.get("in_common", {}).get("currency", "")
    for key, values in differences.items():
        if key in ("description", "price_source"):
            continue
        shown = [_money(v, currency) if key == "price" and isinstance(v, int | float)
                 else ("—" if v in (None, "") else _value(v)) for v in values]
        lines.append(load_prompt("rules/compare_line", field=key, values=" vs ".join(shown)))
    common = [f"{k}: {_value(v)}" for k, v in artifact.get("in_common", {}).items()
              if k not in ("description", "price_source", "currency") and v not in (None, "")]
    if common:
        lines.append(load_prompt("rules/compare_common", facts="; ".join(common)))
    prices = list(differences.get("price", []))
    if re.search(r"\bcheap|\bbudget|\bafford|\bless expensive", intent.text.lower()) and \
            prices and all(isinstance(p, int | float) for p in prices):
        best = min(range(len(prices)), key=lambda i: prices[i])
        reference = f"{names[best]} at {_money(prices[best], currency)}"
        lines.append(load_prompt("rules/compare_cheapest", reference=reference))
    return "\n".join(lines)


# -- text ------------------------------------------------------------------------------------


def plain(text: str, limit: int = 200) -> str:
    """Catalog or tool text made safe to show: tags stripped, whitespace folded, cut."""
    text = " ".join(_TAG.sub(" ", text).replace("<", " ").replace(">", " ").split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def price_text(product: Mapping[str, Any]) -> str:
    price = product.get("price")
    if not isinstance(price, int | float):
        return "price not in the catalog"
    return _money(price, str(product.get("currency", "")))


def _money(value: float, currency: str = "") -> str:
    amount = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return f"{amount} {currency}".strip()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return plain(str(value), 60)


def _name(product: Mapping[str, Any]) -> str:
    title = plain(str(product.get("title", "")), 100)
    pid = str(product.get("id", ""))
    return f"{title} ({pid})" if title else pid


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
