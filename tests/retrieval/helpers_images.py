"""Small image factories shared by the image and preprocessing tests."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """The bytes of ``image`` saved as ``fmt`` (PNG, JPEG, GIF, WEBP, BMP, TIFF)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int) -> Image.Image:
    """An RGB image of uniform noise (incompressible, busy everywhere)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels.

    Its pixel data is a few bytes, so it only "works" if a decoder allocates what the header
    asks for: the shape of a decompression bomb, without the bomb's cost to the test.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def product_on_background(size: tuple[int, int] = (200, 160),
                          box: tuple[int, int, int, int] = (60, 50, 140, 110),
                          background: tuple[int, int, int] = (40, 120, 200),
                          product: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    """A flat ``product`` rectangle at ``box`` (left, top, right, bottom) on ``background``."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = background
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = product
    return Image.fromarray(pixels)
