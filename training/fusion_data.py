"""Training pairs for the fusion head, from an index's stored vectors (nothing re-encoded).

Three kinds of query-product pairs:

- **Attribute queries** (catalog self-supervision, text side): shopper phrasings of each
  training product's attributes (:mod:`training.fusion_queries`), encoded once with the
  index's own text encoders. The product side is the product with its text slots dropped
  (image slots only) with probability ``text_drop``, else whole; every product in a batch
  that has the attributes the words ask for is a positive.
- **Documents**: the product's own stored text vector as a query for its photo, the
  classic image-text pair (no encoding at all).
- **Photo queries**: shoppers' photos of training products (coloured background, rotation,
  crop; the larger photo where one exists), encoded once and cached; the positive is the
  product, a sibling with the same category, colour and gender is a hard negative.
- **Logged pairs** (when a dataset from ``shopassist dataset`` or an event log is given):
  text queries with their clicked / bought products as positives and the products shown
  above a click but skipped as negatives, inverse-propensity weighted.

Products are split into train / valid / test by a hash of their id (the same scheme as
:func:`training.datasets.catalog_pairs`): held-out products' photos and texts are never
trained on, and the held-out attribute queries are asked over them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.encoders import IMAGE, TEXT
from training.fusion_config import FusionConfig
from training.fusion_encode import (
    IndexView,
    QueryEncoder,
    SlotInfo,
    cached_photo_queries,
    cached_text_queries,
    digest,
    plan_photos,
)
from training.fusion_queries import AttributeCodes, evaluation_queries, product_queries

logger = logging.getLogger(__name__)

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")
SPLIT_SALT = "shopassist-split-v1"  # as training.datasets: one product, one split everywhere
SHARED_PHOTOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / \
    "fashion_300px" / "images"


def product_split(product_ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  salt: str = SPLIT_SALT) -> np.ndarray:
    """Per product: 0 train, 1 valid, 2 test, from a hash of its id (never changes)."""
    edges = np.cumsum(fractions)
    out = np.empty(len(product_ids), dtype=np.int8)
    for i, pid in enumerate(product_ids):
        h = hashlib.sha256(f"{salt}:product:{pid}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        out[i] = min(int(np.searchsorted(edges, u, side="right")), 2)
    return out


@dataclass
class LoggedPairs:
    """Logged text queries with a product each: label 1 clicked/bought, 0 skipped."""

    query: np.ndarray  # index into FusionData.texts
    rows: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    split: np.ndarray
    snapshot: str


@dataclass
class FusionData:
    """Everything a fusion-head run reads, as arrays."""

    slots: tuple[SlotInfo, ...]
    products: dict[str, np.ndarray]  # slot -> (n, dim) float16, stored vectors
    split: np.ndarray  # (n,) int8
    codes: AttributeCodes
    categories: np.ndarray  # (n,) str
    doc_group: np.ndarray  # (n,) identical product documents share a group
    sibling_group: np.ndarray  # (n,) same category, colour and gender
    texts: list[str]
    text_vectors: dict[str, np.ndarray]  # query slot -> (n_texts, dim) float16
    text_codes: np.ndarray  # (n_texts, n_attributes) constraint codes
    train_offsets: np.ndarray  # product row -> its phrasings: ids[off[r]:off[r+1]]
    train_ids: np.ndarray
    eval_texts: dict[int, np.ndarray]  # split -> text ids of held-out attribute queries
    photo_rows: np.ndarray
    photo_larger: np.ndarray
    photo_vectors: dict[str, np.ndarray]
    logged: LoggedPairs | None
    snapshot: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.split)

    @property
    def text_slots(self) -> list[str]:
        """Slots a product's own words fill (dropped for "image only" products)."""
        return [s.name for s in self.slots if s.source == TEXT]

    @property
    def image_slots(self) -> list[str]:
        return [s.name for s in self.slots if s.source == IMAGE]

    @property
    def photo_split(self) -> np.ndarray:
        return self.split[self.photo_rows]

    def tag_columns(self, names: Sequence[str]) -> list[int]:
        """The attribute columns of ``names`` that this catalog fills with two or more
        values (the tags a head can learn here), in the order given.

        Raises:
            ValueError: A name that is not a query attribute.
        """
        unknown = [n for n in names if n not in self.codes.names]
        if unknown:
            raise ValueError(f"Unknown tags {unknown}; a head can read "
                             f"{', '.join(self.codes.names)}.")
        cols = [self.codes.names.index(n) for n in names]
        return [c for c in cols if len(self.codes.values[c]) >= 2]

    def document_queries(self) -> dict[str, str]:
        """Query slot -> the stored product slot that holds the same encoding of the
        product's words (a text slot with the same encoder)."""
        by_encoder = {s.encoder: s.name for s in self.slots if s.source == TEXT}
        spec = {s.name: s.encoder for s in self.slots}
        return {q: by_encoder[spec[q]] for q in self.text_vectors if spec[q] in by_encoder}


def _groups(keys: Sequence[Any]) -> np.ndarray:
    index: dict[Any, int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def _phrasings(view: IndexView, codes: AttributeCodes, split: np.ndarray,
               config: FusionConfig) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray,
                                              dict[int, np.ndarray]]:
    texts: dict[str, int] = {}
    constraints: list[np.ndarray] = []

    def add(text: str, constraint: np.ndarray) -> int:
        if text not in texts:
            texts[text] = len(texts)
            constraints.append(constraint)
        return texts[text]

    offsets = np.zeros(len(view) + 1, dtype=np.int64)
    ids: list[int] = []
    for row in range(len(view)):
        if split[row] == TRAIN:
            rng = np.random.default_rng([config.seed, 5, row])
            for text, constraint in product_queries(codes, row, view.products[row].price,
                                                    config.texts_per_product, rng,
                                                    config.price_share):
                ids.append(add(text, constraint))
        offsets[row + 1] = len(ids)
    held: dict[int, np.ndarray] = {}
    for part in (VALID, TEST):
        rows = np.flatnonzero(split == part)
        held[part] = np.array([add(t, c) for t, c in evaluation_queries(
            codes, rows, config.eval_queries, config.seed + part,
            config.eval_min_relevant)], dtype=np.int64)
    width = len(codes.names)
    matrix = np.stack(constraints) if constraints else np.zeros((0, width), dtype=np.int32)
    return list(texts), matrix, offsets, np.asarray(ids, dtype=np.int64), held


def logged_source(source: str) -> tuple[Any, str] | None:
    """The impressions table of a ``shopassist dataset`` folder or an event log (URL or
    SQLite path), with its snapshot id; ``None`` when :mod:`training.datasets` is not
    available."""
    try:
        from training import datasets
    except ImportError as exc:  # the dataset builders are optional here
        logger.warning("logged pairs skipped: training.datasets unavailable (%s)", exc)
        return None
    return datasets.read_impressions(source)


def logged_pairs(frame: Any, view: IndexView, snapshot: str
                 ) -> tuple[list[str], dict[str, np.ndarray]]:
    """Pairs from an impressions table: per text query with a click, the clicked or bought
    products (label 1, weighted by their inverse propensity) and the unclicked products
    shown above the last click (label 0).

    Returns:
        The query texts, and arrays ``text`` (index into them), ``rows``, ``labels``,
        ``weights``, ``split``.
    """
    row_of = {p.product_id: i for i, p in enumerate(view.products)}
    frame = frame[frame["query_text"].notna() & ~frame["has_image"].astype(bool)]
    frame = frame[frame["product_id"].isin(row_of)]
    positive = frame["clicked"].astype(bool) | frame["purchased"].astype(bool)
    last = frame.assign(_pos=positive, _r=frame["rank"].where(positive)).groupby(
        "query_id")["_r"].transform("max")
    keep = positive | (frame["rank"] < last)
    frame, positive = frame[keep & last.notna()], positive[keep & last.notna()]
    texts = sorted(set(frame["query_text"]))
    index = {t: i for i, t in enumerate(texts)}
    weight = frame["ipw"].to_numpy(dtype=np.float64) if "ipw" in frame else \
        np.ones(len(frame))
    if "split" in frame:
        split = frame["split"].map({n: i for i, n in enumerate(SPLIT_NAMES)}).fillna(TRAIN)
    else:
        split = frame["query_id"].map(lambda q: int(product_split([str(q)])[0]))
    return texts, {"text": frame["query_text"].map(index).to_numpy(dtype=np.int64),
                   "rows": frame["product_id"].map(row_of).to_numpy(dtype=np.int64),
                   "labels": positive.to_numpy(dtype=np.float32),
                   "weights": np.where(positive, weight, 1.0).astype(np.float32),
                   "split": split.to_numpy(dtype=np.int8)}


def photos_dir_of(config: FusionConfig) -> Path | None:
    if config.photos_dir:
        return Path(config.photos_dir)
    return SHARED_PHOTOS.resolve() if SHARED_PHOTOS.is_dir() else None


def build_fusion_data(view: IndexView, config: FusionConfig, cache_dir: Path | None,
                      encoder: Callable[[], QueryEncoder] | None = None,
                      show: bool | None = None) -> FusionData:
    """Assembles the training and evaluation pairs of one index.

    Args:
        view: The index version to train on.
        config: Data settings (seed, phrasings, photos, splits, dataset).
        cache_dir: Where query encodings are cached (``None``: never cached).
        encoder: Makes the index's query encoder when something is not cached yet (only the
            first process of a distributed run gets one; the others read the cache).
        show: Progress bars (default: on a terminal).

    Raises:
        FileNotFoundError: Something is not cached and there is no ``encoder``, or the
            dataset folder lacks its impressions.
    """
    ids = [p.product_id for p in view.products]
    split = product_split(ids, config.fractions)
    table = view.table
    codes = AttributeCodes.from_columns({name: table.column(name) for name in
                                         ("category", "colour", "gender", "subcategory",
                                          "usage", "season")})
    texts, text_codes, offsets, train_ids, held = _phrasings(view, codes, split, config)
    logged = None
    logged_texts: list[str] = []
    if config.dataset:
        found = logged_source(config.dataset)
        if found is not None:
            frame, snap = found
            logged_texts, arrays = logged_pairs(frame, view, snap)
            base = len(texts)
            texts = texts + logged_texts
            text_codes = np.concatenate([text_codes, np.full(
                (len(logged_texts), text_codes.shape[1]), -1, dtype=np.int32)])
            logged = LoggedPairs(arrays["text"] + base, arrays["rows"], arrays["labels"],
                                 arrays["weights"], arrays["split"], snap)
    text_vectors = cached_text_queries(view, texts, cache_dir, encoder, show)
    plan = plan_photos(view, split, seed=config.seed, per_larger=config.photos_per_larger,
                       catalog_photos=config.catalog_photos,
                       eval_catalog_photos=config.eval_catalog_photos,
                       photos_dir=photos_dir_of(config))
    photos = cached_photo_queries(view, plan, config.seed, cache_dir, encoder, show)
    categories = table.column("category").astype(str)
    sibling = _groups(zip(categories, table.column("colour"), table.column("gender"),
                          strict=True))
    snapshot = digest([view.key, digest(texts), plan.key(), config.seed,
                       list(config.fractions), logged.snapshot if logged else None])
    data = FusionData(
        slots=view.slots, products=view.vectors, split=split, codes=codes,
        categories=categories, doc_group=_groups(view.records.text_keys),
        sibling_group=sibling, texts=texts, text_vectors=text_vectors, text_codes=text_codes,
        train_offsets=offsets, train_ids=train_ids, eval_texts=held,
        photo_rows=photos["rows"], photo_larger=photos["larger"],
        photo_vectors={k[5:]: v for k, v in photos.items() if k.startswith("slot.")},
        logged=logged, snapshot=snapshot)
    data.info = {
        "index": {"folder": str(view.folder), "version": view.version, "key": view.key,
                  "products": len(view)},
        "products": {name: int((split == i).sum()) for i, name in enumerate(SPLIT_NAMES)},
        "text_queries": len(texts) - len(logged_texts), "train_phrasings": len(train_ids),
        "eval_queries": {SPLIT_NAMES[k]: len(v) for k, v in held.items()},
        "photos": {name: int((data.photo_split == i).sum())
                   for i, name in enumerate(SPLIT_NAMES)},
        "larger_photos": int(data.photo_larger.sum()),
        "logged_pairs": 0 if logged is None else len(logged.rows),
        "snapshot": snapshot}
    logger.info("fusion data %s: %s", snapshot, data.info)
    return data
