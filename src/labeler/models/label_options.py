"""Everything that changes DetectLabels' answer, in one frozen, validated object.

The stack builds one :class:`LabelOptions` from its settings; a manifest may ask for its own within
the stack's bounds (:meth:`LabelOptions.for_manifest`); the Rekognition request is
:meth:`LabelOptions.request_params`; the label cache key holds :meth:`LabelOptions.cache_tag`.

>>> stack = LabelOptions(min_confidence=55, max_labels=50, features=("GENERAL_LABELS", "IMAGE_PROPERTIES"))
>>> mine = stack.for_manifest({"min_confidence": 80, "exclude_categories": ["Person Description"]})
>>> mine.request_params()["Settings"]["GeneralLabels"]
{'LabelCategoryExclusionFilters': ['Person Description']}
>>> mine.cache_tag() == stack.cache_tag()
False

Service limits are the DetectLabels API reference's (checked 2026-11-30):
https://docs.aws.amazon.com/rekognition/latest/APIReference/API_DetectLabels.html (``Features`` 0-2
of GENERAL_LABELS | IMAGE_PROPERTIES; ``MinConfidence`` 0-100; ``MaxLabels`` ≥ 0, "the default and
upper limit is 1000"), API_GeneralLabelsSettings.html (each filter list 0-100 names, each name 0-50
characters matching ``[A-Za-z0-9àâèçñó'-_(). ]*``) and API_DetectLabelsImagePropertiesSettings.html
(``MaxDominantColors`` 0-20, default 10). Bounds for manifests: docs/image-properties.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from labeler.models.errors import ManifestOptionsInvalid


class Feature(StrEnum):
    GENERAL_LABELS = "GENERAL_LABELS"
    IMAGE_PROPERTIES = "IMAGE_PROPERTIES"


# The service's own limits (see the module docstring for where each comes from).
MAX_LABELS_LIMIT = 1000
MAX_FILTER_NAMES = 100
MAX_FILTER_NAME_LENGTH = 50
MAX_DOMINANT_COLORS_LIMIT = 20
DEFAULT_MAX_DOMINANT_COLORS = 10
# Copied character for character from the API reference. In regex syntax ``'-_`` is a range
# (U+0027-U+005F: digits, upper case and ``()*+,-./:;<=>?@[\]^_``), so it admits more than it seems;
# we validate exactly what the service's own pattern admits.
FILTER_NAME_PATTERN = re.compile(r"[A-Za-z0-9àâèçñó'-_(). ]*")

FILTER_FIELDS = ("include_labels", "exclude_labels", "include_categories", "exclude_categories")
# Manifest option name -> the request parameter it becomes (for messages and docs).
MANIFEST_OPTIONS: dict[str, str] = {
    "min_confidence": "MinConfidence",
    "max_labels": "MaxLabels",
    "features": "Features",
    "include_labels": "Settings.GeneralLabels.LabelInclusionFilters",
    "exclude_labels": "Settings.GeneralLabels.LabelExclusionFilters",
    "include_categories": "Settings.GeneralLabels.LabelCategoryInclusionFilters",
    "exclude_categories": "Settings.GeneralLabels.LabelCategoryExclusionFilters",
    "max_dominant_colors": "Settings.ImageProperties.MaxDominantColors",
    "max_label_calls": "(not sent: the run's cap on DetectLabels calls)",
}
_GENERAL_ONLY = ("min_confidence", "max_labels", *FILTER_FIELDS)
# Bumped whenever the tag's input changes meaning, so that old cache entries are never misread.
CACHE_TAG_VERSION = 1


class InvalidLabelOptions(ValueError):
    """An option outside the service's limits; ``option`` names it (the manifest name)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.reason = message


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _canonical_names(option: str, names: Iterable[str]) -> tuple[str, ...]:
    if isinstance(names, str):  # a lone string would otherwise become a list of characters
        raise InvalidLabelOptions(option, "must be a list of names, not a single string")
    given = list(names)
    for name in given:
        if not isinstance(name, str):
            raise InvalidLabelOptions(option, f"{name!r} is not a string")
    unique = sorted(set(given))
    if len(unique) > MAX_FILTER_NAMES:
        raise InvalidLabelOptions(option, f"{len(unique)} names; DetectLabels accepts at most {MAX_FILTER_NAMES}")
    for name in unique:
        if len(name) > MAX_FILTER_NAME_LENGTH:
            raise InvalidLabelOptions(option, f"{name!r} is longer than {MAX_FILTER_NAME_LENGTH} characters")
        if not FILTER_NAME_PATTERN.fullmatch(name):
            raise InvalidLabelOptions(option, f"{name!r} has characters DetectLabels does not accept")
    return tuple(unique)


def _canonical_features(features: Iterable[str]) -> tuple[Feature, ...]:
    if isinstance(features, str):
        raise InvalidLabelOptions("features", "must be a list, not a single string")
    given = list(features)
    known = {feature.value for feature in Feature}
    for feature in given:
        if feature not in known:
            raise InvalidLabelOptions("features", f"{feature!r} is not one of {', '.join(sorted(known))}")
    chosen = tuple(feature for feature in Feature if feature.value in given)  # canonical order, no duplicates
    if not chosen:
        raise InvalidLabelOptions("features", "must name at least one feature")
    return chosen


@dataclass(frozen=True)
class LabelOptions:
    """What one DetectLabels call is asked: always valid, and equal whenever the request is the same.

    Filter lists are kept sorted without duplicates and features in a fixed order, so options given in
    any order compare (and hash, and tag) equal. ``max_label_calls`` is the run's cap on DetectLabels
    calls (another feature's field, carried here so that a manifest has one options object): it is
    never sent and never part of :meth:`cache_tag`.
    """

    min_confidence: float = 55.0
    max_labels: int = 50
    features: tuple[Feature, ...] = (Feature.GENERAL_LABELS,)
    include_labels: tuple[str, ...] = ()
    exclude_labels: tuple[str, ...] = ()
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    max_dominant_colors: int = DEFAULT_MAX_DOMINANT_COLORS
    max_label_calls: int | None = None

    def __post_init__(self) -> None:
        # Frozen, so normalise through object.__setattr__: the canonical form is what equality sees.
        if not _is_number(self.min_confidence) or not 0 <= self.min_confidence <= 100:
            raise InvalidLabelOptions("min_confidence", f"{self.min_confidence!r} is not a number from 0 to 100")
        object.__setattr__(self, "min_confidence", float(self.min_confidence))
        if not _is_integer(self.max_labels) or not 0 <= self.max_labels <= MAX_LABELS_LIMIT:
            raise InvalidLabelOptions(
                "max_labels", f"{self.max_labels!r} is not an integer from 0 to {MAX_LABELS_LIMIT}"
            )
        object.__setattr__(self, "features", _canonical_features(self.features))
        for name in FILTER_FIELDS:
            object.__setattr__(self, name, _canonical_names(name, getattr(self, name)))
        colors = self.max_dominant_colors
        if not _is_integer(colors) or not 0 <= colors <= MAX_DOMINANT_COLORS_LIMIT:
            raise InvalidLabelOptions(
                "max_dominant_colors", f"{colors!r} is not an integer from 0 to {MAX_DOMINANT_COLORS_LIMIT}"
            )
        calls = self.max_label_calls
        if calls is not None and (not _is_integer(calls) or calls < 1):
            raise InvalidLabelOptions("max_label_calls", f"{calls!r} is not a positive integer")

    # --- what the options mean ---------------------------------------------------------------
    @property
    def general_labels(self) -> bool:
        return Feature.GENERAL_LABELS in self.features

    @property
    def image_properties(self) -> bool:
        return Feature.IMAGE_PROPERTIES in self.features

    @property
    def has_filters(self) -> bool:
        return any(getattr(self, name) for name in FILTER_FIELDS)

    @property
    def has_inclusion_filters(self) -> bool:
        return bool(self.include_labels or self.include_categories)

    # --- the request ---------------------------------------------------------------------------
    def request_params(self) -> dict[str, Any]:
        """The DetectLabels parameters besides ``Image``, with only what applies.

        ``MinConfidence``, ``MaxLabels`` and ``Settings.GeneralLabels`` are "only valid when
        GENERAL_LABELS is specified" (API reference), so they are sent only then; empty filter lists
        are left out; ``Settings.ImageProperties`` goes with IMAGE_PROPERTIES.

        >>> LabelOptions().request_params()
        {'Features': ['GENERAL_LABELS'], 'MinConfidence': 55.0, 'MaxLabels': 50}
        """
        params: dict[str, Any] = {"Features": [feature.value for feature in self.features]}
        settings: dict[str, Any] = {}
        if self.general_labels:
            params["MinConfidence"] = self.min_confidence
            params["MaxLabels"] = self.max_labels
            general = {
                key: list(values)
                for key, values in (
                    ("LabelInclusionFilters", self.include_labels),
                    ("LabelExclusionFilters", self.exclude_labels),
                    ("LabelCategoryInclusionFilters", self.include_categories),
                    ("LabelCategoryExclusionFilters", self.exclude_categories),
                )
                if values
            }
            if general:
                settings["GeneralLabels"] = general
        if self.image_properties:
            settings["ImageProperties"] = {"MaxDominantColors": self.max_dominant_colors}
        if settings:
            params["Settings"] = settings
        return params

    @classmethod
    def from_request(cls, params: Mapping[str, Any]) -> LabelOptions:
        """The options a DetectLabels request carries, with the service's defaults for what it leaves out.

        The inverse of :meth:`request_params` (the Rekognition stand-in reads requests with it).
        Raises :class:`InvalidLabelOptions` where the service answers ``InvalidParameterException``.
        """
        features = params.get("Features") or [Feature.GENERAL_LABELS.value]  # the service's default
        settings = params.get("Settings") or {}
        general = settings.get("GeneralLabels") or {}
        properties = settings.get("ImageProperties") or {}
        return cls(
            min_confidence=params.get("MinConfidence", 55.0),
            max_labels=params.get("MaxLabels", MAX_LABELS_LIMIT),
            features=tuple(features),
            include_labels=tuple(general.get("LabelInclusionFilters") or ()),
            exclude_labels=tuple(general.get("LabelExclusionFilters") or ()),
            include_categories=tuple(general.get("LabelCategoryInclusionFilters") or ()),
            exclude_categories=tuple(general.get("LabelCategoryExclusionFilters") or ()),
            max_dominant_colors=properties.get("MaxDominantColors", DEFAULT_MAX_DOMINANT_COLORS),
        )

    def cache_tag(self, salt: str = "") -> str:
        """16 hex digits naming the answer these options get: equal requests, equal tags.

        It hashes :meth:`request_params` (canonical JSON), so it covers exactly what changes the
        answer: features, confidence, label count and filters only when labels are asked for,
        ``MaxDominantColors`` only with IMAGE_PROPERTIES; ``max_label_calls`` never. ``salt`` is
        anything else a backend's answer depends on (e.g. the local image-properties algorithm's
        version); the label model version is checked on read by the cache, as before.

        >>> a, b = LabelOptions(exclude_labels=("Dog", "Cat", "Cat")), LabelOptions(exclude_labels=("Cat", "Dog"))
        >>> a.cache_tag() == b.cache_tag()
        True
        """
        canonical = json.dumps(
            {"v": CACHE_TAG_VERSION, "request": self.request_params(), "salt": salt},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The options in a manifest's terms (what a result or report can say it was labelled with)."""
        document: dict[str, Any] = {"features": [feature.value for feature in self.features]}
        if self.general_labels:
            document["min_confidence"] = self.min_confidence
            document["max_labels"] = self.max_labels
            document.update({name: list(getattr(self, name)) for name in FILTER_FIELDS if getattr(self, name)})
        if self.image_properties:
            document["max_dominant_colors"] = self.max_dominant_colors
        if self.max_label_calls is not None:
            document["max_label_calls"] = self.max_label_calls
        return document

    def to_message(self) -> dict[str, Any]:
        """Every field, as JSON (a work batch carries its run's options this way); :meth:`from_message` reads it.

        >>> options = LabelOptions(features=("IMAGE_PROPERTIES",), max_label_calls=10)
        >>> LabelOptions.from_message(options.to_message()) == options
        True
        """
        return {
            spec.name: list(value) if isinstance(value := getattr(self, spec.name), tuple) else value
            for spec in fields(self)
        }

    @classmethod
    def from_message(cls, data: Mapping[str, Any]) -> LabelOptions:
        """The options :meth:`to_message` wrote (unknown keys are ignored: a newer writer may add some)."""
        known = {spec.name for spec in fields(cls)}
        return cls(
            **{
                name: tuple(value) if isinstance(value, list) else value
                for name, value in data.items()
                if name in known
            }
        )

    # --- a manifest's own options, within the stack's bounds ---------------------------------------
    def for_manifest(self, raw: object, *, allowed_features: Iterable[str] | None = None) -> LabelOptions:
        """The options for a manifest whose top-level ``"options"`` is ``raw``; ``self`` is the stack's.

        ``None`` (no ``"options"`` key) gives the stack's options unchanged. Anything malformed,
        unknown or outside the bounds raises :class:`ManifestOptionsInvalid` naming the option; a
        value is never clamped. The bounds (a manifest may only ask for less, or stricter):

        * ``min_confidence``: a number from the stack's ``MIN_CONFIDENCE`` up to 100;
        * ``max_labels``: an integer from 1 up to the stack's ``MAX_LABELS``;
        * ``features``: a non-empty list drawn from ``allowed_features`` (default: the stack's own);
        * ``exclude_labels`` / ``exclude_categories``: added to the stack's exclusions;
        * ``include_labels`` / ``include_categories``: only when the stack sets no inclusion filter
          (a manifest can narrow the stack's answer, never widen it);
        * ``max_dominant_colors``: an integer from 0 up to the stack's ``MAX_DOMINANT_COLORS``;
        * ``max_label_calls``: a positive integer, at most the stack's cap when it has one;
        * label options need GENERAL_LABELS and ``max_dominant_colors`` needs IMAGE_PROPERTIES among
          the features the manifest ends up with (an option that could not apply is an error).
        """
        if raw is None:
            return self
        if not isinstance(raw, Mapping):
            raise ManifestOptionsInvalid(f'"options" must be a JSON object, not {type(raw).__name__}', option="options")
        unknown = sorted(str(key) for key in raw if key not in MANIFEST_OPTIONS)
        if unknown:
            raise ManifestOptionsInvalid(
                f'unknown option{"s" if len(unknown) > 1 else ""} {", ".join(map(repr, unknown))} in "options" '
                f"(known: {', '.join(MANIFEST_OPTIONS)})",
                option=unknown[0],
            )
        changes = _ManifestOptions(self, raw, allowed_features).changes()
        values = {spec.name: changes.get(spec.name, getattr(self, spec.name)) for spec in fields(self)}
        try:
            return LabelOptions(**values)
        except InvalidLabelOptions as exc:  # e.g. stack + manifest exclusions over 100 names
            raise ManifestOptionsInvalid(f'"options.{exc.option}": {exc.reason}', option=exc.option) from exc


class _ManifestOptions:
    """Checks one manifest's ``"options"`` against the stack's bounds (see :meth:`LabelOptions.for_manifest`)."""

    def __init__(self, stack: LabelOptions, raw: Mapping[str, Any], allowed: Iterable[str] | None) -> None:
        self.stack = stack
        self.raw = raw
        self.allowed = {str(feature) for feature in (stack.features if allowed is None else allowed)}

    @staticmethod
    def fail(option: str, message: str) -> ManifestOptionsInvalid:
        return ManifestOptionsInvalid(f'"options.{option}" {message}', option=option)

    def changes(self) -> dict[str, Any]:
        stack, raw = self.stack, self.raw
        changes: dict[str, Any] = {}
        if "features" in raw:
            changes["features"] = self.features(raw["features"])
        if "min_confidence" in raw:
            value = raw["min_confidence"]
            if not _is_number(value) or not stack.min_confidence <= value <= 100:
                raise self.fail(
                    "min_confidence",
                    f"must be a number from {stack.min_confidence:g} (the stack's MIN_CONFIDENCE) to 100, "
                    f"not {value!r}",
                )
            changes["min_confidence"] = float(value)
        if "max_labels" in raw:
            changes["max_labels"] = self.integer("max_labels", 1, stack.max_labels, "the stack's MAX_LABELS")
        for name in ("exclude_labels", "exclude_categories"):
            if name in raw:
                changes[name] = (*getattr(stack, name), *self.names(name))
        for name in ("include_labels", "include_categories"):
            if name in raw:
                if stack.has_inclusion_filters:
                    raise self.fail(
                        name,
                        "is not allowed: the stack already keeps only some labels (its inclusion filters); "
                        "a manifest may exclude more, not include others",
                    )
                changes[name] = self.names(name)
        if "max_dominant_colors" in raw:
            changes["max_dominant_colors"] = self.integer(
                "max_dominant_colors", 0, stack.max_dominant_colors, "the stack's MAX_DOMINANT_COLORS"
            )
        if "max_label_calls" in raw:
            ceiling = stack.max_label_calls
            changes["max_label_calls"] = self.integer(
                "max_label_calls", 1, ceiling, "the stack's MAX_LABEL_CALLS_PER_MANIFEST" if ceiling else None
            )
        self.check_applicable(changes.get("features", stack.features))
        return changes

    def features(self, value: object) -> tuple[Feature, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
            raise self.fail("features", f'must be a non-empty list such as ["GENERAL_LABELS"], not {value!r}')
        for item in value:
            if item not in {feature.value for feature in Feature}:
                raise self.fail("features", f"has {item!r}: not one of GENERAL_LABELS, IMAGE_PROPERTIES")
            if item not in self.allowed:
                raise self.fail(
                    "features", f"asks for {item}, which this stack does not allow ({', '.join(sorted(self.allowed))})"
                )
        return _canonical_features(value)

    def integer(self, option: str, low: int, high: int | None, bound: str | None) -> int:
        value = self.raw[option]
        if not _is_integer(value) or value < low or (high is not None and value > high):
            limit = f"from {low} to {high} ({bound})" if high is not None else f"of at least {low}"
            raise self.fail(option, f"must be an integer {limit}, not {value!r}")
        return int(value)

    def names(self, option: str) -> tuple[str, ...]:
        value = self.raw[option]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(option, f'must be a list of names such as ["Person"], not {value!r}')
        for item in value:
            if not item or item != item.strip():
                raise self.fail(option, f"has {item!r}: names are exact, without empty or padded entries")
        try:
            return _canonical_names(option, value)
        except InvalidLabelOptions as exc:
            raise self.fail(option, exc.reason) from exc

    def check_applicable(self, features: tuple[Feature, ...]) -> None:
        if Feature.GENERAL_LABELS not in features:
            for name in _GENERAL_ONLY:
                if name in self.raw:
                    raise self.fail(name, "needs GENERAL_LABELS among the features")
        if Feature.IMAGE_PROPERTIES not in features and "max_dominant_colors" in self.raw:
            raise self.fail("max_dominant_colors", "needs IMAGE_PROPERTIES among the features")


def parse_names(raw: str) -> tuple[str, ...]:
    """A comma-separated setting (``LABEL_EXCLUDE_CATEGORIES``) as names; blanks are skipped.

    >>> parse_names(" Person Description, Weapons and Military ,")
    ('Person Description', 'Weapons and Military')
    """
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_features(raw: str) -> tuple[Feature, ...]:
    """A comma-separated ``LABEL_FEATURES`` setting; raises :class:`InvalidLabelOptions`.

    >>> parse_features("IMAGE_PROPERTIES, GENERAL_LABELS")
    (<Feature.GENERAL_LABELS: 'GENERAL_LABELS'>, <Feature.IMAGE_PROPERTIES: 'IMAGE_PROPERTIES'>)
    """
    return _canonical_features(parse_names(raw))
