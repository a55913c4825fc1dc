"""The Rekognition adapter, through the real botocore client against the wire-level stand-in."""

import io
import time
from typing import Any

import pytest
from PIL import Image

from labeler.adapters.labels.base import LabelResult, detect_with_options
from labeler.adapters.labels.rekognition import RekognitionBackend, RetryPolicy, build_client
from labeler.adapters.ratelimit import LocalSlots, SlotLimiter
from labeler.models.errors import LabelingFailed, OutOfTime, Throttled
from labeler.models.label_options import LabelOptions
from tests.support.fake_rekognition import SAMPLE_LABELS, FakeRekognition

NO_WAIT = RetryPolicy(max_attempts=4)  # with rng=lambda: 0.0 below: retries without backoff sleeps


def jpeg(width: int = 160, height: int = 120) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def quick(client: Any = None, limiter: SlotLimiter | None = None, **options: Any) -> RekognitionBackend:
    return RekognitionBackend(client or build_client(), limiter, retry=NO_WAIT, rng=lambda: 0.0, **options)


@pytest.fixture
def backend(fake_rekognition: FakeRekognition) -> RekognitionBackend:
    return quick()


def test_labels_come_back_unchanged_with_the_model_version(
    backend: RekognitionBackend, fake_rekognition: FakeRekognition
) -> None:
    result = backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    assert result.labels == SAMPLE_LABELS
    assert result.model_version == "3.0"
    assert backend.model_version == "3.0"
    assert fake_rekognition.state.requests[-1]["MinConfidence"] == 55
    assert fake_rekognition.state.requests[-1]["MaxLabels"] == 50


def test_settings_are_sent(backend: RekognitionBackend, fake_rekognition: FakeRekognition) -> None:
    result = backend.detect_labels(jpeg(), min_confidence=90, max_labels=2)
    assert [label["Name"] for label in result.labels] == ["Mobile Phone", "Phone"]


def test_detect_sends_every_option_and_keeps_image_properties_beside_the_labels(
    backend: RekognitionBackend, fake_rekognition: FakeRekognition
) -> None:
    options = LabelOptions(
        min_confidence=60, max_labels=5, features=("GENERAL_LABELS", "IMAGE_PROPERTIES"), max_dominant_colors=2
    )
    result = backend.detect(jpeg(), options)
    sent = fake_rekognition.state.requests[-1]
    assert (sent["Features"], sent["Settings"]) == (
        ["GENERAL_LABELS", "IMAGE_PROPERTIES"],
        {"ImageProperties": {"MaxDominantColors": 2}},
    )
    assert (sent["MinConfidence"], sent["MaxLabels"]) == (60, 5)
    assert result.labels and len(result.extra["ImageProperties"]["DominantColors"]) <= 2
    assert backend.model_version == "3.0"


def test_a_backend_without_options_answers_plain_labels_and_refuses_more() -> None:
    class LabelsOnly:
        name = "labels-only"

        def detect_labels(self, image: bytes, **options: Any) -> Any:
            return LabelResult(labels=[dict(options)], model_version="1", backend=self.name)

    result = detect_with_options(LabelsOnly(), b"", LabelOptions(min_confidence=70, max_labels=3), deadline=9.0)
    assert result.labels == [{"min_confidence": 70.0, "max_labels": 3, "deadline": 9.0}]
    with pytest.raises(LabelingFailed, match="labels only"):
        detect_with_options(LabelsOnly(), b"", LabelOptions(exclude_labels=("Cat",)))


def test_a_burst_of_throttling_is_outlasted(backend: RekognitionBackend, fake_rekognition: FakeRekognition) -> None:
    fake_rekognition.state.fail_next(
        "ThrottlingException", "ProvisionedThroughputExceededException", "ThrottlingException"
    )
    result = backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    assert result.labels
    assert fake_rekognition.state.successful_calls == 1
    assert fake_rekognition.state.calls == 4  # botocore itself retried nothing


def test_throttling_that_never_ends_is_reported_as_throttled(
    backend: RekognitionBackend, fake_rekognition: FakeRekognition
) -> None:
    fake_rekognition.state.fail_next(*(["ThrottlingException"] * 50))
    with pytest.raises(Throttled) as raised:
        backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    assert raised.value.details["aws_code"] == "ThrottlingException"
    assert fake_rekognition.state.calls == NO_WAIT.max_attempts


def test_every_attempt_takes_a_slot_of_the_limiter(fake_rekognition: FakeRekognition) -> None:
    limiter = SlotLimiter(LocalSlots(1000))
    backend = quick(limiter=limiter)
    fake_rekognition.state.fail_next("ThrottlingException", "InternalServerError", "ThrottlingException")
    backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    assert fake_rekognition.state.calls == 5 == limiter.stats.slots_used


def test_connection_errors_are_retried_through_the_limiter(fake_rekognition: FakeRekognition) -> None:
    from botocore.exceptions import ConnectionClosedError

    client = build_client()
    limiter = SlotLimiter(LocalSlots(1000))
    backend = quick(client, limiter)
    broken = iter([True, True])

    def drop(**_: Any) -> None:  # after the limiter's own hook: the connection breaks while sending
        if next(broken, False):
            raise ConnectionClosedError(endpoint_url=fake_rekognition.endpoint_url)

    client.meta.events.register("before-send.rekognition.DetectLabels", drop)
    assert backend.detect_labels(jpeg(), min_confidence=55, max_labels=50).labels
    assert limiter.stats.slots_used == 3 and fake_rekognition.state.calls == 1


def test_a_service_that_stays_unreachable_is_a_label_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_REKOGNITION", f"http://127.0.0.1:{port}")
    with pytest.raises(LabelingFailed) as raised:
        quick().detect_labels(jpeg(), min_confidence=55, max_labels=50)
    assert raised.value.details["aws_code"] == "EndpointConnectionError"


def test_the_default_retry_budget_is_generous() -> None:
    policy = RetryPolicy()
    waits = [policy.backoff(retry, rng=lambda: 1.0) for retry in range(1, policy.max_attempts)]
    assert policy.max_attempts >= 12
    assert sum(waits) / 2 >= 20  # about half a minute of throttling is outlasted on average
    assert max(waits) == policy.max_delay


# --- the deadline -----------------------------------------------------------------------------------------
def test_no_attempt_starts_without_the_time_to_finish(fake_rekognition: FakeRekognition) -> None:
    limiter = SlotLimiter(LocalSlots(1000))
    backend = quick(limiter=limiter)
    with pytest.raises(OutOfTime):
        backend.detect_labels(jpeg(), min_confidence=55, max_labels=50, deadline=time.monotonic() + 0.5)
    assert fake_rekognition.state.calls == 0 and limiter.stats.slots_leased == 0


def test_no_slot_is_taken_that_comes_after_the_deadline(fake_rekognition: FakeRekognition) -> None:
    limiter = SlotLimiter(LocalSlots(0.1), min_lease=1)  # one slot every 10 s
    backend = quick(limiter=limiter)
    backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    with pytest.raises(OutOfTime):
        backend.detect_labels(jpeg(), min_confidence=55, max_labels=50, deadline=time.monotonic() + 5)
    assert fake_rekognition.state.calls == 1


def test_the_read_timeout_is_cut_to_the_time_left(fake_rekognition: FakeRekognition) -> None:
    built: list[float] = []

    def short_client(read_timeout: float) -> Any:
        built.append(read_timeout)
        return build_client(read_timeout=read_timeout)

    fake_rekognition.state.latency_seconds = 1.0  # slower than the read timeout that fits
    # The stand-in answers after the client gave up: an error, so that late answer never counts as
    # a success in the next test's stand-in state.
    fake_rekognition.state.fail_next("InternalServerError")
    backend = quick(client_factory=short_client)
    with pytest.raises(OutOfTime):
        backend.detect_labels(jpeg(), min_confidence=55, max_labels=50, deadline=time.monotonic() + 1.5)
    # the attempt that started had a read timeout that fits the 1.5 s left; its timeout left no
    # time for another one
    assert built == [0.5]
    assert fake_rekognition.state.calls == 1


def test_a_deadline_far_away_uses_the_ordinary_client(fake_rekognition: FakeRekognition) -> None:
    built: list[float] = []
    backend = quick(client_factory=lambda timeout: built.append(timeout))
    backend.detect_labels(jpeg(), min_confidence=55, max_labels=50, deadline=time.monotonic() + 300)
    assert built == []


def test_throttling_near_the_deadline_leaves_the_entry_for_the_retry(fake_rekognition: FakeRekognition) -> None:
    fake_rekognition.state.fail_next(*(["ThrottlingException"] * 5))
    backend = RekognitionBackend(build_client(), retry=RetryPolicy(base_delay=5.0), rng=lambda: 1.0)
    with pytest.raises(OutOfTime):  # not Throttled: no record, the entry is done again by the retry
        backend.detect_labels(jpeg(), min_confidence=55, max_labels=50, deadline=time.monotonic() + 4)
    assert fake_rekognition.state.calls == 1


@pytest.mark.parametrize(
    ("image", "aws_code"),
    [(b"GIF89a not really", "InvalidImageFormatException"), (None, "InvalidParameterException")],
)
def test_rejections_become_label_errors_with_the_aws_code(
    backend: RekognitionBackend, image: bytes | None, aws_code: str
) -> None:
    with pytest.raises(LabelingFailed) as raised:
        backend.detect_labels(image or jpeg(40, 40), min_confidence=55, max_labels=50)
    assert raised.value.details["aws_code"] == aws_code
    assert raised.value.to_dict()["code"] == "label_error"


def test_the_stand_in_enforces_one_quota_over_any_second(fake_rekognition: FakeRekognition) -> None:
    """The stand-in's quota (used by the limiter's tests and the benchmarks) throttles like the service."""
    import boto3
    from botocore.config import Config

    client = boto3.client("rekognition", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    fake_rekognition.state.quota_tps = 3
    outcomes = []
    for _ in range(5):
        try:
            client.detect_labels(Image={"Bytes": jpeg()})
            outcomes.append("ok")
        except client.exceptions.ThrottlingException:
            outcomes.append("throttled")
    assert outcomes == ["ok", "ok", "ok", "throttled", "throttled"]
    assert fake_rekognition.state.throttled == 2
