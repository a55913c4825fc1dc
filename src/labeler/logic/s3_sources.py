"""Manifest entries that name an S3 object (``"url": "s3://bucket/key"``, optional ``"versionId"``). Pure: no AWS.

Such an entry is labeled from S3, never downloaded over HTTP: no SSRF surface. Three decisions live here:

* :func:`parse_s3_source` checks the URL (bucket name rules, key length and characters, version id)
  and the allow-list (``SOURCE_BUCKETS``): a bucket outside it is :class:`SourceNotAllowed`
  (``source_not_allowed``), decided before any request, so the function never meets AccessDenied;
* :func:`s3_object_route` says whether Rekognition can read the object itself (``Image.S3Object``: JPEG
  or PNG, ≤ 15 MB, sides 80–10,000 px) or the object must go through the download-and-convert path
  (read from S3 with GetObject, then the same ``prepare_image`` as an HTTP download);
* :func:`source_identity` is what the label cache remembers an object by: its version id when S3 gives
  one (immutable), else its ETag, so an unchanged object is never labeled twice.

Keys are taken literally, as the AWS CLI and the console's "S3 URI" write them: ``s3://b/my photo.jpg``
is the key ``my photo.jpg``; ``%20`` stays ``%20`` and ``?`` is part of the key (never a query string).

>>> ref = parse_s3_source("s3://my-photos/2024/cat 1.jpg", "3HL4kqtJvjVBH40Nrjfkd", allowed={"my-photos"})
>>> ref.bucket, ref.key, ref.version_id
('my-photos', '2024/cat 1.jpg', '3HL4kqtJvjVBH40Nrjfkd')
>>> ref.rekognition_image()
{'S3Object': {'Bucket': 'my-photos', 'Name': '2024/cat 1.jpg', 'Version': '3HL4kqtJvjVBH40Nrjfkd'}}
>>> parse_s3_source("s3://other-bucket/cat.jpg", None, allowed={"my-photos"})
Traceback (most recent call last):
labeler.models.errors.SourceNotAllowed: bucket 'other-bucket' is not one of the source buckets (SOURCE_BUCKETS)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from labeler.models.errors import InvalidUrl, SourceNotAllowed

SCHEME = "s3://"
S3_MAX_KEY_BYTES = 1024
MAX_VERSION_ID_CHARS = 1024
# DetectLabels limits for Image.S3Object (the bytes path allows 5 MB; S3Object 15 MB).
REKOGNITION_S3_MAX_BYTES = 15 * 1024 * 1024
REKOGNITION_FORMATS = frozenset({"jpeg", "png"})
REKOGNITION_MIN_SIDE = 80
REKOGNITION_MAX_SIDE = 10_000

_BUCKET_CHARS = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Reserved by S3 for other kinds of buckets and access points (general purpose bucket naming rules).
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Route = Literal["s3object", "download"]
# DetectLabels' answers to an Image.S3Object it could not take as it is (another region, an object it cannot
# read, bytes that are not what their header says): the entry is then read and converted, once.
S3OBJECT_REFUSALS = frozenset({"InvalidS3ObjectException", "InvalidImageFormatException", "ImageTooLargeException"})


@dataclass(frozen=True)
class S3ObjectRef:
    """One object of a source bucket (``version_id`` None: the current version)."""

    bucket: str
    key: str
    version_id: str | None = None

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def rekognition_image(self) -> dict[str, Any]:
        """DetectLabels' ``Image`` argument for this object."""
        s3_object: dict[str, str] = {"Bucket": self.bucket, "Name": self.key}
        if self.version_id:
            s3_object["Version"] = self.version_id
        return {"S3Object": s3_object}

    def get_object_args(self) -> dict[str, str]:
        """``GetObject`` arguments for this object (the first read, the download-and-convert path)."""
        args = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id:
            args["VersionId"] = self.version_id
        return args


def is_s3_url(url: str) -> bool:
    """Whether an entry's URL names an S3 object (``s3://``, any case) rather than an HTTP resource."""
    return url[: len(SCHEME)].lower() == SCHEME


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a general purpose S3 bucket, or None when it can.

    >>> bucket_name_problem("my-photos") is None, bucket_name_problem("10.0.0.1")
    (True, 'bucket names are not IP addresses')
    """
    if not _BUCKET_CHARS.fullmatch(name):
        return (
            "bucket names have 3-63 lower-case letters, digits, dots and hyphens, "
            "and start and end with a letter or digit"
        )
    if ".." in name:
        return "bucket names have no two adjacent dots"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return "bucket names are not IP addresses"
    if name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        return "the name has a prefix or suffix S3 reserves for other kinds of buckets"
    return None


def parse_s3_url(url: str, version_id: Any = None) -> S3ObjectRef:
    """``s3://bucket/key`` plus the entry's ``versionId`` as an :class:`S3ObjectRef`, or :class:`InvalidUrl`."""
    if not isinstance(url, str) or not is_s3_url(url):
        raise InvalidUrl(f"not an s3:// URL: {str(url)[:100]!r}")
    bucket, slash, key = url[len(SCHEME) :].partition("/")
    if not bucket or not slash or not key:
        raise InvalidUrl(f"{url[:200]!r} does not name an object: expected s3://bucket/key")
    problem = bucket_name_problem(bucket)
    if problem:
        raise InvalidUrl(f"{bucket[:100]!r} is not a valid bucket name: {problem}")
    if len(key.encode("utf-8", "surrogatepass")) > S3_MAX_KEY_BYTES:
        raise InvalidUrl(f"the key is longer than S3's {S3_MAX_KEY_BYTES} bytes")
    if _CONTROL.search(key):
        raise InvalidUrl("the key contains control characters")
    if key.endswith("/"):
        raise InvalidUrl(f"s3://{bucket}/{key[:100]} is a folder, not an object")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidUrl("the key is not valid Unicode text (a lone surrogate)") from exc
    return S3ObjectRef(bucket=bucket, key=key, version_id=_version(version_id))


def version_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an entry's ``versionId`` (None: it can, or it is absent).

    >>> version_problem("3HL4kqtJvjVBH40Nrjfkd") is None, version_problem(7)
    (True, "versionId must be a non-empty string, not '7'")
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        return f"versionId must be a non-empty string, not {str(value)[:50]!r}"
    if len(value) > MAX_VERSION_ID_CHARS or _CONTROL.search(value):
        return "versionId is not an S3 version id (too long or control characters)"
    return None


def _version(value: Any) -> str | None:
    problem = version_problem(value)
    if problem:
        raise InvalidUrl(problem)
    return str(value) if value is not None else None


def check_source_allowed(ref: S3ObjectRef, allowed: Collection[str]) -> None:
    """:class:`SourceNotAllowed` unless ``ref``'s bucket is in ``allowed`` (``Settings.source_bucket_names``)."""
    if ref.bucket not in allowed:
        raise SourceNotAllowed(
            f"bucket {ref.bucket!r} is not one of the source buckets (SOURCE_BUCKETS)", bucket=ref.bucket
        )


def parse_s3_source(url: str, version_id: Any, *, allowed: Collection[str]) -> S3ObjectRef:
    """Parse and allow-list check in one call: what the pipeline does first with an ``s3://`` entry."""
    ref = parse_s3_url(url, version_id)
    check_source_allowed(ref, allowed)
    return ref


def s3_object_route(
    size: int, image_format: str | None, width: int | None, height: int | None, *, as_is: bool = True
) -> Route:
    """``s3object`` when DetectLabels can read the object as it is, else ``download`` (read, convert, label bytes).

    ``size``, format and sides come from the object's first read (a ranged GetObject of 128 KiB: its
    ``Content-Range`` and the JPEG/PNG header); ``as_is`` False (a CMYK JPEG, a 16-bit PNG, a PNG with an
    EXIF orientation: :class:`~labeler.adapters.image_header.ImageHeader`) takes the download path too.
    Anything unknown takes the download path, where the usual checks give the usual error codes
    (``image_too_small``, ``unsupported_image``, ...).

    >>> s3_object_route(2_000_000, "jpeg", 4000, 3000), s3_object_route(2_000_000, "webp", 4000, 3000)
    ('s3object', 'download')
    >>> s3_object_route(20_000_000, "png", 4000, 3000), s3_object_route(2_000, "png", 60, 60)
    ('download', 'download')
    """
    if image_format not in REKOGNITION_FORMATS or width is None or height is None or not as_is:
        return "download"
    if size > REKOGNITION_S3_MAX_BYTES:
        return "download"  # the download path downscales (or refuses above MAX_IMAGE_BYTES)
    if min(width, height) < REKOGNITION_MIN_SIDE or max(width, height) > REKOGNITION_MAX_SIDE:
        return "download"
    return "s3object"


def source_identity(ref: S3ObjectRef, *, version_id: str | None = None, etag: str | None = None) -> str:
    """What the label cache remembers the object by: ``s3://b/k?versionId=…`` or, unversioned, ``s3://b/k#etag=…``.

    ``version_id``/``etag`` come from the object's first read (the entry's own versionId wins). A version never
    changes; an ETag changes with the content, so the same identity means the same labels.

    >>> source_identity(S3ObjectRef("b1-photos", "a.jpg"), etag='"9b2cf535f27731c974343645a3985328"')
    's3://b1-photos/a.jpg#etag=9b2cf535f27731c974343645a3985328'
    """
    version = ref.version_id or version_id
    if version and version != "null":  # "null": the object predates versioning, its content may change
        return f"{ref.url}?versionId={version}"
    if etag:
        return f"{ref.url}#etag={etag.strip(chr(34))}"
    raise ValueError("an S3 source needs a version id or an ETag to be cached")
