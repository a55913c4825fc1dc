"""Every failure the pipeline can record, one exception class per stable error code.

An entry that fails ends in an error record ``{"image_id", "url", "error": {"code", "message"}}``
whose ``code`` is one of :class:`ErrorCode`. The codes are part of the public contract
(docs/reference.md, "Error codes"): never rename one, only add.

>>> raise BlockedAddress("10.0.0.7 is a private address")
Traceback (most recent call last):
labeler.models.errors.BlockedAddress: 10.0.0.7 is a private address
"""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    # manifest entry
    INVALID_ENTRY = "invalid_entry"
    DUPLICATE_ID = "duplicate_id"
    # URL and network
    INVALID_URL = "invalid_url"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    BLOCKED_ADDRESS = "blocked_address"
    DNS_ERROR = "dns_error"
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    REDIRECT_LOOP = "redirect_loop"
    # an s3:// entry naming a bucket outside SOURCE_BUCKETS
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    # an s3:// entry whose object (or version) does not exist, is refused, archived or cannot be read now
    SOURCE_UNREADABLE = "source_unreadable"
    TOO_LARGE = "too_large"
    EMPTY_BODY = "empty_body"
    # image content
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_IMAGE = "unsupported_image"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_SMALL = "image_too_small"
    DECOMPRESSION_BOMB = "decompression_bomb"
    # labeling
    LABEL_ERROR = "label_error"
    THROTTLED = "throttled"
    # the run's DetectLabels cap was reached before this entry could be labeled
    OVER_BUDGET = "over_budget"
    # anything unexpected while processing one entry
    INTERNAL_ERROR = "internal_error"
    # whole manifest
    MANIFEST_UNREADABLE = "manifest_unreadable"
    MANIFEST_INVALID = "manifest_invalid"
    MANIFEST_TOO_LARGE = "manifest_too_large"
    MANIFEST_TOO_MANY_ENTRIES = "manifest_too_many_entries"
    MANIFEST_EMPTY = "manifest_empty"
    # a work batch that could not be processed (dead-lettered)
    BATCH_FAILED = "batch_failed"
    # whole manifest: its "options" object asks for something outside the stack's bounds
    MANIFEST_OPTIONS_INVALID = "manifest_options_invalid"


class LabelerError(Exception):
    """Base of every recorded failure: a stable ``code`` plus a human message and details."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a record: ``{"code", "message", ...details}``."""
        return {"code": str(self.code), "message": self.message, **self.details}

    @staticmethod
    def from_dict(error: dict[str, Any]) -> LabelerError:
        """The error :meth:`to_dict` described (a work batch carries rejected entries' errors this way).

        >>> LabelerError.from_dict({"code": "duplicate_id", "message": "m", "first_index": 0}).to_dict()
        {'code': 'duplicate_id', 'message': 'm', 'first_index': 0}
        """
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        kind = _class_by_code().get(str(error.get("code")), InternalError)
        return kind(str(error.get("message", "")), **details)


# --- manifest entries -------------------------------------------------------------------
class InvalidEntry(LabelerError):
    code = ErrorCode.INVALID_ENTRY


class DuplicateId(LabelerError):
    code = ErrorCode.DUPLICATE_ID


# --- URL and network -----------------------------------------------------------------------
class InvalidUrl(LabelerError):
    code = ErrorCode.INVALID_URL


class UnsupportedScheme(LabelerError):
    code = ErrorCode.UNSUPPORTED_SCHEME


class BlockedAddress(LabelerError):
    code = ErrorCode.BLOCKED_ADDRESS


class DnsError(LabelerError):
    code = ErrorCode.DNS_ERROR


class ConnectionFailed(LabelerError):
    code = ErrorCode.CONNECTION_ERROR


class DownloadTimeout(LabelerError):
    code = ErrorCode.TIMEOUT


class HttpStatusError(LabelerError):
    code = ErrorCode.HTTP_STATUS


class TooManyRedirects(LabelerError):
    code = ErrorCode.TOO_MANY_REDIRECTS


class RedirectLoop(LabelerError):
    code = ErrorCode.REDIRECT_LOOP


class ImageTooLarge(LabelerError):
    """The body is (or declares to be) larger than ``MAX_IMAGE_BYTES``."""

    code = ErrorCode.TOO_LARGE


class EmptyBody(LabelerError):
    code = ErrorCode.EMPTY_BODY


# --- image content -----------------------------------------------------------------------
class NotAnImage(LabelerError):
    code = ErrorCode.NOT_AN_IMAGE


class UnsupportedImage(LabelerError):
    code = ErrorCode.UNSUPPORTED_IMAGE


class CorruptImage(LabelerError):
    code = ErrorCode.CORRUPT_IMAGE


class ImageTooSmall(LabelerError):
    code = ErrorCode.IMAGE_TOO_SMALL


class DecompressionBomb(LabelerError):
    code = ErrorCode.DECOMPRESSION_BOMB


# --- labeling ------------------------------------------------------------------------------
class LabelingFailed(LabelerError):
    code = ErrorCode.LABEL_ERROR


class Throttled(LabelerError):
    """Throttling persisted after every retry; the entry is recorded, never silently dropped."""

    code = ErrorCode.THROTTLED


class OverBudget(LabelerError):
    """The run reached its DetectLabels cap (``MAX_LABEL_CALLS_PER_MANIFEST`` or the manifest's own
    ``max_label_calls``): this entry needed a call and none was made. A re-upload with a higher cap
    labels it; entries already labeled then come from the cache."""

    code = ErrorCode.OVER_BUDGET


class InternalError(LabelerError):
    code = ErrorCode.INTERNAL_ERROR


# --- whole manifest ------------------------------------------------------------------------
class ManifestError(LabelerError):
    code = ErrorCode.MANIFEST_INVALID


class ManifestUnreadable(ManifestError):
    code = ErrorCode.MANIFEST_UNREADABLE


class ManifestInvalid(ManifestError):
    code = ErrorCode.MANIFEST_INVALID


class ManifestTooLarge(ManifestError):
    code = ErrorCode.MANIFEST_TOO_LARGE


class ManifestTooManyEntries(ManifestError):
    code = ErrorCode.MANIFEST_TOO_MANY_ENTRIES


class ManifestEmpty(ManifestError):
    code = ErrorCode.MANIFEST_EMPTY


class BatchFailed(LabelerError):
    code = ErrorCode.BATCH_FAILED


class SourceNotAllowed(LabelerError):
    """An ``s3://bucket/key`` entry names a bucket outside ``SOURCE_BUCKETS``: nothing is read from it."""

    code = ErrorCode.SOURCE_NOT_ALLOWED


class SourceUnreadable(LabelerError):
    """An ``s3://bucket/key`` entry's object cannot be read: no such key or version, access denied, archived,
    changed while it was read, or S3 kept failing (``aws_code`` holds S3's answer)."""

    code = ErrorCode.SOURCE_UNREADABLE


def _leaf_classes(base: type[LabelerError]) -> list[type[LabelerError]]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_leaf_classes(sub))
    return found


@functools.cache
def _class_by_code() -> dict[str, type[LabelerError]]:
    """One class per code (ManifestError shares manifest_invalid with ManifestInvalid: the leaf wins).

    Built on first use, so that every class of this module (wherever it is defined) is known.
    """
    return {str(cls.code): cls for cls in _leaf_classes(LabelerError) if cls is not ManifestError}


# --- not a recorded failure ------------------------------------------------------------------------
class ManifestReadInterrupted(RuntimeError):
    """The manifest could not be read for a reason that is not its own (S3 5xx, throttling, a stream
    broken mid-read). Not a :class:`ManifestError`: no report says ``failed``; the invocation fails so
    that it is retried.
    """


class OutOfTime(RuntimeError):
    """A step of an entry could not finish before the invocation's deadline.

    Not a :class:`LabelerError`: no record is written for the entry; it is left unfinished and the
    retry (Lambda's, or SQS's redelivery) does it.
    """


class ManifestOptionsInvalid(ManifestError):
    """The manifest's ``"options"`` object is malformed, unknown or outside the bounds the stack sets."""

    code = ErrorCode.MANIFEST_OPTIONS_INVALID
