"""Catalog loading: CSV, JSONL or Parquet rows mapped onto :class:`Product`, bad rows reported.

A catalog declares how its columns map onto our fields (a :class:`ColumnMapping`). The
shared fashion catalog (``../shared/data/fashion``) is recognised by its columns; other
catalogs either use our field names or pass a mapping (a TOML/JSON file or ``FIELD=COLUMN``
pairs). Every bad row is reported with its row number and reason and skipped; the good rows
still load.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from retrieval.images import is_url

logger = logging.getLogger(__name__)

FIELDS = ("product_id", "title", "description", "category", "price", "currency", "in_stock",
          "image", "variant_of")
# Attribute names that the engine knows how to filter and parse from text.
# Names an attribute may not take: they are product fields (or derived from them).
RESERVED = frozenset(FIELDS) | {"id"}
CORE_ATTRIBUTES = ("colour", "gender", "material", "season", "usage", "size")


@dataclass(frozen=True, kw_only=True)
class Product:
    """One catalog item, as every part of the system sees it.

    Attributes:
        product_id: Unique id within the catalog.
        title: Display name.
        description: Free text (may be empty).
        category: The finest category (e.g. "Dresses").
        attributes: Lower-case attribute names to string values (colour, gender, ...).
        price: Price in ``currency``, or ``None`` when unknown.
        currency: ISO code.
        in_stock: Whether it can be bought now.
        image: Absolute path or URL of the main photo; empty when there is none.
        variant_of: Id of the product this is a variant of, if any.
    """

    product_id: str
    title: str
    description: str = ""
    category: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    price: float | None = None
    currency: str = "USD"
    in_stock: bool = True
    image: str = ""
    variant_of: str | None = None

    def document(self) -> str:
        """The text a text encoder reads for this product: title, category, attributes."""
        parts = [self.title.strip()]
        facts = [self.category, *(v for k, v in sorted(self.attributes.items())
                                  if k in CORE_ATTRIBUTES and v)]
        facts = [f for f in facts if f]
        if facts:
            parts.append(", ".join(facts))
        if self.description:
            parts.append(self.description.strip())
        return ". ".join(p for p in parts if p)

    def metadata(self) -> dict[str, str | int | float | bool]:
        """Flat, filterable metadata for the vector store (Chroma accepts scalars only).

        Attributes come first so that one named like a core field cannot replace it.
        """
        meta: dict[str, str | int | float | bool] = {
            key: value for key, value in self.attributes.items() if key not in RESERVED}
        meta |= {
            "title": self.title,
            "category": self.category,
            "currency": self.currency,
            "in_stock": self.in_stock,
            "image": self.image,
        }
        if self.price is not None:
            meta["price"] = float(self.price)
        if self.variant_of:
            meta["variant_of"] = self.variant_of
        return meta


@dataclass(frozen=True, kw_only=True)
class RowIssue:
    """A row that could not be used, and why."""

    row: int
    product_id: str | None
    reason: str

    def __str__(self) -> str:
        pid = f" (id {self.product_id})" if self.product_id else ""
        return f"row {self.row}{pid}: {self.reason}"


@dataclass(frozen=True, kw_only=True)
class ColumnMapping:
    """How a catalog's columns map onto :class:`Product` fields.

    Attributes:
        name: A label for reports and the manifest.
        fields: Our field name -> source column name.
        attributes: Attribute name -> source column name (attribute names are lower case).
        synthetic_prices: Derive deterministic, clearly labelled prices when the catalog
            has none (for demos only).
        currency: Currency when the catalog has no currency column.
    """

    name: str
    fields: Mapping[str, str]
    attributes: Mapping[str, str] = field(default_factory=dict)
    synthetic_prices: bool = False
    currency: str = "USD"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fields": dict(self.fields),
                "attributes": dict(self.attributes),
                "synthetic_prices": self.synthetic_prices, "currency": self.currency}


# The shared fashion catalog (Myntra "Fashion Product Images"): it has no prices, so demo
# prices are derived from the id and labelled synthetic (attribute price_source=synthetic).
FASHION_MAPPING = ColumnMapping(
    name="fashion",
    fields={"product_id": "id", "title": "productDisplayName", "category": "articleType",
            "image": "image"},
    attributes={"gender": "gender", "master_category": "masterCategory",
                "subcategory": "subCategory", "colour": "baseColour", "season": "season",
                "year": "year", "usage": "usage"},
    synthetic_prices=True,
    currency="INR",
)
NAMED_MAPPINGS = {"fashion": FASHION_MAPPING}


class CatalogError(ValueError):
    """The catalog as a whole cannot be read (not one bad row: those are reported)."""


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(row_number, row)`` from CSV, JSONL or Parquet; rows numbered from 1.

    Row numbers count data rows (the CSV header is not a row), so ``row 1`` is the first
    product in any format.
    """
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with _open_text(path) as fh:
            reader = csv.DictReader(fh, delimiter=_delimiter(fh, suffix))
            try:
                for number, row in enumerate(reader, start=1):
                    if None in row:  # more cells than header columns
                        extra = row.pop(None)
                        row["__extra__"] = extra
                    yield number, row
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc) from None
    elif suffix in (".jsonl", ".ndjson"):
        with _open_text(path) as fh:
            number = 0
            try:
                for line in fh:
                    if not line.strip():
                        continue
                    number += 1
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield number, {"__error__": f"invalid JSON ({exc.msg})"}
                        continue
                    yield number, value if isinstance(value, dict) else {
                        "__error__": "a JSON line must be an object"}
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc) from None
    elif suffix in (".parquet", ".pq"):
        number = 0
        for batch in _parquet(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    else:
        raise CatalogError(
            f"Unsupported catalog format {path.suffix!r} ({path}). Use .csv, .tsv, .jsonl or "
            ".parquet."
        )


def _parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise CatalogError(f"Catalog file {path} is not a readable Parquet file ({exc}). "
                           "Export it again, or as CSV.") from None


def _open_text(path: Path) -> TextIO:
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    return path.open(newline="", encoding="utf-8-sig")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> CatalogError:
    return CatalogError(
        f"Catalog file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}). "
        "Save it as UTF-8 and try again."
    )


def _delimiter(fh: TextIO, suffix: str) -> str:
    if suffix == ".tsv":
        return "\t"
    try:
        sample = fh.read(8192)
    except UnicodeDecodeError as exc:
        raise _not_utf8(Path(fh.name), exc) from None
    fh.seek(0)
    return _sniff_delimiter(sample)


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def columns_of(path: Path) -> list[str]:
    """The column names of a catalog file.

    CSV and Parquet files name them in their header or schema (even without data rows);
    for JSONL they are every key of every valid line, in order of first appearance (a key
    that the first line happens to lack is still a column).
    """
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with _open_text(path) as fh:
            reader = csv.DictReader(fh, delimiter=_delimiter(fh, suffix))
            try:
                return [c for c in reader.fieldnames or [] if c]
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, exc) from None
    if suffix in (".parquet", ".pq"):
        # pandas may store its index as __index_level_0__: not a column of ours.
        return [c for c in _parquet(path).schema_arrow.names if not c.startswith("__")]
    columns: dict[str, None] = {}
    for _, row in read_rows(path):
        if "__error__" not in row:
            columns.update((c, None) for c in row if not c.startswith("__"))
    return list(columns)


def detect_mapping(columns: Iterable[str]) -> ColumnMapping:
    """Picks the mapping for a catalog from its column names.

    Raises:
        CatalogError: The columns match neither a named mapping nor our field names.
    """
    cols = set(columns)
    for mapping in NAMED_MAPPINGS.values():
        if set(mapping.fields.values()) <= cols:
            return mapping
    if {"product_id", "title"} <= cols:
        fields = {f: f for f in FIELDS if f in cols}
        attributes = {c.lower(): c for c in cols
                      if c.lower() not in RESERVED and not c.startswith("__")}
        return ColumnMapping(name="canonical", fields=fields, attributes=attributes)
    raise CatalogError(
        "Cannot tell which columns hold the product id and title. Columns found: "
        f"{', '.join(sorted(cols)) or '(none)'}. Rename them to product_id, title, ... or pass "
        "a mapping: --mapping FILE.toml, or --map product_id=SKU --map title=Name ..."
    )


def load_mapping(spec: str | Path) -> ColumnMapping:
    """Loads a named mapping (``fashion``) or a mapping file (TOML or JSON).

    The file holds ``[fields]`` (our field -> column) and optional ``[attributes]``
    (attribute -> column), ``currency`` and ``synthetic_prices``.
    """
    if str(spec) in NAMED_MAPPINGS:
        return NAMED_MAPPINGS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise CatalogError(
            f"Mapping {spec!r} is neither a named mapping ({', '.join(NAMED_MAPPINGS)}) nor a file."
        )
    kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"Mapping file {path} is not valid {kind} ({exc}).") from None
    if not isinstance(data, dict):
        raise CatalogError(f"Mapping file {path} must hold a table with [fields] (got a "
                           f"{type(data).__name__}).")
    return mapping_from_dict(data, name=path.stem)


def mapping_from_dict(data: Mapping[str, Any], name: str = "custom") -> ColumnMapping:
    """Builds and validates a mapping from plain data."""
    fields = dict(data.get("fields", {}))
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise CatalogError(
            f"Unknown field(s) {sorted(unknown)} in mapping {name!r}; fields are {list(FIELDS)}."
        )
    if "product_id" not in fields or "title" not in fields:
        raise CatalogError(f"Mapping {name!r} must map at least product_id and title.")
    clashing = {k for k in dict(data.get("attributes", {})) if k.lower() in RESERVED}
    if clashing:
        raise CatalogError(
            f"Attribute name(s) {sorted(clashing)} in mapping {name!r} are product fields; "
            "map them under [fields] or give the attributes other names.")
    return ColumnMapping(
        name=str(data.get("name", name)),
        fields=fields,
        attributes={k.lower(): v for k, v in dict(data.get("attributes", {})).items()},
        synthetic_prices=bool(data.get("synthetic_prices", False)),
        currency=str(data.get("currency", "USD")),
    )


def synthetic_price(product_id: str, category: str) -> float:
    """A deterministic demo price (for catalogs without prices), stable across runs."""
    digest = hashlib.sha256(f"{category}|{product_id}".encode()).digest()
    base = 300 + int.from_bytes(digest[:2], "big") % 2700  # 300..2999
    scale = {"Watches": 3.0, "Shoes": 1.6, "Casual Shoes": 1.6, "Sports Shoes": 1.8,
             "Formal Shoes": 2.0, "Handbags": 1.5, "Jackets": 1.7, "Sunglasses": 1.3,
             "Socks": 0.3, "Briefs": 0.4, "Caps": 0.5}.get(category, 1.0)
    return float(round(base * scale / 10) * 10 - 1)


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _parse_price(raw: str) -> float:
    text = raw.replace(",", "").strip()
    for symbol in ("$", "€", "£", "₹", "Rs.", "Rs", "INR", "USD", "EUR"):
        text = text.replace(symbol, "")
    price = float(text)
    if not math.isfinite(price) or price < 0:
        raise ValueError(raw)
    return price


def _parse_bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in {"1", "true", "yes", "y", "in stock", "instock", "available"}:
        return True
    if text in {"0", "false", "no", "n", "out of stock", "oos", "unavailable"}:
        return False
    raise ValueError(raw)


@dataclass
class LoadedCatalog:
    """The products of a catalog file, with the rows that were skipped and why."""

    path: Path
    mapping: ColumnMapping
    products: list[Product]
    rows: list[int]  # the row number of each product, for reports
    issues: list[RowIssue]
    rows_read: int


def load_catalog(
    path: str | Path,
    mapping: ColumnMapping | None = None,
    *,
    limit: int | None = None,
) -> LoadedCatalog:
    """Reads a catalog file into products, reporting and skipping every bad row.

    Args:
        path: CSV, TSV, JSONL or Parquet file. Relative image paths are resolved against
            its folder.
        mapping: Column mapping; detected from the columns when ``None``.
        limit: Read at most this many rows (for quick trials).

    Returns:
        The loaded products and the issues of the rows that were skipped.

    Raises:
        CatalogError: The file is missing, empty, of an unknown format, or its columns
            cannot be mapped.
    """
    path = Path(path)
    if path.is_dir():
        raise CatalogError(f"{path} is a folder: give the catalog file in it (CSV, TSV, JSONL "
                           "or Parquet).")
    if not path.is_file():
        raise CatalogError(f"Catalog file {path} does not exist.")
    if limit is not None and limit < 1:
        raise CatalogError(f"limit must be at least 1 row (got {limit}).")
    if mapping is None:
        columns = columns_of(path)
        if not columns:
            raise CatalogError(f"Catalog file {path} is empty: it has no header and no "
                               "readable rows.")
        mapping = detect_mapping(columns)
    logger.info("reading %s with the %r column mapping", path, mapping.name)
    base = path.parent.resolve()
    products: list[Product] = []
    rows: list[int] = []
    issues: list[RowIssue] = []
    seen: dict[str, int] = {}
    rows_read = 0
    for number, row in read_rows(path):
        if limit is not None and rows_read >= limit:
            break
        rows_read += 1
        if "__error__" in row:
            issues.append(RowIssue(row=number, product_id=None, reason=row["__error__"]))
            continue
        product, reason = _to_product(row, mapping, base)
        if product is None:
            pid = _clean(row.get(mapping.fields["product_id"])) or None
            issues.append(RowIssue(row=number, product_id=pid, reason=reason))
            continue
        if product.product_id in seen:
            issues.append(RowIssue(
                row=number, product_id=product.product_id,
                reason=f"duplicate product id (first seen in row {seen[product.product_id]})"))
            continue
        seen[product.product_id] = number
        products.append(product)
        rows.append(number)
    if rows_read == 0:
        raise CatalogError(f"Catalog file {path} holds no rows.")
    return LoadedCatalog(path=path, mapping=mapping, products=products, rows=rows, issues=issues,
                         rows_read=rows_read)


def _to_product(row: Mapping[str, Any], mapping: ColumnMapping,
                base: Path) -> tuple[Product | None, str]:
    if "__extra__" in row:
        return None, "more cells than the header has columns"
    get = {f: _clean(row.get(col)) for f, col in mapping.fields.items()}
    pid = get.get("product_id", "")
    if not pid:
        return None, "missing product id"
    title = get.get("title", "")
    if not title:
        return None, "missing title"
    attributes = {name: _clean(row.get(col)) for name, col in mapping.attributes.items()}
    attributes = {k: v for k, v in attributes.items() if v}
    category = get.get("category", "")
    price: float | None = None
    if get.get("price"):
        try:
            price = _parse_price(get["price"])
        except ValueError:
            return None, f"bad price {get['price']!r} (expected a non-negative number)"
    elif mapping.synthetic_prices:
        price = synthetic_price(pid, category)
        attributes["price_source"] = "synthetic"
    in_stock = True
    if get.get("in_stock"):
        try:
            in_stock = _parse_bool(get["in_stock"])
        except ValueError:
            return None, f"bad in_stock {get['in_stock']!r} (expected true/false)"
    image = get.get("image", "")
    if image and not is_url(image):
        image_path = Path(image)
        image = str(image_path if image_path.is_absolute() else (base / image_path))
    return Product(
        product_id=pid,
        title=title,
        description=get.get("description", ""),
        category=category,
        attributes=attributes,
        price=price,
        currency=get.get("currency") or mapping.currency,
        in_stock=in_stock,
        image=image,
        variant_of=get.get("variant_of") or None,
    ), ""
