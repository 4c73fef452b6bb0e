"""A colour descriptor of the product (not its background): soft HSV histograms.

One histogram of the whole product and one each of its upper and lower halves (a white
shirt over blue jeans is not a blue shirt over white trousers). Square roots are taken, so
the cosine of two descriptors is a Bhattacharyya coefficient of the colour distributions.
Computed on the photo after :func:`retrieval.preprocess.normalise`, ignoring the whitened
background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from retrieval.encoders.base import IMAGE, l2_normalise
from retrieval.preprocess import WHITE


class ColourEncoder:
    """Hue x saturation x value histogram of the foreground, plus grey levels.

    Chromatic pixels (saturation above ``grey_saturation``) vote into ``hue_bins`` x
    ``sat_bins`` x ``val_bins`` cells with linear interpolation along hue (so a colour on a
    bin edge is not split arbitrarily); achromatic pixels vote into ``grey_bins`` value bins.
    """

    modalities = frozenset({IMAGE})
    revision = "1"

    # Whole product, upper half, lower half; halves weigh less than the whole.
    REGION_WEIGHTS = (1.0, 0.7, 0.7)

    def __init__(self, *, hue_bins: int = 18, sat_bins: int = 3, val_bins: int = 3,
                 grey_bins: int = 8, grey_saturation: float = 0.12, size: int = 48) -> None:
        self.hue_bins, self.sat_bins, self.val_bins = hue_bins, sat_bins, val_bins
        self.grey_bins, self.grey_saturation, self.size = grey_bins, grey_saturation, size
        self.bins = hue_bins * sat_bins * val_bins + grey_bins
        self.dim = self.bins * len(self.REGION_WEIGHTS)
        self.name = (f"colour-hsv{hue_bins}x{sat_bins}x{val_bins}+{grey_bins}"
                     f"@{grey_saturation:g}x3")

    def histogram(self, image: Image.Image) -> np.ndarray:
        """The raw (un-normalised) histogram of one photo."""
        image = image.copy()
        image.thumbnail((self.size, self.size), Image.Resampling.BILINEAR)
        rgb = np.asarray(image, dtype=np.uint8).reshape(-1, 3)
        foreground = ~np.all(rgb >= np.array(WHITE) - 6, axis=1)
        if foreground.sum() < 8:  # an all-white product: describe it as white
            foreground = np.ones(len(rgb), dtype=bool)
        hsv = np.asarray(image.convert("HSV"), dtype=np.float32).reshape(-1, 3)[foreground] / 255
        h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
        hist = np.zeros(self.bins, dtype=np.float32)
        grey = (s < self.grey_saturation) | (v < 0.12)
        gbin = np.minimum((v[grey] * self.grey_bins).astype(int), self.grey_bins - 1)
        np.add.at(hist, self.bins - self.grey_bins + gbin, 1.0)
        c = ~grey
        hpos = h[c] * self.hue_bins - 0.5
        h0 = np.floor(hpos).astype(int)
        frac = hpos - h0
        sbin = np.minimum(((s[c] - self.grey_saturation) / (1 - self.grey_saturation)
                           * self.sat_bins).astype(int), self.sat_bins - 1)
        vbin = np.minimum((v[c] * self.val_bins).astype(int), self.val_bins - 1)
        for hb, weight in ((h0 % self.hue_bins, 1 - frac), ((h0 + 1) % self.hue_bins, frac)):
            idx = (hb * self.sat_bins + sbin) * self.val_bins + vbin
            np.add.at(hist, idx, weight.astype(np.float32))
        return hist / max(float(hist.sum()), 1.0)

    def describe(self, image: Image.Image) -> np.ndarray:
        """The un-normalised descriptor: weighted square-root histograms of the regions."""
        width, height = image.size
        regions = (image, image.crop((0, 0, width, height // 2)),
                   image.crop((0, height // 2, width, height)))
        return np.concatenate([np.sqrt(self.histogram(region)) * weight
                               for region, weight in zip(regions, self.REGION_WEIGHTS,
                                                         strict=True)])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.stack([self.describe(img) for img in images]))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} encodes images only.")
