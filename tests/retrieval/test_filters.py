"""Filters: parsing, validation, and agreement of the Chroma ``where`` with the in-memory mask."""

from __future__ import annotations

from collections.abc import Iterator

import chromadb
import hypothesis.strategies as st
import numpy as np
import pytest
from chromadb.config import Settings as ChromaSettings
from hypothesis import given, note, seed, settings

from retrieval.artifacts import ProductRecords
from retrieval.catalog import Product
from retrieval.filters import (
    MAX_VALUES,
    ColumnTable,
    FilterError,
    Filters,
    parse_filter_args,
)

SEED = 20_251_127
CATEGORIES = ["Dresses", "Jeans", "Tshirts", "Casual Shoes"]
COLOURS = ["Red", "Blue", "Navy Blue", "Black"]
GENDERS = ["Men", "Women", "Unisex"]
PRICE_POINTS = [0.0, 10.0, 49.99, 50.0, 99.0, 100.0, 150.0, 200.0]


# --- parse_filter_args ---------------------------------------------------------------------


@pytest.mark.parametrize(("pairs", "expected"), [
    (["colour=Red"], Filters(include={"colour": ("Red",)})),
    (["colour=Red|Navy Blue"], Filters(include={"colour": ("Red", "Navy Blue")})),
    (["colour=Red", "colour=Blue"], Filters(include={"colour": ("Red", "Blue")})),
    ([" Colour = Red | "], Filters(include={"colour": ("Red",)})),
    (["colour!=Red|Blue"], Filters(exclude={"colour": ("Red", "Blue")})),
    (["price<=80"], Filters(price_max=80.0)),
    (["price>=20.5"], Filters(price_min=20.5)),
    (["price=20..80"], Filters(price_min=20.0, price_max=80.0)),
    (["price=..80"], Filters(price_max=80.0)),
    (["price=20.."], Filters(price_min=20.0)),
    (["price=50"], Filters(price_min=50.0, price_max=50.0)),
    (["price>=20", "price<=80"], Filters(price_min=20.0, price_max=80.0)),
    (["in_stock=true"], Filters(in_stock=True)),
    (["in_stock=YES"], Filters(in_stock=True)),
    (["in_stock=0"], Filters(in_stock=False)),
    (["in_stock!=true"], Filters(in_stock=False)),
    (["in_stock!=no"], Filters(in_stock=True)),
    (["category=Jeans", "gender!=Men", "price<=100", "in_stock=1"],
     Filters(include={"category": ("Jeans",)}, exclude={"gender": ("Men",)},
             price_max=100.0, in_stock=True)),
    ([], Filters()),
])
def test_parse_filter_args(pairs: list[str], expected: Filters) -> None:
    assert parse_filter_args(pairs) == expected


@pytest.mark.parametrize(("pair", "message"), [
    ("colour", "Cannot read filter 'colour'"),
    ("=Red", "Cannot read filter"),
    ("colour=", "Cannot read filter"),
    ("price<=cheap", "Price in 'price<=cheap' is not a number"),
    ("price=a..b", "not a number"),
    ("colour<=Red", "Only price takes <= or >="),
    ("in_stock=maybe", "in_stock takes true or false"),
    ("price!=50", "price does not take !="),
    ("price=80..20", "price_min 80 is above price_max 20"),
    ("colour=|", "has no values"),
    ("price<=nan", "finite"),
])
def test_parse_filter_args_errors(pair: str, message: str) -> None:
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_filter_args([pair])


def test_parse_errors_show_the_accepted_forms() -> None:
    with pytest.raises(FilterError, match=r"KEY=VALUE, KEY!=VALUE, price<=N"):
        parse_filter_args(["nonsense"])


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"include": {"colour": ()}}, "has no values"),
    ({"exclude": {"colour": ()}}, "has no values"),
    ({"include": {"colour": tuple(f"c{i}" for i in range(MAX_VALUES + 1))}}, "at most 64"),
    ({"include": {"colour": "Red"}}, r"tuple of values, e\.g\. \('Red',\)"),
    ({"include": {"colour": ("Red", "")}}, "non-empty strings"),
    ({"exclude": {"year": (2011,)}}, "non-empty strings"),
    ({"include": {"price": ("10",)}}, "price_min / price_max"),
    ({"exclude": {"in_stock": ("true",)}}, "in_stock=True / False"),
    ({"price_min": 10, "price_max": 5}, "price_min 10 is above price_max 5"),
    ({"price_max": float("inf")}, "price_max must be a finite number"),
    ({"price_min": float("nan")}, "price_min must be a finite number"),
])
def test_invalid_filters(kwargs: dict, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        Filters(**kwargs)


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


def test_max_values_is_accepted() -> None:
    values = tuple(f"c{i}" for i in range(MAX_VALUES))
    assert Filters(include={"colour": values}).include["colour"] == values


def test_equal_price_bounds_are_valid() -> None:
    assert Filters(price_min=5, price_max=5).constrained() == ["price"]


# --- describe, keys, without, merged, to_dict ----------------------------------------------


FULL = Filters(include={"colour": ("Red", "Blue"), "category": ("Dresses",)},
               exclude={"gender": ("Men",)}, price_min=10, price_max=1500.5, in_stock=True)


def test_is_empty() -> None:
    assert Filters().is_empty()
    assert not Filters(in_stock=False).is_empty()
    assert not Filters(price_min=0).is_empty()
    assert not Filters(exclude={"colour": ("Red",)}).is_empty()


def test_describe() -> None:
    assert FULL.describe() == ["colour: Red or Blue", "category: Dresses", "gender: not Men",
                               "price 10–1500.5", "in stock"]
    assert Filters(price_max=80).describe() == ["price ≤ 80"]
    assert Filters(price_min=20).describe() == ["price ≥ 20"]
    assert Filters(in_stock=False).describe() == ["out of stock"]
    assert Filters().describe() == []


def test_keys_in_order() -> None:
    assert FULL.constrained() == ["colour", "category", "gender", "price", "in_stock"]
    both = Filters(include={"colour": ("Red",)}, exclude={"colour": ("Blue",)})
    assert both.constrained() == ["colour"]


def test_without() -> None:
    assert FULL.without("price") == Filters(include=FULL.include, exclude=FULL.exclude,
                                            in_stock=True)
    assert FULL.without("in_stock").in_stock is None
    assert FULL.without("colour").include == {"category": ("Dresses",)}
    assert FULL.without("gender").exclude == {}
    assert FULL.without("material") == FULL
    both = Filters(include={"colour": ("Red",)}, exclude={"colour": ("Blue",)})
    assert both.without("colour").is_empty()
    # The original is untouched.
    assert FULL.include["colour"] == ("Red", "Blue") and FULL.price_min == 10


def test_merged_other_wins_per_key() -> None:
    base = Filters(include={"colour": ("Red",), "gender": ("Women",)},
                   exclude={"category": ("Heels",)}, price_min=10, price_max=100,
                   in_stock=False)
    other = Filters(include={"colour": ("Blue",)}, price_max=50, in_stock=True)
    merged = base.merged(other)
    # A price bound in `other` replaces the whole range: words' "under 100" never clashes
    # with an explicit minimum of 200.
    assert merged == Filters(include={"colour": ("Blue",), "gender": ("Women",)},
                             exclude={"category": ("Heels",)}, price_min=None, price_max=50,
                             in_stock=True)
    assert Filters(price_max=100).merged(Filters(price_min=200)) == Filters(price_min=200)
    assert base.merged(Filters()) == base
    assert Filters().merged(base) == base


def test_to_dict() -> None:
    assert FULL.to_dict() == {
        "include": {"colour": ["Red", "Blue"], "category": ["Dresses"]},
        "exclude": {"gender": ["Men"]}, "price_min": 10, "price_max": 1500.5,
        "in_stock": True}


def test_to_where_shapes() -> None:
    assert Filters().to_where() is None
    assert Filters(include={"colour": ("Red",)}).to_where() == {"colour": {"$eq": "Red"}}
    assert Filters(exclude={"colour": ("Red",)}).to_where() == {"colour": {"$ne": "Red"}}
    assert Filters(price_max=80).to_where() == {"price": {"$lte": 80.0}}
    where = FULL.to_where()
    assert where == {"$and": [
        {"colour": {"$in": ["Red", "Blue"]}},
        {"category": {"$eq": "Dresses"}},
        {"gender": {"$ne": "Men"}},
        {"price": {"$gte": 10.0}},
        {"price": {"$lte": 1500.5}},
        {"in_stock": {"$eq": True}},
    ]}
    assert isinstance(where["$and"][3]["price"]["$gte"], float)
    assert Filters(exclude={"colour": ("Red", "Blue")}).to_where() == {
        "colour": {"$nin": ["Red", "Blue"]}}


# --- ColumnTable and mask ------------------------------------------------------------------


def small_table() -> ColumnTable:
    return ColumnTable(
        {"colour": ["Red", "Blue", "", "Red", "Black"],
         "category": ["Dresses", "Jeans", "Jeans", "Heels", ""]},
        price=[10.0, None, 30.0, 40.0, 50.0],
        in_stock=[True, True, False, True, False])


def test_column_table() -> None:
    table = small_table()
    assert table.n == 5
    assert table.keys() == ["colour", "category"]
    assert list(table.column("gender")) == [""] * 5
    assert np.isnan(table.price[1])
    assert table.vocabulary("colour") == ["Red", "Black", "Blue"]  # most frequent first
    assert table.vocabulary("category") == ["Jeans", "Dresses", "Heels"]
    assert table.vocabulary("gender") == []


@pytest.mark.parametrize(("filters", "rows"), [
    (Filters(), [0, 1, 2, 3, 4]),
    (Filters(include={"colour": ("Red",)}), [0, 3]),
    (Filters(include={"colour": ("Red", "Blue")}), [0, 1, 3]),
    (Filters(include={"gender": ("Men",)}), []),  # nobody has a gender
    # Products without a colour are "not red" (as in Chroma).
    (Filters(exclude={"colour": ("Red",)}), [1, 2, 4]),
    (Filters(exclude={"gender": ("Men",)}), [0, 1, 2, 3, 4]),
    (Filters(price_min=30), [2, 3, 4]),  # no price: never inside a bound
    (Filters(price_max=30), [0, 2]),
    (Filters(price_min=30, price_max=40), [2, 3]),
    (Filters(in_stock=False), [2, 4]),
    (Filters(include={"category": ("Jeans",)}, exclude={"colour": ("Blue",)},
             in_stock=False), [2]),
])
def test_mask(filters: Filters, rows: list[int]) -> None:
    assert np.flatnonzero(filters.mask(small_table())).tolist() == rows


# --- Chroma and the mask agree -------------------------------------------------------------


def random_products(rng: np.random.Generator, n: int = 60) -> list[Product]:
    products = []
    for i in range(n):
        attributes = {}
        if rng.random() < 0.8:
            attributes["colour"] = str(rng.choice(COLOURS))
        if rng.random() < 0.7:
            attributes["gender"] = str(rng.choice(GENDERS))
        category = str(rng.choice(CATEGORIES)) if rng.random() < 0.9 else ""
        price: float | None = None
        if rng.random() < 0.85:
            price = (float(rng.choice(PRICE_POINTS)) if rng.random() < 0.4
                     else round(float(rng.uniform(0, 220)), 2))
        products.append(Product(product_id=f"p{i:03d}", title=f"Product {i}",
                                category=category, attributes=attributes, price=price,
                                in_stock=bool(rng.random() < 0.7)))
    return products


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[chromadb.Collection, ColumnTable, list[str]]]:
    print(f"random catalog seed: {SEED}")
    rng = np.random.default_rng(SEED)
    products = random_products(rng)
    # Both sides are built the way the engine builds them: Product.metadata() for Chroma,
    # ProductRecords.table() for the mask.
    table = ProductRecords(products=products, image_keys=[""] * len(products),
                           text_keys=[""] * len(products)).table()
    client = chromadb.PersistentClient(path=str(tmp_path_factory.mktemp("chroma")),
                                       settings=ChromaSettings(anonymized_telemetry=False))
    collection = client.create_collection("filters-test", embedding_function=None,
                                          configuration={"hnsw": {"space": "cosine"}})
    collection.add(ids=[p.product_id for p in products],
                   embeddings=rng.normal(size=(len(products), 8)).astype(np.float32),
                   metadatas=[p.metadata() for p in products])
    yield collection, table, [p.product_id for p in products]


def chroma_ids(collection: chromadb.Collection, filters: Filters) -> set[str]:
    return set(collection.get(where=filters.to_where(), include=[])["ids"])


def mask_ids(table: ColumnTable, ids: list[str], filters: Filters) -> set[str]:
    return {ids[i] for i in np.flatnonzero(filters.mask(table))}


VALUES = {"category": [*CATEGORIES, "Watches"], "colour": [*COLOURS, "Green"],
          "gender": GENDERS, "material": ["Cotton"]}  # nobody has a material


def _value_maps() -> st.SearchStrategy[dict[str, tuple[str, ...]]]:
    return st.sets(st.sampled_from(sorted(VALUES)), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({
            key: st.lists(st.sampled_from(VALUES[key]), min_size=1, max_size=3,
                          unique=True).map(tuple)
            for key in sorted(keys)}))


_bound = st.none() | st.sampled_from(PRICE_POINTS) | st.floats(0, 250, allow_nan=False)


@st.composite
def filters_strategy(draw: st.DrawFn) -> Filters:
    low, high = draw(_bound), draw(_bound)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return Filters(include=draw(_value_maps()), exclude=draw(_value_maps()),
                   price_min=low, price_max=high, in_stock=draw(st.none() | st.booleans()))


@seed(SEED)
@settings(max_examples=40, deadline=None, database=None)
@given(filters=filters_strategy())
def test_chroma_where_and_mask_agree(catalog, filters: Filters) -> None:
    collection, table, ids = catalog
    note(f"filters={filters!r} where={filters.to_where()!r} (seed {SEED})")
    assert chroma_ids(collection, filters) == mask_ids(table, ids, filters)


@pytest.mark.parametrize("filters", [
    Filters(),
    Filters(exclude={"colour": ("Red",)}),  # products without colour pass both
    Filters(exclude={"colour": ("Red", "Blue", "Navy Blue", "Black")}),
    Filters(exclude={"category": ("Dresses",)}),  # category "" is stored, not missing
    Filters(exclude={"material": ("Cotton",)}),  # a key nobody has
    Filters(include={"material": ("Cotton",)}),
    Filters(price_min=0),  # products without a price fail any bound
    Filters(price_min=50, price_max=50),
    Filters(in_stock=False),
])
def test_edge_cases_agree(catalog, filters: Filters) -> None:
    collection, table, ids = catalog
    expected = mask_ids(table, ids, filters)
    assert chroma_ids(collection, filters) == expected


def test_agreement_is_not_vacuous(catalog) -> None:
    collection, table, ids = catalog
    everyone = chroma_ids(collection, Filters())
    assert len(everyone) == len(ids) == 60
    # The random catalog really has the cases the comparison is about.
    colour = table.column("colour")
    assert (colour == "").sum() > 0 and (colour == "Red").sum() > 0
    assert np.isnan(table.price).sum() > 0
    assert (table.column("category") == "").sum() > 0
    some = chroma_ids(collection, Filters(exclude={"colour": ("Red",)}))
    assert 0 < len(some) < 60
    assert {ids[i] for i in np.flatnonzero(colour == "")} <= some


def test_query_with_where_returns_only_matching_products(catalog) -> None:
    collection, table, ids = catalog
    filters = Filters(include={"colour": ("Red", "Blue")}, price_max=150)
    allowed = mask_ids(table, ids, filters)
    assert allowed
    result = collection.query(query_embeddings=np.ones((1, 8), dtype=np.float32),
                              n_results=len(allowed), where=filters.to_where(), include=[])
    assert set(result["ids"][0]) <= allowed
