"""The first bytes of an image: format, sides, and whether DetectLabels takes it unchanged (an S3 object's route)."""

from __future__ import annotations

import doctest
import io
import struct
import zlib

import pytest
from PIL import Image

from labeler.adapters import image_header
from labeler.adapters.image_header import ImageHeader, read_header
from labeler.adapters.images import prepare_image
from labeler.logic.s3_sources import s3_object_route
from tests.support import images

START = 128 * 1024  # what the first read of an S3 object holds


def encoded(mode: str, fmt: str, size: tuple[int, int] = (320, 200), **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L", "I;16") else None).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def with_app_segment(jpeg: bytes, size: int) -> bytes:
    """The JPEG with an APP15 segment of ``size`` payload bytes (repeated 64 KiB segments) before its frame."""
    segments = b""
    while size > 0:
        part = min(size, 65_533)
        segments += b"\xff\xef" + struct.pack(">H", part + 2) + bytes(part)
        size -= part
    return jpeg[:2] + segments + jpeg[2:]


def with_exif_chunk(png: bytes, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = exif.tobytes()
    chunk = b"eXIf" + data
    return png[:33] + struct.pack(">I", len(data)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + png[33:]


def test_doctests() -> None:
    failures, attempted = doctest.testmod(image_header, raise_on_error=False)
    assert attempted > 0 and failures == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (images.jpeg(), ImageHeader("jpeg", 451, 300, True)),
        (encoded("L", "JPEG"), ImageHeader("jpeg", 320, 200, True)),
        (encoded("RGB", "JPEG", progressive=True), ImageHeader("jpeg", 320, 200, True)),
        (encoded("CMYK", "JPEG"), ImageHeader("jpeg", 320, 200, False)),  # converted to RGB first
        (images.png(), ImageHeader("png", 451, 300, True)),
        (encoded("RGBA", "PNG"), ImageHeader("png", 320, 200, True)),
        (encoded("P", "PNG"), ImageHeader("png", 320, 200, True)),
        (encoded("I;16", "PNG"), ImageHeader("png", 320, 200, False)),  # 16-bit: converted
        (with_exif_chunk(images.png(), 6), ImageHeader("png", 451, 300, False)),  # rotated: converted upright
        (images.webp(), ImageHeader("webp")),
        (images.gif(), ImageHeader("gif")),
        (images.HTML, ImageHeader("html")),
        (b"", ImageHeader(None)),
    ],
)
def test_headers(data: bytes, expected: ImageHeader) -> None:
    assert read_header(data[:START]) == expected


def test_the_same_test_as_prepare_image_makes_before_passing_bytes_through() -> None:
    for data in (images.jpeg(), encoded("CMYK", "JPEG"), images.png(), encoded("I;16", "PNG")):
        assert read_header(data).as_is == (not prepare_image(data).converted)


def test_a_frame_header_beyond_the_first_read_is_not_known() -> None:
    # Large metadata (EXIF thumbnails, ICC profiles, XMP) before the frame: within the first read, or not.
    near = with_app_segment(images.jpeg(), 100_000)
    far = with_app_segment(images.jpeg(), 200_000)
    assert read_header(near[:START]) == ImageHeader("jpeg", 451, 300, True)
    assert read_header(far[:START]) == ImageHeader("jpeg")  # the route is then read-and-convert
    assert read_header(far) == ImageHeader("jpeg", 451, 300, True)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff",  # SOI and a lone byte
        b"\xff\xd8\x00\x00\x00\x00",  # not at a marker
        b"\xff\xd8\xff\xda\x00\x08" + bytes(8),  # a scan before any frame header
        b"\xff\xd8\xff\xe0\x00\x01" + bytes(8),  # a segment length under 2
        b"\xff\xd8\xff\xc0\x00\x11\x08\x00",  # a frame header cut short
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",  # IHDR cut short
    ],
)
def test_broken_or_cut_headers_say_nothing_more_than_the_format(data: bytes) -> None:
    header = read_header(data)
    assert (header.width, header.height, header.as_is) == (None, None, False)


def test_the_route_follows_the_header() -> None:
    def route(data: bytes, size: int | None = None) -> str:
        header = read_header(data[:START])
        return s3_object_route(size or len(data), header.format, header.width, header.height, as_is=header.as_is)

    assert route(images.jpeg()) == "s3object"
    assert route(images.png()) == "s3object"
    assert route(images.png(), size=16 * 1024 * 1024) == "download"  # over S3Object's 15 MB
    assert route(encoded("CMYK", "JPEG")) == "download"
    assert route(images.webp()) == "download"
    assert route(images.tiny_png()) == "download"  # under 80 px: the conversion path says image_too_small
    assert route(encoded("RGB", "PNG", size=(10_001, 100))) == "download"  # over 10,000 px: downscaled
