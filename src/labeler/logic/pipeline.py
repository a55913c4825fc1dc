"""The pipeline: one entry is fetch → check → label → store; a manifest is its entries run concurrently.

Every entry ends in exactly one result object: labels, or an error record with a stable code.
Nothing here knows about Lambda events; handlers build a :class:`Services` and call
:func:`process_manifest` (S3 trigger) or :func:`process_entries` (SQS work batches).

>>> services = Services(settings, store, fetcher, backend, cache)          # doctest: +SKIP
>>> report = process_manifest(ManifestRef("in-bucket", "manifests/a.json"), services)  # doctest: +SKIP
>>> report["succeeded"] + report["failed"] == report["total"]              # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any, Protocol

from labeler.adapters.fetch import FetchedImage, ImageFetcher, NotModified, Validators
from labeler.adapters.images import prepare_image, reserve_memory
from labeler.adapters.labels.base import LabelBackend
from labeler.adapters.store import OpenedManifest
from labeler.logic.cache import CachedLabels, KeyedLocks, LabelCache, UrlMemo
from labeler.logic.keys import RESULTS_PREFIX, manifest_slug, report_key, result_key
from labeler.logic.manifest import parse_manifest
from labeler.logic.report import Tally, build_report, utc_now
from labeler.models.errors import BatchFailed, InternalError, LabelerError, ManifestError
from labeler.models.records import EntryItem, ManifestEntry, ManifestRef, RejectedEntry, ResultRecord
from labeler.models.settings import Settings
from labeler.observability import logger

# Rekognition's limits for image bytes and sides (see README, "Limits").
REKOGNITION_MAX_BYTES = 5 * 1024 * 1024
REKOGNITION_MIN_SIDE = 80
REKOGNITION_MAX_SIDE = 10_000


class ResultStore(Protocol):
    """What the pipeline needs from storage (``labeler.adapters.store.S3Store`` in production)."""

    def put_json(
        self, key: str, document: dict[str, Any], metadata: dict[str, str] | None = None, *, if_absent: bool = False
    ) -> bool: ...

    def get_json(self, key: str) -> dict[str, Any] | None: ...

    def head_metadata(self, key: str) -> dict[str, str] | None: ...

    def open_manifest(self, ref: ManifestRef) -> OpenedManifest: ...


class ResultWriteFailed(RuntimeError):
    """A record could not be stored: the invocation must fail so that S3/SQS delivers the event again."""


class DeadlineReached(RuntimeError):
    """The Lambda deadline is near: work was stopped cleanly and the rest is left for the retry."""


@dataclass
class Services:
    """Everything the pipeline talks to, built once per container by the handler."""

    settings: Settings
    store: ResultStore
    fetcher: ImageFetcher
    backend: LabelBackend
    cache: LabelCache | None = None
    in_flight: KeyedLocks = field(default_factory=KeyedLocks)


@dataclass(frozen=True)
class Deadline:
    """``expired()`` once fewer than ``margin_ms`` remain (``remaining_ms`` comes from the Lambda context)."""

    remaining_ms: Callable[[], int] | None = None
    margin_ms: int = 15_000

    def expired(self) -> bool:
        return self.remaining_ms is not None and self.remaining_ms() < self.margin_ms


@dataclass
class EntryOutcome:
    ok: bool
    code: str | None = None
    cached: bool = False
    not_modified: bool = False
    already_done: bool = False
    download_ms: float = 0.0
    label_ms: float = 0.0

    def add_to(self, tally: Tally) -> None:
        tally.add_outcome(
            ok=self.ok,
            code=self.code,
            cached=self.cached,
            not_modified=self.not_modified,
            already_done=self.already_done,
            download_ms=self.download_ms,
            label_ms=self.label_ms,
        )


def results_prefix(manifest: ManifestRef) -> str:
    return f"{RESULTS_PREFIX}{manifest_slug(manifest.bucket, manifest.key)}/"


# --- one entry --------------------------------------------------------------------------------
@dataclass
class _Timings:
    started: float = field(default_factory=time.perf_counter)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, since: float) -> None:
        self.marks[name] = round((time.perf_counter() - since) * 1000, 1)

    def to_dict(self) -> dict[str, float]:
        return {**self.marks, "total": round((time.perf_counter() - self.started) * 1000, 1)}


def _record_metadata(manifest: ManifestRef, index: int) -> dict[str, Any]:
    return {"manifest": {"bucket": manifest.bucket, "key": manifest.key}, "entry_index": index}


def _store_record(
    services: Services, manifest: ManifestRef, key: str, record: ResultRecord, *, if_absent: bool = False
) -> None:
    status = "ok" if record.ok else "error"
    metadata = {"status": status, "manifest-run": manifest.run_id}
    if record.error is not None:
        metadata["code"] = str(record.error.code)
    try:
        services.store.put_json(key, record.to_dict(), metadata, if_absent=if_absent)
    except Exception as exc:
        raise ResultWriteFailed(f"cannot write {key}: {exc}") from exc


def _already_done(services: Services, manifest: ManifestRef, key: str) -> EntryOutcome | None:
    """A record written for this very upload of the manifest by an earlier delivery: reuse it, label nothing."""
    version = manifest.run_id
    if not version:
        return None
    try:
        metadata = services.store.head_metadata(key)
    except Exception:
        logger.warning("cannot check for an existing record", extra={"key": key}, exc_info=True)
        return None
    if not metadata or metadata.get("manifest-run") != version:
        return None
    ok = metadata.get("status") == "ok"
    return EntryOutcome(ok=ok, code=None if ok else metadata.get("code", "internal_error"), already_done=True)


def _fetch(services: Services, url: str, memo: UrlMemo | None) -> FetchedImage | NotModified:
    validators = Validators(etag=memo.etag, last_modified=memo.last_modified) if memo else None
    return services.fetcher.fetch(url, validators)


def _label_fresh(
    services: Services, entry: ManifestEntry, fetched: FetchedImage, timings: _Timings
) -> tuple[ResultRecord, EntryOutcome]:
    sha256 = hashlib.sha256(fetched.body).hexdigest()
    if services.cache is None:
        return _label_content(services, entry, fetched, sha256, timings)
    with services.in_flight.hold(sha256):  # identical bytes in flight at once: one DetectLabels call
        return _label_content(services, entry, fetched, sha256, timings)


def _label_content(
    services: Services, entry: ManifestEntry, fetched: FetchedImage, sha256: str, timings: _Timings
) -> tuple[ResultRecord, EntryOutcome]:
    settings = services.settings
    source = {
        "final_url": fetched.final_url,
        "etag": fetched.etag,
        "last_modified": fetched.last_modified,
        "redirects": list(fetched.redirects),
    }
    cached = services.cache.get_labels(sha256) if services.cache else None
    if cached is not None:
        record = _success(entry, cached, sha256, source, cached_labels=True, not_modified=False)
        _remember_url(services, entry.url, fetched, sha256)
        return record, EntryOutcome(ok=True, cached=True)

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
    started = time.perf_counter()
    # The request holds ~3 copies of the image (base64, JSON, the body): big ones take turns.
    with reserve_memory(3 * len(prepared.data)):
        result = services.backend.detect_labels(
            prepared.data, min_confidence=settings.min_confidence, max_labels=settings.max_labels
        )
    timings.mark("label", started)
    if services.cache:
        services.cache.put_labels(sha256, result.labels, result.model_version, image)  # never raises
    _remember_url(services, entry.url, fetched, sha256)
    labeled = CachedLabels(labels=result.labels, model_version=result.model_version, image=image)
    record = _success(entry, labeled, sha256, source, cached_labels=False, not_modified=False)
    record.metadata["label_backend"] = result.backend
    return record, EntryOutcome(ok=True, label_ms=timings.marks.get("label", 0.0))


def _remember_url(services: Services, url: str, fetched: FetchedImage, sha256: str) -> None:
    if services.cache is None or not (fetched.etag or fetched.last_modified):
        return
    services.cache.put_url_memo(url, UrlMemo(etag=fetched.etag, last_modified=fetched.last_modified, sha256=sha256))


def _success(
    entry: ManifestEntry,
    labels: CachedLabels,
    sha256: str,
    source: dict[str, Any],
    *,
    cached_labels: bool,
    not_modified: bool,
) -> ResultRecord:
    image = dict(labels.image)
    image["sha256"] = sha256
    return ResultRecord(
        image_id=entry.image_id,
        url=entry.url,
        labels=labels.labels,
        metadata={
            "label_model_version": labels.model_version,
            "labels_from_cache": cached_labels,
            "not_modified": not_modified,
            "image": image,
            "source": source,
        },
    )


def label_entry(
    services: Services,
    manifest: ManifestRef,
    entry: ManifestEntry,
    *,
    check_existing: bool = True,
    memo_ahead: Future[UrlMemo | None] | None = None,
) -> EntryOutcome:
    """Fetch, check, label and store one entry. Never raises for the entry's own failures.

    ``check_existing``: first look for a record an earlier delivery of this very upload wrote (one
    ``HEAD``). Callers that know there was no earlier attempt pass False and save the request.
    Raises :class:`ResultWriteFailed` only when the record itself cannot be stored.
    """
    key = result_key(manifest, entry.image_id)
    done = _already_done(services, manifest, key) if check_existing else None
    if done is not None:
        return done

    timings = _Timings()
    outcome: EntryOutcome
    try:
        memo = _url_memo(services, entry.url, memo_ahead)
        started = time.perf_counter()
        fetched = _fetch(services, entry.url, memo)
        timings.mark("download", started)
        download_ms = timings.marks["download"]
        reused = _reuse_not_modified(services, entry, fetched, memo) if isinstance(fetched, NotModified) else None
        if reused is not None:
            record, outcome = reused, EntryOutcome(ok=True, cached=True, not_modified=True)
        else:
            if isinstance(fetched, NotModified):
                # The labels behind the validators are gone (cache expired): download unconditionally.
                started = time.perf_counter()
                fetched = _fetch(services, entry.url, None)
                timings.mark("download", started)
            assert isinstance(fetched, FetchedImage)
            record, outcome = _label_fresh(services, entry, fetched, timings)
        outcome.download_ms = download_ms
    except LabelerError as exc:
        record = ResultRecord(image_id=entry.image_id, url=entry.url, error=exc)
        outcome = EntryOutcome(ok=False, code=str(exc.code))
    except Exception as exc:  # a bug on one image must not lose the others
        logger.exception("unexpected failure on one entry", extra={"image_id": entry.image_id})
        error = InternalError(f"unexpected {type(exc).__name__}: {exc}"[:500])
        record = ResultRecord(image_id=entry.image_id, url=entry.url, error=error)
        outcome = EntryOutcome(ok=False, code=str(error.code))

    record.metadata.update(_record_metadata(manifest, entry.index))
    record.metadata["timings_ms"] = timings.to_dict()
    record.metadata["processed_at"] = utc_now()
    _store_record(services, manifest, key, record)
    return outcome


def _reuse_not_modified(
    services: Services, entry: ManifestEntry, fetched: NotModified, memo: UrlMemo | None
) -> ResultRecord | None:
    if memo is None or services.cache is None:
        return None
    cached = services.cache.get_labels(memo.sha256)
    if cached is None:
        return None
    source = {
        "final_url": fetched.final_url,
        "etag": fetched.etag or memo.etag,
        "last_modified": fetched.last_modified or memo.last_modified,
        "redirects": list(fetched.redirects),
    }
    return _success(entry, cached, memo.sha256, source, cached_labels=True, not_modified=True)


def record_rejected(services: Services, manifest: ManifestRef, rejected: RejectedEntry) -> EntryOutcome:
    """Store the error record of an entry that could not even be attempted (bad shape, duplicate id)."""
    # Keyed by position too: a rejected entry may share its id with the entry that holds it (duplicates,
    # or a broken entry whose id a later good entry uses), and must never overwrite that entry's record.
    key = result_key(manifest, rejected.image_id, duplicate_index=rejected.index)
    record = ResultRecord(image_id=rejected.image_id, url=rejected.url, error=rejected.error)
    record.metadata.update(_record_metadata(manifest, rejected.index))
    record.metadata["processed_at"] = utc_now()
    _store_record(services, manifest, key, record)
    return EntryOutcome(ok=False, code=str(rejected.error.code))


def label_entry_failed(services: Services, manifest: ManifestRef, entry: ManifestEntry, reason: str) -> EntryOutcome:
    """Record that ``entry`` was given up on (its batch failed every delivery), unless it has a record."""
    key = result_key(manifest, entry.image_id)
    done = _already_done(services, manifest, key)
    if done is not None:
        return done
    error = BatchFailed(reason[:500])
    record = ResultRecord(image_id=entry.image_id, url=entry.url, error=error)
    record.metadata.update(_record_metadata(manifest, entry.index))
    record.metadata["processed_at"] = utc_now()
    _store_record(services, manifest, key, record)
    return EntryOutcome(ok=False, code=str(error.code))


def _url_memo(services: Services, url: str, ahead: Future[UrlMemo | None] | None) -> UrlMemo | None:
    if services.cache is None:
        return None
    # get_url_memo never raises (a failed read is a miss), so neither does the read-ahead.
    return ahead.result() if ahead is not None else services.cache.get_url_memo(url)


def _run_one(
    services: Services,
    manifest: ManifestRef,
    item: EntryItem,
    check_existing: bool,
    memo_ahead: Future[UrlMemo | None] | None = None,
) -> EntryOutcome:
    if isinstance(item, RejectedEntry):
        return record_rejected(services, manifest, item)
    return label_entry(services, manifest, item, check_existing=check_existing, memo_ahead=memo_ahead)


# --- many entries -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a run over entries did: the tally, and whether it stopped early or failed to write."""

    tally: Tally
    stopped_early: bool = False
    unstarted: list[EntryItem] = field(default_factory=list)
    write_failures: list[str] = field(default_factory=list)
    manifest_error: ManifestError | None = None


def process_entries(
    services: Services,
    manifest: ManifestRef,
    items: Iterable[EntryItem],
    deadline: Deadline | None = None,
    on_outcome: Callable[[EntryOutcome], None] | None = None,
    *,
    check_existing: bool = True,
) -> RunResult:
    """Run ``items`` over ``MAX_WORKERS`` threads with a bounded number in flight.

    Memory stays bounded by the images in flight, not by the number of items: at most
    ``2 × MAX_WORKERS`` are submitted ahead. When ``deadline`` expires, no new item starts; the
    unstarted ones are returned (``unstarted``, only those already read from ``items``).
    """
    deadline = deadline or Deadline()
    workers = services.settings.max_workers
    result = RunResult(tally=Tally())
    iterator: Iterator[EntryItem] = iter(items)

    def collect(done: Iterable[Future[EntryOutcome]]) -> None:
        for future in done:
            try:
                outcome = future.result()
            except ResultWriteFailed as exc:
                result.write_failures.append(str(exc))
                continue
            outcome.add_to(result.tally)
            if on_outcome is not None:
                on_outcome(outcome)

    # Entries wait in the pool's queue (up to 2 × MAX_WORKERS ahead); meanwhile a small pool reads
    # their URL memos, so a worker that picks an entry up starts its download at once.
    read_ahead = ThreadPoolExecutor(max_workers=4, thread_name_prefix="read-ahead") if services.cache else None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="entry") as pool:
        in_flight: set[Future[EntryOutcome]] = set()
        try:
            for item in iterator:
                if deadline.expired():
                    result.stopped_early = True
                    result.unstarted.append(item)
                    break
                ahead = None
                if read_ahead is not None and isinstance(item, ManifestEntry):
                    ahead = read_ahead.submit(services.cache.get_url_memo, item.url)  # type: ignore[union-attr]
                in_flight.add(pool.submit(_run_one, services, manifest, item, check_existing, ahead))
                if len(in_flight) >= 2 * workers:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    collect(done)
        except ManifestError as exc:  # found mid-stream: what was read before it still counts
            result.manifest_error = exc
        collect(wait(in_flight).done)
    if read_ahead is not None:
        read_ahead.shutdown(wait=True, cancel_futures=True)
    if services.cache is not None:
        services.cache.flush()  # before the invocation returns and Lambda freezes the writers
    return result


# --- a whole manifest (inline) --------------------------------------------------------------------
def open_entries(services: Services, manifest: ManifestRef) -> tuple[ManifestRef, Iterator[EntryItem]]:
    """Open the manifest object and return its (refreshed) reference and a lazy stream of entries."""
    opened = services.store.open_manifest(manifest)
    settings = services.settings
    entries = parse_manifest(
        opened.body, max_bytes=settings.max_manifest_bytes, max_entries=settings.max_manifest_entries
    )
    return opened.ref, entries


def _earlier_attempt(services: Services, manifest: ManifestRef) -> bool:
    """Whether a delivery of this very upload ran before (its report exists, perhaps ``incomplete``).

    Only then can records of this run exist, so only then is each entry's key checked first: a new
    upload saves one request per image. A failed read means "cannot tell": check every entry.
    """
    if not manifest.run_id:
        return False
    try:
        report = services.store.get_json(report_key(manifest))
    except Exception:
        logger.warning("cannot read the previous report; checking every entry", exc_info=True)
        return True
    if not report or not isinstance(report.get("manifest"), dict):
        return False
    earlier = report["manifest"]
    previous = ManifestRef(
        bucket=manifest.bucket,
        key=manifest.key,
        etag=earlier.get("etag"),
        version_id=earlier.get("version_id"),
        sequencer=earlier.get("sequencer"),
    )
    return previous.run_id == manifest.run_id


def process_manifest(
    services: Services,
    manifest: ManifestRef,
    deadline: Deadline | None = None,
    *,
    fan_out: Callable[[ManifestRef, Iterator[EntryItem], list[Any]], dict[str, Any]] | None = None,
    on_outcome: Callable[[EntryOutcome], None] | None = None,
) -> dict[str, Any]:
    """Label every entry of one manifest and write its report; returns the report.

    A manifest that cannot be read or parsed still gets a report carrying the error.
    Raises :class:`ResultWriteFailed` / :class:`DeadlineReached` after writing the report, so
    that the event is delivered again and the remaining entries are finished then.
    """
    started_at, t0 = utc_now(), time.perf_counter()
    prefix = results_prefix(manifest)
    tally = Tally()
    manifest_error: LabelerError | None = None

    def finish(status: str, mode: str = "inline", extra: dict[str, Any] | None = None) -> dict[str, Any]:
        report = build_report(
            manifest,
            tally,
            status=status,
            results_prefix=prefix,
            started_at=started_at,
            duration_ms=(time.perf_counter() - t0) * 1000,
            mode=mode,
            manifest_error=manifest_error,
            extra=extra,
        )
        services.store.put_json(report_key(manifest), report)
        return report

    try:
        manifest, entries = open_entries(services, manifest)
        head = list(islice(entries, services.settings.inline_max_images + 1))
    except ManifestError as exc:
        manifest_error = exc
        logger.warning("manifest rejected", extra={"manifest": manifest.to_dict(), "code": str(exc.code)})
        return finish("failed")

    if fan_out is not None and len(head) > services.settings.inline_max_images:
        return fan_out(manifest, entries, head)

    resuming = _earlier_attempt(services, manifest)
    run = process_entries(services, manifest, chain(head, entries), deadline, on_outcome, check_existing=resuming)
    tally, manifest_error = run.tally, run.manifest_error
    if run.write_failures:
        finish("incomplete")
        raise ResultWriteFailed(f"{len(run.write_failures)} record(s) could not be written: {run.write_failures[0]}")
    if run.stopped_early:
        finish("incomplete")
        raise DeadlineReached("the Lambda deadline is near; the remaining entries are left for the retry")
    status = "partial" if manifest_error is not None else "complete"
    return finish(status)
