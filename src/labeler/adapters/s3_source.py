"""The objects ``s3://`` entries name: the only reader of source buckets (``SOURCE_BUCKETS``).

Two GetObject requests at most per object, on the S3 API only (no URL is built, nothing else is contacted):

* :meth:`S3Sources.read_start`: a ranged GET of the first ``START_BYTES`` (128 KiB). Its answer says what a
  HEAD would (the size in ``Content-Range``, the ETag, the version id) and holds the image's header, so one
  request gives the cache identity, the format and the sides (the route);
* :meth:`S3Sources.read_object`: the whole object, bounded by ``max_bytes`` (``MAX_IMAGE_BYTES``) before and
  while reading, pinned to what the first read saw: its version, or (unversioned) its ETag with ``If-Match``.

Every refusal is :class:`~labeler.models.errors.SourceUnreadable` with S3's code (``aws_code``): no such key,
version or bucket; access denied (without ``s3:ListBucket``, which the functions do not have, S3 answers 403
for a key that does not exist too); archived; changed since the first read; S3 still failing after the
client's retries. Never an AccessDenied stack trace.

>>> sources = S3Sources(boto3.client("s3"))                                  # doctest: +SKIP
>>> start = sources.read_start(S3ObjectRef("my-photos", "cat.jpg"))          # doctest: +SKIP
>>> start.size, start.etag, len(start.start)                                  # doctest: +SKIP
(48213, '"9b2cf535f27731c974343645a3985328"', 48213)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

from labeler.models.errors import ImageTooLarge, SourceUnreadable

if TYPE_CHECKING:
    from labeler.logic.s3_sources import S3ObjectRef

START_BYTES = 128 * 1024  # a JPEG's frame header follows its metadata segments (EXIF, ICC, XMP): usually well within
_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"})
_CHANGED = frozenset({"PreconditionFailed", "412"})


@dataclass(frozen=True)
class SourceObject:
    """What the first read of a source object found: its size, ETag, version id and first bytes."""

    size: int
    etag: str | None
    version_id: str | None  # None or "null": unversioned (or written before versioning was enabled)
    last_modified: str | None  # ISO 8601, UTC
    start: bytes = field(repr=False)

    @property
    def complete(self) -> bool:
        """The first read holds the whole object (a small one): nothing more needs reading."""
        return len(self.start) >= self.size

    @property
    def pinned_version(self) -> str | None:
        """The version every later request (the whole object, DetectLabels' S3Object) asks for."""
        return self.version_id if self.version_id and self.version_id != "null" else None


class S3Sources:
    """Reads source objects with the functions' S3 client (its timeouts and retries)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def read_start(self, ref: S3ObjectRef) -> SourceObject:
        """One ranged GET: the object's size, ETag, version id and first ``START_BYTES``."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(**ref.get_object_args(), Range=f"bytes=0-{START_BYTES - 1}")
            start = _read(response, START_BYTES)
        except ClientError as exc:
            if _code(exc) == "InvalidRange":  # no byte 0: the object is empty
                return SourceObject(size=0, etag=None, version_id=ref.version_id, last_modified=None, start=b"")
            raise _unreadable(ref, exc) from exc
        except BotoCoreError as exc:
            raise _unreadable(ref, exc) from exc
        matched = _CONTENT_RANGE.fullmatch(str(response.get("ContentRange", "")))
        size = int(matched.group(1)) if matched else int(response.get("ContentLength", len(start)))
        return SourceObject(
            size=size,
            etag=response.get("ETag"),
            version_id=response.get("VersionId") or ref.version_id,
            last_modified=_iso(response.get("LastModified")),
            start=start,
        )

    def read_object(self, ref: S3ObjectRef, seen: SourceObject, *, max_bytes: int) -> bytes:
        """The whole object ``seen`` described (same version, or same ETag), at most ``max_bytes``.

        :class:`ImageTooLarge` before reading anything when it is larger, :class:`SourceUnreadable` otherwise.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        if seen.size > max_bytes:
            raise _too_large(ref, seen.size, max_bytes)
        args = ref.get_object_args()
        if seen.pinned_version:
            args["VersionId"] = seen.pinned_version
        elif seen.etag:
            args["IfMatch"] = seen.etag  # unversioned: the bytes labeled are the ones the identity names
        try:
            response = self.client.get_object(**args)
            declared = int(response.get("ContentLength") or 0)
            if declared > max_bytes:
                response["Body"].close()
                raise _too_large(ref, declared, max_bytes)
            data = _read(response, max_bytes + 1)
        except ClientError as exc:
            raise _unreadable(ref, exc) from exc
        except BotoCoreError as exc:
            raise _unreadable(ref, exc) from exc
        if len(data) > max_bytes:
            raise _too_large(ref, len(data), max_bytes)
        return data


def _read(response: dict[str, Any], limit: int) -> bytes:
    body = response["Body"]
    try:
        return bytes(body.read(limit))
    finally:
        body.close()


def _too_large(ref: S3ObjectRef, size: int, max_bytes: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"{ref.url} is {size:,} bytes, more than MAX_IMAGE_BYTES ({max_bytes:,}) allows to read and convert",
        max_bytes=max_bytes,
    )


def _code(exc: Any) -> str:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _unreadable(ref: S3ObjectRef, exc: Exception) -> SourceUnreadable:
    code = _code(exc) or type(exc).__name__
    version = f" (version {ref.version_id})" if ref.version_id else ""
    where = f"{ref.url}{version}"
    if code in _MISSING:
        message = f"{where} does not exist"
    elif code == "NoSuchVersion" or (ref.version_id and code in {"400", "InvalidArgument"}):
        message = f"{where}: no such version of the object"
    elif code == "NoSuchBucket":
        message = f"the bucket {ref.bucket!r} does not exist"
    elif code in _DENIED:
        message = (
            f"S3 denies reading {where}: it does not exist (without s3:ListBucket S3 answers 403 for a missing key), "
            "or the functions may not read it (another account's bucket policy, an SSE-KMS key without kms:Decrypt)"
        )
    elif code == "InvalidObjectState":
        message = f"{where} is archived (S3 Glacier Flexible Retrieval or Deep Archive): restore it first"
    elif code in _CHANGED:
        message = f"{where} changed while it was being read: upload the manifest again"
    else:
        message = f"S3 could not serve {where}: {code}: {exc}"[:500]
    details: dict[str, Any] = {"bucket": ref.bucket, "key": ref.key, "aws_code": code}
    if ref.version_id:
        details["version_id"] = ref.version_id
    return SourceUnreadable(message, **details)


def _iso(value: Any) -> str | None:
    if value is None or not hasattr(value, "astimezone"):
        return None
    return str(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
