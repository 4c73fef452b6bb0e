"""Fusion: the fused inner product is the weighted slot cosines, by hand and at random."""

from __future__ import annotations

import math

import numpy as np
import pytest

import retrieval.fusion as fusion_module
from retrieval.fusion import (
    SlotSpec,
    WeightedConcatFusion,
    matvec,
    slot_scores,
    weighted_score,
)

SEED = 7


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def fusion() -> WeightedConcatFusion:
    return WeightedConcatFusion([SlotSpec("image", 2, 0.6), SlotSpec("text", 3, 0.4)])


def test_dim_version_weights_and_dict(fusion: WeightedConcatFusion) -> None:
    assert fusion.dim == 5
    assert fusion.version == "concat-v1[image=0.6,text=0.4]"
    assert fusion.weights() == {"image": 0.6, "text": 0.4}
    assert fusion.to_dict() == {
        "kind": "weighted-concat", "version": "concat-v1[image=0.6,text=0.4]",
        "slots": [{"name": "image", "dim": 2, "weight": 0.6},
                  {"name": "text", "dim": 3, "weight": 0.4}]}


def test_fuse_by_hand(fusion: WeightedConcatFusion) -> None:
    product = fusion.fuse({"image": np.array([[0.6, 0.8]]),
                           "text": np.array([[1.0, 0.0, 0.0]])}, n=1)
    # sqrt(w) * v, then normalised: |.|^2 = 0.6 * 1 + 0.4 * 1 = 1, so nothing to divide.
    expected = [math.sqrt(0.6) * 0.6, math.sqrt(0.6) * 0.8, math.sqrt(0.4), 0.0, 0.0]
    np.testing.assert_allclose(product[0], expected, atol=1e-6)
    assert product.dtype == np.float32

    query = fusion.fuse({"image": np.array([[1.0, 0.0]])}, n=1)  # a photo: no text slot
    np.testing.assert_allclose(query[0], [1, 0, 0, 0, 0], atol=1e-6)
    # Inner product = w_image * cos(image) / sqrt(W_query * W_product)
    #              = 0.6 * 0.6 / sqrt(0.6 * 1.0)
    assert float(query[0] @ product[0]) == pytest.approx(0.36 / math.sqrt(0.6), abs=1e-6)

    both = fusion.fuse({"image": np.array([[1.0, 0.0]]), "text": np.array([[0.0, 1.0, 0.0]])},
                       n=1)
    # image cos 0.6, text cos 0 -> (0.6 * 0.6 + 0.4 * 0) / sqrt(1 * 1)
    assert float(both[0] @ product[0]) == pytest.approx(0.36, abs=1e-6)


def test_fused_inner_product_is_proportional_to_weighted_cosines() -> None:
    print(f"seed: {SEED}")
    rng = np.random.default_rng(SEED)
    specs = [SlotSpec("image", 16, 0.5), SlotSpec("colour", 4, 0.2), SlotSpec("text", 8, 0.3)]
    fusion = WeightedConcatFusion(specs)
    m = 50
    products = {s.name: unit(rng, m, s.dim) for s in specs}
    fused_products = fusion.fuse(products, n=m)
    np.testing.assert_allclose(np.linalg.norm(fused_products, axis=1), 1.0, atol=1e-5)
    weights = fusion.weights()
    for filled in (["image"], ["text"], ["image", "colour"], ["image", "colour", "text"]):
        query = {name: unit(rng, 1, products[name].shape[1])[0] for name in filled}
        fused_query = fusion.fuse({k: v[None, :] for k, v in query.items()}, n=1)[0]
        inner = fused_products @ fused_query

        by_hand = sum(weights[name] * (products[name] @ query[name]) for name in filled)
        w_query = sum(weights[name] for name in filled)
        # Proportional, with the constant 1 / sqrt(W_query * W_all) ...
        np.testing.assert_allclose(inner, by_hand / math.sqrt(w_query * 1.0), atol=1e-5)
        # ... so the ranking is the same as the exact re-ranking score's.
        score = weighted_score(slot_scores(query, products), weights)
        np.testing.assert_allclose(score, by_hand / w_query, atol=1e-5)
        assert list(np.argsort(-inner, kind="stable")[:10]) == list(
            np.argsort(-score, kind="stable")[:10])


def test_missing_slots_are_zeros(fusion: WeightedConcatFusion) -> None:
    rng = np.random.default_rng(SEED)
    text = unit(rng, 3, 3)
    fused = fusion.fuse({"image": None, "text": text}, n=3)
    assert fused.shape == (3, 5)
    np.testing.assert_array_equal(fused[:, :2], 0)
    np.testing.assert_allclose(fused[:, 2:], text, atol=1e-6)  # renormalised to unit
    empty = fusion.fuse({}, n=2)
    np.testing.assert_array_equal(empty, np.zeros((2, 5), dtype=np.float32))


def test_zero_weight_slot_contributes_nothing() -> None:
    fusion = WeightedConcatFusion([SlotSpec("a", 2, 1.0), SlotSpec("b", 2, 0.0)])
    fused = fusion.fuse({"a": np.array([[1.0, 0.0]]), "b": np.array([[0.0, 1.0]])}, n=1)
    np.testing.assert_allclose(fused[0], [1, 0, 0, 0], atol=1e-6)


def test_float64_input_gives_float32(fusion: WeightedConcatFusion) -> None:
    fused = fusion.fuse({"image": np.array([[1.0, 0.0]], dtype=np.float64)}, n=1)
    assert fused.dtype == np.float32


@pytest.mark.parametrize(("slots", "n", "message"), [
    ({"image": np.zeros((2, 2))}, 3, r"Slot 'image' has shape \(2, 2\), expected \(3, 2\)"),
    ({"text": np.zeros((1, 4))}, 1, r"expected \(1, 3\)"),
    ({"text": np.zeros(3)}, 1, r"has shape \(3,\)"),
    ({"audio": np.zeros((1, 2))}, 1, r"Unknown slot\(s\) \['audio'\].*\['image', 'text'\]"),
])
def test_fuse_errors(fusion: WeightedConcatFusion, slots: dict, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fusion.fuse(slots, n)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        WeightedConcatFusion([])
    with pytest.raises(ValueError, match="non-negative"):
        WeightedConcatFusion([SlotSpec("a", 2, -0.1)])


def test_slot_scores_by_hand() -> None:
    query = {"image": np.array([1.0, 0.0])}
    products = {"image": np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]),
                "text": np.ones((3, 4))}
    scores = slot_scores(query, products)
    assert list(scores) == ["image"]  # only the slots the query fills
    np.testing.assert_allclose(scores["image"], [1.0, 0.6, 0.0])
    assert scores["image"].dtype == np.float32


def test_weighted_score_by_hand() -> None:
    scores = {"a": np.array([1.0, 0.0, 0.5]), "b": np.array([0.0, 1.0, 0.5])}
    weights = {"a": 3.0, "b": 1.0, "c": 10.0}
    np.testing.assert_allclose(weighted_score(scores, weights), [0.75, 0.25, 0.5])
    # A missing slot ("c") does not count in the average.
    np.testing.assert_allclose(weighted_score({"a": scores["a"]}, weights), scores["a"])


def test_weighted_score_errors() -> None:
    with pytest.raises(ValueError, match="no slot with a positive weight"):
        weighted_score({"a": np.ones(2)}, {"a": 0.0})
    with pytest.raises(ValueError, match="no slot with a positive weight"):
        weighted_score({}, {"a": 1.0})
    with pytest.raises(ValueError, match=r"No weight for slot\(s\) \['x'\]"):
        weighted_score({"x": np.ones(2)}, {"a": 1.0})


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_matvec_scores_the_rows_asked_in_pieces(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((1000, 48)).astype(dtype)
    vec = rng.standard_normal(48).astype(np.float32)
    expected = matrix.astype(np.float64) @ vec
    rows = np.array([999, 3, 500, 3, 0])  # any order, repeats kept
    # pieces of 64 rows: the last one short, every row scored once, in place
    monkeypatch.setattr(fusion_module, "MATVEC_CHUNK_BYTES", 64 * 4 * 48)
    whole = matvec(matrix, vec)
    assert whole.dtype == np.float32 and whole.shape == (1000,)
    np.testing.assert_allclose(whole, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(matvec(matrix, vec, rows), expected[rows], rtol=1e-4, atol=1e-4)
    assert matvec(matrix, vec, np.array([], dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize("n", [1, 63, 333, 585, 5000])
def test_matvec_scores_equal_rows_exactly_equal(n):
    """One product listed twice must tie exactly (ties keep catalog order): torch's kernel
    sums a few rows of a ragged batch in another order, so matvec never hands it one."""
    rng = np.random.default_rng(1)
    row = rng.standard_normal((1, 1790)).astype(np.float16)
    vec = rng.standard_normal(1790).astype(np.float32)
    same = np.repeat(row, n, axis=0)
    for scores in (matvec(same, vec), matvec(same.astype(np.float32), vec),
                   matvec(same, vec, np.arange(n)[::-1].copy())):
        assert np.unique(scores).size == 1
