"""Reading and writing the data files of an index version: products, per-slot vectors and,
for a learned fusion, the fused vectors."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from retrieval.catalog import Product
from retrieval.filters import ColumnTable
from retrieval.manifest import IndexStateError

logger = logging.getLogger(__name__)

PRODUCTS_FILE = "products.parquet"
VECTORS_FILE = "vectors.safetensors"
FUSED_FILE = "fused.safetensors"


@dataclass
class ProductRecords:
    """The products of an index version with the content keys of what was encoded."""

    products: list[Product]
    image_keys: list[str]  # sha256 of the image bytes (or its URL); "" without image
    text_keys: list[str]  # sha256 of the encoded document text

    def table(self) -> ColumnTable:
        """Columns for filter masks: category plus every attribute."""
        keys = sorted({k for p in self.products for k in p.attributes})
        columns = {"category": [p.category for p in self.products],
                   "currency": [p.currency for p in self.products]}
        for key in keys:
            columns[key] = [p.attributes.get(key, "") for p in self.products]
        return ColumnTable(columns, [p.price for p in self.products],
                           [p.in_stock for p in self.products])


def write_products(folder: Path, records: ProductRecords) -> None:
    ps = records.products
    table = pa.table({
        "product_id": [p.product_id for p in ps],
        "title": [p.title for p in ps],
        "description": [p.description for p in ps],
        "category": [p.category for p in ps],
        "attributes": [json.dumps(dict(p.attributes), ensure_ascii=False) for p in ps],
        "price": pa.array([p.price for p in ps], type=pa.float64()),
        "currency": [p.currency for p in ps],
        "in_stock": [p.in_stock for p in ps],
        "image": [p.image for p in ps],
        "variant_of": [p.variant_of for p in ps],
        "image_key": records.image_keys,
        "text_key": records.text_keys,
    })
    pq.write_table(table, folder / PRODUCTS_FILE)


def read_products(folder: Path) -> ProductRecords:
    """Reads the products of a version.

    Raises:
        IndexStateError: The file is missing or unreadable.
    """
    try:
        cols = pq.read_table(folder / PRODUCTS_FILE).to_pydict()
    except (OSError, pa.ArrowInvalid) as exc:
        raise IndexStateError(f"{folder / PRODUCTS_FILE} cannot be read ({exc}); rebuild the "
                              "index.") from exc
    products = [
        Product(product_id=pid, title=title, description=desc or "", category=cat or "",
                attributes=json.loads(attrs or "{}"), price=price, currency=cur or "",
                in_stock=bool(stock), image=image or "", variant_of=variant)
        for pid, title, desc, cat, attrs, price, cur, stock, image, variant in zip(
            cols["product_id"], cols["title"], cols["description"], cols["category"],
            cols["attributes"], cols["price"], cols["currency"], cols["in_stock"],
            cols["image"], cols["variant_of"], strict=True)
    ]
    return ProductRecords(products, list(cols["image_key"]), list(cols["text_key"]))


def write_vectors(folder: Path, slots: Mapping[str, np.ndarray]) -> None:
    """Per-slot vectors in float16: re-ranking and re-fusion inputs (the fused vectors live
    in the vector store and are derived from these)."""
    tensors = {f"slot.{name}": np.ascontiguousarray(v, dtype=np.float16)
               for name, v in slots.items()}
    save_file(tensors, str(folder / VECTORS_FILE), metadata={"format": "1"})


def read_vectors(folder: Path, slot_names: Sequence[str], n: int) -> dict[str, np.ndarray]:
    """Reads the per-slot vectors and checks they are row-aligned with the products.

    Raises:
        IndexStateError: Missing, corrupt, or not row-aligned with the products.
    """
    path = folder / VECTORS_FILE
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise IndexStateError(f"{path} cannot be read ({exc}); rebuild the index.") from exc
    slots = {}
    for name in slot_names:
        array = tensors.get(f"slot.{name}")
        if array is None or array.shape[0] != n:
            raise IndexStateError(f"{path} lacks slot {name!r} for {n} products; rebuild the "
                                  "index.")
        slots[name] = array
    return slots


def write_fused(folder: Path, fused: np.ndarray, fusion_version: str) -> None:
    """The products' fused vectors in float16, tagged with the fusion that made them.

    A learned head's fused vectors cost a pass of the head (and of its tag memory's
    nearest-neighbour vote) over the whole catalog; an engine reads them back here instead
    of paying that at every start. float16 moves a cosine by about 1e-5.
    """
    save_file({"fused": np.ascontiguousarray(fused, dtype=np.float16)},
              str(folder / FUSED_FILE), metadata={"format": "1", "fusion": fusion_version})


def read_fused(folder: Path, fusion_version: str, n: int, dim: int) -> np.ndarray | None:
    """The stored fused vectors as float32 unit rows, or ``None`` when there are none for this
    fusion: no file (an index published before they were stored, or a training-free one),
    another fusion's, the wrong shape, or unreadable — the caller re-fuses.
    """
    path = folder / FUSED_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="numpy") as handle:
            made_by = (handle.metadata() or {}).get("fusion")
            if made_by != fusion_version:
                logger.warning("%s was fused by %s, not %s; re-fusing.", path, made_by,
                               fusion_version)
                return None
            fused = handle.get_tensor("fused")
    except (OSError, SafetensorError) as exc:
        logger.warning("%s cannot be read (%s); re-fusing.", path, exc)
        return None
    if fused.shape != (n, dim) or fused.dtype != np.float16:
        logger.warning("%s holds %s %s vectors, not (%d, %d) float16; re-fusing.", path,
                       fused.shape, fused.dtype, n, dim)
        return None
    # back to float32 unit rows (torch converts float16 several times faster than numpy)
    return torch.nn.functional.normalize(torch.from_numpy(fused).float(), dim=1).numpy()
