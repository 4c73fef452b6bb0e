"""The fine-tuned photo tail: the encoder split, training, the artifact and serving.

EfficientNet-Lite0's real weights (the offline profile's): the tail is its real last
blocks. Training is checked on feature maps built so that tuning must help (a surface
pattern over every shopper's photo that the untuned network reads as content); the whole
`train fusion` run and the engine are checked on a small synthetic index.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retrieval.encoders.efficientnet import TAIL_FROM, EfficientNetEncoder
from retrieval.fusion_head import ArtifactError, LearnedFusion, load_head, save_head
from retrieval.photo_tail import TAIL_FILE, PhotoTail, TailError
from tests.conftest import COLOURS, draw_product
from training.fusion_config import FusionConfig
from training.photo_tail import TailPhotos, TailScorer, photo_recall, train_tail


@pytest.fixture(scope="module")
def effnet() -> EfficientNetEncoder:
    return EfficientNetEncoder(device="cpu", precision="fp32", batch_size=8)


def _photos(n: int = 6) -> list:
    return [draw_product(("Tshirts", "Dresses", "Jeans")[i % 3],
                         COLOURS[("Red", "Blue", "Green")[i % 3]], seed=i) for i in range(n)]


def _nudged(effnet: EfficientNetEncoder, scale: float = 0.3) -> dict[str, torch.Tensor]:
    state = effnet.tail().state_dict()
    generator = torch.Generator().manual_seed(0)
    weight = state["conv_head.weight"]
    state["conv_head.weight"] = weight * (1 + scale * torch.randn(weight.shape,
                                                                  generator=generator))
    return state


def test_trunk_then_tail_is_the_encoder(effnet):
    images = _photos()
    pixels = effnet.pixels(images)
    with torch.no_grad():
        split = F.normalize(effnet.tail()(effnet.trunk(pixels)), dim=1).numpy()
    whole = effnet.encode_images(images)
    assert split.shape == whole.shape == (len(images), 1280)
    assert (split * whole).sum(axis=1).min() > 0.9999


def test_with_tail_encodes_with_the_tuned_weights(effnet):
    images = _photos()
    same = effnet.with_tail(effnet.tail().state_dict())
    np.testing.assert_allclose(same.encode_images(images), effnet.encode_images(images),
                               atol=1e-4)
    state = _nudged(effnet)
    tuned = effnet.with_tail(state)
    assert tuned.name == effnet.name and tuned.revision == effnet.revision
    assert tuned.backend == effnet.backend  # the same runtime serves the tuned network
    module = effnet.tail()
    module.load_state_dict(state)
    with torch.no_grad():
        expected = F.normalize(module(effnet.trunk(effnet.pixels(images))), dim=1).numpy()
    got = tuned.encode_images(images)
    assert (got * expected).sum(axis=1).min() > 0.9999
    assert (got * effnet.encode_images(images)).sum(axis=1).max() < 0.999
    # the base encoder is untouched
    np.testing.assert_allclose(effnet.encode_images(images[:1]),
                               same.encode_images(images[:1]), atol=1e-4)


def test_a_tail_that_does_not_fit_is_refused(effnet):
    state = effnet.tail().state_dict()
    with pytest.raises(ValueError, match="does not fit"):
        effnet.with_tail(state, first=TAIL_FROM + 1)
    with pytest.raises(ValueError, match="does not fit"):
        effnet.with_tail({k: v for k, v in state.items() if not k.startswith("conv_head")})


def _surface_case(n: int = 96, dim: int = 32, surface: float = 3.0, noise: float = 0.05,
                  seed: int = 0):
    """A tail-shaped toy (a 1x1 convolution and pooling, starting as the identity) and
    photos that are their product's vector over a 4x3 map, plus one strong surface
    vector and noise: the untuned tail reads mostly the surface, a tuned one can take it
    out. Splits: 2/3 of the products train (4 photos each), 1/3 are held out (1 photo)."""
    rng = np.random.default_rng(seed)
    products = rng.normal(size=(n, dim)).astype(np.float32)
    base = torch.nn.Sequential(torch.nn.Conv2d(dim, dim, 1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
    with torch.no_grad():
        base[0].weight.copy_(torch.eye(dim)[:, :, None, None])
        base[0].bias.zero_()
    back = surface * np.sqrt(dim) * F.normalize(torch.randn(dim, generator=torch.Generator()
                                                            .manual_seed(seed)), dim=0).numpy()
    split_of = (np.arange(n) % 3 == 2).astype(np.int8)  # 0 train, 1 valid
    rows = np.concatenate([np.flatnonzero(split_of == 0).repeat(4),
                           np.flatnonzero(split_of == 1)])
    maps = (products[rows] + back)[:, :, None, None] \
        + noise * rng.normal(size=(len(rows), dim, 4, 3)).astype(np.float32)
    photos = TailPhotos(rows, split_of[rows], np.arange(len(rows)), maps.astype(np.float16),
                        {})
    return base, photos, TailScorer({"image": products}, "image", {"image": 1.0})


def test_training_the_tail_takes_the_surface_out():
    base, photos, scorer = _surface_case()
    valid = np.flatnonzero(photos.split == 1)
    before = photo_recall(base, photos, scorer, valid)
    config = FusionConfig(seed=3, tail_epochs=4, tail_batch=32, tail_lr=3e-2)
    tail, info = train_tail(base, photos, scorer, config, show=False)
    assert before < 0.5, "the case must be hard for the untuned tail"
    assert tail is not None
    # held-out products: what was learned is the surface, not the training products
    assert info["valid_R@1"] >= 0.9 and info["untuned_valid_R@1"] == before
    assert info["valid_R@1"] == pytest.approx(photo_recall(tail, photos, scorer, valid))
    assert info["best_epoch"] >= 1 and info["photos"] == {"train": 256, "valid": 32}
    losses = [h["loss"] for h in info["history"][1:]]
    assert losses[-1] < losses[0]
    assert torch.equal(base[0].bias, torch.zeros(32))  # a copy was trained


def test_no_tail_when_no_epoch_beats_the_untuned_one():
    # photos exactly like their products: the untuned tail already finds every one
    base, photos, scorer = _surface_case(surface=0.0, noise=0.0)
    tail, info = train_tail(base, photos, scorer, FusionConfig(tail_epochs=1, tail_batch=32),
                            show=False)
    assert info["untuned_valid_R@1"] == 1.0
    assert tail is None and info["best_epoch"] == 0


def test_no_tail_without_validation_photos_to_choose_it_by():
    base, photos, scorer = _surface_case()
    photos.split[:] = 0  # every photo a training photo
    tail, info = train_tail(base, photos, scorer, FusionConfig(tail_epochs=1, tail_batch=32),
                            show=False)
    assert tail is None and info["stopped"] == "no validation photos"
    json.dumps(info, allow_nan=False)  # no NaN recall in what the run records


def test_a_diverging_tail_stops_with_advice():
    base, photos, scorer = _surface_case()
    with torch.no_grad():
        base[0].weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="tail_lr"):
        train_tail(base, photos, scorer, FusionConfig(tail_epochs=1, tail_batch=32),
                   show=False)


def test_tail_settings_are_checked():
    for bad in ({"tail_epochs": 0}, {"tail_lr": 0.0}, {"tail_batch": 1},
                {"tail_photos": -1}, {"tail_temperature": -1.0}):
        with pytest.raises(ValueError, match="tail"):
            FusionConfig(**bad)


def _with_tail(folder, tail: PhotoTail) -> None:
    """Adds ``tail`` to the head artifact in ``folder`` (as training writes it)."""
    head, meta = load_head(folder)
    extra = {k: v for k, v in meta.items()
             if k not in ("format", "kind", "architecture", "sha256")}
    save_head(head, folder, extra={**extra, "photo_tail": tail.save(folder, {"note": 1})})


def test_the_tail_travels_in_the_artifact_and_damage_is_refused(effnet, tmp_path):
    from retrieval.fusion_head import FusionHead, HeadConfig

    head = FusionHead(HeadConfig(slots=(("image", 1280), ("text", 8)), dim=8, hidden=16))
    folder = tmp_path / "v0001"
    save_head(head, folder)
    tail = PhotoTail("image", f"{effnet.name}@{effnet.revision}", TAIL_FROM,
                     _nudged(effnet))
    _with_tail(folder, tail)
    loaded = LearnedFusion.load(folder)
    assert loaded.tail is not None and loaded.tail.first == TAIL_FROM
    assert json.loads((folder / "head.json").read_text())["photo_tail"]["metrics"] == {"note": 1}
    tuned = loaded.query_encoder("image", effnet)
    assert tuned is not effnet and loaded.query_encoder("image", effnet) is tuned  # built once
    assert loaded.query_encoder("colour", effnet) is effnet  # only its own slot
    images = _photos(2)
    assert (tuned.encode_images(images) * effnet.encode_images(images)).sum(axis=1).max() < 0.999

    data = bytearray((folder / TAIL_FILE).read_bytes())
    data[-10] ^= 0xFF
    (folder / TAIL_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"photo tail.*sha256"):
        LearnedFusion.load(folder)
    (folder / TAIL_FILE).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_head(folder)


def test_a_tail_from_another_encoder_is_not_used(effnet, caplog):
    tail = PhotoTail("image", "efficientnet-lite0@other", TAIL_FROM, _nudged(effnet))
    with caplog.at_level("WARNING"):
        assert tail.tuned_encoder(effnet) is effnet
    assert "untuned encoder" in caplog.text


class _Base:
    """An encoder as far as the tuned-encoder cache sees one: a name, a revision and a
    slow ``with_tail`` that counts its calls."""

    name = "efficientnet-lite0"

    def __init__(self, revision: str) -> None:
        self.revision = revision
        self.builds = 0

    def with_tail(self, state, first):
        import time

        self.builds += 1
        time.sleep(0.2)
        return ("tuned", self.revision, first)


def test_the_tuned_encoder_is_built_once_however_many_threads_ask():
    from concurrent.futures import ThreadPoolExecutor

    tail = PhotoTail("image", "efficientnet-lite0@r1", TAIL_FROM, {})
    base = _Base("r1")
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: tail.tuned_encoder(base), range(8)))
    assert base.builds == 1 and all(g is got[0] for g in got)
    assert got[0] == ("tuned", "r1", TAIL_FROM)


def test_the_tuned_encoder_is_forgotten_with_its_base(caplog):
    import gc

    tail = PhotoTail("image", "efficientnet-lite0@r1", TAIL_FROM, {})
    base = _Base("r1")
    assert tail.tuned_encoder(base)[0] == "tuned"
    del base
    gc.collect()
    assert tail._tuned == {}  # nothing kept for a base that is gone
    # A later encoder of another revision (perhaps at the freed address) is checked anew:
    # never handed the first one's tuned copy.
    for _ in range(20):
        other = _Base("r2")
        with caplog.at_level("WARNING"):
            assert tail.tuned_encoder(other) is other
        del other
    assert "untuned encoder" in caplog.text


def test_a_diverged_tail_is_refused(effnet, tmp_path):
    state = effnet.tail().state_dict()
    state["conv_head.weight"] = state["conv_head.weight"] * float("nan")
    meta = PhotoTail("image", "x@y", TAIL_FROM, state).save(tmp_path)
    with pytest.raises(TailError, match="non-finite"):
        PhotoTail.load(tmp_path, meta)


# -- a whole run on a small index of the offline profile -------------------------------------

@pytest.fixture(scope="module")
def offline_run(tmp_path_factory, offline_profile):
    from retrieval.config import Settings
    from tests.training.fusion_fixtures import build_index, tiny_config
    from training.fusion import train_fusion

    root = tmp_path_factory.mktemp("tail-run")
    settings = build_index(root, Settings(device="cpu", precision="fp32", batch_size=16,
                                          profile="offline"), offline_profile, n=90)
    from training.fusion_encode import QueryEncoder

    config = tiny_config(tail_photos=20, tail_epochs=1, tail_batch=16, epochs=1)
    loads = []

    def encoder(view):
        loads.append(view)
        return QueryEncoder.for_index(view, settings)

    result = train_fusion(settings.index_dir, config, root / "models", device="cpu",
                          settings=settings, show=False, encoder=encoder)
    # the encoders load once for the queries, the tail's training and its photos
    assert len(loads) == 1
    return settings, root, config, result


def test_a_fusion_run_tunes_the_photo_tail_first(offline_run):
    _settings, root, _config, result = offline_run
    info = result.metrics["photo_tail"]
    assert info["photos"]["valid"] > 0 and info["photos"]["train"] > 0
    assert [h["epoch"] for h in info["history"]] == [0, 1]
    record = json.loads((root / "models" / "fusion" / "checkpoint" / "photo_tail.json")
                        .read_text())
    meta = json.loads((result.artifact / "head.json").read_text())
    # a tail only when it beat the untuned encoder on the validation photos
    assert (meta["photo_tail"] is None) == (record["tail"] is None) \
        == (info["best_epoch"] == 0)
    assert (result.artifact / TAIL_FILE).exists() == (meta["photo_tail"] is not None)


def test_an_untuned_tail_gives_back_the_datas_photo_vectors(offline_run, effnet, caplog):
    """use_photo_tail remakes the data's photos with their seeds and runs them through the
    tail: an untuned tail must land on the vectors the data encoded; a tail from another
    encoder revision is not used, as the engine would not use it."""
    from training.fusion_data import build_fusion_data
    from training.fusion_encode import IndexView, QueryEncoder
    from training.photo_tail import use_photo_tail

    settings, root, config, _result = offline_run
    view = IndexView.open(settings.index_dir)
    data = build_fusion_data(view, config, root / "models" / "cache", show=False)
    slot = "image"
    untuned = PhotoTail(slot, f"{effnet.name}@{effnet.revision}", TAIL_FROM,
                        effnet.tail().state_dict())
    out = use_photo_tail(view, data, config, untuned, root / "models" / "cache",
                         lambda: QueryEncoder.for_index(view, settings), show=False)
    before = data.photo_vectors[slot].astype(np.float32)
    after = out[slot].astype(np.float32)
    cosine = (before * after).sum(1) / np.linalg.norm(before, axis=1) / np.linalg.norm(
        after, axis=1)
    assert len(cosine) > 0 and cosine.min() > 0.999
    nudged = PhotoTail(slot, untuned.encoder, TAIL_FROM, _nudged(effnet))
    moved = use_photo_tail(view, data, config, nudged, root / "models" / "cache",
                           lambda: QueryEncoder.for_index(view, settings), show=False)[slot]
    assert not np.allclose(moved.astype(np.float32), before, atol=1e-3)  # it re-encodes
    other = PhotoTail(slot, f"{effnet.name}@other", TAIL_FROM, _nudged(effnet))
    with caplog.at_level("WARNING"):
        kept = use_photo_tail(view, data, config, other, root / "models" / "cache",
                              lambda: QueryEncoder.for_index(view, settings), show=False)
    assert kept[slot] is data.photo_vectors[slot] and "untuned vectors" in caplog.text


def test_other_processes_read_the_tuned_photos_and_load_no_encoder(offline_run, effnet,
                                                                    tmp_path):
    """Under torchrun the first process runs the data's photos through the tail once; the
    others read what it kept, without loading the encoders or the maps."""
    from types import SimpleNamespace

    from training.fusion import TAIL_RECORD, TAIL_VECTORS, run_photo_tail
    from training.fusion_data import build_fusion_data
    from training.fusion_encode import IndexView, QueryEncoder

    settings, root, config, _result = offline_run
    view = IndexView.open(settings.index_dir)
    cache = root / "models" / "cache"
    meta = PhotoTail("image", f"{effnet.name}@{effnet.revision}", TAIL_FROM,
                     _nudged(effnet)).save(tmp_path)
    (tmp_path / TAIL_RECORD).write_text(json.dumps({"tail": meta, "info": {}}))
    first = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    other = SimpleNamespace(is_main_process=False, wait_for_everyone=lambda: None)
    ours = build_fusion_data(view, config, cache, show=False)
    untuned = ours.photo_vectors["image"]
    run_photo_tail(view, ours, config, cache, lambda: QueryEncoder.for_index(view, settings),
                   tmp_path, first, resume=True, show=False,
                   checkpoint={"photo_tail": meta["sha256"]})
    assert (tmp_path / TAIL_VECTORS).is_file()
    assert not np.allclose(ours.photo_vectors["image"].astype(np.float32),
                           untuned.astype(np.float32), atol=1e-3)

    def no_encoder():
        raise AssertionError("another process loaded the encoders")

    theirs = build_fusion_data(view, config, cache, show=False)
    tail, _info, sha = run_photo_tail(view, theirs, config, cache, no_encoder, tmp_path,
                                      other, resume=False, show=False)
    assert tail is not None and sha == meta["sha256"]
    assert np.array_equal(theirs.photo_vectors["image"], ours.photo_vectors["image"])
    assert set(theirs.photo_vectors) == set(ours.photo_vectors)  # the other slots as made


def test_trunk_maps_are_cached_per_first_block(offline_run, caplog):
    from training.fusion_data import build_fusion_data
    from training.fusion_encode import IndexView, QueryEncoder
    from training.photo_tail import tail_photos

    settings, root, config, _result = offline_run
    view = IndexView.open(settings.index_dir)
    cache = root / "models" / "cache"
    data = build_fusion_data(view, config, cache, show=False)
    before = set(cache.glob("tail-*.npz"))
    assert before  # the run's maps, from block 11
    with caplog.at_level("INFO", logger="training.photo_tail"):
        ours = tail_photos(view, data, config, "image", cache, None, first=TAIL_FROM)
    assert "from cache" in caplog.text  # read, with no encoder to make them
    later = tail_photos(view, data, config, "image", cache,
                        lambda: QueryEncoder.for_index(view, settings), first=TAIL_FROM + 2)
    assert set(cache.glob("tail-*.npz")) > before  # made and cached apart
    assert later.maps.shape[1:] != ours.maps.shape[1:]  # another block's maps
    assert np.array_equal(later.rows, ours.rows)


def test_a_run_without_a_tail_drops_an_earlier_runs_tail(tmp_path):
    from types import SimpleNamespace

    from training.fusion import TAIL_RECORD, run_photo_tail
    from training.fusion_config import FusionConfig

    main = SimpleNamespace(is_main_process=True)
    off = FusionConfig(photo_tail=False)

    def earlier_tail():
        (tmp_path / TAIL_RECORD).write_text('{"tail": null, "info": {}}')
        (tmp_path / TAIL_FILE).write_bytes(b"weights")

    earlier_tail()
    # resuming a run without a tail leaves the folder as it is...
    assert run_photo_tail(None, None, off, tmp_path, None, tmp_path, main, resume=True,
                          show=False) == (None, {}, None)
    assert (tmp_path / TAIL_RECORD).exists() and (tmp_path / TAIL_FILE).exists()
    # ...a new one removes what an earlier run tuned, so nothing can resume onto it
    assert run_photo_tail(None, None, off, tmp_path, None, tmp_path, main, resume=False,
                          show=False) == (None, {}, None)
    assert not (tmp_path / TAIL_RECORD).exists() and not (tmp_path / TAIL_FILE).exists()


def test_a_paused_run_resumes_with_its_own_tail(offline_run, tmp_path):
    from training.fusion import train_fusion

    settings, _root, config, _result = offline_run
    config = config.replace(epochs=2, tail_epochs=2)
    paused = train_fusion(settings.index_dir, config, tmp_path, device="cpu",
                          settings=settings, show=False, stop_after=1)
    assert paused.stopped == "paused"
    state = json.loads((tmp_path / "fusion" / "checkpoint" / "state.json").read_text())
    record = json.loads((tmp_path / "fusion" / "checkpoint" / "photo_tail.json").read_text())
    assert state["photo_tail"] == (record["tail"] or {}).get("sha256")
    resumed = train_fusion(settings.index_dir, config, tmp_path, device="cpu",
                           settings=settings, show=False, resume=True)
    assert resumed.version is not None
    # not trained again: the same tail record, and the artifact carries that tail
    assert resumed.metrics["photo_tail"] == record["info"]
    meta = json.loads((resumed.artifact / "head.json").read_text())
    assert (meta["photo_tail"] or {}).get("sha256") == state["photo_tail"]


def test_resuming_onto_another_runs_tail_is_refused(tmp_path):
    """The checkpoint records the sha256 of the tail its head trained with: a tail another
    run left beside it (a new run that stopped before its first checkpoint) is refused,
    as is a record cut short."""
    from types import SimpleNamespace

    from training.fusion import TAIL_RECORD, run_photo_tail
    from training.fusion_checkpoint import CheckpointError
    from training.fusion_config import FusionConfig

    main = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    on = FusionConfig(photo_tail=True)
    record = tmp_path / TAIL_RECORD
    record.write_text(json.dumps({"tail": {"sha256": "b" * 64}, "info": {}}))
    with pytest.raises(CheckpointError, match="not the one the checkpoint's head trained"):
        run_photo_tail(None, None, on, tmp_path, None, tmp_path, main, resume=True,
                       show=False, checkpoint={"photo_tail": "a" * 64})
    record.write_text(json.dumps({"tail": None, "info": {"stopped": "epochs"}}))
    assert run_photo_tail(None, None, on, tmp_path, None, tmp_path, main, resume=True,
                          show=False, checkpoint={"photo_tail": None}) == \
        (None, {"stopped": "epochs"}, None)
    record.write_text('{"tail": {"sha2')
    with pytest.raises(CheckpointError, match="unreadable"):
        run_photo_tail(None, None, on, tmp_path, None, tmp_path, main, resume=True,
                       show=False, checkpoint={"photo_tail": None})


def test_models_list_shows_the_tails_gain(offline_run, capsys):
    from retrieval.cli import main

    _settings, root, _config, result = offline_run
    assert main(["models", "list", "--models", str(root / "models")]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[7] == "tail"  # after "photo R@1"
    info = result.metrics["photo_tail"]
    expected = (f"+{info['valid_R@1'] - info['untuned_valid_R@1']:.3f}"
                if info["best_epoch"] else "-")
    assert row.split()[6] == expected


def test_the_engine_encodes_query_photos_with_its_heads_tail(offline_run, effnet):
    import shutil

    from retrieval.manifest import IndexStateError
    from retrieval.publish import HEAD_DIR
    from retrieval.search import SearchEngine
    from training.registry import ModelRegistry

    settings, root, _config, result = offline_run
    registry = ModelRegistry(root / "models")
    version, _folder = registry.publish("fusion", lambda f: shutil.copytree(
        result.artifact, f, dirs_exist_ok=True))
    folder = root / "models" / "fusion" / version
    _with_tail(folder, PhotoTail("image", f"{effnet.name}@{effnet.revision}", TAIL_FROM,
                                 _nudged(effnet)))
    registry.promote("fusion", version, settings, show=False)
    engine = SearchEngine.open(settings.index_dir, settings=settings)
    assert not engine.fusion.tail._tuned  # built at the first photo query, or by warm_up
    engine.warm_up()
    assert len(engine.fusion.tail._tuned) == 1
    photo = draw_product("Dresses", COLOURS["Blue"], seed=5)
    prepared = engine.prepare_image(photo)
    query = engine.encode_query(prepared, None)
    variant = engine.profile.profile.normaliser_of(
        next(s for s in engine.profile.profile.slots if s.name == "image"))
    tuned = effnet.with_tail(_nudged(effnet)).encode_images([prepared.variants[variant]])[0]
    untuned = effnet.encode_images([prepared.variants[variant]])[0]
    assert float(query["image"] @ tuned) > 0.9999 and float(query["image"] @ untuned) < 0.999
    hits = [h.product.product_id for h in engine.search(image=photo, k=3).hits]
    assert len(hits) == 3  # and search serves with it

    from training.batched_search import BatchedSearch

    batched = BatchedSearch(engine)  # primes photos through the same tuned encoder
    batched.prime([(photo, None)])
    assert [h.product.product_id for h in batched.search(image=photo, k=3).hits] == hits
    memo = batched.shadow.fusion.query_encoder("image", batched.encoders["efficientnet-lite0"])
    assert (memo.hits, memo.misses) == (1, 1)

    damaged = engine.folder / HEAD_DIR / TAIL_FILE
    damaged.write_bytes(damaged.read_bytes()[:-7])
    with pytest.raises(IndexStateError, match=r"photo tail.*rollback"):
        SearchEngine.open(settings.index_dir, settings=settings)


def test_the_report_says_what_the_tail_did():
    from training.fusion_report import _tail_lines

    info = {"history": [{"epoch": 0, "valid_R@1": 0.867}, {"epoch": 1, "valid_R@1": 0.886},
                        {"epoch": 2, "valid_R@1": 0.881}],
            "best_epoch": 1, "photos": {"train": 34954, "valid": 713}, "seconds": 420.0,
            "stopped": "epochs"}
    kept = "\n".join(_tail_lines({"metrics": {"photo_tail": info}, "photo_tail": {"x": 1}}))
    assert "0: 0.867, 1: 0.886, 2: 0.881" in kept and "best epoch 1, kept" in kept
    assert "34,954 training photos" in kept
    dropped = "\n".join(_tail_lines({"metrics": {"photo_tail": info}, "photo_tail": None}))
    assert "not kept" in dropped
    assert _tail_lines({"metrics": {}}) == []  # heads trained before tails, or without one


def test_the_tails_photos_remake_the_datas_and_add_more(tmp_path):
    from types import SimpleNamespace

    from training.photo_tail import photo_lists

    (tmp_path / "big").mkdir()
    products = [SimpleNamespace(product_id=f"P{i}", image=f"/img/P{i}.jpg") for i in range(8)]
    view = SimpleNamespace(products=products)
    # rows 0 (larger photo, 3 shots) and 1 train, 2 valid, 3 test; 4-7 train, no photo yet
    split = np.array([0, 0, 1, 2, 0, 0, 0, 0], dtype=np.int8)
    data = SimpleNamespace(photo_rows=np.array([0, 0, 0, 1, 2, 3]),
                           photo_larger=np.array([True, True, True, False, False, False]),
                           split=split)
    config = FusionConfig(seed=5, photos_dir=str(tmp_path / "big"), tail_photos=2,
                          tail_larger_photos=2)
    first, more = photo_lists(view, data, config)
    assert first.positions.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    assert first.seeds[:4] == [[5, 7, 0, 0], [5, 7, 0, 1], [5, 7, 0, 2], [5, 7, 1, 0]]
    assert first.sources[0] == str(tmp_path / "big" / "P0.jpg")
    assert first.sources[3] == "/img/P1.jpg"
    extras = first.rows[6:].tolist()
    assert len(set(extras)) == 2 and set(extras) <= {4, 5, 6, 7}  # training, no photo yet
    assert [s[:2] for s in first.seeds[6:]] == [[5, 13], [5, 13]]
    # more shots of the larger photo continue its numbering: new photos, not repeats
    assert more.rows.tolist() == [0, 0] and more.seeds == [[5, 7, 0, 3], [5, 7, 0, 4]]
    assert more.positions.tolist() == [-1, -1]
    held = photo_lists(view, data, config, extra=False, splits=(2,))
    assert len(held) == 1 and held[0].rows.tolist() == [3]
    assert held[0].positions.tolist() == [5]
