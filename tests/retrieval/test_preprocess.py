"""Photo normalisation: background to white, crop to the product with a margin, pad to 3:4."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from retrieval.preprocess import PhotoNormaliser, background_mask, normalise
from tests.retrieval.helpers_images import noise, product_on_background

BACKGROUND = (40, 120, 200)
PRODUCT = (200, 30, 30)
WHITE = (255, 255, 255)


def near(pixels: np.ndarray, colour: tuple[int, int, int], tol: int = 30) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - colour) <= tol, axis=-1)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), exclusive, of the True pixels."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def assert_aspect(image: Image.Image, aspect: float = 0.75) -> None:
    width, height = image.size
    # Rounding to whole pixels: within one pixel of the exact aspect.
    assert abs(width - aspect * height) <= 1 or abs(height - width / aspect) <= 1


def test_product_on_coloured_background() -> None:
    photo = product_on_background(size=(200, 160), box=(60, 50, 140, 110),
                                  background=BACKGROUND, product=PRODUCT)
    before = np.asarray(photo).copy()
    out = normalise(photo)
    assert np.array_equal(np.asarray(photo), before)  # the input is not modified
    assert out.mode == "RGB"
    assert_aspect(out)
    pixels = np.asarray(out)
    assert not near(pixels, BACKGROUND, tol=60).any()  # no background colour left
    for corner in [(0, 0), (out.width - 1, 0), (0, out.height - 1),
                   (out.width - 1, out.height - 1)]:
        assert out.getpixel(corner) == WHITE

    product = near(pixels, PRODUCT)
    left, top, right, bottom = bbox(product)
    width, height = right - left, bottom - top
    # The product survives (a rim of at most a few pixels goes to white) ...
    assert 74 <= width <= 80 and 54 <= height <= 60
    assert product.sum() >= 0.85 * 80 * 60
    # ... it is cropped to: the 80-wide product plus a 6% margin each side, not 200 wide ...
    assert out.width <= 80 * 1.12 + 4
    assert left >= 2 and out.width - right >= 2  # ... with a margin kept on both sides
    # ... and it is centred on the padded canvas.
    assert abs((left + right) / 2 - out.width / 2) <= 2
    assert abs((top + bottom) / 2 - out.height / 2) <= 2


def test_tall_product_is_padded_sideways() -> None:
    photo = product_on_background(size=(300, 300), box=(140, 20, 160, 280))  # 20 x 260
    out = normalise(photo)
    assert_aspect(out)
    left, _, right, _ = bbox(near(np.asarray(out), PRODUCT))
    assert out.height <= 260 * 1.12 + 4  # cropped to the product's height plus margin
    assert out.width > 3 * (right - left)  # padded with white left and right
    assert abs((left + right) / 2 - out.width / 2) <= 2


def test_jpeg_photo_on_coloured_background() -> None:
    photo = product_on_background(size=(240, 200), box=(70, 40, 170, 170))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=75)
    out = normalise(Image.open(buffer).convert("RGB"))
    pixels = np.asarray(out)
    # JPEG ringing around the product must not leave a blue halo.
    assert near(pixels, BACKGROUND, tol=60).mean() < 0.005
    assert near(pixels, PRODUCT, tol=40).sum() >= 0.8 * 100 * 130


def test_margin_and_aspect_settings() -> None:
    photo = product_on_background(size=(200, 160), box=(60, 50, 140, 110))
    tight = normalise(photo, PhotoNormaliser(margin=0.0, aspect=80 / 60))
    loose = normalise(photo, PhotoNormaliser(margin=0.25, aspect=80 / 60))
    assert_aspect(tight, 80 / 60)
    assert tight.width <= 82
    assert 80 * 1.5 - 6 <= loose.width <= 80 * 1.5 + 4
    square = normalise(photo, PhotoNormaliser(aspect=1.0))
    assert abs(square.width - square.height) <= 1


def test_white_interior_is_kept() -> None:
    # An off-white shirt: its inside is the background's colour, enclosed by its seams.
    background = (235, 235, 235)
    pixels = np.empty((160, 120, 3), dtype=np.uint8)
    pixels[:] = background
    pixels[30:130, 25:95] = (60, 60, 60)  # the outline
    pixels[34:126, 29:91] = background  # the inside, same colour as the background
    mask = background_mask(pixels, tolerance=40.0)
    assert mask[0, 0] and mask[10, 60] and mask[150, 110]  # outside: background
    assert not mask[80, 60]  # inside: enclosed, so not background
    assert not mask[30:130, 25:95].any()

    out = np.asarray(normalise(Image.fromarray(pixels)))
    # The outside went white; the inside kept its own colour.
    assert tuple(out[0, 0]) == WHITE
    inside = near(out, background, tol=3)
    assert inside.sum() >= 0.8 * 58 * 88
    left, _, right, _ = bbox(near(out, (60, 60, 60), tol=20))
    assert bbox(inside)[0] > left and bbox(inside)[2] < right


def test_white_product_on_white_background_keeps_its_inside() -> None:
    pixels = np.full((160, 120, 3), 255, dtype=np.uint8)
    pixels[40:120, 30:90] = (90, 90, 90)
    pixels[44:116, 34:86] = 255
    out = normalise(Image.fromarray(pixels))
    assert_aspect(out)
    # Cropped to the outline: much smaller than the photo.
    assert out.height < 110
    assert near(np.asarray(out), (90, 90, 90), tol=10).any()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noisy_photo_passes_nearly_unchanged(seed: int) -> None:
    print(f"noise seed: {seed}")
    photo = noise(120, 160, seed=seed)  # already 3:4
    out = normalise(photo)
    assert out.size == photo.size  # no crop, no padding
    before, after = np.asarray(photo), np.asarray(out)
    same = np.all(before == after, axis=-1)
    assert same.mean() >= 0.9
    assert np.all(after[~same] == 255)  # the only change possible is whitening


def test_busy_scene_passes_nearly_unchanged() -> None:
    rng = np.random.default_rng(4)
    print("busy scene seed: 4")
    blocks = rng.integers(0, 256, (20, 15, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    out = normalise(Image.fromarray(blocks))
    assert out.size == (120, 160)
    assert np.all(np.asarray(out) == blocks, axis=-1).mean() >= 0.98


def test_a_speck_is_not_taken_for_the_product() -> None:
    photo = product_on_background(size=(200, 160), box=(100, 80, 102, 82))
    out = normalise(photo)
    # Over max_background: left as it is (not whitened, not cropped), only padded.
    assert out.width == 200
    assert_aspect(out)
    top = (out.height - 160) // 2
    original = np.asarray(out)[top:top + 160]
    assert near(original, BACKGROUND, tol=5).mean() > 0.99


def test_plain_photo_is_only_padded() -> None:
    photo = Image.new("RGB", (60, 40), (10, 200, 10))
    out = normalise(photo)
    assert out.size == (60, 80)
    assert out.getpixel((30, 40)) == (10, 200, 10)
    assert out.getpixel((0, 0)) == WHITE


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (7, 1), (2, 3), (3, 2), (5, 5), (4, 9)])
def test_tiny_images(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    photo = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = normalise(photo)
    assert out.mode == "RGB"
    assert out.width >= 1 and out.height >= 1
    if out.size != photo.size:
        assert_aspect(out)


def test_large_photo_is_fast() -> None:
    photo = product_on_background(size=(3000, 4000), box=(800, 900, 2200, 3100))
    start = time.perf_counter()
    out = normalise(photo)
    assert time.perf_counter() - start < 3.0
    assert_aspect(out)
    # The mask is computed at work size and scaled up: the crop is still about the product
    # (2200 tall plus margins; the width is padded to 3:4).
    assert 2200 <= out.height <= 2200 * 1.12 + 60
    assert near(np.asarray(out), BACKGROUND, tol=60).mean() < 0.01


def test_to_dict_records_every_setting() -> None:
    settings = PhotoNormaliser(tolerance=30.0, margin=0.1)
    data = settings.to_dict()
    assert data["tolerance"] == 30.0 and data["margin"] == 0.1
    assert set(data) == set(PhotoNormaliser.__dataclass_fields__)


def test_a_photo_already_on_white_is_not_painted() -> None:
    """Catalog shots are on white: whitening would only eat the product's rim and the
    white parts that touch the border, so the pixels stay as they are."""
    photo = Image.new("RGB", (60, 80), (255, 255, 255))
    pixels = np.asarray(photo).copy()
    pixels[10:70, 15:45] = (30, 60, 200)  # a blue garment
    pixels[60:80, 20:40] = (244, 244, 240)  # off-white trousers touching the bottom edge
    photo = Image.fromarray(pixels)
    uncropped = normalise(photo, PhotoNormaliser(crop=False))
    np.testing.assert_array_equal(np.asarray(uncropped), pixels)
    cropped = normalise(photo)  # still cropped to the product
    assert cropped.size != photo.size
