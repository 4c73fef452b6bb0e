"""Templated answers: lists with why, relaxed and empty results, cited catalog fields,
comparisons, plain text only, and wording a shop can change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from assistant.rules.answers import compose, field_answer, plain
from assistant.rules.intent import Intent, parse_intent
from assistant.rules.state import Context, ToolOutcome
from retrieval.query import QueryParser

JEANS = {"id": "P13", "title": "Blue Jeans for Women 13", "category": "Jeans", "price": 1299.0,
         "currency": "INR", "in_stock": True, "colour": "Blue", "gender": "Women",
         "why": ["matches the words (0.61)", "colour: Blue", "category: Jeans",
                 "gender: Women"]}


def listing(tool: str, args: dict[str, Any], results: list[dict[str, Any]],
            **extra: Any) -> list[list[ToolOutcome]]:
    artifact = {"results": results, "count": len(results), **extra}
    return [[ToolOutcome("c1", tool, args, artifact)]]


def details(product: dict[str, Any]) -> list[list[ToolOutcome]]:
    fields = sorted(k for k, v in product.items() if v not in (None, ""))
    return [[ToolOutcome("c1", "product_details", {"product_id": product["id"]},
                         {"product": product, "fields": fields})]]


def ask(parser: QueryParser, text: str) -> Intent:
    context = Context(shown=("P13",), focus="P13", products={"P13": JEANS})
    return parse_intent(text, parser=parser, context=context)


def test_a_list_leads_then_lists_title_price_id_and_why(parser: QueryParser) -> None:
    intent = parse_intent("blue jeans for women", parser=parser)
    batches = listing("text_search", {"query": "blue jeans for women"}, [JEANS],
                      filters=["colour: Blue", "category: Jeans", "gender: Women"])
    answer = compose(intent, Context(), batches, parser)
    assert answer.splitlines() == [
        'Top 1 for "blue jeans for women" (colour: Blue, category: Jeans, gender: Women):',
        "1. Blue Jeans for Women 13 — 1,299 INR (P13) — matches the words (0.61); "
        "colour: Blue; category: Jeans"]


def test_at_most_five_products_are_listed(parser: QueryParser) -> None:
    results = [dict(JEANS, id=f"P{i}", why=[]) for i in range(8)]
    answer = compose(parse_intent("jeans", parser=parser), Context(),
                     listing("text_search", {"query": "jeans"}, results), parser)
    assert len(answer.splitlines()) == 1 + 5
    assert answer.splitlines()[-1] == "5. Blue Jeans for Women 13 — 1,299 INR (P4)"


def test_a_relaxed_constraint_is_said_plainly(parser: QueryParser) -> None:
    intent = parse_intent("red jeans for women", parser=parser)
    batches = listing("text_search", {"query": "red jeans for women"}, [JEANS],
                      filters=["category: Jeans", "gender: Women"], relaxed=["colour"])
    lead = compose(intent, Context(), batches, parser).splitlines()[0]
    assert lead == ('Nothing matched every constraint, so I left out "colour: Red". The 1 '
                    'closest (category: Jeans, gender: Women):')


def test_no_results_suggest_relaxing_one_constraint(parser: QueryParser) -> None:
    intent = parse_intent("red jeans under 100", parser=parser)
    batches = listing("text_search", {"query": "red jeans"}, [],
                      filters=["category: Jeans", "colour: Red", "price ≤ 100"])
    assert compose(intent, Context(), batches, parser) == (
        'No product matched (category: Jeans, colour: Red, price ≤ 100). '
        'Try again without "colour: Red".')
    empty = listing("text_search", {"query": "zzz"}, [], filters=[])
    assert compose(intent, Context(), empty, parser).startswith("No product matched. ")


def test_cheaper_says_than_what(parser: QueryParser) -> None:
    context = Context(shown=("P13", "P14"), focus="P13",
                      products={"P13": JEANS, "P14": dict(JEANS, id="P14", price=999.0)})
    intent = parse_intent("the first one but cheaper", parser=parser, context=context)
    cheap = dict(JEANS, id="P20", price=899.0, why=[])
    answer = compose(intent, context, listing("text_search", {"query": "x"}, [cheap],
                                              filters=["price ≤ 1298.99"]), parser)
    assert answer.splitlines()[0] == (
        "Top 1 cheaper than Blue Jeans for Women 13 (P13) at 1,299 INR (price ≤ 1298.99):")
    intent = parse_intent("cheaper ones", parser=parser, context=context)
    answer = compose(intent, context, listing("text_search", {"query": "x"}, [cheap]), parser)
    assert answer.splitlines()[0] == "Top 1 cheaper than the ones shown (999 INR):"


def test_recommendations_name_what_they_go_with(parser: QueryParser) -> None:
    intent = ask(parser, "what goes with it?")
    belt = {"id": "P40", "title": "Brown Belt", "price": 499.0, "currency": "INR",
            "why": ["goes with Blue Jeans for Women 13", "category: Belts"]}
    batches = listing("recommend", {"product_id": "P13", "mode": "complementary"}, [belt],
                      **{"for": JEANS})
    assert compose(intent, Context(), batches, parser).splitlines()[0] == \
        "These go with Blue Jeans for Women 13 (P13):"


# -- product questions --------------------------------------------------------------------------


def test_a_field_present_is_cited(parser: QueryParser) -> None:
    product = dict(JEANS, material="Cotton")
    answer = compose(ask(parser, "is it cotton?"), Context(), details(product), parser)
    assert answer == ("Blue Jeans for Women 13 (P13):\n"
                      "Yes — material: Cotton (catalog field 'material')")
    answer = compose(ask(parser, "is it silk?"), Context(), details(product), parser)
    assert answer.endswith("No — material: Cotton (catalog field 'material')")
    answer = compose(ask(parser, "is it for men?"), Context(), details(product), parser)
    assert answer.endswith("No — gender: Women (catalog field 'gender')")  # not "wo-men"


def test_a_field_absent_is_not_in_the_catalog(parser: QueryParser) -> None:
    answer = compose(ask(parser, "is it cotton?"), Context(), details(JEANS), parser)
    assert answer.splitlines()[1] == ("That is not in the catalog: Blue Jeans for Women 13 "
                                      "(P13) has no 'material' field.")
    assert "Cotton" not in answer and "Yes" not in answer and "No —" not in answer


@pytest.mark.parametrize(("question", "line"), [
    ("how much is it?", "price: 1,299 INR (catalog field 'price')"),
    ("is it in stock?", "Yes — in_stock: yes (catalog field 'in_stock')"),
    ("what colour is it", "colour: Blue (catalog field 'colour')"),
    ("is it for men or women?", "gender: Women (catalog field 'gender')"),
    ("is it good for winter?", "The catalog says season: Fall (catalog field 'season')"),
    ("what size is it?", "That is not in the catalog: Blue Jeans for Women 13 (P13) has no "
                         "'size' field."),
])
def test_questions_are_answered_from_fields(parser: QueryParser, question: str,
                                            line: str) -> None:
    product = dict(JEANS, season="Fall")
    answer = compose(ask(parser, question), Context(), details(product), parser)
    assert answer.splitlines()[1:] == [line]


def test_synthetic_prices_are_flagged() -> None:
    product = dict(JEANS, price_source="synthetic")
    assert field_answer(product, "price") == (
        "price: 1,299 INR (catalog field 'price') (a demo price: the catalog marks it "
        "synthetic)")


def test_every_field_when_no_field_is_asked(parser: QueryParser) -> None:
    answer = compose(ask(parser, "tell me more about it"), Context(),
                     details(dict(JEANS, description="Soft <b>stretch</b> denim.")), parser)
    lines = answer.splitlines()
    assert "colour: Blue (catalog field 'colour')" in lines
    assert "in_stock: yes (catalog field 'in_stock')" in lines  # listed, not asked
    assert lines[-1] == "description: Soft stretch denim. (catalog field 'description')"


# -- compare, errors, safety, wording -----------------------------------------------------------


def test_compare_lists_differences_then_what_is_shared(parser: QueryParser) -> None:
    context = Context(shown=("P13", "P14"), products={"P13": JEANS})
    intent = parse_intent("which one is cheaper, the first or the second?", parser=parser,
                          context=context)
    artifact = {"products": [{"id": "P13", "title": "Jeans A"}, {"id": "P14", "title": "Jeans B"}],
                "differences": {"price": [1299.0, 999.0], "colour": ["Blue", "Black"]},
                "in_common": {"category": "Jeans", "currency": "INR", "gender": "Women"}}
    batches = [[ToolOutcome("c1", "compare", {"product_ids": ["P13", "P14"]}, artifact)]]
    assert compose(intent, context, batches, parser).splitlines() == [
        "Comparing Jeans A (P13) and Jeans B (P14):",
        "- price: 1,299 INR vs 999 INR",
        "- colour: Blue vs Black",
        "In common: category: Jeans; gender: Women.",
        "Cheapest: Jeans B (P14) at 999 INR."]


def test_a_failed_tool_is_reported(parser: QueryParser) -> None:
    batches = [[ToolOutcome("c1", "text_search", {}, None,
                            "Error: The catalog has no colour 'Rde'. <b>Did you mean Red?</b>")]]
    answer = compose(parse_intent("rde dress", parser=parser), Context(), batches, parser)
    assert answer == "I could not do that: The catalog has no colour 'Rde'. Did you mean Red?"


def test_why_keeps_the_best_positive_reason_and_the_constraints(parser: QueryParser) -> None:
    row = dict(JEANS, why=["matches the words (0.52)", "looks like the photo (-0.20)",
                           "colour: Blue", "category: Jeans"])
    answer = compose(parse_intent("jeans", parser=parser), Context(),
                     listing("text_search", {"query": "jeans"}, [row]), parser)
    assert answer.splitlines()[1].endswith(
        "(P13) — matches the words (0.52); colour: Blue; category: Jeans")
    row = dict(JEANS, why=["looks like the photo (-0.20)", "goes with X", "category: Jeans"],
               in_stock=False)
    answer = compose(parse_intent("jeans", parser=parser), Context(),
                     listing("text_search", {"query": "jeans"}, [row]), parser)
    assert answer.splitlines()[1].endswith("(P13) — category: Jeans; out of stock")


def test_catalog_text_is_never_markup(parser: QueryParser) -> None:
    evil = dict(JEANS, title='<img src=x onerror="alert(1)">Jeans <script>x()</script>',
                why=["<a href='http://evil'>click</a>"])
    answer = compose(parse_intent("jeans", parser=parser), Context(),
                     listing("text_search", {"query": "jeans"}, [evil]), parser)
    assert "<" not in answer and ">" not in answer
    assert plain("a <b>bold</b>   move", 100) == "a bold move"


@pytest.mark.parametrize(("text", "start"), [
    ("hi", "Hello!"), ("help", "I find products"), ("what's the weather", "I can only help"),
])
def test_small_talk_answers(parser: QueryParser, text: str, start: str) -> None:
    assert compose(parse_intent(text, parser=parser), Context(), [], parser).startswith(start)


def test_unresolved_references_ask_which_product(parser: QueryParser) -> None:
    intent = parse_intent("compare the first two", parser=parser)
    assert compose(intent, Context(), [], parser) == (
        'Which product do you mean? No products have been shown yet. Search first, then '
        'say "the second one" or give the product id.')


def test_a_shop_can_reword_the_answers(parser: QueryParser, tmp_prompts: Path) -> None:
    (tmp_prompts / "rules" / "field.md").write_text("{field} = {value} [from the catalog]\n")
    product = dict(JEANS, material="Cotton")
    answer = compose(ask(parser, "what material is it?"), Context(), details(product), parser)
    assert answer.splitlines()[1] == "material = Cotton [from the catalog]"
