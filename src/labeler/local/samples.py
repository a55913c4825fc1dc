"""Sample photographs and a sample manifest for local runs (``make demo``, ``s3-image-labeler invoke --embedded``).

The photos are real ones bundled with scikit-image (no download: ``chelsea`` the cat, ``coffee``,
``rocket``, ...), encoded as JPEG, PNG, WebP, GIF and BMP so that the pipeline's conversion shows.
They are served on loopback by :class:`labeler.local.http_server.LoopbackServer`; the manifest adds
entries that fail on purpose (a 404, an HTML page, the cloud metadata address, a duplicate id, an
entry without a URL), each with the error code it must get. ``make demo`` adds :data:`S3_SAMPLES`:
entries naming S3 objects (one uploaded to the demo's source bucket, one in a bucket outside
``SOURCE_BUCKETS``).

>>> with LoopbackServer(sample_routes()) as server:                   # doctest: +SKIP
...     manifest = sample_manifest(server.url)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}
METADATA_URL = "http://169.254.169.254/latest/meta-data/"
HTML_PAGE = (
    b"<!doctype html><html><head><title>Photos</title></head>"
    b"<body><h1>Our photos</h1><p>This is a web page, not an image.</p></body></html>"
)


@dataclass(frozen=True)
class SamplePhoto:
    """One photo of the sample set: where it is served, and a label the offline model must find in it."""

    image_id: str
    source: str  # the scikit-image sample (``skimage.data.<source>()``)
    fmt: str  # Pillow format name it is served in
    caption: str
    # At least one of these labels must come back (empty: any successful answer will do).
    expected: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        extension = {"JPEG": "jpg"}.get(self.fmt, self.fmt.lower())
        return f"/photos/{self.image_id}.{extension}"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]


PHOTOS: tuple[SamplePhoto, ...] = (
    SamplePhoto("chelsea-the-cat", "chelsea", "JPEG", "Chelsea the cat", ("Cat",)),
    SamplePhoto("coffee", "coffee", "PNG", "a cup of espresso", ("Coffee", "Espresso")),
    SamplePhoto("motorcycle", "stereo_motorcycle", "GIF", "a motorcycle (a GIF: converted to PNG)", ("Vehicle",)),
    SamplePhoto("rocket", "rocket", "PNG", "a rocket on its launch pad"),
    SamplePhoto("cameraman", "camera", "BMP", "a photographer and his tripod (greyscale BMP)", ("Tripod",)),
    # ImageNet-1k has no "person" class: what the offline model says here depends on its face detector.
    SamplePhoto("astronaut", "astronaut", "WEBP", "Eileen Collins, astronaut (WebP: converted)"),
)


@dataclass(frozen=True)
class BrokenEntry:
    """A manifest entry that must fail, and the error code it must get."""

    image_id: str | None
    expected_code: str
    why: str
    # Builds the entry from the server's URL function (``server.url``).
    build: Callable[[Callable[[str], str]], dict[str, Any]]


BROKEN: tuple[BrokenEntry, ...] = (
    BrokenEntry(
        "missing-photo",
        "http_status",
        "the server answers 404",
        lambda url: {"id": "missing-photo", "url": url("/photos/missing.jpg")},
    ),
    BrokenEntry(
        "web-page",
        "not_an_image",
        "an HTML page, not an image",
        lambda url: {"id": "web-page", "url": url("/index.html")},
    ),
    BrokenEntry(
        "cloud-metadata",
        "blocked_address",
        "the cloud metadata service: blocked even when private networks are allowed",
        lambda url: {"id": "cloud-metadata", "url": METADATA_URL},
    ),
    BrokenEntry(
        "coffee",
        "duplicate_id",
        "a second entry with the id 'coffee'",
        lambda url: {"id": "coffee", "url": url(PHOTOS[1].path)},
    ),
    BrokenEntry(
        "no-url", "invalid_entry", "an entry without a url", lambda url: {"id": "no-url", "note": "forgot the url"}
    ),
)


@dataclass(frozen=True)
class S3Sample:
    """A demo entry naming an S3 object (``s3://bucket/key``) and what it must get.

    ``photo`` is uploaded to the demo's source bucket and must be labeled; ``bucket`` names another
    bucket instead (outside ``SOURCE_BUCKETS``: nothing is uploaded, nothing may be asked of it).
    """

    image_id: str
    key: str
    why: str
    photo: SamplePhoto | None = None
    bucket: str | None = None
    expected_code: str | None = None

    def url(self, source_bucket: str) -> str:
        return f"s3://{self.bucket or source_bucket}/{self.key}"


S3_SAMPLES: tuple[S3Sample, ...] = (
    S3Sample(
        "cat-in-s3",
        "photos/chelsea.png",
        "a photo in the demo's source bucket (SOURCE_BUCKETS): read from S3, never over HTTP",
        photo=SamplePhoto("cat-in-s3", "chelsea", "PNG", "Chelsea again, as a PNG read from S3", ("Cat",)),
    ),
    S3Sample(
        "not-our-bucket",
        "cat.jpg",
        "a bucket outside SOURCE_BUCKETS: refused before any request",
        bucket="someone-elses-photos",
        expected_code="source_not_allowed",
    ),
)


def s3_entries(source_bucket: str) -> list[dict[str, Any]]:
    """The manifest entries of :data:`S3_SAMPLES`, ``source_bucket`` being the one ``SOURCE_BUCKETS`` allows."""
    return [{"id": sample.image_id, "url": sample.url(source_bucket)} for sample in S3_SAMPLES]


def upload_s3_samples(s3: Any, source_bucket: str) -> None:
    """Put the photos of :data:`S3_SAMPLES` into the (existing) source bucket."""
    for sample in S3_SAMPLES:
        if sample.photo is not None:
            s3.put_object(Bucket=source_bucket, Key=sample.key, Body=photo_bytes(sample.photo))


@cache
def _encoded(photo: SamplePhoto) -> bytes:
    import skimage.data
    from PIL import Image

    array = getattr(skimage.data, photo.source)()
    if isinstance(array, tuple):  # stereo pairs: the left image
        array = array[0]
    image = Image.fromarray(array)
    if photo.fmt == "GIF":
        image = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": 90} if photo.fmt in {"JPEG", "WEBP"} else {}
    image.save(buffer, format=photo.fmt, **options)
    return buffer.getvalue()


def photo_bytes(photo: SamplePhoto) -> bytes:
    """The bytes the server sends for ``photo`` (encoded once per process)."""
    return _encoded(photo)


# The photo the demo's re-check step changes on the server, and what it shows afterwards.
CHANGED_PHOTO = PHOTOS[3]  # the rocket
CHANGED_TO = "a cat (Chelsea, mirrored): new bytes, and labels of its own"


def changed_photo_bytes(photo: SamplePhoto = CHANGED_PHOTO) -> bytes:
    """New bytes for ``photo``'s URL, in its format: the cat, mirrored (bytes no other sample has, so a call is due)."""
    import skimage.data
    from PIL import Image, ImageOps

    image = ImageOps.mirror(Image.fromarray(skimage.data.chelsea()))
    buffer = io.BytesIO()
    image.save(buffer, format=photo.fmt, **({"quality": 90} if photo.fmt in {"JPEG", "WEBP"} else {}))
    return buffer.getvalue()


def sample_routes() -> dict[str, Any]:
    """Routes for :class:`~labeler.local.http_server.LoopbackServer`: every photo, plus an HTML page."""
    from labeler.local.http_server import StaticRoute

    routes: dict[str, Any] = {
        photo.path: StaticRoute(photo_bytes(photo), content_type=photo.content_type) for photo in PHOTOS
    }
    routes["/index.html"] = StaticRoute(HTML_PAGE, content_type="text/html; charset=utf-8")
    return routes


def sample_manifest(url: Callable[[str], str], *, broken: bool = True) -> list[dict[str, Any]]:
    """The manifest: every photo by URL (``url`` maps a path to a full URL), then the broken entries."""
    entries: list[dict[str, Any]] = [{"id": photo.image_id, "url": url(photo.path)} for photo in PHOTOS]
    if broken:
        entries.extend(entry.build(url) for entry in BROKEN)
    return entries


def sample_images() -> dict[str, bytes]:
    """The photo bytes by image id (the gallery's thumbnails), those read from S3 included."""
    photos = [*PHOTOS, *(sample.photo for sample in S3_SAMPLES if sample.photo is not None)]
    return {photo.image_id: photo_bytes(photo) for photo in photos}


def check_records(records: list[dict[str, Any]], *, broken: bool = True, s3: bool = False) -> list[str]:
    """What is wrong with the records of a run over :func:`sample_manifest` (empty: all as expected).

    ``s3``: the manifest ends with :func:`s3_entries` (after the broken entries), as the demo's does.
    """
    problems: list[str] = []
    expected: list[tuple[str, tuple[str, ...], str | None, str]] = [
        (photo.image_id, photo.expected, None, "") for photo in PHOTOS
    ]
    if broken:
        expected += [(str(entry.image_id), (), entry.expected_code, entry.why) for entry in BROKEN]
    if s3:
        expected += [
            (sample.image_id, sample.photo.expected if sample.photo else (), sample.expected_code, sample.why)
            for sample in S3_SAMPLES
        ]
    if len(records) != len(expected):
        problems.append(f"{len(records)} records for {len(expected)} entries")
    by_index = {record.get("entry_index"): record for record in records}
    for index, (image_id, labels, code, why) in enumerate(expected):
        record = by_index.get(index)
        if code is not None:
            found = (record or {}).get("error", {}).get("code") if record else None
            if found != code:
                problems.append(f"entry {index} ({why}): expected {code}, got {found}")
        elif record is None:
            problems.append(f"no record for {image_id}")
        elif "error" in record:
            problems.append(f"{image_id} failed: {record['error'].get('code')} {record['error'].get('message')}")
        else:
            names = {label.get("Name") for label in record.get("labels") or []}
            if labels and not names.intersection(labels):
                problems.append(f"{image_id}: expected {' or '.join(labels)}, got {sorted(names) or 'none'}")
    return problems
