"""Reading filters, boosts and prices out of a shopper's words, in the catalog's vocabulary."""

from __future__ import annotations

import pytest

from retrieval.filters import ColumnTable, Filters
from retrieval.query import Match, QueryParser, Vocabulary

FASHION = {
    "colour": ["Red", "Navy Blue", "Blue", "Black", "White", "Grey", "Off White", "Maroon",
               "Cream"],
    "gender": ["Men", "Women", "Boys", "Girls", "Unisex"],
    "category": ["Tshirts", "Shirts", "Dresses", "Jeans", "Casual Shoes", "Sports Shoes",
                 "Formal Shoes", "Heels", "Watches", "Handbags", "Track Pants", "Trousers"],
    "subcategory": ["Shoes", "Topwear"],
    "usage": ["Casual", "Formal", "Sports", "Party"],
    "season": ["Summer", "Winter", "Fall"],
}


@pytest.fixture(scope="module")
def parser() -> QueryParser:
    return QueryParser(Vocabulary(FASHION))


def parse(parser: QueryParser, text: str) -> tuple[Filters, dict[str, tuple[str, ...]], str]:
    parsed = parser.parse(text)
    return parsed.filters, dict(parsed.boosts), parsed.text


def test_the_headline_example(parser: QueryParser) -> None:
    filters, boosts, text = parse(parser, "red dress for women under 1500")
    assert filters == Filters(include={"colour": ("Red",), "category": ("Dresses",),
                                       "gender": ("Women",)}, price_max=1500.0)
    assert boosts == {}
    assert text == "red dress for women"  # the price phrase is gone, the words stay


@pytest.mark.parametrize(("text", "include"), [
    ("navy blue t-shirt", {"colour": ("Navy Blue",), "category": ("Tshirts",)}),
    ("navy shirt", {"colour": ("Navy Blue",), "category": ("Shirts",)}),
    ("blue shirt", {"colour": ("Blue",), "category": ("Shirts",)}),
    ("off white shirt", {"colour": ("Off White",), "category": ("Shirts",)}),
    ("offwhite tee", {"colour": ("Off White",), "category": ("Tshirts",)}),
    ("RED DRESS", {"colour": ("Red",), "category": ("Dresses",)}),
    ("red dresses", {"colour": ("Red",), "category": ("Dresses",)}),
    ("a watch", {"category": ("Watches",)}),
    ("t shirt for boys", {"category": ("Tshirts",), "gender": ("Boys",)}),
    ("tshirts", {"category": ("Tshirts",)}),
    ("track pants", {"category": ("Track Pants",)}),
    ("pants", {"category": ("Track Pants", "Trousers")}),
    ("sports shoes", {"category": ("Sports Shoes",)}),
    ("sportsshoes", {"category": ("Sports Shoes",)}),
    ("formal shoes", {"category": ("Formal Shoes",)}),
    ("shoes for men", {"subcategory": ("Shoes",), "gender": ("Men",)}),
    ("shoe", {"subcategory": ("Shoes",)}),
    ("red or blue shirt", {"colour": ("Red", "Blue"), "category": ("Shirts",)}),
    ("jeans for men and women", {"category": ("Jeans",), "gender": ("Men", "Women")}),
    ("dress,red", {"category": ("Dresses",), "colour": ("Red",)}),
])
def test_attributes(parser: QueryParser, text: str, include: dict) -> None:
    filters, _, _ = parse(parser, text)
    assert dict(filters.include) == include
    assert filters.exclude == {}


def test_longest_phrase_wins(parser: QueryParser) -> None:
    parsed = parser.parse("navy blue t-shirt")
    assert [(m.phrase, m.key, m.values) for m in parsed.matches] == [
        ("navy blue", "colour", ("Navy Blue",)), ("t-shirt", "category", ("Tshirts",))]


def test_sports_shoes_is_a_category_not_a_usage(parser: QueryParser) -> None:
    filters, boosts, _ = parse(parser, "sports shoes")
    assert filters.include == {"category": ("Sports Shoes",)}
    assert boosts == {}
    # "sports" alone is a usage, which only boosts.
    filters, boosts, _ = parse(parser, "sports")
    assert filters.is_empty()
    assert boosts == {"usage": ("Sports",)}


def test_category_wins_over_subcategory(parser: QueryParser) -> None:
    filters, _, _ = parse(parser, "shoes, sports shoes")
    assert filters.include == {"category": ("Sports Shoes",)}


def test_shoes_without_subcategory_means_every_shoe_category() -> None:
    vocab = {k: v for k, v in FASHION.items() if k != "subcategory"}
    filters = QueryParser(Vocabulary(vocab)).parse("shoes for men").filters
    assert set(filters.include["category"]) == {"Casual Shoes", "Sports Shoes",
                                                "Formal Shoes"}
    assert filters.include["gender"] == ("Men",)


@pytest.mark.parametrize(("text", "gender"), [
    ("women", ("Women",)),
    ("men", ("Men",)),
    ("womens watches", ("Women",)),
    ("a dress for a woman", ("Women",)),
    ("ladies", ("Women",)),
    ("for her", ("Women",)),
    ("gents", ("Men",)),
    ("kids", ("Boys", "Girls")),
    ("women's shoes", ("Women",)),
    ("men’s watch", ("Men",)),
    ("girls' dresses", ("Girls",)),
    ("unisex", ("Unisex",)),
])
def test_gender(parser: QueryParser, text: str, gender: tuple[str, ...]) -> None:
    assert parser.parse(text).filters.include["gender"] == gender


def test_women_does_not_also_mean_men(parser: QueryParser) -> None:
    parsed = parser.parse("women")
    assert parsed.filters.include == {"gender": ("Women",)}
    assert [m.phrase for m in parsed.matches] == ["women"]
    assert parser.parse("womenswear").filters.is_empty()


@pytest.mark.parametrize(("text", "key", "values"), [
    ("gray tee", "colour", ("Grey",)),
    ("gray tee", "category", ("Tshirts",)),
    ("ladies sneakers", "gender", ("Women",)),
    ("ladies sneakers", "category", ("Sports Shoes", "Casual Shoes")),
    ("burgundy heels", "colour", ("Maroon",)),
    ("trainers", "category", ("Sports Shoes",)),
    ("bag", "category", ("Handbags",)),  # only the targets the catalog has
])
def test_synonyms(parser: QueryParser, text: str, key: str, values: tuple[str, ...]) -> None:
    assert parser.parse(text).filters.include[key] == values


def test_synonyms_only_map_to_values_the_catalog_has() -> None:
    vocab = dict(FASHION, category=["Sports Shoes", "Dresses"])
    assert QueryParser(Vocabulary(vocab)).parse("sneakers").filters.include == {
        "category": ("Sports Shoes",)}
    vocab = dict(FASHION, category=["Dresses"], colour=["Red"])
    filters = QueryParser(Vocabulary(vocab)).parse("gray sneakers").filters
    assert filters.is_empty()


@pytest.mark.parametrize(("text", "low", "high"), [
    ("under 1500", None, 1500),
    ("below 1500", None, 1500),
    ("less than 1500", None, 1500),
    ("cheaper than 1500", None, 1500),
    ("max 1500", None, 1500),
    ("maximum 1500", None, 1500),
    ("up to 1500", None, 1500),
    ("upto 1500", None, 1500),
    ("at most 1500", None, 1500),
    ("< 1500", None, 1500),
    ("<=1500", None, 1500),
    ("over 500", 500, None),
    ("above 500", 500, None),
    ("more than 500", 500, None),
    ("at least 500", 500, None),
    ("from $500", 500, None),
    ("from 500 rupees", 500, None),
    ("> 500", 500, None),
    ("between 500 and 1500", 500, 1500),
    ("between 1500 and 500", 500, 1500),
    ("500-1500", 500, 1500),
    ("500 - 1500", 500, 1500),
    ("500 to 1500", 500, 1500),
    ("from 500 to 1500", 500, 1500),
    ("$50 - $80", 50, 80),
    ("1.5k-2k", 1500, 2000),
    ("under 1500 and over 500", 500, 1500),
    ("around 1000", 800, 1200),
    ("about 80", 64, 96),
    ("under $80", None, 80),
    ("under 80$", None, 80),
    ("under 80 dollars", None, 80),
    ("under rs 1500", None, 1500),
    ("under Rs. 1500", None, 1500),
    ("under 1500 rupees", None, 1500),
    ("under ₹1500", None, 1500),
    ("under INR 1500", None, 1500),
    ("under 1.5k", None, 1500),
    ("under 1,500", None, 1500),
    ("above 2,000", 2000, None),
    ("under 15.99", None, 15.99),
    ("under 0", None, 0),
])
def test_price_forms(parser: QueryParser, text: str, low: float | None,
                     high: float | None) -> None:
    filters, _, residual = parse(parser, f"jeans {text}")
    assert filters.price_min == (pytest.approx(low) if low is not None else None)
    assert filters.price_max == (pytest.approx(high) if high is not None else None)
    assert filters.include == {"category": ("Jeans",)}
    # Every price phrase is dropped from the words ("under 1500 and over 500" leaves "and").
    assert residual.split()[0] == "jeans"
    assert not any(c.isdigit() or c in "$₹<>" for c in residual), residual
    assert set(residual.split()) <= {"jeans", "and"}


@pytest.mark.parametrize("text", ["iphone 15 case", "a 2 pack of socks", "jeans 32",
                                  "shirts 2012", "maxi dress"])
def test_numbers_that_are_not_prices(parser: QueryParser, text: str) -> None:
    filters = parser.parse(text).filters
    assert filters.price_min is None and filters.price_max is None


def test_price_match_is_recorded(parser: QueryParser) -> None:
    parsed = parser.parse("shirts under 1,500")
    price = [m for m in parsed.matches if m.key == "price"]
    assert len(price) == 1 and price[0].phrase == "under 1,500"


@pytest.mark.parametrize(("text", "exclude", "include"), [
    ("not red", {"colour": ("Red",)}, {}),
    ("no black shirts", {"colour": ("Black",)}, {"category": ("Shirts",)}),
    ("heels except black", {"colour": ("Black",)}, {"category": ("Heels",)}),
    ("dress without red", {"colour": ("Red",)}, {"category": ("Dresses",)}),
    ("not red or blue", {"colour": ("Red", "Blue")}, {}),
    ("neither red nor blue", {"colour": ("Red", "Blue")}, {}),
    ("no red, blue or black shirts", {"colour": ("Red", "Blue", "Black")},
     {"category": ("Shirts",)}),
    ("not red but blue", {"colour": ("Red",)}, {"colour": ("Blue",)}),
    ("red or blue, not black", {"colour": ("Black",)}, {"colour": ("Red", "Blue")}),
    ("not red dress or blue", {"colour": ("Red",)},  # the list is broken by "dress"
     {"category": ("Dresses",), "colour": ("Blue",)}),
    ("not for men", {}, {"gender": ("Men",)}),  # only the word right after negates
    ("kurtis, not in white or cream", {"colour": ("White", "Cream")}, {}),  # ... or "in"
])
def test_negation(parser: QueryParser, text: str, exclude: dict, include: dict) -> None:
    filters = parser.parse(text).filters
    assert dict(filters.exclude) == exclude
    assert dict(filters.include) == include


def test_negated_match_is_marked(parser: QueryParser) -> None:
    (match,) = parser.parse("no black").matches
    assert match == Match("black", "colour", ("Black",), negated=True)
    assert match.describe() == '"black" -> colour: not Black'


def test_in_stock(parser: QueryParser) -> None:
    filters, _, text = parse(parser, "shirts in stock under 700")
    assert filters.in_stock is True
    assert filters.price_max == 700
    assert text == "shirts"
    assert parser.parse("shirts").filters.in_stock is None


def test_usage_and_season_are_boosts_not_filters(parser: QueryParser) -> None:
    filters, boosts, text = parse(parser, "casual summer dress for a party")
    assert filters.include == {"category": ("Dresses",)}
    assert boosts == {"usage": ("Casual", "Party"), "season": ("Summer",)}
    assert text == "casual summer dress for a party"
    # A negated soft preference neither boosts nor filters.
    filters, boosts, _ = parse(parser, "shirt, not formal")
    assert boosts == {} and filters.exclude == {}


@pytest.mark.parametrize(("text", "boosts"), [
    ("office shirt", {"usage": ("Formal",)}),
    ("autumn jacket", {"season": ("Fall",)}),
    ("winter", {"season": ("Winter",)}),
])
def test_soft_synonyms(parser: QueryParser, text: str, boosts: dict) -> None:
    assert dict(parser.parse(text).boosts) == boosts


def test_repeated_values_are_deduplicated(parser: QueryParser) -> None:
    assert parser.parse("red red red dress").filters.include["colour"] == ("Red",)


def test_nothing_to_read(parser: QueryParser) -> None:
    parsed = parser.parse("something nice for a picnic")
    assert parsed.filters.is_empty()
    assert parsed.boosts == {}
    assert parsed.matches == ()
    assert parsed.text == "something nice for a picnic"
    assert parser.parse("").text == ""


def test_parsed_filters_are_valid_filters(parser: QueryParser) -> None:
    filters = parser.parse("no red shirts for men between 500 and 900 in stock").filters
    assert filters.to_where() is not None
    assert filters.describe() == ["category: Shirts", "gender: Men", "colour: not Red",
                                  "price 500–900", "in stock"]


def test_empty_vocabulary_reads_only_prices_and_stock() -> None:
    parser = QueryParser(Vocabulary({}))
    filters = parser.parse("red dress under 50 in stock").filters
    assert filters == Filters(price_max=50.0, in_stock=True)


# --- Vocabulary ----------------------------------------------------------------------------


def test_vocabulary_from_table_and_canonical() -> None:
    table = ColumnTable({"colour": ["Red", "Blue", "Red", ""], "category": ["A", "B", "B", "B"],
                         "usage": ["", "", "", ""]},
                        price=[1.0, 2.0, 3.0, 4.0], in_stock=[True] * 4)
    vocab = Vocabulary.from_table(table)
    assert vocab.values["colour"] == ["Red", "Blue"]
    assert vocab.values["category"] == ["B", "A"]
    assert "usage" not in vocab.values  # keys without values are dropped
    assert Vocabulary.from_table(table, max_values=1).values["colour"] == ["Red"]
    assert vocab.canonical("colour", "  rED ") == "Red"
    assert vocab.canonical("colour", "Green") is None
    assert vocab.canonical("gender", "Men") is None
    assert vocab.to_dict() == vocab.values


def test_parser_describe(parser: QueryParser) -> None:
    assert parser.describe()["phrases"] > sum(len(v) for v in FASHION.values())


@pytest.mark.parametrize("text", ["size 8-10 heels", "jeans 30-34", "shirts 10.5-12",
                                  "delivery within 2 days", "the 2012 collection",
                                  "from 2012", "size 9 shoes"])
def test_more_numbers_that_are_not_prices(parser, text):
    filters = parser.parse(text).filters
    assert (filters.price_min, filters.price_max) == (None, None)


# --- fixes found by the planner's labelled shopper messages ---------------------------------

FASHION_MORE = dict(FASHION, category=[
    *FASHION["category"], "Tablet Sleeve", "Hair Colour", "Night suits", "Free Gifts",
    "Accessory Gift Set", "Lip Care", "Tights", "Shorts", "Necklace and Chains",
    "Perfume and Body Mist", "Ring", "Bra", "Socks", "Dupatta", "Salwar and Dupatta"],
    subcategory=[*FASHION["subcategory"], "Perfumes"])


@pytest.fixture(scope="module")
def wide_parser() -> QueryParser:
    return QueryParser(Vocabulary(FASHION_MORE))


@pytest.mark.parametrize(("text", "include"), [
    ("long sleeve shirt", {"category": ("Shirts",)}),  # not "Tablet Sleeve"
    ("in a different colour", {}),  # not "Hair Colour"
    ("hair colour", {"category": ("Hair Colour",)}),
    ("a black suit", {"colour": ("Black",)}),  # not "Night suits"
    ("a gift for my wife", {"gender": ("Women",)}),  # not "Free Gifts"
    ("easy care shirt", {"category": ("Shirts",)}),  # not "Lip Care"
    ("tight jeans", {"category": ("Jeans",)}),  # an adjective, not "Tights"
    ("short dress", {"category": ("Dresses",)}),  # not "Shorts"
    ("shorts", {"category": ("Shorts",)}),
    ("tights", {"category": ("Tights",)}),
])
def test_generic_words_do_not_name_a_category(wide_parser: QueryParser, text: str,
                                              include: dict) -> None:
    assert dict(wide_parser.parse(text).filters.include) == include


@pytest.mark.parametrize(("text", "category"), [
    ("dupatta", ("Dupatta",)),  # a category of that name wins over "Salwar and Dupatta"
    ("salwar and dupatta", ("Salwar and Dupatta",)),
    ("gold necklace", ("Necklace and Chains",)),  # each part of "X and Y" names it
    ("chains", ("Necklace and Chains",)),
    ("perfume for men", ("Perfume and Body Mist",)),  # wins over the 6-item subcategory
    ("rings", ("Ring",)),  # plurals of singular category names
    ("bras", ("Bra",)),
    ("running shoes", ("Sports Shoes",)),
])
def test_category_names_and_their_forms(wide_parser: QueryParser, text: str,
                                        category: tuple[str, ...]) -> None:
    assert wide_parser.parse(text).filters.include["category"] == category


@pytest.mark.parametrize(("text", "gender"), [
    ("black tee for guys", ("Men",)), ("a gift for my husband", ("Men",)),
    ("something for my wife", ("Women",)), ("for my daughter", ("Girls",)),
    ("for my son", ("Boys",)),
])
def test_people_words_mean_genders(parser: QueryParser, text: str,
                                   gender: tuple[str, ...]) -> None:
    assert parser.parse(text).filters.include["gender"] == gender


@pytest.mark.parametrize(("text", "exclude", "include"), [
    ("jeans, anything but blue", {"colour": ("Blue",)}, {"category": ("Jeans",)}),
    ("everything but red or black", {"colour": ("Red", "Black")}, {}),
    ("not red but blue", {"colour": ("Red",)}, {"colour": ("Blue",)}),  # unchanged
])
def test_anything_but_negates(parser: QueryParser, text: str, exclude: dict,
                              include: dict) -> None:
    filters = parser.parse(text).filters
    assert dict(filters.exclude) == exclude
    assert dict(filters.include) == include


@pytest.mark.parametrize(("text", "key", "values"), [
    ("tshrit", "category", ("Tshirts",)), ("balck dress", "colour", ("Black",)),
    ("dersses", "category", ("Dresses",)), ("sneakres", "category", ("Sports Shoes",
                                                                      "Casual Shoes")),
])
def test_swapped_letters_are_read(parser: QueryParser, text: str, key: str,
                                  values: tuple[str, ...]) -> None:
    assert parser.parse(text).filters.include[key] == values


@pytest.mark.parametrize("text", ["back pocket", "out of stock", "woven fabric", "part time",
                                  "blak", "jeens", "causal wear", "spot the difference"])
def test_no_guessing_beyond_a_swap(wide_parser: QueryParser, text: str) -> None:
    # A missing or wrong letter is not corrected: without a dictionary, "back" would be
    # Black and "stock" Socks.
    filters = wide_parser.parse(text).filters
    assert not filters.include and not filters.exclude


@pytest.mark.parametrize(("text", "expected"), [
    ("red dress in stock", True), ("available now", True), ("out of stock shoes", False),
    ("shoes not in stock", False), ("sold out jackets", False), ("red dress", None)])
def test_stock_words(parser, text, expected):
    assert parser.parse(text).filters.in_stock is expected
