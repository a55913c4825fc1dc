"""Image bytes for the benchmarks: real photographs from scikit-image, encoded with Pillow.

* :func:`distinct_jpegs` — ``n`` small JPEGs (a real photo, each with its own 8×8 corner
  pattern), all with different bytes, so that the content-hash cache cannot help.
* :func:`large_noisy_jpegs` — a few ~4 MB JPEGs: real photos upscaled to ~4 Mpx with Gaussian
  grain (camera-noise-like texture, which is what makes real 4 MB JPEGs 4 MB). Built once and
  kept in ``bench/out/`` (git-ignored; ``make clean`` removes it).
* :func:`sample_photos` — scikit-image's colour and grey photographs as JPEG, native sizes.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

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
