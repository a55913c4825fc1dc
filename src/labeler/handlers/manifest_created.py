"""Lambda entry point: a manifest was created in the input bucket (S3 ``ObjectCreated``), or re-checks are due.

Thin by design: parse the event, call :func:`labeler.logic.pipeline.process_manifest` for every
record, report metrics. Keys arrive URL-encoded (``+`` for a space) and are decoded here.

``{"recheck": {"bucket", "prefix": "watch/", "at"}}`` (EventBridge Scheduler's tick, ``RecheckSchedule``) or
``{"recheck": {"bucket", "key", "at"}}`` (``s3-image-labeler recheck``) starts re-check runs instead
(:func:`labeler.logic.recheck.run_recheck`): each through the work queue when the stack has one.

The invocation fails (so that Lambda retries the event, then sends it to the FailureQueue) when
any manifest is unfinished: a record that cannot be written, the deadline, a transient S3 error
on the manifest, or a delivery found in progress elsewhere.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from labeler.handlers.composition import fan_out_on_demand, get_once, get_services
from labeler.logic.pipeline import Deadline, InvocationTally, Services, process_manifest
from labeler.models.records import ManifestRef
from labeler.observability import logger, metrics, publish_entry_metrics, publish_label_calls, tracer

if TYPE_CHECKING:
    from labeler.logic.recheck import TickCursor

RECHECK_EVENT_KEY = "recheck"  # labeler.logic.recheck.EVENT_KEY, without importing it on the S3 path


# Not Powertools' S3Event: importing its data_classes package loads every event class it knows
# (~14 ms of each cold start, a third of this handler's own import time) to read five fields.
def manifest_ref(record: dict[str, Any]) -> ManifestRef:
    """The manifest an S3 event record names, with its key decoded the way S3 encodes it (``+`` is a space).

    >>> manifest_ref({"s3": {"bucket": {"name": "in"}, "object": {"key": "a+b%2B.json", "size": 3}}}).key
    'a b+.json'
    """
    s3 = record["s3"]
    s3_object = s3["object"]
    return ManifestRef(
        bucket=s3["bucket"]["name"],
        key=unquote_plus(s3_object["key"]),
        etag=s3_object.get("eTag") or None,
        version_id=s3_object.get("versionId") or None,
        size=s3_object.get("size"),
        sequencer=s3_object.get("sequencer") or None,  # S3-compatible endpoints (moto) may omit it
        event_time=record.get("eventTime") or None,  # the run's date in the index, whenever its parts are written
    )


def label_manifest(
    services: Services, ref: ManifestRef, deadline: Deadline, counted: InvocationTally
) -> dict[str, Any]:
    """Process one manifest (inline or fanned out) and return the summary the handler answers with.

    A re-check run (``ref.recheck``) always goes through the work queue when the stack has one, whatever its
    size: every invocation stays bounded, and one path serves small and large manifests alike.
    """
    report = process_manifest(
        services,
        ref,
        deadline,
        fan_out=fan_out_on_demand(services.settings),
        on_outcome=counted.add,
        on_calls=counted.add_calls,
        inline_max_images=0 if ref.recheck else None,
    )
    if "error" in report:
        metrics.add_metric(name="ManifestsRejected", unit=MetricUnit.Count, value=1)
    return {key: report[key] for key in ("manifest", "status", "total", "succeeded", "failed")}


def recheck_manifests(body: Any, context: LambdaContext) -> dict[str, Any]:
    """Start a re-check run for every watched manifest (a tick) or for the one the event names."""
    from labeler.logic.recheck import InvalidRecheckRequest, RecheckRequest, run_recheck

    try:
        request = RecheckRequest.from_event(body)
    except InvalidRecheckRequest as exc:  # the same event would fail every retry: answer, do not raise
        logger.error("invalid re-check event", extra={"error": str(exc)})
        return {"recheck": {"error": str(exc)}}
    services = get_services()
    once = get_once()
    once.register_context(context)
    deadline = Deadline.for_invocation(context.get_remaining_time_in_millis())
    counted = InvocationTally()
    logger.append_keys(recheck=f"s3://{request.bucket}/{request.prefix or request.key}@{request.at}")

    def start(ref: ManifestRef) -> dict[str, Any]:
        return once.run_once(ref.to_dict(), partial(label_manifest, services, ref, deadline, counted))

    try:
        cursor = cast("TickCursor | None", services.progress)  # the progress table keeps ticks' cursors too
        result = run_recheck(services.store, request, start, deadline, cursor)
    finally:
        publish_entry_metrics(counted.tally)
        publish_label_calls(calls=counted.label_calls, saved=counted.tally.labels_from_cache)
    answer = result.to_dict(request)
    logger.info("re-checks started", extra={"recheck": {k: v for k, v in answer.items() if k != "manifests"}})
    return {"recheck": answer}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if RECHECK_EVENT_KEY in event:  # EventBridge Scheduler's tick (RecheckSchedule), or `s3-image-labeler recheck`
        return recheck_manifests(event[RECHECK_EVENT_KEY], context)
    if not event.get("Records"):  # e.g. the s3:TestEvent S3 sends when a notification is set up
        logger.info("event without records ignored", extra={"event_keys": sorted(event)})
        return {"manifests": []}
    services = get_services()
    once = get_once()
    once.register_context(context)
    deadline = Deadline.for_invocation(context.get_remaining_time_in_millis())
    counted = InvocationTally()
    summaries: list[dict[str, Any]] = []
    failures: list[Exception] = []
    try:
        for record in event["Records"]:
            if record.get("eventSource") != "aws:s3":
                logger.warning("not an S3 record, ignored", extra={"event_source": record.get("eventSource")})
                continue
            ref = manifest_ref(record)
            logger.append_keys(manifest=f"s3://{ref.bucket}/{ref.key}")
            try:
                summary = once.run_once(ref.to_dict(), partial(label_manifest, services, ref, deadline, counted))
            except Exception as exc:  # finish the other records first; then fail so that S3 retries this event
                logger.exception("manifest not finished; the event will be retried")
                failures.append(exc)
                continue
            summaries.append(summary)
            logger.info("manifest done", extra={"report": summary})
    finally:
        publish_entry_metrics(counted.tally)
        publish_label_calls(calls=counted.label_calls, saved=counted.tally.labels_from_cache)
    if failures:
        raise failures[0]
    return {"manifests": summaries}
