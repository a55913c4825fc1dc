"""The offline backend answers DetectLabels' features and filters: detect(image, options) on the real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labeler.adapters.labels import DetectsWithOptions
from labeler.adapters.labels.local import LocalLabelBackend
from labeler.logic.label_filters import apply_filters
from labeler.models.label_options import LabelOptions
from tests.support.images import jpeg
from tests.unit.test_image_properties import assert_rekognition_image_properties
from tests.unit.test_local_backend import assert_rekognition_label

BOTH = ("GENERAL_LABELS", "IMAGE_PROPERTIES")


@pytest.fixture(scope="module")
def backend() -> LocalLabelBackend:
    return LocalLabelBackend()


def names(labels: list[dict[str, Any]]) -> list[str]:
    return [label["Name"] for label in labels]


def categories(label: dict[str, Any]) -> set[str]:
    return {category["Name"] for category in label["Categories"]}


def test_the_backend_offers_detect_with_options(backend: LocalLabelBackend) -> None:
    assert isinstance(backend, DetectsWithOptions)
    assert backend.properties_version.startswith("local-image-properties-")


@pytest.mark.model
def test_labels_only_answers_exactly_what_detect_labels_answers(backend: LocalLabelBackend) -> None:
    for name in ("chelsea", "astronaut"):
        options = LabelOptions(min_confidence=30, max_labels=12)
        assert backend.detect(jpeg(name), options) == backend.detect_labels(
            jpeg(name), min_confidence=30, max_labels=12
        )
    plain = backend.detect_labels(jpeg("astronaut"), min_confidence=55, max_labels=50)
    assert plain.extra == {}
    assert all(
        set(instance) == {"BoundingBox", "Confidence"} for label in plain.labels for instance in label["Instances"]
    )


@pytest.mark.model
def test_category_exclusion_drops_the_cat(backend: LocalLabelBackend) -> None:
    everything = backend.detect(jpeg("chelsea"), LabelOptions(min_confidence=0.01, max_labels=1000)).labels
    assert "Cat" in names(everything) and len(everything) < 1000  # all of them: the cut does not interfere
    kept = backend.detect(
        jpeg("chelsea"), LabelOptions(min_confidence=0.01, max_labels=1000, exclude_categories=("Animals and Pets",))
    ).labels
    assert kept and not any("Animals and Pets" in categories(label) for label in kept)
    assert kept == apply_filters(everything, LabelOptions(exclude_categories=("Animals and Pets",)))


@pytest.mark.model
def test_label_inclusion_keeps_the_named_labels_only(backend: LocalLabelBackend) -> None:
    result = backend.detect(jpeg("chelsea"), LabelOptions(include_labels=("Cat", "Dog")))
    assert names(result.labels) == ["Cat"]  # no Dog in the photo; Cat's parents are not added
    assert names(result.labels[0]["Parents"]) and "Animal" in names(result.labels[0]["Parents"])


@pytest.mark.model
def test_max_labels_counts_the_labels_the_filters_keep(backend: LocalLabelBackend) -> None:
    """Filters first, then MaxLabels: the two most confident *animal* labels, not the first two overall."""
    every_animal = backend.detect(
        jpeg("chelsea"), LabelOptions(min_confidence=0, max_labels=1000, include_categories=("Animals and Pets",))
    ).labels
    two = backend.detect(
        jpeg("chelsea"), LabelOptions(min_confidence=0, max_labels=2, include_categories=("Animals and Pets",))
    ).labels
    assert len(every_animal) > 2 and two == every_animal[:2]


@pytest.mark.model
def test_exclusion_wins_over_inclusion(backend: LocalLabelBackend) -> None:
    options = LabelOptions(include_categories=("Animals and Pets",), exclude_labels=("Cat",))
    kept = names(backend.detect(jpeg("chelsea"), options).labels)
    assert "Cat" not in kept and "Animal" in kept


@pytest.mark.model
def test_image_properties_come_with_the_labels(backend: LocalLabelBackend) -> None:
    result = backend.detect(jpeg("astronaut"), LabelOptions(features=BOTH, max_dominant_colors=4))
    assert_rekognition_image_properties(result.extra["ImageProperties"], max_colors=4)
    assert set(result.extra) == {"ImageProperties"}
    person = next(label for label in result.labels if label["Name"] == "Person")
    (face,) = person["Instances"]
    assert set(face) == {"BoundingBox", "Confidence", "DominantColors"}
    assert 1 <= len(face["DominantColors"]) <= 4
    # The face box: skin and hair, not the orange suit nor the black background.
    assert face["DominantColors"][0]["SimplifiedColor"] in {"brown", "orange", "pink"}
    for label in result.labels:
        instances = [dict(instance) for instance in label["Instances"]]
        for instance in instances:
            instance.pop("DominantColors")
        assert_rekognition_label({**label, "Instances": instances})


@pytest.mark.model
def test_image_properties_and_labels_agree_with_each_alone(backend: LocalLabelBackend) -> None:
    both = backend.detect(jpeg("coffee"), LabelOptions(features=BOTH))
    labels = backend.detect(jpeg("coffee"), LabelOptions())
    props = backend.detect(jpeg("coffee"), LabelOptions(features=("IMAGE_PROPERTIES",)))
    assert both.labels == labels.labels
    assert both.extra == props.extra
    assert backend.detect(jpeg("coffee"), LabelOptions(features=BOTH)) == both  # deterministic


def test_image_properties_alone_need_no_model(tmp_path: Path) -> None:
    backend = LocalLabelBackend(model_dir=tmp_path / "no-model-here", faces=False)
    result = backend.detect(jpeg("rocket"), LabelOptions(features=("IMAGE_PROPERTIES",), max_dominant_colors=2))
    assert result.labels == []
    assert_rekognition_image_properties(result.extra["ImageProperties"], max_colors=2)
    assert result.backend == "local" and result.model_version == backend.model_version


def test_labels_still_need_the_model(tmp_path: Path) -> None:
    from labeler.adapters.labels.local import ModelNotAvailable

    backend = LocalLabelBackend(model_dir=tmp_path / "no-model-here", faces=False)
    with pytest.raises(ModelNotAvailable, match="make model"):
        backend.detect(jpeg("rocket"), LabelOptions(features=BOTH))
