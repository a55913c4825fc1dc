"""labeler.adapters.images: sniffing, verification, pass-through, conversion, downscaling, refusals."""

from __future__ import annotations

import gc
import io
import json
import random
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from functools import cache
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat

from labeler.adapters import images as images_module
from labeler.adapters.images import SUPPORTED_FORMATS, PreparedImage, prepare_image, sniff_format
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
from tests.support import images as samples

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"max_output_bytes": 5 * 1024 * 1024, "min_side": 80, "max_side": 10_000}


# --- image builders (real encoders: Pillow) -----------------------------------------------------
def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@cache
def noise_png(width: int, height: int) -> bytes:
    """Incompressible RGB noise: a PNG of about 3 bytes per pixel."""
    pixels = random.Random(width * 7 + height).randbytes(width * height * 3)
    return encode(Image.frombytes("RGB", (width, height), pixels), "PNG", compress_level=1)


def halves(size: tuple[int, int], left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGBA") -> Image.Image:
    image = Image.new(mode, size, left)
    ImageDraw.Draw(image).rectangle((size[0] // 2, 0, size[0], size[1]), fill=right)
    return image


def gradient(width: int, height: int) -> Image.Image:
    """A smooth RGB image that compresses well (big canvases stay small files)."""
    row = Image.linear_gradient("L").resize((width, 1))
    red = row.resize((width, height))
    green = Image.linear_gradient("L").resize((1, height)).resize((width, height))
    return Image.merge("RGB", (red, green, Image.new("L", (width, height), 128)))


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif)


def decoded(prepared: PreparedImage) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.data))
    image.load()
    return image


def assert_acceptable(prepared: PreparedImage, *, max_output_bytes: int, min_side: int = 80, max_side: int = 10_000):
    """What DetectLabels needs: JPEG/PNG bytes within the byte and side limits, honestly described."""
    image = decoded(prepared)
    assert prepared.content_type == {"JPEG": "image/jpeg", "PNG": "image/png"}[image.format]
    assert image.size == (prepared.width, prepared.height)
    assert len(prepared.data) <= max_output_bytes
    assert min_side <= min(image.size) and max(image.size) <= max_side


def mean_colour(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(image.convert("RGB").crop(box)).mean)


def close_to(actual: tuple[float, ...], expected: tuple[int, ...], tolerance: float = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def mean_abs_difference(a: Image.Image, b: Image.Image) -> float:
    a, b = a.convert("L"), b.convert("L").resize(a.size)
    return ImageStat.Stat(ImageChops.difference(a, b)).mean[0]


def png_with_idat(template: bytes, raw_rows: bytes) -> bytes:
    """``template`` with its (single) IDAT replaced by ``raw_rows`` compressed, CRC correct."""
    start = template.index(b"IDAT") - 4
    length = struct.unpack_from(">I", template, start)[0]
    compressed = zlib.compress(raw_rows)
    chunk = struct.pack(">I", len(compressed)) + b"IDAT" + compressed
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + compressed))
    return template[:start] + chunk + template[start + 12 + length :]


def idat_raw(png_bytes: bytes) -> bytes:
    start = png_bytes.index(b"IDAT")
    length = struct.unpack_from(">I", png_bytes, start - 4)[0]
    return zlib.decompress(png_bytes[start + 4 : start + 4 + length])


def pillow_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


def outcome(data: bytes, **limits: int) -> str:
    try:
        prepare_image(data, **limits)
    except LabelerError as exc:
        return str(exc.code)
    return "ok"


# --- sniffing -------------------------------------------------------------------------------------
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
HEIF_MIF1 = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic" + bytes(64)
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64)
RANDOM = random.Random(1).randbytes(4096)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (samples.jpeg(), "jpeg"),
        (samples.png(), "png"),
        (samples.gif(), "gif"),
        (b"GIF87a" + bytes(20), "gif"),
        (samples.webp(), "webp"),
        (samples.bmp(), "bmp"),
        (samples.tiff(), "tiff"),
        (b"MM\x00*\x00\x00\x00\x08" + bytes(20), "tiff"),
        (b"II+\x00\x08\x00\x00\x00" + bytes(20), "tiff"),
        (samples.SVG, "svg"),
        (b'\xef\xbb\xbf \n\t<svg xmlns="http://www.w3.org/2000/svg"/>', "svg"),
        (b"<!-- drawn by hand -->\n<SVG></SVG>", "svg"),
        (b'<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd">\n<svg/>', "svg"),
        (samples.HTML, "html"),
        (b"\r\n  <HTML><body>502 Bad Gateway</body></HTML>", "html"),
        (b'<!DOCTYPE html><html><body><svg width="10"/></body></html>', "html"),
        (b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><svg/></html>', "html"),
        (encode(samples.photo(size=(100, 100)), "PDF"), "pdf"),
        (HEIC, "heic"),
        (HEIF_MIF1, "heic"),
        (encode(samples.photo(size=(100, 100)), "AVIF"), "avif"),
        (encode(samples.photo(size=(64, 64)), "ICO"), "ico"),
        (b"8BPS\x00\x01" + bytes(40), "psd"),
        (encode(samples.photo(size=(100, 100)), "JPEG2000"), "jp2"),
        (b"\xff\x4f\xff\x51\x00\x2f" + bytes(40), "jp2"),
        (b"\xff\x0a\xfa\x7f" + bytes(40), "jxl"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(40), "jxl"),
        (MP4, None),
        (b"", None),
        (RANDOM, None),
        (b"BM" + bytes(40), None),  # "BM" without a plausible header
        (b'{"error": "not found"}', None),
        (b'<?xml version="1.0"?><rss/>', None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_sniff_ignores_what_follows_the_magic() -> None:
    # A JPEG start followed by HTML is a (broken) JPEG, and HTML after text is not sniffed as an image.
    assert sniff_format(b"\xff\xd8\xff" + samples.HTML) == "jpeg"
    assert sniff_format(b"hello " + samples.jpeg()) is None


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (samples.SVG, UnsupportedImage, "SVG is a vector format"),
        (samples.HTML, NotAnImage, "an HTML page, not an image"),
        (encode(samples.photo(size=(100, 100)), "PDF"), UnsupportedImage, "PDF"),
        (HEIC, UnsupportedImage, "HEIC"),
        (encode(samples.photo(size=(100, 100)), "AVIF"), UnsupportedImage, "AVIF"),
        (encode(samples.photo(size=(64, 64)), "ICO"), UnsupportedImage, "ICO"),
        (b"8BPS\x00\x01" + bytes(40), UnsupportedImage, "PSD"),
        (encode(samples.photo(size=(100, 100)), "JPEG2000"), UnsupportedImage, "JPEG 2000"),
        (b"\xff\x0a\xfa\x7f" + bytes(40), UnsupportedImage, "JPEG XL"),
        (b"", NotAnImage, "empty"),
        (RANDOM, NotAnImage, "not a recognised image format"),
        (MP4, NotAnImage, "not a recognised image format"),
    ],
)
def test_refusals_before_decoding(data: bytes, error: type[LabelerError], words: str) -> None:
    with pytest.raises(error) as caught:
        prepare_image(data)
    assert type(caught.value) is error
    assert words in caught.value.message


XPM = b'/* XPM */\nstatic char *x[] = {\n"2 2 1 1",\n"a c #ff0000",\n"aa",\n"aa"};\n'


@pytest.mark.parametrize(
    ("data", "kind", "name"),
    [
        (encode(samples.photo(size=(100, 100)), "PPM"), "ppm", "PPM"),
        (encode(samples.photo(size=(100, 100)).convert("L"), "PPM"), "pgm", "PGM"),
        (encode(samples.photo(size=(100, 100)).convert("1"), "PPM"), "pbm", "PBM"),
        (b"P3\n# a comment\n2 2\n255\n" + b"0 0 0 " * 4, "ppm", "PPM"),
        (b"P7\nWIDTH 2\nHEIGHT 2\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + bytes(12), "pam", "PAM"),
        (encode(samples.photo(size=(100, 100)), "QOI"), "qoi", "QOI"),
        (encode(samples.photo(size=(100, 100)), "SGI"), "sgi", "SGI"),
        (XPM, "xpm", "XPM"),
        (encode(samples.photo(size=(100, 100)), "DDS"), "dds", "DDS"),
        (encode(samples.photo(size=(100, 100)), "EPS"), "eps", "EPS"),
    ],
)
def test_valid_images_in_formats_we_do_not_convert_are_unsupported_and_named(data: bytes, kind: str, name: str) -> None:
    assert sniff_format(data) == kind
    with pytest.raises(UnsupportedImage) as caught:
        prepare_image(data)
    assert caught.value.message.startswith(name)
    assert caught.value.to_dict()["format"] == kind


@pytest.mark.parametrize("text", [b"P1 is a parking spot", b"P6 nonsense", b"P7 x", b"\x01\xda\x05\x09"])
def test_text_that_merely_starts_like_a_format_is_not_an_image(text: bytes) -> None:
    with pytest.raises(NotAnImage):
        prepare_image(text + bytes(40))


# --- pass-through ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (samples.jpeg(), "jpeg"),
        (samples.png(), "png"),
        (encode(samples.photo(), "JPEG", progressive=True, quality=85), "jpeg"),
        (encode(samples.photo().convert("L"), "JPEG"), "jpeg"),
        (encode(samples.photo().convert("P"), "PNG"), "png"),
        (encode(samples.photo().convert("L"), "PNG"), "png"),
        (encode(samples.photo().convert("RGBA"), "PNG"), "png"),
        (encode(samples.photo().convert("LA"), "PNG"), "png"),
    ],
)
def test_acceptable_jpeg_and_png_pass_through_unchanged(data: bytes, kind: str) -> None:
    prepared = prepare_image(data)
    assert prepared.data == data
    assert (prepared.converted, prepared.downscaled) == (False, False)
    assert prepared.content_type == f"image/{kind}"
    assert prepared.source_format == kind
    with Image.open(io.BytesIO(data)) as original:
        assert (prepared.width, prepared.height) == original.size == (prepared.source_width, prepared.source_height)


def adam7_png() -> bytes:
    """An interlaced PNG (Pillow cannot write one): the same 8-bit RGB rows, laid out in Adam7 passes."""
    image = samples.photo(size=(101, 83))
    width, height = image.size
    raw = image.tobytes()
    rows = []
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        for y in range(y0, height, dy):
            line = b"".join(raw[(y * width + x) * 3 : (y * width + x) * 3 + 3] for x in range(x0, width, dx))
            if line:
                rows.append(b"\x00" + line)
    template = encode(image, "PNG")
    header = bytearray(template[8 + 8 : 8 + 8 + 13])
    header[12] = 1  # interlace method: Adam7
    ihdr = struct.pack(">I", 13) + b"IHDR" + bytes(header) + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return png_with_idat(template[:8] + ihdr + template[8 + 25 :], b"".join(rows))


def test_interlaced_and_low_depth_palette_png_pass_through() -> None:
    interlaced = adam7_png()
    with Image.open(io.BytesIO(interlaced)) as image:  # the builder is right: Pillow reads the same pixels
        assert mean_abs_difference(image, samples.photo(size=(101, 83))) < 1
    assert prepare_image(interlaced).data == interlaced
    four_bit = encode(samples.photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG", bits=4)
    assert four_bit[24] == 4  # IHDR bit depth
    assert prepare_image(four_bit).data == four_bit


def test_pass_through_exif_rotated_jpeg_keeps_its_bytes() -> None:
    # DetectLabels applies the EXIF orientation of a JPEG itself: the bytes go unchanged.
    data = with_orientation(halves((300, 200), (255, 0, 0), (0, 0, 255), mode="RGB"), 6)
    prepared = prepare_image(data)
    assert prepared.data == data and not prepared.converted
    assert (prepared.width, prepared.height) == (300, 200)  # as stored


# --- conversion -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["webp", "gif", "bmp", "tiff"])
def test_other_formats_become_jpeg(kind: str) -> None:
    data = getattr(samples, kind)()
    prepared = prepare_image(data)
    image = decoded(prepared)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert prepared.content_type == "image/jpeg"
    assert prepared.source_format == kind
    assert (prepared.converted, prepared.downscaled) == (True, False)
    assert (prepared.width, prepared.height) == (prepared.source_width, prepared.source_height) == (451, 300)
    with Image.open(io.BytesIO(data)) as source:  # the same picture, not just any JPEG
        assert mean_abs_difference(image, source) < 4
    assert_acceptable(prepared, max_output_bytes=LIMITS["max_output_bytes"])


@pytest.mark.parametrize("kind", ["png", "webp", "tiff"])
def test_alpha_is_flattened_onto_white(kind: str) -> None:
    image = halves((200, 120), (255, 0, 0, 0), (0, 0, 255, 255))  # left: transparent red; right: opaque blue
    data = encode(image, kind.upper(), **({"lossless": True} if kind == "webp" else {}))
    limits = {"max_side": 199} if kind == "png" else {}  # a fitting PNG would pass through
    prepared = prepare_image(data, **limits)
    result = decoded(prepared)
    assert prepared.converted and result.format == "JPEG" and result.mode == "RGB"
    assert close_to(mean_colour(result, (10, 10, 90, 110)), (255, 255, 255))
    assert close_to(mean_colour(result, (110, 10, 190, 110)), (0, 0, 255))


def test_transparent_gif_is_flattened_onto_white() -> None:
    image = Image.new("P", (200, 120), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    ImageDraw.Draw(image).rectangle((100, 0, 200, 120), fill=1)
    data = encode(image, "GIF", transparency=0)  # palette index 0 (red) is transparent
    result = decoded(prepare_image(data))
    assert close_to(mean_colour(result, (10, 10, 90, 110)), (255, 255, 255))
    assert close_to(mean_colour(result, (110, 10, 190, 110)), (0, 0, 255))


@pytest.mark.parametrize("kind", ["GIF", "WEBP"])
def test_animation_gives_its_first_frame(kind: str) -> None:
    frames = [Image.new("RGB", (120, 100), colour) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    data = encode(frames[0], kind, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 3
    result = decoded(prepare_image(data))
    assert result.size == (120, 100)
    assert close_to(mean_colour(result, (0, 0, 120, 100)), (250, 0, 0))


def test_cmyk_jpeg_becomes_rgb_jpeg() -> None:
    photo = samples.photo()
    data = encode(photo.convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
    prepared = prepare_image(data)
    result = decoded(prepared)
    assert prepared.converted and not prepared.downscaled
    assert result.mode == "RGB" and result.size == photo.size
    assert mean_abs_difference(result, photo) < 10


def test_16_bit_png_is_converted_keeping_its_tones() -> None:
    image = Image.new("I;16", (120, 100), 40_000)
    ImageDraw.Draw(image).rectangle((60, 0, 120, 100), fill=10_000)
    data = encode(image, "PNG")
    assert data[24] == 16  # IHDR bit depth
    prepared = prepare_image(data)
    result = decoded(prepared)
    assert prepared.converted and result.format == "JPEG"
    assert close_to(mean_colour(result, (5, 5, 55, 95)), (156, 156, 156), 3)  # 40000 / 256, not clipped to 255
    assert close_to(mean_colour(result, (65, 5, 115, 95)), (39, 39, 39), 3)


def test_one_bit_png_is_converted_to_a_grey_jpeg() -> None:
    data = encode(halves((120, 100), (0,), (255,), mode="L").convert("1"), "PNG")
    assert data[24:26] == b"\x01\x00"  # 1-bit grey
    result = decoded(prepare_image(data))
    assert result.mode == "L"
    assert close_to(mean_colour(result, (5, 5, 55, 95)), (0, 0, 0)) and close_to(
        mean_colour(result, (65, 5, 115, 95)), (255, 255, 255)
    )


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_when_converting(orientation: int) -> None:
    stored = halves((300, 200), (255, 0, 0), (0, 0, 255), mode="RGB")
    data = with_orientation(stored, orientation)
    prepared = prepare_image(data, max_side=250)  # forces a conversion
    result = decoded(prepared)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).resize(result.size)
    assert (prepared.source_width, prepared.source_height) == (300, 200)
    assert max(result.size) == 250
    assert (result.size[0] > result.size[1]) == (orientation == 3)
    assert mean_abs_difference(result, upright) < 6
    assert result.getexif().get(0x0112) is None  # the pixels are upright; no tag rotates them again


# --- downscaling ----------------------------------------------------------------------------------
def test_png_over_5_mb_is_converted_under_the_limit() -> None:
    data = noise_png(2400, 2400)
    assert len(data) > 5 * 1024 * 1024
    prepared = prepare_image(data)
    assert prepared.converted
    assert prepared.content_type == "image/jpeg"
    assert (prepared.source_width, prepared.source_height) == (2400, 2400)
    assert_acceptable(prepared, max_output_bytes=5 * 1024 * 1024)


def test_when_lower_quality_is_not_enough_the_image_is_downscaled() -> None:
    data = noise_png(2400, 2400)
    prepared = prepare_image(data, max_output_bytes=1024 * 1024)
    assert prepared.converted and prepared.downscaled
    assert prepared.width == prepared.height  # aspect kept
    assert prepared.width >= 600  # shrunk in sensible steps, not to a thumbnail
    assert_acceptable(prepared, max_output_bytes=1024 * 1024)


def test_oversized_jpeg_is_recompressed_under_a_small_limit() -> None:
    data = samples.jpeg(quality=98)
    prepared = prepare_image(data, max_output_bytes=12_000)
    assert prepared.converted
    assert_acceptable(prepared, max_output_bytes=12_000)


def test_side_over_max_side_is_scaled_down_decoding_a_jpeg_at_reduced_scale() -> None:
    prepared = prepare_image(samples.jpeg(), max_side=100, min_side=50)
    assert (prepared.width, prepared.height) == (100, 67)
    assert prepared.converted and prepared.downscaled
    assert mean_abs_difference(decoded(prepared), samples.photo()) < 12
    assert_acceptable(prepared, max_output_bytes=LIMITS["max_output_bytes"], min_side=50, max_side=100)


def test_long_thin_image_is_scaled_to_10000_px_when_the_short_side_stays_at_80_or_more() -> None:
    data = encode(gradient(12_000, 100), "PNG")
    prepared = prepare_image(data)
    assert (prepared.width, prepared.height) == (10_000, 83)
    assert prepared.downscaled
    assert_acceptable(prepared, max_output_bytes=LIMITS["max_output_bytes"])


def test_too_extreme_aspect_ratio_is_refused_as_unsupported() -> None:
    # 20,000 × 100 would become 10,000 × 50: under Rekognition's 80 px. Nothing is decoded.
    with pytest.raises(UnsupportedImage, match="aspect ratio") as caught:
        prepare_image(encode(gradient(20_000, 100), "PNG"))
    assert caught.value.details["width"] == 20_000
    # A side already under min_side is simply too small.
    with pytest.raises(ImageTooSmall):
        prepare_image(encode(gradient(20_000, 50), "PNG"))


def test_image_that_cannot_fit_the_byte_limit_is_too_large() -> None:
    with pytest.raises(ImageTooLarge):
        prepare_image(noise_png(300, 300), max_output_bytes=1_000)


# --- refusals after the header --------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(40, 40), (100, 79), (79, 100)])
def test_small_images_are_too_small(width: int, height: int) -> None:
    with pytest.raises(ImageTooSmall) as caught:
        prepare_image(samples.tiny_png(width, height))
    assert caught.value.details == {"width": width, "height": height, "min_side": 80}


def test_bomb_is_refused_from_its_header() -> None:
    data = samples.bomb_png()
    started = time.perf_counter()
    with pytest.raises(DecompressionBomb):
        prepare_image(data)
    assert time.perf_counter() - started < 0.5


def test_max_pixels_is_checked_before_decoding() -> None:
    with pytest.raises(DecompressionBomb) as caught:
        prepare_image(samples.png(), max_pixels=100_000)
    assert caught.value.details == {"width": 451, "height": 300, "max_pixels": 100_000}
    prepare_image(samples.png(), max_pixels=451 * 300)


def test_pillow_bomb_warning_or_error_becomes_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    for raised in (Image.DecompressionBombWarning("big"), Image.DecompressionBombError("bigger")):

        def explode(*args: object, raised: Exception = raised) -> None:
            raise raised

        monkeypatch.setattr(images_module, "_prepare", explode)
        with pytest.raises(DecompressionBomb):
            prepare_image(samples.png())


@pytest.mark.parametrize(
    "data", [samples.truncated_jpeg(), samples.corrupt_png(), samples.polyglot_gif_js()], ids=["jpeg", "png", "gif"]
)
def test_broken_images_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptImage):
        prepare_image(data)


@pytest.mark.parametrize("progressive", [False, True])
def test_reduced_scale_jpeg_check_fails_exactly_where_a_full_decode_fails(progressive: bool) -> None:
    data = encode(samples.photo("astronaut"), "JPEG", quality=90, progressive=progressive)
    cuts = [int(len(data) * f) for f in (0.05, 0.3, 0.6, 0.9, 0.99)] + [len(data) - 2, len(data)]
    for cut in cuts:
        truncated = data[:cut]
        expected = "ok" if pillow_decodes(truncated) else "corrupt_image"
        assert outcome(truncated) == expected, cut
    assert outcome(data[: len(data) // 2]) == "corrupt_image"


def png_cases() -> list[bytes]:
    photo = samples.photo(size=(100, 90))
    return [encode(photo, "PNG"), encode(photo.convert("P"), "PNG"), adam7_png()]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["rgb", "palette", "interlaced"])
def test_streaming_png_check_agrees_with_a_full_decode(index: int) -> None:
    template = png_cases()[index]
    raw = idat_raw(template)
    rng = random.Random(index)
    verdicts = set()
    for trial in range(60):
        mutated = bytearray(raw)
        if trial % 3 == 0:  # a short or long stream
            mutated = mutated[: rng.randrange(len(raw))] if trial % 2 else mutated + bytes(rng.randrange(1, 99))
        else:  # a byte changed somewhere, often a row filter type
            mutated[rng.randrange(len(mutated))] = rng.choice((5, 7, 200, rng.randrange(256)))
        data = png_with_idat(template, bytes(mutated))
        expected = "ok" if pillow_decodes(data) else "corrupt_image"
        assert outcome(data, min_side=1) == expected, trial
        verdicts.add(expected)
    assert verdicts == {"ok", "corrupt_image"}


def test_png_truncated_or_with_a_broken_zlib_stream_is_corrupt() -> None:
    data = samples.png(size=(120, 100))  # one IDAT chunk
    idat = data.index(b"IDAT")
    for cut in (idat - 2, idat + 100, len(data) // 2, len(data) - 40):
        assert outcome(data[:cut]) == "corrupt_image", cut
    assert outcome(data[:-12]) == "ok"  # only IEND missing: the image itself is complete
    compressed = bytearray(zlib.compress(idat_raw(data)))
    compressed[2] ^= 0xFF  # garbage deflate block, CRC recomputed: only inflating finds it
    chunk = struct.pack(">I", len(compressed)) + b"IDAT" + bytes(compressed)
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + compressed))
    length = struct.unpack_from(">I", data, idat - 4)[0]
    broken = data[: idat - 4] + chunk + data[idat + 8 + length :]
    assert outcome(broken) == "corrupt_image"


def test_palette_png_without_plte_is_corrupt() -> None:
    data = encode(samples.photo().convert("P"), "PNG")
    start = data.index(b"PLTE") - 4
    length = struct.unpack_from(">I", data, start)[0]
    assert outcome(data[:start] + data[start + 12 + length :]) == "corrupt_image"


@pytest.mark.parametrize(
    "raised",
    [OSError("x"), SyntaxError("x"), ValueError("x"), struct.error("x"), EOFError(), ZeroDivisionError(), IndexError()],
)
def test_unexpected_decoder_errors_become_corrupt_image(monkeypatch: pytest.MonkeyPatch, raised: Exception) -> None:
    def explode(*args: object) -> None:
        raise raised

    monkeypatch.setattr(images_module, "_prepare", explode)
    with pytest.raises(CorruptImage) as caught:
        prepare_image(samples.jpeg())
    assert len(caught.value.message) < 250
    monkeypatch.setattr(images_module, "_prepare", lambda *args: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(InternalError):
        prepare_image(samples.jpeg())


@pytest.mark.filterwarnings("ignore:Truncated File Read:UserWarning")  # Pillow's TIFF reader, on damaged files
@pytest.mark.parametrize("kind", SUPPORTED_FORMATS)
def test_mutated_files_never_escape_as_other_exceptions(kind: str) -> None:
    data = getattr(samples, kind)(size=(120, 100))
    rng = random.Random(kind)
    for _ in range(40):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(min(len(mutated), 400)) if rng.random() < 0.6 else rng.randrange(len(mutated))
            mutated[position] = rng.randrange(256)
        if rng.random() < 0.3:
            mutated = mutated[: rng.randrange(20, len(mutated))]
        try:
            prepared = prepare_image(bytes(mutated), min_side=1)
        except LabelerError:
            continue
        assert_acceptable(prepared, max_output_bytes=LIMITS["max_output_bytes"], min_side=1)


# --- memory, concurrency, import cost -------------------------------------------------------------
MEASURE = textwrap.dedent(
    """
    import json, sys, time
    from PIL import Image, JpegImagePlugin, PngImagePlugin  # imported up front: not part of the measure
    from labeler.adapters.images import prepare_image
    from labeler.models.errors import LabelerError
    Image.init()

    def status(field):  # kB; VmHWM is this process's peak RSS (ru_maxrss would include the parent's)
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))

    data = open(sys.argv[1], "rb").read()
    limits = json.loads(sys.argv[2])
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak to the current RSS
    before = status("VmRSS")
    started = time.perf_counter()
    try:
        prepared = prepare_image(data, **limits)
        result = "ok:" + str(prepared.converted)
        size = [prepared.width, prepared.height]
    except LabelerError as exc:
        result = str(exc.code)
    print(json.dumps({
        "result": result,
        "size": locals().get("size"),
        "seconds": time.perf_counter() - started,
        "grew_mb": (status("VmHWM") - before) / 1024,
    }))
    """
)


def measure(tmp_path: Path, data: bytes, **limits: int) -> dict[str, object]:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measuring the peak RSS needs Linux /proc")
    path = tmp_path / "input"
    path.write_bytes(data)
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), json.dumps(limits)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    return json.loads(run.stdout)


@pytest.mark.parametrize(
    ("name", "expected", "max_mb"),
    [
        ("bomb_png", "decompression_bomb", 10),  # 3.6 G pixels: Pillow's own limit, from the header
        ("bomb_9000", "decompression_bomb", 10),  # 81 M pixels: under Pillow's limit, over ours (40 M)
        ("big_jpeg", "ok:False", 15),  # 4000 × 3000 pass-through: a full decode would hold 36 MB
        ("big_png", "ok:False", 10),  # 4000 × 3000 pass-through PNG: checked in pieces
    ],
)
def test_checks_run_in_little_memory(tmp_path: Path, name: str, expected: str, max_mb: float) -> None:
    data = {
        "bomb_png": samples.bomb_png,
        "bomb_9000": lambda: samples.bomb_png(9000, 9000),
        "big_jpeg": lambda: encode(gradient(4000, 3000), "JPEG", quality=90),
        "big_png": lambda: encode(gradient(4000, 3000), "PNG"),
    }[name]()
    report = measure(tmp_path, data)
    assert report["result"] == expected
    assert report["grew_mb"] < max_mb, report
    if expected == "decompression_bomb":
        assert report["seconds"] < 0.5  # in practice well under a millisecond


def test_full_decode_would_be_measured(tmp_path: Path) -> None:
    """The memory measure above can fail: converting the same 4000 × 3000 JPEG does show up."""
    report = measure(tmp_path, encode(gradient(4000, 3000).convert("CMYK"), "JPEG"))
    assert report["result"] == "ok:True"
    assert report["grew_mb"] > 30, report


def test_a_large_jpeg_that_must_shrink_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    """9 Mpx over a 2,500-px limit: decoded at 1/2 (1,500 px, ~9 MB), not whole (36 MB) and then resampled."""
    report = measure(tmp_path, encode(gradient(3000, 3000), "JPEG", quality=90), max_side=2500)
    assert report["result"] == "ok:True"
    assert report["size"] == [1500, 1500]
    assert report["grew_mb"] < 20, report


def test_a_resize_on_both_axes_holds_one_intermediate_at_a_time(tmp_path: Path) -> None:
    """A 24-MB PNG canvas resized on both axes: the source and one pass (44 MB), never source, pass and result (61)."""
    report = measure(tmp_path, encode(gradient(3000, 2000), "PNG"), max_side=2500)
    assert report["result"] == "ok:True"
    assert report["size"] == [2500, 1667]
    assert report["grew_mb"] < 50, report


def test_converted_bytes_are_held_in_the_memory_budget_until_dropped() -> None:
    budget = images_module.process_budget()
    before = budget.body_used
    prepared = prepare_image(samples.webp())
    assert prepared.converted and prepared.memory is not None
    assert budget.body_used - before == len(prepared.data)
    assert images_module.request_memory(prepared) == 4 * len(prepared.data)
    del prepared
    gc.collect()
    assert budget.body_used == before


def test_concurrent_calls_give_the_same_results() -> None:
    inputs = [samples.jpeg(), samples.png(), samples.webp(), samples.gif(), samples.tiff(), samples.truncated_jpeg()]
    inputs += [noise_png(600, 400), samples.tiny_png()]
    expected = [outcome(data) for data in inputs]
    results: dict[int, str] = {}

    def work(index: int) -> None:
        results[index] = outcome(inputs[index % len(inputs)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4 * len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(threads))] == expected * 4


def test_importing_the_module_does_not_import_pillow() -> None:
    code = "import labeler.adapters.images, sys; assert 'PIL' not in sys.modules, 'PIL imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_prepared_image_is_frozen_and_its_repr_leaves_out_the_bytes() -> None:
    prepared = prepare_image(samples.jpeg())
    with pytest.raises(AttributeError):
        prepared.data = b""  # type: ignore[misc]
    assert "data" not in repr(prepared) and "451" in repr(prepared)


def test_png_rotated_by_its_exif_chunk_is_converted_upright() -> None:
    # DetectLabels ignores a PNG's EXIF orientation: the labeler turns the pixels instead.
    stored = halves((300, 200), (255, 0, 0), (0, 0, 255), mode="RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "PNG", exif=exif)
    prepared = prepare_image(data)
    result = decoded(prepared)
    assert prepared.converted and not prepared.downscaled
    assert (prepared.width, prepared.height) == (200, 300)
    assert mean_abs_difference(result, ImageOps.exif_transpose(Image.open(io.BytesIO(data)))) < 3
    exif[0x0112] = 1
    upright = encode(stored, "PNG", exif=exif)
    assert prepare_image(upright).data == upright


@cache
def srgb_profile() -> bytes:
    """One sRGB profile for the whole run (a new one carries a new creation time)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_converted_rgb_keeps_its_colour_profile() -> None:
    data = encode(samples.photo(), "WEBP", icc_profile=srgb_profile())
    result = decoded(prepare_image(data))
    assert result.info.get("icc_profile") == srgb_profile()


@pytest.mark.parametrize("profile", [b"not a profile" * 10, "srgb"])
def test_cmyk_with_an_unusable_profile_still_converts(profile: bytes | str) -> None:
    icc = srgb_profile() if profile == "srgb" else profile  # an RGB profile cannot describe CMYK pixels
    photo = samples.photo()
    data = encode(photo.convert("CMYK"), "JPEG", quality=95, icc_profile=icc)
    result = decoded(prepare_image(data))
    assert result.mode == "RGB"
    assert result.info.get("icc_profile") in (None, srgb_profile())  # never a profile of other pixels
    assert mean_abs_difference(result, photo) < 10
