"""The Rekognition stand-in answers Features and Settings like the service, through the real botocore client.

The requests are built by LabelOptions.request_params(): botocore's own serialiser and parameter
validation (the service model) accept them, which checks their shape against the real API.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from labeler.adapters.labels.base import result_from_response
from labeler.models.label_options import LabelOptions
from tests.support.fake_rekognition import SAMPLE_LABELS, FakeRekognition
from tests.support.images import jpeg
from tests.unit.test_image_properties import assert_rekognition_image_properties

BOTH = ("GENERAL_LABELS", "IMAGE_PROPERTIES")


@pytest.fixture
def client(fake_rekognition: FakeRekognition) -> Any:
    import boto3

    return boto3.client("rekognition")  # AWS_ENDPOINT_URL_REKOGNITION points at the stand-in


def solid_jpeg(color: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def call(client: Any, image: bytes, options: LabelOptions) -> dict[str, Any]:
    return client.detect_labels(Image={"Bytes": image}, **options.request_params())


def names(labels: list[dict[str, Any]]) -> list[str]:
    return [label["Name"] for label in labels]


def test_without_features_it_answers_as_before(client: Any, fake_rekognition: FakeRekognition) -> None:
    response = client.detect_labels(Image={"Bytes": jpeg()}, MinConfidence=55, MaxLabels=50)
    assert response["Labels"] == SAMPLE_LABELS and "ImageProperties" not in response
    request = fake_rekognition.state.requests[-1]
    assert (request["MinConfidence"], request["MaxLabels"], request["Features"], request["Settings"]) == (
        55,
        50,
        None,
        None,
    )


def test_features_and_settings_are_recorded(client: Any, fake_rekognition: FakeRekognition) -> None:
    options = LabelOptions(features=BOTH, exclude_categories=("Person Description",), max_dominant_colors=3)
    call(client, jpeg(), options)
    request = fake_rekognition.state.requests[-1]
    assert request["Features"] == ["GENERAL_LABELS", "IMAGE_PROPERTIES"]
    assert request["Settings"] == {
        "GeneralLabels": {"LabelCategoryExclusionFilters": ["Person Description"]},
        "ImageProperties": {"MaxDominantColors": 3},
    }
    assert request["target"] == "RekognitionService.DetectLabels"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (LabelOptions(exclude_categories=("Technology and Computing",)), ["Hand"]),
        (LabelOptions(include_labels=("Hand", "Phone")), ["Phone", "Hand"]),
        (
            LabelOptions(include_categories=("Technology and Computing",), exclude_labels=("Phone",)),
            ["Mobile Phone", "Electronics"],
        ),
        (LabelOptions(include_labels=("Hand",), min_confidence=90), []),  # MinConfidence first
        (LabelOptions(include_categories=("Technology and Computing",), max_labels=2), ["Mobile Phone", "Phone"]),
        (LabelOptions(exclude_labels=("mobile phone",)), [label["Name"] for label in SAMPLE_LABELS]),  # exact names
    ],
)
def test_general_labels_filters_apply_to_the_sample_labels(
    client: Any, options: LabelOptions, expected: list[str]
) -> None:
    assert names(call(client, jpeg(), options)["Labels"]) == expected


def test_image_properties_are_computed_from_the_image_sent(client: Any) -> None:
    response = call(client, solid_jpeg((255, 0, 0)), LabelOptions(features=BOTH, max_dominant_colors=4))
    properties = response["ImageProperties"]
    assert_rekognition_image_properties(properties, max_colors=4)
    assert properties["DominantColors"][0]["CSSColor"] == "red"
    assert properties["DominantColors"][0]["PixelPercent"] > 99
    assert properties["Quality"]["Contrast"] == 0.0
    # The sample Instance gets the colours of its box in this image.
    (instance,) = response["Labels"][0]["Instances"]
    assert [color["CSSColor"] for color in instance["DominantColors"]] == ["red"]
    # A different image, different properties.
    other = call(client, jpeg("coffee"), LabelOptions(features=BOTH))["ImageProperties"]
    assert other != properties and other["Quality"]["Contrast"] > 30


def test_image_properties_alone_return_no_labels(client: Any) -> None:
    response = call(client, jpeg("rocket"), LabelOptions(features=("IMAGE_PROPERTIES",), max_dominant_colors=2))
    assert response["Labels"] == []
    assert len(response["ImageProperties"]["DominantColors"]) == 2
    assert response["LabelModelVersion"] == "3.0"


def test_the_response_becomes_a_label_result(client: Any) -> None:
    response = call(client, jpeg(), LabelOptions(features=BOTH))
    result = result_from_response(response, "rekognition")
    assert result.labels == response["Labels"] and result.model_version == "3.0"
    assert result.extra == {"ImageProperties": response["ImageProperties"]}
    assert result_from_response(call(client, jpeg(), LabelOptions()), "rekognition").extra == {}


@pytest.mark.parametrize(
    "params",
    [
        {
            "Features": ["GENERAL_LABELS", "IMAGE_PROPERTIES"],
            "Settings": {"ImageProperties": {"MaxDominantColors": 21}},
        },
        {"MinConfidence": 101.0},
        {"MaxLabels": 1001},
        {"Settings": {"GeneralLabels": {"LabelExclusionFilters": [f"L{n}" for n in range(101)]}}},
    ],
)
def test_parameters_outside_the_service_limits_are_refused(client: Any, params: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as raised:
        client.detect_labels(Image={"Bytes": jpeg()}, **params)
    assert raised.value.response["Error"]["Code"] == "InvalidParameterException"


@pytest.mark.parametrize(
    "options",
    [
        LabelOptions(),
        LabelOptions(features=BOTH, max_dominant_colors=0),
        LabelOptions(features=("IMAGE_PROPERTIES",), max_dominant_colors=20),
        LabelOptions(
            min_confidence=0,
            max_labels=1000,
            features=BOTH,
            include_labels=tuple(f"Label {n}" for n in range(100)),
            exclude_labels=("Jack-o'-lantern",),
            include_categories=("Animals and Pets",),
            exclude_categories=("Person Description",),
        ),
    ],
)
def test_every_request_the_options_build_passes_botocore_s_validation(client: Any, options: LabelOptions) -> None:
    """botocore validates parameter names and types against Rekognition's service model before sending."""
    response = call(client, jpeg(), options)
    assert ("ImageProperties" in response) == options.image_properties
