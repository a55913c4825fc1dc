"""A minimal seed-style Lambda handler: the cold-start baseline (``bench/coldstart.py``).

What the original article's function does, nothing more: boto3 clients built at import (its init), then
for each S3 record the manifest is read and every entry labeled one by one with the article's loop
(``bench/baseline.py``: urllib download, ``DetectLabels``, ``put_object``). No checks, no cache, no
concurrency. Runs in the built package next to the product, with the same environment.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote_plus

import boto3

try:
    from bench.baseline import label_all
except ImportError:  # the cold-start child puts bench/ itself on sys.path, not the repository
    from baseline import label_all  # type: ignore[no-redef]

REKOGNITION = boto3.client("rekognition")
S3 = boto3.client("s3")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    labeled = 0
    for record in event["Records"]:
        bucket, key = record["s3"]["bucket"]["name"], unquote_plus(record["s3"]["object"]["key"])
        entries = json.loads(S3.get_object(Bucket=bucket, Key=key)["Body"].read())
        label_all(entries, os.environ["OUTPUT_BUCKET"], (REKOGNITION, S3))
        labeled += len(entries)
    return {"labeled": labeled}
