"""Rekognition's IMAGE_PROPERTIES computed locally: dominant colours and quality, whole image, foreground, background.

The offline backend (``LABEL_BACKEND=local``) and the Rekognition stand-in answer the IMAGE_PROPERTIES
feature with this module; the output has exactly the shape of DetectLabels' ``ImageProperties``
(API reference, checked 2026-11-30:
https://docs.aws.amazon.com/rekognition/latest/APIReference/API_DetectLabelsImageProperties.html)::

    {"Quality": {"Brightness", "Sharpness", "Contrast"},          # 0-100 floats
     "DominantColors": [{"Red", "Green", "Blue", "HexCode", "CSSColor", "SimplifiedColor", "PixelPercent"}],
     "Foreground": {"Quality": {"Brightness", "Sharpness"}, "DominantColors": [...]},
     "Background": {"Quality": {"Brightness", "Sharpness"}, "DominantColors": [...]}}

>>> analysis = analyze(rgb_image)                                    # doctest: +SKIP
>>> analysis.properties(max_colors=3)["DominantColors"][0]["CSSColor"]  # doctest: +SKIP
'darkslategrey'

How each measure is computed, on which scale, and its limits: docs/image-properties.md. In short:

* **Working image**: the decoded upright RGB image, box-downscaled so that its longer side is at most
  :data:`WORK_SIDE` px; luminance is Pillow's ITU-R 601 luma ``L``.
* **Dominant colours**: every pixel is mapped to the nearest of the CSS named colours (CIELAB
  distance, through a 64 x 64 x 64 lookup table), and the colours are ranked by pixel count. Like
  Rekognition's answers, a colour's ``Red``/``Green``/``Blue``/``HexCode`` are those of its CSS colour
  (a DetectLabels response answers ``darkslategrey`` with exactly 47, 79, 79 and ``#2f4f4f``).
  ``PixelPercent`` is the share of the region's pixels; ``SimplifiedColor`` is one of
  :data:`SIMPLIFIED_COLORS`, fixed per CSS colour in :data:`CSS_COLORS`.
* **Brightness** = mean luma / 255 x 100. **Contrast** = (95th - 5th percentile of luma) / 255 x 100.
  **Sharpness** = (1 - blur) x 100, blur being Crété-Roffet et al.'s no-reference blur metric (2007):
  the share of neighbour-pixel differences that a 9-pixel box blur removes, the worse of the rows and
  the columns. A flat region has nothing sharp in it: 0.
* **Foreground / background**: a saliency score at 64 px, colour that stands out (frequency-tuned
  saliency, Achanta et al., CVPR 2009) plus local detail, weighted by a centred Gaussian; the foreground
  is where the score is at least 1.5 x its mean, kept between 10 % and 60 % of the image. No model: it
  finds what stands out in colour or detail near the centre, not objects as such.

Numpy and Pillow are imported on first use (this module is on the Lambda path).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Bumped whenever a change here changes what comes out (it salts the label cache's options tag).
PROPERTIES_VERSION = "local-image-properties-1"
WORK_SIDE = 256  # longer side of the working image (px)
SALIENCY_SIDE = 64  # longer side of the saliency map (px)
LUT_BITS = 6  # per channel: 262,144 cells, each at most 2 levels from its centre
FOREGROUND_SHARE = (0.10, 0.60)
FOREGROUND_THRESHOLD = 1.5  # x the mean saliency score
SHARPNESS_BOX = 9  # the re-blur of Crété-Roffet et al.

# Rekognition's DominantColor.SimplifiedColor is "one of 12 simplified color names" (API_DominantColor);
# the list itself is not published where we could read it. "black", "grey" and "green" are spelled as a
# recorded DetectLabels response spells them; the other nine complete the eleven basic colour terms
# (Berlin and Kay) plus "teal". See docs/image-properties.md.
SIMPLIFIED_COLORS = (
    "black", "white", "grey", "red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown",
)  # fmt: skip

# The CSS Color Module Level 3 extended colour keywords (147 names, 138 distinct values), one name per
# value. Between aliases the name is the one a recorded DetectLabels response uses ("darkslategrey",
# "dimgrey", "gray"): the last alphabetically ("…grey", "cyan", "magenta"), except plain "gray".
# (name, 0xRRGGBB, simplified colour)
CSS_COLORS: tuple[tuple[str, int, str], ...] = (
    ("aliceblue", 0xF0F8FF, "white"),
    ("antiquewhite", 0xFAEBD7, "white"),
    ("aquamarine", 0x7FFFD4, "teal"),
    ("azure", 0xF0FFFF, "white"),
    ("beige", 0xF5F5DC, "white"),
    ("bisque", 0xFFE4C4, "orange"),
    ("black", 0x000000, "black"),
    ("blanchedalmond", 0xFFEBCD, "white"),
    ("blue", 0x0000FF, "blue"),
    ("blueviolet", 0x8A2BE2, "purple"),
    ("brown", 0xA52A2A, "brown"),
    ("burlywood", 0xDEB887, "brown"),
    ("cadetblue", 0x5F9EA0, "teal"),
    ("chartreuse", 0x7FFF00, "green"),
    ("chocolate", 0xD2691E, "brown"),
    ("coral", 0xFF7F50, "orange"),
    ("cornflowerblue", 0x6495ED, "blue"),
    ("cornsilk", 0xFFF8DC, "white"),
    ("crimson", 0xDC143C, "red"),
    ("cyan", 0x00FFFF, "teal"),
    ("darkblue", 0x00008B, "blue"),
    ("darkcyan", 0x008B8B, "teal"),
    ("darkgoldenrod", 0xB8860B, "brown"),
    ("darkgreen", 0x006400, "green"),
    ("darkgrey", 0xA9A9A9, "grey"),
    ("darkkhaki", 0xBDB76B, "yellow"),
    ("darkmagenta", 0x8B008B, "purple"),
    ("darkolivegreen", 0x556B2F, "green"),
    ("darkorange", 0xFF8C00, "orange"),
    ("darkorchid", 0x9932CC, "purple"),
    ("darkred", 0x8B0000, "red"),
    ("darksalmon", 0xE9967A, "pink"),
    ("darkseagreen", 0x8FBC8F, "green"),
    ("darkslateblue", 0x483D8B, "blue"),
    ("darkslategrey", 0x2F4F4F, "grey"),
    ("darkturquoise", 0x00CED1, "teal"),
    ("darkviolet", 0x9400D3, "purple"),
    ("deeppink", 0xFF1493, "pink"),
    ("deepskyblue", 0x00BFFF, "blue"),
    ("dimgrey", 0x696969, "grey"),
    ("dodgerblue", 0x1E90FF, "blue"),
    ("firebrick", 0xB22222, "red"),
    ("floralwhite", 0xFFFAF0, "white"),
    ("forestgreen", 0x228B22, "green"),
    ("gainsboro", 0xDCDCDC, "white"),
    ("ghostwhite", 0xF8F8FF, "white"),
    ("gold", 0xFFD700, "yellow"),
    ("goldenrod", 0xDAA520, "yellow"),
    ("gray", 0x808080, "grey"),
    ("green", 0x008000, "green"),
    ("greenyellow", 0xADFF2F, "green"),
    ("honeydew", 0xF0FFF0, "white"),
    ("hotpink", 0xFF69B4, "pink"),
    ("indianred", 0xCD5C5C, "red"),
    ("indigo", 0x4B0082, "purple"),
    ("ivory", 0xFFFFF0, "white"),
    ("khaki", 0xF0E68C, "yellow"),
    ("lavender", 0xE6E6FA, "white"),
    ("lavenderblush", 0xFFF0F5, "white"),
    ("lawngreen", 0x7CFC00, "green"),
    ("lemonchiffon", 0xFFFACD, "yellow"),
    ("lightblue", 0xADD8E6, "blue"),
    ("lightcoral", 0xF08080, "pink"),
    ("lightcyan", 0xE0FFFF, "white"),
    ("lightgoldenrodyellow", 0xFAFAD2, "yellow"),
    ("lightgreen", 0x90EE90, "green"),
    ("lightgrey", 0xD3D3D3, "grey"),
    ("lightpink", 0xFFB6C1, "pink"),
    ("lightsalmon", 0xFFA07A, "orange"),
    ("lightseagreen", 0x20B2AA, "teal"),
    ("lightskyblue", 0x87CEFA, "blue"),
    ("lightslategrey", 0x778899, "grey"),
    ("lightsteelblue", 0xB0C4DE, "blue"),
    ("lightyellow", 0xFFFFE0, "white"),
    ("lime", 0x00FF00, "green"),
    ("limegreen", 0x32CD32, "green"),
    ("linen", 0xFAF0E6, "white"),
    ("magenta", 0xFF00FF, "purple"),
    ("maroon", 0x800000, "red"),
    ("mediumaquamarine", 0x66CDAA, "teal"),
    ("mediumblue", 0x0000CD, "blue"),
    ("mediumorchid", 0xBA55D3, "purple"),
    ("mediumpurple", 0x9370DB, "purple"),
    ("mediumseagreen", 0x3CB371, "green"),
    ("mediumslateblue", 0x7B68EE, "blue"),
    ("mediumspringgreen", 0x00FA9A, "green"),
    ("mediumturquoise", 0x48D1CC, "teal"),
    ("mediumvioletred", 0xC71585, "pink"),
    ("midnightblue", 0x191970, "blue"),
    ("mintcream", 0xF5FFFA, "white"),
    ("mistyrose", 0xFFE4E1, "white"),
    ("moccasin", 0xFFE4B5, "orange"),
    ("navajowhite", 0xFFDEAD, "orange"),
    ("navy", 0x000080, "blue"),
    ("oldlace", 0xFDF5E6, "white"),
    ("olive", 0x808000, "green"),
    ("olivedrab", 0x6B8E23, "green"),
    ("orange", 0xFFA500, "orange"),
    ("orangered", 0xFF4500, "orange"),
    ("orchid", 0xDA70D6, "purple"),
    ("palegoldenrod", 0xEEE8AA, "yellow"),
    ("palegreen", 0x98FB98, "green"),
    ("paleturquoise", 0xAFEEEE, "teal"),
    ("palevioletred", 0xDB7093, "pink"),
    ("papayawhip", 0xFFEFD5, "white"),
    ("peachpuff", 0xFFDAB9, "orange"),
    ("peru", 0xCD853F, "brown"),
    ("pink", 0xFFC0CB, "pink"),
    ("plum", 0xDDA0DD, "purple"),
    ("powderblue", 0xB0E0E6, "blue"),
    ("purple", 0x800080, "purple"),
    ("red", 0xFF0000, "red"),
    ("rosybrown", 0xBC8F8F, "brown"),
    ("royalblue", 0x4169E1, "blue"),
    ("saddlebrown", 0x8B4513, "brown"),
    ("salmon", 0xFA8072, "pink"),
    ("sandybrown", 0xF4A460, "orange"),
    ("seagreen", 0x2E8B57, "green"),
    ("seashell", 0xFFF5EE, "white"),
    ("sienna", 0xA0522D, "brown"),
    ("silver", 0xC0C0C0, "grey"),
    ("skyblue", 0x87CEEB, "blue"),
    ("slateblue", 0x6A5ACD, "blue"),
    ("slategrey", 0x708090, "grey"),
    ("snow", 0xFFFAFA, "white"),
    ("springgreen", 0x00FF7F, "green"),
    ("steelblue", 0x4682B4, "blue"),
    ("tan", 0xD2B48C, "brown"),
    ("teal", 0x008080, "teal"),
    ("thistle", 0xD8BFD8, "purple"),
    ("tomato", 0xFF6347, "red"),
    ("turquoise", 0x40E0D0, "teal"),
    ("violet", 0xEE82EE, "purple"),
    ("wheat", 0xF5DEB3, "brown"),
    ("white", 0xFFFFFF, "white"),
    ("whitesmoke", 0xF5F5F5, "white"),
    ("yellow", 0xFFFF00, "yellow"),
    ("yellowgreen", 0x9ACD32, "green"),
)


# --- colour science -------------------------------------------------------------------------------
def srgb_to_lab(rgb: Any) -> Any:
    """sRGB values 0-255 (``(..., 3)``) → CIELAB (D65), float32."""
    import numpy as np

    c = np.asarray(rgb, dtype=np.float32) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array(
        [[0.4124564, 0.2126729, 0.0193339], [0.3575761, 0.7151522, 0.1191920], [0.1804375, 0.0721750, 0.9503041]],
        dtype=np.float32,
    )
    xyz /= np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


@dataclass(frozen=True)
class _Palette:
    names: tuple[str, ...]
    rgb: Any  # (n, 3) uint8
    simplified: tuple[str, ...]
    lut: Any  # (64**3,) uint8: cell → nearest palette index

    def color(self, index: int, percent: float) -> dict[str, Any]:
        red, green, blue = (int(value) for value in self.rgb[index])
        return {
            "Red": red,
            "Green": green,
            "Blue": blue,
            "HexCode": f"#{red:02x}{green:02x}{blue:02x}",
            "CSSColor": self.names[index],
            "SimplifiedColor": self.simplified[index],
            "PixelPercent": round(percent, 4),
        }


_PALETTE: _Palette | None = None
_PALETTE_LOCK = threading.Lock()


def _palette() -> _Palette:
    """The CSS palette and its lookup table, built once per process (0.15-0.3 s; only IMAGE_PROPERTIES needs it)."""
    global _PALETTE
    if _PALETTE is None:
        with _PALETTE_LOCK:
            if _PALETTE is None:
                _PALETTE = _build_palette()
    return _PALETTE


def _build_palette() -> _Palette:
    import numpy as np

    rgb = np.array([[(value >> 16) & 255, (value >> 8) & 255, value & 255] for _, value, _ in CSS_COLORS], np.uint8)
    palette_lab = srgb_to_lab(rgb)
    cells = 1 << LUT_BITS
    step = 256 // cells
    centres = np.arange(cells, dtype=np.float32) * step + (step - 1) / 2
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
    grid_lab = srgb_to_lab(grid)
    lut = np.empty(len(grid), dtype=np.uint8)
    # argmin |x - p|² = argmin (|p|² - 2 x·p), in chunks that keep the distance matrix small (16k x 138).
    palette_norms = (palette_lab**2).sum(axis=1)
    for start in range(0, len(grid), 16384):
        chunk = grid_lab[start : start + 16384]
        lut[start : start + 16384] = np.argmin(palette_norms[None, :] - 2 * chunk @ palette_lab.T, axis=1)
    names = tuple(name for name, _, _ in CSS_COLORS)
    simplified = tuple(simple for _, _, simple in CSS_COLORS)
    return _Palette(names, rgb, simplified, lut)


def nearest_css_color(red: int, green: int, blue: int) -> str:
    """The CSS colour name a pixel of this colour counts towards.

    >>> nearest_css_color(250, 2, 3)
    'red'
    """
    palette = _palette()
    shift = 8 - LUT_BITS
    cell = ((red >> shift) << (2 * LUT_BITS)) | ((green >> shift) << LUT_BITS) | (blue >> shift)
    return palette.names[int(palette.lut[cell])]


# --- the measures ---------------------------------------------------------------------------------
def _box_blur(values: Any, axis: int, size: int) -> Any:
    """Mean over ``size`` neighbours along ``axis`` (edges repeated), by cumulative sums."""
    import numpy as np

    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half + 1, half)
    sums = np.cumsum(np.pad(values, pad, mode="edge"), axis=axis, dtype=np.float32)
    sums = np.moveaxis(sums, axis, 0)
    return np.moveaxis((sums[size:] - sums[:-size]) / size, 0, axis)


def _edges(luma: Any) -> tuple[tuple[Any, Any], ...]:
    """Per direction (rows, columns): each neighbour difference, and how much of it a box re-blur removes."""
    import numpy as np

    edges = []
    for axis in (0, 1):
        blurred = _box_blur(luma, axis, SHARPNESS_BOX)
        difference = np.abs(np.diff(luma, axis=axis))
        removed = np.maximum(difference - np.abs(np.diff(blurred, axis=axis)), 0.0)
        edges.append((difference, removed))
    return tuple(edges)


def _blur(edges: tuple[tuple[Any, Any], ...], mask: Any) -> float:
    """Crété-Roffet et al.'s blur (0 sharp … 1 blurred) over the pixels of ``mask``; 1 when nothing varies.

    blur = max over rows and columns of (Σ d - Σ max(d - d_reblurred, 0)) / Σ d, where d are the
    absolute differences between neighbours: a sharp edge loses most of its step when re-blurred, an
    already blurred one little.
    """
    worst = 0.0
    for axis, (difference, removed) in enumerate(edges):
        # A difference counts for a region when both of its pixels are in the region.
        inside = (mask[1:] & mask[:-1]) if axis == 0 else (mask[:, 1:] & mask[:, :-1])
        total = float(difference[inside].sum())
        if total <= 1e-6:
            return 1.0
        worst = max(worst, (total - float(removed[inside].sum())) / total)
    return worst


def _smooth(values: Any, size: int) -> Any:
    return _box_blur(_box_blur(values, 0, size), 1, size)


def _saliency_mask(small: Any, shape: tuple[int, int]) -> Any:
    """Colour saliency plus detail, times a centre prior, thresholded, upsampled (nearest) to ``shape``.

    * colour: frequency-tuned saliency (Achanta et al. 2009), the CIELAB distance of each slightly
      blurred pixel from the image's mean colour: what stands out in colour;
    * detail: the local mean of the L* gradient over 7 x 7 px: what is textured or in focus (this is
      what finds a grey subject on a grey background, or a lit rocket against a night sky);
    * each normalised by its mean and summed, times a centred Gaussian (sigma = a quarter of each
      side: photographers centre their subject), smoothed over 5 x 5 px into blobs;
    * foreground = score ≥ 1.5 x its mean, or the top 10 % / 60 % when that share falls outside.
    """
    import numpy as np

    lab = srgb_to_lab(small)
    # 1-2-1 binomial blur in both directions: Achanta et al.'s small Gaussian against noise and texture.
    padded = np.pad(lab, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    blurred = (blurred[:, :-2] + 2 * blurred[:, 1:-1] + blurred[:, 2:]) / 4
    colour = np.sqrt(((blurred - blurred.reshape(-1, 3).mean(axis=0)) ** 2).sum(axis=2))
    lightness = lab[..., 0]
    gradient = np.abs(np.diff(lightness, axis=0, append=lightness[-1:])) + np.abs(
        np.diff(lightness, axis=1, append=lightness[:, -1:])
    )
    detail = _smooth(gradient, 7)
    height, width = colour.shape
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    prior = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * 0.25**2))
    # A flat image has neither colour nor detail: the centre alone is then taken as the subject.
    cues = [cue / float(cue.mean()) for cue in (colour, detail) if float(cue.mean()) > 1e-3]
    score = _smooth(sum(cues, np.zeros_like(prior)) * prior if cues else prior, 5)
    low, high = FOREGROUND_SHARE
    mask = score >= FOREGROUND_THRESHOLD * score.mean()
    share = float(mask.mean())
    if not low <= share <= high:
        # A quantile threshold instead: the top `low` or `high` share of the scores.
        mask = score >= np.quantile(score, 1 - (low if share < low else high))
    rows = (np.arange(shape[0]) * height // shape[0]).clip(0, height - 1)
    cols = (np.arange(shape[1]) * width // shape[1]).clip(0, width - 1)
    return mask[rows[:, None], cols[None, :]]


def _quality(analysis: ImageAnalysis, mask: Any, *, contrast: bool) -> dict[str, float]:
    import numpy as np

    histogram = np.bincount(analysis.luma[mask], minlength=256)
    count = int(histogram.sum())
    if count == 0:
        return {"Brightness": 0.0, "Sharpness": 0.0, **({"Contrast": 0.0} if contrast else {})}
    levels = np.arange(256)
    quality = {
        "Brightness": round(float(histogram @ levels) / count / 255 * 100, 4),
        "Sharpness": round((1.0 - _blur(analysis.edges, mask)) * 100, 4),
    }
    if contrast:
        # The luma levels below which 5 % and 95 % of the pixels lie.
        cumulative = np.cumsum(histogram)
        p5, p95 = np.searchsorted(cumulative, [0.05 * count, 0.95 * count])
        quality["Contrast"] = round(float(p95 - p5) / 255 * 100, 4)
    return quality


@dataclass(frozen=True)
class ImageAnalysis:
    """One image at working size: its palette indexes, luma and foreground mask, computed once.

    Build it with :func:`analyze`; ask it for :meth:`properties` and :meth:`box_colors`.
    """

    indexes: Any  # (h, w) palette index per pixel
    luma: Any  # (h, w) uint8
    foreground: Any  # (h, w) bool
    edges: tuple[tuple[Any, Any], ...]  # see _edges

    def colors(self, region: Any, max_colors: int) -> list[dict[str, Any]]:
        """The ``max_colors`` most common CSS colours among the pixels of ``region`` (a bool mask or slice)."""
        import numpy as np

        palette = _palette()
        chosen = self.indexes[region].ravel()
        if max_colors <= 0 or chosen.size == 0:
            return []
        counts = np.bincount(chosen, minlength=len(palette.names))
        # Most pixels first; ties by palette order, so the answer is deterministic.
        order = sorted(np.flatnonzero(counts), key=lambda index: (-int(counts[index]), int(index)))
        return [palette.color(int(index), 100.0 * int(counts[index]) / chosen.size) for index in order[:max_colors]]

    def properties(self, max_colors: int = 10) -> dict[str, Any]:
        """DetectLabels' ``ImageProperties`` object for this image."""
        import numpy as np

        everything = np.ones_like(self.foreground)
        background = ~self.foreground
        return {
            "Quality": _quality(self, everything, contrast=True),
            "DominantColors": self.colors(everything, max_colors),
            "Foreground": {
                "Quality": _quality(self, self.foreground, contrast=False),
                "DominantColors": self.colors(self.foreground, max_colors),
            },
            "Background": {
                "Quality": _quality(self, background, contrast=False),
                "DominantColors": self.colors(background, max_colors),
            },
        }

    def box_colors(self, box: Mapping[str, float], max_colors: int = 10) -> list[dict[str, Any]]:
        """The dominant colours inside a ``BoundingBox`` (ratios 0-1), as an ``Instance.DominantColors``."""
        height, width = self.indexes.shape
        left = min(max(int(box["Left"] * width), 0), width - 1)
        top = min(max(int(box["Top"] * height), 0), height - 1)
        right = min(max(round((box["Left"] + box["Width"]) * width), left + 1), width)
        bottom = min(max(round((box["Top"] + box["Height"]) * height), top + 1), height)
        return self.colors((slice(top, bottom), slice(left, right)), max_colors)


def analyze(rgb: Any) -> ImageAnalysis:
    """An upright RGB PIL image → its :class:`ImageAnalysis` (a few ms at the working size)."""
    import numpy as np
    from PIL import Image

    image = rgb if rgb.mode == "RGB" else rgb.convert("RGB")
    scale = WORK_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.uint8)
    levels = pixels.astype(np.uint32) >> (8 - LUT_BITS)
    cells = (levels[..., 0] << (2 * LUT_BITS)) | (levels[..., 1] << LUT_BITS) | levels[..., 2]
    indexes = _palette().lut[cells]
    luma = np.asarray(image.convert("L"), dtype=np.uint8)
    small_scale = min(1.0, SALIENCY_SIDE / max(image.size))
    small_size = (max(1, round(image.width * small_scale)), max(1, round(image.height * small_scale)))
    small = np.asarray(image.resize(small_size, Image.Resampling.BOX), dtype=np.uint8)
    return ImageAnalysis(
        indexes=indexes,
        luma=luma,
        foreground=_saliency_mask(small, luma.shape),
        edges=_edges(luma.astype(np.float32)),
    )


def analyze_bytes(data: bytes) -> ImageAnalysis:
    """JPEG/PNG bytes → :class:`ImageAnalysis`, decoded as the offline backend decodes (EXIF upright, alpha on white).

    Raises ``labeler.models.errors.LabelingFailed`` for bytes that do not decode.
    """
    from labeler.adapters.labels.local import decode

    return analyze(decode(data))
