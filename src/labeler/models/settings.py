"""Typed configuration, parsed once from the environment and validated.

>>> Settings.from_env({"OUTPUT_BUCKET": "my-results"}).max_workers
32
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labeler.models.label_options import LabelOptions

MIB = 1024 * 1024


class ConfigurationError(ValueError):
    """An environment variable is missing or has a value the function cannot use."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Every knob of the pipeline; environment variable = upper-cased field name."""

    output_bucket: str
    min_confidence: float = 55.0
    max_labels: int = 50
    max_image_bytes: int = 15 * MIB
    download_timeout_seconds: float = 10.0
    max_workers: int = 32
    allow_private_networks: bool = False
    label_backend: str = "rekognition"
    max_redirects: int = 5
    # Images declaring more pixels are refused from their header, before any decoding (decompression bombs).
    max_image_pixels: int = 40_000_000
    # Image memory held at once by all workers: downloaded bodies, decoded pixels, converted output and the
    # copies of DetectLabels requests (labeler.adapters.memory). Big images queue for it instead of
    # exhausting the function's memory; at most half of what the function has beyond its base.
    image_memory_mb: int = 96
    # Set by Lambda: the function's memory in MB (0 when unknown, e.g. local runs).
    aws_lambda_function_memory_size: int = 0
    max_manifest_bytes: int = 1024 * MIB
    max_manifest_entries: int = 1_000_000
    inline_max_images: int = 100
    batch_size: int = 50
    work_queue_url: str = ""
    # The account's DetectLabels TPS quota in this region: one limiter in STATE_TABLE shares it among
    # every invocation (without a table, this process alone paces itself to it).
    rekognition_max_tps: float = 50.0
    # The stack's most concurrent workers (template: WorkerMaxConcurrency). Only used while the shared
    # limiter's table fails: each invocation then paces itself to REKOGNITION_MAX_TPS / (this + 1).
    worker_max_concurrency: int = 5
    # DynamoDB table for fan-out progress and Powertools idempotency (template: StateTable).
    state_table: str = ""
    # How long a delivery's in-progress record outlives a killed invocation (a heartbeat renews it
    # while the work runs): Lambda's async retries come about 1 and 3 minutes after a failure.
    idempotency_lease_seconds: float = 45.0
    # Deliveries of a work batch (the queue's maxReceiveCount): the last one labels nothing, it
    # records what is unfinished as batch_failed, so the default 4 gives 3 labeling attempts.
    max_receive_count: int = 4
    dead_letter_queue_url: str = ""
    label_cache: bool = True
    # Buckets that s3://bucket/key entries may name, comma-separated (template: SourceBuckets); empty: none.
    source_buckets: str = ""
    # DetectLabels Features for every image (comma-separated): GENERAL_LABELS and/or IMAGE_PROPERTIES,
    # which is billed per image on top of the labels (docs/image-properties.md).
    label_features: str = "GENERAL_LABELS"
    # The features a manifest's "options" may ask for; empty: LABEL_FEATURES. Opt in to IMAGE_PROPERTIES here.
    manifest_features: str = ""
    # Settings.GeneralLabels filters for every image (comma-separated exact names; a manifest may add exclusions).
    label_include_labels: str = ""
    label_exclude_labels: str = ""
    label_include_categories: str = ""
    label_exclude_categories: str = ""
    # Settings.ImageProperties.MaxDominantColors (0-20), and the most a manifest may ask for.
    max_dominant_colors: int = 10
    # Most DetectLabels calls one manifest run may make, every invocation together; 0 = no cap. A manifest
    # may lower it (options.max_label_calls). The default is MAX_MANIFEST_ENTRIES's (docs/cost.md).
    max_label_calls_per_manifest: int = 1_000_000

    @property
    def source_bucket_names(self) -> frozenset[str]:
        """``SOURCE_BUCKETS`` as a set of names (blanks between commas ignored)."""
        return frozenset(name.strip() for name in self.source_buckets.split(",") if name.strip())

    def label_options(self) -> LabelOptions:
        """The stack's DetectLabels options: what every manifest gets, and the bounds of a manifest's own.

        >>> settings = Settings("out", label_features="GENERAL_LABELS,IMAGE_PROPERTIES")
        >>> settings.label_options().request_params()["Features"]
        ['GENERAL_LABELS', 'IMAGE_PROPERTIES']
        """
        from labeler.models.label_options import LabelOptions, parse_features, parse_names

        return LabelOptions(
            min_confidence=self.min_confidence,
            max_labels=self.max_labels,
            features=parse_features(self.label_features),
            include_labels=parse_names(self.label_include_labels),
            exclude_labels=parse_names(self.label_exclude_labels),
            include_categories=parse_names(self.label_include_categories),
            exclude_categories=parse_names(self.label_exclude_categories),
            max_dominant_colors=self.max_dominant_colors,
            max_label_calls=self.max_label_calls_per_manifest or None,
        )

    @property
    def manifest_feature_names(self) -> tuple[str, ...]:
        """``MANIFEST_FEATURES`` (empty: ``LABEL_FEATURES``) as feature names."""
        from labeler.models.label_options import parse_features

        return tuple(str(feature) for feature in parse_features(self.manifest_features or self.label_features))

    @property
    def fans_out(self) -> bool:
        """Large manifests go to the work queue: needs the queue and the state table (the template sets both)."""
        return bool(self.work_queue_url and self.state_table)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = spec.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
            try:
                if kind == "bool":
                    values[spec.name] = _parse_bool(raw)
                elif kind == "int":
                    values[spec.name] = int(raw)
                elif kind == "float":
                    values[spec.name] = float(raw)
                else:
                    values[spec.name] = raw.strip()
            except ValueError as exc:
                raise ConfigurationError(f"{name}={raw!r}: {exc}") from exc
        if not values.get("output_bucket"):
            raise ConfigurationError("OUTPUT_BUCKET is required")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = [
            (0 <= self.min_confidence <= 100, "MIN_CONFIDENCE must be between 0 and 100"),
            (1 <= self.max_labels <= 1000, "MAX_LABELS must be between 1 and 1000"),
            (self.max_image_bytes > 0, "MAX_IMAGE_BYTES must be positive"),
            (self.download_timeout_seconds > 0, "DOWNLOAD_TIMEOUT_SECONDS must be positive"),
            (1 <= self.max_workers <= 256, "MAX_WORKERS must be between 1 and 256"),
            (0 <= self.max_redirects <= 20, "MAX_REDIRECTS must be between 0 and 20"),
            (self.max_image_pixels > 0, "MAX_IMAGE_PIXELS must be positive"),
            (self.image_memory_mb >= 16, "IMAGE_MEMORY_MB must be at least 16"),
            (self.label_backend in {"rekognition", "local"}, "LABEL_BACKEND must be rekognition or local"),
            (self.max_manifest_bytes > 0, "MAX_MANIFEST_BYTES must be positive"),
            (self.max_manifest_entries > 0, "MAX_MANIFEST_ENTRIES must be positive"),
            (self.inline_max_images >= 0, "INLINE_MAX_IMAGES must not be negative"),
            (1 <= self.batch_size <= 1000, "BATCH_SIZE must be between 1 and 1000"),
            (self.rekognition_max_tps > 0, "REKOGNITION_MAX_TPS must be positive"),
            (self.worker_max_concurrency >= 1, "WORKER_MAX_CONCURRENCY must be at least 1"),
            (self.idempotency_lease_seconds > 0, "IDEMPOTENCY_LEASE_SECONDS must be positive"),
            (self.max_receive_count >= 2, "MAX_RECEIVE_COUNT must be at least 2 (the last delivery labels nothing)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        self._validate_label_options()

    def _validate_label_options(self) -> None:
        from labeler.models.label_options import InvalidLabelOptions

        if self.max_label_calls_per_manifest < 0:
            raise ConfigurationError("MAX_LABEL_CALLS_PER_MANIFEST must be 0 (no cap) or positive")
        names = {"features": "LABEL_FEATURES", "max_dominant_colors": "MAX_DOMINANT_COLORS"}
        try:
            options = self.label_options()
        except InvalidLabelOptions as exc:
            name = names.get(exc.option, f"LABEL_{exc.option.upper()}")
            raise ConfigurationError(f"{name}: {exc.reason}") from exc
        try:
            self.manifest_feature_names  # noqa: B018 - parsed for its validation
        except InvalidLabelOptions as exc:
            raise ConfigurationError(f"MANIFEST_FEATURES: {exc.reason}") from exc
        if options.has_filters and not options.general_labels:
            raise ConfigurationError(
                "the LABEL_INCLUDE_*/LABEL_EXCLUDE_* filters need GENERAL_LABELS in LABEL_FEATURES"
            )
