"""Local IMAGE_PROPERTIES: Rekognition's shape, the colours, and the quality measures' orderings.

Real photographs (scikit-image's samples) and synthetic images encoded as real JPEG/PNG bytes.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from labeler.adapters.labels.image_properties import (
    CSS_COLORS,
    SIMPLIFIED_COLORS,
    analyze,
    analyze_bytes,
    nearest_css_color,
)
from tests.support.images import jpeg, photo, png

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
COLOR_KEYS = {"Red", "Green", "Blue", "HexCode", "CSSColor", "SimplifiedColor", "PixelPercent"}
CSS_NAMES = {name for name, _, _ in CSS_COLORS}


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> Image.Image:
    return Image.new("RGB", size, color)


def properties(image: Image.Image, max_colors: int = 10) -> dict[str, Any]:
    return analyze(image).properties(max_colors)


def assert_dominant_colors(colors: list[dict[str, Any]], max_colors: int) -> None:
    assert isinstance(colors, list) and len(colors) <= max_colors
    for color in colors:
        assert set(color) == COLOR_KEYS, color
        for channel in ("Red", "Green", "Blue"):
            assert isinstance(color[channel], int) and 0 <= color[channel] <= 255
        assert color["HexCode"] == "#{:02x}{:02x}{:02x}".format(color["Red"], color["Green"], color["Blue"])
        assert color["CSSColor"] in CSS_NAMES
        assert color["SimplifiedColor"] in SIMPLIFIED_COLORS
        assert isinstance(color["PixelPercent"], float) and 0 < color["PixelPercent"] <= 100
    percents = [color["PixelPercent"] for color in colors]
    assert percents == sorted(percents, reverse=True), "most pixels first"
    assert sum(percents) <= 100.01
    assert len({color["CSSColor"] for color in colors}) == len(colors)


def assert_quality(quality: dict[str, Any], keys: set[str]) -> None:
    assert set(quality) == keys, quality
    for value in quality.values():
        assert isinstance(value, float) and 0.0 <= value <= 100.0


def assert_rekognition_image_properties(document: dict[str, Any], max_colors: int = 10) -> None:
    """Exactly DetectLabels' ImageProperties: whole-image Quality has Contrast, the regions' do not."""
    assert set(document) == {"Quality", "DominantColors", "Foreground", "Background"}
    assert_quality(document["Quality"], {"Brightness", "Sharpness", "Contrast"})
    assert_dominant_colors(document["DominantColors"], max_colors)
    for region in ("Foreground", "Background"):
        assert set(document[region]) == {"Quality", "DominantColors"}
        assert_quality(document[region]["Quality"], {"Brightness", "Sharpness"})
        assert_dominant_colors(document[region]["DominantColors"], max_colors)
    json.dumps(document)  # plain JSON types only


# --- the shape ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
def test_real_photos_get_rekognition_s_shape(name: str) -> None:
    document = analyze_bytes(jpeg(name)).properties(10)
    assert_rekognition_image_properties(document)
    assert len(document["DominantColors"]) == 10  # a photograph has more than ten colours


@pytest.mark.parametrize("max_colors", [0, 1, 3, 20])
def test_max_dominant_colors_is_honoured(max_colors: int) -> None:
    document = analyze_bytes(jpeg("coffee")).properties(max_colors)
    assert_rekognition_image_properties(document, max_colors)
    assert len(document["DominantColors"]) == max_colors
    assert len(document["Foreground"]["DominantColors"]) == max_colors


def test_the_answer_is_deterministic() -> None:
    first = analyze_bytes(jpeg("astronaut")).properties(10)
    assert analyze_bytes(jpeg("astronaut")).properties(10) == first
    assert analyze(photo("astronaut")).properties(10) == analyze(photo("astronaut")).properties(10)


# --- colours --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_solid_red_image_is_red(fmt: str) -> None:
    document = analyze_bytes(encode(solid((255, 0, 0)), fmt, **({"quality": 90} if fmt == "JPEG" else {})))
    colors = document.properties(10)["DominantColors"]
    assert colors[0] == {
        "Red": 255,
        "Green": 0,
        "Blue": 0,
        "HexCode": "#ff0000",
        "CSSColor": "red",
        "SimplifiedColor": "red",
        "PixelPercent": pytest.approx(100.0, abs=1.0),
    }
    for region in ("Foreground", "Background"):
        assert document.properties(10)[region]["DominantColors"][0]["CSSColor"] == "red"


@pytest.mark.parametrize(
    ("rgb", "css", "simplified"),
    [
        ((0, 0, 255), "blue", "blue"),
        ((0, 128, 0), "green", "green"),
        ((255, 255, 255), "white", "white"),
        ((0, 0, 0), "black", "black"),
        ((255, 165, 0), "orange", "orange"),
        ((255, 255, 0), "yellow", "yellow"),
        ((128, 0, 128), "purple", "purple"),
        ((255, 192, 203), "pink", "pink"),
        ((139, 69, 19), "saddlebrown", "brown"),
        ((0, 128, 128), "teal", "teal"),
        ((128, 128, 128), "gray", "grey"),
    ],
)
def test_solid_colours_are_named(rgb: tuple[int, int, int], css: str, simplified: str) -> None:
    color = properties(solid(rgb))["DominantColors"][0]
    assert (color["CSSColor"], color["SimplifiedColor"], color["PixelPercent"]) == (css, simplified, 100.0)


def test_colours_are_named_as_a_recorded_rekognition_response_names_them() -> None:
    """The names a DetectLabels response used for these RGB values (docs/image-properties.md)."""
    assert nearest_css_color(47, 79, 79) == "darkslategrey"
    assert nearest_css_color(85, 107, 47) == "darkolivegreen"
    assert nearest_css_color(128, 128, 128) == "gray"
    assert nearest_css_color(105, 105, 105) == "dimgrey"
    assert nearest_css_color(0, 0, 0) == "black"
    rows = {name: (value, simple) for name, value, simple in CSS_COLORS}
    assert rows["darkslategrey"][1] == "grey" and rows["darkolivegreen"][1] == "green" and rows["black"][1] == "black"


def test_the_palette_is_css3_s_named_colours_with_one_simplified_colour_each() -> None:
    assert len(CSS_COLORS) == 138 == len({value for _, value, _ in CSS_COLORS})  # 147 names, 9 aliases folded
    assert len(SIMPLIFIED_COLORS) == 12 == len(set(SIMPLIFIED_COLORS))
    assert {simple for _, _, simple in CSS_COLORS} == set(SIMPLIFIED_COLORS)
    # A pixel of exactly a CSS colour is that colour; the one exception lies 3 levels from its neighbour.
    misnamed = [
        name for name, value, _ in CSS_COLORS if nearest_css_color(value >> 16, (value >> 8) & 255, value & 255) != name
    ]
    assert misnamed == ["chartreuse"]


def test_pixel_percent_is_each_colour_s_share() -> None:
    image = solid((255, 255, 255), (400, 200))
    image.paste((0, 0, 255), (0, 0, 100, 200))  # a quarter blue, three quarters white
    colors = {color["CSSColor"]: color["PixelPercent"] for color in properties(image)["DominantColors"]}
    assert colors == {"white": pytest.approx(75.0, abs=0.5), "blue": pytest.approx(25.0, abs=0.5)}


def test_transparent_pixels_count_as_white() -> None:
    """Decoded as the offline backend decodes: alpha flattened onto white."""
    clear = Image.new("RGBA", (200, 200), (255, 0, 0, 0))
    assert analyze_bytes(encode(clear)).properties(1)["DominantColors"][0]["CSSColor"] == "white"


def test_photos_have_the_colours_they_show() -> None:
    chelsea = {color["SimplifiedColor"] for color in analyze_bytes(jpeg("chelsea")).properties(5)["DominantColors"]}
    assert "brown" in chelsea  # a tabby cat on a brownish blanket
    rocket = analyze_bytes(jpeg("rocket")).properties(3)["DominantColors"]
    assert {color["SimplifiedColor"] for color in rocket} <= {"black", "grey", "blue"}  # a launch pad at dusk


def test_instance_boxes_get_their_own_colours() -> None:
    image = solid((255, 255, 255), (400, 300))
    image.paste((255, 0, 0), (200, 150, 400, 300))  # red in the bottom-right quarter
    analysis = analyze(image)
    box = {"Left": 0.5, "Top": 0.5, "Width": 0.5, "Height": 0.5}
    assert [color["CSSColor"] for color in analysis.box_colors(box, 5)] == ["red"]
    assert analysis.box_colors({"Left": 0.0, "Top": 0.0, "Width": 0.5, "Height": 0.5}, 5)[0]["CSSColor"] == "white"
    assert analysis.box_colors(box, 0) == []
    # A degenerate box at the edge still covers one pixel.
    assert analysis.box_colors({"Left": 1.0, "Top": 1.0, "Width": 0.0, "Height": 0.0}, 5)[0]["CSSColor"] == "red"


# --- quality -------------------------------------------------------------------------------------------------
def quality(image: Image.Image) -> dict[str, float]:
    return properties(image)["Quality"]


def test_a_dark_image_is_less_bright() -> None:
    original = photo("chelsea")
    dark = ImageEnhance.Brightness(original).enhance(0.25)
    bright = ImageEnhance.Brightness(original).enhance(1.6)
    values = [quality(image)["Brightness"] for image in (dark, original, bright)]
    assert values == sorted(values) and values[0] < 20 < values[1]
    assert quality(solid((0, 0, 0)))["Brightness"] == 0.0 and quality(solid((255, 255, 255)))["Brightness"] == 100.0


def test_a_blurred_image_is_less_sharp() -> None:
    original = photo("chelsea")
    values = [quality(original.filter(ImageFilter.GaussianBlur(radius)))["Sharpness"] for radius in (0.01, 1.5, 4)]
    assert values == sorted(values, reverse=True)
    assert values[0] > 55 and values[2] < 40


def test_sharpness_does_not_depend_on_brightness_or_size() -> None:
    original = photo("coffee")
    sharp = quality(original)["Sharpness"]
    assert quality(ImageEnhance.Brightness(original).enhance(0.6))["Sharpness"] == pytest.approx(sharp, abs=6)
    assert quality(original.resize((original.width * 2, original.height * 2)))["Sharpness"] == pytest.approx(
        sharp, abs=6
    )


def test_a_flat_image_has_no_contrast_and_nothing_sharp() -> None:
    flat = quality(solid((120, 140, 160)))
    assert flat["Contrast"] == 0.0 and flat["Sharpness"] == 0.0
    checker = np.kron((np.indices((8, 12)).sum(axis=0) % 2) * 255, np.ones((30, 30))).astype(np.uint8)
    contrasty = quality(Image.fromarray(checker).convert("RGB"))
    assert contrasty["Contrast"] == 100.0 and contrasty["Sharpness"] > 80


def test_lower_contrast_scores_lower() -> None:
    original = photo("astronaut")
    values = [quality(ImageEnhance.Contrast(original).enhance(factor))["Contrast"] for factor in (0.2, 0.6, 1.0)]
    assert values == sorted(values) and values[0] < 25 < values[2]


# --- foreground and background ----------------------------------------------------------------------------------
def subject_on_background(subject: Image.Image, background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """``subject`` pasted in the middle third of a flat background."""
    image = solid(background, (600, 450))
    image.paste(subject.resize((200, 150)), (200, 150))
    return image


def test_a_colourful_subject_in_the_middle_is_the_foreground() -> None:
    image = subject_on_background(solid((255, 0, 0)), background=(30, 90, 200))
    analysis = analyze(image)
    document = analysis.properties(3)
    assert document["Foreground"]["DominantColors"][0]["CSSColor"] == "red"
    assert document["Background"]["DominantColors"][0]["SimplifiedColor"] == "blue"
    # The mask: most of the red square is foreground, most of the border is background.
    height, width = analysis.foreground.shape
    centre = analysis.foreground[height // 3 + 5 : 2 * height // 3 - 5, width // 3 + 5 : 2 * width // 3 - 5]
    assert centre.mean() > 0.9
    assert analysis.foreground[: height // 6].mean() < 0.1


def test_a_sharp_subject_on_a_blurred_background_is_sharper_than_it() -> None:
    """The usual portrait: the subject in focus, the background not (and a grey subject on grey: detail finds it)."""
    scene = photo("camera").convert("RGB").filter(ImageFilter.GaussianBlur(6)).resize((600, 450))
    scene.paste(photo("camera").convert("RGB").resize((200, 150)), (200, 150))
    document = properties(scene)
    assert document["Foreground"]["Quality"]["Sharpness"] > document["Background"]["Quality"]["Sharpness"] + 15


def test_a_dark_subject_on_a_light_background_is_darker_than_it() -> None:
    image = subject_on_background(photo("coffee").point(lambda value: value // 4), background=(230, 230, 230))
    document = properties(image)
    assert document["Foreground"]["Quality"]["Brightness"] < document["Background"]["Quality"]["Brightness"] - 30


def test_a_flat_image_takes_its_centre_as_the_subject() -> None:
    analysis = analyze(solid((40, 160, 90)))
    height, width = analysis.foreground.shape
    assert analysis.foreground[height // 2, width // 2] and not analysis.foreground[0, 0]
    assert 0.10 <= analysis.foreground.mean() <= 0.60


@pytest.mark.parametrize("name", [*PHOTOS, "camera"])
def test_the_foreground_is_a_tenth_to_three_fifths_of_a_photo(name: str) -> None:
    analysis = analyze(photo(name).convert("RGB"))
    assert 0.10 <= float(analysis.foreground.mean()) <= 0.60


# --- cost ---------------------------------------------------------------------------------------------------------
def test_importing_the_module_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "import labeler.adapters.labels.image_properties, labeler.models.label_options, labeler.logic.label_filters\n"
        "print(','.join(sorted({'numpy', 'PIL'} & set(sys.modules))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == ""


def test_png_and_jpeg_of_the_same_photo_agree() -> None:
    from_png = analyze_bytes(png("coffee")).properties(3)
    from_jpeg = analyze_bytes(jpeg("coffee")).properties(3)
    assert from_png["DominantColors"][0]["CSSColor"] == from_jpeg["DominantColors"][0]["CSSColor"]
    for key in ("Brightness", "Contrast"):
        assert from_png["Quality"][key] == pytest.approx(from_jpeg["Quality"][key], abs=3)
    assert re.fullmatch(r"#[0-9a-f]{6}", from_png["DominantColors"][0]["HexCode"])
