"""The pipeline: one entry is look → fetch → check → label → store; a manifest is its entries run concurrently.

Every entry ends in exactly one result object: labels, or an error record with a stable code.
Nothing here knows about Lambda events; handlers build a :class:`Services` and call
:func:`process_manifest` (S3 trigger) or :func:`process_entries` (SQS work batches).

One way for each job:

* **one writer of records**, :func:`_store_record` (labels and errors alike, through the guard of
  :mod:`labeler.logic.guard`), and one builder of error records, :func:`record_error`, for a
  failed entry, a rejected entry and a given-up batch;
* **one mechanism that finds an earlier attempt**: before an entry is labeled, its key is looked
  at (a ``HEAD`` issued in the read-ahead pool, beside the URL-memo read): a record of the same
  run means already done (reused, nothing downloaded), of a newer run means superseded;
* **one report writer**, :func:`labeler.logic.report.publish_report`, and one end of a run,
  :func:`finish_run`, which calls ``Services.on_run_finished`` once per run.

>>> services = Services(settings, store, fetcher, backend, cache)          # doctest: +SKIP
>>> report = process_manifest(services, ManifestRef("in-bucket", "manifests/a.json"))  # doctest: +SKIP
>>> report["succeeded"] + report["failed"] == report["total"]              # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from typing import TYPE_CHECKING, Any, Protocol

from labeler.adapters.fetch import FetchedImage, ImageFetcher, NotModified, Validators
from labeler.adapters.images import prepare_image, request_memory, reserve_memory
from labeler.adapters.labels.base import GetsReady, LabelBackend, detect_with_options
from labeler.adapters.store import ObjectHead, OpenedManifest, StoredRecord
from labeler.logic.budget import BudgetStore, CallBudget, InMemoryBudgetStore, effective_cap
from labeler.logic.cache import CachedLabels, KeyedLocks, LabelCache, UrlMemo, label_cache_tag
from labeler.logic.guard import NOT_LOOKED, GuardedStore, Head, Verdict, guarded_put, judge
from labeler.logic.index_rows import INLINE_PART
from labeler.logic.keys import entry_key, run_key
from labeler.logic.manifest import read_manifest
from labeler.logic.report import (
    RECHECK_CHANGED,
    RECHECK_FAILED,
    RECHECK_GONE,
    RECHECK_UNCHANGED,
    RunState,
    Tally,
    final_status,
    publish_report,
    utc_now,
)
from labeler.logic.run_index import IndexWriteFailed, PartIndex
from labeler.logic.s3_sources import S3ObjectRef, is_s3_url, source_identity
from labeler.models.errors import (
    DownloadTimeout,
    HttpStatusError,
    InternalError,
    LabelerError,
    ManifestError,
    OutOfTime,
)
from labeler.models.label_options import LabelOptions
from labeler.models.records import EntryItem, ManifestEntry, ManifestRef, RejectedEntry, ResultRecord, recheck_iso
from labeler.models.settings import Settings
from labeler.observability import logger

if TYPE_CHECKING:
    from labeler.adapters.s3_source import S3Sources

# Rekognition's limits for image bytes and sides (see docs/reference.md, "Limits").
REKOGNITION_MAX_BYTES = 5 * 1024 * 1024
REKOGNITION_MIN_SIDE = 80
REKOGNITION_MAX_SIDE = 10_000

# The deadline's margin: a tenth of the time the invocation started with, within these bounds.
DEADLINE_MARGIN_FRACTION = 0.10
DEADLINE_MIN_MARGIN_SECONDS = 0.5
DEADLINE_MAX_MARGIN_SECONDS = 30.0


class ResultStore(GuardedStore, Protocol):
    """What the pipeline needs from storage (``labeler.adapters.store.S3Store`` in production)."""

    def get_json(self, key: str) -> dict[str, Any] | None: ...

    def get_json_with_metadata(self, key: str) -> tuple[dict[str, Any], dict[str, str]] | None: ...

    def get_record(self, key: str) -> StoredRecord | None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def open_manifest(self, ref: ManifestRef) -> OpenedManifest: ...


class RunClaims(Protocol):
    """The part of the progress table (``labeler.adapters.progress``) that ends a run exactly once."""

    def claim_finished(self, run_key: str) -> bool: ...

    def release_finished(self, run_key: str) -> None: ...


class ResultWriteFailed(RuntimeError):
    """A record could not be stored: the invocation must fail so that S3/SQS delivers the event again."""


class DeadlineReached(RuntimeError):
    """The Lambda deadline is near: work was stopped cleanly and the rest is left for the retry."""


def _no_hook(report: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class RunLabeling:
    """How the entries of one run are labeled in this invocation: the run's options, their cache tag, the budget.

    ``options.max_label_calls`` is the run's DetectLabels cap (``None``: none); ``budget`` counts this
    invocation's calls against it (``None``: calls are not counted).
    """

    options: LabelOptions
    cache_tag: str
    budget: CallBudget | None = None

    @classmethod
    def of(cls, options: LabelOptions, backend: LabelBackend, budget: CallBudget | None = None) -> RunLabeling:
        # The local backend computes image properties itself: its algorithm's version is part of the answer.
        salt = str(getattr(backend, "properties_version", "")) if options.image_properties else ""
        return cls(options, label_cache_tag(options, salt), budget)


@dataclass
class Services:
    """Everything the pipeline talks to, built once per container by the handler.

    ``on_run_finished(report)`` is called exactly once per run, after its final report is stored
    (gated by ``progress.claim_finished`` when there is a state table): the place for a
    "run finished" event. ``budgets`` keeps each run's DetectLabels count (the state table, or this
    process's memory). ``labeling`` is the stack's own until :func:`label_entries` sets a run's.
    ``sources`` reads the objects ``s3://`` entries name (:mod:`labeler.logic.s3_entries`).
    """

    settings: Settings
    store: ResultStore
    fetcher: ImageFetcher
    backend: LabelBackend
    cache: LabelCache | None = None
    in_flight: KeyedLocks = field(default_factory=KeyedLocks)
    progress: RunClaims | None = None
    on_run_finished: Callable[[dict[str, Any]], None] = _no_hook
    budgets: BudgetStore = field(default_factory=InMemoryBudgetStore)
    labeling: RunLabeling | None = None
    sources: S3Sources | None = None

    def __post_init__(self) -> None:
        if self.labeling is None:
            self.labeling = RunLabeling.of(self.settings.label_options(), self.backend)

    def for_run(self, options: LabelOptions, budget: CallBudget | None) -> Services:
        """The same services labeling with a run's options and budget (adapters, locks and cache shared)."""
        return replace(self, labeling=RunLabeling.of(options, self.backend, budget))


def run_options(settings: Settings, raw: object) -> LabelOptions:
    """A run's options, decided once per run: the manifest's ``"options"`` (``raw``) within the stack's bounds.

    ``max_label_calls`` is then the run's cap (:func:`labeler.logic.budget.effective_cap`: the stack's
    ``MAX_LABEL_CALLS_PER_MANIFEST``, lowered, never raised, by the manifest). Raises
    :class:`~labeler.models.errors.ManifestOptionsInvalid`.
    """
    options = settings.label_options().for_manifest(raw, allowed_features=settings.manifest_feature_names)
    return replace(
        options, max_label_calls=effective_cap(settings.max_label_calls_per_manifest, options.max_label_calls)
    )


@dataclass(frozen=True)
class Deadline:
    """When an invocation must stop starting work: a margin before its end (``time.monotonic()`` instants).

    The margin is 10 % of the time the invocation started with, at least 0.5 s and at most 30 s,
    so that an invocation given little time still has most of it to work with. No entry starts
    after ``work_ends``, each download is cut there, and DetectLabels gets it as its deadline; the
    margin is left for writing the records of the entries in flight and the report.

    >>> Deadline.for_invocation(60_000).margin_seconds, Deadline.for_invocation(900_000).margin_seconds
    (6.0, 30.0)
    """

    work_ends: float | None = None
    ends: float | None = None

    @classmethod
    def for_invocation(cls, remaining_ms: int | None) -> Deadline:
        """The deadline of an invocation with ``remaining_ms`` left (``None``: no limit, e.g. local runs)."""
        if remaining_ms is None:
            return cls()
        total = max(0.0, remaining_ms / 1000)
        margin = min(DEADLINE_MAX_MARGIN_SECONDS, max(DEADLINE_MIN_MARGIN_SECONDS, total * DEADLINE_MARGIN_FRACTION))
        now = time.monotonic()
        return cls(work_ends=now + total - margin, ends=now + total)

    @property
    def margin_seconds(self) -> float:
        return 0.0 if self.work_ends is None or self.ends is None else round(self.ends - self.work_ends, 3)

    def seconds_left(self) -> float:
        """Seconds until new work must stop (infinite without a limit; negative once passed)."""
        return math.inf if self.work_ends is None else self.work_ends - time.monotonic()

    def expired(self) -> bool:
        return self.seconds_left() <= 0

    def check(self, step: str) -> None:
        """Raise :class:`OutOfTime` (the entry is left for the retry) once new work must stop."""
        if self.expired():
            raise OutOfTime(f"the invocation's deadline is near ({step})")


@dataclass
class EntryOutcome:
    ok: bool
    code: str | None = None
    cached: bool = False
    not_modified: bool = False
    already_done: bool = False
    superseded: bool = False
    download_ms: float = 0.0
    label_ms: float = 0.0
    # For the run's index rows: the record this attempt stored, or where the record of an entry found done is.
    record: dict[str, Any] | None = None
    record_key: str | None = None
    label_calls: int = 0  # DetectLabels calls made for this entry (1, or 0: cached, 304, failed before)
    # A re-check run's finding (unchanged, changed, gone, failed), the code of a failure, the entry's id.
    recheck: str | None = None
    recheck_code: str | None = None
    image_id: str | None = None

    def add_to(self, tally: Tally) -> None:
        tally.add_outcome(
            ok=self.ok,
            code=self.code,
            cached=self.cached,
            not_modified=self.not_modified,
            already_done=self.already_done,
            superseded=self.superseded,
            download_ms=self.download_ms,
            label_ms=self.label_ms,
            label_calls=self.label_calls,
            recheck=self.recheck,
            recheck_code=self.recheck_code,
            image_id=self.image_id,
        )

    @classmethod
    def of_existing(cls, verdict: Verdict, existing: ObjectHead, key: str, image_id: str | None = None) -> EntryOutcome:
        """The outcome of an entry whose ``key`` holds a record of this run (done) or of a newer run (superseded).

        A re-check run's own record names what the re-check found in its metadata (``recheck``).
        """
        if verdict is Verdict.SUPERSEDED:
            return cls(ok=False, superseded=True)
        ok = existing.metadata.get("status") == "ok"
        code = None if ok else existing.metadata.get("code", "internal_error")
        found = existing.metadata.get("recheck") or None
        return cls(
            ok=ok,
            code=code,
            already_done=True,
            record_key=key,
            recheck=found,
            recheck_code=code if found == RECHECK_FAILED else None,
            image_id=image_id,
        )


class InvocationTally:
    """What this invocation itself finished (not found done, not superseded): the numbers for the metrics.

    Thread-safe; ``add`` is given as ``on_outcome``, ``add_calls`` as ``on_calls``: ``label_calls`` is
    every DetectLabels call the invocation made, also those whose entry's record could not be written.
    """

    def __init__(self) -> None:
        self.tally = Tally()
        self.label_calls = 0
        self._lock = threading.Lock()

    def add_calls(self, calls: int) -> None:
        with self._lock:
            self.label_calls += calls

    def add(self, outcome: EntryOutcome) -> None:
        if outcome.already_done or outcome.superseded:
            return
        with self._lock:
            outcome.add_to(self.tally)


# --- one entry --------------------------------------------------------------------------------
@dataclass
class _Timings:
    started: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, since: float) -> None:
        self.marks[name] = round((time.perf_counter() - since) * 1000, 1)

    def to_dict(self) -> dict[str, float]:
        return {**self.marks, "total": round((time.perf_counter() - self.started) * 1000, 1)}


@dataclass(frozen=True)
class Looked:
    """What the read-ahead found for an entry: its key's ``HEAD``, and its URL memo if it is to be labeled."""

    head: Head = NOT_LOOKED
    memo: UrlMemo | None = None


@dataclass(frozen=True)
class Lookahead:
    """The read-ahead of an entry while it waited for a worker (:func:`look_at_entry`)."""

    future: Future[Looked] | None = None
    # Re-check runs: the key's record itself (one GET instead of the HEAD; no URL memo is read).
    record_future: Future[StoredRecord | None] | None = None

    def looked(self) -> Looked:
        # look_at_entry never raises (a failed HEAD is NOT_LOOKED, a failed memo read a miss)
        return self.future.result() if self.future is not None else Looked()

    def head(self) -> Head:
        """The key's HEAD, or ``NOT_LOOKED`` when it failed (the conditional write then finds out)."""
        if self.record_future is None:
            return self.looked().head
        try:
            found = self.record_future.result()
        except Exception:
            logger.warning("cannot look at an entry's key; its write decides", exc_info=True)
            return NOT_LOOKED
        return found.head if found is not None else None

    def record(self) -> StoredRecord | None:
        """The key's record (re-check runs). Raises :class:`ResultWriteFailed` when it could not be read:
        a re-check never decides about a record it has not seen (the retry reads it again)."""
        if self.record_future is None:
            return None
        try:
            return self.record_future.result()
        except Exception as exc:
            raise ResultWriteFailed(f"cannot read the entry's record: {exc}") from exc

    def memo(self) -> UrlMemo | None:
        return self.looked().memo


def look_at_entry(services: Services, manifest: ManifestRef, entry: ManifestEntry, *, unseen: bool = False) -> Looked:
    """HEAD the entry's key; then, only when there is something to label (no record of this run or a newer
    one), read its URL memo: a retried run's finished entries cost one request each, not two.

    ``unseen``: the key cannot hold a record of this run or a newer one (see :func:`process_entries`):
    it is not looked at, and its write is ``If-None-Match`` (a 412 makes the writer look then).
    """
    head: Head = NOT_LOOKED
    if not unseen:
        try:
            head = services.store.head(entry_key(manifest, entry))
        except Exception:
            logger.warning("cannot look at an entry's key; its write decides", exc_info=True)
    if isinstance(head, ObjectHead) and judge(head, manifest.stamp) is not None:
        return Looked(head)
    if not _has_url_memo(services, entry):
        return Looked(head)
    return Looked(head, services.cache.get_url_memo(entry.url))  # type: ignore[union-attr]


def _has_url_memo(services: Services, entry: ManifestEntry) -> bool:
    # s3:// entries have no URL memo: their cache identity is their version or ETag (logic.s3_entries).
    return services.cache is not None and not is_s3_url(entry.url)


def _record_metadata(manifest: ManifestRef, item: EntryItem) -> dict[str, Any]:
    return {"manifest": {"bucket": manifest.bucket, "key": manifest.key}, "entry_index": item.index}


def _store_record(
    services: Services,
    manifest: ManifestRef,
    item: EntryItem,
    record: ResultRecord,
    outcome: EntryOutcome,
    *,
    head: Head = NOT_LOOKED,
    timings: _Timings | None = None,
) -> EntryOutcome:
    """The one writer of records: stamp, guard, write. Returns what the entry's outcome is now.

    Raises :class:`ResultWriteFailed` when S3 fails (the delivery is retried).
    """
    record.metadata.update(_record_metadata(manifest, item))
    if timings is not None:
        record.metadata["timings_ms"] = timings.to_dict()
    now = utc_now()
    if record.ok:  # when these labels were made for this image (a gone mark keeps the old time)
        record.metadata.setdefault("labeled_at", now)
    record.metadata["processed_at"] = now
    metadata = {"status": "ok" if record.ok else "error"}
    if record.error is not None:
        metadata["code"] = str(record.error.code)
    if outcome.recheck is not None:  # a redelivery of the re-check reads what it found from here
        metadata["recheck"] = outcome.recheck
    key = entry_key(manifest, item)
    document = record.to_dict()
    try:
        written = guarded_put(services.store, key, document, metadata, manifest.stamp, head=head)
    except Exception as exc:
        raise ResultWriteFailed(f"cannot write {key}: {exc}") from exc
    if written.verdict is Verdict.WRITTEN or written.existing is None:
        outcome.record = document
        return outcome
    return EntryOutcome.of_existing(written.verdict, written.existing, key, item.image_id)


def record_error(
    services: Services,
    manifest: ManifestRef,
    item: EntryItem,
    error: LabelerError,
    *,
    head: Head = NOT_LOOKED,
    timings: _Timings | None = None,
    recheck: str | None = None,
) -> EntryOutcome:
    """Store the error record of an entry: it failed, it was rejected by the manifest reader, or its
    batch was given up on. The only place error records are made (``recheck``: a re-check run's finding)."""
    record = ResultRecord(image_id=item.image_id, url=item.url, error=error)
    code = str(error.code)
    outcome = EntryOutcome(ok=False, code=code, recheck=recheck, recheck_code=code if recheck else None)
    return _store_record(services, manifest, item, record, outcome, head=head, timings=timings)


def _fetch(services: Services, url: str, memo: UrlMemo | None, deadline: Deadline) -> FetchedImage | NotModified:
    """Download within ``DOWNLOAD_TIMEOUT_SECONDS`` or what is left before the deadline, if that is less."""
    validators = Validators(etag=memo.etag, last_modified=memo.last_modified) if memo else None
    setting = services.settings.download_timeout_seconds
    budget = min(setting, deadline.seconds_left())
    if budget <= 0:
        raise OutOfTime("the invocation's deadline is near (before the download)")
    try:
        # A wait for body memory does not count against the download; it ends at the deadline at the latest.
        return services.fetcher.fetch(url, validators, timeout_seconds=budget, memory_wait_until=deadline.work_ends)
    except DownloadTimeout:
        if budget < setting:  # cut by the invocation's deadline: not the image's fault, the retry does it
            raise OutOfTime("the invocation's deadline came during the download") from None
        raise


def _label_fresh(
    services: Services,
    entry: ManifestEntry,
    fetched: FetchedImage,
    timings: _Timings,
    deadline: Deadline,
    known: UrlMemo | None = None,
) -> tuple[ResultRecord, EntryOutcome]:
    sha256 = hashlib.sha256(fetched.body).hexdigest()
    if services.cache is None:
        return _label_content(services, entry, fetched, sha256, timings, deadline, known)
    with services.in_flight.hold(sha256):  # identical bytes in flight at once: one DetectLabels call
        return _label_content(services, entry, fetched, sha256, timings, deadline, known)


def _label_content(
    services: Services,
    entry: ManifestEntry,
    fetched: FetchedImage,
    sha256: str,
    timings: _Timings,
    deadline: Deadline,
    known: UrlMemo | None,
) -> tuple[ResultRecord, EntryOutcome]:
    settings = services.settings
    labeling = services.labeling
    assert labeling is not None  # set by Services.__post_init__
    source = {
        "final_url": fetched.final_url,
        "etag": fetched.etag,
        "last_modified": fetched.last_modified,
        "redirects": list(fetched.redirects),
    }
    cached = services.cache.get_labels(sha256, labeling.cache_tag) if services.cache else None
    if cached is not None:
        record = _success(entry, cached, sha256, source, cached_labels=True, not_modified=False)
        _remember_url(services, entry.url, fetched, sha256, known)
        return record, EntryOutcome(ok=True, cached=True)

    # The call is reserved against the run's cap before the image is prepared (OverBudget: this entry's
    # record); leaving the block normally counts it, an exception gives it back (no call was made).
    with labeling.budget.reserve() if labeling.budget is not None else nullcontext():
        started = time.perf_counter()
        prepared = prepare_image(
            fetched.body,
            max_output_bytes=REKOGNITION_MAX_BYTES,
            min_side=REKOGNITION_MIN_SIDE,
            max_side=REKOGNITION_MAX_SIDE,
            max_pixels=settings.max_image_pixels,
        )
        timings.mark("prepare", started)
        image = {
            "sha256": sha256,
            "bytes": len(fetched.body),
            "format": prepared.source_format,
            "width": prepared.source_width,
            "height": prepared.source_height,
            "converted": prepared.converted,
            "downscaled": prepared.downscaled,
        }
        deadline.check("before labeling")
        started = time.perf_counter()
        # The request holds ~4 copies of the image (base64, JSON, the body): big ones take turns.
        with reserve_memory(request_memory(prepared)):
            result = detect_with_options(services.backend, prepared.data, labeling.options, deadline.work_ends)
    timings.mark("label", started)
    labeled = CachedLabels(
        labels=result.labels,
        model_version=result.model_version,
        image=image,
        image_properties=result.extra.get("ImageProperties"),
    )
    if services.cache:
        services.cache.put_labels(sha256, labeling.cache_tag, labeled)  # never raises
    _remember_url(services, entry.url, fetched, sha256, known)
    record = _success(entry, labeled, sha256, source, cached_labels=False, not_modified=False)
    record.metadata["label_backend"] = result.backend
    return record, EntryOutcome(ok=True, label_ms=timings.marks.get("label", 0.0), label_calls=1)


def _remember_url(services: Services, url: str, fetched: FetchedImage, sha256: str, known: UrlMemo | None) -> None:
    """Store the URL's memo, unless the one read before the download already says the same (``known``)."""
    memo = UrlMemo(etag=fetched.etag, last_modified=fetched.last_modified, sha256=sha256)
    if services.cache is None or not (fetched.etag or fetched.last_modified) or memo == known:
        return
    services.cache.put_url_memo(url, memo)


def _success(
    entry: ManifestEntry,
    labels: CachedLabels,
    sha256: str | None,
    source: dict[str, Any],
    *,
    cached_labels: bool,
    not_modified: bool,
) -> ResultRecord:
    image = dict(labels.image)
    if sha256 is not None:  # None: labeled through Image.S3Object, no bytes were read to hash
        image["sha256"] = sha256
    # With IMAGE_PROPERTIES, DetectLabels' ImageProperties object beside the labels, unchanged.
    properties = {"image_properties": labels.image_properties} if labels.image_properties is not None else {}
    return ResultRecord(
        image_id=entry.image_id,
        url=entry.url,
        labels=labels.labels,
        metadata={
            **properties,
            "content_sha256": sha256,  # top level: a changed image shows here (and in labeled_at)
            "label_model_version": labels.model_version,
            "labels_from_cache": cached_labels,
            "not_modified": not_modified,
            "image": image,
            "source": source,
        },
    )


def _reuse_not_modified(
    services: Services, entry: ManifestEntry, fetched: NotModified, memo: UrlMemo | None
) -> ResultRecord | None:
    if memo is None or services.cache is None or services.labeling is None:
        return None
    cached = services.cache.get_labels(memo.sha256, services.labeling.cache_tag)
    if cached is None:
        return None
    source = {
        "final_url": fetched.final_url,
        "etag": fetched.etag or memo.etag,
        "last_modified": fetched.last_modified or memo.last_modified,
        "redirects": list(fetched.redirects),
    }
    return _success(entry, cached, memo.sha256, source, cached_labels=True, not_modified=True)


def _label(
    services: Services, entry: ManifestEntry, memo: UrlMemo | None, timings: _Timings, deadline: Deadline
) -> tuple[ResultRecord, EntryOutcome]:
    """Fetch, check and label one entry: its record and outcome. Raises the entry's LabelerError or OutOfTime."""
    # A label call may follow the download: overlap its set-up (the limiter's client and first slots, the run's first
    # block of calls). Without a URL memo the download is unconditional and a call likely (no 304 can answer it).
    if not isinstance(services.backend, GetsReady):
        return _label_now(services, entry, memo, timings, deadline)
    services.backend.prepare(likely=memo is None)
    try:
        return _label_now(services, entry, memo, timings, deadline)
    finally:
        services.backend.release()


def _label_now(
    services: Services, entry: ManifestEntry, memo: UrlMemo | None, timings: _Timings, deadline: Deadline
) -> tuple[ResultRecord, EntryOutcome]:
    if services.labeling is not None and services.labeling.budget is not None:
        services.labeling.budget.prepare()
    if is_s3_url(entry.url):  # an object in S3: read from there (or by Rekognition itself), never over HTTP
        from labeler.logic.s3_entries import label_s3_entry

        return label_s3_entry(services, entry, timings, deadline)
    started = time.perf_counter()
    fetched = _fetch(services, entry.url, memo, deadline)
    timings.mark("download", started)
    download_ms = timings.marks["download"]
    reused = _reuse_not_modified(services, entry, fetched, memo) if isinstance(fetched, NotModified) else None
    if reused is not None:
        return reused, EntryOutcome(ok=True, cached=True, not_modified=True, download_ms=download_ms)
    if isinstance(fetched, NotModified):
        # The labels behind the validators are gone (cache expired): download unconditionally.
        started = time.perf_counter()
        fetched = _fetch(services, entry.url, None, deadline)
        timings.mark("download", started)
    assert isinstance(fetched, FetchedImage)
    deadline.check("after the download")
    record, outcome = _label_fresh(services, entry, fetched, timings, deadline, memo)
    outcome.download_ms = download_ms
    return record, outcome


def label_entry(
    services: Services, manifest: ManifestRef, entry: ManifestEntry, deadline: Deadline, ahead: Lookahead
) -> EntryOutcome:
    """Look, fetch, check, label and store one entry. Never raises for the entry's own failures.

    Its key's ``HEAD`` (``ahead``) comes first: a record of this run means already done (nothing is
    downloaded), a newer run's means superseded. Raises :class:`OutOfTime` when the deadline comes
    before the entry is labeled (no record: the retry does it) and :class:`ResultWriteFailed` when
    the record itself cannot be stored.
    """
    head = ahead.head()
    if isinstance(head, ObjectHead):
        verdict = judge(head, manifest.stamp)
        if verdict is not None:
            return EntryOutcome.of_existing(verdict, head, entry_key(manifest, entry), entry.image_id)
    if manifest.recheck:  # the record stands unless the image changed (docs/recheck.md)
        return recheck_entry(services, manifest, entry, deadline, ahead.record())
    timings = _Timings()
    try:
        record, outcome = _label(services, entry, ahead.memo(), timings, deadline)
    except OutOfTime:
        raise
    except LabelerError as exc:
        return record_error(services, manifest, entry, exc, head=head, timings=timings)
    except Exception as exc:  # a bug on one image must not lose the others
        return record_error(services, manifest, entry, _unexpected(entry, exc), head=head, timings=timings)
    return _store_record(services, manifest, entry, record, outcome, head=head, timings=timings)


def _unexpected(entry: ManifestEntry, exc: Exception) -> InternalError:
    """A bug met on one entry, logged with its traceback, as the entry's error (``internal_error``)."""
    logger.exception("unexpected failure on one entry", extra={"image_id": entry.image_id})
    return InternalError(f"unexpected {type(exc).__name__}: {exc}"[:500])


# --- re-check runs (docs/recheck.md) ----------------------------------------------------------------
# The answers that say an image is gone: its record keeps its labels and is marked.
GONE_STATUSES = frozenset({404, 410})
_RECORD_FIELDS = ("image_id", "url", "labels", "error")


def recheck_entry(
    services: Services, manifest: ManifestRef, entry: ManifestEntry, deadline: Deadline, stored: StoredRecord | None
) -> EntryOutcome:
    """One entry of a re-check run, whose key holds an older run's record (``stored``), or none.

    A record with labels stands unless the image changed: a conditional GET with the validators it was
    made from, ``304`` or the same bytes → unchanged (nothing written, no DetectLabels call); new bytes →
    labeled (the cache may still know them) and the record overwritten; ``404``/``410`` → gone (the labels
    are kept, the record marked once); any other failure → failed, the record kept. An entry whose record
    is an error, or that has none, is labeled again as in an upload's run.
    """
    if stored is None or stored.head.metadata.get("status") != "ok" or not _is_http(entry.url):
        return _relabel(services, manifest, entry, deadline, stored)
    document = stored.document
    labeled_from = _content_sha256(document)
    source = document.get("source") if isinstance(document.get("source"), dict) else {}
    validators = None
    if labeled_from and (source.get("etag") or source.get("last_modified")):
        validators = UrlMemo(etag=source.get("etag"), last_modified=source.get("last_modified"), sha256=labeled_from)
    timings = _Timings()
    started = time.perf_counter()
    try:
        fetched = _fetch(services, entry.url, validators, deadline)
    except LabelerError as exc:
        if isinstance(exc, HttpStatusError) and exc.details.get("status") in GONE_STATUSES:
            return _mark_gone(services, manifest, entry, stored, int(exc.details["status"]))
        return _kept(entry, exc)
    timings.mark("download", started)
    download_ms = timings.marks["download"]
    if isinstance(fetched, NotModified) or hashlib.sha256(fetched.body).hexdigest() == labeled_from:
        if not isinstance(document.get("gone"), dict):
            unchanged = EntryOutcome(ok=True, cached=True, not_modified=isinstance(fetched, NotModified))
            unchanged.recheck, unchanged.download_ms = RECHECK_UNCHANGED, download_ms
            return unchanged
        back = _record_of(document)  # gone before, served again: the mark goes, the labels stay
        back.metadata.pop("gone", None)
        outcome = EntryOutcome(ok=True, download_ms=download_ms, recheck=RECHECK_CHANGED, image_id=entry.image_id)
        return _store_record(services, manifest, entry, back, outcome, head=stored.head)
    try:
        deadline.check("after the download")
        record, outcome = _label_fresh(services, entry, fetched, timings, deadline)
    except LabelerError as exc:  # the new bytes cannot be labeled (not an image now, the cap...): the old labels stay
        return _kept(entry, exc)
    except Exception as exc:  # a bug on one image must not lose the others (nor this one's labels)
        return _kept(entry, _unexpected(entry, exc))
    outcome.download_ms, outcome.recheck, outcome.image_id = download_ms, RECHECK_CHANGED, entry.image_id
    return _store_record(services, manifest, entry, record, outcome, head=stored.head, timings=timings)


def recheck_rejected(services: Services, manifest: ManifestRef, item: RejectedEntry, ahead: Lookahead) -> EntryOutcome:
    """A rejected entry in a re-check run: its error record is written again only if it says something new."""
    head = ahead.head()
    if isinstance(head, ObjectHead) and (verdict := judge(head, manifest.stamp)) is not None:
        return EntryOutcome.of_existing(verdict, head, entry_key(manifest, item), item.image_id)
    return _failed_again(services, manifest, item, item.error, ahead.record())


def give_up_entry(services: Services, manifest: ManifestRef, item: EntryItem, error: LabelerError) -> EntryOutcome:
    """The error record of an entry whose batch is given up on (``error``: ``batch_failed``, or a rejected
    entry's own). In a re-check run the entry's record is read first: this run's stays, a newer run's wins,
    and an older record with labels (or saying the same error) is kept."""
    if not manifest.recheck:
        return record_error(services, manifest, item, error)
    key = entry_key(manifest, item)
    stored = services.store.get_record(key)
    if stored is not None and (verdict := judge(stored.head, manifest.stamp)) is not None:
        return EntryOutcome.of_existing(verdict, stored.head, key, item.image_id)
    return _failed_again(services, manifest, item, error, stored)


def _relabel(
    services: Services, manifest: ManifestRef, entry: ManifestEntry, deadline: Deadline, stored: StoredRecord | None
) -> EntryOutcome:
    """Label an entry of a re-check run as an upload's run does (no URL memo: its record had no usable one)."""
    timings = _Timings()
    try:
        record, outcome = _label(services, entry, None, timings, deadline)
    except OutOfTime:
        raise
    except LabelerError as exc:
        return _failed_again(services, manifest, entry, exc, stored, timings)
    except Exception as exc:  # a bug on one image must not lose the others
        return _failed_again(services, manifest, entry, _unexpected(entry, exc), stored, timings)
    was = stored.document if stored is not None and stored.head.metadata.get("status") == "ok" else None
    if was is not None and not isinstance(was.get("gone"), dict) and _same_content(was, record):
        outcome.recheck = RECHECK_UNCHANGED  # other sources (no conditional GET): the same content, nothing written
        return outcome
    outcome.recheck, outcome.image_id = RECHECK_CHANGED, entry.image_id
    head: Head = stored.head if stored is not None else None
    return _store_record(services, manifest, entry, record, outcome, head=head, timings=timings)


def _failed_again(
    services: Services,
    manifest: ManifestRef,
    item: EntryItem,
    error: LabelerError,
    stored: StoredRecord | None,
    timings: _Timings | None = None,
) -> EntryOutcome:
    """A re-check's failure: an existing record stays when it has labels, or when it says the same error."""
    if stored is not None and stored.head.metadata.get("status") == "ok":
        return _kept(item, error)
    code = str(error.code)
    if stored is not None and stored.head.metadata.get("code") == code:
        return EntryOutcome(ok=False, code=code, recheck=RECHECK_FAILED, recheck_code=code)
    head: Head = stored.head if stored is not None else None
    return record_error(services, manifest, item, error, head=head, timings=timings, recheck=RECHECK_FAILED)


def _kept(item: EntryItem, error: LabelerError) -> EntryOutcome:
    """The record with labels stays as it is; the re-check says it failed, and why."""
    logger.info("re-check failed; the record stays", extra={"image_id": item.image_id, "code": str(error.code)})
    return EntryOutcome(ok=True, recheck=RECHECK_FAILED, recheck_code=str(error.code))


def _mark_gone(
    services: Services, manifest: ManifestRef, entry: ManifestEntry, stored: StoredRecord, status: int
) -> EntryOutcome:
    """The image is gone: its labels stay; the record is marked once (``gone``), later re-checks write nothing."""
    outcome = EntryOutcome(ok=True, recheck=RECHECK_GONE)
    if isinstance(stored.document.get("gone"), dict):
        return outcome
    record = _record_of(stored.document)
    since = recheck_iso(manifest.recheck) if manifest.recheck else utc_now()
    record.metadata["gone"] = {"status": status, "since": since, "run_id": manifest.run_id}
    return _store_record(services, manifest, entry, record, outcome, head=stored.head)


def _record_of(document: dict[str, Any]) -> ResultRecord:
    """A stored record with labels as a :class:`ResultRecord` to write again (its other fields kept)."""
    metadata = {name: value for name, value in document.items() if name not in _RECORD_FIELDS}
    image_id, url, labels = str(document.get("image_id")), document.get("url"), document.get("labels")
    return ResultRecord(image_id=image_id, url=url, labels=labels, metadata=metadata)


def _content_sha256(record: dict[str, Any] | ResultRecord) -> str | None:
    """The SHA-256 of the bytes a record was labeled from (``content_sha256``; older records: ``image.sha256``)."""
    document = record.metadata if isinstance(record, ResultRecord) else record
    image = document.get("image") if isinstance(document.get("image"), dict) else {}
    found = document.get("content_sha256") or image.get("sha256")
    return str(found) if found else None


def _content_identity(record: dict[str, Any] | ResultRecord) -> str | None:
    """What a record was labeled from: its bytes' SHA-256, or for an ``s3://`` object labeled without reading
    it (``Image.S3Object``, or its cached answer: no hash) the label cache's identity of the object, its version
    or else its ETag (:func:`~labeler.logic.s3_sources.source_identity`); ``None`` when the record does not say."""
    sha256 = _content_sha256(record)
    if sha256 is not None:
        return f"sha256:{sha256}"
    document = record.metadata if isinstance(record, ResultRecord) else record
    source = document.get("source") if isinstance(document.get("source"), dict) else {}
    if not (source.get("bucket") and source.get("key")):
        return None
    try:
        return source_identity(
            S3ObjectRef(str(source["bucket"]), str(source["key"]), source.get("version_id")), etag=source.get("etag")
        )
    except ValueError:  # neither a version nor an ETag
        return None


def _same_content(was: dict[str, Any], record: ResultRecord) -> bool:
    """Both records name the same content (an unknown identity is never the same: the record is rewritten)."""
    identity = _content_identity(was)
    return identity is not None and identity == _content_identity(record)


def _is_http(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def _run_one(
    services: Services,
    manifest: ManifestRef,
    item: EntryItem,
    deadline: Deadline,
    superseded: threading.Event,
    ahead: Lookahead,
) -> EntryOutcome:
    # Checked when the entry starts, not when it was queued: queued entries never start late.
    if superseded.is_set():
        return EntryOutcome(ok=False, superseded=True)
    deadline.check("before the entry started")
    if isinstance(item, RejectedEntry):
        if manifest.recheck:
            return recheck_rejected(services, manifest, item, ahead)
        return record_error(services, manifest, item, item.error)
    return label_entry(services, manifest, item, deadline, ahead)


def _look_ahead(
    pool: ThreadPoolExecutor, services: Services, manifest: ManifestRef, item: EntryItem, unseen: bool
) -> Lookahead:
    if manifest.recheck:  # one GET: the record's run, and the validators and hash of the content it was made from
        return Lookahead(record_future=pool.submit(services.store.get_record, entry_key(manifest, item)))
    if isinstance(item, RejectedEntry):  # written optimistically: a 412 makes the writer look
        return Lookahead()
    if unseen and not _has_url_memo(services, item):  # nothing to look at or read ahead
        return Lookahead()
    return Lookahead(pool.submit(look_at_entry, services, manifest, item, unseen=unseen))


# --- many entries -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a run over entries did: the tally, and whether it stopped early, was superseded or failed to write."""

    tally: Tally
    unfinished: int = 0  # entries left for the retry (the deadline came)
    superseded: bool = False  # a newer run of the manifest wrote records: this run stopped
    write_failures: list[str] = field(default_factory=list)
    manifest_error: ManifestError | None = None

    @property
    def stopped_early(self) -> bool:
        return self.unfinished > 0


def process_entries(
    services: Services,
    manifest: ManifestRef,
    items: Iterable[EntryItem],
    deadline: Deadline | None = None,
    on_outcome: Callable[[EntryOutcome], None] | None = None,
    *,
    unseen_keys: bool = False,
) -> RunResult:
    """Run ``items`` over ``MAX_WORKERS`` threads with a bounded number in flight.

    Memory stays bounded by the images in flight, not by the number of items: at most
    ``2 × MAX_WORKERS`` are submitted ahead, and the read-ahead pool looks at their keys and reads
    their URL memos meanwhile, so a worker that picks an entry up starts its download at once.
    Once the deadline passes, or a newer run is found, no entry starts; entries not started are
    counted ``unfinished`` (deadline) or superseded.

    ``unseen_keys``: this is the first attempt of the first run at its manifest key (its report was
    stored over nothing, ``Published.first_at_key``), so no entry's key holds a record of this run
    or a newer one, and none is looked at: a new image costs no ``HEAD``. An older record (a report
    deleted by hand) or a newer run starting meanwhile is found by the guarded write's 412.
    """
    deadline = deadline or Deadline()
    unseen_keys = unseen_keys and not manifest.recheck  # a re-check reads every entry's record, always
    workers = services.settings.max_workers
    run = _Collector(on_outcome)
    # Half as many threads as workers: a look is one or two small requests, and more threads only contend for
    # the interpreter with the workers (they looked ahead of 2 × MAX_WORKERS entries all the same).
    read_ahead = ThreadPoolExecutor(max_workers=max(4, workers // 2), thread_name_prefix="read-ahead")
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="entry") as pool:
            in_flight: set[Future[EntryOutcome]] = set()
            first = True
            try:
                for item in items:
                    if run.superseded.is_set():
                        break
                    if deadline.expired():
                        run.result.unfinished += 1
                        break
                    ahead = _look_ahead(read_ahead, services, manifest, item, unseen_keys)
                    if first:
                        # The run's first entry: its look alone, before 2 × MAX_WORKERS threads start and their looks
                        # crowd it (~100 ms then), so that its download, and the run's first label call, leave sooner.
                        first = False
                        ahead.looked()
                    in_flight.add(pool.submit(_run_one, services, manifest, item, deadline, run.superseded, ahead))
                    if len(in_flight) >= 2 * workers:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        run.collect(done)
            except ManifestError as exc:  # found mid-stream: what was read before it still counts
                run.result.manifest_error = exc
            run.collect(wait(in_flight).done)
    finally:
        read_ahead.shutdown(wait=True, cancel_futures=True)
        if services.cache is not None:  # before the invocation returns and Lambda freezes the writers
            services.cache.flush(timeout=_flush_seconds(deadline))
    return run.result


def label_entries(
    services: Services,
    manifest: ManifestRef,
    items: Iterable[EntryItem],
    options: LabelOptions,
    deadline: Deadline | None = None,
    on_outcome: Callable[[EntryOutcome], None] | None = None,
    on_calls: Callable[[int], None] | None = None,
    *,
    unseen_keys: bool = False,
) -> RunResult:
    """:func:`process_entries` with a run's options and its DetectLabels cap (``options.max_label_calls``).

    One :class:`~labeler.logic.budget.CallBudget` per invocation and run, on the run's shared count
    (``services.budgets``, keyed by :func:`~labeler.logic.keys.run_key`, as the run's progress), closed
    whatever happens. ``on_calls(n)``: the calls this invocation made, also when it failed half-way
    (the handlers publish them as the ``DetectLabelsCalls`` metric).
    """
    cap = options.max_label_calls
    budget = CallBudget(run_key(manifest), cap, services.budgets if cap is not None else None)
    try:
        with budget:
            return process_entries(
                services.for_run(options, budget), manifest, items, deadline, on_outcome, unseen_keys=unseen_keys
            )
    finally:
        if on_calls is not None:
            on_calls(budget.made)


class _Collector:
    """Gathers the outcomes of finished entries into a :class:`RunResult`."""

    def __init__(self, on_outcome: Callable[[EntryOutcome], None] | None) -> None:
        self.result = RunResult(tally=Tally())
        self.superseded = threading.Event()  # one newer record means a newer run: stop starting entries
        self._on_outcome = on_outcome

    def collect(self, done: Iterable[Future[EntryOutcome]]) -> None:
        for future in done:
            try:
                outcome = future.result()
            except OutOfTime:
                self.result.unfinished += 1
                continue
            except ResultWriteFailed as exc:
                self.result.write_failures.append(str(exc))
                continue
            if outcome.superseded:
                self.result.superseded = True
                self.superseded.set()
            outcome.add_to(self.result.tally)
            if self._on_outcome is not None:
                self._on_outcome(outcome)


def _flush_seconds(deadline: Deadline) -> float:
    """Cache writes may use half of what is left of the invocation (they are an optimisation)."""
    if deadline.ends is None:
        return 30.0
    return max(0.1, min(30.0, (deadline.ends - time.monotonic()) / 2))


# --- a whole manifest ----------------------------------------------------------------------------------
def read_entries(services: Services, opened: OpenedManifest) -> tuple[LabelOptions, Iterator[EntryItem]]:
    """The run's options and a lazy stream of entries of an opened manifest.

    The options are the manifest's own (read before its first entry) within the stack's bounds
    (:func:`run_options`); raises :class:`ManifestError` (``manifest_options_invalid`` among others).
    """
    settings = services.settings
    read = read_manifest(opened.body, max_bytes=settings.max_manifest_bytes, max_entries=settings.max_manifest_entries)
    return run_options(settings, read.options), read.entries


def superseded_summary(manifest: ManifestRef, tally: Tally) -> dict[str, Any]:
    """What a run answers when a newer run of its manifest took over (no report of its own is stored)."""
    return {"manifest": manifest.to_dict(), "status": "superseded", **tally.to_dict()}


def write_index(index: PartIndex, run: RunResult) -> None:
    """Write the part's index object once every entry of the part has its record; a failure is a write failure.

    Nothing is written while entries are left for the retry (it writes the whole object again).
    """
    if run.write_failures or run.stopped_early or run.superseded:
        return
    try:
        index.write()
    except IndexWriteFailed as exc:
        run.write_failures.append(str(exc))


def finish_run(
    services: Services, manifest: ManifestRef, state: RunState, *, last: ObjectHead | None = None
) -> dict[str, Any]:
    """Store the run's final report, then call ``on_run_finished`` once per run; returns the report.

    Inline and fanned-out runs end here. The hook runs after the report is stored and after a
    conditional claim in the state table, so that only one of several finishers calls it; if it
    raises, the claim is released and the caller fails, so that a retry calls it again. ``last``:
    the report this invocation stored before (see :func:`~labeler.logic.report.publish_report`).
    """
    published = publish_report(services.store, manifest, state, last=last)
    if published.superseded:
        return superseded_summary(manifest, state.tally)
    claims, key = services.progress, run_key(manifest)
    if claims is not None and not claims.claim_finished(key):
        return published.report
    try:
        services.on_run_finished(published.report)
    except Exception:
        if claims is not None:
            claims.release_finished(key)
        raise
    return published.report


def _raising(error: ManifestError) -> Iterator[EntryItem]:
    """An entry stream that has nothing more but the error it broke with (it reaches the run as before)."""
    raise error
    yield  # pragma: no cover - makes this a generator


# FanOut.split(manifest, entries, head, deadline, options, unseen_keys): the last as in process_entries.
FanOutSplit = Callable[
    [ManifestRef, Iterator[EntryItem], list[EntryItem], Deadline, LabelOptions, bool], dict[str, Any]
]


def process_manifest(
    services: Services,
    manifest: ManifestRef,
    deadline: Deadline | None = None,
    *,
    fan_out: FanOutSplit | None = None,
    on_outcome: Callable[[EntryOutcome], None] | None = None,
    on_calls: Callable[[int], None] | None = None,
    inline_max_images: int | None = None,
) -> dict[str, Any]:
    """Label every entry of one manifest (or hand it to ``fan_out``) and write its report; returns the report.

    Manifests of more than ``inline_max_images`` entries (default: the setting) are handed to ``fan_out``;
    re-checks give 0, so that every re-check goes through the work queue whatever its size.

    A manifest that cannot be read or parsed still gets a report carrying the error. An
    ``in_progress`` report is written when the run starts, so that a run killed for good is
    visible. Raises :class:`ResultWriteFailed` / :class:`DeadlineReached` after writing an
    ``incomplete`` report, and ``ManifestReadInterrupted`` for a transient read error, so that
    the event is delivered again and the remaining entries are finished then.
    """
    deadline = deadline or Deadline()
    inline_max = services.settings.inline_max_images if inline_max_images is None else inline_max_images
    head: list[EntryItem] = []
    options: LabelOptions | None = None
    try:
        opened = services.store.open_manifest(manifest)
        manifest = opened.ref  # refreshed: the object's LastModified orders runs
        options, entries = read_entries(services, opened)
        head.extend(islice(entries, inline_max + 1))
    except ManifestError as exc:
        if not head:  # nothing could be read (or its options are refused): the run fails with the error
            logger.warning("manifest rejected", extra={"manifest": manifest.to_dict(), "code": str(exc.code)})
            return finish_run(services, manifest, RunState(Tally(), "failed", "inline", exc, options=options))
        # Broke after some entries: those are processed (partial), wherever the break is.
        entries = _raising(exc)
    assert options is not None  # read before the first entry

    fans_out = fan_out is not None and len(head) > inline_max
    mode = "fanout" if fans_out else "inline"
    started = publish_report(services.store, manifest, RunState(Tally(), "in_progress", mode, options=options))
    if started.superseded:
        return superseded_summary(manifest, Tally())
    if fan_out is not None and fans_out:
        return fan_out(manifest, entries, head, deadline, options, started.first_at_key)

    index = PartIndex(services.store, manifest, INLINE_PART)
    run = label_entries(
        services,
        manifest,
        chain(head, entries),
        options,
        deadline,
        index.observing(on_outcome),
        on_calls,
        unseen_keys=started.first_at_key,
    )
    if run.superseded:
        return superseded_summary(manifest, run.tally)
    write_index(index, run)
    if run.write_failures or run.stopped_early:
        publish_report(
            services.store,
            manifest,
            RunState(run.tally, "incomplete", mode, run.manifest_error, options=options),
            last=started.written,
        )
        if run.write_failures:
            raise ResultWriteFailed(
                f"{len(run.write_failures)} record(s) could not be written: {run.write_failures[0]}"
            )
        raise DeadlineReached("the Lambda deadline is near; the entries not finished are left for the retry")
    status = final_status(run.tally, run.manifest_error)
    return finish_run(
        services, manifest, RunState(run.tally, status, mode, run.manifest_error, options=options), last=started.written
    )
