"""What fusion training reads from an index, and the query vectors it encodes once.

:class:`IndexView` reads a version's products and stored per-slot vectors straight from its
files (no vector store is opened, so training never touches a serving index's Chroma
files, and several training processes can read one index). :class:`QueryEncoder` encodes
text and photo queries exactly as :meth:`SearchEngine.encode_query` does, but in batches.
Photo queries are shoppers' photos of catalog products (background, rotation, crop; the
larger photo where one exists): encoding costs ~12-30 ms a photo on 2 cores, so they, and
the text queries, are cached on disk keyed by the index version and what was asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.artifacts import ProductRecords, read_products, read_vectors
from retrieval.catalog import Product
from retrieval.config import Settings
from retrieval.encoders import IMAGE, create_encoder
from retrieval.filters import ColumnTable
from retrieval.images import ImageError, ImageLimits, load_image
from retrieval.manifest import IndexLayout, check_contract, read_manifest
from retrieval.preprocess import PhotoNormaliser, normalise_variants
from retrieval.profiles import LoadedProfile, Profile, SlotDef
from retrieval.progress import progress

logger = logging.getLogger(__name__)

PHOTO_RECIPE = "shopper-photo-v1"  # bump when the augmentation changes: cached photos go stale


@dataclass(frozen=True)
class SlotInfo:
    """A slot of the index: name, width, and the product content it encodes."""

    name: str
    dim: int
    source: str  # IMAGE or TEXT
    encoder: str


@dataclass
class IndexView:
    """One index version's products and stored per-slot vectors (float16, row-aligned)."""

    folder: Path
    manifest: dict[str, Any]
    records: ProductRecords
    vectors: dict[str, np.ndarray]

    @classmethod
    def open(cls, index_dir: str | Path, version: str | None = None) -> IndexView:
        """Reads the serving version (or ``version``) of the index at ``index_dir``.

        Raises:
            IndexNotFoundError: No index there.
            IndexStateError: Its files are incomplete.
        """
        folder = IndexLayout(Path(index_dir)).version_dir(version)
        manifest = read_manifest(folder)
        records = read_products(folder)
        vectors = read_vectors(folder, [c["slot"] for c in manifest["slots"]],
                               len(records.products))
        return cls(folder, manifest, records, vectors)

    @classmethod
    def from_engine(cls, engine: Any) -> IndexView:
        """The version an open :class:`SearchEngine` serves (shares its arrays)."""
        return cls(engine.folder, engine.manifest, engine.records, engine.vectors)

    @property
    def products(self) -> list[Product]:
        return self.records.products

    @cached_property
    def table(self) -> ColumnTable:
        return self.records.table()

    @property
    def slots(self) -> tuple[SlotInfo, ...]:
        return tuple(SlotInfo(c["slot"], int(c["dim"]), c["source"], c["spec"])
                     for c in self.manifest["slots"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def key(self) -> str:
        """Names what was indexed: the version and its content fingerprint."""
        return f"{self.version}-{str(self.manifest.get('fingerprint', ''))[:12]}"

    def __len__(self) -> int:
        return len(self.records.products)


class QueryEncoder:
    """Batch query encoding with an index's own encoders, slot by slot.

    Fills the same slots as :meth:`SearchEngine.encode_query`: words fill the text slots
    (and image slots whose encoder reads words too, as CLIP's), a photo fills the image
    slots, each prepared as its slot declares.
    """

    def __init__(self, loaded: LoadedProfile, limits: ImageLimits | None = None) -> None:
        self.loaded = loaded
        self.limits = limits or ImageLimits()

    @classmethod
    def from_engine(cls, engine: Any) -> QueryEncoder:
        return cls(engine.profile, engine.limits)

    @classmethod
    def for_index(cls, view: IndexView, settings: Settings) -> QueryEncoder:
        """Loads exactly the encoders the index was built with (the specs in its manifest),
        on ``settings``' device and precision.

        Raises:
            ModelUnavailableError: An encoder cannot load here.
            IndexStateError: The loaded encoders differ from the index's contract.
        """
        legacy = view.manifest.get("normaliser")  # one preparation for all image slots
        slots = tuple(
            SlotDef(c["slot"], c["spec"], c["source"], float(c["weight"]), c.get("describes"),
                    PhotoNormaliser.from_dict(c.get("normaliser") or legacy)
                    if c["source"] == IMAGE and (c.get("normaliser") or legacy) else None)
            for c in view.manifest["slots"])
        encoders = {}
        for slot in slots:
            if slot.encoder not in encoders:
                encoders[slot.encoder] = create_encoder(
                    slot.encoder, device=settings.device, precision=settings.precision,
                    batch_size=settings.batch_size)
        loaded = LoadedProfile(Profile(str(view.manifest["profile"]), slots), encoders)
        check_contract(view.manifest, loaded.contract())
        return cls(loaded, ImageLimits(max_pixels=settings.max_image_pixels,
                                       max_bytes=settings.max_image_bytes))

    def _encode(self, has_image: bool, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        memo: dict[tuple[str, str, Any], np.ndarray] = {}
        profile = self.loaded.profile
        variants = profile.photo_variants()
        for slot, part in self.loaded.slots_for_query(has_image, not has_image):
            variant = profile.normaliser_of(slot) if part == IMAGE else None
            key = (slot.encoder, part, variant)
            if key not in memo:
                encoder = self.loaded.encoder(slot)
                if part == IMAGE:
                    i = variants.index(variant)
                    memo[key] = encoder.encode_images([p[i] for p in inputs])
                else:
                    memo[key] = encoder.encode_texts(list(inputs))
            out[slot.name] = np.asarray(memo[key], dtype=np.float32)
        return out

    def encode_texts(self, texts: Sequence[str], chunk: int = 2048,
                     show: bool | None = None) -> dict[str, np.ndarray]:
        """Slot name -> ``(len(texts), dim)`` float32 for every slot words fill."""
        parts: list[dict[str, np.ndarray]] = []
        with progress(len(texts), "encode text queries", "text", show) as bar:
            for start in range(0, len(texts), chunk):
                block = texts[start:start + chunk]
                parts.append(self._encode(False, block))
                bar.update(len(block))
        return _concat(parts)

    def prepare(self, photo: Image.Image) -> list[Image.Image]:
        """A query photo checked and prepared as each image slot wants it."""
        return normalise_variants(load_image(photo, self.limits),
                                  self.loaded.profile.photo_variants())

    def encode_prepared(self, prepared: Sequence[Sequence[Image.Image]]
                        ) -> dict[str, np.ndarray]:
        """Slot name -> ``(n, dim)`` float32 for every slot a photo fills."""
        return self._encode(True, prepared)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- caches ------------------------------------------------------------------------------------

def digest(obj: Any) -> str:
    """A short, stable hash of JSON-able content (cache keys, snapshot ids)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes a cache file atomically (a killed writer never leaves half a cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:  # interrupted (a full disk, Ctrl-C): no half-written file left behind
        tmp.unlink(missing_ok=True)


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        if path.exists():  # damaged (a truncated copy, a flipped bit): made again
            logger.warning("ignoring unreadable cache %s (%s)", path, exc)
        return None


def cached_text_queries(view: IndexView, texts: Sequence[str], cache_dir: Path | None,
                        encoder: Callable[[], QueryEncoder] | None,
                        show: bool | None = None) -> dict[str, np.ndarray]:
    """Text query vectors (float16 per slot), from the cache or encoded and cached.

    Raises:
        FileNotFoundError: Not cached and no ``encoder`` to make them.
    """
    key = digest([view.key, list(texts)])
    path = cache_dir / f"texts-{view.version}-{key}.npz" if cache_dir else None
    if path is not None and (hit := load_npz(path)) is not None:
        logger.info("text queries: %d from cache %s", len(texts), path)
        return hit
    if encoder is None:
        raise FileNotFoundError(f"Text query cache {path} is missing and no encoder was given.")
    started = time.perf_counter()
    vectors = {k: v.astype(np.float16) for k, v in encoder().encode_texts(texts, show=show)
               .items()}
    logger.info("encoded %d text queries in %.1f s", len(texts), time.perf_counter() - started)
    if path is not None:
        save_npz(path, vectors)
    return vectors


@dataclass(frozen=True)
class PhotoPlan:
    """Which shoppers' photos to make: product row, photo file, augmentation number."""

    rows: np.ndarray
    sources: tuple[str, ...]
    larger: np.ndarray  # bool: the larger photo (else the catalog photo)
    augment: np.ndarray  # int: the n-th photo of this product

    def key(self) -> str:
        return digest([PHOTO_RECIPE, self.rows.tolist(), list(self.sources),
                       self.augment.tolist()])


def plan_photos(view: IndexView, split: np.ndarray, *, seed: int, per_larger: int,
                catalog_photos: int, eval_catalog_photos: int, photos_dir: Path | None
                ) -> PhotoPlan:
    """Shoppers' photos to encode: ``per_larger`` of every training product that has a
    larger photo in ``photos_dir`` plus ``catalog_photos`` training products photographed
    from their catalog photo; one of every held-out product with a larger photo plus
    ``eval_catalog_photos`` per held-out split from catalog photos.

    Args:
        split: Per product, 0 train, 1 valid, 2 test.
    """
    larger_ids = set()
    if photos_dir is not None and photos_dir.is_dir():
        larger_ids = {p.stem for p in photos_dir.glob("*.jpg")}
    rng = np.random.default_rng([seed, 11])
    rows: list[int] = []
    sources: list[str] = []
    larger: list[bool] = []
    augment: list[int] = []
    has_larger = np.array([p.product_id in larger_ids for p in view.products], dtype=bool)
    has_photo = np.array([bool(p.image) for p in view.products], dtype=bool)
    for part, copies, extra in ((0, per_larger, catalog_photos),
                                (1, 1, eval_catalog_photos), (2, 1, eval_catalog_photos)):
        in_part = split == part
        for row in np.flatnonzero(in_part & has_larger):
            for a in range(copies):
                rows.append(int(row))
                sources.append(str(photos_dir / f"{view.products[row].product_id}.jpg"))  # type: ignore[operator]
                larger.append(True)
                augment.append(a)
        pool = np.flatnonzero(in_part & has_photo & ~has_larger)
        for row in rng.choice(pool, size=min(extra, len(pool)), replace=False):
            rows.append(int(row))
            sources.append(view.products[row].image)
            larger.append(False)
            augment.append(0)
    return PhotoPlan(np.asarray(rows, dtype=np.int64), tuple(sources),
                     np.asarray(larger, dtype=bool), np.asarray(augment, dtype=np.int64))


def cached_photo_queries(view: IndexView, plan: PhotoPlan, seed: int, cache_dir: Path | None,
                         encoder: Callable[[], QueryEncoder] | None,
                         show: bool | None = None) -> dict[str, np.ndarray]:
    """Photo query vectors for ``plan``: ``rows``, ``larger`` and ``slot.<name>`` arrays.

    Photos that cannot be read are left out (logged), so ``rows`` may be shorter than the
    plan's.

    Raises:
        FileNotFoundError: Not cached and no ``encoder`` to make them.
    """
    path = (cache_dir / f"photos-{view.version}-s{seed}-{digest([view.key, plan.key()])}.npz"
            if cache_dir else None)
    if path is not None and (hit := load_npz(path)) is not None:
        logger.info("photo queries: %d from cache %s", len(hit["rows"]), path)
        return hit
    if encoder is None:
        raise FileNotFoundError(f"Photo query cache {path} is missing and no encoder was "
                                "given.")
    from training.photos import shopper_photo

    enc = encoder()
    started = time.perf_counter()

    def make(i: int) -> list[Image.Image] | None:
        rng = np.random.default_rng([seed, 7, int(plan.rows[i]), int(plan.augment[i])])
        try:
            return enc.prepare(shopper_photo(load_image(plan.sources[i], enc.limits), rng))
        except (ImageError, OSError) as exc:
            logger.warning("skipping photo %s: %s", plan.sources[i], exc)
            return None

    kept: list[int] = []
    parts: list[dict[str, np.ndarray]] = []
    chunk = 64
    starts = list(range(0, len(plan.rows), chunk))
    with ThreadPoolExecutor(max_workers=2) as pool, \
            progress(len(plan.rows), "shoppers' photos", "photo", show) as bar:
        # Decoding and augmenting the next chunk overlaps encoding this one.
        pending = pool.map(make, range(0, min(chunk, len(plan.rows)))) if starts else None
        for n, start in enumerate(starts):
            prepared = list(pending) if pending is not None else []
            if n + 1 < len(starts):
                nxt = starts[n + 1]
                pending = pool.map(make, range(nxt, min(nxt + chunk, len(plan.rows))))
            ok = [j for j, p in enumerate(prepared) if p is not None]
            if ok:
                parts.append(enc.encode_prepared([prepared[j] for j in ok]))  # type: ignore[misc]
                kept.extend(start + j for j in ok)
            bar.update(len(prepared))
    vectors = {f"slot.{k}": v.astype(np.float16) for k, v in _concat(parts).items()}
    out = {"rows": plan.rows[kept], "larger": plan.larger[kept], **vectors}
    logger.info("encoded %d shoppers' photos in %.1f s", len(kept),
                time.perf_counter() - started)
    if path is not None:
        save_npz(path, out)
    return out

