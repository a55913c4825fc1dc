"""Image bytes for the benchmarks: real photographs from scikit-image, encoded with Pillow.

* :func:`distinct_jpegs` — ``n`` small JPEGs (a real photo, each with its own 8×8 corner
  pattern), all with different bytes, so that the content-hash cache cannot help.
* :func:`large_noisy_jpegs` — a few ~4 MB JPEGs: real photos upscaled to ~4 Mpx with Gaussian
  grain (camera-noise-like texture, which is what makes real 4 MB JPEGs 4 MB). Built once and
  kept in ``bench/out/`` (git-ignored; ``make clean`` removes it).
* :func:`sample_photos` — scikit-image's colour and grey photographs as JPEG, native sizes.
* :func:`tagged` / :class:`TaggedRoute` — one image served under many URLs with different bytes each
  (a comment inside the file), so that neither the label cache nor the URL memo can help.
* :func:`conversion_mix` — the memory benchmark's images: JPEGs sent as they are, and PNG, WebP and
  > 5 MB images that ``prepare_image`` converts or downscales.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
# Photographs (not drawings) bundled with scikit-image, i.e. available offline.
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "moon", "hubble_deep_field")


def _photo(name: str):  # -> numpy array (H, W, 3) uint8
    import numpy as np
    import skimage.data

    array = getattr(skimage.data, name)()
    if array.dtype != np.uint8:
        array = (255 * (array.astype(np.float64) / max(1, array.max()))).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return array[..., :3]


def _jpeg(array, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def distinct_jpegs(n: int, photo: str = "chelsea") -> list[bytes]:
    """``n`` JPEGs of one real photo (451×300 for chelsea), every one with different bytes."""
    base = _photo(photo)
    images = []
    for index in range(n):
        array = base.copy()
        # an 8×8 block per image whose colour encodes the index: different pixels, different bytes
        array[:8, :8] = ((index * 37) % 256, (index * 101) % 256, (index // 256) * 64 % 256)
        array[8:16, :8] = (index % 256, 255 - index % 256, 128)
        images.append(_jpeg(array, quality=88))
    if len({hashlib.sha256(image).digest() for image in images}) != n:
        raise RuntimeError("distinct_jpegs produced duplicate bytes")
    return images


def large_noisy_jpegs(count: int = 4, target_bytes: int = 4_000_000, pixels: int = 12_000_000) -> list[bytes]:
    """``count`` distinct JPEGs of about ``target_bytes`` each (±10 %) and ``pixels`` pixels (a phone
    camera's 12 Mpx: what a real 4 MB photo is), cached in ``bench/out``."""
    OUT.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        name = PHOTOS[index % len(PHOTOS)]
        path = OUT / f"large-{name}-{index}-{target_bytes}-{pixels}.jpg"
        if path.is_file():
            images.append(path.read_bytes())
            continue
        data = _make_large(name, index, target_bytes, pixels)
        path.write_bytes(data)
        images.append(data)
    return images


def _make_large(name: str, seed: int, target_bytes: int, pixels: int) -> bytes:
    import numpy as np
    from PIL import Image

    base = Image.fromarray(_photo(name))
    scale = (pixels / (base.width * base.height)) ** 0.5
    width, height = round(base.width * scale), round(base.height * scale)
    upscaled = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    rng = np.random.default_rng(seed)
    best = b""
    # More grain, more bytes: find the grain that lands near the target at quality 90.
    low, high = 0.0, 40.0
    for _ in range(12):
        sigma = (low + high) / 2
        noisy = upscaled + rng.normal(0.0, sigma, upscaled.shape).astype(np.float32)
        data = _jpeg(np.clip(noisy, 0, 255).astype(np.uint8), quality=90)
        if abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        if abs(len(data) - target_bytes) <= 0.03 * target_bytes:
            break
        if len(data) < target_bytes:
            low = sigma
        else:
            high = sigma
    if abs(len(best) - target_bytes) > 0.1 * target_bytes:
        raise RuntimeError(f"could not make a ~{target_bytes}-byte JPEG of {name} (got {len(best)})")
    return best


def sample_photos() -> dict[str, bytes]:
    """scikit-image's bundled photographs as JPEG (quality 90, native size); unavailable ones skipped."""
    found = {}
    for name in SAMPLE_PHOTOS:
        try:
            found[name] = _jpeg(_photo(name))
        except Exception:  # a sample that needs a download (pooch) is not there offline
            continue
    return found


# --- distinct bytes for free: a tag inside the file, no re-encoding ------------------------------------------
def tagged(image: bytes, tag: str) -> bytes:
    """``image`` with ``tag`` stored inside it (a JPEG comment, a PNG ``tEXt`` chunk, a WebP chunk): the same
    pixels and format, different bytes (a different SHA-256, so the label cache cannot match it), no decode.

    >>> tagged(tagged(b"\\xff\\xd8\\xff\\xe0", "a"), "b") != tagged(b"\\xff\\xd8\\xff\\xe0", "a")
    True
    """
    import struct
    import zlib

    text = tag.encode("utf-8")
    if image.startswith(b"\xff\xd8"):  # JPEG: a COM segment right after SOI
        return image[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + image[2:]
    if image.startswith(b"\x89PNG\r\n\x1a\n"):  # PNG: a tEXt chunk right after IHDR (8 + 25 bytes)
        data = b"comment\x00" + text
        chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
        return image[:33] + chunk + image[33:]
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":  # WebP: extended format, an unknown chunk at the end
        body = image[12:]
        if body[:4] != b"VP8X":
            from PIL import Image

            with Image.open(io.BytesIO(image)) as opened:
                width, height = opened.size
            flags = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
            body = _riff_chunk(b"VP8X", flags) + body
        body += _riff_chunk(b"XTAG", text)
        return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body
    raise ValueError("tagged() knows JPEG, PNG and WebP")


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    import struct

    return kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")


class TaggedRoute:
    """A :class:`~labeler.local.http_server.LoopbackServer` route answering ``tagged(image, <query string>)``:
    ``/x.jpg?n=1`` and ``/x.jpg?n=2`` are different files, built per request (nothing held per URL)."""

    def __init__(self, image: bytes, content_type: str) -> None:
        self.image = image
        self.content_type = content_type

    def __call__(self, handler: Any) -> None:
        query = handler.path.partition("?")[2]
        body = tagged(self.image, query or "-")
        handler.send_response(200)
        handler.send_header("Content-Type", self.content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")  # the server closes after a handler route: no client may reuse it
        handler.end_headers()
        handler.wfile.write(body)


# --- the conversion mix: what the memory benchmark feeds the function ----------------------------------------
@dataclass(frozen=True)
class MixImage:
    """One kind of image of the memory mix, and the path it must take through ``prepare_image``."""

    name: str
    data: bytes
    content_type: str
    path: str  # "as is", "converted", "converted, downscaled"

    @property
    def extension(self) -> str:
        return self.content_type.rsplit("/", 1)[1].replace("jpeg", "jpg")


def conversion_mix() -> list[MixImage]:
    """Ten images, the memory benchmark's cycle (built once, cached in ``bench/out``): five ~4 MB 12-Mpx JPEGs
    sent as they are, a > 5 MB JPEG re-encoded to fit, a 12,000-px-wide JPEG downscaled to 10,000 px, a > 5 MB
    PNG and a WebP converted to JPEG, and a small PNG sent as it is."""
    jpegs = large_noisy_jpegs(4)
    specs = [
        ("jpeg-over-5mb", "coffee", 12_000_000, None, 30.0, "JPEG", {"quality": 95}, "converted"),
        (
            "jpeg-12000px-wide",
            "rocket",
            12_000_000,
            (12_000, 1_000),
            6.0,
            "JPEG",
            {"quality": 90},
            "converted, downscaled",
        ),
        ("png-over-5mb", "chelsea", 2_500_000, None, 12.0, "PNG", {}, "converted"),
        ("webp-4mpx", "astronaut", 4_000_000, None, 8.0, "WEBP", {"quality": 90}, "converted"),
        ("png-small", "coffee", 1_000_000, None, 0.0, "PNG", {}, "as is"),
    ]
    mix = [MixImage(f"jpeg-4mb-{index}", data, "image/jpeg", "as is") for index, data in enumerate(jpegs)]
    mix.append(MixImage("jpeg-4mb-0b", jpegs[0], "image/jpeg", "as is"))
    for name, photo, pixels, size, sigma, fmt, options, path in specs:
        cached = OUT / f"mix-{name}.{fmt.lower()}"
        if not cached.is_file():
            OUT.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(_noisy(photo, pixels, size, sigma, fmt, options))
        mix.append(MixImage(name, cached.read_bytes(), f"image/{fmt.lower()}", path))
    return mix


def _noisy(
    photo: str, pixels: int, size: tuple[int, int] | None, sigma: float, fmt: str, options: dict[str, Any]
) -> bytes:
    import numpy as np
    from PIL import Image

    base = Image.fromarray(_photo(photo))
    if size is None:
        scale = (pixels / (base.width * base.height)) ** 0.5
        size = (round(base.width * scale), round(base.height * scale))
    array = np.asarray(base.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    if sigma:
        array = array + np.random.default_rng(7).normal(0.0, sigma, array.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(buffer, format=fmt, **options)
    return buffer.getvalue()
