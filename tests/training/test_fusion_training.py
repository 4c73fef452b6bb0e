"""Fusion-head training on a small synthetic catalog: learning, resuming, data, config."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from retrieval.fusion_head import load_head
from retrieval.refuse import training_free_fusion
from tests.training.fusion_fixtures import SEED, tiny_config
from training.fusion import train_fusion
from training.fusion_checkpoint import CheckpointError
from training.fusion_config import FusionConfig, load_fusion_config
from training.fusion_data import TRAIN, VALID, build_fusion_data, product_split
from training.fusion_encode import IndexView, QueryEncoder
from training.fusion_eval import evaluate, photo_misses


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fusion-cache")


@pytest.fixture(scope="module")
def trained(small_index, cache, tmp_path_factory):
    """One 12-epoch run (a few seconds), shared by the tests that only read it."""
    print(f"\ntraining with seed={SEED}")
    out = tmp_path_factory.mktemp("models")
    result = train_fusion(small_index.index_dir, tiny_config(epochs=12), out, device="cpu",
                          cache_dir=cache, settings=small_index, show=False)
    return result


def test_training_lowers_the_loss_and_raises_validation_recall(trained, small_index, cache):
    epochs = trained.history["epochs"]
    before, best = epochs[0], max(epochs[1:], key=lambda e: e["monitor"])
    assert before["epoch"] == 0
    assert epochs[-1]["train"]["loss"] < 0.75 * epochs[1]["train"]["loss"]
    gain = best["valid"]["text_photo"]["R@10"] - before["valid"]["text_photo"]["R@10"]
    assert gain > 0.15, epochs
    assert best["valid"]["text_photo"]["NDCG@10"] > before["valid"]["text_photo"]["NDCG@10"]
    # Without training, words cannot reach photos at all: the trained head beats that too.
    data = build_fusion_data(IndexView.open(small_index.index_dir), tiny_config(epochs=12),
                             cache)
    untrained = evaluate(training_free_fusion(IndexView.open(small_index.index_dir).manifest),
                         data, VALID, kinds=("text_photo",))
    assert best["valid"]["text_photo"]["NDCG@10"] > untrained["text_photo"]["NDCG@10"] + 0.1


def test_artifact_records_config_snapshot_metrics(trained):
    head, meta = load_head(trained.artifact)
    assert trained.version == "v0001" and trained.artifact.name == "v0001"
    assert meta["config"] == tiny_config(epochs=12).to_dict()
    assert meta["data_snapshot"] == trained.data["snapshot"]
    assert {"valid", "test", "best_epoch"} <= set(meta["metrics"])
    assert {"text_photo", "text_product", "photo"} <= set(meta["metrics"]["test"])
    assert meta["training"]["processes"] == 1 and meta["created"]
    assert set(meta["calibration"]) == {"scale", "bias"}
    # The blend with the training-free fusion was chosen on the validation split.
    chosen = meta["metrics"]["base_share"]["chosen"]
    assert chosen in tiny_config().base_shares and head.config.base_share == chosen
    assert set(meta["metrics"]["base_share"]["valid"]) == \
        {f"{s:g}" for s in tiny_config().base_shares}
    # So was photo queries' own share: the best photo R@1 there, the base share included.
    photo = meta["metrics"]["photo_share"]
    tried = {label: figures["photo R@1"] for label, figures in photo["valid"].items()}
    if chosen:
        assert f"{chosen:g} (base)" in tried
        assert set(tried) - {f"{chosen:g} (base)"} == \
            {f"{p:g}" for p in tiny_config().photo_shares if p != chosen}
        assert head.config.photo_share == photo["chosen"]
        label = f"{chosen:g} (base)" if photo["chosen"] is None else f"{photo['chosen']:g}"
        assert tried[label] == max(tried.values())
    else:  # products carry no training-free block: nothing to share
        assert photo == {"chosen": None, "valid": {}} and head.config.photo_share is None
    history = json.loads((trained.artifact / "history.json").read_text())
    assert len(history["steps"]) == trained.steps
    assert [n for n, _ in head.config.slots] == ["clip_image", "clip_text", "text"]


def test_head_learns_to_read_tags_and_blends_them(trained):
    head, meta = load_head(trained.artifact)
    # The synthetic catalog fills category, colour and gender (the other tags are empty).
    assert [n for n, _ in head.config.tags] == ["category", "colour", "gender"]
    assert meta["tag_values"]["colour"] == ["Blue", "Green", "Red"]
    assert head.config.tag_groups == (("clip_image",), ("clip_text", "text"))
    assert head.config.query_tag_groups == (("clip_text", "text"),)  # a query's words
    read = meta["metrics"]["tags"]  # test split, top-1 accuracy
    assert read["colour"]["photo"] > 0.6, read  # the photo shows it: chance is 1/3
    # The words "Tshirts, Red, Men" through tiny random text encoders: well above chance.
    assert read["colour"]["words"] > 0.6 and read["category"]["words"] > 0.9, read
    chosen = meta["metrics"]["tag_share"]["chosen"]
    assert chosen in tiny_config().tag_shares and head.config.tag_share == chosen
    weight = meta["metrics"]["tag_share"]["memory_weight"]
    assert weight in tiny_config().memory_weights and head.config.memory_weight == weight
    tried = meta["metrics"]["tag_share"]["valid"]  # share 0 once: no block, no vote
    assert len(tried) == 1 + (len(tiny_config().tag_shares) - 1) * len(
        tiny_config().memory_weights) and "t=0 m=0" in tried
    # The memory holds the training products' photos (held-out ones never) and their tags.
    assert head.config.memory == trained.data["products"]["train"]
    assert head.config.memory_slots == ("clip_image",)
    assert head.memory_keys.shape == (head.config.memory, head.config.dim)
    assert set(head.memory_tags[:, 1].tolist()) == {0, 1, 2}  # colour codes
    assert head.config.out_dim == head.config.dim + (
        sum(d for _, d in head.config.slots) if head.config.base_share else 0) + (
        (3 + 1) + (3 + 1) + (2 + 1) if chosen else 0)  # values + a filler per tag


def test_resume_continues_exactly(small_index, cache, tmp_path):
    config = tiny_config(epochs=3)
    whole = train_fusion(small_index.index_dir, config, tmp_path / "a", device="cpu",
                         cache_dir=cache, settings=small_index, show=False)
    paused = train_fusion(small_index.index_dir, config, tmp_path / "b", device="cpu",
                          cache_dir=cache, settings=small_index, show=False, stop_after=1)
    assert paused.stopped == "paused" and paused.version is None
    assert (tmp_path / "b" / "fusion" / "checkpoint" / "state.safetensors").is_file()
    resumed = train_fusion(small_index.index_dir, config, tmp_path / "b", device="cpu",
                           cache_dir=cache, settings=small_index, show=False, resume=True)
    first = len(paused.history["steps"])
    assert first > 0
    # The next step after the checkpoint, and every one after it, is the uninterrupted run's.
    assert resumed.history["steps"][first]["loss"] == whole.history["steps"][first]["loss"]
    assert [s["loss"] for s in resumed.history["steps"]] == \
        [s["loss"] for s in whole.history["steps"]]
    a, _ = load_head(whole.artifact)
    b, _ = load_head(resumed.artifact)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert np.array_equal(x.numpy(), y.numpy()), name
    with pytest.raises(CheckpointError, match="finished run"):
        train_fusion(small_index.index_dir, config, tmp_path / "b", device="cpu",
                     cache_dir=cache, settings=small_index, show=False, resume=True)


def test_resume_refuses_another_config_or_no_checkpoint(small_index, cache, tmp_path):
    train_fusion(small_index.index_dir, tiny_config(epochs=2), tmp_path, device="cpu",
                 cache_dir=cache, settings=small_index, show=False, stop_after=1)
    with pytest.raises(CheckpointError, match=r"other settings.*lr"):
        train_fusion(small_index.index_dir, tiny_config(epochs=2, lr=1e-2), tmp_path,
                     device="cpu", cache_dir=cache, settings=small_index, show=False,
                     resume=True)
    with pytest.raises(CheckpointError, match="No checkpoint"):
        train_fusion(small_index.index_dir, tiny_config(), tmp_path / "empty", device="cpu",
                     cache_dir=cache, settings=small_index, show=False, resume=True)


def test_data_holds_out_products_and_caches_queries(small_index, cache):
    view = IndexView.open(small_index.index_dir)
    config = tiny_config(epochs=12)
    data = build_fusion_data(view, config, cache)  # no encoder: everything is cached
    assert np.array_equal(data.split, product_split([p.product_id for p in view.products],
                                                    config.fractions))
    train_rows = set(np.flatnonzero(data.split == TRAIN))
    offsets = data.train_offsets
    has_queries = {r for r in range(data.n) if offsets[r + 1] > offsets[r]}
    assert has_queries == train_rows  # phrasings only of training products
    assert set(data.photo_rows[data.photo_split == TRAIN]) <= train_rows
    assert len(data.eval_texts[VALID]) > 0
    assert data.document_queries() == {"clip_image": "clip_text", "clip_text": "clip_text",
                                       "text": "text"}
    with pytest.raises(FileNotFoundError, match="no encoder"):
        build_fusion_data(view, config.replace(seed=SEED + 1), cache)


def test_query_encoder_matches_the_engine(small_index):
    from retrieval.search import SearchEngine

    engine = SearchEngine.open(settings=small_index)
    ours = QueryEncoder.for_index(IndexView.open(small_index.index_dir), small_index)
    texts = ["red dresses for women", "blue jeans"]
    batch = ours.encode_texts(texts, show=False)
    for i, text in enumerate(texts):
        single = engine.encode_query(None, text)
        assert set(single) == set(batch)
        for slot, vector in single.items():
            assert np.allclose(vector, batch[slot][i], atol=1e-5)


def test_config_from_toml_env_and_errors(tmp_path):
    path = tmp_path / "shopassist.toml"
    path.write_text("[retrieval]\nprofile = 'offline'\n\n[train.fusion]\nepochs = 3\n"
                    "lr = 0.01\nfractions = [0.5, 0.25, 0.25]\n")
    config = load_fusion_config(path, environ={"SHOPASSIST_FUSION_SEED": "9"})
    assert (config.epochs, config.lr, config.fractions, config.seed) == \
        (3, 0.01, (0.5, 0.25, 0.25), 9)
    assert FusionConfig.from_dict(config.to_dict()) == config
    path.write_text("[train.fusion]\nepoch = 3\n")
    with pytest.raises(ValueError, match="Unknown setting 'epoch'"):
        load_fusion_config(path, environ={})
    with pytest.raises(ValueError, match="monitor"):
        FusionConfig(monitor="loss")
    with pytest.raises(ValueError, match=r"not a int|not a valid int"):
        load_fusion_config(None, environ={"SHOPASSIST_FUSION_EPOCHS": "many"})
    # Tags are names: a TOML list or a comma-separated variable; empty turns them off.
    path.write_text("[train.fusion]\ntags = ['colour', 'gender']\n")
    assert load_fusion_config(path, environ={}).tags == ("colour", "gender")
    assert load_fusion_config(None, environ={"SHOPASSIST_FUSION_TAGS": "colour, usage"}
                              ).tags == ("colour", "usage")
    assert load_fusion_config(None, environ={"SHOPASSIST_FUSION_TAGS": ""}).tags == ()
    path.write_text("[train.fusion]\ntags = [1, 2]\n")
    with pytest.raises(ValueError, match="not a list of names"):
        load_fusion_config(path, environ={})
    with pytest.raises(ValueError, match="Unknown tags"):
        FusionConfig(tags=("colour", "fabric"))
    with pytest.raises(ValueError, match="tag_shares"):
        FusionConfig(tag_shares=(1.5,))


def test_photo_misses_says_what_the_wrong_first_results_are():
    # Products 0-3: 0 and 1 are shirts with the same photo, 2 a shirt, 3 an uncategorised
    # product; the raw photo vectors are unit vectors (0 and 1 identical).
    photos = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    data = SimpleNamespace(
        codes=SimpleNamespace(names=["gender", "category"],
                              codes=np.array([[0, 0], [0, 0], [1, 0], [0, -1]])),
        image_slots=["image"], products={"image": photos})
    target = np.array([0, 0, 2, 3, 2])
    top = np.array([[0, 1, 2],   # hit
                    [1, 0, 2],   # miss: same category, same photo, product in top 10
                    [0, 1, 3],   # miss: same category, another photo, product not shown
                    [2, 3, 0],   # miss: the product's category is unknown
                    [2, 0, 1]])  # hit
    misses = photo_misses(data, top, target)
    assert misses["misses"] == 3 and misses["n"] == 5
    assert misses["in top 10"] == pytest.approx(2 / 3)
    assert misses["same category"] == pytest.approx(2 / 3)
    assert misses["near-identical photo"] == pytest.approx(1 / 3)
    assert photo_misses(data, top[[0, 4]], target[[0, 4]]) == {"misses": 0.0, "n": 2.0}
