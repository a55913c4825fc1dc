"""One ``s3://bucket/key`` entry: its labels from the cache by version or ETag, through ``Image.S3Object``, or
read from S3 and converted. Never over HTTP: the safe fetcher is not involved, there is no SSRF surface.

:func:`labeler.logic.pipeline.label_entry` calls :func:`label_s3_entry` for an entry whose URL is ``s3://``;
everything around it (the look at the entry's key, the one record write, the index row, the report, the
run's cap and options) is the pipeline's, the same as for an HTTP entry. Per entry:

1. **Parse and allow-list** (:func:`~labeler.logic.s3_sources.parse_s3_source`) before any request:
   ``invalid_url``, or ``source_not_allowed`` for a bucket outside ``SOURCE_BUCKETS`` (nothing is sent to it).
2. **An entry naming a ``versionId``** knows its cache identity already: a cached answer (same version, same
   options) costs no request to the source bucket and no DetectLabels call.
3. **The first read** (one ranged GetObject, 128 KiB: :meth:`~labeler.adapters.s3_source.S3Sources.read_start`)
   gives the size, ETag, version id and the image header. The identity (the version id, else the ETag) is
   looked up in the cache; one call per identity is in flight at once (two entries naming the same object).
   The version it found pins every later request (the whole object, DetectLabels' ``Version``).
4. **The route** (:func:`~labeler.logic.s3_sources.s3_object_route`): a JPEG/PNG DetectLabels takes as it is,
   up to 15 MB and 80–10,000 px, is labeled through ``Image.S3Object`` (Rekognition reads the object with the
   function's permissions; nothing more is read here), when the backend can (Rekognition; the offline
   backend cannot). Anything else is read whole (GetObject, bounded by ``MAX_IMAGE_BYTES``; a small object's
   first read is already all of it) and labeled like a downloaded body: ``prepare_image`` (convert,
   downscale, the image memory budget), the content cache by SHA-256, the bytes call. If Rekognition refuses
   an S3Object for the object itself (``S3OBJECT_REFUSALS``: a bucket in another region, bytes that are not
   what their header says), the entry takes that path, once.
5. The answer is cached under the identity with the run's cache tag.

The record keeps the classic top level; its ``image`` has ``sha256`` only when the bytes were read (not on the
S3Object route), and ``source`` names the object: ``{"bucket", "key", "version_id", "etag", "last_modified",
"route"}``, ``route`` being ``s3object``, ``download`` or ``cache``.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from labeler.adapters.fetch import BodyMemory, FetchedImage
from labeler.adapters.image_header import ImageHeader, read_header
from labeler.adapters.labels.base import DetectsS3Objects
from labeler.adapters.s3_source import SourceObject
from labeler.logic.cache import CachedLabels
from labeler.logic.pipeline import Deadline, EntryOutcome, Services, _label_fresh, _success, _Timings
from labeler.logic.s3_sources import (
    S3OBJECT_REFUSALS,
    Route,
    S3ObjectRef,
    parse_s3_source,
    s3_object_route,
    source_identity,
)
from labeler.models.errors import EmptyBody, LabelingFailed, SourceUnreadable
from labeler.models.records import ManifestEntry, ResultRecord
from labeler.observability import logger


def label_s3_entry(
    services: Services, entry: ManifestEntry, timings: _Timings, deadline: Deadline
) -> tuple[ResultRecord, EntryOutcome]:
    """Label one ``s3://`` entry: its record and outcome. Raises the entry's LabelerError or OutOfTime."""
    ref = parse_s3_source(entry.url, entry.version_id, allowed=services.settings.source_bucket_names)
    known = _identity(ref, None)  # the entry's own versionId: its identity before any request
    # One answer per identity in flight: a second entry naming the same object waits, then finds it cached.
    with _held(services, known):
        found = _cached(services, entry, ref, known, None) if known is not None else None
        if found is None:
            if services.sources is None:
                raise SourceUnreadable(f"{ref.url}: no S3 source reader", bucket=ref.bucket, key=ref.key)
            deadline.check("before reading the S3 object")
            started = time.perf_counter()
            seen = services.sources.read_start(ref)
            timings.mark("download", started)
            if seen.size == 0:
                raise EmptyBody(f"{ref.url} is an empty object")
            if ref.version_id is None and seen.pinned_version:
                ref = replace(ref, version_id=seen.pinned_version)  # what was seen is what is labeled
            identity = known or _identity(ref, seen)
            with _held(services, None if known else identity):
                if known is None and identity is not None:
                    found = _cached(services, entry, ref, identity, seen)
                if found is None:
                    found = _label_object(services, entry, ref, seen, timings, deadline, started)
                    if identity is not None and services.cache is not None and services.labeling is not None:
                        services.cache.put_source_labels(identity, services.labeling.cache_tag, _answer(found[0]))
    found[1].download_ms = timings.marks.get("download", 0.0)
    return found


def _held(services: Services, identity: str | None) -> AbstractContextManager[None]:
    return services.in_flight.hold(identity) if identity is not None else nullcontext()


def _identity(ref: S3ObjectRef, seen: SourceObject | None) -> str | None:
    """The cache identity (:func:`source_identity`); None when not known (yet): no version, no ETag."""
    try:
        if seen is None:
            return source_identity(ref)  # the entry's own versionId ("null" is not one: unversioned content)
        return source_identity(ref, version_id=seen.pinned_version, etag=seen.etag)
    except ValueError:
        return None


def _source(ref: S3ObjectRef, seen: SourceObject | None, route: Route | str) -> dict[str, Any]:
    return {
        "bucket": ref.bucket,
        "key": ref.key,
        "version_id": ref.version_id,
        "etag": seen.etag if seen is not None else None,
        "last_modified": seen.last_modified if seen is not None else None,
        "route": route,
    }


def _cached(
    services: Services, entry: ManifestEntry, ref: S3ObjectRef, identity: str, seen: SourceObject | None
) -> tuple[ResultRecord, EntryOutcome] | None:
    if services.cache is None or services.labeling is None:
        return None
    cached = services.cache.get_source_labels(identity, services.labeling.cache_tag)
    if cached is None:
        return None
    sha256 = cached.image.get("sha256")
    record = _success(entry, cached, sha256, _source(ref, seen, "cache"), cached_labels=True, not_modified=False)
    return record, EntryOutcome(ok=True, cached=True)


def _label_object(
    services: Services,
    entry: ManifestEntry,
    ref: S3ObjectRef,
    seen: SourceObject,
    timings: _Timings,
    deadline: Deadline,
    read_started: float,
) -> tuple[ResultRecord, EntryOutcome]:
    header = read_header(seen.start)
    route = s3_object_route(seen.size, header.format, header.width, header.height, as_is=header.as_is)
    if route == "s3object" and isinstance(services.backend, DetectsS3Objects):
        try:
            return _label_in_place(services, services.backend, entry, ref, seen, header, timings, deadline)
        except LabelingFailed as exc:
            if exc.details.get("aws_code") not in S3OBJECT_REFUSALS:
                raise
            logger.info(
                "Rekognition refused the S3 object itself; reading and converting it",
                extra={"image_id": entry.image_id, "url": ref.url, "aws_code": exc.details.get("aws_code")},
            )
    max_bytes = services.settings.max_image_bytes
    fetched = _read_whole(services, ref, seen, max_bytes, deadline)
    timings.mark("download", read_started)
    deadline.check("after reading the S3 object")
    record, outcome = _label_fresh(services, entry, fetched, timings, deadline)
    record.metadata["source"] = _source(ref, seen, "download")
    return record, outcome


def _read_whole(
    services: Services, ref: S3ObjectRef, seen: SourceObject, max_bytes: int, deadline: Deadline
) -> FetchedImage:
    """The whole object as a downloaded body, held in the image memory budget as a download's body is
    (docs/memory.md) until the returned object is dropped.

    The object's bytes are then labeled as a download's are (prepare_image, the content cache, the bytes call);
    no validators: the URL memo is for HTTP, an S3 object is cached by its version or ETag.
    """
    if seen.complete:  # the first read (at most 128 KiB) is all of it
        return FetchedImage(
            body=seen.start, final_url=ref.url, status=200, content_type=None, etag=None, last_modified=None
        )
    assert services.sources is not None  # the first read came from it
    memory = BodyMemory(services.fetcher.memory)
    # the size is known from the first read: wait for that much before reading any of it
    memory.wait_for(min(seen.size, max_bytes), deadline.work_ends)
    try:
        data = services.sources.read_object(ref, seen, max_bytes=max_bytes)
    except BaseException:
        memory.release()
        raise
    return memory.keep(
        FetchedImage(body=data, final_url=ref.url, status=200, content_type=None, etag=None, last_modified=None)
    )


def _label_in_place(
    services: Services,
    backend: DetectsS3Objects,
    entry: ManifestEntry,
    ref: S3ObjectRef,
    seen: SourceObject,
    header: ImageHeader,
    timings: _Timings,
    deadline: Deadline,
) -> tuple[ResultRecord, EntryOutcome]:
    """DetectLabels on ``Image.S3Object``: the same cap, options and deadline as the bytes call."""
    labeling = services.labeling
    assert labeling is not None  # set by Services.__post_init__
    # Reserved against the run's cap; a refusal (an exception) gives the reservation back.
    with labeling.budget.reserve() if labeling.budget is not None else nullcontext():
        deadline.check("before labeling")
        started = time.perf_counter()
        s3_object = ref.rekognition_image()["S3Object"]
        result = backend.detect_s3_object(s3_object, labeling.options, deadline.work_ends)
    timings.mark("label", started)
    image = {
        "bytes": seen.size,
        "format": header.format,
        "width": header.width,
        "height": header.height,
        "converted": False,
        "downscaled": False,
    }
    labeled = CachedLabels(
        labels=result.labels,
        model_version=result.model_version,
        image=image,
        image_properties=result.extra.get("ImageProperties"),
    )
    record = _success(entry, labeled, None, _source(ref, seen, "s3object"), cached_labels=False, not_modified=False)
    record.metadata["label_backend"] = result.backend
    return record, EntryOutcome(ok=True, label_ms=timings.marks.get("label", 0.0), label_calls=1)


def _answer(record: ResultRecord) -> CachedLabels:
    """What the cache keeps of a record's labels (the same document whichever route made them)."""
    properties = record.metadata.get("image_properties")
    return CachedLabels(
        labels=list(record.labels or []),
        model_version=str(record.metadata.get("label_model_version", "")),
        image=dict(record.metadata.get("image") or {}),
        image_properties=properties if isinstance(properties, dict) else None,
    )
