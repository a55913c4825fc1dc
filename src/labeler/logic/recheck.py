"""Re-checks: which manifests a scheduled tick re-checks, and the run each of them gets (docs/recheck.md).

A manifest uploaded under ``watch/`` in the input bucket is labeled like any other (its upload's run), then
re-checked on the stack's schedule (``RecheckSchedule``, EventBridge Scheduler). Each tick lists the prefix
and starts one **re-check run** per manifest: a run of its own (``ManifestRef.recheck``), ordered after the
upload it re-checks and before any later upload, in which every entry's record stands unless its image
changed (``labeler.logic.pipeline.recheck_entry``). Nothing is registered anywhere: a manifest deleted or
moved out of ``watch/`` is simply not listed by the next tick.

The same event with a ``key`` instead of a ``prefix`` re-checks one manifest (``s3-image-labeler recheck``).

>>> request = RecheckRequest.from_event({"bucket": "in", "prefix": "watch/", "at": "2026-11-26T00:00:00Z"})
>>> request.at, request.tick_key
('20261126T000000.000Z', 'in#watch/#20261126T000000.000Z')
>>> plan_recheck({"manifest": {"bucket": "in", "key": "watch/a.json", "etag": "e1", "version_id": "v1"},
...               "status": "complete"}, "e1", request.at).ref.run_id
'v1!recheck-20261126T000000.000Z'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from labeler.adapters.store import ListedObject
from labeler.logic.keys import report_key
from labeler.logic.pipeline import Deadline, DeadlineReached
from labeler.logic.report import FINAL_STATUSES
from labeler.models.records import ManifestRef, recheck_iso, recheck_time
from labeler.observability import logger

# The key of the event that asks for re-checks: {"recheck": {"bucket", "prefix" | "key", "at"}}.
EVENT_KEY = "recheck"
# Manifests under this prefix of the input bucket are watched (the template's schedule names it).
WATCH_PREFIX = "watch/"
MANIFEST_SUFFIXES = (".json", ".jsonl")
# The tick's answer lists at most this many manifests it started (its counts are exact).
ANSWER_MAX_MANIFESTS = 100

# Why a manifest is not re-checked by a tick.
NOT_LABELED_YET = "not labeled yet (no report)"
UPLOAD_RUNNING = "its upload's run has not ended"
UPLOADED_AGAIN = "uploaded again since its last run (that upload's run labels it)"
LAST_RUN_FAILED = "its last run failed (nothing to re-check)"
ALREADY_RECHECKED = "re-checked by this tick already"
RECHECKED_LATER = "a later re-check has run"
NOT_FOUND = "no such manifest"


class InvalidRecheckRequest(ValueError):
    """A re-check event that names no bucket, no watched prefix or manifest, or an unreadable time."""


@dataclass(frozen=True)
class RecheckRequest:
    """What a re-check event asks: every manifest under ``prefix`` (a tick), or the manifest ``key``.

    ``at`` is the re-check's time (the tick's scheduled time: the same for every retry of the tick), in
    :func:`~labeler.models.records.recheck_time`'s form.
    """

    bucket: str
    at: str
    prefix: str | None = None
    key: str | None = None

    @classmethod
    def from_event(cls, body: Any, now: datetime | None = None) -> RecheckRequest:
        """Parse ``{"bucket", "prefix" | "key", "at"}``; ``at`` (ISO 8601) defaults to ``now``."""
        if not isinstance(body, dict):
            raise InvalidRecheckRequest(f"a re-check request is an object, not {type(body).__name__}")
        bucket, prefix, key = body.get("bucket"), body.get("prefix"), body.get("key")
        if not isinstance(bucket, str) or not bucket:
            raise InvalidRecheckRequest("a re-check request names its bucket")
        if (prefix is None) == (key is None):
            raise InvalidRecheckRequest("a re-check request names a prefix or a key, not both")
        if prefix is not None and not (isinstance(prefix, str) and prefix.startswith(WATCH_PREFIX)):
            raise InvalidRecheckRequest(f"only manifests under {WATCH_PREFIX} are re-checked on schedule: {prefix!r}")
        if key is not None and not (isinstance(key, str) and key.endswith(MANIFEST_SUFFIXES)):
            raise InvalidRecheckRequest(f"not a manifest key (.json or .jsonl): {key!r}")
        return cls(bucket=bucket, at=recheck_time(_moment(body.get("at"), now)), prefix=prefix, key=key)

    @property
    def tick_key(self) -> str:
        """Identifies one tick (its retries share it): where it got to is kept under this name."""
        return f"{self.bucket}#{self.prefix or self.key}#{self.at}"


def _moment(text: Any, now: datetime | None) -> datetime:
    if text is None:
        return now or datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRecheckRequest(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Plan:
    """What a tick does with one manifest: start (or resume) the re-check run ``ref``, or skip it (``reason``)."""

    ref: ManifestRef | None
    reason: str


def plan_recheck(report: dict[str, Any] | None, listed_etag: str | None, at: str) -> Plan:
    """The re-check run a manifest gets at ``at``, from its newest report and its ETag as listed now.

    The run re-checks the upload the report names (a re-check's report names the upload it re-checked), so
    it reads that version of the manifest. Skipped: a manifest never labeled, whose last run failed, that was
    uploaded again (its new upload's run is the one to label it), or whose upload's run is still going (a
    re-check would supersede it). A re-check of an earlier tick that never ended is taken over.
    """
    if report is None or not isinstance(report.get("manifest"), dict):
        return Plan(None, NOT_LABELED_YET)
    described = ManifestRef.from_dict(report["manifest"])
    final = report.get("status") in FINAL_STATUSES
    if described.recheck == at:
        return Plan(None, ALREADY_RECHECKED) if final else Plan(described, "resumed")
    if described.recheck and described.recheck > at:
        return Plan(None, RECHECKED_LATER)
    if not final and not described.recheck:
        return Plan(None, UPLOAD_RUNNING)
    if report.get("status") == "failed":
        return Plan(None, LAST_RUN_FAILED)
    upload = described.upload()
    if listed_etag and upload.etag and listed_etag != upload.etag:
        return Plan(None, UPLOADED_AGAIN)
    return Plan(replace(upload, recheck=at, event_time=recheck_iso(at)), "started")


class RecheckStore(Protocol):
    def get_json(self, key: str) -> dict[str, Any] | None: ...

    def list_objects(self, bucket: str, prefix: str, start_after: str = "") -> Iterator[ListedObject]: ...


class TickCursor(Protocol):
    """Where a tick got to (``labeler.adapters.progress.ProgressTable``); None without a state table."""

    def tick_cursor(self, tick_key: str) -> str: ...

    def advance_tick_cursor(self, tick_key: str, after: str) -> None: ...


@dataclass
class TickResult:
    """What a tick did: manifests listed, re-checks started (or resumed), skipped by reason, failed."""

    listed: int = 0
    started: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    resumed_after: str = ""

    def to_dict(self, request: RecheckRequest) -> dict[str, Any]:
        return {
            "bucket": request.bucket,
            "prefix": request.prefix,
            "key": request.key,
            "at": recheck_iso(request.at),
            "resumed_after": self.resumed_after or None,
            "listed": self.listed,
            "started": len(self.started),
            "skipped": dict(sorted(self.skipped.items())),
            "failed": self.failed[:ANSWER_MAX_MANIFESTS],
            "manifests": self.started[:ANSWER_MAX_MANIFESTS],
        }


def _watched(store: RecheckStore, request: RecheckRequest, after: str) -> Iterator[ListedObject]:
    if request.key is not None:  # one manifest: its listing says whether it exists, and its ETag
        yield from (found for found in store.list_objects(request.bucket, request.key) if found.key == request.key)
        return
    assert request.prefix is not None
    for found in store.list_objects(request.bucket, request.prefix, after):
        if found.key.endswith(MANIFEST_SUFFIXES):
            yield found


def run_recheck(
    store: RecheckStore,
    request: RecheckRequest,
    start: Callable[[ManifestRef], dict[str, Any]],
    deadline: Deadline,
    cursor: TickCursor | None = None,
) -> TickResult:
    """List the watched manifests (or the one asked for) and ``start`` a re-check run for each; what was done.

    Manifests are taken in key order. The tick's cursor (``cursor``, in the state table) moves past a
    manifest once its re-check has started (for a fan-out: every batch is on the work queue) or it was
    skipped, and only over manifests that all went well, so a retry of the tick resumes at the first
    manifest that did not: nothing is started twice, nothing skipped. A manifest that fails does not stop
    the others; the tick raises the first failure at the end (Lambda retries it). Raises
    :class:`~labeler.logic.pipeline.DeadlineReached` when out of time (the retry resumes).
    """
    result = TickResult()
    tick = request.tick_key
    result.resumed_after = cursor.tick_cursor(tick) if cursor is not None and request.prefix else ""
    failures: list[Exception] = []
    for listed in _watched(store, request, result.resumed_after):
        result.listed += 1
        if deadline.expired():
            raise DeadlineReached(f"re-check tick stopped before {listed.key}: the retry resumes there")
        report = store.get_json(report_key(ManifestRef(request.bucket, listed.key)))
        plan = plan_recheck(report, listed.etag, request.at)
        if plan.ref is None:
            result.skipped[plan.reason] += 1
            logger.info("manifest not re-checked", extra={"key": listed.key, "reason": plan.reason})
        else:
            try:
                summary = start(plan.ref)
            except DeadlineReached:
                raise
            except Exception as exc:  # the others still get their re-check; the retry resumes at this one
                logger.exception("re-check not started; the tick will be retried", extra={"key": listed.key})
                failures.append(exc)
                result.failed.append(listed.key)
                continue
            result.started.append({**summary, "plan": plan.reason})
        if cursor is not None and request.prefix and not failures:
            cursor.advance_tick_cursor(tick, listed.key)
    if request.key is not None and result.listed == 0:
        result.skipped[NOT_FOUND] += 1
    if failures:
        raise failures[0]
    return result
