"""Search over a real Chroma index: filters, parsed constraints, scores, photo queries."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import retrieval.search as search_module
from retrieval.filters import Filters, parse_filter_args
from retrieval.images import ImageError
from retrieval.ingest import ingest
from retrieval.recommend import complementary, similar
from retrieval.search import SearchEngine
from tests.conftest import COLOURS, draw_product, write_catalog


@pytest.fixture
def engine(settings, clip_profile, catalog) -> SearchEngine:
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    return SearchEngine.open(settings=settings, profile=clip_profile)


@pytest.fixture(scope="module")
def offline_engine(tmp_path_factory, offline_profile):
    """The offline profile's real weights over a synthetic catalog of 60 products."""
    from retrieval.config import Settings

    folder = tmp_path_factory.mktemp("offline")
    catalog = write_catalog(folder / "cat", n=60)
    settings = Settings(index_dir=folder / "index", device="cpu", precision="fp32",
                        batch_size=16)
    ingest(catalog, settings=settings, profile=offline_profile, progress=False)
    return SearchEngine.open(settings=settings, profile=offline_profile), catalog


def test_text_constraints_become_filters(engine):
    result = engine.search(text="blue jeans for women under 150", k=10)
    assert result.filters.include == {"colour": ("Blue",), "category": ("Jeans",),
                                      "gender": ("Women",)}
    assert result.filters.price_max == 150
    assert result.hits, "the synthetic catalog has blue women's jeans"
    for hit in result.hits:
        p = hit.product
        assert (p.attributes["colour"], p.category, p.attributes["gender"]) == \
            ("Blue", "Jeans", "Women")
        assert p.price <= 150
        assert "colour: Blue" in hit.why


def test_hits_carry_fused_and_per_modality_scores(engine):
    result = engine.search(text="red shirt", k=5, parse_text=False)
    assert len(result.hits) == 5
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    for hit in result.hits:
        # A text query fills CLIP's image slot (cross-modal) and both text slots.
        assert set(hit.scores) == {"clip_image", "clip_text", "text"}
        weights = engine.weights
        expected = sum(weights[s] * v for s, v in hit.scores.items()) / sum(
            weights[s] for s in hit.scores)
        assert hit.score == pytest.approx(expected, abs=1e-5)
    as_json = result.to_dicts()[0]
    assert {"product_id", "title", "score", "scores", "why", "price"} <= set(as_json)


def test_photo_query_finds_the_product_itself(engine, catalog):
    result = engine.search(image=catalog.parent / "images" / "P0007.jpg", k=3)
    assert result.hits[0].product.product_id == "P0007"
    assert result.hits[0].scores["clip_image"] == pytest.approx(1.0, abs=1e-3)
    assert set(result.hits[0].scores) == {"clip_image"}  # a photo fills only image slots


def test_photo_query_accepts_bytes_and_pil(engine, catalog):
    data = (catalog.parent / "images" / "P0003.jpg").read_bytes()
    a = engine.search(image=data, k=1).hits[0].product.product_id
    b = engine.search(image=Image.open(io.BytesIO(data)), k=1).hits[0].product.product_id
    assert a == b == "P0003"


def test_hostile_query_photo_is_refused(engine, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 Mpx, a few KB on disk
    with pytest.raises(ImageError, match="pixel limit"):
        engine.search(image=bomb)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"GIF89a but not really")
    with pytest.raises(ImageError):
        engine.search(image=junk)


def test_explicit_filters_win_and_are_never_relaxed(engine):
    explicit = parse_filter_args(["colour=Green", "gender=Men"])
    result = engine.search(text="red dress", filters=explicit, k=10)
    assert result.filters.include["colour"] == ("Green",)
    nothing = engine.search(text="shirt", filters=parse_filter_args(["colour=Purple"]))
    assert nothing.hits == [] and nothing.relaxed == ()


def test_parsed_filters_relax_when_nothing_matches(engine):
    # No red dresses for women exist in the synthetic catalog (red items are all men's).
    result = engine.search(text="red dress for women", k=5)
    assert result.relaxed == ("colour",)
    assert result.hits
    assert all(h.product.category == "Dresses" and h.product.attributes["gender"] == "Women"
               for h in result.hits)
    strict = engine.search(text="red dress for women", k=5, relax=False)
    assert strict.hits == []


@pytest.mark.parametrize("post_filter_share", [0.0, 1.01],
                         ids=["post-filtered ANN", "Chroma-filtered ANN"])
def test_exact_and_approximate_paths_agree(engine, monkeypatch, post_filter_share):
    filters = Filters(include={"gender": ("Women",)})
    exact = engine.search(text="blue", filters=filters, k=8, parse_text=False)
    assert exact.exact
    monkeypatch.setattr(search_module, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(search_module, "POST_FILTER_SHARE", post_filter_share)
    approx = engine.search(text="blue", filters=filters, k=8, parse_text=False)
    assert not approx.exact
    assert [h.product.product_id for h in approx.hits] == \
        [h.product.product_id for h in exact.hits]
    np.testing.assert_allclose([h.score for h in approx.hits], [h.score for h in exact.hits],
                               atol=1e-5)


@pytest.mark.parametrize("cells", [10**9, 0], ids=["scored exactly", "Chroma-filtered"])
def test_a_broad_filter_far_from_the_query_falls_back(engine, monkeypatch, cells):
    """Too few of the unfiltered nearest pass a broad filter: the allowed products are
    scored exactly when that is cheap, else Chroma's filtered query is asked; the same
    list either way."""
    filters = Filters(include={"gender": ("Women",)})
    exact = engine.search(text="blue", filters=filters, k=8, parse_text=False)
    monkeypatch.setattr(search_module, "EXACT_MAX_ROWS", 0)
    monkeypatch.setattr(search_module, "POST_FILTER_SHARE", 0.0)
    monkeypatch.setattr(search_module, "POST_FILTER_MAX", 2)  # the first try finds too few
    monkeypatch.setattr(search_module, "EXACT_FALLBACK_CELLS", cells)
    asked = []
    query = engine.store.query
    monkeypatch.setattr(engine.store, "query",
                        lambda vector, n, where=None: asked.append(where) or query(vector, n,
                                                                                   where))
    fallback = engine.search(text="blue", filters=filters, k=8, parse_text=False)
    assert fallback.exact == bool(cells)
    assert asked[0] is None and (asked[1:] == [] if cells else asked[1:] != [])
    assert [h.product.product_id for h in fallback.hits] == \
        [h.product.product_id for h in exact.hits]


def test_filters_only_browse_and_bad_arguments(engine):
    result = engine.search(filters=Filters(include={"category": ("Watches",)}), k=50)
    assert result.hits and all(h.product.category == "Watches" for h in result.hits)
    with pytest.raises(ValueError, match="Give a photo"):
        engine.search()
    with pytest.raises(ValueError, match="k must be between"):
        engine.search(text="shirt", k=0)
    with pytest.raises(ValueError, match="k must be between"):
        engine.search(text="shirt", k=10_000)


def test_exclude_ids(engine):
    first = engine.search(text="dress", k=3, parse_text=False).hits[0].product.product_id
    again = engine.search(text="dress", k=3, parse_text=False, exclude_ids=[first])
    assert first not in {h.product.product_id for h in again.hits}


def test_similar_excludes_the_item_and_its_duplicates(tmp_path, settings, clip_profile):
    catalog = write_catalog(tmp_path / "cat", n=30)
    # Make P0029 an exact duplicate listing of P0001 (same photo, same text).
    import csv

    rows = list(csv.DictReader(catalog.open()))
    rows[29].update({k: rows[1][k] for k in ("title", "category", "colour", "gender",
                                              "image")})
    with catalog.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    result = similar(engine, "P0001", k=10)
    ids = [h.product.product_id for h in result.hits]
    assert len(ids) == 10
    assert "P0001" not in ids and "P0029" not in ids
    assert result.hits[0].why[0].startswith("similar to")
    with pytest.raises(KeyError, match="NOPE"):
        similar(engine, "NOPE")


def test_complementary_follows_category_rules_and_gender(engine):
    dress = next(p for p in engine.products if p.category == "Dresses"
                 and p.attributes["gender"] == "Women")
    result = complementary(engine, dress.product_id, k=6)
    # Rules for Dresses name no category of the synthetic catalog: nothing, not noise.
    assert result.hits == []
    tshirt = next(p for p in engine.products if p.category == "Tshirts")
    result = complementary(engine, tshirt.product_id, k=6)
    assert result.hits
    categories = {h.product.category for h in result.hits}
    assert categories <= {"Jeans", "Casual Shoes", "Watches"}
    assert len(categories) > 1, "the list interleaves categories"
    assert all(h.product.attributes["gender"] == tshirt.attributes["gender"]
               for h in result.hits)
    assert all(h.product.in_stock for h in result.hits)
    # Rounds of one product per category; within a round, scores fall.
    per_round = len(categories)
    for start in range(0, len(result.hits), per_round):
        scores = [h.score for h in result.hits[start:start + per_round]]
        assert scores == sorted(scores, reverse=True)


def test_interleave_rounds_are_best_first_with_bought_together_leading():
    from retrieval.recommend import TOGETHER, _interleave

    rows = np.arange(7)
    score = np.array([0.9, 0.5, 0.8, 0.7, 0.95, 0.6, 0.2], dtype=np.float32)
    groups = np.array(["Jeans", "Jeans", "Shoes", "Shoes", "Watches", "Watches", TOGETHER],
                      dtype=object)
    picked = _interleave(rows, score, groups, ["Jeans", "Shoes", "Watches"], 6)
    assert [r for r, _ in picked] == [4, 0, 2, 3, 5, 1]
    picked = _interleave(rows, score, groups, [TOGETHER, "Jeans", "Shoes", "Watches"], 5)
    assert [r for r, _ in picked] == [6, 4, 0, 2, 3]  # the partner leads its round


def _shopper_photo(path, colour=(90, 160, 220), angle=8) -> Image.Image:
    from benchmarks.shopper_photos import shopper_photo

    class FixedRng:
        """Feeds shopper_photo fixed choices: a given colour, angle and crop."""

        def integers(self, low, high=None, size=None):
            if size == 3:
                return np.array(colour)
            return low

        def uniform(self, low, high):
            return angle if (low, high) == (-15.0, 15.0) else (low + high) / 2

    return shopper_photo(Image.open(path).convert("RGB").resize((180, 240)), FixedRng())


def test_offline_profile_finds_a_shoppers_photo_of_the_product(offline_engine):
    engine, catalog = offline_engine
    hits = 0
    for pid in ("P0002", "P0013", "P0031", "P0044", "P0057"):
        photo = _shopper_photo(catalog.parent / "images" / f"{pid}.jpg")
        result = engine.search(image=photo, k=3)
        top = [h.product.product_id for h in result.hits]
        target = engine.product(pid)
        # Same category and colour at the top (synthetic siblings differ only by jitter).
        first = result.hits[0].product
        assert (first.category, first.attributes["colour"]) == \
            (target.category, target.attributes["colour"]), top
        hits += pid in top
    assert hits >= 3


def test_offline_text_search_reads_constraints_and_meaning(offline_engine):
    engine, _ = offline_engine
    result = engine.search(text="navy blue t-shirt for women", k=5)
    assert result.filters.include["colour"] == ("Navy Blue",)
    assert result.filters.include["category"] == ("Tshirts",)
    assert all(h.product.attributes["colour"] == "Navy Blue" for h in result.hits)
    unfiltered = engine.search(text="watch", k=3, parse_text=False)
    assert unfiltered.hits[0].product.category == "Watches"


def test_photo_plus_words_refines(offline_engine):
    engine, _catalog = offline_engine
    photo = draw_product("Dresses", COLOURS["Red"], size=(120, 160))
    result = engine.search(image=photo, text="in black", k=5)
    assert result.filters.include == {"colour": ("Black",)}
    assert all(h.product.attributes["colour"] == "Black" for h in result.hits)
    # The words asked for another colour: the photo's colour slot is not scored.
    assert set(result.hits[0].scores) == {"image"}  # "in black" says nothing more


def test_photo_colour_slot_stays_when_words_agree_with_the_photo(offline_engine):
    engine, _ = offline_engine
    photo = draw_product("Dresses", COLOURS["Red"], size=(120, 160))
    result = engine.search(image=photo, text="red", k=5)
    assert result.filters.include == {"colour": ("Red",)}
    assert set(result.hits[0].scores) == {"image", "colour"}
    negated = engine.search(image=photo, text="not red", k=5)
    assert negated.filters.exclude == {"colour": ("Red",)}
    assert "colour" not in negated.hits[0].scores
    assert all(h.product.attributes["colour"] != "Red" for h in negated.hits)
