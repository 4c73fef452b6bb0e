"""The learned fusion head's artifacts, and re-fusing an index with it (no re-encoding)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from retrieval.artifacts import FUSED_FILE, read_products, read_vectors, write_fused
from retrieval.fusion_head import (
    ArtifactError,
    FusionHead,
    HeadConfig,
    LearnedFusion,
    load_head,
    save_head,
)
from retrieval.ingest import ingest
from retrieval.manifest import IndexLayout, IndexStateError, read_manifest
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


def test_photo_queries_take_their_own_share_of_the_training_free_cosine(tmp_path):
    """Set on the query side alone: products are fused as before, a photo query scores
    (1 - p) learned + p training-free cosine, and any query with words keeps the base
    share. p = 1 ranks photos exactly as the training-free fusion does."""
    torch.manual_seed(2)
    learned = _head([("a", 5), ("b", 3)]).eval()
    weights = (1.0, 2.0)
    blended = learned.with_base_share(0.6, weights).eval()
    items = {"a": torch.randn(6, 5), "b": torch.randn(6, 3)}
    photo_q, words_q = {"a": torch.randn(3, 5)}, {"a": torch.randn(2, 5),
                                                  "b": torch.randn(2, 3)}
    cosines = {}
    for p in (0.6, 0.9, 1.0):
        own = blended.with_base_share(0.6, photo_share=p, photo_slots=("a",)).eval()
        torch.testing.assert_close(own(items), blended(items))  # products unchanged
        torch.testing.assert_close(own(words_q, query=True), blended(words_q, query=True))
        cosines[p] = own(photo_q, query=True) @ own(items).T
    torch.testing.assert_close(cosines[0.6], blended(photo_q, query=True) @ blended(items).T)

    def base(v):  # the training-free fusion: normalised sqrt(w)-weighted concatenation
        parts = [(w ** 0.5) * v.get(n, torch.zeros(len(next(iter(v.values()))), d))
                 for (n, d), w in zip((("a", 5), ("b", 3)), weights, strict=True)]
        return torch.nn.functional.normalize(torch.cat(parts, 1), dim=1)

    training_free = base(photo_q) @ base(items).T
    torch.testing.assert_close(cosines[1.0], training_free)
    torch.testing.assert_close(cosines[0.9], 0.1 * learned(photo_q) @ learned(items).T
                               + 0.9 * training_free)
    # In the artifact, and refused where it cannot apply.
    own = blended.with_base_share(0.6, photo_share=0.9, photo_slots=("a",))
    loaded, meta = load_head(save_head(own, tmp_path / "head"))
    assert meta["architecture"]["photo_share"] == 0.9
    torch.testing.assert_close(loaded(photo_q, query=True), own(photo_q, query=True))
    with pytest.raises(ValueError, match="photo_share is in"):
        learned.with_base_share(0.0, photo_share=0.9, photo_slots=("a",))
    with pytest.raises(ValueError, match="photo_share is in"):
        blended.with_base_share(0.6, photo_share=0.9, photo_slots=("z",))


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


def test_an_engine_reads_the_published_fused_vectors_instead_of_running_the_head(
        tmp_path, settings, clip_profile, catalog, monkeypatch, caplog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    refuse(settings, save_head(_head(_index_slots(clip_profile)), tmp_path / "head"),
           show=False)
    folder = IndexLayout(settings.index_dir).version_dir()
    assert (folder / FUSED_FILE).is_file()
    n = len(read_products(folder).products)
    slots = read_vectors(folder, [name for name, _ in _index_slots(clip_profile)], n)
    fresh = LearnedFusion.load(folder / "fusion_head").fuse(
        {k: v.astype(np.float32) for k, v in slots.items()}, n)

    calls = []
    real_fuse = LearnedFusion.fuse

    def counting(self, slots, n, **kwargs):
        calls.append((n, kwargs.get("query", False)))
        return real_fuse(self, slots, n, **kwargs)

    monkeypatch.setattr(LearnedFusion, "fuse", counting)
    engine = SearchEngine.open(settings=settings, profile=clip_profile)
    assert calls == []  # no pass of the head over the catalog
    np.testing.assert_allclose(engine.fused, fresh, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(engine.fused, axis=1), 1.0, atol=1e-5)
    assert engine.search(text="red shirt", k=5, parse_text=False).hits
    assert calls == [(1, True)]  # only the query went through the head

    # A damaged or foreign file is not trusted: the engine re-fuses, and says so.
    for damage in ("truncate", "foreign"):
        path = folder / FUSED_FILE
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[:100])
        else:
            write_fused(folder, fresh, "head-someoneelse")
        calls.clear()
        with caplog.at_level("WARNING", logger="retrieval.artifacts"):
            engine = SearchEngine.open(settings=settings, profile=clip_profile)
        assert calls == [(n, False)] and "re-fusing" in caplog.text
        np.testing.assert_allclose(engine.fused, fresh, atol=1e-6)
        caplog.clear()


def _tagged_head(tag_share=0.0, seed=0, scoring="sqrt") -> FusionHead:
    """Slot "a" (a photo) and "b" (words); tags colour (3 values) and gender (2)."""
    torch.manual_seed(seed)
    head = FusionHead(HeadConfig(slots=(("a", 5), ("b", 3)), dim=8, hidden=16, dropout=0.0,
                                 tags=(("colour", 3), ("gender", 2)),
                                 tag_groups=(("a",), ("b",)), tag_hidden=16,
                                 tag_share=tag_share, tag_scoring=scoring))
    with torch.no_grad():  # the photo always names both tags; the words name colour only
        head.taggers["a"][-1].bias[-2:] = 30.0
        head.taggers["b"][-1].bias[-2:] = torch.tensor([30.0, -30.0])
    return head.eval()


def test_tag_block_is_the_agreement_of_tag_distributions():
    head = _tagged_head()
    photo = {"a": torch.randn(6, 5)}
    words = {"b": torch.randn(2, 3)}
    both = {"a": photo["a"][:2], "b": words["b"]}
    p, w, pw = head.read_tags(photo), head.read_tags(words), head.read_tags(both)
    # Every product with a photo has a block of norm 1 (each tag named, sqrt of a
    # distribution has unit norm, over sqrt(n_tags)): the cosine ranks by it fairly.
    torch.testing.assert_close(p.block().norm(dim=1), torch.ones(6))
    # Words that leave gender open add nothing there: their gender columns are zero.
    assert w.block()[:, 3:].abs().max() < 1e-6
    torch.testing.assert_close(w.named[:, 0], torch.ones(2))
    # Words . photo = (sqrt(p_words(colour)) . sqrt(p_photo(colour))) / n_tags.
    agreement = w.block() @ p.block().T
    colour = lambda out: torch.softmax(out.logits[0], 1).sqrt()  # noqa: E731
    torch.testing.assert_close(agreement, colour(w) @ colour(p).T / 2)
    # Photo and words together: their colour logits add (product of experts); gender is
    # the photo's alone.
    torch.testing.assert_close(pw.logits[0], p.logits[0][:2] + w.logits[0])
    torch.testing.assert_close(pw.logits[1], p.logits[1][:2])


def test_tag_share_blends_the_tag_agreement_into_the_cosine(tmp_path):
    head = _tagged_head()
    weights = (1.0, 1.0)
    inner = head.with_base_share(0.5, weights).eval()
    blended = head.with_base_share(0.5, weights, tag_share=0.3).eval()
    assert blended.config.out_dim == 8 + 5 + 3 + 5
    items = {"a": torch.randn(5, 5)}
    q = {"b": torch.randn(3, 3)}
    tags = head.read_tags(q).block() @ head.read_tags(items).block().T
    expected = 0.7 * inner(q) @ inner(items).T + 0.3 * tags
    torch.testing.assert_close(blended(q) @ blended(items).T, expected)
    # As queries, rows carry only the tags of query_tag_groups (the words): a photo query's
    # cosine is the inner blend's alone (scaled), words meet the products' photos' tags.
    asked = HeadConfig.from_dict({**blended.config.to_dict(), "query_tag_groups": [["b"]]})
    asking = FusionHead(asked)
    asking.load_state_dict(blended.state_dict())
    asking.eval()
    photo_q = {"a": torch.randn(2, 5)}
    # ... on the untagged scale: a photo query scores the inner blend's cosine exactly.
    torch.testing.assert_close(asking(photo_q, query=True) @ asking(items).T,
                               inner(photo_q) @ inner(items).T)
    both_q = {"a": photo_q["a"], "b": q["b"][:2]}
    words_tags = head.read_tags({"b": q["b"][:2]}).block() @ head.read_tags(items).block().T
    torch.testing.assert_close(asking(both_q, query=True) @ asking(items).T,
                               inner(both_q) @ inner(items).T + 0.3 / 0.7 * words_tags)
    # Served through LearnedFusion: products unit length, queries on that same scale.
    served = LearnedFusion.load(save_head(asking, tmp_path / "asking"))
    untagged = LearnedFusion.load(save_head(inner, tmp_path / "inner"))
    products = {"a": items["a"].numpy()}
    np.testing.assert_allclose(np.linalg.norm(served.fuse(products, 5), axis=1), 1.0,
                               atol=1e-5)
    np.testing.assert_allclose(
        served.fuse({"a": photo_q["a"].numpy()}, 2, query=True) @ served.fuse(products, 5).T,
        untagged.fuse({"a": photo_q["a"].numpy()}, 2, query=True)
        @ untagged.fuse(products, 5).T, atol=1e-5)
    loaded, meta = load_head(tmp_path / "asking")
    assert meta["architecture"]["query_tag_groups"] == [["b"]]
    torch.testing.assert_close(loaded(both_q, query=True), asking(both_q, query=True))
    loaded, meta = load_head(save_head(blended, tmp_path / "head"))
    assert meta["architecture"]["tag_share"] == 0.3
    assert meta["architecture"]["tags"] == [["colour", 3], ["gender", 2]]
    torch.testing.assert_close(loaded(items), blended(items))


def test_tag_settings_are_checked():
    with pytest.raises(ValueError, match="tag_share needs tags"):
        HeadConfig(slots=(("a", 5),), tag_share=0.2)
    with pytest.raises(ValueError, match="does not take"):
        HeadConfig(slots=(("a", 5),), tags=(("colour", 3),), tag_groups=(("z",),))
    with pytest.raises(ValueError, match="must be among"):
        HeadConfig(slots=(("a", 5),), tags=(("colour", 3),), tag_groups=(("a",),),
                   query_tag_groups=(("b",),))
    with pytest.raises(ValueError, match="reads no tags"):
        _head([("a", 5)]).read_tags({"a": torch.randn(2, 5)})
    with pytest.raises(ValueError, match="No slot of the tag groups"):
        _tagged_head().read_tags({"c": torch.randn(2, 4)})


def test_log_tag_block_scores_the_products_log_probability_of_what_words_ask():
    head = _tagged_head(tag_share=0.4, scoring="log")
    items = {"a": torch.randn(6, 5)}
    words = {"b": torch.randn(3, 3)}
    # Products: a filler column per tag keeps every block at norm 1 (a fair cosine).
    product_block = head.tag_block(items)
    assert head.config.tag_width == (3 + 1) + (2 + 1) == product_block.shape[1]
    torch.testing.assert_close(product_block.norm(dim=1), torch.ones(6))
    # Query . product = sum over named tags of sum_v p_words(v) log p_photo(v) / |log eps|,
    # over n_tags (the words here name colour only).
    p_words = torch.softmax(head.read_tags(words).logits[0], 1)
    log_p = torch.log(torch.softmax(head.read_tags(items).logits[0], 1).clamp_min(1e-4))
    expected = p_words @ log_p.T / (2 * -math.log(1e-4))
    torch.testing.assert_close(head.tag_block(words, query=True) @ product_block.T, expected)
    # A product whose photo puts more probability on the asked colour ranks higher.
    asked = p_words.argmax(1)
    scores = head.tag_block(words, query=True) @ product_block.T
    for q in range(3):
        if p_words[q].max() > 0.999:
            assert torch.equal(scores[q].argsort(), log_p[:, asked[q]].argsort())


def test_tag_memory_votes_a_products_tags_by_its_neighbours(tmp_path):
    head = _tagged_head(tag_share=0.4, scoring="log")
    photos = torch.randn(4, 5)
    tags = torch.tensor([[0, 1], [1, 0], [2, 1], [-1, 0]])  # colour unknown for the last
    with torch.no_grad():
        keys = head.learned({"a": photos})
    remembering = head.with_memory(keys, tags, 1.0, slots=["a"], k=1).eval()
    assert remembering.config.memory == 4 and remembering.config.memory_slots == ("a",)
    with torch.no_grad():
        plain = head.read_tags({"a": photos})
        voted = remembering.product_tags({"a": photos})
        # Each photo's nearest neighbour is itself: its vote is its own label, added to the
        # classifier's logits as log(vote + eps).
        for row, (colour, gender) in enumerate(tags.tolist()):
            torch.testing.assert_close(
                voted.logits[1][row] - plain.logits[1][row],
                torch.log(torch.nn.functional.one_hot(torch.tensor(gender), 2).float() + 0.01))
            if colour >= 0:
                bonus = voted.logits[0][row] - plain.logits[0][row]
                expected = torch.log(torch.nn.functional.one_hot(
                    torch.tensor(colour), 3).float() + 0.01)
                torch.testing.assert_close(bonus, expected)
            else:  # nobody knows: every value gets the same log(eps), nothing changes
                torch.testing.assert_close(torch.softmax(voted.logits[0][row], 0),
                                           torch.softmax(plain.logits[0][row], 0))
        # Weight 0 carries the memory without using it; queries never ask it.
        silent = remembering.with_base_share(0.0, tag_share=0.4, memory_weight=0.0)
        torch.testing.assert_close(silent.product_tags({"a": photos}).logits[0],
                                   plain.logits[0])
        words = {"b": torch.randn(2, 3)}
        torch.testing.assert_close(remembering.tag_block(words, query=True),
                                   head.tag_block(words, query=True))
        # Saved and loaded, the memory comes back with the weights.
        loaded, meta = load_head(save_head(remembering, tmp_path / "head"))
        assert meta["architecture"]["memory"] == 4
        torch.testing.assert_close(loaded({"a": photos}), remembering({"a": photos}))
        assert loaded.memory_tags.tolist() == tags.tolist()


def test_a_damaged_head_in_the_index_says_how_to_serve_again(tmp_path, settings,
                                                             clip_profile, catalog):
    ingest(catalog, settings=settings, profile=clip_profile, progress=False)
    refuse(settings, save_head(_head(_index_slots(clip_profile)), tmp_path / "head"),
           show=False)
    weights = IndexLayout(settings.index_dir).version_dir() / "fusion_head" / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(IndexStateError, match="models rollback fusion") as caught:
        SearchEngine.open(settings=settings, profile=clip_profile)
    assert "does not match the sha256" in str(caught.value)
    # What the rollback does with no earlier head: re-fuse without it, and serve again.
    refuse(settings, None, show=False)
    assert SearchEngine.open(settings=settings, profile=clip_profile).search(text="red", k=3).hits
