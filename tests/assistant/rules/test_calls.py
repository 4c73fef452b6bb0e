"""From intents to tool arguments: searches, refinements that rewrite the last query, and
the follow-up call on a search's top hit."""

from __future__ import annotations

from typing import Any

import pytest

from assistant.rules.calls import (
    PlannedCall,
    anchor_text,
    clean_query,
    first_calls,
    next_calls,
)
from assistant.rules.intent import parse_intent
from assistant.rules.state import Context, ToolOutcome
from retrieval.catalog import Product
from retrieval.query import QueryParser

PRODUCTS = {
    "P1": Product(product_id="P1", title="Blue Jeans One", category="Jeans", price=900.0,
                  currency="INR", attributes={"colour": "Blue", "gender": "Women"}),
    "P2": Product(product_id="P2", title="Blue Jeans Two", category="Jeans", price=700.0,
                  currency="INR", attributes={"colour": "Blue", "gender": "Women"}),
    "P3": Product(product_id="P3", title="Black Heels", category="Heels", price=1200.0,
                  currency="INR", attributes={"colour": "Black", "gender": "Women"}),
}


class Catalog:
    def __init__(self, parser: QueryParser) -> None:
        self.parser = parser

    def product(self, product_id: str) -> Product:
        return PRODUCTS[product_id]


def after(tool: str, args: dict[str, Any], ids: tuple[str, ...] = ("P1", "P2", "P3")
          ) -> Context:
    results = [{"id": i, "price": PRODUCTS[i].price, "category": PRODUCTS[i].category,
                **PRODUCTS[i].attributes} for i in ids]
    return Context(shown=ids, focus=ids[0], products={r["id"]: r for r in results},
                   last_search=ToolOutcome("c1", tool, args, {"results": results}))


def plan(parser: QueryParser, text: str, context: Context | None = None) -> list[PlannedCall]:
    intent = parse_intent(text, parser=parser, context=context)
    return first_calls(intent, context or Context(), Catalog(parser))


def read_back(parser: QueryParser, call: PlannedCall) -> dict[str, Any]:
    """What the engine would apply: constraints read from the words, explicit ones over."""
    words = call.args.get("query") or call.args.get("refine") or ""
    filters = parser.parse(words).filters
    explicit = call.args.get("filters", {})
    return {**{k: v for k, v in filters.include.items()},
            **{f"not {k}": v for k, v in filters.exclude.items()},
            "price_min": explicit.get("price_min", filters.price_min),
            "price_max": explicit.get("price_max", filters.price_max)}


@pytest.mark.parametrize(("text", "query"), [
    ("can you show me red dresses for women please?", "red dresses for women"),
    ("Hi, I'm looking for a black watch", "black watch"),
    ("do you have any white shoes?", "white shoes"),
    ("show me", "show me"),  # nothing else: the words as they are
    ("Please find me some sneakers!", "sneakers"),
])
def test_clean_query(text: str, query: str) -> None:
    assert clean_query(text) == query


def test_a_text_search_passes_the_words(parser: QueryParser) -> None:
    (call,) = plan(parser, "Can you show me a red dress for women under 1500?")
    assert call == PlannedCall("text_search", {"query": "red dress for women under 1500",
                                               "k": 5})


def test_a_photo_search_per_photo(parser: QueryParser) -> None:
    (call,) = plan(parser, "like this but in black please\n[photo: upload-1]")
    assert call == PlannedCall("visual_search", {"upload_id": "upload-1", "refine": "black",
                                                 "k": 5})
    calls = plan(parser, "[photo: upload-1]\n[photo: upload-2]")
    assert [c.args for c in calls] == [{"upload_id": "upload-1", "k": 3},
                                       {"upload_id": "upload-2", "k": 3}]


@pytest.mark.parametrize(("text", "applied"), [
    ("in black", {"colour": ("Black",), "category": ("Jeans",), "gender": ("Women",),
                  "price_min": None, "price_max": 1500}),
    ("for men", {"colour": ("Blue",), "category": ("Jeans",), "gender": ("Men",),
                 "price_min": None, "price_max": 1500}),
    ("under 800 instead", {"colour": ("Blue",), "category": ("Jeans",),
                           "gender": ("Women",), "price_min": None, "price_max": 800}),
    ("not blue", {"category": ("Jeans",), "gender": ("Women",), "not colour": ("Blue",),
                  "price_min": None, "price_max": 1500}),
    ("what about shirts?", {"colour": ("Blue",), "category": ("Shirts",),
                            "gender": ("Women",), "price_min": None, "price_max": 1500}),
    ("cheaper", {"colour": ("Blue",), "category": ("Jeans",), "gender": ("Women",),
                 "price_min": None, "price_max": 699.99}),
])
def test_refinements_rewrite_the_last_query(parser: QueryParser, text: str,
                                            applied: dict) -> None:
    context = after("text_search", {"query": "blue jeans for women under 1500", "k": 5})
    (call,) = plan(parser, text, context)
    assert call.name == "text_search"
    assert read_back(parser, call) == applied


def test_refining_a_photo_search_searches_the_photo_again(parser: QueryParser) -> None:
    context = after("visual_search", {"upload_id": "upload-2", "refine": "red", "k": 5})
    (call,) = plan(parser, "in blue, under 1000", context)
    assert call.name == "visual_search"
    assert call.args["upload_id"] == "upload-2"
    assert read_back(parser, call) == {"colour": ("Blue",), "price_min": None,
                                       "price_max": 1000}


def test_a_refinement_of_one_product_starts_from_it(parser: QueryParser) -> None:
    context = after("text_search", {"query": "jeans", "k": 5})
    (call,) = plan(parser, "like the second one but cheaper", context)
    assert read_back(parser, call) == {"colour": ("Blue",), "category": ("Jeans",),
                                       "gender": ("Women",), "price_min": None,
                                       "price_max": 699.99}
    (call,) = plan(parser, "does the third one come in other colours?", context)
    assert read_back(parser, call) == {"category": ("Heels",), "gender": ("Women",),
                                       "not colour": ("Black",), "price_min": None,
                                       "price_max": None}


def test_anchor_text_reads_back_as_the_products_constraints(parser: QueryParser) -> None:
    facts = {"title": "X", "category": "Track Pants", "colour": "Navy Blue", "gender": "Men"}
    assert anchor_text(facts) == "Navy Blue Track Pants for Men"
    assert dict(parser.parse(anchor_text(facts)).filters.include) == {
        "colour": ("Navy Blue",), "category": ("Track Pants",), "gender": ("Men",)}


@pytest.mark.parametrize(("text", "call"), [
    ("more like the second one", PlannedCall("recommend", {"product_id": "P2",
                                                           "mode": "similar", "k": 5})),
    ("what goes with it?", PlannedCall("recommend", {"product_id": "P1",
                                                     "mode": "complementary", "k": 5})),
    ("what shoes go with the third one?", PlannedCall("text_search", {
        "query": "shoes for Women", "k": 5})),
    ("is the second one cotton?", PlannedCall("product_details", {"product_id": "P2"})),
    ("compare 1 and 3", PlannedCall("compare", {"product_ids": ["P1", "P3"]})),
])
def test_one_call_intents(parser: QueryParser, text: str, call: PlannedCall) -> None:
    context = after("text_search", {"query": "jeans", "k": 5})
    assert plan(parser, text, context) == [call]


def test_small_talk_and_missing_references_plan_no_call(parser: QueryParser) -> None:
    assert plan(parser, "hi") == []
    assert plan(parser, "compare the first two") == []  # nothing shown yet


def _searched(ids: list[str], tool: str = "text_search") -> list[list[ToolOutcome]]:
    results = [{"id": i, **PRODUCTS[i].attributes} for i in ids]
    return [[ToolOutcome("c1", tool, {}, {"results": results})]]


def test_a_described_product_is_searched_then_acted_on(parser: QueryParser) -> None:
    catalog = Catalog(parser)
    goes = parse_intent("what goes with blue jeans?", parser=parser)
    assert first_calls(goes, Context(), catalog) == [
        PlannedCall("text_search", {"query": "blue jeans", "k": 3})]
    assert next_calls(goes, _searched(["P1", "P2"]), catalog) == [
        PlannedCall("recommend", {"product_id": "P1", "mode": "complementary", "k": 5})]
    shoes = parse_intent("what shoes go with a black dress?", parser=parser)
    assert first_calls(shoes, Context(), catalog)[0].args["query"] == "black dress"
    assert next_calls(shoes, _searched(["P3"]), catalog) == [
        PlannedCall("text_search", {"query": "shoes for Women", "k": 5})]
    question = parse_intent("is the blue jeans for women cotton?", parser=parser)
    assert next_calls(question, _searched(["P2"]), catalog) == [
        PlannedCall("product_details", {"product_id": "P2"})]
    assert next_calls(question, _searched([]), catalog) == []  # nothing found: answer
    photo = parse_intent("what goes with this?\n[photo: upload-1]", parser=parser)
    assert first_calls(photo, Context(), catalog) == [
        PlannedCall("visual_search", {"upload_id": "upload-1", "k": 3})]
