"""Fixtures of the fusion-head tests: a small synthetic catalog index and a tiny config.

Imported explicitly by the ``test_fusion_*`` modules. The catalog repeats few attribute
values (3 colours x 3 categories x 2 genders) so held-out products still answer held-out
attribute queries; its photos are the synthetic shapes of ``tests.conftest``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from retrieval.ingest import ingest
from tests.conftest import COLOURS, draw_product
from training.fusion_config import FusionConfig

SEED = 7
COLOURS_USED = ("Red", "Blue", "Green")
CATEGORIES_USED = ("Tshirts", "Dresses", "Jeans")


def write_small_catalog(folder: Path, n: int = 180) -> Path:
    """``n`` products cycling over 3 colours x 3 categories x 2 genders, with photos."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = COLOURS_USED[i % 3]
        category = CATEGORIES_USED[(i // 3) % 3]
        gender = ("Men", "Women")[(i // 9) % 2]
        pid = f"P{i:04d}"
        draw_product(category, COLOURS[colour], seed=i).save(images / f"{pid}.jpg", quality=92)
        rows.append({"product_id": pid, "title": f"Item {i}", "category": category,
                     "colour": colour, "gender": gender, "price": f"{20 + i % 50}.00",
                     "in_stock": "true", "image": f"images/{pid}.jpg"})
    path = folder / "catalog.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build_index(folder: Path, settings, profile, n: int = 180):
    """Ingests the small catalog into ``folder/index``; returns the settings pointing there."""
    catalog = write_small_catalog(folder / "catalog", n)
    settings = settings.replace(index_dir=folder / "index")
    ingest(catalog, settings=settings, profile=profile, progress=False)
    return settings


def tiny_config(**changes) -> FusionConfig:
    """Seconds-long runs: small batches, few epochs, every product photographed (and the
    text drop and monitor pinned: the defaults are tuned on the 44k catalog)."""
    base = FusionConfig(seed=SEED, dim=32, hidden=64, dropout=0.1, epochs=6, batch_size=32,
                        photo_batch=16, lr=3e-3, warmup_steps=2, patience=100,
                        texts_per_product=3, photos_per_larger=1, catalog_photos=1000,
                        eval_catalog_photos=1000, photos_dir="/nonexistent",
                        eval_queries=50, eval_min_relevant=2, fractions=(0.6, 0.2, 0.2),
                        max_minutes=5.0, text_drop=0.5, monitor="mean", tag_hidden=128)
    return base.replace(**changes)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, base_settings, clip_profile):
    """Settings of a 180-product index over the tiny CLIP profile (built once per module)."""
    return build_index(tmp_path_factory.mktemp("fusion-index"), base_settings, clip_profile)
