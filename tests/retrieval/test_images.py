"""Opening untrusted images: bombs, broken files, wrong formats, EXIF, alpha and downloads."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from retrieval.images import (
    ImageError,
    ImageLimits,
    fetch_url,
    is_url,
    load_image,
    to_rgb,
)
from tests.retrieval.helpers_images import encode, noise, png_declaring

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if any image's pixel data is decoded."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"{self.size} image was decoded before being refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# --- refused before decoding ---------------------------------------------------------------


@pytest.mark.parametrize("pillow_guard", [True, False])
def test_decompression_bomb_is_refused_from_its_header(
        monkeypatch: pytest.MonkeyPatch, no_decoding: None, pillow_guard: bool) -> None:
    if not pillow_guard:
        # Our own check must hold even when an application switches Pillow's guard off.
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = png_declaring(100_000, 100_000)  # 10 gigapixels; 30 GB if decoded
    assert len(bomb) < 200
    start = time.perf_counter()
    with pytest.raises(ImageError) as info:
        load_image(bomb)
    assert time.perf_counter() - start < 0.5
    message = str(info.value)
    assert "uploaded image" in message
    assert "10000000000" in message.replace(",", "")


def test_gif_declaring_a_huge_screen_is_refused(no_decoding: None) -> None:
    gif = bytearray(encode(Image.new("P", (2, 2)), "GIF"))
    gif[6:10] = b"\xff\xff\xff\xff"  # logical screen 65535 x 65535
    with pytest.raises(ImageError):
        load_image(bytes(gif))


def test_over_max_pixels_is_refused_before_decoding(no_decoding: None) -> None:
    # 8000 x 6000 is below Pillow's own bomb limit: only max_pixels stops it.
    with pytest.raises(ImageError, match=r"8000x6000 = 48,000,000 pixels.*40,000,000"):
        load_image(png_declaring(8000, 6000))


def test_max_pixels_boundary(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (10, 10), RED), "PNG")
    assert load_image(data, ImageLimits(max_pixels=100)).size == (10, 10)
    with pytest.raises(ImageError, match="max_image_pixels"):
        load_image(data, ImageLimits(max_pixels=99))


def test_max_pixels_applies_to_open_pil_images() -> None:
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(Image.new("RGB", (20, 20)), ImageLimits(max_pixels=399), name="my photo")


@pytest.mark.parametrize("as_file", [True, False])
def test_over_max_bytes_is_refused(tmp_path: Path, as_file: bool, no_decoding: None) -> None:
    data = encode(noise(64, 64, seed=1), "PNG")
    assert len(data) > 4000
    source: Path | bytes = data
    if as_file:
        source = tmp_path / "big.png"
        source.write_bytes(data)
    with pytest.raises(ImageError, match=r"over the 4,000-byte limit"):
        load_image(source, ImageLimits(max_bytes=4000))


# --- broken and disguised files ------------------------------------------------------------


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = encode(noise(64, 64, seed=2), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg is truncated or corrupt"):
        load_image(path)


def test_random_bytes_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(np.random.default_rng(3).bytes(2048))
    with pytest.raises(ImageError, match="not a JPEG, PNG, WEBP or GIF"):
        load_image(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="not a JPEG"):
        load_image(path)


def test_png_named_jpg_loads_by_content(tmp_path: Path) -> None:
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(encode(Image.new("RGB", (7, 5), BLUE), "PNG"))
    image = load_image(path)
    assert image.size == (7, 5)
    assert image.mode == "RGB"
    assert image.getpixel((3, 2)) == BLUE


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PPM", "ICO"])
def test_other_formats_are_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "disguised.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8), RED), fmt))
    with pytest.raises(ImageError, match="not a JPEG, PNG, WEBP or GIF"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_allowed_formats_load(fmt: str) -> None:
    image = load_image(encode(Image.new("RGB", (9, 6), RED), fmt))
    assert image.size == (9, 6)
    assert image.mode == "RGB"
    r, g, b = image.getpixel((4, 3))
    assert r > 200 and g < 60 and b < 60


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.jpg does not exist"):
        load_image(tmp_path / "nope.jpg")


def test_a_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="Cannot read image file"):
        load_image(tmp_path)


def test_name_is_used_in_messages() -> None:
    with pytest.raises(ImageError, match=r"^shopper upload is not a JPEG"):
        load_image(b"not an image", name="shopper upload")


# --- orientation, frames, transparency -----------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = RED  # left half red
    pixels[:, 20:] = BLUE  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    assert Image.open(io.BytesIO(data)).size == (40, 20)

    image = load_image(data)
    assert image.size == (20, 40)  # transposed
    top = np.asarray(image)[:15].reshape(-1, 3).mean(axis=0)
    bottom = np.asarray(image)[25:].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 60  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_exif_orientation_on_open_pil_image() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(Image.new("RGB", (30, 10), RED), "JPEG", exif=exif)
    assert load_image(Image.open(io.BytesIO(data))).size == (10, 30)


def test_animated_gif_gives_its_first_frame() -> None:
    palette = [*RED, *BLUE] + [0] * (256 * 3 - 6)
    frames = []
    for index in (0, 1, 1):
        frame = Image.new("P", (12, 8), index)
        frame.putpalette(palette)
        frames.append(frame)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50,
                  loop=0)
    image = load_image(data)
    assert image.size == (12, 8)
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == RED


def test_transparent_gif_is_white() -> None:
    palette = [0, 0, 0, *RED] + [0] * (256 * 3 - 6)
    frame = Image.new("P", (4, 4), 0)  # all index 0 = black, declared transparent
    frame.putpixel((0, 0), 1)
    frame.putpalette(palette)
    image = load_image(encode(frame, "GIF", transparency=0))
    assert image.getpixel((2, 2)) == WHITE
    assert image.getpixel((0, 0)) == RED


def _rgba_sample() -> Image.Image:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (255, 0, 0, 128))  # half-transparent red
    image.putpixel((2, 0), (0, 0, 255, 255))  # opaque blue
    return image


def _assert_rgba_sample_on_white(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    r, g, b = image.getpixel((1, 0))
    assert r == 255 and 120 <= g <= 135 and 120 <= b <= 135
    assert image.getpixel((2, 0)) == BLUE


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_is_composited_on_white(fmt: str) -> None:
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    _assert_rgba_sample_on_white(load_image(encode(_rgba_sample(), fmt, **kwargs)))


def test_to_rgb_on_pil_modes() -> None:
    _assert_rgba_sample_on_white(to_rgb(_rgba_sample()))
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (0, 255))
    rgb_la = to_rgb(la)
    assert [rgb_la.getpixel((0, 0)), rgb_la.getpixel((1, 0))] == [WHITE, (0, 0, 0)]
    rgb = Image.new("RGB", (1, 1), RED)
    assert to_rgb(rgb) is rgb
    assert to_rgb(Image.new("L", (1, 1), 7)).getpixel((0, 0)) == (7, 7, 7)
    cmyk = Image.new("CMYK", (1, 1), (0, 0, 0, 0))
    assert to_rgb(cmyk).getpixel((0, 0)) == WHITE


def test_palette_png_with_transparency_is_white() -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, *BLUE] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    loaded = load_image(encode(image, "PNG", transparency=0))
    assert [loaded.getpixel((0, 0)), loaded.getpixel((1, 0))] == [WHITE, BLUE]


@pytest.mark.parametrize(("mode", "key", "opaque"), [
    ("RGB", (0, 0, 0), (0, 0, 255)),  # PNG tRNS colour key on a truecolour image
    ("L", 0, 200),                     # ... and on a greyscale one
])
def test_colour_key_transparency_is_white(mode: str, key: object, opaque: object) -> None:
    image = Image.new(mode, (2, 1), key)  # type: ignore[arg-type]
    image.putpixel((1, 0), opaque)  # type: ignore[arg-type]
    loaded = load_image(encode(image, "PNG", transparency=key))
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 0)) != WHITE


def test_sixteen_bit_grey_png_loads() -> None:
    image = Image.new("I;16", (3, 3), 65535)
    loaded = load_image(encode(image, "PNG"))
    assert loaded.mode == "RGB" and loaded.size == (3, 3)


# --- downloads -----------------------------------------------------------------------------


PNG_BODY = encode(Image.new("RGB", (6, 4), RED), "PNG")


class _Handler(BaseHTTPRequestHandler):
    hits: Counter[str]
    stop: threading.Event

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.hits[path] += 1
        try:
            if path == "/ok.png":
                self._send(200, PNG_BODY, len(PNG_BODY))
            elif path == "/missing.png":
                self._send(404, b"not here", 8)
            elif path == "/broken.png":
                self._send(500, b"oops", 4)
            elif path == "/flaky.png":
                if self.hits[path] == 1:
                    self._send(503, b"busy", 4)
                else:
                    self._send(200, PNG_BODY, len(PNG_BODY))
            elif path == "/slow.png":
                self.stop.wait(2.0)  # longer than the client's timeout
                self._send(200, PNG_BODY, len(PNG_BODY))
            elif path == "/trickle.png":
                # Each byte arrives within the socket timeout, the whole body never does.
                self._send(200, b"", 200)
                for _ in range(200):
                    if self.stop.wait(0.05):
                        break
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            elif path == "/big-declared.png":
                self._send(200, b"\0" * 5000, 5000)
            elif path == "/big-undeclared.png":
                self._send(200, b"\0" * 5000)  # HTTP/1.0: the body ends when we close
            elif path == "/text.png":
                self._send(200, b"<html>hello</html>", 18)
            else:
                self._send(404, b"", 0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, as intended


@pytest.fixture
def server() -> Iterator[tuple[str, Counter[str]]]:
    hits: Counter[str] = Counter()
    stop = threading.Event()
    handler = type("Handler", (_Handler,), {"hits": hits, "stop": stop})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


FAST = ImageLimits(timeout_s=0.5, retries=0)


def test_is_url() -> None:
    assert is_url("http://x/a.png") and is_url("HTTPS://x/a.png")
    assert not is_url("ftp://x/a.png")
    assert not is_url("/tmp/http://x")
    assert not is_url(b"http://x")
    assert not is_url(Path("http://x"))


def test_download_success(server: tuple[str, Counter[str]]) -> None:
    base, hits = server
    image = load_image(f"{base}/ok.png?w=10", FAST)
    assert image.size == (6, 4)
    assert image.getpixel((0, 0)) == RED
    assert hits["/ok.png"] == 1


def test_404_is_not_retried(server: tuple[str, Counter[str]]) -> None:
    base, hits = server
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"Could not download .*missing\.png.*404"):
        fetch_url(f"{base}/missing.png", ImageLimits(timeout_s=1, retries=3))
    assert hits["/missing.png"] == 1
    assert time.perf_counter() - start < 0.5  # no backoff sleeps either


def test_transient_server_error_is_retried(server: tuple[str, Counter[str]]) -> None:
    base, hits = server
    body = fetch_url(f"{base}/flaky.png", ImageLimits(timeout_s=1, retries=2))
    assert body == PNG_BODY
    assert hits["/flaky.png"] == 2


def test_persistent_server_error_gives_up_after_the_retries(
        server: tuple[str, Counter[str]]) -> None:
    base, hits = server
    with pytest.raises(ImageError, match="500"):
        fetch_url(f"{base}/broken.png", ImageLimits(timeout_s=1, retries=1))
    assert hits["/broken.png"] == 2


def test_slow_server_times_out(server: tuple[str, Counter[str]]) -> None:
    base, hits = server
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"Could not download .*slow\.png"):
        load_image(f"{base}/slow.png", ImageLimits(timeout_s=0.3, retries=0))
    assert time.perf_counter() - start < 1.5
    assert hits["/slow.png"] == 1


def test_trickling_body_times_out(server: tuple[str, Counter[str]]) -> None:
    base, _ = server
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"trickle\.png.*longer than 0\.4"):
        fetch_url(f"{base}/trickle.png", ImageLimits(timeout_s=0.4, retries=0))
    # 200 bytes at one per 50 ms would take 10 s; the attempt stops near its timeout.
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("path", ["/big-declared.png", "/big-undeclared.png"])
def test_body_over_max_bytes_is_refused_without_retry(
        server: tuple[str, Counter[str]], path: str) -> None:
    base, hits = server
    with pytest.raises(ImageError, match="over the 1,000-byte limit"):
        fetch_url(base + path, ImageLimits(max_bytes=1000, timeout_s=1, retries=2))
    assert hits[path] == 1


def test_downloaded_non_image_is_refused(server: tuple[str, Counter[str]]) -> None:
    base, _ = server
    with pytest.raises(ImageError, match=r"text\.png is not a JPEG"):
        load_image(f"{base}/text.png", FAST)


def test_unreachable_host_fails_cleanly() -> None:
    # A closed port on 127.0.0.1: connection refused, no network beyond this machine.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ImageError, match="Could not download"):
        fetch_url(f"http://127.0.0.1:{port}/x.png", FAST)
