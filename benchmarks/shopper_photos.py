"""Shoppers' photos of products in the index, for the benchmarks.

The perturbation itself (coloured background, rotation, crop, re-compression) lives in
:mod:`training.photos` — the simulator and the fusion head's augmentation use it too — so
the benchmarks measure exactly what training sees.
"""

from training.photos import random_background, shopper_photo

__all__ = ["random_background", "shopper_photo"]
