"""Lambda entry point: a manifest was created in the input bucket (S3 ``ObjectCreated``).

Thin by design: parse the event, call :func:`labeler.logic.pipeline.process_manifest` for every
record, report metrics. Keys arrive URL-encoded (``+`` for a space) and are decoded here.

The invocation fails (so that Lambda retries the event, then sends it to the FailureQueue) when
any manifest is unfinished: a record that cannot be written, the deadline, a transient S3 error
on the manifest, or a delivery found in progress elsewhere.
"""

from __future__ import annotations

from functools import partial
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from labeler.handlers.composition import fan_out_on_demand, get_once, get_services
from labeler.logic.pipeline import Deadline, InvocationTally, Services, process_manifest
from labeler.models.records import ManifestRef
from labeler.observability import logger, metrics, publish_entry_metrics, publish_label_calls, tracer


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
    """Process one manifest (inline or fanned out) and return the summary the handler answers with."""
    report = process_manifest(
        services,
        ref,
        deadline,
        fan_out=fan_out_on_demand(services.settings),
        on_outcome=counted.add,
        on_calls=counted.add_calls,
    )
    if "error" in report:
        metrics.add_metric(name="ManifestsRejected", unit=MetricUnit.Count, value=1)
    return {key: report[key] for key in ("manifest", "status", "total", "succeeded", "failed")}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
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
