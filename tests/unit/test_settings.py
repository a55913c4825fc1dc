import pytest

from labeler.models.label_options import LabelOptions
from labeler.models.settings import ConfigurationError, Settings


def test_defaults_match_the_documented_contract() -> None:
    settings = Settings.from_env({"OUTPUT_BUCKET": "results"})
    assert settings.min_confidence == 55
    assert settings.max_labels == 50
    assert settings.max_image_bytes == 15 * 1024 * 1024
    assert settings.download_timeout_seconds == 10
    assert settings.max_workers == 32
    assert settings.batch_size == 50
    assert settings.rekognition_max_tps == 50
    assert settings.worker_max_concurrency == 5
    assert settings.allow_private_networks is False
    assert settings.label_backend == "rekognition"
    assert settings.inline_max_images == 100
    assert settings.idempotency_lease_seconds == 45
    assert settings.max_receive_count == 4  # 3 labeling attempts and the delivery that gives up
    assert settings.max_label_calls_per_manifest == settings.max_manifest_entries  # docs/cost.md: why
    assert settings.label_options() == LabelOptions(max_label_calls=1_000_000)  # labels only, no filters
    assert settings.manifest_feature_names == ("GENERAL_LABELS",)  # IMAGE_PROPERTIES is opt-in


def test_the_stack_s_label_options_come_from_its_settings() -> None:
    settings = Settings.from_env(
        {
            "OUTPUT_BUCKET": "r",
            "MIN_CONFIDENCE": "70",
            "LABEL_FEATURES": "IMAGE_PROPERTIES, GENERAL_LABELS",
            "MANIFEST_FEATURES": "GENERAL_LABELS",
            "LABEL_EXCLUDE_CATEGORIES": "Person Description, Weapons and Military",
            "LABEL_INCLUDE_LABELS": "Cat,Dog",
            "MAX_DOMINANT_COLORS": "4",
            "MAX_LABEL_CALLS_PER_MANIFEST": "0",
        }
    )
    assert settings.label_options() == LabelOptions(
        min_confidence=70,
        features=("GENERAL_LABELS", "IMAGE_PROPERTIES"),
        exclude_categories=("Person Description", "Weapons and Military"),
        include_labels=("Cat", "Dog"),
        max_dominant_colors=4,
        max_label_calls=None,  # 0: no cap
    )
    assert settings.manifest_feature_names == ("GENERAL_LABELS",)


def test_values_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {"OUTPUT_BUCKET": "r", "MIN_CONFIDENCE": "70.5", "MAX_WORKERS": "16", "ALLOW_PRIVATE_NETWORKS": "yes"}
    )
    assert (settings.min_confidence, settings.max_workers, settings.allow_private_networks) == (70.5, 16, True)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OUTPUT_BUCKET": ""},
        {"OUTPUT_BUCKET": "r", "MAX_WORKERS": "many"},
        {"OUTPUT_BUCKET": "r", "MAX_WORKERS": "0"},
        {"OUTPUT_BUCKET": "r", "MIN_CONFIDENCE": "101"},
        {"OUTPUT_BUCKET": "r", "MAX_LABELS": "1001"},
        {"OUTPUT_BUCKET": "r", "ALLOW_PRIVATE_NETWORKS": "maybe"},
        {"OUTPUT_BUCKET": "r", "LABEL_BACKEND": "clip"},
        {"OUTPUT_BUCKET": "r", "REKOGNITION_MAX_TPS": "0"},
        {"OUTPUT_BUCKET": "r", "WORKER_MAX_CONCURRENCY": "0"},
        {"OUTPUT_BUCKET": "r", "MAX_RECEIVE_COUNT": "1"},  # the last delivery labels nothing: no attempt left
        {"OUTPUT_BUCKET": "r", "IDEMPOTENCY_LEASE_SECONDS": "0"},
        {"OUTPUT_BUCKET": "r", "LABEL_FEATURES": "LABELS"},
        {"OUTPUT_BUCKET": "r", "LABEL_FEATURES": ","},
        {"OUTPUT_BUCKET": "r", "MANIFEST_FEATURES": "COLOURS"},
        {"OUTPUT_BUCKET": "r", "MAX_DOMINANT_COLORS": "21"},
        {"OUTPUT_BUCKET": "r", "LABEL_EXCLUDE_LABELS": "Cat|Dog"},  # a character DetectLabels refuses
        {"OUTPUT_BUCKET": "r", "LABEL_FEATURES": "IMAGE_PROPERTIES", "LABEL_EXCLUDE_LABELS": "Cat"},
        {"OUTPUT_BUCKET": "r", "MAX_LABEL_CALLS_PER_MANIFEST": "-1"},
    ],
)
def test_bad_configuration_is_refused_with_the_variable_named(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_env(env)
