"""A loopback stand-in for the Rekognition API, the only AWS part that cannot run here.

It speaks Rekognition's real wire protocol (JSON 1.1, ``X-Amz-Target: RekognitionService.DetectLabels``),
so the production client — botocore serialisation, adaptive retries, error parsing — runs
unchanged against it via ``AWS_ENDPOINT_URL_REKOGNITION``. Responses and errors are shaped
like AWS's (labels from the DetectLabels documentation's example), and it enforces the
service's input limits: JPEG/PNG only, ≤ 5 MB, sides 80–10,000 px.

It answers ``Features`` and ``Settings`` like the service: the GeneralLabels filters apply to the
sample labels by the offline backend's rules (``labeler.logic.label_filters``), IMAGE_PROPERTIES is
computed from the image bytes received (``labeler.adapters.labels.image_properties``, Rekognition's
``ImageProperties`` shape, and ``DominantColors`` on the sample Instance), out-of-range parameters get
``InvalidParameterException``; every request's ``Features`` and ``Settings`` are recorded in
``state.requests``.

Like the service, it can enforce a TPS quota (``state.quota_tps``): one quota for every client of
the server, whatever process it runs in; a call that would make more than ``quota_tps`` accepted
calls within any one second (a sliding window) gets ``ThrottlingException``, as AWS answers an
account that exceeds its DetectLabels quota. Throttled calls are counted (``state.throttled``).

``Image.S3Object`` (Bucket, Name, Version) is read from the embedded S3 (``state.s3_endpoint_url``,
else ``AWS_ENDPOINT_URL_S3``), as the service reads the caller's bucket: up to 15 MB, the same
formats and sides; an object it cannot read is ``InvalidS3ObjectException``, as in AWS, and so is
every object of ``state.other_region_buckets`` (the service reads buckets of its own region only).
Each request's ``Image`` kind (``"Bytes"`` or ``"S3Object"``) is in ``state.requests``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from labeler.adapters.labels.image_properties import analyze_bytes
from labeler.logic.label_filters import apply_filters
from labeler.models.errors import LabelingFailed
from labeler.models.label_options import InvalidLabelOptions, LabelOptions

# Shaped exactly like the DetectLabels response in the Rekognition Developer Guide.
SAMPLE_LABELS: list[dict[str, Any]] = [
    {
        "Name": "Mobile Phone",
        "Confidence": 99.9364013671875,
        "Instances": [
            {
                "BoundingBox": {
                    "Width": 0.26779675483703613,
                    "Height": 0.8562285900115967,
                    "Left": 0.3604024350643158,
                    "Top": 0.09245597571134567,
                },
                "Confidence": 99.9364013671875,
                "DominantColors": [],
            }
        ],
        "Parents": [{"Name": "Phone"}],
        "Aliases": [{"Name": "Cell Phone"}],
        "Categories": [{"Name": "Technology and Computing"}],
    },
    {
        "Name": "Phone",
        "Confidence": 99.9364013671875,
        "Instances": [],
        "Parents": [{"Name": "Electronics"}],
        "Aliases": [],
        "Categories": [{"Name": "Technology and Computing"}],
    },
    {
        "Name": "Electronics",
        "Confidence": 99.9364013671875,
        "Instances": [],
        "Parents": [],
        "Aliases": [],
        "Categories": [{"Name": "Technology and Computing"}],
    },
    {
        "Name": "Hand",
        "Confidence": 86.01702117919922,
        "Instances": [],
        "Parents": [{"Name": "Person"}],
        "Aliases": [],
        "Categories": [{"Name": "Person Description"}],
    },
]
LABEL_MODEL_VERSION = "3.0"


@dataclass
class FakeRekognitionState:
    """What the stand-in does next and what it has seen; tests adjust it between calls."""

    latency_seconds: float = 0.0
    # The account's TPS quota (None: unlimited). Counted over any one second, across every client.
    quota_tps: float | None = None
    throttled: int = 0
    # monotonic times of the calls accepted within the last second (the quota's window)
    accepted_times: deque[float] = field(default_factory=deque)
    # Error codes to answer with, one per call, before answering normally again.
    planned_errors: deque[str] = field(default_factory=deque)
    calls: int = 0
    images_seen: list[str] = field(default_factory=list)  # sha256 of each image received
    # Where Image.S3Object is read from (None: AWS_ENDPOINT_URL_S3), and the objects read: (bucket, key, version).
    s3_endpoint_url: str | None = None
    s3_objects_seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    # Buckets the stand-in treats as being in another region: their S3Object is InvalidS3ObjectException.
    other_region_buckets: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, *codes: str) -> None:
        with self.lock:
            self.planned_errors.extend(codes)

    def admit(self, now: float) -> bool:
        """Whether a call arriving at ``now`` fits the quota (it is counted if so). Call with ``lock`` held."""
        if self.quota_tps is None:
            return True
        while self.accepted_times and self.accepted_times[0] <= now - 1.0:
            self.accepted_times.popleft()
        if len(self.accepted_times) >= self.quota_tps:
            self.throttled += 1
            return False
        self.accepted_times.append(now)
        return True

    def reset(self) -> None:
        with self.lock:
            self.latency_seconds = 0.0
            self.quota_tps = None
            self.throttled = 0
            self.accepted_times.clear()
            self.planned_errors.clear()
            self.calls = 0
            self.images_seen.clear()
            self.requests.clear()
            self.s3_objects_seen.clear()
            self.other_region_buckets.clear()

    @property
    def successful_calls(self) -> int:
        return len(self.images_seen)


BYTES_MAX = 5 * 1024 * 1024
S3_OBJECT_MAX = 15 * 1024 * 1024
S3_OBJECT_UNREADABLE = "Unable to get object metadata from S3. Check object key, region and/or access permissions."


def _image_error(data: bytes, max_bytes: int = BYTES_MAX) -> tuple[str, str] | None:
    """The error Rekognition gives for these bytes, if any."""
    if len(data) > max_bytes:
        return "ImageTooLargeException", "Image size is too large."
    if not (data.startswith(b"\xff\xd8\xff") or data.startswith(b"\x89PNG\r\n\x1a\n")):
        return "InvalidImageFormatException", "Request has invalid image format"
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception:
        return "InvalidImageFormatException", "Request has invalid image format"
    if min(width, height) < 80 or max(width, height) > 10_000:
        return "InvalidParameterException", "Request has invalid parameters"
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _reply(self, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", hashlib.md5(body).hexdigest())
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: str, message: str) -> None:
        self._reply(400, {"__type": code, "Message": message})

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length) or b"{}")
        target = self.headers.get("X-Amz-Target", "")
        with state.lock:
            state.calls += 1
            state.requests.append(
                {
                    "target": target,
                    "MinConfidence": payload.get("MinConfidence"),
                    "MaxLabels": payload.get("MaxLabels"),
                    "Features": payload.get("Features"),
                    "Settings": payload.get("Settings"),
                    "Image": next(iter(payload.get("Image") or {}), None),
                }
            )
            planned = state.planned_errors.popleft() if state.planned_errors else None
            over_quota = (
                planned is None and target == "RekognitionService.DetectLabels" and not state.admit(time.monotonic())
            )
            latency = state.latency_seconds
        if latency:
            time.sleep(latency)
        if target != "RekognitionService.DetectLabels":
            self._error("UnknownOperationException", f"{target} is not supported by the stand-in")
            return
        if over_quota:
            self._error("ThrottlingException", "Rate exceeded")
            return
        if planned:
            self._error(planned, f"{planned} (planned by the test)")
            return
        image = payload.get("Image", {})
        if "S3Object" in image:
            data_or_error = _read_s3_object(state, image["S3Object"])
            if isinstance(data_or_error, tuple):
                self._error(*data_or_error)
                return
            data, limit = data_or_error, S3_OBJECT_MAX
        elif "Bytes" in image:
            data, limit = base64.b64decode(image["Bytes"]), BYTES_MAX
        else:
            self._error("InvalidParameterException", "Request has invalid parameters")
            return
        problem = _image_error(data, limit)
        if problem:
            self._error(*problem)
            return
        try:
            options = LabelOptions.from_request(payload)
        except InvalidLabelOptions as exc:
            self._error("InvalidParameterException", f"Request has invalid parameters ({exc})")
            return
        try:
            response = _answer(data, options)
        except LabelingFailed:  # only IMAGE_PROPERTIES decodes the pixels: a body that breaks off there
            self._error("InvalidImageFormatException", "Request has invalid image format")
            return
        with state.lock:
            state.images_seen.append(hashlib.sha256(data).hexdigest())
        self._reply(200, response)


def _answer(data: bytes, options: LabelOptions) -> dict[str, Any]:
    """The DetectLabels response for these image bytes and options (the bytes are known to be valid)."""
    labels: list[dict[str, Any]] = []
    if options.general_labels:
        confident = [copy.deepcopy(label) for label in SAMPLE_LABELS if label["Confidence"] >= options.min_confidence]
        labels = apply_filters(confident, options)[: options.max_labels]
    response: dict[str, Any] = {"Labels": labels, "LabelModelVersion": LABEL_MODEL_VERSION}
    if options.image_properties:
        analysis = analyze_bytes(data)
        response["ImageProperties"] = analysis.properties(options.max_dominant_colors)
        for label in labels:
            for instance in label["Instances"]:
                instance["DominantColors"] = analysis.box_colors(instance["BoundingBox"], options.max_dominant_colors)
    return response


def _read_s3_object(state: FakeRekognitionState, s3_object: Any) -> bytes | tuple[str, str]:
    """The object's bytes from the embedded S3, or the error DetectLabels answers when it cannot read them."""
    import os

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    if not isinstance(s3_object, dict) or not s3_object.get("Bucket") or not s3_object.get("Name"):
        return "InvalidParameterException", "Request has invalid parameters"
    version = s3_object.get("Version")
    with state.lock:
        state.s3_objects_seen.append((s3_object["Bucket"], s3_object["Name"], version))
        elsewhere = s3_object["Bucket"] in state.other_region_buckets
    if elsewhere:
        return "InvalidS3ObjectException", S3_OBJECT_UNREADABLE
    s3 = boto3.client(
        "s3",
        endpoint_url=state.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3"),
        region_name="us-east-1",
    )
    args = {"Bucket": s3_object["Bucket"], "Key": s3_object["Name"]}
    if version:
        args["VersionId"] = version
    try:
        head = s3.head_object(**args)
        if int(head.get("ContentLength", 0)) > S3_OBJECT_MAX:
            return "ImageTooLargeException", "Image size is too large."
        data: bytes = s3.get_object(**args)["Body"].read()
    except (ClientError, BotoCoreError):
        return "InvalidS3ObjectException", S3_OBJECT_UNREADABLE
    return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: FakeRekognitionState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class FakeRekognition:
    """Context manager: ``endpoint_url`` to put in ``AWS_ENDPOINT_URL_REKOGNITION``; ``state`` to steer it."""

    def __init__(self) -> None:
        self.state = FakeRekognitionState()
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeRekognition:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeRekognition:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
