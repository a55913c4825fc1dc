"""The HTML gallery: escaping, structure, error cards, summary, thumbnails, and a real headless browser."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from labeler.local.gallery import render_gallery, thumbnail_data_uri, top_labels
from tests.support import images

HOSTILE = '<script>alert("x")</script>'


class Page(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML document."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, css_class: str | None = None) -> list[dict[str, str | None]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and (css_class is None or css_class in (attrs.get("class") or "").split())
        ]

    @property
    def plain(self) -> str:
        return " ".join(self.text)


def label(name: str, confidence: float, parents: list[str] | None = None) -> dict[str, Any]:
    return {
        "Name": name,
        "Confidence": confidence,
        "Instances": [],
        "Parents": [{"Name": parent} for parent in parents or []],
        "Aliases": [],
        "Categories": [],
    }


def success(image_id: str, index: int, labels: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "url": f"https://images.example.com/{index}.jpg",
        "labels": labels if labels is not None else [label("Animal", 95.4), label("Cat", 91.7, ["Mammal", "Animal"])],
        "label_model_version": "local-efficientnet-lite0-imagenet-1",
        "image": {"format": "jpeg", "width": 451, "height": 300, "converted": False, "downscaled": False},
        "manifest": {"bucket": "in-bucket", "key": "manifests/cats.json"},
        "entry_index": index,
    }


def failure(image_id: str, index: int, code: str, message: str) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "url": f"https://images.example.com/{index}.html",
        "error": {"code": code, "message": message},
        "manifest": {"bucket": "in-bucket", "key": "manifests/cats.json"},
        "entry_index": index,
    }


REPORT = {
    "manifest": {"bucket": "in-bucket", "key": "manifests/cats.json"},
    "status": "complete",
    "total": 3,
    "succeeded": 2,
    "failed": 1,
    "errors_by_code": {"not_an_image": 1},
    "labels_from_cache": 0,
    "cost": {"detect_labels_calls": 2, "detect_labels_saved": 0, "estimated_usd": 0.0035},
    "timings_ms": {"total": 1234.5},
    "finished_at": "2026-11-25T10:00:00.000Z",
}


def colour(css: str, hex_code: str, percent: float) -> dict[str, Any]:
    red, green, blue = (int(hex_code[i : i + 2], 16) for i in (1, 3, 5))
    return {"Red": red, "Green": green, "Blue": blue, "HexCode": hex_code, "CSSColor": css,
            "SimplifiedColor": "grey", "PixelPercent": percent}  # fmt: skip


PROPERTIES = {
    "Quality": {"Brightness": 47.04, "Sharpness": 67.6, "Contrast": 41.2},
    "DominantColors": [colour("rosybrown", "#bc8f8f", 31.2), colour("dimgrey", "#696969", 20.5)],
    "Foreground": {"Quality": {"Brightness": 42.8, "Sharpness": 67.1}, "DominantColors": []},
    "Background": {"Quality": {"Brightness": 48.3, "Sharpness": 67.6}, "DominantColors": []},
}


def three_records() -> list[dict[str, Any]]:
    # Out of order on purpose: the gallery sorts by entry index.
    return [
        failure("web-page", 2, "not_an_image", "the bytes are an HTML page"),
        {**success("cat", 0), "image_properties": PROPERTIES},
        success("coffee", 1, [label("Espresso", 95.1, ["Coffee", "Beverage", "Food"]), label("Food", 96.0)]),
    ]


def test_one_card_per_record_in_entry_order_with_thumbnails_as_data_uris() -> None:
    html = render_gallery(three_records(), REPORT, {"cat": images.jpeg(), "coffee": images.png("coffee")})
    page = Page(html)

    cards = page.all("article", "card")
    assert [card["id"] for card in cards] == ["entry-0", "entry-1", "entry-2"]
    assert [card["class"] for card in cards] == ["card ok", "card ok", "card failed"]
    sources = [img["src"] or "" for img in page.all("img")]
    assert len(sources) == 2
    assert all(source.startswith("data:image/jpeg;base64,") for source in sources)
    assert "images.example.com" not in "".join(sources)  # a third-party URL never loads
    ids = [text for text in page.text if text in {"cat", "coffee", "web-page"}]
    assert ids == ["cat", "coffee", "web-page"]


def test_the_page_is_self_contained_and_readable_on_a_phone() -> None:
    html = render_gallery(three_records(), REPORT, {"cat": images.jpeg()})
    page = Page(html)

    viewport = [meta for meta in page.all("meta") if meta.get("name") == "viewport"]
    assert viewport and "width=device-width" in (viewport[0]["content"] or "")
    csp = [meta for meta in page.all("meta") if meta.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    assert "display: grid" in html and "auto-fill" in html
    for name, attrs in page.tags:  # nothing refers to anything outside the file
        for attribute in ("src", "href", "action"):
            value = attrs.get(attribute)
            assert value is None or value.startswith("data:"), (name, attribute, value)


def test_third_party_text_is_escaped_everywhere() -> None:
    records = [
        success(HOSTILE, 0, [label(HOSTILE, 90.0), label('Cat" onmouseover="alert(1)', 80.0)]),
        failure(f"bad{HOSTILE}", 1, "http_status", f"HTTP 404 from {HOSTILE}"),
    ]
    records[0]["url"] = f"https://example.com/{HOSTILE}"
    report = {**REPORT, "manifest": {"bucket": "in", "key": f"manifests/{HOSTILE}.json"}, "errors_by_code": {}}

    html = render_gallery(records, report, {HOSTILE: images.jpeg()})
    page = Page(html)

    assert "<script" not in html.lower()
    assert not page.all("script")
    assert "&lt;script&gt;" in html
    assert HOSTILE in page.plain  # shown to the reader as text
    assert all(not any(name.startswith("on") for name in attrs) for _, attrs in page.tags)
    titles = [attrs.get("title") for _, attrs in page.tags if attrs.get("title")]
    assert 'Cat" onmouseover="alert(1)' in titles  # the quote stayed inside the attribute
    assert page.all("img")[0]["alt"] == HOSTILE


def test_error_cards_show_code_and_message_and_no_thumbnail() -> None:
    records = [failure("gone", 0, "http_status", "HTTP 404 from https://images.example.com/gone.jpg")]
    html = render_gallery(records, None, {"gone": images.jpeg()})
    page = Page(html)

    assert not page.all("img")  # even with bytes: a failed entry has no picture to show
    codes = [attrs for attrs in page.all("span", "code")]
    assert len(codes) == 1
    assert "http_status" in page.plain
    assert "HTTP 404 from https://images.example.com/gone.jpg" in page.plain
    assert page.all("article", "failed")


def test_summary_comes_from_the_report() -> None:
    html = render_gallery(three_records(), REPORT, None)
    page = Page(html)
    summary = html.split('id="summary">', 1)[1].split("</p>", 1)[0]

    assert "complete" in summary
    assert "<b>3</b> entries" in summary
    assert '<b class="ok">2</b> labeled' in summary
    assert '<b class="bad">1</b> failed' in summary
    assert "1.2 s" in summary
    assert "DetectLabels 2 calls, 0 saved, $0.0035" in summary  # the run's cost
    assert "not_an_image × 1" in page.plain
    assert "s3://in-bucket/manifests/cats.json" in page.plain


def test_without_a_report_the_summary_counts_the_records() -> None:
    html = render_gallery(three_records(), None, None)
    summary = html.split('id="summary">', 1)[1].split("</p>", 1)[0]

    assert "<b>3</b> entries" in summary
    assert '<b class="ok">2</b> labeled' in summary
    assert '<b class="bad">1</b> failed' in summary
    assert "not_an_image × 1" in html


def test_image_properties_show_colour_swatches_and_a_quality_line() -> None:
    page = Page(render_gallery(three_records(), REPORT, None))

    swatches = page.all("li", "swatch")
    assert [s["title"] for s in swatches] == ["rosybrown 31%", "dimgrey 20%"]
    assert [s["style"] for s in swatches] == ["background:#bc8f8f;flex:31.20", "background:#696969;flex:20.50"]
    assert "brightness 47 · sharpness 68 · contrast 41" in page.plain
    assert len(page.all("ul", "swatches")) == 1  # only the record that has image properties


def test_a_colour_that_is_not_a_hex_code_never_reaches_a_style() -> None:
    hostile = {**PROPERTIES, "DominantColors": [colour("x", "#000000", 10) | {"HexCode": "red;background:url(x)"},
                                                colour(HOSTILE, "#123456", 5)]}  # fmt: skip
    html = render_gallery([{**success("cat", 0), "image_properties": hostile}], None, None)
    page = Page(html)

    assert [s["style"] for s in page.all("li", "swatch")] == ["background:#123456;flex:5.00"]
    assert "url(" not in html and "<script" not in html.lower()
    assert page.all("li", "swatch")[0]["title"] == f"{HOSTILE} 5%"  # escaped, still readable


def test_labels_show_confidence_bars_most_specific_first() -> None:
    html = render_gallery([success("cat", 0)], None, None)
    page = Page(html)

    names = [attrs["title"] for attrs in page.all("span", "name")]
    assert names == ["Cat", "Animal"]  # Cat has parents: more specific, shown first
    widths = [attrs["style"] for attrs in page.all("span", "fill")]
    assert widths == ["width:91.7%", "width:95.4%"]
    assert "92%" in page.plain and "95%" in page.plain


def test_a_successful_record_without_bytes_or_labels_gets_placeholders() -> None:
    html = render_gallery(
        [success("empty", 0, labels=[]), success("broken-bytes", 1)], None, {"broken-bytes": b"GIF89a"}
    )
    page = Page(html)

    assert not page.all("img")
    assert page.plain.count("no preview") == 2
    assert "no label above the confidence threshold" in page.plain


def test_thumbnails_are_downscaled_jpegs() -> None:
    uri = thumbnail_data_uri(images.png("astronaut"))  # 512 × 512

    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    thumbnail = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert thumbnail.format == "JPEG"
    assert max(thumbnail.size) == 320
    assert thumbnail_data_uri(images.webp(size=(200, 100))) is not None
    assert thumbnail_data_uri(images.gif()) is not None
    assert thumbnail_data_uri(images.HTML) is None
    assert thumbnail_data_uri(images.SVG) is None
    assert thumbnail_data_uri(images.truncated_jpeg()[:200]) is None


def test_top_labels_keeps_the_most_confident() -> None:
    labels = [label(f"L{i}", float(i)) for i in range(10)]
    assert {item["Name"] for item in top_labels(labels, 3)} == {"L9", "L8", "L7"}


# --- a real browser ----------------------------------------------------------------------------------
def chromium_binary() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: run `make browser` (installs Debian's chromium)")
    return found


def run_chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_headless_browser_renders_the_cards(tmp_path: Path) -> None:
    records = [*three_records(), failure(HOSTILE, 3, "blocked_address", "169.254.169.254 is link-local")]
    gallery = tmp_path / "gallery.html"
    gallery.write_text(render_gallery(records, REPORT, {"cat": images.jpeg(), "coffee": images.png("coffee")}))

    dumped = run_chromium(tmp_path, gallery, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Page(dumped.stdout)
    assert len(dom.all("article", "card")) == 4
    assert len(dom.all("article", "failed")) == 2
    assert len(dom.all("img")) == 2
    assert not dom.all("script")  # the hostile id stayed text in the browser's DOM too
    assert len(dom.all("li", "swatch")) == 2 and "brightness 47" in dom.plain  # colours and quality
    assert "DetectLabels 2 calls" in dom.plain  # the cost in the summary

    for width, height in ((1280, 900), (390, 844)):  # desktop, then a phone
        shot = tmp_path / f"shot-{width}.png"
        taken = run_chromium(tmp_path, gallery, f"--screenshot={shot}", f"--window-size={width},{height}")
        assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
        picture = Image.open(shot).convert("RGB")
        assert picture.size == (width, height)
        stddev = ImageStat.Stat(picture).stddev
        assert max(stddev) > 20, f"the {width}-px screenshot is blank: stddev {stddev}"
        assert len(picture.getcolors(maxcolors=1 << 20) or []) > 1000  # photos, not just flat boxes
