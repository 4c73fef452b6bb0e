"""Opening untrusted images: one code path for catalog photos and shoppers' uploads.

Every image is checked before it is decoded (file size, format, pixel count from the header),
then decoded once, turned upright by its EXIF orientation, reduced to its first frame and
converted to RGB on a white background (catalog photos are shot on white, so transparency
must not turn black).
"""

from __future__ import annotations

import http.client
import io
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
URL_SCHEMES = ("http://", "https://")


class ImageError(ValueError):
    """An image that cannot or must not be used; the message says why and what to do."""


@dataclass(frozen=True, kw_only=True)
class ImageLimits:
    """Bounds applied to every image before decoding.

    Attributes:
        max_pixels: Width times height above which an image is refused unread.
        max_bytes: File or download size above which an image is refused.
        timeout_s: Timeout of one download attempt.
        retries: Extra download attempts after a failure (with backoff).
    """

    max_pixels: int = 40_000_000
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    retries: int = 2


ImageSource = str | Path | bytes | Image.Image


def is_url(source: object) -> bool:
    """True when ``source`` is an http(s) URL string."""
    return isinstance(source, str) and source.lower().startswith(URL_SCHEMES)


def fetch_url(url: str, limits: ImageLimits) -> bytes:
    """Downloads an image with a timeout, a size cap and retries.

    Raises:
        ImageError: Every attempt failed, or the body exceeds ``limits.max_bytes``.
    """
    last: Exception | None = None
    for attempt in range(limits.retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2**attempt, 2.0))
        try:
            # The socket timeout bounds each read; the deadline bounds the whole body, so a
            # server that trickles a byte at a time cannot hold a worker forever.
            deadline = time.monotonic() + limits.timeout_s
            request = urllib.request.Request(url, headers={"User-Agent": "shop-assistant/0.1"})
            with urllib.request.urlopen(request, timeout=limits.timeout_s) as response:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                    raise ImageError(
                        f"{url} is {int(declared):,} bytes, over the {limits.max_bytes:,}-byte "
                        "limit (max_image_bytes)."
                    )
                body = _read_body(response, limits.max_bytes + 1, deadline, limits.timeout_s)
            if len(body) > limits.max_bytes:
                raise ImageError(
                    f"{url} is over the {limits.max_bytes:,}-byte limit (max_image_bytes)."
                )
            return body
        except ImageError:
            raise
        except urllib.error.HTTPError as exc:
            last = exc
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # a client error will not change on retry
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            last = exc
        logger.debug("download of %s failed (attempt %d): %s", url, attempt + 1, last)
    raise ImageError(f"Could not download {url}: {last}")


def _read_body(response: http.client.HTTPResponse, cap: int, deadline: float,
               timeout_s: float) -> bytes:
    """Reads at most ``cap`` bytes, giving up once ``deadline`` has passed."""
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the body took longer than {timeout_s:g} s to arrive")
        # read1 returns what one socket read gives; read(n) would wait for all n bytes.
        chunk = response.read1(min(64 * 1024, cap - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read_source(source: str | Path | bytes, limits: ImageLimits) -> tuple[BinaryIO, str]:
    if isinstance(source, bytes):
        if len(source) > limits.max_bytes:
            raise ImageError(
                f"Image of {len(source):,} bytes is over the {limits.max_bytes:,}-byte limit."
            )
        return io.BytesIO(source), "uploaded image"
    if is_url(source):
        return io.BytesIO(fetch_url(str(source), limits)), str(source)
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageError(
                f"{path} is {size:,} bytes, over the {limits.max_bytes:,}-byte limit."
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"Image file {path} does not exist.") from None
    except OSError as exc:  # a folder, no permission, an I/O error
        raise ImageError(f"Cannot read image file {path}: {exc}") from None
    return io.BytesIO(data), str(path)


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts to RGB, compositing any transparency over white."""
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        # A palette index or a colour key (PNG tRNS) marks the transparent pixels.
        image = image.convert("RGBA")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, limits: ImageLimits | None = None,
               name: str | None = None) -> Image.Image:
    """Opens an untrusted image safely and returns it upright, as RGB, fully decoded.

    Args:
        source: A file path, an http(s) URL, raw bytes, or an already opened PIL image.
        limits: Size and download bounds; defaults to :class:`ImageLimits`.
        name: What to call the image in error messages (default: its path or URL).

    Returns:
        A decoded RGB image (first frame of an animation, EXIF orientation applied).

    Raises:
        ImageError: Missing, too large, not a JPEG/PNG/WEBP/GIF, truncated or corrupt.
    """
    limits = limits or ImageLimits()
    if isinstance(source, Image.Image):
        image = source
        what = name or "image"
        _check_pixels(image, limits, what)
    else:
        stream, what = _read_source(source, limits)
        what = name or what
        try:
            # Reads the header only; formats= keeps exotic decoders (and their bugs) out.
            image = Image.open(stream, formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise ImageError(
                f"{what} is not a JPEG, PNG, WEBP or GIF image (whatever its file name says)."
            ) from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{what} refused: {exc}") from None
        _check_pixels(image, limits, what)
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{what} is truncated or corrupt ({exc}).") from None


def _check_pixels(image: Image.Image, limits: ImageLimits, what: str) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{what} has no pixels ({width}x{height}).")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{what} is {width}x{height} = {width * height:,} pixels, over the "
            f"{limits.max_pixels:,}-pixel limit (max_image_pixels); resize it and try again."
        )
