"""The only module that talks to S3: read manifests, write records and reports, the label cache.

>>> store = S3Store(boto3.client("s3"), output_bucket="my-results")   # doctest: +SKIP
>>> store.put_json("results/m/cat.json", {"image_id": "cat", "labels": []})  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any, BinaryIO

from labeler.models.errors import ManifestReadInterrupted, ManifestUnreadable
from labeler.models.records import ManifestRef

# The manifest's own fault (refused, deleted): a report says so. Anything else (5xx, SlowDown,
# throttling, a reset connection) is S3's or the network's, and the invocation is retried.
PERMANENT_READ_ERRORS = frozenset(
    {"AccessDenied", "403", "NoSuchKey", "NoSuchVersion", "NoSuchBucket", "404", "InvalidObjectState"}
)
# 412: the condition did not hold; 409: a concurrent conditional write won (S3 asks to retry).
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


@dataclass(frozen=True)
class OpenedManifest:
    ref: ManifestRef
    body: BinaryIO


@dataclass(frozen=True)
class ObjectHead:
    """What a ``HEAD`` tells about an object: its ETag (for ``If-Match``) and its user metadata."""

    etag: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class StoredRecord:
    """A record as stored: its ``HEAD`` (ETag, run stamp and outcome in the metadata) and its document."""

    head: ObjectHead
    document: dict[str, Any]


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing: its key and ETag (quotes removed)."""

    key: str
    etag: str


class PreconditionFailed(Exception):
    """A conditional write found the object changed (or appeared) since it was looked at: look again."""


def build_s3_client(max_pool_connections: int = 64) -> Any:
    import boto3

    from labeler.adapters.aws_config import client_config

    # Short timeouts: every S3 call of an entry (HEAD, cache, record) is a few KB; a stuck connection is
    # retried on a fresh one instead of holding a worker for botocore's default 60 s per read.
    return boto3.client(
        "s3",
        config=client_config(
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=max_pool_connections,
            connect_timeout=5,
            read_timeout=20,
        ),
    )


def _error_code(exc: Any) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _basic_utc(value: Any) -> str | None:
    """``LastModified`` (a datetime) as ``YYYYMMDDTHHMMSSZ``, which sorts as it compares."""
    if value is None or not hasattr(value, "astimezone"):
        return None
    return str(value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ"))


class S3Store:
    """Reads from any bucket named by an event; writes only to ``output_bucket``."""

    def __init__(self, client: Any, output_bucket: str) -> None:
        self.client = client
        self.output_bucket = output_bucket

    # --- manifests -----------------------------------------------------------------------
    def open_manifest(self, ref: ManifestRef) -> OpenedManifest:
        """Open the manifest object for streaming.

        Raises ``ManifestUnreadable`` when S3 refuses it for good (access denied, no such key or
        version), ``ManifestReadInterrupted`` for anything that a retry may cure.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            kwargs["VersionId"] = ref.version_id
        try:
            response = self.client.get_object(**kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            message = exc.response.get("Error", {}).get("Message", "")
            described = f"cannot read s3://{ref.bucket}/{ref.key}: {code} {message}".strip()
            if code in PERMANENT_READ_ERRORS:
                raise ManifestUnreadable(described, aws_code=code) from exc
            raise ManifestReadInterrupted(described) from exc
        except BotoCoreError as exc:  # connection errors, timeouts: S3 or the network, not the manifest
            raise ManifestReadInterrupted(f"cannot read s3://{ref.bucket}/{ref.key}: {exc}") from exc
        opened = replace(  # what the event said, completed by the object (a re-check's reference included)
            ref,
            etag=(response.get("ETag") or ref.etag or "").strip('"') or None,
            version_id=response.get("VersionId") or ref.version_id,
            size=response.get("ContentLength", ref.size),
            last_modified=_basic_utc(response.get("LastModified")) or ref.last_modified,
        )
        return OpenedManifest(ref=opened, body=response["Body"])

    # --- JSON objects in the output bucket ----------------------------------------------------
    def put_json(
        self,
        key: str,
        document: dict[str, Any],
        metadata: dict[str, str] | None = None,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str | None:
        """Write ``document``; conditionally with ``if_none_match`` (nothing there yet) or ``if_match``
        (still that ETag): :class:`PreconditionFailed` when the condition does not hold. Returns the
        written object's ETag (what a ``HEAD`` would answer, so the writer need not ask).
        """
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {
            "Bucket": self.output_bucket,
            "Key": key,
            "Body": json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            "ContentType": "application/json",
            "Metadata": metadata or {},
        }
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            response = self.client.put_object(**kwargs)
        except ClientError as exc:
            code = _error_code(exc)
            # If-Match on an object deleted meanwhile answers 404: the condition failed all the same.
            if code in _PRECONDITION_CODES or (if_match is not None and code in {"NoSuchKey", "404"}):
                raise PreconditionFailed(f"{key}: {code}") from exc
            raise
        etag = response.get("ETag")
        return str(etag) if etag else None

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Write ``data`` as it is (an index object: a deterministic key, rewritten whole by a retry)."""
        self.client.put_object(Bucket=self.output_bucket, Key=key, Body=data, ContentType=content_type)

    def get_json(self, key: str) -> dict[str, Any] | None:
        """The JSON document at ``key``, or None when there is none."""
        found = self.get_json_with_metadata(key)
        return None if found is None else found[0]

    def get_json_with_metadata(self, key: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The JSON document at ``key`` and its user metadata (which run wrote it), or None when there is none."""
        found = self.get_record(key)
        return None if found is None else (found.document, found.head.metadata)

    def get_record(self, key: str) -> StoredRecord | None:
        """The record at ``key`` with its ETag and metadata (one GET: what a ``HEAD`` says, and the body), or None."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.output_bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        head = ObjectHead(etag=str(response.get("ETag", "")), metadata=dict(response.get("Metadata", {})))
        return StoredRecord(head, json.loads(response["Body"].read()))

    def list_objects(self, bucket: str, prefix: str, start_after: str = "") -> Iterator[ListedObject]:
        """The objects of ``bucket`` under ``prefix``, in key order, after ``start_after`` (the input bucket's)."""
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        for page in paginator.paginate(**kwargs):
            for item in page.get("Contents", []):
                yield ListedObject(key=str(item["Key"]), etag=str(item.get("ETag", "")).strip('"'))

    def head(self, key: str) -> ObjectHead | None:
        """The ETag and user metadata of ``key`` (cheap: no body), or None when there is no object."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.head_object(Bucket=self.output_bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise
        return ObjectHead(etag=str(response.get("ETag", "")), metadata=dict(response.get("Metadata", {})))

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.output_bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]
