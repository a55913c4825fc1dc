"""The one interface every label backend implements (Rekognition, the offline model, test stand-ins).

>>> backend = get_backend("rekognition")          # doctest: +SKIP
>>> result = backend.detect_labels(jpeg_bytes, min_confidence=55, max_labels=50)  # doctest: +SKIP
>>> result.labels[0]["Name"], result.model_version  # doctest: +SKIP
('Cat', '3.0')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from labeler.models.label_options import Feature, LabelOptions


@dataclass(frozen=True)
class LabelResult:
    """Labels exactly as Rekognition ``DetectLabels`` returns them, plus the model that made them."""

    labels: list[dict[str, Any]]
    model_version: str
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LabelBackend(Protocol):
    """Labels one JPEG or PNG image (≤ 5 MB, sides 80–10,000 px: the caller guarantees it).

    Raises ``labeler.models.errors.LabelingFailed`` for a rejected image and
    ``labeler.models.errors.Throttled`` when throttling outlasts every retry.

    ``deadline`` is a ``time.monotonic()`` instant by which the call must have returned (the
    invocation's time budget for this step); ``None`` means no limit. A backend that cannot finish
    (or even start) an attempt before it raises ``labeler.models.errors.OutOfTime``: the entry is
    then left unfinished for the retry, never recorded as failed.
    """

    name: str

    def detect_labels(
        self, image: bytes, *, min_confidence: float, max_labels: int, deadline: float | None = None
    ) -> LabelResult: ...


@runtime_checkable
class GetsReady(Protocol):
    """A backend that can get ready for a call ahead of it (``RekognitionBackend``: the limiter's client).

    ``prepare()`` returns at once and may be called any number of times; the pipeline calls it when an
    image starts downloading, so that the work overlaps the download, and ``release()`` from the same
    thread when that entry is done.
    """

    def prepare(self, likely: bool = True) -> None: ...

    def release(self) -> None:
        """The entry this thread called :meth:`prepare` for is done (called whatever happened to it)."""
        ...


@runtime_checkable
class DetectsWithOptions(Protocol):
    """A backend that answers every DetectLabels option: features, GeneralLabels filters, MaxDominantColors.

    ``result.labels`` are the Labels (none unless GENERAL_LABELS is asked for); with IMAGE_PROPERTIES,
    ``result.extra["ImageProperties"]`` is DetectLabels' ``ImageProperties`` object, unchanged.
    The offline backend implements it; a Rekognition backend sends ``options.request_params()``.
    """

    name: str

    def detect(self, image: bytes, options: LabelOptions, deadline: float | None = None) -> LabelResult: ...


@runtime_checkable
class DetectsS3Objects(Protocol):
    """A backend that can label an object in S3 without the caller reading it (DetectLabels' ``Image.S3Object``).

    Rekognition does; the offline backend does not (``s3://`` entries are then read and converted).
    ``s3_object`` is ``{"Bucket", "Name"[, "Version"]}``.
    """

    name: str

    def detect_s3_object(
        self, s3_object: Mapping[str, str], options: LabelOptions, deadline: float | None = None
    ) -> LabelResult: ...


def result_from_response(response: Mapping[str, Any], backend: str) -> LabelResult:
    """A DetectLabels response as a :class:`LabelResult` (``ImageProperties``, when present, in ``extra``).

    >>> result_from_response({"Labels": [], "LabelModelVersion": "3.0", "ImageProperties": {}}, "rekognition").extra
    {'ImageProperties': {}}
    """
    extra = {"ImageProperties": response["ImageProperties"]} if "ImageProperties" in response else {}
    return LabelResult(
        labels=list(response.get("Labels", [])),
        model_version=str(response.get("LabelModelVersion", "")),
        backend=backend,
        extra=extra,
    )


def detect_with_options(
    backend: LabelBackend, image: bytes, options: LabelOptions, deadline: float | None = None
) -> LabelResult:
    """Ask ``backend`` DetectLabels with ``options``: its ``detect`` when it has one, else ``detect_labels``
    (a backend that only knows labels answers labels alone, without filters).

    Raises ``LabelingFailed`` when the options ask for more than such a backend can answer.
    """
    if isinstance(backend, DetectsWithOptions):
        return backend.detect(image, options, deadline)
    if options.features != (Feature.GENERAL_LABELS,) or options.has_filters:
        from labeler.models.errors import LabelingFailed

        raise LabelingFailed(f"the {backend.name!r} label backend answers labels only, without filters")
    return backend.detect_labels(
        image, min_confidence=options.min_confidence, max_labels=options.max_labels, deadline=deadline
    )
