"""Amazon Rekognition ``DetectLabels`` behind the :class:`LabelBackend` interface.

Every attempt, first or retried, takes a slot of the rate limiter (the stack-wide quota, see
``labeler.adapters.quota_table``), so retries never add load the limiter does not know about.
The slot is reserved before the request is built and waited for in botocore's ``before-send``
hook, after serialisation and signing: the request leaves at the slot's moment, however long a
big image took to encode.
botocore therefore does not retry at all (``total_max_attempts=1``): this module retries
throttling, 5xx answers and connection errors itself, with exponential backoff and full jitter,
up to a generous budget (:class:`RetryPolicy`); only then does an entry get ``throttled``.

With a ``deadline`` no attempt starts that could not finish before it: the slot must come early
enough, and the read timeout is cut to the time left; otherwise :class:`OutOfTime` is raised.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labeler.adapters.labels.base import LabelResult, result_from_response
from labeler.adapters.ratelimit import SlotLimiter
from labeler.models.errors import LabelingFailed, OutOfTime, Throttled
from labeler.models.label_options import LabelOptions

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "Throttling",
        "TooManyRequestsException",
    }
)
# botocore's standard retry mode calls these transient, as well as any 500/502/503/504 answer
# (Rekognition's InternalServerError is one).
TRANSIENT_CODES = frozenset(
    {"InternalServerError", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete"}
)
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
READ_TIMEOUT = 15.0
CONNECT_TIMEOUT = 3.0
# Shorter read timeouts for attempts close to the deadline (the longest that fits the time left).
SHORT_READ_TIMEOUTS = (8.0, 4.0, 2.0, 1.0, 0.5)


def build_client(max_pool_connections: int = 64, read_timeout: float = READ_TIMEOUT) -> Any:
    """A Rekognition client that never retries by itself (each retry must take a limiter slot)."""
    import boto3

    from labeler.adapters.aws_config import client_config

    config = client_config(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
        connect_timeout=min(CONNECT_TIMEOUT, read_timeout),
        read_timeout=read_timeout,
    )
    return boto3.client("rekognition", config=config)


@dataclass(frozen=True)
class RetryPolicy:
    """How long a call keeps trying: ``max_attempts`` in all, full-jitter backoff between them.

    The defaults outlast about half a minute of throttling (1 + 11 retries, waits drawn up to
    0.2, 0.4, ... capped at 8 s: ~26 s in all on average) before an entry is recorded as ``throttled``.
    """

    max_attempts: int = 12
    base_delay: float = 0.2
    max_delay: float = 8.0
    # The shortest time an attempt may have: no slot is taken, no request sent, with less left.
    min_attempt_seconds: float = 1.0

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (1, 2, ...): uniform in [0, min(cap, base × 2^(retry-1))]."""
        return rng() * min(self.max_delay, self.base_delay * 2 ** (retry - 1))


class RekognitionBackend:
    """``detect_labels`` → Rekognition's Label objects, unchanged."""

    name = "rekognition"

    def __init__(
        self,
        client: Any | None = None,
        limiter: SlotLimiter | None = None,
        *,
        retry: RetryPolicy | None = None,
        client_factory: Callable[[float], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._client = client if client is not None else build_client()
        self._limiter = limiter
        self.retry = retry or RetryPolicy()
        self._client_factory = client_factory or self._like_the_client
        self._short_clients: dict[float, Any] = {}
        self._short_lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._pending = threading.local()  # this thread's reserved slot, until its request is sent
        self._watch(self._client)
        # The label model version Rekognition last answered with; the label cache checks it.
        self.model_version: str | None = None

    def prepare(self, likely: bool = True) -> None:
        """A call may come: get the limiter ready for it in the background, and, when the call is ``likely``, book
        its first slots and count this thread as a caller to come (``SlotLimiter.prepare`` and ``expect``)."""
        if self._limiter is not None:
            self._limiter.prepare(book=likely)
            if likely:
                self._limiter.expect()

    def release(self) -> None:
        """The entry this thread prepared for is done: a call it announced and did not make is expected no more."""
        if self._limiter is not None:
            self._limiter.unexpect()

    def detect_labels(
        self, image: bytes, *, min_confidence: float, max_labels: int, deadline: float | None = None
    ) -> LabelResult:
        params = {"MinConfidence": float(min_confidence), "MaxLabels": int(max_labels)}
        return self._request({"Bytes": image}, params, deadline)

    def detect(self, image: bytes, options: LabelOptions, deadline: float | None = None) -> LabelResult:
        """DetectLabels with every option (``options.request_params()``); ``ImageProperties`` in ``result.extra``."""
        return self._request({"Bytes": image}, options.request_params(), deadline)

    def detect_s3_object(
        self, s3_object: Mapping[str, str], options: LabelOptions, deadline: float | None = None
    ) -> LabelResult:
        """DetectLabels on ``Image.S3Object`` (``Bucket``, ``Name``, ``Version``): Rekognition reads the object itself,
        with this function's permissions, from a bucket in its own region. The same limiter, retries, deadline and
        options as the bytes call; a refusal is :class:`LabelingFailed` with ``aws_code``
        (``InvalidS3ObjectException`` when it cannot read the object)."""
        return self._request({"S3Object": dict(s3_object)}, options.request_params(), deadline)

    def _request(self, image: dict[str, Any], params: dict[str, Any], deadline: float | None) -> LabelResult:
        from botocore.exceptions import ClientError

        latest_start = None if deadline is None else deadline - self.retry.min_attempt_seconds
        last_error: Exception | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            if attempt > 1:
                delay = self.retry.backoff(attempt - 1, self._rng)
                if latest_start is not None and self._clock() + delay > latest_start:
                    raise OutOfTime(f"DetectLabels failed ({_code(last_error)}); no time left to retry")
                self._sleep(delay)
            # every attempt takes a slot of the shared quota, at most ``latest_start``
            slot = self._limiter.reserve(latest_start) if self._limiter is not None else None
            self._pending.slot = (slot, latest_start)
            try:
                client = self._client_for(deadline, self._clock() if slot is None else slot)
                response = client.detect_labels(Image=image, **params)
            except ClientError as exc:
                if not _retryable(exc):
                    code = _code(exc)
                    message = exc.response.get("Error", {}).get("Message", str(exc))
                    raise LabelingFailed(f"Rekognition {code}: {message}", aws_code=code) from exc
                last_error = exc
                continue
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                last_error = exc
                continue
            finally:
                self._settle_slot()
            self.model_version = response.get("LabelModelVersion") or self.model_version
            return result_from_response(response, self.name)
        code = _code(last_error)
        attempts = self.retry.max_attempts
        if code in THROTTLING_CODES:
            raise Throttled(f"Rekognition kept throttling after {attempts} attempts", aws_code=code)
        raise LabelingFailed(f"Rekognition failed {attempts} times: {code}: {last_error}", aws_code=code)

    def _send_at_slot(self, **_: Any) -> None:
        """botocore's ``before-send`` hook: hold the signed request until this thread's slot."""
        pending = getattr(self._pending, "slot", None)
        self._pending.slot = None
        if pending is not None and pending[0] is not None and self._limiter is not None:
            self._limiter.wait(*pending)

    def _settle_slot(self) -> None:
        """A slot reserved for a request that failed before being sent is lost: count it so."""
        pending = getattr(self._pending, "slot", None)
        self._pending.slot = None
        if pending is not None and pending[0] is not None and self._limiter is not None:
            self._limiter.forfeit(pending[0])

    def _watch(self, client: Any) -> Any:
        client.meta.events.register(
            "before-send.rekognition.DetectLabels", self._send_at_slot, unique_id=f"labeler-slot-{id(self)}"
        )
        return client

    def _client_for(self, deadline: float | None, start: float) -> Any:
        """The client whose read timeout fits the time left at ``start`` before ``deadline``."""
        if deadline is None:
            return self._client
        left = deadline - start
        if left < self.retry.min_attempt_seconds:
            raise OutOfTime("no time left for a DetectLabels attempt")
        if left >= self._client.meta.config.read_timeout + self._client.meta.config.connect_timeout:
            return self._client
        # connect (pooled connections skip it) + read must fit: about twice the read timeout
        timeout = next((t for t in SHORT_READ_TIMEOUTS if 2 * t <= left), SHORT_READ_TIMEOUTS[-1])
        with self._short_lock:
            if timeout not in self._short_clients:
                self._short_clients[timeout] = self._watch(self._client_factory(timeout))
            return self._short_clients[timeout]

    def _like_the_client(self, read_timeout: float) -> Any:
        """The same client with a shorter read timeout (same endpoint, region and pool size)."""
        import boto3

        from labeler.adapters.aws_config import client_config

        meta = self._client.meta
        config = meta.config.merge(
            client_config(read_timeout=read_timeout, connect_timeout=min(read_timeout, meta.config.connect_timeout))
        )
        return boto3.client("rekognition", region_name=meta.region_name, endpoint_url=meta.endpoint_url, config=config)


def _code(error: Exception | None) -> str:
    if error is None:
        return "Unknown"
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "Unknown"))
    return type(error).__name__


def _retryable(exc: Any) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = _code(exc)
    return code in THROTTLING_CODES or code in TRANSIENT_CODES or status in TRANSIENT_STATUS


def _is_connection_error(exc: Exception) -> bool:
    from botocore.exceptions import ConnectionError, HTTPClientError

    return isinstance(exc, ConnectionError | HTTPClientError)
