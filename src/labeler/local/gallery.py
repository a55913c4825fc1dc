"""A self-contained HTML gallery of a manifest's results: one card per record, a summary from the report.

One file, nothing external: inline CSS, thumbnails as ``data:`` URIs (downscaled with Pillow), no
JavaScript, a Content-Security-Policy that forbids scripts and remote loads anyway. Every text that
comes from a manifest or a label backend (ids, URLs, labels, error messages) is HTML-escaped.

>>> page = render_gallery(records, report, {"cat-1": jpeg_bytes})   # doctest: +SKIP
>>> Path("gallery.html").write_text(page, encoding="utf-8")         # doctest: +SKIP

Where thumbnails come from: the demo has the bytes it served; the CLI downloads them again with
the project's SSRF-safe fetcher (:func:`fetch_thumbnails`). A card without bytes shows a
placeholder: a third-party URL never goes into an ``<img>`` (privacy, and the page works offline).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from html import escape
from typing import Any

THUMBNAIL_SIDE = 320
MAX_LABELS_SHOWN = 6
MAX_MESSAGE_CHARS = 300
MAX_URL_CHARS = 120
# Decoders Pillow may use for a thumbnail: the formats the pipeline accepts, nothing exotic.
THUMBNAIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
THUMBNAIL_MAX_PIXELS = 100_000_000
MAX_SWATCHES = 6
# Only a colour that is exactly #rrggbb goes into a style attribute (the CSP allows inline styles).
HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")

CSS = """
:root { color-scheme: light; --ink: #1d2430; --muted: #5d6778; --line: #e3e7ee; --ok: #1f7a4d;
  --bad: #b42318; --bar: #3b82f6; --bg: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); background: var(--bg); }
header { padding: 20px 20px 8px; max-width: 1280px; margin: 0 auto; }
h1 { font-size: 1.35rem; margin: 0 0 4px; }
.summary { margin: 0; color: var(--muted); }
.summary b { color: var(--ink); }
.summary .ok { color: var(--ok); }
.summary .bad { color: var(--bad); }
.codes { margin: 6px 0 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 6px; }
.codes li { font: 12px/1.6 ui-monospace, "DejaVu Sans Mono", monospace; background: #fde8e7; color: var(--bad);
  border-radius: 999px; padding: 0 9px; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 260px), 1fr)); gap: 16px;
  padding: 12px 20px 28px; max-width: 1280px; margin: 0 auto; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 12px; overflow: hidden;
  display: flex; flex-direction: column; min-width: 0; }
.card.failed { border-color: #f3c1bd; }
.thumb { margin: 0; aspect-ratio: 4 / 3; background: #eef1f5; display: flex; align-items: center;
  justify-content: center; overflow: hidden; }
.thumb img { width: 100%; height: 100%; object-fit: cover; display: block; }
.placeholder { color: var(--muted); font-size: 13px; text-align: center; padding: 12px; }
.failed .placeholder { color: var(--bad); }
.placeholder .glyph { display: block; font-size: 34px; line-height: 1.1; }
.body { padding: 10px 12px 12px; min-width: 0; }
.id { font: 600 14px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; margin: 0 0 2px; overflow-wrap: anywhere; }
.meta { margin: 0 0 8px; color: var(--muted); font-size: 12px; overflow-wrap: anywhere; }
.meta.url { margin: 0 0 2px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.labels { list-style: none; margin: 0; padding: 0; display: grid; gap: 4px; }
.labels li { display: grid; grid-template-columns: minmax(0, 1fr) 38%  3.2em; align-items: center; gap: 8px;
  font-size: 13px; }
.labels .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.labels .pct { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
.track { height: 7px; background: #e8edf4; border-radius: 999px; overflow: hidden; }
.fill { display: block; height: 100%; background: var(--bar); border-radius: 999px; }
.none { color: var(--muted); font-size: 13px; margin: 0; }
.error .code { display: inline-block; font: 600 12px/1.6 ui-monospace, "DejaVu Sans Mono", monospace;
  color: #fff; background: var(--bad); border-radius: 6px; padding: 0 7px; margin: 0 0 6px; }
.error .message { margin: 0; font-size: 13px; overflow-wrap: anywhere; }
.swatches { list-style: none; margin: 8px 0 2px; padding: 0; display: flex; height: 14px; border-radius: 4px;
  overflow: hidden; border: 1px solid var(--line); }
.swatches li { min-width: 3px; }
.quality { margin: 2px 0 0; color: var(--muted); font-size: 12px; font-variant-numeric: tabular-nums; }
footer { max-width: 1280px; margin: 0 auto; padding: 0 20px 24px; color: var(--muted); font-size: 12px; }
@media (max-width: 480px) { header, main, footer { padding-left: 12px; padding-right: 12px; } main { gap: 12px; }
  .failed .thumb { aspect-ratio: 16 / 5; } }
"""

# No scripts, no remote anything: images only from data: URIs, styles only inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _text(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return escape("" if value is None else str(value), quote=True)


def _shorten(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def thumbnail_data_uri(data: bytes, side: int = THUMBNAIL_SIDE) -> str | None:
    """A JPEG ``data:`` URI of ``data`` scaled to fit ``side`` × ``side``; None when it is not a usable image."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data), formats=THUMBNAIL_FORMATS) as opened:
            width, height = opened.size
            if width * height > THUMBNAIL_MAX_PIXELS:
                return None
            opened.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, (255, 255, 255))
                image.paste(rgba, mask=rgba.getchannel("A"))
            else:
                image = image.convert("RGB")
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=82, optimize=True)
    except Exception:  # any decoder failure: the card shows a placeholder instead
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _label_specificity(label: Mapping[str, Any]) -> tuple[int, float]:
    return len(label.get("Parents") or []), float(label.get("Confidence") or 0.0)


def top_labels(labels: Iterable[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """The ``limit`` most confident labels, most specific first (Cat before Mammal before Animal)."""
    chosen = sorted(labels, key=lambda label: -float(label.get("Confidence") or 0.0))[:limit]
    return sorted(chosen, key=_label_specificity, reverse=True)


def _counts_line(report: Mapping[str, Any] | None, records: list[Mapping[str, Any]]) -> tuple[str, dict[str, int]]:
    if report:
        total, succeeded, failed = report.get("total", 0), report.get("succeeded", 0), report.get("failed", 0)
        by_code = dict(report.get("errors_by_code") or {})
        status = str(report.get("status", ""))
    else:
        succeeded = sum(1 for record in records if "error" not in record)
        failed, total, status = len(records) - succeeded, len(records), ""
        by_code = {}
        for record in records:
            if "error" in record:
                code = str((record.get("error") or {}).get("code", "internal_error"))
                by_code[code] = by_code.get(code, 0) + 1
    parts = [f"<b>{_text(total)}</b> entries"]
    parts.append(f'<b class="ok">{_text(succeeded)}</b> labeled')
    parts.append(f'<b class="bad">{_text(failed)}</b> failed')
    if status:
        parts.insert(0, f"status <b>{_text(status)}</b>")
    if report and report.get("labels_from_cache"):
        parts.append(f"{_text(report['labels_from_cache'])} from the label cache")
    cost = (report or {}).get("cost")
    if isinstance(cost, Mapping):
        parts.append(f'<span id="cost">{_text(cost_text(cost))}</span>')
    seconds = (report or {}).get("timings_ms", {}).get("total") if report else None
    if isinstance(seconds, int | float):
        parts.append(f"{seconds / 1000:.1f} s")
    return " · ".join(parts), {str(code): int(count) for code, count in sorted(by_code.items())}


def cost_text(cost: Mapping[str, Any]) -> str:
    """``DetectLabels 6 calls, 2 saved, $0.006``: a report's ``cost`` in words (also the demo's summary line)."""
    calls, saved = int(cost.get("detect_labels_calls") or 0), int(cost.get("detect_labels_saved") or 0)
    amount = float(cost.get("estimated_usd") or 0.0)
    return f"DetectLabels {calls} call{'' if calls == 1 else 's'}, {saved} saved, ${amount:.5g}"


def _properties(record: Mapping[str, Any]) -> str:
    """Colour swatches (width = share of the pixels) and a quality line, when the record has image properties."""
    properties = record.get("image_properties")
    if not isinstance(properties, Mapping):
        return ""
    swatches = []
    for colour in list(properties.get("DominantColors") or [])[:MAX_SWATCHES]:
        if not isinstance(colour, Mapping) or not HEX_COLOUR.fullmatch(str(colour.get("HexCode", ""))):
            continue
        share = max(0.0, min(100.0, float(colour.get("PixelPercent") or 0.0)))
        name = f"{colour.get('CSSColor', colour['HexCode'])} {share:.0f}%"
        swatches.append(
            f'<li class="swatch" title="{_text(name)}" style="background:{colour["HexCode"]};flex:{share:.2f}"></li>'
        )
    quality = properties.get("Quality")
    measures = []
    if isinstance(quality, Mapping):
        for key in ("Brightness", "Sharpness", "Contrast"):
            value = quality.get(key)
            if isinstance(value, int | float):
                measures.append(f"{key.lower()} {value:.0f}")
    line = f'<p class="quality">{_text(" · ".join(measures))}</p>' if measures else ""
    return (f'<ul class="swatches">{"".join(swatches)}</ul>' if swatches else "") + line


def _manifest_name(report: Mapping[str, Any] | None, records: list[Mapping[str, Any]]) -> str:
    manifest = (report or {}).get("manifest") or next((r.get("manifest") for r in records if r.get("manifest")), None)
    if isinstance(manifest, Mapping) and manifest.get("bucket") and manifest.get("key"):
        return f"s3://{manifest['bucket']}/{manifest['key']}"
    return ""


def _label_rows(labels: list[Mapping[str, Any]]) -> str:
    if not labels:
        return '<p class="none">no label above the confidence threshold</p>'
    rows = []
    for label in top_labels(labels, MAX_LABELS_SHOWN):
        confidence = max(0.0, min(100.0, float(label.get("Confidence") or 0.0)))
        name = _text(label.get("Name", "?"))
        rows.append(
            f'<li><span class="name" title="{name}">{name}</span>'
            f'<span class="track"><span class="fill" style="width:{confidence:.1f}%"></span></span>'
            f'<span class="pct">{confidence:.0f}%</span></li>'
        )
    return '<ul class="labels">' + "".join(rows) + "</ul>"


def _image_meta(record: Mapping[str, Any]) -> str:
    image = record.get("image")
    if not isinstance(image, Mapping):
        return ""
    parts = []
    if image.get("format"):
        parts.append(str(image["format"]).upper())
    if image.get("width") and image.get("height"):
        parts.append(f"{image['width']}×{image['height']}")
    if image.get("converted"):
        parts.append("converted")
    if image.get("downscaled"):
        parts.append("downscaled")
    if record.get("labels_from_cache"):
        parts.append("labels from cache")
    return " · ".join(parts)


def _card(record: Mapping[str, Any], thumbnail: str | None) -> str:
    image_id = _text(record.get("image_id", ""))
    error = record.get("error")
    failed = isinstance(error, Mapping) or "labels" not in record
    index = record.get("entry_index")
    anchor = f' id="entry-{int(index)}"' if isinstance(index, int) else ""
    url = record.get("url")
    url_line = f'<p class="meta url" title="{_text(url)}">{_text(_shorten(str(url), MAX_URL_CHARS))}</p>' if url else ""
    if thumbnail:
        figure = f'<figure class="thumb"><img src="{thumbnail}" alt="{image_id}" loading="lazy"></figure>'
    elif failed:
        code = _text((error or {}).get("code", "error")) if isinstance(error, Mapping) else "error"
        figure = f'<figure class="thumb"><div class="placeholder"><span class="glyph">✕</span>{code}</div></figure>'
    else:
        figure = '<figure class="thumb"><div class="placeholder"><span class="glyph">▢</span>no preview</div></figure>'
    if failed:
        error = error if isinstance(error, Mapping) else {"code": "internal_error", "message": "no labels"}
        message = _shorten(str(error.get("message", "")), MAX_MESSAGE_CHARS)
        content = (
            f'<div class="error"><span class="code">{_text(error.get("code", "internal_error"))}</span>'
            f'<p class="message">{_text(message)}</p></div>'
        )
        css, meta = "card failed", ""
    else:
        content = _label_rows(list(record.get("labels") or [])) + _properties(record)
        meta_text = _image_meta(record)
        css, meta = "card ok", (f'<p class="meta">{_text(meta_text)}</p>' if meta_text else "")
    return (
        f'<article class="{css}"{anchor}>{figure}<div class="body">'
        f'<h2 class="id">{image_id}</h2>{url_line}{meta}{content}</div></article>'
    )


def render_gallery(
    records: Iterable[Mapping[str, Any]],
    report: Mapping[str, Any] | None,
    images: Mapping[str, bytes] | None = None,
    *,
    title: str = "s3-image-labeler results",
) -> str:
    """The HTML page: a summary from ``report`` and one card per record (in entry order).

    ``images`` maps an image id to the bytes of that image (thumbnails); records without bytes
    get a placeholder. Error records get an error card with their code and message.
    """
    ordered = sorted(records, key=lambda record: (record.get("entry_index", 1 << 62), str(record.get("image_id"))))
    images = images or {}
    thumbnails: dict[str, str | None] = {}
    cards = []
    for record in ordered:
        image_id = str(record.get("image_id", ""))
        thumbnail = None
        if "error" not in record and image_id in images:
            if image_id not in thumbnails:
                thumbnails[image_id] = thumbnail_data_uri(images[image_id])
            thumbnail = thumbnails[image_id]
        cards.append(_card(record, thumbnail))
    counts, by_code = _counts_line(report, ordered)
    codes = "".join(f"<li>{_text(code)} × {count}</li>" for code, count in by_code.items())
    manifest = _manifest_name(report, ordered)
    backends = sorted(
        {
            str(record.get("label_model_version") or record.get("label_backend"))
            for record in ordered
            if record.get("label_model_version") or record.get("label_backend")
        }
    )
    footer_bits = ["Generated by s3-image-labeler"]
    if backends:
        footer_bits.append("labels: " + ", ".join(backends))
    if report and report.get("finished_at"):
        footer_bits.append(f"finished {report['finished_at']}")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_text(title)}</title><style>{CSS}</style></head>\n"
        f"<body><header><h1>{_text(title)}</h1>"
        + (f'<p class="summary">{_text(manifest)}</p>' if manifest else "")
        + f'<p class="summary" id="summary">{counts}</p>'
        + (f'<ul class="codes">{codes}</ul>' if codes else "")
        + "</header>\n<main>\n"
        + "\n".join(cards)
        + f"\n</main><footer>{_text(' · '.join(footer_bits))}</footer></body></html>\n"
    )


def fetch_thumbnails(
    records: Iterable[Mapping[str, Any]],
    *,
    allow_private_networks: bool = False,
    timeout_seconds: float = 10.0,
    max_bytes: int = 15 * 1024 * 1024,
    max_workers: int = 8,
) -> dict[str, bytes]:
    """Download the images of the successful records through the SSRF-safe fetcher (same rules as the Lambda).

    Returns the bytes by image id; an image that cannot be fetched is simply left out (placeholder).
    """
    from labeler.adapters.fetch import FetchedImage, FetchPolicy, ImageFetcher

    wanted: dict[str, str] = {}
    for record in records:
        if "error" in record or not record.get("url") or not record.get("image_id"):
            continue
        wanted.setdefault(str(record["image_id"]), str(record["url"]))
    if not wanted:
        return {}
    fetcher = ImageFetcher(
        FetchPolicy(
            max_bytes=max_bytes,
            timeout_seconds=timeout_seconds,
            max_redirects=5,
            allow_private_networks=allow_private_networks,
        )
    )

    def one(url: str) -> bytes | None:
        try:
            fetched = fetcher.fetch(url, None)
        except Exception:  # blocked, gone, too large...: a placeholder, never a raw URL
            return None
        return fetched.body if isinstance(fetched, FetchedImage) else None

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(wanted)))) as pool:
            bodies = dict(zip(wanted, pool.map(one, wanted.values()), strict=True))
    finally:
        fetcher.close()
    return {image_id: body for image_id, body in bodies.items() if body}
