"""The Rekognition adapter, through the real botocore client against the wire-level stand-in."""

import io

import pytest
from PIL import Image

from labeler.adapters.labels.rekognition import RekognitionBackend, build_client
from labeler.models.errors import LabelingFailed, Throttled
from tests.support.fake_rekognition import SAMPLE_LABELS, FakeRekognition


def jpeg(width: int = 160, height: int = 120) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def backend(fake_rekognition: FakeRekognition) -> RekognitionBackend:
    # botocore retries once itself (adaptive mode); our outer rounds are shortened for the test.
    return RekognitionBackend(build_client(max_attempts=2), throttle_rounds=2, throttle_base_delay=0.01)


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


def test_a_burst_of_throttling_is_outlasted(backend: RekognitionBackend, fake_rekognition: FakeRekognition) -> None:
    # More throttles than botocore's own attempts (2): the slow outer rounds take over.
    fake_rekognition.state.fail_next(
        "ThrottlingException", "ProvisionedThroughputExceededException", "ThrottlingException"
    )
    result = backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    assert result.labels
    assert fake_rekognition.state.successful_calls == 1


def test_throttling_that_never_ends_is_reported_as_throttled(
    backend: RekognitionBackend, fake_rekognition: FakeRekognition
) -> None:
    fake_rekognition.state.fail_next(*(["ThrottlingException"] * 50))
    # No botocore retries (adaptive mode would also slow the client down): only our outer rounds.
    backend = RekognitionBackend(
        build_client(max_attempts=1, retry_mode="standard"), throttle_rounds=2, throttle_base_delay=0.01
    )
    with pytest.raises(Throttled) as raised:
        backend.detect_labels(jpeg(), min_confidence=55, max_labels=50)
    assert raised.value.details["aws_code"] == "ThrottlingException"


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
