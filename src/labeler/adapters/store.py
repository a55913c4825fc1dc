"""The only module that talks to S3: read manifests, write records and reports, the label cache.

>>> store = S3Store(boto3.client("s3"), output_bucket="my-results")   # doctest: +SKIP
>>> store.put_json("results/m/cat.json", {"image_id": "cat", "labels": []})  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from labeler.models.errors import ManifestUnreadable
from labeler.models.records import ManifestRef


@dataclass(frozen=True)
class OpenedManifest:
    ref: ManifestRef
    body: BinaryIO


def build_s3_client(max_pool_connections: int = 64) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        config=Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=max_pool_connections),
    )


class S3Store:
    """Reads from any bucket named by an event; writes only to ``output_bucket``."""

    def __init__(self, client: Any, output_bucket: str) -> None:
        self.client = client
        self.output_bucket = output_bucket

    # --- manifests -----------------------------------------------------------------------
    def open_manifest(self, ref: ManifestRef) -> OpenedManifest:
        """Open the manifest object for streaming; ``ManifestUnreadable`` if S3 refuses it."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
        if ref.version_id:
            kwargs["VersionId"] = ref.version_id
        try:
            response = self.client.get_object(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ManifestUnreadable(
                f"cannot read s3://{ref.bucket}/{ref.key}: {error.get('Code')} {error.get('Message', '')}".strip(),
                aws_code=error.get("Code"),
            ) from exc
        opened = ManifestRef(
            bucket=ref.bucket,
            key=ref.key,
            etag=(response.get("ETag") or ref.etag or "").strip('"') or None,
            version_id=response.get("VersionId") or ref.version_id,
            size=response.get("ContentLength", ref.size),
            sequencer=ref.sequencer,
        )
        return OpenedManifest(ref=opened, body=response["Body"])

    # --- JSON objects in the output bucket ----------------------------------------------------
    def put_json(
        self, key: str, document: dict[str, Any], metadata: dict[str, str] | None = None, *, if_absent: bool = False
    ) -> bool:
        """Write ``document``; with ``if_absent`` only if nothing is there yet (returns False then)."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {
            "Bucket": self.output_bucket,
            "Key": key,
            "Body": json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
            "ContentType": "application/json",
            "Metadata": metadata or {},
        }
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**kwargs)
        except ClientError as exc:
            if if_absent and exc.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}:
                return False
            raise
        return True

    def get_json(self, key: str) -> dict[str, Any] | None:
        """The JSON document at ``key``, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.output_bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        document: dict[str, Any] = json.loads(response["Body"].read())
        return document

    def head_metadata(self, key: str) -> dict[str, str] | None:
        """The user metadata of ``key`` (cheap: no body), or None when there is no object."""
        from botocore.exceptions import ClientError

        try:
            response = self.client.head_object(Bucket=self.output_bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise
        metadata: dict[str, str] = response.get("Metadata", {})
        return metadata

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.output_bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]
