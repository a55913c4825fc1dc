"""What the first bytes of an image say: its format, its sides, and whether DetectLabels takes it unchanged.

For ``s3://`` entries: the route of an object (``Image.S3Object``, or read and convert) is decided from a
prefix of it (a ranged GetObject), before anything else is read. Only headers are parsed: a JPEG's markers up
to its frame header, a PNG's ``IHDR`` and the chunks before its image data. No Pillow, nothing decoded.

>>> header = read_header(b"\\x89PNG\\r\\n\\x1a\\n" + b"\\x00\\x00\\x00\\rIHDR" + (640).to_bytes(4, "big")
...                      + (480).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0]) + bytes(4)
...                      + b"\\x00\\x00\\x00\\x00IDAT")
>>> header.format, header.width, header.height, header.as_is
('png', 640, 480, True)
>>> read_header(b"RIFF\\x00\\x00\\x00\\x00WEBPVP8 ")
ImageHeader(format='webp', width=None, height=None, as_is=False)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from labeler.adapters.images import sniff_format

# Frame headers (SOFn): baseline, extended sequential and progressive Huffman JPEGs are what every decoder reads;
# lossless, hierarchical and arithmetic-coded ones are left to the conversion path (which refuses what it cannot).
_SOF_AS_IS = frozenset({0xC0, 0xC1, 0xC2})
_SOF_ANY = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4: DHT, C8: JPG extension, CC: DAC
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: markers without a length


@dataclass(frozen=True)
class ImageHeader:
    """``format`` as :func:`~labeler.adapters.images.sniff_format` names it (None: not recognised); ``width`` and
    ``height`` from the header (None: not within the bytes given, or not a JPEG/PNG).

    ``as_is``: a JPEG (8-bit, grey or colour, not CMYK) or PNG (8-bit or palette, no EXIF orientation) that
    DetectLabels reads unchanged, the same test :func:`~labeler.adapters.images.prepare_image` makes before
    passing original bytes through.
    """

    format: str | None
    width: int | None = None
    height: int | None = None
    as_is: bool = False


def read_header(data: bytes) -> ImageHeader:
    """The header of the image whose first bytes are ``data`` (any prefix; a longer one knows more)."""
    kind = sniff_format(data)
    if kind == "jpeg":
        return _jpeg(data)
    if kind == "png":
        return _png(data)
    return ImageHeader(kind)


def _jpeg(data: bytes) -> ImageHeader:
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return ImageHeader("jpeg")  # not at a marker: corrupt, the conversion path says so
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or the scan before any frame header
            return ImageHeader("jpeg")
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2:
            return ImageHeader("jpeg")
        if marker in _SOF_ANY:
            if position + 10 > len(data):
                return ImageHeader("jpeg")
            precision, height, width, components = struct.unpack_from(">BHHB", data, position + 4)
            as_is = marker in _SOF_AS_IS and precision == 8 and components in (1, 3)
            return ImageHeader("jpeg", width, height, as_is)
        position += 2 + length
    return ImageHeader("jpeg")  # the frame header lies beyond these bytes (large metadata segments)


def _png(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return ImageHeader("png")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    ordinary = (depth == 8 and colour in (0, 2, 4, 6)) or (colour == 3 and depth in (1, 2, 4, 8))
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"IDAT":
            return ImageHeader("png", width, height, ordinary)
        if kind == b"eXIf":  # it may rotate the image, which DetectLabels ignores in a PNG: convert (upright)
            return ImageHeader("png", width, height, False)
        position += 12 + length
    return ImageHeader("png", width, height, False)  # the image data starts beyond these bytes: not known
