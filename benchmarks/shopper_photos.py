"""Turns a catalog photo into a shopper's photo of the same product, reproducibly.

A shopper photographs the product on a coloured surface, slightly rotated, off-centre and
cropped. The benchmarks query the index with such photos of products that are in it, so
"photo -> same product" measures what a shop would see, not a copy of the indexed file.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from retrieval.preprocess import background_mask


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
        rng: Source of randomness (seed it for reproducible benchmarks).
        max_angle: Rotation drawn uniformly from ``[-max_angle, max_angle]`` degrees.
        keep: Fraction of width and height kept by the crop, drawn uniformly.
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
