"""The original article's labeler, kept as the speed baseline: one image after the other.

For each entry: download it with urllib, send the bytes to Rekognition ``DetectLabels``, write
``{"image_id", "labels"}`` to S3. No concurrency, no cache, no checks: exactly the loop the
product replaces. It uses the same endpoints as the product (``AWS_ENDPOINT_URL_*``), the same
``MinConfidence``/``MaxLabels`` defaults and the same inputs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any


def make_clients() -> tuple[Any, Any]:
    import boto3

    return boto3.client("rekognition"), boto3.client("s3")


def label_all(
    entries: list[dict[str, str]],
    output_bucket: str,
    clients: tuple[Any, Any] | None = None,
    *,
    min_confidence: float = 55.0,
    max_labels: int = 50,
) -> dict[str, Any]:
    """Label ``entries`` (``{"id", "url"}``) one by one; returns per-step timings in seconds."""
    rekognition, s3 = clients or make_clients()
    download_s, label_s, store_s = [], [], []
    for entry in entries:
        started = time.perf_counter()
        with urllib.request.urlopen(entry["url"], timeout=30) as response:
            data = response.read()
        downloaded = time.perf_counter()
        result = rekognition.detect_labels(Image={"Bytes": data}, MinConfidence=min_confidence, MaxLabels=max_labels)
        labeled = time.perf_counter()
        s3.put_object(
            Bucket=output_bucket,
            Key=f"results/{entry['id']}.json",
            Body=json.dumps({"image_id": entry["id"], "labels": result["Labels"]}).encode(),
        )
        stored = time.perf_counter()
        download_s.append(downloaded - started)
        label_s.append(labeled - downloaded)
        store_s.append(stored - labeled)
    return {"download_s": download_s, "label_s": label_s, "store_s": store_s}
