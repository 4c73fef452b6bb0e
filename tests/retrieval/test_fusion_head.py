"""The learned fusion head's artifacts, and re-fusing an index with it (no re-encoding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from retrieval.fusion_head import (
    ArtifactError,
    FusionHead,
    HeadConfig,
    LearnedFusion,
    load_head,
    save_head,
)
from retrieval.ingest import ingest
from retrieval.manifest import IndexLayout, read_manifest
from retrieval.refuse import refuse
from retrieval.search import SearchEngine


def _head(slots, seed=0) -> FusionHead:
    torch.manual_seed(seed)
    return FusionHead(HeadConfig(slots=tuple(slots), dim=8, hidden=16, dropout=0.0))


def _index_slots(clip_profile):
    return [(c["slot"], c["dim"]) for c in clip_profile.contract()]


def test_save_load_round_trip_gives_the_same_outputs(tmp_path):
    head = _head([("a", 5), ("b", 3)]).eval()
    folder = save_head(head, tmp_path / "head", extra={"metrics": {"loss": 1.0}})
    loaded, meta = load_head(folder)
    x = {"a": torch.randn(4, 5), "b": torch.randn(4, 3)}
    torch.testing.assert_close(head(x), loaded(x))
    assert meta["metrics"] == {"loss": 1.0}
    # A missing slot does not contribute; all-zero rows count as missing too.
    only_a = loaded({"a": x["a"]})
    torch.testing.assert_close(only_a, loaded({"a": x["a"], "b": torch.zeros(4, 3)}))


def test_blended_output_mixes_learned_and_training_free_cosines(tmp_path):
    torch.manual_seed(1)
    learned = _head([("a", 5), ("b", 3)]).eval()
    share, weights = 0.6, (1.0, 2.0)
    blended = learned.with_base_share(share, weights).eval()
    assert blended.config.out_dim == 8 + 5 + 3
    x = {"a": torch.randn(4, 5), "b": torch.randn(4, 3)}
    q = {"a": torch.randn(2, 5)}  # a query filling one slot only

    def base(v):
        parts = [(w ** 0.5) * v.get(n, torch.zeros(len(next(iter(v.values()))), d))
                 for (n, d), w in zip((("a", 5), ("b", 3)), weights, strict=True)]
        return torch.nn.functional.normalize(torch.cat(parts, 1), dim=1)

    expected = (1 - share) * learned(q) @ learned(x).T + share * base(q) @ base(x).T
    torch.testing.assert_close(blended(q) @ blended(x).T, expected)
    # Saved and loaded, the share and weights come back with the weights.
    loaded, meta = load_head(save_head(blended, tmp_path / "head"))
    assert meta["architecture"]["base_share"] == share
    torch.testing.assert_close(loaded(x), blended(x))
    with pytest.raises(ValueError, match="base_weights"):
        learned.with_base_share(0.5, (1.0,))


def test_a_corrupted_artifact_is_refused(tmp_path):
    folder = save_head(_head([("a", 5)]), tmp_path / "head")
    weights = folder / "head.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_head(folder)
    (folder / "head.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        load_head(folder)
    with pytest.raises(ArtifactError, match="not a fusion head"):
        load_head(tmp_path / "nowhere")


def test_shapes_that_do_not_fit_are_refused(tmp_path):
    folder = save_head(_head([("a", 5)]), tmp_path / "head")
    meta = json.loads((folder / "head.json").read_text())
    meta["architecture"]["slots"] = [["a", 6]]
    (folder / "head.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="does not fit"):
        load_head(folder)
    fusion = LearnedFusion.load(save_head(_head([("a", 5)]), tmp_path / "h2"))
    with pytest.raises(ArtifactError, match="trained on slots"):
        fusion.check_slots([("a", 5), ("b", 2)])


def test_refuse_switches_search_to_the_head_without_reencoding(tmp_path, settings,
                                                               clip_profile, catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    head_dir = save_head(_head(_index_slots(clip_profile)), tmp_path / "head")
    version, _ = refuse(settings, head_dir, show=False)
    assert version == "v0002"
    folder = IndexLayout(settings.index_dir).version_dir()
    manifest = read_manifest(folder)
    assert manifest["fusion"]["kind"] == "learned-head" and manifest["dim"] == 8
    assert (folder / "fusion_head" / "head.safetensors").is_file()

    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    result = engine.search(text="red shirt", k=5, parse_text=False)
    query = engine.encode_query(None, "red shirt")
    expected = engine.fusion.fuse({s: v[None] for s, v in query.items()}, 1)[0]
    for hit in result.hits:
        row = engine.row_of[hit.product.product_id]
        assert hit.score == pytest.approx(float(engine.fused[row] @ expected), abs=1e-5)
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    # The same catalog again: nothing to rebuild, and the trained head is kept.
    again = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert again.up_to_date and again.version == "v0002"
    # Back to the training-free fusion, still without re-encoding.
    version, _ = refuse(settings, None, show=False)
    manifest = read_manifest(IndexLayout(settings.index_dir).version_dir())
    assert manifest["fusion"]["kind"] == "weighted-concat"
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    assert engine.fused is None and engine.search(text="red", k=3).hits


def test_a_catalog_update_keeps_the_head(tmp_path, settings, clip_profile, catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    refuse(settings, save_head(_head(_index_slots(clip_profile)), tmp_path / "head"),
           show=False)
    lines = catalog.read_text().splitlines()
    catalog.write_text("\n".join(lines[:-3]) + "\n")  # three products fewer
    report = ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    assert report.products == 37 and report.encoded_images == 0
    manifest = read_manifest(IndexLayout(settings.index_dir).version_dir())
    assert manifest["fusion"]["kind"] == "learned-head"
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    assert engine.fused.shape == (37, 8)
    np.testing.assert_allclose(np.linalg.norm(engine.fused, axis=1), 1.0, atol=1e-5)
