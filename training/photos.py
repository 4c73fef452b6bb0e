"""Shoppers' photos of catalog products, reproducibly: the photo queries of the simulator
and a background-and-crop augmentation for training.

A shopper photographs the product on a coloured surface, slightly rotated, off-centre and
cropped. :func:`shopper_photo` is the one implementation of that perturbation (the
benchmarks import it from here). :class:`PhotoSource` picks the larger photo of a product
where one exists (``../shared/data/fashion_300px/images/<id>.jpg``), else the catalog
photo.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.catalog import Product
from retrieval.images import load_image
from retrieval.preprocess import background_mask

logger = logging.getLogger(__name__)

DEFAULT_PHOTOS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / \
    "fashion_300px" / "images"


def random_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A plain surface colour: anything but near-white (that would be the catalog's own)."""
    while True:
        colour = rng.integers(0, 256, size=3)
        if colour.min() < 200:
            return (int(colour[0]), int(colour[1]), int(colour[2]))


def shopper_photo(image: Image.Image, rng: np.random.Generator, *, max_angle: float = 15.0,
                  keep: tuple[float, float] = (0.80, 0.95)) -> Image.Image:
    """A perturbed copy of a product photo: coloured background, rotated, cropped, JPEG.

    Args:
        image: The product photo on its catalog (white) background.
        rng: Source of randomness (seed it for reproducible photos).
        max_angle: Rotation drawn uniformly from ``[-max_angle, max_angle]`` degrees.
        keep: Fraction of width and height kept by the crop, drawn uniformly.

    Returns:
        The shopper's photo, RGB.
    """
    colour = random_background(rng)
    rgb = np.array(image.convert("RGB"))
    rgb[background_mask(rgb, tolerance=30.0)] = colour
    photo = Image.fromarray(rgb).rotate(float(rng.uniform(-max_angle, max_angle)),
                                        resample=Image.Resampling.BILINEAR, expand=True,
                                        fillcolor=colour)
    width, height = photo.size
    kw, kh = rng.uniform(*keep), rng.uniform(*keep)
    cw, ch = int(width * kw), int(height * kh)
    left = int(rng.integers(0, width - cw + 1))
    top = int(rng.integers(0, height - ch + 1))
    photo = photo.crop((left, top, left + cw, top + ch))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=int(rng.integers(75, 95)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


class PhotoSource:
    """One shopper's photo per product, made once and kept in a small cache.

    Each product's photo is seeded by ``(seed, 2, product row)``, so the same run always
    photographs a product the same way, whichever session asks first.

    Args:
        products: The index's products, by row.
        seed: The simulation seed.
        photos_dir: Folder of larger photos named ``<product_id>.jpg``; ``None`` or a missing
            folder means the catalog photos.
        cache_size: Photos kept in memory.
    """

    def __init__(self, products: list[Product], seed: int, photos_dir: Path | None = None,
                 cache_size: int = 256) -> None:
        self.products = products
        self.seed = seed
        self.photos_dir = photos_dir if photos_dir is not None and photos_dir.is_dir() else None
        if photos_dir is not None and self.photos_dir is None:
            logger.info("no photo folder at %s; photographing the catalog photos", photos_dir)
        self._cache: OrderedDict[int, Image.Image] = OrderedDict()
        self._cache_size = cache_size

    def source(self, row: int) -> str:
        """The file (or URL) photographed for the product at ``row``."""
        product = self.products[row]
        if self.photos_dir is not None:
            larger = self.photos_dir / f"{product.product_id}.jpg"
            if larger.is_file():
                return str(larger)
        if not product.image:
            raise ValueError(f"Product {product.product_id} has no photo to photograph.")
        return product.image

    def photo_seed(self, row: int) -> list[int]:
        """The seed of :func:`shopper_photo` for the product at ``row``."""
        return [self.seed, 2, row]

    def photo(self, row: int) -> Image.Image:
        """The shopper's photo of the product at ``row``."""
        cached = self._cache.get(row)
        if cached is not None:
            self._cache.move_to_end(row)
            return cached
        rng = np.random.default_rng(self.photo_seed(row))
        photo = shopper_photo(load_image(self.source(row)), rng)
        self._cache[row] = photo
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return photo
