"""Amazon Rekognition ``DetectLabels`` behind the :class:`LabelBackend` interface.

The client is built once per container with adaptive retries (botocore retries both
``ThrottlingException`` and ``ProvisionedThroughputExceededException``); on top of that a
client-side token bucket keeps the request rate within this container's share of the
account's TPS quota, and a last slow retry round outlasts long throttling bursts, so
throttling never drops an image.
"""

from __future__ import annotations

import random
import time
from typing import Any

from labeler.adapters.labels.base import LabelResult
from labeler.adapters.ratelimit import TokenBucket
from labeler.models.errors import LabelingFailed, Throttled

THROTTLING_CODES = frozenset(
    {"ThrottlingException", "ProvisionedThroughputExceededException", "LimitExceededException"}
)


def build_client(max_pool_connections: int = 64, max_attempts: int = 8, retry_mode: str = "adaptive") -> Any:
    """A Rekognition client with adaptive retries (client-side rate adapts to throttling) and enough
    pooled connections for our threads."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": retry_mode, "max_attempts": max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.client("rekognition", config=config)


class RekognitionBackend:
    """``detect_labels`` → Rekognition's Label objects, unchanged."""

    name = "rekognition"

    def __init__(
        self,
        client: Any | None = None,
        limiter: TokenBucket | None = None,
        throttle_rounds: int = 4,
        throttle_base_delay: float = 1.0,
    ) -> None:
        self._client = client if client is not None else build_client()
        self._limiter = limiter
        self._throttle_rounds = throttle_rounds
        self._throttle_base_delay = throttle_base_delay
        # The label model version Rekognition last answered with; the label cache checks it.
        self.model_version: str | None = None

    def detect_labels(
        self, image: bytes, *, min_confidence: float, max_labels: int, deadline: float | None = None
    ) -> LabelResult:
        from botocore.exceptions import ClientError

        last_error: ClientError | None = None
        for attempt in range(self._throttle_rounds + 1):
            if attempt:
                # botocore already retried with backoff; wait longer before a fresh round.
                delay = self._throttle_base_delay * (2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random()))  # jitter, not crypto
            if self._limiter is not None:
                self._limiter.acquire()
            try:
                response = self._client.detect_labels(
                    Image={"Bytes": image}, MinConfidence=float(min_confidence), MaxLabels=int(max_labels)
                )
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "Unknown")
                if code in THROTTLING_CODES:
                    last_error = exc
                    continue
                message = exc.response.get("Error", {}).get("Message", str(exc))
                raise LabelingFailed(f"Rekognition {code}: {message}", aws_code=code) from exc
            self.model_version = response.get("LabelModelVersion") or self.model_version
            return LabelResult(
                labels=response.get("Labels", []),
                model_version=response.get("LabelModelVersion", ""),
                backend=self.name,
            )
        raise Throttled(
            f"Rekognition kept throttling after {self._throttle_rounds + 1} retry rounds",
            aws_code=last_error.response.get("Error", {}).get("Code") if last_error else None,
        )
