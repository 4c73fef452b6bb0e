"""The engine on the real shared fashion catalog (offline profile, real weights).

Skipped when ``../shared/data`` is absent. Indexes a slice of the catalog (every dress and
shoe plus a random sample) so the whole module stays around a minute on 2 cores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.shopper_photos import shopper_photo
from retrieval.catalog import load_catalog
from retrieval.config import Settings
from retrieval.ingest import ingest
from retrieval.recommend import complementary, similar
from retrieval.search import SearchEngine
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

FASHION = SHARED_DATA / "fashion"
BIG_PHOTOS = SHARED_DATA / "fashion_300px" / "images"


def test_the_full_catalog_loads_with_no_flags():
    loaded = load_catalog(FASHION / "catalog.csv")
    assert loaded.mapping.name == "fashion"
    assert len(loaded.products) == 44072 and loaded.issues == []
    product = loaded.products[0]
    assert Path(product.image).is_file()
    assert product.attributes["price_source"] == "synthetic" and product.currency == "INR"
    assert {"colour", "gender", "season", "usage", "subcategory"} <= set(product.attributes)


@pytest.fixture(scope="module")
def engine(tmp_path_factory, offline_profile) -> SearchEngine:
    folder = tmp_path_factory.mktemp("realdata")
    with (FASHION / "catalog.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    big = {p.stem for p in BIG_PHOTOS.glob("*.jpg")}
    rng = np.random.default_rng(0)
    wanted = [r for r in rows if r["articleType"] in {"Dresses", "Tshirts", "Jeans"}
              and r["id"] in big]
    others = [rows[i] for i in rng.choice(len(rows), 300, replace=False)]
    chosen = list({r["id"]: r for r in wanted + others}.values())
    for row in chosen:
        row["image"] = str(FASHION / row["image"])
    path = folder / "slice.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    settings = Settings(index_dir=folder / "index", device="cpu", batch_size=32)
    report = ingest(path, settings=settings, profile=offline_profile, progress=False)
    assert report.issues == [] and report.products == len(chosen)
    return SearchEngine.open(settings=settings, profile=offline_profile)


def test_red_dress_for_women_under_1500(engine):
    result = engine.search(text="red dress for women under 1500", k=10)
    assert result.relaxed == ()
    assert result.hits
    for hit in result.hits:
        p = hit.product
        assert (p.attributes["colour"], p.category, p.attributes["gender"]) == \
            ("Red", "Dresses", "Women")
        assert p.price <= 1500


def test_a_shoppers_photo_finds_the_product(engine):
    ids = sorted(p.product_id for p in engine.products
                 if (BIG_PHOTOS / f"{p.product_id}.jpg").is_file())
    rng = np.random.default_rng(1)
    found = 0
    chosen = rng.choice(ids, 12, replace=False)
    for i, pid in enumerate(chosen):
        photo = shopper_photo(Image.open(BIG_PHOTOS / f"{pid}.jpg").convert("RGB"),
                              np.random.default_rng([1, i]))
        top = [h.product.product_id for h in engine.search(image=photo, k=3).hits]
        found += pid in top
    assert found >= 10, f"found {found} of 12 in the top 3"


def test_this_dress_but_in_black(engine):
    red = next(p for p in engine.products if p.category == "Dresses"
               and p.attributes.get("colour") == "Red"
               and (BIG_PHOTOS / f"{p.product_id}.jpg").is_file())
    photo = Image.open(BIG_PHOTOS / f"{red.product_id}.jpg")
    result = engine.search(image=photo, text="this dress but in black", k=5)
    assert result.filters.include == {"colour": ("Black",), "category": ("Dresses",)}
    assert result.parsed is not None and result.parsed.free_text == ""
    assert result.hits
    for hit in result.hits:
        assert (hit.product.category, hit.product.attributes["colour"]) == ("Dresses", "Black")
        # Only the photo's shape ranks them: its red would contradict the words, and the
        # words say nothing beyond their constraints.
        assert set(hit.scores) == {"image"}


def test_similar_and_complementary_on_real_products(engine):
    tshirt = next(p for p in engine.products if p.category == "Tshirts"
                  and p.attributes.get("gender") == "Men")
    alike = similar(engine, tshirt.product_id, k=10).hits
    assert sum(h.product.category == "Tshirts" for h in alike) >= 6
    goes_with = complementary(engine, tshirt.product_id, k=6).hits
    assert goes_with
    assert all(h.product.category != "Tshirts" for h in goes_with)
    assert all(h.product.attributes.get("gender") in ("Men", "Unisex") for h in goes_with)
