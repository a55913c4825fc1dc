"""Real image bytes for tests: photographs from scikit-image's bundled data, encoded with Pillow.

Every function returns fresh ``bytes`` (cached per arguments), so tests never share mutable state.

>>> jpeg()[:3] == b"\\xff\\xd8\\xff"
True
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

from PIL import Image


@cache
def _photo(name: str) -> Image.Image:
    """A real photograph: ``chelsea`` (a cat), ``coffee`` (a cup of espresso), ``astronaut``, ``rocket``."""
    import skimage.data  # lazy: only tests that need a photo pay for scikit-image

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def photo(name: str = "chelsea", size: tuple[int, int] | None = None) -> Image.Image:
    image = _photo(name).copy()
    if size is not None:
        image = image.resize(size)
    return image


@cache
def encode(name: str, fmt: str, size: tuple[int, int] | None = None, **options: object) -> bytes:
    image = photo(name, size)
    if fmt == "GIF":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def jpeg(name: str = "chelsea", size: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    return encode(name, "JPEG", size, quality=quality)


def png(name: str = "chelsea", size: tuple[int, int] | None = None) -> bytes:
    return encode(name, "PNG", size)


def webp(name: str = "chelsea", size: tuple[int, int] | None = None) -> bytes:
    return encode(name, "WEBP", size)


def gif(name: str = "chelsea", size: tuple[int, int] | None = None) -> bytes:
    return encode(name, "GIF", size)


def bmp(name: str = "chelsea", size: tuple[int, int] | None = None) -> bytes:
    return encode(name, "BMP", size)


def tiff(name: str = "chelsea", size: tuple[int, int] | None = None) -> bytes:
    return encode(name, "TIFF", size)


@cache
def distinct_png(n: int, side: int = 96) -> bytes:
    """A small PNG whose bytes differ for every ``n`` (a flat colour): one DetectLabels call each."""
    colour = ((n * 67) % 256, (n * 131 + 40) % 256, (n // 256 * 97 + n * 17) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@cache
def tiny_png(width: int = 40, height: int = 40) -> bytes:
    """A valid PNG under Rekognition's 80-px minimum side."""
    return png("chelsea", (width, height))


@cache
def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small PNG (a few hundred KiB) that declares a huge canvas: 3.6 G pixels of zeros.

    Built by hand (one IDAT of compressed zero rows) so that creating it costs no memory.
    """
    raw_row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + 1-bit grey pixels
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(raw_row) for _ in range(height)]
    idat = b"".join(chunks) + compressor.flush()
    return _png_file(width, height, bit_depth=1, colour_type=0, idat=idat)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_file(width: int, height: int, *, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@cache
def truncated_jpeg() -> bytes:
    """The first third of a real JPEG: the header sniffs as JPEG, decoding fails."""
    data = jpeg()
    return data[: len(data) // 3]


@cache
def corrupt_png() -> bytes:
    """A PNG whose image data is garbage (valid signature and header, broken IDAT)."""
    data = bytearray(png(size=(120, 120)))
    start = data.find(b"IDAT") + 4
    data[start : start + 200] = b"\x13" * 200
    return bytes(data)


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="200" height="200"><circle r="90"/></svg>'
HTML = b"<!doctype html><html><head><title>Not found</title></head><body><h1>Oops</h1></body></html>"


@cache
def polyglot_gif_js() -> bytes:
    """A GIF header followed by script text: sniffs as GIF, is not a decodable image."""
    return b"GIF89a/*\x00\x00\x00\x00*/=1;alert(document.domain);" + b"\x00" * 32
