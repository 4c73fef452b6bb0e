"""Every encoder honours the protocol; models load through the real code paths, offline."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from retrieval.encoders import (
    IMAGE,
    TEXT,
    Encoder,
    ModelUnavailableError,
    check_embeddings,
    create_encoder,
)
from retrieval.encoders.hub import resolve_model_path
from tests.conftest import COLOURS, draw_product

TEXTS = ["red dress for women", "blue jeans", "", "a very long title " * 40]


def _images() -> list[Image.Image]:
    return [draw_product("Dresses", COLOURS["Red"]), draw_product("Jeans", COLOURS["Blue"]),
            Image.new("RGB", (300, 200), (255, 255, 255)),
            draw_product("Watches", COLOURS["Black"], size=(120, 160))]


def _check(encoder: Encoder) -> None:
    assert isinstance(encoder, Encoder)
    assert encoder.name and encoder.revision and encoder.dim > 0
    if IMAGE in encoder.modalities:
        images = _images()
        check_embeddings(encoder.encode_images(images), len(images), encoder.dim, encoder.name)
        assert encoder.encode_images([]).shape == (0, encoder.dim)
    else:
        with pytest.raises(NotImplementedError):
            encoder.encode_images(_images())
    if TEXT in encoder.modalities:
        check_embeddings(encoder.encode_texts(TEXTS), len(TEXTS), encoder.dim, encoder.name)
        assert encoder.encode_texts([]).shape == (0, encoder.dim)
    else:
        with pytest.raises(NotImplementedError):
            encoder.encode_texts(TEXTS)


def test_tiny_clip_follows_the_protocol(clip_profile):
    encoder = clip_profile.encoders[next(s for s in clip_profile.encoders if s.startswith("clip"))]
    assert encoder.modalities == {IMAGE, TEXT}
    assert encoder.dim == 16
    _check(encoder)
    # Deterministic: the same input gives the same vector.
    a = encoder.encode_texts(["red shirt"])
    np.testing.assert_allclose(a, encoder.encode_texts(["red shirt"]), atol=1e-6)


def test_tiny_sentence_transformer_follows_the_protocol(clip_profile):
    encoder = clip_profile.encoders[next(s for s in clip_profile.encoders
                                         if s.startswith("sbert"))]
    assert encoder.modalities == {TEXT}
    assert encoder.dim == 32
    _check(encoder)


def test_offline_profile_real_weights(offline_profile):
    for encoder in offline_profile.encoders.values():
        _check(encoder)
    dims = {e.name.split("-")[0]: e.dim for e in offline_profile.encoders.values()}
    assert dims["efficientnet"] == 1280
    minilm = next(e for e in offline_profile.encoders.values() if e.name.startswith("sbert"))
    assert minilm.dim == 384
    a, b, c = minilm.encode_texts(["red summer dress", "a red dress for summer",
                                   "steel wrist watch"])
    # The real MiniLM knows that two phrasings of a dress are closer than a watch.
    assert a @ b > a @ c + 0.2


def test_efficientnet_features_see_shape_not_just_colour(offline_profile):
    effnet = next(e for e in offline_profile.encoders.values()
                  if e.name == "efficientnet-lite0")
    dress_red, dress_blue, shoe_red = effnet.encode_images([
        draw_product("Dresses", COLOURS["Red"]), draw_product("Dresses", COLOURS["Blue"]),
        draw_product("Casual Shoes", COLOURS["Red"])])
    assert dress_red @ dress_blue > dress_red @ shoe_red


def test_colour_descriptor_separates_colours_and_ignores_white(offline_profile):
    colour = next(e for e in offline_profile.encoders.values() if e.name.startswith("colour"))
    red1, red2, blue = colour.encode_images([
        draw_product("Dresses", COLOURS["Red"]), draw_product("Tshirts", COLOURS["Red"]),
        draw_product("Dresses", COLOURS["Blue"])])
    assert red1 @ red2 > 0.8
    assert red1 @ blue < 0.5


def test_check_embeddings_rejects_contract_breaks():
    good = np.eye(3, 4, dtype=np.float32)
    check_embeddings(good, 3, 4)
    check_embeddings(np.zeros((2, 4), dtype=np.float32), 2, 4)  # zero rows mean "no signal"
    with pytest.raises(ValueError, match="float32"):
        check_embeddings(good.astype(np.float64), 3, 4)
    with pytest.raises(ValueError, match="shape"):
        check_embeddings(good, 2, 4)
    with pytest.raises(ValueError, match="normalised"):
        check_embeddings(good * 2, 3, 4)
    bad = good.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_embeddings(bad, 3, 4)


def test_unknown_encoder_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown encoder 'vit:foo'"):
        create_encoder("vit:foo")
    with pytest.raises(ValueError, match="needs a model id"):
        create_encoder("clip")


def test_missing_hub_model_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model_path("openai/clip-vit-base-patch32-not-cached")
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "--profile offline" in message
    assert "SHOPASSIST_CLIP_MODEL" in message


def test_packaged_minilm_is_found_without_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert (path / "model.safetensors").is_file()


def test_missing_local_folder_is_reported():
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        resolve_model_path("/nonexistent/model/folder")
