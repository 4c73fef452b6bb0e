"""Shoppers' photos at the app's edge: quick refusals before reading, thumbnails after.

The real checks (bytes, pixel count from the header, format, corruption) run in
:func:`retrieval.images.load_image` when ``Conversation.turn`` stores the photo; here the
app refuses what it can tell from the upload's declared size and count alone, and makes the
thumbnails it shows in the chat from the *decoded, checked* image, never from the raw
bytes a browser sent.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "gif"]
MAX_PHOTOS = 4  # per message
THUMBNAIL_PX = 256


def precheck(files: Sequence[tuple[str, int]], max_bytes: int) -> str | None:
    """A friendly refusal for photos that cannot be used, or ``None``.

    Args:
        files: ``(name, size in bytes)`` of each attached photo.
        max_bytes: The engine's per-image byte limit.
    """
    if len(files) > MAX_PHOTOS:
        return f"Please send at most {MAX_PHOTOS} photos in one message."
    for name, size in files:
        if size > max_bytes:
            return (f"The photo {name!r} is {size / 1e6:.1f} MB; photos up to "
                    f"{max_bytes / 1e6:.0f} MB are accepted. Try a smaller one.")
        if size == 0:
            return f"The photo {name!r} is empty."
    return None


def thumbnail(image: Image.Image, size: int = THUMBNAIL_PX) -> bytes:
    """A small JPEG of an already checked image."""
    small = image.copy()
    small.thumbnail((size, size))
    buffer = io.BytesIO()
    small.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
