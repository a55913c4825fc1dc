"""LabelOptions: service limits, the DetectLabels request, the cache tag, a manifest's options within bounds."""

from __future__ import annotations

import json
from typing import Any

import pytest

from labeler.models.errors import ManifestError, ManifestOptionsInvalid
from labeler.models.label_options import (
    Feature,
    InvalidLabelOptions,
    LabelOptions,
    parse_features,
    parse_names,
)

BOTH = ("GENERAL_LABELS", "IMAGE_PROPERTIES")


def stack(**values: Any) -> LabelOptions:
    """A stack that allows both features, 55 % / 50 labels / 10 colours unless told otherwise."""
    return LabelOptions(**{"features": BOTH, **values})


def invalid(raw: object, stack_options: LabelOptions | None = None, **kwargs: Any) -> ManifestOptionsInvalid:
    with pytest.raises(ManifestOptionsInvalid) as raised:
        (stack_options or stack()).for_manifest(raw, **kwargs)
    return raised.value


# --- the service's own limits ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "option"),
    [
        ({"min_confidence": -1}, "min_confidence"),
        ({"min_confidence": 100.5}, "min_confidence"),
        ({"min_confidence": float("nan")}, "min_confidence"),
        ({"min_confidence": True}, "min_confidence"),
        ({"max_labels": 1001}, "max_labels"),
        ({"max_labels": -1}, "max_labels"),
        ({"max_labels": 5.0}, "max_labels"),
        ({"features": ()}, "features"),
        ({"features": ("LABELS",)}, "features"),
        ({"features": "GENERAL_LABELS"}, "features"),
        ({"include_labels": tuple(f"Label {n}" for n in range(101))}, "include_labels"),
        ({"exclude_labels": ("x" * 51,)}, "exclude_labels"),
        ({"exclude_categories": ("Person|Description",)}, "exclude_categories"),  # '|' is outside the pattern
        ({"exclude_labels": ("Crème brûlée",)}, "exclude_labels"),  # so are é and û (only àâèçñó are listed)
        ({"include_categories": "Person Description"}, "include_categories"),
        ({"exclude_labels": (7,)}, "exclude_labels"),
        ({"max_dominant_colors": 21}, "max_dominant_colors"),
        ({"max_dominant_colors": -1}, "max_dominant_colors"),
        ({"max_label_calls": 0}, "max_label_calls"),
    ],
)
def test_values_outside_the_service_limits_are_refused(values: dict[str, Any], option: str) -> None:
    with pytest.raises(InvalidLabelOptions) as raised:
        LabelOptions(**values)
    assert raised.value.option == option
    assert isinstance(raised.value, ValueError)  # a settings loader can turn it into its ConfigurationError


def test_the_service_limits_themselves_are_accepted() -> None:
    options = LabelOptions(
        min_confidence=0,
        max_labels=1000,
        include_labels=tuple(f"Label {n}" for n in range(100)),
        exclude_labels=("x" * 50, "Tartan (Plaid)", "Jack-o'-lantern", "Crème Caramel"),
        max_dominant_colors=20,
    )
    assert len(options.include_labels) == 100
    assert LabelOptions(max_dominant_colors=0).max_dominant_colors == 0


def test_lists_are_kept_sorted_without_duplicates_and_features_in_one_order() -> None:
    options = LabelOptions(
        features=("IMAGE_PROPERTIES", "GENERAL_LABELS", "IMAGE_PROPERTIES"), exclude_labels=("b", "a", "b")
    )
    assert options.features == (Feature.GENERAL_LABELS, Feature.IMAGE_PROPERTIES)
    assert options.exclude_labels == ("a", "b")
    assert options == LabelOptions(features=BOTH, exclude_labels=("a", "b"), min_confidence=55)
    assert hash(options) == hash(LabelOptions(features=BOTH, exclude_labels=("a", "b")))


# --- the request -----------------------------------------------------------------------------------------
def test_the_default_request_asks_for_labels_only() -> None:
    assert LabelOptions().request_params() == {"Features": ["GENERAL_LABELS"], "MinConfidence": 55.0, "MaxLabels": 50}


def test_the_request_carries_every_option_that_is_set() -> None:
    options = LabelOptions(
        min_confidence=80,
        max_labels=20,
        features=BOTH,
        include_categories=("Animals and Pets",),
        exclude_labels=("Cat",),
        max_dominant_colors=5,
    )
    assert options.request_params() == {
        "Features": ["GENERAL_LABELS", "IMAGE_PROPERTIES"],
        "MinConfidence": 80.0,
        "MaxLabels": 20,
        "Settings": {
            "GeneralLabels": {"LabelExclusionFilters": ["Cat"], "LabelCategoryInclusionFilters": ["Animals and Pets"]},
            "ImageProperties": {"MaxDominantColors": 5},
        },
    }
    json.dumps(options.request_params())  # plain JSON types: boto3 serialises it as it is


def test_label_parameters_are_left_out_when_only_image_properties_are_asked() -> None:
    """MinConfidence, MaxLabels and GeneralLabels are "only valid when GENERAL_LABELS is specified"."""
    options = LabelOptions(features=("IMAGE_PROPERTIES",), exclude_labels=("Cat",), max_dominant_colors=3)
    assert options.request_params() == {
        "Features": ["IMAGE_PROPERTIES"],
        "Settings": {"ImageProperties": {"MaxDominantColors": 3}},
    }


def test_max_label_calls_is_never_sent() -> None:
    assert LabelOptions(max_label_calls=10).request_params() == LabelOptions().request_params()


def test_a_request_reads_back_into_the_same_options() -> None:
    options = LabelOptions(
        min_confidence=70, max_labels=9, features=BOTH, exclude_categories=("Sports",), max_dominant_colors=4
    )
    assert LabelOptions.from_request(options.request_params()) == options
    # What the service assumes when a parameter is missing: GENERAL_LABELS, 55 %, 1000 labels, 10 colours.
    assert LabelOptions.from_request({}) == LabelOptions(max_labels=1000)
    with pytest.raises(InvalidLabelOptions):
        LabelOptions.from_request({"Settings": {"ImageProperties": {"MaxDominantColors": 25}}, "Features": BOTH})


# --- the cache tag -----------------------------------------------------------------------------------------
def test_the_same_options_always_share_a_tag() -> None:
    first = LabelOptions(
        features=("IMAGE_PROPERTIES", "GENERAL_LABELS"), exclude_labels=("Dog", "Cat", "Dog"), min_confidence=80
    )
    second = LabelOptions(features=BOTH, exclude_labels=("Cat", "Dog"), min_confidence=80.0)
    assert first.cache_tag() == second.cache_tag()
    assert len(first.cache_tag()) == 16 and int(first.cache_tag(), 16) >= 0
    assert LabelOptions().cache_tag() == LabelOptions().cache_tag()  # stable: no process-specific hashing


@pytest.mark.parametrize(
    "change",
    [
        {"min_confidence": 56},
        {"max_labels": 49},
        {"features": BOTH},
        {"features": ("IMAGE_PROPERTIES",)},
        {"include_labels": ("Cat",)},
        {"exclude_labels": ("Cat",)},
        {"include_categories": ("Cat",)},
        {"exclude_categories": ("Cat",)},
    ],
)
def test_options_that_change_the_answer_never_share_a_tag(change: dict[str, Any]) -> None:
    assert LabelOptions(**change).cache_tag() != LabelOptions().cache_tag()


def test_every_option_that_changes_the_answer_has_its_own_tag() -> None:
    variants = [
        LabelOptions(),
        LabelOptions(min_confidence=80),
        LabelOptions(max_labels=20),
        LabelOptions(features=BOTH),
        LabelOptions(features=BOTH, max_dominant_colors=3),
        LabelOptions(features=("IMAGE_PROPERTIES",)),
        LabelOptions(include_labels=("Cat",)),
        LabelOptions(exclude_labels=("Cat",)),
        LabelOptions(include_categories=("Cat",)),
        LabelOptions(exclude_categories=("Cat",)),
        LabelOptions(exclude_categories=("Cat", "Dog")),
    ]
    tags = [options.cache_tag() for options in variants]
    assert len(set(tags)) == len(tags)
    assert LabelOptions().cache_tag(salt="local-image-properties-1") != LabelOptions().cache_tag()


def test_options_that_cannot_change_the_answer_share_the_tag() -> None:
    """The tag is the request's: what is not sent (or does not apply) cannot split the cache."""
    assert LabelOptions(max_label_calls=3).cache_tag() == LabelOptions().cache_tag()
    assert LabelOptions(max_dominant_colors=3).cache_tag() == LabelOptions().cache_tag()  # no IMAGE_PROPERTIES
    only_properties = LabelOptions(features=("IMAGE_PROPERTIES",))
    assert LabelOptions(features=("IMAGE_PROPERTIES",), min_confidence=90).cache_tag() == only_properties.cache_tag()


# --- a manifest's options ------------------------------------------------------------------------------------
def test_no_options_are_the_stack_s_options() -> None:
    options = stack(min_confidence=60)
    assert options.for_manifest(None) is options


def test_a_manifest_may_ask_for_less_within_the_bounds() -> None:
    options = stack(min_confidence=60, max_labels=50, exclude_labels=("Weapon",), max_dominant_colors=10).for_manifest(
        {
            "min_confidence": 80,
            "max_labels": 20,
            "features": ["IMAGE_PROPERTIES", "GENERAL_LABELS"],
            "exclude_categories": ["Person Description"],
            "exclude_labels": ["Cat"],
            "include_categories": ["Animals and Pets"],
            "max_dominant_colors": 3,
            "max_label_calls": 100,
        }
    )
    assert options == LabelOptions(
        min_confidence=80,
        max_labels=20,
        features=BOTH,
        exclude_labels=("Cat", "Weapon"),  # the stack's exclusions always apply
        exclude_categories=("Person Description",),
        include_categories=("Animals and Pets",),
        max_dominant_colors=3,
        max_label_calls=100,
    )


def test_the_bounds_themselves_are_allowed() -> None:
    options = stack(min_confidence=60, max_labels=50, max_dominant_colors=10, max_label_calls=100).for_manifest(
        {"min_confidence": 60, "max_labels": 50, "max_dominant_colors": 10, "max_label_calls": 100}
    )
    assert (options.min_confidence, options.max_labels, options.max_dominant_colors) == (60, 50, 10)
    assert stack(min_confidence=60).for_manifest({"min_confidence": 100, "max_labels": 1}).max_labels == 1
    assert stack().for_manifest({"max_dominant_colors": 0}).max_dominant_colors == 0


@pytest.mark.parametrize(
    ("raw", "option", "words"),
    [
        ({"min_confidence": 59.9}, "min_confidence", "from 60"),  # lower than the stack's
        ({"min_confidence": 101}, "min_confidence", "to 100"),
        ({"min_confidence": "80"}, "min_confidence", "must be a number"),
        ({"max_labels": 51}, "max_labels", "to 50"),  # more than the stack's
        ({"max_labels": 0}, "max_labels", "from 1"),
        ({"max_labels": 20.0}, "max_labels", "integer"),
        ({"max_labels": True}, "max_labels", "integer"),
        ({"max_dominant_colors": 11}, "max_dominant_colors", "MAX_DOMINANT_COLORS"),
        (
            {"max_label_calls": 101},
            "max_label_calls",
            "MAX_LABEL_CALLS_PER_MANIFEST",
        ),  # a cap may be lowered, never raised
        ({"max_label_calls": 0}, "max_label_calls", "from 1"),
        ({"features": []}, "features", "non-empty"),
        ({"features": "GENERAL_LABELS"}, "features", "non-empty list"),
        ({"features": ["LABELS"]}, "features", "not one of"),
        ({"exclude_labels": "Cat"}, "exclude_labels", "list of names"),
        ({"exclude_labels": [""]}, "exclude_labels", "exact"),
        ({"exclude_labels": [" Cat"]}, "exclude_labels", "exact"),
        ({"exclude_categories": ["a" * 51]}, "exclude_categories", "longer than 50"),
        ({"exclude_labels": [f"L{n}" for n in range(101)]}, "exclude_labels", "at most 100"),
    ],
)
def test_an_option_outside_the_bounds_is_a_clear_error(raw: dict[str, Any], option: str, words: str) -> None:
    error = invalid(raw, stack(min_confidence=60, max_labels=50, max_label_calls=100))
    assert error.details["option"] == option
    assert words in error.message and f'"options.{option}"' in error.message
    assert error.to_dict()["code"] == "manifest_options_invalid"
    assert isinstance(error, ManifestError)  # handled like every other manifest-level error


def test_unknown_options_are_named() -> None:
    error = invalid({"min_confidence": 80, "minconfidence": 80, "colours": 3})
    assert "'colours', 'minconfidence'" in error.message and "known: min_confidence" in error.message
    assert error.details["option"] == "colours"


@pytest.mark.parametrize("raw", [[], "min_confidence=80", 80])
def test_options_must_be_an_object(raw: object) -> None:
    assert "must be a JSON object" in invalid(raw).message


def test_features_are_limited_to_those_the_stack_allows() -> None:
    labels_only = LabelOptions()  # the stack's features: GENERAL_LABELS
    error = invalid({"features": ["GENERAL_LABELS", "IMAGE_PROPERTIES"]}, labels_only)
    assert "IMAGE_PROPERTIES" in error.message and "does not allow" in error.message
    # A stack may let manifests opt in to more than its own default.
    allowed = labels_only.for_manifest({"features": list(BOTH)}, allowed_features=BOTH)
    assert allowed.features == (Feature.GENERAL_LABELS, Feature.IMAGE_PROPERTIES)
    # ... and a manifest may drop a feature the stack uses by default.
    assert stack().for_manifest({"features": ["IMAGE_PROPERTIES"]}).features == (Feature.IMAGE_PROPERTIES,)


def test_inclusion_filters_cannot_widen_a_stack_that_already_includes_only_some() -> None:
    narrowed = stack(include_categories=("Animals and Pets",))
    error = invalid({"include_labels": ["Car"]}, narrowed)
    assert error.details["option"] == "include_labels" and "exclude more" in error.message
    assert (
        invalid({"include_categories": ["Vehicles and Automotive"]}, narrowed).details["option"] == "include_categories"
    )
    # Excluding more is always allowed.
    assert narrowed.for_manifest({"exclude_labels": ["Cat"]}).include_categories == ("Animals and Pets",)


def test_options_that_could_not_apply_are_errors_not_ignored() -> None:
    properties_only = {"features": ["IMAGE_PROPERTIES"]}
    for option, value in [("min_confidence", 80), ("max_labels", 5), ("exclude_labels", ["Cat"])]:
        error = invalid({**properties_only, option: value})
        assert error.details["option"] == option and "needs GENERAL_LABELS" in error.message
    error = invalid({"max_dominant_colors": 3}, LabelOptions())
    assert "needs IMAGE_PROPERTIES" in error.message


def test_stack_and_manifest_exclusions_together_stay_within_the_service_limit() -> None:
    full = stack(exclude_labels=tuple(f"S{n}" for n in range(60)))
    error = invalid({"exclude_labels": [f"M{n}" for n in range(41)]}, full)
    assert error.details["option"] == "exclude_labels" and "at most 100" in error.message
    assert len(full.for_manifest({"exclude_labels": [f"M{n}" for n in range(40)]}).exclude_labels) == 100


def test_manifest_options_in_any_order_share_the_cache_tag() -> None:
    first = stack().for_manifest({"exclude_labels": ["Dog", "Cat"], "features": ["IMAGE_PROPERTIES", "GENERAL_LABELS"]})
    second = stack().for_manifest({"features": list(BOTH), "exclude_labels": ["Cat", "Dog", "Cat"]})
    assert first.cache_tag() == second.cache_tag()
    assert stack().for_manifest({"min_confidence": 80}).cache_tag() != stack().cache_tag()


def test_to_dict_says_what_the_manifest_got() -> None:
    options = stack(exclude_labels=("Weapon",)).for_manifest({"min_confidence": 70, "max_label_calls": 5})
    assert options.to_dict() == {
        "features": ["GENERAL_LABELS", "IMAGE_PROPERTIES"],
        "min_confidence": 70.0,
        "max_labels": 50,
        "exclude_labels": ["Weapon"],
        "max_dominant_colors": 10,
        "max_label_calls": 5,
    }
    # Read back as a manifest's options, it gives the same options.
    assert stack(exclude_labels=("Weapon",)).for_manifest(options.to_dict()) == options


# --- settings strings ----------------------------------------------------------------------------------------
def test_comma_separated_settings_parse() -> None:
    assert parse_names("") == ()
    assert parse_names("Person Description, Weapons and Military,,") == ("Person Description", "Weapons and Military")
    assert parse_features("IMAGE_PROPERTIES,GENERAL_LABELS") == (Feature.GENERAL_LABELS, Feature.IMAGE_PROPERTIES)
    with pytest.raises(InvalidLabelOptions):
        parse_features("")
    with pytest.raises(InvalidLabelOptions):
        parse_features("GENERAL_LABELS,COLOURS")
