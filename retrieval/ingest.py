"""Building an index version from a catalog: decode, encode, fuse, store, switch.

Images are read and decoded by a small thread pool while the encoders run on the batch
before (decoding is I/O and C code that releases the GIL). Every image is identified by
the hash of its bytes (or its URL) and every document by the hash of its text: vectors of
content the serving version already encoded with the same encoders are reused, so an
unchanged catalog re-encodes nothing, and an unchanged catalog *and* contract builds
nothing at all.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.artifacts import ProductRecords, read_products, read_vectors
from retrieval.catalog import ColumnMapping, Product, RowIssue, load_catalog
from retrieval.config import Settings
from retrieval.encoders import IMAGE, TEXT
from retrieval.fusion import Fusion
from retrieval.fusion_head import ArtifactError
from retrieval.images import ImageError, ImageLimits, is_url, load_image
from retrieval.manifest import IndexLayout, IndexStateError, read_manifest
from retrieval.preprocess import PhotoNormaliser, normalise_variants
from retrieval.profiles import LoadedProfile, load_profile
from retrieval.progress import progress as progress_bar
from retrieval.publish import (
    VersionContent,
    content_fingerprint,
    fusion_from_manifest,
    publish,
)

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What a build did; :meth:`summary` is what the CLI prints."""

    index: Path
    version: str | None
    profile: str
    products: int
    rows_read: int
    issues: list[RowIssue] = field(default_factory=list)
    encoded_images: int = 0
    reused_images: int = 0
    encoded_texts: int = 0
    reused_texts: int = 0
    without_image: int = 0
    up_to_date: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        lines = []
        if self.up_to_date:
            lines.append(f"Index {self.index} is up to date ({self.version}, {self.products:,} "
                         "products): nothing to rebuild. Pass --force to rebuild anyway.")
        else:
            lines.append(f"Built {self.version} at {self.index}: {self.products:,} products "
                         f"from {self.rows_read:,} rows in {self.seconds:.1f} s "
                         f"(profile {self.profile}).")
            lines.append(f"  images: {self.encoded_images:,} encoded, {self.reused_images:,} "
                         f"reused; texts: {self.encoded_texts:,} encoded, {self.reused_texts:,} "
                         "reused")
        if self.without_image:
            lines.append(f"  {self.without_image:,} products have no image (text search only)")
        if self.issues:
            lines.append(f"  {len(self.issues):,} rows skipped:")
            for issue in self.issues[:20]:
                lines.append(f"    {issue}")
            if len(self.issues) > 20:
                lines.append(f"    ... and {len(self.issues) - 20:,} more (see issues.csv in "
                             "the version folder)")
        return "\n".join(lines)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Prepared:
    index: int
    key: str
    images: dict[PhotoNormaliser, Image.Image] | None  # None: reused, or failed
    error: str | None = None


def _prepare(index: int, product: Product, limits: ImageLimits,
             variants: Sequence[PhotoNormaliser], cached: set[str]) -> _Prepared:
    """Reads, hashes, decodes and normalises one product photo (runs in a worker thread)."""
    try:
        if is_url(product.image):
            key = "url:" + sha256(product.image.encode())
            if key in cached:
                return _Prepared(index, key, None)
            image = load_image(product.image, limits)
        else:
            path = Path(product.image)
            try:
                size = path.stat().st_size
            except OSError:
                return _Prepared(index, "", None, f"image file {path} does not exist")
            if size > limits.max_bytes:
                return _Prepared(index, "", None, f"image {path} is {size:,} bytes, over the "
                                 f"{limits.max_bytes:,}-byte limit")
            data = path.read_bytes()
            key = sha256(data)
            if key in cached:
                return _Prepared(index, key, None)
            image = load_image(data, limits, name=str(path))
        prepared = normalise_variants(image, variants)
        return _Prepared(index, key, dict(zip(variants, prepared, strict=True)))
    except ImageError as exc:
        return _Prepared(index, "", None, f"unreadable image: {exc}")
    except OSError as exc:
        return _Prepared(index, "", None, f"unreadable image: {exc}")


def _bounded_map(pool: ThreadPoolExecutor | None, fn: Callable[[int], _Prepared], n: int,
                 window: int) -> Iterator[_Prepared]:
    """``pool.map`` with at most ``window`` results in flight (bounded memory); without a
    pool, in line on this thread (``decode_workers = 0``)."""
    if pool is None:
        yield from (fn(i) for i in range(n))
        return
    pending: collections.deque[Future[_Prepared]] = collections.deque()
    for i in range(n):
        pending.append(pool.submit(fn, i))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Cache:
    """Vectors of the serving version, keyed by content.

    Image vectors are reused when every image slot was encoded exactly as now (same
    encoders, revisions and photo preparation), text vectors when every text slot was:
    changing how photos are prepared keeps the text vectors, and changing fusion weights
    keeps them all.
    """

    def __init__(self) -> None:
        self.image_rows: dict[str, int] = {}
        self.text_rows: dict[str, int] = {}
        self.vectors: dict[str, np.ndarray] = {}
        self.manifest: dict[str, Any] | None = None

    @classmethod
    def load(cls, layout: IndexLayout, loaded: LoadedProfile) -> _Cache:
        cache = cls()
        if layout.current() is None:
            return cache
        try:
            folder = layout.version_dir()
            manifest = read_manifest(folder)
            cache.manifest = manifest
            built = {c["slot"]: _encoding_contract(c, manifest) for c in manifest["slots"]}
            now = {c["slot"]: _encoding_contract(c, None) for c in loaded.contract()}
            reusable = {name for name in now if built.get(name) == now[name]}
            slots = loaded.profile.slots
            image_ok = all(s.name in reusable for s in slots if s.source == IMAGE)
            text_ok = all(s.name in reusable for s in slots if s.source == TEXT)
            if not (image_ok or text_ok):
                logger.info("the serving index used other encoders: encoding everything")
                return cache
            records = read_products(folder)
            names = [s.name for s in slots if s.name in reusable]
            cache.vectors = read_vectors(folder, names, len(records.products))
        except IndexStateError as exc:
            logger.warning("cannot reuse the serving index's vectors: %s", exc)
            return cache
        if image_ok:
            cache.image_rows = {k: i for i, k in enumerate(records.image_keys) if k}
        if text_ok:
            cache.text_rows = {k: i for i, k in enumerate(records.text_keys)}
        return cache


def _encoding_contract(slot: dict[str, Any], manifest: dict[str, Any] | None
                       ) -> tuple[Any, ...]:
    """What makes a slot's stored vectors reusable: its encoder and photo preparation,
    not its fusion weight."""
    normaliser = slot.get("normaliser")
    if normaliser is None and manifest is not None and slot.get("source") == IMAGE:
        normaliser = manifest.get("normaliser")  # indexes that had one for all slots
    prepared = PhotoNormaliser.from_dict(normaliser) if normaliser is not None else None
    return (slot.get("spec"), slot["encoder"], slot["revision"], slot["dim"], prepared)


def ingest(
    catalog: str | Path,
    *,
    settings: Settings,
    mapping: ColumnMapping | None = None,
    limit: int | None = None,
    force: bool = False,
    progress: bool | None = None,
    profile: LoadedProfile | None = None,
    keep_versions: int = 2,
) -> IngestReport:
    """Builds a new index version from ``catalog`` and switches it in atomically.

    Args:
        catalog: CSV / TSV / JSONL / Parquet file.
        settings: Resolved settings (index folder, profile, device, limits, HNSW, store).
        mapping: Column mapping; detected from the columns when ``None``.
        limit: Read at most this many catalog rows.
        force: Build a new version even when nothing changed.
        progress: Show progress bars (default: when stderr is a terminal).
        profile: Already loaded encoders (default: load ``settings.profile``).
        keep_versions: Complete versions to keep on disk (older ones are deleted).

    Returns:
        What was built, reused and skipped.

    Raises:
        CatalogError: The catalog cannot be read at all.
        ModelUnavailableError: The profile's encoders cannot load here.
        StoreError: The Chroma server does not answer.
    """
    started = time.perf_counter()
    show = progress
    layout = IndexLayout(Path(settings.index_dir))
    loaded_catalog = load_catalog(catalog, mapping, limit=limit)
    loaded = profile or load_profile(settings.profile, settings)
    variants = loaded.profile.photo_variants()
    cache = _Cache.load(layout, loaded)
    products = loaded_catalog.products
    issues = list(loaded_catalog.issues)
    report = IngestReport(index=layout.root, version=None, profile=loaded.profile.name,
                          products=0, rows_read=loaded_catalog.rows_read)

    image_slots = [s for s in loaded.profile.slots if s.source == IMAGE]
    text_slots = [s for s in loaded.profile.slots if s.source == TEXT]
    n = len(products)
    slot_vectors = {s.name: np.zeros((n, loaded.encoder(s).dim), dtype=np.float32)
                    for s in loaded.profile.slots}
    keep = np.ones(n, dtype=bool)
    image_keys = [""] * n

    # Images: decode in worker threads, encode in batches on this thread.
    limits = ImageLimits(max_pixels=settings.max_image_pixels,
                         max_bytes=settings.max_image_bytes,
                         timeout_s=settings.url_timeout_s, retries=settings.url_retries)
    with_image = [i for i, p in enumerate(products) if p.image]
    report.without_image = n - len(with_image)
    cached_keys = set(cache.image_rows)
    batch: list[tuple[int, dict[PhotoNormaliser, Image.Image]]] = []

    def flush() -> None:
        if not batch:
            return
        rows = [i for i, _ in batch]
        for slot in image_slots:
            variant = loaded.profile.normaliser_of(slot)
            images = [prepared[variant] for _, prepared in batch]
            slot_vectors[slot.name][rows] = loaded.encoder(slot).encode_images(images)
        report.encoded_images += len(batch)
        batch.clear()

    workers = max(0, settings.decode_workers)
    bar = progress_bar(len(with_image), "images", "img", show)
    with (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") if workers
          else contextlib.nullcontext()) as pool:
        def task(j: int) -> _Prepared:
            i = with_image[j]
            return _prepare(i, products[i], limits, variants, cached_keys)

        for item in _bounded_map(pool, task, len(with_image), window=settings.batch_size * 4):
            bar.update(1)
            if item.error is not None:
                keep[item.index] = False
                issues.append(RowIssue(row=loaded_catalog.rows[item.index],
                                       product_id=products[item.index].product_id,
                                       reason=item.error))
                continue
            image_keys[item.index] = item.key
            if item.images is None:  # same bytes as an image the serving index has
                row = cache.image_rows[item.key]
                for slot in image_slots:
                    slot_vectors[slot.name][item.index] = cache.vectors[slot.name][row]
                report.reused_images += 1
                continue
            batch.append((item.index, item.images))
            if len(batch) >= settings.batch_size:
                flush()
        flush()
    bar.close()

    # Texts.
    documents = [p.document() for p in products]
    text_keys = [sha256(d.encode()) for d in documents]
    todo = [i for i in range(n) if keep[i] and text_keys[i] not in cache.text_rows]
    for i in range(n):
        if keep[i] and text_keys[i] in cache.text_rows:
            row = cache.text_rows[text_keys[i]]
            for slot in text_slots:
                slot_vectors[slot.name][i] = cache.vectors[slot.name][row]
            report.reused_texts += 1
    if todo and text_slots:
        bar = progress_bar(len(todo), "texts", "doc", show)
        step = max(settings.batch_size * 8, 256)
        for start in range(0, len(todo), step):
            rows = todo[start:start + step]
            texts = [documents[i] for i in rows]
            for slot in text_slots:
                slot_vectors[slot.name][rows] = loaded.encoder(slot).encode_texts(texts)
            bar.update(len(rows))
        bar.close()
    report.encoded_texts = len(todo)

    kept = np.flatnonzero(keep)
    products = [products[i] for i in kept]
    records = ProductRecords(products, [image_keys[i] for i in kept],
                             [text_keys[i] for i in kept])
    slot_vectors = {k: v[kept] for k, v in slot_vectors.items()}
    issues.sort(key=lambda issue: issue.row)
    report.issues = issues
    report.products = len(products)
    if not products:
        raise IndexStateError(
            f"No product of {catalog} could be indexed ({len(issues)} rows skipped; first: "
            f"{issues[0] if issues else 'none'}). The serving index, if any, is unchanged.")

    fusion = serving_fusion(cache.manifest, layout) or loaded.fusion()
    fingerprint = content_fingerprint(loaded.contract(), fusion.to_dict(), records)
    if (not force and cache.manifest is not None
            and cache.manifest.get("fingerprint") == fingerprint):
        report.version = layout.current()
        report.up_to_date = True
        report.seconds = time.perf_counter() - started
        return report

    content = VersionContent(
        records=records, slot_vectors=slot_vectors, fusion=fusion,
        profile=loaded.profile.name, contract=loaded.contract(),
        catalog={"path": str(Path(catalog).resolve()),
                 "mapping": loaded_catalog.mapping.to_dict(),
                 "rows_read": loaded_catalog.rows_read, "skipped": len(issues)},
        fingerprint=fingerprint, issues=issues)
    report.version = publish(layout, settings, content, show=show,
                             keep_versions=keep_versions)
    report.seconds = time.perf_counter() - started
    return report


def serving_fusion(manifest: dict[str, Any] | None, layout: IndexLayout) -> Fusion | None:
    """The learned fusion head of the serving version, if it has one: a catalog update
    keeps the trained head (``shopassist models rollback fusion`` drops it)."""
    if manifest is None or manifest.get("fusion", {}).get("kind") != "learned-head":
        return None
    try:
        return fusion_from_manifest(manifest, layout.version_dir(manifest["version"]))
    except (ArtifactError, IndexStateError) as exc:
        logger.warning("the serving index's fusion head cannot be reused (%s); using the "
                       "profile's training-free fusion", exc)
        return None
