"""Photo normalisation shared by catalog photos and shoppers' photos.

Catalog photos are product shots on a plain (usually white) background; a shopper's photo
of the same product is on a table, a bed, a coloured wall, off-centre. Before any image
encoder sees a photo, both kinds go through the same steps, so they meet half-way:

1. find the background: the pixels connected to the border whose colour is close to the
   border's dominant colour;
2. paint it white (the catalog's convention) and crop to the product with a fixed margin;
3. pad to the catalog's aspect ratio.

A photo whose border is not one colour (a busy scene) has almost no such pixels and passes
through nearly unchanged, so the step is safe to apply to everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

WHITE = (255, 255, 255)


@dataclass(frozen=True, kw_only=True)
class PhotoNormaliser:
    """Settings of :func:`normalise`; recorded in the index manifest.

    Attributes:
        tolerance: Max RGB distance from the border colour for a pixel to be background.
        margin: Margin around the product after cropping, as a fraction of its size.
        aspect: Width / height of the output (the catalog's photos are 3:4).
        work_size: Longest side the mask is computed at (speed; the mask is upsampled).
        max_background: Above this background fraction, the photo is left as is (the
            "product" would be a speck: more likely a mistake than a product).
        edge_px: Background grown into the product's rim by this many work pixels.
        crop: Crop to the product (with ``margin``). Off, the photo keeps its framing and
            is only whitened and padded: what suits an encoder of the whole scene (a
            network that sees how the product sits in the shot), while a descriptor of
            the product's own colours and their layout wants the crop.
    """

    tolerance: float = 40.0
    margin: float = 0.06
    aspect: float = 0.75
    work_size: int = 96
    max_background: float = 0.97
    edge_px: int = 1
    crop: bool = True
    # Bumped whenever the code's output changes for the same settings: stored vectors of
    # photos prepared by an older revision are then re-encoded, never mixed.
    revision: int = 2

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"tolerance": self.tolerance, "margin": self.margin, "aspect": self.aspect,
                "work_size": self.work_size, "max_background": self.max_background,
                "edge_px": self.edge_px, "crop": self.crop, "revision": self.revision}

    @classmethod
    def from_dict(cls, data: dict[str, float | int | bool]) -> PhotoNormaliser:
        """Settings as a manifest recorded them (before revisions were recorded: 1)."""
        return cls(**{"revision": 1, **data})  # type: ignore[arg-type]

    @property
    def key(self) -> str:
        """A short, stable name of these settings (to tell prepared variants apart)."""
        return ",".join(f"{k}={v}" for k, v in self.to_dict().items())


def background_mask(rgb: np.ndarray, tolerance: float) -> np.ndarray:
    """Boolean mask of the background of an ``(h, w, 3)`` uint8 image.

    The background colour is the median of the border pixels; background pixels are those
    within ``tolerance`` of it *and* connected to the border, so a white shirt on a white
    background keeps its inside.
    """
    pixels = rgb.astype(np.int16)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = np.median(border, axis=0)
    close = np.sqrt(((pixels - colour) ** 2).sum(axis=2)) <= tolerance
    labels, _ = ndimage.label(close)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge_labels = edge_labels[edge_labels != 0]
    return np.isin(labels, edge_labels)


def normalise(image: Image.Image, settings: PhotoNormaliser | None = None) -> Image.Image:
    """Whitens the background, crops to the product and pads to the catalog's aspect.

    Args:
        image: An RGB image (from :func:`retrieval.images.load_image`).
        settings: Normalisation settings; defaults to :class:`PhotoNormaliser`.

    Returns:
        A new RGB image; the product centred on white with a fixed margin (or, with
        ``crop=False``, in its own framing).
    """
    return normalise_variants(image, [settings or PhotoNormaliser()])[0]


def normalise_variants(image: Image.Image, variants: Sequence[PhotoNormaliser]
                       ) -> list[Image.Image]:
    """:func:`normalise` under several settings, finding the background once per mask
    setting (encoders of one profile may want the photo cropped or not)."""
    width, height = image.size
    masks: dict[tuple[float, int, int], tuple[np.ndarray, float]] = {}
    out = []
    for s in variants:
        key = (s.tolerance, s.work_size, s.edge_px)
        if key not in masks:
            masks[key] = _small_mask(image, s)
        mask_small, scale, on_white = masks[key]
        fraction = float(mask_small.mean())
        if fraction > s.max_background:
            out.append(_pad_to_aspect(image, s.aspect))
            continue
        rgb = np.array(image)
        # Already on white (every catalog shot): painting would only eat the product's rim
        # and its white parts that touch the border.
        if fraction > 0 and not on_white:
            mask = np.asarray(Image.fromarray(mask_small).resize((width, height),
                                                                 Image.Resampling.NEAREST))
            rgb[mask] = WHITE
        whitened = Image.fromarray(rgb)
        rows = np.flatnonzero(~mask_small.all(axis=1))
        cols = np.flatnonzero(~mask_small.all(axis=0))
        if s.crop and rows.size and cols.size:
            top, bottom = rows[0] / scale, (rows[-1] + 1) / scale
            left, right = cols[0] / scale, (cols[-1] + 1) / scale
            mh, mw = (bottom - top) * s.margin, (right - left) * s.margin
            box = (max(0, int(left - mw)), max(0, int(top - mh)),
                   min(width, int(np.ceil(right + mw))),
                   min(height, int(np.ceil(bottom + mh))))
            whitened = whitened.crop(box)
        out.append(_pad_to_aspect(whitened, s.aspect))
    return out


def _small_mask(image: Image.Image, s: PhotoNormaliser) -> tuple[np.ndarray, float, bool]:
    """The background mask at work size, the scale, and whether the background is white."""
    width, height = image.size
    scale = min(1.0, s.work_size / max(width, height))
    small = np.asarray(image if scale == 1.0 else image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR))
    mask_small = background_mask(small, s.tolerance)
    on_white = bool(mask_small.any()) and bool(
        np.linalg.norm(np.median(small[mask_small], axis=0) - np.array(WHITE)) <= s.tolerance / 2)
    if s.edge_px and mask_small.any():
        # JPEG and anti-aliasing leave a rim of background colour around the product.
        mask_small = ndimage.binary_dilation(mask_small, iterations=s.edge_px)
    return mask_small, scale, on_white


def _pad_to_aspect(image: Image.Image, aspect: float) -> Image.Image:
    width, height = image.size
    if abs(width / height - aspect) < 1e-3:
        return image
    if width / height > aspect:
        new_w, new_h = width, round(width / aspect)
    else:
        new_w, new_h = round(height * aspect), height
    canvas = Image.new("RGB", (new_w, new_h), WHITE)
    canvas.paste(image, ((new_w - width) // 2, (new_h - height) // 2))
    return canvas
