"""Catalog loading: formats, mappings, bad rows reported row by row, paths and prices."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.catalog import (
    FASHION_MAPPING,
    CatalogError,
    ColumnMapping,
    Product,
    RowIssue,
    columns_of,
    detect_mapping,
    load_catalog,
    load_mapping,
    mapping_from_dict,
    synthetic_price,
)

FASHION_HEADER = ("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,"
                  "usage,productDisplayName,image")
FASHION_ROWS = [
    "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,"
    "Turtle Check Men Navy Blue Shirt,images/15970.jpg",
    "39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,"
    "Peter England Men Party Blue Jeans,images/39386.jpg",
    "59263,Women,Accessories,Watches,Watches,Silver,Winter,2016,Casual,"
    "Titan Women Silver Watch,images/59263.jpg",
    # No usage and no season: those attributes are simply absent.
    "21379,Men,Apparel,Bottomwear,Track Pants,Black,,2011,,"
    "Manchester United Men Solid Black Track Pants,images/21379.jpg",
]
REALDATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def issue_map(catalog) -> dict[int, str]:
    return {issue.row: issue.reason for issue in catalog.issues}


# --- formats -------------------------------------------------------------------------------


CANONICAL_CSV = """\
product_id,title,description,category,price,currency,in_stock,image,variant_of,colour,Material
A1,Red Shirt,Soft cotton,Shirts,19.99,EUR,true,a1.jpg,,Red,Cotton
A2,Blue Jeans,,Jeans,"1,299.50",,no,,A1,Blue,
"""


def test_csv_with_canonical_columns(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path / "c.csv", CANONICAL_CSV))
    assert catalog.mapping.name == "canonical"
    assert catalog.issues == []
    assert catalog.rows == [1, 2]
    assert catalog.rows_read == 2
    a1, a2 = catalog.products
    assert a1 == Product(
        product_id="A1", title="Red Shirt", description="Soft cotton", category="Shirts",
        attributes={"colour": "Red", "material": "Cotton"}, price=19.99, currency="EUR",
        in_stock=True, image=str(tmp_path.resolve() / "a1.jpg"), variant_of=None)
    assert a2.price == 1299.5
    assert a2.currency == "USD"  # the mapping's default when the cell is empty
    assert a2.in_stock is False
    assert a2.image == ""
    assert a2.variant_of == "A1"
    assert a2.attributes == {"colour": "Blue"}  # empty cells are not attributes


def test_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "c.tsv",
                 "product_id\ttitle\tprice\n1\tA shirt, blue\t10\n2\tB; C\t20\n")
    catalog = load_catalog(path)
    assert [(p.product_id, p.title, p.price) for p in catalog.products] == [
        ("1", "A shirt, blue", 10.0), ("2", "B; C", 20.0)]


def test_csv_delimiter_is_sniffed(tmp_path: Path) -> None:
    path = write(tmp_path / "semi.csv",
                 "product_id;title;price\n1;A shirt, blue;10\n2;Jeans;20\n")
    catalog = load_catalog(path)
    assert [p.title for p in catalog.products] == ["A shirt, blue", "Jeans"]
    assert catalog.issues == []


def test_csv_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("product_id,title\n1,Shirt\n".encode("utf-8-sig"))
    assert columns_of(path) == ["product_id", "title"]
    assert load_catalog(path).products[0].product_id == "1"


def test_jsonl_typed_values(tmp_path: Path) -> None:
    lines = [
        {"product_id": 7, "title": "Watch", "price": 120, "in_stock": False, "colour": "Black"},
        {"product_id": "8", "title": "Belt", "price": None, "in_stock": True, "colour": None},
    ]
    path = write(tmp_path / "c.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    catalog = load_catalog(path)
    assert catalog.issues == []
    watch, belt = catalog.products
    assert (watch.product_id, watch.price, watch.in_stock) == ("7", 120.0, False)
    assert watch.attributes == {"colour": "Black"}
    assert (belt.price, belt.in_stock, belt.attributes) == (None, True, {})


def test_parquet(tmp_path: Path) -> None:
    table = pa.table({
        "product_id": ["p1", "p2", "p3"],
        "title": ["Heels", "Bag", "Cap"],
        "price": pa.array([49.5, None, float("nan")], type=pa.float64()),
        "in_stock": [True, False, True],
        "colour": ["Red", None, "Blue"],
    })
    path = tmp_path / "c.parquet"
    pq.write_table(table, path)
    assert columns_of(path) == ["product_id", "title", "price", "in_stock", "colour"]
    catalog = load_catalog(path)
    assert catalog.issues == []
    assert [p.price for p in catalog.products] == [49.5, None, None]
    assert [p.in_stock for p in catalog.products] == [True, False, True]
    assert catalog.products[1].attributes == {}


def test_parquet_written_by_pandas_with_its_index(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame({"product_id": ["a", "b"], "title": ["A", "B"]}, index=[10, 20])
    path = tmp_path / "c.parquet"
    frame.to_parquet(path, index=True)
    assert columns_of(path) == ["product_id", "title"]
    catalog = load_catalog(path)
    assert catalog.mapping.attributes == {}
    assert [p.product_id for p in catalog.products] == ["a", "b"]


def test_limit_reads_only_the_first_rows(tmp_path: Path) -> None:
    body = "product_id,title\n" + "".join(f"{i},T{i}\n" for i in range(10))
    catalog = load_catalog(write(tmp_path / "c.csv", body), limit=3)
    assert [p.product_id for p in catalog.products] == ["0", "1", "2"]
    assert catalog.rows_read == 3


# --- the fashion catalog -------------------------------------------------------------------


def fashion_csv(tmp_path: Path) -> Path:
    return write(tmp_path / "styles.csv", FASHION_HEADER + "\n" + "\n".join(FASHION_ROWS) + "\n")


def test_fashion_mapping_is_detected_from_its_columns(tmp_path: Path) -> None:
    catalog = load_catalog(fashion_csv(tmp_path))
    assert catalog.mapping is FASHION_MAPPING
    assert catalog.issues == []
    shirt = catalog.products[0]
    assert shirt.product_id == "15970"
    assert shirt.title == "Turtle Check Men Navy Blue Shirt"
    assert shirt.category == "Shirts"
    assert shirt.currency == "INR"
    assert shirt.attributes == {
        "gender": "Men", "master_category": "Apparel", "subcategory": "Topwear",
        "colour": "Navy Blue", "season": "Fall", "year": "2011", "usage": "Casual",
        "price_source": "synthetic"}
    assert shirt.image == str(tmp_path.resolve() / "images" / "15970.jpg")
    pants = catalog.products[3]
    assert "season" not in pants.attributes and "usage" not in pants.attributes


def test_detect_mapping_by_columns() -> None:
    assert detect_mapping(FASHION_HEADER.split(",")) is FASHION_MAPPING
    canonical = detect_mapping(["product_id", "title", "price", "Colour", "__extra__"])
    assert canonical.name == "canonical"
    assert dict(canonical.fields) == {"product_id": "product_id", "title": "title",
                                      "price": "price"}
    assert dict(canonical.attributes) == {"colour": "Colour"}
    with pytest.raises(CatalogError, match="Columns found: Name, SKU") as info:
        detect_mapping(["SKU", "Name"])
    assert "--mapping" in str(info.value)


def test_synthetic_prices_are_deterministic_and_labelled(tmp_path: Path) -> None:
    first = load_catalog(fashion_csv(tmp_path))
    second = load_catalog(fashion_csv(tmp_path))
    prices = [p.price for p in first.products]
    assert prices == [p.price for p in second.products]
    for product in first.products:
        assert product.attributes["price_source"] == "synthetic"
        assert product.price == synthetic_price(product.product_id, product.category)
        assert product.price is not None and product.price > 0
        assert product.price % 10 == 9  # demo prices end in 9
    # Prices differ between products (they are not a constant).
    assert len(set(prices)) > 1


def test_synthetic_price_function() -> None:
    assert synthetic_price("1", "Shirts") == synthetic_price("1", "Shirts")
    prices = [synthetic_price(str(i), "Shirts") for i in range(200)]
    assert min(prices) >= 299 and max(prices) <= 2999
    watches = [synthetic_price(str(i), "Watches") for i in range(200)]
    assert sum(watches) / len(watches) > 2 * sum(prices) / len(prices)


def test_real_prices_are_not_labelled_synthetic(tmp_path: Path) -> None:
    mapping = mapping_from_dict({"fields": {"product_id": "id", "title": "name",
                                            "price": "cost"}, "synthetic_prices": True})
    path = write(tmp_path / "c.csv", "id,name,cost\n1,A,15\n2,B,\n")
    real, made_up = load_catalog(path, mapping).products
    assert real.price == 15.0 and "price_source" not in real.attributes
    assert made_up.attributes["price_source"] == "synthetic"


@pytest.mark.realdata
def test_real_fashion_subset_loads_cleanly() -> None:
    path = REALDATA / "catalog_5k.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    catalog = load_catalog(path)
    assert catalog.mapping is FASHION_MAPPING
    assert len(catalog.products) >= 0.99 * catalog.rows_read
    assert all(Path(p.image).is_absolute() for p in catalog.products if p.image)


# --- mappings ------------------------------------------------------------------------------


def test_mapping_from_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path / "shop.toml", """
currency = "GBP"
synthetic_prices = false

[fields]
product_id = "SKU"
title = "Name"
price = "Cost"

[attributes]
Colour = "Shade"
""")
    mapping = load_mapping(path)
    assert mapping == ColumnMapping(name="shop", fields={"product_id": "SKU", "title": "Name",
                                                         "price": "Cost"},
                                    attributes={"colour": "Shade"}, currency="GBP")
    catalog = load_catalog(write(tmp_path / "c.csv", "SKU,Name,Cost,Shade\nX,Mug,£4,Teal\n"),
                           mapping)
    product = catalog.products[0]
    assert (product.product_id, product.title, product.price) == ("X", "Mug", 4.0)
    assert product.currency == "GBP"
    assert product.attributes == {"colour": "Teal"}


def test_mapping_from_json_file(tmp_path: Path) -> None:
    path = write(tmp_path / "m.json", json.dumps({
        "name": "mine", "fields": {"product_id": "sku", "title": "label"},
        "synthetic_prices": True}))
    mapping = load_mapping(path)
    assert mapping.name == "mine"
    assert mapping.synthetic_prices is True
    assert mapping.to_dict() == {"name": "mine", "fields": {"product_id": "sku",
                                                            "title": "label"},
                                 "attributes": {}, "synthetic_prices": True,
                                 "currency": "USD"}


def test_named_mapping() -> None:
    assert load_mapping("fashion") is FASHION_MAPPING


def test_mapping_that_is_neither_name_nor_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="neither a named mapping"):
        load_mapping(tmp_path / "missing.toml")


@pytest.mark.parametrize(("name", "text", "message"), [
    ("m.toml", 'name = "x"\n[fields\n', r"m\.toml is not valid TOML"),
    ("m.json", "{bad", r"m\.json is not valid JSON"),
    ("m.json", "[1]", r"m\.json must hold a table with \[fields\] \(got a list\)"),
])
def test_a_broken_mapping_file_is_named(tmp_path: Path, name: str, text: str,
                                        message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_mapping(write(tmp_path / name, text))


def test_mapping_unknown_field() -> None:
    with pytest.raises(CatalogError, match=r"Unknown field\(s\) \['sku'\]"):
        mapping_from_dict({"fields": {"product_id": "a", "title": "b", "sku": "c"}})


@pytest.mark.parametrize("fields", [{"title": "t"}, {"product_id": "p"}, {}])
def test_mapping_needs_id_and_title(fields: dict[str, str]) -> None:
    with pytest.raises(CatalogError, match="product_id and title"):
        mapping_from_dict({"fields": fields}, name="x")


# --- bad rows ------------------------------------------------------------------------------


def test_every_bad_csv_row_is_reported_and_good_rows_load(tmp_path: Path) -> None:
    body = "\n".join([
        "product_id,title,price,in_stock",
        "1,Good one,10,yes",           # row 1
        ",No id,10,yes",               # row 2: missing id
        "3,,10,yes",                   # row 3: missing title
        "1,Same id again,10,yes",      # row 4: duplicate of row 1
        "5,Bad price,ten,yes",         # row 5
        "6,Negative price,-3,yes",     # row 6
        "7,NaN price,nan,yes",         # row 7
        "8,Bad stock,10,maybe",        # row 8
        "9,Extra cells,10,yes,oops",   # row 9
        "10,Good two,$1,000.00,no",    # row 10: the comma splits the price -> extra cell
        '11,Good three,"$1,000.00",no',  # row 11
    ]) + "\n"
    catalog = load_catalog(write(tmp_path / "c.csv", body))
    assert [p.product_id for p in catalog.products] == ["1", "11"]
    assert catalog.rows == [1, 11]
    assert catalog.products[1].price == 1000.0
    assert catalog.rows_read == 11
    issues = issue_map(catalog)
    assert sorted(issues) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert issues[2] == "missing product id"
    assert issues[3] == "missing title"
    assert issues[4] == "duplicate product id (first seen in row 1)"
    assert "bad price 'ten'" in issues[5]
    assert "bad price '-3'" in issues[6]
    assert "bad price 'nan'" in issues[7]
    assert "bad in_stock 'maybe'" in issues[8]
    assert "more cells than the header" in issues[9]
    assert "more cells than the header" in issues[10]
    by_row = {i.row: i for i in catalog.issues}
    assert by_row[2].product_id is None
    assert by_row[4].product_id == "1"
    assert str(by_row[5]) == "row 5 (id 5): bad price 'ten' (expected a non-negative number)"


def test_bad_jsonl_lines_are_reported(tmp_path: Path) -> None:
    body = "\n".join([
        '{"product_id": "a", "title": "A"}',
        '{"product_id": "b", "title": "B"',       # row 2: invalid JSON
        "",                                        # blank lines are not rows
        '["not", "an", "object"]',                 # row 3
        '{"product_id": "c", "title": "C", "price": "x"}',  # row 4
        '{"product_id": "a", "title": "A again"}',  # row 5
        '{"product_id": "d", "title": "D"}',
    ]) + "\n"
    catalog = load_catalog(write(tmp_path / "c.jsonl", body))
    assert [p.product_id for p in catalog.products] == ["a", "d"]
    assert catalog.rows == [1, 6]
    issues = issue_map(catalog)
    assert issues[2].startswith("invalid JSON")
    assert issues[3] == "a JSON line must be an object"
    assert "bad price 'x'" in issues[4]
    assert "duplicate" in issues[5]


def test_jsonl_whose_first_line_is_broken_still_maps(tmp_path: Path) -> None:
    body = '{oops\n{"product_id": "1", "title": "A"}\n'
    catalog = load_catalog(write(tmp_path / "c.jsonl", body))
    assert [p.product_id for p in catalog.products] == ["1"]
    assert issue_map(catalog) == {1: issue_map(catalog)[1]}
    assert issue_map(catalog)[1].startswith("invalid JSON")


def test_row_issue_str_without_id() -> None:
    assert str(RowIssue(row=3, product_id=None, reason="missing product id")) == (
        "row 3: missing product id")


@pytest.mark.parametrize(("raw", "price"), [
    ("$12.50", 12.5), ("Rs. 1,500", 1500.0), ("₹999", 999.0), ("€ 20", 20.0),
    ("0", 0.0), ("1,299", 1299.0),
])
def test_price_formats(tmp_path: Path, raw: str, price: float) -> None:
    path = write(tmp_path / "c.jsonl", json.dumps({"product_id": "1", "title": "T",
                                                    "price": raw}))
    assert load_catalog(path).products[0].price == price


@pytest.mark.parametrize(("raw", "value"), [
    ("yes", True), ("TRUE", True), ("1", True), ("in stock", True),
    ("no", False), ("0", False), ("out of stock", False), ("False", False),
])
def test_in_stock_formats(tmp_path: Path, raw: str, value: bool) -> None:
    path = write(tmp_path / "c.jsonl", json.dumps({"product_id": "1", "title": "T",
                                                    "in_stock": raw}))
    assert load_catalog(path).products[0].in_stock is value


# --- whole-file errors ---------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.csv")


def test_a_folder_or_a_damaged_parquet_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="is a folder: give the catalog file in it"):
        load_catalog(tmp_path)
    broken = tmp_path / "c.parquet"
    broken.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(CatalogError, match=r"c\.parquet is not a readable Parquet file"):
        load_catalog(broken)


def test_unsupported_format(tmp_path: Path) -> None:
    path = write(tmp_path / "c.xlsx", "whatever")
    with pytest.raises(CatalogError, match=r"Unsupported catalog format '\.xlsx'.*\.csv"):
        load_catalog(path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="empty"):
        load_catalog(write(tmp_path / "c.csv", ""))


def test_header_only_csv_says_it_has_no_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "product_id,title,price\n")
    assert columns_of(path) == ["product_id", "title", "price"]
    with pytest.raises(CatalogError, match="holds no rows"):
        load_catalog(path)


def test_unmappable_columns_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "SKU,Name\n1,A\n")
    with pytest.raises(CatalogError, match="Columns found: Name, SKU"):
        load_catalog(path)


def test_non_utf8_file_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("product_id,title\n1,Caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        load_catalog(path)


# --- image paths ---------------------------------------------------------------------------


def test_image_paths_resolve_against_the_catalog_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the catalog's folder
    absolute = str(tmp_path / "abs" / "x.png")
    body = "\n".join([
        "product_id,title,image",
        "1,A,photos/a.jpg",
        f"2,B,{absolute}",
        "3,C,https://cdn.example.com/c.jpg?w=300",
        "4,D,HTTP://cdn.example.com/d.jpg",
        "5,E,",
        "6,F,../up.jpg",
    ]) + "\n"
    write(folder / "c.csv", body)
    images = [p.image for p in load_catalog(Path("..") / "shop" / "c.csv").products]
    assert images == [
        str(folder.resolve() / "photos" / "a.jpg"),
        absolute,
        "https://cdn.example.com/c.jpg?w=300",
        "HTTP://cdn.example.com/d.jpg",
        "",
        str(folder.resolve() / ".." / "up.jpg"),
    ]


# --- Product -------------------------------------------------------------------------------


def test_document_orders_title_category_core_attributes_description() -> None:
    product = Product(
        product_id="1", title="  Turtle Check Shirt ", description=" Slim fit. ",
        category="Shirts",
        attributes={"usage": "Casual", "colour": "Navy Blue", "gender": "Men",
                    "year": "2011", "master_category": "Apparel", "season": ""})
    # Core attributes sorted by name (colour, gender, usage); year/master_category are not
    # core and empty values are skipped.
    assert product.document() == "Turtle Check Shirt. Shirts, Navy Blue, Men, Casual. Slim fit."


def test_document_of_a_bare_product_is_its_title() -> None:
    assert Product(product_id="1", title="Mug").document() == "Mug"
    assert Product(product_id="1", title="Mug", attributes={"colour": "Red"}).document() == (
        "Mug. Red")


def test_metadata_is_flat_and_scalar() -> None:
    product = Product(product_id="1", title="Mug", category="Kitchen",
                      attributes={"colour": "Red"}, price=12, currency="EUR",
                      in_stock=False, image="/x/mug.jpg", variant_of="0")
    meta = product.metadata()
    assert meta == {"title": "Mug", "category": "Kitchen", "currency": "EUR",
                    "in_stock": False, "image": "/x/mug.jpg", "price": 12.0,
                    "variant_of": "0", "colour": "Red"}
    assert isinstance(meta["price"], float)
    assert all(isinstance(v, str | int | float | bool) for v in meta.values())


def test_metadata_omits_unknown_price_and_variant() -> None:
    meta = Product(product_id="1", title="Mug").metadata()
    assert "price" not in meta
    assert "variant_of" not in meta
    assert meta["in_stock"] is True


def test_jsonl_columns_missing_from_the_first_line_still_map(tmp_path: Path) -> None:
    body = "\n".join([
        json.dumps({"product_id": "1", "title": "A"}),
        json.dumps({"product_id": "2", "title": "B", "price": 5, "colour": "Red"}),
    ]) + "\n"
    path = write(tmp_path / "c.jsonl", body)
    assert columns_of(path) == ["product_id", "title", "price", "colour"]
    first, second = load_catalog(path).products
    assert (first.price, first.attributes) == (None, {})
    assert (second.price, second.attributes) == (5.0, {"colour": "Red"})
