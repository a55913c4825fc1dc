"""Untrusted image bytes → what DetectLabels accepts: sniff, verify, convert, downscale.

DetectLabels takes JPEG or PNG bytes of at most 5 MB with each side within 80…10,000 px.
:func:`prepare_image` turns a downloaded body into such bytes or raises one
:class:`~labeler.models.errors.LabelerError` with a stable code:

1. **Sniff** the format from the magic bytes (never from a Content-Type header). Recognised
   non-images and unsupported formats are refused before Pillow sees a byte.
2. **Read the header only** (``Image.open`` is lazy, and restricted to the sniffed format):
   more than ``max_pixels`` pixels → :class:`DecompressionBomb` without decoding anything;
   a side under ``min_side`` → :class:`ImageTooSmall`.
3. **Pass through** a JPEG/PNG that already fits, in an ordinary mode: the *original* bytes go to
   DetectLabels. Its whole image data is still verified: a JPEG is decoded at 1/8 scale (the
   entropy-coded data is read to the end, so truncation shows, for ~1/64 of the memory); a PNG's
   chunks are CRC-checked and its zlib stream is inflated in small pieces and its row filters
   checked, without holding the image.
4. **Convert** anything else (WebP, GIF's first frame, BMP, TIFF, CMYK JPEG, 16-bit PNG, or an
   image too large in bytes or sides) to a JPEG: alpha flattened onto white, EXIF orientation
   applied, downscaled to fit ``max_side`` (a JPEG is decoded at reduced DCT scale first), then
   the quality and size are lowered in steps until the bytes fit ``max_output_bytes``.

Memory: several entries run concurrently, so every decode first reserves an estimate of the memory
it will hold at its peak from the process-wide image memory budget (:mod:`labeler.adapters.memory`,
``IMAGE_MEMORY_MB``), which also holds the downloaded bodies and the copies a DetectLabels request
makes: big conversions wait their turn instead of exhausting the Lambda's memory; one image larger than
the whole budget runs alone. Conversions keep their peak low: a JPEG is decoded at the smallest DCT scale
that still covers the target, every intermediate image is freed as soon as the next one exists (the
decoded file included), and a resize on both axes is done one axis at a time (the source and one
intermediate are held, never the source, the intermediate and the result together).

Pillow is imported inside the functions only, so that importing this module (and the handler that
imports it) stays fast.

>>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8))
'png'
>>> sniff_format(b"  <svg xmlns='http://www.w3.org/2000/svg'/>")
'svg'
>>> prepare_image(b"<!DOCTYPE html><html></html>")
Traceback (most recent call last):
labeler.models.errors.NotAnImage: an HTML page, not an image
"""

from __future__ import annotations

import io
import math
import re
import struct
import threading
import weakref
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from labeler.adapters.memory import Reservation, process_budget, reserve_memory, set_memory_budget
from labeler.models.errors import (
    CorruptImage,
    DecompressionBomb,
    ImageTooLarge,
    ImageTooSmall,
    InternalError,
    LabelerError,
    NotAnImage,
    UnsupportedImage,
)

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "SUPPORTED_FORMATS",
    "PreparedImage",
    "prepare_image",
    "request_memory",
    "reserve_memory",
    "set_memory_budget",
    "sniff_format",
]

#: Formats :func:`prepare_image` accepts (JPEG and PNG may pass through; the others are converted).
SUPPORTED_FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff")

_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}
_UNSUPPORTED_NAMES = {
    "heic": "HEIC/HEIF",
    "avif": "AVIF",
    "ico": "ICO (Windows icon)",
    "pdf": "PDF",
    "psd": "PSD (Photoshop)",
    "jp2": "JPEG 2000",
    "jxl": "JPEG XL",
    "pbm": "PBM (Netpbm bitmap)",
    "pgm": "PGM (Netpbm greymap)",
    "ppm": "PPM (Netpbm pixmap)",
    "pam": "PAM (Netpbm)",
    "qoi": "QOI",
    "sgi": "SGI",
    "xpm": "XPM (X pixmap)",
    "dds": "DDS (DirectDraw surface)",
    "eps": "EPS (PostScript)",
}

_JPEG_QUALITY = 90  # first try; then lowered in steps of 10 down to _MIN_QUALITY before shrinking
_MIN_QUALITY = 70
_MAX_ENCODES = 24  # a hard stop for the fit-the-bytes loop (each shrink step is ≥ 10 %)
_MAX_ICC_BYTES = 64 * 1024  # keep an RGB/grey colour profile in converted output, unless it is bloated
_WHITE = 255


@dataclass(frozen=True)
class PreparedImage:
    """What goes to DetectLabels, and what it was made from.

    ``width``/``height`` are the dimensions of ``data`` as encoded; ``source_width``/``source_height``
    those stored in the downloaded file (before any EXIF rotation).
    """

    data: bytes = field(repr=False)
    content_type: str  # "image/jpeg" | "image/png"
    source_format: str  # one of SUPPORTED_FORMATS
    source_width: int
    source_height: int
    width: int
    height: int
    converted: bool  # data is not the original bytes
    downscaled: bool
    memory: Reservation | None = field(default=None, repr=False, compare=False)
    """Converted bytes' share of the image memory budget (like a body's), released when this is dropped."""


@dataclass(frozen=True)
class _Limits:
    max_output_bytes: int
    min_side: int
    max_side: int
    max_pixels: int


# --- sniffing --------------------------------------------------------------------------------------
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_MARKUP_WINDOW = 4096
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"%PDF-", "pdf"),
    (b"8BPS", "psd"),
    (b"\xff\x4f\xff\x51", "jp2"),  # JPEG 2000 codestream
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jp2"),  # JP2 container
    (b"\xff\x0a", "jxl"),  # JPEG XL codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jxl"),  # JPEG XL container
    (b"qoif", "qoi"),
    (b"DDS |", "dds"),  # the magic, then the header size (124)
    (b"%!PS-Adobe", "eps"),
    (b"\xc5\xd0\xd3\xc6", "eps"),  # DOS EPS binary header
    (b"/* XPM */", "xpm"),
    (b"! XPM2", "xpm"),
)
# Netpbm: "P1".."P6", whitespace (and comments), width and height in ASCII digits; PAM: "P7" then WIDTH...
_NETPBM = re.compile(rb"\AP([1-6])(?:\s+(?:#[^\n]*\n)*)+\d+(?:\s+(?:#[^\n]*\n)*)+\d+\s")
_NETPBM_KINDS = {b"1": "pbm", b"4": "pbm", b"2": "pgm", b"5": "pgm", b"3": "ppm", b"6": "ppm"}


def sniff_format(data: bytes) -> str | None:
    """The kind of ``data`` from its magic bytes alone, or ``None`` when nothing is recognised.

    Supported images: ``"jpeg"``, ``"png"``, ``"gif"``, ``"webp"``, ``"bmp"``, ``"tiff"``.
    Recognised but refused: ``"svg"``, ``"heic"``, ``"avif"``, ``"ico"``, ``"pdf"``, ``"psd"``,
    ``"jp2"``, ``"jxl"``, ``"pbm"``, ``"pgm"``, ``"ppm"``, ``"pam"``, ``"qoi"``, ``"sgi"``,
    ``"xpm"``, ``"dds"``, ``"eps"``, and ``"html"`` (a web page, typically an error page served as
    the image).
    """
    head = bytes(data[:32])
    for prefix, kind in _MAGIC:
        if head.startswith(prefix):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if _looks_like_bmp(head):
        return "bmp"
    netpbm = _NETPBM.match(bytes(data[:256]))
    if netpbm:
        return _NETPBM_KINDS[netpbm.group(1)]
    if head.startswith(b"P7\n") and b"WIDTH" in bytes(data[:256]):
        return "pam"
    if _looks_like_sgi(head):
        return "sgi"
    if head[4:8] == b"ftyp":
        return _iso_media_image(data)
    if _looks_like_ico(head):
        return "ico"
    return _sniff_markup(data)


def _looks_like_bmp(head: bytes) -> bool:
    # "BM", then file size, 4 reserved bytes, pixel-data offset, and a DIB header of a known size.
    if len(head) < 26 or not head.startswith(b"BM"):
        return False
    offset, header_size = struct.unpack_from("<II", head, 10)
    return header_size in _BMP_HEADER_SIZES and 14 + header_size <= offset < 1 << 28


def _looks_like_sgi(head: bytes) -> bool:
    # Magic 474, storage 0 (verbatim) or 1 (RLE), 1 or 2 bytes per channel, dimension 1 to 3.
    if len(head) < 6 or head[:2] != b"\x01\xda":
        return False
    return head[2] in (0, 1) and head[3] in (1, 2) and 1 <= struct.unpack_from(">H", head, 4)[0] <= 3


def _looks_like_ico(head: bytes) -> bool:
    # ICONDIR: reserved 0, type 1 (icon) or 2 (cursor), count ≥ 1; first entry's reserved byte is 0.
    if len(head) < 22 or head[:2] != b"\x00\x00" or head[2:4] not in (b"\x01\x00", b"\x02\x00"):
        return False
    return struct.unpack_from("<H", head, 4)[0] >= 1 and head[9] == 0


def _iso_media_image(data: bytes) -> str | None:
    """HEIF/AVIF from an ISO-BMFF ``ftyp`` box; other brands (MP4, QuickTime video…) are not images."""
    size = struct.unpack_from(">I", data, 0)[0]
    box = bytes(data[8 : min(max(size, 16), 256)])
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)} - {box[4:8]}  # minus the minor version
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heic"
    return None


def _sniff_markup(data: bytes) -> str | None:
    text = bytes(data[:_MARKUP_WINDOW]).removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n\x0c").lower()
    if not text.startswith(b"<"):
        return None
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "html"
    if text.startswith(b"<svg"):
        return "svg"
    if text.startswith((b"<?xml", b"<!--", b"<!doctype")):
        svg, html = text.find(b"<svg"), text.find(b"<html")
        if svg >= 0 and (html < 0 or svg < html):
            return "svg"
        if html >= 0:
            return "html"
    return None


def _refuse(kind: str | None, data: bytes) -> LabelerError:
    if not data:
        return NotAnImage("the body is empty, not an image")
    if kind == "html":
        return NotAnImage("an HTML page, not an image")
    if kind == "svg":
        return UnsupportedImage("SVG is a vector format; DetectLabels needs a raster image (JPEG or PNG)", format="svg")
    if kind in _UNSUPPORTED_NAMES:
        return UnsupportedImage(
            f"{_UNSUPPORTED_NAMES[kind]} images are not supported (accepted: JPEG, PNG, WebP, GIF, BMP, TIFF)",
            format=kind,
        )
    return NotAnImage("not a recognised image format", magic=bytes(data[:8]).hex())


# --- the entry point -------------------------------------------------------------------------------
def prepare_image(
    data: bytes,
    *,
    max_output_bytes: int = 5 * 1024 * 1024,
    min_side: int = 80,
    max_side: int = 10_000,
    max_pixels: int = 40_000_000,
) -> PreparedImage:
    """Check ``data`` and return bytes DetectLabels accepts. Raises only :class:`LabelerError` subclasses.

    ``max_pixels`` bounds the decoded size (Pillow's own, process-wide bomb limit of about 179 M
    pixels applies as well and is never changed here).
    """
    if not (0 < min_side <= max_side) or max_output_bytes <= 0 or max_pixels <= 0:
        raise ValueError("invalid limits")
    kind = sniff_format(data)
    if kind not in SUPPORTED_FORMATS:
        raise _refuse(kind, data)

    from PIL import Image, UnidentifiedImageError

    limits = _Limits(max_output_bytes, min_side, max_side, max_pixels)
    try:
        return _prepare(data, kind, limits)
    except LabelerError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = str(exc).split(", could be", 1)[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise DecompressionBomb(f"the {kind.upper()} header declares too many pixels: {reason}"[:200]) from exc
    except UnidentifiedImageError as exc:
        raise CorruptImage(f"the {kind.upper()} header is invalid or uses an unsupported variant", format=kind) from exc
    except MemoryError as exc:
        raise InternalError("out of memory while decoding the image") from exc
    except Exception as exc:  # any Pillow/codec failure on crafted or damaged input
        raise CorruptImage(f"the {kind.upper()} image cannot be decoded: {_short(exc)}", format=kind) from exc


def load_decoders_in_background() -> None:
    """Import Pillow and its common decoders (JPEG, PNG, GIF, BMP) in a daemon thread.

    The composition root calls this once per container: the ~20 ms then overlap with the first
    invocation's first network round trips instead of delaying its first image.
    """

    def load() -> None:
        from PIL import Image

        Image.preinit()

    threading.Thread(target=load, name="load-decoders", daemon=True).start()


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _prepare(data: bytes, kind: str, limits: _Limits) -> PreparedImage:
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[kind]]) as image:
        width, height = image.size  # from the header: nothing is decoded yet
        _check_header(width, height, kind, limits)
        target = _fit_within(width, height, limits)
        if len(data) <= limits.max_output_bytes and target == (width, height) and _passes_as_is(kind, image, data):
            if kind == "png":
                _verify_png(data)
            else:
                _verify_jpeg(image, width, height)
            return PreparedImage(
                data=data,
                content_type=f"image/{kind}",
                source_format=kind,
                source_width=width,
                source_height=height,
                width=width,
                height=height,
                converted=False,
                downscaled=False,
            )
        out, out_size, held = _convert(image, kind, target, limits)
    prepared = PreparedImage(
        data=out,
        content_type="image/jpeg",
        source_format=kind,
        source_width=width,
        source_height=height,
        width=out_size[0],
        height=out_size[1],
        converted=True,
        downscaled=out_size[0] * out_size[1] < width * height,
        memory=held,
    )
    weakref.finalize(prepared, held.release)
    return prepared


def _check_header(width: int, height: int, kind: str, limits: _Limits) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImage(f"the {kind.upper()} header declares an empty {width}×{height} canvas", format=kind)
    if width * height > limits.max_pixels:
        raise DecompressionBomb(
            f"{width}×{height} is {width * height:,} pixels, over the limit of {limits.max_pixels:,}",
            width=width,
            height=height,
            max_pixels=limits.max_pixels,
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmall(
            f"{width}×{height} is too small: each side must be at least {limits.min_side} px",
            width=width,
            height=height,
            min_side=limits.min_side,
        )


def _fit_within(width: int, height: int, limits: _Limits) -> tuple[int, int]:
    """The size that fits ``max_side`` (aspect kept); refuses a shape that cannot fit both side limits."""
    longest = max(width, height)
    if longest <= limits.max_side:
        return width, height
    scale = limits.max_side / longest
    size = (min(limits.max_side, max(1, round(width * scale))), min(limits.max_side, max(1, round(height * scale))))
    if min(size) < limits.min_side:
        raise UnsupportedImage(
            f"the aspect ratio of {width}×{height} is too extreme: scaled to fit {limits.max_side} px it becomes "
            f"{size[0]}×{size[1]}, under the minimum side of {limits.min_side} px",
            width=width,
            height=height,
            min_side=limits.min_side,
            max_side=limits.max_side,
        )
    return size


def _passes_as_is(kind: str, image: Image.Image, data: bytes) -> bool:
    """A JPEG/PNG in a mode any decoder takes (not CMYK/YCCK JPEG, not 16-bit or 1/2/4-bit grey PNG).

    DetectLabels applies a JPEG's EXIF orientation itself, but not a PNG's: a PNG whose eXIf chunk
    rotates it is converted (upright) instead.
    """
    if kind == "jpeg":
        return image.mode in ("L", "RGB")
    if kind == "png":
        depth, colour = data[24], data[25]  # IHDR follows the signature directly (Image.open checked it)
        ordinary = (depth == 8 and colour in (0, 2, 4, 6)) or (colour == 3 and depth in (1, 2, 4, 8))
        return ordinary and _png_orientation(image) in (1, None)
    return False


def _png_orientation(image: Image.Image) -> int | None:
    """The orientation in an eXIf chunk read with the header (``getexif()`` could decode the whole PNG)."""
    exif = image.info.get("exif")
    if not isinstance(exif, bytes):
        return None
    from PIL import Image

    try:
        parsed = Image.Exif()
        parsed.load(exif)
        value = parsed.get(_ORIENTATION_TAG)
    except Exception:  # unreadable EXIF: nothing to apply
        return None
    return value if isinstance(value, int) else None


# --- verification without holding the image ---------------------------------------------------------
def _verify_jpeg(image: Image.Image, width: int, height: int) -> None:
    """Decode the whole entropy-coded data at 1/8 scale: truncation or broken markers raise."""
    image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
    with process_budget().reserve(_decode_cost(image, width, height)):
        image.load()


# Bytes per pixel of Pillow's image memory by mode (RGB is stored as 4 bytes per pixel).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_RGBA_BYTES = 4
# Pillow's WebP decoder (libwebp's animation decoder) holds two full canvases and a copy of the frame
# beside the image it fills: 12 bytes per pixel more while it decodes, and 8 until the file is dropped.
_WEBP_DECODER_BYTES = 12
_ENCODED_BYTES_PER_PIXEL = 1  # a JPEG's bytes while it is encoded (quality 90 of a noisy photo: ~0.8)
# A JPEG over this many pixels that must shrink is decoded at down to half the size that fits (_draft_request).
_HALF_FIT_PIXELS = 8_000_000


def _decode_cost(image: Image.Image, width: int, height: int) -> int:
    """Estimated bytes held while ``image`` (at its draft size) is decoded; ``width``×``height`` as stored."""
    pixels = image.size[0] * image.size[1]
    cost = pixels * _MODE_BYTES.get(image.mode, _RGBA_BYTES)
    if image.format == "WEBP":
        cost += pixels * _WEBP_DECODER_BYTES
    # A progressive JPEG keeps every DCT coefficient of the full image while decoding, whatever the scale.
    if image.format == "JPEG" and (image.info.get("progressive") or image.info.get("progression")):
        cost += width * height * 4
    return cost


def _conversion_cost(image: Image.Image, width: int, height: int, target: tuple[int, int]) -> int:
    """The most memory :func:`_convert` holds at once: the decode, then two images at a time, then encoding.

    Every intermediate is freed once the next exists, so after the decode (and what a WebP decoder keeps)
    the peak is the largest pair: source and normalised copy, source and the first resize pass, that pass
    and the target, the target and its encoded bytes.
    """
    source = image.size[0] * image.size[1] * _RGBA_BYTES
    kept = image.size[0] * image.size[1] * (_WEBP_DECODER_BYTES - 4) if image.format == "WEBP" else 0
    out = target[0] * target[1] * _RGBA_BYTES
    if target == image.size:
        resize = 0
    elif target[0] != image.size[0] and target[1] != image.size[1]:
        first = min(target[0] * image.size[1], image.size[0] * target[1]) * _RGBA_BYTES
        resize = max(source + first, first + out)
    else:
        resize = source + out
    copied = image.mode not in ("RGB", "L") or "transparency" in image.info  # _normalise/_flatten copy it
    pairs = max(2 * source if copied else source, resize, out + target[0] * target[1] * _ENCODED_BYTES_PER_PIXEL)
    return max(_decode_cost(image, width, height), kept + pairs)


def request_memory(prepared: PreparedImage) -> int:
    """What a DetectLabels request holds beside the bytes it sends (held already, as a body or converted
    bytes): their base64, JSON and encoded copies, about 4 × their size at once."""
    return 4 * len(prepared.data)


_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_FEED = 16 * 1024  # compressed bytes handed to zlib at once
_PNG_INFLATE = 256 * 1024  # most inflated bytes held at once


def _verify_png(data: bytes) -> None:
    """Check every chunk up to the end of the image data (CRC, order) and inflate the image data.

    Fails where decoding would: a bad zlib stream, too little data, a row filter type other than
    0…4, IDAT chunks interrupted before the image is complete, a palette image without PLTE.
    Memory stays at a few hundred KiB whatever the image size.
    """
    view = memoryview(data)
    kind, payload, pos = _png_chunk(data, view, 8)
    if kind != b"IHDR":
        raise CorruptImage("the PNG does not start with an IHDR chunk", format="png")
    rows, colour = _png_rows(bytes(payload)), payload[9]
    palette, inflater = False, None
    while not rows.done:
        kind, payload, pos = _png_chunk(data, view, pos)
        if kind == b"IDAT":
            if inflater is None:
                if colour == 3 and not palette:
                    raise CorruptImage("the palette PNG has no PLTE chunk", format="png")
                inflater = zlib.decompressobj()
            _inflate_idat(inflater, payload, rows)
        elif inflater is not None or kind in (b"IEND", b"IHDR"):
            raise CorruptImage("the PNG image data ends before the image is complete", format="png")
        palette = palette or kind == b"PLTE"


def _png_chunk(data: bytes, view: memoryview, pos: int) -> tuple[bytes, memoryview, int]:
    """The chunk at ``pos``: its type, its payload and the position of the next chunk; CRC checked."""
    if pos + 12 > len(data):
        raise CorruptImage("the PNG image data is truncated", format="png")
    length, kind = struct.unpack_from(">I4s", data, pos)
    end = pos + 8 + length
    if length > 0x7FFFFFFF or end + 4 > len(data):
        raise CorruptImage("the PNG image data is truncated", format="png")
    if zlib.crc32(view[pos + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
        raise CorruptImage(f"the PNG {kind.decode('latin-1')!r} chunk fails its CRC check", format="png")
    return kind, view[pos + 8 : end], end + 4


def _png_rows(ihdr: bytes) -> _RowChecker:
    if len(ihdr) != 13:
        raise CorruptImage("the PNG IHDR chunk is malformed", format="png")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    if depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1 or not width * height:
        raise CorruptImage("the PNG IHDR chunk is malformed", format="png")
    bits = depth * _PNG_CHANNELS[colour]
    if not interlace:
        return _RowChecker([(1 + (width * bits + 7) // 8, height)])
    passes = []
    for x0, y0, dx, dy in _ADAM7:
        pass_width, pass_height = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if pass_width > 0 and pass_height > 0:
            passes.append((1 + (pass_width * bits + 7) // 8, pass_height))
    return _RowChecker(passes)


class _RowChecker:
    """Follows the inflated PNG stream row by row: every row starts with a filter type 0…4."""

    def __init__(self, passes: list[tuple[int, int]]) -> None:
        self._passes = iter(passes)
        self._row_bytes, self._rows_left = next(self._passes)
        self.total = sum(row_bytes * count for row_bytes, count in passes)
        self._next_row = 0  # offset of the next filter byte in the inflated stream
        self.seen = 0
        self.done = False

    def feed(self, chunk: bytes) -> None:
        end = self.seen + len(chunk)
        while self._next_row < min(end, self.total):
            if chunk[self._next_row - self.seen] > 4:
                raise CorruptImage("the PNG image data has an invalid row filter", format="png")
            self._next_row += self._row_bytes
            self._rows_left -= 1
            if not self._rows_left:  # after the last row of the last pass, _next_row == total
                self._row_bytes, self._rows_left = next(self._passes, (0, 0))
        self.seen = end
        self.done = end >= self.total


def _inflate_idat(inflater: zlib._Decompress, payload: memoryview, rows: _RowChecker) -> None:
    try:
        for start in range(0, len(payload), _PNG_FEED):
            pending: bytes | memoryview = payload[start : start + _PNG_FEED]
            while True:
                out = inflater.decompress(pending, _PNG_INFLATE)
                rows.feed(out)
                if rows.done:
                    return
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    raise CorruptImage("the PNG image data ends before the image is complete", format="png")
                if not pending and len(out) < _PNG_INFLATE:
                    break
    except zlib.error as exc:
        raise CorruptImage(f"the PNG image data is not a valid zlib stream ({exc})", format="png") from exc


# --- conversion ------------------------------------------------------------------------------------
_ORIENTATION_TAG = 0x0112


def _convert(
    image: Image.Image, kind: str, target: tuple[int, int], limits: _Limits
) -> tuple[bytes, tuple[int, int], Reservation]:
    """Decode (at reduced DCT scale for a JPEG), normalise, downscale, orient, flatten; encode to fit.

    The encoded bytes outlive the step: they stay in the budget, held like a body, until they are dropped.
    """

    width, height = image.size
    if kind == "jpeg" and target != (width, height):
        image.draft(None, _draft_request(width * height, target, limits))
        if image.size[0] < target[0] or image.size[1] < target[1]:  # decoded under the fitting size: keep it
            target = image.size
    with process_budget().reserve(_conversion_cost(image, width, height, target)):
        image.load()
        orientation = _orientation(image)
        icc = image.info.get("icc_profile")
        work = _replace(image, _normalise(image))
        work = _replace(work, _flatten(work))
        work = _resize(work, target)
        if orientation in _TRANSPOSE:
            work = _replace(work, work.transpose(_TRANSPOSE[orientation]))
        try:
            out, size = _encode_to_fit(work, _matching_icc(icc, work.mode), limits)
        finally:
            work.close()
        return out, size, process_budget().hold_body(len(out))  # granted at once: this thread is working


def _draft_request(pixels: int, target: tuple[int, int], limits: _Limits) -> tuple[int, int]:
    """The smallest size to decode a JPEG of ``pixels`` that must shrink to ``target``.

    libjpeg scales by 1/2, 1/4 or 1/8 while decoding, and Pillow picks the smallest scale that stays at
    or above the size asked for. For a large image (over ``_HALF_FIT_PIXELS``) that is half the size that
    fits (never under the minimum side): asking for exactly the size that fits would decode a
    12,000-px-wide photo whole (48 MB, plus ~40 MB to resample it), asking for half decodes it at 1/2
    (6,000 px, 12 MB, nothing to resample). DetectLabels still gets at least half its maximum side.

    >>> limits = _Limits(5 << 20, 80, 10_000, 40_000_000)
    >>> _draft_request(12_000_000, (10_000, 833), limits), _draft_request(60_000, (250, 167), limits)
    ((5000, 417), (250, 167))
    """
    if pixels <= _HALF_FIT_PIXELS:
        return target
    scale = min(1.0, max(0.5, limits.min_side / min(target)))
    return math.ceil(target[0] * scale), math.ceil(target[1] * scale)


def _resize(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``image`` resized to ``target``, one axis at a time when both change (the smaller intermediate first).

    Pillow resamples both axes through an intermediate it holds beside the source and the result; one
    axis per call lets the source go before the second pass. The result differs by rounding only.
    """
    from PIL import Image

    width, height = image.size
    if (width, height) == target:
        return image
    if width != target[0] and height != target[1]:
        first = (target[0], height) if target[0] * height <= width * target[1] else (width, target[1])
        image = _replace(image, image.resize(first, Image.Resampling.LANCZOS, reducing_gap=3.0))
    return _replace(image, image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0))


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """``new``, after freeing ``old``'s pixels (the opened file's too: its owner closing it again is harmless)."""
    if new is not old:
        old.close()
    return new


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF: the pixels are still fine, keep them as stored
        return 1
    return value if isinstance(value, int) else 1


# The same table as ImageOps.exif_transpose, applied to the (already downscaled) image.
_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}  # EXIF orientation → Image.Transpose value


def _normalise(image: Image.Image) -> Image.Image:
    """One of ``RGB``, ``L``, ``RGBA``, ``LA`` (transparency as an alpha band)."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image.convert("RGBA") if "transparency" in image.info else image
    if mode in ("RGBA", "LA"):
        return image
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode.startswith("I;16"):  # 16-bit grey: keep the tones (a plain convert("L") would clip at 255)
        return image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if mode in ("I", "F"):  # 32-bit integer or float samples: stretch their range over 0…255
        low, high = image.getextrema()
        scale = 255 / (high - low) if high > low else 0.0
        return image.point(lambda value: value * scale - low * scale).convert("L")
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info or (image.palette and image.palette.mode == "RGBA")
        return image.convert("RGBA" if has_alpha else "RGB")
    return image.convert("RGBA" if "A" in mode or "a" in mode else "RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    icc = image.info.get("icc_profile")
    if icc:
        from PIL import ImageCms

        try:
            converted = ImageCms.profileToProfile(
                image, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
        except Exception:  # a broken or exotic profile: the naive conversion below is still a fair picture
            converted = None
        if converted is not None:
            return converted
    return image.convert("RGB")


def _flatten(image: Image.Image) -> Image.Image:
    """Composite an image with alpha onto white (DetectLabels sees no transparency)."""
    if image.mode not in ("RGBA", "LA"):
        return image
    from PIL import Image

    background = Image.new(
        image.mode[0] if image.mode == "LA" else "RGB", image.size, _WHITE if image.mode == "LA" else (_WHITE,) * 3
    )
    background.paste(image, (0, 0), image)
    return background


def _matching_icc(icc: object, mode: str) -> bytes | None:
    """The source's colour profile when it describes the output's colour space (RGB or grey)."""
    if not isinstance(icc, bytes) or len(icc) > _MAX_ICC_BYTES or len(icc) < 20:
        return None
    return icc if icc[16:20] == (b"RGB " if mode == "RGB" else b"GRAY") else None


def _encode_to_fit(image: Image.Image, icc: bytes | None, limits: _Limits) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes ≤ ``max_output_bytes``: quality 90, 80, 70, then ≥ 10 % smaller per step."""
    from PIL import Image

    quality, current = _JPEG_QUALITY, image
    try:
        for _ in range(_MAX_ENCODES):
            buffer = io.BytesIO()
            options = {"icc_profile": icc} if icc else {}
            current.save(buffer, format="JPEG", quality=quality, **options)
            if buffer.tell() <= limits.max_output_bytes:
                return buffer.getvalue(), current.size
            if quality > _MIN_QUALITY:
                quality -= 10
                continue
            size = _smaller(current.size, limits.max_output_bytes / buffer.tell(), limits.min_side)
            if size is None:
                break
            smaller = current.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
            if current is not image:
                current.close()
            current = smaller
    finally:
        if current is not image:
            current.close()
    raise ImageTooLarge(
        f"the image cannot be compressed under {limits.max_output_bytes:,} bytes "
        f"without a side falling under {limits.min_side} px",
        max_bytes=limits.max_output_bytes,
    )


def _smaller(size: tuple[int, int], byte_ratio: float, min_side: int) -> tuple[int, int] | None:
    """The next size down: bytes scale roughly with the area, with a margin; never under ``min_side``."""
    factor = min(0.9, max(0.5, math.sqrt(byte_ratio) * 0.95))
    factor = max(factor, min_side / min(size))
    if factor >= 1:
        return None
    return max(min_side, round(size[0] * factor)), max(min_side, round(size[1] * factor))
