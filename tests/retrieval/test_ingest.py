"""Building index versions: bad rows reported, content reused, builds atomic."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from retrieval.artifacts import read_products, read_vectors
from retrieval.ingest import ingest
from retrieval.manifest import IndexLayout, IndexNotFoundError, IndexStateError, read_manifest
from retrieval.search import SearchEngine
from tests.conftest import write_catalog

ROOT = Path(__file__).resolve().parents[2]


def _rewrite(path: Path, change) -> None:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = change(rows)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_bad_rows_are_reported_and_good_rows_indexed(tmp_path, settings, clip_profile):
    catalog = write_catalog(tmp_path / "cat", n=20, bad_rows=True)
    report = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert report.products == 20
    assert report.rows_read == 25
    reasons = {(i.row, i.product_id): i.reason for i in report.issues}
    assert reasons[(21, None)] == "missing product id"
    assert reasons[(22, "P0000")] == "duplicate product id (first seen in row 1)"
    assert "bad price 'cheap'" in reasons[(23, "BADPRICE")]
    assert "does not exist" in reasons[(24, "NOFILE")]
    assert "unreadable image" in reasons[(25, "CORRUPT")]
    summary = report.summary()
    assert "5 rows skipped" in summary and "row 25 (id CORRUPT)" in summary
    folder = IndexLayout(settings.index_dir).version_dir()
    issues = list(csv.DictReader((folder / "issues.csv").open()))
    assert [int(r["row"]) for r in issues] == [21, 22, 23, 24, 25]
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    assert len(engine) == 20 and engine.store.count() == 20
    with pytest.raises(KeyError, match="CORRUPT"):
        engine.product("CORRUPT")


def test_manifest_records_the_embedding_contract(settings, clip_profile, catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    manifest = read_manifest(IndexLayout(settings.index_dir).version_dir())
    assert manifest["profile"] == "clip"
    assert manifest["distance"] == "cosine"
    assert manifest["count"] == 40
    slots = {s["slot"]: s for s in manifest["slots"]}
    assert slots["clip_image"]["dim"] == 16 and slots["text"]["dim"] == 32
    assert all(s["revision"] for s in manifest["slots"])
    assert manifest["dim"] == 16 + 16 + 32
    assert manifest["fusion"]["kind"] == "weighted-concat"
    assert "Red" in manifest["vocabulary"]["colour"]
    assert manifest["store"] == {"kind": "embedded", "collection": "products_v0001"}


def test_opening_with_other_encoders_is_a_clear_error(settings, clip_profile, offline_profile,
                                                      catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    with pytest.raises(IndexStateError, match="built with other encoders") as info:
        SearchEngine.open(settings=settings, profile=offline_profile)
    assert "--profile clip" in str(info.value)


def test_no_index_is_a_clear_error(settings):
    with pytest.raises(IndexNotFoundError, match="shopassist ingest"):
        SearchEngine.open(settings=settings)


def test_unchanged_catalog_reencodes_nothing(settings, clip_profile, catalog):
    first = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert (first.encoded_images, first.encoded_texts) == (40, 40)
    again = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert again.up_to_date and again.version == "v0001"
    assert IndexLayout(settings.index_dir).versions() == ["v0001"]
    forced = ingest(catalog, settings=settings, profile=clip_profile, progress=False,
                    force=True)
    assert forced.version == "v0002"
    assert (forced.encoded_images, forced.encoded_texts) == (0, 0)
    assert (forced.reused_images, forced.reused_texts) == (40, 40)
    # Reused vectors are the stored ones, bit for bit.
    a, b = (IndexLayout(settings.index_dir).version_dir(v) for v in ("v0001", "v0002"))
    names = [s.name for s in clip_profile.profile.slots]
    va, vb = read_vectors(a, names, 40), read_vectors(b, names, 40)
    for name in names:
        np.testing.assert_array_equal(va[name], vb[name])


def test_changed_rows_reencode_only_what_changed(tmp_path, settings, clip_profile):
    catalog = write_catalog(tmp_path / "cat", n=12)
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)

    def change(rows):
        rows[3]["title"] = "Renamed " + rows[3]["title"]
        rows[5]["image"] = rows[6]["image"]  # same photo as another product: reused
        return rows

    _rewrite(catalog, change)
    report = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert report.version == "v0002"
    assert (report.encoded_texts, report.reused_texts) == (1, 11)
    assert (report.encoded_images, report.reused_images) == (0, 12)
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    assert engine.product("P0003").title.startswith("Renamed ")


def test_weight_change_reuses_vectors(settings, clip_profile, catalog, base_settings):
    import dataclasses

    from retrieval.profiles import LoadedProfile, Profile

    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    slots = tuple(dataclasses.replace(s, weight=s.weight * 2) if s.name == "text" else s
                  for s in clip_profile.profile.slots)
    reweighted = LoadedProfile(Profile("clip", slots), clip_profile.encoders)
    report = ingest(catalog, settings=settings, profile=reweighted, progress=False)
    assert report.version == "v0002"  # the fused vectors changed...
    assert report.encoded_images == 0 and report.encoded_texts == 0  # ...but nothing re-encoded


def test_new_photo_preparation_reencodes_photos_only(settings, clip_profile, catalog):
    import dataclasses

    from retrieval.preprocess import PhotoNormaliser
    from retrieval.profiles import LoadedProfile, Profile

    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    slots = tuple(dataclasses.replace(s, normaliser=PhotoNormaliser(margin=0.2))
                  if s.source == "image" else s for s in clip_profile.profile.slots)
    changed = LoadedProfile(Profile("clip", slots), clip_profile.encoders)
    report = ingest(catalog, settings=settings, profile=changed, progress=False)
    assert (report.encoded_images, report.reused_images) == (40, 0)
    assert (report.encoded_texts, report.reused_texts) == (0, 40)
    # The index now answers only to the new preparation.
    with pytest.raises(IndexStateError, match="other encoders"):
        SearchEngine.open(settings=settings, profile=clip_profile)
    assert SearchEngine.open(settings=settings, profile=changed).search(text="red").hits


def test_old_versions_are_pruned(settings, clip_profile, catalog):
    for _ in range(4):
        ingest(catalog, settings=settings, profile=clip_profile, progress=False, force=True)
    layout = IndexLayout(settings.index_dir)
    assert layout.versions() == ["v0003", "v0004"]
    assert layout.current() == "v0004"


def test_empty_result_keeps_the_serving_index(tmp_path, settings, clip_profile, catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    broken = tmp_path / "broken.csv"
    broken.write_text("product_id,title,image\nA,x,missing.jpg\nB,y,missing2.jpg\n")
    with pytest.raises(IndexStateError, match="No product"):
        ingest(broken, settings=settings, profile=clip_profile, progress=False)
    assert IndexLayout(settings.index_dir).current() == "v0001"


def test_failed_store_write_leaves_no_partial_version(settings, clip_profile, catalog,
                                                      monkeypatch):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("retrieval.publish.write_vectors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(catalog, settings=settings, profile=clip_profile, progress=False, force=True)
    layout = IndexLayout(settings.index_dir)
    assert layout.current() == "v0001"
    assert [p.name for p in layout.versions_dir.iterdir()] == ["v0001"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import retrieval.ingest as ingest_module
    import retrieval.publish as publish_module
    from retrieval.config import Settings
    from tests.conftest import build_tiny_clip, build_tiny_sbert  # noqa: F401

    settings = Settings(profile="clip", clip_model={clip!r}, text_model={sbert!r},
                        device="cpu", precision="fp32", batch_size=8,
                        index_dir=Path({index!r}))
    real = publish_module.{target}

    def die(*args, **kwargs):
        real(*args, **kwargs)
        Path({marker!r}).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs, as with kill -9 or power loss

    publish_module.{target} = die
    ingest_module.ingest({catalog!r}, settings=settings, force=True, progress=False)
""")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["write_vectors", "write_manifest"])
def test_build_killed_midway_leaves_previous_version_serving(
        tmp_path, settings, clip_profile, catalog, tiny_clip_dir, tiny_sbert_dir, target):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    before = SearchEngine.open(settings=settings, profile=clip_profile).search(text="red", k=5)
    marker = tmp_path / "killed"
    script = KILLER.format(root=str(ROOT), clip=str(tiny_clip_dir), sbert=str(tiny_sbert_dir),
                           index=str(settings.index_dir), catalog=str(catalog),
                           marker=str(marker), target=target)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert marker.exists()
    layout = IndexLayout(settings.index_dir)
    leftovers = [p.name for p in layout.versions_dir.iterdir() if p.name.startswith(".build")]
    assert leftovers, "the killed build should have left its private folder behind"
    assert layout.current() == "v0001"
    after = SearchEngine.open(settings=settings, profile=clip_profile).search(text="red", k=5)
    assert [h.product.product_id for h in after.hits] == \
        [h.product.product_id for h in before.hits]
    # The next build removes the dead build's folder and succeeds.
    report = ingest(catalog, settings=settings, profile=clip_profile, progress=False,
                    force=True)
    assert report.version == "v0002"  # the dead build's reservation was released
    assert not [p for p in layout.versions_dir.iterdir() if p.name.startswith(".build")]


def test_products_round_trip_through_parquet(settings, clip_profile, catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    records = read_products(IndexLayout(settings.index_dir).version_dir())
    first = records.products[0]
    assert first.product_id == "P0000"
    assert first.attributes["colour"] == "Red"
    assert isinstance(first.price, float)
    assert first.in_stock is False  # row 0: i % 7 == 0
    assert len(records.image_keys[0]) == 64 and len(records.text_keys[0]) == 64


def test_jsonl_catalog_with_urls_and_missing_images(tmp_path, settings, clip_profile):
    """Products without a photo are indexed for text; unreachable URLs are reported."""
    lines = [
        {"product_id": "T1", "title": "Red cotton shirt", "price": 10},
        {"product_id": "T2", "title": "Blue denim jeans", "price": "12.50",
         "image": "http://127.0.0.1:9/unreachable.jpg"},
        {"product_id": "T3", "title": "Black watch", "in_stock": "no"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    settings = settings.replace(url_timeout_s=1.0, url_retries=0)
    report = ingest(path, settings=settings, profile=clip_profile, progress=False)
    assert report.products == 2 and report.without_image == 2
    assert [i.product_id for i in report.issues] == ["T2"]
    assert "Could not download" in report.issues[0].reason
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    assert not np.any(engine.vectors_of("T1")["clip_image"])
    hits = engine.search(text="shirt", k=2).hits
    assert {h.product.product_id for h in hits} == {"T1", "T3"}


def test_progress_is_logged_when_not_on_a_terminal(settings, clip_profile, catalog, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="retrieval.progress"):
        ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "retrieval.progress"]
    assert any(line.startswith("images: 40/40 img (100%") for line in lines), lines
    assert any(line.startswith("texts: ") for line in lines)
    assert len([line for line in lines if line.startswith("images:")]) <= 10


def test_photos_prepared_by_an_older_revision_are_reencoded(settings, clip_profile, catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    path = IndexLayout(settings.index_dir).version_dir() / "manifest.json"
    manifest = json.loads(path.read_text())
    for slot in manifest["slots"]:
        if slot["normaliser"]:
            del slot["normaliser"]["revision"]  # as written before revisions existed
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexStateError, match="other encoders"):
        SearchEngine.open(settings=settings, profile=clip_profile)
    report = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert (report.encoded_images, report.reused_texts) == (40, 40)
